//! The admin HTTP server (default 127.0.0.1:9180; loopback because `/override` has no
//! authentication):
//! * `GET /metrics`: Prometheus text format; the data plane's counters are read at scrape time.
//! * `GET /healthz`: JSON [`Status`](crate::control::Status); 200, or 503 while both origins
//!   are bad so an external checker alerts.
//! * `GET /`: the status page ([`crate::status_page`]): active origin, origin health, segment
//!   age plot, recent decisions, a player of the stream through the VIP.
//! * `GET /api/state`: JSON [`PageState`] the status page polls every second.
//! * `GET /assets/hls.min.js`: hls.js for the page's player, read from `--assets-dir`.
//! * `POST /override` with body `primary`, `backup` or `auto` (plain text, a JSON string, or
//!   `{"mode": "..."}`): manual override, used by `switcher-ctl set`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::control::Controller;
use crate::decide::{Mode, OriginId};
use crate::status_page::{self, Asset, PageConfig, PageState};

/// The controller, shared by the run loop and the admin handlers. A std mutex, not a tokio
/// one: it is never held across an `.await`, and every critical section is a few map
/// syscalls or a render.
pub type SharedController = Arc<Mutex<Controller>>;

/// Largest `POST /override` body: one word or a tiny JSON object.
const MAX_OVERRIDE_BODY: usize = 1024;
/// Content type of the Prometheus text exposition format.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Pause after a failed accept (EMFILE and the like are transient; retrying at once spins).
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Parses an override body: `primary`, `backup`, `auto`, as plain text, a JSON string or
/// `{"mode": ...}`.
pub fn parse_override(body: &[u8]) -> Option<Mode> {
    let text = std::str::from_utf8(body).ok()?.trim();
    let word = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Object(map)) => map.get("mode")?.as_str()?.to_string(),
        _ => text.to_string(),
    };
    match word.trim().to_ascii_lowercase().as_str() {
        "primary" => Some(Mode::Manual(OriginId::Primary)),
        "backup" => Some(Mode::Manual(OriginId::Backup)),
        "auto" => Some(Mode::Auto),
        _ => None,
    }
}

/// Serves until `shutdown` completes, with the status page's default settings.
pub async fn serve(
    listener: TcpListener,
    controller: SharedController,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(
        listener,
        controller,
        Arc::new(PageConfig::default()),
        shutdown,
    )
    .await;
}

/// Serves until `shutdown` completes; connections still open then are dropped.
pub async fn serve_with(
    listener: TcpListener,
    controller: SharedController,
    page: Arc<PageConfig>,
    shutdown: impl Future<Output = ()>,
) {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let controller = controller.clone();
                let page = page.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(req, controller.clone(), page.clone()));
                    if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                        tracing::debug!(error = %e, "admin connection");
                    }
                });
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn response(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_str(content_type).expect("static content type"),
    );
    r
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => response(status, "application/json", body),
        Err(e) => response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            e.to_string(),
        ),
    }
}

fn lock(controller: &SharedController) -> std::sync::MutexGuard<'_, Controller> {
    // A panic while holding the lock leaves a controller whose last write may be half done;
    // the data plane itself is consistent (each write is one syscall), so keep serving.
    controller
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn handle(
    req: Request<Incoming>,
    controller: SharedController,
    page: Arc<PageConfig>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let r = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut c = lock(&controller);
            c.refresh_dataplane_metrics();
            response(
                StatusCode::OK,
                PROMETHEUS_CONTENT_TYPE,
                c.metrics().render(),
            )
        }
        (&Method::GET, "/healthz") => {
            let status = lock(&controller).status();
            let code = if status.both_bad {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            json(code, &status)
        }
        (&Method::GET, "/") => {
            let status = lock(&controller).status();
            let mut r = response(
                StatusCode::OK,
                "text/html; charset=utf-8",
                status_page::render(&status, &page),
            );
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            r
        }
        (&Method::GET, "/api/state") => {
            let (status, history) = {
                let c = lock(&controller);
                (c.status(), c.age_history())
            };
            json(
                StatusCode::OK,
                &PageState::new(status, history, &page, SystemTime::now()),
            )
        }
        (&Method::GET, path) if path.starts_with("/assets/") => {
            match status_page::asset(&page.assets_dir, &path["/assets/".len()..]).await {
                Asset::Found(bytes) => {
                    response(StatusCode::OK, "text/javascript; charset=utf-8", bytes)
                }
                Asset::Missing(why) => {
                    response(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", why)
                }
            }
        }
        (&Method::POST, "/override") => {
            let body = match Limited::new(req.into_body(), MAX_OVERRIDE_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(response(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        e.to_string(),
                    ));
                }
            };
            match parse_override(&body) {
                None => response(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    "body must be primary, backup or auto\n",
                ),
                Some(mode) => match lock(&controller).set_mode(mode, SystemTime::now()) {
                    Ok(decision) => json(StatusCode::OK, &decision),
                    Err(e) => response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        format!("{e}\n"),
                    ),
                },
            }
        }
        (_, "/metrics" | "/healthz" | "/" | "/override" | "/api/state") => response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        ),
        _ => response(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    };
    Ok(r)
}

/// `switcher-ctl status`/`set` talking to a running `run`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No `run` is listening there (refused, timed out, unreachable).
    #[error("no switcher-ctl run reachable at {addr}: {reason}")]
    Unreachable {
        /// Admin address tried.
        addr: std::net::SocketAddr,
        /// What happened.
        reason: String,
    },
    /// The connection broke mid-request.
    #[error("admin request to {addr}: {reason}")]
    Protocol {
        /// Admin address.
        addr: std::net::SocketAddr,
        /// What happened.
        reason: String,
    },
}

/// One request to a running `run`'s admin server; returns status and body.
pub async fn request(
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    body: &str,
    timeout: std::time::Duration,
) -> Result<(StatusCode, String), ClientError> {
    let unreachable = |reason: String| ClientError::Unreachable { addr, reason };
    let protocol = |reason: String| ClientError::Protocol { addr, reason };
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| unreachable("connect timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let exchange = async {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| protocol(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr.to_string())
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| protocol(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| protocol(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| protocol(e.to_string()))?
            .to_bytes();
        conn.abort();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| protocol("timed out".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_bodies() {
        assert_eq!(
            parse_override(b"primary\n"),
            Some(Mode::Manual(OriginId::Primary))
        );
        assert_eq!(
            parse_override(b"\"backup\""),
            Some(Mode::Manual(OriginId::Backup))
        );
        assert_eq!(parse_override(br#"{"mode":"auto"}"#), Some(Mode::Auto));
        assert_eq!(parse_override(b"sideways"), None);
        assert_eq!(parse_override(&[0xff, 0xfe]), None);
    }
}

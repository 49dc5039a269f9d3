//! HTTP semantics of the origin: one request in, one response out. Knows nothing about
//! sockets, TLS or connection limits (that is [`crate::server`]).
//!
//! Order of decisions: request-target length, method (OPTIONS preflight, then only GET/HEAD),
//! route, file lookup, conditional (304), range (206/416), body source (cache, fresh read,
//! or stream). CORS headers go on every response, errors included, so a browser player can
//! read its own failures.

use std::convert::Infallible;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ALLOW,
    CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, HeaderValue, LAST_MODIFIED,
    RANGE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};

use crate::body::Body;
use crate::cache::SegmentCache;
use crate::conditional;
use crate::files::{FileError, OpenFile, Root};
use crate::hls::{MediaKind, NO_STORE};
use crate::metrics::{self, Metrics};
use crate::range::{self, RangeRequest};
use crate::route::{self, Route, RouteClass};

/// Methods the origin implements; everything else is 405.
const ALLOWED_METHODS: &str = "GET, HEAD, OPTIONS";
/// Request headers a player may send cross-origin (answered in preflights).
const CORS_ALLOW_HEADERS: &str = "Range, If-None-Match, If-Modified-Since, If-Range";
/// Response headers a cross-origin player may read (beyond the CORS-safelisted ones).
const CORS_EXPOSE_HEADERS: &str =
    "Content-Length, Content-Range, Accept-Ranges, ETag, Last-Modified";
/// How long a browser may reuse a preflight answer: one day, since it never changes.
const CORS_MAX_AGE_SECONDS: &str = "86400";
/// Content type of the small text bodies of errors and `/healthz`.
const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// State shared by every request of one server.
#[derive(Debug)]
pub struct App {
    /// The served directory.
    pub root: Arc<Root>,
    /// Segment bodies in memory.
    pub cache: SegmentCache,
    /// Metrics of this server.
    pub metrics: Metrics,
    /// Longest accepted request target, in bytes.
    pub max_uri_bytes: usize,
    /// Run file-system calls on tokio's blocking pool instead of inline (see
    /// [`crate::Config::offload_file_io`]).
    pub offload_file_io: bool,
}

/// Answers one request and records its metrics. Never fails: every problem is a status code.
pub async fn handle<B>(app: Arc<App>, req: Request<B>) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let (class, mut response) = respond(&app, &req).await;
    add_cors(response.headers_mut());
    app.metrics
        .observe(class, response.status(), started.elapsed().as_secs_f64());
    let counter = app
        .metrics
        .response_bytes
        .with_label_values(&[class.as_str()]);
    Ok(response.map(|body| body.metered(counter)))
}

async fn respond<B>(app: &App, req: &Request<B>) -> (RouteClass, Response<Body>) {
    // hyper caps the whole head; this narrower cap keeps absurd targets out of logs and
    // path handling (RFC 9112 section 3: 414 for a target longer than we are willing to parse).
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > app.max_uri_bytes {
        return (
            RouteClass::Other,
            text(StatusCode::URI_TOO_LONG, "request target too long\n"),
        );
    }
    let route = route::route(req.uri().path());
    let kind = match &route {
        Route::Hls(path) => MediaKind::from_path(path),
        _ => None,
    };
    let class = match (&route, kind) {
        (Route::Healthz, _) => RouteClass::Healthz,
        (Route::Metrics, _) => RouteClass::Metrics,
        (Route::Hls(_), Some(kind)) if kind.is_playlist() => RouteClass::Playlist,
        (Route::Hls(_), Some(_)) => RouteClass::Segment,
        _ => RouteClass::Other,
    };
    let method = req.method();
    if method == Method::OPTIONS {
        return (class, preflight());
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        return (class, response);
    }
    let head = method == Method::HEAD;
    let response = match (route, kind) {
        (Route::Healthz, _) => text(StatusCode::OK, "ok\n"),
        (Route::Metrics, _) => {
            app.metrics
                .cache_bytes
                .set(i64::try_from(app.cache.bytes()).unwrap_or(i64::MAX));
            let mut response = Response::new(Body::bytes(app.metrics.render()));
            set(response.headers_mut(), CONTENT_TYPE, metrics::CONTENT_TYPE);
            set(response.headers_mut(), CACHE_CONTROL, NO_STORE);
            response
        }
        (Route::Hls(path), Some(kind)) => serve_file(app, path, kind, req.headers(), head).await,
        _ => not_found(),
    };
    (class, if head { strip_body(response) } else { response })
}

/// Serves a file below the root with validators, conditionals and ranges.
async fn serve_file(
    app: &App,
    relative: PathBuf,
    kind: MediaKind,
    headers: &HeaderMap,
    head: bool,
) -> Response<Body> {
    let root = app.root.clone();
    // Cache key: the validated relative path (the version check makes renames safe).
    let key = relative.clone();
    let opened = app.fs(move || root.open_file(&relative)).await;
    let OpenFile { file, version } = match opened {
        Ok(Ok(file)) => file,
        Ok(Err(FileError::NotFound)) => return not_found(),
        Ok(Err(FileError::Io(e))) => return internal_error(&e),
        Err(e) => return internal_error(&e),
    };
    let etag = version.etag();
    let modified = version.modified();
    let mut validators = HeaderMap::new();
    set(&mut validators, ETAG, &etag);
    set(
        &mut validators,
        LAST_MODIFIED,
        &httpdate::fmt_http_date(modified),
    );
    set(&mut validators, CACHE_CONTROL, kind.cache_control());

    if conditional::not_modified(headers, &etag, modified) {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response.headers_mut().extend(validators);
        return response;
    }

    let len = version.len;
    let wanted = match headers.get(RANGE).and_then(|v| v.to_str().ok()) {
        Some(value) if conditional::range_applies(headers, &etag, modified) => {
            range::parse(value, len)
        }
        _ => RangeRequest::Full,
    };
    let (status, start, end) = match wanted {
        RangeRequest::Full => (StatusCode::OK, 0, len.saturating_sub(1)),
        RangeRequest::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        RangeRequest::Unsatisfiable => {
            let mut response = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
            set(
                response.headers_mut(),
                CONTENT_RANGE,
                &format!("bytes */{len}"),
            );
            response.headers_mut().extend(validators);
            return response;
        }
    };
    let body_len = if len == 0 { 0 } else { end - start + 1 };

    let body = if head {
        // The head alone needs no bytes: do not read the file or touch the cache.
        Body::empty()
    } else if kind.is_playlist() {
        // Never cached: the packager renames a new playlist into place every segment, and
        // reading the descriptor we opened gives exactly one complete version of it.
        match app
            .fs(move || read_whole(file, len))
            .await
            .and_then(|read| read)
        {
            Ok(bytes) => Body::bytes(slice(bytes, start, body_len)),
            Err(e) => return internal_error(&e),
        }
    } else if app.cache.admits(len) {
        match app.cache.get(&key, &version) {
            Some(bytes) => {
                app.metrics.cache_hits.inc();
                Body::bytes(slice(bytes, start, body_len))
            }
            None => {
                app.metrics.cache_misses.inc();
                match app
                    .fs(move || read_whole(file, len))
                    .await
                    .and_then(|read| read)
                {
                    Ok(bytes) => {
                        app.cache.insert(key, version, bytes.clone());
                        Body::bytes(slice(bytes, start, body_len))
                    }
                    Err(e) => return internal_error(&e),
                }
            }
        }
    } else {
        match stream_from(file, start).await {
            Ok(file) => Body::file(file, body_len),
            Err(e) => return internal_error(&e),
        }
    };

    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    set(h, CONTENT_TYPE, kind.content_type());
    set(h, CONTENT_LENGTH, &body_len.to_string());
    set(h, ACCEPT_RANGES, "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        set(h, CONTENT_RANGE, &format!("bytes {start}-{end}/{len}"));
    }
    h.extend(validators);
    response
}

/// Reads exactly `len` bytes from the start of `file`; fewer means the file changed under us,
/// which must not turn into a short body.
fn read_whole(mut file: std::fs::File, len: u64) -> std::io::Result<Bytes> {
    let capacity = usize::try_from(len).map_err(std::io::Error::other)?;
    let mut buf = Vec::with_capacity(capacity);
    file.by_ref().take(len).read_to_end(&mut buf)?;
    if buf.len() != capacity {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "file shrank while read",
        ));
    }
    Ok(Bytes::from(buf))
}

async fn stream_from(file: std::fs::File, start: u64) -> std::io::Result<tokio::fs::File> {
    use tokio::io::AsyncSeekExt;
    let mut file = tokio::fs::File::from_std(file);
    file.seek(std::io::SeekFrom::Start(start)).await?;
    Ok(file)
}

fn slice(bytes: Bytes, start: u64, len: u64) -> Bytes {
    // Both bounds come from a range already clamped to the file length.
    let start = usize::try_from(start)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let end = start
        .saturating_add(usize::try_from(len).unwrap_or(usize::MAX))
        .min(bytes.len());
    bytes.slice(start..end)
}

impl App {
    /// Runs a file-system call (open, fstat, read of a whole small file).
    ///
    /// Inline by default, like nginx without `aio threads`: live HLS files were just written
    /// and sit in the page cache, so these calls take microseconds, while a hop through the
    /// blocking pool costs more than the call itself (measured: ~2.4x fewer playlist
    /// requests/s on 2 cores). `offload_file_io` moves them to the blocking pool for roots on
    /// slow or network file systems, where a stalled call must not stall an async worker.
    async fn fs<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::io::Result<T> {
        if self.offload_file_io {
            tokio::task::spawn_blocking(f)
                .await
                .map_err(std::io::Error::other)
        } else {
            Ok(f())
        }
    }
}

/// HEAD: the same head as GET (Content-Length included), no body.
fn strip_body(response: Response<Body>) -> Response<Body> {
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, Body::empty())
}

fn preflight() -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let h = response.headers_mut();
    set(h, ACCESS_CONTROL_ALLOW_METHODS, ALLOWED_METHODS);
    set(h, ACCESS_CONTROL_ALLOW_HEADERS, CORS_ALLOW_HEADERS);
    set(h, ACCESS_CONTROL_MAX_AGE, CORS_MAX_AGE_SECONDS);
    set(h, ALLOW, ALLOWED_METHODS);
    response
}

fn add_cors(h: &mut HeaderMap) {
    // `*`: the streams are public and requests carry no credentials.
    set(h, ACCESS_CONTROL_ALLOW_ORIGIN, "*");
    set(h, ACCESS_CONTROL_EXPOSE_HEADERS, CORS_EXPOSE_HEADERS);
}

fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "not found\n")
}

fn internal_error(e: &std::io::Error) -> Response<Body> {
    tracing::error!(error = %e, "file read failed");
    text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::bytes(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    set(response.headers_mut(), CONTENT_TYPE, TEXT_PLAIN);
    set(
        response.headers_mut(),
        CONTENT_LENGTH,
        &body.len().to_string(),
    );
    set(response.headers_mut(), CACHE_CONTROL, NO_STORE);
    response
}

fn set(h: &mut HeaderMap, name: http::header::HeaderName, value: &str) {
    // Every value we set is ASCII built from constants, numbers and hex.
    if let Ok(value) = HeaderValue::from_str(value) {
        h.insert(name, value);
    }
}

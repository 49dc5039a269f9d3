//! The admin servers: HTTP/1.1 over TCP (default 127.0.0.1:9180), read-only, and over a unix
//! socket (default `/run/switcher-ctl/admin.sock`), the one channel that changes state.
//! * `GET /metrics`: Prometheus text format; the data plane's counters are read at scrape time.
//! * `GET /healthz`: JSON [`Status`](crate::control::Status); 200, or 503 while both origins
//!   are bad so an external checker alerts.
//! * `GET /`: the status page ([`crate::status_page`]): active origin, origin health, segment
//!   age plot, recent decisions, a player of the stream through the VIP.
//! * `GET /api/state`: JSON [`PageState`] the status page polls every second.
//! * `GET /assets/hls.min.js`: hls.js for the page's player, read from `--assets-dir`.
//! * `POST /override` with body an origin name or `auto` (plain text, a JSON string, or
//!   `{"mode": "...", "force": bool}`): manual override, used by `switcher-ctl set`. Unix
//!   socket only.
//! * `POST /drain` with body `NAME [SECONDS]` or `{"origin": "NAME", "deadline_seconds": S}`:
//!   the origin gets no new flows; its open flows finish or are moved at the deadline
//!   (default `--drain`). `POST /undrain` with `NAME` or `{"origin": "NAME"}` undoes it.
//!   `POST /weight` with `NAME W` or `{"origin": "NAME", "weight": W}` sets a weight. Used by
//!   `switcher-ctl drain|undrain|set-weight`; unix socket only, like `/override`. Draining (or
//!   weighting 0) the last origin that could take new flows is refused with 409.
//!
//! # Who may change state
//! A web page the operator has open can make the browser send requests to 127.0.0.1 (CSRF: a
//! text/plain POST needs no CORS preflight), and a name that a hostile DNS server points at
//! 127.0.0.1 makes them same-origin for that page (DNS rebinding). So:
//! * the TCP server never changes state: `POST /override` there is 403;
//! * it answers only requests whose `Host` is an IP address, `localhost` or a name from
//!   `--admin-allowed-hosts` (a rebinding attack needs a name of its own), and whose `Origin`,
//!   when a browser sends one, is the server itself (`Sec-Fetch-Site: cross-site` is refused
//!   too): 403 otherwise;
//! * the unix socket is created mode 0600 (its directory 0700 when we create it), owned by
//!   the service's user (root under systemd), and a connecting peer's uid (`SO_PEERCRED`) must
//!   be 0 or the service's own: the file system and the kernel authenticate, no token to leak.
//!
//! A manual override to an origin that is not healthy (last window bad, or never probed) is
//! refused with 409 unless the request says `force` (`switcher-ctl set backup --force`): a
//! pinned origin is never left by the rules, so pinning a bad one must be deliberate. Once
//! pinned, the pin holds whatever the probes say (the decider's rule) and every window's
//! decision says how the pinned origin is doing.
//!
//! # Bounds
//! Each listener has its own connection cap (a permit is taken before `accept`, as in the
//! origin's accept loop; a flood of TCP clients never locks the operator out of the socket),
//! a request head must arrive within the header timeout (which also closes idle keep-alive
//! connections), the body of an override within the same time, and heads are bounded in size.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::config::Config;
use crate::control::{ControlError, Controller, OriginStatus};
use crate::decide::Mode;
use crate::status_page::{self, Asset, PageConfig, PageState};

/// The controller, shared by the run loop and the admin handlers. A std mutex, not a tokio
/// one: it is never held across an `.await`, and every critical section is a few map
/// syscalls or a render.
pub type SharedController = Arc<Mutex<Controller>>;

/// Largest `POST /override` (`/drain`, `/undrain`, `/weight`) body: a word or two, or a tiny
/// JSON object.
const MAX_OVERRIDE_BODY: usize = 1024;
/// Largest request head buffered (hyper's minimum): admin requests are a line and a few
/// headers.
const MAX_HEAD_BYTES: usize = 8192;
/// Content type of the Prometheus text exposition format.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The channel a request came over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// The TCP listener: read-only, Host and Origin checked.
    Tcp,
    /// The unix socket: authenticated by file permissions and peer uid; may change state.
    Unix,
}

/// The admin listeners: TCP (read-only) and, when given, the unix socket.
pub struct Listeners {
    /// The read-only HTTP listener.
    pub tcp: TcpListener,
    /// The state-changing unix socket listener, if any.
    pub unix: Option<UnixListener>,
}

impl From<TcpListener> for Listeners {
    /// TCP only: nothing can change state (tests of the read-only surface).
    fn from(tcp: TcpListener) -> Self {
        Listeners { tcp, unix: None }
    }
}

impl Listeners {
    /// The TCP listener's address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp.local_addr().ok()
    }
}

/// Bounds and checks of the admin servers.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections per listener.
    pub max_connections: usize,
    /// Time to send a request head, and an override's body.
    pub header_timeout: Duration,
    /// Host names the TCP server answers to besides IP addresses and `localhost`, lowercase.
    pub allowed_hosts: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from_config(&Config::default())
    }
}

impl Limits {
    /// The limits a (validated) config asks for.
    pub fn from_config(config: &Config) -> Self {
        Limits {
            max_connections: config.admin_max_connections,
            header_timeout: config.admin_header_timeout(),
            allowed_hosts: config
                .admin_allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        }
    }
}

/// Why the admin socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Creating the directory, binding or setting permissions failed.
    #[error("admin socket {path}: {step}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What was being done.
        step: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A live server answers on the path already.
    #[error(
        "admin socket {0}: another switcher-ctl run is listening there (stop it, or pass --admin-socket)"
    )]
    InUse(PathBuf),
    /// Something that is not a socket is in the way; it is not removed.
    #[error("admin socket {0}: exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
}

/// Binds the admin unix socket at `path`, mode 0600: creates its directory (mode 0700) when
/// missing, removes a stale socket a killed run left, refuses when a live run answers there.
/// Call before the async runtime exists: the umask is process-wide and changed around `bind`
/// so that the socket is never reachable with looser permissions.
pub fn bind_unix(path: &Path) -> Result<std::os::unix::net::UnixListener, SocketError> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    let io = |step: &'static str| {
        move |source| SocketError::Io {
            path: path.to_path_buf(),
            step,
            source,
        }
    };
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("creating its directory"))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io("removing the stale socket"))?;
            tracing::info!(path = %path.display(), "removed a stale admin socket");
        }
        Ok(_) => return Err(SocketError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("checking the path")(e)),
    }
    // SAFETY: umask(2) cannot fail; the previous mask is restored right after bind.
    let old = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(io("binding"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("setting mode 0600"))?;
    listener
        .set_nonblocking(true)
        .map_err(io("setting non-blocking"))?;
    Ok(listener)
}

/// What an override asks for: an origin by name, or the rules back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OverrideTarget {
    /// Pin the origin of this name.
    Origin(String),
    /// `auto`.
    Auto,
}

/// Parses an override body: an origin name or `auto`, as plain text, a JSON string or
/// `{"mode": ...}`.
pub fn parse_override(body: &[u8]) -> Option<OverrideTarget> {
    parse_override_request(body).map(|(target, _)| target)
}

/// Parses an override body with its `force` flag: `{"mode": "backup", "force": true}` or the
/// plain text `backup force`; every other form has `force` false.
pub fn parse_override_request(body: &[u8]) -> Option<(OverrideTarget, bool)> {
    let text = std::str::from_utf8(body).ok()?.trim();
    let (word, force) = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::String(s)) => (s, false),
        Ok(serde_json::Value::Object(map)) => (
            map.get("mode")?.as_str()?.to_string(),
            map.get("force")
                .map_or(Some(false), serde_json::Value::as_bool)?,
        ),
        _ => match text.split_ascii_whitespace().collect::<Vec<_>>()[..] {
            [word] => (word.to_string(), false),
            [word, "force"] => (word.to_string(), true),
            _ => return None,
        },
    };
    let word = word.trim();
    if word.eq_ignore_ascii_case("auto") {
        return Some((OverrideTarget::Auto, force));
    }
    crate::config::valid_origin_name(word)
        .then(|| (OverrideTarget::Origin(word.to_string()), force))
}

/// An operator's request about one origin (`/drain`, `/undrain`, `/weight`).
#[derive(Clone, Debug, PartialEq)]
pub enum OriginRequest {
    /// Drain, with an optional deadline in seconds.
    Drain {
        /// The origin.
        origin: String,
        /// Seconds its open flows may take before they are moved.
        deadline_seconds: Option<f64>,
    },
    /// Undrain.
    Undrain {
        /// The origin.
        origin: String,
    },
    /// Set the weight.
    Weight {
        /// The origin.
        origin: String,
        /// The new weight.
        weight: u32,
    },
}

/// Parses the body of `POST /drain` (`NAME [S]`), `/undrain` (`NAME`) or `/weight` (`NAME W`),
/// plain text or JSON (`{"origin": NAME, "deadline_seconds": S}` / `{"origin": NAME,
/// "weight": W}`). `None` for anything else, a bad name, a deadline that is not a number of
/// seconds within the configuration's bounds, or a weight that is not a whole number.
pub fn parse_origin_request(path: &str, body: &[u8]) -> Option<OriginRequest> {
    let text = std::str::from_utf8(body).ok()?.trim();
    let (origin, arg): (String, Option<serde_json::Value>) =
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(map)) => {
                let origin = map.get("origin")?.as_str()?.to_string();
                let key = match path {
                    "/drain" => "deadline_seconds",
                    "/weight" => "weight",
                    _ => "",
                };
                // `null` is the same as leaving the key out.
                (origin, map.get(key).filter(|v| !v.is_null()).cloned())
            }
            Ok(serde_json::Value::String(s)) => (s, None),
            _ => match text.split_ascii_whitespace().collect::<Vec<_>>()[..] {
                [name] => (name.to_string(), None),
                [name, value] => (name.to_string(), Some(serde_json::from_str(value).ok()?)),
                _ => return None,
            },
        };
    if !crate::config::valid_origin_name(&origin) {
        return None;
    }
    match path {
        "/drain" => {
            let deadline_seconds = match arg {
                None => None,
                Some(v) => {
                    // 0: move the open flows now (paced); otherwise a duration the config
                    // would accept.
                    let s = v.as_f64()?;
                    let bounds = crate::config::MIN_SECONDS..=crate::config::MAX_SECONDS;
                    if s != 0.0 && !bounds.contains(&s) {
                        return None;
                    }
                    Some(s)
                }
            };
            Some(OriginRequest::Drain {
                origin,
                deadline_seconds,
            })
        }
        "/undrain" => arg.is_none().then_some(OriginRequest::Undrain { origin }),
        "/weight" => {
            let weight = u32::try_from(arg?.as_u64()?).ok()?;
            Some(OriginRequest::Weight { origin, weight })
        }
        _ => None,
    }
}

/// Serves until `shutdown` completes, with the status page's and the limits' defaults.
pub async fn serve(
    listeners: impl Into<Listeners>,
    controller: SharedController,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(
        listeners,
        controller,
        Arc::new(PageConfig::default()),
        Limits::default(),
        shutdown,
    )
    .await;
}

/// Everything a connection's handler needs.
struct Context {
    controller: SharedController,
    page: Arc<PageConfig>,
    limits: Limits,
}

/// Serves until `shutdown` completes; connections still open then are dropped.
///
/// Each listener is served by the workspace's hardened admin server
/// ([`::service::serve_admin_with`]: a connection cap per listener taken before `accept`,
/// the header deadline, the head bound, a backoff after a failed `accept`); the unix socket
/// admits root and this service's own user only ([`::service::server::root_or_same_user`],
/// from `SO_PEERCRED`).
pub async fn serve_with(
    listeners: impl Into<Listeners>,
    controller: SharedController,
    page: Arc<PageConfig>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let listeners = listeners.into();
    let server_limits = ::service::Limits {
        max_connections: limits.max_connections,
        header_read_timeout: limits.header_timeout,
        max_head_bytes: MAX_HEAD_BYTES,
        // Nothing to drain: admin requests are answered at once.
        shutdown_grace: Duration::ZERO,
        admit: ::service::server::anyone,
    };
    let context = Arc::new(Context {
        controller,
        page,
        limits,
    });
    let router = |channel: Channel| {
        let context = context.clone();
        move |req: Request<Incoming>| {
            let response = handle(req, channel, context.clone());
            async move {
                match response.await {
                    Ok(r) => r,
                    Err(never) => match never {},
                }
            }
        }
    };
    // Both servers stop when `stop` is dropped.
    let (stop, stop_rx) = tokio::sync::watch::channel(());
    let stopped = |mut rx: tokio::sync::watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };
    let tcp = ::service::serve_admin_with(
        listeners.tcp,
        router(Channel::Tcp),
        server_limits.clone(),
        stopped(stop_rx.clone()),
    );
    let unix = async {
        if let Some(unix) = listeners.unix {
            let limits = ::service::Limits {
                admit: ::service::server::root_or_same_user,
                ..server_limits.clone()
            };
            ::service::serve_admin_with(unix, router(Channel::Unix), limits, stopped(stop_rx))
                .await;
        }
    };
    let signal = async {
        shutdown.await;
        drop(stop);
    };
    tokio::join!(signal, tcp, unix);
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

/// The host part of a `Host` header value (`name:port`, `[v6]:port`, `name`), lowercase.
fn host_name(value: &str) -> String {
    let value = value.trim();
    let host = if let Some(rest) = value.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        value.rsplit_once(':').map_or(value, |(h, _)| h)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Why the TCP server refuses a request before routing it (DNS rebinding, CSRF), or `None`.
fn cross_site(req: &Request<Incoming>, limits: &Limits) -> Option<String> {
    let headers = req.headers();
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return Some("no Host header".into());
    };
    let name = host_name(host);
    let allowed = name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || limits.allowed_hosts.contains(&name);
    if !allowed {
        return Some(format!(
            "Host {host:?} is not an IP address, localhost or an allowed host (--admin-allowed-hosts)"
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        // A browser sends Origin on cross-origin requests and on same-origin POSTs; ours is
        // `http://<the Host the browser used>`.
        let same = origin
            .to_str()
            .is_ok_and(|o| o.eq_ignore_ascii_case(&format!("http://{host}")));
        if !same {
            return Some(format!("cross-site Origin {origin:?}"));
        }
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return Some("Sec-Fetch-Site: cross-site".into());
    }
    None
}

/// Whether `o` may be pinned without `force`: healthy after hysteresis, latest window good,
/// probed at least once (the decider's own test for an origin it would switch to).
fn pinnable(o: &OriginStatus) -> Result<(), String> {
    if o.latency_ms.is_none() {
        return Err("not probed yet".into());
    }
    if let Some(e) = &o.last_error {
        return Err(format!("latest window bad: {e}"));
    }
    if !o.healthy {
        return Err("unhealthy".into());
    }
    Ok(())
}

async fn handle(
    req: Request<Incoming>,
    channel: Channel,
    context: Arc<Context>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (controller, page) = (&context.controller, &context.page);
    if channel == Channel::Tcp
        && let Some(why) = cross_site(&req, &context.limits)
    {
        tracing::warn!(method = %req.method(), path = req.uri().path(), why, "admin request refused");
        return Ok(response(
            StatusCode::FORBIDDEN,
            "text/plain",
            format!("refused: {why}\n"),
        ));
    }
    let r = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut c = lock(controller);
            c.refresh_dataplane_metrics();
            response(
                StatusCode::OK,
                PROMETHEUS_CONTENT_TYPE,
                c.metrics().render(),
            )
        }
        (&Method::GET, "/healthz") => {
            let status = lock(controller).status();
            let code = if status.both_bad {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            json(code, &status)
        }
        (&Method::GET, "/") => {
            let status = lock(controller).status();
            let mut r = response(
                StatusCode::OK,
                "text/html; charset=utf-8",
                status_page::render(&status, page),
            );
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            r
        }
        (&Method::GET, "/api/state") => {
            let (status, history) = {
                let c = lock(controller);
                (c.status(), c.age_history())
            };
            json(
                StatusCode::OK,
                &PageState::new(status, history, page, SystemTime::now()),
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
        (&Method::POST, "/override" | "/drain" | "/undrain" | "/weight")
            if channel == Channel::Tcp =>
        {
            tracing::warn!(
                path = req.uri().path(),
                "POST over TCP refused: state changes go through the admin socket"
            );
            response(
                StatusCode::FORBIDDEN,
                "text/plain",
                "the TCP admin server is read-only; state changes go through the admin unix socket (switcher-ctl set, drain, undrain, set-weight)\n",
            )
        }
        (&Method::POST, path @ ("/override" | "/drain" | "/undrain" | "/weight")) => {
            let path = path.to_string();
            let collect = Limited::new(req.into_body(), MAX_OVERRIDE_BODY).collect();
            let body = match tokio::time::timeout(context.limits.header_timeout, collect).await {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(e)) => {
                    return Ok(response(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        format!("{e}\n"),
                    ));
                }
                Err(_) => {
                    return Ok(response(
                        StatusCode::REQUEST_TIMEOUT,
                        "text/plain",
                        "body not received in time\n",
                    ));
                }
            };
            if path == "/override" {
                match parse_override_request(&body) {
                    None => response(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        "body must be an origin name or auto (optionally followed by force)\n",
                    ),
                    Some((target, force)) => override_mode(controller, target, force),
                }
            } else {
                match parse_origin_request(&path, &body) {
                    None => response(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        match path.as_str() {
                            "/drain" => {
                                "body must be NAME [DEADLINE_SECONDS] or {\"origin\": NAME, \"deadline_seconds\": S}\n"
                            }
                            "/undrain" => "body must be NAME or {\"origin\": NAME}\n",
                            _ => "body must be NAME WEIGHT or {\"origin\": NAME, \"weight\": W}\n",
                        },
                    ),
                    Some(request) => origin_request(controller, request),
                }
            }
        }
        (
            _,
            "/metrics" | "/healthz" | "/" | "/override" | "/drain" | "/undrain" | "/weight"
            | "/api/state",
        ) => response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        ),
        _ => response(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    };
    Ok(r)
}

/// The response to a controller error: 400 for an unknown origin (the body names it), 409 for
/// a refused change, 500 for a data plane failure.
fn control_error(e: &ControlError) -> Response<Full<Bytes>> {
    let status = match e {
        ControlError::UnknownOrigin(_) => StatusCode::BAD_REQUEST,
        ControlError::Refused(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    response(status, "text/plain", format!("{e}\n"))
}

/// Applies an authenticated override; refuses (409) to pin an origin that is not
/// [`pinnable`] unless `force`.
fn override_mode(
    controller: &SharedController,
    target: OverrideTarget,
    force: bool,
) -> Response<Full<Bytes>> {
    let mut c = lock(controller);
    let mode = match &target {
        OverrideTarget::Auto => Mode::Auto,
        OverrideTarget::Origin(name) => match c.find(name) {
            Some(o) => Mode::Manual(o),
            None => return control_error(&ControlError::UnknownOrigin(name.clone())),
        },
    };
    if let OverrideTarget::Origin(target) = &target {
        let status = c.status();
        let origin = status
            .origin(target)
            .expect("found by name just above, under the same lock");
        match pinnable(origin) {
            Err(why) if !force => {
                tracing::warn!(%target, why, "override refused: origin not healthy (force pins it anyway)");
                return response(
                    StatusCode::CONFLICT,
                    "text/plain",
                    format!(
                        "refusing to pin {target}: {why}; `switcher-ctl set {target} --force` pins it anyway\n"
                    ),
                );
            }
            Err(why) => {
                tracing::warn!(%target, why, "override forced onto an origin that is not healthy")
            }
            Ok(()) => {}
        }
    }
    match c.set_mode(mode, SystemTime::now()) {
        Ok(decision) => json(StatusCode::OK, &decision),
        Err(e) => control_error(&e),
    }
}

/// Applies an authenticated drain, undrain or weight change; answers with the origin's
/// status afterwards.
fn origin_request(controller: &SharedController, request: OriginRequest) -> Response<Full<Bytes>> {
    let mut c = lock(controller);
    let now = SystemTime::now();
    let (name, result) = match &request {
        OriginRequest::Drain {
            origin,
            deadline_seconds,
        } => (
            origin,
            c.drain(origin, deadline_seconds.map(Duration::from_secs_f64), now),
        ),
        OriginRequest::Undrain { origin } => (origin, c.undrain(origin, now)),
        OriginRequest::Weight { origin, weight } => (origin, c.set_weight(origin, *weight, now)),
    };
    match result {
        Ok(decision) => {
            let status = c.status();
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "origin": status.origin(name),
                    "rotation": status.rotation,
                    "active": status.active,
                    "decision": decision,
                }),
            )
        }
        Err(e) => control_error(&e),
    }
}

/// Where a running `run` answers: its TCP admin address or its unix socket.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// The read-only TCP server.
    Tcp(SocketAddr),
    /// The admin unix socket.
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// `switcher-ctl status`/`set` talking to a running `run`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No `run` is listening there (refused, no socket file, timed out, unreachable).
    #[error("no switcher-ctl run reachable at {endpoint}: {reason}")]
    Unreachable {
        /// Endpoint tried.
        endpoint: String,
        /// What happened.
        reason: String,
    },
    /// The socket exists but we may not use it (not root).
    #[error("not allowed to use the admin socket {endpoint} ({reason}): run as root")]
    Denied {
        /// Endpoint tried.
        endpoint: String,
        /// What happened.
        reason: String,
    },
    /// The connection broke mid-request.
    #[error("admin request to {endpoint}: {reason}")]
    Protocol {
        /// Endpoint.
        endpoint: String,
        /// What happened.
        reason: String,
    },
}

/// One request to a running `run`'s admin server; returns status and body.
pub async fn request(
    endpoint: &Endpoint,
    method: Method,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<(StatusCode, String), ClientError> {
    let name = endpoint.to_string();
    let unreachable = |reason: String| ClientError::Unreachable {
        endpoint: name.clone(),
        reason,
    };
    let connect_error = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::PermissionDenied => ClientError::Denied {
            endpoint: name.clone(),
            reason: e.to_string(),
        },
        _ => unreachable(e.to_string()),
    };
    let timed_out = || unreachable("connect timed out".into());
    match endpoint {
        Endpoint::Tcp(addr) => {
            let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| timed_out())?
                .map_err(connect_error)?;
            exchange(
                stream,
                &addr.to_string(),
                &name,
                method,
                path,
                body,
                timeout,
            )
            .await
        }
        Endpoint::Unix(socket) => {
            let stream = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(socket))
                .await
                .map_err(|_| timed_out())?
                .map_err(connect_error)?;
            exchange(stream, "localhost", &name, method, path, body, timeout).await
        }
    }
}

async fn exchange<S>(
    stream: S,
    host: &str,
    endpoint: &str,
    method: Method,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<(StatusCode, String), ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let protocol = |reason: String| ClientError::Protocol {
        endpoint: endpoint.to_string(),
        reason,
    };
    let exchange = async {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| protocol(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host)
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
        let origin = |n: &str| Some(OverrideTarget::Origin(n.into()));
        assert_eq!(parse_override(b"primary\n"), origin("primary"));
        assert_eq!(parse_override(b"\"backup\""), origin("backup"));
        assert_eq!(parse_override(b"edge-3"), origin("edge-3"));
        assert_eq!(
            parse_override(br#"{"mode":"auto"}"#),
            Some(OverrideTarget::Auto)
        );
        assert_eq!(parse_override(b"side/ways"), None);
        assert_eq!(parse_override(&[0xff, 0xfe]), None);
        assert_eq!(
            parse_override_request(br#"{"mode":"backup","force":true}"#),
            Some((OverrideTarget::Origin("backup".into()), true))
        );
        assert_eq!(
            parse_override_request(b"primary force\n"),
            Some((OverrideTarget::Origin("primary".into()), true))
        );
        assert_eq!(parse_override_request(b"primary please"), None);
        assert_eq!(
            parse_override_request(br#"{"mode":"auto","force":"yes"}"#),
            None
        );
    }

    #[test]
    fn origin_request_bodies() {
        assert_eq!(
            parse_origin_request("/drain", b"o2"),
            Some(OriginRequest::Drain {
                origin: "o2".into(),
                deadline_seconds: None
            })
        );
        assert_eq!(
            parse_origin_request("/drain", b"o2 12.5"),
            Some(OriginRequest::Drain {
                origin: "o2".into(),
                deadline_seconds: Some(12.5)
            })
        );
        assert_eq!(
            parse_origin_request("/drain", br#"{"origin":"o2","deadline_seconds":0}"#),
            Some(OriginRequest::Drain {
                origin: "o2".into(),
                deadline_seconds: Some(0.0)
            })
        );
        assert_eq!(
            parse_origin_request("/drain", br#"{"origin":"o2","deadline_seconds":null}"#),
            Some(OriginRequest::Drain {
                origin: "o2".into(),
                deadline_seconds: None
            })
        );
        assert_eq!(parse_origin_request("/drain", b"o2 -1"), None);
        assert_eq!(parse_origin_request("/drain", b"o2 1e30"), None);
        assert_eq!(parse_origin_request("/drain", b"o2 soon"), None);
        assert_eq!(
            parse_origin_request("/undrain", br#"{"origin":"backup"}"#),
            Some(OriginRequest::Undrain {
                origin: "backup".into()
            })
        );
        assert_eq!(parse_origin_request("/undrain", b"backup 3"), None);
        assert_eq!(
            parse_origin_request("/weight", b"o1 3"),
            Some(OriginRequest::Weight {
                origin: "o1".into(),
                weight: 3
            })
        );
        assert_eq!(parse_origin_request("/weight", b"o1"), None);
        assert_eq!(parse_origin_request("/weight", b"o1 2.5"), None);
        assert_eq!(parse_origin_request("/weight", b"o1 -2"), None);
        assert_eq!(parse_origin_request("/weight", b"o1 99999999999"), None);
        assert_eq!(parse_origin_request("/weight", b"../x 1"), None);
    }

    #[test]
    fn host_names() {
        assert_eq!(host_name("127.0.0.1:9180"), "127.0.0.1");
        assert_eq!(host_name("[::1]:9180"), "::1");
        assert_eq!(host_name("LocalHost"), "localhost");
        assert_eq!(host_name("evil.example:9180"), "evil.example");
        assert_eq!(host_name("localhost.:9180"), "localhost");
    }
}

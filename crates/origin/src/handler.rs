//! HTTP semantics of the origin: one request in, one response out. Knows nothing about
//! sockets, TLS or connection limits (that is [`crate::server`]).
//!
//! Order of decisions: request-target length, method (OPTIONS preflight, then only GET/HEAD),
//! route, file lookup, conditional (304), range (206/416), body source (the open file when
//! the connection sends files with `sendfile`, else the cache, a fresh read, or a stream). CORS headers go on every response, errors included, so a browser player can
//! read its own failures.

use std::convert::Infallible;
use std::io::Read;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ALLOW,
    CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, HeaderValue, LAST_MODIFIED,
    RANGE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};

use crate::body::{Body, FileRange};
use crate::cache::{PlaylistCache, Prepared, SegmentCache};
use crate::conditional;
use crate::files::{FileError, OpenFile, Root};
use crate::hls::{MediaKind, NO_STORE, TS_PACKET_BYTES};
use crate::metrics::{self, Metrics};
use crate::peer::{Filled, Peers, Reason};
use crate::range::{self, RangeRequest};
use crate::route::{self, Route, RouteClass};
use service::http::LOCAL_ONLY_HEADER;

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

/// Request extension set by a connection that sends file bodies itself with `sendfile(2)`
/// ([`crate::h1`]): segments are then answered from the open file, never copied into memory.
#[derive(Debug, Clone, Copy)]
pub struct SendsFiles;

/// State shared by every request of one server (of one shard: see [`App::for_shard`]).
#[derive(Debug, Clone)]
pub struct App {
    /// The served directory.
    pub root: Arc<Root>,
    /// Segment bodies in memory, one cache for the whole server.
    pub cache: Arc<SegmentCache>,
    /// Playlists in memory, each checked against the file by one `statx` per request.
    pub playlists: Arc<PlaylistCache>,
    /// Metrics of this server.
    pub metrics: Metrics,
    /// Longest accepted request target, in bytes.
    pub max_uri_bytes: usize,
    /// Run file-system calls on tokio's blocking pool instead of inline (see
    /// [`crate::Config::offload_file_io`]).
    pub offload_file_io: bool,
    /// How long a missing segment is waited for ([`crate::Config::segment_wait`]).
    pub segment_wait: Duration,
    /// Slots of requests waiting for a segment ([`crate::Config::max_segment_waiters`]).
    pub segment_waiters: Arc<tokio::sync::Semaphore>,
    /// Peer origins asked for a file this one cannot serve ([`crate::Config::peers`]); `None`
    /// without peers.
    pub peers: Option<Arc<Peers>>,
}

/// How often a request waiting for a segment ([`App::segment_wait`]) looks for it again: a
/// segment is served within this of being written, and a wait that ends in a 404 costs at
/// most 200 file-system lookups over the default 1 s (as many waits at once as
/// [`crate::Config::max_segment_waiters`]).
pub const SEGMENT_POLL: Duration = Duration::from_millis(5);

/// Answers one request and records its metrics. Never fails: every problem is a status code.
pub async fn handle<B>(app: Arc<App>, req: Request<B>) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let (class, mut response) = respond(&app, &req).await;
    add_cors(response.headers_mut());
    app.metrics
        .observe(class, response.status(), started.elapsed().as_secs_f64());
    let counter = app.metrics.response_bytes(class).clone();
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
            // The gauge shows what the window needs, not what deleted segments left behind.
            app.sweep_cache();
            app.metrics
                .cache_bytes
                .set(i64::try_from(app.cache.bytes()).unwrap_or(i64::MAX));
            let mut response = Response::new(Body::bytes(app.metrics.render()));
            set(response.headers_mut(), CONTENT_TYPE, metrics::CONTENT_TYPE);
            set(response.headers_mut(), CACHE_CONTROL, NO_STORE);
            response
        }
        (Route::Hls(path), Some(kind)) => {
            let sends_files = req.extensions().get::<SendsFiles>().is_some();
            serve_file(app, path, kind, req.headers(), head, sends_files).await
        }
        _ => not_found(),
    };
    (class, if head { strip_body(response) } else { response })
}

/// Validators of one file version, as header values and as what preconditions compare.
struct Validators {
    etag: HeaderValue,
    last_modified: HeaderValue,
    modified: SystemTime,
    len: u64,
}

impl Validators {
    fn etag_str(&self) -> &str {
        self.etag.to_str().unwrap_or_default()
    }

    fn insert_into(&self, h: &mut HeaderMap, kind: MediaKind) {
        h.insert(ETAG, self.etag.clone());
        h.insert(LAST_MODIFIED, self.last_modified.clone());
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_static(kind.cache_control()),
        );
    }
}

/// Where the bytes of a file response come from.
enum Source {
    /// The whole file in memory (playlists, cacheable segments) and its whole length as a
    /// prepared `Content-Length`.
    Memory(Bytes, HeaderValue),
    /// An open file, sent once the range is known: by `sendfile` where the connection can,
    /// else streamed (too big for the cache, or HEAD).
    File(std::fs::File),
}

/// Serves a file below the root with validators, conditionals and ranges: this origin's own
/// copy, else a peer's ([`crate::peer`]) unless the request asks for the own copy only.
/// `sends_files`: the connection sends a file body with `sendfile` (see [`SendsFiles`]).
async fn serve_file(
    app: &App,
    relative: PathBuf,
    kind: MediaKind,
    headers: &HeaderMap,
    head: bool,
    sends_files: bool,
) -> Response<Body> {
    // The edge's prober and a peer filling its own copy ask for this origin's files as they
    // are: no peer's copy, and no wait for a segment that is not there.
    let local_only = headers.contains_key(LOCAL_ONLY_HEADER);
    let own = own_copy(app, &relative, kind, head, sends_files, !local_only).await;
    let (validators, source) = match own {
        Ok(found) => found,
        Err(unservable) => {
            let fill = match (&app.peers, unservable.fill_reason(kind)) {
                (Some(peers), Some(reason)) if !local_only => {
                    let why = unservable.to_string();
                    peers
                        .fill(&relative, kind, reason, &why, &app.metrics)
                        .await
                }
                _ => None,
            };
            match fill {
                Some(filled) => from_peer(filled),
                None => return unservable.response(&relative),
            }
        }
    };
    let etag = validators.etag_str();
    let modified = validators.modified;

    if conditional::not_modified(headers, etag, modified) {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        validators.insert_into(response.headers_mut(), kind);
        return response;
    }

    let len = validators.len;
    let wanted = match headers.get(RANGE).and_then(|v| v.to_str().ok()) {
        Some(value) if conditional::range_applies(headers, etag, modified) => {
            range::parse(value, len)
        }
        _ => RangeRequest::Full,
    };
    let (status, start, end) = match wanted {
        RangeRequest::Full => (StatusCode::OK, 0, len.saturating_sub(1)),
        RangeRequest::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        RangeRequest::Unsatisfiable => {
            let mut response = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
            let h = response.headers_mut();
            h.insert(CONTENT_RANGE, header_value(format!("bytes */{len}")));
            validators.insert_into(h, kind);
            return response;
        }
    };
    let body_len = if len == 0 { 0 } else { end - start + 1 };
    let full = status == StatusCode::OK;

    let (body, content_length) = match source {
        Source::Memory(bytes, full_len) => {
            let content_length = if full {
                full_len
            } else {
                HeaderValue::from(body_len)
            };
            let body = if head {
                Body::empty()
            } else {
                Body::bytes(slice(bytes, start, body_len))
            };
            (body, content_length)
        }
        Source::File(file) => {
            let body = if head {
                Body::empty()
            } else {
                Body::file(FileRange {
                    file,
                    offset: start,
                    len: body_len,
                })
            };
            (body, HeaderValue::from(body_len))
        }
    };

    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    // Room for these and the CORS pair without a regrowth.
    h.reserve(RESPONSE_HEADERS);
    h.insert(CONTENT_TYPE, HeaderValue::from_static(kind.content_type()));
    h.insert(CONTENT_LENGTH, content_length);
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if !full {
        h.insert(
            CONTENT_RANGE,
            header_value(format!("bytes {start}-{end}/{len}")),
        );
    }
    validators.insert_into(h, kind);
    response
}

/// Why this origin's own copy of a file cannot be served.
#[derive(Debug, thiserror::Error)]
enum Unservable {
    /// Not there (a segment: not even after the segment wait). `waited`: false when the wait
    /// was skipped because every waiting slot was taken.
    #[error("not found")]
    NotFound { waited: bool },
    /// The file system failed.
    #[error("{0}")]
    Io(std::io::Error),
    /// A transport stream of this many bytes, not whole packets.
    #[error("{0} bytes, not whole MPEG-TS packets")]
    CutShort(u64),
}

impl Unservable {
    /// Whether a peer is asked for its copy, and why. Not for a playlist that is not there (a
    /// name no packager writes must not cost a peer request), nor for a segment that was not
    /// waited for, every waiting slot being taken: past `max_segment_waiters`, a missing
    /// segment is a 404 at once, so a flood of names that never come stays cheap.
    fn fill_reason(&self, kind: MediaKind) -> Option<Reason> {
        match self {
            Unservable::NotFound { .. } if kind.is_playlist() => None,
            Unservable::NotFound { waited: false } => None,
            Unservable::NotFound { waited: true } => Some(Reason::Missing),
            Unservable::Io(_) => Some(Reason::Unreadable),
            Unservable::CutShort(_) => Some(Reason::CutShort),
        }
    }

    /// This origin's own answer.
    fn response(&self, relative: &Path) -> Response<Body> {
        match self {
            Unservable::NotFound { .. } => not_found(),
            Unservable::Io(e) => internal_error(e),
            Unservable::CutShort(len) => cut_short(relative, *len),
        }
    }
}

/// This origin's own copy of `relative`: its validators and where its bytes come from.
/// `wait`: a segment that is not there is waited for ([`open_segment`]).
async fn own_copy(
    app: &App,
    relative: &Path,
    kind: MediaKind,
    head: bool,
    sends_files: bool,
    wait: bool,
) -> Result<(Validators, Source), Unservable> {
    let unservable = |e: FileError| match e {
        FileError::NotFound => Unservable::NotFound { waited: true },
        FileError::Io(e) => Unservable::Io(e),
    };
    if kind.is_playlist() {
        let loaded = if app.offload_file_io {
            let (root, playlists) = (app.root.clone(), app.playlists.clone());
            let relative = relative.to_path_buf();
            tokio::task::spawn_blocking(move || load_playlist(&root, &playlists, &relative))
                .await
                .map_err(|e| FileError::Io(std::io::Error::other(e)))
                .and_then(|loaded| loaded)
        } else {
            load_playlist(&app.root, &app.playlists, relative)
        };
        let prepared = loaded.map_err(unservable)?;
        let validators = Validators {
            etag: prepared.etag.clone(),
            last_modified: prepared.last_modified.clone(),
            modified: prepared.stamp.version.modified(),
            len: prepared.stamp.version.len,
        };
        let source = Source::Memory(prepared.body.clone(), prepared.content_length.clone());
        return Ok((validators, source));
    }
    let OpenFile { file, version, .. } = open_segment(app, relative, wait).await?;
    // A transport stream that is not a whole number of packets was cut short (a full disk, a
    // writer that died, a bad copy): served as it is, a player would take half a segment as
    // whole, and a player's decoder can fail on it seconds later, when it plays that part
    // (hls.js in the end-to-end test, session 15). A peer's copy, or else a 5xx, which a
    // player sees at once and retries, by then through the edge on a healthy origin; the
    // edge's probe judges the origin on it (`switcher-ctl`'s `ProbeError::Corrupt`).
    if kind == MediaKind::TransportStream && version.len % TS_PACKET_BYTES != 0 {
        return Err(Unservable::CutShort(version.len));
    }
    let validators = Validators {
        etag: header_value(version.etag()),
        last_modified: header_value(httpdate::fmt_http_date(version.modified())),
        modified: version.modified(),
        len: version.len,
    };
    if head || sends_files {
        // The head alone needs no bytes, and `sendfile` takes them from the page cache: do
        // not read the file or touch the cache.
        return Ok((validators, Source::File(file)));
    }
    if !app.cache.admits(version.len) {
        return Ok((validators, Source::File(file)));
    }
    // Cache key: the validated relative path (the version check makes renames safe).
    let bytes = match app.cache.get(relative, &version) {
        Some(bytes) => {
            app.metrics.cache_hits.inc();
            bytes
        }
        None => {
            app.metrics.cache_misses.inc();
            let len = version.len;
            let bytes = app
                .fs(move || read_whole(file, len))
                .await
                .and_then(|read| read)
                .map_err(Unservable::Io)?;
            // A new segment: the window moved, so older ones may be gone.
            app.sweep_cache();
            app.cache
                .insert(relative.to_path_buf(), version, bytes.clone());
            bytes
        }
    };
    let len = HeaderValue::from(version.len);
    Ok((validators, Source::Memory(bytes, len)))
}

/// A peer's copy as a response source, with the peer's validators where it sent them (its
/// ETag names the same bytes: the copies are identical).
fn from_peer(filled: Filled) -> (Validators, Source) {
    let len = filled.body.len() as u64;
    let (last_modified, modified) = filled.last_modified.unwrap_or_else(|| {
        let now = SystemTime::now();
        (header_value(httpdate::fmt_http_date(now)), now)
    });
    let validators = Validators {
        etag: filled
            .etag
            .unwrap_or_else(|| header_value(format!("\"peer-{len:x}\""))),
        last_modified,
        modified,
        len,
    };
    (
        validators,
        Source::Memory(filled.body, HeaderValue::from(len)),
    )
}

/// Headers of a file response: type, length, ranges, range, ETag, Last-Modified,
/// Cache-Control, and the two CORS headers.
const RESPONSE_HEADERS: usize = 9;

/// A playlist at its current version: from the [`PlaylistCache`] when one `statx` shows the
/// cached bytes are exactly the file now at `relative` (see `crate::cache` for why this is
/// never stale), else read through the contained open and cached if settled.
/// Blocking file-system calls.
fn load_playlist(
    root: &Root,
    playlists: &PlaylistCache,
    relative: &Path,
) -> Result<Arc<Prepared>, FileError> {
    if let Ok(Some(stamp)) = root.stat(relative)
        && let Some(prepared) = playlists.get(relative, &stamp)
    {
        return Ok(prepared);
    }
    // Read before the open: the settle rule needs a time no later than the open.
    let opened_after = SystemTime::now();
    let opened = match root.open_file(relative) {
        Ok(opened) => opened,
        Err(e) => {
            playlists.remove(relative);
            return Err(e);
        }
    };
    let body = read_whole(opened.file, opened.version.len)?;
    let prepared = Arc::new(Prepared::new(opened.stamp, body));
    if PlaylistCache::admits(&prepared, opened_after) {
        playlists.insert(relative.to_path_buf(), prepared.clone());
    }
    Ok(prepared)
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
    /// The same server state with a playlist cache of its own, for one shard (one thread).
    ///
    /// Every playlist hit clones reference-counted bytes and header values and takes the
    /// cache's read lock; shared between cores, those atomics bounce one cache line between
    /// them on every request (~2% of CPU in the playlist profile). Playlists are a few KiB
    /// per stream and a miss costs one read, so each shard keeps its own copy. Segments stay
    /// in one shared cache: they are large, and a hit is a small share of sending 1 MiB.
    pub fn for_shard(&self) -> Self {
        Self {
            playlists: Arc::new(PlaylistCache::new()),
            ..self.clone()
        }
    }

    /// Drops cached segments whose file was deleted or replaced (see [`SegmentCache::sweep`]).
    /// One `statx` per cached segment, on the path only for comparison: no containment is
    /// needed, as a match keeps bytes that were read through the contained open.
    fn sweep_cache(&self) {
        if self.cache.is_empty() {
            return;
        }
        let released = self
            .cache
            .sweep(|path| self.root.stat(path).ok().flatten().map(|s| s.version));
        if released > 0 {
            tracing::debug!(released, "dropped cached segments no longer on disk");
        }
    }

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

/// Opens the segment `relative`. One that is not there is waited for (when `wait`), up to
/// [`App::segment_wait`] while a waiting slot is free, and looked for again every
/// [`SEGMENT_POLL`]: another origin's packager may have listed it already
/// ([`crate::Config::segment_wait`]).
async fn open_segment(app: &App, relative: &Path, wait: bool) -> Result<OpenFile, Unservable> {
    let open = || async {
        let (root, relative) = (app.root.clone(), relative.to_path_buf());
        match app.fs(move || root.open_file(&relative)).await {
            Ok(Ok(file)) => Ok(Some(file)),
            Ok(Err(FileError::NotFound)) => Ok(None),
            Ok(Err(FileError::Io(e))) | Err(e) => Err(Unservable::Io(e)),
        }
    };
    if let Some(file) = open().await? {
        return Ok(file);
    }
    // A wait that is not configured, or not wanted, counts as done.
    let not_found = |waited| Err(Unservable::NotFound { waited });
    if !wait || app.segment_wait.is_zero() {
        return not_found(true);
    }
    let outcome = |o: &str| app.metrics.segment_waits.with_label_values(&[o]).inc();
    let Ok(_slot) = app.segment_waiters.try_acquire() else {
        outcome("no_slot");
        return not_found(false);
    };
    let deadline = tokio::time::Instant::now() + app.segment_wait;
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            outcome("timed_out");
            return not_found(true);
        }
        tokio::time::sleep(SEGMENT_POLL.min(deadline - now)).await;
        if let Some(file) = open().await? {
            outcome("appeared");
            return Ok(file);
        }
    }
}

/// The answer for a transport stream segment that is not whole packets (see
/// [`serve_file`]): 500, counted, logged at most once a second.
fn cut_short(relative: &Path, len: u64) -> Response<Body> {
    static LAST_LOGGED_S: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now_s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST_LOGGED_S.swap(now_s, std::sync::atomic::Ordering::Relaxed) != now_s {
        tracing::warn!(path = %relative.display(), len, "segment is not whole MPEG-TS packets (cut short?): answered 500");
    }
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "segment is not whole MPEG-TS packets (cut short?)\n",
    )
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
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    set(response.headers_mut(), CACHE_CONTROL, NO_STORE);
    response
}

fn set(h: &mut HeaderMap, name: http::header::HeaderName, value: &'static str) {
    h.insert(name, HeaderValue::from_static(value));
}

fn header_value(value: String) -> HeaderValue {
    // Every computed value is ASCII built from numbers, hex and HTTP dates.
    HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is asked of peers: every own copy that cannot be served, except a playlist that is
    /// not there and a segment that could not be waited for. (An unreadable file cannot be made in a test run as root, who reads
    /// everything: this mapping is what routes it to the same fill as the other reasons.)
    #[test]
    fn what_is_asked_of_peers() {
        let io = || Unservable::Io(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        for kind in [
            MediaKind::Playlist,
            MediaKind::TransportStream,
            MediaKind::Mp4,
        ] {
            assert_eq!(io().fill_reason(kind), Some(Reason::Unreadable));
        }
        let missing = |waited| Unservable::NotFound { waited };
        assert_eq!(missing(true).fill_reason(MediaKind::Playlist), None);
        assert_eq!(
            missing(true).fill_reason(MediaKind::Fmp4Segment),
            Some(Reason::Missing)
        );
        // Past max_segment_waiters: a 404 at once, no peer request either.
        assert_eq!(missing(false).fill_reason(MediaKind::TransportStream), None);
        assert_eq!(
            Unservable::CutShort(1000).fill_reason(MediaKind::TransportStream),
            Some(Reason::CutShort)
        );
        assert_eq!(
            Unservable::CutShort(1000)
                .response(Path::new("s/1.ts"))
                .status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}

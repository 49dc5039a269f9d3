//! Server configuration: one struct, every knob documented, checked once by [`Config::validate`].
//!
//! The CLI (`src/main.rs`) fills this from flags and environment variables; tests build it
//! directly with short timeouts.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// Default bytes of segment data kept in memory. 256 MiB holds several minutes of a 1080p
/// rendition, far more than a 6-segment live window per stream.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Default largest single file the cache accepts; bigger files are streamed from disk so one
/// odd file cannot evict the whole live window.
pub const DEFAULT_CACHE_MAX_ENTRY_BYTES: u64 = 16 * 1024 * 1024;
/// Default cap on concurrent connections; the accept loop waits for a free slot beyond it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default cap on concurrent connections from one source address (IPv4, or IPv6 /128);
/// beyond it a new connection from that address is closed at once. Far above what one player
/// opens (a handful), low enough that one host cannot take the global cap.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 256;
/// Default time a client has to send a complete request head (HTTP/1.1) or TLS handshake.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a connection may go without the server writing a byte before it is closed.
/// Longer than any sane player poll interval (a 2 s target duration polls every ~2 s).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time in-flight requests get to finish after SIGTERM/SIGINT.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default cap on the request head (request line + headers). hyper's floor is 8 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Default cap on the number of request headers.
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// Default cap on the request target's length; HLS paths are short.
pub const DEFAULT_MAX_URI_BYTES: usize = 2048;
/// Default [`Config::segment_wait`]: far above the few to tens of milliseconds by which two
/// packagers of the same stream write the same segment apart (12-76 ms seen in the end-to-end
/// test), and half a 2 s target duration, so that a request for a segment that will not come
/// is still answered within the segment's own time.
pub const DEFAULT_SEGMENT_WAIT: Duration = Duration::from_secs(1);
/// Default [`Config::max_segment_waiters`].
pub const DEFAULT_MAX_SEGMENT_WAITERS: usize = 256;
/// Default [`Config::peer_fill_timeout`]: a peer on the edge's network answers a segment in
/// milliseconds; a second is what a player that is waiting for its segment can spare (hls.js
/// waits 10 s for a first byte, ffmpeg longer).
pub const DEFAULT_PEER_FILL_TIMEOUT: Duration = Duration::from_secs(1);
/// Default [`Config::max_peer_fills`]: requests for one file share one fill, so this bounds the
/// distinct files asked of peers at once (at most this many times `peer::MAX_FILL_BYTES` being
/// read, besides the 64 MiB of filled segments kept for reuse and the bodies still being sent).
pub const DEFAULT_MAX_PEER_FILLS: usize = 16;
/// hyper refuses an HTTP/1 read buffer smaller than this.
const HYPER_MIN_BUF_BYTES: usize = 8192;

/// PEM files that turn TLS on.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Everything [`crate::run`] needs besides the listener and the shutdown signal.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory served under `/hls/`: `/hls/<stream>/<file>` maps to `root/<stream>/<file>`.
    pub root: PathBuf,
    /// Total bytes of segment bodies kept in memory (0 disables the cache).
    pub cache_max_bytes: u64,
    /// Largest file admitted to the cache.
    pub cache_max_entry_bytes: u64,
    /// Concurrent connections; further clients wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// Concurrent connections from one source address; further ones are closed at once
    /// (counted in `origin_connections_refused_total`).
    pub max_connections_per_address: usize,
    /// Deadline for a complete request head and for the TLS handshake (anti-slowloris).
    /// It also bounds the wait for the next request on a connection with no request in
    /// progress, on every protocol: HTTP/1.1 keep-alive, and h2, where an idle connection
    /// (a preface and nothing more, or a finished stream) must not hold a slot for the
    /// whole idle timeout.
    pub header_read_timeout: Duration,
    /// A connection on which the server wrote nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Bound on the graceful drain at shutdown; connections still open then are dropped.
    pub shutdown_grace: Duration,
    /// Cap on the HTTP/1 request head and the h2 header list, in bytes.
    pub max_header_bytes: usize,
    /// Cap on the number of HTTP/1 request headers.
    pub max_headers: usize,
    /// Cap on the request target length; longer ones get 414.
    pub max_uri_bytes: usize,
    /// TLS certificate and key; `None` serves plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Run file-system calls on tokio's blocking pool instead of on the async workers.
    /// Off by default (live files are page-cache hot, see `handler::App`); turn on for slow or
    /// network file systems.
    pub offload_file_io: bool,
    /// How long a request for a segment that is not there waits for it to appear before its
    /// 404 (zero: no wait; checked every `handler::SEGMENT_POLL`). Why: origins fed by separate
    /// packagers write the same segment some milliseconds apart, and a player may take the
    /// playlist from one and the segment from another (the edge moves its connections one by
    /// one when it fails over, drains or balances, and players keep several). Without the
    /// wait, the newest listed segment was a 404 on the origin that had not written it yet
    /// (docs/ARCHITECTURE.md, "Interchangeable packagers").
    pub segment_wait: Duration,
    /// Requests waiting for a segment at once ([`Config::segment_wait`]); beyond this a
    /// missing segment is a 404 at once, so requests for names that never come cannot make the
    /// server poll the file system without bound.
    pub max_segment_waiters: usize,
    /// Base URLs of peer origins (`http://HOST:PORT`; an IP address, as a host name is looked
    /// up within the connect timeout), asked in this order for a file this origin cannot serve
    /// from its own directory: a segment cut short or still missing after
    /// [`Config::segment_wait`], a file it fails to read (see [`crate::peer`]). Their packagers
    /// write byte-identical files, so their copy is served instead of an error. Empty: no
    /// peer fill.
    pub peers: Vec<String>,
    /// Time one fill has in all, over every peer it asks.
    pub peer_fill_timeout: Duration,
    /// Files filled from peers at once; beyond it, the request gets this origin's own error.
    pub max_peer_fills: usize,
}

impl Config {
    /// A configuration with every default and the given root.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            cache_max_bytes: DEFAULT_CACHE_MAX_BYTES,
            cache_max_entry_bytes: DEFAULT_CACHE_MAX_ENTRY_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_uri_bytes: DEFAULT_MAX_URI_BYTES,
            tls: None,
            offload_file_io: false,
            segment_wait: DEFAULT_SEGMENT_WAIT,
            max_segment_waiters: DEFAULT_MAX_SEGMENT_WAITERS,
            peers: Vec::new(),
            peer_fill_timeout: DEFAULT_PEER_FILL_TIMEOUT,
            max_peer_fills: DEFAULT_MAX_PEER_FILLS,
        }
    }

    /// Checks the values and canonicalizes `root`, so that path containment checks compare
    /// like with like (no symlinks, no `..`, absolute).
    pub fn validate(mut self) -> Result<Self> {
        let root = std::fs::canonicalize(&self.root).map_err(|source| Error::Root {
            path: self.root.clone(),
            source,
        })?;
        if !root.is_dir() {
            return Err(Error::Config(format!(
                "root {} is not a directory",
                root.display()
            )));
        }
        self.root = root;
        if self.max_connections == 0 || self.max_connections_per_address == 0 {
            return Err(Error::Config(
                "max_connections and max_connections_per_address must be at least 1".into(),
            ));
        }
        if self.max_header_bytes < HYPER_MIN_BUF_BYTES {
            return Err(Error::Config(format!(
                "max_header_bytes must be at least {HYPER_MIN_BUF_BYTES} (hyper's minimum)"
            )));
        }
        for (name, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::Config(format!("{name} must be greater than zero")));
            }
        }
        if self.max_headers == 0 || self.max_uri_bytes == 0 {
            return Err(Error::Config(
                "max_headers and max_uri_bytes must be positive".into(),
            ));
        }
        for url in &self.peers {
            crate::peer::Peer::parse(url)?;
        }
        if !self.peers.is_empty() && (self.peer_fill_timeout.is_zero() || self.max_peer_fills == 0)
        {
            return Err(Error::Config(
                "with peers, peer_fill_timeout and max_peer_fills must be positive".into(),
            ));
        }
        Ok(self)
    }
}

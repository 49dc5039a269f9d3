//! `origin` binary: parses flags (each with an environment variable), checks them
//! ([`origin::Config::validate`]) before binding anything, and runs the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use origin::config;

/// HLS origin: serves `/hls/<stream>/<file>` from a packager's directory.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Directory holding one sub-directory per stream.
    #[arg(long, env = "ORIGIN_ROOT")]
    root: PathBuf,
    /// Address to listen on. Give it twice (e.g. 127.0.0.1:8081 and [::1]:8081) to listen on
    /// both (in the environment, comma-separated).
    #[arg(long, env = "ORIGIN_LISTEN", default_value = "0.0.0.0:8081", value_delimiter = ',', action = clap::ArgAction::Append)]
    listen: Vec<SocketAddr>,
    /// PEM certificate chain; with --tls-key, serves HTTPS (HTTP/1.1 and h2 by ALPN).
    #[arg(long, env = "ORIGIN_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "ORIGIN_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Bytes of segment data cached in memory (0 disables the cache).
    #[arg(long, env = "ORIGIN_CACHE_MAX_BYTES", default_value_t = config::DEFAULT_CACHE_MAX_BYTES)]
    cache_max_bytes: u64,
    /// Largest file admitted to the cache; bigger files are streamed from disk.
    #[arg(long, env = "ORIGIN_CACHE_MAX_ENTRY_BYTES", default_value_t = config::DEFAULT_CACHE_MAX_ENTRY_BYTES)]
    cache_max_entry_bytes: u64,
    /// Maximum concurrent connections.
    #[arg(long, env = "ORIGIN_MAX_CONNECTIONS", default_value_t = config::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Maximum concurrent connections from one source address; more are closed at once.
    #[arg(long, env = "ORIGIN_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = config::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)]
    max_connections_per_address: usize,
    /// Seconds a client has to send a request head (and finish a TLS handshake); also the
    /// longest wait for the next request on an idle HTTP/1.1 or h2 connection.
    #[arg(long, env = "ORIGIN_HEADER_READ_TIMEOUT_SECONDS", default_value_t = config::DEFAULT_HEADER_READ_TIMEOUT.as_secs_f64())]
    header_read_timeout_seconds: f64,
    /// Seconds without the server writing anything before a connection is closed.
    #[arg(long, env = "ORIGIN_IDLE_TIMEOUT_SECONDS", default_value_t = config::DEFAULT_IDLE_TIMEOUT.as_secs_f64())]
    idle_timeout_seconds: f64,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "ORIGIN_SHUTDOWN_GRACE_SECONDS", default_value_t = config::DEFAULT_SHUTDOWN_GRACE.as_secs_f64())]
    shutdown_grace_seconds: f64,
    /// Maximum request head size in bytes (at least 8192).
    #[arg(long, env = "ORIGIN_MAX_HEADER_BYTES", default_value_t = config::DEFAULT_MAX_HEADER_BYTES)]
    max_header_bytes: usize,
    /// Maximum number of request headers.
    #[arg(long, env = "ORIGIN_MAX_HEADERS", default_value_t = config::DEFAULT_MAX_HEADERS)]
    max_headers: usize,
    /// Maximum request target length in bytes.
    #[arg(long, env = "ORIGIN_MAX_URI_BYTES", default_value_t = config::DEFAULT_MAX_URI_BYTES)]
    max_uri_bytes: usize,
    /// Event-loop threads, each with its own SO_REUSEPORT listener; 0 means one per CPU.
    #[arg(long, env = "ORIGIN_WORKERS", default_value_t = 0)]
    workers: usize,
    /// Run file-system calls on a blocking thread pool (for slow or network file systems).
    #[arg(long, env = "ORIGIN_OFFLOAD_FILE_IO")]
    offload_file_io: bool,
    /// Seconds a request for a segment that is not there waits for it to appear before its
    /// 404 (0: none): another origin's packager may have listed it a few milliseconds earlier.
    #[arg(long, env = "ORIGIN_SEGMENT_WAIT_SECONDS", default_value_t = config::DEFAULT_SEGMENT_WAIT.as_secs_f64())]
    segment_wait_seconds: f64,
    /// Requests waiting for a segment at once; beyond it a missing segment is a 404 at once.
    #[arg(long, env = "ORIGIN_MAX_SEGMENT_WAITERS", default_value_t = config::DEFAULT_MAX_SEGMENT_WAITERS)]
    max_segment_waiters: usize,
    /// A peer origin's base URL (http://IP:PORT), asked for a segment this origin has cut
    /// short, still missing after the segment wait, or cannot read (and a playlist it cannot
    /// read): its packager writes the same bytes. Repeat for several, asked in order (in the
    /// environment, comma-separated). None: no peer fill.
    #[arg(long = "peer", env = "ORIGIN_PEERS", value_delimiter = ',', action = clap::ArgAction::Append)]
    peers: Vec<String>,
    /// Seconds one peer fill has in all, over every peer it asks.
    #[arg(long, env = "ORIGIN_PEER_FILL_TIMEOUT_SECONDS", default_value_t = config::DEFAULT_PEER_FILL_TIMEOUT.as_secs_f64())]
    peer_fill_timeout_seconds: f64,
    /// Files filled from peers at once; beyond it a request gets this origin's own error.
    #[arg(long, env = "ORIGIN_MAX_PEER_FILLS", default_value_t = config::DEFAULT_MAX_PEER_FILLS)]
    max_peer_fills: usize,
}

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{name} must be a non-negative number of seconds"))
}

/// glibc's mmap threshold, fixed: see [`fix_mmap_threshold`].
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD_BYTES: libc::c_int = 128 * 1024;

/// Keeps large allocations (cached segment bodies, ~1 MiB) in mappings of their own.
///
/// glibc starts at this same threshold but raises it to the size of any mapped block that is
/// freed (up to 32 MiB). After the first segment body is evicted, later ones come from the
/// heap arenas, whose freed memory mostly stays with the process: RSS would keep the
/// high-water mark of every body ever cached instead of following the live window. Setting it
/// explicitly turns that adjustment off, so a freed body is unmapped at once.
fn fix_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator tunable; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
}

fn main() -> anyhow::Result<()> {
    fix_mmap_threshold();
    service::init_tracing();
    let cli: Cli = config_schema::parse(&[]);
    let config = origin::Config {
        root: cli.root,
        cache_max_bytes: cli.cache_max_bytes,
        cache_max_entry_bytes: cli.cache_max_entry_bytes,
        max_connections: cli.max_connections,
        max_connections_per_address: cli.max_connections_per_address,
        header_read_timeout: seconds(
            "header-read-timeout-seconds",
            cli.header_read_timeout_seconds,
        )?,
        idle_timeout: seconds("idle-timeout-seconds", cli.idle_timeout_seconds)?,
        shutdown_grace: seconds("shutdown-grace-seconds", cli.shutdown_grace_seconds)?,
        max_header_bytes: cli.max_header_bytes,
        max_headers: cli.max_headers,
        max_uri_bytes: cli.max_uri_bytes,
        offload_file_io: cli.offload_file_io,
        segment_wait: seconds("segment-wait-seconds", cli.segment_wait_seconds)?,
        max_segment_waiters: cli.max_segment_waiters,
        peers: cli.peers,
        peer_fill_timeout: seconds("peer-fill-timeout-seconds", cli.peer_fill_timeout_seconds)?,
        max_peer_fills: cli.max_peer_fills,
        tls: match (cli.tls_cert, cli.tls_key) {
            (Some(cert), Some(key)) => Some(origin::TlsFiles { cert, key }),
            _ => None,
        },
    }
    // Checked before anything is bound; `run_sharded` checks again, for library callers.
    .validate()?;
    let workers = match cli.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut listeners = Vec::new();
    for addr in &cli.listen {
        listeners.extend(
            origin::bind_shards(*addr, workers)
                .with_context(|| format!("cannot listen on {addr}"))?,
        );
    }
    origin::run_sharded(listeners, config, service::shutdown_signal())
        .context("origin server failed")
}

//! Configuration: one struct, every field a CLI flag with an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

/// Ingest configuration (`ingest --help` lists the flags and variables).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ingest",
    about = "RTMP ingest: publish, play fan-out with GOP cache"
)]
pub struct Config {
    /// RTMP listen address.
    #[arg(long, env = "INGEST_LISTEN", default_value = "0.0.0.0:1935")]
    pub listen: SocketAddr,
    /// Admin HTTP address (/metrics); "off" is not supported, bind to loopback instead.
    #[arg(long, env = "INGEST_ADMIN", default_value = "127.0.0.1:9181")]
    pub admin: SocketAddr,
    /// RTMP application name clients must use (rtmp://HOST/<app>/<stream>).
    #[arg(long, env = "INGEST_APP", default_value = "live")]
    pub app: String,
    /// Publish secret: when set, publishers must append `?key=<secret>` to the stream name.
    #[arg(long, env = "INGEST_PUBLISH_KEY")]
    pub publish_key: Option<String>,
    /// Comma-separated stream names allowed to publish (default: any).
    #[arg(long, env = "INGEST_ALLOWED_STREAMS", value_delimiter = ',')]
    pub allowed_streams: Vec<String>,
    /// Most simultaneous RTMP connections.
    #[arg(long, env = "INGEST_MAX_CONNECTIONS", default_value_t = 2048)]
    pub max_connections: usize,
    /// Most simultaneous streams.
    #[arg(long, env = "INGEST_MAX_STREAMS", default_value_t = 64)]
    pub max_streams: usize,
    /// Largest chunk size a peer may set (bytes).
    #[arg(long, env = "INGEST_MAX_CHUNK_SIZE", default_value_t = 64 * 1024)]
    pub max_chunk_size: usize,
    /// Largest RTMP message accepted (bytes).
    #[arg(long, env = "INGEST_MAX_MESSAGE_SIZE", default_value_t = 16 * 1024 * 1024)]
    pub max_message_size: usize,
    /// Handshake + connect must complete within this many seconds.
    #[arg(long, env = "INGEST_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10)]
    pub handshake_timeout_secs: u64,
    /// A publisher or not-yet-playing connection silent this long is closed; a player whose
    /// socket accepts nothing this long is closed.
    #[arg(long, env = "INGEST_IDLE_TIMEOUT_SECS", default_value_t = 30)]
    pub idle_timeout_secs: u64,
    /// How many messages a subscriber may fall behind (the length of each stream's shared
    /// broadcast ring); one further behind skips to the next keyframe.
    #[arg(long, env = "INGEST_SUBSCRIBER_QUEUE", default_value_t = 1024)]
    pub subscriber_queue: usize,
    /// Keyframes a congested subscriber may skip before it is disconnected.
    #[arg(long, env = "INGEST_MAX_SKIPPED_GOPS", default_value_t = 3)]
    pub max_skipped_gops: u32,
    /// Runtime threads. 1 (the default): one thread runs every connection, like one nginx
    /// worker; the fan-out wakes subscribers on the publisher's own thread, with no
    /// cross-thread wake-ups or work stealing, which costs the least CPU per player (see
    /// the benchmark, `cargo xtask bench ingest`). One thread serves a few thousand
    /// players of a 2.6 Mbit/s stream. More threads spread connections over cores for
    /// more than that, at some CPU per player; 0 means one per core.
    #[arg(long, env = "INGEST_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,
    /// Merged reads and writes, in milliseconds: a publisher's socket is read, and its
    /// subscribers woken, at most once per interval, so each player gets one vectored
    /// write per interval holding every message since the last, instead of one per
    /// publisher read (~100/s for a 2.6 Mbit/s stream from ffmpeg). Per-write costs
    /// (syscalls, TCP segments, ACKs, wake-ups) are most of the CPU per player; see
    /// `cargo xtask bench ingest`. The price is up to this much added latency, which HLS
    /// packagers (cutting 2 s segments) and RTMP players (buffering a second or more) do
    /// not notice; the socket buffers hold the interval's media meanwhile. SRS has the same
    /// two knobs (`mr_latency`, `mw_latency`, 350 ms by default). 0 reads and forwards
    /// every message at once, like nginx-rtmp.
    #[arg(long, env = "INGEST_MERGE_MS", default_value_t = 100)]
    pub merge_ms: u64,
    /// GOP cache cap per stream in bytes.
    #[arg(long, env = "INGEST_GOP_CACHE_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub gop_cache_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        <Config as clap::Parser>::parse_from(["ingest"])
    }
}

impl Config {
    /// Handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    /// Idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// Merged read/write interval ([`Config::merge_ms`]).
    pub fn merge_interval(&self) -> Duration {
        Duration::from_millis(self.merge_ms)
    }
}

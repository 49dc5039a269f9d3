//! Configuration: one struct, every field a CLI flag with an environment variable, checked
//! once by [`Config::validate`] before anything is bound.

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
    /// Most simultaneous RTMP connections; beyond it, clients wait in the kernel's accept
    /// backlog until one closes (the slot is taken before `accept`).
    #[arg(long, env = "INGEST_MAX_CONNECTIONS", default_value_t = 2048)]
    pub max_connections: usize,
    /// Most simultaneous RTMP connections from one source address (0: no limit), so one
    /// host cannot take every slot. Players on the same host as the ingest (packagers,
    /// benchmarks) count too.
    #[arg(long, env = "INGEST_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 64)]
    pub max_connections_per_address: usize,
    /// Most published streams (a name whose publisher left holds its slot during
    /// `--republish-grace-secs`). Names that only players asked for are limited to as many
    /// again, separately, so they cannot take publishers' slots.
    #[arg(long, env = "INGEST_MAX_STREAMS", default_value_t = 64)]
    pub max_streams: usize,
    /// Largest chunk size a peer may set (bytes).
    #[arg(long, env = "INGEST_MAX_CHUNK_SIZE", default_value_t = 64 * 1024)]
    pub max_chunk_size: usize,
    /// Largest RTMP message accepted (bytes).
    #[arg(long, env = "INGEST_MAX_MESSAGE_SIZE", default_value_t = 16 * 1024 * 1024)]
    pub max_message_size: usize,
    /// Bytes of partial messages a connection may hold (sum of their declared lengths)
    /// while it is not publishing: before `connect`, before `publish`, and as a player.
    /// Commands are a few hundred bytes; a larger message closes the connection. A
    /// publisher may hold up to 32 MiB.
    #[arg(long, env = "INGEST_PRE_PUBLISH_BUFFER_BYTES", default_value_t = 64 * 1024)]
    pub pre_publish_buffer_bytes: usize,
    /// Memory budget for partial messages across all connections, in bytes (0: no limit).
    /// A connection whose next message would exceed it is closed. What the streams keep is
    /// bounded separately, per stream (`--stream-buffer-bytes`, `--gop-cache-bytes`).
    #[arg(long, env = "INGEST_MAX_BUFFERED_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_buffered_bytes: usize,
    /// The share of `--max-buffered-bytes` the connections of one source address may hold
    /// together (0: no limit), so one host cannot spend the whole budget.
    #[arg(
        long,
        env = "INGEST_MAX_BUFFERED_BYTES_PER_ADDRESS",
        default_value_t = 64 * 1024 * 1024
    )]
    pub max_buffered_bytes_per_address: usize,
    /// Handshake, `connect` and `publish` or `play` must complete within this many seconds;
    /// so must a new `publish`/`play` after a connection ended its previous one.
    #[arg(long, env = "INGEST_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10)]
    pub handshake_timeout_secs: u64,
    /// A player of a stream that has no publisher is closed after this many seconds
    /// (`NetStream.Play.StreamNotFound`); a publisher coming back in time keeps it. 0: never.
    #[arg(long, env = "INGEST_PLAY_WAIT_SECS", default_value_t = 30)]
    pub play_wait_secs: u64,
    /// For this many seconds after a publisher leaves, only a publisher from the same
    /// source address, or with the same `?key=` as it used, may publish that stream name
    /// (so nobody takes the name while its publisher reconnects). 0 disables it.
    #[arg(long, env = "INGEST_REPUBLISH_GRACE_SECS", default_value_t = 10)]
    pub republish_grace_secs: u64,
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
    /// Byte cap of each stream's broadcast ring (see `--subscriber-queue`, its length cap):
    /// the oldest messages leave it first, and a subscriber that far behind skips to the
    /// next keyframe. 32 MiB is ~2 minutes of the 2 Mbit/s demo stream, 5 s of 50 Mbit/s.
    #[arg(long, env = "INGEST_STREAM_BUFFER_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub stream_buffer_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        <Config as clap::Parser>::parse_from(["ingest"])
    }
}

/// A configuration value that makes no sense (see [`Config::validate`]).
#[derive(Debug, thiserror::Error)]
#[error("--{flag} ({env}) must be at least {min}, got {value}")]
pub struct ConfigError {
    /// The flag, without the dashes.
    pub flag: &'static str,
    /// Its environment variable.
    pub env: &'static str,
    /// The value given.
    pub value: u64,
    /// The least value that works.
    pub min: u64,
}

/// RTMP's initial chunk size (RTMP 1.0 section 5.4.1): every peer starts with it, so a
/// `--max-chunk-size` below it would refuse what every peer sends before its Set Chunk Size.
const RTMP_INITIAL_CHUNK_SIZE: u64 = 128;

impl Config {
    /// Checks the values before anything is bound or started: a value with which no
    /// connection, stream or message could ever be served (0 connections, 0 streams, a 0 s
    /// handshake, an empty ring or buffer...) is refused with the flag and variable named.
    /// Values where 0 is documented as "off" or "no limit" are not checked, nor is
    /// `--gop-cache-bytes` (0 caches no GOP: late joiners wait for the next keyframe).
    pub fn validate(self) -> Result<Self, ConfigError> {
        let floors: [(&str, &str, u64, u64); 9] = [
            (
                "max-connections",
                "INGEST_MAX_CONNECTIONS",
                self.max_connections as u64,
                1,
            ),
            (
                "max-streams",
                "INGEST_MAX_STREAMS",
                self.max_streams as u64,
                1,
            ),
            (
                "max-chunk-size",
                "INGEST_MAX_CHUNK_SIZE",
                self.max_chunk_size as u64,
                RTMP_INITIAL_CHUNK_SIZE,
            ),
            (
                "max-message-size",
                "INGEST_MAX_MESSAGE_SIZE",
                self.max_message_size as u64,
                1,
            ),
            (
                "pre-publish-buffer-bytes",
                "INGEST_PRE_PUBLISH_BUFFER_BYTES",
                self.pre_publish_buffer_bytes as u64,
                1,
            ),
            (
                "handshake-timeout-secs",
                "INGEST_HANDSHAKE_TIMEOUT_SECS",
                self.handshake_timeout_secs,
                1,
            ),
            (
                "idle-timeout-secs",
                "INGEST_IDLE_TIMEOUT_SECS",
                self.idle_timeout_secs,
                1,
            ),
            (
                "subscriber-queue",
                "INGEST_SUBSCRIBER_QUEUE",
                self.subscriber_queue as u64,
                1,
            ),
            (
                "stream-buffer-bytes",
                "INGEST_STREAM_BUFFER_BYTES",
                self.stream_buffer_bytes as u64,
                1,
            ),
        ];
        for (flag, env, value, min) in floors {
            if value < min {
                return Err(ConfigError {
                    flag,
                    env,
                    value,
                    min,
                });
            }
        }
        Ok(self)
    }

    /// Handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    /// Idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// How long a player may wait for a publisher ([`Config::play_wait_secs`]).
    pub fn play_wait(&self) -> Duration {
        Duration::from_secs(self.play_wait_secs)
    }

    /// Merged read/write interval ([`Config::merge_ms`]).
    pub fn merge_interval(&self) -> Duration {
        Duration::from_millis(self.merge_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_nonsense_is_refused_with_its_flag() {
        Config::default()
            .validate()
            .expect("the defaults are valid");
        let parse = |args: &[&str]| {
            <Config as clap::Parser>::parse_from(
                std::iter::once("ingest").chain(args.iter().copied()),
            )
        };
        for (args, message) in [
            (
                &["--max-connections", "0"][..],
                "--max-connections (INGEST_MAX_CONNECTIONS) must be at least 1, got 0",
            ),
            (
                &["--max-chunk-size", "127"],
                "--max-chunk-size (INGEST_MAX_CHUNK_SIZE) must be at least 128, got 127",
            ),
            (
                &["--subscriber-queue", "0"],
                "--subscriber-queue (INGEST_SUBSCRIBER_QUEUE) must be at least 1, got 0",
            ),
            (
                &["--handshake-timeout-secs", "0"],
                "--handshake-timeout-secs (INGEST_HANDSHAKE_TIMEOUT_SECS) must be at least 1, got 0",
            ),
        ] {
            let err = parse(args).validate().expect_err(message);
            assert_eq!(err.to_string(), message);
        }
        // Documented as "off" or "no limit": 0 is fine.
        parse(&[
            "--max-connections-per-address",
            "0",
            "--max-buffered-bytes",
            "0",
            "--play-wait-secs",
            "0",
            "--republish-grace-secs",
            "0",
            "--merge-ms",
            "0",
            "--gop-cache-bytes",
            "0",
        ])
        .validate()
        .expect("0 where it means off");
    }
}

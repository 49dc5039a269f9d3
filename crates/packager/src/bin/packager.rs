//! `packager`: pulls RTMP streams from the ingest and writes HLS to `--out/<stream>/`. Parses
//! and validates the CLI, builds the sources and calls [`packager::run`] until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use packager::metrics::Metrics;
use packager::source::{Connector, FileConnector, Pipeline, RtmpConnector, stream_name};
use packager::writer::Writer;
use packager::{Config, Packager, Source};

/// RTMP -> HLS packager; instances fed by the same ingest write identical output.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Source to pull, repeatable: `rtmp://host:port/app/<stream>` (or an FLV file path, played
    /// in real time and looped, for local testing). Output goes to OUT/<stream>/.
    #[arg(
        long = "source",
        env = "PACKAGER_SOURCES",
        value_delimiter = ',',
        required = true
    )]
    sources: Vec<String>,
    /// Output root directory (the origin serves it at /hls/).
    #[arg(long, env = "PACKAGER_OUT")]
    out: PathBuf,
    /// Admin HTTP address (/metrics, /healthz).
    #[arg(long, env = "PACKAGER_ADMIN_ADDR", default_value = "127.0.0.1:9183")]
    admin: SocketAddr,
    /// Segment target duration in whole seconds (all instances must agree).
    #[arg(long, env = "PACKAGER_TARGET_DURATION", default_value_t = 2)]
    target_duration: u64,
    /// Segments in the playlist window (all instances must agree).
    #[arg(long, env = "PACKAGER_WINDOW", default_value_t = 6)]
    window: usize,
    /// Least seconds a segment stays on disk after leaving the playlist (default: window x
    /// target + target). RFC 8216 6.2.2's period for the segment (its duration plus the longest
    /// playlist that listed it) applies where it is longer.
    #[arg(long, env = "PACKAGER_DELETE_GRACE")]
    delete_grace: Option<u64>,
    /// RTMP connect timeout in milliseconds.
    #[arg(long, env = "PACKAGER_CONNECT_TIMEOUT_MS", default_value_t = 5000)]
    connect_timeout_ms: u64,
    /// Largest accepted frame in bytes; larger frames are dropped.
    #[arg(long, env = "PACKAGER_MAX_FRAME_BYTES", default_value_t = 8 << 20)]
    max_frame_bytes: usize,
}

impl Cli {
    /// Checks every value before anything is bound, created or started.
    fn validate(self) -> anyhow::Result<Self> {
        if self.target_duration == 0 || self.window == 0 {
            bail!("--target-duration and --window must be positive");
        }
        for source in &self.sources {
            stream_name(source).with_context(|| format!("--source {source}"))?;
        }
        Ok(self)
    }

    /// How long a retired segment stays on disk.
    fn delete_grace(&self) -> Duration {
        Duration::from_secs(
            self.delete_grace
                .unwrap_or(self.target_duration * (self.window as u64 + 1)),
        )
    }
}

fn main() -> anyhow::Result<()> {
    service::init_tracing();
    let cli = config_schema::parse::<Cli>(&[]).validate()?;
    let cfg = Config {
        target_duration_ms: cli.target_duration * 1000,
        window: cli.window,
        max_frame_bytes: cli.max_frame_bytes,
        ..Config::default()
    };
    let metrics = Metrics::new();
    let mut sources = Vec::with_capacity(cli.sources.len());
    for source in &cli.sources {
        let stream = stream_name(source).with_context(|| format!("--source {source}"))?;
        let connector: Box<dyn Connector> = if source.starts_with("rtmp://") {
            Box::new(RtmpConnector::new(
                source.clone(),
                Duration::from_millis(cli.connect_timeout_ms),
            )?)
        } else {
            Box::new(FileConnector::new(source, true))
        };
        tracing::info!(stream, source, "starting");
        sources.push(Source {
            connector,
            pipeline: Pipeline {
                writer: Writer::new(cli.out.join(&stream), cli.delete_grace()),
                packager: Packager::new(cfg.clone()),
                metrics: metrics.clone(),
                stream,
            },
        });
    }
    // The sources have threads of their own; this runtime only serves the admin endpoint
    // and waits for the signal.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async {
        let admin = tokio::net::TcpListener::bind(cli.admin)
            .await
            .with_context(|| format!("binding the admin address {}", cli.admin))?;
        packager::run(sources, Some(admin), metrics, service::shutdown_signal())
            .await
            .context("running the packager")
    })
}

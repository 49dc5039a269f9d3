//! `packager`: pulls RTMP streams from the ingest and writes HLS to `--out/<stream>/`.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use packager::metrics::{self, Metrics};
use packager::source::{Connector, FileConnector, Pipeline, RtmpConnector, stream_name};
use packager::writer::Writer;
use packager::{Config, Packager};

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

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli: Cli = config_schema::parse(&[]);
    if cli.target_duration == 0 || cli.window == 0 {
        bail!("--target-duration and --window must be positive");
    }
    let grace = Duration::from_secs(
        cli.delete_grace
            .unwrap_or(cli.target_duration * (cli.window as u64 + 1)),
    );
    let cfg = Config {
        target_duration_ms: cli.target_duration * 1000,
        window: cli.window,
        max_frame_bytes: cli.max_frame_bytes,
        ..Config::default()
    };
    let metrics = Metrics::new();
    let listener = TcpListener::bind(cli.admin)
        .with_context(|| format!("binding the admin address {}", cli.admin))?;
    tracing::info!(addr = %listener.local_addr()?, "admin endpoint listening");
    {
        let metrics = metrics.clone();
        std::thread::spawn(move || metrics::serve(listener, metrics));
    }
    static STOP: AtomicBool = AtomicBool::new(false);
    let mut threads = Vec::new();
    for source in &cli.sources {
        let stream = stream_name(source).with_context(|| format!("source {source}"))?;
        let mut connector: Box<dyn Connector> = if source.starts_with("rtmp://") {
            Box::new(RtmpConnector::new(
                source.clone(),
                Duration::from_millis(cli.connect_timeout_ms),
            )?)
        } else {
            Box::new(FileConnector::new(source, true))
        };
        let mut pipeline = Pipeline {
            writer: Writer::new(cli.out.join(&stream), grace),
            packager: Packager::new(cfg.clone()),
            metrics: metrics.clone(),
            stream: stream.clone(),
        };
        tracing::info!(stream, source, "starting");
        threads.push(
            std::thread::Builder::new()
                .name(format!("src-{stream}"))
                .spawn(move || pipeline.run(connector.as_mut(), &STOP))?,
        );
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

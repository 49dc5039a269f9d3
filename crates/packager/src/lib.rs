//! RTMP -> HLS packager whose output is interchangeable between instances.
//!
//! Two packagers (primary and backup) reading the same ingest write the same playlist and
//! byte-identical MPEG-TS segments, so a player switched between origins sees no difference
//! (RFC 8216 6.3.5; docs/ARCHITECTURE.md, "Interchangeable packagers"). See [`segmenter`] for the rules
//! that make every decision a function of the stream alone.
//!
//! # Layout
//! - [`flv`]: FLV tag bodies (what RTMP audio/video messages carry) and an FLV file reader.
//! - [`h264`]: AVCDecoderConfigurationRecord, length-prefixed NALs -> Annex B (AUD, SPS/PPS).
//! - [`aac`]: AudioSpecificConfig -> ADTS headers.
//! - [`ts`]: deterministic MPEG-TS muxer (PAT/PMT, PES, PCR, continuity counters, stuffing).
//! - [`playlist`]: the sliding-window media playlist (m3u8-rs).
//! - [`segmenter`]: the sans-IO core, [`Packager::push`]: events in, [`Output`]s out.
//! - [`writer`]: applies outputs to a directory: atomic writes, retries, delayed deletion.
//! - [`source`]: the I/O edge: connectors (RTMP, FLV file), reconnect with backoff.
//! - [`metrics`]: Prometheus metrics (`packager_*`).
//! - [`run`] (here): the service: every source's pipeline, the admin endpoint (`/metrics`,
//!   `/healthz`, on the `service` crate's server), and the stop at shutdown.
//! - `src/bin/packager.rs`: CLI (clap, env vars): validates, binds the admin address, calls
//!   [`run`] with `service::shutdown_signal()`.
//!
//! Crates: `m3u8-rs` writes the playlist; the TS muxer is hand-written (why: see [`ts`]) and
//! tested against the `mpeg2ts` crate's reader and ffprobe.
//!
//! # Limits of interchangeability
//! Instances agree on everything derived from the session (numbers, names, PDT, bytes,
//! discontinuity numbering across publisher restarts, via `streamSessionId`). What only an
//! instance that watched it can know is not reproduced by a later joiner: a timestamp jump
//! inside a session (its discontinuity count, and after a backwards jump the rebased stream
//! time). A keyframe interval longer than the target duration skips numbers; the playlist then
//! restarts its window (see [`playlist::Playlist::push`]). Audio-only streams are not segmented.
#![deny(missing_docs)]

pub mod aac;
pub mod flv;
pub mod h264;
pub mod metrics;
pub mod playlist;
pub mod segmenter;
pub mod source;
pub mod ts;
pub mod writer;

pub use segmenter::{Config, Event, Metadata, Output, Packager};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::source::{Connector, Pipeline};

/// One stream to package: where its events come from, and the pipeline they go through.
pub struct Source {
    /// Opens connections to the stream (RTMP play, or an FLV file).
    pub connector: Box<dyn Connector>,
    /// Core, writer and metrics of the stream.
    pub pipeline: Pipeline,
}

/// Packages every source and serves `metrics` on `admin` until `shutdown` resolves; then stops
/// the sources (a connect or read in progress is interrupted, see [`source`]), waits for each
/// to finish the event in hand, drains the admin server, and returns.
///
/// Why each source runs on an OS thread of its own (with a current-thread runtime for the
/// RTMP client) rather than as a task on this runtime: the read batching
/// ([`source::READ_BATCH_INTERVAL`]) works because a sleeping source thread does not poll its
/// socket, so packets pile up in the kernel and one wakeup reads them all; a task on a shared
/// runtime would be woken by the reactor on every packet. The admin server, the shutdown and
/// the wait for the sources run on the caller's runtime.
pub async fn run(
    sources: Vec<Source>,
    admin: Option<TcpListener>,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let stop = CancellationToken::new();
    let admin = match admin {
        Some(admin) => {
            tracing::info!(addr = %admin.local_addr()?, "admin endpoint listening");
            let router = service::http::metrics_router(move || metrics.render());
            Some(tokio::spawn(service::serve_admin(
                admin,
                router,
                stop.clone().cancelled_owned(),
            )))
        }
        None => None,
    };
    let mut threads = Vec::with_capacity(sources.len());
    for Source {
        mut connector,
        mut pipeline,
    } in sources
    {
        let source_stop = stop.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("src-{}", pipeline.stream))
            .spawn(move || pipeline.run(connector.as_mut(), &source_stop));
        match spawned {
            Ok(thread) => threads.push(thread),
            Err(e) => {
                // Stop those already started rather than run with a stream missing.
                stop.cancel();
                join(threads).await;
                return Err(e);
            }
        }
    }
    shutdown.await;
    tracing::info!(sources = threads.len(), "stopping");
    stop.cancel();
    join(threads).await;
    if let Some(admin) = admin {
        // Bounded by the admin server's drain time.
        let _ = admin.await;
    }
    tracing::info!("packager stopped");
    Ok(())
}

/// Waits for source threads without blocking the runtime.
async fn join(threads: Vec<std::thread::JoinHandle<()>>) {
    let joined = tokio::task::spawn_blocking(move || {
        for thread in threads {
            let name = thread.thread().name().unwrap_or("source").to_owned();
            if thread.join().is_err() {
                tracing::error!(thread = name, "source thread panicked");
            }
        }
    });
    if let Err(e) = joined.await {
        tracing::error!(error = %e, "waiting for the source threads failed");
    }
}

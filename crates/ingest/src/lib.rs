//! RTMP ingest server: publishers push `rtmp://HOST:1935/<app>/<stream>`, any number of
//! subscribers (packagers, players) play it with the publisher's timestamps unchanged.
//!
//! # Layout
//! - [`config`]: [`Config`], the CLI flags / environment variables.
//! - [`budget`]: connection slots per source address and the memory budget for partial
//!   messages (total and per address).
//! - [`conn`]: one task per RTMP connection: handshake, commands, publish or play.
//! - [`hub`]: streams, publish sessions (id, start time), GOP cache, and the fan-out: each
//!   message serialised once into a bounded per-stream ring that subscribers pull from.
//! - [`metrics`]: Prometheus metrics (`ingest_*`), served on the admin endpoint (`/metrics`,
//!   `/healthz`) by the `service` crate's hardened server.
//! - `src/bin/ingest.rs`: parses the CLI and calls [`run`];
//!   `src/bin/ingest-loadgen.rs`: N PlayClients for benchmarks.
//!
//! # Contract with the packagers
//! Every subscriber's `onMetaData` carries the publisher's properties plus
//! `streamStartTimeMs` (UNIX ms at RTMP timestamp 0 of the publish session: wall clock at
//! the first media message minus its timestamp) and `streamSessionId` (increments with every
//! publish session of the stream). It is sent at play start and again when a publish
//! session starts, after a StreamBegin; the session's sequence headers follow. A publisher
//! leaving sends StreamEOF + `NetStream.Play.UnpublishNotify`; subscribers stay connected.
#![deny(missing_docs)]

pub mod budget;
pub mod config;
pub mod conn;
pub mod hub;
pub mod metrics;

pub use config::Config;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Shared state of a running server.
pub struct Server {
    /// Configuration.
    pub config: Config,
    /// Streams.
    pub hub: hub::Hub,
    /// Metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// Connection slots per address and the memory budget.
    pub budget: Arc<budget::Budget>,
    next_id: AtomicU64,
}

impl Server {
    /// A server with a fresh hub and metrics.
    pub fn new(config: Config) -> Arc<Self> {
        let metrics = metrics::Metrics::new();
        let hub = hub::Hub::new(
            hub::HubLimits {
                max_streams: config.max_streams,
                stream_buffer_bytes: config.stream_buffer_bytes,
                republish_grace: std::time::Duration::from_secs(config.republish_grace_secs),
                gop_cache_bytes: config.gop_cache_bytes,
                max_skipped_gops: config.max_skipped_gops,
                ring_len: config.subscriber_queue,
            },
            metrics.clone(),
        );
        let budget = budget::Budget::new(
            budget::BudgetLimits {
                connections_per_address: config.max_connections_per_address,
                total: config.max_buffered_bytes,
                per_address: config.max_buffered_bytes_per_address,
            },
            metrics.clone(),
        );
        Arc::new(Self {
            config,
            hub,
            metrics,
            budget,
            next_id: AtomicU64::new(1),
        })
    }

    /// A process-unique connection id (for logs and the hub).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Runs the RTMP server on `listener` and the admin endpoint on `config.admin` until
/// `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let admin = TcpListener::bind(config.admin).await?;
    run_with_admin(listener, Some(admin), Server::new(config), shutdown).await
}

/// Like [`run`], with an already-bound admin listener (or none) and server state the caller
/// can inspect (tests read its metrics).
pub async fn run_with_admin(
    listener: TcpListener,
    admin: Option<TcpListener>,
    server: Arc<Server>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin = match admin {
        Some(admin) => {
            tracing::info!(addr = %admin.local_addr()?, "admin endpoint listening");
            let metrics = server.metrics.clone();
            let router = service::http::metrics_router(move || metrics.render());
            let mut rx = stop_rx.clone();
            Some(tokio::spawn(service::serve_admin(
                admin,
                router,
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            )))
        }
        None => None,
    };
    tracing::info!(addr = %listener.local_addr()?, app = %server.config.app, "RTMP listening");
    let permits = Arc::new(Semaphore::new(server.config.max_connections));
    tokio::pin!(shutdown);
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: log and keep serving the connections we have.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached, refusing");
            server.metrics.connections_rejected.inc();
            continue;
        };
        let Some(slot) = server.budget.admit(peer.ip()) else {
            tracing::warn!(%peer, limit = server.config.max_connections_per_address, "connection limit of this address reached, refusing");
            server.metrics.connections_rejected.inc();
            continue;
        };
        let server = server.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let id = server.next_id();
            server.metrics.connections.inc();
            tokio::select! {
                r = conn::handle(sock, peer, id, slot, server.clone()) => {
                    if let Err(e) = r {
                        server.metrics.protocol_errors.inc();
                        if e.is_memory_refusal() {
                            server.metrics.budget_refusals.inc();
                        }
                        tracing::warn!(%peer, conn = id, error = %e, "connection closed on error");
                    }
                }
                _ = stop.wait_for(|s| *s) => {}
            }
            server.metrics.connections.dec();
        });
    }
    let _ = stop_tx.send(true);
    if let Some(admin) = admin {
        // Bounded: the admin server drains for at most its grace period.
        let _ = admin.await;
    }
    tracing::info!("RTMP server stopped");
    Ok(())
}

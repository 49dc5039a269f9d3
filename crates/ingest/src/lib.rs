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

/// Bound on the wait for connection tasks at shutdown: they are told to stop at once (a live
/// stream has no request to finish), so this is only the time they take to notice.
const CONNECTION_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

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
///
/// Connections are accepted by the service crate's [`service::accept::accept_loop`]: a slot
/// of `--max-connections` is taken before `accept` (beyond it, clients wait in the kernel's
/// backlog until a connection closes), accept errors back off only when a resource ran out,
/// and shutdown stops accepting, then stops every connection. Each accepted connection must
/// also get a slot of its source address (`--max-connections-per-address`), or it is closed
/// at once and counted in `ingest_connections_rejected_total`.
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
    // Connections serve until their peer leaves; at shutdown they are told to stop at once,
    // and so is the admin endpoint.
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let limits = service::accept::AcceptLimits {
        slots: Arc::new(Semaphore::new(server.config.max_connections)),
        shutdown_grace: CONNECTION_STOP_GRACE,
    };
    service::accept::accept_loop(listener, limits, shutdown, |sock, peer, permit, _| {
        let Some(slot) = server.budget.admit(peer.ip()) else {
            tracing::warn!(%peer, limit = server.config.max_connections_per_address, "connection limit of this address reached, refusing");
            server.metrics.connections_rejected.inc();
            return None;
        };
        let server = server.clone();
        let mut stop = stop_rx.clone();
        Some(async move {
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
        })
    })
    .await;
    if let Some(admin) = admin {
        // Bounded: the admin server drains for at most its grace period.
        let _ = admin.await;
    }
    tracing::info!("RTMP server stopped");
    Ok(())
}

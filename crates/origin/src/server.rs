//! Connection handling: accept loop, connection cap, TLS handshake, HTTP/1.1 + h2 (auto),
//! timeouts, and the bounded graceful drain at shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::activity::{Activity, Tracked};
use crate::cache::{PlaylistCache, SegmentCache};
use crate::config::Config;
use crate::error::Result;
use crate::files::Root;
use crate::handler::{self, App};
use crate::metrics::Metrics;
use crate::tls;

/// Pause after a failed `accept` (typically EMFILE) so the loop does not spin on it.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Everything a connection task needs, shared by all of them.
struct Shared {
    app: Arc<App>,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    config: Config,
}

/// Serves `listener` until `shutdown` resolves, then stops accepting, lets in-flight requests
/// finish for at most `config.shutdown_grace`, and drops whatever is left.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let config = config.validate()?;
    let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
    let app = Arc::new(App {
        root: Arc::new(Root::open(config.root.clone())?),
        cache: SegmentCache::new(config.cache_max_bytes, config.cache_max_entry_bytes),
        playlists: Arc::new(PlaylistCache::new()),
        metrics: Metrics::new()?,
        max_uri_bytes: config.max_uri_bytes,
        offload_file_io: config.offload_file_io,
    });
    let shared = Arc::new(Shared {
        app,
        builder: builder(&config),
        tls,
        config,
    });
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
    let graceful = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    tracing::info!(
        addr = %listener.local_addr()?,
        root = %shared.config.root.display(),
        tls = shared.tls.is_some(),
        "origin listening"
    );

    tokio::pin!(shutdown);
    loop {
        // Take a connection slot before accepting: beyond the cap, clients wait in the
        // kernel backlog instead of costing us a task and buffers.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = limit.clone().acquire_owned() => permit.expect("semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        // Reap finished connection tasks so the set holds at most the open connections.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(connection(
            shared.clone(),
            stream,
            peer,
            permit,
            graceful.watcher(),
        ));
    }

    drop(listener);
    tracing::info!(open = tasks.len(), grace = ?shared.config.shutdown_grace, "shutting down");
    let drained = tokio::time::timeout(shared.config.shutdown_grace, async {
        graceful.shutdown().await;
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "grace period over, dropping remaining connections"
        );
        tasks.shutdown().await;
    }
    Ok(())
}

fn builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Also bounds keep-alive waits: hyper starts this timer when it begins reading the
        // next request head.
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes)
        .max_headers(config.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Keeps the open-connections gauge and the connection slot for a connection's lifetime.
struct ConnectionGuard {
    _permit: OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    watcher: Watcher,
) {
    let metrics = &shared.app.metrics;
    metrics.open_connections.inc();
    let _guard = ConnectionGuard {
        _permit: permit,
        gauge: metrics.open_connections.clone(),
    };
    // Small responses (playlists) go out at once instead of waiting on Nagle.
    let _ = stream.set_nodelay(true);
    let activity = Activity::new();
    let stream = Tracked::new(stream, activity.clone());
    match &shared.tls {
        None => serve(&shared, stream, activity, watcher).await,
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(shared.config.header_read_timeout, acceptor.accept(stream));
            match handshake.await {
                Ok(Ok(tls_stream)) => serve(&shared, tls_stream, activity, watcher).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn serve<S>(shared: &Shared, stream: S, activity: Arc<Activity>, watcher: Watcher)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = shared.app.clone();
    let service = service_fn(move |req| handler::handle(app.clone(), req));
    let conn = shared
        .builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    let conn = watcher.watch(conn);
    tokio::pin!(conn);
    let idle_timeout = shared.config.idle_timeout;
    loop {
        tokio::select! {
            result = &mut conn => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(activity.idle_deadline(idle_timeout).into()) => {
                // Re-check: a write may have landed while this timer was pending.
                if activity.idle_deadline(idle_timeout) <= std::time::Instant::now() {
                    shared.app.metrics.idle_closed.inc();
                    tracing::debug!("closing connection: nothing written for the idle timeout");
                    return;
                }
            }
        }
    }
}

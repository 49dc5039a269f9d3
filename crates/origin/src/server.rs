//! Connection handling: the accept loop (the service crate's [`service::accept::accept_loop`]:
//! global connection cap taken before `accept`, accept-error backoff, bounded graceful drain
//! at shutdown), the per-source-address cap, TLS handshake, HTTP/1.1 (plain: [`crate::h1`],
//! with `sendfile`) + h2 (hyper, auto), and the connection watchdog.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use service::accept::AcceptLimits;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use tokio::io::{AsyncRead, AsyncWrite};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::activity::{Activity, Expiry, Tracked};
use crate::cache::{PlaylistCache, SegmentCache};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::files::Root;
use crate::h1;
use crate::handler::{self, App};
use crate::metrics::Metrics;
use crate::tls;

/// Accept backlog of each listener [`bind_shards`] makes (tokio's own default).
const LISTEN_BACKLOG: libc::c_int = 1024;

/// Everything a connection task needs, shared by all of them and by every shard.
struct Shared {
    app: Arc<App>,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    config: Config,
    // One cap for the whole server, whichever shard accepted the connection. A tokio
    // semaphore works across runtimes: it only needs wakers.
    limit: Arc<Semaphore>,
    // Open connections per source address, shared by every shard like `limit`.
    per_address: Arc<PerAddress>,
}

/// Open connections per source address, capped.
#[derive(Debug)]
struct PerAddress {
    max: usize,
    // A std Mutex: one hash update per accept and per close, never held across an await.
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection counted against its source address; released on drop.
struct AddressSlot {
    table: Arc<PerAddress>,
    address: IpAddr,
}

impl PerAddress {
    /// A slot for a connection from `address`, or `None` if that address is at the cap.
    fn acquire(self: &Arc<Self>, address: IpAddr) -> Option<AddressSlot> {
        // An IPv4 client on a dual-stack listener appears as ::ffff:a.b.c.d: count it as
        // its IPv4 address.
        let address = address.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(address).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            table: self.clone(),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                // Forget the address, so the table holds only addresses with open connections.
                open.remove(&self.address);
            }
        }
    }
}

impl Shared {
    fn new(config: Config) -> Result<Arc<Self>> {
        let config = config.validate()?;
        let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
        let app = Arc::new(App {
            root: Arc::new(Root::open(config.root.clone())?),
            cache: Arc::new(SegmentCache::new(
                config.cache_max_bytes,
                config.cache_max_entry_bytes,
            )),
            playlists: Arc::new(PlaylistCache::new()),
            metrics: Metrics::new()?,
            max_uri_bytes: config.max_uri_bytes,
            offload_file_io: config.offload_file_io,
            segment_wait: config.segment_wait,
            segment_waiters: Arc::new(tokio::sync::Semaphore::new(config.max_segment_waiters)),
            peers: if config.peers.is_empty() {
                None
            } else {
                let peers = config
                    .peers
                    .iter()
                    .map(|url| crate::peer::Peer::parse(url))
                    .collect::<Result<Vec<_>>>()?;
                Some(Arc::new(crate::peer::Peers::new(
                    peers,
                    config.peer_fill_timeout,
                    config.max_peer_fills,
                )))
            },
        });
        Ok(Arc::new(Self {
            app,
            builder: builder(&config),
            tls,
            limit: Arc::new(Semaphore::new(config.max_connections)),
            per_address: Arc::new(PerAddress {
                max: config.max_connections_per_address,
                open: Mutex::default(),
            }),
            config,
        }))
    }

    /// The state of one shard: shared except for its playlist cache ([`App::for_shard`]).
    fn for_shard(&self) -> Arc<Self> {
        Arc::new(Self {
            app: Arc::new(self.app.for_shard()),
            builder: self.builder.clone(),
            tls: self.tls.clone(),
            config: self.config.clone(),
            limit: self.limit.clone(),
            per_address: self.per_address.clone(),
        })
    }

    fn announce(&self, addr: SocketAddr, shards: usize) {
        tracing::info!(
            %addr,
            shards,
            root = %self.config.root.display(),
            tls = self.tls.is_some(),
            "origin listening"
        );
    }
}

/// Serves `listener` until `shutdown` resolves, then stops accepting, lets in-flight requests
/// finish for at most `config.shutdown_grace`, and drops whatever is left.
///
/// Runs on the caller's runtime, whatever its flavor. The binary uses [`run_sharded`].
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let shared = Shared::new(config)?;
    shared.announce(listener.local_addr()?, 1);
    accept_loop(shared, listener, shutdown).await
}

/// Like [`run`], with one shard per listener: a single-threaded tokio runtime on an OS thread
/// of its own, accepting on its own listener. Blocks until `shutdown` resolves (or a shard
/// fails) and every shard has drained.
///
/// Why shards: a live origin's work is many tiny requests, and on a multi-threaded runtime
/// the cross-thread wakeups and work stealing cost more than the requests themselves
/// (measured on 2 cores with wrk: ~60k vs ~90k playlist requests/s). This is nginx's model:
/// one event loop per core, the kernel spreading connections over the listeners
/// ([`bind_shards`] makes them with `SO_REUSEPORT`). Shards share one [`App`] (caches,
/// metrics) and one connection cap.
pub fn run_sharded(
    listeners: Vec<std::net::TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let shared = Shared::new(config)?;
    if let Some(first) = listeners.first() {
        shared.announce(first.local_addr()?, listeners.len());
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Each shard reports here when its loop ends, so that a failed shard stops the others.
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut shards = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners.into_iter().enumerate() {
        let (shared, mut stop_rx, ended_tx) =
            (shared.for_shard(), stop_rx.clone(), ended_tx.clone());
        let shard = std::thread::Builder::new()
            .name(format!("origin-shard-{index}"))
            .spawn(move || -> Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let result = runtime.block_on(async move {
                    listener.set_nonblocking(true)?;
                    let listener = TcpListener::from_std(listener)?;
                    let stop = async move {
                        let _ = stop_rx.wait_for(|stop| *stop).await;
                    };
                    accept_loop(shared, listener, stop).await
                });
                let _ = ended_tx.send(());
                result
            })?;
        shards.push(shard);
    }
    drop(ended_tx);
    let waiter = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    waiter.block_on(async {
        tokio::select! {
            () = shutdown => {}
            _ = ended_rx.recv() => tracing::error!("a shard stopped, stopping the others"),
        }
    });
    let _ = stop_tx.send(true);
    let mut result = Ok(());
    for shard in shards {
        let ended = shard
            .join()
            .unwrap_or_else(|_| Err(Error::Config("a shard panicked".into())));
        if result.is_ok() {
            result = ended;
        }
    }
    result
}

/// `shards` listeners on `addr`, all with `SO_REUSEPORT` so that the kernel spreads incoming
/// connections over them (by flow hash). A port of 0 is resolved by the first one.
///
/// `SO_REUSEPORT` would also let another process of the same user join the group silently
/// (say, an old origin still running): so a plain bind probes the address first and fails
/// with `EADDRINUSE` as usual if anyone listens there.
pub fn bind_shards(addr: SocketAddr, shards: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(shards.max(1));
    for _ in 0..shards.max(1) {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        // tokio's `TcpSocket::listen` would register with a runtime; each shard registers
        // its listener with its own, so listen(2) here and hand over a std listener.
        let fd = socket.into_raw_fd();
        // SAFETY: `fd` is the bound socket we own from `into_raw_fd`; from_raw_fd takes
        // ownership once, so it is closed exactly once, also when listen fails.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        // SAFETY: listen(2) on a valid socket descriptor, no pointers involved.
        if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// One accept loop until `shutdown`, then the bounded drain: the service crate's
/// [`accept_loop`] (global cap taken before `accept`, accept-error backoff, bounded drain),
/// with the origin's per-address cap on each accepted connection.
async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    // Tells connections served by [`h1`] to close once idle; hyper's are told by the
    // graceful-shutdown watcher each connection gets.
    let (stop_tx, stop_rx) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let limits = AcceptLimits {
        slots: shared.limit.clone(),
        shutdown_grace: shared.config.shutdown_grace,
    };
    service::accept::accept_loop(
        listener,
        limits,
        shutdown,
        |stream, peer, permit, watcher| {
            let Some(slot) = shared.per_address.acquire(peer.ip()) else {
                // Closing at once (not waiting in the backlog) so one address cannot hold the
                // global cap's slots, and the client learns it now.
                shared.app.metrics.refused.inc();
                tracing::debug!(%peer, "refused: source address at its connection cap");
                return None;
            };
            Some(connection(
                shared.clone(),
                stream,
                peer,
                (permit, slot),
                watcher,
                stop_rx.clone(),
            ))
        },
    )
    .await;
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

/// Keeps the open-connections gauge and the connection slots for a connection's lifetime.
struct ConnectionGuard {
    _slots: (OwnedSemaphorePermit, AddressSlot),
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
    slots: (OwnedSemaphorePermit, AddressSlot),
    watcher: Watcher,
    mut stop: watch::Receiver<bool>,
) {
    let metrics = &shared.app.metrics;
    metrics.open_connections.inc();
    let _guard = ConnectionGuard {
        _slots: slots,
        gauge: metrics.open_connections.clone(),
    };
    // Small responses (playlists) go out at once instead of waiting on Nagle.
    let _ = stream.set_nodelay(true);
    let activity = Activity::new();
    let stream = Tracked::new(stream, activity.clone());
    let work = async {
        match &shared.tls {
            // With offloaded file I/O (slow file systems), sendfile would block the event
            // loop on the disk: hyper streams files through the blocking pool instead.
            None if shared.config.offload_file_io => {
                serve_hyper(&shared, stream, &activity, watcher).await;
            }
            None => {
                let limits = h1::Limits {
                    max_header_bytes: shared.config.max_header_bytes,
                    max_headers: shared.config.max_headers,
                };
                match h1::serve(&shared.app, stream, &activity, limits, &mut stop).await {
                    h1::Outcome::Closed => {}
                    h1::Outcome::HandOver(stream) => {
                        serve_hyper(&shared, stream, &activity, watcher).await;
                    }
                }
            }
            Some(acceptor) => {
                let handshake = tokio::time::timeout(
                    shared.config.header_read_timeout,
                    acceptor.accept(stream),
                );
                match handshake.await {
                    Ok(Ok(tls_stream)) => {
                        serve_hyper(&shared, tls_stream, &activity, watcher).await
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }
        }
    };
    watchdog(&shared, &activity, work).await;
}

/// Runs `work` (a connection) until it ends or the connection expires (see
/// [`Activity::deadline`]): nothing written for the idle timeout, or no request in progress
/// and none for the header timeout. Dropping `work` closes the connection.
async fn watchdog(shared: &Shared, activity: &Activity, work: impl Future<Output = ()>) {
    tokio::pin!(work);
    let (idle, header) = (
        shared.config.idle_timeout,
        shared.config.header_read_timeout,
    );
    loop {
        let (deadline, _) = activity.deadline(idle, header);
        tokio::select! {
            () = &mut work => return,
            () = tokio::time::sleep_until(deadline.into()) => {
                // Re-check: a write or a request may have landed while this timer was pending.
                let (deadline, why) = activity.deadline(idle, header);
                if deadline <= std::time::Instant::now() {
                    match why {
                        Expiry::Idle => shared.app.metrics.idle_closed.inc(),
                        Expiry::NoRequest => shared.app.metrics.no_request_closed.inc(),
                    }
                    tracing::debug!(?why, "closing connection");
                    return;
                }
            }
        }
    }
}

/// Serves a connection with hyper (HTTP/1.1 or h2, by preface or ALPN) until it ends.
async fn serve_hyper<S>(shared: &Shared, stream: S, activity: &Arc<Activity>, watcher: Watcher)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (app, activity) = (shared.app.clone(), activity.clone());
    let service = service_fn(move |req| {
        // In progress until hyper drops the response body: sent, or the stream reset.
        let in_flight = activity.request_started();
        let app = app.clone();
        async move {
            let response = handler::handle(app, req).await;
            response.map(|r| r.map(|body| body.in_flight(in_flight)))
        }
    });
    let conn = shared
        .builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

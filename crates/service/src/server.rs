//! The admin HTTP server every binary uses: HTTP/1.1 on hyper, over TCP or a unix socket,
//! with the origin's limits.
//!
//! What a peer can make it spend is bounded, so a scraper gone wrong, a port scanner or a
//! slowloris client cannot take the service's admin endpoint (or the service) down:
//! - **Connection cap** ([`Limits::max_connections`]): a slot is taken *before* `accept`, so
//!   clients beyond the cap wait in the kernel's accept backlog instead of costing a task and
//!   buffers; each is accepted as soon as a slot frees.
//! - **Header-read deadline** ([`Limits::header_read_timeout`]): a request head must arrive
//!   within it. hyper starts this timer when it starts waiting for a head, so it also closes
//!   a connection that never sends anything and an idle keep-alive connection.
//! - **Request-head bound** ([`Limits::max_head_bytes`]): a larger head is answered 431 and
//!   the connection closed. Bodies are the router's business: it reads them with a limit
//!   (`http_body_util::Limited`) and a timeout, or not at all.
//! - **Accept-error backoff** ([`ACCEPT_ERROR_BACKOFF`]): a failed `accept` (EMFILE, ENFILE,
//!   ENOBUFS) is logged and retried after a pause; retrying at once would spin a core on an
//!   error that only time (connections closing) can clear.
//! - **Bounded drain**: when `shutdown` resolves the listener is closed, requests in flight
//!   get [`Limits::shutdown_grace`] to finish, and whatever is left is dropped.
//!
//! Each call serves one listener with its own cap: a service with a read-only TCP endpoint
//! and a state-changing unix socket calls [`serve_admin_with`] twice (with two routers), so a
//! flood of TCP clients never locks the operator out of the socket. The router learns who is
//! asking from the request's [`Peer`] extension; [`Limits::admit`] refuses a peer before any
//! byte is read (e.g. [`root_or_same_user`] on a unix socket, from `SO_PEERCRED`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Pause after a failed `accept` before the next attempt (see the module docs).
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Smallest request-head buffer hyper accepts; larger than any admin request needs.
pub const MIN_HEAD_BYTES: usize = 8192;

/// Who is on the other end of a connection. Every request carries it as an extension
/// (`req.extensions().get::<Peer>()`), so a router can tell its channels apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client and its address.
    Tcp(SocketAddr),
    /// A unix socket client, with its credentials when the kernel gave them
    /// (`SO_PEERCRED`; `None` if the lookup failed).
    Unix {
        /// The peer process's effective uid.
        uid: Option<u32>,
        /// The peer process's pid.
        pid: Option<i32>,
    },
}

/// Whether `peer` is a unix socket client running as root or as this process's own user:
/// the check a state-changing admin socket makes, with [`Limits::admit`]. TCP peers and
/// peers without credentials are refused.
pub fn root_or_same_user(peer: &Peer) -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    matches!(peer, Peer::Unix { uid: Some(uid), .. } if *uid == 0 || *uid == me)
}

/// Admits every peer (the default of [`Limits::admit`]).
pub fn anyone(_: &Peer) -> bool {
    true
}

/// What one admin server lets a peer spend, and who it lets in.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections at once; further clients wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// Time a client has to send a request head, the first one and every one after it on a
    /// keep-alive connection.
    pub header_read_timeout: Duration,
    /// Largest request head buffered (at least [`MIN_HEAD_BYTES`], hyper's minimum); a larger
    /// one is answered 431.
    pub max_head_bytes: usize,
    /// Time requests in flight get to finish once shutdown begins.
    pub shutdown_grace: Duration,
    /// Decides, right after `accept`, whether a peer is served at all; a refused connection
    /// is closed without a byte. A plain `fn` so that [`Limits`] stays `Clone + Debug`.
    pub admit: fn(&Peer) -> bool,
}

impl Default for Limits {
    /// Sized for admin traffic: a Prometheus server, an operator, a health checker.
    fn default() -> Self {
        Limits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
            max_head_bytes: MIN_HEAD_BYTES,
            shutdown_grace: Duration::from_secs(1),
            admit: anyone,
        }
    }
}

/// A listener [`serve_admin`] can serve: TCP or a unix socket.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A unix socket listener (the caller binds it, with the permissions it wants).
    Unix(UnixListener),
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Listener::Tcp(listener)
    }
}

impl From<UnixListener> for Listener {
    fn from(listener: UnixListener) -> Self {
        Listener::Unix(listener)
    }
}

impl std::fmt::Display for Listener {
    /// The address it listens on, for logs: `127.0.0.1:9183` or the socket's path.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => write!(f, "{a}"),
                Err(_) => write!(f, "tcp (address unknown)"),
            },
            Listener::Unix(l) => match l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            {
                Some(p) => write!(f, "{p}"),
                None => write!(f, "unix (unnamed)"),
            },
        }
    }
}

/// What answers requests: any `Fn(Request<Incoming>) -> impl Future<Output = Response<...>>`
/// that can be shared between connections. Implemented for such closures; a router that
/// needs state captures an `Arc` of it.
pub trait Router: Send + Sync + 'static {
    /// Answers one request. Errors are responses too (4xx/5xx): the router decides what a
    /// peer sees.
    fn route(
        &self,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send + use<Self>;
}

impl<F, Fut> Router for F
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    fn route(
        &self,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send + use<F, Fut> {
        self(request)
    }
}

/// Serves `router` on `listener` with the default [`Limits`] until `shutdown` resolves, then
/// drains (see the module docs).
pub async fn serve_admin(
    listener: impl Into<Listener>,
    router: impl Router,
    shutdown: impl Future<Output = ()>,
) {
    serve_admin_with(listener, router, Limits::default(), shutdown).await;
}

/// [`serve_admin`] with explicit [`Limits`].
pub async fn serve_admin_with(
    listener: impl Into<Listener>,
    router: impl Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let router = Arc::new(router);
    match listener.into() {
        Listener::Tcp(l) => accept_loop(l, router, limits, shutdown).await,
        Listener::Unix(l) => accept_loop(l, router, limits, shutdown).await,
    }
}

/// The accept side of a listener, so one loop serves both kinds (and tests can inject
/// failures).
pub(crate) trait Accept: Send {
    /// The accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection and who it is from.
    fn accept(&mut self) -> impl Future<Output = std::io::Result<(Self::Io, Peer)>> + Send;
}

impl Accept for TcpListener {
    type Io = TcpStream;
    async fn accept(&mut self) -> std::io::Result<(TcpStream, Peer)> {
        let (stream, addr) = TcpListener::accept(self).await?;
        Ok((stream, Peer::Tcp(addr)))
    }
}

impl Accept for UnixListener {
    type Io = UnixStream;
    async fn accept(&mut self) -> std::io::Result<(UnixStream, Peer)> {
        let (stream, _) = UnixListener::accept(self).await?;
        let peer = match stream.peer_cred() {
            Ok(cred) => Peer::Unix {
                uid: Some(cred.uid()),
                pid: cred.pid(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "no credentials for a unix socket peer");
                Peer::Unix {
                    uid: None,
                    pid: None,
                }
            }
        };
        Ok((stream, peer))
    }
}

pub(crate) async fn accept_loop<A: Accept>(
    mut listener: A,
    router: Arc<impl Router>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let builder = builder(&limits);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // A slot before accepting: beyond the cap, clients wait in the kernel backlog.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (io, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?ACCEPT_ERROR_BACKOFF, "admin accept failed");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                    }
                }
            },
        };
        // Reap finished connections so the set holds at most the open ones.
        while connections.try_join_next().is_some() {}
        if !(limits.admit)(&peer) {
            tracing::warn!(?peer, "admin peer refused");
            continue;
        }
        let service = {
            let (router, peer) = (router.clone(), peer.clone());
            hyper::service::service_fn(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(peer.clone());
                let response = router.route(request);
                async move { Ok::<_, Infallible>(response.await) }
            })
        };
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
        connections.spawn(async move {
            let _slot = permit;
            if let Err(e) = connection.await {
                tracing::debug!(?peer, error = %e, "admin connection ended with an error");
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        graceful.shutdown().await;
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            left = connections.len(),
            "admin drain time over, dropping the remaining connections"
        );
        connections.shutdown().await;
    }
}

fn builder(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head_bytes.max(MIN_HEAD_BYTES));
    builder
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A listener whose every accept fails, as on EMFILE, and that counts the attempts.
    struct Failing(Arc<AtomicUsize>);

    impl Accept for Failing {
        type Io = tokio::io::DuplexStream;
        async fn accept(&mut self) -> std::io::Result<(Self::Io, Peer)> {
            self.0.fetch_add(1, Ordering::SeqCst);
            // Returning to the scheduler, as a real failed accept does, so that a loop
            // without backoff spins visibly instead of starving this test.
            tokio::task::yield_now().await;
            Err(std::io::Error::from_raw_os_error(libc::EMFILE))
        }
    }

    async fn not_found(_: Request<Incoming>) -> Response<Full<Bytes>> {
        crate::http::text(hyper::StatusCode::NOT_FOUND, "not found\n")
    }

    /// Time is paused and only moves when the test moves it: the loop may try `accept` once
    /// per backoff interval, however many times the scheduler runs it.
    #[tokio::test(start_paused = true)]
    async fn failed_accepts_are_retried_once_per_backoff_not_in_a_spin() {
        let attempts = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(accept_loop(
            Failing(attempts.clone()),
            Arc::new(not_found),
            Limits::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        // Many scheduler turns at one instant: a spinning loop would try on each of them.
        for _ in 0..1000 {
            tokio::task::yield_now().await;
        }
        let at_once = attempts.load(Ordering::SeqCst);
        assert_eq!(at_once, 1, "accept retried without waiting");
        // Ten backoff intervals of (virtual) time: about ten more attempts, not thousands.
        for _ in 0..10 {
            tokio::time::advance(ACCEPT_ERROR_BACKOFF).await;
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
        }
        let later = attempts.load(Ordering::SeqCst);
        assert!(
            (at_once + 9..=at_once + 11).contains(&later),
            "{later} attempts over 10 backoff intervals"
        );
        stop.send(()).expect("server still running");
        server
            .await
            .expect("the loop ends at shutdown, even while backing off");
    }

    #[test]
    fn only_root_or_our_own_user_passes_the_socket_check() {
        // SAFETY: geteuid(2) cannot fail.
        let me = unsafe { libc::geteuid() };
        let unix = |uid| Peer::Unix { uid, pid: None };
        assert!(root_or_same_user(&unix(Some(me))));
        assert!(root_or_same_user(&unix(Some(0))));
        assert!(!root_or_same_user(&unix(None)));
        let other = if me == 4242 { 4243 } else { 4242 };
        assert!(!root_or_same_user(&unix(Some(other))));
        assert!(!root_or_same_user(&Peer::Tcp(
            "127.0.0.1:1".parse().expect("address")
        )));
    }
}

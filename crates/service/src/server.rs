//! The admin HTTP server every binary uses: HTTP/1.1 on hyper, over TCP or a unix socket,
//! with the origin's limits.
//!
//! What a peer can make it spend is bounded, so a scraper gone wrong, a port scanner or a
//! slowloris client cannot take the service's admin endpoint (or the service) down:
//! - **Connection cap** ([`Limits::max_connections`]), **accept-error backoff** and **bounded
//!   drain** ([`Limits::shutdown_grace`]): the accept loop the origin's data port runs too,
//!   [`crate::accept::accept_loop`] (its docs say how each works).
//! - **Header-read deadline** ([`Limits::header_read_timeout`]): a request head must arrive
//!   within it. hyper starts this timer when it starts waiting for a head, so it also closes
//!   a connection that never sends anything and an idle keep-alive connection.
//! - **Request-head bound** ([`Limits::max_head_bytes`]): a larger head is answered 431 and
//!   the connection closed. Bodies are the router's business: it reads them with a limit
//!   (`http_body_util::Limited`) and a timeout, or not at all.
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
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::accept::{Accept, AcceptLimits, accept_loop};

pub use crate::accept::ACCEPT_ERROR_BACKOFF;

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

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Self {
        Peer::Tcp(addr)
    }
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
        Listener::Tcp(l) => serve_on(l, router, limits, shutdown).await,
        Listener::Unix(l) => serve_on(l, router, limits, shutdown).await,
    }
}

/// A unix socket client, with its credentials from `SO_PEERCRED`.
impl Accept for UnixListener {
    type Io = UnixStream;
    type Addr = Peer;
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

/// The accept loop on one listener, each admitted connection served by hyper's HTTP/1.
async fn serve_on<A>(
    listener: A,
    router: Arc<impl Router>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) where
    A: Accept,
    A::Addr: Into<Peer>,
{
    let builder = builder(&limits);
    let accept_limits = AcceptLimits {
        slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
        shutdown_grace: limits.shutdown_grace,
    };
    accept_loop(
        listener,
        accept_limits,
        shutdown,
        |io, addr, slot, watcher| {
            let peer: Peer = addr.into();
            if !(limits.admit)(&peer) {
                tracing::warn!(?peer, "admin peer refused");
                return None;
            }
            let service = {
                let (router, peer) = (router.clone(), peer.clone());
                hyper::service::service_fn(move |mut request: Request<Incoming>| {
                    request.extensions_mut().insert(peer.clone());
                    let response = router.route(request);
                    async move { Ok::<_, Infallible>(response.await) }
                })
            };
            let connection = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
            Some(async move {
                let _slot = slot;
                if let Err(e) = connection.await {
                    tracing::debug!(?peer, error = %e, "admin connection ended with an error");
                }
            })
        },
    )
    .await;
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

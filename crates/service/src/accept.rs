//! The accept loop of every server in hls-edge: the origin's data port, the ingest's RTMP
//! port and every admin endpoint ([`crate::serve_admin`]) run this one loop, so the limits on
//! what a peer can make a listener spend are written once:
//! - **Connection cap** ([`AcceptLimits::slots`]): a slot is taken *before* `accept`, so
//!   clients beyond the cap wait in the kernel's accept backlog instead of costing a task and
//!   buffers; each is accepted as soon as a slot frees. The connection's task holds the slot.
//! - **Accept-error backoff** ([`ACCEPT_ERROR_BACKOFF`]): an `accept` that failed for want of
//!   a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM: [`is_resource_exhaustion`]) is logged and
//!   retried after a pause; retrying at once would spin a core on an error that only time
//!   (connections closing) can clear. Any other error belongs to the one connection being
//!   accepted (ECONNABORTED: the client reset it while it waited in the backlog; EPROTO, EPERM
//!   from a firewall): it is logged at debug and the next connection is accepted at once, as
//!   hyper and axum do, so one client's reset never delays the others.
//! - **Bounded drain**: when `shutdown` resolves the listener is closed, connections get
//!   [`AcceptLimits::shutdown_grace`] to finish (hyper connections are told through the
//!   graceful-shutdown watcher each one gets), and whatever is left is dropped.
//!
//! What a server does with a connection is its own: the admin server serves a router with
//! hyper's HTTP/1 and a header-read deadline; the origin adds a per-address cap, TLS, its own
//! HTTP/1 path with `sendfile`, hyper for the rest (h2) and a watchdog; the ingest adds its
//! per-address cap and serves RTMP, stopping every connection at shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// Pause after a failed `accept` before the next attempt (see the module docs).
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Whether a failed `accept` ran out of a resource that only time frees (file descriptors,
/// buffer or kernel memory), so retrying at once would spin (see the module docs).
pub fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The accept side of a listener, so one loop serves every kind (and tests can inject
/// failures).
pub trait Accept: Send {
    /// The accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Who it is from (a TCP client's address, a unix socket client's credentials).
    type Addr: Send + 'static;
    /// The next connection and who it is from.
    fn accept(&mut self) -> impl Future<Output = std::io::Result<(Self::Io, Self::Addr)>> + Send;
}

impl Accept for TcpListener {
    type Io = TcpStream;
    type Addr = SocketAddr;
    async fn accept(&mut self) -> std::io::Result<(TcpStream, SocketAddr)> {
        TcpListener::accept(self).await
    }
}

/// What [`accept_loop`] bounds (see the module docs).
#[derive(Clone, Debug)]
pub struct AcceptLimits {
    /// The connection cap, one permit a connection. Listeners that share one semaphore share
    /// one cap (the origin's shards do).
    pub slots: Arc<Semaphore>,
    /// Time connections get to finish once shutdown begins.
    pub shutdown_grace: Duration,
}

/// Accepts connections on `listener` until `shutdown` resolves, then drains (see the module
/// docs).
///
/// `serve` gets each accepted connection, who it is from, its slot of the cap and a watcher
/// of the graceful shutdown, and returns the connection's task, which must hold the slot until
/// it ends; or `None` to refuse the connection, which closes it at once and frees the slot.
pub async fn accept_loop<A, F, Fut>(
    mut listener: A,
    limits: AcceptLimits,
    shutdown: impl Future<Output = ()>,
    mut serve: F,
) where
    A: Accept,
    F: FnMut(A::Io, A::Addr, OwnedSemaphorePermit, Watcher) -> Option<Fut>,
    Fut: Future<Output = ()> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // A slot before accepting: beyond the cap, clients wait in the kernel backlog.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = limits.slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (io, addr) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_resource_exhaustion(&e) => {
                    tracing::warn!(error = %e, retry_in = ?ACCEPT_ERROR_BACKOFF, "accept failed");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed for one connection");
                    continue;
                }
            },
        };
        // Reap finished connections so the set holds at most the open ones.
        while connections.try_join_next().is_some() {}
        if let Some(task) = serve(io, addr, permit, graceful.watcher()) {
            connections.spawn(task);
        }
    }
    drop(listener);
    tracing::info!(open = connections.len(), grace = ?limits.shutdown_grace, "shutting down");
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        graceful.shutdown().await;
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "grace period over, dropping the remaining connections"
        );
        connections.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A listener whose every accept fails, as on EMFILE, and that counts the attempts.
    struct Failing(Arc<AtomicUsize>);

    impl Accept for Failing {
        type Io = tokio::io::DuplexStream;
        type Addr = ();
        async fn accept(&mut self) -> std::io::Result<(Self::Io, ())> {
            self.0.fetch_add(1, Ordering::SeqCst);
            // Returning to the scheduler, as a real failed accept does, so that a loop
            // without backoff spins visibly instead of starving this test.
            tokio::task::yield_now().await;
            Err(std::io::Error::from_raw_os_error(libc::EMFILE))
        }
    }

    /// A listener whose first accepts fail as a client's reset in the backlog does
    /// (ECONNABORTED), then hands out one connection.
    struct AbortedThenOk {
        aborted: usize,
        served: Option<tokio::io::DuplexStream>,
    }

    impl Accept for AbortedThenOk {
        type Io = tokio::io::DuplexStream;
        type Addr = ();
        async fn accept(&mut self) -> std::io::Result<(Self::Io, ())> {
            if self.aborted > 0 {
                self.aborted -= 1;
                return Err(std::io::Error::from_raw_os_error(libc::ECONNABORTED));
            }
            match self.served.take() {
                Some(io) => Ok((io, ())),
                None => std::future::pending().await,
            }
        }
    }

    /// Time is paused: a connection behind three aborted ones is served without any backoff
    /// passing, because an aborted connection is that client's error, not a lack of resources.
    #[tokio::test(start_paused = true)]
    async fn a_connection_aborted_in_the_backlog_does_not_delay_the_next() {
        let (io, _peer) = tokio::io::duplex(64);
        let (served_tx, mut served_rx) = tokio::sync::mpsc::unbounded_channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let limits = AcceptLimits {
            slots: Arc::new(Semaphore::new(4)),
            shutdown_grace: Duration::from_secs(1),
        };
        let server = tokio::spawn(accept_loop(
            AbortedThenOk {
                aborted: 3,
                served: Some(io),
            },
            limits,
            async move {
                let _ = stopped.await;
            },
            move |_, (), _, _| {
                let _ = served_tx.send(());
                None::<std::future::Ready<()>>
            },
        ));
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(
            served_rx.try_recv().is_ok(),
            "the connection after three aborted ones waited for a backoff"
        );
        stop.send(()).expect("server still running");
        server.await.expect("the loop ends at shutdown");
    }

    /// Time is paused and only moves when the test moves it: the loop may try `accept` once
    /// per backoff interval, however many times the scheduler runs it.
    #[tokio::test(start_paused = true)]
    async fn failed_accepts_are_retried_once_per_backoff_not_in_a_spin() {
        let attempts = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let limits = AcceptLimits {
            slots: Arc::new(Semaphore::new(4)),
            shutdown_grace: Duration::from_secs(1),
        };
        let server = tokio::spawn(accept_loop(
            Failing(attempts.clone()),
            limits,
            async move {
                let _ = stopped.await;
            },
            |_, (), _, _| None::<std::future::Ready<()>>,
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
}

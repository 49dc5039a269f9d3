//! Activity tracking for the connection watchdog: writes and requests in progress.
//!
//! [`Tracked`] wraps a connection's socket and stamps the time of every successful write.
//! The server closes a connection on which nothing was written for the idle timeout.
//! Writes, not reads, are what count: a slowloris peer can trickle request bytes forever
//! at no cost, but only a complete request makes the server write. The same rule closes a
//! client that stops reading a response (its socket buffer fills, writes stall).
//!
//! Requests are tracked too ([`Activity::request_started`]): a connection with no request in
//! progress must send the next complete request within the header timeout, whatever the
//! protocol. hyper enforces that for HTTP/1.1 only; an h2 connection that sent its preface
//! (or finished its streams) and then idles would otherwise hold its slot for the whole idle
//! timeout, since hyper's own h2 writes (SETTINGS, its ACKs) count as activity.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// When a connection last made progress, shared between its socket and its watchdog.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    // Milliseconds since `opened`: an atomic integer so the hot write path takes no lock.
    last_write_ms: AtomicU64,
    // Requests whose response is not yet finished (h2 multiplexes several).
    in_flight: AtomicUsize,
    // Milliseconds since `opened` at which the last request finished (0: none yet).
    last_request_end_ms: AtomicU64,
}

/// Why the watchdog closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Nothing written for the idle timeout.
    Idle,
    /// No request in progress and none arrived within the header timeout.
    NoRequest,
}

/// A request in progress on a connection; dropping it (with the response body) ends it.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .last_request_end_ms
            .store(self.0.now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    /// A fresh stamp: the connection counts as active from the moment it was accepted.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            last_write_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last_request_end_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Stamps a write that made progress (for writes that bypass [`Tracked`], e.g. sendfile).
    pub fn touch(&self) {
        self.last_write_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Marks a complete request; the returned guard ends it when dropped (after the last
    /// byte of its response was handed to the socket, or the stream was reset).
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The instant at which the connection counts as idle for `timeout`.
    pub fn idle_deadline(&self, timeout: Duration) -> Instant {
        self.opened + Duration::from_millis(self.last_write_ms.load(Ordering::Relaxed)) + timeout
    }

    /// When the watchdog must close the connection, and why: `idle` after the last write, or,
    /// with no request in progress, `header` after the last request ended (or the connection
    /// opened).
    pub fn deadline(&self, idle: Duration, header: Duration) -> (Instant, Expiry) {
        let idle_at = self.idle_deadline(idle);
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return (idle_at, Expiry::Idle);
        }
        let since = Duration::from_millis(self.last_request_end_ms.load(Ordering::Relaxed));
        let request_at = self.opened + since + header;
        if request_at < idle_at {
            (request_at, Expiry::NoRequest)
        } else {
            (idle_at, Expiry::Idle)
        }
    }
}

/// A socket whose writes are stamped into an [`Activity`].
#[derive(Debug)]
pub struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
    // Bytes already read from `inner` and put back (`with_unread`): reads return them first.
    unread: Bytes,
}

impl<T> Tracked<T> {
    /// Wraps `inner`, stamping `activity`.
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            activity,
            unread: Bytes::new(),
        }
    }

    /// The same connection with `bytes`, already read from its socket, put back in front of
    /// it: reads return them first, then the socket's. Lets hyper take over a connection whose
    /// first request `h1` started reading.
    pub fn with_unread(mut self, bytes: Bytes) -> Self {
        debug_assert!(self.unread.is_empty(), "bytes put back once");
        self.unread = bytes;
        self
    }

    /// The wrapped socket (for calls that are not plain reads and writes, e.g. sendfile).
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

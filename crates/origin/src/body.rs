//! Response bodies: in-memory bytes (cache hits, playlists, small responses) or a byte range
//! of an open file, with every byte handed to the connection counted in
//! `origin_response_bytes_total`.
//!
//! A file body is sent by whoever owns the connection: the plain HTTP/1.1 path
//! ([`crate::h1`]) takes it whole with [`Body::take_file`] and hands it to `sendfile(2)`, so
//! the bytes never enter user space; hyper (TLS, h2) polls it as a bounded stream of reads.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use http_body::{Frame, SizeHint};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::io::ReaderStream;

use crate::activity::InFlight;

/// Read size when streaming a file: large enough for few syscalls, small enough that many
/// concurrent streams stay cheap.
const FILE_CHUNK_BYTES: usize = 64 * 1024;

/// `len` bytes of an open file from `offset` on.
#[derive(Debug)]
pub struct FileRange {
    /// The descriptor opened for this request (its inode is fixed: a rename over the path
    /// does not change what it reads).
    pub file: std::fs::File,
    /// First byte to send.
    pub offset: u64,
    /// Bytes to send.
    pub len: u64,
}

/// A response body.
pub struct Body {
    kind: Kind,
    remaining: u64,
    sent: Option<IntCounter>,
    // Ends the request's "in progress" mark on the connection when the body is done with.
    _in_flight: Option<InFlight>,
}

enum Kind {
    Bytes(Option<Bytes>),
    /// Not polled yet: still takeable whole by the sendfile path.
    File(Option<FileRange>),
    Stream(ReaderStream<Pin<Box<dyn AsyncRead + Send + Sync>>>),
}

impl Body {
    /// No body (HEAD, 304, 204).
    pub fn empty() -> Self {
        Self::with(Kind::Bytes(None), 0)
    }

    /// A body held in memory.
    pub fn bytes(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        let len = bytes.len() as u64;
        Self::with(Kind::Bytes(Some(bytes)), len)
    }

    /// The bytes of `range`.
    pub fn file(range: FileRange) -> Self {
        let len = range.len;
        Self::with(Kind::File(Some(range)), len)
    }

    fn with(kind: Kind, remaining: u64) -> Self {
        Self {
            kind,
            remaining,
            sent: None,
            _in_flight: None,
        }
    }

    /// Counts every data byte sent from this body into `counter`.
    pub fn metered(mut self, counter: IntCounter) -> Self {
        self.sent = Some(counter);
        self
    }

    /// Keeps `in_flight` until the body is dropped (hyper drops it once sent or reset).
    pub fn in_flight(mut self, in_flight: InFlight) -> Self {
        self._in_flight = Some(in_flight);
        self
    }

    /// The counter bytes sent from this body go to, if metered.
    pub fn meter(&self) -> Option<&IntCounter> {
        self.sent.as_ref()
    }

    /// Bytes still to send.
    pub fn len(&self) -> u64 {
        self.remaining
    }

    /// Whether there is nothing (left) to send.
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }

    /// The whole body as one buffer, if it is held in memory (`None` for a file body).
    pub fn take_bytes(&mut self) -> Option<Bytes> {
        match &mut self.kind {
            Kind::Bytes(bytes) => {
                self.remaining = 0;
                Some(bytes.take().unwrap_or_default())
            }
            _ => None,
        }
    }

    /// The file range, if this is a file body not yet polled; the caller sends it.
    pub fn take_file(&mut self) -> Option<FileRange> {
        match &mut self.kind {
            Kind::File(range) => {
                let range = range.take();
                if range.is_some() {
                    self.remaining = 0;
                }
                range
            }
            _ => None,
        }
    }
}

/// A stream of `range`'s bytes through tokio's file reads.
fn stream(range: FileRange) -> io::Result<ReaderStream<Pin<Box<dyn AsyncRead + Send + Sync>>>> {
    use std::io::{Seek, SeekFrom};
    let mut file = range.file;
    // lseek(2) only moves the descriptor's offset: no I/O, fine on an async worker.
    file.seek(SeekFrom::Start(range.offset))?;
    let reader: Pin<Box<dyn AsyncRead + Send + Sync>> =
        Box::pin(tokio::fs::File::from_std(file).take(range.len));
    Ok(ReaderStream::with_capacity(reader, FILE_CHUNK_BYTES))
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if let Kind::File(range) = &mut this.kind {
            match range.take().map(stream) {
                Some(Ok(stream)) => this.kind = Kind::Stream(stream),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            }
        }
        let chunk = match &mut this.kind {
            Kind::Bytes(bytes) => bytes.take(),
            Kind::File(_) => None,
            Kind::Stream(stream) => match Pin::new(stream).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(chunk))) => Some(chunk),
                Poll::Ready(None) if this.remaining > 0 => {
                    // The file shrank under us: fail the response rather than let the client
                    // take a short body for a whole one.
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shorter than announced",
                    ))));
                }
                Poll::Ready(None) => None,
            },
        };
        Poll::Ready(chunk.map(|chunk| {
            let len = chunk.len() as u64;
            this.remaining = this.remaining.saturating_sub(len);
            if let Some(sent) = &this.sent {
                sent.inc_by(len);
            }
            Ok(Frame::data(chunk))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

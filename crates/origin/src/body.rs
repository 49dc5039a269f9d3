//! Response bodies: in-memory bytes (cache hits, playlists, small responses) or a bounded
//! stream from an open file (files too big for the cache), with every byte handed to the
//! connection counted in `origin_response_bytes_total`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use http_body::{Frame, SizeHint};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::io::ReaderStream;

/// Read size when streaming a file: large enough for few syscalls, small enough that many
/// concurrent streams stay cheap.
const FILE_CHUNK_BYTES: usize = 64 * 1024;

/// A response body.
pub struct Body {
    kind: Kind,
    remaining: u64,
    sent: Option<IntCounter>,
}

enum Kind {
    Bytes(Option<Bytes>),
    Stream(ReaderStream<Pin<Box<dyn AsyncRead + Send + Sync>>>),
}

impl Body {
    /// No body (HEAD, 304, 204).
    pub fn empty() -> Self {
        Self {
            kind: Kind::Bytes(None),
            remaining: 0,
            sent: None,
        }
    }

    /// A body held in memory.
    pub fn bytes(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            remaining: bytes.len() as u64,
            kind: Kind::Bytes(Some(bytes)),
            sent: None,
        }
    }

    /// `len` bytes read from `file`, which must already be positioned at the first one.
    pub fn file(file: tokio::fs::File, len: u64) -> Self {
        let reader: Pin<Box<dyn AsyncRead + Send + Sync>> = Box::pin(file.take(len));
        Self {
            kind: Kind::Stream(ReaderStream::with_capacity(reader, FILE_CHUNK_BYTES)),
            remaining: len,
            sent: None,
        }
    }

    /// Counts every data byte polled from this body into `counter`.
    pub fn metered(mut self, counter: IntCounter) -> Self {
        self.sent = Some(counter);
        self
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let chunk = match &mut this.kind {
            Kind::Bytes(bytes) => bytes.take(),
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

//! Plain HTTP/1.1 connections served by the origin itself, so that file bodies go from the
//! page cache to the socket with `sendfile(2)` and never through user space.
//!
//! Why not hyper alone: hyper sends only bodies it can poll as byte buffers, so every segment
//! byte was copied from a user-space cache into the socket, which on a 1 MiB segment cost more
//! than everything else the origin does (see BENCHMARKS.md, "origin profile"). nginx sends the
//! same bytes with `sendfile`.
//!
//! The split: this module handles only the simple, overwhelmingly common request, a complete
//! HTTP/1.1 request head without a body, parsed with `httparse` (hyper's own parser) and
//! answered by the same [`handler::handle`] as every other request, with the head written as
//! hyper writes it (lower-case names, `date`, `content-length`, `connection: close` when
//! closing). Anything else hands the connection, with every byte already read, to hyper for
//! the rest of its life ([`Outcome::HandOver`]): HTTP/1.0, a request body, `Upgrade` or
//! `Expect`, an h2 prior-knowledge preface, a malformed, oversized or over-long head. So hyper
//! still owns every corner of the protocol, its error answers (400, 431) included.
//!
//! Why a file body sent this way is never a mix of two versions: `sendfile` reads from the
//! descriptor the handler opened and validated, i.e. one inode. The packager replaces a file
//! by renaming a new inode over the name, which leaves the open inode's bytes untouched; the
//! handler's ETag and length describe exactly that inode. A file truncated in place (not our
//! packager's way) ends the send early, and the connection is closed rather than the response
//! passed off as complete.
//!
//! Timeouts are the caller's: the connection watchdog ([`crate::activity`]) closes a
//! connection that sends no complete request within the header timeout or writes nothing for
//! the idle timeout.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Buf, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::activity::{Activity, Tracked};
use crate::body::{Body, FileRange};
use crate::handler::{self, App, SendsFiles};

/// Read-buffer growth step while a request head arrives; one read takes a typical head.
const READ_CHUNK_BYTES: usize = 4096;
/// Bodies up to this size go out in the same write as the head (playlists, errors, metrics).
const INLINE_BODY_BYTES: usize = 64 * 1024;
/// Read size when a file system cannot `sendfile` and the body is copied instead.
const COPY_CHUNK_BYTES: usize = 64 * 1024;
/// Most bytes one `sendfile` call is asked for, so that one large response yields to the
/// other connections of this event loop between calls.
const SENDFILE_CHUNK_BYTES: usize = 1024 * 1024;

/// Caps hyper applies to a request head, applied here too so that whatever exceeds them is
/// handed to hyper and refused there exactly as before.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes of a request head ([`crate::Config::max_header_bytes`]).
    pub max_header_bytes: usize,
    /// Most request headers ([`crate::Config::max_headers`]).
    pub max_headers: usize,
}

/// How [`serve`] ended.
pub enum Outcome {
    /// The connection is done (closed by either side, or stopped by shutdown).
    Closed,
    /// A request this module does not handle: hyper serves the connection from here on,
    /// starting with the bytes already read.
    /// The connection comes back with those bytes put back in front of its socket
    /// ([`Tracked::with_unread`]).
    HandOver(Tracked<TcpStream>),
}

/// Serves requests on `stream` until it closes, `stop` turns true between requests, or a
/// request needs hyper.
pub async fn serve(
    app: &Arc<App>,
    mut stream: Tracked<TcpStream>,
    activity: &Arc<Activity>,
    limits: Limits,
    stop: &mut watch::Receiver<bool>,
) -> Outcome {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut head = Vec::with_capacity(1024);
    loop {
        let (request, head_len, close) = loop {
            if !buf.is_empty() {
                match parse(&buf, limits.max_headers) {
                    Parsed::Complete {
                        request,
                        head_len,
                        close,
                    } => break (request, head_len, close),
                    Parsed::Partial if buf.len() < limits.max_header_bytes => {}
                    Parsed::Partial | Parsed::NotOurs => {
                        return Outcome::HandOver(stream.with_unread(buf.freeze()));
                    }
                }
            }
            buf.reserve(READ_CHUNK_BYTES);
            tokio::select! {
                biased;
                // Shutdown: an idle keep-alive connection closes now (a response in progress
                // is never cut: this is only awaited between requests).
                _ = stop.changed() => return Outcome::Closed,
                read = stream.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return Outcome::Closed,
                    Ok(_) => {}
                },
            }
        };
        buf.advance(head_len);
        let in_flight = activity.request_started();
        let head_only = request.method() == Method::HEAD;
        let Ok(response) = handler::handle(app.clone(), request).await;
        let close = close || *stop.borrow();
        let sent =
            write_response(&mut stream, activity, response, head_only, close, &mut head).await;
        drop(in_flight);
        if let Err(e) = sent {
            tracing::debug!(error = %e, "response not sent whole, closing");
            return Outcome::Closed;
        }
        if close {
            let _ = stream.shutdown().await;
            return Outcome::Closed;
        }
    }
}

/// What [`parse`] made of the bytes read so far.
// Built once per request and matched at once: boxing the large variant would cost an
// allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// A request this module serves, the length of its head, and whether the client asked
    /// to close after it.
    Complete {
        request: Request<()>,
        head_len: usize,
        close: bool,
    },
    /// The head is not complete yet.
    Partial,
    /// Valid or not, hyper's to handle (see the module docs).
    NotOurs,
}

/// Header slots on the stack; a larger `max_headers` takes them from the heap.
const STACK_HEADERS: usize = 64;

fn parse(buf: &[u8], max_headers: usize) -> Parsed {
    if max_headers <= STACK_HEADERS {
        let mut headers = [const { MaybeUninit::uninit() }; STACK_HEADERS];
        parse_with(buf, &mut headers[..max_headers])
    } else {
        parse_with(buf, &mut vec![MaybeUninit::uninit(); max_headers])
    }
}

fn parse_with<'b>(buf: &'b [u8], headers: &mut [MaybeUninit<httparse::Header<'b>>]) -> Parsed {
    let mut parsed = httparse::Request::new(&mut []);
    let head_len = match parsed.parse_with_uninit_headers(buf, headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::NotOurs,
    };
    if parsed.version != Some(1) {
        return Parsed::NotOurs;
    }
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return Parsed::NotOurs;
    };
    let (Ok(method), Ok(uri)) = (Method::from_bytes(method.as_bytes()), Uri::try_from(path)) else {
        return Parsed::NotOurs;
    };
    let mut map = HeaderMap::with_capacity(parsed.headers.len());
    let mut close = false;
    for header in parsed.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.name.as_bytes()),
            HeaderValue::from_bytes(header.value),
        ) else {
            return Parsed::NotOurs;
        };
        if name == TRANSFER_ENCODING || name == UPGRADE || name == EXPECT {
            return Parsed::NotOurs;
        }
        if name == CONTENT_LENGTH && value.as_bytes() != b"0" {
            return Parsed::NotOurs;
        }
        if name == CONNECTION {
            // RFC 9112 section 9.6: `close` among the connection options ends the connection
            // after this response.
            close |= value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|option| option.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
        map.append(name, value);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = map;
    request.extensions_mut().insert(SendsFiles);
    Parsed::Complete {
        request,
        head_len,
        close,
    }
}

/// Writes `response` (its head in hyper's format, then its body) to `stream`.
async fn write_response(
    stream: &mut Tracked<TcpStream>,
    activity: &Activity,
    response: Response<Body>,
    head_only: bool,
    close: bool,
    head: &mut Vec<u8>,
) -> io::Result<()> {
    let (parts, mut body) = response.into_parts();
    head.clear();
    encode_head(
        head,
        parts.status,
        &parts.headers,
        (!head_only).then(|| body.len()),
        close,
    );
    let meter = body.meter().cloned();
    if let Some(range) = body.take_file().filter(|range| range.len > 0) {
        // MSG_MORE: the head waits for the first body bytes and leaves in the same segment
        // (nginx's `tcp_nopush`); the last sendfile chunk pushes everything out.
        send_all(stream.get_ref(), head, libc::MSG_MORE).await?;
        activity.touch();
        return send_file(stream.get_ref(), activity, &range, meter.as_ref()).await;
    }
    let bytes = body.take_bytes().unwrap_or_default();
    if bytes.len() <= INLINE_BODY_BYTES {
        head.extend_from_slice(&bytes);
        stream.write_all(head).await?;
    } else {
        stream.write_all(head).await?;
        stream.write_all(&bytes).await?;
    }
    if let Some(meter) = meter {
        meter.inc_by(bytes.len() as u64);
    }
    Ok(())
}

/// Appends a response head as hyper writes it: status line, the handler's headers (names are
/// lower case in an [`http::HeaderMap`]), `content-length` where the handler left it out and
/// the status allows a body, `connection: close` when closing, and `date` (RFC 9110 section
/// 6.6.1: an origin with a clock must send it).
fn encode_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    body_len: Option<u64>,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // RFC 9110 section 8.6: no Content-Length on 1xx, 204 and 304.
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if let Some(len) = body_len
        && !bodiless
        && !headers.contains_key(CONTENT_LENGTH)
    {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(len.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"date: ");
    append_date(out);
    out.extend_from_slice(b"\r\n\r\n");
}

/// Appends the current HTTP date, formatted once per second per thread (hyper does the same).
fn append_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((u64::MAX, String::new()))
        };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(cached_second, text)| {
        if *cached_second != second {
            *cached_second = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// `send(2)` of all of `bytes` with `flags`, waiting for the socket as needed.
async fn send_all(socket: &TcpStream, mut bytes: &[u8], flags: libc::c_int) -> io::Result<()> {
    while !bytes.is_empty() {
        let sent = socket.try_io(Interest::WRITABLE, || {
            // SAFETY: the socket descriptor is open for the call (borrowed from `socket`), and
            // `bytes` is a valid readable buffer of the given length.
            let n = unsafe {
                libc::send(
                    socket.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    flags | libc::MSG_NOSIGNAL,
                )
            };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        });
        match sent {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `sendfile(2)` of `range` to `socket`, counting sent bytes into `meter`.
async fn send_file(
    socket: &TcpStream,
    activity: &Activity,
    range: &FileRange,
    meter: Option<&prometheus::IntCounter>,
) -> io::Result<()> {
    let mut offset = libc::off_t::try_from(range.offset).map_err(io::Error::other)?;
    let mut left = range.len;
    while left > 0 {
        let want = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(SENDFILE_CHUNK_BYTES);
        let sent = socket.try_io(Interest::WRITABLE, || {
            // SAFETY: both descriptors are open for the call (borrowed from `socket` and
            // `range.file`), and `offset` is a valid off_t the kernel advances; sendfile does
            // not touch the file's own offset.
            let n = unsafe {
                libc::sendfile(
                    socket.as_raw_fd(),
                    range.file.as_raw_fd(),
                    &mut offset,
                    want,
                )
            };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        });
        match sent {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shorter than announced",
                ));
            }
            Ok(n) => {
                left -= n as u64;
                activity.touch();
                if let Some(meter) = meter {
                    meter.inc_by(n as u64);
                }
                // Let the other connections of this event loop run between chunks.
                tokio::task::consume_budget().await;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.writable().await?,
            // A file system without sendfile support: nothing was sent yet, so the same
            // bytes can go out through an ordinary read and write.
            Err(e) if left == range.len && sendfile_unsupported(&e) => {
                return copy_file(socket, activity, range, meter).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// sendfile(2) refuses this file: EINVAL/ENOSYS/EOPNOTSUPP ("fd is not a regular file that
/// supports mmap-like operations", per the man page).
fn sendfile_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

/// `range` through a user-space buffer: positional reads, then `send`.
async fn copy_file(
    socket: &TcpStream,
    activity: &Activity,
    range: &FileRange,
    meter: Option<&prometheus::IntCounter>,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; COPY_CHUNK_BYTES];
    let (mut offset, end) = (range.offset, range.offset + range.len);
    while offset < end {
        let want = usize::try_from(end - offset)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        // Inline, like every file call on this path (the offloading mode never gets here).
        let n = range.file.read_at(&mut buf[..want], offset)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than announced",
            ));
        }
        send_all(socket, &buf[..n], 0).await?;
        activity.touch();
        if let Some(meter) = meter {
            meter.inc_by(n as u64);
        }
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Parsed {
        parse(text.as_bytes(), 8)
    }

    #[test]
    fn simple_requests_are_ours_the_rest_is_hyper() {
        let text = "GET /hls/a/b.ts HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n";
        match parse_str(&format!("{text}GET")) {
            Parsed::Complete {
                request,
                head_len,
                close,
            } => {
                assert_eq!(request.uri().path(), "/hls/a/b.ts");
                assert_eq!(request.headers()["host"], "x");
                assert!(close);
                assert_eq!(head_len, text.len(), "the next request's bytes stay");
                assert!(request.extensions().get::<SendsFiles>().is_some());
            }
            _ => panic!("a plain GET is ours"),
        }
        assert!(matches!(
            parse_str("GET / HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        ));
        for other in [
            "GET / HTTP/1.0\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            "GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\nF: 1\r\nG: 1\r\nH: 1\r\nI: 1\r\n\r\n",
            "GET\x01 / HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(parse_str(other), Parsed::NotOurs), "{other:?}");
        }
    }

    #[test]
    fn head_is_written_as_hyper_writes_it() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("video/mp2t"));
        let mut out = Vec::new();
        encode_head(&mut out, StatusCode::OK, &headers, Some(5), true);
        let text = String::from_utf8(out).expect("ascii");
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: video/mp2t\r\ncontent-length: 5\r\nconnection: close\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
        let mut out = Vec::new();
        encode_head(&mut out, StatusCode::NOT_MODIFIED, &headers, Some(0), false);
        let text = String::from_utf8(out).expect("ascii");
        assert!(!text.contains("content-length"), "{text}");
    }
}

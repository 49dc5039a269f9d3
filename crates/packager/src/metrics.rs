//! Prometheus metrics and the admin HTTP endpoint (`/metrics`, `/healthz`).
//!
//! Every metric is declared here, prefixed `packager_`, labelled by `stream`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All packager metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `packager_segments_written_total{stream}`: segments written to disk.
    pub segments_written: IntCounterVec,
    /// `packager_segment_duration_seconds{stream}`: EXTINF of written segments.
    pub segment_duration: HistogramVec,
    /// `packager_newest_media_sequence{stream}`: MSN of the newest written segment.
    pub newest_msn: IntGaugeVec,
    /// `packager_live_lag_seconds{stream}`: when the newest segment was written, how late its
    /// end was published; see [`live_lag_seconds`] for what exactly that measures.
    pub lag_seconds: prometheus::GaugeVec,
    /// `packager_write_errors_total{stream}`: failed writes/deletes (retried).
    pub write_errors: IntCounterVec,
    /// `packager_dropped_frames_total{stream,reason}`: frames dropped as bad input.
    pub dropped_frames: IntCounterVec,
    /// `packager_partial_segments_total{stream}`: segments not published because this instance
    /// did not see their start or end (late join, disconnect).
    pub partial_segments: IntCounterVec,
    /// `packager_discontinuities_total{stream}`: new timelines (restart, jump, codec change).
    pub discontinuities: IntCounterVec,
    /// `packager_source_errors_total{stream}`: failed connects or broken source connections.
    pub source_errors: IntCounterVec,
    /// `packager_source_connected{stream}`: 1 while connected to the ingest.
    pub source_connected: IntGaugeVec,
}

/// Histogram buckets around the 2 s target (seconds).
const DURATION_BUCKETS: [f64; 8] = [0.5, 1.0, 1.5, 1.9, 2.1, 2.5, 3.0, 5.0];

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let segments_written = counter(
            "packager_segments_written_total",
            "Segments written to disk.",
            &["stream"],
        );
        let write_errors = counter(
            "packager_write_errors_total",
            "Failed file writes or deletes (retried).",
            &["stream"],
        );
        let dropped_frames = counter(
            "packager_dropped_frames_total",
            "Frames dropped as bad input.",
            &["stream", "reason"],
        );
        let partial_segments = counter(
            "packager_partial_segments_total",
            "Segments not published: start or end not seen.",
            &["stream"],
        );
        let discontinuities = counter(
            "packager_discontinuities_total",
            "Discontinuities started.",
            &["stream"],
        );
        let source_errors = counter(
            "packager_source_errors_total",
            "Failed or broken source connections.",
            &["stream"],
        );
        let segment_duration = HistogramVec::new(
            HistogramOpts::new(
                "packager_segment_duration_seconds",
                "Duration of written segments.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["stream"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(segment_duration.clone()))
            .expect("unique metric");
        let newest_msn = IntGaugeVec::new(
            Opts::new(
                "packager_newest_media_sequence",
                "MSN of the newest written segment.",
            ),
            &["stream"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(newest_msn.clone()))
            .expect("unique metric");
        let source_connected = IntGaugeVec::new(
            Opts::new(
                "packager_source_connected",
                "1 while connected to the ingest.",
            ),
            &["stream"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(source_connected.clone()))
            .expect("unique metric");
        let lag_seconds = prometheus::GaugeVec::new(
            Opts::new(
                "packager_live_lag_seconds",
                "Wall clock when the newest segment was written minus its end in stream time \
                 (anchored at the ingest's streamStartTimeMs), clamped at 0.",
            ),
            &["stream"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(lag_seconds.clone()))
            .expect("unique metric");
        Self {
            registry,
            segments_written,
            segment_duration,
            newest_msn,
            lag_seconds,
            write_errors,
            dropped_frames,
            partial_segments,
            discontinuities,
            source_errors,
            source_connected,
        }
    }

    /// Text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to a Vec");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `packager_live_lag_seconds` for a segment ending at `segment_end_ms` (PDT + duration, UNIX
/// ms) written at `now_ms`.
///
/// What it measures: stream time is anchored by the ingest's `streamStartTimeMs`, the wall clock
/// when the session's *first* media message arrived minus its timestamp. A segment is closed by
/// the arrival of the next keyframe, whose stream time is its end, so the difference is: how much
/// later that keyframe reached us than the first message's pace predicts (publisher and ingest
/// jitter, the ingest's merged writes), plus this packager's read batching (once the boundary
/// is due, up to [`crate::source::READ_BATCH_INTERVAL`]), muxing and write time. It grows when
/// the packager or the path from the ingest falls behind; it is not glass-to-glass latency
/// (encoder delay before the first message is inside the anchor), and a player additionally sees
/// up to a target duration of age between segments (switcher-ctl's `segment_age_seconds`).
///
/// Why clamped at 0: when the first message was itself late (encoder start-up, a slow first
/// write), later frames arrive "early" against the anchor and the raw difference is slightly
/// negative. That is an artefact of the anchor, not a packager ahead of live, so it reads as 0.
pub fn live_lag_seconds(now_ms: u64, segment_end_ms: u64) -> f64 {
    now_ms.saturating_sub(segment_end_ms) as f64 / 1000.0
}

/// Largest request head (request line + headers) read; a larger one is answered 431.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request head, or to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once, each on its own thread; beyond that the accept thread serves
/// them itself, so a slow client delays scrapes but cannot make us spawn without bound.
const MAX_CONNECTIONS: usize = 8;
/// Bytes read and discarded after answering, before closing (see [`linger_close`]).
const MAX_DRAIN_BYTES: usize = 64 * 1024;

/// Serves `/metrics` and `/healthz` on `listener` until the process exits. One request per
/// connection (`Connection: close`): scrapes are rare and small.
///
/// Plain std rather than hyper (which the async services use) because the packager is
/// synchronous threads; the parts hyper would give us that matter are here: the whole request
/// head is read (bounded, with a timeout) before answering, and the close is lingering, so a
/// client that sends its request in several writes never sees a reset.
pub fn serve(listener: TcpListener, metrics: Metrics) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if active.fetch_add(1, Ordering::AcqRel) < MAX_CONNECTIONS {
            let (metrics, done) = (metrics.clone(), active.clone());
            let spawned = std::thread::Builder::new()
                .name("admin-conn".into())
                .spawn(move || {
                    handle(stream, &metrics);
                    done.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                active.fetch_sub(1, Ordering::AcqRel);
            }
        } else {
            handle(stream, &metrics);
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A request head, as far as the admin endpoint cares.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// The blank line ending the head (RFC 9112 2.1) has not arrived yet.
    Incomplete,
    /// Method and request target of a complete head.
    Complete { method: String, path: String },
    /// Not an HTTP/1.x request line.
    Malformed,
}

/// Sans-IO: looks for the end of the head in `buf` and parses its request line.
fn parse_head(buf: &[u8]) -> Head {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        // Tolerate bare LF line endings (RFC 9112 2.2).
        if !buf.windows(2).any(|w| w == b"\n\n") {
            return Head::Incomplete;
        }
        return parse_request_line(buf);
    };
    parse_request_line(&buf[..end])
}

fn parse_request_line(head: &[u8]) -> Head {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return Head::Malformed;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(path), Some(version), None)
            if !method.is_empty() && path.starts_with('/') && version.starts_with("HTTP/1.") =>
        {
            Head::Complete {
                method: method.to_owned(),
                path: path.to_owned(),
            }
        }
        _ => Head::Malformed,
    }
}

/// Reads until the head is complete, the peer closes, the size cap or the timeout.
fn read_head(stream: &mut TcpStream) -> Result<Head, &'static str> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .map_err(|_| "read failed or timed out")?;
        if n == 0 {
            return Err("closed before the end of the request head");
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_head(&buf) {
            Head::Incomplete if buf.len() > MAX_HEAD_BYTES => return Ok(Head::Incomplete),
            Head::Incomplete => {}
            head => return Ok(head),
        }
    }
}

fn handle(mut stream: TcpStream, metrics: &Metrics) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let head = match read_head(&mut stream) {
        Ok(head) => head,
        Err(reason) => {
            tracing::debug!(reason, "admin: no request");
            return;
        }
    };
    let (status, ctype, body, send_body) = match &head {
        // Still incomplete after MAX_HEAD_BYTES.
        Head::Incomplete => (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request head too large\n".to_owned(),
            true,
        ),
        Head::Malformed => (
            "400 Bad Request",
            "text/plain",
            "bad request\n".to_owned(),
            true,
        ),
        Head::Complete { method, path } if method == "GET" || method == "HEAD" => {
            let send_body = method == "GET";
            // The query string does not select anything here.
            match path.split('?').next().unwrap_or_default() {
                "/metrics" => (
                    "200 OK",
                    "text/plain; version=0.0.4",
                    metrics.render(),
                    send_body,
                ),
                "/healthz" => (
                    "200 OK",
                    "application/json",
                    "{\"status\":\"ok\"}".to_owned(),
                    send_body,
                ),
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "not found\n".to_owned(),
                    send_body,
                ),
            }
        }
        Head::Complete { .. } => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET and HEAD\n".to_owned(),
            true,
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if send_body {
        response.push_str(&body);
    }
    if stream.write_all(response.as_bytes()).is_ok() {
        linger_close(stream);
    }
}

/// Half-closes and reads what the client still sends (a body, pipelined bytes) until it
/// closes, bounded: closing a socket with unread input makes the kernel send a reset, which
/// can destroy the answer before the client has read it.
fn linger_close(mut stream: TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut chunk = [0u8; 4096];
    let mut drained = 0;
    while drained < MAX_DRAIN_BYTES {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    #[test]
    fn lag_is_never_negative() {
        // Stream time 40 ms ahead of the clock: an anchor artefact, reads as 0.
        assert_eq!(live_lag_seconds(1_000_000, 1_000_040), 0.0);
        assert_eq!(live_lag_seconds(1_000_000, 1_000_000), 0.0);
        assert_eq!(live_lag_seconds(1_000_250, 1_000_000), 0.25);
    }

    #[test]
    fn head_parsing() {
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\n"), Head::Incomplete);
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: a\r\n"),
            Head::Incomplete
        );
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"),
            Head::Complete {
                method: "GET".into(),
                path: "/metrics".into()
            }
        );
        assert_eq!(
            parse_head(b"HEAD /healthz HTTP/1.0\n\n"),
            Head::Complete {
                method: "HEAD".into(),
                path: "/healthz".into()
            }
        );
        assert_eq!(parse_head(b"hello\r\n\r\n"), Head::Malformed);
        assert_eq!(parse_head(b"GET /a b HTTP/1.1\r\n\r\n"), Head::Malformed);
    }

    fn server() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local addr");
        let metrics = Metrics::new();
        metrics.newest_msn.with_label_values(&["s1"]).set(42);
        std::thread::spawn(move || serve(listener, metrics));
        addr
    }

    fn read_all(stream: &mut TcpStream) -> String {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .expect("whole answer, no reset");
        answer
    }

    #[test]
    fn request_in_two_writes() {
        let addr = server();
        let mut c = TcpStream::connect(addr).expect("connect");
        c.set_nodelay(true).expect("nodelay");
        c.write_all(b"GET /metrics HTTP/1.1\r\n")
            .expect("first write");
        // The server must wait for the rest of the head: nothing arrives meanwhile.
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        let early = c.read(&mut byte);
        assert!(
            matches!(&early, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
            "answered before the request head was complete: {early:?}"
        );
        c.write_all(b"Host: 127.0.0.1\r\nUser-Agent: test\r\n\r\n")
            .expect("second write: no broken pipe");
        let answer = read_all(&mut c);
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("packager_newest_media_sequence{stream=\"s1\"} 42"),
            "{answer}"
        );
    }

    #[test]
    fn statuses() {
        let addr = server();
        let ask = |req: &[u8]| {
            let mut c = TcpStream::connect(addr).expect("connect");
            c.write_all(req).expect("write");
            read_all(&mut c)
        };
        assert!(ask(b"GET /healthz HTTP/1.1\r\n\r\n").contains("{\"status\":\"ok\"}"));
        assert!(ask(b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(ask(b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(ask(b"nonsense\r\n\r\n").starts_with("HTTP/1.1 400"));
        let head = ask(b"HEAD /healthz HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while big.len() <= MAX_HEAD_BYTES + 1024 {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(ask(&big).starts_with("HTTP/1.1 431"));
    }
}

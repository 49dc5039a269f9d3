//! Probing one origin: fetch its live playlist over a fresh HTTP/1.1 connection, parse it
//! (RFC 8216, m3u8-rs) and report how fresh it is.
//!
//! The parsing half ([`parse_playlist`], [`MediaFacts::age_seconds`]) is pure and takes the
//! clock as an argument; the I/O half ([`Prober::probe`]) opens a new `TcpStream` for every
//! probe, because a pooled keep-alive connection hides exactly the L4 faults (a dead
//! listener, a full accept queue) that failover must see (pingora's health checks do the same).
//!
//! # Hostile playlists
//! The body comes from a peer, so every number in it is checked before it is used: an
//! `#EXTINF` duration must be an RFC 8216 4.2 decimal (m3u8-rs reads `1e30` as `1` and drops
//! the rest into the title), at most [`MAX_SEGMENT_SECONDS`]; the newest media sequence number
//! and the date sums use checked arithmetic. Anything out of range is
//! [`ProbeError::Invalid`]: "this origin is bad", never a panic and never a wrong age or MSN.
//! As defence in depth, [`Prober::probe`] runs each probe in a task of its own, so a panic
//! anywhere in it (hyper, m3u8-rs, us) becomes [`ProbeError::Internal`] instead of taking the
//! run loop down with it.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use m3u8_rs::Playlist;
use tokio::net::TcpStream;
use tokio::time::MissedTickBehavior;

/// Port of an `http://` URL without one.
const HTTP_DEFAULT_PORT: u16 = 80;
/// Microseconds per second, for sub-second segment durations.
const MICROS_PER_SECOND: f64 = 1_000_000.0;
/// MPEG-TS packet size and sync byte (ISO/IEC 13818-1 2.4.3.2).
const TS_PACKET: usize = 188;
const TS_SYNC: u8 = 0x47;
/// Bytes of the newest segment's tail fetched by a probe that already checked the whole
/// segment: a whole number of TS packets (about 64 KiB), so a suffix of a whole segment
/// starts on a packet boundary and its sync bytes can be checked too.
const SEGMENT_TAIL_BYTES: usize = TS_PACKET * 348;
/// Largest segment body a probe reads: far above a 2 s segment at any sane bitrate, a bound
/// on what a broken origin can make the prober buffer.
const MAX_SEGMENT_BYTES: usize = 64 << 20;
/// Longest `#EXTINF` duration accepted. A live segment is a few seconds (RFC 8216 6.2.1
/// recommends a 6 s target duration); an hour is far beyond any packager's and keeps every
/// sum of durations well inside chrono's and `f64`'s exact range.
pub const MAX_SEGMENT_SECONDS: f64 = 3600.0;
/// How far in the future a playlist's newest segment may end before its dates are rejected.
/// The newest segment of a working packager ended in the past; a few seconds ahead is clock
/// skew between hosts, but a playlist dated far ahead would look fresh for as long as that
/// date lasts whatever the origin does (a stale origin kept active), so its age is not
/// believed. A minute is far above NTP-level skew.
pub const MAX_FUTURE_SECONDS: f64 = 60.0;

/// What the log says when a probe under way is ended by a new connection to its origin's
/// host that failed ([`Prober::probe`]; `bench dsr` counts these lines per run).
pub const WATCHDOG_ENDED: &str = "probe under way ended: a new connection to its origin failed";

/// Why a probe found no usable playlist. Every variant makes the origin bad for that window.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The TCP connection was refused: nothing listens, the origin process is gone. Counts as
    /// bad at once, without waiting for more windows.
    #[error("connection refused")]
    Refused,
    /// The origin's host or network is unreachable: a router answered the connect with an
    /// ICMP "host/net unreachable" (RFC 1122 4.2.3.9: a hard error while connecting), e.g.
    /// for an origin host whose link went down. Like a refusal, the host is gone for certain,
    /// so it counts as bad at once.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// Connect, request or body did not finish within the probe timeout.
    #[error("timed out")]
    Timeout,
    /// Another connection or protocol failure (reset, malformed HTTP, unreachable).
    #[error("connection failed: {0}")]
    Io(String),
    /// The origin answered 5xx.
    #[error("HTTP {0}")]
    Http5xx(u16),
    /// The origin answered with another non-2xx status (404 while a packager starts, 403, ...).
    #[error("HTTP {0}")]
    HttpStatus(u16),
    /// The body is not an M3U8 playlist (or a master playlist led to another master).
    #[error("unparsable playlist: {0}")]
    Unparsable(String),
    /// A media playlist without `#EXT-X-PROGRAM-DATE-TIME`: its age cannot be known.
    #[error("no EXT-X-PROGRAM-DATE-TIME in playlist")]
    NoProgramDateTime,
    /// An empty body, or a media playlist with no segment, or a master with no variant.
    #[error("empty playlist")]
    Empty,
    /// The body is larger than the configured bound.
    #[error("playlist larger than {0} bytes")]
    TooLarge(usize),
    /// The URL (or a master playlist's variant URI) cannot be probed.
    #[error("bad URL {0:?}")]
    BadUrl(String),
    /// The TCP connect did not complete within the connect timeout (the SYN vanished, or the
    /// origin's accept queue is full).
    #[error("connect timed out")]
    ConnectTimeout,
    /// The newest segment listed could not be fetched whole: its body was cut short (shorter
    /// than its Content-Length, or the connection failed mid-body), or it was not found.
    #[error("newest segment: {0}")]
    Segment(String),
    /// The newest segment listed, as the origin stores and serves it in full, is broken: not
    /// whole MPEG-TS packets (or packets without the sync byte), or shorter than when it was
    /// listed (RFC 8216 6.2.2: a listed segment never changes). No retry can change that
    /// answer, and every player fetching it now gets a broken body, so, like a refusal, it
    /// counts as bad at once.
    #[error("newest segment corrupt: {0}")]
    Corrupt(String),
    /// A segment an earlier probe found corrupt ([`ProbeError::Corrupt`]) is still listed.
    /// A listed segment never changes (RFC 8216 6.2.2), and any player may fetch any listed
    /// one (a viewer joining three segments back from the live edge, hls.js refetching after a
    /// buffer error), so the origin stays bad until its playlist no longer lists it, even
    /// when its newest segment is whole again ([`Prober::broken`]).
    #[error("a segment found corrupt is still listed: {0}")]
    CorruptListed(String),
    /// The playlist parses but a value in it is out of range (a malformed or huge `#EXTINF`,
    /// a media sequence number that overflows, dates beyond the calendar or far in the
    /// future): its freshness cannot be trusted.
    #[error("invalid playlist: {0}")]
    Invalid(String),
    /// The probe itself failed unexpectedly (it panicked); the origin is treated as bad for
    /// this window and the service goes on.
    #[error("probe failed internally: {0}")]
    Internal(String),
}

impl ProbeError {
    /// Short stable name, for logs, JSON and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeError::Refused => "refused",
            ProbeError::Unreachable(_) => "unreachable",
            ProbeError::Timeout => "timeout",
            ProbeError::Io(_) => "io",
            ProbeError::Http5xx(_) => "http_5xx",
            ProbeError::HttpStatus(_) => "http_status",
            ProbeError::Unparsable(_) => "unparsable",
            ProbeError::NoProgramDateTime => "no_program_date_time",
            ProbeError::Empty => "empty",
            ProbeError::TooLarge(_) => "too_large",
            ProbeError::BadUrl(_) => "bad_url",
            ProbeError::ConnectTimeout => "connect_timeout",
            ProbeError::Segment(_) => "segment",
            ProbeError::Corrupt(_) => "corrupt_segment",
            ProbeError::CorruptListed(_) => "corrupt_segment_listed",
            ProbeError::Invalid(_) => "invalid",
            ProbeError::Internal(_) => "internal",
        }
    }

    /// Whether this failure makes the origin bad at once, without waiting for more windows:
    /// a refusal, an unreachable host or a corrupt segment is an answer, not a lost packet.
    pub fn counts_at_once(&self) -> bool {
        matches!(
            self,
            ProbeError::Refused
                | ProbeError::Unreachable(_)
                | ProbeError::Corrupt(_)
                | ProbeError::CorruptListed(_)
        )
    }
}

/// Asks the kernel to fail the probe's connection at once on an ICMP error, as it does while
/// connecting: with `IP_RECVERR` (`IPV6_RECVERR`), an ICMP "host/net unreachable" for an
/// established TCP connection is a hard error instead of a soft one that only a timeout
/// reports (ip(7); Linux's `tcp_v4_err`). A probe under way when the origin's host goes away
/// then fails when its next packet (a retransmission, an ACK) is answered "unreachable",
/// instead of waiting out the probe timeout. Best effort: without it the timeout still holds.
fn report_icmp_errors(stream: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let (level, name) = match stream.peer_addr() {
        Ok(a) if a.is_ipv6() => (libc::IPPROTO_IPV6, libc::IPV6_RECVERR),
        _ => (libc::IPPROTO_IP, libc::IP_RECVERR),
    };
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on the stream's open socket, with a c_int option and its size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "IP_RECVERR on a probe socket");
    }
}

/// The probe error for a connection failure `e`: [`ProbeError::Unreachable`] when an I/O error
/// in its source chain says the host or network is unreachable (an ICMP error, see
/// [`report_icmp_errors`]), [`ProbeError::Io`] otherwise.
fn io_error(e: &(dyn std::error::Error + 'static)) -> ProbeError {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable
            )
        {
            return ProbeError::Unreachable(io.to_string());
        }
        cause = c.source();
    }
    ProbeError::Io(e.to_string())
}

/// What a media playlist says about freshness, independent of the clock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MediaFacts {
    /// Media sequence number of the newest segment: `EXT-X-MEDIA-SEQUENCE + count - 1`
    /// (RFC 8216 6.3.5: the player asks for the lowest MSN above the last it loaded).
    pub newest_msn: u64,
    /// When the newest segment's media ends: its PROGRAM-DATE-TIME plus its duration.
    pub newest_end: DateTime<Utc>,
}

impl MediaFacts {
    /// Segment age at `now`, in seconds: `now - newest_end`. Negative when the origin's
    /// timestamps run ahead of our clock (kept signed so skew is visible, not hidden as 0).
    pub fn age_seconds(&self, now: SystemTime) -> f64 {
        let now: DateTime<Utc> = now.into();
        let age = now.signed_duration_since(self.newest_end);
        // Microseconds overflow i64 only ~292,000 years apart; milliseconds cannot (chrono's
        // dates span less), and keep the sign.
        age.num_microseconds().map_or_else(
            || age.num_milliseconds() as f64 / 1e3,
            |us| us as f64 / MICROS_PER_SECOND,
        )
    }
}

/// A parsed playlist.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    /// A master playlist: the probe follows its first variant.
    Master {
        /// URI of the first variant, as written (maybe relative).
        variant_uri: String,
    },
    /// A media playlist.
    Media(MediaFacts),
}

/// Parses a playlist body. Pure: no clock, no I/O.
pub fn parse_playlist(body: &[u8]) -> Result<Parsed, ProbeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ProbeError::Empty);
    }
    check_extinf(body)?;
    let playlist = m3u8_rs::parse_playlist_res(body).map_err(|e| {
        // nom's error holds the remaining input; keep the message short.
        let msg: String = format!("{e:?}").chars().take(80).collect();
        ProbeError::Unparsable(msg)
    })?;
    match playlist {
        Playlist::MasterPlaylist(master) => {
            let first = master.variants.first().ok_or(ProbeError::Empty)?;
            Ok(Parsed::Master {
                variant_uri: first.uri.clone(),
            })
        }
        Playlist::MediaPlaylist(media) => {
            let count = media.segments.len() as u64;
            if count == 0 {
                return Err(ProbeError::Empty);
            }
            let newest_msn = media.media_sequence.checked_add(count - 1).ok_or_else(|| {
                ProbeError::Invalid(format!(
                    "EXT-X-MEDIA-SEQUENCE {} + {count} segments overflows",
                    media.media_sequence
                ))
            })?;
            // RFC 8216 4.3.2.6: a PROGRAM-DATE-TIME applies to its segment, and later segments'
            // dates follow by adding durations. So take the last segment that carries one and
            // add its duration and every later segment's (our packagers tag every segment,
            // then this is just the newest one's date + duration).
            let (tagged, pdt) = media
                .segments
                .iter()
                .enumerate()
                .rev()
                .find_map(|(i, s)| s.program_date_time.map(|d| (i, d)))
                .ok_or(ProbeError::NoProgramDateTime)?;
            // Each duration is at most MAX_SEGMENT_SECONDS (checked by `check_extinf` and
            // again here on the parsed value), so the sum is finite; the conversion to
            // microseconds and the date addition are checked all the same.
            let mut seconds = 0.0_f64;
            for s in &media.segments[tagged..] {
                let d = f64::from(s.duration);
                if !(0.0..=MAX_SEGMENT_SECONDS).contains(&d) {
                    return Err(ProbeError::Invalid(format!("EXTINF duration {d} s")));
                }
                seconds += d;
            }
            let micros = seconds * MICROS_PER_SECOND;
            if !micros.is_finite() || micros >= i64::MAX as f64 {
                return Err(ProbeError::Invalid(format!(
                    "segments after the last PROGRAM-DATE-TIME last {seconds} s"
                )));
            }
            let span = chrono::Duration::microseconds(micros as i64);
            let newest_end = pdt
                .with_timezone(&Utc)
                .checked_add_signed(span)
                .ok_or_else(|| {
                    ProbeError::Invalid(format!("PROGRAM-DATE-TIME {pdt} + {seconds} s overflows"))
                })?;
            Ok(Parsed::Media(MediaFacts {
                newest_msn,
                newest_end,
            }))
        }
    }
}

/// URI of the newest segment of a media playlist (as written, maybe relative); `None` for a
/// master playlist or one that does not parse. Pure.
pub fn newest_segment_uri(body: &[u8]) -> Option<String> {
    segment_uris(body).pop()
}

/// URIs of every segment a media playlist lists (as written, oldest first); none for a
/// master playlist or one that does not parse. Pure.
pub fn segment_uris(body: &[u8]) -> Vec<String> {
    match m3u8_rs::parse_playlist_res(body) {
        Ok(Playlist::MediaPlaylist(media)) => media.segments.into_iter().map(|s| s.uri).collect(),
        _ => Vec::new(),
    }
}

/// Keeps, of the segments found corrupt (`broken`), those the playlist still lists
/// (`listed`), and gives the first of them: the origin is bad while one is listed
/// ([`ProbeError::CorruptListed`]). Bounded by the playlist: what is kept is listed. Pure.
pub fn still_listed(broken: &mut Vec<String>, listed: &[String]) -> Option<String> {
    broken.retain(|b| listed.contains(b));
    broken.first().cloned()
}

/// Checks a segment body the origin sent in full (whole, or a suffix of whole packets) for
/// MPEG-TS framing: a whole number of 188-byte packets, each starting with the sync byte.
/// Failing that, the segment itself is corrupt ([`ProbeError::Corrupt`]). Pure.
pub fn check_ts(body: &[u8]) -> Result<(), ProbeError> {
    if body.is_empty() {
        return Err(ProbeError::Corrupt("empty body".into()));
    }
    if !body.len().is_multiple_of(TS_PACKET) {
        return Err(ProbeError::Corrupt(format!(
            "{} bytes is not a whole number of TS packets (cut short?)",
            body.len()
        )));
    }
    if let Some(i) = body.chunks(TS_PACKET).position(|p| p[0] != TS_SYNC) {
        return Err(ProbeError::Corrupt(format!(
            "TS packet {i} has no sync byte"
        )));
    }
    Ok(())
}

/// The complete length a `Content-Range` value states (RFC 9110 14.4: `bytes a-b/TOTAL`);
/// `None` when it is unknown (`*`) or the value is malformed. Pure.
pub fn content_range_total(value: &str) -> Option<u64> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (_, total) = rest.split_once('/')?;
    total.trim().parse().ok()
}

/// A newest segment checked whole at `was` bytes and now `now` bytes long: an error when it
/// shrank. A listed segment never changes (RFC 8216 6.2.2: the server must not change a
/// segment it listed), so a shorter one was cut short in place, and a player fetching it
/// now gets a broken body. Pure.
pub fn shrank(was: u64, now: u64) -> Result<(), ProbeError> {
    if now < was {
        return Err(ProbeError::Corrupt(format!(
            "shrank from {was} to {now} bytes while listed (cut short?)"
        )));
    }
    Ok(())
}

/// Checks every `#EXTINF` line against RFC 8216 4.3.2.1 before m3u8-rs sees it:
/// `#EXTINF:<duration>,[<title>]` with a decimal-integer or decimal-floating-point duration
/// (4.2: digits and at most one `.`, no sign, no exponent), at most [`MAX_SEGMENT_SECONDS`].
/// m3u8-rs reads the longest numeric prefix and moves the rest into the title, so `1e30,`
/// would otherwise be a 1 s segment.
fn check_extinf(body: &[u8]) -> Result<(), ProbeError> {
    const TAG: &[u8] = b"#EXTINF:";
    for line in body.split(|&b| b == b'\n') {
        let Some(rest) = line.strip_prefix(TAG) else {
            continue;
        };
        let end = rest
            .iter()
            .position(|&b| b == b',' || b == b'\r')
            .unwrap_or(rest.len());
        let value = &rest[..end];
        let invalid = || {
            let shown = String::from_utf8_lossy(&value[..value.len().min(40)]).into_owned();
            ProbeError::Invalid(format!("EXTINF duration {shown:?}"))
        };
        let (int, frac) = match value.iter().position(|&b| b == b'.') {
            Some(dot) => (&value[..dot], Some(&value[dot + 1..])),
            None => (value, None),
        };
        let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
        if !digits(int) || frac.is_some_and(|f| !digits(f)) {
            return Err(invalid());
        }
        let seconds: f64 = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(invalid)?;
        if seconds.is_nan() || seconds > MAX_SEGMENT_SECONDS {
            return Err(invalid());
        }
    }
    Ok(())
}

/// The freshness `facts` give at `now`; a newest segment that ends more than
/// [`MAX_FUTURE_SECONDS`] after `now` is [`ProbeError::Invalid`] (see the constant).
pub fn freshness(facts: &MediaFacts, now: SystemTime) -> Result<Freshness, ProbeError> {
    let age_seconds = facts.age_seconds(now);
    if age_seconds < -MAX_FUTURE_SECONDS {
        return Err(ProbeError::Invalid(format!(
            "newest segment ends {:.0} s in the future (PROGRAM-DATE-TIME {}; origin clock ahead?)",
            -age_seconds, facts.newest_end
        )));
    }
    Ok(Freshness {
        newest_msn: facts.newest_msn,
        age_seconds,
    })
}

/// Freshness of an origin at probe time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Freshness {
    /// Newest media sequence number.
    pub newest_msn: u64,
    /// Segment age in seconds at the time the body arrived.
    pub age_seconds: f64,
}

/// The result of probing one origin once.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeReport {
    /// HTTP status of the last response received (the media playlist's when a master was
    /// followed); `None` when no response came.
    pub status: Option<u16>,
    /// Time from start of connect to the full body (or to the failure).
    pub latency: Duration,
    /// Freshness, or why there is none.
    pub outcome: Result<Freshness, ProbeError>,
}

impl ProbeReport {
    /// A report of a probe that found `facts` at `now`; for tests and fakes.
    pub fn fresh(newest_msn: u64, age_seconds: f64) -> Self {
        ProbeReport {
            status: Some(StatusCode::OK.as_u16()),
            latency: Duration::ZERO,
            outcome: Ok(Freshness {
                newest_msn,
                age_seconds,
            }),
        }
    }

    /// A report of a failed probe; for tests and fakes.
    pub fn failed(error: ProbeError) -> Self {
        let status = match error {
            ProbeError::Http5xx(s) | ProbeError::HttpStatus(s) => Some(s),
            _ => None,
        };
        ProbeReport {
            status,
            latency: Duration::ZERO,
            outcome: Err(error),
        }
    }
}

/// Probes playlists: one fresh connection per request, a timeout on the whole probe and a
/// bound on every body.
#[derive(Clone, Debug)]
pub struct Prober {
    /// Budget of one whole probe, master-playlist hop and segment check included.
    pub timeout: Duration,
    /// Budget of each TCP connect within it.
    pub connect_timeout: Duration,
    /// Largest playlist body accepted.
    pub max_body: usize,
    /// Also check the newest segment (see [`crate::config::Config::probe_segments`]).
    pub segments: bool,
    /// Per playlist URL, the newest segment already fetched whole: later probes fetch only
    /// its tail until a newer one is listed. Shared by clones (one prober, many origins).
    pub checked: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
    /// Per playlist URL, the size of that newest segment when it was fetched whole: a later
    /// probe that finds it shorter (a segment rewritten short while listed, which players
    /// are fetching) reports it at once, whatever bytes its tail holds.
    pub whole_sizes: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    /// Per playlist URL, the segments found corrupt that the playlist still lists
    /// ([`ProbeError::CorruptListed`], [`still_listed`]). Why: judged by its newest segment
    /// alone, an origin came back as soon as a truncation ended, with the segments cut
    /// meanwhile still in its window; a headless hls.js in the end-to-end test, refetching
    /// them after the switchback, failed on them (2026-12-03, session 15).
    pub broken: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>>,
}

impl Prober {
    /// A prober with these budgets and no segment checked yet.
    pub fn new(
        timeout: Duration,
        connect_timeout: Duration,
        max_body: usize,
        segments: bool,
    ) -> Self {
        Prober {
            timeout,
            connect_timeout,
            max_body,
            segments,
            checked: Default::default(),
            whole_sizes: Default::default(),
            broken: Default::default(),
        }
    }
}

impl Prober {
    /// Probes the playlist at `url`. Never fails: every failure is in the report, a panic
    /// inside the probe included (it runs in a task of its own, see the module docs). While
    /// it runs, a new connection to the origin's host is tried once per connect timeout, and
    /// the first that fails ends the probe with its error ([`Prober::watch_reachable`]: a
    /// probe under way when the host is lost is judged like one that starts after it).
    pub async fn probe(&self, url: &str) -> ProbeReport {
        let start = Instant::now();
        let prober = self.clone();
        let owned_url = url.to_string();
        let task = tokio::spawn(async move { prober.probe_here(&owned_url, start).await });
        // Dropping this probe (the run loop shutting down) ends the task too.
        let abort = AbortOnDrop(task.abort_handle());
        let joined = task.await;
        drop(abort);
        match joined {
            Ok(report) => report,
            Err(e) => {
                let why = if e.is_panic() {
                    let payload = e.into_panic();
                    payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".into())
                } else {
                    e.to_string()
                };
                tracing::error!(url, error = %why, "probe task failed; origin counted bad for this window");
                ProbeReport {
                    status: None,
                    latency: start.elapsed(),
                    outcome: Err(ProbeError::Internal(why)),
                }
            }
        }
    }

    /// The probe proper, on the task [`Prober::probe`] spawned. While it runs, the origin's
    /// host is checked for new connections ([`Prober::watch_reachable`]): a probe whose
    /// connection was under way when the host went away ends as soon as a new connection
    /// fails, not at the whole probe timeout.
    async fn probe_here(&self, url: &str, start: Instant) -> ProbeReport {
        let mut status = None;
        let probe = async {
            let uri: Uri = url
                .parse()
                .map_err(|_| ProbeError::BadUrl(url.to_string()))?;
            let (host, port) = host_port(&uri)?;
            tokio::select! {
                r = self.probe_inner(url, &uri, &mut status) => r,
                e = self.watch_reachable(host, port) => Err(e),
            }
        };
        let outcome = match tokio::time::timeout(self.timeout, probe).await {
            Ok(Ok(facts)) => freshness(&facts, SystemTime::now()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ProbeError::Timeout),
        };
        ProbeReport {
            status,
            latency: start.elapsed(),
            outcome,
        }
    }

    /// Returns (with the error of that connect) once a new TCP connection to `host:port`
    /// fails: refused, unreachable, or not established within the connect timeout. Checks
    /// once per connect timeout, from one connect timeout after it is called; a connection
    /// that succeeds is closed at once, nothing sent. Never returns while the host accepts.
    ///
    /// Why: a probe whose connection was established before the origin's host went away
    /// (its link down, a partition) has nothing to send while it waits for the response, so
    /// neither a retransmission nor an ICMP error ends it: alone it would wait out the whole
    /// probe timeout (0.5 s) before its window counts as bad, where a probe that starts after
    /// the loss is judged at its connect. This gives the in-flight probe the same judgement:
    /// the window is bad on exactly the evidence a new probe's connect would give, and
    /// hysteresis still needs the next (confirmation) probe to fail too. A hung origin process
    /// on a live host (its kernel still accepts) keeps the whole probe timeout.
    async fn watch_reachable(&self, host: &str, port: u16) -> ProbeError {
        let mut checks = tokio::time::interval_at(
            tokio::time::Instant::now() + self.connect_timeout,
            self.connect_timeout,
        );
        checks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            checks.tick().await;
            if let Err(e) = self.connect(host, port).await {
                tracing::info!(host, port, error = %e, "{WATCHDOG_ENDED}");
                return e;
            }
        }
    }

    /// A new TCP connection to `host:port` within the connect timeout; the probe error of a
    /// failure.
    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, ProbeError> {
        tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| ProbeError::ConnectTimeout)?
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => ProbeError::Refused,
                std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => {
                    ProbeError::Unreachable(e.to_string())
                }
                _ => ProbeError::Io(e.to_string()),
            })
    }

    /// The probe of `url` (parsed: `uri`): playlist, variant, newest segment.
    async fn probe_inner(
        &self,
        url: &str,
        uri: &Uri,
        status: &mut Option<u16>,
    ) -> Result<MediaFacts, ProbeError> {
        let uri = uri.clone();
        let body = self.fetch(&uri, status, None, self.max_body).await?;
        let (media_uri, body, facts) = match parse_playlist(&body)? {
            Parsed::Media(facts) => (uri, body, facts),
            Parsed::Master { variant_uri } => {
                let variant = resolve(&uri, &variant_uri)?;
                let body = self.fetch(&variant, status, None, self.max_body).await?;
                match parse_playlist(&body)? {
                    Parsed::Media(facts) => (variant, body, facts),
                    Parsed::Master { .. } => {
                        return Err(ProbeError::Unparsable(
                            "master playlist points to another master".into(),
                        ));
                    }
                }
            }
        };
        if self.segments {
            self.check_segments(url, &media_uri, &body).await?;
        }
        Ok(facts)
    }

    /// Checks the segments of the media playlist `body`: none found corrupt is still listed,
    /// and the newest is whole ([`Prober::check_segment`]; a corrupt one is remembered while
    /// it is listed).
    async fn check_segments(
        &self,
        key: &str,
        playlist: &Uri,
        body: &[u8],
    ) -> Result<(), ProbeError> {
        let listed = segment_uris(body);
        let Some(newest) = listed.last() else {
            return Ok(());
        };
        {
            let mut broken = self
                .broken
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let entry = broken.entry(key.to_string()).or_default();
            if let Some(uri) = still_listed(entry, &listed) {
                return Err(ProbeError::CorruptListed(uri));
            }
        }
        let checked = self.check_segment(key, playlist, newest).await;
        if let Err(ProbeError::Corrupt(_)) = &checked {
            self.broken
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(key.to_string())
                .or_default()
                .push(newest.clone());
        }
        checked
    }

    /// Fetches the newest segment: whole the first time it is listed, its tail afterwards
    /// (a hung or crawling segment path times out the probe either way). A broken body is
    /// [`ProbeError::Segment`].
    async fn check_segment(
        &self,
        key: &str,
        playlist: &Uri,
        segment: &str,
    ) -> Result<(), ProbeError> {
        let target = resolve(playlist, segment)?;
        let seen_whole = self
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .is_some_and(|s| s == segment);
        let range = seen_whole.then(|| format!("bytes=-{SEGMENT_TAIL_BYTES}"));
        let mut status = None;
        let mut total = None;
        let body = self
            .fetch_total(
                &target,
                &mut status,
                &mut total,
                range.as_deref(),
                MAX_SEGMENT_BYTES,
            )
            .await
            .map_err(|e| match e {
                ProbeError::Io(msg) => ProbeError::Segment(msg),
                ProbeError::HttpStatus(code) => ProbeError::Segment(format!("HTTP {code}")),
                // The playlist was served and its newest segment is not: every player fetching
                // it now gets the error. Our origin answers a cut-short transport stream so
                // (`origin`'s `handler::serve_file`), and remembering it keeps the origin bad
                // while it is listed, as for a cut body served whole.
                ProbeError::Http5xx(code) => ProbeError::Corrupt(format!("HTTP {code} for it")),
                other => other,
            })?;
        let is_ts = target.path().ends_with(".ts");
        // A suffix is packet-aligned only when the segment is shorter than the range (the
        // origin then sends it whole) or a whole number of packets long, which `check_ts` of
        // the whole body established when it was first seen.
        if is_ts && (status == Some(StatusCode::OK.as_u16()) || seen_whole) {
            check_ts(&body)?;
        }
        // The segment's size now: the whole body, or the total a ranged answer states.
        let size = if status == Some(StatusCode::PARTIAL_CONTENT.as_u16()) {
            total
        } else {
            Some(body.len() as u64)
        };
        let mut sizes = self
            .whole_sizes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen_whole {
            if let (Some(was), Some(now)) = (sizes.get(key).copied(), size) {
                shrank(was, now)?;
            }
        } else {
            match size {
                Some(n) => sizes.insert(key.to_string(), n),
                None => sizes.remove(key),
            };
            self.checked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key.to_string(), segment.to_string());
        }
        Ok(())
    }

    /// [`Prober::fetch`], also giving the total size a `206` answer states in its
    /// `Content-Range` (`None` otherwise).
    async fn fetch_total(
        &self,
        uri: &Uri,
        status: &mut Option<u16>,
        total: &mut Option<u64>,
        range: Option<&str>,
        max_body: usize,
    ) -> Result<Bytes, ProbeError> {
        self.fetch_inner(uri, status, Some(total), range, max_body)
            .await
    }

    /// One GET over a new connection (with a `Range` header when given); returns the body of
    /// a 2xx answer, at most `max_body` bytes.
    async fn fetch(
        &self,
        uri: &Uri,
        status: &mut Option<u16>,
        range: Option<&str>,
        max_body: usize,
    ) -> Result<Bytes, ProbeError> {
        self.fetch_inner(uri, status, None, range, max_body).await
    }

    async fn fetch_inner(
        &self,
        uri: &Uri,
        status: &mut Option<u16>,
        total: Option<&mut Option<u64>>,
        range: Option<&str>,
        max_body: usize,
    ) -> Result<Bytes, ProbeError> {
        let bad_url = || ProbeError::BadUrl(uri.to_string());
        let (host, port) = host_port(uri)?;
        let stream = self.connect(host, port).await?;
        report_icmp_errors(&stream);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| io_error(&e))?;
        // The connection task ends when the server closes (we ask it to) or when this probe
        // is dropped by its timeout: the guard aborts it so no task outlives its probe.
        let conn = AbortOnDrop(tokio::spawn(conn).abort_handle());
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut request = Request::get(path);
        if let Some(r) = range {
            request = request.header(header::RANGE, r);
        }
        let request = request
            .header(header::HOST, authority)
            .header(header::CONNECTION, "close")
            // The origin is judged on its own files: never on a copy it filled from a peer.
            .header(service::http::LOCAL_ONLY_HEADER, "1")
            .header(
                header::USER_AGENT,
                concat!("switcher-ctl/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|_| bad_url())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| io_error(&e))?;
        let code = response.status();
        *status = Some(code.as_u16());
        if code.is_server_error() {
            return Err(ProbeError::Http5xx(code.as_u16()));
        }
        if !code.is_success() {
            return Err(ProbeError::HttpStatus(code.as_u16()));
        }
        if let Some(total) = total {
            *total = response
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(content_range_total);
        }
        let body = Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    ProbeError::TooLarge(max_body)
                } else {
                    io_error(e.as_ref())
                }
            })?;
        drop(conn);
        Ok(body.to_bytes())
    }
}

/// Host (IPv6 brackets off) and port of an `http://` URL; [`ProbeError::BadUrl`] for any
/// other.
fn host_port(uri: &Uri) -> Result<(&str, u16), ProbeError> {
    let bad_url = || ProbeError::BadUrl(uri.to_string());
    if uri.scheme_str() != Some("http") {
        return Err(bad_url());
    }
    let host = uri.host().ok_or_else(bad_url)?;
    // `Uri::host` keeps the brackets of an IPv6 literal; `connect` wants them off.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host, uri.port_u16().unwrap_or(HTTP_DEFAULT_PORT)))
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves a variant URI of a master playlist against the master's URL (RFC 8216 4.1:
/// relative URIs are relative to the playlist's URI). Handles the three forms packagers
/// write: absolute `http://`, absolute path, and a path relative to the master's directory.
pub fn resolve(base: &Uri, reference: &str) -> Result<Uri, ProbeError> {
    let bad = || ProbeError::BadUrl(reference.to_string());
    if reference.starts_with("http://") || reference.starts_with("https://") {
        return reference.parse().map_err(|_| bad());
    }
    let scheme = base.scheme_str().ok_or_else(bad)?;
    let authority = base.authority().ok_or_else(bad)?;
    let path = if reference.starts_with('/') {
        reference.to_string()
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(dir, _)| dir);
        format!("{dir}/{reference}")
    };
    format!("{scheme}://{authority}{path}")
        .parse()
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error wrapping another, as hyper wraps the socket's.
    #[derive(Debug)]
    struct Wrapped(std::io::Error);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "connection error")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn unreachable_anywhere_in_the_chain_is_unreachable() {
        use std::io::{Error, ErrorKind};
        for kind in [ErrorKind::HostUnreachable, ErrorKind::NetworkUnreachable] {
            assert!(matches!(
                io_error(&Error::from(kind)),
                ProbeError::Unreachable(_)
            ));
            assert!(matches!(
                io_error(&Wrapped(Error::from(kind))),
                ProbeError::Unreachable(_)
            ));
        }
        assert_eq!(
            io_error(&Wrapped(Error::from(ErrorKind::ConnectionReset))),
            ProbeError::Io("connection error".into())
        );
    }

    #[test]
    fn content_range_totals() {
        assert_eq!(content_range_total("bytes 100-199/200"), Some(200));
        assert_eq!(content_range_total("bytes 0-0/1048576"), Some(1_048_576));
        assert_eq!(content_range_total("bytes 0-9/*"), None);
        assert_eq!(content_range_total("items 0-9/10"), None);
        assert_eq!(content_range_total("bytes 0-9"), None);
    }

    #[test]
    fn a_shrunk_segment_is_an_error_and_a_grown_or_equal_one_is_not() {
        assert!(shrank(1000, 1000).is_ok());
        assert!(shrank(1000, 1200).is_ok());
        match shrank(1000, 501) {
            Err(ProbeError::Corrupt(msg)) => assert!(msg.contains("1000 to 501"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_corrupt_segment_counts_while_listed_and_is_forgotten_once_not() {
        let listed = |r: std::ops::RangeInclusive<u32>| -> Vec<String> {
            r.map(|i| format!("seg{i}.ts")).collect()
        };
        let mut broken = vec!["seg5.ts".to_string(), "seg6.ts".to_string()];
        assert_eq!(
            still_listed(&mut broken, &listed(1..=6)),
            Some("seg5.ts".into())
        );
        assert_eq!(
            still_listed(&mut broken, &listed(6..=11)),
            Some("seg6.ts".into())
        );
        assert_eq!(broken, ["seg6.ts"], "what left the window is forgotten");
        assert_eq!(still_listed(&mut broken, &listed(7..=12)), None);
        assert!(broken.is_empty());
    }

    #[test]
    fn resolve_forms() {
        let base: Uri = "http://h:1/hls/demo/index.m3u8".parse().expect("uri");
        assert_eq!(
            resolve(&base, "v0/index.m3u8").expect("rel").to_string(),
            "http://h:1/hls/demo/v0/index.m3u8"
        );
        assert_eq!(
            resolve(&base, "/x.m3u8").expect("abs path").to_string(),
            "http://h:1/x.m3u8"
        );
        assert_eq!(
            resolve(&base, "http://o:2/y.m3u8")
                .expect("abs")
                .to_string(),
            "http://o:2/y.m3u8"
        );
    }
}

//! Probing one origin: fetch its live playlist over a fresh HTTP/1.1 connection, parse it
//! (RFC 8216, m3u8-rs) and report how fresh it is.
//!
//! The parsing half ([`parse_playlist`], [`MediaFacts::age_seconds`]) is pure and takes the
//! clock as an argument; the I/O half ([`Prober::probe`]) opens a new `TcpStream` for every
//! probe, because a pooled keep-alive connection hides exactly the L4 faults (a dead
//! listener, a full accept queue) that failover must see (pingora's health checks do the same).

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use m3u8_rs::Playlist;
use tokio::net::TcpStream;

/// Port of an `http://` URL without one.
const HTTP_DEFAULT_PORT: u16 = 80;
/// Microseconds per second, for sub-second segment durations.
const MICROS_PER_SECOND: f64 = 1_000_000.0;

/// Why a probe found no usable playlist. Every variant makes the origin bad for that window.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The TCP connection was refused: nothing listens, the origin process is gone. Counts as
    /// bad at once, without waiting for more windows.
    #[error("connection refused")]
    Refused,
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
}

impl ProbeError {
    /// Short stable name, for logs, JSON and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeError::Refused => "refused",
            ProbeError::Timeout => "timeout",
            ProbeError::Io(_) => "io",
            ProbeError::Http5xx(_) => "http_5xx",
            ProbeError::HttpStatus(_) => "http_status",
            ProbeError::Unparsable(_) => "unparsable",
            ProbeError::NoProgramDateTime => "no_program_date_time",
            ProbeError::Empty => "empty",
            ProbeError::TooLarge(_) => "too_large",
            ProbeError::BadUrl(_) => "bad_url",
        }
    }
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
        (now - self.newest_end)
            .num_microseconds()
            .map_or(f64::MAX, |us| us as f64 / MICROS_PER_SECOND)
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
    let playlist = m3u8_rs::parse_playlist_res(body).map_err(|e| {
        // nom's error holds the remaining input; keep the message short.
        let mut msg = format!("{e:?}");
        msg.truncate(80);
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
            let newest_msn = media.media_sequence + count - 1;
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
            let seconds: f64 = media.segments[tagged..]
                .iter()
                .map(|s| f64::from(s.duration))
                .sum();
            let span = chrono::Duration::microseconds((seconds * MICROS_PER_SECOND) as i64);
            Ok(Parsed::Media(MediaFacts {
                newest_msn,
                newest_end: pdt.with_timezone(&Utc) + span,
            }))
        }
    }
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
    /// Budget of one whole probe, master-playlist hop included.
    pub timeout: Duration,
    /// Largest body accepted.
    pub max_body: usize,
}

impl Prober {
    /// Probes the playlist at `url`. Never fails: every failure is in the report.
    pub async fn probe(&self, url: &str) -> ProbeReport {
        let start = Instant::now();
        let mut status = None;
        let outcome =
            match tokio::time::timeout(self.timeout, self.probe_inner(url, &mut status)).await {
                Ok(Ok(facts)) => Ok(Freshness {
                    newest_msn: facts.newest_msn,
                    age_seconds: facts.age_seconds(SystemTime::now()),
                }),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ProbeError::Timeout),
            };
        ProbeReport {
            status,
            latency: start.elapsed(),
            outcome,
        }
    }

    async fn probe_inner(
        &self,
        url: &str,
        status: &mut Option<u16>,
    ) -> Result<MediaFacts, ProbeError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| ProbeError::BadUrl(url.to_string()))?;
        match parse_playlist(&self.fetch(&uri, status).await?)? {
            Parsed::Media(facts) => Ok(facts),
            Parsed::Master { variant_uri } => {
                let variant = resolve(&uri, &variant_uri)?;
                match parse_playlist(&self.fetch(&variant, status).await?)? {
                    Parsed::Media(facts) => Ok(facts),
                    Parsed::Master { .. } => Err(ProbeError::Unparsable(
                        "master playlist points to another master".into(),
                    )),
                }
            }
        }
    }

    /// One GET over a new connection; returns the body of a 2xx answer.
    async fn fetch(&self, uri: &Uri, status: &mut Option<u16>) -> Result<Bytes, ProbeError> {
        let bad_url = || ProbeError::BadUrl(uri.to_string());
        if uri.scheme_str() != Some("http") {
            return Err(bad_url());
        }
        let host = uri.host().ok_or_else(bad_url)?;
        // `Uri::host` keeps the brackets of an IPv6 literal; `connect` wants them off.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(HTTP_DEFAULT_PORT);
        let stream = TcpStream::connect((host, port))
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => ProbeError::Refused,
                _ => ProbeError::Io(e.to_string()),
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| ProbeError::Io(e.to_string()))?;
        // The connection task ends when the server closes (we ask it to) or when this probe
        // is dropped by its timeout: the guard aborts it so no task outlives its probe.
        let conn = AbortOnDrop(tokio::spawn(conn));
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let request = Request::get(path)
            .header(header::HOST, authority)
            .header(header::CONNECTION, "close")
            .header(
                header::USER_AGENT,
                concat!("switcher-ctl/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|_| bad_url())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ProbeError::Io(e.to_string()))?;
        let code = response.status();
        *status = Some(code.as_u16());
        if code.is_server_error() {
            return Err(ProbeError::Http5xx(code.as_u16()));
        }
        if !code.is_success() {
            return Err(ProbeError::HttpStatus(code.as_u16()));
        }
        let body = Limited::new(response.into_body(), self.max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    ProbeError::TooLarge(self.max_body)
                } else {
                    ProbeError::Io(e.to_string())
                }
            })?;
        drop(conn);
        Ok(body.to_bytes())
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

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

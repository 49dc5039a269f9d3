//! Peer fill: a file this origin cannot serve from its own directory is asked of its peer
//! origins, and their copy is served instead of an error.
//!
//! Why: the packagers of every origin write byte-identical files under the same names
//! (docs/ARCHITECTURE.md, "Interchangeable packagers"), so a peer's copy *is* the file. When an
//! origin's storage fails (a full disk cuts segments short, a directory turns unreadable, the
//! packager stops writing), the edge moves its viewers away within a probe window or two. The
//! requests that reach it inside that window got a 5xx or a 404: a player that retries gets
//! the segment from the healthy origin by then, but one that does not (ffmpeg's HLS demuxer,
//! and the players built on it) skips the segment, and its viewer sees a hole. With peers, the
//! failing origin answers those requests with the peer's bytes.
//!
//! When (`handler::serve_file`): a segment that is not whole MPEG-TS packets, a segment still
//! missing after the segment wait, or a file the file system fails to open or read (a
//! playlist included). A playlist that is not there is a 404 as before: a name no packager
//! writes must not cost a peer request; nor does a segment that was not waited for because
//! every waiting slot was taken (a flood of such names stays a 404 at once). A HEAD that needs
//! a fill fetches the whole copy, as its length is the copy's.
//!
//! What it never does:
//! - hide the fault from the edge: a request carrying [`LOCAL_ONLY_HEADER`] is never filled,
//!   and the edge's prober sends it, so the origin is still judged on its own files and
//!   retired as before;
//! - chain or loop: a fill request carries that header too, so a peer answers from its own
//!   files as they are, without a segment wait of its own (two origins that list each other as
//!   peers ask each other at most once, and a name no packager wrote is a quick 404);
//! - serve what it cannot check: only a 200, at most [`MAX_FILL_BYTES`], and for a transport
//!   stream whole packets, each starting with the sync byte;
//! - grow without bound: at most `max_fills` peer requests at once, each within `timeout` in
//!   all; requests for a file already being filled wait for that fill instead of asking again,
//!   and the last few filled segments (immutable, so never stale) are reused.
//!
//! Written on hyper's client connection (as the edge's prober is) rather than a pooled client:
//! fills are rare, each opens one connection with a connect timeout of its own, and no pooled
//! connection outlives the shard (one runtime per core) that opened it.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{ETAG, HOST, LAST_MODIFIED, USER_AGENT};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use service::http::LOCAL_ONLY_HEADER;
use tokio::sync::{OnceCell, Semaphore};

use crate::error::{Error, Result};
use crate::hls::{MediaKind, TS_PACKET_BYTES};
use crate::metrics::Metrics;

/// Largest body taken from a peer: a 2 s segment at 128 Mbit/s, far above any live rendition.
pub const MAX_FILL_BYTES: usize = 32 * 1024 * 1024;
/// How long one peer has to accept the connection: peers are origins on the edge's own
/// network, as the prober's are (switcher-ctl's connect timeout is 0.1 s too), so a peer
/// whose host is gone costs this and the next peer is asked.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
/// Filled segments kept for reuse, and their bytes: a few segments of a herd of viewers
/// fetching the live edge.
const RECENT_SEGMENTS: usize = 8;
const RECENT_BYTES: usize = 64 * 1024 * 1024;
/// MPEG-TS sync byte (ISO/IEC 13818-1 2.4.3.2), the first byte of every packet.
const TS_SYNC: u8 = 0x47;
/// Characters escaped in a path component sent to a peer: what a URI path may not hold raw.
const PATH_COMPONENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Why this origin's own copy could not be served: the `reason` label of
/// `origin_peer_fills_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A transport stream that is not whole packets.
    CutShort,
    /// A segment still missing after the segment wait.
    Missing,
    /// The file system failed to open or read it.
    Unreadable,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 3] = [Reason::CutShort, Reason::Missing, Reason::Unreadable];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::CutShort => "cut_short",
            Reason::Missing => "missing",
            Reason::Unreadable => "unreadable",
        }
    }
}

/// What became of one request's fill: the `outcome` label of `origin_peer_fills_total` (see
/// `Metrics::peer_fills`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This request asked a peer and served its copy.
    Filled,
    /// It served the copy another request asked for.
    Shared,
    /// No peer had a good copy in time: this origin's own error.
    Failed,
    /// Every fill slot was taken: this origin's own error.
    NoSlot,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 4] = [
        Outcome::Filled,
        Outcome::Shared,
        Outcome::Failed,
        Outcome::NoSlot,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Filled => "filled",
            Outcome::Shared => "shared",
            Outcome::Failed => "failed",
            Outcome::NoSlot => "no_slot",
        }
    }
}

/// A peer's copy of a file, checked.
#[derive(Debug, Clone)]
pub struct Filled {
    /// The whole file.
    pub body: Bytes,
    /// The peer's `ETag`, if it sent a valid one.
    pub etag: Option<HeaderValue>,
    /// The peer's `Last-Modified`, if it sent a valid one, and as a time.
    pub last_modified: Option<(HeaderValue, SystemTime)>,
}

/// One peer origin: where to connect and what to send as `Host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    host: String,
    port: u16,
    authority: String,
}

impl Peer {
    /// Parses a peer's base URL: `http://HOST[:PORT]`, with no path beyond `/`, no query.
    /// Only plain HTTP: peers are the origins' own listeners on the edge's network.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |why: &str| Error::Config(format!("peer {url:?}: {why}"));
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// peers are supported"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad(
                "give the origin's base URL (http://HOST:PORT), no path",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Self {
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_string(),
        })
    }
}

/// A fill's result: the copy, or why none (`Failed` or `NoSlot`), for every request sharing it.
type Fetched = std::result::Result<Filled, Outcome>;

/// The fill requests in flight (so a second request for the same file waits for the first's
/// answer) and the segments filled last.
#[derive(Debug, Default)]
struct State {
    flights: HashMap<PathBuf, Arc<OnceCell<Fetched>>>,
    recent: VecDeque<(PathBuf, Filled)>,
    recent_bytes: usize,
}

/// The peers of one server and what bounds asking them; shared by every shard.
#[derive(Debug)]
pub struct Peers {
    peers: Vec<Peer>,
    timeout: Duration,
    slots: Semaphore,
    state: Mutex<State>,
}

impl Peers {
    /// Peers asked in the given order, at most `max_fills` fills at once, each within
    /// `timeout` in all.
    pub fn new(peers: Vec<Peer>, timeout: Duration, max_fills: usize) -> Self {
        Self {
            peers,
            timeout,
            slots: Semaphore::new(max_fills),
            state: Mutex::default(),
        }
    }

    /// A peer's copy of `relative` (a path below the root, already routed and checked), or
    /// `None` when no peer had a good one in time or every fill slot is taken. `why`: what
    /// failed with this origin's own copy, for the log. Counted in
    /// `origin_peer_fills_total{reason,outcome}`.
    pub async fn fill(
        &self,
        relative: &Path,
        kind: MediaKind,
        reason: Reason,
        why: &str,
        metrics: &Metrics,
    ) -> Option<Filled> {
        let count = |outcome: Outcome| {
            metrics
                .peer_fills
                .with_label_values(&[reason.label(), outcome.label()])
                .inc()
        };
        let flight = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, filled)) = state.recent.iter().find(|(p, _)| p == relative) {
                count(Outcome::Shared);
                return Some(filled.clone());
            }
            Flight {
                state: &self.state,
                relative,
                cell: state
                    .flights
                    .entry(relative.to_path_buf())
                    .or_default()
                    .clone(),
            }
        };
        // The first request runs the fill; the others wait for its answer (or, if it is
        // cancelled, the next one runs it).
        let mut ran = false;
        let ran_here = &mut ran;
        let fetched = flight
            .cell
            .get_or_init(|| async move {
                *ran_here = true;
                let fetched = self.fetch(relative, kind).await;
                // Segments never change: kept for the next requests before this fill is seen
                // done, so that no request finds neither the fill nor the copy.
                if let (Ok(filled), false) = (&fetched, kind.is_playlist()) {
                    let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                    state.remember(relative, filled);
                }
                fetched
            })
            .await
            .clone();
        let outcome = match (&fetched, ran) {
            (Ok(_), true) => Outcome::Filled,
            (Ok(_), false) => Outcome::Shared,
            (Err(outcome), _) => *outcome,
        };
        count(outcome);
        if ran {
            log_fill(relative, reason, why, outcome);
        }
        fetched.ok()
    }

    /// Asks each peer in turn until one has a good copy, within the fill's deadline; else why
    /// not (`Failed` or `NoSlot`).
    async fn fetch(&self, relative: &Path, kind: MediaKind) -> Fetched {
        let Ok(_slot) = self.slots.try_acquire() else {
            return Err(Outcome::NoSlot);
        };
        let path = request_path(relative);
        let deadline = tokio::time::Instant::now() + self.timeout;
        for peer in &self.peers {
            match tokio::time::timeout_at(deadline, ask(peer, &path, kind)).await {
                Ok(Ok(filled)) => return Ok(filled),
                Ok(Err(why)) => {
                    tracing::debug!(peer = %peer.authority, path, why, "peer fill: no good copy")
                }
                Err(_) => {
                    tracing::debug!(peer = %peer.authority, path, "peer fill: out of time");
                    break;
                }
            }
        }
        Err(Outcome::Failed)
    }
}

impl State {
    /// Keeps a filled segment for reuse (once: two fills of one segment can overlap when the
    /// first's requests all went away), the oldest going first past the bounds.
    fn remember(&mut self, relative: &Path, filled: &Filled) {
        if self.recent.iter().any(|(p, _)| p == relative) {
            return;
        }
        self.recent_bytes += filled.body.len();
        self.recent
            .push_back((relative.to_path_buf(), filled.clone()));
        while self.recent.len() > RECENT_SEGMENTS || self.recent_bytes > RECENT_BYTES {
            let Some((_, old)) = self.recent.pop_front() else {
                break;
            };
            self.recent_bytes -= old.body.len();
        }
    }
}

/// One request's part in the fill of a file. A finished fill leaves the table with the first
/// request done with it (a segment's copy stays in `recent`; a failure is not kept, so the next
/// request asks again); an unfinished one with the last request that shares it, so a request
/// that goes away early (its viewer hung up) leaves the fill to the others, and no entry
/// outlives its requests.
struct Flight<'a> {
    state: &'a Mutex<State>,
    relative: &'a Path,
    cell: Arc<OnceCell<Fetched>>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Requests take their share from the table under this lock, so under it the count is
        // exact: the table's and this one's mean no other request holds the fill.
        let done = state.flights.get(self.relative).is_some_and(|c| {
            Arc::ptr_eq(c, &self.cell) && (c.initialized() || Arc::strong_count(c) == 2)
        });
        if done {
            state.flights.remove(self.relative);
        }
    }
}

/// Says that this origin's own copy failed, and what the peers did about it: at most once a
/// second (a herd on a broken file is one line, the metric counts every request).
fn log_fill(relative: &Path, reason: Reason, why: &str, outcome: Outcome) {
    static LAST_LOGGED_S: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now_s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST_LOGGED_S.swap(now_s, std::sync::atomic::Ordering::Relaxed) != now_s {
        tracing::warn!(
            path = %relative.display(),
            reason = reason.label(),
            why,
            outcome = outcome.label(),
            "own copy unservable: asked the peers"
        );
    }
}

/// `/hls/` and the relative path, each component percent-encoded.
fn request_path(relative: &Path) -> String {
    let mut path = String::from("/hls");
    for part in relative.components() {
        path.push('/');
        path.extend(utf8_percent_encode(
            &part.as_os_str().to_string_lossy(),
            PATH_COMPONENT,
        ));
    }
    path
}

/// One GET of `path` from `peer` over a new connection; the checked copy, or why not.
async fn ask(
    peer: &Peer,
    path: &str,
    kind: MediaKind,
) -> std::result::Result<Filled, &'static str> {
    let stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((peer.host.as_str(), peer.port)),
    )
    .await
    .map_err(|_| "connect timed out")?
    .map_err(|_| "connect failed")?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|_| "handshake failed")?;
    // Ends when the peer closes (asked below) or when this fill is dropped at its deadline.
    let conn = AbortOnDrop(tokio::spawn(conn));
    let request = Request::get(path)
        .header(HOST, peer.authority.as_str())
        .header(LOCAL_ONLY_HEADER, "1")
        .header(http::header::CONNECTION, "close")
        .header(USER_AGENT, concat!("origin/", env!("CARGO_PKG_VERSION")))
        .body(Empty::new())
        .map_err(|_| "bad request path")?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|_| "request failed")?;
    if response.status() != StatusCode::OK {
        return Err("status not 200");
    }
    let etag = response.headers().get(ETAG).cloned();
    let last_modified = response.headers().get(LAST_MODIFIED).and_then(|v| {
        let at = httpdate::parse_http_date(v.to_str().ok()?).ok()?;
        Some((v.clone(), at))
    });
    let body = Limited::new(response.into_body(), MAX_FILL_BYTES)
        .collect()
        .await
        .map_err(|_| "body failed or too large")?
        .to_bytes();
    drop(conn);
    check(kind, &body)?;
    Ok(Filled {
        body,
        etag,
        last_modified,
    })
}

/// What a peer's copy must be to be served: never empty; a transport stream whole packets,
/// each starting with the sync byte; a playlist a playlist.
pub fn check(kind: MediaKind, body: &[u8]) -> std::result::Result<(), &'static str> {
    if body.is_empty() {
        return Err("empty");
    }
    match kind {
        MediaKind::TransportStream => {
            let packet = TS_PACKET_BYTES as usize;
            if !body.len().is_multiple_of(packet) {
                return Err("not whole MPEG-TS packets");
            }
            if body.iter().step_by(packet).any(|&b| b != TS_SYNC) {
                return Err("MPEG-TS packet without its sync byte");
            }
            Ok(())
        }
        MediaKind::Playlist if !body.starts_with(b"#EXTM3U") => Err("not a playlist"),
        _ => Ok(()),
    }
}

/// Aborts the connection task when the fill ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<std::result::Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_are_plain_http_base_urls() {
        let p = Peer::parse("http://127.0.0.1:8082").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("127.0.0.1", 8082));
        let p = Peer::parse("http://[::1]:8082/").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.authority.as_str()),
            ("::1", 8082, "[::1]:8082")
        );
        assert_eq!(Peer::parse("http://o2.internal").unwrap().port, 80);
        for bad in [
            "https://127.0.0.1:8082",
            "127.0.0.1:8082",
            "http://127.0.0.1:8082/hls",
            "http://127.0.0.1:8082/?a",
            "not a url",
        ] {
            assert!(Peer::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_copy_is_served_only_when_it_checks_out() {
        assert!(check(MediaKind::TransportStream, &ts(3)).is_ok());
        assert!(check(MediaKind::TransportStream, &ts(3)[..500]).is_err());
        let mut unsynced = ts(3);
        unsynced[376] = 0;
        assert!(check(MediaKind::TransportStream, &unsynced).is_err());
        assert!(check(MediaKind::TransportStream, &[]).is_err());
        assert!(check(MediaKind::Playlist, b"#EXTM3U\n#EXT-X-VERSION:3\n").is_ok());
        assert!(check(MediaKind::Playlist, b"<html>").is_err());
        assert!(check(MediaKind::Fmp4Segment, b"x").is_ok());
    }

    #[test]
    fn the_peer_is_asked_for_the_same_path_escaped() {
        assert_eq!(request_path(Path::new("demo/897.ts")), "/hls/demo/897.ts");
        assert_eq!(
            request_path(Path::new("a b/x?y#.ts")),
            "/hls/a%20b/x%3Fy%23.ts"
        );
    }

    /// A fill whose requests all go away (viewers that hang up) leaves nothing behind.
    #[tokio::test]
    async fn a_cancelled_fill_leaves_no_entry() {
        let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = Peer::parse(&format!("http://{}", hung.local_addr().unwrap())).unwrap();
        let peers = Peers::new(vec![peer], Duration::from_secs(5), 4);
        let metrics = Metrics::new().unwrap();
        let relative = Path::new("demo/1.ts");
        let fill = peers.fill(
            relative,
            MediaKind::TransportStream,
            Reason::Missing,
            "not found",
            &metrics,
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(100), fill)
                .await
                .is_err(),
            "the hung peer answered"
        );
        let state = peers.state.lock().unwrap();
        assert!(state.flights.is_empty() && state.recent.is_empty());
        assert_eq!(peers.slots.available_permits(), 4);
    }

    /// A peer that answers every request with `body` after `delay`, and counts connections.
    async fn slow_peer(
        delay: Duration,
        body: Vec<u8>,
    ) -> (Peer, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = Peer::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = body.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    tokio::time::sleep(delay).await;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                });
            }
        });
        (peer, connections)
    }

    fn ts(packets: usize) -> Vec<u8> {
        let mut b = vec![0u8; packets * 188];
        b.iter_mut().step_by(188).for_each(|x| *x = TS_SYNC);
        b
    }

    fn fills(metrics: &Metrics, outcome: Outcome) -> u64 {
        metrics
            .peer_fills
            .with_label_values(&[Reason::CutShort.label(), outcome.label()])
            .get()
    }

    /// A viewer that hangs up while waiting for a fill another request runs leaves the fill
    /// to the others: a request after it joins the same fill, and the peer is asked once.
    #[tokio::test]
    async fn a_viewer_that_hangs_up_leaves_the_fill_to_the_others() {
        let (peer, connections) = slow_peer(Duration::from_millis(300), ts(10)).await;
        let peers = Peers::new(vec![peer], Duration::from_secs(5), 4);
        let metrics = Metrics::new().unwrap();
        let fill = || {
            peers.fill(
                Path::new("demo/2.ts"),
                MediaKind::TransportStream,
                Reason::CutShort,
                "cut",
                &metrics,
            )
        };
        let first = fill();
        let hangs_up = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tokio::time::timeout(Duration::from_millis(50), fill())
                .await
                .is_err()
        };
        let later = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            fill().await
        };
        let (first, hung_up, later) = tokio::join!(first, hangs_up, later);
        assert!(hung_up, "the fill took less than 100 ms");
        assert_eq!(first.map(|f| f.body.len()), Some(1880));
        assert_eq!(later.map(|f| f.body.len()), Some(1880));
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(fills(&metrics, Outcome::Filled), 1);
        assert_eq!(fills(&metrics, Outcome::Shared), 1);
        assert!(peers.state.lock().unwrap().flights.is_empty());
    }

    /// Requests that share a fill which found no free slot are counted as such, not as a
    /// peer without the file.
    #[tokio::test]
    async fn a_fill_without_a_slot_is_no_slot_for_every_request_sharing_it() {
        let (peer, _) = slow_peer(Duration::from_millis(300), ts(10)).await;
        let peers = Peers::new(vec![peer], Duration::from_secs(5), 1);
        let metrics = Metrics::new().unwrap();
        let fill = |name: &'static str| {
            peers.fill(
                Path::new(name),
                MediaKind::TransportStream,
                Reason::CutShort,
                "cut",
                &metrics,
            )
        };
        let holds_the_slot = fill("demo/3.ts");
        let others = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tokio::join!(fill("demo/4.ts"), fill("demo/4.ts"))
        };
        let (held, (a, b)) = tokio::join!(holds_the_slot, others);
        assert!(held.is_some() && a.is_none() && b.is_none());
        assert_eq!(fills(&metrics, Outcome::NoSlot), 2);
        assert_eq!(fills(&metrics, Outcome::Failed), 0);
    }

    #[test]
    fn recent_fills_are_bounded_in_count_and_bytes() {
        let mut state = State::default();
        let filled = |n: usize| Filled {
            body: Bytes::from(vec![0u8; n]),
            etag: None,
            last_modified: None,
        };
        for i in 0..RECENT_SEGMENTS + 3 {
            state.remember(Path::new(&format!("s/{i}.ts")), &filled(10));
        }
        assert_eq!(state.recent.len(), RECENT_SEGMENTS);
        assert_eq!(state.recent_bytes, RECENT_SEGMENTS * 10);
        assert_eq!(state.recent[0].0, Path::new("s/3.ts"));
        state.remember(Path::new("s/big.ts"), &filled(RECENT_BYTES));
        assert_eq!(state.recent.len(), 1);
        assert_eq!(state.recent_bytes, RECENT_BYTES);
    }
}

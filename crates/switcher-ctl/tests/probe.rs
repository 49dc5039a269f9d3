//! Probing: playlist parsing with real playlists (pure), then probes over real HTTP against
//! small servers on 127.0.0.1:0.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use common::{Reply, TestServer, playlist_aged, ts_body};
use switcher_ctl::probe::{MediaFacts, Parsed, ProbeError, Prober, parse_playlist};

const MEDIA_WITH_PDT: &str = "#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:100
#EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:00.000Z
#EXTINF:2.000,
seg100.ts
#EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:02.000Z
#EXTINF:2.000,
seg101.ts
#EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:04.000Z
#EXTINF:1.500,
seg102.ts
";

/// PDT only on the first segment (RFC 8216 4.3.2.6: later dates follow by durations), with
/// a time zone offset.
const MEDIA_PDT_FIRST_ONLY: &str = "#EXTM3U
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:100
#EXT-X-PROGRAM-DATE-TIME:2024-01-01T02:00:00.000+02:00
#EXTINF:2.000,
seg100.ts
#EXTINF:2.000,
seg101.ts
#EXTINF:1.500,
seg102.ts
";

const MEDIA_NO_PDT: &str = "#EXTM3U
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:7
#EXTINF:2.000,
a.ts
#EXTINF:2.000,
b.ts
";

const MASTER: &str = "#EXTM3U
#EXT-X-STREAM-INF:BANDWIDTH=2000000,RESOLUTION=1280x720
v720/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360
v360/index.m3u8
";

fn newest_end_expected() -> DateTime<Utc> {
    "2024-01-01T00:00:05.500Z".parse().expect("timestamp")
}

fn media(body: &str) -> MediaFacts {
    match parse_playlist(body.as_bytes()) {
        Ok(Parsed::Media(m)) => m,
        other => panic!("expected a media playlist, got {other:?}"),
    }
}

#[test]
fn media_playlist_with_pdt_gives_msn_and_end() {
    let m = media(MEDIA_WITH_PDT);
    assert_eq!(m.newest_msn, 102, "MEDIA-SEQUENCE 100 + 3 segments - 1");
    assert_eq!(
        m.newest_end,
        newest_end_expected(),
        "PDT of newest (00:04) + its 1.5 s"
    );
    let now: SystemTime = ("2024-01-01T00:00:10.000Z"
        .parse::<DateTime<Utc>>()
        .expect("now"))
    .into();
    assert!(
        (m.age_seconds(now) - 4.5).abs() < 1e-6,
        "age {}",
        m.age_seconds(now)
    );
    // Clock behind the origin: a negative age, not hidden.
    let early: SystemTime = ("2024-01-01T00:00:05.000Z"
        .parse::<DateTime<Utc>>()
        .expect("now"))
    .into();
    assert!((m.age_seconds(early) + 0.5).abs() < 1e-6);
}

#[test]
fn pdt_on_first_segment_only_is_carried_forward() {
    let m = media(MEDIA_PDT_FIRST_ONLY);
    assert_eq!(m.newest_msn, 102);
    assert_eq!(m.newest_end, newest_end_expected());
}

#[test]
fn playlist_without_pdt_is_an_error() {
    assert_eq!(
        parse_playlist(MEDIA_NO_PDT.as_bytes()),
        Err(ProbeError::NoProgramDateTime)
    );
}

#[test]
fn master_playlist_yields_first_variant() {
    assert_eq!(
        parse_playlist(MASTER.as_bytes()),
        Ok(Parsed::Master {
            variant_uri: "v720/index.m3u8".into()
        })
    );
}

#[test]
fn garbage_and_empty_are_errors() {
    assert!(matches!(
        parse_playlist(b"<html>502 Bad Gateway</html>"),
        Err(ProbeError::Unparsable(_))
    ));
    assert!(matches!(
        parse_playlist(&[0xff, 0x00, 0x13, 0x37]),
        Err(ProbeError::Unparsable(_))
    ));
    assert_eq!(parse_playlist(b""), Err(ProbeError::Empty));
    assert_eq!(parse_playlist(b"  \n"), Err(ProbeError::Empty));
    assert_eq!(
        parse_playlist(b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:1\n"),
        Err(ProbeError::Empty)
    );
}

#[test]
fn huge_valid_playlist_parses() {
    // A long DVR window: 20 000 segments; the bound on size is the prober's, not the parser's.
    let mut s = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:5\n");
    s.push_str("#EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:00.000Z\n");
    for i in 0..20_000 {
        s.push_str(&format!("#EXTINF:2.000,\ns{i}.ts\n"));
    }
    let m = media(&s);
    assert_eq!(m.newest_msn, 5 + 20_000 - 1);
    assert_eq!(
        m.newest_end,
        "2024-01-01T11:06:40.000Z"
            .parse::<DateTime<Utc>>()
            .expect("ts")
    );
}

// --- over HTTP ---

const PATH: &str = "/hls/demo/index.m3u8";
const TIMEOUT: Duration = Duration::from_millis(300);
const MAX_BODY: usize = 1 << 20;

fn prober() -> Prober {
    // Playlist-only: these servers answer every path with the playlist. The segment check
    // has its own tests below.
    Prober::new(TIMEOUT, TIMEOUT, MAX_BODY, false)
}

#[tokio::test]
async fn fresh_playlist_over_http() {
    let server = TestServer::start(Arc::new(|_| {
        Reply::ok(playlist_aged(500, Duration::from_secs(1)))
    }))
    .await;
    let r = prober().probe(&server.url(PATH)).await;
    let f = r.outcome.expect("fresh playlist");
    assert_eq!(f.newest_msn, 500);
    assert!((0.9..2.0).contains(&f.age_seconds), "age {}", f.age_seconds);
    assert_eq!(r.status, Some(200));
    assert!(r.latency < TIMEOUT);
}

#[tokio::test]
async fn every_probe_opens_a_fresh_connection() {
    let server = TestServer::start(Arc::new(|_| {
        Reply::ok(playlist_aged(500, Duration::from_secs(1)))
    }))
    .await;
    let p = prober();
    for _ in 0..3 {
        p.probe(&server.url(PATH)).await.outcome.expect("fresh");
    }
    assert_eq!(server.accepts.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn status_503_and_404() {
    let server = TestServer::fixed(Reply {
        status: 503,
        body: "busy".into(),
        delay: Duration::ZERO,
    })
    .await;
    let r = prober().probe(&server.url(PATH)).await;
    assert_eq!(r.outcome, Err(ProbeError::Http5xx(503)));
    assert_eq!(r.status, Some(503));
    let server = TestServer::fixed(Reply {
        status: 404,
        body: "no".into(),
        delay: Duration::ZERO,
    })
    .await;
    assert_eq!(
        prober().probe(&server.url(PATH)).await.outcome,
        Err(ProbeError::HttpStatus(404))
    );
}

#[tokio::test]
async fn refused_port() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let r = prober().probe(&format!("http://{addr}{PATH}")).await;
    assert_eq!(r.outcome, Err(ProbeError::Refused));
    assert_eq!(r.status, None);
}

#[tokio::test]
async fn slow_server_times_out() {
    let slow = Reply {
        status: 200,
        body: playlist_aged(100, Duration::from_secs(1)),
        delay: Duration::from_secs(5),
    };
    let server = TestServer::fixed(slow).await;
    let r = prober().probe(&server.url(PATH)).await;
    assert_eq!(r.outcome, Err(ProbeError::Timeout));
    assert!(
        r.latency >= TIMEOUT && r.latency < TIMEOUT * 3,
        "latency {:?}",
        r.latency
    );
}

#[tokio::test]
async fn master_playlist_is_followed_over_http() {
    let server = TestServer::start(Arc::new(|path| {
        if path == "/hls/demo/v720/index.m3u8" {
            Reply::ok(playlist_aged(42, Duration::from_millis(500)))
        } else if path == PATH {
            Reply::ok(MASTER.into())
        } else {
            Reply {
                status: 404,
                body: String::new(),
                delay: Duration::ZERO,
            }
        }
    }))
    .await;
    let r = prober().probe(&server.url(PATH)).await;
    assert_eq!(r.outcome.expect("followed the variant").newest_msn, 42);
    assert_eq!(
        server.accepts.load(Ordering::SeqCst),
        2,
        "one fresh connection per request"
    );
}

#[tokio::test]
async fn oversized_body_is_refused() {
    let big = Reply::ok(format!("#EXTM3U\n#{}\n", "x".repeat(MAX_BODY + 1)));
    let server = TestServer::fixed(big).await;
    assert_eq!(
        prober().probe(&server.url(PATH)).await.outcome,
        Err(ProbeError::TooLarge(MAX_BODY))
    );
}

#[tokio::test]
async fn garbage_over_http_is_unparsable() {
    let server = TestServer::fixed(Reply::ok("<html>hello</html>".into())).await;
    let r = prober().probe(&server.url(PATH)).await;
    assert!(
        matches!(r.outcome, Err(ProbeError::Unparsable(_))),
        "{:?}",
        r.outcome
    );
    assert_eq!(r.status, Some(200));
}

// --- the newest segment ---

/// A prober that checks segments too.
fn segment_prober() -> Prober {
    Prober::new(TIMEOUT, TIMEOUT, MAX_BODY, true)
}

/// An origin with a fresh playlist whose segments are answered by `segment`.
async fn origin_with_segments(
    segment: impl Fn(&str) -> Reply + Send + Sync + 'static,
) -> TestServer {
    TestServer::start(Arc::new(move |path| {
        if path.ends_with(".ts") {
            segment(path)
        } else {
            Reply::ok(playlist_aged(500, Duration::from_secs(1)))
        }
    }))
    .await
}

#[tokio::test]
async fn a_whole_newest_segment_passes_and_is_then_fetched_by_its_tail() {
    let server = origin_with_segments(|_| Reply::ok(ts_body(40))).await;
    let p = segment_prober();
    for _ in 0..3 {
        let r = p.probe(&server.url(PATH)).await;
        assert_eq!(r.outcome.expect("good origin").newest_msn, 500);
    }
    // One playlist and one segment request per probe, each on a fresh connection.
    assert_eq!(server.accepts.load(Ordering::SeqCst), 6);
    assert_eq!(
        p.checked
            .lock()
            .expect("lock")
            .values()
            .next()
            .map(String::as_str),
        Some("seg500.ts"),
        "the newest segment is remembered as checked whole"
    );
}

#[tokio::test]
async fn a_segment_cut_short_makes_the_origin_bad() {
    // Half a segment plus a byte: no whole number of TS packets.
    let cut = ts_body(40)[..40 * 188 / 2 + 1].to_string();
    let server = origin_with_segments(move |_| Reply::ok(cut.clone())).await;
    let r = segment_prober().probe(&server.url(PATH)).await;
    match r.outcome {
        Err(ProbeError::Corrupt(msg)) => assert!(msg.contains("TS packets"), "{msg}"),
        other => panic!("expected a segment error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_listed_segment_that_shrinks_is_reported_at_the_next_probe() {
    // Whole at first; then cut to half, still a whole number of TS packets with sync bytes,
    // so only the size tells: a listed segment must never change (RFC 8216 6.2.2).
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = cut.clone();
    let server = origin_with_segments(move |_| {
        let packets = if flag.load(Ordering::SeqCst) { 20 } else { 40 };
        Reply::ok(ts_body(packets))
    })
    .await;
    let p = segment_prober();
    for _ in 0..2 {
        assert!(p.probe(&server.url(PATH)).await.outcome.is_ok(), "whole");
    }
    cut.store(true, Ordering::SeqCst);
    match p.probe(&server.url(PATH)).await.outcome {
        Err(ProbeError::Corrupt(msg)) => {
            assert!(msg.contains("shrank from 7520 to 3760 bytes"), "{msg}")
        }
        other => panic!("expected the shrunk segment to be reported, got {other:?}"),
    }
}

/// A segment found cut short keeps the origin bad while its playlist lists it, though the
/// newer segments are whole: any player may still fetch it. Once it has left the window, the
/// origin is good again.
#[tokio::test]
async fn a_corrupt_segment_keeps_the_origin_bad_while_it_is_listed() {
    let newest = Arc::new(std::sync::atomic::AtomicU64::new(500));
    let n = newest.clone();
    let server = TestServer::start(Arc::new(move |path: &str| {
        if path.ends_with("seg500.ts") {
            // Cut short: half the packets plus a byte.
            Reply::ok(ts_body(40)[..40 * 188 / 2 + 1].to_string())
        } else if path.ends_with(".ts") {
            Reply::ok(ts_body(40))
        } else {
            Reply::ok(playlist_aged(
                n.load(Ordering::SeqCst),
                Duration::from_secs(1),
            ))
        }
    }))
    .await;
    let p = segment_prober();
    let outcome = |r: switcher_ctl::probe::ProbeReport| r.outcome.map(|f| f.newest_msn);
    assert!(
        matches!(
            outcome(p.probe(&server.url(PATH)).await),
            Err(ProbeError::Corrupt(_))
        ),
        "the newest segment, cut short"
    );
    // Newer whole segments: seg500.ts is still in the window of WINDOW segments.
    for msn in [501, 500 + common::WINDOW - 1] {
        newest.store(msn, Ordering::SeqCst);
        assert_eq!(
            outcome(p.probe(&server.url(PATH)).await),
            Err(ProbeError::CorruptListed("seg500.ts".into())),
            "newest {msn}"
        );
    }
    newest.store(500 + common::WINDOW, Ordering::SeqCst);
    assert_eq!(
        outcome(p.probe(&server.url(PATH)).await),
        Ok(500 + common::WINDOW),
        "seg500.ts left the window"
    );
}

/// A 5xx for the newest segment of a playlist that was served (our origin's answer for a
/// segment cut short) is a corrupt segment: bad at once, and remembered while listed.
#[tokio::test]
async fn a_5xx_for_the_newest_segment_is_a_corrupt_segment() {
    let server = origin_with_segments(|_| Reply {
        status: 500,
        body: "segment is not whole MPEG-TS packets (cut short?)\n".into(),
        delay: Duration::ZERO,
    })
    .await;
    let p = segment_prober();
    let r = p.probe(&server.url(PATH)).await;
    assert_eq!(
        r.outcome,
        Err(ProbeError::Corrupt("HTTP 500 for it".into()))
    );
    assert!(r.outcome.unwrap_err().counts_at_once());
    assert_eq!(
        p.probe(&server.url(PATH)).await.outcome,
        Err(ProbeError::CorruptListed("seg500.ts".into()))
    );
}

#[tokio::test]
async fn a_missing_segment_makes_the_origin_bad() {
    let server = origin_with_segments(|_| Reply {
        status: 404,
        body: String::new(),
        delay: Duration::ZERO,
    })
    .await;
    let r = segment_prober().probe(&server.url(PATH)).await;
    assert_eq!(r.outcome, Err(ProbeError::Segment("HTTP 404".into())));
}

#[tokio::test]
async fn a_hanging_segment_path_times_out_although_the_playlist_is_fine() {
    let server = origin_with_segments(|_| Reply {
        status: 200,
        body: ts_body(10),
        delay: TIMEOUT * 3,
    })
    .await;
    let r = segment_prober().probe(&server.url(PATH)).await;
    assert_eq!(r.outcome, Err(ProbeError::Timeout));
    // The playlist alone is good: the same origin passes a playlist-only probe.
    assert!(prober().probe(&server.url(PATH)).await.outcome.is_ok());
}

#[tokio::test]
async fn a_connect_that_is_never_answered_is_a_connect_timeout() {
    // A listener with a full backlog answers no SYN: fill it, never accept.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // SAFETY: listen(2) on our own socket, to shrink the backlog to its minimum.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 0) };
    let mut held = Vec::new();
    let quick = Prober::new(TIMEOUT, Duration::from_millis(100), MAX_BODY, false);
    let url = format!("http://{addr}{PATH}");
    let mut outcome = None;
    // Each connect that completes takes a backlog slot; once they are full, SYNs go unanswered.
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(s) => held.push(s),
            Err(_) => {
                outcome = Some(quick.probe(&url).await.outcome);
                break;
            }
        }
    }
    assert_eq!(outcome, Some(Err(ProbeError::ConnectTimeout)));
}

#[tokio::test]
async fn a_probe_waiting_on_a_host_that_stops_accepting_ends_at_its_failed_connect() {
    // The origin's host takes the probe's connection, then goes away for new ones (nothing
    // listens: refused) while that connection's request stays unanswered, as a probe under
    // way when an origin's host is lost. The whole-probe budget is far longer than the test.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let (_conn, _) = listener.accept().await.expect("accept");
        drop(listener);
        std::future::pending::<()>().await;
    });
    let p = Prober::new(
        Duration::from_secs(3600),
        Duration::from_millis(50),
        MAX_BODY,
        false,
    );
    let r = p.probe(&format!("http://{addr}{PATH}")).await;
    held.abort();
    assert_eq!(r.outcome, Err(ProbeError::Refused));
}

#[tokio::test]
async fn a_hung_origin_on_a_live_host_still_waits_for_the_whole_probe_timeout() {
    // New connections succeed (the host is there) while the answer hangs: the checks of the
    // host do not end the probe; only its own timeout does.
    let server = TestServer::fixed(Reply {
        status: 200,
        body: playlist_aged(100, Duration::from_secs(1)),
        delay: Duration::from_secs(5),
    })
    .await;
    let p = Prober::new(TIMEOUT, Duration::from_millis(50), MAX_BODY, false);
    let r = p.probe(&server.url(PATH)).await;
    assert_eq!(r.outcome, Err(ProbeError::Timeout));
    // The probe's own connection and at least one check of the host.
    assert!(server.accepts.load(Ordering::SeqCst) >= 2);
}

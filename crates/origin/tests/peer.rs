//! Peer fill (`origin::peer`): an origin that cannot serve its own copy of a file serves a peer
//! origin's, checked; never for a request that asks for its own copy only (the edge's prober),
//! never in a chain or a loop, and one fill for a herd.

mod common;

use std::time::Duration;

use common::{Server, metric, raw};
use service::http::LOCAL_ONLY_HEADER;
use tokio::net::TcpListener;

/// A transport stream of `packets` packets, each with its sync byte, and content that differs
/// with `seed`.
fn ts(packets: usize, seed: u8) -> Vec<u8> {
    (0..packets * 188)
        .map(|i| {
            if i % 188 == 0 {
                0x47
            } else {
                (i as u8).wrapping_mul(31).wrapping_add(seed)
            }
        })
        .collect()
}

/// A server whose peers are `peers` (in order).
async fn with_peers(peers: &[&Server], tweak: impl FnOnce(&mut origin::Config)) -> Server {
    let urls = peers.iter().map(|p| format!("http://{}", p.addr)).collect();
    Server::start(|c| {
        c.peers = urls;
        tweak(c);
    })
    .await
}

fn fills(server_metrics: &str, reason: &str, outcome: &str) -> f64 {
    metric(
        server_metrics,
        // The exposition orders labels by name.
        &format!(r#"origin_peer_fills_total{{outcome="{outcome}",reason="{reason}"}}"#),
    )
    .unwrap_or(0.0)
}

fn segment_requests(server_metrics: &str) -> f64 {
    metric(
        server_metrics,
        r#"origin_requests_total{class="segment",status="200"}"#,
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn a_segment_cut_short_here_is_served_from_the_peer() {
    let peer = Server::start(|_| {}).await;
    let whole = ts(40, 1);
    peer.replace("demo/seg2.ts", &whole);
    let origin = with_peers(&[&peer], |_| {}).await;
    origin.replace("demo/seg2.ts", &whole[..whole.len() / 2 + 1]);

    let r = origin.get("/hls/demo/seg2.ts").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, whole);
    assert_eq!(
        r.header("content-length"),
        Some(whole.len().to_string().as_str())
    );
    assert_eq!(r.header("content-type"), Some("video/mp2t"));
    // The peer's validators: the bytes are the peer's.
    let peer_head = peer.request("HEAD", "/hls/demo/seg2.ts", &[]).await;
    assert_eq!(r.header("etag"), peer_head.header("etag"));

    // A range of it, from the copy filled a moment ago (the peer is not asked again).
    let r = origin
        .request("GET", "/hls/demo/seg2.ts", &[("Range", "bytes=188-375")])
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &whole[188..376]);

    // HEAD and a revalidation of the filled copy: its length, and a 304 for its ETag.
    let r = origin.request("HEAD", "/hls/demo/seg2.ts", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(whole.len().to_string().as_str())
    );
    let etag = peer_head.header("etag").expect("etag").to_string();
    let r = origin
        .request("GET", "/hls/demo/seg2.ts", &[("If-None-Match", &etag)])
        .await;
    assert_eq!(r.status, 304);

    // The edge's prober asks for the origin's own copy: the error it is judged on.
    let r = origin
        .request("GET", "/hls/demo/seg2.ts", &[(LOCAL_ONLY_HEADER, "1")])
        .await;
    assert_eq!(r.status, 500);

    let text = origin.get("/metrics").await.text();
    assert_eq!(fills(&text, "cut_short", "filled"), 1.0, "{text}");
    assert_eq!(fills(&text, "cut_short", "shared"), 3.0, "{text}");
    // The one fill, and this test's HEAD.
    assert_eq!(segment_requests(&peer.get("/metrics").await.text()), 2.0);
}

#[tokio::test]
async fn a_segment_missing_here_is_served_from_the_peer_after_the_wait() {
    let peer = Server::start(|_| {}).await;
    let whole = ts(20, 2);
    peer.replace("demo/seg3.ts", &whole);
    let origin = with_peers(&[&peer], |c| c.segment_wait = Duration::from_millis(50)).await;

    let r = origin.get("/hls/demo/seg3.ts").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, whole);
    let text = origin.get("/metrics").await.text();
    assert_eq!(fills(&text, "missing", "filled"), 1.0, "{text}");
    assert_eq!(
        metric(&text, r#"origin_segment_waits_total{outcome="timed_out"}"#),
        Some(1.0),
        "the segment is waited for first: {text}"
    );
    // Not on the peer either: this origin's own 404. The peer answers a fill from its files
    // as they are, without a segment wait of its own (this origin waited already).
    assert_eq!(origin.get("/hls/demo/seg4.ts").await.status, 404);
    let text = origin.get("/metrics").await.text();
    assert_eq!(fills(&text, "missing", "failed"), 1.0, "{text}");
    let peer_text = peer.get("/metrics").await.text();
    assert_eq!(
        metric(
            &peer_text,
            r#"origin_requests_total{class="segment",status="404"}"#
        ),
        Some(1.0),
        "{peer_text}"
    );
    assert!(
        !peer_text.contains("origin_segment_waits_total{"),
        "the peer waited: {peer_text}"
    );
}

/// Past `max_segment_waiters`, a missing segment is a 404 at once, without a peer request
/// either: a flood of names that never come stays cheap for both.
#[tokio::test]
async fn a_segment_not_waited_for_is_not_asked_of_the_peers() {
    let peer = Server::start(|_| {}).await;
    peer.replace("demo/seg9.ts", &ts(5, 9));
    let origin = with_peers(&[&peer], |c| c.max_segment_waiters = 0).await;
    assert_eq!(origin.get("/hls/demo/seg9.ts").await.status, 404);
    assert_eq!(segment_requests(&peer.get("/metrics").await.text()), 0.0);
    let text = origin.get("/metrics").await.text();
    assert_eq!(
        metric(&text, r#"origin_segment_waits_total{outcome="no_slot"}"#),
        Some(1.0),
        "{text}"
    );
}

/// A playlist that is not here is a 404 without asking: a name no packager writes costs no
/// peer request.
#[tokio::test]
async fn a_playlist_missing_here_is_not_asked_of_the_peers() {
    let peer = Server::start(|_| {}).await;
    peer.replace("demo/other.m3u8", common::PLAYLIST.as_bytes());
    let origin = with_peers(&[&peer], |_| {}).await;
    assert_eq!(origin.get("/hls/demo/other.m3u8").await.status, 404);
    let text = peer.get("/metrics").await.text();
    assert_eq!(
        metric(
            &text,
            r#"origin_requests_total{class="playlist",status="200"}"#
        ),
        Some(0.0),
        "{text}"
    );
}

/// Two origins that are each other's peer, both with a cut copy: each asks the other once
/// with the local-only header, which answers from its own files; no loop, no chain.
#[tokio::test]
async fn peers_that_name_each_other_never_loop() {
    let a_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let b_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (a_addr, b_addr) = (
        a_listener.local_addr().expect("addr"),
        b_listener.local_addr().expect("addr"),
    );
    let a = Server::start_bound(a_listener, |c| c.peers = vec![format!("http://{b_addr}")]).await;
    let b = Server::start_bound(b_listener, |c| c.peers = vec![format!("http://{a_addr}")]).await;
    let cut = &ts(10, 3)[..1000];
    a.replace("demo/seg5.ts", cut);
    b.replace("demo/seg5.ts", cut);

    assert_eq!(a.get("/hls/demo/seg5.ts").await.status, 500);
    let (a_text, b_text) = (
        a.get("/metrics").await.text(),
        b.get("/metrics").await.text(),
    );
    assert_eq!(fills(&a_text, "cut_short", "failed"), 1.0, "{a_text}");
    assert!(
        b_text
            .lines()
            .filter(|l| l.starts_with("origin_peer_fills_total{"))
            .all(|l| l.ends_with(" 0")),
        "the peer asked no one: {b_text}"
    );
    assert_eq!(
        metric(
            &b_text,
            r#"origin_requests_total{class="segment",status="500"}"#
        ),
        Some(1.0),
        "{b_text}"
    );
}

/// A peer's copy is served only when it checks out: here whole packets without sync bytes.
#[tokio::test]
async fn a_bad_copy_from_the_peer_is_not_served() {
    let peer = Server::start(|_| {}).await;
    peer.replace("demo/seg6.ts", &vec![0u8; 188 * 4]);
    let origin = with_peers(&[&peer], |_| {}).await;
    origin.replace("demo/seg6.ts", &ts(4, 4)[..300]);
    assert_eq!(origin.get("/hls/demo/seg6.ts").await.status, 500);
    let text = origin.get("/metrics").await.text();
    assert_eq!(fills(&text, "cut_short", "failed"), 1.0, "{text}");
}

/// Peers are asked in order until one has a good copy: one refusing connections, one without
/// the file (it is asked, and answers 404), then one with it; one that accepts and never
/// answers ends the fill at its deadline.
#[tokio::test]
async fn peers_are_asked_in_order_until_one_has_it() {
    let peer = Server::start(|_| {}).await;
    let lacking = Server::start(|_| {}).await;
    let whole = ts(30, 5);
    peer.replace("demo/seg7.ts", &whole);
    let refusing = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let origin = Server::start(|c| {
        c.peers = vec![
            format!("http://{refusing}"),
            format!("http://{}", lacking.addr),
            format!("http://{}", peer.addr),
        ];
    })
    .await;
    origin.replace("demo/seg7.ts", &whole[..5000]);
    let r = origin.get("/hls/demo/seg7.ts").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, whole);
    let lacking_text = lacking.get("/metrics").await.text();
    assert_eq!(
        metric(
            &lacking_text,
            r#"origin_requests_total{class="segment",status="404"}"#
        ),
        Some(1.0),
        "the peer before the one with the file was asked: {lacking_text}"
    );
    assert_eq!(segment_requests(&peer.get("/metrics").await.text()), 1.0);

    // A peer that accepts and never answers: the fill ends at its deadline, with this
    // origin's own error.
    let hung = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hung_addr = hung.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            open.push(s);
        }
    });
    let stuck = Server::start(|c| {
        c.peers = vec![format!("http://{hung_addr}")];
        c.peer_fill_timeout = Duration::from_millis(200);
    })
    .await;
    stuck.replace("demo/seg7.ts", &whole[..5000]);
    assert_eq!(stuck.get("/hls/demo/seg7.ts").await.status, 500);
    let text = stuck.get("/metrics").await.text();
    assert_eq!(fills(&text, "cut_short", "failed"), 1.0, "{text}");
    held.abort();
}

/// A herd of viewers on a cut segment costs the peer one request, even with one fill slot.
#[tokio::test]
async fn a_herd_on_a_cut_segment_shares_one_fill() {
    let peer = Server::start(|_| {}).await;
    let whole = ts(2000, 6);
    peer.replace("demo/seg8.ts", &whole);
    let origin = with_peers(&[&peer], |c| c.max_peer_fills = 1).await;
    origin.replace("demo/seg8.ts", &whole[..whole.len() - 100]);
    let request = b"GET /hls/demo/seg8.ts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let herd: Vec<_> = (0..40)
        .map(|_| tokio::spawn(raw(origin.addr, request)))
        .collect();
    for viewer in herd {
        let r = viewer.await.expect("viewer");
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.body == whole, "a viewer got other bytes");
    }
    let text = origin.get("/metrics").await.text();
    assert_eq!(fills(&text, "cut_short", "filled"), 1.0, "{text}");
    assert_eq!(fills(&text, "cut_short", "shared"), 39.0, "{text}");
    assert_eq!(segment_requests(&peer.get("/metrics").await.text()), 1.0);
}

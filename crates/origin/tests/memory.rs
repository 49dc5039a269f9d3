//! Memory follows the live window: the segment cache (used where hyper sends bodies: h2, TLS)
//! releases the bodies of segments the packager deleted, instead of keeping them up to its
//! byte cap.

mod common;

use bytes::Bytes;
use common::{Server, metric};
use http_body_util::Empty;
use tokio::net::TcpStream;

/// Segments in the playlist window, as the packager keeps them on disk.
const WINDOW: usize = 6;
/// Segments the live stream goes through in the test.
const SEGMENTS: usize = 30;
/// About 200 kB, whole MPEG-TS packets (the origin refuses a `.ts` that is not).
const SEGMENT_BYTES: usize = 1064 * 188;

#[tokio::test]
async fn deleted_segments_are_released_from_the_cache() {
    let server = Server::start(|_| {}).await;
    // h2 with prior knowledge over plain TCP: served by hyper, through the segment cache.
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let mut sender = common::h2_client(tcp).await;

    // A live stream: each new segment is written, fetched, and the one WINDOW behind deleted.
    for i in 0..SEGMENTS {
        let name = format!("demo/live{i}.ts");
        std::fs::write(server.root().join(&name), vec![i as u8; SEGMENT_BYTES]).expect("write");
        let request = http::Request::get(format!("http://localhost/hls/{name}"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("h2 request");
        assert_eq!(response.status(), 200);
        assert_eq!(common::body(response).await.len(), SEGMENT_BYTES);
        if i >= WINDOW {
            std::fs::remove_file(server.root().join(format!("demo/live{}.ts", i - WINDOW)))
                .expect("delete the segment that left the window");
        }
    }

    // A segment still in the window is a hit; a rewritten one is a miss, never stale.
    let fetch = async |sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>, i| {
        let request = http::Request::get(format!("http://localhost/hls/demo/live{i}.ts"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("h2 request");
        common::body(response).await
    };
    let last = SEGMENTS - 1;
    assert_eq!(
        fetch(&mut sender, last).await,
        vec![last as u8; SEGMENT_BYTES]
    );
    server.replace(&format!("demo/live{last}.ts"), &vec![b'x'; SEGMENT_BYTES]);
    assert_eq!(fetch(&mut sender, last).await, vec![b'x'; SEGMENT_BYTES]);

    let metrics = server.get("/metrics").await.text();
    assert_eq!(
        metric(&metrics, "origin_cache_hits_total"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "origin_cache_misses_total"),
        Some(SEGMENTS as f64 + 1.0),
        "every segment went through the cache, and the rewritten one again\n{metrics}"
    );
    // Only the window's segments are still on disk, so only they may stay in memory.
    assert_eq!(
        metric(&metrics, "origin_cache_size_bytes"),
        Some((WINDOW * SEGMENT_BYTES) as f64),
        "{metrics}"
    );
}

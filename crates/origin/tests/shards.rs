//! The binary's serving mode: one single-threaded runtime per `SO_REUSEPORT` listener, all
//! sharing one server state (caches, metrics, connection cap).

mod common;

use common::{PLAYLIST, metric, raw};

const GET_PLAYLIST: &[u8] =
    b"GET /hls/demo/index.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn shards_share_one_port_and_one_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("demo")).expect("mkdir");
    std::fs::write(root.join("demo/index.m3u8"), PLAYLIST).expect("write playlist");

    let listeners =
        origin::bind_shards("127.0.0.1:0".parse().expect("addr"), 2).expect("bind shards");
    assert_eq!(listeners.len(), 2);
    let addr = listeners[0].local_addr().expect("addr");
    assert_eq!(listeners[1].local_addr().expect("addr"), addr, "one port");
    // While the group listens, nobody else may bind the port, reuseport or not.
    assert!(origin::bind_shards(addr, 2).is_err(), "port taken over");

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        origin::run_sharded(listeners, origin::Config::new(&root), async {
            let _ = stopped.await;
        })
    });

    // A fresh connection each: the kernel picks a listener per flow (hash of source ports).
    const REQUESTS: usize = 16;
    for _ in 0..REQUESTS {
        let response = raw(addr, GET_PLAYLIST).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), PLAYLIST);
    }
    let metrics = raw(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .text();
    assert_eq!(
        metric(
            &metrics,
            r#"origin_requests_total{class="playlist",status="200"}"#
        ),
        Some(REQUESTS as f64),
        "every shard counts into one registry: {metrics}"
    );

    stop.send(()).expect("server running");
    let result = tokio::task::spawn_blocking(move || server.join().expect("no panic"))
        .await
        .expect("join");
    assert!(result.is_ok(), "{result:?}");
}

//! Protective limits over real connections: header size, request-target length, slowloris,
//! idle connections, connection cap, and graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use common::{CLIENT_TIMEOUT, PLAYLIST, Server, parse, raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Short timeouts so the slow-client tests finish quickly.
const HEADER_TIMEOUT: Duration = Duration::from_millis(300);
const IDLE_TIMEOUT: Duration = Duration::from_millis(600);
/// How long a test waits for the server to cut a slow client: well above the timeouts,
/// well below the defaults (10 s / 60 s) that apply if the configured ones are ignored.
const CUT_WITHIN: Duration = Duration::from_secs(3);

fn short_timeouts(c: &mut origin::Config) {
    c.header_read_timeout = HEADER_TIMEOUT;
    c.idle_timeout = IDLE_TIMEOUT;
}

/// Reads until EOF or error; returns what was read and whether the peer closed in time.
async fn read_until_closed(
    stream: &mut tokio::net::tcp::OwnedReadHalf,
    within: Duration,
) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (buf, closed)
}

#[tokio::test]
async fn oversized_header_refused_while_others_are_served() {
    let server = Server::start(|_| {}).await;
    let huge = "a".repeat(origin::config::DEFAULT_MAX_HEADER_BYTES * 2);
    let request = format!("GET /hls/demo/index.m3u8 HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n");
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    // The server may close mid-write; what matters is what it answers.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(CLIENT_TIMEOUT, stream.read_to_end(&mut buf)).await;
    if let Some(response) = parse(&buf) {
        assert_eq!(response.status, 431, "oversized head must be refused");
    }
    assert!(
        !String::from_utf8_lossy(&buf).contains("#EXTM3U"),
        "oversized request was served"
    );

    // Many headers: also refused.
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = raw(
        server.addr,
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 431);

    // The server keeps serving everyone else.
    let ok = server.get("/hls/demo/index.m3u8").await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.text(), PLAYLIST);
}

#[tokio::test]
async fn long_request_target_gets_414() {
    let server = Server::start(|c| c.max_uri_bytes = 256).await;
    let long = format!("/hls/demo/{}.ts", "a".repeat(300));
    assert_eq!(server.get(&long).await.status, 414);
    assert_eq!(server.get("/hls/demo/seg1.ts").await.status, 200);
}

#[tokio::test]
async fn slowloris_connection_is_closed() {
    let server = Server::start(short_timeouts).await;
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    // Trickle a request head that never ends: one byte every 50 ms.
    let trickle = tokio::spawn(async move {
        let head = b"GET /hls/demo/index.m3u8 HTTP/1.1\r\nHost: x\r\n";
        let endless = head.iter().copied().chain(std::iter::repeat_n(b'a', 1000));
        let mut sent = 0usize;
        for byte in endless {
            if writer.write_all(&[byte]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sent
    });
    let (answer, closed) = read_until_closed(&mut reader, CUT_WITHIN).await;
    let elapsed = started.elapsed();
    trickle.abort();
    assert!(closed, "slowloris connection still open after {elapsed:?}");
    assert!(
        elapsed >= HEADER_TIMEOUT,
        "closed before the header timeout: {elapsed:?}"
    );
    assert!(!String::from_utf8_lossy(&answer).contains("#EXTM3U"));
    // Meanwhile and afterwards, normal clients are served.
    assert_eq!(server.get("/hls/demo/index.m3u8").await.status, 200);
}

#[tokio::test]
async fn silent_connection_is_closed() {
    let server = Server::start(short_timeouts).await;
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    let (mut reader, _writer) = stream.into_split();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut reader, CUT_WITHIN).await;
    assert!(
        closed,
        "silent connection still open after {:?}",
        started.elapsed()
    );
    // It never sent a request: the header deadline closed it, before the idle timeout.
    let metrics = server.get("/metrics").await.text();
    let no_request = common::metric(&metrics, "origin_connections_closed_no_request_total");
    assert_eq!(no_request, Some(1.0), "{metrics}");
    let idle = common::metric(&metrics, "origin_connections_closed_idle_total");
    assert_eq!(idle, Some(0.0), "{metrics}");
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let server = Server::start(|c| {
        c.header_read_timeout = HEADER_TIMEOUT;
        c.idle_timeout = Duration::from_secs(600);
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET /hls/demo/seg1.ts HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (mut reader, _writer) = stream.into_split();
    // The response, then nothing more is asked: the connection is closed (well before the
    // 600 s idle timeout) once the header timeout passes with no request in progress.
    let (answer, closed) = read_until_closed(&mut reader, CUT_WITHIN).await;
    assert!(closed, "idle keep-alive connection kept open");
    let response = parse(&answer).expect("the response came first");
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), common::SEGMENT_LEN);
}

#[tokio::test]
async fn connection_cap_queues_extra_clients() {
    let server = Server::start(|c| c.max_connections = 1).await;
    // Occupy the only slot with a keep-alive connection.
    let mut first = TcpStream::connect(server.addr)
        .await
        .expect("connect first");
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = first.read(&mut buf).await.expect("read first response");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // A second client connects (kernel backlog) but is not served while the slot is taken.
    let addr = server.addr;
    let second = tokio::spawn(async move {
        raw(
            addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "second connection served beyond the cap"
    );

    drop(first);
    let response = tokio::time::timeout(CLIENT_TIMEOUT, second)
        .await
        .expect("served after slot frees")
        .expect("task");
    assert_eq!(response.status, 200);
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_response() {
    // 32 MiB, streamed (above the cache entry limit), read slowly: far more than loopback
    // socket buffers hold, so the response is still in flight when shutdown starts.
    // About 32 MiB, whole MPEG-TS packets (the origin refuses a `.ts` that is not).
    const BIG: usize = (32 << 20) / 188 * 188;
    let mut server = Server::start(|c| {
        c.cache_max_entry_bytes = 1024;
        c.shutdown_grace = Duration::from_secs(20);
    })
    .await;
    std::fs::write(server.root().join("demo/big.ts"), vec![7u8; BIG]).expect("write big");
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET /hls/demo/big.ts HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut got = vec![0u8; 64 * 1024];
    let n = stream.read(&mut got).await.expect("first bytes");
    got.truncate(n);

    server.signal_shutdown();
    let task = server.take_task();
    // New connections are refused once the listener is dropped.
    let addr = server.addr;
    test_kit::wait_until_async(CLIENT_TIMEOUT, "the listener closes", move || async move {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(
        !task.is_finished(),
        "run returned while a response was in flight"
    );

    tokio::time::timeout(CLIENT_TIMEOUT, stream.read_to_end(&mut got))
        .await
        .expect("drained")
        .expect("read rest");
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    assert_eq!(got.len() - head_end, BIG, "in-flight body completed");
    tokio::time::timeout(CLIENT_TIMEOUT, task)
        .await
        .expect("run returns")
        .expect("join")
        .expect("run ok");
}

#[tokio::test]
async fn shutdown_is_bounded_by_grace() {
    let mut server = Server::start(|c| {
        c.cache_max_entry_bytes = 1024;
        c.shutdown_grace = Duration::from_millis(300);
        c.idle_timeout = Duration::from_secs(60);
    })
    .await;
    std::fs::write(
        server.root().join("demo/big.ts"),
        // About 32 MiB, whole MPEG-TS packets (the origin refuses a `.ts` that is not).
        vec![7u8; (32 << 20) / 188 * 188],
    )
    .expect("write big");
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET /hls/demo/big.ts HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut first = [0u8; 1024];
    let _ = stream.read(&mut first).await.expect("first bytes");
    // The client stops reading; the response can never finish.
    let started = Instant::now();
    server.signal_shutdown();
    let task = server.take_task();
    tokio::time::timeout(CUT_WITHIN, task)
        .await
        .expect("run returns within the grace bound")
        .expect("join")
        .expect("ok");
    assert!(started.elapsed() >= Duration::from_millis(300));
    drop(stream);
}

//! The plain HTTP/1.1 path that sends file bodies with sendfile: whole bodies across a
//! rename-over during the send, keep-alive and pipelining, and hand-over to hyper.

mod common;

use common::{CLIENT_TIMEOUT, Server, parse, segment_bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Far more than loopback socket buffers hold (even autotuned), so the send is in progress
/// while the test renames the file.
/// About 32 MiB, whole MPEG-TS packets (the origin refuses a `.ts` that is not).
const BIG: usize = (32 << 20) / 188 * 188;

/// Reads exactly `n` bytes.
async fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(CLIENT_TIMEOUT, stream.read_exact(&mut buf))
        .await
        .expect("bytes in time")
        .expect("read");
    buf
}

/// Reads one response head (through the blank line); returns it as text.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.extend(read_n(stream, 1).await);
    }
    String::from_utf8(head).expect("ascii head")
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("content-length")
        .parse()
        .expect("number")
}

#[tokio::test]
async fn rename_during_send_serves_one_version_whole() {
    let server = Server::start(|_| {}).await;
    let old: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
    let new: Vec<u8> = (0..BIG).map(|i| (i % 241) as u8 ^ 0x5a).collect();
    std::fs::write(server.root().join("demo/big.ts"), &old).expect("write old");

    // A small receive buffer keeps most of the body in the server's hands until we read it.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("rcvbuf");
    let mut stream = socket.connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET /hls/demo/big.ts HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(content_length(&head), BIG);
    let mut body = read_n(&mut stream, 1024 * 1024).await;

    // The packager's way: a complete new file renamed over the name, mid-send.
    server.replace("demo/big.ts", &new);
    body.extend(read_n(&mut stream, BIG - body.len()).await);
    assert!(
        body == old || body == new,
        "body is a mix of two versions (first difference from old at {:?})",
        body.iter().zip(&old).position(|(a, b)| a != b)
    );
    // This design sends from the inode opened for the request: the old version.
    assert!(body == old, "expected the version the request opened");

    // The same connection (keep-alive) now gets the new version.
    stream
        .write_all(b"GET /hls/demo/big.ts HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write second");
    let head = read_head(&mut stream).await;
    assert_eq!(content_length(&head), BIG);
    assert!(
        read_n(&mut stream, BIG).await == new,
        "second request: new version"
    );
}

#[tokio::test]
async fn pipelined_keep_alive_requests_are_answered_in_order() {
    let server = Server::start(|_| {}).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    // Three requests in one write: a range of a segment, a HEAD, and a closing playlist GET.
    stream
        .write_all(
            b"GET /hls/demo/seg1.ts HTTP/1.1\r\nHost: x\r\nRange: bytes=100-199\r\n\r\n\
              HEAD /hls/demo/seg1.ts HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /hls/demo/index.m3u8 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("write");
    let mut all = Vec::new();
    tokio::time::timeout(CLIENT_TIMEOUT, stream.read_to_end(&mut all))
        .await
        .expect("server closes after the last")
        .expect("read");

    let first = parse(&all).expect("first response");
    assert_eq!(first.status, 206);
    assert_eq!(
        first.header("content-range"),
        Some(format!("bytes 100-199/{}", common::SEGMENT_LEN).as_str())
    );
    assert_eq!(first.header("access-control-allow-origin"), Some("*"));
    assert!(first.header("date").is_some());
    let first_len = all.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4 + 100;
    assert_eq!(
        &all[first_len - 100..first_len],
        &segment_bytes(common::SEGMENT_LEN)[100..200]
    );

    let rest = &all[first_len..];
    let second = parse(rest).expect("second response");
    assert_eq!(second.status, 200);
    assert_eq!(
        second.header("content-length"),
        Some(common::SEGMENT_LEN.to_string().as_str())
    );
    let second_len = rest
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head")
        + 4;

    let third = parse(&rest[second_len..]).expect("third response");
    assert_eq!(third.status, 200);
    assert_eq!(third.header("connection"), Some("close"));
    assert_eq!(third.text(), common::PLAYLIST);
}

#[tokio::test]
async fn unusual_requests_are_handed_to_hyper() {
    let server = Server::start(|_| {}).await;
    // HTTP/1.0 and a request with a body: not the sendfile path's, still answered (by hyper).
    let r = common::raw(server.addr, b"GET /hls/demo/seg1.ts HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, segment_bytes(common::SEGMENT_LEN));
    let r = common::raw(
        server.addr,
        b"POST /hls/demo/seg1.ts HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert_eq!(r.status, 405);
    // A malformed head gets hyper's 400.
    let r = common::raw(server.addr, b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n").await;
    assert_eq!(r.status, 400);
}

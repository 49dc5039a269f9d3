//! The admin server's limits, against real sockets and a raw HTTP/1.1 client (so that the
//! test can misbehave: stall mid-head, send oversized heads, hold connections).
//!
//! No test asserts how long anything took; a timeout around a read only turns a hang into a
//! failure with a message.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use service::server::root_or_same_user;
use service::{Limits, Peer, serve_admin, serve_admin_with};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Turns a hang into a failure; generous, never a measure of speed.
const HANG: Duration = Duration::from_secs(30);

/// A running server and the way to stop it.
struct Server {
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    requests: Arc<AtomicUsize>,
}

impl Server {
    /// Serves a router that counts requests and answers `ok from <peer>`.
    async fn start(limits: Limits) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let requests = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_admin_with(
            listener,
            counting(requests.clone()),
            limits,
            async move {
                let _ = stopped.await;
            },
        ));
        Server {
            addr,
            stop,
            task,
            requests,
        }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.expect("connect")
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(HANG, self.task)
            .await
            .expect("the server stops after shutdown")
            .expect("server task");
    }
}

fn counting(
    requests: Arc<AtomicUsize>,
) -> impl Fn(Request<Incoming>) -> std::future::Ready<Response<Full<Bytes>>> + Send + Sync + 'static
{
    move |request: Request<Incoming>| {
        requests.fetch_add(1, Ordering::SeqCst);
        let peer = request.extensions().get::<Peer>().cloned();
        std::future::ready(Response::new(Full::new(Bytes::from(format!(
            "ok from {peer:?}"
        )))))
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// Reads one response (head + Content-Length body) and returns it as text.
async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().expect("content-length"));
                if buf.len() >= end + 4 + length {
                    return String::from_utf8_lossy(&buf[..end + 4 + length]).into_owned();
                }
            }
            let n = stream.read(&mut chunk).await.expect("read a response");
            assert!(
                n > 0,
                "closed mid-response: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(HANG, read).await.expect("a response")
}

async fn ask(stream: &mut (impl AsyncRead + AsyncWrite + Unpin), request: &[u8]) -> String {
    stream.write_all(request).await.expect("write a request");
    read_response(stream).await
}

/// Reads until the server closes; returns what it sent meanwhile.
async fn until_closed(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut rest = Vec::new();
    let read = stream.read_to_end(&mut rest);
    match tokio::time::timeout(HANG, read).await {
        Ok(Ok(_)) => rest,
        // A reset is a close too.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => rest,
        Ok(Err(e)) => panic!("read failed: {e}"),
        Err(_) => panic!("the server kept the connection open"),
    }
}

#[tokio::test]
async fn beyond_the_cap_a_client_waits_and_is_served_when_a_slot_frees() {
    let server = Server::start(Limits {
        max_connections: 2,
        header_read_timeout: Duration::from_secs(120),
        ..Limits::default()
    })
    .await;
    // Two keep-alive clients, each answered once, so both hold a slot (and are idle).
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    assert!(ask(&mut a, GET).await.starts_with("HTTP/1.1 200"));
    assert!(ask(&mut b, GET).await.starts_with("HTTP/1.1 200"));
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);

    // A third one connects (the kernel backlog takes it) and asks.
    let mut c = server.connect().await;
    c.write_all(GET).await.expect("write");
    // While the cap is full it is not accepted, so nothing answers and the router never
    // sees its request. (Absence over a short window: this can only pass wrongly on a
    // machine too slow to serve within it, never fail wrongly.)
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), c.read(&mut byte)).await;
    assert!(early.is_err(), "answered beyond the cap: {early:?}");
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);

    // A slot frees: the waiting client is served, on the same connection.
    drop(a);
    let answer = read_response(&mut c).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(server.requests.load(Ordering::SeqCst), 3);
    // And the client still holding its slot was never disturbed.
    assert!(ask(&mut b, GET).await.starts_with("HTTP/1.1 200"));
    server.stop().await;
}

#[tokio::test]
async fn a_request_head_that_does_not_arrive_in_time_closes_the_connection() {
    let server = Server::start(Limits {
        header_read_timeout: Duration::from_millis(200),
        ..Limits::default()
    })
    .await;
    // Connects and says nothing.
    let mut silent = server.connect().await;
    // Starts a head and stalls (slowloris).
    let mut slow = server.connect().await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .expect("write");
    // Is answered, then keeps the connection idle.
    let mut idle = server.connect().await;
    assert!(ask(&mut idle, GET).await.starts_with("HTTP/1.1 200"));

    for (what, stream) in [
        ("silent", &mut silent),
        ("slow head", &mut slow),
        ("idle keep-alive", &mut idle),
    ] {
        let sent = until_closed(stream).await;
        let sent = String::from_utf8_lossy(&sent);
        assert!(!sent.contains("200 OK"), "{what}: served {sent}");
    }
    // Only the complete request reached the router.
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    // The server keeps serving well-behaved clients.
    let mut good = server.connect().await;
    assert!(ask(&mut good, GET).await.starts_with("HTTP/1.1 200"));
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_request_head_is_refused_and_others_are_served() {
    let server = Server::start(Limits::default()).await;
    let mut big = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_vec();
    while big.len() <= service::server::MIN_HEAD_BYTES + 1024 {
        big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    big.extend_from_slice(b"\r\n");
    let mut greedy = server.connect().await;
    // The server may answer and close before taking the whole head: a failed write is fine.
    let _ = greedy.write_all(&big).await;
    let answer = until_closed(&mut greedy).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(server.requests.load(Ordering::SeqCst), 0);
    let mut good = server.connect().await;
    assert!(ask(&mut good, GET).await.starts_with("HTTP/1.1 200"));
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_the_listener_and_ends_the_server() {
    let server = Server::start(Limits::default()).await;
    let addr = server.addr;
    let mut open = server.connect().await;
    assert!(ask(&mut open, GET).await.starts_with("HTTP/1.1 200"));
    server.stop().await;
    // The idle keep-alive connection was closed by the drain, and nobody listens any more.
    until_closed(&mut open).await;
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}

#[tokio::test]
async fn unix_socket_peers_are_identified_and_can_be_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // SAFETY: geteuid(2) cannot fail.
    let me = unsafe { libc::geteuid() };

    // Admitted: the router sees the peer's uid.
    let path = dir.path().join("admin.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let (stop, stopped) = oneshot::channel::<()>();
    let requests = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(serve_admin_with(
        listener,
        counting(requests.clone()),
        Limits {
            admit: root_or_same_user,
            ..Limits::default()
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let mut client = UnixStream::connect(&path).await.expect("connect");
    let answer = ask(&mut client, GET).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(&format!("uid: Some({me})")), "{answer}");
    let _ = stop.send(());
    task.await.expect("server task");

    // Refused: closed before a byte is read or written.
    let path = dir.path().join("closed.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_admin_with(
        listener,
        counting(requests.clone()),
        Limits {
            admit: |_| false,
            ..Limits::default()
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let mut client = UnixStream::connect(&path).await.expect("connect");
    let _ = client.write_all(GET).await;
    assert!(until_closed(&mut client).await.is_empty());
    assert_eq!(
        requests.load(Ordering::SeqCst),
        1,
        "a refused peer reached the router"
    );
    let _ = stop.send(());
    task.await.expect("server task");
}

#[tokio::test]
async fn the_metrics_router_answers_like_a_metrics_endpoint() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let scrapes = Arc::new(AtomicUsize::new(0));
    let router = {
        let scrapes = scrapes.clone();
        service::http::metrics_router(move || {
            let n = scrapes.fetch_add(1, Ordering::SeqCst) + 1;
            format!("example_scrapes_total {n}\n")
        })
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_admin(listener, router, async move {
        let _ = stopped.await;
    }));
    let mut c = TcpStream::connect(addr).await.expect("connect");
    let metrics = ask(&mut c, b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("text/plain; version=0.0.4"), "{metrics}");
    assert!(metrics.ends_with("example_scrapes_total 1\n"), "{metrics}");
    let health = ask(&mut c, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(health.ends_with("{\"status\":\"ok\"}"), "{health}");
    let missing = ask(&mut c, b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let post = ask(
        &mut c,
        b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    assert!(post.to_lowercase().contains("allow: get, head"), "{post}");
    // HEAD: the headers (with the length of what GET would send), no body.
    c.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let head = String::from_utf8_lossy(&until_closed(&mut c).await).into_owned();
    assert!(
        head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    let _ = stop.send(());
    task.await.expect("server task");
    assert_eq!(scrapes.load(Ordering::SeqCst), 1);
}

#[test]
fn limits_are_plain_data() {
    // Clone + Debug, so a service can log and share them.
    let limits = Limits::default();
    assert!(format!("{:?}", limits.clone()).contains("max_connections: 64"));
    assert!((limits.admit)(&Peer::Tcp(
        "127.0.0.1:1".parse().expect("address")
    )));
}

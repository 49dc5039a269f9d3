//! The packager as a service: its admin endpoint, and shutdown really stopping it, also while
//! a source is blocked on a silent ingest (in-process through `packager::run`, and the binary
//! on SIGTERM).
//!
//! No test asserts how long anything took; timeouts only turn a hang into a failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use packager::metrics::Metrics;
use packager::source::{Pipeline, RtmpConnector};
use packager::writer::Writer;
use packager::{Config, Packager, Source};
use tokio::sync::oneshot;

/// Turns a hang into a failure; generous, never a measure of speed.
const HANG: Duration = Duration::from_secs(60);
const STREAM: &str = "demo";

/// An RTMP source to `url` whose own timeouts are out of the picture: only a stop ends a wait.
fn source(url: String, out: &Path, metrics: &Metrics) -> Source {
    Source {
        connector: Box::new(
            RtmpConnector::new(url, Duration::from_secs(3600)).expect("connector runtime"),
        ),
        pipeline: Pipeline {
            stream: STREAM.into(),
            packager: Packager::new(Config::default()),
            writer: Writer::new(out.join(STREAM), Duration::from_secs(60)),
            metrics: metrics.clone(),
        },
    }
}

/// A TCP server that accepts connections and never says a word (an ingest hung before the
/// RTMP handshake); reports each accepted connection, and keeps it.
fn silent_server() -> (SocketAddr, std::sync::mpsc::Receiver<std::net::TcpStream>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            if tx.send(stream).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// Waits until the peer closes `stream` (EOF or reset).
fn assert_closed_by_peer(mut stream: std::net::TcpStream, what: &str) {
    stream.set_read_timeout(Some(HANG)).expect("timeout");
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("{what}: connection not closed: {e}"),
    }
}

/// Sends `request` as given (malformed or exactly framed; well-formed requests go through
/// test_kit::http) and returns the whole answer.
fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(HANG)).expect("timeout");
    c.write_all(request).expect("write");
    let mut answer = String::new();
    c.read_to_string(&mut answer)
        .expect("whole answer, no reset");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_serves_metrics_health_and_refuses_bad_requests() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (rtmp, _accepted) = silent_server();
    let metrics = Metrics::new();
    metrics.newest_msn.with_label_values(&["s1"]).set(42);
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = admin.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(packager::run(
        vec![source(
            format!("rtmp://{rtmp}/live/{STREAM}"),
            tmp.path(),
            &metrics,
        )],
        Some(admin),
        metrics,
        async move {
            let _ = stopped.await;
        },
    ));

    let checks = tokio::task::spawn_blocking(move || {
        // A request head in two writes is answered once complete, not before.
        let mut c = std::net::TcpStream::connect(addr).expect("connect");
        c.set_nodelay(true).expect("nodelay");
        c.write_all(b"GET /metrics HTTP/1.1\r\n")
            .expect("first write");
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        let early = c.read(&mut byte);
        assert!(
            matches!(&early, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "answered before the request head was complete: {early:?}"
        );
        c.write_all(b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .expect("second write: no broken pipe");
        c.set_read_timeout(Some(HANG)).expect("timeout");
        let mut answer = String::new();
        c.read_to_string(&mut answer).expect("whole answer");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("packager_newest_media_sequence{stream=\"s1\"} 42"),
            "{answer}"
        );
        let ask = |method: &str, path: &str| {
            test_kit::http::request(method, &format!("http://{addr}{path}"), &[], HANG)
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
        };
        let health = ask("GET", "/healthz");
        assert_eq!(health.status, 200);
        assert!(
            health.text().contains("{\"status\":\"ok\"}"),
            "{}",
            health.text()
        );
        assert_eq!(ask("GET", "/nope").status, 404);
        assert_eq!(ask("POST", "/metrics").status, 405);
        assert!(http(addr, b"nonsense\r\n\r\n").starts_with("HTTP/1.1 400"));
        // HEAD: the head only, nothing after it (framing, so raw).
        let head = http(
            addr,
            b"HEAD /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        assert!(
            head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while big.len() <= 9 * 1024 {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        big.extend_from_slice(b"\r\n");
        assert!(http(addr, &big).starts_with("HTTP/1.1 431"));
    });
    checks.await.expect("admin checks");
    let _ = stop.send(());
    tokio::time::timeout(HANG, run)
        .await
        .expect("run ends after shutdown")
        .expect("run task")
        .expect("run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_sources_blocked_on_a_silent_or_idle_ingest() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // One source stuck in the RTMP handshake with a server that never answers.
    let (silent, accepted) = silent_server();
    // One playing a stream of a real ingest that has no publisher: connected, nothing to read.
    let ingest_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let ingest_addr = ingest_listener.local_addr().expect("address");
    let ingest = ingest::Server::new(ingest::Config {
        play_wait_secs: 0,
        ..ingest::Config::default()
    });
    let (stop_ingest, ingest_stopped) = oneshot::channel::<()>();
    let ingest_task = tokio::spawn(ingest::run_with_admin(
        ingest_listener,
        None,
        ingest.clone(),
        async move {
            let _ = ingest_stopped.await;
        },
    ));

    let metrics = Metrics::new();
    let mut idle = source(
        format!("rtmp://{ingest_addr}/live/{STREAM}"),
        &tmp.path().join("idle"),
        &metrics,
    );
    idle.pipeline.stream = "idle".into();
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(packager::run(
        vec![
            source(
                format!("rtmp://{silent}/live/{STREAM}"),
                tmp.path(),
                &metrics,
            ),
            idle,
        ],
        None,
        metrics.clone(),
        async move {
            let _ = stopped.await;
        },
    ));

    // Both are waiting: the silent server has the handshake's connection, the ingest a player.
    let handshake = tokio::task::spawn_blocking(move || accepted.recv_timeout(HANG))
        .await
        .expect("join")
        .expect("the packager connects to the silent server");
    let connected = metrics.source_connected.with_label_values(&["idle"]);
    test_kit::wait_until_async(HANG, "the idle source plays the stream", || {
        std::future::ready(connected.get() == 1 && ingest.metrics.subscribers.get() == 1)
    })
    .await;

    let _ = stop.send(());
    tokio::time::timeout(HANG, run)
        .await
        .expect("run ends although both sources were blocked")
        .expect("run task")
        .expect("run");
    // Both connections were closed, not left behind.
    assert_eq!(connected.get(), 0, "source_connected after the stop");
    tokio::task::spawn_blocking(move || assert_closed_by_peer(handshake, "handshake"))
        .await
        .expect("join");
    test_kit::wait_until_async(HANG, "the ingest sees its player leave", || {
        std::future::ready(ingest.metrics.subscribers.get() == 0)
    })
    .await;
    let _ = stop_ingest.send(());
    ingest_task.await.expect("ingest task").expect("ingest");
}

#[test]
fn sigterm_ends_the_packager_process_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (silent, accepted) = silent_server();
    let mut child = Command::new(env!("CARGO_BIN_EXE_packager"))
        .args(["--source", &format!("rtmp://{silent}/live/{STREAM}")])
        .arg("--out")
        .arg(tmp.path())
        .args(["--admin", "127.0.0.1:0"])
        .args(["--connect-timeout-ms", "3600000"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the packager binary");
    let log = child.stderr.take().expect("piped stderr");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            eprintln!("packager| {line}");
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let next_line = |seen: &mut Vec<String>| {
        let line = lines.recv_timeout(HANG).expect("the packager logs");
        seen.push(line.clone());
        line
    };
    let admin: SocketAddr = loop {
        let line = next_line(&mut seen);
        if line.contains("admin endpoint listening") {
            break line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .and_then(|a| a.parse().ok())
                .expect("admin address in the log");
        }
    };
    // Ready: blocked in the handshake with the silent server, and the admin endpoint answers
    // (on the binary's current-thread runtime it runs only once `run` waits for the signal,
    // i.e. after the handlers are installed).
    let handshake = accepted
        .recv_timeout(HANG)
        .expect("the packager connects to its source");
    assert!(
        http(
            admin,
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        .contains("{\"status\":\"ok\"}")
    );

    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(sent, 0, "kill: {}", std::io::Error::last_os_error());
    let (status_tx, status) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = status_tx.send(child.wait());
    });
    let status = status
        .recv_timeout(HANG)
        .expect("the packager exits on SIGTERM")
        .expect("wait");
    assert!(status.success(), "exit status {status:?}");
    assert_closed_by_peer(handshake, "source connection");
    while let Ok(line) = lines.recv_timeout(HANG) {
        seen.push(line);
    }
    assert!(
        seen.iter().any(|l| l.contains("SIGTERM received")),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|l| l.contains("packager stopped")),
        "{seen:#?}"
    );
}

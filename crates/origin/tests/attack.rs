//! Attacks on the real `origin` binary (issue: an idle h2 preface held a slot for the idle
//! timeout, and one address could take every slot): each asserts the attack connections are
//! closed or refused, and that a good client on another address is served meanwhile.
//!
//! The attacker connects from 127.0.0.1, the good client from 127.0.0.2 (all of 127/8 is
//! loopback on Linux), so the per-address cap tells them apart.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use test_kit::process::strip_ansi;

/// The h2 connection preface (RFC 9113 section 3.4) followed by an empty SETTINGS frame:
/// everything a client must send before its first request.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
const PLAYLIST: &str = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nseg1.ts\n";
/// A hang guard on every read, far below the idle timeout the attacks run with (600 s): a
/// connection that is still open when it fires was not closed by the header deadline.
const GUARD: Duration = Duration::from_secs(30);
const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const GOOD_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A running `origin` process over a temporary root; killed on drop.
struct Origin {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Origin {
    fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("demo")).expect("mkdir");
        std::fs::write(dir.path().join("demo/index.m3u8"), PLAYLIST).expect("playlist");
        std::fs::write(dir.path().join("demo/seg1.ts"), vec![7u8; 532 * 188]).expect("segment");
        let mut child = Command::new(env!("CARGO_BIN_EXE_origin"))
            .arg("--root")
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0", "--workers", "1"])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()) // service::init_tracing logs to stderr
            .spawn()
            .expect("start the origin binary");
        // Readiness: the "origin listening" line, which carries the bound address.
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("origin exited before listening")
                .expect("read origin log");
            let line = strip_ansi(&line);
            if line.contains("origin listening") {
                let value = line
                    .split_whitespace()
                    .find_map(|field| field.strip_prefix("addr="))
                    .expect("addr field");
                break value.parse().expect("socket address");
            }
        };
        // Keep draining the log so the origin never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    fn connect_from(&self, source: Ipv4Addr) -> TcpStream {
        let socket = socket2_free_connect(source, self.addr);
        socket.set_read_timeout(Some(GUARD)).expect("read timeout");
        socket
    }

    /// GET `path` from `source` on a fresh connection; the status and body.
    fn get_from(&self, source: Ipv4Addr, path: &str) -> (u16, Vec<u8>) {
        let mut stream = self.connect_from(source);
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("write request");
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).expect("read response");
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("response head")
            + 4;
        let status = String::from_utf8_lossy(&buf[9..12])
            .parse()
            .expect("status");
        (status, buf[end..].to_vec())
    }

    fn metric(&self, name: &str) -> f64 {
        let (status, body) = self.get_from(GOOD_CLIENT, "/metrics");
        assert_eq!(status, 200);
        let text = String::from_utf8(body).expect("utf-8 metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A std TCP connection from `source` (port chosen by the kernel) to `to`.
fn socket2_free_connect(source: Ipv4Addr, to: SocketAddr) -> TcpStream {
    // std has no bind-before-connect; tokio's TcpSocket does, then hand the socket over.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))
            .expect("bind source address");
        let stream = socket.connect(to).await.expect("connect");
        let stream = stream.into_std().expect("std stream");
        stream.set_nonblocking(false).expect("blocking");
        stream
    })
}

/// Reads until the server closes the connection; `true` if it did before the guard fired.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false, // the guard (WouldBlock/TimedOut)
        }
    }
}

#[test]
fn idle_h2_prefaces_are_closed_and_a_good_client_is_served() {
    const ATTACKS: usize = 40;
    let origin = Origin::start(&[
        "--header-read-timeout-seconds",
        "1",
        "--idle-timeout-seconds",
        "600",
    ]);
    let mut attack: Vec<TcpStream> = (0..ATTACKS)
        .map(|_| {
            let mut stream = origin.connect_from(ATTACKER);
            stream.write_all(H2_PREFACE).expect("send preface");
            stream
        })
        .collect();

    // While they hold their connections, a good client gets a playlist and a segment.
    let (status, body) = origin.get_from(GOOD_CLIENT, "/hls/demo/index.m3u8");
    assert_eq!((status, body.as_slice()), (200, PLAYLIST.as_bytes()));
    let (status, body) = origin.get_from(GOOD_CLIENT, "/hls/demo/seg1.ts");
    assert_eq!((status, body.len()), (200, 532 * 188));

    for (i, stream) in attack.iter_mut().enumerate() {
        assert!(
            closed_by_server(stream),
            "idle h2 connection {i} still open: the header deadline does not apply to h2"
        );
    }
    assert_eq!(
        origin.metric("origin_connections_closed_no_request_total"),
        ATTACKS as f64
    );
    assert_eq!(origin.metric("origin_connections_closed_idle_total"), 0.0);
}

#[test]
fn one_address_cannot_take_every_slot() {
    const CAP: usize = 8;
    const EXTRA: usize = 20;
    let origin = Origin::start(&[
        "--max-connections-per-address",
        &CAP.to_string(),
        "--max-connections",
        "64",
        "--header-read-timeout-seconds",
        "600",
        "--idle-timeout-seconds",
        "600",
    ]);
    let mut attack: Vec<TcpStream> = (0..CAP + EXTRA)
        .map(|_| {
            let mut stream = origin.connect_from(ATTACKER);
            // A refused connection may already be closed: the write may fail.
            let _ = stream.write_all(H2_PREFACE);
            stream
        })
        .collect();
    // An accepted h2 connection gets the server's SETTINGS frame; a refused one is closed
    // without a byte.
    let mut accepted = 0;
    let mut refused = 0;
    for stream in &mut attack {
        let mut first = [0u8; 64];
        match stream.read(&mut first) {
            Ok(n) if n > 0 => accepted += 1,
            Ok(_) => refused += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => refused += 1,
            Err(e) => panic!("neither served nor closed: {e}"),
        }
    }
    assert_eq!((accepted, refused), (CAP, EXTRA));

    let (status, body) = origin.get_from(GOOD_CLIENT, "/hls/demo/index.m3u8");
    assert_eq!((status, body.as_slice()), (200, PLAYLIST.as_bytes()));
    assert_eq!(
        origin.metric("origin_connections_refused_total"),
        EXTRA as f64
    );
}

//! Attack suite against the real `ingest` binary (issue 13, items 5, 6 and 7): each test
//! starts the binary with small limits, attacks it with raw RTMP clients (hand-built chunks
//! over `rtmp`'s sans-IO encoder), asserts that the attack is refused or bounded (the
//! connection closed, the ingest's own accounting in `/metrics` bounded, the slot freed),
//! and that a good ffmpeg publisher and a good player are unaffected.
//!
//! Attackers connect from other loopback addresses (127.0.0.2 and up, all on `lo`), so
//! the per-address limits apply to them and not to the good peers on 127.0.0.1. Readiness
//! comes from the ingest's log line with its bound addresses and from its metrics; no test
//! asserts on timing. Needs Debian packages `ffmpeg` (ffmpeg, ffprobe); the metadata test
//! also needs the packager binary (`cargo xtask test` builds it first).

use bytes::{Bytes, BytesMut};
use rtmp::amf0::Value;
use rtmp::chunk::{ChunkDecoder, ChunkEncoder, Limits, RawMessage};
use rtmp::handshake::ClientHandshake;
use rtmp::message::{Message, build, csid, type_id};
use rtmp::{PlayClient, PlayEvent};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use test_kit::process::Killed;
use test_kit::process::strip_ansi;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How long anything the tests wait for may take before the test fails (not a timing
/// assertion: a bound on a wait for a readiness signal).
const WAIT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The ingest process
// ---------------------------------------------------------------------------------------

struct Ingest {
    child: Child,
    rtmp: SocketAddr,
    admin: SocketAddr,
}

impl Ingest {
    /// Starts `ingest` on ephemeral loopback ports with `args`, and waits for the log lines
    /// that give its RTMP and admin addresses.
    fn start(args: &[&str]) -> Ingest {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ingest"))
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            // The log (service::init_tracing writes to stderr).
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the ingest binary");
        let log = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        // Keeps reading (and echoing, for failures) so the pipe never fills.
        std::thread::spawn(move || {
            for line in BufReader::new(log).lines().map_while(Result::ok) {
                let line = strip_ansi(&line);
                eprintln!("ingest| {line}");
                let _ = tx.send(line);
            }
        });
        let (mut rtmp, mut admin) = (None, None);
        let deadline = Instant::now() + WAIT;
        while rtmp.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("ingest announces its addresses");
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .and_then(|a| a.parse::<SocketAddr>().ok());
            if line.contains("admin endpoint listening") {
                admin = addr;
            } else if line.contains("RTMP listening") {
                rtmp = addr;
            }
        }
        Ingest {
            child,
            rtmp: rtmp.expect("rtmp address"),
            admin: admin.expect("admin address"),
        }
    }

    fn url(&self, stream: &str) -> String {
        format!("rtmp://{}/live/{stream}", self.rtmp)
    }

    /// Every sample of `/metrics`, by name with labels.
    fn metrics(&self) -> HashMap<String, f64> {
        let body = test_kit::http::get(&format!("http://{}/metrics", self.admin))
            .expect("GET the admin's /metrics")
            .text();
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }

    fn metric(&self, name: &str) -> f64 {
        *self
            .metrics()
            .get(name)
            .unwrap_or_else(|| panic!("metric {name} exported"))
    }

    /// Waits until `pred(metric)` holds.
    async fn wait_metric(&self, name: &str, what: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let mut last = f64::NAN;
        let held = test_kit::wait::try_poll_until_async(WAIT, || {
            last = self.metric(name);
            std::future::ready(pred(last).then_some(last))
        })
        .await;
        held.unwrap_or_else(|| panic!("{what}: {name} stayed at {last}"))
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const BUFFERED_PARTIAL: &str = "ingest_buffered_bytes{buffer=\"partial_messages\"}";
const BUFFERED_STREAMS: &str = "ingest_buffered_bytes{buffer=\"streams\"}";

// ---------------------------------------------------------------------------------------
// Good peers: ffmpeg publisher and player
// ---------------------------------------------------------------------------------------

/// ffmpeg publishing the test pattern (from 127.0.0.1) until dropped or `seconds` pass.
struct Publisher(Killed);

impl Publisher {
    fn spawn(url: &str, seconds: u32) -> Self {
        Publisher(
            test_kit::Publisher::new(320, 240, 25)
                .realtime()
                .seconds(seconds)
                .zerolatency()
                .gop(25)
                .spawn(url),
        )
    }

    fn wait(mut self) -> bool {
        self.0.wait().success()
    }
}

/// An ffmpeg player records 2 s of `url`; ffprobe must decode H.264 and AAC frames from it.
async fn good_player_decodes(url: &str, dir: &Path, name: &str) {
    let file = dir.join(format!("{name}.flv"));
    let (url, f) = (url.to_owned(), file.clone());
    tokio::task::spawn_blocking(move || {
        let child = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-i", &url])
            .args(["-t", "2", "-c", "copy", "-y"])
            .arg(&f)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ffmpeg player");
        // A live stream does not end: the player stops after its 2 s of media, or is stopped.
        Killed(child).wait_within(WAIT);
    })
    .await
    .expect("player thread");
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries"])
        .args(["stream=codec_name,nb_read_frames", "-of", "csv=p=0"])
        .arg(&file)
        .output()
        .expect("ffprobe installed");
    let probe = String::from_utf8_lossy(&out.stdout).into_owned();
    let frames = |codec: &str| {
        probe
            .lines()
            .filter_map(|l| l.split_once(','))
            .find(|(c, _)| *c == codec)
            .and_then(|(_, n)| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(
        frames("h264") >= 10 && frames("aac") >= 10,
        "good player {name}: decoded {probe:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The attacker: a raw RTMP client
// ---------------------------------------------------------------------------------------

/// Attacker source address 127.0.0.`n` (on `lo` like all of 127/8).
fn attacker(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

struct Raw {
    sock: TcpStream,
    enc: ChunkEncoder,
    dec: ChunkDecoder,
    rbuf: BytesMut,
}

impl Raw {
    /// TCP from `src` to the ingest, and the plain handshake. `None`: the ingest closed the
    /// connection before the handshake completed (refused at accept).
    async fn connect(src: IpAddr, ingest: &Ingest) -> Option<Raw> {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::new(src, 0))
            .expect("bind attacker address");
        let mut sock = sock.connect(ingest.rtmp).await.expect("tcp connect");
        let mut out = BytesMut::new();
        let mut hs = ClientHandshake::start(&mut out);
        sock.write_all(&out).await.ok()?;
        let mut rbuf = BytesMut::new();
        loop {
            let mut out = BytesMut::new();
            if hs.read(&mut rbuf, &mut out).expect("handshake") {
                sock.write_all(&out).await.ok()?;
                break;
            }
            let n = tokio::time::timeout(WAIT, sock.read_buf(&mut rbuf))
                .await
                .expect("handshake reply in time")
                .ok()?;
            if n == 0 {
                return None;
            }
        }
        let limits = Limits {
            max_chunk_size: 1 << 24,
            ..Limits::default()
        };
        Some(Raw {
            sock,
            enc: ChunkEncoder::new(),
            dec: ChunkDecoder::new(limits),
            rbuf,
        })
    }

    async fn send(&mut self, m: &RawMessage) -> std::io::Result<()> {
        let mut b = BytesMut::new();
        self.enc.write(m, &mut b).expect("encodable");
        self.sock.write_all(&b).await
    }

    async fn set_chunk_size(&mut self, n: u32) {
        self.send(&build::set_chunk_size(n)).await.expect("send");
        self.enc.set_chunk_size(n as usize);
    }

    /// Next command from the server (`None`: closed), applying Set Chunk Size.
    async fn next_command(&mut self) -> Option<rtmp::message::Command> {
        loop {
            while let Some(raw) = self.dec.read(&mut self.rbuf).expect("server's chunks") {
                match Message::parse(&raw).expect("server's messages") {
                    Message::SetChunkSize(n) => self.dec.set_chunk_size(n).expect("size"),
                    Message::Command(c) => return Some(c),
                    _ => {}
                }
            }
            let n = tokio::time::timeout(WAIT, self.sock.read_buf(&mut self.rbuf))
                .await
                .expect("server answers in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// `connect` to app `live`; true when the server answered `_result`.
    async fn connect_app(&mut self) -> bool {
        let obj = Value::Object(vec![("app".into(), Value::String("live".into()))]);
        if self
            .send(&build::command(0, "connect", 1.0, obj, &[]))
            .await
            .is_err()
        {
            return false;
        }
        while let Some(c) = self.next_command().await {
            if c.transaction_id == 1.0 {
                return c.name == "_result";
            }
        }
        false
    }

    /// `createStream` + `publish name`; the onStatus code of the answer ("" if closed).
    async fn publish(&mut self, name: &str) -> String {
        let cs = build::command(0, "createStream", 2.0, Value::Null, &[]);
        let publish = build::command(
            1,
            "publish",
            0.0,
            Value::Null,
            &[Value::String(name.into()), Value::String("live".into())],
        );
        if self.send(&cs).await.is_err() || self.send(&publish).await.is_err() {
            return String::new();
        }
        while let Some(c) = self.next_command().await {
            if c.name == "onStatus" {
                return c
                    .args
                    .first()
                    .and_then(|i| i.get("code"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
            }
        }
        String::new()
    }

    /// Handshake from `src`, `connect`, `publish name`: the connection if it publishes.
    async fn publisher(src: IpAddr, ingest: &Ingest, name: &str) -> Option<Raw> {
        let mut r = Raw::connect(src, ingest).await?;
        if !r.connect_app().await {
            return None;
        }
        (r.publish(name).await == "NetStream.Publish.Start").then_some(r)
    }

    /// Writes the chunks of `msg` (at the current chunk size) up to `keep` payload bytes
    /// and stops there: a message left partial, as a staller leaves it.
    async fn send_partial(&mut self, msg: &RawMessage, keep: usize) -> std::io::Result<()> {
        let mut b = BytesMut::new();
        self.enc.write(msg, &mut b).expect("encodable");
        let chunk = self.enc.chunk_size();
        // Header (12 bytes at csid < 64) + payload with a 1-byte header per further chunk.
        let cut = 12 + keep + keep.saturating_sub(1) / chunk;
        self.sock.write_all(&b[..cut.min(b.len() - 1)]).await
    }

    /// True when the server closes the connection within [`WAIT`] (whatever it sends
    /// meanwhile is discarded).
    async fn closed_by_server(mut self) -> bool {
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.sock.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }
}

/// A video message of `len` bytes that is not a keyframe (FLV VIDEODATA, AVC inter frame).
fn inter_frame(len: usize, ts: u32) -> RawMessage {
    let mut data = vec![0u8; len];
    data[0] = 0x27;
    data[1] = 1;
    build::media(true, 1, ts, Bytes::from(data))
}

// ---------------------------------------------------------------------------------------
// Item 5: memory
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_partial_messages_are_capped_before_publish_and_dropped_at_idle_timeout() {
    let ingest = Ingest::start(&[
        "--pre-publish-buffer-bytes",
        "65536",
        "--idle-timeout-secs",
        "2",
        // The setup deadline must not be what closes the stallers: the idle timeout must.
        "--handshake-timeout-secs",
        "120",
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let _good = Publisher::spawn(&ingest.url("good"), 30);
    ingest
        .wait_metric("ingest_publishers", "good publisher", |v| v == 1.0)
        .await;

    // The attack: unauthenticated connections declaring two ~16 MiB messages each,
    // all but the end sent. Over the pre-publish cap at the first header: closed at once.
    let mut big = Vec::new();
    for _ in 0..10 {
        let mut r = Raw::connect(attacker(2), &ingest).await.expect("admitted");
        let m = build::data(0, 0, &[Value::String("x".repeat((16 << 20) - 64))]);
        let _ = r.send_partial(&m, 4096).await;
        big.push(r);
    }
    for r in big {
        assert!(r.closed_by_server().await, "16 MiB declared before connect");
    }
    assert!(ingest.metric("ingest_budget_refusals_total") >= 10.0);

    // Under the cap, stalled mid-message: held, accounted, then dropped at the idle timeout.
    let declared = 60 * 1024;
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut r = Raw::connect(attacker(3), &ingest).await.expect("admitted");
        let m = build::data(0, 0, &[Value::String("y".repeat(declared - 3))]);
        assert_eq!(m.payload.len(), declared);
        r.send_partial(&m, declared / 2).await.expect("send");
        stalled.push(r);
    }
    let held = ingest
        .wait_metric(BUFFERED_PARTIAL, "stallers accounted", |v| {
            v >= (10 * declared) as f64
        })
        .await;
    assert!(held <= (10 * declared + 1024 * 1024) as f64, "{held}");
    // The good publisher and a player are unaffected meanwhile.
    good_player_decodes(&ingest.url("good"), dir.path(), "during").await;
    for r in stalled {
        assert!(
            r.closed_by_server().await,
            "staller dropped at the idle timeout"
        );
    }
    ingest
        .wait_metric(BUFFERED_PARTIAL, "stallers' memory released", |v| {
            v < declared as f64
        })
        .await;
    assert_eq!(ingest.metric("ingest_publishers"), 1.0);
    good_player_decodes(&ingest.url("good"), dir.path(), "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_frames_are_bounded_by_the_stream_buffer_cap() {
    let cap = 4 << 20;
    let ingest = Ingest::start(&["--stream-buffer-bytes", &cap.to_string()]);
    let dir = tempfile::tempdir().expect("tempdir");
    // The attack, scaled: 24 x 2 MiB inter frames (no keyframe, so no GOP cache):
    // the ring used to keep them all (its entry cap is 1024).
    let mut flood = Raw::publisher(attacker(2), &ingest, "flood")
        .await
        .expect("anonymous publish allowed");
    flood.set_chunk_size(65536).await;
    let (n, len) = (24u32, 2usize << 20);
    for i in 0..n {
        flood
            .send(&inter_frame(len, i * 40))
            .await
            .expect("send frame");
    }
    ingest
        .wait_metric("ingest_received_bytes_total", "flood received", |v| {
            v >= (n as usize * len) as f64
        })
        .await;
    // A player of the flooded stream, then the good pair, while the flooder stays connected.
    let held = ingest.metric(BUFFERED_STREAMS);
    assert!(
        held > 0.0 && held <= cap as f64,
        "stream buffer holds {held} bytes of {} pushed (cap {cap})",
        n as usize * len
    );
    let _good = Publisher::spawn(&ingest.url("good"), 30);
    ingest
        .wait_metric("ingest_publishers", "good publisher", |v| v == 2.0)
        .await;
    good_player_decodes(&ingest.url("good"), dir.path(), "during").await;
    // Each stream within its cap (plus its GOP cache, 32 MiB by default, here one 2 s GOP).
    assert!(ingest.metric(BUFFERED_STREAMS) <= (2 * cap + (8 << 20)) as f64);
    drop(flood);
    good_player_decodes(&ingest.url("good"), dir.path(), "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_budget_is_bounded_in_total_and_shared_between_addresses() {
    let mib = 1usize << 20;
    let ingest = Ingest::start(&[
        "--max-buffered-bytes",
        &(6 * mib).to_string(),
        "--max-buffered-bytes-per-address",
        &(2 * mib).to_string(),
        "--idle-timeout-secs",
        "2",
        "--handshake-timeout-secs",
        "120",
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    // Publishers (anyone may publish: no key) each start a 1 MiB message and stall.
    async fn stall(ingest: &Ingest, from: u8, name: &str) -> Option<Raw> {
        let mut r = Raw::publisher(attacker(from), ingest, name).await?;
        r.set_chunk_size(4096).await;
        // A refused one may see its write fail: it is closed either way.
        let _ = r.send_partial(&inter_frame(1 << 20, 0), 64 * 1024).await;
        Some(r)
    }
    // Total: 4 addresses x 2 connections want 8 MiB of a 6 MiB budget.
    let mut all = Vec::new();
    for a in 2..6u8 {
        for i in 0..2 {
            all.push(
                stall(&ingest, a, &format!("t{a}-{i}"))
                    .await
                    .expect("publishes"),
            );
        }
    }
    let held = ingest
        .wait_metric(BUFFERED_PARTIAL, "budget filled", |v| v >= (6 * mib) as f64)
        .await;
    assert_eq!(held, (6 * mib) as f64, "never more than the budget");
    ingest
        .wait_metric("ingest_budget_refusals_total", "over-budget closed", |v| {
            v >= 2.0
        })
        .await;
    for r in all {
        // Refused at once or dropped at the idle timeout: every one closes.
        assert!(r.closed_by_server().await);
    }
    ingest
        .wait_metric(BUFFERED_PARTIAL, "budget released", |v| v == 0.0)
        .await;

    // Per address: one address with many connections gets its 2 MiB share, no more, and a
    // good publisher from another address keeps publishing meanwhile.
    let _good = Publisher::spawn(&ingest.url("good"), 30);
    ingest
        .wait_metric("ingest_publishers", "good publisher", |v| v == 1.0)
        .await;
    let refused_before = ingest.metric("ingest_budget_refusals_total");
    let mut one = Vec::new();
    for i in 0..5 {
        if let Some(r) = stall(&ingest, 7, &format!("one-{i}")).await {
            one.push(r);
        }
    }
    ingest
        .wait_metric("ingest_budget_refusals_total", "over-share closed", |v| {
            v >= refused_before + 3.0
        })
        .await;
    let held = ingest.metric(BUFFERED_PARTIAL);
    assert!(
        held <= (3 * mib) as f64,
        "one address's share and the good publisher's frames: {held}"
    );
    good_player_decodes(&ingest.url("good"), dir.path(), "during").await;
    for r in one {
        assert!(r.closed_by_server().await);
    }
    good_player_decodes(&ingest.url("good"), dir.path(), "after").await;
}

// ---------------------------------------------------------------------------------------
// Item 6: slots
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_holders_are_limited_per_address_and_closed_at_the_setup_deadline() {
    let ingest = Ingest::start(&[
        "--max-connections-per-address",
        "8",
        "--handshake-timeout-secs",
        "3",
        "--idle-timeout-secs",
        "120",
        "--max-streams",
        "10",
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let _good = Publisher::spawn(&ingest.url("good"), 30);
    ingest
        .wait_metric("ingest_publishers", "good publisher", |v| v == 1.0)
        .await;

    // The attack: handshake, connect, then an ack now and then, forever.
    let mut holders = Vec::new();
    let mut refused = 0;
    for _ in 0..20 {
        let admitted = match Raw::connect(attacker(2), &ingest).await {
            Some(mut r) => r.connect_app().await.then_some(r),
            None => None,
        };
        match admitted {
            Some(r) => holders.push(r),
            None => refused += 1,
        }
    }
    assert_eq!(holders.len(), 8, "only the per-address limit admitted");
    assert_eq!(refused, 12);
    assert!(ingest.metric("ingest_connections_rejected_total") >= 12.0);
    let keepalive = tokio::spawn(async move {
        let mut closed = 0;
        let mut alive = holders;
        while !alive.is_empty() {
            let mut still = Vec::new();
            for mut r in alive {
                if r.send(&build::ack(1)).await.is_ok() {
                    still.push(r);
                } else {
                    closed += 1;
                }
            }
            alive = still;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        closed
    });
    // Meanwhile the good pair works.
    good_player_decodes(&ingest.url("good"), dir.path(), "during").await;
    // Acks do not extend the setup deadline: every holder is closed.
    let closed = tokio::time::timeout(WAIT, keepalive)
        .await
        .expect("holders closed by the setup deadline")
        .expect("keepalive task");
    assert_eq!(closed, 8);
    ingest
        .wait_metric("ingest_connections", "slots freed", |v| v <= 2.0)
        .await;

    // Anonymous publishers from one address take at most its 8 connection slots of the
    // 10 stream slots; the good publisher of a new name still gets one.
    let mut anon = Vec::new();
    for i in 0..12 {
        if let Some(r) = Raw::publisher(attacker(3), &ingest, &format!("anon{i}")).await {
            anon.push(r);
        }
    }
    assert_eq!(anon.len(), 8);
    let _good2 = Publisher::spawn(&ingest.url("good2"), 30);
    ingest
        .wait_metric("ingest_publishers", "second good publisher", |v| v == 10.0)
        .await;
    good_player_decodes(&ingest.url("good2"), dir.path(), "good2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_of_missing_streams_cannot_take_publish_slots_and_give_up() {
    let ingest = Ingest::start(&[
        "--publish-key",
        "s3cret",
        "--max-streams",
        "4",
        "--play-wait-secs",
        "3",
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    // Silent players of made-up names: 4 may wait, the rest are refused.
    let mut ghosts = Vec::new();
    let mut refused = 0;
    for i in 0..8 {
        match PlayClient::connect(&ingest.url(&format!("ghost{i}")), CONNECT_TIMEOUT).await {
            Ok(c) => ghosts.push(c),
            Err(rtmp::ClientError::Rejected(_)) => refused += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!((ghosts.len(), refused), (4, 4));
    // They hold no publish slot: the good publisher (with the key) publishes meanwhile.
    let _good = Publisher::spawn(&ingest.url("good?key=s3cret"), 30);
    ingest
        .wait_metric("ingest_publishers", "good publisher", |v| v == 1.0)
        .await;
    // Each waiting player is told and closed after the wait.
    for mut g in ghosts {
        let end = tokio::time::timeout(WAIT, async {
            loop {
                match g.next_event().await {
                    Ok(Some(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("waiting player closed");
        assert!(
            matches!(&end, Err(rtmp::ClientError::Rejected(c)) if c == "NetStream.Play.StreamNotFound"),
            "{end:?}"
        );
    }
    assert_eq!(ingest.metric("ingest_play_wait_expired_total"), 4.0);
    ingest
        .wait_metric("ingest_streams", "waiting names freed", |v| v == 1.0)
        .await;
    good_player_decodes(&ingest.url("good"), dir.path(), "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_name_is_kept_for_its_publisher_during_the_grace_period() {
    // No publish key (the default): the name-taking while a publisher reconnects.
    let ingest = Ingest::start(&["--republish-grace-secs", "600"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Publisher::spawn(&ingest.url("show?key=mine"), 2);
    ingest
        .wait_metric("ingest_publishers", "publisher", |v| v == 1.0)
        .await;
    assert!(first.wait(), "first publish ran");
    ingest
        .wait_metric("ingest_publishers", "publisher gone", |v| v == 0.0)
        .await;
    // Another address, without or with another key: refused.
    for name in ["show", "show?key=guess"] {
        let mut r = Raw::connect(attacker(2), &ingest).await.expect("admitted");
        assert!(r.connect_app().await);
        assert_eq!(r.publish(name).await, "NetStream.Publish.BadName", "{name}");
    }
    // The good publisher comes back from its own address, and plays as before.
    let back = Publisher::spawn(&ingest.url("show?key=mine"), 30);
    ingest
        .wait_metric("ingest_publishers", "publisher back", |v| v == 1.0)
        .await;
    good_player_decodes(&ingest.url("show"), dir.path(), "back").await;
    drop(back);
    ingest
        .wait_metric("ingest_publishers", "publisher gone again", |v| v == 0.0)
        .await;
    // Its key from a new address (a publisher whose address changed) takes the name too.
    let moved = Raw::publisher(attacker(3), &ingest, "show?key=mine").await;
    assert!(moved.is_some(), "same key takes the name back");
}

// ---------------------------------------------------------------------------------------
// Item 7: metadata overflow
// ---------------------------------------------------------------------------------------

/// The FLV tags (type, timestamp, body) of an FLV file.
fn flv_tags(bytes: &[u8]) -> Vec<(u8, u32, Bytes)> {
    let mut tags = Vec::new();
    let mut pos = 9 + 4; // header, PreviousTagSize0
    while pos + 11 <= bytes.len() {
        let h = &bytes[pos..pos + 11];
        let size = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
        let ts = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
        let Some(body) = bytes.get(pos + 11..pos + 11 + size) else {
            break;
        };
        tags.push((h[0], ts, Bytes::copy_from_slice(body)));
        pos += 11 + size + 4;
    }
    tags
}

fn packager_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_ingest")).with_file_name("packager");
    assert!(
        p.exists(),
        "{} missing: build it (cargo build -p packager) or run `cargo xtask test`",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_metadata_is_refused_and_the_packager_keeps_segmenting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = dir.path().join("clip.flv");
    test_kit::Publisher::new(320, 240, 25)
        .seconds(9)
        .gop(25)
        .encode(&clip);
    let tags = flv_tags(&std::fs::read(&clip).expect("clip"));
    let ingest = Ingest::start(&[]);
    let out = dir.path().join("hls");
    let mut packager = Command::new(packager_bin())
        .args(["--source", &ingest.url("meta"), "--admin", "127.0.0.1:0"])
        .arg("--out")
        .arg(&out)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn packager");
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _packager = Kill(&mut packager);

    let mut p = Raw::publisher(IpAddr::from([127, 0, 0, 1]), &ingest, "meta")
        .await
        .expect("publish");
    p.set_chunk_size(65536).await;
    // The reproducer: an @setDataFrame onMetaData of 16,777,199 bytes, which the
    // re-encoding with our two properties takes past the 24-bit length.
    let overhead = rtmp::amf0::encode_all(&[
        Value::String("@setDataFrame".into()),
        Value::String("onMetaData".into()),
        Value::EcmaArray(vec![("pad".into(), Value::String(String::new()))]),
    ])
    .len();
    // (+2: the pad is a long string, whose length field is 4 bytes instead of 2.)
    let pad = "p".repeat(16_777_199 - overhead - 2);
    let meta = build::data(
        1,
        0,
        &[
            Value::String("@setDataFrame".into()),
            Value::String("onMetaData".into()),
            Value::EcmaArray(vec![("pad".into(), Value::String(pad))]),
        ],
    );
    assert_eq!(meta.payload.len(), 16_777_199);
    p.send(&meta).await.expect("send metadata");
    // A player of the attacked stream gets whole, decodable metadata with the start time
    // (and without the oversize properties), then media.
    let url = ingest.url("meta");
    let player = tokio::spawn(async move {
        let mut c = PlayClient::connect(&url, CONNECT_TIMEOUT)
            .await
            .expect("player");
        let (mut start_time, mut video) = (None, 0);
        while video < 50 {
            match tokio::time::timeout(WAIT, c.next_event()).await {
                Ok(Ok(Some(PlayEvent::Metadata(props)))) => {
                    assert!(
                        props.iter().all(|(k, _)| k != "pad"),
                        "oversize props dropped"
                    );
                    start_time = rtmp::amf0::number_property(&props, rtmp::STREAM_START_TIME_MS);
                }
                Ok(Ok(Some(PlayEvent::Video { .. }))) => video += 1,
                Ok(Ok(Some(_))) => {}
                other => panic!("player of the attacked stream: {other:?}"),
            }
        }
        start_time
    });
    // Then the clip's media in real time.
    let start = tokio::time::Instant::now();
    for (kind, ts, body) in tags {
        if kind != type_id::AUDIO && kind != type_id::VIDEO {
            continue;
        }
        tokio::time::sleep_until(start + Duration::from_millis(ts as u64)).await;
        let m = RawMessage {
            csid: if kind == type_id::VIDEO {
                csid::VIDEO
            } else {
                csid::AUDIO
            },
            timestamp: ts,
            type_id: kind,
            stream_id: 1,
            payload: body,
        };
        p.send(&m).await.expect("send media");
    }
    assert!(
        player.await.expect("player task").is_some(),
        "metadata with streamStartTimeMs"
    );
    assert_eq!(ingest.metric("ingest_metadata_dropped_total"), 1.0);
    // The packager cut segments from the attacked stream.
    let stream_dir = out.join("meta");
    let segments = || {
        std::fs::read_dir(&stream_dir).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".ts"))
                .count()
        })
    };
    test_kit::wait_until_async(
        WAIT,
        &format!("the packager writes 3 segments in {}", stream_dir.display()),
        || std::future::ready(segments() >= 3),
    )
    .await;
    assert!(stream_dir.join("index.m3u8").exists());
    // A good ffmpeg publisher and player on the same ingest, after the attack.
    let _good = Publisher::spawn(&ingest.url("good"), 30);
    ingest
        .wait_metric("ingest_publishers", "good publisher", |v| v == 2.0)
        .await;
    good_player_decodes(&ingest.url("good"), dir.path(), "after").await;
}

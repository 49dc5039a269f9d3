//! Interop tests against the real thing: ffmpeg publishes to our ingest; ffmpeg, rtmpdump
//! and rtmp::PlayClient play. Every server binds 127.0.0.1:0. Needs Debian packages
//! `ffmpeg` (ffmpeg, ffprobe) and `rtmpdump`.

use ingest::{Config, Server};
use rtmp::{PlayClient, PlayEvent};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use test_kit::process::Killed;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READY_TIMEOUT: Duration = Duration::from_secs(10);

struct TestServer {
    addr: SocketAddr,
    server: Arc<Server>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TestServer {
    async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::default();
        tweak(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let server = Server::new(config);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(ingest::run_with_admin(
            listener,
            None,
            server.clone(),
            async {
                let _ = rx.await;
            },
        ));
        TestServer {
            addr,
            server,
            _stop: tx,
        }
    }

    fn url(&self, stream: &str) -> String {
        format!("rtmp://{}/live/{stream}", self.addr)
    }

    /// Waits until the number of publishers reaches `n` (the readiness signal).
    async fn wait_publishers(&self, n: i64) {
        test_kit::wait_until_async(READY_TIMEOUT, &format!("{n} publishers"), || {
            std::future::ready(self.server.metrics.publishers.get() == n)
        })
        .await;
    }
}

/// ffmpeg publishing the test pattern for `seconds`; its stderr is kept for [`finish`].
///
/// [`finish`]: Publisher::finish
struct Publisher(Killed);

impl Publisher {
    fn spawn(url: &str, seconds: u32) -> Self {
        let child = test_kit::Publisher::new(320, 240, 30)
            .realtime()
            .seconds(seconds)
            .zerolatency()
            .gop(30)
            .command(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ffmpeg installed (Debian package ffmpeg)");
        Publisher(Killed(child))
    }

    /// Waits for exit (bounded), returning (success, stderr).
    fn finish(mut self, within: Duration) -> (bool, String) {
        let status = self
            .0
            .wait_within(within)
            .expect("ffmpeg did not exit in time");
        let mut err = String::new();
        if let Some(mut e) = self.0.0.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        (status.success(), err)
    }
}

fn frames_decoded(file: &std::path::Path) -> String {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(file)
        .output()
        .expect("ffprobe installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_decodes_h264_and_aac(file: &std::path::Path) {
    let probe = frames_decoded(file);
    let mut codecs = HashMap::new();
    for line in probe.lines() {
        if let Some((codec, n)) = line.split_once(',') {
            codecs.insert(codec.to_owned(), n.trim().parse::<u64>().unwrap_or(0));
        }
    }
    assert!(
        codecs.get("h264").copied().unwrap_or(0) >= 10,
        "h264 frames decoded: {probe}"
    );
    assert!(
        codecs.get("aac").copied().unwrap_or(0) >= 10,
        "aac frames decoded: {probe}"
    );
}

/// Runs a blocking command with a deadline, killing it when the deadline passes (players
/// of a live stream do not end on their own).
fn run_for(cmd: &mut Command, dur: Duration) {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn player");
    Killed(child).wait_within(dur);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_publishes_ffmpeg_and_rtmpdump_play_and_ffprobe_decodes() {
    let srv = TestServer::start(|_| {}).await;
    let url = srv.url("x");
    let _publisher = Publisher::spawn(&url, 12);
    srv.wait_publishers(1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ff = dir.path().join("ffmpeg.flv");
    let rd = dir.path().join("rtmpdump.flv");
    let (u1, u2, f1, f2) = (url.clone(), url.clone(), ff.clone(), rd.clone());
    // ffmpeg's player uses the digest handshake; rtmpdump the plain one.
    let a = tokio::task::spawn_blocking(move || {
        run_for(
            Command::new("ffmpeg")
                .args([
                    "-hide_banner",
                    "-loglevel",
                    "error",
                    "-i",
                    &u1,
                    "-t",
                    "3",
                    "-c",
                    "copy",
                    "-y",
                ])
                .arg(&f1),
            Duration::from_secs(8),
        )
    });
    let b = tokio::task::spawn_blocking(move || {
        run_for(
            Command::new("rtmpdump")
                .args(["-q", "-v", "-r", &u2, "-o"])
                .arg(&f2),
            Duration::from_secs(4),
        )
    });
    a.await.expect("ffmpeg player");
    b.await.expect("rtmpdump");
    assert_decodes_h264_and_aac(&ff);
    assert_decodes_h264_and_aac(&rd);
    assert!(srv.server.metrics.bytes_out.get() > 0);
}

/// Collects events for `dur`.
async fn collect(client: &mut PlayClient, dur: Duration) -> Vec<PlayEvent> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + dur;
    while let Ok(r) = tokio::time::timeout_at(deadline, client.next_event()).await {
        match r.expect("play client") {
            Some(ev) => out.push(ev),
            None => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_players_joining_apart_see_identical_timestamps_and_start_time() {
    let srv = TestServer::start(|_| {}).await;
    let url = srv.url("same");
    let _publisher = Publisher::spawn(&url, 12);
    srv.wait_publishers(1).await;
    let mut a = PlayClient::connect(&url, CONNECT_TIMEOUT)
        .await
        .expect("player A");
    let early = collect(&mut a, Duration::from_secs(2)).await;
    let mut b = PlayClient::connect(&url, CONNECT_TIMEOUT)
        .await
        .expect("player B");
    let (ea, eb) = tokio::join!(
        collect(&mut a, Duration::from_secs(3)),
        collect(&mut b, Duration::from_secs(3))
    );
    let ea: Vec<_> = early.into_iter().chain(ea).collect();

    let meta = |evs: &[PlayEvent]| {
        evs.iter()
            .find(|e| matches!(e, PlayEvent::Metadata(_)))
            .cloned()
            .expect("metadata")
    };
    let (ma, mb) = (meta(&ea), meta(&eb));
    let start = ma.stream_start_time_ms().expect("streamStartTimeMs");
    assert_eq!(
        Some(start),
        mb.stream_start_time_ms(),
        "same start time for both"
    );
    assert_eq!(ma.stream_session_id(), Some(1));
    assert_eq!(mb.stream_session_id(), Some(1));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    assert!(
        (now - 30_000..=now).contains(&start),
        "start time {start} near now {now}"
    );
    // The publisher's own metadata is kept.
    assert!(
        ma.metadata_number("width").is_some(),
        "publisher metadata kept: {ma:?}"
    );

    // Same frame (same bytes) -> same timestamp, for every video and audio frame B saw.
    let index: HashMap<(bool, bytes::Bytes), u32> = ea
        .iter()
        .filter_map(|e| match e {
            PlayEvent::Video { timestamp_ms, data } => Some(((true, data.clone()), *timestamp_ms)),
            PlayEvent::Audio { timestamp_ms, data } => Some(((false, data.clone()), *timestamp_ms)),
            _ => None,
        })
        .collect();
    let mut matched = 0;
    for e in &eb {
        let (key, ts) = match e {
            PlayEvent::Video { timestamp_ms, data } if data.len() > 2 && data[1] == 1 => {
                ((true, data.clone()), *timestamp_ms)
            }
            PlayEvent::Audio { timestamp_ms, data } if data.len() > 2 && data[1] == 1 => {
                ((false, data.clone()), *timestamp_ms)
            }
            _ => continue,
        };
        if let Some(&ta) = index.get(&key) {
            assert_eq!(ta, ts, "same frame, same timestamp");
            matched += 1;
        }
    }
    assert!(matched >= 60, "enough common frames compared: {matched}");
    // B joined late: its first video frame after the sequence header is a keyframe.
    let first_b_video = eb.iter().find_map(|e| match e {
        PlayEvent::Video { data, .. } if data.len() > 1 && data[1] == 1 => Some(data.clone()),
        _ => None,
    });
    assert_eq!(
        first_b_video.expect("B got video")[0] >> 4,
        1,
        "late joiner starts on a keyframe"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_publisher_on_same_stream_is_refused() {
    let srv = TestServer::start(|_| {}).await;
    let url = srv.url("one");
    let _first = Publisher::spawn(&url, 10);
    srv.wait_publishers(1).await;
    let (ok, err) = Publisher::spawn(&url, 10).finish(Duration::from_secs(8));
    assert!(!ok, "second publisher must fail");
    assert!(
        srv.server.metrics.publish_rejected.get() == 1,
        "refusal counted; ffmpeg said: {err}"
    );
    assert_eq!(
        srv.server.metrics.publishers.get(),
        1,
        "first publisher unaffected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_restart_is_seen_by_connected_player() {
    let srv = TestServer::start(|_| {}).await;
    let url = srv.url("restart");
    let first = Publisher::spawn(&url, 3);
    srv.wait_publishers(1).await;
    let mut client = PlayClient::connect(&url, CONNECT_TIMEOUT)
        .await
        .expect("player");
    let (ok, err) = first.finish(Duration::from_secs(10));
    assert!(ok, "first publisher ran: {err}");
    srv.wait_publishers(0).await;
    let _second = Publisher::spawn(&url, 8);
    let events = collect(&mut client, Duration::from_secs(5)).await;
    let sessions: Vec<u64> = events
        .iter()
        .filter_map(PlayEvent::stream_session_id)
        .collect();
    assert!(
        sessions.contains(&1) || srv.server.metrics.publishers.get() == 1,
        "{sessions:?}"
    );
    assert!(sessions.contains(&2), "new session announced: {sessions:?}");
    let pos = |pred: &dyn Fn(&PlayEvent) -> bool| events.iter().position(pred);
    let eof = pos(&|e| matches!(e, PlayEvent::Status(s) if s == "StreamEOF")).expect("StreamEOF");
    let begin2 = events
        .iter()
        .enumerate()
        .skip(eof)
        .find(|(_, e)| matches!(e, PlayEvent::Status(s) if s == "StreamBegin"))
        .map(|(i, _)| i)
        .expect("StreamBegin after EOF");
    let meta2 = pos(&|e| e.stream_session_id() == Some(2)).expect("metadata of session 2");
    assert!(begin2 < meta2, "StreamBegin before the new metadata");
    // New sequence headers follow the new metadata.
    let seq_after = events[meta2..]
        .iter()
        .any(|e| matches!(e, PlayEvent::Video { data, .. } if data.len() > 1 && data[1] == 0));
    assert!(
        seq_after,
        "new AVC sequence header after the new session's metadata"
    );
}

/// Counts a player's video frames and the publisher's wake-ups of the fan-out over `dur`.
async fn wakeups_and_frames(
    srv: &TestServer,
    client: &mut PlayClient,
    dur: Duration,
) -> (u64, usize) {
    let before = srv.server.metrics.fanout_wakeups.get();
    let events = collect(client, dur).await;
    let wakeups = srv.server.metrics.fanout_wakeups.get() - before;
    let frames = events
        .iter()
        .filter(|e| matches!(e, PlayEvent::Video { data, .. } if data.len() > 1 && data[1] == 1))
        .count();
    (wakeups, frames)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_reads_and_writes_bound_wakeups_and_lose_nothing() {
    // ffmpeg sends 30 video + ~47 audio frames per second; with 0 every read is forwarded at
    // once, with 500 ms the fan-out is woken at most ~2 times a second, and every frame
    // still arrives, in order.
    let window = Duration::from_secs(3);
    let mut seen = Vec::new();
    for merge_ms in [0, 500] {
        let srv = TestServer::start(|c| c.merge_ms = merge_ms).await;
        let url = srv.url("merged");
        let _publisher = Publisher::spawn(&url, 10);
        srv.wait_publishers(1).await;
        let mut client = PlayClient::connect(&url, CONNECT_TIMEOUT)
            .await
            .expect("player");
        collect(&mut client, Duration::from_secs(1)).await;
        seen.push((
            merge_ms,
            wakeups_and_frames(&srv, &mut client, window).await,
        ));
    }
    eprintln!("(merge ms, (wake-ups, video frames)) over {window:?}: {seen:?}");
    let (_, (eager_wakeups, eager_frames)) = seen[0];
    let (_, (merged_wakeups, merged_frames)) = seen[1];
    assert!(eager_wakeups >= 45, "merge 0: a wake-up per read: {seen:?}");
    assert!(
        merged_wakeups <= 8,
        "merge 500 ms: at most ~2 wake-ups/s: {seen:?}"
    );
    // 30 fps for 3 s, give or take one merge interval at either end of the window.
    for frames in [eager_frames, merged_frames] {
        assert!(
            (70..=110).contains(&frames),
            "every frame delivered: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_reads_keep_up_with_a_high_bitrate_publisher() {
    // Random noise barely compresses: ~70 Mbit/s of 640x360 video, encoded in about a
    // second. Published in real time (-re) through the default merge interval, a player
    // must get every frame. (Whether the publisher is slowed down is a timing question for
    // `cargo xtask bench ingest`, not for a test.)
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = dir.path().join("noise.flv");
    test_kit::Publisher::new(640, 360, 30)
        .video_source("nullsrc=s=640x360:r=30,geq=lum='random(1)*255':cb=128:cr=128")
        .no_audio()
        .seconds(4)
        .output_args(["-qp", "10"])
        .gop(30)
        .yuv420p()
        .encode(&clip);
    let mbit = std::fs::metadata(&clip).expect("clip").len() as f64 * 8.0 / 4.0 / 1e6;
    assert!(mbit > 40.0, "clip is only {mbit:.1} Mbit/s");

    let srv = TestServer::start(|_| {}).await;
    let url = srv.url("noise");
    let mut client = PlayClient::connect(&url, CONNECT_TIMEOUT)
        .await
        .expect("player");
    let mut publisher = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re", "-i"])
        .arg(&clip)
        .args(["-c", "copy", "-f", "flv", &url])
        .stdin(Stdio::null())
        .spawn()
        .expect("ffmpeg");
    let waiter = std::thread::spawn(move || publisher.wait());
    let events = collect(&mut client, Duration::from_secs(9)).await;
    let status = waiter.join().expect("waiter thread");
    assert!(status.expect("ffmpeg exit").success(), "publisher failed");
    let frames = events
        .iter()
        .filter(|e| matches!(e, PlayEvent::Video { data, .. } if data.len() > 1 && data[1] == 1))
        .count();
    assert_eq!(
        frames, 120,
        "every frame of the {mbit:.1} Mbit/s clip delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_key_is_enforced() {
    let srv = TestServer::start(|c| c.publish_key = Some("s3cret".into())).await;
    let (ok, _) = Publisher::spawn(&srv.url("k"), 5).finish(Duration::from_secs(8));
    assert!(!ok, "publish without key refused");
    assert_eq!(srv.server.metrics.publish_rejected.get(), 1);
    let _good = Publisher::spawn(&srv.url("k?key=s3cret"), 5);
    srv.wait_publishers(1).await;
    // Players address the stream without the key.
    let mut c = PlayClient::connect(&srv.url("k"), CONNECT_TIMEOUT)
        .await
        .expect("player");
    let evs = collect(&mut c, Duration::from_secs(1)).await;
    assert!(evs.iter().any(|e| matches!(e, PlayEvent::Video { .. })));
}

#[tokio::test]
async fn malformed_input_closes_only_that_connection() {
    let srv = TestServer::start(|c| c.max_message_size = 64 * 1024).await;
    // Bad version byte.
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    s.write_all(&[0x06; 1537]).await.expect("write");
    let mut buf = [0u8; 16];
    assert_eq!(
        s.read(&mut buf).await.expect("read"),
        0,
        "closed on bad version"
    );
    // Valid handshake, then a chunk declaring a 16 MiB message.
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    let mut c0c1 = vec![3u8];
    c0c1.extend_from_slice(&[0u8; 1536]);
    s.write_all(&c0c1).await.expect("write");
    let mut s0s1s2 = vec![0u8; 1 + 2 * 1536];
    s.read_exact(&mut s0s1s2).await.expect("S0S1S2");
    s.write_all(&[0u8; 1536]).await.expect("C2");
    s.write_all(&[0x03, 0, 0, 0, 0xff, 0xff, 0xff, 20, 0, 0, 0, 0])
        .await
        .expect("hostile header");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("server closes");
    // The server still works: a player can connect.
    let c = PlayClient::connect(&srv.url("still-alive"), CONNECT_TIMEOUT).await;
    assert!(c.is_ok(), "server still serves: {c:?}");
    assert!(srv.server.metrics.protocol_errors.get() >= 2);
}

#[tokio::test]
async fn admin_endpoint_serves_prometheus_metrics() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let admin_addr = admin.local_addr().expect("addr");
    let server = Server::new(Config::default());
    let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(ingest::run_with_admin(
        listener,
        Some(admin),
        server,
        async {
            let _ = rx.await;
        },
    ));
    let url = format!("http://{admin_addr}/metrics");
    let response = tokio::task::spawn_blocking(move || test_kit::http::get(&url))
        .await
        .expect("client thread")
        .expect("GET the admin's /metrics");
    assert_eq!(response.status, 200);
    let body = response.text();
    for name in [
        "ingest_streams",
        "ingest_publishers",
        "ingest_subscribers",
        "ingest_received_bytes_total",
        "ingest_sent_bytes_total",
        "ingest_dropped_frames_total",
    ] {
        assert!(body.contains(name), "{name} in /metrics:\n{body}");
    }
}

//! The status page in a real browser: the service runs with the fake data plane and two
//! playlist servers whose state the test sets (primary stale, so the page must show a
//! failover to the backup and the backup's MSN); the page's player plays a live HLS stream
//! that ffmpeg produces during the test, served with CORS headers from another port as the
//! VIP would be. Debian's Chromium runs headless and the test reads the page through the
//! DevTools protocol.
//!
//! Needs `chromium` and `ffmpeg` on PATH and hls.js installed by `npm ci --prefix web`; a
//! missing one fails the test with what to install, it never skips.
//! `STATUS_PAGE_SCREENSHOT=path.png` also saves a screenshot of the page (docs/status-page.png).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::{FakeDataPlane, Reply, TestServer, playlist_aged};
use serde_json::json;
use switcher_common::ORIGIN_PRIMARY;
use switcher_ctl::config::Config;
use test_kit::browser::{Cdp, start_chromium};
use test_kit::process::Killed;
use test_kit::{Publisher, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PRIMARY_MSN: u64 = 4241;
const BACKUP_MSN: u64 = 4242;
const BACKUP_FLOWS: u64 = 7;
/// The primary's playlist is this stale, far over the default 6 s threshold.
const STALE: Duration = Duration::from_secs(30);
const FRESH: Duration = Duration::from_secs(1);
const INTERVAL_SECONDS: f64 = 0.1;
/// Stream name of the test's HLS output.
const STREAM: &str = "live";
/// Segments the test stream must have before the browser starts (hls.js starts three
/// target durations behind the live edge).
const SEGMENTS_BEFORE_PLAYING: usize = 3;
/// Upper bound for each wait; the whole test takes about 15 s.
const DEADLINE: Duration = Duration::from_secs(20);
/// How far the video must advance while the test watches it.
const MIN_ADVANCE_SECONDS: f64 = 1.5;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// A temporary directory removed when the test ends, passed or not.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(tag: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("switcher-status-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    TempDir(dir)
}

fn require_tool(name: &str, install: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(name).is_file()));
    assert!(
        found,
        "`{name}` is not on PATH; this test needs it: {install}"
    );
}

/// ffmpeg writing a live HLS stream (1 s segments, window 6, PROGRAM-DATE-TIME) into `dir`.
fn start_ffmpeg(dir: &Path) -> Killed {
    let segments = dir.join("seg%05d.ts").to_string_lossy().into_owned();
    Publisher::new(640, 360, 25)
        .no_audio()
        .realtime()
        .zerolatency()
        .yuv420p()
        .fixed_gop(25)
        .format("hls")
        .output_args(["-hls_time", "1", "-hls_list_size", "6"])
        .output_args(["-hls_flags", "delete_segments+program_date_time"])
        .output_args(["-hls_segment_filename", &segments])
        .spawn(&dir.join("index.m3u8").to_string_lossy())
}

/// Waits until ffmpeg's playlist lists enough segments for hls.js to start.
fn wait_for_segments(playlist: &Path) {
    wait_until(
        DEADLINE,
        &format!(
            "ffmpeg writes {SEGMENTS_BEFORE_PLAYING} segments to {}",
            playlist.display()
        ),
        || {
            std::fs::read_to_string(playlist)
                .map_or(0, |p| p.lines().filter(|l| l.ends_with(".ts")).count())
                >= SEGMENTS_BEFORE_PLAYING
        },
    );
}

/// A static file server for `/hls/<STREAM>/<file>` from `dir`, with the CORS header the
/// origin sends, so the page on the admin port may load it from another port.
async fn hls_server(dir: PathBuf) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind hls server");
    let addr = listener.local_addr().expect("hls addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let dir = dir.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 2048];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/");
                let prefix = format!("/hls/{STREAM}/");
                let file = path
                    .strip_prefix(&prefix)
                    .filter(|f| !f.contains('/') && !f.contains(".."))
                    .map(|f| f.split('?').next().unwrap_or(f));
                let found = match file {
                    Some(f) => tokio::fs::read(dir.join(f))
                        .await
                        .ok()
                        .map(|b| (f.to_string(), b)),
                    None => None,
                };
                let (status, ctype, body) = match found {
                    Some((f, b)) if f.ends_with(".m3u8") => {
                        ("200 OK", "application/vnd.apple.mpegurl", b)
                    }
                    Some((_, b)) => ("200 OK", "video/mp2t", b),
                    None => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nAccess-Control-Allow-Origin: *\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, task)
}

fn hls_js_dir() -> PathBuf {
    let dir = workspace().join(switcher_ctl::config::DEFAULT_ASSETS_DIR);
    assert!(
        dir.join("hls.min.js").is_file(),
        "hls.js is not installed at {}: run `npm ci --prefix web` in {} (setup does)",
        dir.display(),
        workspace().display()
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_shows_live_state_and_plays_the_stream() {
    require_tool("chromium", "apt-get install -y chromium");
    require_tool("ffmpeg", "apt-get install -y ffmpeg");
    let assets_dir = hls_js_dir();

    // The stream the player plays, on its own port as the VIP is.
    let hls = temp_dir("hls");
    let hls_dir = hls.0.clone();
    let _ffmpeg = start_ffmpeg(&hls_dir);
    let (hls_addr, hls_task) = hls_server(hls_dir.clone()).await;

    // The service: primary stale, backup fresh and one MSN ahead, seven flows on the backup.
    let primary =
        TestServer::start(Arc::new(|_| Reply::ok(playlist_aged(PRIMARY_MSN, STALE)))).await;
    let backup = TestServer::start(Arc::new(|_| Reply::ok(playlist_aged(BACKUP_MSN, FRESH)))).await;
    let dp = FakeDataPlane::new(ORIGIN_PRIMARY);
    dp.state().flows[switcher_common::ORIGIN_BACKUP as usize] = BACKUP_FLOWS;
    let config = Config {
        primary_base_url: primary.base_url(),
        backup_base_url: backup.base_url(),
        check_interval_seconds: INTERVAL_SECONDS,
        // The playlist servers answer every path with the playlist: no segments to check.
        probe_segments: false,
        assets_dir,
        player_url: Some(format!("http://{hls_addr}/hls/{STREAM}/index.m3u8")),
        ..Config::default()
    }
    .validate()
    .expect("valid config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind admin");
    let admin = listener.local_addr().expect("admin addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(switcher_ctl::service::run(
        config,
        Box::new(dp.clone()),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));

    // The asset route answers before any browser is involved.
    let (status, _) = common::http(admin, "GET", "/assets/hls.min.js", "").await;
    assert_eq!(status, 200, "/assets/hls.min.js");

    let playlist = hls_dir.join("index.m3u8");
    tokio::task::spawn_blocking(move || wait_for_segments(&playlist))
        .await
        .expect("segment wait");

    let profile = temp_dir("chromium");
    let browser = tokio::task::spawn_blocking(move || {
        let (chromium, port) = start_chromium(&format!("http://{admin}/"), &profile.0);
        let mut page = Cdp::attach(port);

        // Live state, as rendered by the page's own script from /api/state.
        page.wait_for(
            "page polled /api/state",
            "Number(document.body.dataset.updates || 0)",
            |v| v.as_f64() >= Some(2.0),
        );
        page.wait_for(
            "active origin is the backup",
            "document.querySelector('#summary b').textContent",
            |v| v == "backup",
        );
        let msn = page.wait_for(
            "backup MSN shown",
            "document.querySelector('#origin-backup .msn').textContent",
            |v| v == &BACKUP_MSN.to_string(),
        );
        assert_eq!(msn, BACKUP_MSN.to_string());
        assert_eq!(
            page.eval("document.querySelector('#origin-primary .msn').textContent"),
            PRIMARY_MSN.to_string()
        );
        assert_eq!(
            page.eval("document.querySelector('#origin-primary .health').textContent"),
            "unhealthy"
        );
        assert_eq!(
            page.eval("document.querySelector('#origin-backup .health').textContent"),
            "healthy"
        );
        assert_eq!(
            page.eval("document.querySelector('#origin-backup .flows').textContent"),
            BACKUP_FLOWS.to_string()
        );
        let decisions = page.eval("document.getElementById('decisions').textContent");
        assert!(
            decisions
                .as_str()
                .is_some_and(|d| d.contains("failover") && d.contains("active_unhealthy")),
            "the failover and its reason are listed: {decisions}"
        );
        // The plot: the backup's line has at least two points (the history samples once a second).
        page.wait_for(
            "segment-age plot has a line for the backup",
            "(document.getElementById('age-backup')?.getAttribute('d') || '').split('L').length",
            |v| v.as_f64() >= Some(2.0),
        );

        // The player: hls.js loads the stream cross-origin and the video advances.
        let (_, t1) = page.wait_video_advances("player", MIN_ADVANCE_SECONDS);
        let shown = page.eval("Number(document.getElementById('player-time').textContent)");
        assert!(
            shown.as_f64() > Some(0.0),
            "the page shows the player position: {shown}"
        );

        if let Some(path) = std::env::var_os("STATUS_PAGE_SCREENSHOT") {
            let shot = page.call("Page.captureScreenshot", json!({"format": "png"}));
            let png = base64::engine::general_purpose::STANDARD
                .decode(shot["data"].as_str().expect("screenshot data"))
                .expect("screenshot is base64");
            std::fs::write(&path, png).expect("write screenshot");
        }
        // Chromium first, then its profile.
        drop(chromium);
        drop(profile);
        t1
    })
    .await;

    let _ = stop.send(());
    let _ = service.await;
    hls_task.abort();
    let t1 = browser.expect("browser checks");
    assert!(t1 > MIN_ADVANCE_SECONDS, "the video advanced to {t1}");
}

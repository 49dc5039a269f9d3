//! A packager restarted on the output of an earlier run (issue 12): the earlier run's playlist
//! is still on disk and an origin serves it until the new run writes its own, so every segment
//! it lists must stay until then, plus the grace period (RFC 8216 6.2.2).
//!
//! The earlier run is the library fed with an ffmpeg FLV; the restarted one is the `packager`
//! binary, first with its ingest down (the publisher is not back yet), then with an in-process
//! ingest and a live ffmpeg publisher.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use packager::writer::{PLAYLIST_NAME, Writer};
use packager::{Config, Event, Output, Packager};
use test_kit::Publisher;
use test_kit::process::Killed;

const STREAM: &str = "demo";
/// Short, so the test sees deletions soon; the rule is the same for the default 14 s.
const GRACE_SECS: u64 = 1;
/// Generous bound on each wait (a loaded CI machine, the packager's reconnect backoff of up to
/// 8 s); the waits end on what they wait for, not on this.
const WAIT: Duration = Duration::from_secs(90);

/// Segment file names in `dir`.
fn segment_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("stream dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ts") && !n.starts_with('.'))
        .collect()
}

/// The segment names the playlist on disk lists.
fn listed(dir: &Path) -> Vec<String> {
    let text = std::fs::read(dir.join(PLAYLIST_NAME)).expect("a playlist is on disk");
    let playlist = m3u8_rs::parse_media_playlist_res(&text).expect("playlist parses");
    playlist.segments.into_iter().map(|s| s.uri).collect()
}

/// What an origin would serve now must be complete: every listed segment exists.
fn assert_listed_segments_exist(dir: &Path, when: &str) {
    for name in listed(dir) {
        assert!(
            dir.join(&name).exists(),
            "{when}: the playlist on disk lists {name}, which is gone (an origin answers 404)"
        );
    }
}

/// The earlier run: 20 s of test pattern packaged into `dir`, retired segments kept (its
/// grace period had not passed when it stopped). Returns (listed, retired) names.
fn earlier_run(tmp: &Path, dir: &Path) -> (Vec<String>, Vec<String>) {
    let tags = make_flv(tmp, 20, 60);
    let mut packager = Packager::new(Config::default());
    let mut writer = Writer::new(dir, Duration::from_secs(3600));
    let now = Instant::now();
    writer.apply(packager.push(metadata(START_MS, 1)), now);
    let mut retired = Vec::new();
    for event in events(&tags) {
        let outputs = packager.push(event);
        retired.extend(outputs.iter().filter_map(|o| match o {
            Output::Retire(r) => Some(r.info.file_name()),
            _ => None,
        }));
        writer.apply(outputs, now);
    }
    writer.apply(packager.push(Event::EndOfSession), now);
    (listed(dir), retired)
}

fn spawn_packager(port: u16, out: &Path) -> Killed {
    let child = Command::new(env!("CARGO_BIN_EXE_packager"))
        .args([
            "--source",
            &format!("rtmp://127.0.0.1:{port}/live/{STREAM}"),
        ])
        .arg("--out")
        .arg(out)
        .args(["--admin", "127.0.0.1:0"])
        .args(["--delete-grace", &GRACE_SECS.to_string()])
        .args(["--connect-timeout-ms", "1000"])
        .stdin(Stdio::null())
        .spawn()
        .expect("start the packager binary");
    Killed(child)
}

fn spawn_publisher(port: u16) -> Killed {
    Publisher::new(320, 240, 30)
        .realtime()
        .seconds(60)
        .fixed_gop(60)
        .spawn(&format!("rtmp://127.0.0.1:{port}/live/{STREAM}"))
}

/// Polls `done` every 20 ms, checking the playlist on disk each time, until `done` or [`WAIT`].
fn wait_checking(dir: &Path, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        assert_listed_segments_exist(dir, what);
        if done() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_restarted_packager_never_deletes_what_the_served_playlist_lists() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let dir = out.join(STREAM);
    let (old_listed, old_retired) = earlier_run(tmp.path(), &dir);
    assert!(
        !old_listed.is_empty() && !old_retired.is_empty(),
        "the earlier run left listed ({old_listed:?}) and retired ({old_retired:?}) segments"
    );

    // The ingest is not back yet: nothing listens on the port, the packager retries.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        probe.local_addr().expect("local addr").port()
    };
    let _packager = spawn_packager(port, &out);

    // Readiness: the earlier run's retired segments are gone once the grace period has passed
    // and the packager has run its deletions.
    wait_checking(&dir, "before this run's first playlist", || {
        let files = segment_files(&dir);
        old_retired.iter().all(|n| !files.contains(n))
    });
    for name in &old_listed {
        assert!(
            dir.join(name).exists(),
            "{name} was deleted while the earlier playlist still lists it"
        );
    }

    // The ingest and the publisher come back; this run writes its own playlist.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .expect("bind the ingest port");
    let (stop_ingest, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = ingest::Server::new(ingest::Config::default());
    let ingest_task = rt.spawn(ingest::run_with_admin(listener, None, server, async move {
        let _ = stopped.await;
    }));
    let _publisher = spawn_publisher(port);
    wait_checking(&dir, "around this run's first playlist", || {
        !listed(&dir).iter().any(|n| old_listed.contains(n))
    });
    // The earlier run's listed segments go too, once their grace period after the
    // replacement has passed: a restart still does not fill the disk.
    wait_checking(&dir, "after this run's first playlist", || {
        let files = segment_files(&dir);
        old_listed.iter().all(|n| !files.contains(n))
    });
    let _ = stop_ingest.send(());
    let _ = rt.block_on(ingest_task);
}

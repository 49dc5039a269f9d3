//! Live: ffmpeg publishes a test pattern to our ingest (in-process, port 0); two packagers
//! started 3.5 s apart pull it over RTMP; every segment both wrote is byte-identical and listed
//! alike.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use packager::metrics::Metrics;
use packager::source::{Pipeline, RtmpConnector};
use packager::writer::{PLAYLIST_NAME, Writer};
use packager::{Config, Packager};
use tokio_util::sync::CancellationToken;

/// Seconds of test pattern the publisher sends (real time).
const PUBLISH_SECS: u32 = 16;
const STREAM: &str = "demo";

fn start_packager(url: String, out: &Path, stop: CancellationToken) -> std::thread::JoinHandle<()> {
    let mut pipeline = Pipeline {
        stream: STREAM.into(),
        packager: Packager::new(Config::default()),
        // Keep retired segments for the comparison.
        writer: Writer::new(out.join(STREAM), Duration::from_secs(600)),
        metrics: Metrics::new(),
    };
    std::thread::spawn(move || {
        let mut connector = RtmpConnector::new(url, Duration::from_secs(5)).expect("runtime");
        pipeline.run(&mut connector, &stop);
    })
}

/// (MSN -> (EXTINF, PDT ms)) of every playlist version is not kept on disk, so compare the last
/// playlists and every segment file both wrote.
fn playlist_entries(dir: &Path) -> BTreeMap<u64, (String, i64)> {
    let text = std::fs::read(dir.join(PLAYLIST_NAME)).expect("playlist written");
    let pl = m3u8_rs::parse_media_playlist_res(&text).expect("playlist parses");
    pl.segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                pl.media_sequence + i as u64,
                (
                    format!("{}|{}", s.uri, s.duration),
                    s.program_date_time.expect("PDT").timestamp_millis(),
                ),
            )
        })
        .collect()
}

#[test]
fn two_packagers_behind_the_ingest_write_identical_segments() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().unwrap().port();
    let (stop_ingest, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = ingest::Server::new(ingest::Config::default());
    let ingest_task = rt.spawn(ingest::run_with_admin(listener, None, server, async move {
        let _ = stopped.await;
    }));
    let url = format!("rtmp://127.0.0.1:{port}/live/{STREAM}");
    let mut ffmpeg = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=30",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "sine",
        ])
        .args([
            "-t",
            &PUBLISH_SECS.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "60",
            "-keyint_min",
            "60",
        ])
        .args(["-sc_threshold", "0", "-c:a", "aac", "-f", "flv", &url])
        .stdin(Stdio::null())
        .spawn()
        .expect("ffmpeg must be installed");
    let stop = CancellationToken::new();
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = start_packager(url.clone(), &dir_a, stop.clone());
    // The backup joins mid-stream, as after a restart: the ingest gives it the GOP cache.
    std::thread::sleep(Duration::from_millis(3500));
    let b = start_packager(url, &dir_b, stop.clone());
    let status = ffmpeg.wait().expect("ffmpeg ran");
    assert!(status.success(), "publisher failed");
    // The publisher is gone; let UnpublishNotify reach both, then stop everything.
    std::thread::sleep(Duration::from_millis(500));
    stop.cancel();
    let _ = stop_ingest.send(());
    rt.block_on(ingest_task)
        .expect("ingest task")
        .expect("ingest ran");
    a.join().expect("packager a");
    b.join().expect("packager b");

    let (seg_a, seg_b) = (dir_a.join(STREAM), dir_b.join(STREAM));
    let files = |d: &Path| -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(d)
            .expect("stream dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".ts") && !n.starts_with('.'))
            .map(|n| (n.clone(), std::fs::read(d.join(&n)).unwrap()))
            .collect()
    };
    let (fa, fb) = (files(&seg_a), files(&seg_b));
    let mut common = 0;
    for (name, data) in &fb {
        let Some(other) = fa.get(name) else {
            panic!("backup wrote {name}, primary did not")
        };
        assert!(other == data, "{name} differs between the packagers");
        common::check_ts(data);
        common += 1;
    }
    // 16 s at 2 s per segment; the backup joined 3.5 s later and drops the partial one.
    assert!(
        common >= 4,
        "only {common} common segments (primary {}, backup {})",
        fa.len(),
        fb.len()
    );
    let (pa, pb) = (playlist_entries(&seg_a), playlist_entries(&seg_b));
    for (msn, entry) in &pb {
        if let Some(e) = pa.get(msn) {
            assert_eq!(e, entry, "playlist entry {msn}");
        }
    }
    assert!(pb.keys().any(|m| pa.contains_key(m)));
}

//! Live: ffmpeg publishes a test pattern to our ingest (in-process, port 0); two packagers
//! pull it over RTMP, the second from after the first wrote a segment; every segment both
//! wrote is byte-identical and listed alike.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use packager::metrics::Metrics;
use packager::source::{Connector, EventStream, Pipeline, RtmpConnector, SourceError};
use packager::writer::{PLAYLIST_NAME, Writer};
use packager::{Config, Event, Packager};
use test_kit::{Publisher, wait_until};
use tokio_util::sync::CancellationToken;

/// Seconds of test pattern the publisher sends (real time).
const PUBLISH_SECS: u32 = 16;
const STREAM: &str = "demo";
/// Bound on each wait (the publisher runs for `PUBLISH_SECS`).
const WAIT: Duration = Duration::from_secs(30);

/// The RTMP connector, counting the ends of stream (UnpublishNotify, as
/// [`Event::EndOfSession`]) the pipeline has handled: it asks for the next event only once it
/// handled the one before.
struct Counting {
    inner: RtmpConnector,
    ended: Arc<AtomicUsize>,
}

impl Connector for Counting {
    fn connect(&mut self, stop: &CancellationToken) -> Result<Box<dyn EventStream>, SourceError> {
        Ok(Box::new(Watched {
            inner: self.inner.connect(stop)?,
            end_in_hand: false,
            ended: self.ended.clone(),
        }))
    }
}

/// One session of [`Counting`].
struct Watched {
    inner: Box<dyn EventStream>,
    /// The last event given out was the end of the stream.
    end_in_hand: bool,
    ended: Arc<AtomicUsize>,
}

impl EventStream for Watched {
    fn next_event(&mut self) -> Result<Option<Event>, SourceError> {
        if std::mem::take(&mut self.end_in_hand) {
            self.ended.fetch_add(1, Ordering::SeqCst);
        }
        let next = self.inner.next_event();
        self.end_in_hand = matches!(next, Ok(Some(Event::EndOfSession)));
        next
    }

    fn set_idle_hint(&mut self, until_cut: Option<Duration>) {
        self.inner.set_idle_hint(until_cut);
    }
}

/// A packager thread, and the count of ends of stream it handled.
fn start_packager(
    url: String,
    out: &Path,
    stop: CancellationToken,
) -> (std::thread::JoinHandle<()>, Arc<AtomicUsize>) {
    let mut pipeline = Pipeline {
        stream: STREAM.into(),
        packager: Packager::new(Config::default()),
        // Keep retired segments for the comparison.
        writer: Writer::new(out.join(STREAM), Duration::from_secs(600)),
        metrics: Metrics::new(),
    };
    let ended = Arc::new(AtomicUsize::new(0));
    let mut connector = Counting {
        inner: RtmpConnector::new(url, Duration::from_secs(5)).expect("runtime"),
        ended: ended.clone(),
    };
    let thread = std::thread::spawn(move || pipeline.run(&mut connector, &stop));
    (thread, ended)
}

/// Whether `dir` holds a finished segment.
fn has_segment(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|d| {
        d.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".ts") && !name.starts_with('.')
        })
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
    let mut ffmpeg = Publisher::new(320, 240, 30)
        .realtime()
        .seconds(PUBLISH_SECS)
        .fixed_gop(60)
        .spawn(&url);
    let stop = CancellationToken::new();
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (a, a_ended) = start_packager(url.clone(), &dir_a, stop.clone());
    // The backup joins mid-stream, as after a restart: the ingest gives it the GOP cache.
    wait_until(WAIT, "the primary writes its first segment", || {
        has_segment(&dir_a.join(STREAM))
    });
    let (b, b_ended) = start_packager(url, &dir_b, stop.clone());
    assert!(ffmpeg.wait().success(), "publisher failed");
    // The publisher is gone: once both packagers handled its UnpublishNotify, stop everything.
    wait_until(WAIT, "both packagers see the end of the stream", || {
        a_ended.load(Ordering::SeqCst) >= 1 && b_ended.load(Ordering::SeqCst) >= 1
    });
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
    // 16 s at 2 s per segment; the backup joined after the first and drops the partial one.
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

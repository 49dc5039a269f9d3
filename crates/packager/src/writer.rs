//! Applies core [`Output`]s to a directory: atomic writes, retries, delayed deletion.
//!
//! - Atomic: every file is written to a hidden temporary name in the same directory and renamed
//!   over the target (rename(2) is atomic within a file system), so an HTTP origin never serves a
//!   partial playlist or segment. No fsync: readers, not crash durability, are what matters for
//!   a live window that is rewritten every 2 s.
//! - Order: a playlist is written only after every segment queued before it, so it never lists a
//!   segment that is not on disk yet.
//! - Errors (disk full, permissions): logged, counted, and the job stays queued and is retried on
//!   the next call; the queue is bounded, oldest segments give way first.
//! - Deletion: a segment that left the playlist is deleted after its RFC 8216 6.2.2 period (its
//!   duration plus the longest playlist duration that listed it, [`Retired::keep_ms`]), or after
//!   `grace` if that is longer. Segments an
//!   earlier run left behind are deleted the same way, so restarts do not fill the disk, but the
//!   period of those the earlier run's playlist still lists starts only when this run's first
//!   playlist replaces it: until then that playlist is on disk and served, and a player that
//!   loads it must be able to fetch every segment it names (see [`Writer::new`]).

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::playlist::{Retired, SegmentInfo};
use crate::segmenter::Output;

/// Name of the playlist file in the stream directory.
pub const PLAYLIST_NAME: &str = "index.m3u8";
/// Queued segment writes kept while the disk refuses them (~1 minute of 2 s segments).
const MAX_PENDING_SEGMENTS: usize = 32;

#[derive(Debug)]
enum Job {
    Segment { info: SegmentInfo, data: Vec<u8> },
    Playlist(String),
}

/// What one [`Writer::apply`] or [`Writer::tick`] call achieved, for metrics.
#[derive(Debug, Default)]
pub struct Progress {
    /// Segments now on disk.
    pub segments: Vec<SegmentInfo>,
    /// Failed write or delete attempts.
    pub errors: u64,
    /// Queued segments given up on because the queue was full.
    pub abandoned: u64,
}

/// Writes one stream's directory.
#[derive(Debug)]
pub struct Writer {
    dir: PathBuf,
    grace: Duration,
    pending: VecDeque<Job>,
    /// Due time and path, in the order queued; the front is deleted once due (an entry behind
    /// a later due time waits for it: deleted late, never early).
    to_delete: VecDeque<(Instant, PathBuf)>,
    /// An earlier run's segments that its playlist (still on disk, still served) lists. Their
    /// grace period starts when this run's first playlist replaces that one; deleting them
    /// earlier made an origin serve a playlist whose segments were gone (HTTP 404 for every
    /// player that loaded it between the deletion and this run's first segment).
    held_for_playlist: Vec<PathBuf>,
    /// How long the held segments stay after their playlist is replaced.
    held_keep: Duration,
}

impl Writer {
    /// A writer for `dir` (created on first write) deleting retired segments after their RFC
    /// 8216 6.2.2 period, and never sooner than `grace`.
    ///
    /// What an earlier run left in `dir` is cleaned up: its temporary files at once, and its
    /// segments (`<digits>.ts`) like segments that left the playlist (RFC 8216 6.2.2):
    /// - those its playlist no longer lists left it before that run stopped: deleted after
    ///   `grace` from now;
    /// - those its playlist lists (all of them if the playlist cannot be read) stay listed
    ///   until this run writes its first playlist, however late that is (the publisher may come
    ///   back minutes later): deleted after that write once `grace`, and that playlist's
    ///   duration plus its longest segment, have passed.
    ///
    /// A segment this run writes again under the same name is kept. Nothing else in the
    /// directory is touched.
    pub fn new(dir: impl Into<PathBuf>, grace: Duration) -> Self {
        let mut w = Self {
            dir: dir.into(),
            grace,
            pending: VecDeque::new(),
            to_delete: VecDeque::new(),
            held_for_playlist: Vec::new(),
            held_keep: grace,
        };
        w.adopt_leftovers(Instant::now());
        w
    }

    fn adopt_leftovers(&mut self, now: Instant) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let listed = listed_segments(&self.dir.join(PLAYLIST_NAME)).map(|(names, keep)| {
            self.held_keep = self.grace.max(keep);
            names
        });
        let (mut segments, mut held) = (0, 0);
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let path = entry.path();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = std::fs::remove_file(&path);
            } else if name
                .strip_suffix(".ts")
                .is_some_and(|stem| !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit()))
            {
                segments += 1;
                if listed.as_ref().is_none_or(|l| l.contains(name.as_ref())) {
                    self.held_for_playlist.push(path);
                    held += 1;
                } else {
                    self.to_delete.push_back((now + self.grace, path));
                }
            }
        }
        if segments > 0 {
            tracing::info!(
                dir = %self.dir.display(),
                segments,
                listed = held,
                grace = ?self.grace,
                "segments of an earlier run will be deleted after the grace period \
                 (those its playlist lists: after this run's first playlist replaces it)"
            );
        }
    }

    /// The stream directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queues the outputs and writes as much as possible.
    pub fn apply(&mut self, outputs: Vec<Output>, now: Instant) -> Progress {
        let mut progress = Progress::default();
        for o in outputs {
            match o {
                Output::Segment { info, data } => {
                    let queued = self
                        .pending
                        .iter()
                        .filter(|j| matches!(j, Job::Segment { .. }))
                        .count();
                    if queued >= MAX_PENDING_SEGMENTS
                        && let Some(pos) = self
                            .pending
                            .iter()
                            .position(|j| matches!(j, Job::Segment { .. }))
                    {
                        tracing::error!("write queue full: abandoning the oldest queued segment");
                        self.pending.remove(pos);
                        progress.abandoned += 1;
                    }
                    self.pending.push_back(Job::Segment { info, data });
                }
                Output::Playlist(text) => {
                    // Only the newest playlist matters; it lists everything queued before it.
                    self.pending.retain(|j| !matches!(j, Job::Playlist(_)));
                    self.pending.push_back(Job::Playlist(text));
                }
                Output::Retire(Retired { info, keep_ms }) => {
                    // Never shorter than the RFC's period for this segment. A due time earlier
                    // than one queued before it only delays this deletion (the queue is
                    // drained from the front), never advances another's.
                    let keep = self.grace.max(Duration::from_millis(keep_ms));
                    self.to_delete
                        .push_back((now + keep, self.dir.join(info.file_name())));
                }
                Output::Dropped(_) | Output::PartialDiscarded { .. } | Output::Discontinuity => {}
            }
        }
        self.flush(now, &mut progress);
        progress
    }

    /// Retries queued writes and deletes segments whose grace period is over.
    pub fn tick(&mut self, now: Instant) -> Progress {
        let mut progress = Progress::default();
        self.flush(now, &mut progress);
        progress
    }

    fn flush(&mut self, now: Instant, progress: &mut Progress) {
        while let Some(job) = self.pending.front() {
            let (name, bytes) = match job {
                Job::Segment { info, data } => (info.file_name(), data.as_slice()),
                Job::Playlist(text) => (PLAYLIST_NAME.to_owned(), text.as_bytes()),
            };
            match write_atomic(&self.dir, &name, bytes) {
                Ok(()) => match self.pending.pop_front() {
                    Some(Job::Segment { info, .. }) => {
                        // Written again (an earlier run's, or retired and re-published after
                        // a restart of the numbering): it is live, not due for deletion.
                        let path = self.dir.join(&name);
                        self.to_delete.retain(|(_, p)| *p != path);
                        self.held_for_playlist.retain(|p| *p != path);
                        progress.segments.push(info);
                    }
                    Some(Job::Playlist(_)) => {
                        // The earlier run's playlist is gone: its segments now count as removed
                        // from the playlist, and their grace period starts (RFC 8216 6.2.2).
                        // Due no earlier than anything queued, so `to_delete` stays in order.
                        for path in self.held_for_playlist.drain(..) {
                            self.to_delete.push_back((now + self.held_keep, path));
                        }
                    }
                    None => {}
                },
                Err(e) => {
                    tracing::error!(dir = %self.dir.display(), file = name, error = %e, "write failed; will retry");
                    progress.errors += 1;
                    break;
                }
            }
        }
        while self.to_delete.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, path)) = self.to_delete.pop_front() else {
                break;
            };
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::debug!(path = %path.display(), "deleted retired segment"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "delete failed");
                    progress.errors += 1;
                }
            }
        }
    }
}

/// File names of the segments the playlist at `path` lists, and how long they must stay
/// available once it is replaced (RFC 8216 6.2.2: the playlist's duration plus its longest
/// segment's). No names if there is no playlist; `None` if it cannot be read or parsed (the
/// caller then assumes it lists every segment).
fn listed_segments(path: &Path) -> Option<(HashSet<String>, Duration)> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some((HashSet::new(), Duration::ZERO));
        }
        Err(_) => return None,
    };
    let playlist = m3u8_rs::parse_media_playlist_res(&bytes).ok()?;
    // Durations from a file we wrote, but checked anyway: a hand-edited or corrupt value must
    // not panic (`Duration::from_secs_f32` does on negatives, NaN and overflow).
    let seconds = |s: &m3u8_rs::MediaSegment| {
        Duration::try_from_secs_f32(s.duration).unwrap_or(Duration::ZERO)
    };
    let total: Duration = playlist.segments.iter().map(seconds).sum();
    let longest = playlist
        .segments
        .iter()
        .map(seconds)
        .max()
        .unwrap_or_default();
    let names = playlist
        .segments
        .into_iter()
        .map(|s| s.uri.rsplit('/').next().unwrap_or_default().to_owned())
        .collect();
    Some((names, total + longest))
}

/// Writes `dir/name` via a temporary file and rename.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // Hidden and suffixed so an origin listing or serving `*.ts` never picks it up.
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, dir.join(name)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(msn: u64) -> SegmentInfo {
        SegmentInfo {
            msn,
            duration_ms: 2000,
            pdt_ms: 0,
            discontinuity: false,
            discontinuity_sequence: 0,
        }
    }

    #[test]
    fn writes_retries_and_deletes_after_grace() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // A file where the stream directory should be makes every write fail.
        let dir = tmp.path().join("s");
        std::fs::write(&dir, b"x").unwrap();
        let mut w = Writer::new(&dir, Duration::from_secs(10));
        let t0 = Instant::now();
        let p = w.apply(
            vec![
                Output::Segment {
                    info: info(1),
                    data: vec![1],
                },
                Output::Playlist("a".into()),
            ],
            t0,
        );
        assert_eq!(p.errors, 1);
        assert!(p.segments.is_empty());
        std::fs::remove_file(&dir).unwrap();
        let p = w.tick(t0);
        assert_eq!(p.segments, vec![info(1)]);
        assert_eq!(std::fs::read(dir.join("1.ts")).unwrap(), vec![1]);
        assert_eq!(
            std::fs::read_to_string(dir.join(PLAYLIST_NAME)).unwrap(),
            "a"
        );
        w.apply(
            vec![Output::Retire(Retired {
                info: info(1),
                keep_ms: 2000,
            })],
            t0,
        );
        w.tick(t0 + Duration::from_secs(9));
        assert!(dir.join("1.ts").exists(), "kept during the grace period");
        w.tick(t0 + Duration::from_secs(10));
        assert!(!dir.join("1.ts").exists());
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn an_earlier_runs_leftovers_are_cleaned_up_but_rewritten_segments_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        for name in [
            "5.ts",
            "6.ts",
            ".7.ts.tmp",
            "notes.txt",
            "x5.ts",
            PLAYLIST_NAME,
        ] {
            std::fs::write(dir.join(name), b"old").unwrap();
        }
        let mut w = Writer::new(dir, Duration::from_secs(1));
        assert!(
            !dir.join(".7.ts.tmp").exists(),
            "temporary files go at once"
        );
        let t0 = Instant::now();
        w.apply(
            vec![
                Output::Segment {
                    info: info(6),
                    data: vec![6],
                },
                Output::Playlist("new".into()),
            ],
            t0,
        );
        w.tick(t0 + Duration::from_millis(500));
        assert!(dir.join("5.ts").exists(), "kept during the grace period");
        w.tick(t0 + Duration::from_secs(2));
        assert!(
            !dir.join("5.ts").exists(),
            "an earlier run's segment is deleted"
        );
        assert_eq!(
            std::fs::read(dir.join("6.ts")).unwrap(),
            vec![6],
            "rewritten: kept"
        );
        for other in ["notes.txt", "x5.ts", PLAYLIST_NAME] {
            assert!(dir.join(other).exists(), "{other} is not ours to delete");
        }
    }

    fn old_playlist(msns: &[u64]) -> String {
        let mut p = crate::playlist::Playlist::new(2, 6);
        for &m in msns {
            p.push(info(m));
        }
        p.render()
    }

    /// Issue 12: after a restart, the earlier run's playlist stays on disk (and an origin serves
    /// it) until this run writes its first playlist, which can take longer than the grace
    /// period (the publisher is not back yet). The segments it lists must outlive it.
    #[test]
    fn segments_the_earlier_playlist_lists_outlive_it_by_the_grace_period() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        for name in ["3.ts", "5.ts", "6.ts"] {
            std::fs::write(dir.join(name), b"old").unwrap();
        }
        // 3.ts already left the earlier run's playlist; 5.ts and 6.ts are listed.
        std::fs::write(dir.join(PLAYLIST_NAME), old_playlist(&[5, 6])).unwrap();
        let mut w = Writer::new(dir, Duration::from_secs(1));
        let t0 = Instant::now();
        w.tick(t0 + Duration::from_secs(5));
        assert!(!dir.join("3.ts").exists(), "unlisted: deleted after grace");
        for listed in ["5.ts", "6.ts"] {
            assert!(
                dir.join(listed).exists(),
                "{listed} is listed by the playlist on disk: it must not be deleted yet"
            );
        }
        let t1 = t0 + Duration::from_secs(60);
        w.apply(
            vec![
                Output::Segment {
                    info: info(100),
                    data: vec![1],
                },
                Output::Playlist(old_playlist(&[100])),
            ],
            t1,
        );
        // Kept after the replacement for the old playlist's duration plus its longest
        // segment (4 s + 2 s), which is longer than the 1 s grace.
        w.tick(t1 + Duration::from_millis(5999));
        assert!(
            dir.join("5.ts").exists(),
            "kept for the RFC period after the playlist that listed it was replaced"
        );
        w.tick(t1 + Duration::from_secs(6));
        assert!(!dir.join("5.ts").exists() && !dir.join("6.ts").exists());
        assert!(dir.join("100.ts").exists());
    }

    #[test]
    fn an_unreadable_earlier_playlist_holds_every_leftover() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        std::fs::write(dir.join("7.ts"), b"old").unwrap();
        std::fs::write(dir.join(PLAYLIST_NAME), b"not a playlist").unwrap();
        let mut w = Writer::new(dir, Duration::ZERO);
        w.tick(Instant::now() + Duration::from_secs(5));
        assert!(dir.join("7.ts").exists(), "may be listed: kept");
    }

    /// 29.97 fps with a 60-frame GOP: 2.002 s segments, so a 6-segment playlist lasts 12.012 s
    /// and RFC 8216 6.2.2 asks for 14.014 s, more than the default `target x (window + 1)`.
    #[test]
    fn a_retired_segment_stays_for_its_rfc_period_when_longer_than_grace() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let mut w = Writer::new(dir, Duration::from_secs(14));
        let t0 = Instant::now();
        w.apply(
            vec![
                Output::Segment {
                    info: info(1),
                    data: vec![1],
                },
                Output::Playlist(old_playlist(&[1])),
            ],
            t0,
        );
        w.apply(
            vec![Output::Retire(Retired {
                info: info(1),
                keep_ms: 14_014,
            })],
            t0,
        );
        w.tick(t0 + Duration::from_millis(14_013));
        assert!(dir.join("1.ts").exists(), "within its RFC period");
        w.tick(t0 + Duration::from_millis(14_014));
        assert!(!dir.join("1.ts").exists());
    }
}

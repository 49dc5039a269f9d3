//! Segments and playlists from a real ffmpeg FLV: valid MPEG-TS, readable by ffprobe/ffmpeg,
//! playlist parsed by m3u8-rs.

mod common;

use std::time::{Duration, Instant};

use common::*;
use packager::writer::{PLAYLIST_NAME, Writer};
use packager::{Config, Event, Output, Packager};

/// Packages `tags` as one session ending with the publisher leaving; returns the outputs.
fn package_all(tags: &[packager::flv::FileTag]) -> Vec<Output> {
    let mut p = Packager::new(Config::default());
    let mut out = p.push(metadata(START_MS, 1));
    for e in events(tags) {
        out.extend(p.push(e));
    }
    out.extend(p.push(Event::EndOfSession));
    out
}

#[test]
fn segments_are_valid_ts_and_ffprobe_reads_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tags = make_flv(tmp.path(), 10, 60);
    let outputs = package_all(&tags);
    assert!(
        !outputs.iter().any(|o| matches!(o, Output::Dropped(_))),
        "clean input drops nothing"
    );
    let segments: Vec<_> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Segment { info, data } => Some((info.clone(), data.clone())),
            _ => None,
        })
        .collect();
    // 10 s with keyframes every 2 s, cut on an unaligned 2 s grid: 5 or 6 segments.
    let msns: Vec<_> = segments
        .iter()
        .map(|s| (s.0.msn, s.0.duration_ms))
        .collect();
    assert!(segments.len() >= 5, "got segments {msns:?}");
    for w in segments.windows(2) {
        assert_eq!(w[1].0.msn, w[0].0.msn + 1, "consecutive numbers");
        assert_eq!(
            w[1].0.pdt_ms,
            w[0].0.pdt_ms + w[0].0.duration_ms,
            "PDT + EXTINF = next PDT"
        );
    }
    for (info, data) in &segments {
        assert_eq!(info.msn, info.pdt_ms / 2000, "name from stream time");
        let s = check_ts(data);
        assert_eq!(s.stream_types, vec![0x1b, 0x0f], "PMT lists H.264 and AAC");
        assert!(s.video_pes > 0 && s.audio_pes > 0);
        // DTS is stream time in 90 kHz (mod 2^33): the first frame's is the PDT's.
        assert_eq!(s.first_video_dts, Some((info.pdt_ms * 90) % (1 << 33)));
        let path = tmp.path().join(info.file_name());
        std::fs::write(&path, data).unwrap();
        let (codecs, duration) = ffprobe(&path);
        assert_eq!(codecs, vec!["aac", "h264"], "segment {}", info.msn);
        let extinf = info.duration_ms as f64 / 1000.0;
        assert!(
            (duration - extinf).abs() < 0.1,
            "segment {}: ffprobe {duration} vs EXTINF {extinf}",
            info.msn
        );
    }
}

#[test]
fn playlist_parses_and_ffmpeg_plays_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tags = make_flv(tmp.path(), 20, 60);
    let outputs = package_all(&tags);
    let dir = tmp.path().join("demo");
    let mut writer = Writer::new(&dir, Duration::from_secs(60));
    let progress = writer.apply(outputs, Instant::now());
    assert_eq!(progress.errors, 0);
    let text = std::fs::read_to_string(dir.join(PLAYLIST_NAME)).expect("playlist written");
    let pl =
        m3u8_rs::parse_media_playlist_res(text.as_bytes()).expect("m3u8-rs parses the playlist");
    assert_eq!(pl.target_duration, 2);
    assert_eq!(pl.segments.len(), 6, "window of 6");
    assert!(!pl.end_list, "live playlist");
    for (i, seg) in pl.segments.iter().enumerate() {
        let msn = pl.media_sequence + i as u64;
        assert_eq!(seg.uri, format!("{msn}.ts"));
        assert!(
            seg.duration.round() as u64 <= pl.target_duration,
            "EXTINF rounds to <= target (RFC 8216 4.3.3.1)"
        );
        let pdt = seg
            .program_date_time
            .expect("PDT on every segment")
            .timestamp_millis() as u64;
        assert_eq!(pdt / 2000, msn);
        assert!(dir.join(&seg.uri).exists());
    }
    // Retired segments are still on disk (grace period), nothing half-written is.
    assert!(
        std::fs::read_dir(&dir).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp"))
    );
    let out = std::process::Command::new("ffmpeg")
        // A live playlist: start from its first segment, stop after one reload without news.
        .args([
            "-v",
            "error",
            "-live_start_index",
            "0",
            "-m3u8_hold_counters",
            "1",
            "-i",
        ])
        .arg(dir.join(PLAYLIST_NAME))
        .args(["-c", "copy", "-f", "null", "-"])
        .output()
        .expect("ffmpeg must be installed");
    assert!(
        out.status.success(),
        "ffmpeg reads the playlist: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "ffmpeg reports no errors: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

//! Bad input yields dropped frames or discontinuities, never a corrupt segment.

mod common;

use common::*;
use packager::segmenter::DropReason;
use packager::{Config, Event, Output, Packager};

fn run(cfg: Config, events: Vec<Event>) -> Vec<Output> {
    let mut p = Packager::new(cfg);
    let mut out = Vec::new();
    for e in events {
        out.extend(p.push(e));
    }
    out.extend(p.push(Event::EndOfSession));
    out
}

fn segments(out: &[Output]) -> Vec<(packager::playlist::SegmentInfo, &Vec<u8>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Segment { info, data } => Some((info.clone(), data)),
            _ => None,
        })
        .collect()
}

fn dropped(out: &[Output], reason: DropReason) -> usize {
    out.iter()
        .filter(|o| **o == Output::Dropped(reason))
        .count()
}

fn shift(e: Event, by: i64) -> Event {
    let f = |t: u32| (i64::from(t) + by) as u32;
    match e {
        Event::Video { timestamp_ms, data } => Event::Video {
            timestamp_ms: f(timestamp_ms),
            data,
        },
        Event::Audio { timestamp_ms, data } => Event::Audio {
            timestamp_ms: f(timestamp_ms),
            data,
        },
        other => other,
    }
}

#[test]
fn missing_metadata_or_sequence_headers_drop_frames() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tags = make_flv(tmp.path(), 4, 60);
    let out = run(Config::default(), events(&tags));
    assert!(segments(&out).is_empty());
    assert!(dropped(&out, DropReason::NoMetadata) > 100);

    let no_headers: Vec<_> = tags
        .iter()
        .filter(|t| !is_sequence_header(t))
        .cloned()
        .collect();
    let mut ev = vec![metadata(START_MS, 1)];
    ev.extend(events(&no_headers));
    let out = run(Config::default(), ev);
    assert!(segments(&out).is_empty());
    assert!(dropped(&out, DropReason::NoSequenceHeader) > 100);
}

#[test]
fn unsupported_codec_and_oversized_frames_are_dropped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tags = make_flv(tmp.path(), 4, 60);
    let mut ev = vec![metadata(START_MS, 1)];
    ev.extend(events(&tags));
    // VP6 video (codec id 4) and MP3 audio (format 2) in the middle of the stream.
    ev.insert(
        40,
        Event::Video {
            timestamp_ms: 1000,
            data: bytes(&[0x24, 0, 0, 0]),
        },
    );
    ev.insert(
        41,
        Event::Audio {
            timestamp_ms: 1000,
            data: bytes(&[0x2f, 0xff]),
        },
    );
    let cfg = Config {
        max_frame_bytes: 6000,
        ..Config::default()
    };
    let out = run(cfg, ev);
    assert_eq!(dropped(&out, DropReason::UnsupportedCodec), 2);
    assert!(
        dropped(&out, DropReason::Oversized) > 0,
        "IDR frames exceed 6000 bytes"
    );
    for (_, data) in segments(&out) {
        check_ts(data);
    }
}

#[test]
fn timestamp_jumps_are_discontinuities_and_small_steps_back_are_dropped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tags = make_flv(tmp.path(), 12, 60);
    let all = events(&tags);
    let half = all.len() / 2;
    let mut ev = vec![metadata(START_MS, 5)];
    ev.extend(all[..half].iter().cloned());
    // A frame 100 ms in the past: dropped.
    ev.push(shift(all[half - 1].clone(), -100));
    // Then the rest 30 s later: a forward jump.
    ev.extend(all[half..].iter().cloned().map(|e| shift(e, 30_000)));
    let out = run(Config::default(), ev);
    assert!(dropped(&out, DropReason::NonMonotonic) >= 1);
    assert!(out.contains(&Output::Discontinuity));
    let segs = segments(&out);
    let after = segs
        .iter()
        .find(|(i, _)| i.discontinuity)
        .expect("a segment after the jump carries DISCONTINUITY");
    assert_eq!(after.0.discontinuity_sequence, 6);
    assert!(
        after.0.msn > 850_000_010,
        "numbers follow stream time across the jump"
    );
    for w in segs.windows(2) {
        assert!(w[1].0.msn > w[0].0.msn);
        assert!(
            w[0].0.duration_ms <= 2100,
            "no segment swallows the jump: {:?}",
            w[0].0
        );
    }
    for (_, data) in &segs {
        check_ts(data);
    }

    // A backwards jump of 60 s: rebased, so numbers still grow.
    let mut ev = vec![metadata(START_MS + 120_000, 6)];
    ev.extend(all[..half].iter().cloned().map(|e| shift(e, 60_000)));
    ev.extend(all[half..].iter().cloned());
    let out = run(Config::default(), ev);
    let segs = segments(&out);
    assert!(segs.iter().any(|(i, _)| i.discontinuity));
    for w in segs.windows(2) {
        assert!(
            w[1].0.msn > w[0].0.msn && w[1].0.pdt_ms > w[0].0.pdt_ms,
            "{:?} then {:?}",
            w[0].0,
            w[1].0
        );
    }
}

//! `Packager::ms_until_cut`, the hint a live source sleeps on: it never promises more quiet
//! stream time than there is before the next segment is published, and right after a cut it
//! promises most of a target duration (so a source really can read rarely).

mod common;

use common::*;
use packager::{Config, Event, Output, Packager};

fn timestamp(e: &Event) -> Option<u32> {
    match e {
        Event::Video { timestamp_ms, .. } | Event::Audio { timestamp_ms, .. } => {
            Some(*timestamp_ms)
        }
        _ => None,
    }
}

#[test]
fn hint_never_overshoots_the_next_segment_and_is_long_after_a_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    for gop in [30, 60] {
        let tags = make_flv(dir.path(), 9, gop);
        let mut p = Packager::new(Config::default());
        assert_eq!(p.ms_until_cut(), None, "no stream yet");
        p.push(metadata(START_MS, 1));

        // (newest timestamp so far, hint) after each event, and the timestamps of the events
        // that published a segment.
        let mut hints: Vec<(u32, Option<u64>)> = Vec::new();
        let mut cuts: Vec<u32> = Vec::new();
        let mut newest = 0;
        for e in events(&tags) {
            let ts = timestamp(&e).expect("media event");
            let published = p
                .push(e)
                .iter()
                .any(|o| matches!(o, Output::Segment { .. }));
            if published {
                cuts.push(ts);
            }
            newest = newest.max(ts);
            hints.push((newest, p.ms_until_cut()));
        }
        assert!(cuts.len() >= 3, "gop {gop}: segments published: {cuts:?}");
        assert_eq!(
            hints[0].1, None,
            "gop {gop}: no segment before the first keyframe"
        );

        for &(at, hint) in &hints {
            let Some(h) = hint else { continue };
            if let Some(&next) = cuts.iter().find(|&&c| c > at) {
                assert!(
                    u64::from(next - at) >= h,
                    "gop {gop}: hint {h} ms at ts {at}, but a segment was published at ts {next}"
                );
            }
        }
        // Right after every cut, the next boundary is most of a target duration away.
        for &c in &cuts {
            let (_, h) = hints
                .iter()
                .find(|(at, _)| *at >= c)
                .expect("hint after a cut");
            let h = h.expect("a segment is open after a cut");
            assert!(
                h >= 1000,
                "gop {gop}: only {h} ms of quiet promised after the cut at {c}"
            );
        }
    }
}

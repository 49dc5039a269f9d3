//! `Packager::ms_until_cut`, the hint a live source sleeps on: with a regular GOP it never
//! promises more quiet stream time than there is before the next segment is published, and
//! once the GOP length is known it is exact (so a source really can read rarely, even when
//! keyframes fall well after the target-duration boundaries, as they do in general).

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
fn hint_never_overshoots_the_next_segment_and_predicts_it_once_the_gop_is_known() {
    let dir = tempfile::tempdir().expect("tempdir");
    for gop in [30, 60] {
        let tags = make_flv(dir.path(), 9, gop);
        let mut p = Packager::new(Config::default());
        assert_eq!(p.ms_until_cut(), None, "no stream yet");
        p.push(metadata(START_MS, 1));

        // (newest timestamp so far, keyframes seen, hint) after each event, and the
        // timestamps of the events that published a segment.
        let mut hints: Vec<(u32, usize, Option<u64>)> = Vec::new();
        let mut cuts: Vec<u32> = Vec::new();
        let (mut newest, mut keyframes) = (0, 0);
        for tag in tags
            .iter()
            .filter(|t| t.kind != packager::flv::TagType::Script)
        {
            keyframes += usize::from(is_video_keyframe(tag));
            let e = events(std::slice::from_ref(tag)).remove(0);
            let ts = timestamp(&e).expect("media event");
            let published = p
                .push(e)
                .iter()
                .any(|o| matches!(o, Output::Segment { .. }));
            if published {
                cuts.push(ts);
            }
            newest = newest.max(ts);
            hints.push((newest, keyframes, p.ms_until_cut()));
        }
        assert!(cuts.len() >= 3, "gop {gop}: segments published: {cuts:?}");
        assert_eq!(
            hints[0].2, None,
            "gop {gop}: no segment before the first keyframe"
        );

        let mut checked = 0;
        for &(at, keys, hint) in &hints {
            let Some(h) = hint else { continue };
            let Some(&next) = cuts.iter().find(|&&c| c > at) else {
                continue;
            };
            let quiet = u64::from(next - at);
            assert!(
                h <= quiet,
                "gop {gop}: hint {h} ms at ts {at}, but a segment was published at ts {next}"
            );
            if keys >= 2 {
                // GOP length known: the prediction is the next cut, to a frame's accuracy.
                assert!(
                    h + 50 >= quiet,
                    "gop {gop}: hint {h} ms at ts {at}, but nothing is published until ts {next}"
                );
                checked += 1;
            }
        }
        assert!(checked > 100, "gop {gop}: {checked} predictions checked");
    }
}

//! Two instances fed the same session from different starting points agree on every segment
//! they both publish: name, EXTINF, PROGRAM-DATE-TIME, discontinuity numbering and bytes.

mod common;

use std::collections::BTreeMap;

use common::*;
use packager::playlist::SegmentInfo;
use packager::{Config, Event, Output, Packager};

/// Published segments by MSN.
type Segments = BTreeMap<u64, (SegmentInfo, Vec<u8>)>;

fn run(events: Vec<Event>) -> (Segments, Option<String>) {
    let mut p = Packager::new(Config::default());
    let mut segs = BTreeMap::new();
    let mut playlist = None;
    for e in events {
        for o in p.push(e) {
            match o {
                Output::Segment { info, data } => {
                    assert!(
                        segs.insert(info.msn, (info, data)).is_none(),
                        "a number is published once"
                    );
                }
                Output::Playlist(text) => playlist = Some(text),
                _ => {}
            }
        }
    }
    (segs, playlist)
}

fn full(tags: &[packager::flv::FileTag], start: u64, session: u64) -> Vec<Event> {
    let mut ev = vec![metadata(start, session)];
    ev.extend(events(tags));
    ev
}

fn assert_agree(
    a: &BTreeMap<u64, (SegmentInfo, Vec<u8>)>,
    b: &BTreeMap<u64, (SegmentInfo, Vec<u8>)>,
) -> usize {
    let mut common = 0;
    for (msn, (info_b, data_b)) in b {
        let (info_a, data_a) = a
            .get(msn)
            .unwrap_or_else(|| panic!("joiner published {msn}, which the primary did not"));
        assert_eq!(
            info_a, info_b,
            "segment {msn}: name, EXTINF, PDT, discontinuity"
        );
        assert!(data_a == data_b, "segment {msn}: bytes differ");
        common += 1;
    }
    common
}

/// GOPs of 1 s and 2 s against the 2 s target; the joiner starts at every keyframe in turn.
#[test]
fn late_joiner_publishes_identical_segments() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for gop in [30, 60] {
        let tags = make_flv(tmp.path(), 16, gop);
        let (a, playlist_a) = run(full(&tags, START_MS, 7));
        assert!(a.len() >= 6);
        let keyframes: Vec<usize> = (0..tags.len())
            .filter(|&i| is_video_keyframe(&tags[i]))
            .collect();
        assert!(keyframes.len() >= 8);
        for &k in &keyframes[1..keyframes.len() - 3] {
            let (b, playlist_b) = run(late_join(&tags, k, START_MS, 7));
            let common = assert_agree(&a, &b);
            // It loses at most the segment it joined in the middle of.
            let join_bucket = (START_MS + u64::from(tags[k].timestamp_ms)) / 2000;
            let expected = a.keys().filter(|m| **m > join_bucket).count();
            assert!(
                common >= expected,
                "gop {gop}, join at tag {k}: {common} common segments, expected {expected}"
            );
            if b.len() >= 6 {
                assert_eq!(
                    playlist_a, playlist_b,
                    "gop {gop}: identical playlists once the window is full"
                );
            }
        }
    }
}

/// A publisher restart: new session, new start time. Both the instance that watched it and one
/// that joined during the second session number it alike.
#[test]
fn restart_is_a_discontinuity_numbered_alike() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tags = make_flv(tmp.path(), 10, 60);
    let second_start = START_MS + 10_000 + 3_333;
    let mut a_events = full(&tags, START_MS, 7);
    a_events.push(Event::EndOfSession);
    a_events.extend(full(&tags, second_start, 8));
    a_events.push(Event::EndOfSession);
    let (a, playlist_a) = run(a_events);
    let first_of_second = a
        .values()
        .find(|(i, _)| i.pdt_ms >= second_start)
        .expect("second session published")
        .0
        .clone();
    assert!(
        first_of_second.discontinuity,
        "first segment after the restart has EXT-X-DISCONTINUITY"
    );
    assert_eq!(first_of_second.discontinuity_sequence, 8);
    let last_of_first = a
        .values()
        .rfind(|(i, _)| i.pdt_ms < second_start)
        .unwrap()
        .0
        .clone();
    assert_eq!(last_of_first.discontinuity_sequence, 7);
    assert!(
        a.keys().zip(a.keys().skip(1)).all(|(x, y)| y > x),
        "numbers keep growing"
    );
    let text = playlist_a.unwrap();
    assert!(text.contains("#EXT-X-DISCONTINUITY\n"), "{text}");
    m3u8_rs::parse_media_playlist_res(text.as_bytes()).expect("parses");

    let k = (0..tags.len())
        .filter(|&i| is_video_keyframe(&tags[i]))
        .nth(2)
        .unwrap();
    let mut b_events = late_join(&tags, k, second_start, 8);
    b_events.push(Event::EndOfSession);
    let (b, _) = run(b_events);
    let common = assert_agree(&a, &b);
    assert!(common >= 2);
}

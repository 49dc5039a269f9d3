//! The live media playlist: a sliding window of segments rendered with m3u8-rs.
//!
//! References: RFC 8216 4.3.3.1 (EXT-X-TARGETDURATION), 4.3.3.2 (EXT-X-MEDIA-SEQUENCE),
//! 4.3.3.3 (EXT-X-DISCONTINUITY-SEQUENCE), 4.3.2.3 (EXT-X-DISCONTINUITY), 4.3.2.6
//! (EXT-X-PROGRAM-DATE-TIME), 6.2.2 (live playlists: removing segments).

use std::collections::VecDeque;

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use m3u8_rs::{MediaPlaylist, MediaSegment};

/// EXT-X-VERSION 3: the lowest version that allows decimal EXTINF durations (RFC 8216 7).
const PLAYLIST_VERSION: usize = 3;
const MS_PER_SECOND: f32 = 1000.0;

/// One published segment as the playlist lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Media sequence number; also the segment's file name stem.
    pub msn: u64,
    /// Duration in milliseconds (EXTINF).
    pub duration_ms: u64,
    /// UNIX time in milliseconds of the segment's first frame (EXT-X-PROGRAM-DATE-TIME).
    pub pdt_ms: u64,
    /// An EXT-X-DISCONTINUITY tag precedes this segment.
    pub discontinuity: bool,
    /// Its Discontinuity Sequence Number (RFC 8216 4.3.3.3): assigned by the segmenter from the
    /// ingest's session id, so instances agree without having seen the same history.
    pub discontinuity_sequence: u64,
}

impl SegmentInfo {
    /// The segment's file name: `<MSN>.ts`.
    pub fn file_name(&self) -> String {
        segment_file_name(self.msn)
    }
}

/// File name of the segment with media sequence number `msn`.
pub fn segment_file_name(msn: u64) -> String {
    format!("{msn}.ts")
}

/// A segment that left the playlist window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retired {
    /// The segment.
    pub info: SegmentInfo,
    /// How long, in ms, it must stay available from now on (RFC 8216 6.2.2): its duration plus
    /// the duration of the longest playlist that listed it. With segments of exactly the target
    /// duration that is `target x (window + 1)`; longer segments (a keyframe interval above the
    /// target, 29.97 fps timing) need more.
    pub keep_ms: u64,
}

/// A listed segment and the longest playlist duration (ms) that has listed it so far.
#[derive(Debug, Clone)]
struct Listed {
    info: SegmentInfo,
    longest_playlist_ms: u64,
}

/// A sliding-window live playlist.
#[derive(Debug, Clone)]
pub struct Playlist {
    target_duration_secs: u64,
    window: usize,
    entries: VecDeque<Listed>,
}

impl Playlist {
    /// An empty playlist with the given EXT-X-TARGETDURATION and window length.
    pub fn new(target_duration_secs: u64, window: usize) -> Self {
        Self {
            target_duration_secs,
            window: window.max(1),
            entries: VecDeque::new(),
        }
    }

    /// Appends a segment and returns the segments that left the window, each with how long it
    /// must stay available (RFC 8216 6.2.2).
    ///
    /// The media sequence number of every segment must equal its position-derived number
    /// (EXT-X-MEDIA-SEQUENCE + index, RFC 8216 6.2.1), and ours are names derived from stream
    /// time. So when a number is skipped (frames lost while reconnecting, a keyframe interval
    /// longer than the target duration), the older segments are retired at once rather than
    /// listed with numbers that would change on the next reload.
    pub fn push(&mut self, seg: SegmentInfo) -> Vec<Retired> {
        let mut retired = Vec::new();
        let contiguous = self
            .entries
            .back()
            .is_none_or(|last| last.info.msn + 1 == seg.msn);
        if !contiguous {
            tracing::warn!(
                msn = seg.msn,
                "media sequence gap: restarting the playlist window"
            );
            while let Some(old) = self.pop_front() {
                retired.push(old);
            }
        }
        self.entries.push_back(Listed {
            info: seg,
            longest_playlist_ms: 0,
        });
        while self.entries.len() > self.window {
            if let Some(old) = self.pop_front() {
                retired.push(old);
            }
        }
        // The playlist about to be published lists every entry: remember its duration.
        let total_ms = self.entries.iter().map(|e| e.info.duration_ms).sum();
        for e in &mut self.entries {
            e.longest_playlist_ms = e.longest_playlist_ms.max(total_ms);
        }
        retired
    }

    fn pop_front(&mut self) -> Option<Retired> {
        self.entries.pop_front().map(|e| Retired {
            keep_ms: e.info.duration_ms.saturating_add(e.longest_playlist_ms),
            info: e.info,
        })
    }

    /// Segments currently listed, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &SegmentInfo> {
        self.entries.iter().map(|e| &e.info)
    }

    /// EXT-X-DISCONTINUITY-SEQUENCE: the first segment's number, less one if a DISCONTINUITY tag
    /// precedes it (the tag counts towards it). When the segment with the tag leaves the window
    /// the value grows by one, as RFC 8216 6.2.2 requires.
    pub fn discontinuity_sequence(&self) -> u64 {
        self.entries.front().map_or(0, |e| {
            e.info
                .discontinuity_sequence
                .saturating_sub(u64::from(e.info.discontinuity))
        })
    }

    /// Renders the playlist text.
    pub fn render(&self) -> String {
        let segments = self
            .entries()
            .map(|e| MediaSegment {
                uri: e.file_name(),
                duration: e.duration_ms as f32 / MS_PER_SECOND,
                discontinuity: e.discontinuity,
                program_date_time: Some(pdt(e.pdt_ms)),
                ..Default::default()
            })
            .collect();
        let playlist = MediaPlaylist {
            version: Some(PLAYLIST_VERSION),
            target_duration: self.target_duration_secs,
            media_sequence: self.entries.front().map_or(0, |e| e.info.msn),
            discontinuity_sequence: self.discontinuity_sequence(),
            segments,
            ..Default::default()
        };
        let mut out = Vec::new();
        playlist
            .write_to(&mut out)
            .expect("writing to a Vec cannot fail");
        String::from_utf8(out).expect("m3u8-rs writes UTF-8")
    }
}

fn pdt(ms: u64) -> DateTime<FixedOffset> {
    let utc = Utc
        .timestamp_millis_opt(ms as i64)
        .single()
        .unwrap_or_default();
    utc.fixed_offset()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(msn: u64, discontinuity: bool) -> SegmentInfo {
        SegmentInfo {
            msn,
            duration_ms: 2000,
            pdt_ms: msn * 2000,
            discontinuity,
            discontinuity_sequence: 7 + u64::from(msn >= 10),
        }
    }

    #[test]
    fn window_slides_and_counts_discontinuities() {
        let mut p = Playlist::new(2, 3);
        assert!(p.push(seg(10, true)).is_empty());
        p.push(seg(11, false));
        p.push(seg(12, false));
        let retired = p.push(seg(13, false));
        assert_eq!(
            retired,
            vec![Retired {
                info: seg(10, true),
                // Its 2 s plus the longest playlist that listed it: 10, 11, 12 (6 s).
                keep_ms: 2000 + 6000,
            }]
        );
        let text = p.render();
        let parsed = m3u8_rs::parse_media_playlist_res(text.as_bytes()).expect("parses");
        assert_eq!(parsed.media_sequence, 11);
        assert_eq!(parsed.discontinuity_sequence, 8);
        assert_eq!(parsed.target_duration, 2);
        assert_eq!(parsed.segments[0].uri, "11.ts");
        assert_eq!(
            parsed.segments[0]
                .program_date_time
                .unwrap()
                .timestamp_millis(),
            22000
        );
    }

    #[test]
    fn gap_restarts_window() {
        let mut p = Playlist::new(2, 6);
        p.push(seg(1, false));
        p.push(seg(2, false));
        let retired = p.push(seg(5, true));
        assert_eq!(retired.len(), 2);
        assert_eq!(p.entries().map(|e| e.msn).collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn longer_segments_are_kept_longer() {
        let mut p = Playlist::new(2, 2);
        let long = |msn, duration_ms| SegmentInfo {
            duration_ms,
            ..seg(msn, false)
        };
        p.push(long(1, 2002));
        p.push(long(2, 3000));
        p.push(long(3, 2000));
        let retired = p.push(long(4, 2000));
        // 2 was listed with 1 (5002 ms) and with 3 (5000 ms).
        assert_eq!(retired[0].info.msn, 2);
        assert_eq!(retired[0].keep_ms, 3000 + 5002);
    }
}

//! Shared test helpers: FLV fixtures made with ffmpeg, event builders, a TS checker.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use packager::flv::{self, FileTag, TagType};
use packager::ts::{self, PACKET_LEN, PID_AUDIO, PID_PAT, PID_PMT, PID_VIDEO, SYNC_BYTE};
use packager::{Event, Metadata};

/// A stream start time that is not aligned to the 2 s target, so bucket edges fall mid-GOP.
pub const START_MS: u64 = 1_700_000_000_777;

/// Runs ffmpeg to make a test-pattern FLV (H.264 + AAC) of `secs` seconds with keyframes every
/// `gop` frames at 30 fps, and returns its tags.
pub fn make_flv(dir: &Path, secs: u32, gop: u32) -> Vec<FileTag> {
    let path = dir.join(format!("src-{secs}-{gop}.flv"));
    if !path.exists() {
        test_kit::Publisher::new(320, 240, 30)
            .seconds(secs)
            .fixed_gop(gop)
            .encode(&path);
    }
    flv::read_file(&std::fs::read(&path).expect("read flv")).expect("parse flv")
}

/// Metadata as the ingest would announce it.
pub fn metadata(start_ms: u64, session: u64) -> Event {
    Event::Metadata(Metadata {
        stream_start_time_ms: start_ms,
        session_id: session,
    })
}

/// Audio/video events of the tags, in order.
pub fn events(tags: &[FileTag]) -> Vec<Event> {
    tags.iter()
        .filter_map(|t| match t.kind {
            TagType::Audio => Some(Event::Audio {
                timestamp_ms: t.timestamp_ms,
                data: t.data.clone(),
            }),
            TagType::Video => Some(Event::Video {
                timestamp_ms: t.timestamp_ms,
                data: t.data.clone(),
            }),
            TagType::Script => None,
        })
        .collect()
}

pub fn is_sequence_header(t: &FileTag) -> bool {
    matches!(t.kind, TagType::Audio | TagType::Video) && t.data.len() > 1 && t.data[1] == 0
}

pub fn is_video_keyframe(t: &FileTag) -> bool {
    t.kind == TagType::Video && t.data.len() > 1 && t.data[0] >> 4 == 1 && t.data[1] == 1
}

/// What a late joiner gets from the ingest: metadata, sequence headers, then everything from
/// the keyframe at tag index `from`.
pub fn late_join(tags: &[FileTag], from: usize, start_ms: u64, session: u64) -> Vec<Event> {
    let mut ev = vec![metadata(start_ms, session)];
    let headers: Vec<FileTag> = tags
        .iter()
        .filter(|t| is_sequence_header(t))
        .cloned()
        .collect();
    ev.extend(events(&headers));
    ev.extend(events(&tags[from..]).into_iter().filter(|e| !matches!(e, Event::Video { data, .. } | Event::Audio { data, .. } if data.len() > 1 && data[1] == 0)));
    ev
}

pub fn bytes(b: &'static [u8]) -> Bytes {
    Bytes::from_static(b)
}

/// What a segment contained, as checked by [`check_ts`].
#[derive(Debug, Default)]
pub struct TsSummary {
    pub video_pes: usize,
    pub audio_pes: usize,
    pub pcrs: Vec<u64>,
    pub first_video_dts: Option<u64>,
    pub stream_types: Vec<u8>,
}

/// Checks a segment: 188-byte packets with sync bytes, PAT then PMT first (with valid CRCs),
/// continuity counters without gaps (elementary streams from 0 to 15, so consecutive segments
/// continue each other), PCR increasing, PES headers with PTS (and
/// DTS increasing on video). Also reads it with the `mpeg2ts` crate.
pub fn check_ts(data: &[u8]) -> TsSummary {
    assert!(
        !data.is_empty() && data.len().is_multiple_of(PACKET_LEN),
        "segment length {} not a multiple of 188",
        data.len()
    );
    let mut cc: HashMap<u16, u8> = HashMap::new();
    let mut s = TsSummary::default();
    let mut last_dts: HashMap<u16, u64> = HashMap::new();
    for (i, p) in data.chunks(PACKET_LEN).enumerate() {
        assert_eq!(p[0], SYNC_BYTE, "packet {i} sync");
        let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
        let pusi = p[1] & 0x40 != 0;
        let afc = (p[3] >> 4) & 3;
        if i == 0 {
            assert_eq!(pid, PID_PAT, "first packet is the PAT");
        }
        if i == 1 {
            assert_eq!(pid, PID_PMT, "second packet is the PMT");
        }
        if afc & 1 != 0 {
            let c = p[3] & 0x0f;
            // PAT/PMT count by media sequence number; elementary streams start at 0.
            let first = if pid == PID_PAT || pid == PID_PMT {
                c
            } else {
                0
            };
            let expected = cc.get(&pid).map_or(first, |prev| (prev + 1) & 0x0f);
            assert_eq!(
                c, expected,
                "continuity counter of pid {pid:#x} at packet {i}"
            );
            cc.insert(pid, c);
        }
        let mut payload_start = 4;
        if afc & 2 != 0 {
            let len = usize::from(p[4]);
            assert!(len <= 183, "adaptation field length");
            if len > 0 && p[5] & 0x10 != 0 {
                let b = &p[6..12];
                let base = (u64::from(b[0]) << 25)
                    | (u64::from(b[1]) << 17)
                    | (u64::from(b[2]) << 9)
                    | (u64::from(b[3]) << 1)
                    | u64::from(b[4] >> 7);
                if let Some(prev) = s.pcrs.last() {
                    assert!(base > *prev, "PCR increasing: {base} after {prev}");
                }
                s.pcrs.push(base);
            }
            payload_start = 5 + len;
        }
        let payload = &p[payload_start..];
        if pusi && (pid == PID_PAT || pid == PID_PMT) {
            let sec = &payload[1..];
            let len = ((usize::from(sec[1]) & 0x0f) << 8) | usize::from(sec[2]);
            assert_eq!(
                ts::crc32_mpeg2(&sec[..3 + len]),
                0,
                "PSI CRC of pid {pid:#x}"
            );
            if pid == PID_PMT {
                let mut pos = 12;
                while pos < 3 + len - 4 {
                    s.stream_types.push(sec[pos]);
                    pos += 5;
                }
            }
        }
        if pusi && (pid == PID_VIDEO || pid == PID_AUDIO) {
            assert_eq!(&payload[..3], &[0, 0, 1], "PES start code");
            let flags = payload[7] >> 6;
            assert!(flags == 2 || flags == 3, "PES has a PTS");
            let read = |b: &[u8]| {
                (u64::from(b[0] >> 1 & 7) << 30)
                    | (u64::from(b[1]) << 22)
                    | (u64::from(b[2] >> 1) << 15)
                    | (u64::from(b[3]) << 7)
                    | u64::from(b[4] >> 1)
            };
            let pts = read(&payload[9..14]);
            let dts = if flags == 3 {
                read(&payload[14..19])
            } else {
                pts
            };
            assert!(pts >= dts, "PTS >= DTS");
            if let Some(prev) = last_dts.insert(pid, dts) {
                assert!(
                    dts > prev || pid == PID_AUDIO && dts >= prev,
                    "DTS increasing on pid {pid:#x}"
                );
            }
            if pid == PID_VIDEO {
                s.video_pes += 1;
                s.first_video_dts.get_or_insert(dts);
            } else {
                s.audio_pes += 1;
            }
        }
    }
    // An independent reader.
    use mpeg2ts::ts::{ReadTsPacket, TsPacketReader};
    let mut reader = TsPacketReader::new(data);
    let mut n = 0;
    while let Some(_pkt) = reader.read_ts_packet().expect("mpeg2ts reads every packet") {
        n += 1;
    }
    assert_eq!(n, data.len() / PACKET_LEN);
    for (pid, last) in &cc {
        if *pid != PID_PAT && *pid != PID_PMT {
            assert_eq!(
                *last, 15,
                "pid {pid:#x} must end at 15 so the next segment continues it"
            );
        }
    }
    s
}

/// ffprobe's view of a file: (codec names, duration seconds).
pub fn ffprobe(path: &Path) -> (Vec<String>, f64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name:format=duration",
            "-of",
            "default=noprint_wrappers=1",
        ])
        .arg(path)
        .output()
        .expect("ffprobe must be installed (Debian package ffmpeg)");
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut codecs = Vec::new();
    let mut duration = 0.0;
    for line in text.lines() {
        if let Some(c) = line.strip_prefix("codec_name=") {
            codecs.push(c.to_owned());
        } else if let Some(d) = line.strip_prefix("duration=") {
            duration = d.parse().unwrap_or(0.0);
        }
    }
    codecs.sort();
    // Streams are listed once per program and once at top level.
    codecs.dedup();
    (codecs, duration)
}

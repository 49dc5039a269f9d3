//! Target `flv`: the input is an FLV file, i.e. a sequence of the tags a publisher sends as
//! RTMP audio, video and data messages (FLV spec v10.1 E.4). It is read twice:
//! * as one tag body, through the codec parsers directly (`flv::parse_video`/`parse_audio`,
//!   `AvcConfig`, `AacConfig`), so unstructured bytes reach them too;
//! * as a file (`flv::read_file`), its tags fed through the packager's core
//!   ([`packager::Packager::push`]) as the RTMP source feeds them, with the onMetaData numbers
//!   (stream start time, session id) taken from the file's script tags as from the ingest.
//!
//! Invariants: Annex B output starts with an access unit delimiter; ADTS frames are 7 bytes
//! longer than the raw frame and carry their own length; file tags lie inside the file; the
//! packager's core returns for every event sequence.

use bytes::Bytes;
use packager::{
    Config, Event, Packager,
    aac::{ADTS_HEADER_LEN, AacConfig},
    flv::{self, AudioTag, TagType, VideoTag},
    h264::AvcConfig,
    source::metadata_from_numbers,
};
use rtmp::amf0::{self, Value};

/// Start code + AUD, the first bytes of every converted access unit.
const ANNEX_B_AUD: [u8; 6] = [0, 0, 0, 1, 9, 0xf0];
/// The wall clock the packager would fall back to without `streamStartTimeMs` (fixed, so a
/// run is reproducible): 2025-01-01T00:00:00Z.
const FALLBACK_NOW_MS: u64 = 1_735_689_600_000;

/// Checks one access unit's conversion.
fn annex_b(cfg: &AvcConfig, au: &[u8]) {
    assert!((1..=4).contains(&cfg.nal_length_size));
    if let Ok(out) = cfg.to_annex_b(au) {
        assert!(
            out.starts_with(&ANNEX_B_AUD),
            "access unit without a leading AUD"
        );
    }
}

/// Checks one raw AAC frame's ADTS framing.
fn adts(cfg: &AacConfig, raw: &[u8]) {
    if let Ok(out) = cfg.to_adts(raw) {
        assert_eq!(out.len(), raw.len() + ADTS_HEADER_LEN);
        assert_eq!(&out[..2], &[0xff, 0xf1], "ADTS syncword");
        let frame_length = (usize::from(out[3] & 0x03) << 11)
            | (usize::from(out[4]) << 3)
            | usize::from(out[5] >> 5);
        assert_eq!(frame_length, out.len(), "ADTS frame_length");
        assert_eq!(&out[ADTS_HEADER_LEN..], raw);
    }
}

/// The whole input as a single tag body and as codec configurations.
fn as_body(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    match flv::parse_video(&body) {
        Ok(VideoTag::SequenceHeader(rec)) => {
            if let Ok(cfg) = AvcConfig::parse(&rec) {
                annex_b(&cfg, &rec);
            }
        }
        Ok(VideoTag::Nalu { data, .. }) => {
            for size in 0..4u8 {
                // The same access unit under each NAL length size a config can declare.
                let cfg = AvcConfig::parse(&[
                    1,
                    0x64,
                    0,
                    0x1f,
                    0xfc | size,
                    0xe1,
                    0,
                    1,
                    0x67,
                    1,
                    0,
                    1,
                    0x68,
                ])
                .expect("a minimal valid record");
                annex_b(&cfg, &data);
            }
        }
        Ok(VideoTag::EndOfSequence) | Err(_) => {}
    }
    match flv::parse_audio(&body) {
        Ok(AudioTag::SequenceHeader(asc)) => {
            if let Ok(cfg) = AacConfig::parse(&asc) {
                adts(&cfg, &asc);
            }
        }
        Ok(AudioTag::Raw(raw)) => {
            let lc_44k_stereo = AacConfig::parse(&[0x12, 0x10]).expect("valid config");
            adts(&lc_44k_stereo, &raw);
        }
        Err(_) => {}
    }
    if let Ok(cfg) = AvcConfig::parse(data) {
        annex_b(&cfg, data);
    }
    if let Ok(cfg) = AacConfig::parse(data) {
        adts(&cfg, data);
    }
}

/// The onMetaData numbers of a script tag (`onMetaData` or `@setDataFrame`, `onMetaData`).
fn metadata(values: &[Value]) -> Option<Event> {
    let props = values.iter().find_map(Value::properties)?;
    let numbers = props.iter().map(|(k, v)| (k.as_str(), v.as_f64()));
    Some(Event::Metadata(metadata_from_numbers(
        numbers,
        FALLBACK_NOW_MS,
    )))
}

/// The target body.
pub fn run(data: &[u8]) {
    as_body(data);

    let Ok(tags) = flv::read_file(data) else {
        return;
    };
    let mut core = Packager::new(Config::default());
    let mut saw_metadata = false;
    for tag in tags {
        assert!(tag.data.len() <= data.len());
        let event = match tag.kind {
            TagType::Script => {
                let Some(event) = amf0::decode_all(&tag.data)
                    .ok()
                    .as_deref()
                    .and_then(metadata)
                else {
                    continue;
                };
                saw_metadata = true;
                event
            }
            TagType::Audio => Event::Audio {
                timestamp_ms: tag.timestamp_ms,
                data: tag.data,
            },
            TagType::Video => Event::Video {
                timestamp_ms: tag.timestamp_ms,
                data: tag.data,
            },
        };
        if !saw_metadata {
            // As the ingest does: onMetaData (with its numbers) comes before any media.
            saw_metadata = true;
            core.push(Event::Metadata(metadata_from_numbers([], FALLBACK_NOW_MS)));
        }
        core.push(event);
    }
    core.push(Event::EndOfSession);
}

//! FLV tag bodies (what RTMP audio/video messages carry) and a small FLV file reader.
//!
//! References: Adobe "Video File Format Specification v10.1", Annex E.4.2 (AUDIODATA),
//! E.4.3 (VIDEODATA), E.4.1 (FLV tag), E.2-E.3 (file header and body).

use bytes::Bytes;

/// Errors decoding an FLV tag body or file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlvError {
    /// The tag body is shorter than its fixed header.
    #[error("FLV tag body truncated: {0} bytes")]
    Truncated(usize),
    /// A video codec other than AVC/H.264 (E.4.3.1 CodecID), or an enhanced-RTMP FourCC tag.
    #[error("unsupported video codec id {0} (only H.264/AVC, codec id 7, is supported)")]
    UnsupportedVideoCodec(u8),
    /// An audio format other than AAC (E.4.2.1 SoundFormat).
    #[error("unsupported audio format {0} (only AAC, sound format 10, is supported)")]
    UnsupportedAudioCodec(u8),
    /// The file does not start with the `FLV` signature (E.2).
    #[error("not an FLV file")]
    BadSignature,
}

/// E.4.3.1 CodecID for AVC.
const CODEC_ID_AVC: u8 = 7;
/// E.4.3.1 FrameType for a keyframe (seekable frame).
const FRAME_TYPE_KEY: u8 = 1;
/// Enhanced RTMP sets the top bit of the first byte (IsExHeader); we do not support it.
const EX_HEADER_BIT: u8 = 0x80;
/// E.4.2.1 SoundFormat for AAC.
const SOUND_FORMAT_AAC: u8 = 10;

/// A decoded video tag body (E.4.3.1 VIDEODATA with AVCVIDEOPACKET).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoTag {
    /// AVCPacketType 0: the AVCDecoderConfigurationRecord.
    SequenceHeader(Bytes),
    /// AVCPacketType 1: one access unit of length-prefixed NAL units.
    Nalu {
        /// FrameType 1 (keyframe).
        keyframe: bool,
        /// CompositionTime: PTS - DTS in milliseconds.
        cts_ms: i32,
        /// Length-prefixed NAL units.
        data: Bytes,
    },
    /// AVCPacketType 2: end of sequence (nothing to mux).
    EndOfSequence,
}

/// A decoded audio tag body (E.4.2.1 AUDIODATA with AACAUDIODATA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioTag {
    /// AACPacketType 0: the AudioSpecificConfig.
    SequenceHeader(Bytes),
    /// AACPacketType 1: one raw AAC frame.
    Raw(Bytes),
}

/// Decodes a video tag body.
pub fn parse_video(body: &Bytes) -> Result<VideoTag, FlvError> {
    // FrameType/CodecID (1) + AVCPacketType (1) + CompositionTime (3).
    const HEADER_LEN: usize = 5;
    let first = *body.first().ok_or(FlvError::Truncated(0))?;
    if first & EX_HEADER_BIT != 0 {
        return Err(FlvError::UnsupportedVideoCodec(first & 0x0f));
    }
    let codec = first & 0x0f;
    if codec != CODEC_ID_AVC {
        return Err(FlvError::UnsupportedVideoCodec(codec));
    }
    if body.len() < HEADER_LEN {
        return Err(FlvError::Truncated(body.len()));
    }
    let keyframe = first >> 4 == FRAME_TYPE_KEY;
    // SI24, sign-extended.
    let cts_ms =
        ((i32::from(body[2]) << 24) | (i32::from(body[3]) << 16) | (i32::from(body[4]) << 8)) >> 8;
    let payload = body.slice(HEADER_LEN..);
    Ok(match body[1] {
        0 => VideoTag::SequenceHeader(payload),
        1 => VideoTag::Nalu {
            keyframe,
            cts_ms,
            data: payload,
        },
        _ => VideoTag::EndOfSequence,
    })
}

/// Decodes an audio tag body.
pub fn parse_audio(body: &Bytes) -> Result<AudioTag, FlvError> {
    // SoundFormat/rate/size/type (1) + AACPacketType (1).
    const HEADER_LEN: usize = 2;
    let first = *body.first().ok_or(FlvError::Truncated(0))?;
    let format = first >> 4;
    if format != SOUND_FORMAT_AAC {
        return Err(FlvError::UnsupportedAudioCodec(format));
    }
    if body.len() < HEADER_LEN {
        return Err(FlvError::Truncated(body.len()));
    }
    let payload = body.slice(HEADER_LEN..);
    Ok(if body[1] == 0 {
        AudioTag::SequenceHeader(payload)
    } else {
        AudioTag::Raw(payload)
    })
}

/// FLV tag types (E.4.1 TagType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagType {
    /// 8
    Audio,
    /// 9
    Video,
    /// 18 (AMF0 script data, e.g. onMetaData)
    Script,
}

/// One tag of an FLV file: exactly what an RTMP message of the same type carries.
#[derive(Debug, Clone)]
pub struct FileTag {
    /// Which kind of tag.
    pub kind: TagType,
    /// Timestamp in milliseconds (24 bits + 8 extension bits).
    pub timestamp_ms: u32,
    /// The tag body.
    pub data: Bytes,
}

/// Reads every audio, video and script tag of an in-memory FLV file (E.2, E.3).
/// Unknown tag types are skipped; a truncated last tag ends the list.
pub fn read_file(file: &[u8]) -> Result<Vec<FileTag>, FlvError> {
    /// "FLV" + version + flags + u32 DataOffset.
    const FILE_HEADER_LEN: usize = 9;
    /// Each tag is followed by a u32 PreviousTagSize; the body starts with PreviousTagSize0.
    const PREV_TAG_SIZE_LEN: usize = 4;
    /// TagType(1) + DataSize(3) + Timestamp(3) + TimestampExtended(1) + StreamID(3).
    const TAG_HEADER_LEN: usize = 11;
    if file.len() < FILE_HEADER_LEN || &file[..3] != b"FLV" {
        return Err(FlvError::BadSignature);
    }
    let data_offset = u32::from_be_bytes([file[5], file[6], file[7], file[8]]) as usize;
    let mut pos = data_offset + PREV_TAG_SIZE_LEN;
    let whole = Bytes::copy_from_slice(file);
    let mut tags = Vec::new();
    while pos + TAG_HEADER_LEN <= file.len() {
        let h = &file[pos..pos + TAG_HEADER_LEN];
        let size = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
        let ts = (u32::from(h[7]) << 24)
            | (u32::from(h[4]) << 16)
            | (u32::from(h[5]) << 8)
            | u32::from(h[6]);
        let start = pos + TAG_HEADER_LEN;
        if start + size > file.len() {
            break;
        }
        let kind = match h[0] & 0x1f {
            8 => Some(TagType::Audio),
            9 => Some(TagType::Video),
            18 => Some(TagType::Script),
            _ => None,
        };
        if let Some(kind) = kind {
            tags.push(FileTag {
                kind,
                timestamp_ms: ts,
                data: whole.slice(start..start + size),
            });
        }
        pos = start + size + PREV_TAG_SIZE_LEN;
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_tag_fields() {
        let body = Bytes::from_static(&[0x17, 1, 0xff, 0xff, 0xfe, 0, 0, 0, 1, 0x65]);
        match parse_video(&body).unwrap() {
            VideoTag::Nalu {
                keyframe,
                cts_ms,
                data,
            } => {
                assert!(keyframe);
                assert_eq!(cts_ms, -2);
                assert_eq!(&data[..], &[0, 0, 0, 1, 0x65]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            parse_video(&Bytes::from_static(&[0x12, 0])),
            Err(FlvError::UnsupportedVideoCodec(2))
        );
        assert_eq!(
            parse_video(&Bytes::from_static(&[0x17, 1])),
            Err(FlvError::Truncated(2))
        );
    }

    #[test]
    fn audio_tag_fields() {
        assert_eq!(
            parse_audio(&Bytes::from_static(&[0xaf, 0, 0x12, 0x10])).unwrap(),
            AudioTag::SequenceHeader(Bytes::from_static(&[0x12, 0x10]))
        );
        assert_eq!(
            parse_audio(&Bytes::from_static(&[0x2f, 1])),
            Err(FlvError::UnsupportedAudioCodec(2))
        );
    }
}

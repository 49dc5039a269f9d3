//! Just enough of the FLV AUDIODATA/VIDEODATA headers (FLV spec v10.1 E.4.2, E.4.3, and
//! Enhanced RTMP v1/v2 for FourCC codecs) to find keyframes and sequence headers. Payloads
//! are never rewritten: Enhanced RTMP video passes through untouched.

/// FLV video frame type 1: keyframe.
const FRAME_TYPE_KEY: u8 = 1;
/// Legacy codec ids whose second byte is an AVCPacketType-style packet type
/// (7 = AVC, 12 = HEVC as sent by pre-Enhanced-RTMP encoders).
const CODECS_WITH_PACKET_TYPE: [u8; 2] = [7, 12];
/// Packet type 0: sequence header (AVC decoder config / Enhanced RTMP SequenceStart).
const PACKET_TYPE_SEQUENCE: u8 = 0;
/// Enhanced RTMP: the IsExHeader bit in the first video byte.
const VIDEO_EX_HEADER: u8 = 0x80;
/// FLV sound format 10: AAC.
const SOUND_FORMAT_AAC: u8 = 10;
/// Enhanced RTMP v2: sound format 9 means an ExAudioTagHeader follows.
const SOUND_FORMAT_EX_HEADER: u8 = 9;

/// What kind of video frame a VIDEODATA body carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoInfo {
    /// A keyframe (a GOP starts here); also true for sequence headers.
    pub keyframe: bool,
    /// Decoder configuration (AVCDecoderConfigurationRecord, HEVC/AV1 config, ...).
    pub sequence_header: bool,
}

/// Classifies a VIDEODATA body (legacy or Enhanced RTMP).
pub fn video_info(data: &[u8]) -> VideoInfo {
    let Some(&b0) = data.first() else {
        return VideoInfo {
            keyframe: false,
            sequence_header: false,
        };
    };
    if b0 & VIDEO_EX_HEADER != 0 {
        let frame_type = (b0 >> 4) & 0x07;
        let packet_type = b0 & 0x0f;
        return VideoInfo {
            keyframe: frame_type == FRAME_TYPE_KEY,
            sequence_header: packet_type == PACKET_TYPE_SEQUENCE,
        };
    }
    let frame_type = b0 >> 4;
    let codec = b0 & 0x0f;
    let sequence_header =
        CODECS_WITH_PACKET_TYPE.contains(&codec) && data.get(1) == Some(&PACKET_TYPE_SEQUENCE);
    VideoInfo {
        keyframe: frame_type == FRAME_TYPE_KEY,
        sequence_header,
    }
}

/// Whether an AUDIODATA body is a sequence header (AAC AudioSpecificConfig, or Enhanced
/// RTMP audio SequenceStart).
pub fn is_audio_sequence_header(data: &[u8]) -> bool {
    let Some(&b0) = data.first() else {
        return false;
    };
    match b0 >> 4 {
        SOUND_FORMAT_AAC => data.get(1) == Some(&PACKET_TYPE_SEQUENCE),
        SOUND_FORMAT_EX_HEADER => b0 & 0x0f == PACKET_TYPE_SEQUENCE,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_frames() {
        assert_eq!(
            video_info(&[0x17, 0x00]),
            VideoInfo {
                keyframe: true,
                sequence_header: true
            }
        );
        assert_eq!(
            video_info(&[0x17, 0x01]),
            VideoInfo {
                keyframe: true,
                sequence_header: false
            }
        );
        assert_eq!(
            video_info(&[0x27, 0x01]),
            VideoInfo {
                keyframe: false,
                sequence_header: false
            }
        );
        // Enhanced RTMP: key frame, SequenceStart, FourCC hvc1.
        assert_eq!(
            video_info(b"\x90hvc1"),
            VideoInfo {
                keyframe: true,
                sequence_header: true
            }
        );
        // Enhanced RTMP: inter frame, CodedFrames.
        assert_eq!(
            video_info(b"\xA1hvc1"),
            VideoInfo {
                keyframe: false,
                sequence_header: false
            }
        );
        assert_eq!(
            video_info(&[]),
            VideoInfo {
                keyframe: false,
                sequence_header: false
            }
        );
        assert!(is_audio_sequence_header(&[0xAF, 0x00]));
        assert!(!is_audio_sequence_header(&[0xAF, 0x01]));
        assert!(is_audio_sequence_header(b"\x90Opus"));
        assert!(!is_audio_sequence_header(&[0x2F]));
    }
}

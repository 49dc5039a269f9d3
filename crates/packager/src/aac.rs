//! AAC elementary stream preparation: AudioSpecificConfig parsing and ADTS framing, since
//! MPEG-TS carries AAC as ADTS (stream_type 0x0F, ISO/IEC 13818-1 Table 2-34).
//!
//! References: ISO/IEC 14496-3 1.6.2.1 (AudioSpecificConfig), 1.A.2.2 (adts_fixed_header,
//! adts_variable_header).

/// Errors decoding AAC configuration or frames.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AacError {
    /// The AudioSpecificConfig is shorter than 2 bytes.
    #[error("AudioSpecificConfig truncated")]
    TruncatedConfig,
    /// ADTS can only signal object types 1-4 (profile is 2 bits) and indexed sample rates.
    #[error(
        "AAC object type {object_type} / frequency index {freq_index} cannot be carried in ADTS"
    )]
    NotAdtsCompatible {
        /// audioObjectType from the config.
        object_type: u8,
        /// samplingFrequencyIndex from the config.
        freq_index: u8,
    },
    /// The frame plus header does not fit the 13-bit ADTS frame_length.
    #[error("AAC frame of {0} bytes too large for ADTS")]
    FrameTooLarge(usize),
}

/// ADTS header without CRC (protection_absent = 1).
pub const ADTS_HEADER_LEN: usize = 7;
/// frame_length is 13 bits and includes the header.
const ADTS_MAX_FRAME_LEN: usize = (1 << 13) - 1;
/// samplingFrequencyIndex 15 means an explicit 24-bit rate, which ADTS cannot express.
const FREQ_INDEX_EXPLICIT: u8 = 15;
/// Sample rates for samplingFrequencyIndex 0..=12 (14496-3 Table 1.18).
const SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// The fields of an AudioSpecificConfig that ADTS needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AacConfig {
    /// audioObjectType (2 = AAC LC).
    pub object_type: u8,
    /// samplingFrequencyIndex.
    pub freq_index: u8,
    /// channelConfiguration.
    pub channels: u8,
}

impl AacConfig {
    /// Parses the first two bytes of an AudioSpecificConfig.
    pub fn parse(asc: &[u8]) -> Result<Self, AacError> {
        let [a, b, ..] = *asc else {
            return Err(AacError::TruncatedConfig);
        };
        let object_type = a >> 3;
        let freq_index = ((a & 0x07) << 1) | (b >> 7);
        let channels = (b >> 3) & 0x0f;
        // The ADTS profile field is audioObjectType - 1 in 2 bits: only types 1..=4 fit.
        if !(1..=4).contains(&object_type) || freq_index == FREQ_INDEX_EXPLICIT {
            return Err(AacError::NotAdtsCompatible {
                object_type,
                freq_index,
            });
        }
        Ok(Self {
            object_type,
            freq_index,
            channels,
        })
    }

    /// Sample rate in Hz, if the index is a defined one.
    pub fn sample_rate(&self) -> Option<u32> {
        SAMPLE_RATES.get(usize::from(self.freq_index)).copied()
    }

    /// Prefixes one raw AAC frame with an ADTS header (14496-3 1.A.2.2).
    pub fn to_adts(&self, raw: &[u8]) -> Result<Vec<u8>, AacError> {
        let len = raw.len() + ADTS_HEADER_LEN;
        if len > ADTS_MAX_FRAME_LEN {
            return Err(AacError::FrameTooLarge(raw.len()));
        }
        // adts_buffer_fullness 0x7FF signals a variable-rate stream.
        const FULLNESS: usize = 0x7ff;
        let profile = self.object_type - 1;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&[
            0xff, // syncword (12 bits) ...
            0xf1, // ... ID=0 (MPEG-4), layer=00, protection_absent=1
            (profile << 6) | (self.freq_index << 2) | ((self.channels >> 2) & 0x01),
            ((self.channels & 0x03) << 6) | ((len >> 11) & 0x03) as u8,
            ((len >> 3) & 0xff) as u8,
            (((len & 0x07) << 5) | (FULLNESS >> 6)) as u8,
            ((FULLNESS & 0x3f) << 2) as u8, // number_of_raw_data_blocks_in_frame = 0
        ]);
        out.extend_from_slice(raw);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lc_44k_stereo() {
        let c = AacConfig::parse(&[0x12, 0x10]).unwrap();
        assert_eq!(
            c,
            AacConfig {
                object_type: 2,
                freq_index: 4,
                channels: 2
            }
        );
        assert_eq!(c.sample_rate(), Some(44100));
        let adts = c.to_adts(&[0xaa; 10]).unwrap();
        // Same header ffmpeg writes for a 17-byte LC 44.1 kHz stereo frame.
        assert_eq!(&adts[..7], &[0xff, 0xf1, 0x50, 0x80, 0x02, 0x3f, 0xfc]);
        assert_eq!(adts.len(), 17);
        assert!(c.to_adts(&[0; 9000]).is_err());
        assert!(AacConfig::parse(&[0xf8, 0]).is_err());
    }
}

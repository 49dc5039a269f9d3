//! H.264 elementary stream preparation: AVCDecoderConfigurationRecord parsing and conversion of
//! FLV's length-prefixed NAL units to the Annex B byte stream that MPEG-TS carries.
//!
//! References: ISO/IEC 14496-15 5.3.3.1 (AVCDecoderConfigurationRecord, NAL length size),
//! ITU-T H.264 Annex B (start codes), 7.4.1.2.3 (access unit delimiter first in an access unit),
//! ISO/IEC 13818-1 2.14 (H.264 in MPEG-2 TS: each PES carries Annex B with an AUD).

/// Errors decoding H.264 configuration or access units.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum H264Error {
    /// The AVCDecoderConfigurationRecord is shorter than its contents claim.
    #[error("AVCDecoderConfigurationRecord truncated")]
    TruncatedConfig,
    /// The record has no SPS or no PPS.
    #[error("AVCDecoderConfigurationRecord without SPS or PPS")]
    MissingParameterSets,
    /// A NAL unit length runs past the end of the access unit.
    #[error("NAL unit length {len} exceeds remaining {remaining} bytes")]
    TruncatedNal {
        /// Declared NAL length.
        len: usize,
        /// Bytes left in the access unit.
        remaining: usize,
    },
}

/// Annex B start code (4-byte form, as used before the AUD and parameter sets).
const START_CODE: [u8; 4] = [0, 0, 0, 1];
/// nal_unit_type values (H.264 Table 7-1).
const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;
const NAL_TYPE_MASK: u8 = 0x1f;
/// AUD with primary_pic_type 7 ("any slice type"), plus rbsp trailing bits (H.264 7.3.2.4).
const AUD_NAL: [u8; 2] = [NAL_AUD, 0xf0];

/// Parameter sets from the AVCDecoderConfigurationRecord.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfig {
    /// Bytes per NAL length prefix (1, 2 or 4).
    pub nal_length_size: usize,
    /// Sequence parameter sets (NAL units without start codes).
    pub sps: Vec<Vec<u8>>,
    /// Picture parameter sets.
    pub pps: Vec<Vec<u8>>,
}

impl AvcConfig {
    /// Parses an AVCDecoderConfigurationRecord (14496-15 5.3.3.1.2).
    pub fn parse(rec: &[u8]) -> Result<Self, H264Error> {
        // configurationVersion, profile, compatibility, level, lengthSizeMinusOne, numOfSPS.
        const FIXED_LEN: usize = 6;
        if rec.len() < FIXED_LEN {
            return Err(H264Error::TruncatedConfig);
        }
        let nal_length_size = usize::from(rec[4] & 0x03) + 1;
        let mut pos = 5;
        let read_sets = |count_mask: u8, pos: &mut usize| -> Result<Vec<Vec<u8>>, H264Error> {
            let count = rec.get(*pos).ok_or(H264Error::TruncatedConfig)? & count_mask;
            *pos += 1;
            let mut sets = Vec::new();
            for _ in 0..count {
                let len_bytes = rec.get(*pos..*pos + 2).ok_or(H264Error::TruncatedConfig)?;
                let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
                *pos += 2;
                sets.push(
                    rec.get(*pos..*pos + len)
                        .ok_or(H264Error::TruncatedConfig)?
                        .to_vec(),
                );
                *pos += len;
            }
            Ok(sets)
        };
        // numOfSequenceParameterSets is 5 bits; numOfPictureParameterSets is 8 bits.
        let sps = read_sets(0x1f, &mut pos)?;
        let pps = read_sets(0xff, &mut pos)?;
        if sps.is_empty() || pps.is_empty() {
            return Err(H264Error::MissingParameterSets);
        }
        Ok(Self {
            nal_length_size,
            sps,
            pps,
        })
    }

    /// Converts one access unit of length-prefixed NAL units to Annex B: an AUD first, then, when
    /// the unit holds an IDR slice, SPS and PPS (so every segment decodes on its own, RFC 8216
    /// 3 "each segment ... must contain enough information to decode"), then the NAL units.
    /// In-band AUDs are dropped so there is exactly one per access unit.
    pub fn to_annex_b(&self, au: &[u8]) -> Result<Vec<u8>, H264Error> {
        let nals = split_nals(au, self.nal_length_size)?;
        let has_idr = nals
            .iter()
            .any(|n| n.first().map(|b| b & NAL_TYPE_MASK) == Some(NAL_IDR));
        let mut out = Vec::with_capacity(au.len() + 64);
        out.extend_from_slice(&START_CODE);
        out.extend_from_slice(&AUD_NAL);
        if has_idr {
            for set in self.sps.iter().chain(&self.pps) {
                out.extend_from_slice(&START_CODE);
                out.extend_from_slice(set);
            }
        }
        for nal in nals {
            let kind = nal.first().map(|b| b & NAL_TYPE_MASK);
            // Parameter sets already written before the IDR; AUD written above.
            if kind == Some(NAL_AUD) || (has_idr && matches!(kind, Some(NAL_SPS | NAL_PPS))) {
                continue;
            }
            out.extend_from_slice(&START_CODE);
            out.extend_from_slice(nal);
        }
        Ok(out)
    }
}

fn split_nals(mut au: &[u8], length_size: usize) -> Result<Vec<&[u8]>, H264Error> {
    let mut nals = Vec::new();
    while !au.is_empty() {
        if au.len() < length_size {
            return Err(H264Error::TruncatedNal {
                len: length_size,
                remaining: au.len(),
            });
        }
        let len = au[..length_size]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        au = &au[length_size..];
        if len > au.len() {
            return Err(H264Error::TruncatedNal {
                len,
                remaining: au.len(),
            });
        }
        if len > 0 {
            nals.push(&au[..len]);
        }
        au = &au[len..];
    }
    Ok(nals)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AvcConfig {
        let rec = [
            1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 2, 0x67, 0xaa, 1, 0, 2, 0x68, 0xbb,
        ];
        AvcConfig::parse(&rec).expect("valid record")
    }

    #[test]
    fn parses_record() {
        let c = config();
        assert_eq!(c.nal_length_size, 4);
        assert_eq!(c.sps, vec![vec![0x67, 0xaa]]);
        assert_eq!(c.pps, vec![vec![0x68, 0xbb]]);
        assert_eq!(
            AvcConfig::parse(&[1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 9]),
            Err(H264Error::TruncatedConfig)
        );
    }

    #[test]
    fn idr_gets_aud_and_parameter_sets() {
        let au = [0, 0, 0, 2, 0x09, 0xf0, 0, 0, 0, 2, 0x65, 0x88];
        let out = config().to_annex_b(&au).unwrap();
        assert_eq!(
            out,
            [
                0, 0, 0, 1, 9, 0xf0, 0, 0, 0, 1, 0x67, 0xaa, 0, 0, 0, 1, 0x68, 0xbb, 0, 0, 0, 1,
                0x65, 0x88
            ]
        );
        let p = config().to_annex_b(&[0, 0, 0, 2, 0x41, 0x9a]).unwrap();
        assert_eq!(p, [0, 0, 0, 1, 9, 0xf0, 0, 0, 0, 1, 0x41, 0x9a]);
        assert!(config().to_annex_b(&[0, 0, 0, 9, 0x41]).is_err());
    }
}

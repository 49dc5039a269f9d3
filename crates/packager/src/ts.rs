//! Deterministic MPEG-2 transport stream muxer (ISO/IEC 13818-1).
//!
//! One [`TsMuxer`] produces one HLS segment: it starts with PAT and PMT (RFC 8216 3.2: "each
//! Transport Stream segment MUST contain a PAT and a PMT" at its start). The bytes are a
//! function of the frames, their timestamps and the segment's media sequence number only (no
//! clock, no state carried over from earlier segments), which is what makes two packager
//! instances that joined at different times write identical segments.
//!
//! Continuity counters are nevertheless continuous from one segment to the next, so a player
//! that reads consecutive segments as one transport stream (ffmpeg does) sees no discontinuity
//! (2.4.3.3) and flags no packet as corrupt: every elementary stream starts each segment at 0
//! and is padded to a multiple of 16 packets (its last PES is spread over a few more packets,
//! with adaptation-field stuffing), so it ends at 15; PAT and PMT, one packet each per segment,
//! take the media sequence number modulo 16.
//!
//! Hand-written rather than built on the `mpeg2ts` crate's writer: that writer leaves PES
//! packetisation, stuffing and continuity counters to the caller, which is most of the work and
//! exactly the part whose determinism matters here. `mpeg2ts` is used in the tests instead, as an
//! independent reader that checks what we write.

/// Size of every transport packet (2.4.3.2).
pub const PACKET_LEN: usize = 188;
/// sync_byte (2.4.3.3).
pub const SYNC_BYTE: u8 = 0x47;
/// Transport packet header length.
const HEADER_LEN: usize = 4;
/// Payload bytes in a packet without adaptation field.
const PAYLOAD_LEN: usize = PACKET_LEN - HEADER_LEN;

/// PID of the Program Association Table (Table 2-3).
pub const PID_PAT: u16 = 0x0000;
/// PID we give the Program Map Table (any of 0x0010..0x1FFE; 0x1000 is what ffmpeg uses).
pub const PID_PMT: u16 = 0x1000;
/// PID of the H.264 elementary stream; also the PCR_PID.
pub const PID_VIDEO: u16 = 0x0100;
/// PID of the AAC elementary stream.
pub const PID_AUDIO: u16 = 0x0101;
/// program_number of our single program.
const PROGRAM_NUMBER: u16 = 1;
/// transport_stream_id (PAT); only meaningful across multiplexes, so a fixed 1.
const TRANSPORT_STREAM_ID: u16 = 1;

/// stream_type for AVC video (Table 2-34).
const STREAM_TYPE_H264: u8 = 0x1b;
/// stream_type for ISO/IEC 13818-7 ADTS AAC (Table 2-34).
const STREAM_TYPE_AAC_ADTS: u8 = 0x0f;
/// table_id values (Table 2-31).
const TABLE_ID_PAT: u8 = 0x00;
const TABLE_ID_PMT: u8 = 0x02;

/// PES stream_id for the first video / audio stream (Table 2-22).
const STREAM_ID_VIDEO: u8 = 0xe0;
const STREAM_ID_AUDIO: u8 = 0xc0;

/// Timestamps are 33-bit counters of a 90 kHz clock (2.4.3.7).
pub const TIMESTAMP_MODULUS: u64 = 1 << 33;
/// 90 kHz ticks per millisecond.
pub const TICKS_PER_MS: u64 = 90;
/// PCR runs this far behind the video DTS, so audio interleaved slightly before a video frame in
/// stream order is still "in the future" of the PCR (T-STD buffering, 2.4.2). 300 ms covers the
/// audio/video interleaving of common RTMP publishers.
const PCR_LEAD_TICKS: u64 = 300 * TICKS_PER_MS;

/// Adaptation field flags (2.4.3.5).
const AF_RANDOM_ACCESS: u8 = 0x40;
const AF_PCR: u8 = 0x10;
/// adaptation_field_control values (Table 2-5), already shifted into header byte 3.
const AFC_PAYLOAD_ONLY: u8 = 0x10;
const AFC_AF_AND_PAYLOAD: u8 = 0x30;
/// payload_unit_start_indicator bit in header byte 1.
const PUSI: u8 = 0x40;
/// Stuffing byte value (2.4.3.5 stuffing_byte; also PSI padding after a section).
const STUFFING: u8 = 0xff;
/// Continuity counter is 4 bits.
const CC_MASK: u8 = 0x0f;
/// PCR is 6 bytes in the adaptation field.
const PCR_LEN: usize = 6;

/// A PES packet held back until the next one of its stream arrives, so the last one of the
/// segment can be spread over the packets that bring the stream to a multiple of 16.
#[derive(Debug)]
struct PendingPes {
    pes: Vec<u8>,
    pcr: Option<u64>,
    random_access: bool,
}

/// Writes one segment's transport stream into memory.
#[derive(Debug)]
pub struct TsMuxer {
    out: Vec<u8>,
    cc_pat: u8,
    cc_pmt: u8,
    cc_video: u8,
    cc_audio: u8,
    pending_video: Option<PendingPes>,
    pending_audio: Option<PendingPes>,
}

impl TsMuxer {
    /// Starts segment `msn`: PAT, then a PMT listing video and, if `with_audio`, audio.
    pub fn new(with_audio: bool, msn: u64) -> Self {
        // One PAT and one PMT per segment: counting them by the sequence number makes them
        // continuous across consecutive segments.
        let psi_cc = (msn % 16) as u8;
        let mut m = Self {
            out: Vec::with_capacity(1 << 20),
            cc_pat: psi_cc,
            cc_pmt: psi_cc,
            cc_video: 0,
            cc_audio: 0,
            pending_video: None,
            pending_audio: None,
        };
        let pat = pat_section();
        m.write_psi(PID_PAT, &pat);
        let pmt = pmt_section(with_audio);
        m.write_psi(PID_PMT, &pmt);
        m
    }

    /// Writes one H.264 access unit (Annex B) as a PES packet; the first TS packet carries the PCR
    /// and, for keyframes, random_access_indicator. Timestamps in 90 kHz ticks (wrapped by us).
    pub fn write_video(&mut self, pts: u64, dts: u64, keyframe: bool, annex_b: &[u8]) {
        let pes = pes_packet(STREAM_ID_VIDEO, pts, Some(dts), annex_b, false);
        let pcr = (dts + TIMESTAMP_MODULUS - PCR_LEAD_TICKS) % TIMESTAMP_MODULUS;
        let next = PendingPes {
            pes,
            pcr: Some(pcr),
            random_access: keyframe,
        };
        if let Some(p) = self.pending_video.replace(next) {
            let mut cc = self.cc_video;
            self.write_pes(PID_VIDEO, &mut cc, &p, false);
            self.cc_video = cc;
        }
    }

    /// Writes one ADTS frame as a PES packet.
    pub fn write_audio(&mut self, pts: u64, adts: &[u8]) {
        let pes = pes_packet(STREAM_ID_AUDIO, pts, None, adts, true);
        let next = PendingPes {
            pes,
            pcr: None,
            random_access: false,
        };
        if let Some(p) = self.pending_audio.replace(next) {
            let mut cc = self.cc_audio;
            self.write_pes(PID_AUDIO, &mut cc, &p, false);
            self.cc_audio = cc;
        }
    }

    /// The finished segment: the held-back last PES of each stream is written, padded so the
    /// stream's continuity counter ends at 15.
    pub fn finish(mut self) -> Vec<u8> {
        if let Some(p) = self.pending_video.take() {
            let mut cc = self.cc_video;
            self.write_pes(PID_VIDEO, &mut cc, &p, true);
            self.cc_video = cc;
        }
        if let Some(p) = self.pending_audio.take() {
            let mut cc = self.cc_audio;
            self.write_pes(PID_AUDIO, &mut cc, &p, true);
            self.cc_audio = cc;
        }
        self.out
    }

    fn write_psi(&mut self, pid: u16, section: &[u8]) {
        let cc = if pid == PID_PAT {
            &mut self.cc_pat
        } else {
            &mut self.cc_pmt
        };
        let header = packet_header(pid, true, AFC_PAYLOAD_ONLY, *cc);
        *cc = (*cc + 1) & CC_MASK;
        self.out.extend_from_slice(&header);
        // pointer_field = 0: the section starts right after it (2.4.4.2).
        self.out.push(0);
        self.out.extend_from_slice(section);
        let used = HEADER_LEN + 1 + section.len();
        self.out
            .resize(self.out.len() + PACKET_LEN - used, STUFFING);
    }

    /// Packetises one PES. With `pad`, it takes as many packets as bring the stream's packet
    /// count (tracked by `cc`) to a multiple of 16, each carrying at least one payload byte.
    fn write_pes(&mut self, pid: u16, cc: &mut u8, p: &PendingPes, pad: bool) {
        let (pes, pcr, random_access) = (&p.pes[..], p.pcr, p.random_access);
        let first_af =
            usize::from(pcr.is_some() || random_access) + if pcr.is_some() { PCR_LEN } else { 0 };
        let first_room = if first_af == 0 {
            PAYLOAD_LEN
        } else {
            PAYLOAD_LEN - 1 - first_af
        };
        let natural = 1 + pes.len().saturating_sub(first_room).div_ceil(PAYLOAD_LEN);
        let extra = if pad {
            (16 - (usize::from(*cc) + natural) % 16) % 16
        } else {
            0
        };
        // A PES is never shorter than its 14-byte header plus payload, and at most 15 packets
        // are added, so each packet can carry a byte; if not, do without the padding.
        let mut packets_left = if pes.len() >= natural + extra {
            natural + extra
        } else {
            natural
        };
        let mut rest = pes;
        let mut first = true;
        while !rest.is_empty() {
            // Adaptation field contents other than stuffing: flags byte + optional PCR.
            let mut af: Vec<u8> = Vec::new();
            if first && (pcr.is_some() || random_access) {
                let mut flags = 0;
                if random_access {
                    flags |= AF_RANDOM_ACCESS;
                }
                if pcr.is_some() {
                    flags |= AF_PCR;
                }
                af.push(flags);
                if let Some(pcr) = pcr {
                    af.extend_from_slice(&encode_pcr(pcr));
                }
            }
            // With an adaptation field, one byte goes to adaptation_field_length.
            let room = if af.is_empty() {
                PAYLOAD_LEN
            } else {
                PAYLOAD_LEN - 1 - af.len()
            };
            // Leave at least one byte for each packet still to come.
            let take = rest
                .len()
                .saturating_sub(packets_left - 1)
                .clamp(1, room)
                .min(rest.len());
            packets_left = packets_left.saturating_sub(1).max(1);
            let stuffing = room - take;
            let has_af = !af.is_empty() || stuffing > 0;
            let header = packet_header(
                pid,
                first,
                if has_af {
                    AFC_AF_AND_PAYLOAD
                } else {
                    AFC_PAYLOAD_ONLY
                },
                *cc,
            );
            *cc = (*cc + 1) & CC_MASK;
            self.out.extend_from_slice(&header);
            if has_af {
                if af.is_empty() {
                    // Stuffing-only adaptation field: its length byte is one of the stuffing
                    // bytes; if more than one is needed, a zero flags byte comes next (2.4.3.4).
                    let af_len = stuffing - 1;
                    self.out.push(af_len as u8);
                    if af_len > 0 {
                        self.out.push(0);
                        self.out.resize(self.out.len() + af_len - 1, STUFFING);
                    }
                } else {
                    self.out.push((af.len() + stuffing) as u8);
                    self.out.extend_from_slice(&af);
                    self.out.resize(self.out.len() + stuffing, STUFFING);
                }
            }
            self.out.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            first = false;
        }
    }
}

fn packet_header(pid: u16, unit_start: bool, afc: u8, cc: u8) -> [u8; HEADER_LEN] {
    let pusi = if unit_start { PUSI } else { 0 };
    [
        SYNC_BYTE,
        pusi | ((pid >> 8) as u8 & 0x1f),
        pid as u8,
        afc | (cc & CC_MASK),
    ]
}

/// PES packet (2.4.3.6) with PTS and optionally DTS; `bounded` sets PES_packet_length, which
/// may be 0 ("unbounded") only for video in a transport stream (2.4.3.7).
fn pes_packet(stream_id: u8, pts: u64, dts: Option<u64>, payload: &[u8], bounded: bool) -> Vec<u8> {
    /// '10' marker, data_alignment_indicator (the PES starts with an access unit).
    const FLAGS1: u8 = 0x84;
    const PTS_ONLY: u8 = 0x80;
    const PTS_AND_DTS: u8 = 0xc0;
    const TIMESTAMP_LEN: usize = 5;
    /// '0010' (PTS only), '0011' (PTS followed by DTS), '0001' (DTS).
    const PREFIX_PTS_ONLY: u8 = 0x2;
    const PREFIX_PTS_WITH_DTS: u8 = 0x3;
    const PREFIX_DTS: u8 = 0x1;
    // A DTS equal to the PTS must not be sent (2.4.3.7).
    let dts = dts.filter(|d| *d != pts);
    let header_data_len = if dts.is_some() {
        2 * TIMESTAMP_LEN
    } else {
        TIMESTAMP_LEN
    };
    let mut pes = Vec::with_capacity(payload.len() + 9 + header_data_len);
    pes.extend_from_slice(&[0, 0, 1, stream_id]);
    // Bytes after PES_packet_length: 2 flag bytes + PES_header_data_length + header data + payload.
    let len = 3 + header_data_len + payload.len();
    let len_field = if bounded && len <= usize::from(u16::MAX) {
        len as u16
    } else {
        0
    };
    pes.extend_from_slice(&len_field.to_be_bytes());
    pes.push(FLAGS1);
    pes.push(if dts.is_some() { PTS_AND_DTS } else { PTS_ONLY });
    pes.push(header_data_len as u8);
    match dts {
        Some(dts) => {
            pes.extend_from_slice(&encode_timestamp(PREFIX_PTS_WITH_DTS, pts));
            pes.extend_from_slice(&encode_timestamp(PREFIX_DTS, dts));
        }
        None => pes.extend_from_slice(&encode_timestamp(PREFIX_PTS_ONLY, pts)),
    }
    pes.extend_from_slice(payload);
    pes
}

/// 33-bit timestamp with marker bits (2.4.3.7, Table 2-21).
fn encode_timestamp(prefix: u8, ts: u64) -> [u8; 5] {
    let ts = ts % TIMESTAMP_MODULUS;
    [
        (prefix << 4) | (((ts >> 30) & 0x07) as u8) << 1 | 1,
        (ts >> 22) as u8,
        (((ts >> 15) & 0x7f) as u8) << 1 | 1,
        (ts >> 7) as u8,
        ((ts & 0x7f) as u8) << 1 | 1,
    ]
}

/// program_clock_reference: 33-bit base (90 kHz), 6 reserved bits, 9-bit extension (27 MHz
/// remainder, always 0 here because our clock is derived from 90 kHz DTS) (2.4.3.5).
fn encode_pcr(base: u64) -> [u8; PCR_LEN] {
    [
        (base >> 25) as u8,
        (base >> 17) as u8,
        (base >> 9) as u8,
        (base >> 1) as u8,
        (((base & 1) as u8) << 7) | 0x7e,
        0,
    ]
}

/// Program association section (2.4.4.3) for our one program.
fn pat_section() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&PROGRAM_NUMBER.to_be_bytes());
    body.extend_from_slice(&(0xe000 | PID_PMT).to_be_bytes());
    psi_section(TABLE_ID_PAT, TRANSPORT_STREAM_ID, &body)
}

/// TS program map section (2.4.4.8): PCR on the video PID, no descriptors.
fn pmt_section(with_audio: bool) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(0xe000 | PID_VIDEO).to_be_bytes()); // reserved + PCR_PID
    body.extend_from_slice(&0xf000u16.to_be_bytes()); // reserved + program_info_length 0
    let mut stream = |stream_type: u8, pid: u16| {
        body.push(stream_type);
        body.extend_from_slice(&(0xe000 | pid).to_be_bytes());
        body.extend_from_slice(&0xf000u16.to_be_bytes()); // ES_info_length 0
    };
    stream(STREAM_TYPE_H264, PID_VIDEO);
    if with_audio {
        stream(STREAM_TYPE_AAC_ADTS, PID_AUDIO);
    }
    psi_section(TABLE_ID_PMT, PROGRAM_NUMBER, &body)
}

/// Long-form PSI section: header, body, CRC_32 (2.4.4.10-11, Annex A).
fn psi_section(table_id: u8, id_extension: u16, body: &[u8]) -> Vec<u8> {
    /// section_syntax_indicator=1, '0', reserved '11'.
    const SYNTAX_BITS: u16 = 0xb000;
    /// reserved '11', version_number 0, current_next_indicator 1.
    const VERSION_CURRENT: u8 = 0xc1;
    const CRC_LEN: usize = 4;
    // id_extension(2) + version(1) + section_number(1) + last_section_number(1).
    let section_length = 5 + body.len() + CRC_LEN;
    let mut s = Vec::with_capacity(3 + section_length);
    s.push(table_id);
    s.extend_from_slice(&(SYNTAX_BITS | section_length as u16).to_be_bytes());
    s.extend_from_slice(&id_extension.to_be_bytes());
    s.extend_from_slice(&[VERSION_CURRENT, 0, 0]);
    s.extend_from_slice(body);
    let crc = crc32_mpeg2(&s);
    s.extend_from_slice(&crc.to_be_bytes());
    s
}

/// CRC-32/MPEG-2 (Annex A): polynomial 0x04C11DB7, initial 0xFFFFFFFF, no reflection, no xor-out.
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    const POLY: u32 = 0x04c1_1db7;
    let mut crc = u32::MAX;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ POLY
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_value() {
        // The catalogued check value of CRC-32/MPEG-2 for "123456789".
        assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_e6e7);
    }

    #[test]
    fn packets_are_aligned_and_counted() {
        let mut m = TsMuxer::new(true, 0);
        for i in 0..20u64 {
            m.write_video(
                i * 3000 + 6000,
                i * 3000,
                i == 0,
                &vec![0xab; 100 + 137 * i as usize],
            );
            m.write_audio(i * 3000, &[0xcd; 183]);
        }
        let out = m.finish();
        assert_eq!(out.len() % PACKET_LEN, 0);
        let mut last_cc = std::collections::HashMap::new();
        for p in out.chunks(PACKET_LEN) {
            assert_eq!(p[0], SYNC_BYTE);
            let pid = u16::from(p[1] & 0x1f) << 8 | u16::from(p[2]);
            let cc = p[3] & CC_MASK;
            if let Some(prev) = last_cc.insert(pid, cc) {
                assert_eq!(cc, (prev + 1) & CC_MASK, "pid {pid:#x}");
            } else {
                assert_eq!(cc, 0);
            }
        }
        // Every elementary stream ends at 15, so the next segment (starting at 0) continues it.
        assert_eq!(last_cc[&PID_VIDEO], 15);
        assert_eq!(last_cc[&PID_AUDIO], 15);
    }

    #[test]
    fn consecutive_segments_are_continuous() {
        let mut all = Vec::new();
        for msn in 41..45u64 {
            let mut m = TsMuxer::new(true, msn);
            for i in 0..(3 + msn % 5) {
                m.write_video(
                    i * 3000 + 6000,
                    i * 3000,
                    i == 0,
                    &vec![0xab; 50 + 331 * i as usize],
                );
                m.write_audio(i * 3000, &vec![0xcd; 7 + 17 * i as usize]);
            }
            all.extend(m.finish());
        }
        let mut last_cc = std::collections::HashMap::new();
        for (i, p) in all.chunks(PACKET_LEN).enumerate() {
            let pid = u16::from(p[1] & 0x1f) << 8 | u16::from(p[2]);
            let cc = p[3] & CC_MASK;
            if let Some(prev) = last_cc.insert(pid, cc) {
                assert_eq!(cc, (prev + 1) & CC_MASK, "pid {pid:#x} at packet {i}");
            }
        }
    }

    #[test]
    fn timestamp_encoding() {
        assert_eq!(encode_timestamp(2, 0), [0x21, 0, 1, 0, 1]);
        assert_eq!(
            encode_timestamp(2, TIMESTAMP_MODULUS - 1),
            [0x2f, 0xff, 0xff, 0xff, 0xff]
        );
    }
}

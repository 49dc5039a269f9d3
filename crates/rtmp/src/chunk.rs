//! The chunk stream (RTMP spec 1.0 section 5.3), sans-IO.
//!
//! [`ChunkDecoder::read`] turns bytes into whole messages: it parses one chunk at a time,
//! only when all of its bytes are present (so a partial chunk is never consumed), keeps per
//! chunk-stream header state for header compression (5.3.1.2), and reassembles messages
//! split across chunks, including interleaved chunk streams. Everything a peer can make us
//! hold is capped by [`Limits`].
//!
//! [`ChunkEncoder`] does the reverse. It only compresses headers in ways that keep the
//! absolute timestamp unambiguous: the first message on a chunk stream (and any message
//! whose timestamp goes backwards or changes message stream) gets a type-0 header with the
//! absolute timestamp; later ones get type 1/2 (delta) headers. Type 3 is used only for
//! continuation chunks, because implementations disagree about what a type-3 *new message*
//! after a type-0 header means (ffmpeg adds the absolute timestamp as a delta).
//!
//! [`write_absolute`] writes one message with a type-0 header and no encoder state: bytes a
//! server can serialise once and send to every peer (the ingest's fan-out).
//!
//! Both writers refuse a payload longer than [`MAX_MESSAGE_LEN`] (the 3-byte message length
//! field, 5.3.1.2.1) with [`ChunkError::TooLongToEncode`] and write nothing: a length that
//! silently wrapped would desynchronise every reader of the stream.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::HashMap;

/// Chunk size both sides start with (spec 5.4.1).
pub const DEFAULT_CHUNK_SIZE: usize = 128;
/// Longest message payload the 3-byte message length field can describe (spec 5.3.1.2.1).
pub const MAX_MESSAGE_LEN: usize = 0x00FF_FFFF;
/// Largest value of the 3-byte timestamp field; this value means "extended timestamp
/// follows" (spec 5.3.1.3).
const EXTENDED_TIMESTAMP_MARKER: u32 = 0x00FF_FFFF;
/// Largest chunk stream id a 1-byte basic header can carry (spec 5.3.1.1).
const ONE_BYTE_CSID_MAX: u32 = 63;
/// Largest chunk stream id a 2-byte basic header can carry (64 + 255).
const TWO_BYTE_CSID_MAX: u32 = 319;
/// Offset added to the csid bytes of 2- and 3-byte basic headers.
const CSID_OFFSET: u32 = 64;
/// First allocation for a reassembly buffer; it grows with the data actually received,
/// so a header that merely *declares* a big message costs nothing.
const INITIAL_REASSEMBLY_CAPACITY: usize = 16 * 1024;

/// Caps on what a peer can make the decoder hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest chunk size a peer may set with Set Chunk Size. The whole chunk is buffered
    /// before it is parsed, so this bounds the read buffer.
    pub max_chunk_size: usize,
    /// Largest message (declared length) accepted.
    pub max_message_size: usize,
    /// Most chunk streams with header state at once.
    pub max_chunk_streams: usize,
    /// Sum of declared lengths of messages being reassembled at once. A server lowers it
    /// for peers it has not authorised yet ([`ChunkDecoder::set_max_pending_bytes`]).
    pub max_pending_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // 64 KiB: OBS/ffmpeg use 4096, nginx-rtmp caps at 10 MB, but nothing needs more.
            max_chunk_size: 64 * 1024,
            // 16 MiB: a 4K intra frame at high bitrate stays below this.
            max_message_size: 16 * 1024 * 1024,
            max_chunk_streams: 64,
            max_pending_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Why the chunk stream is broken; the connection should be closed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChunkError {
    /// A message declared longer than [`Limits::max_message_size`].
    #[error("message of {0} bytes exceeds the limit")]
    MessageTooLarge(usize),
    /// A Set Chunk Size outside 1..=[`Limits::max_chunk_size`].
    #[error("chunk size {0} out of range")]
    BadChunkSize(u32),
    /// More chunk streams than [`Limits::max_chunk_streams`].
    #[error("too many chunk streams")]
    TooManyChunkStreams,
    /// More bytes pending reassembly than [`Limits::max_pending_bytes`].
    #[error("too many bytes pending reassembly")]
    TooMuchPending,
    /// A type 1/2/3 header on a chunk stream that never had a type-0 header.
    #[error("chunk stream {0} starts without a full header")]
    NoPreviousHeader(u32),
    /// (Encoding) a payload longer than [`MAX_MESSAGE_LEN`]: its length does not fit the
    /// 24-bit field, so nothing was written.
    #[error("message of {0} bytes does not fit the 24-bit RTMP length field")]
    TooLongToEncode(usize),
}

/// A reassembled message (spec 5.1 / 6.1: header fields + payload).
#[derive(Debug, Clone, PartialEq)]
pub struct RawMessage {
    /// Chunk stream it arrived on (informative; senders choose freely).
    pub csid: u32,
    /// Absolute timestamp in milliseconds (wraps at 2^32).
    pub timestamp: u32,
    /// Message type id (spec 5.4, 6.2, 7.1).
    pub type_id: u8,
    /// Message stream id (0 = the NetConnection).
    pub stream_id: u32,
    /// The payload.
    pub payload: Bytes,
}

#[derive(Debug, Default)]
struct InState {
    timestamp: u32,
    /// Timestamp field of the last header: a delta for types 1/2, the absolute value for 0
    /// (re-applied by a type-3 new message, as ffmpeg and librtmp do).
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// The last header used an extended timestamp, so type-3 chunks carry one too.
    extended: bool,
    partial: Option<BytesMut>,
}

/// Chunk stream reader: bytes in, messages out.
#[derive(Debug)]
pub struct ChunkDecoder {
    chunk_size: usize,
    limits: Limits,
    streams: HashMap<u32, InState>,
    pending: usize,
}

impl ChunkDecoder {
    /// A decoder with the default chunk size (128) and the given caps.
    pub fn new(limits: Limits) -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            limits,
            streams: HashMap::new(),
            pending: 0,
        }
    }

    /// Applies a Set Chunk Size from the peer (spec 5.4.1).
    pub fn set_chunk_size(&mut self, size: u32) -> Result<(), ChunkError> {
        if size == 0 || size as usize > self.limits.max_chunk_size {
            return Err(ChunkError::BadChunkSize(size));
        }
        self.chunk_size = size as usize;
        Ok(())
    }

    /// Changes [`Limits::max_pending_bytes`] from the next message header on (a server
    /// raises it once a peer is allowed to publish). Lowering it below
    /// [`ChunkDecoder::pending_bytes`] makes the next new message header an error.
    pub fn set_max_pending_bytes(&mut self, max: usize) {
        self.limits.max_pending_bytes = max;
    }

    /// Sum of the declared lengths of the messages being reassembled: the most the partial
    /// messages held now can grow to (what a server accounts against its memory budget).
    pub fn pending_bytes(&self) -> usize {
        self.pending
    }

    /// Applies an Abort Message (spec 5.4.2): drops the partial message on `csid`.
    pub fn abort(&mut self, csid: u32) {
        if let Some(st) = self.streams.get_mut(&csid)
            && st.partial.take().is_some()
        {
            self.pending -= st.length as usize;
        }
    }

    /// Parses as many chunks as are complete in `buf` until one finishes a message.
    /// `Ok(None)`: more bytes are needed (everything complete so far was consumed).
    pub fn read(&mut self, buf: &mut BytesMut) -> Result<Option<RawMessage>, ChunkError> {
        loop {
            match self.read_chunk(buf)? {
                Step::NeedMore => return Ok(None),
                Step::Message(m) => return Ok(Some(m)),
                Step::Continue => {}
            }
        }
    }

    fn read_chunk(&mut self, buf: &mut BytesMut) -> Result<Step, ChunkError> {
        let b = &buf[..];
        let mut pos = 0usize;
        // Basic header (5.3.1.1).
        let Some(&b0) = b.first() else {
            return Ok(Step::NeedMore);
        };
        let fmt = b0 >> 6;
        let csid = match b0 & 0x3f {
            0 => {
                let Some(&b1) = b.get(1) else {
                    return Ok(Step::NeedMore);
                };
                pos = 2;
                CSID_OFFSET + b1 as u32
            }
            1 => {
                if b.len() < 3 {
                    return Ok(Step::NeedMore);
                }
                pos = 3;
                CSID_OFFSET + b[1] as u32 + (b[2] as u32) * 256
            }
            n => {
                pos += 1;
                n as u32
            }
        };
        // Message header (5.3.1.2).
        let header_len = [11usize, 7, 3, 0][fmt as usize];
        if b.len() < pos + header_len {
            return Ok(Step::NeedMore);
        }
        let h = &b[pos..pos + header_len];
        pos += header_len;
        let u24 = |s: &[u8]| (s[0] as u32) << 16 | (s[1] as u32) << 8 | s[2] as u32;

        if !self.streams.contains_key(&csid) {
            if fmt != 0 {
                return Err(ChunkError::NoPreviousHeader(csid));
            }
            if self.streams.len() >= self.limits.max_chunk_streams {
                return Err(ChunkError::TooManyChunkStreams);
            }
        }
        let prev = self.streams.get(&csid);
        let continuing = fmt == 3 && prev.is_some_and(|p| p.partial.is_some());

        let (ts_field, length, type_id, stream_id) = match fmt {
            0 => (
                u24(&h[0..3]),
                u24(&h[3..6]),
                h[6],
                u32::from_le_bytes([h[7], h[8], h[9], h[10]]), // little-endian, 5.3.1.2.1
            ),
            1 => {
                let p = prev.expect("checked above");
                (u24(&h[0..3]), u24(&h[3..6]), h[6], p.stream_id)
            }
            2 => {
                let p = prev.expect("checked above");
                (u24(&h[0..3]), p.length, p.type_id, p.stream_id)
            }
            _ => {
                let p = prev.expect("checked above");
                let field = if p.extended {
                    EXTENDED_TIMESTAMP_MARKER
                } else {
                    p.delta
                };
                (field, p.length, p.type_id, p.stream_id)
            }
        };
        // Extended timestamp (5.3.1.3); for type 3 it is present iff the last header had one.
        let extended = if fmt == 3 {
            prev.is_some_and(|p| p.extended)
        } else {
            ts_field == EXTENDED_TIMESTAMP_MARKER
        };
        let ts_value = if extended {
            if b.len() < pos + 4 {
                return Ok(Step::NeedMore);
            }
            let v = u32::from_be_bytes([b[pos], b[pos + 1], b[pos + 2], b[pos + 3]]);
            pos += 4;
            v
        } else {
            ts_field
        };

        if length as usize > self.limits.max_message_size {
            return Err(ChunkError::MessageTooLarge(length as usize));
        }
        let already = if continuing {
            prev.and_then(|p| p.partial.as_ref()).map_or(0, |p| p.len())
        } else {
            0
        };
        let take = (length as usize - already).min(self.chunk_size);
        if b.len() < pos + take {
            return Ok(Step::NeedMore);
        }

        // The whole chunk is here: commit the header state, then the payload.
        let st = self.streams.entry(csid).or_default();
        if !continuing {
            if st.partial.take().is_some() {
                // A new header while a message was half-read: the peer abandoned it
                // (not allowed by 5.3.1.2, seen in the wild); drop it like librtmp does.
                tracing::debug!(csid, "new message header interrupts a partial message");
                self.pending -= st.length as usize;
            }
            st.timestamp = match fmt {
                0 => ts_value,
                _ => st.timestamp.wrapping_add(ts_value),
            };
            st.delta = ts_value;
            st.length = length;
            st.type_id = type_id;
            st.stream_id = stream_id;
            st.extended = extended;
            if self.pending + length as usize > self.limits.max_pending_bytes {
                return Err(ChunkError::TooMuchPending);
            }
            self.pending += length as usize;
            st.partial = Some(BytesMut::with_capacity(
                (length as usize).min(INITIAL_REASSEMBLY_CAPACITY),
            ));
        }
        let partial = st.partial.as_mut().expect("set above or continuing");
        partial.extend_from_slice(&b[pos..pos + take]);
        buf.advance(pos + take);
        if partial.len() == st.length as usize {
            let payload = st.partial.take().expect("present").freeze();
            self.pending -= st.length as usize;
            return Ok(Step::Message(RawMessage {
                csid,
                timestamp: st.timestamp,
                type_id: st.type_id,
                stream_id: st.stream_id,
                payload,
            }));
        }
        Ok(Step::Continue)
    }
}

enum Step {
    NeedMore,
    Continue,
    Message(RawMessage),
}

#[derive(Debug, Clone, Copy)]
struct OutState {
    timestamp: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
}

/// Chunk stream writer: messages in, bytes out.
#[derive(Debug)]
pub struct ChunkEncoder {
    chunk_size: usize,
    streams: HashMap<u32, OutState>,
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkEncoder {
    /// An encoder with the default chunk size (128).
    pub fn new() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            streams: HashMap::new(),
        }
    }

    /// Changes the outgoing chunk size. The caller must have written a Set Chunk Size
    /// message (with the old size) first.
    pub fn set_chunk_size(&mut self, size: usize) {
        self.chunk_size = size.max(1);
    }

    /// Current outgoing chunk size.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Forgets header state so the next message on every chunk stream gets a type-0
    /// header with an absolute timestamp (used at the start of each session).
    pub fn reset(&mut self) {
        self.streams.clear();
    }

    /// Forgets the header state of one chunk stream, after the caller wrote messages on it
    /// that did not go through this encoder (see [`write_absolute`]); the next message on
    /// `csid` gets a type-0 header.
    pub fn forget(&mut self, csid: u32) {
        self.streams.remove(&csid);
    }

    /// Appends `msg` as chunks on chunk stream `msg.csid`; a payload longer than
    /// [`MAX_MESSAGE_LEN`] is refused and nothing is written.
    pub fn write(&mut self, msg: &RawMessage, out: &mut BytesMut) -> Result<(), ChunkError> {
        self.write_parts(
            msg.csid,
            msg.timestamp,
            msg.type_id,
            msg.stream_id,
            &msg.payload,
            out,
        )
    }

    /// Appends one message given its fields (see [`ChunkEncoder::write`]).
    pub fn write_parts(
        &mut self,
        csid: u32,
        timestamp: u32,
        type_id: u8,
        stream_id: u32,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), ChunkError> {
        let length = encodable_len(payload)?;
        let prev = self.streams.get(&csid).copied();
        let (fmt, ts_field) = match prev {
            Some(p) if p.stream_id == stream_id && timestamp >= p.timestamp => {
                let delta = timestamp - p.timestamp;
                if p.length == length && p.type_id == type_id {
                    (2u8, delta)
                } else {
                    (1u8, delta)
                }
            }
            _ => (0u8, timestamp),
        };
        write_chunks(
            self.chunk_size,
            fmt,
            ts_field,
            csid,
            type_id,
            stream_id,
            payload,
            out,
        );
        self.streams.insert(
            csid,
            OutState {
                timestamp,
                length,
                type_id,
                stream_id,
            },
        );
        Ok(())
    }
}

/// The payload length as the 24-bit field carries it, or the refusal.
fn encodable_len(payload: &[u8]) -> Result<u32, ChunkError> {
    if payload.len() > MAX_MESSAGE_LEN {
        return Err(ChunkError::TooLongToEncode(payload.len()));
    }
    Ok(payload.len() as u32)
}

/// Appends one message with a type-0 header (absolute timestamp) whatever was sent before
/// on `msg.csid`, without an encoder's state.
///
/// A peer decodes a type-0 message the same way whatever it received before on that chunk
/// stream (spec 5.3.1.2.1), so these bytes can be serialised once and sent, shared, to every
/// peer that uses `chunk_size`: the fan-out path of a server. A [`ChunkEncoder`] writing on
/// the same chunk stream must then be told with [`ChunkEncoder::forget`]. A payload longer
/// than [`MAX_MESSAGE_LEN`] is refused and nothing is written.
pub fn write_absolute(
    chunk_size: usize,
    msg: &RawMessage,
    out: &mut BytesMut,
) -> Result<(), ChunkError> {
    encodable_len(&msg.payload)?;
    write_chunks(
        chunk_size.max(1),
        0,
        msg.timestamp,
        msg.csid,
        msg.type_id,
        msg.stream_id,
        &msg.payload,
        out,
    );
    Ok(())
}

/// Length of [`write_absolute`]'s output, to size a buffer once.
pub fn absolute_len(chunk_size: usize, msg: &RawMessage) -> usize {
    let chunk_size = chunk_size.max(1);
    let basic = if msg.csid <= ONE_BYTE_CSID_MAX {
        1
    } else if msg.csid <= TWO_BYTE_CSID_MAX {
        2
    } else {
        3
    };
    let ext = if msg.timestamp >= EXTENDED_TIMESTAMP_MARKER {
        4
    } else {
        0
    };
    let conts = msg.payload.len().saturating_sub(1) / chunk_size;
    basic + 11 + ext + msg.payload.len() + conts * (basic + ext)
}

/// Header `fmt` with timestamp field value `ts_field` (absolute for type 0, a delta
/// otherwise), then the payload in `chunk_size` pieces behind type-3 headers.
#[allow(clippy::too_many_arguments)]
fn write_chunks(
    chunk_size: usize,
    fmt: u8,
    ts_field: u32,
    csid: u32,
    type_id: u8,
    stream_id: u32,
    payload: &[u8],
    out: &mut BytesMut,
) {
    let length = payload.len() as u32;
    let extended = ts_field >= EXTENDED_TIMESTAMP_MARKER;
    let field = if extended {
        EXTENDED_TIMESTAMP_MARKER
    } else {
        ts_field
    };
    out.reserve(payload.len() + 18 + payload.len() / chunk_size * 8);
    write_basic_header(out, fmt, csid);
    out.put_uint(field as u64, 3);
    if fmt <= 1 {
        out.put_uint(length as u64, 3);
        out.put_u8(type_id);
    }
    if fmt == 0 {
        out.put_u32_le(stream_id);
    }
    if extended {
        out.put_u32(ts_field);
    }
    let mut rest = payload;
    let first = rest.len().min(chunk_size);
    out.put_slice(&rest[..first]);
    rest = &rest[first..];
    while !rest.is_empty() {
        write_basic_header(out, 3, csid);
        if extended {
            out.put_u32(ts_field);
        }
        let n = rest.len().min(chunk_size);
        out.put_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

fn write_basic_header(out: &mut BytesMut, fmt: u8, csid: u32) {
    let f = fmt << 6;
    if csid <= ONE_BYTE_CSID_MAX {
        out.put_u8(f | csid as u8);
    } else if csid <= TWO_BYTE_CSID_MAX {
        out.put_u8(f);
        out.put_u8((csid - CSID_OFFSET) as u8);
    } else {
        let v = csid - CSID_OFFSET;
        out.put_u8(f | 1);
        out.put_u8(v as u8);
        out.put_u8((v >> 8) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(csid: u32, ts: u32, type_id: u8, len: usize) -> RawMessage {
        RawMessage {
            csid,
            timestamp: ts,
            type_id,
            stream_id: 1,
            payload: Bytes::from(
                (0..len)
                    .map(|i| (i * 7 + csid as usize) as u8)
                    .collect::<Vec<_>>(),
            ),
        }
    }

    fn decode_all(dec: &mut ChunkDecoder, bytes: &[u8], step: usize) -> Vec<RawMessage> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(m) = dec.read(&mut buf).expect("valid stream") {
                out.push(m);
            }
        }
        assert!(buf.is_empty(), "everything consumed");
        out
    }

    #[test]
    fn round_trip_across_chunk_sizes_and_feed_sizes() {
        let msgs = vec![
            msg(4, 0, 8, 10),
            msg(6, 0, 9, 5000),
            msg(4, 23, 8, 10),
            msg(6, 33, 9, 5000),
            msg(6, 66, 9, 4999),
            msg(4, 46, 8, 0),
            msg(3, 0, 20, 300),
            msg(400, 70, 9, 129),        // 3-byte basic header
            msg(100, 70, 9, 128),        // 2-byte basic header
            msg(6, 0x0100_0000, 9, 700), // extended timestamp, continuation chunks carry it
            msg(6, 0x0100_0021, 9, 700), // delta after extended
            msg(6, 5, 9, 10),            // backwards: type 0 again
        ];
        for chunk_size in [1usize, 2, 127, 128, 129, 4096, 65536] {
            let mut enc = ChunkEncoder::new();
            enc.set_chunk_size(chunk_size);
            let mut bytes = BytesMut::new();
            for m in &msgs {
                enc.write(m, &mut bytes).expect("encodable");
            }
            for step in [1usize, 3, 1000, bytes.len()] {
                let mut dec = ChunkDecoder::new(Limits::default());
                dec.set_chunk_size(chunk_size as u32).expect("in range");
                assert_eq!(
                    decode_all(&mut dec, &bytes, step),
                    msgs,
                    "chunk {chunk_size} step {step}"
                );
            }
        }
    }

    #[test]
    fn interleaved_chunk_streams_reassemble() {
        // Hand-made: message A (csid 4, 200 bytes) and B (csid 6, 150 bytes) interleaved
        // at chunk size 128, as spec 5.3.2.2 allows.
        let a: Vec<u8> = (0..200).map(|i| i as u8).collect();
        let bdat: Vec<u8> = (0..150).map(|i| (255 - i) as u8).collect();
        let mut s = BytesMut::new();
        s.put_u8(4); // fmt 0 csid 4
        s.put_uint(1000, 3);
        s.put_uint(200, 3);
        s.put_u8(9);
        s.put_u32_le(1);
        s.put_slice(&a[..128]);
        s.put_u8(6);
        s.put_uint(1000, 3);
        s.put_uint(150, 3);
        s.put_u8(8);
        s.put_u32_le(1);
        s.put_slice(&bdat[..128]);
        s.put_u8(0xC0 | 4);
        s.put_slice(&a[128..]);
        s.put_u8(0xC0 | 6);
        s.put_slice(&bdat[128..]);
        // Type 2 header on csid 4: new message, delta 40, same length and type.
        s.put_u8(0x80 | 4);
        s.put_uint(40, 3);
        s.put_slice(&a[..128]);
        s.put_u8(0xC0 | 4);
        s.put_slice(&a[128..]);
        // Type 3 new message on csid 4: delta 40 again.
        s.put_u8(0xC0 | 4);
        s.put_slice(&a[..128]);
        s.put_u8(0xC0 | 4);
        s.put_slice(&a[128..]);
        let mut dec = ChunkDecoder::new(Limits::default());
        let got = decode_all(&mut dec, &s, 7);
        let ts: Vec<(u32, u32, usize)> = got
            .iter()
            .map(|m| (m.csid, m.timestamp, m.payload.len()))
            .collect();
        assert_eq!(
            ts,
            vec![
                (4, 1000, 200),
                (6, 1000, 150),
                (4, 1040, 200),
                (4, 1080, 200)
            ]
        );
        assert_eq!(&got[0].payload[..], &a[..]);
        assert_eq!(&got[1].payload[..], &bdat[..]);
    }

    #[test]
    fn abort_drops_partial_message() {
        let mut enc = ChunkEncoder::new();
        let mut bytes = BytesMut::new();
        enc.write(&msg(5, 0, 9, 300), &mut bytes)
            .expect("encodable");
        let mut dec = ChunkDecoder::new(Limits::default());
        let mut buf = BytesMut::from(&bytes[..140]);
        assert_eq!(dec.read(&mut buf), Ok(None));
        dec.abort(5);
        assert_eq!(dec.pending, 0);
        let mut bytes = BytesMut::new();
        enc.reset();
        enc.write(&msg(5, 10, 9, 20), &mut bytes)
            .expect("encodable");
        let mut buf = bytes;
        assert_eq!(
            dec.read(&mut buf).expect("ok").map(|m| m.payload.len()),
            Some(20)
        );
    }

    #[test]
    fn hostile_headers_are_errors() {
        let limits = Limits {
            max_message_size: 1000,
            max_chunk_streams: 2,
            max_pending_bytes: 1500,
            ..Limits::default()
        };
        // Giant declared length.
        let mut dec = ChunkDecoder::new(limits);
        let mut buf = BytesMut::from(&[0x04, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0][..]);
        assert_eq!(
            dec.read(&mut buf),
            Err(ChunkError::MessageTooLarge(0xFF_FFFF))
        );
        // Type 1 header on an unknown chunk stream.
        let mut dec = ChunkDecoder::new(limits);
        let mut buf = BytesMut::from(&[0x44, 0, 0, 0, 0, 0, 1, 9][..]);
        assert_eq!(dec.read(&mut buf), Err(ChunkError::NoPreviousHeader(4)));
        // Too many chunk streams.
        let mut dec = ChunkDecoder::new(limits);
        let mut buf = BytesMut::new();
        for csid in 2..5u8 {
            // 200-byte messages, first 128-byte chunk only: all three stay partial.
            buf.extend_from_slice(&[csid, 0, 0, 0, 0, 0, 200, 9, 1, 0, 0, 0]);
            buf.extend_from_slice(&[0u8; 128]);
        }
        assert_eq!(dec.read(&mut buf), Err(ChunkError::TooManyChunkStreams));
        assert!(dec.pending <= limits.max_pending_bytes);
        // Too many pending bytes across streams.
        let mut dec = ChunkDecoder::new(limits);
        let mut buf = BytesMut::new();
        for csid in 2..4u8 {
            buf.extend_from_slice(&[csid, 0, 0, 0, 0, 0x03, 0x20, 9, 1, 0, 0, 0]); // 800 bytes
            buf.extend_from_slice(&[0u8; 128]);
        }
        assert_eq!(dec.read(&mut buf), Err(ChunkError::TooMuchPending));
        // Chunk size out of range.
        let mut dec = ChunkDecoder::new(limits);
        assert_eq!(dec.set_chunk_size(0), Err(ChunkError::BadChunkSize(0)));
        assert_eq!(
            dec.set_chunk_size(0x7fff_ffff),
            Err(ChunkError::BadChunkSize(0x7fff_ffff))
        );
    }

    #[test]
    fn pending_bytes_follow_declared_lengths_and_the_cap_can_be_raised() {
        // A server's pre-publish cap: 1000 bytes of partial messages.
        let mut dec = ChunkDecoder::new(Limits {
            max_pending_bytes: 1000,
            ..Limits::default()
        });
        let mut enc = ChunkEncoder::new();
        let mut bytes = BytesMut::new();
        enc.write(&msg(5, 0, 9, 900), &mut bytes)
            .expect("encodable");
        // First chunk only: 900 bytes declared, 128 held.
        let mut buf = BytesMut::from(&bytes[..140]);
        assert_eq!(dec.read(&mut buf), Ok(None));
        assert_eq!(dec.pending_bytes(), 900);
        // The rest completes it: nothing pending any more.
        buf.extend_from_slice(&bytes[140..]);
        assert_eq!(
            dec.read(&mut buf).expect("ok").map(|m| m.payload.len()),
            Some(900)
        );
        assert_eq!(dec.pending_bytes(), 0);
        // A 2000-byte message is over the cap as soon as its header is complete ...
        let mut big = BytesMut::new();
        enc.write(&msg(6, 0, 9, 2000), &mut big).expect("encodable");
        let mut buf = BytesMut::from(&big[..]);
        assert_eq!(dec.read(&mut buf), Err(ChunkError::TooMuchPending));
        // ... and accepted once the cap is raised (the peer was authorised).
        let mut dec = ChunkDecoder::new(Limits {
            max_pending_bytes: 1000,
            ..Limits::default()
        });
        dec.set_max_pending_bytes(4000);
        let mut buf = BytesMut::from(&big[..]);
        assert_eq!(
            dec.read(&mut buf).expect("ok").map(|m| m.payload.len()),
            Some(2000)
        );
        // An interrupted partial message is released from the count.
        let mut buf = BytesMut::from(&bytes[..140]);
        assert_eq!(dec.read(&mut buf), Ok(None));
        assert_eq!(dec.pending_bytes(), 900);
        enc.reset();
        let mut again = BytesMut::new();
        enc.write(&msg(5, 7, 9, 10), &mut again).expect("encodable");
        let mut buf = again;
        assert_eq!(
            dec.read(&mut buf).expect("ok").map(|m| m.payload.len()),
            Some(10)
        );
        assert_eq!(dec.pending_bytes(), 0);
    }

    #[test]
    fn payloads_beyond_the_24_bit_length_are_refused_not_truncated() {
        let big = RawMessage {
            payload: Bytes::from(vec![0u8; MAX_MESSAGE_LEN + 1]),
            ..msg(5, 0, 18, 0)
        };
        let mut out = BytesMut::new();
        assert_eq!(
            write_absolute(4096, &big, &mut out),
            Err(ChunkError::TooLongToEncode(MAX_MESSAGE_LEN + 1))
        );
        let mut enc = ChunkEncoder::new();
        assert_eq!(
            enc.write(&big, &mut out),
            Err(ChunkError::TooLongToEncode(MAX_MESSAGE_LEN + 1))
        );
        assert!(out.is_empty(), "nothing written");
        // The largest encodable payload round-trips with its exact length.
        let max = RawMessage {
            payload: Bytes::from(vec![7u8; MAX_MESSAGE_LEN]),
            ..msg(5, 0, 18, 0)
        };
        write_absolute(65536, &max, &mut out).expect("fits");
        let mut dec = ChunkDecoder::new(Limits {
            max_message_size: MAX_MESSAGE_LEN,
            ..Limits::default()
        });
        dec.set_chunk_size(65536).expect("in range");
        let got = dec.read(&mut out).expect("valid").expect("whole message");
        assert_eq!(got.payload.len(), MAX_MESSAGE_LEN);
        assert!(out.is_empty());
    }

    #[test]
    fn truncated_stream_never_consumes_partial_chunk() {
        let mut enc = ChunkEncoder::new();
        let mut bytes = BytesMut::new();
        enc.write(&msg(6, 0x0200_0000, 9, 100), &mut bytes)
            .expect("encodable");
        for cut in 0..bytes.len() {
            let mut dec = ChunkDecoder::new(Limits::default());
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(dec.read(&mut buf), Ok(None), "cut {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed at cut {cut}");
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for _ in 0..2000 {
            let mut data = Vec::with_capacity(256);
            for _ in 0..256 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                data.push(x as u8);
            }
            let mut dec = ChunkDecoder::new(Limits::default());
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = dec.read(&mut buf) {}
        }
    }

    #[test]
    fn absolute_messages_decode_the_same_after_any_history() {
        // Shared fan-out bytes: whatever a peer decoded before on the chunk stream (here
        // an encoder's compressed headers), a write_absolute message decodes to itself.
        let chunk_size = 128;
        let shared: Vec<RawMessage> = vec![
            msg(6, 5000, 9, 300),
            msg(4, 4990, 8, 10),
            msg(6, 0x0100_0000, 9, 129), // extended timestamp on continuation chunks
            msg(400, 7, 9, 0),
        ];
        let mut enc = ChunkEncoder::new();
        enc.set_chunk_size(chunk_size);
        let mut bytes = BytesMut::new();
        let mut expect = Vec::new();
        for m in &shared {
            let before = msg(m.csid, m.timestamp.wrapping_add(77), 8, 20);
            enc.write(&before, &mut bytes).expect("encodable");
            expect.push(before);
            let start = bytes.len();
            write_absolute(chunk_size, m, &mut bytes).expect("encodable");
            assert_eq!(bytes.len() - start, absolute_len(chunk_size, m));
            assert_eq!(bytes[start] >> 6, 0, "type 0");
            expect.push(m.clone());
            enc.forget(m.csid);
        }
        let mut dec = ChunkDecoder::new(Limits::default());
        dec.set_chunk_size(chunk_size as u32).expect("in range");
        assert_eq!(decode_all(&mut dec, &bytes, 5), expect);
    }

    #[test]
    fn first_message_per_chunk_stream_has_type0_absolute_timestamp() {
        let mut enc = ChunkEncoder::new();
        let mut out = BytesMut::new();
        enc.write(&msg(6, 123_456, 9, 4), &mut out)
            .expect("encodable");
        assert_eq!(out[0] >> 6, 0);
        assert_eq!(&out[1..4], &[0x01, 0xE2, 0x40]);
        let mut out = BytesMut::new();
        enc.write(&msg(6, 123_500, 9, 4), &mut out)
            .expect("encodable");
        assert_eq!(out[0] >> 6, 2, "same length/type: delta only");
        enc.reset();
        let mut out = BytesMut::new();
        enc.write(&msg(6, 123_600, 9, 4), &mut out)
            .expect("encodable");
        assert_eq!(out[0] >> 6, 0, "after reset: absolute again");
    }
}

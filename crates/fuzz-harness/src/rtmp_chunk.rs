//! Target `rtmp_chunk`: the input is the chunk stream a peer sends after the handshake (RTMP
//! spec 5.3), decoded and parsed as the ingest does (Set Chunk Size and Abort applied to the
//! decoder, every message parsed; 5.4, 6.2, 7.1).
//!
//! Invariants:
//! * the messages and the final error do not depend on how the bytes are split into reads
//!   (the decoder never consumes a partial chunk);
//! * no message is larger than the limit, and the decoder never returns more payload bytes
//!   than it was given;
//! * every decoded message survives our encoder and a fresh decoder unchanged.

use bytes::BytesMut;
use rtmp::{
    chunk::{ChunkDecoder, ChunkEncoder, ChunkError, Limits, RawMessage},
    message::{Message, MessageError},
};

/// Why a session ended early: the error the connection would be closed with.
#[derive(Debug, PartialEq)]
enum Stop {
    Chunk(ChunkError),
    Message(MessageError),
}

/// Decodes `data` fed in pieces whose sizes cycle through `steps`; returns the messages and the
/// error that ended the session, if any.
fn decode(data: &[u8], steps: &[usize]) -> (Vec<RawMessage>, Option<Stop>) {
    let limits = Limits::default();
    let mut dec = ChunkDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = steps[i % steps.len()].min(rest.len());
        i += 1;
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            let raw = match dec.read(&mut buf) {
                Ok(Some(raw)) => raw,
                Ok(None) => break,
                Err(e) => return (messages, Some(Stop::Chunk(e))),
            };
            assert!(raw.payload.len() <= limits.max_message_size);
            // As the ingest's `on_message`.
            match Message::parse(&raw) {
                Ok(Message::SetChunkSize(n)) => {
                    if let Err(e) = dec.set_chunk_size(n) {
                        messages.push(raw);
                        return (messages, Some(Stop::Chunk(e)));
                    }
                }
                Ok(Message::Abort(csid)) => dec.abort(csid),
                Ok(_) => {}
                Err(e) => {
                    messages.push(raw);
                    return (messages, Some(Stop::Message(e)));
                }
            }
            messages.push(raw);
        }
    }
    (messages, None)
}

/// The target body.
pub fn run(data: &[u8]) {
    let whole = decode(data, &[data.len().max(1)]);
    // Small, uneven reads: every header and chunk boundary falls inside some read.
    let split = decode(data, &[1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144]);
    assert_eq!(whole, split, "decoding depends on how the bytes arrive");

    let (messages, _) = whole;
    let payload: usize = messages.iter().map(|m| m.payload.len()).sum();
    assert!(payload <= data.len(), "more payload out than bytes in");

    // Our encoder, read back by a fresh decoder (both at the default chunk size).
    let mut enc = ChunkEncoder::new();
    let mut bytes = BytesMut::new();
    for m in &messages {
        enc.write(m, &mut bytes)
            .expect("a decoded message is within the encoder's limits");
    }
    let mut dec = ChunkDecoder::new(Limits::default());
    for m in &messages {
        let back = dec
            .read(&mut bytes)
            .expect("our own encoding decodes")
            .expect("our own encoding is complete");
        assert_eq!(&back, m, "message changed by an encode/decode round trip");
    }
    assert!(bytes.is_empty(), "encoder wrote more than the messages");
}

//! RTMP messages: protocol control (spec 5.4), user control (6.2 / 7.1.7), commands and data
//! (7.1.1, 7.1.2), audio/video (7.1.4, 7.1.5); parsing from and building into [`RawMessage`]s,
//! plus the acknowledgement bookkeeping both ends need (5.4.3, 5.4.4).

use crate::amf0::{self, Amf0Error, Value};
use crate::chunk::RawMessage;
use bytes::{BufMut, Bytes, BytesMut};

/// Message type ids (spec 5.4, 7.1).
pub mod type_id {
    /// Set Chunk Size (5.4.1).
    pub const SET_CHUNK_SIZE: u8 = 1;
    /// Abort Message (5.4.2).
    pub const ABORT: u8 = 2;
    /// Acknowledgement (5.4.3).
    pub const ACK: u8 = 3;
    /// User Control Message (6.2).
    pub const USER_CONTROL: u8 = 4;
    /// Window Acknowledgement Size (5.4.4).
    pub const WINDOW_ACK_SIZE: u8 = 5;
    /// Set Peer Bandwidth (5.4.5).
    pub const SET_PEER_BANDWIDTH: u8 = 6;
    /// Audio (7.1.4).
    pub const AUDIO: u8 = 8;
    /// Video (7.1.5).
    pub const VIDEO: u8 = 9;
    /// Data message, AMF3 (7.1.2).
    pub const DATA_AMF3: u8 = 15;
    /// Command message, AMF3 (7.1.1).
    pub const COMMAND_AMF3: u8 = 17;
    /// Data message, AMF0 (7.1.2).
    pub const DATA_AMF0: u8 = 18;
    /// Command message, AMF0 (7.1.1).
    pub const COMMAND_AMF0: u8 = 20;
    /// Aggregate (7.1.6).
    pub const AGGREGATE: u8 = 22;
}

/// User control event types (spec 7.1.7).
pub mod user_control {
    /// Stream Begin: the stream is ready for playback.
    pub const STREAM_BEGIN: u16 = 0;
    /// Stream EOF: playback of the stream is over.
    pub const STREAM_EOF: u16 = 1;
    /// Stream Dry: no more data for now.
    pub const STREAM_DRY: u16 = 2;
    /// Set Buffer Length (client -> server).
    pub const SET_BUFFER_LENGTH: u16 = 3;
    /// Stream Is Recorded.
    pub const STREAM_IS_RECORDED: u16 = 4;
    /// Ping Request (server -> client).
    pub const PING_REQUEST: u16 = 6;
    /// Ping Response (client -> server).
    pub const PING_RESPONSE: u16 = 7;
}

/// Chunk stream ids we send on. Any id works (spec 5.3.1.1); these are what FMS, nginx-rtmp
/// and ffmpeg use, which keeps captures easy to compare.
pub mod csid {
    /// Protocol control messages must use chunk stream 2 (spec 5.4).
    pub const PROTOCOL_CONTROL: u32 = 2;
    /// Commands on the NetConnection.
    pub const COMMAND: u32 = 3;
    /// Audio.
    pub const AUDIO: u32 = 4;
    /// Commands/data on a NetStream (onStatus, onMetaData).
    pub const STREAM_COMMAND: u32 = 5;
    /// Video.
    pub const VIDEO: u32 = 6;
}

/// Why a message could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MessageError {
    /// A control message shorter than its fixed layout.
    #[error("message type {0} too short")]
    Truncated(u8),
    /// AMF0 body that does not decode.
    #[error("AMF0: {0}")]
    Amf0(#[from] Amf0Error),
    /// A command whose first values are not (name string, transaction number).
    #[error("command without name/transaction id")]
    BadCommand,
}

/// A command (spec 7.1.1): name, transaction id, command object, further arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Command name, e.g. `connect`, `publish`, `_result`, `onStatus`.
    pub name: String,
    /// Transaction id (0 when no reply is expected).
    pub transaction_id: f64,
    /// Command object (often Null).
    pub object: Value,
    /// Remaining arguments.
    pub args: Vec<Value>,
}

/// A parsed message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Set Chunk Size.
    SetChunkSize(u32),
    /// Abort Message for a chunk stream.
    Abort(u32),
    /// Acknowledgement with the sequence number (bytes received so far).
    Ack(u32),
    /// Window Acknowledgement Size.
    WindowAckSize(u32),
    /// Set Peer Bandwidth (size, limit type).
    SetPeerBandwidth(u32, u8),
    /// User control event: (event type, first 4-byte argument; stream id or timestamp).
    UserControl(u16, u32),
    /// Audio data: FLV AUDIODATA body.
    Audio(Bytes),
    /// Video data: FLV VIDEODATA body.
    Video(Bytes),
    /// A command (AMF0, or AMF3 whose body is AMF0 after a leading 0 byte).
    Command(Command),
    /// A data message, e.g. `@setDataFrame` / `onMetaData`.
    Data(Vec<Value>),
    /// Anything else (aggregate, shared objects, AMF3 data): ignored by callers.
    Other(u8),
}

fn be_u32(p: &[u8], t: u8) -> Result<u32, MessageError> {
    p.get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(MessageError::Truncated(t))
}

impl Message {
    /// Interprets a reassembled message.
    pub fn parse(raw: &RawMessage) -> Result<Message, MessageError> {
        let p = &raw.payload[..];
        let t = raw.type_id;
        Ok(match t {
            // Spec 5.4.1: the top bit of the chunk size must be 0.
            type_id::SET_CHUNK_SIZE => Message::SetChunkSize(be_u32(p, t)? & 0x7FFF_FFFF),
            type_id::ABORT => Message::Abort(be_u32(p, t)?),
            type_id::ACK => Message::Ack(be_u32(p, t)?),
            type_id::WINDOW_ACK_SIZE => Message::WindowAckSize(be_u32(p, t)?),
            type_id::SET_PEER_BANDWIDTH => {
                let size = be_u32(p, t)?;
                Message::SetPeerBandwidth(size, *p.get(4).ok_or(MessageError::Truncated(t))?)
            }
            type_id::USER_CONTROL => {
                if p.len() < 2 {
                    return Err(MessageError::Truncated(t));
                }
                let ev = u16::from_be_bytes([p[0], p[1]]);
                // Set Buffer Length has 8 bytes of arguments; only the first 4 matter here.
                let arg = if p.len() >= 6 { be_u32(&p[2..], t)? } else { 0 };
                Message::UserControl(ev, arg)
            }
            type_id::AUDIO => Message::Audio(raw.payload.clone()),
            type_id::VIDEO => Message::Video(raw.payload.clone()),
            type_id::COMMAND_AMF0 => Message::Command(parse_command(p)?),
            // AMF3 command: a format selector byte (0 = AMF0 follows), as Flash Player sends.
            type_id::COMMAND_AMF3 if p.first() == Some(&0) => {
                Message::Command(parse_command(&p[1..])?)
            }
            type_id::DATA_AMF0 => Message::Data(amf0::decode_all(p)?),
            type_id::DATA_AMF3 if p.first() == Some(&0) => {
                Message::Data(amf0::decode_all(&p[1..])?)
            }
            other => Message::Other(other),
        })
    }
}

fn parse_command(p: &[u8]) -> Result<Command, MessageError> {
    let mut values = amf0::decode_all(p)?.into_iter();
    let Some(Value::String(name)) = values.next() else {
        return Err(MessageError::BadCommand);
    };
    // Some clients omit the transaction id on notifications; treat a missing one as 0.
    let transaction_id = match values.next() {
        Some(Value::Number(n)) => n,
        None => 0.0,
        Some(_) => return Err(MessageError::BadCommand),
    };
    let object = values.next().unwrap_or(Value::Null);
    Ok(Command {
        name,
        transaction_id,
        object,
        args: values.collect(),
    })
}

/// Builders for outgoing messages.
pub mod build {
    use super::*;

    fn control(type_id: u8, payload: Bytes) -> RawMessage {
        RawMessage {
            csid: csid::PROTOCOL_CONTROL,
            timestamp: 0,
            type_id,
            stream_id: 0,
            payload,
        }
    }

    fn u32_payload(v: u32) -> Bytes {
        Bytes::copy_from_slice(&v.to_be_bytes())
    }

    /// Set Chunk Size (5.4.1).
    pub fn set_chunk_size(size: u32) -> RawMessage {
        control(type_id::SET_CHUNK_SIZE, u32_payload(size))
    }

    /// Acknowledgement (5.4.3).
    pub fn ack(sequence: u32) -> RawMessage {
        control(type_id::ACK, u32_payload(sequence))
    }

    /// Window Acknowledgement Size (5.4.4).
    pub fn window_ack_size(size: u32) -> RawMessage {
        control(type_id::WINDOW_ACK_SIZE, u32_payload(size))
    }

    /// Set Peer Bandwidth (5.4.5); limit type 2 = dynamic.
    pub fn set_peer_bandwidth(size: u32, limit: u8) -> RawMessage {
        let mut b = BytesMut::with_capacity(5);
        b.put_u32(size);
        b.put_u8(limit);
        control(type_id::SET_PEER_BANDWIDTH, b.freeze())
    }

    /// User control event with one 4-byte argument (7.1.7).
    pub fn user_control(event: u16, arg: u32) -> RawMessage {
        let mut b = BytesMut::with_capacity(6);
        b.put_u16(event);
        b.put_u32(arg);
        control(type_id::USER_CONTROL, b.freeze())
    }

    /// An AMF0 command on `stream_id` (0 = NetConnection).
    pub fn command(
        stream_id: u32,
        name: &str,
        transaction_id: f64,
        object: Value,
        args: &[Value],
    ) -> RawMessage {
        let mut values = vec![
            Value::String(name.into()),
            Value::Number(transaction_id),
            object,
        ];
        values.extend_from_slice(args);
        RawMessage {
            csid: if stream_id == 0 {
                csid::COMMAND
            } else {
                csid::STREAM_COMMAND
            },
            timestamp: 0,
            type_id: type_id::COMMAND_AMF0,
            stream_id,
            payload: amf0::encode_all(&values).freeze(),
        }
    }

    /// `onStatus(0, null, {level, code, description})` on a NetStream (7.2.2).
    pub fn on_status(stream_id: u32, level: &str, code: &str, description: &str) -> RawMessage {
        let info = Value::Object(vec![
            ("level".into(), Value::String(level.into())),
            ("code".into(), Value::String(code.into())),
            ("description".into(), Value::String(description.into())),
        ]);
        command(stream_id, "onStatus", 0.0, Value::Null, &[info])
    }

    /// An AMF0 data message (e.g. `onMetaData`, `|RtmpSampleAccess`).
    pub fn data(stream_id: u32, timestamp: u32, values: &[Value]) -> RawMessage {
        RawMessage {
            csid: csid::STREAM_COMMAND,
            timestamp,
            type_id: type_id::DATA_AMF0,
            stream_id,
            payload: amf0::encode_all(values).freeze(),
        }
    }

    /// Audio or video message.
    pub fn media(video: bool, stream_id: u32, timestamp: u32, payload: Bytes) -> RawMessage {
        RawMessage {
            csid: if video { csid::VIDEO } else { csid::AUDIO },
            timestamp,
            type_id: if video {
                type_id::VIDEO
            } else {
                type_id::AUDIO
            },
            stream_id,
            payload,
        }
    }
}

/// Acknowledgement bookkeeping for the receiving side (5.4.3, 5.4.4): count bytes received
/// and say when an Acknowledgement is due for the window the peer asked for.
#[derive(Debug, Default)]
pub struct AckTracker {
    window: u32,
    received: u64,
    last_ack: u64,
}

impl AckTracker {
    /// Records the peer's Window Acknowledgement Size.
    pub fn set_window(&mut self, window: u32) {
        self.window = window;
    }

    /// Records `n` more bytes received; returns the sequence number to acknowledge if a
    /// window's worth arrived since the last one. The sequence number wraps at 2^32.
    pub fn received(&mut self, n: usize) -> Option<u32> {
        self.received += n as u64;
        if self.window > 0 && self.received - self.last_ack >= self.window as u64 {
            self.last_ack = self.received;
            return Some(self.received as u32);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_control_messages() {
        let m = |t: u8, p: &[u8]| RawMessage {
            csid: 2,
            timestamp: 0,
            type_id: t,
            stream_id: 0,
            payload: Bytes::copy_from_slice(p),
        };
        assert_eq!(
            Message::parse(&m(1, &[0x80, 0, 0x10, 0])),
            Ok(Message::SetChunkSize(4096))
        );
        assert_eq!(
            Message::parse(&m(5, &[0, 0x26, 0x25, 0xA0])),
            Ok(Message::WindowAckSize(2_500_000))
        );
        assert_eq!(
            Message::parse(&m(4, &[0, 6, 0, 0, 0, 9])),
            Ok(Message::UserControl(6, 9))
        );
        assert_eq!(
            Message::parse(&m(1, &[0, 0])),
            Err(MessageError::Truncated(1))
        );
        assert_eq!(Message::parse(&m(4, &[0])), Err(MessageError::Truncated(4)));
        assert_eq!(
            Message::parse(&m(6, &[0, 0, 0, 1])),
            Err(MessageError::Truncated(6))
        );
        assert_eq!(
            Message::parse(&m(20, &[0x05])),
            Err(MessageError::BadCommand)
        );
        assert!(matches!(
            Message::parse(&m(20, &[0x02, 0, 9])),
            Err(MessageError::Amf0(_))
        ));
        assert_eq!(Message::parse(&m(22, &[])), Ok(Message::Other(22)));
    }

    #[test]
    fn command_round_trip() {
        let raw = build::command(
            0,
            "connect",
            1.0,
            Value::Object(vec![("app".into(), Value::String("live".into()))]),
            &[],
        );
        let Message::Command(c) = Message::parse(&raw).expect("parses") else {
            panic!("not a command")
        };
        assert_eq!(c.name, "connect");
        assert_eq!(c.transaction_id, 1.0);
        assert_eq!(c.object.get("app").and_then(Value::as_str), Some("live"));
    }

    #[test]
    fn ack_tracker_acks_per_window() {
        let mut a = AckTracker::default();
        assert_eq!(a.received(10_000), None, "no window yet");
        a.set_window(5000);
        assert_eq!(a.received(1), Some(10_001));
        assert_eq!(a.received(4999), None);
        assert_eq!(a.received(1), Some(15_001));
    }
}

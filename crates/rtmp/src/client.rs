//! A small async RTMP play client (tokio), used by the packager and by tests.
//!
//! It performs the plain handshake, `connect`, `createStream`, `play`, then turns incoming
//! messages into [`PlayEvent`]s. It answers pings (spec 7.1.7 PingRequest) and sends
//! Acknowledgements per the server's window (5.4.3/5.4.4) on its own, inside
//! [`PlayClient::next_event`], so the caller only has to keep calling it.

use crate::amf0::{self, Value};
use crate::chunk::{ChunkDecoder, ChunkEncoder, ChunkError, Limits, RawMessage};
use crate::handshake::{ClientHandshake, HandshakeError};
use crate::message::{AckTracker, Message, MessageError, build, user_control};
use crate::{STREAM_SESSION_ID, STREAM_START_TIME_MS};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Default RTMP port (the spec's registered port).
pub const DEFAULT_PORT: u16 = 1935;
/// Chunk size the client asks the server to accept from it; commands are small, so this
/// only saves splitting `connect`.
const CLIENT_CHUNK_SIZE: u32 = 4096;
/// Buffer length announced with Set Buffer Length (7.1.7), as ffmpeg does by default.
const BUFFER_LENGTH_MS: u32 = 3000;
/// `play` start argument: -1000 means "live or recorded, whatever exists" (7.2.2.1)
/// as ffmpeg sends it; servers treat it as live.
const PLAY_START_ANY: f64 = -1000.0;
/// Bytes read from the socket per read call.
const READ_CHUNK: usize = 64 * 1024;
/// Transaction ids of the commands that expect a `_result`.
const TXN_CONNECT: f64 = 1.0;
const TXN_CREATE_STREAM: f64 = 2.0;

/// Errors of the play client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `rtmp://host[:port]/app/stream`.
    #[error("bad RTMP URL {0:?}: expected rtmp://host[:port]/app/stream")]
    BadUrl(String),
    /// Connecting or the setup exchange took longer than the timeout.
    #[error("timed out connecting to the RTMP server")]
    Timeout,
    /// Socket error.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Handshake failure.
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// Broken chunk stream.
    #[error("chunk stream: {0}")]
    Chunk(#[from] ChunkError),
    /// Unparsable message.
    #[error("message: {0}")]
    Message(#[from] MessageError),
    /// The server refused a command (`_error`, or an error-level onStatus), with its code.
    #[error("server refused: {0}")]
    Rejected(String),
    /// The server closed the connection during setup.
    #[error("server closed the connection during setup")]
    Closed,
}

/// One thing the server sent on the played stream.
#[derive(Debug, Clone, PartialEq)]
pub enum PlayEvent {
    /// onMetaData as (name, value) pairs, including streamStartTimeMs and streamSessionId.
    Metadata(Vec<(String, amf0::Value)>),
    /// FLV AUDIODATA body (identical to an FLV audio tag's payload), RTMP timestamp in ms.
    Audio {
        /// RTMP timestamp (ms).
        timestamp_ms: u32,
        /// AUDIODATA body.
        data: Bytes,
    },
    /// FLV VIDEODATA body (identical to an FLV video tag's payload), RTMP timestamp in ms.
    Video {
        /// RTMP timestamp (ms).
        timestamp_ms: u32,
        /// VIDEODATA body.
        data: Bytes,
    },
    /// User control StreamBegin / StreamEOF (as `"StreamBegin"` / `"StreamEOF"`), NetStream
    /// status codes (e.g. `"NetStream.Play.Start"`, `"NetStream.Play.UnpublishNotify"`).
    Status(String),
}

impl PlayEvent {
    /// For `Metadata`: a Number property by name.
    pub fn metadata_number(&self, name: &str) -> Option<f64> {
        match self {
            PlayEvent::Metadata(props) => amf0::number_property(props, name),
            _ => None,
        }
    }

    /// For `Metadata`: `streamStartTimeMs` (UNIX ms at RTMP timestamp 0 of the session).
    pub fn stream_start_time_ms(&self) -> Option<i64> {
        self.metadata_number(STREAM_START_TIME_MS).map(|v| v as i64)
    }

    /// For `Metadata`: `streamSessionId` (changes with every publish session).
    pub fn stream_session_id(&self) -> Option<u64> {
        self.metadata_number(STREAM_SESSION_ID).map(|v| v as u64)
    }
}

/// Parts of an `rtmp://host[:port]/app/stream` URL.
#[derive(Debug, Clone, PartialEq)]
pub struct RtmpUrl {
    /// Host name or address.
    pub host: String,
    /// Port (1935 when absent).
    pub port: u16,
    /// Application (first path segment).
    pub app: String,
    /// Stream name (rest of the path, query included).
    pub stream: String,
}

impl RtmpUrl {
    /// Parses an `rtmp://` URL.
    pub fn parse(url: &str) -> Result<RtmpUrl, ClientError> {
        let bad = || ClientError::BadUrl(url.to_owned());
        let rest = url.strip_prefix("rtmp://").ok_or_else(bad)?;
        let (authority, path) = rest.split_once('/').ok_or_else(bad)?;
        let (app, stream) = path.split_once('/').ok_or_else(bad)?;
        if authority.is_empty() || app.is_empty() || stream.is_empty() {
            return Err(bad());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_matches(['[', ']']).to_owned(),
                p.parse().map_err(|_| bad())?,
            ),
            _ => (authority.to_owned(), DEFAULT_PORT),
        };
        Ok(RtmpUrl {
            host,
            port,
            app: app.to_owned(),
            stream: stream.to_owned(),
        })
    }

    fn tc_url(&self) -> String {
        format!("rtmp://{}:{}/{}", self.host, self.port, self.app)
    }
}

/// A playing RTMP connection.
pub struct PlayClient {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    dec: ChunkDecoder,
    enc: ChunkEncoder,
    acks: AckTracker,
    /// Events read during setup, handed out first by `next_event`.
    queued: VecDeque<PlayEvent>,
}

impl std::fmt::Debug for PlayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlayClient")
            .field("peer", &self.stream.peer_addr().ok())
            .finish()
    }
}

impl PlayClient {
    /// Connects to rtmp://host:port/app/stream, handshakes, connect, createStream, play.
    /// Returns once the server answered `play` with a non-error status.
    pub async fn connect(url: &str, timeout: Duration) -> Result<PlayClient, ClientError> {
        let url = RtmpUrl::parse(url)?;
        tokio::time::timeout(timeout, Self::setup(url))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn setup(url: RtmpUrl) -> Result<PlayClient, ClientError> {
        let stream = TcpStream::connect((url.host.as_str(), url.port)).await?;
        stream.set_nodelay(true)?;
        let limits = Limits {
            max_chunk_size: Limits::default().max_message_size,
            ..Limits::default()
        };
        let mut c = PlayClient {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::new(),
            dec: ChunkDecoder::new(limits),
            enc: ChunkEncoder::new(),
            acks: AckTracker::default(),
            queued: VecDeque::new(),
        };
        let mut hs = ClientHandshake::start(&mut c.wbuf);
        c.flush().await?;
        loop {
            let mut out = BytesMut::new();
            if hs.read(&mut c.rbuf, &mut out)? {
                c.wbuf.extend_from_slice(&out);
                break;
            }
            if c.fill().await? == 0 {
                return Err(ClientError::Closed);
            }
        }
        c.send(&build::set_chunk_size(CLIENT_CHUNK_SIZE))?;
        c.enc.set_chunk_size(CLIENT_CHUNK_SIZE as usize);
        let connect_obj = Value::Object(vec![
            ("app".into(), Value::String(url.app.clone())),
            ("flashVer".into(), Value::String("LNX 9,0,124,2".into())),
            ("tcUrl".into(), Value::String(url.tc_url())),
            ("fpad".into(), Value::Boolean(false)),
            ("capabilities".into(), Value::Number(15.0)),
            ("audioCodecs".into(), Value::Number(4071.0)),
            ("videoCodecs".into(), Value::Number(252.0)),
            ("videoFunction".into(), Value::Number(1.0)),
        ]);
        c.send(&build::command(0, "connect", TXN_CONNECT, connect_obj, &[]))?;
        c.flush().await?;
        c.wait_result(TXN_CONNECT).await?;
        c.send(&build::command(
            0,
            "createStream",
            TXN_CREATE_STREAM,
            Value::Null,
            &[],
        ))?;
        c.flush().await?;
        let result = c.wait_result(TXN_CREATE_STREAM).await?;
        let stream_id = result.first().and_then(Value::as_f64).unwrap_or(1.0) as u32;
        c.send(&build::command(
            stream_id,
            "play",
            0.0,
            Value::Null,
            &[
                Value::String(url.stream.clone()),
                Value::Number(PLAY_START_ANY),
            ],
        ))?;
        // Set Buffer Length: event type, stream id, buffer length in ms (7.1.7).
        let mut sbl = build::user_control(user_control::SET_BUFFER_LENGTH, stream_id);
        let mut p = BytesMut::from(&sbl.payload[..]);
        p.extend_from_slice(&BUFFER_LENGTH_MS.to_be_bytes());
        sbl.payload = p.freeze();
        c.send(&sbl)?;
        c.flush().await?;
        // Wait for the play status; keep everything seen for next_event.
        loop {
            let Some(ev) = c.read_event().await? else {
                return Err(ClientError::Closed);
            };
            let started = matches!(&ev, PlayEvent::Status(code) if code == "NetStream.Play.Start");
            c.queued.push_back(ev);
            if started {
                return Ok(c);
            }
        }
    }

    /// Next media event; Ok(None) when the server closed the connection.
    pub async fn next_event(&mut self) -> Result<Option<PlayEvent>, ClientError> {
        if let Some(ev) = self.queued.pop_front() {
            return Ok(Some(ev));
        }
        self.read_event().await
    }

    fn send(&mut self, m: &RawMessage) -> Result<(), ClientError> {
        Ok(self.enc.write(m, &mut self.wbuf)?)
    }

    async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads more bytes, sending an Acknowledgement when a window is complete.
    async fn fill(&mut self) -> Result<usize, ClientError> {
        self.rbuf.reserve(READ_CHUNK);
        let n = self.stream.read_buf(&mut self.rbuf).await?;
        if let Some(seq) = self.acks.received(n) {
            self.send(&build::ack(seq))?;
            self.flush().await?;
        }
        Ok(n)
    }

    /// Next message with its timestamp.
    async fn next_message(&mut self) -> Result<Option<(Message, u32)>, ClientError> {
        loop {
            if let Some(raw) = self.dec.read(&mut self.rbuf)? {
                return Ok(Some((Message::parse(&raw)?, raw.timestamp)));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    async fn wait_result(&mut self, txn: f64) -> Result<Vec<Value>, ClientError> {
        loop {
            let Some((m, ts)) = self.next_message().await? else {
                return Err(ClientError::Closed);
            };
            match m {
                Message::Command(c) if c.transaction_id == txn && c.name == "_result" => {
                    return Ok(c.args);
                }
                Message::Command(c) if c.transaction_id == txn && c.name == "_error" => {
                    let code = c
                        .args
                        .first()
                        .and_then(|i| i.get("code"))
                        .and_then(Value::as_str)
                        .unwrap_or("_error");
                    return Err(ClientError::Rejected(code.to_owned()));
                }
                other => {
                    if let Some(ev) = self.handle(other, ts).await? {
                        self.queued.push_back(ev);
                    }
                }
            }
        }
    }

    async fn read_event(&mut self) -> Result<Option<PlayEvent>, ClientError> {
        loop {
            let Some((m, ts)) = self.next_message().await? else {
                return Ok(None);
            };
            if let Some(ev) = self.handle(m, ts).await? {
                return Ok(Some(ev));
            }
        }
    }

    /// Applies control messages and converts the rest to events.
    async fn handle(
        &mut self,
        m: Message,
        timestamp_ms: u32,
    ) -> Result<Option<PlayEvent>, ClientError> {
        Ok(match m {
            Message::SetChunkSize(n) => {
                self.dec.set_chunk_size(n)?;
                None
            }
            Message::Abort(csid) => {
                self.dec.abort(csid);
                None
            }
            Message::WindowAckSize(w) => {
                self.acks.set_window(w);
                None
            }
            Message::UserControl(user_control::PING_REQUEST, ts) => {
                self.send(&build::user_control(user_control::PING_RESPONSE, ts))?;
                self.flush().await?;
                None
            }
            Message::UserControl(user_control::STREAM_BEGIN, _) => {
                Some(PlayEvent::Status("StreamBegin".into()))
            }
            Message::UserControl(user_control::STREAM_EOF, _) => {
                Some(PlayEvent::Status("StreamEOF".into()))
            }
            Message::Audio(data) => Some(PlayEvent::Audio { timestamp_ms, data }),
            Message::Video(data) => Some(PlayEvent::Video { timestamp_ms, data }),
            Message::Data(values) => {
                let mut it = values.into_iter().peekable();
                if it.peek().and_then(Value::as_str) == Some("@setDataFrame") {
                    it.next();
                }
                match (it.next(), it.next()) {
                    (Some(Value::String(n)), Some(Value::Object(p) | Value::EcmaArray(p)))
                        if n == "onMetaData" =>
                    {
                        Some(PlayEvent::Metadata(p))
                    }
                    _ => None,
                }
            }
            Message::Command(c) if c.name == "onStatus" => {
                let info = c.args.first();
                let code = info
                    .and_then(|i| i.get("code"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let level = info
                    .and_then(|i| i.get("level"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if level == "error" && code.starts_with("NetStream.Play") {
                    return Err(ClientError::Rejected(code));
                }
                Some(PlayEvent::Status(code))
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        assert_eq!(
            RtmpUrl::parse("rtmp://127.0.0.1:1940/live/x?key=a").expect("ok"),
            RtmpUrl {
                host: "127.0.0.1".into(),
                port: 1940,
                app: "live".into(),
                stream: "x?key=a".into()
            }
        );
        assert_eq!(
            RtmpUrl::parse("rtmp://h/live/x").expect("ok").port,
            DEFAULT_PORT
        );
        assert!(RtmpUrl::parse("http://h/live/x").is_err());
        assert!(RtmpUrl::parse("rtmp://h/live").is_err());
        assert!(RtmpUrl::parse("rtmp://h:notaport/live/x").is_err());
    }
}

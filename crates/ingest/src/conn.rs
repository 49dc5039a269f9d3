//! One RTMP connection: handshake, NetConnection commands (spec 7.2.1), then either a
//! publish session or a play session (7.2.2). The protocol state machines are the sans-IO
//! ones from `rtmp`; this module only moves bytes and applies policy.
//!
//! # What a peer can make a connection hold, and for how long
//! - Partial messages: at most `--pre-publish-buffer-bytes` (declared lengths) until it
//!   publishes, [`PUBLISHER_PENDING_BYTES`] while it publishes; every change is charged to
//!   the memory budget ([`crate::budget`]), and a message that would exceed a cap closes
//!   the connection before its bytes arrive.
//! - Time: handshake, `connect` and `publish`/`play` within `--handshake-timeout-secs`
//!   (acks or pings do not extend it); a publisher or a connection in setup silent for
//!   `--idle-timeout-secs` (a stall mid-message included) is closed; a player waits at
//!   most `--play-wait-secs` for a stream with no publisher.

use crate::Server;
use crate::budget::{AddrSlot, Refused};
use crate::hub::{
    Claim, Frame, HubError, MEDIA_STREAM_ID, OUT_CHUNK_SIZE, Pulled, Stream, Subscription,
};
use bytes::{Buf, Bytes, BytesMut};
use rtmp::amf0::Value;
use rtmp::chunk::{ChunkDecoder, ChunkEncoder, ChunkError, Limits, RawMessage};
use rtmp::handshake::{HandshakeError, ServerHandshake};
use rtmp::message::{
    AckTracker, Command, Message, MessageError, build, csid, type_id, user_control,
};
use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Window Acknowledgement Size and Set Peer Bandwidth we announce (what FMS and
/// nginx-rtmp announce; ffmpeg and OBS expect values of this order).
const WINDOW_ACK_SIZE: u32 = 2_500_000;
/// Set Peer Bandwidth limit type 2: dynamic (spec 5.4.5).
const PEER_BANDWIDTH_DYNAMIC: u8 = 2;
/// Read buffer headroom for publishers (media comes in) ...
const READ_CHUNK: usize = 64 * 1024;
/// ... and for everyone else (players only send acks and commands): per-connection memory
/// with hundreds of players is dominated by buffers, so they stay small.
const READ_CHUNK_SMALL: usize = 4 * 1024;
/// Most bytes one merged read takes from a publisher's socket (what the kernel buffered
/// during a merge interval: 100 ms of a 2.6 Mbit/s stream is 33 KB, of a 50 Mbit/s one
/// 625 KB); the rest is read right after, with no wait.
const MAX_MERGED_READ: usize = 4 * 1024 * 1024;
/// A player pulls at most about this many bytes from the hub per write.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// Most buffers per vectored write (Linux's IOV_MAX is 1024).
const MAX_IOV: usize = 64;
/// Partial-message bytes (declared) a publisher may hold: two or three large keyframes in
/// flight on interleaved chunk streams.
pub const PUBLISHER_PENDING_BYTES: usize = 32 * 1024 * 1024;

/// Why a connection was closed abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Socket error.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Handshake failure.
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// Broken chunk stream.
    #[error("chunk stream: {0}")]
    Chunk(#[from] ChunkError),
    /// Malformed message.
    #[error("message: {0}")]
    Message(#[from] MessageError),
    /// Handshake/connect or idle timeout.
    #[error("timeout: {0}")]
    Timeout(&'static str),
    /// A message would have exceeded the memory budget.
    #[error("{0}")]
    Budget(#[from] Refused),
}

impl ConnError {
    /// The connection was closed for what it would have made us hold (a budget, or the
    /// pre-publish cap), counted in `ingest_budget_refusals_total`.
    pub fn is_memory_refusal(&self) -> bool {
        matches!(
            self,
            ConnError::Budget(_) | ConnError::Chunk(ChunkError::TooMuchPending)
        )
    }
}

/// Publish or play state; dropping it leaves the hub, so cleanup also happens when the
/// task is cancelled at shutdown.
enum Role {
    None,
    Publishing {
        stream: Arc<Stream>,
    },
    Playing {
        stream: Arc<Stream>,
        sub: Subscription,
    },
}

struct Conn {
    id: u64,
    peer: SocketAddr,
    /// This connection's slot of its address, and its charge against the memory budget.
    slot: AddrSlot,
    /// While neither publishing nor playing: when the connection must have started to.
    setup_deadline: Option<tokio::time::Instant>,
    /// While playing a stream that has no publisher: when the player is given up.
    play_wait_until: Option<tokio::time::Instant>,
    server: Arc<Server>,
    sock: TcpStream,
    rbuf: BytesMut,
    /// This connection's own messages (replies, acks), encoded by `enc`; moved to `out`
    /// as one buffer before anything else is queued behind them.
    wbuf: BytesMut,
    /// Buffers waiting to be written, in order: shared fan-out bytes from the hub and this
    /// connection's own; written with vectored writes, never copied together.
    out: VecDeque<Bytes>,
    dec: ChunkDecoder,
    enc: ChunkEncoder,
    acks: AckTracker,
    connected: bool,
    role: Role,
    /// Close after flushing (a refused publish).
    closing: bool,
    /// This publisher pushed media since it last woke the subscribers.
    pushed: bool,
    /// When this publisher last woke its subscribers (see [`Config::merge_ms`]).
    ///
    /// [`Config::merge_ms`]: crate::Config::merge_ms
    last_wake: tokio::time::Instant,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Serves one connection until it closes.
pub async fn handle(
    sock: TcpStream,
    peer: SocketAddr,
    id: u64,
    slot: AddrSlot,
    server: Arc<Server>,
) -> Result<(), ConnError> {
    sock.set_nodelay(true)?;
    let cfg = &server.config;
    let limits = Limits {
        max_chunk_size: cfg.max_chunk_size,
        max_message_size: cfg.max_message_size,
        max_pending_bytes: cfg.pre_publish_buffer_bytes,
        ..Limits::default()
    };
    let mut c = Conn {
        id,
        peer,
        slot,
        setup_deadline: Some(tokio::time::Instant::now() + cfg.handshake_timeout()),
        play_wait_until: None,
        dec: ChunkDecoder::new(limits),
        server: server.clone(),
        sock,
        rbuf: BytesMut::with_capacity(READ_CHUNK_SMALL),
        wbuf: BytesMut::new(),
        out: VecDeque::new(),
        enc: ChunkEncoder::new(),
        acks: AckTracker::default(),
        connected: false,
        role: Role::None,
        closing: false,
        pushed: false,
        last_wake: tokio::time::Instant::now(),
    };
    tracing::debug!(%peer, conn = id, "connection accepted");
    let hs_timeout = server.config.handshake_timeout();
    tokio::time::timeout(hs_timeout, c.handshake())
        .await
        .map_err(|_| ConnError::Timeout("handshake"))??;
    c.run().await
}

impl Conn {
    async fn handshake(&mut self) -> Result<(), ConnError> {
        let mut hs = ServerHandshake::new();
        loop {
            if hs.read(&mut self.rbuf, &mut self.wbuf)? {
                tracing::debug!(conn = self.id, digest = hs.is_digest(), "handshake done");
                return self.flush().await;
            }
            self.flush().await?;
            if self.fill().await? == 0 {
                return Err(ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    fn reserve_read(&mut self) {
        let n = if matches!(self.role, Role::Publishing { .. }) {
            READ_CHUNK
        } else {
            READ_CHUNK_SMALL
        };
        self.rbuf.reserve(n);
    }

    async fn fill(&mut self) -> Result<usize, ConnError> {
        self.reserve_read();
        let n = self.sock.read_buf(&mut self.rbuf).await?;
        self.server.metrics.bytes_in.inc_by(n as u64);
        if let Some(seq) = self.acks.received(n) {
            self.send(&build::ack(seq));
        }
        Ok(n)
    }

    /// Queues this connection's own encoded messages behind what is already queued.
    fn stage(&mut self) {
        if !self.wbuf.is_empty() {
            self.out.push_back(self.wbuf.split().freeze());
        }
    }

    /// Writes everything queued. The socket usually has room, so the first attempt is a
    /// plain non-blocking write, with no timer; only a full socket waits, up to the idle
    /// timeout.
    async fn flush(&mut self) -> Result<(), ConnError> {
        self.stage();
        if self.out.is_empty() {
            return Ok(());
        }
        let mut written = write_some(&self.sock, &mut self.out)?;
        if !self.out.is_empty() {
            let idle = self.server.config.idle_timeout();
            let (sock, out) = (&self.sock, &mut self.out);
            written += tokio::time::timeout(idle, async {
                let mut n = 0;
                while !out.is_empty() {
                    sock.writable().await?;
                    n += write_some(sock, out)?;
                }
                Ok::<_, std::io::Error>(n)
            })
            .await
            .map_err(|_| ConnError::Timeout("write blocked"))??;
        }
        self.server.metrics.bytes_out.inc_by(written as u64);
        Ok(())
    }

    /// A merged read: everything the socket holds now, up to [`MAX_MERGED_READ`] bytes, so
    /// one interval's media is taken in one go whatever the bitrate. `None`: nothing there;
    /// `Some(0)`: the peer closed.
    fn drain(&mut self) -> std::io::Result<Option<usize>> {
        let mut total = 0;
        while total < MAX_MERGED_READ {
            self.rbuf.reserve(READ_CHUNK);
            let room = self.rbuf.capacity() - self.rbuf.len();
            match self.sock.try_read_buf(&mut self.rbuf) {
                Ok(0) => return Ok(Some(total)),
                Ok(n) => {
                    total += n;
                    if n < room {
                        // A short read emptied the socket: no second syscall to learn that.
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok((total > 0).then_some(total))
    }

    /// Wakes a publisher's subscribers for what it pushed since the last wake-up.
    fn wake_subscribers(&mut self) {
        if std::mem::take(&mut self.pushed)
            && let Role::Publishing { stream } = &self.role
        {
            stream.wake();
            self.server.metrics.fanout_wakeups.inc();
            self.last_wake = tokio::time::Instant::now();
        }
    }

    /// Queues one of our messages. They are all small, but a refusal by the encoder (a
    /// payload over the 24-bit length) closes the connection rather than panicking.
    fn send(&mut self, m: &RawMessage) {
        if let Err(e) = self.enc.write(m, &mut self.wbuf) {
            tracing::warn!(conn = self.id, error = %e, "message not sent, closing");
            self.closing = true;
        }
    }

    /// Charges the decoder's partial messages to the budget.
    fn account(&mut self) -> Result<(), ConnError> {
        Ok(self.slot.charge(self.dec.pending_bytes())?)
    }

    async fn run(&mut self) -> Result<(), ConnError> {
        let idle = self.server.config.idle_timeout();
        let merge = self.server.config.merge_interval();
        let mut last_read = tokio::time::Instant::now();
        let idle_timer = tokio::time::sleep(idle);
        tokio::pin!(idle_timer);
        // Armed while a publisher holds pushed media its subscribers have not been woken for.
        let wake_timer = tokio::time::sleep(merge);
        tokio::pin!(wake_timer);
        let mut wake_armed = false;
        loop {
            // Process everything already buffered, charging partial messages as they start.
            loop {
                let msg = self.dec.read(&mut self.rbuf);
                self.account()?;
                let Some(raw) = msg? else { break };
                self.on_message(raw)?;
            }
            if self.pushed && !wake_armed {
                // At most one wake-up of the subscribers per merge interval, however many
                // messages arrived: the rest wait for the timer.
                let due = self.last_wake + merge;
                if tokio::time::Instant::now() >= due {
                    self.wake_subscribers();
                } else {
                    wake_timer.as_mut().reset(due);
                    wake_armed = true;
                }
            }
            self.flush().await?;
            if self.closing {
                return Ok(());
            }
            let setup_deadline = self.setup_deadline;
            let n = if let Role::Playing { stream, .. } = &self.role {
                match self.play(stream.clone()).await? {
                    PlayStep::Read(n) => n,
                    PlayStep::Woken => continue,
                    PlayStep::Dropped => return Ok(()),
                }
            } else {
                self.reserve_read();
                // The idle timer is armed once and pushed back only when it fires, not
                // re-armed for every read.
                tokio::select! {
                    // Merged reads: while a wake-up is pending, the publisher's socket is
                    // left to fill; it is read once when the timer fires, right before the
                    // wake-up, so one read, one ACK and one wake-up cover the interval.
                    r = self.sock.read_buf(&mut self.rbuf), if !wake_armed => {
                        last_read = tokio::time::Instant::now();
                        r?
                    }
                    _ = &mut wake_timer, if wake_armed => {
                        wake_armed = false;
                        match self.drain()? {
                            // Nothing arrived: the loop's top wakes for what is pending.
                            None => continue,
                            Some(n) => {
                                last_read = tokio::time::Instant::now();
                                n
                            }
                        }
                    }
                    // Neither publishing nor playing in time: whatever else it sends.
                    _ = tokio::time::sleep_until(setup_deadline.unwrap_or(last_read)), if setup_deadline.is_some() => {
                        return Err(ConnError::Timeout("no publish or play in time"));
                    }
                    _ = &mut idle_timer => {
                        if last_read.elapsed() >= idle {
                            return Err(ConnError::Timeout("idle"));
                        }
                        idle_timer.as_mut().reset(last_read + idle);
                        continue;
                    }
                }
            };
            if n == 0 {
                tracing::debug!(conn = self.id, "peer closed");
                return Ok(());
            }
            self.server.metrics.bytes_in.inc_by(n as u64);
            if let Some(seq) = self.acks.received(n) {
                self.send(&build::ack(seq));
            }
        }
    }

    /// A player's wait: writes whatever the hub has for it, then waits for the next wake-up
    /// or for bytes from the player.
    async fn play(&mut self, stream: Arc<Stream>) -> Result<PlayStep, ConnError> {
        // Registered before the first look, and kept across pulls until it fires, so a
        // wake-up between a pull and the wait is never lost.
        let notified = stream.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        loop {
            self.stage();
            let Role::Playing { sub, .. } = &mut self.role else {
                return Ok(PlayStep::Dropped);
            };
            match sub.pull(&self.server.metrics, &mut self.out, WRITE_BATCH_BYTES) {
                Pulled::Dropped => {
                    tracing::info!(conn = self.id, "dropped by the hub (too slow)");
                    return Ok(PlayStep::Dropped);
                }
                Pulled::Control => {
                    // The shared bytes used these chunk streams behind our encoder's back.
                    self.enc.forget(csid::PROTOCOL_CONTROL);
                    self.enc.forget(csid::STREAM_COMMAND);
                    self.flush().await?;
                    continue;
                }
                Pulled::Media => {
                    self.flush().await?;
                    continue;
                }
                Pulled::Nothing => {}
            }
            // A stream with no publisher: the player waits at most `--play-wait-secs` for
            // one (publish and unpublish wake it, so this is re-evaluated then).
            let wait = self.server.config.play_wait();
            if stream.is_published() || wait.is_zero() {
                self.play_wait_until = None;
            } else if self.play_wait_until.is_none() {
                self.play_wait_until = Some(tokio::time::Instant::now() + wait);
            }
            let give_up = self.play_wait_until;
            self.rbuf.reserve(READ_CHUNK_SMALL);
            // Players may legitimately send nothing for a long time; their liveness is
            // judged by writes (see `flush`).
            tokio::select! {
                r = self.sock.read_buf(&mut self.rbuf) => return Ok(PlayStep::Read(r?)),
                _ = &mut notified => return Ok(PlayStep::Woken),
                _ = tokio::time::sleep_until(give_up.unwrap_or_else(tokio::time::Instant::now)), if give_up.is_some() => {
                    tracing::info!(conn = self.id, peer = %self.peer, stream = stream.name(), "no publisher in time, closing the player");
                    self.server.metrics.play_wait_expired.inc();
                    self.send(&build::on_status(
                        MEDIA_STREAM_ID,
                        "error",
                        "NetStream.Play.StreamNotFound",
                        "no publisher for this stream",
                    ));
                    self.flush().await?;
                    return Ok(PlayStep::Dropped);
                }
            }
        }
    }

    fn on_message(&mut self, raw: RawMessage) -> Result<(), ConnError> {
        let msg = Message::parse(&raw)?;
        match msg {
            Message::SetChunkSize(n) => self.dec.set_chunk_size(n)?,
            Message::Abort(csid) => self.dec.abort(csid),
            Message::WindowAckSize(w) => self.acks.set_window(w),
            Message::Ack(_) | Message::SetPeerBandwidth(..) => {}
            Message::UserControl(user_control::PING_REQUEST, ts) => {
                self.send(&build::user_control(user_control::PING_RESPONSE, ts));
            }
            Message::UserControl(..) => {}
            Message::Audio(data) | Message::Video(data) => {
                if let Role::Publishing { stream } = &self.role {
                    let frame = Frame {
                        video: raw.type_id == type_id::VIDEO,
                        timestamp: raw.timestamp,
                        data,
                    };
                    self.server.hub.media(stream, frame);
                    self.pushed = true;
                }
            }
            Message::Data(values) => self.on_data(values),
            Message::Command(cmd) => self.on_command(cmd),
            Message::Other(t) => {
                tracing::debug!(conn = self.id, type_id = t, "ignoring message type")
            }
        }
        Ok(())
    }

    fn on_data(&mut self, values: Vec<Value>) {
        let Role::Publishing { stream } = &self.role else {
            return;
        };
        let mut it = values.into_iter().peekable();
        if it.peek().and_then(Value::as_str) == Some("@setDataFrame") {
            it.next();
        }
        if let (Some(Value::String(name)), Some(Value::Object(p) | Value::EcmaArray(p))) =
            (it.next(), it.next())
            && name == "onMetaData"
        {
            self.server.hub.set_metadata(stream, p);
        }
    }

    fn reply_result(&mut self, txn: f64, args: &[Value]) {
        if txn > 0.0 {
            self.send(&build::command(0, "_result", txn, Value::Null, args));
        }
    }

    fn on_command(&mut self, cmd: Command) {
        tracing::debug!(conn = self.id, name = %cmd.name, txn = cmd.transaction_id, "command");
        match cmd.name.as_str() {
            "connect" => self.on_connect(cmd),
            "createStream" => {
                self.reply_result(cmd.transaction_id, &[Value::Number(MEDIA_STREAM_ID as f64)])
            }
            "publish" => self.on_publish(cmd),
            "play" => self.on_play(cmd),
            "deleteStream" | "closeStream" | "FCUnpublish" => {
                self.leave();
                self.reply_result(cmd.transaction_id, &[Value::Undefined]);
            }
            // releaseStream, FCPublish, getStreamLength, ...: acknowledge so clients that
            // wait for a reply proceed.
            _ => self.reply_result(cmd.transaction_id, &[Value::Undefined]),
        }
    }

    fn on_connect(&mut self, cmd: Command) {
        let app = cmd.object.get("app").and_then(Value::as_str).unwrap_or("");
        // Clients send "live", "live/" or "live?x=y" depending on how the URL was split.
        let app = app.split('?').next().unwrap_or("").trim_end_matches('/');
        if app != self.server.config.app {
            tracing::warn!(conn = self.id, peer = %self.peer, app, "connect to unknown app refused");
            let info = status_info(
                "error",
                "NetConnection.Connect.Rejected",
                "unknown application",
            );
            self.send(&build::command(
                0,
                "_error",
                cmd.transaction_id,
                Value::Null,
                &[info],
            ));
            self.closing = true;
            return;
        }
        self.send(&build::window_ack_size(WINDOW_ACK_SIZE));
        self.send(&build::set_peer_bandwidth(
            WINDOW_ACK_SIZE,
            PEER_BANDWIDTH_DYNAMIC,
        ));
        self.send(&build::set_chunk_size(OUT_CHUNK_SIZE));
        self.enc.set_chunk_size(OUT_CHUNK_SIZE as usize);
        let props = Value::Object(vec![
            ("fmsVer".into(), Value::String("FMS/3,0,1,123".into())),
            ("capabilities".into(), Value::Number(31.0)),
        ]);
        let mut info = status_info(
            "status",
            "NetConnection.Connect.Success",
            "Connection succeeded.",
        );
        if let Value::Object(p) = &mut info {
            p.push(("objectEncoding".into(), Value::Number(0.0)));
        }
        self.send(&build::command(
            0,
            "_result",
            cmd.transaction_id,
            props,
            &[info],
        ));
        self.connected = true;
    }

    fn on_publish(&mut self, cmd: Command) {
        let full = stream_arg(&cmd);
        let (name, query) = split_query(&full);
        let cfg = &self.server.config;
        let refuse = |c: &mut Conn, code: &str, why: &str| {
            tracing::warn!(conn = c.id, peer = %c.peer, stream = name, reason = why, "publish refused");
            c.server.metrics.publish_rejected.inc();
            c.send(&build::on_status(MEDIA_STREAM_ID, "error", code, why));
            c.closing = true;
        };
        if !self.connected || !matches!(self.role, Role::None) || name.is_empty() {
            return refuse(
                self,
                "NetStream.Publish.BadName",
                "not connected, already active, or empty name",
            );
        }
        let key = query.split('&').find_map(|kv| kv.strip_prefix("key="));
        if let Some(secret) = &cfg.publish_key
            && key != Some(secret.as_str())
        {
            return refuse(
                self,
                "NetStream.Publish.Unauthorized",
                "missing or wrong publish key",
            );
        }
        if !cfg.allowed_streams.is_empty() && !cfg.allowed_streams.iter().any(|s| s == name) {
            return refuse(
                self,
                "NetStream.Publish.Unauthorized",
                "stream key not in the allowlist",
            );
        }
        let claim = Claim {
            addr: self.peer.ip(),
            key: key.map(str::to_owned),
        };
        match self.server.hub.publish(name, self.id, claim) {
            Ok(stream) => {
                tracing::info!(conn = self.id, peer = %self.peer, stream = name, "publishing");
                self.role = Role::Publishing { stream };
                self.setup_deadline = None;
                self.dec.set_max_pending_bytes(PUBLISHER_PENDING_BYTES);
                self.begin_stream(
                    "NetStream.Publish.Start",
                    &format!("{name} is now published"),
                );
            }
            Err(HubError::AlreadyPublishing(_)) => refuse(
                self,
                "NetStream.Publish.BadName",
                "stream already has a publisher",
            ),
            Err(e @ HubError::Reserved) => {
                refuse(self, "NetStream.Publish.BadName", &e.to_string())
            }
            Err(e) => refuse(self, "NetStream.Publish.Rejected", &e.to_string()),
        }
    }

    /// StreamBegin on the media stream, then the status `code` that starts publishing or
    /// playing (7.2.2).
    fn begin_stream(&mut self, code: &str, description: &str) {
        self.send(&build::user_control(
            user_control::STREAM_BEGIN,
            MEDIA_STREAM_ID,
        ));
        self.send(&build::on_status(
            MEDIA_STREAM_ID,
            "status",
            code,
            description,
        ));
    }

    fn on_play(&mut self, cmd: Command) {
        let full = stream_arg(&cmd);
        let (name, _) = split_query(&full);
        if !self.connected || !matches!(self.role, Role::None) || name.is_empty() {
            self.send(&build::on_status(
                MEDIA_STREAM_ID,
                "error",
                "NetStream.Play.Failed",
                "not connected, already active, or empty name",
            ));
            self.closing = true;
            return;
        }
        match self.server.hub.subscribe(name, self.id) {
            Ok(sub) => {
                tracing::info!(conn = self.id, peer = %self.peer, stream = name, "playing");
                self.send(&build::user_control(
                    user_control::STREAM_IS_RECORDED,
                    MEDIA_STREAM_ID,
                ));
                self.begin_stream("NetStream.Play.Reset", "Playing and resetting");
                self.send(&build::on_status(
                    MEDIA_STREAM_ID,
                    "status",
                    "NetStream.Play.Start",
                    "Started playing",
                ));
                self.send(&build::data(
                    MEDIA_STREAM_ID,
                    0,
                    &[
                        Value::String("|RtmpSampleAccess".into()),
                        Value::Boolean(true),
                        Value::Boolean(true),
                    ],
                ));
                let stream = sub.stream().clone();
                self.role = Role::Playing { stream, sub };
                self.setup_deadline = None;
                self.play_wait_until = None;
            }
            Err(e) => {
                tracing::warn!(conn = self.id, stream = name, error = %e, "play refused");
                self.send(&build::on_status(
                    MEDIA_STREAM_ID,
                    "error",
                    "NetStream.Play.Failed",
                    &e.to_string(),
                ));
                self.closing = true;
            }
        }
    }

    /// Leaves the hub (end of publish or play). The connection may start again, under the
    /// same setup deadline and pre-publish cap as a new one.
    fn leave(&mut self) {
        let role = std::mem::replace(&mut self.role, Role::None);
        if !matches!(role, Role::None) {
            self.setup_deadline =
                Some(tokio::time::Instant::now() + self.server.config.handshake_timeout());
            self.dec
                .set_max_pending_bytes(self.server.config.pre_publish_buffer_bytes);
        }
        match role {
            Role::None => {}
            Role::Publishing { stream } => self.server.hub.unpublish(&stream, self.id),
            Role::Playing { sub, .. } => self.server.hub.unsubscribe(&sub),
        }
    }
}

/// Writes as much of `out` as the socket takes now, in vectored writes; returns the bytes
/// written (`WouldBlock` is not an error: the rest stays queued).
fn write_some(sock: &TcpStream, out: &mut VecDeque<Bytes>) -> std::io::Result<usize> {
    let mut total = 0;
    while !out.is_empty() {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let mut k = 0;
        for b in out.iter().filter(|b| !b.is_empty()).take(MAX_IOV) {
            iov[k] = IoSlice::new(b);
            k += 1;
        }
        if k == 0 {
            out.clear();
            break;
        }
        let mut n = match sock.try_write_vectored(&iov[..k]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        };
        total += n;
        while n > 0 || out.front().is_some_and(Bytes::is_empty) {
            let front = out.front_mut().expect("written bytes were queued");
            if front.len() <= n {
                n -= front.len();
                out.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
    Ok(total)
}

/// How a player's wait ended.
enum PlayStep {
    /// Bytes from the player (0: it closed).
    Read(usize),
    /// The publisher pushed something.
    Woken,
    /// The hub dropped this player (too slow).
    Dropped,
}

/// The stream name argument of `publish` and `play` (their first argument after the null
/// command object), query string included; empty when missing.
fn stream_arg(cmd: &Command) -> String {
    cmd.args
        .first()
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

fn split_query(s: &str) -> (&str, &str) {
    s.split_once('?').unwrap_or((s, ""))
}

fn status_info(level: &str, code: &str, description: &str) -> Value {
    Value::Object(vec![
        ("level".into(), Value::String(level.into())),
        ("code".into(), Value::String(code.into())),
        ("description".into(), Value::String(description.into())),
    ])
}

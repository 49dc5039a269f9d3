//! The stream hub: one entry per stream name, holding its publisher slot, session identity
//! (id and start time), metadata, sequence headers, GOP cache, and subscribers.
//!
//! # Fan-out: serialise once, share the bytes, subscribers pull
//! Every message for subscribers (media, metadata, session start/end) is serialised once,
//! on the publisher's task, into RTMP chunks ([`rtmp::chunk::write_absolute`]: a type-0
//! header with the absolute timestamp, at the one outgoing chunk size [`OUT_CHUNK_SIZE`]
//! every connection uses). A type-0 message decodes the same whatever a peer received before
//! on that chunk stream, so these bytes are valid for every subscriber, whatever it joined
//! at or skipped: one copy per message instead of one per subscriber, identical timestamps
//! for all by construction, and no per-subscriber header state. The price is 4 header
//! bytes per message over a type-1 delta header.
//!
//! The bytes (refcounted [`Bytes`]) go into one bounded ring per stream. Each subscriber
//! has a cursor into it and pulls everything new in one go ([`Subscription::pull`]), which
//! its connection writes with one vectored write; the publisher's connection wakes the
//! subscribers ([`Stream::wake`]) at most once per merge interval (`--merge-ms`, 100 ms by
//! default: one read of the publisher's socket, then one wake-up), not once per subscriber
//! and message. A subscriber holds no media of its own, so memory is the ring plus the GOP
//! cache per stream, whatever the number of subscribers.
//!
//! # Slow subscribers
//! A subscriber whose cursor falls behind the ring (more than [`HubLimits::ring_len`]
//! messages behind) skips media until the next keyframe, where it gets the session
//! start (if it missed one), metadata and sequence headers again (its player sees a jump,
//! never a broken GOP). One that is still behind the ring at more than
//! [`HubLimits::max_skipped_gops`] keyframes is dropped.
//!
//! # Memory
//! Each stream's ring is capped in entries ([`HubLimits::ring_len`]) and in bytes
//! ([`HubLimits::stream_buffer_bytes`]; a keyframe entry also counts the resync bytes it
//! refers to), its GOP cache in bytes ([`HubLimits::gop_cache_bytes`]); both are reported in
//! `ingest_buffered_bytes{buffer="streams"}`. A subscriber holds at most one write batch of
//! shared buffers on top.
//!
//! # Slots
//! At most [`HubLimits::max_streams`] streams hold a publish slot: those with a publisher,
//! and those whose publisher left less than [`HubLimits::republish_grace`] ago. During that
//! grace period only the previous publisher ([`Claim::may_reclaim`]: same address, or same
//! `?key=`) may publish the name again, so nobody takes it while its publisher
//! reconnects. Names that only players asked for (waiting for a publisher) are limited to
//! as many again, separately: they cannot take publishers' slots.
//!
//! A std `Mutex`, not a tokio one: it is never held across an `.await`, and every critical
//! section is short (pushes and clones of refcounted `Bytes`). Lock order: the hub's map,
//! then a stream's state.

use crate::metrics::Metrics;
use bytes::{Bytes, BytesMut};
use prometheus::IntGauge;
use rtmp::amf0::{self, Value};
use rtmp::chunk::{self, ChunkError, RawMessage};
use rtmp::media;
use rtmp::message::{build, csid, type_id, user_control};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Outgoing chunk size of every connection: large enough that a typical video frame is a
/// few chunks, small enough that audio is not stuck behind a keyframe for long
/// (nginx-rtmp's default). One size for all is what lets subscribers share the bytes.
pub const OUT_CHUNK_SIZE: u32 = 4096;
/// The one message stream id we hand out per connection (createStream).
pub const MEDIA_STREAM_ID: u32 = 1;

/// One audio or video message as the publisher sent it.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Video (true) or audio.
    pub video: bool,
    /// Publisher's RTMP timestamp, passed through unchanged.
    pub timestamp: u32,
    /// FLV AUDIODATA / VIDEODATA body, untouched.
    pub data: Bytes,
}

/// Why the hub refused a publish or play.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HubError {
    /// The stream already has a publisher.
    #[error("stream {0:?} already has a publisher")]
    AlreadyPublishing(String),
    /// Publishing the stream would exceed the stream limit.
    #[error("stream limit reached")]
    TooManyStreams,
    /// Too many names are waiting for a publisher (players of streams that do not exist).
    #[error("too many streams waiting for a publisher")]
    TooManyWaiting,
    /// The name's publisher left recently; only it may publish the name again for now.
    #[error("stream name reserved for its previous publisher for a few seconds")]
    Reserved,
}

/// Who publishes a stream, remembered for the republish grace period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The publisher's source address.
    pub addr: IpAddr,
    /// The `key` query parameter of its publish name, if any (with `--publish-key`, the
    /// shared secret; without, a key the publisher chose).
    pub key: Option<String>,
}

impl Claim {
    /// Whether the holder of `self` may take back a name `previous` published: same source
    /// address (a reconnect), or the same key from elsewhere (a publisher whose address
    /// changed). A publisher that gave no key can only come back from its address.
    pub fn may_reclaim(&self, previous: &Claim) -> bool {
        self.addr == previous.addr || (self.key.is_some() && self.key == previous.key)
    }
}

/// What a ring entry is, for skipping and resynchronisation.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// A media message that is neither a keyframe nor a sequence header: skippable.
    Media,
    /// A random access point (video keyframe, or any audio frame of an audio-only stream).
    Key,
    /// An audio or video sequence header.
    SequenceHeader,
    /// StreamBegin + NetStream.Play.PublishNotify.
    SessionStart,
    /// StreamEOF + NetStream.Play.UnpublishNotify.
    SessionEnd,
    /// onMetaData.
    Metadata,
}

/// One message for subscribers, serialised once as RTMP chunks.
#[derive(Debug, Clone)]
struct Entry {
    kind: Kind,
    session_id: u64,
    bytes: Bytes,
    /// On [`Kind::Key`] entries: metadata and sequence headers as of this keyframe, for a
    /// subscriber that resumes here after skipping.
    resync: Option<Bytes>,
}

impl Entry {
    /// Bytes charged to the ring for this entry: its own and the resync bytes it keeps
    /// alive (shared between keyframes until metadata changes, so this over-counts).
    fn cost(&self) -> usize {
        self.bytes.len() + self.resync.as_ref().map_or(0, Bytes::len)
    }
}

/// Per-subscriber state the publisher side needs (cursor for lag checks).
struct SubState {
    id: u64,
    /// Sequence number of the next ring entry this subscriber takes.
    next: u64,
    /// Skipping media until the next keyframe.
    waiting_key: bool,
    /// Entries were lost (ring overtook the cursor): resend session/metadata/sequence
    /// headers at the keyframe where it resumes.
    need_resync: bool,
    /// Keyframes pushed while this subscriber was behind the ring.
    skipped_gops: u32,
    /// Session id this subscriber has been told about.
    session_seen: u64,
    /// Dropped by the hub (too slow); its connection closes at its next pull.
    dropped: bool,
}

#[derive(Default)]
struct StreamState {
    publisher: Option<u64>,
    /// The current publisher's claim; after it leaves, with the end of its grace period.
    claim: Option<Claim>,
    grace_until: Option<Instant>,
    session_id: u64,
    start_time_ms: Option<i64>,
    /// The publisher's onMetaData properties.
    metadata: Option<Vec<(String, Value)>>,
    /// Serialised onMetaData with our two properties, once the start time is known.
    metadata_out: Option<Bytes>,
    video_seq: Option<Bytes>,
    audio_seq: Option<Bytes>,
    /// metadata_out + sequence headers in one buffer, built on demand, cleared on change.
    resync: Option<Bytes>,
    has_video: bool,
    /// Messages since the latest keyframe (empty if none yet, or if it outgrew the cap).
    gop: Vec<Bytes>,
    gop_bytes: usize,
    gop_overflow: bool,
    /// The broadcast ring: entry `base + i` is `ring[i]`.
    ring: VecDeque<Entry>,
    /// Sum of the ring entries' [`Entry::cost`].
    ring_bytes: usize,
    base: u64,
    /// Subscribers by slot ([`Subscription::slot`]); `None` is a free slot.
    subs: Vec<Option<SubState>>,
    free_slots: Vec<usize>,
    sub_count: usize,
}

impl StreamState {
    fn head(&self) -> u64 {
        self.base + self.ring.len() as u64
    }

    /// Holds a publish slot: publishing, or in its republish grace period.
    fn holds_publish_slot(&self, now: Instant) -> bool {
        self.publisher.is_some() || self.grace_until.is_some_and(|t| t > now)
    }

    /// Nobody uses the entry, and no grace period keeps the name.
    fn idle(&self, now: Instant) -> bool {
        !self.holds_publish_slot(now) && self.sub_count == 0
    }

    /// The ring has no room for an entry of `cost` bytes without evicting.
    fn ring_full(&self, limits: &HubLimits, cost: usize) -> bool {
        !self.ring.is_empty()
            && (self.ring.len() >= limits.ring_len.max(1)
                || self.ring_bytes + cost > limits.stream_buffer_bytes)
    }

    fn push(&mut self, limits: &HubLimits, metrics: &Metrics, kind: Kind, bytes: Bytes) {
        let resync = (kind == Kind::Key).then(|| self.resync_bytes());
        let entry = Entry {
            kind,
            session_id: self.session_id,
            bytes,
            resync,
        };
        let cost = entry.cost();
        if kind == Kind::Key {
            self.check_lagging(limits, metrics, cost);
        }
        // Oldest first, by count and by bytes; an entry larger than the byte cap on its own
        // still goes in (alone), so subscribers get every message.
        while self.ring_full(limits, cost) {
            let old = self.ring.pop_front().expect("ring not empty");
            self.ring_bytes -= old.cost();
            metrics.buffered_streams.sub(old.cost() as i64);
            self.base += 1;
        }
        self.ring_bytes += cost;
        metrics.buffered_streams.add(cost as i64);
        self.ring.push_back(entry);
    }

    /// Forgets the GOP cache.
    fn clear_gop(&mut self, metrics: &Metrics) {
        metrics.buffered_streams.sub(self.gop_bytes as i64);
        self.gop.clear();
        self.gop_bytes = 0;
    }

    /// At each keyframe: subscribers still behind the ring have skipped one more GOP;
    /// over the limit they are dropped. O(subscribers) once per GOP.
    fn check_lagging(&mut self, limits: &HubLimits, metrics: &Metrics, cost: usize) {
        let (base, head) = (self.base, self.head());
        let ring_full = self.ring_full(limits, cost);
        for s in self.subs.iter_mut().flatten() {
            // Behind: entries it has not taken are gone, or are about to be.
            let behind = s.next < base || (ring_full && s.next == base && base < head);
            if s.dropped || !behind {
                continue;
            }
            s.skipped_gops += 1;
            if s.skipped_gops > limits.max_skipped_gops {
                tracing::warn!(subscriber = s.id, "subscriber too slow, dropping it");
                metrics.subscribers_dropped.inc();
                metrics.dropped_frames.inc_by(head - s.next);
                s.dropped = true;
            }
        }
    }

    fn resync_bytes(&mut self) -> Bytes {
        if let Some(r) = &self.resync {
            return r.clone();
        }
        let parts = [&self.metadata_out, &self.video_seq, &self.audio_seq];
        let mut b =
            BytesMut::with_capacity(parts.iter().flat_map(|p| p.iter()).map(Bytes::len).sum());
        for p in parts.into_iter().flatten() {
            b.extend_from_slice(p);
        }
        let r = b.freeze();
        self.resync = Some(r.clone());
        r
    }
}

/// A stream's shared state.
pub struct Stream {
    name: String,
    state: Mutex<StreamState>,
    /// Has a publisher (read by waiting players without taking the lock).
    published: AtomicBool,
    /// `ingest_buffered_bytes{buffer="streams"}`, to give back this stream's bytes when it
    /// is dropped.
    buffered: IntGauge,
    /// Wakes subscribers waiting for new ring entries.
    notify: Notify,
    /// The hub's serialised session start, for resynchronising subscribers.
    session_start: Bytes,
}

impl Drop for Stream {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        self.buffered.sub((st.ring_bytes + st.gop_bytes) as i64);
    }
}

impl Stream {
    /// The stream name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a publisher is publishing it now.
    pub fn is_published(&self) -> bool {
        self.published.load(Ordering::Acquire)
    }

    /// Wakes every subscriber waiting for new entries. The publisher's connection calls
    /// this at most once per merge interval, after pushing what it read meanwhile.
    pub fn wake(&self) {
        self.notify.notify_waiters();
    }

    /// A future that completes at the next [`Stream::wake`]. `enable` it before a
    /// [`Subscription::pull`] that finds nothing, so a wake in between is not lost.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

/// Knobs the hub needs.
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    /// Most streams holding a publish slot; as many again may exist only for waiting
    /// players.
    pub max_streams: usize,
    /// Byte cap of each stream's broadcast ring.
    pub stream_buffer_bytes: usize,
    /// How long a name stays reserved for its previous publisher.
    pub republish_grace: Duration,
    /// GOP cache cap in bytes; a GOP larger than this is not cached.
    pub gop_cache_bytes: usize,
    /// Keyframes a congested subscriber may skip before it is dropped.
    pub max_skipped_gops: u32,
    /// Messages in each stream's broadcast ring: how far a subscriber may fall behind
    /// before it skips to the next keyframe.
    pub ring_len: usize,
}

/// All streams.
pub struct Hub {
    streams: Mutex<HashMap<String, Arc<Stream>>>,
    /// Last session id per stream name; survives the stream entry so ids keep increasing
    /// when a stream goes idle and comes back.
    session_ids: Mutex<HashMap<String, u64>>,
    limits: HubLimits,
    metrics: Arc<Metrics>,
    /// Serialised StreamBegin + PublishNotify and StreamEOF + UnpublishNotify (the same
    /// for every stream and subscriber).
    session_start: Bytes,
    session_end: Bytes,
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Serialises messages once for all subscribers; refuses a message too long for RTMP.
fn shared(msgs: &[RawMessage]) -> Result<Bytes, ChunkError> {
    let size = OUT_CHUNK_SIZE as usize;
    let len = msgs.iter().map(|m| chunk::absolute_len(size, m)).sum();
    let mut b = BytesMut::with_capacity(len);
    for m in msgs {
        chunk::write_absolute(size, m, &mut b)?;
    }
    Ok(b.freeze())
}

impl Hub {
    /// An empty hub.
    pub fn new(limits: HubLimits, metrics: Arc<Metrics>) -> Self {
        let sid = MEDIA_STREAM_ID;
        Self {
            streams: Mutex::default(),
            session_ids: Mutex::default(),
            limits,
            metrics,
            session_start: shared(&[
                build::user_control(user_control::STREAM_BEGIN, sid),
                build::on_status(
                    sid,
                    "status",
                    "NetStream.Play.PublishNotify",
                    "publish session started",
                ),
            ])
            .expect("a few bytes"),
            session_end: shared(&[
                build::user_control(user_control::STREAM_EOF, sid),
                build::on_status(
                    sid,
                    "status",
                    "NetStream.Play.UnpublishNotify",
                    "publish session ended",
                ),
            ])
            .expect("a few bytes"),
        }
    }

    fn new_stream(&self, name: &str) -> Arc<Stream> {
        Arc::new(Stream {
            name: name.to_owned(),
            state: Mutex::default(),
            published: AtomicBool::new(false),
            buffered: self.metrics.buffered_streams.clone(),
            notify: Notify::new(),
            session_start: self.session_start.clone(),
        })
    }

    /// Removes entries nobody uses whose grace period ran out (no event removes those).
    fn sweep(&self, streams: &mut HashMap<String, Arc<Stream>>, now: Instant) {
        streams.retain(|_, s| !s.state.lock().expect("stream lock").idle(now));
        self.metrics.streams.set(streams.len() as i64);
    }

    /// Entries holding a publish slot, other than `name`.
    fn publish_slots(streams: &HashMap<String, Arc<Stream>>, name: &str, now: Instant) -> usize {
        streams
            .iter()
            .filter(|(n, s)| {
                n.as_str() != name && s.state.lock().expect("stream lock").holds_publish_slot(now)
            })
            .count()
    }

    /// Removes the entry if nobody uses it any more.
    fn gc(&self, stream: &Arc<Stream>) {
        let mut streams = self.streams.lock().expect("hub lock");
        let idle = stream
            .state
            .lock()
            .expect("stream lock")
            .idle(Instant::now());
        if idle
            && streams
                .get(&stream.name)
                .is_some_and(|s| Arc::ptr_eq(s, stream))
        {
            streams.remove(&stream.name);
            self.metrics.streams.set(streams.len() as i64);
        }
    }

    /// Starts a publish session for connection `conn_id`, publishing as `claim`.
    pub fn publish(&self, name: &str, conn_id: u64, claim: Claim) -> Result<Arc<Stream>, HubError> {
        let now = Instant::now();
        // The map stays locked until the publisher is set, so two publishers of new names
        // cannot both take the last slot.
        let mut streams = self.streams.lock().expect("hub lock");
        self.sweep(&mut streams, now);
        let existing = streams.get(name).cloned();
        let holds_slot = match &existing {
            Some(s) => {
                let st = s.state.lock().expect("stream lock");
                if st.publisher.is_some() {
                    return Err(HubError::AlreadyPublishing(name.to_owned()));
                }
                if st.grace_until.is_some_and(|t| t > now)
                    && !st
                        .claim
                        .as_ref()
                        .is_some_and(|prev| claim.may_reclaim(prev))
                {
                    return Err(HubError::Reserved);
                }
                st.holds_publish_slot(now)
            }
            None => false,
        };
        if !holds_slot && Self::publish_slots(&streams, name, now) >= self.limits.max_streams {
            return Err(HubError::TooManyStreams);
        }
        let stream = existing.unwrap_or_else(|| {
            let s = self.new_stream(name);
            streams.insert(name.to_owned(), s.clone());
            self.metrics.streams.set(streams.len() as i64);
            s
        });
        {
            let mut st = stream.state.lock().expect("stream lock");
            let session_id = {
                let mut ids = self.session_ids.lock().expect("ids lock");
                let id = ids.entry(name.to_owned()).or_default();
                *id += 1;
                *id
            };
            st.publisher = Some(conn_id);
            st.claim = Some(claim);
            st.grace_until = None;
            st.session_id = session_id;
            st.start_time_ms = None;
            st.metadata = None;
            st.metadata_out = None;
            st.video_seq = None;
            st.audio_seq = None;
            st.resync = None;
            st.has_video = false;
            st.clear_gop(&self.metrics);
            st.gop_overflow = false;
            tracing::info!(stream = name, session_id, "publish session started");
            st.push(
                &self.limits,
                &self.metrics,
                Kind::SessionStart,
                self.session_start.clone(),
            );
            stream.published.store(true, Ordering::Release);
        }
        drop(streams);
        stream.wake();
        self.metrics.publishers.inc();
        Ok(stream)
    }

    /// Ends the publish session of `conn_id` (idempotent).
    pub fn unpublish(&self, stream: &Arc<Stream>, conn_id: u64) {
        {
            let mut st = stream.state.lock().expect("stream lock");
            if st.publisher != Some(conn_id) {
                return;
            }
            st.publisher = None;
            stream.published.store(false, Ordering::Release);
            if !self.limits.republish_grace.is_zero() {
                st.grace_until = Some(Instant::now() + self.limits.republish_grace);
            }
            st.start_time_ms = None;
            st.metadata_out = None;
            st.resync = None;
            st.clear_gop(&self.metrics);
            tracing::info!(stream = %stream.name, session_id = st.session_id, "publish session ended");
            st.push(
                &self.limits,
                &self.metrics,
                Kind::SessionEnd,
                self.session_end.clone(),
            );
        }
        stream.wake();
        self.metrics.publishers.dec();
        self.gc(stream);
    }

    /// The publisher's onMetaData. Properties that would not fit one RTMP message once
    /// re-encoded with our two properties (the 24-bit length) are refused with a log line
    /// and the stream keeps its previous metadata: a truncated length would make every
    /// subscriber misparse the rest of the stream.
    pub fn set_metadata(&self, stream: &Stream, props: Vec<(String, Value)>) {
        {
            let mut st = stream.state.lock().expect("stream lock");
            // The size does not depend on the start time's value (an AMF0 number is 8 bytes).
            if let Err(e) = encode_metadata(Some(&props), st.start_time_ms, st.session_id) {
                tracing::warn!(stream = %stream.name, session_id = st.session_id, error = %e, "onMetaData too large once re-encoded: ignored, the previous metadata stays");
                self.metrics.metadata_dropped.inc();
                return;
            }
            st.metadata = Some(props);
            if st.start_time_ms.is_some() {
                self.new_metadata(&mut st);
            }
        }
        stream.wake();
    }

    fn new_metadata(&self, st: &mut StreamState) {
        let out = match encode_metadata(st.metadata.as_deref(), st.start_time_ms, st.session_id) {
            Ok(out) => out,
            Err(e) => {
                // Not reached (set_metadata checked the size); subscribers still need the
                // start time, so fall back to our properties alone.
                tracing::warn!(session_id = st.session_id, error = %e, "onMetaData too large: publisher properties dropped");
                self.metrics.metadata_dropped.inc();
                st.metadata = None;
                match encode_metadata(None, st.start_time_ms, st.session_id) {
                    Ok(out) => out,
                    Err(_) => return,
                }
            }
        };
        st.metadata_out = Some(out.clone());
        st.resync = None;
        st.push(&self.limits, &self.metrics, Kind::Metadata, out);
    }

    /// One media message from the publisher. Subscribers see it after the next
    /// [`Stream::wake`].
    pub fn media(&self, stream: &Stream, frame: Frame) {
        let (keyframe, seq) = if frame.video {
            let i = media::video_info(&frame.data);
            (i.keyframe && !i.sequence_header, i.sequence_header)
        } else {
            (false, media::is_audio_sequence_header(&frame.data))
        };
        // Serialised outside the lock: the one copy of this message for all subscribers.
        let bytes = match shared(&[build::media(
            frame.video,
            MEDIA_STREAM_ID,
            frame.timestamp,
            frame.data,
        )]) {
            Ok(b) => b,
            Err(e) => {
                // Not reached: the chunk decoder cannot produce a longer payload.
                tracing::warn!(stream = %stream.name, error = %e, "media message dropped");
                return;
            }
        };
        let mut st = stream.state.lock().expect("stream lock");
        if st.start_time_ms.is_none() {
            // Contract: wall clock at the first media message minus its timestamp.
            st.start_time_ms = Some(now_unix_ms() - frame.timestamp as i64);
            tracing::info!(stream = %stream.name, session_id = st.session_id, start_time_ms = st.start_time_ms, "stream start time fixed");
            self.new_metadata(&mut st);
        }
        // Audio-only streams: every audio frame is a random access point.
        let keyframe = keyframe || (!frame.video && !seq && !st.has_video);
        let kind = if seq {
            if frame.video {
                st.has_video = true;
                st.video_seq = Some(bytes.clone());
            } else {
                st.audio_seq = Some(bytes.clone());
            }
            st.resync = None;
            Kind::SequenceHeader
        } else {
            // GOP cache: restart at each keyframe; stop caching a GOP that outgrows the cap.
            if keyframe {
                st.clear_gop(&self.metrics);
                st.gop_overflow = false;
            }
            if !st.gop_overflow && (keyframe || !st.gop.is_empty()) {
                if st.gop_bytes + bytes.len() > self.limits.gop_cache_bytes {
                    st.clear_gop(&self.metrics);
                    st.gop_overflow = true;
                } else {
                    st.gop_bytes += bytes.len();
                    self.metrics.buffered_streams.add(bytes.len() as i64);
                    st.gop.push(bytes.clone());
                }
            }
            if keyframe { Kind::Key } else { Kind::Media }
        };
        st.push(&self.limits, &self.metrics, kind, bytes);
    }

    /// Adds a subscriber. Its first pull returns what a late joiner needs: session start,
    /// metadata, sequence headers and the GOP cache, taken under the lock together with its
    /// ring cursor so nothing is missed or doubled.
    pub fn subscribe(&self, name: &str, id: u64) -> Result<Subscription, HubError> {
        let stream = {
            let mut streams = self.streams.lock().expect("hub lock");
            match streams.get(name) {
                Some(s) => s.clone(),
                None => {
                    // A name nobody publishes: counted apart from the publish slots.
                    let now = Instant::now();
                    self.sweep(&mut streams, now);
                    let waiting = streams.len() - Self::publish_slots(&streams, name, now);
                    if waiting >= self.limits.max_streams {
                        return Err(HubError::TooManyWaiting);
                    }
                    let s = self.new_stream(name);
                    streams.insert(name.to_owned(), s.clone());
                    self.metrics.streams.set(streams.len() as i64);
                    s
                }
            }
        };
        let mut join = Vec::new();
        let slot = {
            let mut st = stream.state.lock().expect("stream lock");
            // With no publisher yet, the subscriber gets the next session from its start.
            let mut waiting_key = st.publisher.is_some();
            if st.publisher.is_some() {
                join.push(self.session_start.clone());
                join.push(st.resync_bytes());
                if !st.gop.is_empty() {
                    waiting_key = false;
                    join.extend(st.gop.iter().cloned());
                }
            }
            let sub = SubState {
                id,
                next: st.head(),
                waiting_key,
                need_resync: false,
                skipped_gops: 0,
                session_seen: st.session_id,
                dropped: false,
            };
            st.sub_count += 1;
            match st.free_slots.pop() {
                Some(i) => {
                    st.subs[i] = Some(sub);
                    i
                }
                None => {
                    st.subs.push(Some(sub));
                    st.subs.len() - 1
                }
            }
        };
        self.metrics.subscribers.inc();
        Ok(Subscription {
            stream,
            slot,
            id,
            join: join.into_iter().filter(|b| !b.is_empty()).collect(),
        })
    }

    /// Removes a subscriber (idempotent: a second call finds its slot empty or reused).
    pub fn unsubscribe(&self, sub: &Subscription) {
        let stream = &sub.stream;
        {
            let mut st = stream.state.lock().expect("stream lock");
            let slot = st.subs.get_mut(sub.slot);
            match slot {
                Some(s @ Some(_)) if s.as_ref().is_some_and(|s| s.id == sub.id) => *s = None,
                _ => return,
            }
            st.free_slots.push(sub.slot);
            st.sub_count -= 1;
        }
        self.metrics.subscribers.dec();
        self.gc(stream);
    }
}

/// What [`Subscription::pull`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pulled {
    /// Nothing new: wait for [`Subscription::notified`].
    Nothing,
    /// Media only.
    Media,
    /// Bytes that include messages on the control chunk streams (session start/end,
    /// metadata): the connection's own encoder must forget those streams' header state.
    Control,
    /// The hub dropped this subscriber (too slow).
    Dropped,
}

/// One subscriber's handle on a stream; the connection unsubscribes it with
/// [`Hub::unsubscribe`].
pub struct Subscription {
    stream: Arc<Stream>,
    slot: usize,
    /// The subscriber's connection id: a slot is reused after an unsubscribe.
    id: u64,
    /// Join burst, handed out by the first pull.
    join: Vec<Bytes>,
}

impl Subscription {
    /// The stream.
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    /// Appends everything new for this subscriber to `out` (shared bytes, no copies), up
    /// to about `max_bytes`, applying the skip-to-keyframe policy.
    pub fn pull(
        &mut self,
        metrics: &Metrics,
        out: &mut VecDeque<Bytes>,
        max_bytes: usize,
    ) -> Pulled {
        let mut got = Pulled::Nothing;
        if !self.join.is_empty() {
            out.extend(self.join.drain(..));
            got = Pulled::Control;
        }
        let mut st = self.stream.state.lock().expect("stream lock");
        let st = &mut *st;
        let Some(Some(sub)) = st
            .subs
            .get_mut(self.slot)
            .filter(|s| s.as_ref().is_some_and(|s| s.id == self.id))
        else {
            return Pulled::Dropped;
        };
        if sub.dropped {
            return Pulled::Dropped;
        }
        if sub.next < st.base {
            // The ring overtook us: skip to the next keyframe and resynchronise there.
            metrics.dropped_frames.inc_by(st.base - sub.next);
            tracing::debug!(
                subscriber = sub.id,
                lost = st.base - sub.next,
                "subscriber behind the ring, skipping to next keyframe"
            );
            sub.next = st.base;
            sub.waiting_key = true;
            sub.need_resync = true;
        }
        let head = st.base + st.ring.len() as u64;
        let mut bytes = 0;
        while sub.next < head && bytes < max_bytes {
            let e = &st.ring[(sub.next - st.base) as usize];
            sub.next += 1;
            if sub.waiting_key {
                match e.kind {
                    Kind::Media => {
                        metrics.dropped_frames.inc();
                        continue;
                    }
                    Kind::Key => {
                        sub.waiting_key = false;
                        sub.skipped_gops = 0;
                        if sub.need_resync {
                            sub.need_resync = false;
                            if sub.session_seen != e.session_id {
                                sub.session_seen = e.session_id;
                                out.push_back(self.stream.session_start.clone());
                            }
                            if let Some(r) = e.resync.as_ref().filter(|r| !r.is_empty()) {
                                out.push_back(r.clone());
                            }
                            got = Pulled::Control;
                        }
                        tracing::debug!(
                            subscriber = sub.id,
                            "congested subscriber resumes at keyframe"
                        );
                    }
                    _ => {}
                }
            }
            match e.kind {
                Kind::SessionStart => {
                    sub.session_seen = e.session_id;
                    got = Pulled::Control;
                }
                Kind::SessionEnd | Kind::Metadata => got = Pulled::Control,
                _ => {
                    if got == Pulled::Nothing {
                        got = Pulled::Media;
                    }
                }
            }
            bytes += e.bytes.len();
            out.push_back(e.bytes.clone());
        }
        got
    }
}

/// onMetaData for subscribers, serialised: the publisher's properties (or none) plus the
/// two contract properties, replacing any the publisher sent under the same names.
/// Refused when the message would be longer than RTMP can carry.
fn encode_metadata(
    publisher: Option<&[(String, Value)]>,
    start_time_ms: Option<i64>,
    session_id: u64,
) -> Result<Bytes, ChunkError> {
    let mut props: Vec<(String, Value)> = publisher
        .unwrap_or_default()
        .iter()
        .filter(|(k, _)| k != rtmp::STREAM_START_TIME_MS && k != rtmp::STREAM_SESSION_ID)
        .cloned()
        .collect();
    props.push((
        rtmp::STREAM_START_TIME_MS.into(),
        Value::Number(start_time_ms.unwrap_or(0) as f64),
    ));
    props.push((
        rtmp::STREAM_SESSION_ID.into(),
        Value::Number(session_id as f64),
    ));
    let body =
        amf0::encode_all(&[Value::String("onMetaData".into()), Value::EcmaArray(props)]).freeze();
    shared(&[RawMessage {
        csid: csid::STREAM_COMMAND,
        timestamp: 0,
        type_id: type_id::DATA_AMF0,
        stream_id: MEDIA_STREAM_ID,
        payload: body,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtmp::chunk::{ChunkDecoder, Limits};

    fn limits(max_skipped_gops: u32, ring_len: usize) -> HubLimits {
        HubLimits {
            max_streams: 4,
            stream_buffer_bytes: 64 << 20,
            republish_grace: Duration::ZERO,
            gop_cache_bytes: 1 << 20,
            max_skipped_gops,
            ring_len,
        }
    }

    fn hub(max_skipped_gops: u32, ring_len: usize) -> Hub {
        Hub::new(limits(max_skipped_gops, ring_len), Metrics::new())
    }

    fn claim(addr: &str, key: Option<&str>) -> Claim {
        Claim {
            addr: addr.parse().expect("address"),
            key: key.map(str::to_owned),
        }
    }

    fn me() -> Claim {
        claim("192.0.2.1", None)
    }

    fn video(ts: u32, key: bool) -> Frame {
        let b0 = if key { 0x17 } else { 0x27 };
        Frame {
            video: true,
            timestamp: ts,
            data: Bytes::from(vec![b0, 1, 0, 0, 0, ts as u8]),
        }
    }

    /// Publishes stream "s" with metadata (width 320) and an AVC sequence header.
    fn publish_with_headers(h: &Hub) -> Arc<Stream> {
        let s = h.publish("s", 1, me()).expect("publish");
        h.set_metadata(&s, vec![("width".into(), Value::Number(320.0))]);
        h.media(
            &s,
            Frame {
                video: true,
                timestamp: 0,
                data: Bytes::from_static(&[0x17, 0, 0, 0, 0]),
            },
        );
        s
    }

    /// Decodes pulled bytes as a player would.
    fn decode(dec: &mut ChunkDecoder, out: &mut VecDeque<Bytes>) -> Vec<RawMessage> {
        let mut buf = BytesMut::new();
        for b in out.drain(..) {
            buf.extend_from_slice(&b);
        }
        let mut msgs = Vec::new();
        while let Some(m) = dec.read(&mut buf).expect("valid chunk stream") {
            msgs.push(m);
        }
        assert!(buf.is_empty(), "whole messages only");
        msgs
    }

    fn decoder() -> ChunkDecoder {
        let mut dec = ChunkDecoder::new(Limits::default());
        dec.set_chunk_size(OUT_CHUNK_SIZE).expect("chunk size");
        dec
    }

    #[test]
    fn slow_subscriber_skips_then_is_dropped_fast_one_gets_everything() {
        let h = hub(2, 8);
        let s = h.publish("s", 1, me()).expect("publish");
        let mut fast = h.subscribe("s", 2).expect("fast");
        let mut slow = h.subscribe("s", 3).expect("slow");
        let (mut dec, mut out) = (decoder(), VecDeque::new());
        let frames = 300u32;
        let mut timestamps = Vec::new();
        for i in 0..frames {
            h.media(&s, video(i * 33, i % 30 == 0));
            fast.pull(&h.metrics, &mut out, usize::MAX);
            timestamps.extend(
                decode(&mut dec, &mut out)
                    .iter()
                    .filter(|m| m.type_id == type_id::VIDEO)
                    .map(|m| m.timestamp),
            );
        }
        let expect: Vec<u32> = (0..frames).map(|i| i * 33).collect();
        assert_eq!(timestamps, expect, "fast subscriber unaffected");
        assert_eq!(
            h.metrics.subscribers_dropped.get(),
            1,
            "slow one dropped after skipping GOPs"
        );
        assert!(h.metrics.dropped_frames.get() > 0);
        assert_eq!(slow.pull(&h.metrics, &mut out, usize::MAX), Pulled::Dropped);
        assert!(
            s.state.lock().expect("lock").ring.len() <= 8,
            "ring stayed bounded"
        );
        h.unsubscribe(&slow);
        h.unsubscribe(&slow);
        assert_eq!(s.state.lock().expect("lock").sub_count, 1);
    }

    #[test]
    fn lagging_subscriber_resumes_at_keyframe_with_metadata_and_sequence_headers() {
        let h = hub(3, 16);
        let s = publish_with_headers(&h);
        let mut sub = h.subscribe("s", 2).expect("join");
        let (mut dec, mut out) = (decoder(), VecDeque::new());
        sub.pull(&h.metrics, &mut out, usize::MAX);
        decode(&mut dec, &mut out);
        // 20 frames without pulling: the ring (16) overtakes the cursor.
        for i in 0..20u32 {
            h.media(&s, video(i * 33, i % 15 == 0));
        }
        assert_eq!(sub.pull(&h.metrics, &mut out, usize::MAX), Pulled::Control);
        let msgs = decode(&mut dec, &mut out);
        assert_eq!(msgs[0].type_id, type_id::DATA_AMF0, "metadata first");
        assert_eq!(
            &msgs[1].payload[..2],
            &[0x17, 0],
            "then the sequence header"
        );
        assert_eq!(
            msgs[2].timestamp,
            15 * 33,
            "then the keyframe it resumes at"
        );
        assert!(media::video_info(&msgs[2].payload).keyframe);
        let ts: Vec<u32> = msgs[2..].iter().map(|m| m.timestamp).collect();
        assert_eq!(ts, (15..20).map(|i| i * 33).collect::<Vec<_>>());
        assert!(h.metrics.dropped_frames.get() > 0);
    }

    #[test]
    fn late_joiner_gets_metadata_sequence_headers_and_gop_from_keyframe() {
        let h = hub(2, 1024);
        let s = publish_with_headers(&h);
        h.media(
            &s,
            Frame {
                video: false,
                timestamp: 0,
                data: Bytes::from_static(&[0xAF, 0, 0x12, 0x10]),
            },
        );
        for i in 0..45u32 {
            h.media(&s, video(i * 33, i % 30 == 0));
        }
        let mut sub = h.subscribe("s", 2).expect("join");
        let (mut dec, mut out) = (decoder(), VecDeque::new());
        assert_eq!(sub.pull(&h.metrics, &mut out, usize::MAX), Pulled::Control);
        let msgs = decode(&mut dec, &mut out);
        assert_eq!(msgs[0].type_id, type_id::USER_CONTROL, "StreamBegin first");
        assert_eq!(msgs[1].type_id, type_id::COMMAND_AMF0, "PublishNotify");
        assert_eq!(msgs[2].type_id, type_id::DATA_AMF0, "metadata third");
        let vals = amf0::decode_all(&msgs[2].payload).expect("amf0");
        let props = vals[1].properties().expect("props");
        assert_eq!(amf0::number_property(props, "width"), Some(320.0));
        assert_eq!(
            amf0::number_property(props, rtmp::STREAM_SESSION_ID),
            Some(1.0)
        );
        assert!(amf0::number_property(props, rtmp::STREAM_START_TIME_MS).is_some());
        let b = &msgs[3..];
        assert_eq!(
            b.len(),
            2 + 15,
            "two sequence headers + GOP from the keyframe at frame 30"
        );
        assert_eq!(b[2].timestamp, 30 * 33);
        assert!(media::video_info(&b[2].payload).keyframe);
        assert_eq!(
            sub.pull(&h.metrics, &mut out, usize::MAX),
            Pulled::Nothing,
            "nothing doubled"
        );
    }

    #[test]
    fn duplicate_publisher_refused_and_session_ids_increase() {
        let h = hub(2, 1024);
        let s = h.publish("s", 1, me()).expect("publish");
        assert_eq!(
            h.publish("s", 2, me()).err(),
            Some(HubError::AlreadyPublishing("s".into()))
        );
        h.unpublish(&s, 1);
        let s2 = h.publish("s", 3, me()).expect("again");
        assert_eq!(s2.state.lock().expect("lock").session_id, 2);
    }

    #[test]
    fn ring_is_capped_in_bytes_and_the_gauge_follows() {
        let h = Hub::new(
            HubLimits {
                stream_buffer_bytes: 1 << 20,
                ..limits(3, 1024)
            },
            Metrics::new(),
        );
        let s = h.publish("s", 1, me()).expect("publish");
        // 40 non-keyframe messages of 256 KiB: 10 MiB pushed, with an entry cap of 1024.
        for i in 0..40u32 {
            let mut data = vec![0u8; 256 * 1024];
            data[0] = 0x27;
            h.media(
                &s,
                Frame {
                    video: true,
                    timestamp: i * 33,
                    data: Bytes::from(data),
                },
            );
        }
        let ring_bytes = s.state.lock().expect("lock").ring_bytes;
        assert!(ring_bytes <= 1 << 20, "ring holds {ring_bytes} bytes");
        assert!(
            ring_bytes >= 3 * 256 * 1024,
            "but is not emptied: {ring_bytes}"
        );
        assert_eq!(h.metrics.buffered_streams.get(), ring_bytes as i64);
        // A subscriber still gets whole messages from what is left.
        let mut sub = h.subscribe("s", 2).expect("join");
        h.media(&s, video(40 * 33, true));
        let (mut dec, mut out) = (decoder(), VecDeque::new());
        sub.pull(&h.metrics, &mut out, usize::MAX);
        assert!(!decode(&mut dec, &mut out).is_empty());
        h.unpublish(&s, 1);
        h.unsubscribe(&sub);
        drop((s, sub));
        assert_eq!(
            h.metrics.buffered_streams.get(),
            0,
            "all returned when dropped"
        );
    }

    #[test]
    fn republish_grace_keeps_the_name_for_the_previous_publisher() {
        let h = Hub::new(
            HubLimits {
                republish_grace: Duration::from_secs(60),
                ..limits(3, 64)
            },
            Metrics::new(),
        );
        let first = claim("192.0.2.1", Some("k1"));
        let s = h.publish("s", 1, first.clone()).expect("publish");
        h.unpublish(&s, 1);
        assert_eq!(
            h.publish("s", 2, claim("198.51.100.7", None)).err(),
            Some(HubError::Reserved),
            "another address without the key"
        );
        assert_eq!(
            h.publish("s", 3, claim("198.51.100.7", Some("other")))
                .err(),
            Some(HubError::Reserved),
            "another address with another key"
        );
        let s = h
            .publish("s", 4, claim("198.51.100.7", Some("k1")))
            .expect("same key from a new address");
        h.unpublish(&s, 4);
        h.publish("s", 5, claim("198.51.100.7", None))
            .expect("same address as the last publisher");
        // Names in grace hold publish slots: 4 slots, "s" and 3 more.
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            let st = h.publish(n, 10 + i as u64, me()).expect("slot");
            h.unpublish(&st, 10 + i as u64);
        }
        assert_eq!(
            h.publish("d", 20, me()).err(),
            Some(HubError::TooManyStreams),
            "three names in grace and one published"
        );
    }

    #[test]
    fn waiting_players_cannot_take_publish_slots() {
        let h = hub(3, 64);
        let subs: Vec<_> = (0..4)
            .map(|i| h.subscribe(&format!("ghost{i}"), i).expect("waiting"))
            .collect();
        assert_eq!(
            h.subscribe("ghost4", 9).err(),
            Some(HubError::TooManyWaiting)
        );
        for i in 0..4u64 {
            h.publish(&format!("real{i}"), 100 + i, me())
                .expect("publish slots are separate");
        }
        assert_eq!(
            h.publish("real4", 200, me()).err(),
            Some(HubError::TooManyStreams)
        );
        // A waiting name that gets published moves to a publish slot: none is left.
        assert_eq!(
            h.publish("ghost0", 201, me()).err(),
            Some(HubError::TooManyStreams)
        );
        for s in &subs {
            h.unsubscribe(s);
        }
        assert_eq!(h.metrics.streams.get(), 4, "waiting entries removed");
    }

    #[test]
    fn metadata_too_long_to_encode_is_refused_and_the_previous_kept() {
        let h = hub(3, 64);
        let s = h.publish("s", 1, me()).expect("publish");
        h.set_metadata(&s, vec![("width".into(), Value::Number(320.0))]);
        h.media(&s, video(0, true));
        // Under the 24-bit limit as the publisher sent it, over it with our properties.
        let pad = "x".repeat(chunk::MAX_MESSAGE_LEN - 40);
        h.set_metadata(&s, vec![("pad".into(), Value::String(pad))]);
        assert_eq!(h.metrics.metadata_dropped.get(), 1);
        let mut sub = h.subscribe("s", 2).expect("join");
        let (mut dec, mut out) = (decoder(), VecDeque::new());
        sub.pull(&h.metrics, &mut out, usize::MAX);
        let msgs = decode(&mut dec, &mut out);
        let meta = msgs
            .iter()
            .find(|m| m.type_id == type_id::DATA_AMF0)
            .expect("metadata");
        let vals = amf0::decode_all(&meta.payload).expect("whole, decodable metadata");
        let props = vals[1].properties().expect("props");
        assert_eq!(amf0::number_property(props, "width"), Some(320.0));
        assert!(amf0::number_property(props, rtmp::STREAM_START_TIME_MS).is_some());
    }
}

//! The stream hub: one entry per stream name, holding its publisher slot, session identity
//! (id and start time), metadata, sequence headers, GOP cache, and subscribers.
//!
//! Fan-out happens on the publisher's task, under the stream's lock, with `try_send` into
//! each subscriber's bounded queue: a full queue never blocks the publisher or other
//! subscribers. A subscriber whose queue is full skips media until the next keyframe (its
//! player sees a jump, never a broken GOP); one that is still full after
//! [`crate::Config::max_skipped_gops`] keyframes is dropped.
//!
//! A std `Mutex`, not a tokio one: it is never held across an `.await`, and every critical
//! section is short (pushes of refcounted `Bytes`).

use crate::metrics::Metrics;
use bytes::Bytes;
use rtmp::amf0::{self, Value};
use rtmp::media;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

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

/// What the hub sends a subscriber's connection task.
#[derive(Debug, Clone)]
pub enum Out {
    /// A publish session started: StreamBegin + NetStream.Play.PublishNotify, and the
    /// subscriber's chunk encoder resets so the next messages carry absolute timestamps.
    SessionStart,
    /// The publish session ended: StreamEOF + NetStream.Play.UnpublishNotify.
    SessionEnd,
    /// An encoded `onMetaData` data message body (AMF0).
    Metadata(Bytes),
    /// One media message.
    Media(Frame),
    /// Several media messages at once (sequence headers + GOP cache for a joiner).
    Batch(Vec<Frame>),
}

/// Why the hub refused a publish or play.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HubError {
    /// The stream already has a publisher.
    #[error("stream {0:?} already has a publisher")]
    AlreadyPublishing(String),
    /// Creating the stream would exceed the stream limit.
    #[error("stream limit reached")]
    TooManyStreams,
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Out>,
    /// Skipping media until the next keyframe because the queue was full.
    waiting_key: bool,
    /// Keyframes passed while still full; over the limit the subscriber is dropped.
    skipped_gops: u32,
    /// Session id this subscriber has been told about (a missed SessionStart while skipping
    /// is re-sent when it resumes).
    session_seen: u64,
}

#[derive(Default)]
struct StreamState {
    publisher: Option<u64>,
    session_id: u64,
    start_time_ms: Option<i64>,
    /// The publisher's onMetaData properties.
    metadata: Option<Vec<(String, Value)>>,
    /// Encoded onMetaData with our two properties, once the start time is known.
    metadata_out: Option<Bytes>,
    video_seq: Option<Frame>,
    audio_seq: Option<Frame>,
    has_video: bool,
    /// Frames since the latest keyframe (empty if none yet, or if it outgrew the cap).
    gop: Vec<Frame>,
    gop_bytes: usize,
    gop_overflow: bool,
    subscribers: Vec<Subscriber>,
}

/// A stream's shared state.
pub struct Stream {
    name: String,
    state: Mutex<StreamState>,
}

/// Knobs the hub needs.
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    /// Most streams (entries with a publisher or subscribers).
    pub max_streams: usize,
    /// GOP cache cap in bytes; a GOP larger than this is not cached.
    pub gop_cache_bytes: usize,
    /// Keyframes a congested subscriber may skip before it is dropped.
    pub max_skipped_gops: u32,
}

/// All streams.
pub struct Hub {
    streams: Mutex<HashMap<String, Arc<Stream>>>,
    /// Last session id per stream name; survives the stream entry so ids keep increasing
    /// when a stream goes idle and comes back.
    session_ids: Mutex<HashMap<String, u64>>,
    limits: HubLimits,
    metrics: Arc<Metrics>,
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Hub {
    /// An empty hub.
    pub fn new(limits: HubLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            streams: Mutex::default(),
            session_ids: Mutex::default(),
            limits,
            metrics,
        }
    }

    fn get_or_create(&self, name: &str) -> Result<Arc<Stream>, HubError> {
        let mut streams = self.streams.lock().expect("hub lock");
        if let Some(s) = streams.get(name) {
            return Ok(s.clone());
        }
        if streams.len() >= self.limits.max_streams {
            return Err(HubError::TooManyStreams);
        }
        let s = Arc::new(Stream {
            name: name.to_owned(),
            state: Mutex::default(),
        });
        streams.insert(name.to_owned(), s.clone());
        self.metrics.streams.set(streams.len() as i64);
        Ok(s)
    }

    /// Removes the entry if nobody uses it any more.
    fn gc(&self, stream: &Arc<Stream>) {
        let mut streams = self.streams.lock().expect("hub lock");
        let idle = {
            let st = stream.state.lock().expect("stream lock");
            st.publisher.is_none() && st.subscribers.is_empty()
        };
        if idle
            && streams
                .get(&stream.name)
                .is_some_and(|s| Arc::ptr_eq(s, stream))
        {
            streams.remove(&stream.name);
            self.metrics.streams.set(streams.len() as i64);
        }
    }

    /// Starts a publish session for connection `conn_id`.
    pub fn publish(&self, name: &str, conn_id: u64) -> Result<Arc<Stream>, HubError> {
        let stream = self.get_or_create(name)?;
        {
            let mut st = stream.state.lock().expect("stream lock");
            if st.publisher.is_some() {
                drop(st);
                self.gc(&stream);
                return Err(HubError::AlreadyPublishing(name.to_owned()));
            }
            let session_id = {
                let mut ids = self.session_ids.lock().expect("ids lock");
                let id = ids.entry(name.to_owned()).or_default();
                *id += 1;
                *id
            };
            st.publisher = Some(conn_id);
            st.session_id = session_id;
            st.start_time_ms = None;
            st.metadata = None;
            st.metadata_out = None;
            st.video_seq = None;
            st.audio_seq = None;
            st.has_video = false;
            st.gop.clear();
            st.gop_bytes = 0;
            st.gop_overflow = false;
            tracing::info!(stream = name, session_id, "publish session started");
            broadcast_control(&mut st, &self.metrics, Out::SessionStart);
        }
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
            st.start_time_ms = None;
            st.metadata_out = None;
            st.gop.clear();
            st.gop_bytes = 0;
            tracing::info!(stream = %stream.name, session_id = st.session_id, "publish session ended");
            broadcast_control(&mut st, &self.metrics, Out::SessionEnd);
        }
        self.metrics.publishers.dec();
        self.gc(stream);
    }

    /// The publisher's onMetaData.
    pub fn set_metadata(&self, stream: &Stream, props: Vec<(String, Value)>) {
        let mut st = stream.state.lock().expect("stream lock");
        st.metadata = Some(props);
        if st.start_time_ms.is_some() {
            let out = encode_metadata(&st);
            st.metadata_out = Some(out.clone());
            broadcast_control(&mut st, &self.metrics, Out::Metadata(out));
        }
    }

    /// One media message from the publisher.
    pub fn media(&self, stream: &Stream, frame: Frame) {
        let mut st = stream.state.lock().expect("stream lock");
        if st.start_time_ms.is_none() {
            // Contract: wall clock at the first media message minus its timestamp.
            st.start_time_ms = Some(now_unix_ms() - frame.timestamp as i64);
            let out = encode_metadata(&st);
            st.metadata_out = Some(out.clone());
            tracing::info!(stream = %stream.name, session_id = st.session_id, start_time_ms = st.start_time_ms, "stream start time fixed");
            broadcast_control(&mut st, &self.metrics, Out::Metadata(out));
        }
        let (keyframe, seq) = if frame.video {
            let i = media::video_info(&frame.data);
            (i.keyframe && !i.sequence_header, i.sequence_header)
        } else {
            // Audio-only streams: every audio frame is a random access point.
            (!st.has_video, media::is_audio_sequence_header(&frame.data))
        };
        if seq {
            if frame.video {
                st.has_video = true;
                st.video_seq = Some(frame.clone());
            } else {
                st.audio_seq = Some(frame.clone());
            }
        } else {
            // GOP cache: restart at each keyframe; stop caching a GOP that outgrows the cap.
            if keyframe {
                st.gop.clear();
                st.gop_bytes = 0;
                st.gop_overflow = false;
            }
            if !st.gop_overflow && (keyframe || !st.gop.is_empty()) {
                if st.gop_bytes + frame.data.len() > self.limits.gop_cache_bytes {
                    st.gop.clear();
                    st.gop_bytes = 0;
                    st.gop_overflow = true;
                } else {
                    st.gop_bytes += frame.data.len();
                    st.gop.push(frame.clone());
                }
            }
        }
        let session_id = st.session_id;
        let metadata_out = st.metadata_out.clone();
        let resync_batch: Vec<Frame> = [st.video_seq.clone(), st.audio_seq.clone()]
            .into_iter()
            .flatten()
            .collect();
        let max_skips = self.limits.max_skipped_gops;
        let metrics = &self.metrics;
        st.subscribers.retain_mut(|s| {
            if s.waiting_key && !seq {
                if !keyframe {
                    metrics.dropped_frames.inc();
                    return true;
                }
                // Resume at this keyframe, if there is room for it and the resync.
                if s.tx.capacity() < 4 {
                    s.skipped_gops += 1;
                    metrics.dropped_frames.inc();
                    if s.skipped_gops > max_skips {
                        tracing::warn!(subscriber = s.id, "subscriber too slow, dropping it");
                        metrics.subscribers_dropped.inc();
                        return false;
                    }
                    return true;
                }
                s.waiting_key = false;
                s.skipped_gops = 0;
                tracing::debug!(
                    subscriber = s.id,
                    "congested subscriber resumes at keyframe"
                );
                if s.session_seen != session_id {
                    s.session_seen = session_id;
                    let _ = s.tx.try_send(Out::SessionStart);
                    if let Some(m) = &metadata_out {
                        let _ = s.tx.try_send(Out::Metadata(m.clone()));
                    }
                    let _ = s.tx.try_send(Out::Batch(resync_batch.clone()));
                }
            }
            match s.tx.try_send(Out::Media(frame.clone())) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::debug!(
                        subscriber = s.id,
                        "subscriber queue full, skipping to next keyframe"
                    );
                    metrics.dropped_frames.inc();
                    s.waiting_key = true;
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// Adds a subscriber and queues what a late joiner needs: session start, metadata,
    /// sequence headers and the GOP cache, all under the lock so nothing is missed or doubled.
    pub fn subscribe(
        &self,
        name: &str,
        id: u64,
        queue: usize,
    ) -> Result<(Arc<Stream>, mpsc::Receiver<Out>), HubError> {
        let stream = self.get_or_create(name)?;
        // Room for the join burst (one Batch message) plus the regular queue.
        let (tx, rx) = mpsc::channel(queue.max(8));
        {
            let mut st = stream.state.lock().expect("stream lock");
            // With no publisher yet, the subscriber gets the next session from its start.
            let mut waiting_key = st.publisher.is_some();
            if st.publisher.is_some() {
                let _ = tx.try_send(Out::SessionStart);
                if let Some(m) = &st.metadata_out {
                    let _ = tx.try_send(Out::Metadata(m.clone()));
                }
                let mut batch: Vec<Frame> = [st.video_seq.clone(), st.audio_seq.clone()]
                    .into_iter()
                    .flatten()
                    .collect();
                if !st.gop.is_empty() {
                    waiting_key = false;
                    batch.extend(st.gop.iter().cloned());
                }
                let _ = tx.try_send(Out::Batch(batch));
            }
            let session_seen = st.session_id;
            st.subscribers.push(Subscriber {
                id,
                tx,
                waiting_key,
                skipped_gops: 0,
                session_seen,
            });
        }
        self.metrics.subscribers.inc();
        Ok((stream, rx))
    }

    /// Removes a subscriber (idempotent).
    pub fn unsubscribe(&self, stream: &Arc<Stream>, id: u64) {
        {
            let mut st = stream.state.lock().expect("stream lock");
            st.subscribers.retain(|s| s.id != id);
        }
        self.metrics.subscribers.dec();
        self.gc(stream);
    }
}

/// Control events must not be lost: a subscriber whose queue cannot take one is put into
/// skip mode with its session marked unseen, so it is resynchronised at the next keyframe.
fn broadcast_control(st: &mut StreamState, metrics: &Metrics, out: Out) {
    let session_id = st.session_id;
    st.subscribers.retain_mut(|s| {
        if s.waiting_key {
            // It will get a full resync when it resumes.
            s.session_seen = s.session_seen.min(session_id.saturating_sub(1));
            return true;
        }
        match s.tx.try_send(out.clone()) {
            Ok(()) => {
                if matches!(out, Out::SessionStart) {
                    s.session_seen = session_id;
                }
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics.dropped_frames.inc();
                s.waiting_key = true;
                s.session_seen = session_id.saturating_sub(1);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    });
}

/// onMetaData for subscribers: the publisher's properties (or none) plus the two contract
/// properties, replacing any the publisher sent under the same names.
fn encode_metadata(st: &StreamState) -> Bytes {
    let mut props: Vec<(String, Value)> = st
        .metadata
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != rtmp::STREAM_START_TIME_MS && k != rtmp::STREAM_SESSION_ID)
        .collect();
    props.push((
        rtmp::STREAM_START_TIME_MS.into(),
        Value::Number(st.start_time_ms.unwrap_or(0) as f64),
    ));
    props.push((
        rtmp::STREAM_SESSION_ID.into(),
        Value::Number(st.session_id as f64),
    ));
    amf0::encode_all(&[Value::String("onMetaData".into()), Value::EcmaArray(props)]).freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(max_skipped_gops: u32) -> Hub {
        Hub::new(
            HubLimits {
                max_streams: 4,
                gop_cache_bytes: 1 << 20,
                max_skipped_gops,
            },
            Metrics::new(),
        )
    }

    fn video(ts: u32, key: bool) -> Frame {
        let b0 = if key { 0x17 } else { 0x27 };
        Frame {
            video: true,
            timestamp: ts,
            data: Bytes::from(vec![b0, 1, 0, 0, 0, ts as u8]),
        }
    }

    #[test]
    fn slow_subscriber_skips_then_is_dropped_fast_one_gets_everything() {
        let h = hub(2);
        let s = h.publish("s", 1).expect("publish");
        let (_, mut fast) = h.subscribe("s", 2, 10_000).expect("fast");
        let (_, slow) = h.subscribe("s", 3, 8).expect("slow");
        let frames = 300u32;
        for i in 0..frames {
            h.media(&s, video(i * 33, i % 30 == 0));
        }
        let mut media = 0;
        while let Ok(o) = fast.try_recv() {
            if matches!(o, Out::Media(_)) {
                media += 1;
            }
        }
        assert_eq!(media, frames, "fast subscriber unaffected");
        assert!(h.metrics.dropped_frames.get() > 0);
        assert_eq!(
            h.metrics.subscribers_dropped.get(),
            1,
            "slow one dropped after skipping GOPs"
        );
        assert!(slow.len() <= 8, "slow queue stayed bounded");
        assert_eq!(s.state.lock().expect("lock").subscribers.len(), 1);
    }

    #[test]
    fn late_joiner_gets_metadata_sequence_headers_and_gop_from_keyframe() {
        let h = hub(2);
        let s = h.publish("s", 1).expect("publish");
        h.set_metadata(&s, vec![("width".into(), Value::Number(320.0))]);
        h.media(
            &s,
            Frame {
                video: true,
                timestamp: 0,
                data: Bytes::from_static(&[0x17, 0, 0, 0, 0]),
            },
        );
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
        let (_, mut rx) = h.subscribe("s", 2, 64).expect("join");
        assert!(matches!(rx.try_recv(), Ok(Out::SessionStart)));
        let Ok(Out::Metadata(m)) = rx.try_recv() else {
            panic!("metadata second")
        };
        let vals = amf0::decode_all(&m).expect("amf0");
        let props = vals[1].properties().expect("props");
        assert_eq!(amf0::number_property(props, "width"), Some(320.0));
        assert_eq!(
            amf0::number_property(props, rtmp::STREAM_SESSION_ID),
            Some(1.0)
        );
        assert!(amf0::number_property(props, rtmp::STREAM_START_TIME_MS).is_some());
        let Ok(Out::Batch(b)) = rx.try_recv() else {
            panic!("batch third")
        };
        assert_eq!(
            b.len(),
            2 + 15,
            "two sequence headers + GOP from the keyframe at frame 30"
        );
        assert_eq!(b[2].timestamp, 30 * 33);
        assert!(media::video_info(&b[2].data).keyframe);
    }

    #[test]
    fn duplicate_publisher_refused_and_session_ids_increase() {
        let h = hub(2);
        let s = h.publish("s", 1).expect("publish");
        assert_eq!(
            h.publish("s", 2).err(),
            Some(HubError::AlreadyPublishing("s".into()))
        );
        h.unpublish(&s, 1);
        let s2 = h.publish("s", 3).expect("again");
        assert_eq!(s2.state.lock().expect("lock").session_id, 2);
    }
}

//! The sans-IO core: FLV tags in, segments and playlists out ([`Packager::push`]).
//!
//! Every decision here depends only on the event stream (timestamps, keyframe flags, metadata
//! announced by the ingest), never on a clock or on when this instance connected, so two
//! instances reading the same RTMP session agree (docs/ARCHITECTURE.md, "Interchangeable packagers"):
//! - stream time `t_ms = streamStartTimeMs + rtmp_timestamp_ms` (plus a rebase after a backwards
//!   jump, see [`Packager::push`]);
//! - a segment is cut only at a keyframe whose `floor(t_ms / target)` differs from the open
//!   segment's number, and that number is its media sequence number and file name;
//! - PROGRAM-DATE-TIME is the `t_ms` of its first frame; PTS/DTS are `t_ms * 90 mod 2^33`;
//! - a segment is published only if this instance saw its start (the cut), so a late joiner
//!   drops the partial segment it joined in the middle of (RFC 8216 6.3.5: an instance must not
//!   list a shorter segment under a number the other lists with the full one).

use bytes::Bytes;

use crate::aac::AacConfig;
use crate::flv::{self, AudioTag, FlvError, VideoTag};
use crate::h264::AvcConfig;
use crate::playlist::{Playlist, Retired, SegmentInfo};
use crate::ts::{TICKS_PER_MS, TIMESTAMP_MODULUS, TsMuxer};

/// Tunables. Every instance serving the same stream must use the same values.
#[derive(Debug, Clone)]
pub struct Config {
    /// Segment target duration in milliseconds (the contract: 2 s). Must be whole seconds because
    /// EXT-X-TARGETDURATION is an integer (RFC 8216 4.3.3.1).
    pub target_duration_ms: u64,
    /// Segments listed in the playlist (the contract: 6).
    pub window: usize,
    /// Larger frames are dropped: caps what a publisher can make us buffer.
    pub max_frame_bytes: usize,
    /// A per-track timestamp step larger than this (either direction) is a discontinuity.
    pub jump_threshold_ms: u64,
}

/// Milliseconds per second, for the target duration.
const MS_PER_SECOND: u64 = 1000;

impl Default for Config {
    fn default() -> Self {
        Self {
            target_duration_ms: 2 * MS_PER_SECOND,
            window: 6,
            // 8 MiB: well above a 4K IDR frame at broadcast bitrates.
            max_frame_bytes: 8 << 20,
            // Larger than any keyframe interval or audio gap a live encoder produces.
            jump_threshold_ms: 5 * MS_PER_SECOND,
        }
    }
}

/// What the ingest announces in onMetaData (INGEST CONTRACT: two extra AMF0 Numbers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metadata {
    /// `streamStartTimeMs`: UNIX ms at which RTMP timestamp 0 of this publish session occurred.
    pub stream_start_time_ms: u64,
    /// `streamSessionId`: increments with every publish session. It is also the base of the
    /// segments' Discontinuity Sequence Numbers, so every instance numbers a session alike.
    pub session_id: u64,
}

/// Input to the core: one RTMP play event (FLV tag bodies for audio/video).
#[derive(Debug, Clone)]
pub enum Event {
    /// onMetaData with the ingest's stream timing.
    Metadata(Metadata),
    /// An FLV video tag body.
    Video {
        /// RTMP timestamp (DTS), ms.
        timestamp_ms: u32,
        /// Tag body.
        data: Bytes,
    },
    /// An FLV audio tag body.
    Audio {
        /// RTMP timestamp, ms.
        timestamp_ms: u32,
        /// Tag body.
        data: Bytes,
    },
    /// The publisher stopped (NetStream.Play.UnpublishNotify): the open segment is complete.
    EndOfSession,
    /// Our connection went away: the open segment may be incomplete, so it is dropped.
    Disconnected,
}

/// Why a frame was dropped (the `reason` label of `packager_dropped_frames_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// No onMetaData with `streamStartTimeMs` yet.
    NoMetadata,
    /// No AVC/AAC sequence header yet.
    NoSequenceHeader,
    /// A codec other than H.264/AAC.
    UnsupportedCodec,
    /// Tag body or configuration could not be parsed.
    Malformed,
    /// Larger than [`Config::max_frame_bytes`].
    Oversized,
    /// DTS not after the previous one on the same track (within the jump threshold).
    NonMonotonic,
}

impl DropReason {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoMetadata => "no_metadata",
            Self::NoSequenceHeader => "no_sequence_header",
            Self::UnsupportedCodec => "unsupported_codec",
            Self::Malformed => "malformed",
            Self::Oversized => "oversized",
            Self::NonMonotonic => "non_monotonic",
        }
    }
}

/// Output of the core, to be applied in order by the writer.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A complete segment: write `data` to `info.file_name()`.
    Segment {
        /// Number, duration, PDT.
        info: SegmentInfo,
        /// The MPEG-TS bytes.
        data: Vec<u8>,
    },
    /// The new playlist text (after the segments it lists).
    Playlist(String),
    /// This segment left the playlist: delete it once it has been available long enough.
    Retire(Retired),
    /// A frame was dropped.
    Dropped(DropReason),
    /// A segment was not published because this instance did not see its start or end.
    PartialDiscarded {
        /// Its number.
        msn: u64,
    },
    /// The next segment starts a new timeline (EXT-X-DISCONTINUITY).
    Discontinuity,
}

/// The segment being built.
#[derive(Debug)]
struct OpenSegment {
    msn: u64,
    dsn: u64,
    start_t_ms: u64,
    last_t_ms: u64,
    /// We saw the cut that opened it (see module docs).
    complete_start: bool,
    discontinuity: bool,
    with_audio: bool,
    mux: TsMuxer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Track {
    Video,
    Audio,
}

enum TimestampCheck {
    Ok,
    Drop,
    /// Forward (`false`) or backward (`true`) jump.
    Jump {
        backwards: bool,
    },
}

/// Nominal gap inserted after a backwards timestamp jump so stream time keeps increasing.
const REBASE_GAP_MS: u64 = 40;

/// The packager for one stream. Feed it events with [`Packager::push`].
#[derive(Debug)]
pub struct Packager {
    cfg: Config,
    meta: Option<Metadata>,
    avc: Option<AvcConfig>,
    aac: Option<AacConfig>,
    cur: Option<OpenSegment>,
    playlist: Playlist,
    last_msn: Option<u64>,
    /// The next segment gets EXT-X-DISCONTINUITY.
    pending_discontinuity: bool,
    /// The next keyframe is a cut every watching instance made (after a jump or config change).
    forced_cut: bool,
    last_ts: [Option<u32>; 2],
    /// Added to stream time after backwards jumps (see [`REBASE_GAP_MS`]).
    rebase_ms: i64,
    last_video_t_ms: Option<u64>,
    /// Stream time of the last video keyframe, and the interval between the last two (the
    /// GOP length), for predicting the next cut ([`Packager::ms_until_cut`]).
    last_key_t_ms: Option<u64>,
    gop_ms: Option<u64>,
    /// Discontinuities inside this session (timestamp jumps, codec changes) seen by us.
    session_jumps: u64,
    /// Discontinuity sequence number of the last opened segment.
    last_dsn: Option<u64>,
    /// Duration of the last video frame, used to close the last segment of a session.
    last_frame_ms: u64,
}

/// A keyframe this close to RTMP timestamp 0 is taken as the session's first one, which every
/// instance cut at. Publishers start video at 0 or a few audio frames later (ffmpeg: ~23 ms);
/// a second keyframe within this time of the start would be misjudged, so it stays small.
const SESSION_START_MAX_TS_MS: u32 = 250;

/// Frame duration assumed before two video frames were seen (30 fps).
const DEFAULT_FRAME_MS: u64 = 33;

impl Packager {
    /// A packager with no stream yet.
    pub fn new(cfg: Config) -> Self {
        let playlist = Playlist::new(cfg.target_duration_ms / MS_PER_SECOND, cfg.window);
        Self {
            cfg,
            meta: None,
            avc: None,
            aac: None,
            cur: None,
            playlist,
            last_msn: None,
            pending_discontinuity: false,
            forced_cut: false,
            last_ts: [None, None],
            rebase_ms: 0,
            last_video_t_ms: None,
            last_key_t_ms: None,
            gop_ms: None,
            session_jumps: 0,
            last_dsn: None,
            last_frame_ms: DEFAULT_FRAME_MS,
        }
    }

    /// The playlist as currently published.
    pub fn playlist(&self) -> &Playlist {
        &self.playlist
    }

    /// Stream time, in ms, from the newest frame of the open segment to the expected next cut;
    /// `None` with no open segment. A live source can sleep this long without delaying a
    /// segment (see `source::RtmpStream`).
    ///
    /// No cut can happen before the next target-duration boundary. The cut is the first
    /// keyframe at or after it, predicted from the last keyframe and the GOP length seen
    /// (encoders keep a fixed keyframe interval for HLS, and the stream's start time puts the
    /// boundaries at any phase of it). Without a GOP length yet, the boundary itself; 0 once
    /// the prediction has passed (the next keyframe cuts, whenever it comes). An earlier,
    /// irregular keyframe (a scene cut) still cuts where it is: the prediction only decides
    /// how soon the segment is noticed, never what it holds.
    pub fn ms_until_cut(&self) -> Option<u64> {
        let cur = self.cur.as_ref()?;
        let boundary = (cur.msn + 1).saturating_mul(self.cfg.target_duration_ms);
        let cut = match (self.last_key_t_ms, self.gop_ms) {
            (Some(key), Some(gop)) if key < boundary => {
                key.saturating_add((boundary - key).div_ceil(gop).saturating_mul(gop))
            }
            _ => boundary,
        };
        Some(cut.saturating_sub(cur.last_t_ms))
    }

    /// Consumes one event; returns what to write, in order.
    ///
    /// Bad input never yields a corrupt segment: frames without metadata or sequence headers,
    /// of unsupported codecs, oversized or going backwards by less than the jump threshold are
    /// dropped; a timestamp jump beyond the threshold, a new publish session or a codec
    /// configuration change closes the open segment and starts a new timeline with
    /// EXT-X-DISCONTINUITY (RFC 8216 4.3.2.3). A backwards jump is rebased so media sequence
    /// numbers never repeat.
    pub fn push(&mut self, event: Event) -> Vec<Output> {
        let mut out = Vec::new();
        match event {
            Event::Metadata(m) => self.on_metadata(m, &mut out),
            Event::Video { timestamp_ms, data } => self.on_video(timestamp_ms, &data, &mut out),
            Event::Audio { timestamp_ms, data } => self.on_audio(timestamp_ms, &data, &mut out),
            Event::EndOfSession => {
                tracing::info!("publisher stopped: closing the open segment");
                self.end_session(&mut out);
            }
            Event::Disconnected => {
                if let Some(cur) = self.cur.take() {
                    tracing::info!(
                        msn = cur.msn,
                        "disconnected: dropping the open segment, its end was not seen"
                    );
                    if cur.discontinuity {
                        self.pending_discontinuity = true;
                    }
                    out.push(Output::PartialDiscarded { msn: cur.msn });
                }
                self.last_ts = [None, None];
                self.last_video_t_ms = None;
                self.last_key_t_ms = None;
            }
        }
        out
    }

    fn on_metadata(&mut self, m: Metadata, out: &mut Vec<Output>) {
        match self.meta {
            Some(old) if old.session_id == m.session_id => {
                // The ingest repeats metadata to late joiners and on reconnect; same session.
                if old != m {
                    tracing::warn!(?old, new = ?m, "stream start time changed within a session; keeping the first");
                }
            }
            Some(old) => {
                tracing::info!(
                    old = old.session_id,
                    new = m.session_id,
                    "new publish session: discontinuity"
                );
                self.end_session(out);
                self.meta = Some(m);
                self.rebase_ms = 0;
                self.session_jumps = 0;
            }
            None => self.meta = Some(m),
        }
    }

    /// Closes the open segment (its end is known: the publisher stopped or restarted) and
    /// forgets the session's codec state.
    fn end_session(&mut self, out: &mut Vec<Output>) {
        if let Some(cur) = self.cur.take() {
            let end = cur.last_t_ms + self.last_frame_ms;
            self.close(cur, end, out);
        }
        self.mark_discontinuity(out);
        self.forced_cut = false;
        self.avc = None;
        self.aac = None;
        self.last_ts = [None, None];
        self.last_video_t_ms = None;
        self.last_key_t_ms = None;
    }

    fn mark_discontinuity(&mut self, out: &mut Vec<Output>) {
        if self.last_msn.is_some() && !self.pending_discontinuity {
            self.pending_discontinuity = true;
            out.push(Output::Discontinuity);
        }
    }

    fn drop_frame(
        &self,
        reason: DropReason,
        detail: &dyn std::fmt::Display,
        out: &mut Vec<Output>,
    ) {
        tracing::warn!(reason = reason.as_str(), %detail, "dropping frame");
        out.push(Output::Dropped(reason));
    }

    fn t_ms(&self, meta: Metadata, ts: u32) -> u64 {
        (meta.stream_start_time_ms as i64 + i64::from(ts) + self.rebase_ms).max(0) as u64
    }

    fn on_video(&mut self, ts: u32, body: &Bytes, out: &mut Vec<Output>) {
        let tag = match flv::parse_video(body) {
            Ok(tag) => tag,
            Err(e) => return self.drop_frame(flv_reason(&e), &e, out),
        };
        let (keyframe, cts_ms, data) = match tag {
            VideoTag::SequenceHeader(rec) => {
                match AvcConfig::parse(&rec) {
                    Ok(c) => {
                        if self.avc.as_ref().is_some_and(|old| *old != c) && self.cur.is_some() {
                            tracing::info!("H.264 parameter sets changed: discontinuity");
                            self.force_cut(out);
                        }
                        self.avc = Some(c);
                    }
                    Err(e) => self.drop_frame(DropReason::Malformed, &e, out),
                }
                return;
            }
            VideoTag::EndOfSequence => return,
            VideoTag::Nalu {
                keyframe,
                cts_ms,
                data,
            } => (keyframe, cts_ms, data),
        };
        let Some(meta) = self.meta else {
            return self.drop_frame(DropReason::NoMetadata, &"video before onMetaData", out);
        };
        let Some(avc) = &self.avc else {
            return self.drop_frame(
                DropReason::NoSequenceHeader,
                &"video before the AVC sequence header",
                out,
            );
        };
        if data.len() > self.cfg.max_frame_bytes {
            return self.drop_frame(
                DropReason::Oversized,
                &format!("video frame of {} bytes", data.len()),
                out,
            );
        }
        let annex_b = match avc.to_annex_b(&data) {
            Ok(a) => a,
            Err(e) => return self.drop_frame(DropReason::Malformed, &e, out),
        };
        if !self.check_timestamp(Track::Video, ts, out) {
            return;
        }
        let t = self.t_ms(meta, ts);
        let prev_t = self.last_video_t_ms.replace(t);
        if let Some(prev) = prev_t {
            self.last_frame_ms = t.saturating_sub(prev).max(1);
        }
        if keyframe {
            if let Some(prev) = self.last_key_t_ms.replace(t) {
                self.gop_ms = Some(t.saturating_sub(prev)).filter(|&g| g > 0);
            }
            self.maybe_cut(t, ts, prev_t, out);
        }
        let Some(cur) = self.cur.as_mut() else {
            tracing::trace!(ts, "waiting for a keyframe");
            return;
        };
        let dts = to_ticks(t as i64);
        let pts = to_ticks(t as i64 + i64::from(cts_ms));
        cur.mux.write_video(pts, dts, keyframe, &annex_b);
        cur.last_t_ms = cur.last_t_ms.max(t);
    }

    fn on_audio(&mut self, ts: u32, body: &Bytes, out: &mut Vec<Output>) {
        let tag = match flv::parse_audio(body) {
            Ok(tag) => tag,
            Err(e) => return self.drop_frame(flv_reason(&e), &e, out),
        };
        let raw = match tag {
            AudioTag::SequenceHeader(asc) => {
                match AacConfig::parse(&asc) {
                    Ok(c) => self.aac = Some(c),
                    Err(e) => self.drop_frame(DropReason::UnsupportedCodec, &e, out),
                }
                return;
            }
            AudioTag::Raw(raw) => raw,
        };
        let Some(meta) = self.meta else {
            return self.drop_frame(DropReason::NoMetadata, &"audio before onMetaData", out);
        };
        let Some(aac) = self.aac else {
            return self.drop_frame(
                DropReason::NoSequenceHeader,
                &"audio before the AAC sequence header",
                out,
            );
        };
        if raw.len() > self.cfg.max_frame_bytes {
            return self.drop_frame(
                DropReason::Oversized,
                &format!("audio frame of {} bytes", raw.len()),
                out,
            );
        }
        let adts = match aac.to_adts(&raw) {
            Ok(a) => a,
            Err(e) => return self.drop_frame(DropReason::Oversized, &e, out),
        };
        if !self.check_timestamp(Track::Audio, ts, out) {
            return;
        }
        let t = self.t_ms(meta, ts);
        // Audio before the first keyframe has no segment; audio whose config arrived after the
        // segment's PMT was written waits for the next segment.
        let Some(cur) = self.cur.as_mut().filter(|c| c.with_audio) else {
            return;
        };
        cur.mux.write_audio(to_ticks(t as i64), &adts);
        cur.last_t_ms = cur.last_t_ms.max(t);
    }

    /// Per-track timestamp sanity; returns whether to keep the frame.
    fn check_timestamp(&mut self, track: Track, ts: u32, out: &mut Vec<Output>) -> bool {
        let idx = track as usize;
        let check = match self.last_ts[idx] {
            None => TimestampCheck::Ok,
            Some(last) if ts < last || (ts == last && track == Track::Video) => {
                if u64::from(last - ts) > self.cfg.jump_threshold_ms {
                    TimestampCheck::Jump { backwards: true }
                } else {
                    TimestampCheck::Drop
                }
            }
            Some(last) if u64::from(ts - last) > self.cfg.jump_threshold_ms => {
                TimestampCheck::Jump { backwards: false }
            }
            Some(_) => TimestampCheck::Ok,
        };
        match check {
            TimestampCheck::Ok => {
                self.last_ts[idx] = Some(ts);
                true
            }
            TimestampCheck::Drop => {
                self.drop_frame(
                    DropReason::NonMonotonic,
                    &format!("{track:?} timestamp {ts} after {:?}", self.last_ts[idx]),
                    out,
                );
                false
            }
            TimestampCheck::Jump { backwards } => {
                let last = self.last_ts[idx];
                tracing::warn!(
                    ?track,
                    ts,
                    ?last,
                    backwards,
                    "timestamp jump: discontinuity"
                );
                if backwards
                    && let (Some(meta), Some(last_t)) = (
                        self.meta,
                        self.cur
                            .as_ref()
                            .map(|c| c.last_t_ms)
                            .or(self.last_video_t_ms),
                    )
                {
                    // Continue stream time just after the last frame, so numbers keep growing.
                    let unrebased = meta.stream_start_time_ms as i64 + i64::from(ts);
                    self.rebase_ms = (last_t + REBASE_GAP_MS) as i64 - unrebased;
                }
                self.force_cut(out);
                self.last_ts = [None, None];
                self.last_ts[idx] = Some(ts);
                self.last_video_t_ms = None;
                self.last_key_t_ms = None;
                true
            }
        }
    }

    /// Ends the open segment now (its end is seen by every instance watching) and makes the next
    /// keyframe start a segment after EXT-X-DISCONTINUITY.
    fn force_cut(&mut self, out: &mut Vec<Output>) {
        if let Some(cur) = self.cur.take() {
            let end = cur.last_t_ms + self.last_frame_ms;
            self.close(cur, end, out);
        }
        self.mark_discontinuity(out);
        self.forced_cut = true;
        self.session_jumps += 1;
    }

    /// At a keyframe: cut if its time bucket differs from the open segment's. `prev_t` is the
    /// previous video frame's stream time, if seen since (re)connecting.
    fn maybe_cut(&mut self, t: u64, ts: u32, prev_t: Option<u64>, out: &mut Vec<Output>) {
        let bucket = t / self.cfg.target_duration_ms;
        let complete_start = match self.cur.take() {
            Some(cur) if bucket <= cur.msn => {
                self.cur = Some(cur);
                return;
            }
            Some(cur) => {
                self.close(cur, t, out);
                true
            }
            // No open segment (just joined): an instance that has been watching cut here only if
            // it is the session's first frame, follows a forced cut, or the bucket changed since
            // the previous frame (its open segment's number is at most that frame's bucket).
            // Otherwise this keyframe may be mid-segment for it, and we must not publish.
            None => {
                self.forced_cut
                    || ts <= SESSION_START_MAX_TS_MS
                    || prev_t.is_some_and(|p| p / self.cfg.target_duration_ms < bucket)
            }
        };
        self.forced_cut = false;
        let msn = self.last_msn.map_or(bucket, |last| bucket.max(last + 1));
        self.last_msn = Some(msn);
        let with_audio = self.aac.is_some();
        let discontinuity = std::mem::take(&mut self.pending_discontinuity);
        // Discontinuity Sequence Number: session id + jumps within it, never going backwards
        // and one higher after a DISCONTINUITY tag (RFC 8216 4.3.3.3). Only in-session jumps
        // are history a late joiner may not know; session changes number alike everywhere.
        let base = self.meta.map_or(0, |m| m.session_id) + self.session_jumps;
        let dsn = match self.last_dsn {
            Some(last) if discontinuity => base.max(last + 1),
            Some(last) => base.max(last),
            None => base,
        };
        self.last_dsn = Some(dsn);
        tracing::debug!(msn, t, complete_start, "opening segment");
        self.cur = Some(OpenSegment {
            msn,
            dsn,
            start_t_ms: t,
            last_t_ms: t,
            complete_start,
            discontinuity,
            with_audio,
            mux: TsMuxer::new(with_audio, msn),
        });
    }

    fn close(&mut self, cur: OpenSegment, end_t_ms: u64, out: &mut Vec<Output>) {
        if !cur.complete_start {
            tracing::info!(
                msn = cur.msn,
                "not publishing segment: joined after its start"
            );
            if cur.discontinuity {
                self.pending_discontinuity = true;
            }
            out.push(Output::PartialDiscarded { msn: cur.msn });
            return;
        }
        let duration_ms = end_t_ms.saturating_sub(cur.start_t_ms);
        if duration_ms > self.cfg.target_duration_ms + self.cfg.target_duration_ms / 2 {
            tracing::warn!(
                msn = cur.msn,
                duration_ms,
                "segment longer than the target duration: keyframe interval too long?"
            );
        }
        let info = SegmentInfo {
            msn: cur.msn,
            duration_ms,
            pdt_ms: cur.start_t_ms,
            discontinuity: cur.discontinuity,
            discontinuity_sequence: cur.dsn,
        };
        out.push(Output::Segment {
            info: info.clone(),
            data: cur.mux.finish(),
        });
        for old in self.playlist.push(info) {
            out.push(Output::Retire(old));
        }
        out.push(Output::Playlist(self.playlist.render()));
    }
}

fn flv_reason(e: &FlvError) -> DropReason {
    match e {
        FlvError::UnsupportedAudioCodec(_) | FlvError::UnsupportedVideoCodec(_) => {
            DropReason::UnsupportedCodec
        }
        _ => DropReason::Malformed,
    }
}

/// Stream time (ms) to a 33-bit 90 kHz timestamp (ISO 13818-1 2.4.3.7).
fn to_ticks(t_ms: i64) -> u64 {
    (t_ms.max(0) as u64 * TICKS_PER_MS) % TIMESTAMP_MODULUS
}

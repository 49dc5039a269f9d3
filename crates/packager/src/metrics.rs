//! Prometheus metrics, served on the admin endpoint (`/metrics`, `/healthz`) by
//! [`crate::run`] with the `service` crate's server.
//!
//! Every metric is declared here, prefixed `packager_`, labelled by `stream`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All packager metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `packager_segments_written_total{stream}`: segments written to disk.
    pub segments_written: IntCounterVec,
    /// `packager_segment_duration_seconds{stream}`: EXTINF of written segments.
    pub segment_duration: HistogramVec,
    /// `packager_newest_media_sequence{stream}`: MSN of the newest written segment.
    pub newest_msn: IntGaugeVec,
    /// `packager_live_lag_seconds{stream}`: when the newest segment was written, how late its
    /// end was published; see [`live_lag_seconds`] for what exactly that measures.
    pub lag_seconds: prometheus::GaugeVec,
    /// `packager_write_errors_total{stream}`: failed writes/deletes (retried).
    pub write_errors: IntCounterVec,
    /// `packager_dropped_frames_total{stream,reason}`: frames dropped as bad input.
    pub dropped_frames: IntCounterVec,
    /// `packager_partial_segments_total{stream}`: segments not published because this instance
    /// did not see their start or end (late join, disconnect).
    pub partial_segments: IntCounterVec,
    /// `packager_discontinuities_total{stream}`: new timelines (restart, jump, codec change).
    pub discontinuities: IntCounterVec,
    /// `packager_source_errors_total{stream}`: failed connects or broken source connections.
    pub source_errors: IntCounterVec,
    /// `packager_source_connected{stream}`: 1 while connected to the ingest.
    pub source_connected: IntGaugeVec,
}

/// Histogram buckets around the 2 s target (seconds).
const DURATION_BUCKETS: [f64; 8] = [0.5, 1.0, 1.5, 1.9, 2.1, 2.5, 3.0, 5.0];

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let segments_written = counter(
            "packager_segments_written_total",
            "Segments written to disk.",
            &["stream"],
        );
        let write_errors = counter(
            "packager_write_errors_total",
            "Failed file writes or deletes (retried).",
            &["stream"],
        );
        let dropped_frames = counter(
            "packager_dropped_frames_total",
            "Frames dropped as bad input.",
            &["stream", "reason"],
        );
        let partial_segments = counter(
            "packager_partial_segments_total",
            "Segments not published: start or end not seen.",
            &["stream"],
        );
        let discontinuities = counter(
            "packager_discontinuities_total",
            "Discontinuities started.",
            &["stream"],
        );
        let source_errors = counter(
            "packager_source_errors_total",
            "Failed or broken source connections.",
            &["stream"],
        );
        let segment_duration = HistogramVec::new(
            HistogramOpts::new(
                "packager_segment_duration_seconds",
                "Duration of written segments.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["stream"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(segment_duration.clone()))
            .expect("unique metric");
        let newest_msn = IntGaugeVec::new(
            Opts::new(
                "packager_newest_media_sequence",
                "MSN of the newest written segment.",
            ),
            &["stream"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(newest_msn.clone()))
            .expect("unique metric");
        let source_connected = IntGaugeVec::new(
            Opts::new(
                "packager_source_connected",
                "1 while connected to the ingest.",
            ),
            &["stream"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(source_connected.clone()))
            .expect("unique metric");
        let lag_seconds = prometheus::GaugeVec::new(
            Opts::new(
                "packager_live_lag_seconds",
                "Wall clock when the newest segment was written minus its end in stream time \
                 (anchored at the ingest's streamStartTimeMs), clamped at 0.",
            ),
            &["stream"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(lag_seconds.clone()))
            .expect("unique metric");
        Self {
            registry,
            segments_written,
            segment_duration,
            newest_msn,
            lag_seconds,
            write_errors,
            dropped_frames,
            partial_segments,
            discontinuities,
            source_errors,
            source_connected,
        }
    }

    /// Text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to a Vec");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `packager_live_lag_seconds` for a segment ending at `segment_end_ms` (PDT + duration, UNIX
/// ms) written at `now_ms`.
///
/// What it measures: stream time is anchored by the ingest's `streamStartTimeMs`, the wall clock
/// when the session's *first* media message arrived minus its timestamp. A segment is closed by
/// the arrival of the next keyframe, whose stream time is its end, so the difference is: how much
/// later that keyframe reached us than the first message's pace predicts (publisher and ingest
/// jitter, the ingest's merged writes), plus this packager's read batching (once the boundary
/// is due, up to [`crate::source::READ_BATCH_INTERVAL`]), muxing and write time. It grows when
/// the packager or the path from the ingest falls behind; it is not glass-to-glass latency
/// (encoder delay before the first message is inside the anchor), and a player additionally sees
/// up to a target duration of age between segments (switcher-ctl's `segment_age_seconds`).
///
/// Why clamped at 0: when the first message was itself late (encoder start-up, a slow first
/// write), later frames arrive "early" against the anchor and the raw difference is slightly
/// negative. That is an artefact of the anchor, not a packager ahead of live, so it reads as 0.
pub fn live_lag_seconds(now_ms: u64, segment_end_ms: u64) -> f64 {
    now_ms.saturating_sub(segment_end_ms) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_never_negative() {
        // Stream time 40 ms ahead of the clock: an anchor artefact, reads as 0.
        assert_eq!(live_lag_seconds(1_000_000, 1_000_040), 0.0);
        assert_eq!(live_lag_seconds(1_000_000, 1_000_000), 0.0);
        assert_eq!(live_lag_seconds(1_000_250, 1_000_000), 0.25);
    }
}

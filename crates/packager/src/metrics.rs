//! Prometheus metrics and the admin HTTP endpoint (`/metrics`, `/healthz`).
//!
//! Every metric is declared here, prefixed `packager_`, labelled by `stream`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

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
    /// `packager_live_lag_seconds{stream}`: wall clock minus the end (PDT + duration) of the
    /// newest segment, when it was written: how far behind live the playlist is.
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
                "Wall clock minus the end of the newest segment when written.",
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

/// Serves `/metrics` and `/healthz` on `listener` until the process exits (one thread, one
/// request per connection: scrapes are rare and small).
pub fn serve(listener: TcpListener, metrics: Metrics) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() {
            continue;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/");
        let (status, ctype, body) = match path {
            "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
            "/healthz" => (
                "200 OK",
                "application/json",
                "{\"status\":\"ok\"}".to_owned(),
            ),
            _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

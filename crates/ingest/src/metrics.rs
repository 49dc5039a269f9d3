//! Prometheus metrics (`ingest_*`); the admin endpoint serving them is
//! [`service::serve_admin`] with [`service::http::metrics_router`] (see [`crate::run`]).

use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::Arc;

/// The ingest's metrics, all registered in `registry`.
pub struct Metrics {
    /// Registry served on /metrics.
    pub registry: Registry,
    /// `ingest_streams`: streams with a publisher or at least one subscriber.
    pub streams: IntGauge,
    /// `ingest_publishers`: active publish sessions.
    pub publishers: IntGauge,
    /// `ingest_subscribers`: active play sessions.
    pub subscribers: IntGauge,
    /// `ingest_connections`: open RTMP connections (any state).
    pub connections: IntGauge,
    /// `ingest_received_bytes_total`: bytes read from RTMP connections.
    pub bytes_in: IntCounter,
    /// `ingest_sent_bytes_total`: bytes written to RTMP connections.
    pub bytes_out: IntCounter,
    /// `ingest_dropped_frames_total`: media messages not delivered to a subscriber because
    /// its queue was full (it skips to the next keyframe).
    pub dropped_frames: IntCounter,
    /// `ingest_subscribers_dropped_total`: subscribers disconnected for being too slow.
    pub subscribers_dropped: IntCounter,
    /// `ingest_publish_rejected_total`: publish attempts refused (duplicate, auth, limits).
    pub publish_rejected: IntCounter,
    /// `ingest_connections_rejected_total`: connections refused at the per-address limit
    /// (beyond the global limit, connections wait in the kernel's accept backlog instead).
    pub connections_rejected: IntCounter,
    /// `ingest_buffered_bytes{buffer="partial_messages"}`: bytes charged to connections for
    /// messages being reassembled (declared lengths; the memory budget).
    pub buffered_partial: IntGauge,
    /// `ingest_buffered_bytes{buffer="streams"}`: bytes in the streams' broadcast rings
    /// plus their GOP caches (GOP entries are mostly the same buffers as ring entries, so
    /// this is an upper bound of the memory).
    pub buffered_streams: IntGauge,
    /// `ingest_budget_refusals_total`: connections closed because a message would have
    /// exceeded the memory budget (total or per address) or the pre-publish cap.
    pub budget_refusals: IntCounter,
    /// `ingest_play_wait_expired_total`: players closed after waiting `--play-wait-secs`
    /// for a stream with no publisher.
    pub play_wait_expired: IntCounter,
    /// `ingest_metadata_dropped_total`: onMetaData whose properties were dropped because
    /// the re-encoded message would not fit an RTMP message (24-bit length).
    pub metadata_dropped: IntCounter,
    /// `ingest_protocol_errors_total`: connections closed for malformed input or timeouts.
    pub protocol_errors: IntCounter,
    /// `ingest_fanout_wakeups_total`: times a publisher woke its stream's subscribers (at
    /// most one per `--merge-ms` interval per stream; each is one write per subscriber).
    pub fanout_wakeups: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        fn g(r: &Registry, name: &str, help: &str) -> IntGauge {
            let m = IntGauge::new(name, help).expect("valid metric");
            r.register(Box::new(m.clone())).expect("unique metric");
            m
        }
        fn c(r: &Registry, name: &str, help: &str) -> IntCounter {
            let m = IntCounter::new(name, help).expect("valid metric");
            r.register(Box::new(m.clone())).expect("unique metric");
            m
        }
        let r = &registry;
        let buffered = IntGaugeVec::new(
            Opts::new(
                "ingest_buffered_bytes",
                "Bytes held for peers: partial messages (the memory budget) and stream buffers.",
            ),
            &["buffer"],
        )
        .expect("valid metric");
        r.register(Box::new(buffered.clone()))
            .expect("unique metric");
        Arc::new(Self {
            buffered_partial: buffered.with_label_values(&["partial_messages"]),
            buffered_streams: buffered.with_label_values(&["streams"]),
            budget_refusals: c(
                r,
                "ingest_budget_refusals_total",
                "Connections closed for exceeding the memory budget or the pre-publish cap.",
            ),
            play_wait_expired: c(
                r,
                "ingest_play_wait_expired_total",
                "Players closed after waiting too long for a stream with no publisher.",
            ),
            metadata_dropped: c(
                r,
                "ingest_metadata_dropped_total",
                "onMetaData properties dropped because the re-encoded message was too long.",
            ),
            streams: g(
                r,
                "ingest_streams",
                "Streams with a publisher or at least one subscriber.",
            ),
            publishers: g(r, "ingest_publishers", "Active publish sessions."),
            subscribers: g(r, "ingest_subscribers", "Active play sessions."),
            connections: g(r, "ingest_connections", "Open RTMP connections."),
            bytes_in: c(
                r,
                "ingest_received_bytes_total",
                "Bytes read from RTMP connections.",
            ),
            bytes_out: c(
                r,
                "ingest_sent_bytes_total",
                "Bytes written to RTMP connections.",
            ),
            dropped_frames: c(
                r,
                "ingest_dropped_frames_total",
                "Media messages skipped for congested subscribers.",
            ),
            subscribers_dropped: c(
                r,
                "ingest_subscribers_dropped_total",
                "Subscribers disconnected for being too slow.",
            ),
            publish_rejected: c(
                r,
                "ingest_publish_rejected_total",
                "Publish attempts refused.",
            ),
            connections_rejected: c(
                r,
                "ingest_connections_rejected_total",
                "Connections refused at the per-address limit.",
            ),
            protocol_errors: c(
                r,
                "ingest_protocol_errors_total",
                "Connections closed for malformed input or timeouts.",
            ),
            fanout_wakeups: c(
                r,
                "ingest_fanout_wakeups_total",
                "Times a publisher woke its stream's subscribers (at most once per merge interval).",
            ),
            registry,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

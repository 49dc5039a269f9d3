//! Prometheus metrics of one server instance, in a registry of its own (not the global one)
//! so that several servers in one process (tests) do not collide.
//!
//! Names follow Prometheus conventions: `origin_` prefix, `_total` for counters, base units
//! (`_seconds`, `_bytes`). Labels are bounded: `class` is a [`RouteClass`], `status` a
//! three-digit code.
//!
//! Requests that hyper refuses before they reach the handler (431 for an oversized head, a
//! header-read timeout, a malformed request line) are not in `origin_requests_total`; the
//! watchdog's closures are in `origin_connections_closed_idle_total`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::error::Result;
use crate::route::RouteClass;

/// Latency buckets in seconds: from a cache hit (~100 µs) to a slow disk read (seconds).
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Every metric the origin exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// `origin_requests_total{class,status}`: requests answered, by route class and status code.
    pub requests: IntCounterVec,
    /// `origin_response_bytes_total{class}`: response body bytes handed to the connection.
    pub response_bytes: IntCounterVec,
    /// `origin_request_duration_seconds{class}`: time from request head received to response
    /// head ready (body streaming excluded, so slow clients do not skew it).
    pub request_duration: HistogramVec,
    /// `origin_open_connections`: client connections currently open.
    pub open_connections: IntGauge,
    /// `origin_connections_closed_idle_total`: connections closed by the idle or header-read
    /// timeout watchdog (slowloris and stalled clients).
    pub idle_closed: IntCounter,
    /// `origin_connections_closed_no_request_total`: connections closed because no request
    /// was in progress and none arrived within the header timeout (an idle h2 preface, an
    /// idle keep-alive).
    pub no_request_closed: IntCounter,
    /// `origin_connections_refused_total`: connections closed at accept because their source
    /// address already had `max_connections_per_address` open.
    pub refused: IntCounter,
    /// `origin_cache_hits_total`: segment bodies served from memory.
    pub cache_hits: IntCounter,
    /// `origin_cache_misses_total`: segment bodies read from disk (absent or outdated entry).
    pub cache_misses: IntCounter,
    /// `origin_cache_size_bytes`: bytes of segment bodies held in memory.
    pub cache_bytes: IntGauge,
    /// `origin_segment_waits_total{outcome}`: requests for a segment that was not there
    /// (`Config::segment_wait`), by outcome: `appeared` (served once written), `timed_out`
    /// (404 after the wait), `no_slot` (404 at once: `max_segment_waiters` were waiting).
    pub segment_waits: IntCounterVec,
    /// `origin_peer_fills_total{reason,outcome}`: requests answered, or not, with a peer
    /// origin's copy of a file this origin could not serve (`crate::peer`). `reason`:
    /// `cut_short` (a transport stream not whole packets), `missing` (a segment not there
    /// after the segment wait), `unreadable` (the file system failed). `outcome`: `filled`
    /// (this request asked a peer and served its copy), `shared` (served the copy another
    /// request asked for), `failed` (no peer had a good copy in time: the request got this
    /// origin's own error), `no_slot` (`max_peer_fills` fills were running: its own error).
    pub peer_fills: IntCounterVec,
    // The series every request touches, resolved once: `with_label_values` hashes the labels
    // and takes a lock on each call, which showed in the per-request profile.
    by_class: [ClassSeries; RouteClass::ALL.len()],
}

/// One route class's series, label-resolved.
#[derive(Debug, Clone)]
struct ClassSeries {
    ok: IntCounter,
    duration: Histogram,
    bytes: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "origin_requests_total",
                "Requests answered, by route class and status code.",
            ),
            &["class", "status"],
        )?;
        let response_bytes = IntCounterVec::new(
            Opts::new(
                "origin_response_bytes_total",
                "Response body bytes sent, by route class.",
            ),
            &["class"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "origin_request_duration_seconds",
                "Time from request head received to response head ready, by route class.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["class"],
        )?;
        let open_connections = IntGauge::new(
            "origin_open_connections",
            "Client connections currently open.",
        )?;
        let idle_closed = IntCounter::new(
            "origin_connections_closed_idle_total",
            "Connections closed because the server wrote nothing for the idle timeout.",
        )?;
        let no_request_closed = IntCounter::new(
            "origin_connections_closed_no_request_total",
            "Connections closed because no request arrived within the header timeout.",
        )?;
        let refused = IntCounter::new(
            "origin_connections_refused_total",
            "Connections closed at accept: their source address was at its connection cap.",
        )?;
        let cache_hits = IntCounter::new(
            "origin_cache_hits_total",
            "Segment bodies served from memory.",
        )?;
        let cache_misses = IntCounter::new(
            "origin_cache_misses_total",
            "Segment bodies read from disk because no current cache entry existed.",
        )?;
        let cache_bytes = IntGauge::new(
            "origin_cache_size_bytes",
            "Bytes of segment bodies held in memory.",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(response_bytes.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(open_connections.clone()))?;
        registry.register(Box::new(idle_closed.clone()))?;
        registry.register(Box::new(no_request_closed.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(cache_hits.clone()))?;
        registry.register(Box::new(cache_misses.clone()))?;
        let segment_waits = IntCounterVec::new(
            Opts::new(
                "origin_segment_waits_total",
                "Requests for a segment that was not there yet, by outcome (appeared, timed_out, no_slot).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(cache_bytes.clone()))?;
        registry.register(Box::new(segment_waits.clone()))?;
        let peer_fills = IntCounterVec::new(
            Opts::new(
                "origin_peer_fills_total",
                "Requests for a file this origin could not serve, answered or not with a peer origin's copy, by reason (cut_short, missing, unreadable) and outcome (filled, shared, failed, no_slot).",
            ),
            &["reason", "outcome"],
        )?;
        registry.register(Box::new(peer_fills.clone()))?;
        // Every series exported from the start at 0: `increase()` over a series that appears
        // with its first fill would miss that fill (the `OriginServingPeerCopies` alert).
        for reason in crate::peer::Reason::ALL {
            for outcome in crate::peer::Outcome::ALL {
                peer_fills.with_label_values(&[reason.label(), outcome.label()]);
            }
        }
        let by_class = RouteClass::ALL.map(|class| ClassSeries {
            ok: requests.with_label_values(&[class.as_str(), http::StatusCode::OK.as_str()]),
            duration: request_duration.with_label_values(&[class.as_str()]),
            bytes: response_bytes.with_label_values(&[class.as_str()]),
        });
        Ok(Self {
            by_class,
            registry,
            requests,
            response_bytes,
            request_duration,
            open_connections,
            idle_closed,
            no_request_closed,
            refused,
            cache_hits,
            cache_misses,
            cache_bytes,
            segment_waits,
            peer_fills,
        })
    }

    /// Records one answered request.
    pub fn observe(&self, class: RouteClass, status: http::StatusCode, seconds: f64) {
        let series = &self.by_class[class.index()];
        if status == http::StatusCode::OK {
            series.ok.inc();
        } else {
            self.requests
                .with_label_values(&[class.as_str(), status.as_str()])
                .inc();
        }
        series.duration.observe(seconds);
    }

    /// `origin_response_bytes_total{class}` for `class`.
    pub fn response_bytes(&self, class: RouteClass) -> &IntCounter {
        &self.by_class[class.index()].bytes
    }

    /// The text exposition format of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail on I/O; a failure would be a malformed metric name,
        // which `new` already rejected.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

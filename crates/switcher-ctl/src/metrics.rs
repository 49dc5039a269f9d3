//! Prometheus metrics of the control plane, in one registry. The seed switcher's names are
//! kept (`switcher_active_origin`, `segment_age_seconds`, `origin_http_5xx_total`,
//! `failovers_total`, `switchbacks_total`) with their meaning for two origins under the
//! failover policy; new ones follow Prometheus conventions. Each metric is documented where it
//! is declared, and that text is also its HELP line.
//!
//! The `origin` label is the origin's configured name (`primary` and `backup` for the
//! two-origin shorthand) on every per-origin metric; the data plane's slots without an origin
//! are `slot<i>`, and traffic bound to none is `unsteered`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use switcher_common::dsr::EncapCounters;
use switcher_common::{Counters, STATS_UNSTEERED};

use crate::decide::{Action, Decision, OriginId, Reason};
use crate::probe::{ProbeError, ProbeReport};

/// Label of the stats slot for traffic bound to no origin.
pub const UNSTEERED_LABEL: &str = "unsteered";
/// Buckets of `probe_duration_seconds`: loopback probes take well under a millisecond, a
/// remote origin tens of ms, and the default timeout is 0.5 s.
const PROBE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Label of stats slot `i` without a configuration at hand (`switcher-ctl status` reading
/// the pins): the two-origin shorthand's names for slots 0 and 1, other origin slots by
/// index, and the unsteered slot. [`Metrics::slot_label`] uses the configured names.
pub fn slot_label(i: u32) -> String {
    match i {
        switcher_common::ORIGIN_PRIMARY => "primary".into(),
        switcher_common::ORIGIN_BACKUP => "backup".into(),
        STATS_UNSTEERED => UNSTEERED_LABEL.to_string(),
        _ => format!("slot{i}"),
    }
}

/// Every metric of switcher-ctl.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Configured origin names, by index (empty until [`Metrics::set_origins`]).
    names: Vec<String>,
    /// `switcher_active_origin`: 1 while the primary (the first origin) is active, 0 while
    /// another is (seed). Under balance, "active" is the first origin in rotation.
    pub active_origin: IntGauge,
    /// `switcher_origin_weight{origin}`: the origin's weight, its share of new flows under the
    /// balance policy (set by `--origin NAME=URL,weight=W` and `switcher-ctl set-weight`).
    pub origin_weight: IntGaugeVec,
    /// `switcher_origin_in_rotation{origin}`: 1 while the origin gets new flows (failover: it is
    /// the active origin; balance: it has slots in the lookup table).
    pub origin_in_rotation: IntGaugeVec,
    /// `switcher_origin_drained{origin}`: 1 while an operator has drained the origin
    /// (`switcher-ctl drain`): it gets no new flows until `undrain`.
    pub origin_drained: IntGaugeVec,
    /// `switcher_lookup_table_rebuilds_total`: Maglev lookup tables built and published to the
    /// data plane (balance policy: at start and on every rotation or weight change).
    pub table_rebuilds: IntCounter,
    /// `switcher_manual_mode`: 1 while an operator override pins the active origin.
    pub manual_mode: IntGauge,
    /// `segment_age_seconds{origin}`: now minus the end of the newest segment (its
    /// PROGRAM-DATE-TIME + duration) at the latest successful probe (seed).
    pub segment_age: prometheus::GaugeVec,
    /// `origin_http_5xx_total{origin}`: probes answered with a 5xx status (seed).
    pub http_5xx: IntCounterVec,
    /// `origin_probe_errors_total{origin,kind}`: failed probes by error kind.
    pub probe_errors: IntCounterVec,
    /// `failovers_total`: flips to the backup (seed); with more origins, to an origin later in
    /// the preference list.
    pub failovers: IntCounter,
    /// `switchbacks_total`: flips back to the primary (seed); with more origins, to an origin
    /// earlier in the preference list.
    pub switchbacks: IntCounter,
    /// `probe_duration_seconds{origin}`: time of one probe, connect to full body or failure.
    pub probe_duration: HistogramVec,
    /// `origin_healthy{origin}`: 1 when the origin is healthy after hysteresis, else 0.
    pub origin_healthy: IntGaugeVec,
    /// `origin_newest_msn{origin}`: newest media sequence number at the latest good parse.
    pub origin_newest_msn: IntGaugeVec,
    /// `switcher_decisions_total{reason}`: decisions taken, one per probe window or override.
    pub decisions: IntCounterVec,
    /// `switcher_both_bad`: 1 while both origins are bad (alert on it); with more origins,
    /// while every origin that could take new flows is bad.
    pub both_bad: IntGauge,
    /// `switcher_retired_flows_total{origin}`: conntrack entries removed when leaving an origin.
    pub retired_flows: IntCounterVec,
    /// `switcher_aborted_connections_total{origin}`: viewer connections pinned to the origin
    /// that were reset when it was retired (unhealthy) or when its drain time ran out.
    pub aborted_connections: IntCounterVec,
    /// `switcher_edge_resets_total{origin}`: viewer connections of the origin that the edge
    /// itself sent a TCP reset as they were aborted (docs/ARCHITECTURE.md, "Edge-originated
    /// resets"; a connection whose newest acknowledgment number is uncertain gets one reset per
    /// candidate, counted once); stays 0 where the interface cannot transmit them (not native
    /// XDP).
    pub edge_resets: IntCounterVec,
    /// `switcher_handshake_resets_total{origin}`: TCP resets (RST+ACK of the client's SYN) the
    /// edge itself sent to clients whose connection was still in its handshake with the origin
    /// when it was retired for a reason that cuts at once (docs/ARCHITECTURE.md,
    /// "Edge-originated resets"): their connect fails at once instead of waiting for a SYN
    /// retransmission. Not part of `switcher_edge_resets_total`; 0 where edge resets cannot be
    /// sent.
    pub handshake_resets: IntCounterVec,
    /// `switcher_draining{origin}`: 1 while the origin's flows drain (it is healthy but no
    /// longer gets new flows; its open connections finish or are moved at the drain deadline).
    pub draining: IntGaugeVec,
    /// `dataplane_flows{origin}`: open viewer connections pinned to the origin: handshakes
    /// completed through the VIP, minus those the origin closed (FIN/RST seen at egress) and
    /// those user space removed. Kept by the data plane's counters, so reading it never walks
    /// the flow map (docs/ARCHITECTURE.md, "Kernel/user contract"). A flow the LRU evicts
    /// from a full table is not seen closing and stays counted.
    pub dataplane_flows: IntGaugeVec,
    /// `dataplane_packets_total{origin}`: request packets steered to the origin (summed CPUs).
    pub dp_packets: IntCounterVec,
    /// `dataplane_bytes_total{origin}`: bytes of those packets.
    pub dp_bytes: IntCounterVec,
    /// `dataplane_new_flows_total{origin}`: SYNs of new connections steered to the origin
    /// (handshakes started; spoofed SYNs included).
    pub dp_new_flows: IntCounterVec,
    /// `dataplane_established_total{origin}`: handshakes completed through the VIP (flows
    /// entered in the flow table). Far below `dataplane_new_flows_total`: a SYN flood.
    pub dp_established: IntCounterVec,
    /// `dataplane_rewrites_total{origin}`: requests rewritten toward the origin.
    pub dp_rewrites: IntCounterVec,
    /// `dataplane_reply_rewrites_total{origin}`: replies rewritten back to the VIP.
    pub dp_reply_rewrites: IntCounterVec,
    /// `dataplane_passes_total{origin}`: packets passed unchanged.
    pub dp_passes: IntCounterVec,
    /// `dataplane_drops_total{origin}`: packets dropped (a TC helper failed).
    pub dp_drops: IntCounterVec,
    /// `dataplane_untracked_total`: non-SYN packets to the VIP of no flow, passed to the stack
    /// (which resets them): retired or evicted flows, or a spoofed flood (all slots).
    pub dp_untracked: IntCounter,
    /// `dataplane_listener_fallbacks_total{origin}`: new flows sent to this origin because the
    /// active origin had no listening socket (its process died before the next probe).
    pub dp_listener_fallbacks: IntCounterVec,
    /// `dataplane_stale_flows_total{origin}`: flows pinned to this origin forgotten because
    /// their client connected straight to the origin from the same port (see the data
    /// plane's `forget_stale_flow`).
    pub dp_stale_flows: IntCounterVec,
    /// `dataplane_stale_kept_total{origin}`: SYNs straight to the origin from the client port
    /// of one of its flows that is still open: the flow was kept (a spoofed SYN aimed at a
    /// viewer, or a client bug).
    pub dp_stale_kept: IntCounterVec,
    /// `dataplane_held_requests_total{origin}`: requests dropped on a connection finishing its
    /// last response from this retired origin (the viewer retries them elsewhere).
    pub dp_held: IntCounterVec,
    /// `dataplane_malformed_total`: truncated packets passed unchanged (all slots).
    pub dp_malformed: IntCounter,
    /// `dataplane_fragments_total`: IP fragments passed unchanged (all slots).
    pub dp_fragments: IntCounter,
    /// `dataplane_ip_options_total`: packets with IP options/extension headers passed (all slots).
    pub dp_ip_options: IntCounter,
    /// `dataplane_read_errors_total`: failed reads of the data plane's maps.
    pub dp_read_errors: IntCounter,
    /// `dataplane_encap_packets_total{origin}`: requests encapsulated (IP-in-IP for IPv4
    /// viewers, 6in4 for IPv6 viewers: both families count here) toward the origin's host and
    /// sent from XDP (direct server return; zero for same-host origins).
    pub dp_encap_packets: IntCounterVec,
    /// `dataplane_encap_bytes_total{origin}`: bytes of those packets as sent (outer header
    /// included).
    pub dp_encap_bytes: IntCounterVec,
    /// `dataplane_encap_to_stack_total{origin}`: encapsulated packets handed to the edge's
    /// stack because the route lookup could not complete (no neighbour entry yet).
    pub dp_encap_to_stack: IntCounterVec,
    /// `dataplane_encap_too_big_total{origin}`: encapsulated packets over the route's MTU
    /// (inner IPv4 or IPv6 packet + 20 bytes), dropped (the edge-to-origin path needs 20 bytes
    /// more MTU than viewers use).
    pub dp_encap_too_big: IntCounterVec,
    /// `dataplane_encap_errors_total{origin}`: packets for the origin's host dropped for no
    /// route or a failed packet resize, or passed to the stack because TC ingress cannot
    /// encapsulate.
    pub dp_encap_errors: IntCounterVec,
    /// `dataplane_encap_adopted_total{origin}`: packets of no flow or handshake (taken over
    /// from another edge, or evicted) encapsulated to the origin new flows go to.
    pub dp_encap_adopted: IntCounterVec,
}

/// The registry refused a metric: a name registered twice (a bug, not a runtime condition).
#[derive(Debug, thiserror::Error)]
#[error("metrics registry: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// Sets a counter that mirrors an external, monotonic count. A smaller value means the
/// source restarted (the data plane was reloaded): start over from it.
fn mirror(counter: &IntCounter, value: u64) {
    let current = counter.get();
    if value >= current {
        counter.inc_by(value - current);
    } else {
        counter.reset();
        counter.inc_by(value);
    }
}

impl Metrics {
    /// Creates and registers every metric, with the origin label values pre-created so a
    /// dashboard sees zeros rather than absent series before the first event.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let origin = &["origin"];
        let counter_vec =
            |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), origin);
        let gauge_vec = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), origin);
        let m = Metrics {
            names: Vec::new(),
            active_origin: IntGauge::new(
                "switcher_active_origin",
                "Active origin: 1 primary (the first origin), 0 another.",
            )?,
            origin_weight: gauge_vec(
                "switcher_origin_weight",
                "The origin's weight: its share of new flows under the balance policy.",
            )?,
            origin_in_rotation: gauge_vec(
                "switcher_origin_in_rotation",
                "1 while the origin gets new flows (failover: active; balance: in the lookup table).",
            )?,
            origin_drained: gauge_vec(
                "switcher_origin_drained",
                "1 while an operator has drained the origin (no new flows until undrained).",
            )?,
            table_rebuilds: IntCounter::new(
                "switcher_lookup_table_rebuilds_total",
                "Maglev lookup tables built and published to the data plane.",
            )?,
            manual_mode: IntGauge::new(
                "switcher_manual_mode",
                "1 while an operator override pins the active origin.",
            )?,
            segment_age: prometheus::GaugeVec::new(
                Opts::new(
                    "segment_age_seconds",
                    "Now minus the end of the newest segment, at the latest good probe.",
                ),
                origin,
            )?,
            http_5xx: counter_vec(
                "origin_http_5xx_total",
                "Probes answered with an HTTP 5xx status.",
            )?,
            probe_errors: IntCounterVec::new(
                Opts::new("origin_probe_errors_total", "Failed probes by error kind."),
                &["origin", "kind"],
            )?,
            failovers: IntCounter::new(
                "failovers_total",
                "Flips to the backup origin (an origin later in the preference list).",
            )?,
            switchbacks: IntCounter::new(
                "switchbacks_total",
                "Flips back to the primary origin (an origin earlier in the preference list).",
            )?,
            probe_duration: HistogramVec::new(
                HistogramOpts::new("probe_duration_seconds", "Duration of one playlist probe.")
                    .buckets(PROBE_BUCKETS.to_vec()),
                origin,
            )?,
            origin_healthy: gauge_vec(
                "origin_healthy",
                "1 when the origin is healthy after hysteresis.",
            )?,
            origin_newest_msn: gauge_vec(
                "origin_newest_msn",
                "Newest media sequence number at the latest good probe.",
            )?,
            decisions: IntCounterVec::new(
                Opts::new("switcher_decisions_total", "Decisions taken, by reason."),
                &["reason"],
            )?,
            both_bad: IntGauge::new(
                "switcher_both_bad",
                "1 while both origins (every origin that could take new flows) are bad.",
            )?,
            retired_flows: counter_vec(
                "switcher_retired_flows_total",
                "Conntrack entries removed when leaving an origin.",
            )?,
            aborted_connections: counter_vec(
                "switcher_aborted_connections_total",
                "Viewer connections pinned to the origin reset when it was retired or its drain ended.",
            )?,
            edge_resets: counter_vec(
                "switcher_edge_resets_total",
                "Viewer connections of the origin the edge itself sent a TCP reset as they were aborted.",
            )?,
            handshake_resets: counter_vec(
                "switcher_handshake_resets_total",
                "TCP resets the edge itself sent to clients still in their handshake with the origin when it was cut off.",
            )?,
            draining: gauge_vec(
                "switcher_draining",
                "1 while the origin's flows drain after it stopped getting new flows.",
            )?,
            dataplane_flows: gauge_vec(
                "dataplane_flows",
                "Open viewer connections pinned to the origin (from data-plane counters).",
            )?,
            dp_packets: counter_vec(
                "dataplane_packets_total",
                "Request packets steered to the origin.",
            )?,
            dp_bytes: counter_vec(
                "dataplane_bytes_total",
                "Bytes of request packets steered to the origin.",
            )?,
            dp_new_flows: counter_vec(
                "dataplane_new_flows_total",
                "SYNs of new connections steered to the origin (handshakes started).",
            )?,
            dp_established: counter_vec(
                "dataplane_established_total",
                "Handshakes completed through the VIP (flows entered in the flow table).",
            )?,
            dp_rewrites: counter_vec(
                "dataplane_rewrites_total",
                "Request packets rewritten toward the origin.",
            )?,
            dp_reply_rewrites: counter_vec(
                "dataplane_reply_rewrites_total",
                "Reply packets rewritten back to the VIP.",
            )?,
            dp_passes: counter_vec("dataplane_passes_total", "Packets passed unchanged.")?,
            dp_drops: counter_vec(
                "dataplane_drops_total",
                "Packets dropped by the data plane.",
            )?,
            dp_untracked: IntCounter::new(
                "dataplane_untracked_total",
                "Non-SYN packets to the VIP of no flow, passed to the stack, which resets them.",
            )?,
            dp_listener_fallbacks: counter_vec(
                "dataplane_listener_fallbacks_total",
                "New flows steered to this origin because the active origin had no listener.",
            )?,
            dp_stale_flows: counter_vec(
                "dataplane_stale_flows_total",
                "Flows to this origin forgotten when their client port connected to it directly.",
            )?,
            dp_stale_kept: counter_vec(
                "dataplane_stale_kept_total",
                "SYNs straight to this origin from the port of an open flow: the flow was kept.",
            )?,
            dp_held: counter_vec(
                "dataplane_held_requests_total",
                "Requests dropped on a connection finishing its last response from this retired origin.",
            )?,
            dp_malformed: IntCounter::new(
                "dataplane_malformed_total",
                "Truncated packets passed unchanged.",
            )?,
            dp_fragments: IntCounter::new(
                "dataplane_fragments_total",
                "IP fragments passed unchanged.",
            )?,
            dp_ip_options: IntCounter::new(
                "dataplane_ip_options_total",
                "Packets with IP options or IPv6 extension headers passed unchanged.",
            )?,
            dp_read_errors: IntCounter::new(
                "dataplane_read_errors_total",
                "Failed reads of the data plane's maps.",
            )?,
            dp_encap_packets: counter_vec(
                "dataplane_encap_packets_total",
                "Requests encapsulated (IP-in-IP or 6in4) toward the origin's host and sent from XDP (direct server return).",
            )?,
            dp_encap_bytes: counter_vec(
                "dataplane_encap_bytes_total",
                "Bytes of the encapsulated requests as sent, outer header included.",
            )?,
            dp_encap_to_stack: counter_vec(
                "dataplane_encap_to_stack_total",
                "Encapsulated requests handed to the edge's stack (route lookup incomplete).",
            )?,
            dp_encap_too_big: counter_vec(
                "dataplane_encap_too_big_total",
                "Encapsulated requests over the route's MTU, dropped.",
            )?,
            dp_encap_errors: counter_vec(
                "dataplane_encap_errors_total",
                "Requests for the origin's host dropped: no route or a failed resize.",
            )?,
            dp_encap_adopted: counter_vec(
                "dataplane_encap_adopted_total",
                "Packets of no flow or handshake encapsulated to the origin new flows go to.",
            )?,
            registry,
        };
        m.register_all()?;
        for r in Reason::ALL {
            m.decisions.with_label_values(&[r.label()]);
        }
        Ok(m)
    }

    /// Names the origins (by index) and pre-creates their label values, so a dashboard sees
    /// zeros rather than absent series before the first event.
    pub fn set_origins(&mut self, names: &[String]) {
        self.names = names.to_vec();
        for l in names {
            let l = [l.as_str()];
            self.segment_age.with_label_values(&l);
            self.http_5xx.with_label_values(&l);
            self.probe_duration.with_label_values(&l);
            self.origin_healthy.with_label_values(&l).set(1);
            self.origin_newest_msn.with_label_values(&l);
            self.retired_flows.with_label_values(&l);
            self.aborted_connections.with_label_values(&l);
            self.edge_resets.with_label_values(&l);
            self.handshake_resets.with_label_values(&l);
            self.draining.with_label_values(&l);
            self.origin_weight.with_label_values(&l);
            self.origin_in_rotation.with_label_values(&l);
            self.origin_drained.with_label_values(&l);
        }
    }

    /// Label of stats slot `i`: the configured origin's name, `unsteered`, or `slot<i>` for a
    /// slot with no origin.
    pub fn slot_label(&self, i: u32) -> String {
        match self.names.get(i as usize) {
            Some(name) => name.clone(),
            None if self.names.is_empty() => slot_label(i),
            None if i == STATS_UNSTEERED => UNSTEERED_LABEL.to_string(),
            None => format!("slot{i}"),
        }
    }

    /// Records an origin's operator settings and whether it gets new flows.
    pub fn set_origin(&self, name: &str, weight: u32, drained: bool, in_rotation: bool) {
        let l = [name];
        self.origin_weight
            .with_label_values(&l)
            .set(i64::from(weight));
        self.origin_drained
            .with_label_values(&l)
            .set(i64::from(drained));
        self.origin_in_rotation
            .with_label_values(&l)
            .set(i64::from(in_rotation));
    }

    fn register_all(&self) -> Result<(), MetricsError> {
        let r = &self.registry;
        r.register(Box::new(self.active_origin.clone()))?;
        r.register(Box::new(self.origin_weight.clone()))?;
        r.register(Box::new(self.origin_in_rotation.clone()))?;
        r.register(Box::new(self.origin_drained.clone()))?;
        r.register(Box::new(self.table_rebuilds.clone()))?;
        r.register(Box::new(self.manual_mode.clone()))?;
        r.register(Box::new(self.segment_age.clone()))?;
        r.register(Box::new(self.http_5xx.clone()))?;
        r.register(Box::new(self.probe_errors.clone()))?;
        r.register(Box::new(self.failovers.clone()))?;
        r.register(Box::new(self.switchbacks.clone()))?;
        r.register(Box::new(self.probe_duration.clone()))?;
        r.register(Box::new(self.origin_healthy.clone()))?;
        r.register(Box::new(self.origin_newest_msn.clone()))?;
        r.register(Box::new(self.decisions.clone()))?;
        r.register(Box::new(self.both_bad.clone()))?;
        r.register(Box::new(self.retired_flows.clone()))?;
        r.register(Box::new(self.dataplane_flows.clone()))?;
        r.register(Box::new(self.aborted_connections.clone()))?;
        r.register(Box::new(self.edge_resets.clone()))?;
        r.register(Box::new(self.handshake_resets.clone()))?;
        r.register(Box::new(self.draining.clone()))?;
        for c in [
            &self.dp_packets,
            &self.dp_bytes,
            &self.dp_new_flows,
            &self.dp_established,
            &self.dp_rewrites,
            &self.dp_reply_rewrites,
            &self.dp_passes,
            &self.dp_drops,
            &self.dp_listener_fallbacks,
            &self.dp_stale_flows,
            &self.dp_stale_kept,
            &self.dp_held,
            &self.dp_encap_packets,
            &self.dp_encap_bytes,
            &self.dp_encap_to_stack,
            &self.dp_encap_too_big,
            &self.dp_encap_errors,
            &self.dp_encap_adopted,
        ] {
            r.register(Box::new(c.clone()))?;
        }
        r.register(Box::new(self.dp_untracked.clone()))?;
        r.register(Box::new(self.dp_malformed.clone()))?;
        r.register(Box::new(self.dp_fragments.clone()))?;
        r.register(Box::new(self.dp_ip_options.clone()))?;
        r.register(Box::new(self.dp_read_errors.clone()))?;
        Ok(())
    }

    /// Records one probe of `origin`.
    pub fn observe_probe(&self, origin: &str, report: &ProbeReport) {
        let l = origin;
        self.probe_duration
            .with_label_values(&[l])
            .observe(report.latency.as_secs_f64());
        match &report.outcome {
            Ok(f) => {
                self.segment_age.with_label_values(&[l]).set(f.age_seconds);
                self.origin_newest_msn
                    .with_label_values(&[l])
                    .set(i64::try_from(f.newest_msn).unwrap_or(i64::MAX));
            }
            Err(e) => {
                if matches!(e, ProbeError::Http5xx(_)) {
                    self.http_5xx.with_label_values(&[l]).inc();
                }
                self.probe_errors.with_label_values(&[l, e.kind()]).inc();
            }
        }
    }

    /// Records a decision that was applied; `active` and `healthy` are the state after it.
    pub fn observe_decision(&self, d: &Decision) {
        self.decisions.with_label_values(&[d.reason.label()]).inc();
        match d.action {
            Action::Failover => self.failovers.inc(),
            Action::Switchback => self.switchbacks.inc(),
            Action::Stay | Action::Rebalance | Action::BothBad => {}
        }
        self.both_bad.set(i64::from(d.action == Action::BothBad));
    }

    /// Records the active origin.
    pub fn set_active(&self, active: OriginId) {
        self.active_origin
            .set(i64::from(active == OriginId::PRIMARY));
    }

    /// Records an origin's health.
    pub fn set_healthy(&self, origin: &str, healthy: bool) {
        self.origin_healthy
            .with_label_values(&[origin])
            .set(i64::from(healthy));
    }

    /// Mirrors the data plane's conntrack counts (index = origin slot).
    pub fn observe_flows(&self, counts: &[u64]) {
        for (i, n) in counts.iter().enumerate() {
            let label = self.slot_label(i as u32);
            self.dataplane_flows
                .with_label_values(&[&label])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// Mirrors the data plane's per-slot counters (already summed over CPUs).
    pub fn observe_counters(&self, slots: &[Counters]) {
        let mut total = Counters::default();
        for (i, c) in slots.iter().enumerate() {
            let label = self.slot_label(i as u32);
            let l = [label.as_str()];
            mirror(&self.dp_packets.with_label_values(&l), c.packets);
            mirror(&self.dp_bytes.with_label_values(&l), c.bytes);
            mirror(&self.dp_new_flows.with_label_values(&l), c.new_flows);
            mirror(&self.dp_established.with_label_values(&l), c.established);
            mirror(&self.dp_rewrites.with_label_values(&l), c.rewrites);
            mirror(
                &self.dp_reply_rewrites.with_label_values(&l),
                c.reply_rewrites,
            );
            mirror(&self.dp_passes.with_label_values(&l), c.passes);
            mirror(&self.dp_drops.with_label_values(&l), c.drops);
            mirror(
                &self.dp_listener_fallbacks.with_label_values(&l),
                c.listener_fallbacks,
            );
            mirror(&self.dp_stale_flows.with_label_values(&l), c.stale_flows);
            mirror(&self.dp_stale_kept.with_label_values(&l), c.stale_kept);
            mirror(&self.dp_held.with_label_values(&l), c.held);
            total.add(c);
        }
        mirror(&self.dp_untracked, total.untracked);
        mirror(&self.dp_malformed, total.malformed);
        mirror(&self.dp_fragments, total.fragments);
        mirror(&self.dp_ip_options, total.ip_options);
    }

    /// Mirrors the data plane's encapsulation counters per origin slot (already summed over
    /// CPUs; direct server return). Only configured origins get a series: the other slots
    /// never encapsulate.
    pub fn observe_encap(&self, slots: &[EncapCounters]) {
        for (i, c) in slots.iter().enumerate().take(self.names.len()) {
            let label = self.slot_label(i as u32);
            let l = [label.as_str()];
            mirror(&self.dp_encap_packets.with_label_values(&l), c.encapsulated);
            mirror(&self.dp_encap_bytes.with_label_values(&l), c.bytes);
            mirror(&self.dp_encap_to_stack.with_label_values(&l), c.to_stack);
            mirror(&self.dp_encap_too_big.with_label_values(&l), c.too_big);
            mirror(&self.dp_encap_errors.with_label_values(&l), c.errors);
            mirror(&self.dp_encap_adopted.with_label_values(&l), c.adopted);
        }
    }

    /// The text exposition format (`/metrics`).
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on a metric family without metrics, which the
        // registry never yields; an empty body is the honest answer if it ever did.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encap_counters_are_labelled_by_origin_name() {
        let mut m = Metrics::new().expect("metrics");
        m.set_origins(&["east".to_string(), "west".to_string()]);
        let mut slots = vec![EncapCounters::default(); 3];
        slots[1].encapsulated = 7;
        slots[1].bytes = 700;
        slots[2].encapsulated = 9; // A slot without an origin gets no series.
        m.observe_encap(&slots);
        let text = m.render();
        assert!(
            text.contains("dataplane_encap_packets_total{origin=\"west\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("dataplane_encap_bytes_total{origin=\"west\"} 700"),
            "{text}"
        );
        assert!(
            text.contains("dataplane_encap_packets_total{origin=\"east\"} 0"),
            "{text}"
        );
        assert!(!text.contains("slot2"), "{text}");
    }
}

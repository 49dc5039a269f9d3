//! The one object that owns the truth in user space (Katran's `KatranLb`): the decider, the
//! data plane handle, the metrics and the recent decisions. Every map write goes through
//! [`Controller::apply`] and [`Controller::maintain_flows`].
//!
//! What happens to the viewers of the origin that stops being active (docs/ARCHITECTURE.md,
//! "Failover and draining"):
//! * It is **unhealthy** (a failover, or an override away from a bad origin): its viewer
//!   connections are aborted at once: `set_active(new)` first, then `abort_flows(old)`, which
//!   resets them (the kernel sends an RST from the VIP) and removes their flows. A player
//!   waiting on a hung origin reconnects through the VIP to the healthy one instead of waiting
//!   for its own timeout (HAProxy's `on-marked-down shutdown-sessions`, Envoy's
//!   `close_connections_on_host_health_failure`, IPVS's `expire_nodest_conn`).
//! * It is **healthy** (a switchback to the preferred origin, or an override): its flows
//!   **drain**: they stay where they are, since nothing is wrong with them, and only new flows
//!   move. Cutting them would make every viewer reconnect at once (a thundering herd). At the
//!   drain deadline ([`crate::config::Config::drain_seconds`]) the rest are moved, paced at
//!   [`DRAIN_ABORTS_PER_WINDOW`] per probe window. If the draining origin turns unhealthy, its
//!   flows are aborted at once.
//! * Every window, flows still pinned to an unhealthy origin that is not active (a flow that
//!   raced the flip, or one adopted before) are aborted too.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::dataplane::{Aborted, DataPlane};
use crate::decide::{Action, Decider, Decision, Health, Mode, OriginId, Policy, Reason};
use crate::metrics::{Metrics, slot_label};
use crate::probe::ProbeReport;

/// A data plane operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Reading the active origin at start failed.
    #[error("reading the active origin from the data plane: {0:#}")]
    ReadActive(anyhow::Error),
    /// Writing the active origin failed; the flip did not happen.
    #[error("setting the active origin to {origin}: {source:#}")]
    SetActive {
        /// The origin that should have become active.
        origin: OriginId,
        /// The data plane's error.
        source: anyhow::Error,
    },
}

/// Per-origin part of [`Status`].
#[derive(Clone, Debug, Serialize)]
pub struct OriginStatus {
    /// Playlist URL probed.
    pub url: String,
    /// Healthy after hysteresis.
    pub healthy: bool,
    /// `healthy` / `unhealthy`.
    pub state: Health,
    /// Segment age at the latest good probe, seconds.
    pub age_seconds: Option<f64>,
    /// Newest media sequence number at the latest good probe.
    pub msn: Option<u64>,
    /// Why the latest window was bad, if it was.
    pub last_error: Option<String>,
    /// HTTP status of the latest probe, if a response came.
    pub status: Option<u16>,
    /// Latency of the latest probe, milliseconds.
    pub latency_ms: Option<f64>,
    /// Consecutive bad windows.
    pub consecutive_bad: u32,
    /// Consecutive good windows.
    pub consecutive_good: u32,
    /// Its flows are draining: no new flows, open ones stay until they end or the deadline.
    pub draining: bool,
    /// Retired as unhealthy and some of its connections are still finishing a response.
    pub retiring: bool,
}

/// Origins part of [`Status`], keyed by name in JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Origins {
    /// The primary origin.
    pub primary: OriginStatus,
    /// The backup origin.
    pub backup: OriginStatus,
}

/// Everything `/healthz` and the status page show.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Active origin.
    pub active: OriginId,
    /// `auto` or `manual`.
    pub mode: &'static str,
    /// The pinned origin in manual mode.
    pub manual_origin: Option<OriginId>,
    /// True while both origins are bad.
    pub both_bad: bool,
    /// Per origin.
    pub origins: Origins,
    /// Tracked flows per origin slot label, when the data plane could be read.
    pub flows: Option<BTreeMap<String, u64>>,
    /// Recent decisions that were not plain "stay, active healthy", newest last.
    pub decisions: Vec<Decision>,
}

/// Spacing of the segment-age history: one sample per second, whatever the probe interval,
/// so the status page's plot covers minutes with a few hundred points.
pub const AGE_SAMPLE_PERIOD: Duration = Duration::from_secs(1);
/// Samples kept: five minutes at [`AGE_SAMPLE_PERIOD`].
pub const AGE_HISTORY_LEN: usize = 300;

/// One point of the segment-age history (the status page's plot).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgeSample {
    /// Time of the probe window, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The primary's segment age, or none when its probe failed (a gap in the plot).
    pub primary: Option<f64>,
    /// The backup's segment age, or none when its probe failed.
    pub backup: Option<f64>,
}

/// Connections of a drained origin moved per probe window once its drain deadline has passed
/// (about 1,280/s at the default 0.2 s interval): a paced move, so the other origin sees a
/// steady trickle of reconnects rather than every viewer at once.
pub const DRAIN_ABORTS_PER_WINDOW: usize = 256;

/// The control object.
pub struct Controller {
    dataplane: Box<dyn DataPlane>,
    decider: Decider,
    metrics: Metrics,
    urls: [String; 2],
    /// Recent notable decisions; plain "active healthy" windows are left out so the history
    /// shows the last flips and alarms rather than the last second of routine.
    history: VecDeque<Decision>,
    history_len: usize,
    last: Option<(Action, Reason)>,
    /// Segment ages sampled every [`AGE_SAMPLE_PERIOD`], newest last, at most
    /// [`AGE_HISTORY_LEN`]; memory is bounded whatever the probe interval.
    age_history: VecDeque<AgeSample>,
    /// How long a healthy origin that stopped getting new flows keeps its open ones.
    drain_after: Duration,
    /// Per origin slot: the drain deadline while its flows drain.
    draining: [Option<SystemTime>; 2],
    /// How long a retired origin's delivering connections may take to finish.
    finish_after: Duration,
    /// Per origin slot: when it was retired as unhealthy, while its connections finish.
    retired_at: [Option<SystemTime>; 2],
    /// Flows per origin at the latest data plane read, to skip needless map walks.
    last_flow_counts: Vec<u64>,
}

impl Controller {
    /// Adopts the data plane's active origin (a restarted `run` keeps what the pins say; an
    /// index that is neither primary nor backup is corrected to the primary).
    pub fn new(
        mut dataplane: Box<dyn DataPlane>,
        policy: Policy,
        metrics: Metrics,
        urls: [String; 2],
        history_len: usize,
        drain_after: Duration,
        finish_after: Duration,
    ) -> Result<Self, ControlError> {
        let index = dataplane.active().map_err(ControlError::ReadActive)?;
        let active = match OriginId::from_index(index) {
            Some(o) => o,
            None => {
                tracing::warn!(
                    index,
                    "data plane's active origin is not primary or backup; setting primary"
                );
                let origin = OriginId::Primary;
                dataplane
                    .set_active(origin.index())
                    .map_err(|source| ControlError::SetActive { origin, source })?;
                origin
            }
        };
        metrics.set_active(active);
        tracing::info!(%active, "adopted active origin from the data plane");
        Ok(Controller {
            dataplane,
            decider: Decider::new(policy, active),
            metrics,
            urls,
            history: VecDeque::with_capacity(history_len),
            history_len,
            last: None,
            age_history: VecDeque::with_capacity(AGE_HISTORY_LEN),
            drain_after,
            draining: [None, None],
            finish_after,
            retired_at: [None, None],
            last_flow_counts: Vec::new(),
        })
    }

    /// The metrics this controller updates.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether an origin has a bad window on record that hysteresis has not judged yet
    /// (`0 < consecutive_bad < required_windows`): the run loop then probes again at once
    /// instead of waiting for the next interval, so confirming a fault costs one probe, not
    /// one interval.
    pub fn needs_confirmation(&self) -> bool {
        let required = self.decider.policy().required_windows;
        OriginId::ALL.iter().any(|o| {
            let t = self.decider.track(*o);
            t.health == Health::Healthy && t.consecutive_bad > 0 && t.consecutive_bad < required
        })
    }

    /// The active origin.
    pub fn active(&self) -> OriginId {
        self.decider.active()
    }

    /// One probe window: record, decide, apply.
    pub fn on_window(
        &mut self,
        primary: &ProbeReport,
        backup: &ProbeReport,
        now: SystemTime,
    ) -> Result<Decision, ControlError> {
        self.metrics.observe_probe(OriginId::Primary, primary);
        self.metrics.observe_probe(OriginId::Backup, backup);
        self.sample_ages(primary, backup, now);
        let decision = self.decider.step(primary, backup, now);
        for o in OriginId::ALL {
            self.metrics
                .set_healthy(o, self.decider.track(o).health == Health::Healthy);
        }
        let decision = self.apply(decision, now)?;
        self.maintain_flows(now);
        Ok(decision)
    }

    /// Once per window, for each origin that is not active: abort the flows of an unhealthy
    /// one, and move a drained one's flows once its deadline has passed.
    pub fn maintain_flows(&mut self, now: SystemTime) {
        let active = self.decider.active();
        for o in OriginId::ALL {
            let slot = o.index() as usize;
            let unhealthy = self.decider.track(o).health == Health::Unhealthy;
            if o == active || !unhealthy {
                self.retired_at[slot] = None;
            }
            if o == active {
                self.set_draining(o, None);
                continue;
            }
            let known_flows = self.last_flow_counts.get(slot).copied().unwrap_or(0);
            if unhealthy
                && (known_flows > 0
                    || self.draining[slot].is_some()
                    || self.retired_at[slot].is_some())
            {
                self.set_draining(o, None);
                self.retire(o, now, "unhealthy origin");
            } else if let Some(deadline) = self.draining[slot]
                && now >= deadline
            {
                let done = self
                    .abort(o, DRAIN_ABORTS_PER_WINDOW, true, "drain deadline")
                    .is_some_and(|a| a.remaining == 0 && a.finishing == 0);
                if done {
                    tracing::info!(origin = %o, "drain finished");
                    self.set_draining(o, None);
                }
            }
        }
    }

    fn set_draining(&mut self, o: OriginId, deadline: Option<SystemTime>) {
        self.draining[o.index() as usize] = deadline;
        self.metrics
            .draining
            .with_label_values(&[o.label()])
            .set(i64::from(deadline.is_some()));
    }

    /// Aborts an unhealthy origin's connections: all of them, except (within the finish time
    /// since it was retired) those delivering a response right now, which later windows cut
    /// once they finish or stall.
    fn retire(&mut self, o: OriginId, now: SystemTime, why: &str) {
        let slot = o.index() as usize;
        let since = *self.retired_at[slot].get_or_insert(now);
        let finish = now.duration_since(since).unwrap_or_default() < self.finish_after;
        if let Some(a) = self.abort(o, usize::MAX, finish, why)
            && a.finishing == 0
        {
            self.retired_at[slot] = None;
        }
    }

    /// Aborts up to `max` of `o`'s flows; counted and logged. `None` when the data plane
    /// failed (logged; the next window tries again).
    fn abort(
        &mut self,
        o: OriginId,
        max: usize,
        finish_in_flight: bool,
        why: &str,
    ) -> Option<Aborted> {
        match self.dataplane.abort_flows(o.index(), max, finish_in_flight) {
            Ok(a) => {
                let l = [o.label()];
                self.metrics
                    .retired_flows
                    .with_label_values(&l)
                    .inc_by(a.removed);
                self.metrics
                    .aborted_connections
                    .with_label_values(&l)
                    .inc_by(a.reset);
                if a.removed > 0 || a.reset > 0 {
                    tracing::warn!(origin = %o, why, reset = a.reset, flows_removed = a.removed, finishing = a.finishing, remaining = a.remaining, "aborted viewer connections");
                }
                if let Some(c) = self.last_flow_counts.get_mut(o.index() as usize) {
                    *c = a.remaining + a.finishing;
                }
                Some(a)
            }
            Err(e) => {
                tracing::error!(origin = %o, why, error = %format!("{e:#}"), "aborting flows failed");
                None
            }
        }
    }

    /// Appends to the age history when the newest sample is [`AGE_SAMPLE_PERIOD`] old.
    fn sample_ages(&mut self, primary: &ProbeReport, backup: &ProbeReport, now: SystemTime) {
        let at_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let period_ms = AGE_SAMPLE_PERIOD.as_millis() as u64;
        // A clock stepped back also takes a new sample rather than freezing the history.
        if self
            .age_history
            .back()
            .is_some_and(|s| at_ms >= s.at_ms && at_ms - s.at_ms < period_ms)
        {
            return;
        }
        if self.age_history.len() == AGE_HISTORY_LEN {
            self.age_history.pop_front();
        }
        let age = |r: &ProbeReport| r.outcome.as_ref().ok().map(|f| f.age_seconds);
        self.age_history.push_back(AgeSample {
            at_ms,
            primary: age(primary),
            backup: age(backup),
        });
    }

    /// The segment-age history, oldest first.
    pub fn age_history(&self) -> Vec<AgeSample> {
        self.age_history.iter().cloned().collect()
    }

    /// An operator's override (`POST /override`).
    pub fn set_mode(&mut self, mode: Mode, now: SystemTime) -> Result<Decision, ControlError> {
        let decision = self.decider.set_mode(mode, now);
        self.metrics
            .manual_mode
            .set(i64::from(matches!(mode, Mode::Manual(_))));
        self.apply(decision, now)
    }

    /// The single place that writes the data plane.
    fn apply(&mut self, decision: Decision, now: SystemTime) -> Result<Decision, ControlError> {
        if decision.flips() {
            let (old, new) = (decision.from, decision.to);
            if let Err(source) = self.dataplane.set_active(new.index()) {
                self.decider.revert_active(old);
                tracing::error!(from = %old, to = %new, error = %format!("{source:#}"), "flip failed; staying");
                return Err(ControlError::SetActive {
                    origin: new,
                    source,
                });
            }
            self.metrics.set_active(new);
            self.set_draining(new, None);
            // After set_active: an aborted viewer reconnects to the new origin. A failed abort
            // is logged; the flip itself happened, and the next window tries again.
            if self.decider.track(old).health == Health::Unhealthy {
                self.retire(old, now, "origin retired");
            } else {
                // An absurd drain time (validated elsewhere) must not overflow the clock.
                let deadline = now
                    .checked_add(self.drain_after)
                    .unwrap_or_else(|| now + Duration::from_secs(u32::MAX.into()));
                tracing::info!(origin = %old, drain_s = self.drain_after.as_secs_f64(), "draining: open connections stay until they end or the deadline");
                self.set_draining(old, Some(deadline));
            }
        }
        self.metrics.observe_decision(&decision);
        self.log(&decision);
        // A condition that persists (both bad, a degraded active origin) is one entry of the
        // history, not one per probe window: it would push every other decision out.
        let repeated = self.last == Some((decision.action, decision.reason)) && !decision.flips();
        if !repeated
            && decision.reason != Reason::ActiveHealthy
            && decision.reason != Reason::Manual
        {
            if self.history.len() == self.history_len {
                self.history.pop_front();
            }
            if self.history_len > 0 {
                self.history.push_back(decision.clone());
            }
        }
        self.last = Some((decision.action, decision.reason));
        Ok(decision)
    }

    /// One line per decision. Routine windows at debug so a 0.2 s interval does not flood
    /// the log; a repeated alarm (both bad) at debug after its first warning.
    fn log(&self, d: &Decision) {
        let repeated = self.last == Some((d.action, d.reason));
        let (action, reason) = (format!("{:?}", d.action), d.reason.label());
        match d.action {
            Action::Failover => {
                tracing::warn!(action, reason, from = %d.from, to = %d.to, detail = %d.detail, "failover")
            }
            Action::Switchback => {
                tracing::info!(action, reason, from = %d.from, to = %d.to, detail = %d.detail, "switchback")
            }
            Action::BothBad if !repeated => {
                tracing::warn!(action, reason, active = %d.to, detail = %d.detail, "both origins bad; staying")
            }
            Action::Stay
                if d.reason == Reason::ActiveDegraded
                    || d.reason == Reason::ManualOverride
                    || d.reason == Reason::ManualAuto =>
            {
                tracing::info!(action, reason, active = %d.to, detail = %d.detail, "stay")
            }
            _ => tracing::debug!(action, reason, active = %d.to, detail = %d.detail, "stay"),
        }
    }

    /// Reads the data plane's flow counts and counters into the metrics (at scrape time and
    /// every window). A failed read is counted and logged, never fatal.
    pub fn refresh_dataplane_metrics(&mut self) {
        match self.dataplane.flow_counts() {
            Ok(counts) => {
                self.metrics.observe_flows(&counts);
                self.last_flow_counts = counts;
            }
            Err(e) => {
                self.metrics.dp_read_errors.inc();
                tracing::debug!(error = %format!("{e:#}"), "reading flow counts failed");
            }
        }
        match self.dataplane.counters() {
            Ok(slots) => self.metrics.observe_counters(&slots),
            Err(e) => {
                self.metrics.dp_read_errors.inc();
                tracing::debug!(error = %format!("{e:#}"), "reading counters failed");
            }
        }
    }

    /// The state for `/healthz` and the status page.
    pub fn status(&self) -> Status {
        let origin = |o: OriginId| {
            let t = self.decider.track(o);
            let report = t.last_report.as_ref();
            let fresh = report.and_then(|r| r.outcome.as_ref().ok());
            OriginStatus {
                url: self.urls[o.index() as usize].clone(),
                healthy: t.health == Health::Healthy,
                state: t.health,
                age_seconds: fresh.map(|f| f.age_seconds),
                msn: fresh.map(|f| f.newest_msn),
                last_error: t.last_bad.as_ref().map(ToString::to_string),
                status: report.and_then(|r| r.status),
                latency_ms: report.map(|r| r.latency.as_secs_f64() * 1e3),
                consecutive_bad: t.consecutive_bad,
                consecutive_good: t.consecutive_good,
                draining: self.draining[o.index() as usize].is_some(),
                retiring: self.retired_at[o.index() as usize].is_some(),
            }
        };
        let flows = self.dataplane.flow_counts().ok().map(|counts| {
            counts
                .iter()
                .enumerate()
                .map(|(i, n)| (slot_label(i as u32), *n))
                .collect()
        });
        let (mode, manual_origin) = match self.decider.mode() {
            Mode::Auto => ("auto", None),
            Mode::Manual(o) => ("manual", Some(o)),
        };
        Status {
            active: self.decider.active(),
            mode,
            manual_origin,
            both_bad: self.last.is_some_and(|(a, _)| a == Action::BothBad),
            origins: Origins {
                primary: origin(OriginId::Primary),
                backup: origin(OriginId::Backup),
            },
            flows,
            decisions: self.history.iter().cloned().collect(),
        }
    }
}

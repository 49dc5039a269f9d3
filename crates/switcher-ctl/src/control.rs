//! The one object that owns the truth in user space (Katran's `KatranLb`): the decider, the
//! data plane handle, the metrics and the recent decisions. Every map write goes through
//! [`Controller::apply`] and [`Controller::maintain_flows`].
//!
//! Where new flows go: under [`Steering::Failover`] the active origin (`set_active`); under
//! [`Steering::Balance`] a weighted Maglev table ([`crate::maglev::build`]) over the origins in
//! rotation, rebuilt and published (`set_lookup_table`) whenever the rotation or a weight
//! changes. Maglev moves only the leaving origin's share of new flows; tracked flows stay
//! pinned to their origin in the data plane unless that origin is retired.
//!
//! Operators drain an origin ([`Controller::drain`]): it gets no new flows, its open flows
//! finish, and at the deadline the rest are moved (paced, as below). `undrain` and
//! [`Controller::set_weight`] change the rotation the same way.
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

use crate::dataplane::{Aborted, DataPlane, OriginIndex};
use crate::decide::{Action, Decider, Decision, Health, Mode, OriginId, Policy, Reason, Steering};
use crate::maglev;
use crate::metrics::Metrics;
use crate::probe::ProbeReport;

/// A data plane operation failed, or an operator's request cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Reading the active origin at start failed.
    #[error("reading the active origin from the data plane: {0:#}")]
    ReadActive(anyhow::Error),
    /// Writing the active origin failed; the flip did not happen.
    #[error("setting the active origin to {origin}: {source:#}")]
    SetActive {
        /// The origin that should have become active (its name).
        origin: String,
        /// The data plane's error.
        source: anyhow::Error,
    },
    /// Building or publishing the Maglev table failed; new flows keep the previous table.
    #[error("publishing the lookup table: {0:#}")]
    Publish(anyhow::Error),
    /// No origin has that name.
    #[error("no origin named {0:?}")]
    UnknownOrigin(String),
    /// The change would leave no origin to take new flows.
    #[error("refusing: {0}")]
    Refused(String),
}

/// One origin as the controller is configured with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginConfig {
    /// Stable name (label, JSON key, Maglev backend name).
    pub name: String,
    /// Playlist URL probed.
    pub url: String,
    /// Initial weight.
    pub weight: u32,
}

impl OriginConfig {
    /// The two-origin shorthand: `primary` and `backup`, weight 1.
    pub fn pair(primary_url: &str, backup_url: &str) -> Vec<OriginConfig> {
        vec![
            OriginConfig {
                name: "primary".into(),
                url: primary_url.into(),
                weight: 1,
            },
            OriginConfig {
                name: "backup".into(),
                url: backup_url.into(),
                weight: 1,
            },
        ]
    }
}

/// Per-origin part of [`Status`].
#[derive(Clone, Debug, Serialize)]
pub struct OriginStatus {
    /// Name.
    pub name: String,
    /// Index in the data plane's maps (and place in the preference list).
    pub index: OriginIndex,
    /// Playlist URL probed.
    pub url: String,
    /// Healthy after hysteresis.
    pub healthy: bool,
    /// `healthy` / `unhealthy`.
    pub state: Health,
    /// Weight (share of new flows under balance).
    pub weight: u32,
    /// Drained by an operator: no new flows until undrained.
    pub drained: bool,
    /// Gets new flows now (failover: it is the active origin).
    pub in_rotation: bool,
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
    /// Seconds until the drain deadline, while draining (0 once it has passed).
    pub drain_deadline_seconds: Option<f64>,
    /// Retired as unhealthy and some of its connections are still finishing a response.
    pub retiring: bool,
}

/// Serializes the origins as a JSON object keyed by name, in preference order
/// (`origins.primary.healthy`, as the two-origin status always read).
fn origins_by_name<S: serde::Serializer>(
    origins: &[OriginStatus],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(origins.len()))?;
    for o in origins {
        map.serialize_entry(&o.name, o)?;
    }
    map.end()
}

/// Everything `/healthz` and the status page show.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// `failover` or `balance`.
    pub policy: &'static str,
    /// Active origin's name (balance: the first origin in rotation).
    pub active: String,
    /// `auto` or `manual`.
    pub mode: &'static str,
    /// The pinned origin in manual mode.
    pub manual_origin: Option<String>,
    /// True while every origin that could take new flows is bad.
    pub both_bad: bool,
    /// Origins getting new flows, by name, in preference order.
    pub rotation: Vec<String>,
    /// Per origin, in preference order (a JSON object keyed by name).
    #[serde(serialize_with = "origins_by_name")]
    pub origins: Vec<OriginStatus>,
    /// Tracked flows per origin slot label, when the data plane could be read.
    pub flows: Option<BTreeMap<String, u64>>,
    /// Recent decisions that were not plain "stay, active healthy", newest last.
    pub decisions: Vec<Decision>,
}

impl Status {
    /// The origin called `name`.
    pub fn origin(&self, name: &str) -> Option<&OriginStatus> {
        self.origins.iter().find(|o| o.name == name)
    }
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
    /// Each origin's segment age, in origin order; none when its probe failed (a gap).
    pub ages: Vec<Option<f64>>,
}

/// Connections of a drained origin moved per probe window once its drain deadline has passed
/// (about 1,280/s at the default 0.2 s interval): a paced move, so the other origins see a
/// steady trickle of reconnects rather than every viewer at once.
pub const DRAIN_ABORTS_PER_WINDOW: usize = 256;

/// Retired flow entries deleted per probe window (see [`DataPlane::reap_retired`]): about
/// 20,000/s at the default 0.2 s interval, a few milliseconds a window, so 200,000 retired
/// flows are gone in about 10 s, and no window stalls the probes.
pub const REAPS_PER_WINDOW: usize = 4_096;

/// The control object.
pub struct Controller {
    dataplane: Box<dyn DataPlane>,
    decider: Decider,
    metrics: Metrics,
    urls: Vec<String>,
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
    /// Per origin: the drain deadline while its flows drain.
    draining: Vec<Option<SystemTime>>,
    /// Per origin: the drain time an operator asked for (`drain NAME --deadline S`), used
    /// instead of `drain_after` when the drain starts.
    drain_for: Vec<Option<Duration>>,
    /// How long a retired origin's delivering connections may take to finish.
    finish_after: Duration,
    /// Per origin: when it was retired as unhealthy, while its connections finish.
    retired_at: Vec<Option<SystemTime>>,
    /// Flows per origin at the latest data plane read, to skip needless map walks.
    last_flow_counts: Vec<u64>,
    /// Balance: the (origin, weight) pairs of the table the data plane has, or `None` before
    /// the first publication and after a failed one (the next window publishes again).
    published: Option<Vec<(OriginId, u32)>>,
    /// The origins the data plane was last told may take a listener-check fallback
    /// ([`DataPlane::set_fallbacks`]); `None` before the first write and after a failed one.
    fallbacks: Option<Vec<OriginIndex>>,
}

impl Controller {
    /// Failover: adopts the data plane's active origin (a restarted `run` keeps what the pins
    /// say; an index that is not one of ours is corrected to the first origin). Balance:
    /// publishes the table over every origin of weight above 0.
    pub fn new(
        mut dataplane: Box<dyn DataPlane>,
        policy: Policy,
        mut metrics: Metrics,
        origins: Vec<OriginConfig>,
        history_len: usize,
        drain_after: Duration,
        finish_after: Duration,
    ) -> Result<Self, ControlError> {
        let n = origins.len();
        let names: Vec<String> = origins.iter().map(|o| o.name.clone()).collect();
        metrics.set_origins(&names);
        let index = dataplane.active().map_err(ControlError::ReadActive)?;
        let active = if (index as usize) < n {
            OriginId(index)
        } else {
            let origin = OriginId(0);
            if policy.steering == Steering::Failover {
                tracing::warn!(
                    index,
                    "data plane's active origin is not one of ours; setting the first origin"
                );
                dataplane
                    .set_active(origin.index())
                    .map_err(|source| ControlError::SetActive {
                        origin: names.first().cloned().unwrap_or_default(),
                        source,
                    })?;
            }
            origin
        };
        let urls = origins.iter().map(|o| o.url.clone()).collect();
        let decider = Decider::new(
            policy,
            origins.into_iter().map(|o| (o.name, o.weight)).collect(),
            active,
        );
        let mut c = Controller {
            dataplane,
            decider,
            metrics,
            urls,
            history: VecDeque::with_capacity(history_len),
            history_len,
            last: None,
            age_history: VecDeque::with_capacity(AGE_HISTORY_LEN),
            drain_after,
            draining: vec![None; n],
            drain_for: vec![None; n],
            finish_after,
            retired_at: vec![None; n],
            last_flow_counts: Vec::new(),
            published: None,
            fallbacks: None,
        };
        c.metrics.set_active(c.decider.active());
        if policy.steering == Steering::Balance {
            c.publish_table()?;
        }
        c.refresh_origin_metrics();
        tracing::info!(
            policy = policy.steering.label(),
            active = c.decider.name(c.decider.active()),
            rotation = ?c.rotation_names(),
            "adopted the data plane"
        );
        Ok(c)
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
        self.decider.ids().any(|o| {
            let t = self.decider.track(o);
            t.health == Health::Healthy && t.consecutive_bad > 0 && t.consecutive_bad < required
        })
    }

    /// The active origin (balance: the first origin in rotation).
    pub fn active(&self) -> OriginId {
        self.decider.active()
    }

    /// The active origin's name.
    pub fn active_name(&self) -> &str {
        self.decider.name(self.decider.active())
    }

    /// The origin called `name`.
    pub fn find(&self, name: &str) -> Option<OriginId> {
        self.decider.find(name)
    }

    /// Playlist URLs, in origin order (what the run loop probes).
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    fn rotation_names(&self) -> Vec<String> {
        self.decider
            .rotation()
            .iter()
            .map(|o| self.decider.name(*o).to_string())
            .collect()
    }

    /// One probe window: record, decide, apply. `reports` in origin order.
    pub fn on_window(
        &mut self,
        reports: &[ProbeReport],
        now: SystemTime,
    ) -> Result<Decision, ControlError> {
        for (o, r) in self.decider.ids().zip(reports) {
            self.metrics.observe_probe(self.decider.name(o), r);
        }
        self.sample_ages(reports, now);
        let decision = self.decider.step(reports, now);
        for o in self.decider.ids() {
            self.metrics.set_healthy(
                self.decider.name(o),
                self.decider.track(o).health == Health::Healthy,
            );
        }
        let decision = self.apply(decision, now);
        self.maintain_flows(now);
        decision
    }

    /// Whether `o` gets new flows now.
    fn gets_new_flows(&self, o: OriginId) -> bool {
        self.decider.in_rotation(o)
    }

    /// Once per window: delete a share of the retired flows' entries, and, for each origin
    /// that gets no new flows, abort the flows of an unhealthy one, and move a drained one's
    /// flows once its deadline has passed.
    pub fn maintain_flows(&mut self, now: SystemTime) {
        if let Err(e) = self.dataplane.reap_retired(REAPS_PER_WINDOW) {
            tracing::warn!(error = %format!("{e:#}"), "deleting retired flows failed (the data plane forgets each one it meets)");
        }
        for o in self.decider.ids().collect::<Vec<_>>() {
            let slot = o.slot();
            let unhealthy = self.decider.track(o).health == Health::Unhealthy;
            let serving = self.gets_new_flows(o);
            if serving || !unhealthy {
                self.retired_at[slot] = None;
            }
            if serving {
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
                    tracing::info!(origin = self.decider.name(o), "drain finished");
                    self.set_draining(o, None);
                }
            }
        }
    }

    fn set_draining(&mut self, o: OriginId, deadline: Option<SystemTime>) {
        self.draining[o.slot()] = deadline;
        if deadline.is_none() {
            self.drain_for[o.slot()] = None;
        }
        self.metrics
            .draining
            .with_label_values(&[self.decider.name(o)])
            .set(i64::from(deadline.is_some()));
    }

    /// Starts draining `o`'s open flows (a healthy origin that stopped getting new flows):
    /// they stay until they end or the deadline, then are moved, paced.
    fn start_drain(&mut self, o: OriginId, now: SystemTime) {
        if self.draining[o.slot()].is_some() {
            return;
        }
        let after = self.drain_for[o.slot()].unwrap_or(self.drain_after);
        // An absurd drain time (validated elsewhere) must not overflow the clock.
        let deadline = now
            .checked_add(after)
            .unwrap_or_else(|| now + Duration::from_secs(u32::MAX.into()));
        tracing::info!(
            origin = self.decider.name(o),
            drain_s = after.as_secs_f64(),
            "draining: open connections stay until they end or the deadline"
        );
        self.set_draining(o, Some(deadline));
        // set_draining(Some) keeps drain_for; it is cleared when the drain ends.
    }

    /// Aborts an unhealthy origin's connections: all of them, except (within the finish time
    /// since it was retired, and only when it was retired for a reason that leaves it
    /// delivering at full speed, see [`crate::finish::may_finish`]) those delivering a
    /// response right now, which later windows cut once they finish or stall. An origin cut at
    /// once also gets its pending handshakes reset (see [`DataPlane::abort_flows`]); the first
    /// call of a retirement decides that, since it empties the origin's handshake slots and no
    /// new SYN goes to a retired origin.
    fn retire(&mut self, o: OriginId, now: SystemTime, why: &str) {
        let slot = o.slot();
        let since = *self.retired_at[slot].get_or_insert(now);
        let finish = now.duration_since(since).unwrap_or_default() < self.finish_after
            && crate::finish::may_finish(self.decider.track(o).last_bad.as_ref());
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
        let name = self.decider.name(o).to_string();
        match self.dataplane.abort_flows(o.index(), max, finish_in_flight) {
            Ok(a) => {
                let l = [name.as_str()];
                self.metrics
                    .retired_flows
                    .with_label_values(&l)
                    .inc_by(a.removed);
                self.metrics
                    .aborted_connections
                    .with_label_values(&l)
                    .inc_by(a.reset);
                self.metrics
                    .edge_resets
                    .with_label_values(&l)
                    .inc_by(a.edge_resets);
                self.metrics
                    .handshake_resets
                    .with_label_values(&l)
                    .inc_by(a.handshake_resets);
                if a.removed > 0 || a.reset > 0 || a.handshake_resets > 0 {
                    tracing::warn!(origin = %name, why, reset = a.reset, edge_resets = a.edge_resets, handshake_resets = a.handshake_resets, flows_removed = a.removed, finishing = a.finishing, remaining = a.remaining, "aborted viewer connections");
                }
                if let Some(c) = self.last_flow_counts.get_mut(o.slot()) {
                    *c = a.remaining + a.finishing;
                }
                Some(a)
            }
            Err(e) => {
                tracing::error!(origin = %name, why, error = %format!("{e:#}"), "aborting flows failed");
                None
            }
        }
    }

    /// Appends to the age history when the newest sample is [`AGE_SAMPLE_PERIOD`] old.
    fn sample_ages(&mut self, reports: &[ProbeReport], now: SystemTime) {
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
        let ages = reports
            .iter()
            .map(|r| r.outcome.as_ref().ok().map(|f| f.age_seconds))
            .collect();
        self.age_history.push_back(AgeSample { at_ms, ages });
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

    fn origin_named(&self, name: &str) -> Result<OriginId, ControlError> {
        self.decider
            .find(name)
            .ok_or_else(|| ControlError::UnknownOrigin(name.to_string()))
    }

    /// Whether some origin other than `except` could still take new flows (open, healthy).
    fn another_open(&self, except: OriginId) -> bool {
        self.decider.ids().any(|o| {
            o != except
                && self.decider.origin(o).open()
                && self.decider.track(o).health == Health::Healthy
        })
    }

    /// An operator drains `name` (`POST /drain`): no new flows from now on; its open flows
    /// stay until they end or `deadline` (default: the drain time) passes, then are moved.
    /// Refused when no other origin could take new flows.
    pub fn drain(
        &mut self,
        name: &str,
        deadline: Option<Duration>,
        now: SystemTime,
    ) -> Result<Decision, ControlError> {
        let o = self.origin_named(name)?;
        if !self.another_open(o) {
            return Err(ControlError::Refused(format!(
                "draining {name} would leave no healthy origin to take new flows"
            )));
        }
        tracing::info!(origin = name, deadline_s = ?deadline.map(|d| d.as_secs_f64()), "operator drains origin");
        self.decider.set_drained(o, true);
        self.drain_for[o.slot()] = Some(deadline.unwrap_or(self.drain_after));
        let decision = self.decider.decide(now);
        let decision = self.apply(decision, now)?;
        // Not getting new flows any more (or not before either): its open flows drain, by
        // the deadline asked for even when they were draining already.
        if !self.gets_new_flows(o) {
            self.draining[o.slot()] = None;
            self.start_drain(o, now);
        }
        self.refresh_origin_metrics();
        Ok(decision)
    }

    /// An operator undrains `name` (`POST /undrain`): it may get new flows again (when
    /// healthy), and its open flows are no longer moved at a deadline.
    pub fn undrain(&mut self, name: &str, now: SystemTime) -> Result<Decision, ControlError> {
        let o = self.origin_named(name)?;
        tracing::info!(origin = name, "operator undrains origin");
        let was = self.decider.origin(o).drained;
        self.decider.set_drained(o, false);
        if was {
            self.set_draining(o, None);
        }
        let decision = self.decider.decide(now);
        let decision = self.apply(decision, now)?;
        self.refresh_origin_metrics();
        Ok(decision)
    }

    /// An operator sets `name`'s weight (`POST /weight`): balance rebuilds the table, and 0
    /// takes the origin out of rotation (its open flows stay: nothing is wrong with them).
    /// Failover: 0 makes an active origin leave as a drained one does (its flows drain).
    /// Refused when no other origin could take new flows. When the new table cannot be
    /// published, the weight stays set and the next window publishes it.
    pub fn set_weight(
        &mut self,
        name: &str,
        weight: u32,
        now: SystemTime,
    ) -> Result<Decision, ControlError> {
        let o = self.origin_named(name)?;
        if weight > crate::config::MAX_WEIGHT {
            return Err(ControlError::Refused(format!(
                "weight {weight} is above {}",
                crate::config::MAX_WEIGHT
            )));
        }
        if weight == 0 && !self.another_open(o) {
            return Err(ControlError::Refused(format!(
                "weight 0 for {name} would leave no healthy origin to take new flows"
            )));
        }
        tracing::info!(origin = name, weight, "operator sets weight");
        self.decider.set_weight(o, weight);
        let decision = self.decider.decide(now);
        let decision = self.apply(decision, now)?;
        self.refresh_origin_metrics();
        Ok(decision)
    }

    /// Builds the Maglev table over the origins in rotation and publishes it, unless the data
    /// plane has that very table already.
    fn publish_table(&mut self) -> Result<(), ControlError> {
        let want: Vec<(OriginId, u32)> = self
            .decider
            .rotation()
            .iter()
            .map(|o| (*o, self.decider.origin(*o).weight))
            .collect();
        if self.published.as_ref() == Some(&want) {
            return Ok(());
        }
        let backends: Vec<maglev::Backend<'_>> = want
            .iter()
            .map(|(o, weight)| maglev::Backend {
                name: self.decider.name(*o),
                weight: *weight,
            })
            .collect();
        let table = maglev::build(&backends, maglev::DEFAULT_TABLE_SIZE)
            .map_err(|e| ControlError::Publish(e.into()))?;
        // The table holds positions in `backends`; the data plane wants origin indices.
        let slots: Vec<OriginIndex> = table
            .slots()
            .iter()
            .map(|&b| match want.get(b as usize) {
                Some((o, _)) => o.index(),
                None => maglev::NO_BACKEND,
            })
            .collect();
        self.published = None;
        self.dataplane
            .set_lookup_table(&slots)
            .map_err(ControlError::Publish)?;
        let shares = table.entry_counts(want.len());
        tracing::info!(
            rotation = ?want.iter().zip(&shares).map(|((o, w), n)| format!("{}(w{w}, {n} slots)", self.decider.name(*o))).collect::<Vec<_>>(),
            "published the lookup table"
        );
        self.metrics.table_rebuilds.inc();
        self.published = Some(want);
        Ok(())
    }

    /// The single place that writes the data plane.
    fn apply(&mut self, decision: Decision, now: SystemTime) -> Result<Decision, ControlError> {
        self.publish_fallbacks();
        match self.decider.policy().steering {
            Steering::Failover => self.apply_failover(&decision, now)?,
            Steering::Balance => self.apply_balance(&decision, now)?,
        }
        self.metrics.observe_decision(&decision);
        self.refresh_origin_metrics();
        self.log(&decision);
        // A condition that persists (both bad, a degraded active origin) is one entry of the
        // history, not one per probe window: it would push every other decision out.
        let repeated = self.last == Some((decision.action, decision.reason))
            && !decision.flips()
            && decision.action != Action::Rebalance;
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

    /// Tells the data plane which origins a new flow may fall back to when its table origin
    /// has no listener (`VIP_CHECK_LISTENER`): the healthy ones that are not drained and have
    /// a weight above 0, so that a crash of one origin never sends viewers to another that is
    /// hung, failing or being emptied. Written when that set changes; a failed write is logged, and the next
    /// window writes again.
    fn publish_fallbacks(&mut self) {
        let want: Vec<OriginIndex> = self
            .decider
            .ids()
            .filter(|&o| {
                let s = self.decider.origin(o);
                s.track.health == Health::Healthy && !s.drained && s.weight > 0
            })
            .map(OriginId::index)
            .collect();
        if self.fallbacks.as_ref() == Some(&want) {
            return;
        }
        match self.dataplane.set_fallbacks(&want) {
            Ok(()) => self.fallbacks = Some(want),
            Err(e) => {
                self.fallbacks = None;
                tracing::error!(error = %format!("{e:#}"), "writing the fallback origins failed; next window tries again");
            }
        }
    }

    fn apply_failover(&mut self, decision: &Decision, now: SystemTime) -> Result<(), ControlError> {
        if decision.flips() {
            let (old, new) = (decision.from, decision.to);
            if let Err(source) = self.dataplane.set_active(new.index()) {
                self.decider.revert_active(old);
                tracing::error!(from = %decision.from_name, to = %decision.to_name, error = %format!("{source:#}"), "flip failed; staying");
                return Err(ControlError::SetActive {
                    origin: decision.to_name.clone(),
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
                self.start_drain(old, now);
            }
        }
        Ok(())
    }

    fn apply_balance(&mut self, decision: &Decision, now: SystemTime) -> Result<(), ControlError> {
        let before: Vec<OriginId> = self
            .published
            .as_ref()
            .map(|p| p.iter().map(|(o, _)| *o).collect())
            .unwrap_or_default();
        if let Err(e) = self.publish_table() {
            // The data plane keeps the table it has: so does the decider (and the next window
            // publishes again).
            if !before.is_empty() {
                self.decider.revert_rotation(before);
            }
            tracing::error!(error = %e, "lookup table not published; staying");
            return Err(e);
        }
        self.metrics.set_active(decision.to);
        for o in self.decider.ids().collect::<Vec<_>>() {
            let was = before.contains(&o);
            if self.decider.in_rotation(o) {
                self.set_draining(o, None);
            } else if was {
                // Left the rotation: an unhealthy origin's viewers are cut now (after the new
                // table, so they reconnect to the others); a drained one's drain.
                if self.decider.track(o).health == Health::Unhealthy {
                    self.retire(o, now, "origin retired");
                } else if self.decider.origin(o).drained {
                    self.start_drain(o, now);
                }
            }
        }
        Ok(())
    }

    /// One line per decision. Routine windows at debug so a 0.2 s interval does not flood
    /// the log; a repeated alarm (both bad) at debug after its first warning.
    fn log(&self, d: &Decision) {
        let repeated = self.last == Some((d.action, d.reason));
        let (action, reason) = (format!("{:?}", d.action), d.reason.label());
        match d.action {
            Action::Failover => {
                tracing::warn!(action, reason, from = %d.from_name, to = %d.to_name, detail = %d.detail, "failover")
            }
            Action::Switchback => {
                tracing::info!(action, reason, from = %d.from_name, to = %d.to_name, detail = %d.detail, "switchback")
            }
            Action::Rebalance => {
                tracing::warn!(action, reason, rotation = ?d.rotation, detail = %d.detail, "rotation changed")
            }
            Action::BothBad if !repeated => {
                tracing::warn!(action, reason, active = %d.to_name, detail = %d.detail, "every origin bad; staying")
            }
            Action::Stay
                if d.reason == Reason::ActiveDegraded
                    || d.reason == Reason::ManualOverride
                    || d.reason == Reason::ManualAuto
                    || d.reason == Reason::Drained =>
            {
                tracing::info!(action, reason, active = %d.to_name, detail = %d.detail, "stay")
            }
            _ => tracing::debug!(action, reason, active = %d.to_name, detail = %d.detail, "stay"),
        }
    }

    /// Weight, drained and in-rotation gauges of every origin.
    fn refresh_origin_metrics(&self) {
        for o in self.decider.ids() {
            let s = self.decider.origin(o);
            self.metrics
                .set_origin(&s.name, s.weight, s.drained, self.gets_new_flows(o));
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
        match self.dataplane.encap_counters() {
            Ok(slots) => self.metrics.observe_encap(&slots),
            Err(e) => {
                self.metrics.dp_read_errors.inc();
                tracing::debug!(error = %format!("{e:#}"), "reading encap counters failed");
            }
        }
    }

    /// Whether the last decision was that no origin can take new flows (`both_bad`). Cheap:
    /// the VIP announcer asks every window, which [`Controller::status`] (map reads) is not.
    pub fn both_bad(&self) -> bool {
        self.last.is_some_and(|(a, _)| a == Action::BothBad)
    }

    /// The state for `/healthz` and the status page.
    pub fn status(&self) -> Status {
        let now = SystemTime::now();
        let origin = |o: OriginId| {
            let s = self.decider.origin(o);
            let t = &s.track;
            let report = t.last_report.as_ref();
            let fresh = report.and_then(|r| r.outcome.as_ref().ok());
            let deadline = self.draining[o.slot()];
            OriginStatus {
                name: s.name.clone(),
                index: o.index(),
                url: self.urls[o.slot()].clone(),
                healthy: t.health == Health::Healthy,
                state: t.health,
                weight: s.weight,
                drained: s.drained,
                in_rotation: self.gets_new_flows(o),
                age_seconds: fresh.map(|f| f.age_seconds),
                msn: fresh.map(|f| f.newest_msn),
                last_error: t.last_bad.as_ref().map(ToString::to_string),
                status: report.and_then(|r| r.status),
                latency_ms: report.map(|r| r.latency.as_secs_f64() * 1e3),
                consecutive_bad: t.consecutive_bad,
                consecutive_good: t.consecutive_good,
                draining: deadline.is_some(),
                drain_deadline_seconds: deadline
                    .map(|d| d.duration_since(now).map_or(0.0, |left| left.as_secs_f64())),
                retiring: self.retired_at[o.slot()].is_some(),
            }
        };
        let flows = self.dataplane.flow_counts().ok().map(|counts| {
            counts
                .iter()
                .enumerate()
                .map(|(i, n)| (self.metrics.slot_label(i as u32), *n))
                .collect()
        });
        let (mode, manual_origin) = match self.decider.mode() {
            Mode::Auto => ("auto", None),
            Mode::Manual(o) => ("manual", Some(self.decider.name(o).to_string())),
        };
        Status {
            policy: self.decider.policy().steering.label(),
            active: self.active_name().to_string(),
            mode,
            manual_origin,
            both_bad: self.both_bad(),
            rotation: self.rotation_names(),
            origins: self.decider.ids().map(origin).collect(),
            flows,
            decisions: self.history.iter().cloned().collect(),
        }
    }
}

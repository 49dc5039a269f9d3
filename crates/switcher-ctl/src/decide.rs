//! The steering decision: a pure state machine. Input: one probe report per origin and the
//! time; output: a [`Decision`] with its reason. No I/O and no clock of its own, so tests
//! drive it through any sequence of windows with a fake clock.
//!
//! Origins are numbered in configuration order ([`OriginId`], the data plane's index) and
//! named; the order is the failover preference list (the first one is "the primary").
//!
//! Rules (docs/ARCHITECTURE.md, "Failover and draining"):
//! * A window is **bad** for an origin when its probe failed (refused, timeout, 5xx, other
//!   status, unparsable, no PROGRAM-DATE-TIME, empty, too large), when its segment age is over
//!   the threshold, or when its newest MSN is more than [`Policy::msn_tolerance`] behind the
//!   newest MSN among the healthy origins that parsed in this window.
//! * Hysteresis: an origin turns **unhealthy** after `required_windows` consecutive bad
//!   windows, and **healthy** again after `required_windows` consecutive good ones. A refused
//!   connection, an unreachable host or a corrupt newest segment makes it unhealthy at once
//!   ([`ProbeError::counts_at_once`]): nothing listens, the host is gone, or what the origin
//!   stores is broken; waiting more windows only lengthens the outage (or, for a corrupt
//!   segment, the time players are served it).
//! * Never steer new flows to a bad origin: an origin starts getting new flows only when it
//!   is healthy *and* good in this very window ([`OriginTrack::eligible`]), not drained by an
//!   operator, and of weight above 0.
//! * [`Steering::Failover`]: one active origin. It is left only when it is unhealthy (or
//!   drained, or of weight 0), for the first eligible origin in preference order; none
//!   eligible: stay where we are and say so ([`Action::BothBad`]). With `prefer_primary`
//!   (prefer earlier origins), an origin earlier in the list than the active one is taken
//!   back as soon as it is eligible again.
//! * [`Steering::Balance`]: every origin in **rotation** gets new flows (the controller spreads
//!   them with a weighted Maglev table). An origin stays in rotation while it is healthy (so
//!   one bad window moves nothing: hysteresis), not drained and of weight above 0; it joins
//!   when it is eligible. A rotation that would be left empty by health stays as it is
//!   ([`Action::BothBad`]): there is nowhere better to go.
//! * A manual override pins the active origin (in balance: the rotation is that one origin)
//!   until `auto` is set again.
//!
//! Every origin starts healthy (innocent until probed): at start the controller adopts the
//! data plane's active origin, and a dead one is still left after `required_windows` (or at
//! once when refused).

use std::fmt;
use std::time::SystemTime;

use serde::Serialize;

use crate::dataplane::OriginIndex;
use crate::probe::{ProbeError, ProbeReport};

/// Most origins an edge steers to (`--origin` given up to this many times).
pub const MAX_ORIGINS: usize = 16;

/// An origin: its position in the configuration, which is also its index in the data
/// plane's maps and its place in the failover preference list. Its name is the decider's
/// ([`Decider::name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OriginId(pub u32);

impl OriginId {
    /// The first origin: the seed's primary ([`switcher_common::ORIGIN_PRIMARY`]).
    pub const PRIMARY: OriginId = OriginId(switcher_common::ORIGIN_PRIMARY);
    /// The second origin: the seed's backup ([`switcher_common::ORIGIN_BACKUP`]).
    pub const BACKUP: OriginId = OriginId(switcher_common::ORIGIN_BACKUP);

    /// Index in the data plane's maps.
    pub fn index(self) -> OriginIndex {
        self.0
    }

    /// Position in per-origin vectors.
    pub fn slot(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for OriginId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// How new flows are spread over the origins (`--policy`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Steering {
    /// One active origin at a time, in preference order (the seed's behaviour).
    #[default]
    Failover,
    /// Every healthy origin, in proportion to its weight (weighted Maglev).
    Balance,
}

impl Steering {
    /// `failover` or `balance`.
    pub fn label(self) -> &'static str {
        match self {
            Steering::Failover => "failover",
            Steering::Balance => "balance",
        }
    }
}

/// Who chooses the active origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The rules above.
    Auto,
    /// An operator pinned this origin (`switcher-ctl set NAME`).
    Manual(OriginId),
}

/// Thresholds of the rules, from [`crate::config::Config`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// Consecutive bad (good) windows to turn unhealthy (healthy).
    pub required_windows: u32,
    /// Segment age above which a window is bad.
    pub age_threshold_seconds: f64,
    /// How many MSNs an origin may trail the newest healthy one before a window is bad.
    pub msn_tolerance: u64,
    /// Failover: go back to an origin earlier in the preference list (the primary) when it is
    /// healthy again.
    pub prefer_primary: bool,
    /// Failover (one active origin) or balance (all healthy origins, weighted).
    pub steering: Steering,
}

/// Why one window is bad for one origin.
#[derive(Clone, Debug, PartialEq)]
pub enum BadReason {
    /// The probe failed.
    Probe(ProbeError),
    /// The newest segment is older than the threshold.
    Stale {
        /// Age found, seconds.
        age_seconds: f64,
        /// Threshold, seconds.
        threshold_seconds: f64,
    },
    /// The newest MSN trails the newest healthy origin's by more than the tolerance.
    Behind {
        /// This origin's newest MSN.
        msn: u64,
        /// The newest MSN among the healthy origins.
        other_msn: u64,
    },
}

impl fmt::Display for BadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadReason::Probe(e) => write!(f, "{e}"),
            BadReason::Stale {
                age_seconds,
                threshold_seconds,
            } => {
                write!(
                    f,
                    "stale: segment age {age_seconds:.1}s > {threshold_seconds}s"
                )
            }
            BadReason::Behind { msn, other_msn } => {
                write!(f, "behind: newest MSN {msn} < other origin's {other_msn}")
            }
        }
    }
}

/// Health state of an origin after hysteresis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Eligible for new flows (when its latest window is good too).
    Healthy,
    /// Gets no new flows; its flows are retired.
    Unhealthy,
}

/// What the decider knows about one origin's probes.
#[derive(Clone, Debug, PartialEq)]
pub struct OriginTrack {
    /// State after hysteresis.
    pub health: Health,
    /// Consecutive bad windows (0 after a good one).
    pub consecutive_bad: u32,
    /// Consecutive good windows (0 after a bad one).
    pub consecutive_good: u32,
    /// Why the latest window was bad; `None` when it was good or none was seen yet.
    pub last_bad: Option<BadReason>,
    /// The latest probe report.
    pub last_report: Option<ProbeReport>,
}

impl OriginTrack {
    fn new() -> Self {
        OriginTrack {
            health: Health::Healthy,
            consecutive_bad: 0,
            consecutive_good: 0,
            last_bad: None,
            last_report: None,
        }
    }

    /// Healthy and good in the latest window: the only kind of origin new flows move to.
    pub fn eligible(&self) -> bool {
        self.health == Health::Healthy && self.last_bad.is_none() && self.last_report.is_some()
    }
}

/// One origin as the decider holds it: name, operator settings and probe track.
#[derive(Clone, Debug, PartialEq)]
pub struct OriginState {
    /// Stable name (label value, JSON key, CLI word, Maglev backend name).
    pub name: String,
    /// Relative share of new flows in balance mode; 0 takes it out of rotation.
    pub weight: u32,
    /// Drained by an operator: no new flows until undrained.
    pub drained: bool,
    /// Probe history.
    pub track: OriginTrack,
}

impl OriginState {
    /// Not drained and of weight above 0: the operator lets it take new flows.
    pub fn open(&self) -> bool {
        !self.drained && self.weight > 0
    }
}

/// What to do with the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Keep where new flows go.
    Stay,
    /// Failover: make an origin later in the preference list active (`failovers_total`).
    Failover,
    /// Failover: make an origin earlier in the preference list active (`switchbacks_total`).
    Switchback,
    /// Balance: the set of origins in rotation changed (the table is rebuilt).
    Rebalance,
    /// New flows' origin (failover) or every origin in rotation (balance) is unhealthy and no
    /// other is better: stay, and alert.
    BothBad,
}

/// Why, as a stable label (`switcher_decisions_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Stay: the active origin's window (every origin in rotation's) was good.
    ActiveHealthy,
    /// Stay: the active origin's window (one in rotation's) was bad, not for enough windows yet.
    ActiveDegraded,
    /// Flip (or leave the rotation): the active origin (one in rotation) is unhealthy.
    ActiveUnhealthy,
    /// Flip back: an origin earlier in the preference list (the primary) is healthy again
    /// and `prefer_primary` is on.
    PrimaryRecovered,
    /// Balance: an eligible origin joins the rotation.
    OriginRecovered,
    /// An operator drained, undrained or re-weighted an origin.
    Drained,
    /// Stay: every origin that could take new flows is bad.
    BothBad,
    /// Stay: an operator pinned the active origin.
    Manual,
    /// Flip or stay: an operator just set the active origin.
    ManualOverride,
    /// Stay: an operator gave the choice back to the rules.
    ManualAuto,
}

impl Reason {
    /// Every reason, for pre-registering metric label values.
    pub const ALL: [Reason; 10] = [
        Reason::ActiveHealthy,
        Reason::ActiveDegraded,
        Reason::ActiveUnhealthy,
        Reason::PrimaryRecovered,
        Reason::OriginRecovered,
        Reason::Drained,
        Reason::BothBad,
        Reason::Manual,
        Reason::ManualOverride,
        Reason::ManualAuto,
    ];

    /// Label value.
    pub fn label(self) -> &'static str {
        match self {
            Reason::ActiveHealthy => "active_healthy",
            Reason::ActiveDegraded => "active_degraded",
            Reason::ActiveUnhealthy => "active_unhealthy",
            Reason::PrimaryRecovered => "primary_recovered",
            Reason::OriginRecovered => "origin_recovered",
            Reason::Drained => "drained",
            Reason::BothBad => "both_bad",
            Reason::Manual => "manual",
            Reason::ManualOverride => "manual_override",
            Reason::ManualAuto => "manual_auto",
        }
    }
}

/// One decision: what, why, from where to where, when.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    /// What to do.
    pub action: Action,
    /// Why (label).
    pub reason: Reason,
    /// Active origin before (balance: the first origin in rotation).
    #[serde(skip)]
    pub from: OriginId,
    /// Active origin after (equal to `from` unless the action flips).
    #[serde(skip)]
    pub to: OriginId,
    /// Name of `from` (JSON `from`).
    #[serde(rename = "from")]
    pub from_name: String,
    /// Name of `to` (JSON `to`).
    #[serde(rename = "to")]
    pub to_name: String,
    /// Balance: the origins in rotation after the decision, by name (empty in failover).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rotation: Vec<String>,
    /// Time of the window (the caller's clock).
    #[serde(serialize_with = "serialize_time")]
    pub at: SystemTime,
    /// Human explanation: the bad origin's reason, counts of windows.
    pub detail: String,
}

fn serialize_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let t: chrono::DateTime<chrono::Utc> = (*t).into();
    s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

impl Decision {
    /// True when the active origin changes.
    pub fn flips(&self) -> bool {
        self.from != self.to
    }
}

/// The state machine.
#[derive(Clone, Debug)]
pub struct Decider {
    policy: Policy,
    active: OriginId,
    mode: Mode,
    origins: Vec<OriginState>,
    /// Balance: origins getting new flows, in preference order. Failover: `[active]`.
    rotation: Vec<OriginId>,
    /// An operator drained, undrained or re-weighted an origin since the last decision: a
    /// change of rotation it causes is theirs ([`Reason::Drained`]), not the probes'.
    operator_change: bool,
}

impl Decider {
    /// Starts with `active` (adopted from the data plane), every origin healthy, mode auto.
    /// `origins`: (name, weight) in preference order; at most [`MAX_ORIGINS`], validated by
    /// the configuration. In balance mode every origin of weight above 0 starts in rotation.
    pub fn new(policy: Policy, origins: Vec<(String, u32)>, active: OriginId) -> Self {
        let origins: Vec<OriginState> = origins
            .into_iter()
            .map(|(name, weight)| OriginState {
                name,
                weight,
                drained: false,
                track: OriginTrack::new(),
            })
            .collect();
        let mut d = Decider {
            policy,
            active,
            mode: Mode::Auto,
            origins,
            rotation: Vec::new(),
            operator_change: false,
        };
        d.rotation = match policy.steering {
            Steering::Failover => vec![active],
            Steering::Balance => d.ids().filter(|o| d.origins[o.slot()].open()).collect(),
        };
        if policy.steering == Steering::Balance {
            d.active = d.rotation.first().copied().unwrap_or(active);
        }
        d
    }

    /// Every origin, in preference order.
    pub fn ids(&self) -> impl Iterator<Item = OriginId> + use<> {
        (0..self.origins.len() as u32).map(OriginId)
    }

    /// Number of origins.
    pub fn len(&self) -> usize {
        self.origins.len()
    }

    /// True without origins (never, for a validated configuration).
    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    /// The origin called `name`.
    pub fn find(&self, name: &str) -> Option<OriginId> {
        self.origins
            .iter()
            .position(|o| o.name == name)
            .map(|i| OriginId(i as u32))
    }

    /// Whether `o` is one of ours.
    pub fn contains(&self, o: OriginId) -> bool {
        o.slot() < self.origins.len()
    }

    /// The active origin as the decider believes it (balance: the first in rotation).
    pub fn active(&self) -> OriginId {
        self.active
    }

    /// Origins getting new flows, in preference order.
    pub fn rotation(&self) -> &[OriginId] {
        &self.rotation
    }

    /// Whether `o` gets new flows.
    pub fn in_rotation(&self, o: OriginId) -> bool {
        self.rotation.contains(&o)
    }

    /// Current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// What is known about `origin`.
    pub fn track(&self, origin: OriginId) -> &OriginTrack {
        &self.origins[origin.slot()].track
    }

    /// Name, settings and track of `origin`.
    pub fn origin(&self, origin: OriginId) -> &OriginState {
        &self.origins[origin.slot()]
    }

    /// Name of `origin` (`?` for an index that is not ours).
    pub fn name(&self, origin: OriginId) -> &str {
        self.origins.get(origin.slot()).map_or("?", |o| &o.name)
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Drains (`true`) or undrains an origin: a drained origin gets no new flows. Takes
    /// effect at the next [`Decider::decide`].
    pub fn set_drained(&mut self, origin: OriginId, drained: bool) {
        self.origins[origin.slot()].drained = drained;
        self.operator_change = true;
    }

    /// Sets an origin's weight. Takes effect at the next [`Decider::decide`].
    pub fn set_weight(&mut self, origin: OriginId, weight: u32) {
        self.origins[origin.slot()].weight = weight;
        self.operator_change = true;
    }

    /// Judges one window of one origin against the newest MSN among healthy origins.
    fn judge(&self, report: &ProbeReport, newest_msn: Option<u64>) -> Option<BadReason> {
        let mine = match &report.outcome {
            Err(e) => return Some(BadReason::Probe(e.clone())),
            Ok(f) => f,
        };
        if mine.age_seconds > self.policy.age_threshold_seconds {
            return Some(BadReason::Stale {
                age_seconds: mine.age_seconds,
                threshold_seconds: self.policy.age_threshold_seconds,
            });
        }
        if let Some(newest) = newest_msn
            && newest > mine.newest_msn.saturating_add(self.policy.msn_tolerance)
        {
            return Some(BadReason::Behind {
                msn: mine.newest_msn,
                other_msn: newest,
            });
        }
        None
    }

    fn record(&mut self, origin: OriginId, report: &ProbeReport, bad: Option<BadReason>) {
        let required = self.policy.required_windows;
        let t = &mut self.origins[origin.slot()].track;
        match &bad {
            Some(reason) => {
                t.consecutive_good = 0;
                t.consecutive_bad = t.consecutive_bad.saturating_add(1);
                if matches!(reason, BadReason::Probe(e) if e.counts_at_once()) {
                    t.consecutive_bad = t.consecutive_bad.max(required);
                }
                if t.consecutive_bad >= required {
                    t.health = Health::Unhealthy;
                }
            }
            None => {
                t.consecutive_bad = 0;
                t.consecutive_good = t.consecutive_good.saturating_add(1);
                if t.consecutive_good >= required {
                    t.health = Health::Healthy;
                }
            }
        }
        t.last_bad = bad;
        t.last_report = Some(report.clone());
    }

    fn decision(&self, to: OriginId, reason: Reason, at: SystemTime, detail: String) -> Decision {
        let action = if to == self.active {
            if reason == Reason::BothBad {
                Action::BothBad
            } else {
                Action::Stay
            }
        } else if to > self.active {
            Action::Failover
        } else {
            Action::Switchback
        };
        Decision {
            action,
            reason,
            from: self.active,
            to,
            from_name: self.name(self.active).to_string(),
            to_name: self.name(to).to_string(),
            rotation: Vec::new(),
            at,
            detail,
        }
    }

    /// Puts the decider's belief back to `origin` after the data plane refused a flip, so the
    /// next window decides again from what is really active.
    pub fn revert_active(&mut self, origin: OriginId) {
        self.active = origin;
        if self.policy.steering == Steering::Failover {
            self.rotation = vec![origin];
        }
    }

    /// Puts the rotation back after the data plane refused a new table.
    pub fn revert_rotation(&mut self, rotation: Vec<OriginId>) {
        self.active = rotation.first().copied().unwrap_or(self.active);
        self.rotation = rotation;
    }

    /// One window: every origin's report (in origin order), judged, tracked, decided. The
    /// decider's active origin and rotation follow the decision (the caller applies it to the
    /// data plane). A missing report counts as no window for that origin.
    pub fn step(&mut self, reports: &[ProbeReport], now: SystemTime) -> Decision {
        // The reference MSN: the newest among origins that are healthy (before this window)
        // and parsed now. An unhealthy origin's numbers say nothing about where the stream is.
        let newest_msn = self
            .ids()
            .zip(reports)
            .filter(|(o, _)| self.track(*o).health == Health::Healthy)
            .filter_map(|(_, r)| r.outcome.as_ref().ok().map(|f| f.newest_msn))
            .max();
        let judged: Vec<Option<BadReason>> = reports
            .iter()
            .take(self.origins.len())
            .map(|r| self.judge(r, newest_msn))
            .collect();
        for ((o, report), bad) in self.ids().zip(reports).zip(judged) {
            self.record(o, report, bad);
        }
        self.decide(now)
    }

    fn why(&self, o: OriginId) -> String {
        self.track(o)
            .last_bad
            .as_ref()
            .map_or_else(|| "good".to_string(), |r| r.to_string())
    }

    /// Whether new flows may move to `o` now: eligible and open.
    fn candidate(&self, o: OriginId) -> bool {
        let s = self.origin(o);
        s.track.eligible() && s.open()
    }

    /// Decides from what is recorded (after [`Decider::step`], or after an operator drained
    /// or re-weighted an origin).
    pub fn decide(&mut self, now: SystemTime) -> Decision {
        let decision = match self.policy.steering {
            Steering::Failover => self.decide_failover(now),
            Steering::Balance => self.decide_balance(now),
        };
        self.operator_change = false;
        self.active = decision.to;
        if self.policy.steering == Steering::Failover {
            self.rotation = vec![self.active];
        }
        decision
    }

    fn decide_failover(&self, now: SystemTime) -> Decision {
        let active = self.active;
        let a = self.track(active);
        let first_candidate = self.ids().find(|o| *o != active && self.candidate(*o));
        let others = || {
            self.ids()
                .filter(|o| *o != active)
                .map(|o| format!("{}: {}", self.name(o), self.why(o)))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let name = self.name(active);
        if let Mode::Manual(pinned) = self.mode {
            self.decision(
                pinned,
                Reason::Manual,
                now,
                format!(
                    "pinned to {}; {name}: {}",
                    self.name(pinned),
                    self.why(active)
                ),
            )
        } else if a.health == Health::Unhealthy {
            match first_candidate {
                Some(o) => {
                    let detail = format!(
                        "{name} unhealthy ({}) for {} windows; {} good",
                        self.why(active),
                        a.consecutive_bad,
                        self.name(o)
                    );
                    self.decision(o, Reason::ActiveUnhealthy, now, detail)
                }
                None => {
                    let detail = format!("{name}: {}; {}", self.why(active), others());
                    self.decision(active, Reason::BothBad, now, detail)
                }
            }
        } else if !self.origin(active).open() {
            let what = if self.origin(active).drained {
                "drained"
            } else {
                "weight 0"
            };
            match first_candidate {
                Some(o) => self.decision(
                    o,
                    Reason::Drained,
                    now,
                    format!("{name} {what}; {} good", self.name(o)),
                ),
                None => self.decision(
                    active,
                    Reason::Drained,
                    now,
                    format!("{name} {what}, but no other origin is good: {}", others()),
                ),
            }
        } else if let Some(earlier) = first_candidate.filter(|o| *o < active)
            && self.policy.prefer_primary
        {
            let detail = format!(
                "{} good for {} windows",
                self.name(earlier),
                self.track(earlier).consecutive_good
            );
            let reason = if self.operator_change {
                Reason::Drained
            } else {
                Reason::PrimaryRecovered
            };
            self.decision(earlier, reason, now, detail)
        } else if a.last_bad.is_some() {
            let detail = format!(
                "{name}: {} ({}/{} bad windows)",
                self.why(active),
                a.consecutive_bad,
                self.policy.required_windows
            );
            self.decision(active, Reason::ActiveDegraded, now, detail)
        } else {
            self.decision(
                active,
                Reason::ActiveHealthy,
                now,
                format!("{name} good; {}", others()),
            )
        }
    }

    fn decide_balance(&mut self, now: SystemTime) -> Decision {
        let old = self.rotation.clone();
        let names = |set: &[OriginId]| {
            set.iter()
                .map(|o| self.name(*o).to_string())
                .collect::<Vec<_>>()
        };
        let (rotation, reason, detail) = if let Mode::Manual(pinned) = self.mode {
            (
                vec![pinned],
                Reason::Manual,
                format!("pinned to {}", self.name(pinned)),
            )
        } else {
            let new: Vec<OriginId> = self
                .ids()
                .filter(|o| {
                    let s = self.origin(*o);
                    s.open()
                        && s.track.health == Health::Healthy
                        && (old.contains(o) || s.track.eligible())
                })
                .collect();
            let left: Vec<OriginId> = old.iter().copied().filter(|o| !new.contains(o)).collect();
            let joined: Vec<OriginId> = new.iter().copied().filter(|o| !old.contains(o)).collect();
            let unhealthy: Vec<OriginId> = left
                .iter()
                .copied()
                .filter(|o| self.track(*o).health == Health::Unhealthy)
                .collect();
            let describe = |set: &[OriginId]| {
                set.iter()
                    .map(|o| format!("{} ({})", self.name(*o), self.why(*o)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if new.is_empty() {
                let all_bad = old.is_empty()
                    || old
                        .iter()
                        .all(|o| self.track(*o).health == Health::Unhealthy);
                let reason = if all_bad {
                    Reason::BothBad
                } else {
                    Reason::Drained
                };
                let detail = format!(
                    "no origin left to take new flows; staying on {}",
                    describe(&old)
                );
                (old.clone(), reason, detail)
            } else if !unhealthy.is_empty() {
                let detail = format!("{} unhealthy; out of rotation", describe(&unhealthy));
                (new, Reason::ActiveUnhealthy, detail)
            } else if !left.is_empty() {
                let detail = format!("{} drained or weight 0", names(&left).join(", "));
                (new, Reason::Drained, detail)
            } else if !joined.is_empty() {
                let detail = format!("{} good; into rotation", names(&joined).join(", "));
                let reason = if self.operator_change {
                    Reason::Drained
                } else {
                    Reason::OriginRecovered
                };
                (new, reason, detail)
            } else if let Some(o) = new.iter().find(|o| self.track(**o).last_bad.is_some()) {
                let t = self.track(*o);
                let detail = format!(
                    "{}: {} ({}/{} bad windows)",
                    self.name(*o),
                    self.why(*o),
                    t.consecutive_bad,
                    self.policy.required_windows
                );
                (new, Reason::ActiveDegraded, detail)
            } else {
                (
                    new,
                    Reason::ActiveHealthy,
                    "every origin in rotation good".into(),
                )
            }
        };
        let changed = rotation != old;
        let first = rotation.first().copied().unwrap_or(self.active);
        let action = if changed {
            Action::Rebalance
        } else if reason == Reason::BothBad {
            Action::BothBad
        } else {
            Action::Stay
        };
        let d = Decision {
            action,
            reason,
            from: self.active,
            to: first,
            from_name: self.name(self.active).to_string(),
            to_name: self.name(first).to_string(),
            rotation: names(&rotation),
            at: now,
            detail,
        };
        self.rotation = rotation;
        d
    }

    /// An operator's override: `Manual(origin)` makes `origin` active now (even an unhealthy
    /// one: the operator knows something the probes do not, and the detail says so) and
    /// keeps it; `Auto` gives the choice back to the rules from now on.
    pub fn set_mode(&mut self, mode: Mode, now: SystemTime) -> Decision {
        self.mode = mode;
        let mut decision = match mode {
            Mode::Manual(target) => {
                let t = self.track(target);
                let name = self.name(target);
                let detail = if t.eligible() {
                    format!("operator set {name}")
                } else {
                    format!(
                        "operator set {name} although it is not healthy ({:?})",
                        t.health
                    )
                };
                self.decision(target, Reason::ManualOverride, now, detail)
            }
            Mode::Auto => self.decision(
                self.active,
                Reason::ManualAuto,
                now,
                "operator set auto".into(),
            ),
        };
        match self.policy.steering {
            Steering::Failover => {
                self.active = decision.to;
                self.rotation = vec![self.active];
            }
            Steering::Balance => {
                // Pinned: the rotation is that one origin. Auto: the rules decide now.
                let old = self.rotation.clone();
                let d = self.decide_balance(now);
                decision.action = if self.rotation != old {
                    Action::Rebalance
                } else {
                    Action::Stay
                };
                decision.rotation = d.rotation;
                self.operator_change = false;
                decision.to = d.to;
                decision.to_name = d.to_name;
                self.active = decision.to;
            }
        }
        decision
    }
}

//! The failover decision: a pure state machine. Input: one probe report per origin and the
//! time; output: a [`Decision`] with its reason. No I/O and no clock of its own, so tests
//! drive it through any sequence of windows with a fake clock.
//!
//! Rules (docs/ARCHITECTURE.md, "Failover and draining"):
//! * A window is **bad** for an origin when its probe failed (refused, timeout, 5xx, other
//!   status, unparsable, no PROGRAM-DATE-TIME, empty, too large), when its segment age is over
//!   the threshold, or when its newest MSN is more than [`Policy::msn_tolerance`] behind the
//!   other origin's (only compared when both parsed).
//! * Hysteresis: an origin turns **unhealthy** after `required_windows` consecutive bad
//!   windows, and **healthy** again after `required_windows` consecutive good ones. A refused
//!   connection makes it unhealthy at once: nothing listens, waiting more windows only
//!   lengthens the outage (the process is gone, not slow).
//! * The active origin is left only when it is unhealthy, and only for an origin that is
//!   healthy *and* good in this very window (never flip to a bad origin). Otherwise: both bad,
//!   stay where we are and say so.
//! * With `prefer_primary`, the backup is left for the primary as soon as the primary is
//!   healthy again; without it, the backup stays until it fails itself.
//! * A manual override pins the active origin until `auto` is set again.
//!
//! Both origins start healthy (innocent until probed): at start the controller adopts the
//! data plane's active origin, and a dead one is still left after `required_windows` (or at
//! once when refused).

use std::fmt;
use std::time::SystemTime;

use serde::Serialize;

use crate::dataplane::OriginIndex;
use crate::probe::{ProbeError, ProbeReport};

/// One of the two origins of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OriginId {
    /// Origin index [`switcher_common::ORIGIN_PRIMARY`].
    Primary,
    /// Origin index [`switcher_common::ORIGIN_BACKUP`].
    Backup,
}

impl OriginId {
    /// Both origins, in index order.
    pub const ALL: [OriginId; 2] = [OriginId::Primary, OriginId::Backup];

    /// Index in the data plane's maps.
    pub fn index(self) -> OriginIndex {
        match self {
            OriginId::Primary => switcher_common::ORIGIN_PRIMARY,
            OriginId::Backup => switcher_common::ORIGIN_BACKUP,
        }
    }

    /// The origin at a data plane index, if it is one of the two.
    pub fn from_index(index: OriginIndex) -> Option<Self> {
        match index {
            switcher_common::ORIGIN_PRIMARY => Some(OriginId::Primary),
            switcher_common::ORIGIN_BACKUP => Some(OriginId::Backup),
            _ => None,
        }
    }

    /// The other origin.
    pub fn other(self) -> Self {
        match self {
            OriginId::Primary => OriginId::Backup,
            OriginId::Backup => OriginId::Primary,
        }
    }

    /// Label value (`origin="primary"`), JSON key, and CLI word.
    pub fn label(self) -> &'static str {
        match self {
            OriginId::Primary => "primary",
            OriginId::Backup => "backup",
        }
    }
}

impl fmt::Display for OriginId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Who chooses the active origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The rules above.
    Auto,
    /// An operator pinned this origin (`switcher-ctl set primary|backup`).
    Manual(OriginId),
}

/// Thresholds of the rules, from [`crate::config::Config`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// Consecutive bad (good) windows to turn unhealthy (healthy).
    pub required_windows: u32,
    /// Segment age above which a window is bad.
    pub age_threshold_seconds: f64,
    /// How many MSNs an origin may trail the other before a window is bad.
    pub msn_tolerance: u64,
    /// Switch back to the primary when it is healthy again.
    pub prefer_primary: bool,
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
    /// The newest MSN trails the other origin's by more than the tolerance.
    Behind {
        /// This origin's newest MSN.
        msn: u64,
        /// The other origin's newest MSN.
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
    /// Eligible to be active (when its latest window is good too).
    Healthy,
    /// Left when active; never flipped to.
    Unhealthy,
}

/// What the decider knows about one origin.
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

    /// Healthy and good in the latest window: the only kind of origin we flip to.
    pub fn eligible(&self) -> bool {
        self.health == Health::Healthy && self.last_bad.is_none() && self.last_report.is_some()
    }
}

/// What to do with the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Keep the active origin.
    Stay,
    /// Make the backup active (`failovers_total`).
    Failover,
    /// Make the primary active (`switchbacks_total`).
    Switchback,
    /// The active origin is unhealthy and the other is no better: stay, and alert.
    BothBad,
}

/// Why, as a stable label (`switcher_decisions_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Stay: the active origin's window was good.
    ActiveHealthy,
    /// Stay: the active origin's window was bad, but not for enough windows yet.
    ActiveDegraded,
    /// Flip: the active origin is unhealthy and the other is good.
    ActiveUnhealthy,
    /// Flip: the primary is healthy again and `prefer_primary` is on.
    PrimaryRecovered,
    /// Stay: both origins are bad.
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
    pub const ALL: [Reason; 8] = [
        Reason::ActiveHealthy,
        Reason::ActiveDegraded,
        Reason::ActiveUnhealthy,
        Reason::PrimaryRecovered,
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
    /// Active origin before.
    pub from: OriginId,
    /// Active origin after (equal to `from` unless the action flips).
    pub to: OriginId,
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
    tracks: [OriginTrack; 2],
}

fn slot(o: OriginId) -> usize {
    match o {
        OriginId::Primary => 0,
        OriginId::Backup => 1,
    }
}

impl Decider {
    /// Starts with `active` (adopted from the data plane), both origins healthy, mode auto.
    pub fn new(policy: Policy, active: OriginId) -> Self {
        Decider {
            policy,
            active,
            mode: Mode::Auto,
            tracks: [OriginTrack::new(), OriginTrack::new()],
        }
    }

    /// The active origin as the decider believes it.
    pub fn active(&self) -> OriginId {
        self.active
    }

    /// Current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// What is known about `origin`.
    pub fn track(&self, origin: OriginId) -> &OriginTrack {
        &self.tracks[slot(origin)]
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Judges one window of one origin against the other's report.
    fn judge(&self, report: &ProbeReport, other: &ProbeReport) -> Option<BadReason> {
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
        if let Ok(theirs) = &other.outcome
            && theirs.newest_msn > mine.newest_msn.saturating_add(self.policy.msn_tolerance)
        {
            return Some(BadReason::Behind {
                msn: mine.newest_msn,
                other_msn: theirs.newest_msn,
            });
        }
        None
    }

    fn record(&mut self, origin: OriginId, report: &ProbeReport, bad: Option<BadReason>) {
        let required = self.policy.required_windows;
        let t = &mut self.tracks[slot(origin)];
        match &bad {
            Some(reason) => {
                t.consecutive_good = 0;
                t.consecutive_bad = t.consecutive_bad.saturating_add(1);
                if matches!(reason, BadReason::Probe(ProbeError::Refused)) {
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
        } else {
            match to {
                OriginId::Backup => Action::Failover,
                OriginId::Primary => Action::Switchback,
            }
        };
        Decision {
            action,
            reason,
            from: self.active,
            to,
            at,
            detail,
        }
    }

    /// Puts the decider's belief back to `origin` after the data plane refused a flip, so the
    /// next window decides again from what is really active.
    pub fn revert_active(&mut self, origin: OriginId) {
        self.active = origin;
    }

    /// One window: both origins' reports, judged, tracked, decided. The decider's active
    /// origin follows the decision (the caller applies it to the data plane).
    pub fn step(
        &mut self,
        primary: &ProbeReport,
        backup: &ProbeReport,
        now: SystemTime,
    ) -> Decision {
        let p_bad = self.judge(primary, backup);
        let b_bad = self.judge(backup, primary);
        self.record(OriginId::Primary, primary, p_bad);
        self.record(OriginId::Backup, backup, b_bad);

        let active = self.active;
        let other = active.other();
        let a = self.track(active).clone();
        let o = self.track(other);
        let why = |t: &OriginTrack| {
            t.last_bad
                .as_ref()
                .map_or_else(|| "good".to_string(), |r| r.to_string())
        };

        let decision = if let Mode::Manual(pinned) = self.mode {
            self.decision(
                pinned,
                Reason::Manual,
                now,
                format!("pinned to {pinned}; {active}: {}", why(&a)),
            )
        } else if a.health == Health::Unhealthy {
            if o.eligible() {
                let detail = format!(
                    "{active} unhealthy ({}) for {} windows; {other} good",
                    why(&a),
                    a.consecutive_bad
                );
                self.decision(other, Reason::ActiveUnhealthy, now, detail)
            } else {
                let detail = format!("{active}: {}; {other}: {}", why(&a), why(o));
                self.decision(active, Reason::BothBad, now, detail)
            }
        } else if active == OriginId::Backup && self.policy.prefer_primary && o.eligible() {
            let detail = format!("primary good for {} windows", o.consecutive_good);
            self.decision(OriginId::Primary, Reason::PrimaryRecovered, now, detail)
        } else if a.last_bad.is_some() {
            let detail = format!(
                "{active}: {} ({}/{} bad windows)",
                why(&a),
                a.consecutive_bad,
                self.policy.required_windows
            );
            self.decision(active, Reason::ActiveDegraded, now, detail)
        } else {
            self.decision(
                active,
                Reason::ActiveHealthy,
                now,
                format!("{active} good; {other}: {}", why(o)),
            )
        };
        self.active = decision.to;
        decision
    }

    /// An operator's override: `Manual(origin)` makes `origin` active now (even an unhealthy
    /// one: the operator knows something the probes do not, and the detail says so) and
    /// keeps it; `Auto` gives the choice back to the rules from the next window on.
    pub fn set_mode(&mut self, mode: Mode, now: SystemTime) -> Decision {
        self.mode = mode;
        let decision = match mode {
            Mode::Manual(target) => {
                let t = self.track(target);
                let detail = if t.eligible() {
                    format!("operator set {target}")
                } else {
                    format!(
                        "operator set {target} although it is not healthy ({:?})",
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
        self.active = decision.to;
        decision
    }
}

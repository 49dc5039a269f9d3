//! Decision logic through the controller, with a fake data plane and a fake clock: sequences
//! of probe reports and the flips (and data plane calls) they must cause.

mod common;

use std::time::{Duration, SystemTime};

use common::{Call, FakeDataPlane};
use switcher_common::{Counters, ORIGIN_BACKUP, ORIGIN_PRIMARY, STATS_UNSTEERED};
use switcher_ctl::control::Controller;
use switcher_ctl::control::OriginConfig;
use switcher_ctl::decide::{Action, Decision, Mode, OriginId, Policy, Reason, Steering};
use switcher_ctl::metrics::Metrics;
use switcher_ctl::probe::{ProbeError, ProbeReport};

const INTERVAL: Duration = Duration::from_millis(200);
const THRESHOLD: f64 = 6.0;
const FRESH_AGE: f64 = 1.0;
const STALE_AGE: f64 = 30.0;
const MSN: u64 = 1000;
/// Drain time of the harness: 10 windows.
const DRAIN: Duration = Duration::from_secs(2);

struct Harness {
    dp: FakeDataPlane,
    c: Controller,
    now: SystemTime,
}

fn policy(required_windows: u32, prefer_primary: bool) -> Policy {
    Policy {
        required_windows,
        age_threshold_seconds: THRESHOLD,
        msn_tolerance: 1,
        prefer_primary,
        steering: Steering::Failover,
    }
}

impl Harness {
    fn new(policy: Policy) -> Self {
        Self::with_active(policy, ORIGIN_PRIMARY)
    }
    fn with_active(policy: Policy, active: u32) -> Self {
        let dp = FakeDataPlane::new(active);
        let c = Controller::new(
            Box::new(dp.clone()),
            policy,
            Metrics::new().expect("metrics"),
            OriginConfig::pair("http://p/x.m3u8", "http://b/x.m3u8"),
            10,
            DRAIN,
            Duration::from_secs(6),
        )
        .expect("controller");
        // A fake clock: any fixed start, advanced one interval per window.
        Harness {
            dp,
            c,
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }
    fn window(&mut self, p: ProbeReport, b: ProbeReport) -> Decision {
        self.now += INTERVAL;
        self.c.on_window(&[p, b], self.now).expect("apply")
    }
    fn metric(&self, line_prefix: &str) -> f64 {
        test_kit::metrics::expect(&self.c.metrics().render(), line_prefix)
    }
}

fn good() -> ProbeReport {
    ProbeReport::fresh(MSN, FRESH_AGE)
}
fn stale() -> ProbeReport {
    ProbeReport::fresh(MSN, STALE_AGE)
}
fn err(e: ProbeError) -> ProbeReport {
    ProbeReport::failed(e)
}

#[test]
fn stale_primary_fails_over_after_required_windows_only() {
    let mut h = Harness::new(policy(2, true));
    let d = h.window(stale(), good());
    assert_eq!((d.action, d.reason), (Action::Stay, Reason::ActiveDegraded));
    assert!(h.dp.calls().is_empty(), "no flip after one bad window");
    let d = h.window(stale(), good());
    assert_eq!(
        (d.action, d.reason, d.to),
        (Action::Failover, Reason::ActiveUnhealthy, OriginId::BACKUP)
    );
    assert!(d.detail.contains("stale"), "detail says why: {}", d.detail);
    // set_active(new) strictly before abort_flows(old): an unhealthy origin's viewers are
    // reset at once.
    assert_eq!(
        h.dp.calls(),
        vec![
            Call::SetActive(ORIGIN_BACKUP),
            Call::AbortFlows(ORIGIN_PRIMARY)
        ]
    );
    assert_eq!(h.metric("failovers_total"), 1.0);
    assert_eq!(h.metric("switcher_active_origin"), 0.0);
    assert_eq!(
        h.metric("switcher_decisions_total{reason=\"active_unhealthy\"}"),
        1.0
    );
    assert_eq!(
        h.metric("switcher_decisions_total{reason=\"active_degraded\"}"),
        1.0
    );
}

#[test]
fn seed_windows_need_three() {
    let mut h = Harness::new(policy(3, true));
    for _ in 0..2 {
        assert_eq!(
            h.window(err(ProbeError::Timeout), good()).action,
            Action::Stay
        );
    }
    assert_eq!(
        h.window(err(ProbeError::Timeout), good()).action,
        Action::Failover
    );
}

/// One window in which the primary's probe fails with `e` and the backup's is good, with 3
/// windows of hysteresis: the action, and the active origin after it.
fn one_bad_window(e: ProbeError) -> (Action, u32) {
    let mut h = Harness::new(policy(3, true));
    let d = h.window(err(e), good());
    (d.action, h.dp.active())
}

#[test]
fn refused_connection_counts_at_once() {
    assert_eq!(
        one_bad_window(ProbeError::Refused),
        (Action::Failover, ORIGIN_BACKUP)
    );
}

#[test]
fn unreachable_host_counts_at_once() {
    assert_eq!(
        one_bad_window(ProbeError::Unreachable("no route to host".into())),
        (Action::Failover, ORIGIN_BACKUP)
    );
}

/// A corrupt newest segment (not whole TS packets, or shrunk while listed) is an answer from
/// the origin's own storage, served to every player that fetches it: no hysteresis.
#[test]
fn a_corrupt_segment_counts_at_once() {
    assert_eq!(
        one_bad_window(ProbeError::Corrupt("shrank from 1000 to 501 bytes".into())),
        (Action::Failover, ORIGIN_BACKUP)
    );
    // A segment that could not be fetched whole (a connection cut mid-body) waits.
    assert_eq!(
        one_bad_window(ProbeError::Segment("connection reset".into())).0,
        Action::Stay
    );
}

#[test]
fn other_errors_wait_for_hysteresis() {
    for e in [
        ProbeError::Timeout,
        ProbeError::Http5xx(503),
        ProbeError::HttpStatus(404),
        ProbeError::Unparsable("x".into()),
        ProbeError::NoProgramDateTime,
        ProbeError::Empty,
        ProbeError::TooLarge(1),
    ] {
        let mut h = Harness::new(policy(2, true));
        assert_eq!(
            h.window(err(e.clone()), good()).action,
            Action::Stay,
            "{e:?} once"
        );
        assert_eq!(
            h.window(err(e.clone()), good()).action,
            Action::Failover,
            "{e:?} twice"
        );
    }
}

#[test]
fn both_bad_stays_and_reports() {
    let mut h = Harness::new(policy(2, true));
    h.window(err(ProbeError::Http5xx(503)), err(ProbeError::Refused));
    for _ in 0..5 {
        let d = h.window(err(ProbeError::Http5xx(503)), err(ProbeError::Refused));
        assert_eq!(
            (d.action, d.reason, d.to),
            (Action::BothBad, Reason::BothBad, OriginId::PRIMARY)
        );
    }
    assert!(h.dp.calls().is_empty(), "never flips to a bad origin");
    assert!(h.c.status().both_bad);
    assert_eq!(h.metric("switcher_both_bad"), 1.0);
    assert_eq!(h.metric("origin_healthy{origin=\"primary\"}"), 0.0);
    assert_eq!(h.metric("origin_http_5xx_total{origin=\"primary\"}"), 6.0);
    // The backup comes back: it is still healthy after hysteresis (refused made it unhealthy,
    // so it needs two good windows first).
    assert_eq!(
        h.window(err(ProbeError::Http5xx(503)), good()).action,
        Action::BothBad
    );
    assert_eq!(
        h.window(err(ProbeError::Http5xx(503)), good()).action,
        Action::Failover
    );
    assert!(!h.c.status().both_bad);
    assert_eq!(h.metric("switcher_both_bad"), 0.0);
}

#[test]
fn origin_behind_on_msn_is_bad_beyond_tolerance() {
    let mut h = Harness::new(policy(2, true));
    // One segment behind: the probe race between two independent packagers, not a lag.
    for _ in 0..10 {
        assert_eq!(
            h.window(
                ProbeReport::fresh(MSN, FRESH_AGE),
                ProbeReport::fresh(MSN + 1, FRESH_AGE)
            )
            .action,
            Action::Stay
        );
    }
    // Two behind, though fresh by age: the player would stall on it.
    h.window(
        ProbeReport::fresh(MSN, FRESH_AGE),
        ProbeReport::fresh(MSN + 2, FRESH_AGE),
    );
    let d = h.window(
        ProbeReport::fresh(MSN, FRESH_AGE),
        ProbeReport::fresh(MSN + 2, FRESH_AGE),
    );
    assert_eq!(d.action, Action::Failover);
    assert!(d.detail.contains("behind"), "{}", d.detail);
}

#[test]
fn backup_behind_is_never_flipped_to() {
    let mut h = Harness::new(policy(2, true));
    h.window(stale(), ProbeReport::fresh(MSN - 5, FRESH_AGE));
    // The primary is stale; the backup is fresh but five segments behind it: both bad.
    let d = h.window(stale(), ProbeReport::fresh(MSN - 5, FRESH_AGE));
    assert_eq!(d.action, Action::BothBad);
    assert!(h.dp.calls().is_empty());
}

#[test]
fn flapping_primary_never_flips() {
    let mut h = Harness::new(policy(2, true));
    for i in 0..40 {
        let p = if i % 2 == 0 { stale() } else { good() };
        assert_ne!(h.window(p, good()).action, Action::Failover, "window {i}");
    }
    assert!(h.dp.calls().is_empty());
    assert_eq!(h.metric("failovers_total"), 0.0);
}

#[test]
fn switchback_after_required_good_windows() {
    let mut h = Harness::new(policy(2, true));
    h.window(err(ProbeError::Refused), good());
    assert_eq!(h.dp.active(), ORIGIN_BACKUP);
    assert_eq!(
        h.window(good(), good()).action,
        Action::Stay,
        "one good window is not enough"
    );
    let d = h.window(good(), good());
    assert_eq!(
        (d.action, d.reason, d.to),
        (
            Action::Switchback,
            Reason::PrimaryRecovered,
            OriginId::PRIMARY
        )
    );
    // The backup is healthy: its flows drain, nothing is cut at the switchback.
    assert_eq!(
        h.dp.calls(),
        vec![
            Call::SetActive(ORIGIN_BACKUP),
            Call::AbortFlows(ORIGIN_PRIMARY),
            Call::SetActive(ORIGIN_PRIMARY),
        ]
    );
    assert_eq!(h.metric("switcher_draining{origin=\"backup\"}"), 1.0);
    assert_eq!(h.metric("switchbacks_total"), 1.0);
    assert_eq!(h.metric("switcher_active_origin"), 1.0);
}

#[test]
fn prefer_primary_off_stays_on_backup_until_it_fails() {
    let mut h = Harness::new(policy(2, false));
    h.window(err(ProbeError::Refused), good());
    for _ in 0..10 {
        assert_eq!(h.window(good(), good()).action, Action::Stay);
    }
    assert_eq!(h.dp.active(), ORIGIN_BACKUP);
    h.window(good(), stale());
    let d = h.window(good(), stale());
    assert_eq!(
        (d.action, d.reason, d.to),
        (
            Action::Switchback,
            Reason::ActiveUnhealthy,
            OriginId::PRIMARY
        )
    );
}

#[test]
fn manual_override_pins_until_auto() {
    let mut h = Harness::new(policy(2, true));
    let now = h.now;
    let d =
        h.c.set_mode(Mode::Manual(OriginId::BACKUP), now)
            .expect("override");
    assert_eq!(
        (d.action, d.reason),
        (Action::Failover, Reason::ManualOverride)
    );
    assert_eq!(h.dp.active(), ORIGIN_BACKUP);
    // Primary perfectly good, prefer_primary on: still pinned.
    for _ in 0..5 {
        assert_eq!(h.window(good(), good()).reason, Reason::Manual);
    }
    // Even a dead pinned origin stays: the operator decides.
    assert_eq!(
        h.window(good(), err(ProbeError::Refused)).action,
        Action::Stay
    );
    assert_eq!(h.dp.active(), ORIGIN_BACKUP);
    assert_eq!(h.metric("switcher_manual_mode"), 1.0);
    let d = h.c.set_mode(Mode::Auto, now).expect("auto");
    assert_eq!((d.action, d.reason), (Action::Stay, Reason::ManualAuto));
    assert_eq!(h.c.status().mode, "auto");
    let d = h.window(good(), err(ProbeError::Refused));
    assert_eq!(d.action, Action::Switchback);
}

#[test]
fn manual_override_to_unhealthy_origin_says_so() {
    let mut h = Harness::new(policy(2, true));
    h.window(good(), err(ProbeError::Refused));
    let now = h.now;
    let d =
        h.c.set_mode(Mode::Manual(OriginId::BACKUP), now)
            .expect("override");
    assert_eq!(d.to, OriginId::BACKUP);
    assert!(d.detail.contains("not healthy"), "{}", d.detail);
}

#[test]
fn failed_set_active_keeps_truth_and_retries() {
    let mut h = Harness::new(policy(1, true));
    h.dp.state().fail_set_active = true;
    let now = h.now;
    assert!(
        h.c.on_window(&[err(ProbeError::Refused), good()], now)
            .is_err()
    );
    assert_eq!(
        h.c.active(),
        OriginId::PRIMARY,
        "controller did not pretend the flip happened"
    );
    assert_eq!(h.metric("switcher_active_origin"), 1.0);
    h.dp.state().fail_set_active = false;
    assert_eq!(
        h.window(err(ProbeError::Refused), good()).action,
        Action::Failover
    );
    assert_eq!(h.dp.active(), ORIGIN_BACKUP);
}

#[test]
fn adopts_the_data_planes_active_origin() {
    let h = Harness::with_active(policy(2, true), ORIGIN_BACKUP);
    assert_eq!(h.c.active(), OriginId::BACKUP);
    assert!(h.dp.calls().is_empty());
    let h = Harness::with_active(policy(2, true), 3);
    assert_eq!(h.c.active(), OriginId::PRIMARY);
    assert_eq!(h.dp.calls(), vec![Call::SetActive(ORIGIN_PRIMARY)]);
}

#[test]
fn retired_flows_and_dataplane_counters_reach_metrics() {
    let mut h = Harness::new(policy(2, true));
    {
        let mut s = h.dp.state();
        s.flows[ORIGIN_PRIMARY as usize] = 7;
        s.counters[ORIGIN_PRIMARY as usize] = Counters {
            packets: 5,
            bytes: 500,
            malformed: 1,
            ..Counters::default()
        };
        s.counters[STATS_UNSTEERED as usize] = Counters {
            passes: 9,
            malformed: 2,
            ..Counters::default()
        };
    }
    h.c.refresh_dataplane_metrics();
    assert_eq!(h.metric("dataplane_flows{origin=\"primary\"}"), 7.0);
    assert_eq!(h.metric("dataplane_packets_total{origin=\"primary\"}"), 5.0);
    assert_eq!(h.metric("dataplane_bytes_total{origin=\"primary\"}"), 500.0);
    assert_eq!(
        h.metric("dataplane_passes_total{origin=\"unsteered\"}"),
        9.0
    );
    assert_eq!(h.metric("dataplane_malformed_total"), 3.0);
    h.window(err(ProbeError::Refused), good());
    assert_eq!(
        h.metric("switcher_retired_flows_total{origin=\"primary\"}"),
        7.0
    );
    // The data plane restarted: counters went down; the metric follows instead of sticking.
    h.dp.state().counters[ORIGIN_PRIMARY as usize].packets = 2;
    h.c.refresh_dataplane_metrics();
    assert_eq!(h.metric("dataplane_packets_total{origin=\"primary\"}"), 2.0);
}

#[test]
fn history_keeps_notable_decisions_only() {
    let mut h = Harness::new(policy(2, true));
    for _ in 0..5 {
        h.window(good(), good());
    }
    h.window(err(ProbeError::Refused), good());
    let s = h.c.status();
    assert_eq!(s.decisions.len(), 1, "{:?}", s.decisions);
    assert_eq!(s.decisions[0].action, Action::Failover);
    assert_eq!(
        s.origin("primary").expect("primary").last_error.as_deref(),
        Some("connection refused")
    );
}

#[test]
fn a_persisting_condition_is_one_history_entry() {
    let mut h = Harness::new(policy(2, true));
    let mut windows = 0;
    for _ in 0..20 {
        if h.window(err(ProbeError::Timeout), err(ProbeError::Timeout))
            .action
            == Action::BothBad
        {
            windows += 1;
        }
    }
    assert!(windows >= 18, "both bad after the hysteresis: {windows}");
    let both_bad =
        h.c.status()
            .decisions
            .iter()
            .filter(|d| d.action == Action::BothBad)
            .count();
    assert_eq!(
        both_bad, 1,
        "{windows} windows of both bad are one entry in the recent decisions"
    );
    // Counted every window all the same.
    assert_eq!(
        h.metric("switcher_decisions_total{reason=\"both_bad\"}"),
        f64::from(windows)
    );
}

/// Flips the harness to the backup (refused primary), then back once the primary is good for
/// two windows; returns with the backup holding `backup_flows` open flows and draining.
fn switched_back_with_backup_flows(backup_flows: u64) -> Harness {
    let mut h = Harness::new(policy(2, true));
    h.window(err(ProbeError::Refused), good());
    h.dp.state().flows[ORIGIN_BACKUP as usize] = backup_flows;
    h.window(good(), good());
    let d = h.window(good(), good());
    assert_eq!(d.action, Action::Switchback);
    h
}

#[test]
fn switchback_leaves_the_backups_flows_alone_until_the_drain_deadline() {
    let mut h = switched_back_with_backup_flows(600);
    let aborts_of_backup = |h: &Harness| {
        h.dp.calls()
            .iter()
            .filter(|c| **c == Call::AbortFlows(ORIGIN_BACKUP))
            .count()
    };
    // Up to the deadline (10 windows of 0.2 s): not one backup viewer is cut.
    for _ in 0..9 {
        h.window(good(), good());
        assert_eq!(aborts_of_backup(&h), 0, "a healthy origin's flows drain");
        assert_eq!(h.metric("switcher_draining{origin=\"backup\"}"), 1.0);
        assert!(
            h.c.status().origin("backup").expect("backup").draining,
            "/healthz shows the drain"
        );
    }
    assert_eq!(h.dp.state().flows[ORIGIN_BACKUP as usize], 600);
    // At the deadline the rest move, paced: 256 per window, so 600 take three windows.
    h.window(good(), good());
    assert_eq!(aborts_of_backup(&h), 1);
    assert_eq!(h.dp.state().flows[ORIGIN_BACKUP as usize], 600 - 256);
    h.window(good(), good());
    h.window(good(), good());
    assert_eq!(aborts_of_backup(&h), 3);
    assert_eq!(h.dp.state().flows[ORIGIN_BACKUP as usize], 0);
    assert_eq!(h.metric("switcher_draining{origin=\"backup\"}"), 0.0);
    assert_eq!(
        h.metric("switcher_aborted_connections_total{origin=\"backup\"}"),
        600.0
    );
    assert_eq!(
        h.metric("switcher_edge_resets_total{origin=\"backup\"}"),
        600.0,
        "every aborted connection also got the edge's reset"
    );
    h.window(good(), good());
    assert_eq!(aborts_of_backup(&h), 3, "the drain is over");
}

#[test]
fn a_draining_origin_that_turns_unhealthy_is_cut_at_once() {
    let mut h = switched_back_with_backup_flows(40);
    h.window(good(), good());
    h.window(good(), err(ProbeError::Timeout));
    assert!(
        !h.dp.calls().contains(&Call::AbortFlows(ORIGIN_BACKUP)),
        "one bad window is not unhealthy yet"
    );
    h.window(good(), err(ProbeError::Timeout));
    assert!(h.dp.calls().contains(&Call::AbortFlows(ORIGIN_BACKUP)));
    assert_eq!(h.dp.state().flows[ORIGIN_BACKUP as usize], 0);
    assert_eq!(h.metric("switcher_draining{origin=\"backup\"}"), 0.0);
}

#[test]
fn stray_flows_of_an_unhealthy_inactive_origin_are_aborted() {
    let mut h = Harness::new(policy(2, true));
    h.window(err(ProbeError::Refused), good());
    assert_eq!(h.dp.active(), ORIGIN_BACKUP);
    // A flow that raced the flip lands on the dead primary.
    h.dp.state().flows[ORIGIN_PRIMARY as usize] = 3;
    h.c.refresh_dataplane_metrics();
    h.window(err(ProbeError::Refused), good());
    assert_eq!(h.dp.state().flows[ORIGIN_PRIMARY as usize], 0);
    assert_eq!(
        h.dp.calls()
            .iter()
            .filter(|c| **c == Call::AbortFlows(ORIGIN_PRIMARY))
            .count(),
        2
    );
}

#[test]
fn a_first_bad_window_asks_for_an_immediate_confirmation() {
    let mut h = Harness::new(policy(2, true));
    h.window(good(), good());
    assert!(!h.c.needs_confirmation());
    h.window(err(ProbeError::Timeout), good());
    assert!(h.c.needs_confirmation(), "one bad window of two");
    h.window(err(ProbeError::Timeout), good());
    assert!(!h.c.needs_confirmation(), "judged: unhealthy");
}

//! N origins through the controller, with a fake data plane and a fake clock: the failover
//! preference list over three origins, the balance policy's Maglev table (who gets slots, and
//! when it is rebuilt), draining and weights, and the metrics that show them.

mod common;

use std::time::{Duration, SystemTime};

use common::{Call, FakeDataPlane};
use switcher_ctl::control::{ControlError, Controller, OriginConfig};
use switcher_ctl::decide::{Action, Decider, Decision, Mode, OriginId, Policy, Reason, Steering};
use switcher_ctl::maglev::DEFAULT_TABLE_SIZE;
use switcher_ctl::metrics::Metrics;
use switcher_ctl::probe::{ProbeError, ProbeReport};

const INTERVAL: Duration = Duration::from_millis(200);
const MSN: u64 = 1000;
/// Drain time of the harness: 10 windows.
const DRAIN: Duration = Duration::from_secs(2);
const TABLE: usize = DEFAULT_TABLE_SIZE as usize;

fn good() -> ProbeReport {
    ProbeReport::fresh(MSN, 1.0)
}
fn behind() -> ProbeReport {
    ProbeReport::fresh(MSN - 3, 1.0)
}
fn refused() -> ProbeReport {
    ProbeReport::failed(ProbeError::Refused)
}
fn timeout() -> ProbeReport {
    ProbeReport::failed(ProbeError::Timeout)
}

struct Harness {
    dp: FakeDataPlane,
    c: Controller,
    now: SystemTime,
}

impl Harness {
    /// Origins `o1`..`oN` with these weights, under `steering`, hysteresis of 2 windows.
    fn new(steering: Steering, weights: &[u32]) -> Self {
        Self::try_new(steering, weights, FakeDataPlane::new(0)).expect("controller")
    }

    fn try_new(
        steering: Steering,
        weights: &[u32],
        dp: FakeDataPlane,
    ) -> Result<Self, ControlError> {
        let origins = weights
            .iter()
            .enumerate()
            .map(|(i, w)| OriginConfig {
                name: format!("o{}", i + 1),
                url: format!("http://o{}/x.m3u8", i + 1),
                weight: *w,
            })
            .collect();
        let policy = policy(steering);
        let c = Controller::new(
            Box::new(dp.clone()),
            policy,
            Metrics::new().expect("metrics"),
            origins,
            10,
            DRAIN,
            Duration::from_secs(6),
        )?;
        Ok(Harness {
            dp,
            c,
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        })
    }

    fn window(&mut self, reports: &[ProbeReport]) -> Decision {
        self.now += INTERVAL;
        self.c.on_window(reports, self.now).expect("apply")
    }

    fn metric(&self, prefix: &str) -> f64 {
        test_kit::metrics::expect(&self.c.metrics().render(), prefix)
    }

    fn tables_published(&self) -> usize {
        self.dp
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::SetLookupTable(_)))
            .count()
    }

    fn aborts(&self, origin: u32) -> usize {
        self.dp
            .calls()
            .iter()
            .filter(|c| **c == Call::AbortFlows(origin))
            .count()
    }
}

/// Slots of each origin index in the published table, as fractions of the table.
fn fractions(h: &Harness) -> Vec<(u32, f64)> {
    h.dp.table_shares()
        .into_iter()
        .map(|(o, n)| (o, n as f64 / TABLE as f64))
        .collect()
}

fn assert_near(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() < 0.01,
        "{what}: {got} is not {want} (within 1%)"
    );
}

// --- failover over three origins --------------------------------------------------------

#[test]
fn failover_follows_the_preference_list_over_three_origins() {
    let mut h = Harness::new(Steering::Failover, &[1, 1, 1]);
    h.window(&[good(), good(), good()]);
    // o1 dies: the first good origin after it takes over.
    let d = h.window(&[refused(), good(), good()]);
    assert_eq!(
        (d.action, d.reason, d.to, d.to_name.as_str()),
        (Action::Failover, Reason::ActiveUnhealthy, OriginId(1), "o2")
    );
    assert_eq!(h.dp.active(), 1);
    // o2 dies too: o3, and o2's viewers are reset, nobody else's.
    let d = h.window(&[refused(), refused(), good()]);
    assert_eq!((d.action, d.to), (Action::Failover, OriginId(2)));
    assert_eq!(h.dp.active(), 2);
    assert!(h.aborts(1) >= 1, "o2 retired: {:?}", h.dp.calls());
    assert_eq!(h.aborts(2), 0, "the healthy origin's flows are never cut");
    // o2 comes back first: earlier than o3, so it is preferred again (prefer-earlier).
    h.window(&[refused(), good(), good()]);
    let d = h.window(&[refused(), good(), good()]);
    assert_eq!(
        (d.action, d.reason, d.to),
        (Action::Switchback, Reason::PrimaryRecovered, OriginId(1))
    );
    // Then o1: back to the head of the list.
    h.window(&[good(), good(), good()]);
    let d = h.window(&[good(), good(), good()]);
    assert_eq!((d.action, d.to), (Action::Switchback, OriginId(0)));
    assert_eq!(h.metric("failovers_total"), 2.0);
    assert_eq!(h.metric("switchbacks_total"), 2.0);
    assert_eq!(h.metric("switcher_active_origin"), 1.0);
    // Failover never publishes a table.
    assert_eq!(h.tables_published(), 0);
    assert_eq!(h.metric("switcher_origin_in_rotation{origin=\"o1\"}"), 1.0);
    assert_eq!(h.metric("switcher_origin_in_rotation{origin=\"o3\"}"), 0.0);
}

#[test]
fn failover_skips_bad_and_drained_origins_in_the_list() {
    let mut h = Harness::new(Steering::Failover, &[1, 1, 1]);
    h.window(&[good(), good(), good()]);
    // o2 is bad in this very window: never flipped to, even though it is "healthy" still.
    let d = h.window(&[refused(), timeout(), good()]);
    assert_eq!((d.action, d.to), (Action::Failover, OriginId(2)));
    // Draining the active origin moves new flows at once to the first good one left.
    let mut h = Harness::new(Steering::Failover, &[1, 1, 1]);
    h.window(&[good(), good(), good()]);
    let now = h.now;
    let d = h.c.drain("o1", None, now).expect("drain");
    assert_eq!((d.reason, d.to), (Reason::Drained, OriginId(1)));
    assert_eq!(h.dp.active(), 1);
    let s = h.c.status();
    let o1 = s.origin("o1").expect("o1");
    assert!(o1.drained && o1.draining && !o1.in_rotation, "{o1:?}");
    // A drained origin is not taken back, however good it is.
    for _ in 0..5 {
        assert_eq!(h.window(&[good(), good(), good()]).action, Action::Stay);
    }
    let d = h.c.undrain("o1", h.now).expect("undrain");
    assert_eq!(
        (d.action, d.reason, d.to),
        (Action::Switchback, Reason::Drained, OriginId(0)),
        "the operator's change, not a recovery"
    );
}

#[test]
fn the_msn_check_uses_the_newest_healthy_origin() {
    let mut h = Harness::new(Steering::Failover, &[1, 1, 1]);
    h.window(&[good(), good(), behind()]);
    let s = h.c.status();
    let o3 = s.origin("o3").expect("o3");
    assert!(
        o3.last_error
            .as_deref()
            .is_some_and(|e| e.contains("behind")),
        "{o3:?}"
    );
    assert!(s.origin("o1").expect("o1").last_error.is_none());
    // An unhealthy origin far ahead sets no reference: the others are not "behind" it.
    let mut h = Harness::new(Steering::Failover, &[1, 1, 1]);
    h.window(&[refused(), good(), good()]);
    h.window(&[ProbeReport::fresh(MSN + 50, 30.0), good(), good()]);
    let s = h.c.status();
    assert!(s.origin("o2").expect("o2").last_error.is_none(), "{s:?}");
}

// --- balance ---------------------------------------------------------------------------

#[test]
fn balance_publishes_a_weighted_table_at_start() {
    let h = Harness::new(Steering::Balance, &[1, 1, 2]);
    assert_eq!(h.tables_published(), 1);
    let f = fractions(&h);
    assert_eq!(f.len(), 3, "{f:?}");
    assert_near(f[0].1, 0.25, "o1");
    assert_near(f[1].1, 0.25, "o2");
    assert_near(f[2].1, 0.5, "o3");
    assert!(
        !h.dp.calls().iter().any(|c| matches!(c, Call::SetActive(_))),
        "balance steers by the table, not the active map"
    );
    assert_eq!(h.metric("switcher_lookup_table_rebuilds_total"), 1.0);
    assert_eq!(h.metric("switcher_origin_weight{origin=\"o3\"}"), 2.0);
    assert_eq!(h.metric("switcher_origin_in_rotation{origin=\"o2\"}"), 1.0);
}

#[test]
fn a_table_that_cannot_be_published_fails_the_start() {
    let dp = FakeDataPlane::new(0);
    dp.state().fail_set_lookup_table = true;
    assert!(matches!(
        Harness::try_new(Steering::Balance, &[1, 1], dp),
        Err(ControlError::Publish(_))
    ));
}

#[test]
fn a_drained_origin_gets_no_slot_and_its_flows_finish_then_move() {
    let mut h = Harness::new(Steering::Balance, &[1, 1, 1, 1]);
    h.window(&[good(), good(), good(), good()]);
    h.dp.state().flows[2] = 300;
    h.c.refresh_dataplane_metrics();
    let now = h.now;
    let d =
        h.c.drain("o3", Some(Duration::from_secs(1)), now)
            .expect("drain");
    assert_eq!((d.action, d.reason), (Action::Rebalance, Reason::Drained));
    assert_eq!(d.rotation, ["o1", "o2", "o4"]);
    let f = fractions(&h);
    assert!(f.iter().all(|(o, _)| *o != 2), "o3 has no slot: {f:?}");
    for (o, share) in &f {
        assert_near(*share, 1.0 / 3.0, &format!("origin {o}"));
    }
    assert_eq!(h.metric("switcher_origin_in_rotation{origin=\"o3\"}"), 0.0);
    assert_eq!(h.metric("switcher_origin_drained{origin=\"o3\"}"), 1.0);
    assert_eq!(h.metric("switcher_draining{origin=\"o3\"}"), 1.0);
    // Its open flows stay until the deadline (5 windows of 0.2 s)...
    for _ in 0..4 {
        h.window(&[good(), good(), good(), good()]);
        assert_eq!(h.aborts(2), 0, "a drained origin's flows finish");
    }
    assert_eq!(h.dp.state().flows[2], 300);
    // ...then move, paced (256 a window).
    h.window(&[good(), good(), good(), good()]);
    assert_eq!(h.dp.state().flows[2], 300 - 256);
    h.window(&[good(), good(), good(), good()]);
    assert_eq!(h.dp.state().flows[2], 0);
    assert_eq!(h.metric("switcher_draining{origin=\"o3\"}"), 0.0);
    // Still drained: no slot until undrained.
    h.window(&[good(), good(), good(), good()]);
    assert!(h.dp.table_shares().iter().all(|(o, _)| *o != 2));
    let d = h.c.undrain("o3", h.now).expect("undrain");
    assert_eq!(d.action, Action::Rebalance);
    assert_eq!(h.dp.table_shares().len(), 4);
    assert_eq!(h.metric("switcher_origin_drained{origin=\"o3\"}"), 0.0);
}

#[test]
fn a_weight_change_rebuilds_the_table() {
    let mut h = Harness::new(Steering::Balance, &[1, 1]);
    h.window(&[good(), good()]);
    assert_eq!(h.tables_published(), 1);
    // Nothing changed: no rebuild.
    h.window(&[good(), good()]);
    assert_eq!(h.tables_published(), 1);
    let now = h.now;
    h.c.set_weight("o2", 3, now).expect("weight");
    assert_eq!(h.tables_published(), 2);
    let f = fractions(&h);
    assert_near(f[0].1, 0.25, "o1");
    assert_near(f[1].1, 0.75, "o2");
    assert_eq!(h.metric("switcher_lookup_table_rebuilds_total"), 2.0);
    assert_eq!(h.metric("switcher_origin_weight{origin=\"o2\"}"), 3.0);
    // Weight 0 takes it out; its flows stay (it is healthy), nothing is aborted.
    h.dp.state().flows[1] = 5;
    h.c.set_weight("o2", 0, now).expect("weight 0");
    assert_eq!(h.dp.table_shares(), vec![(0, TABLE)]);
    h.window(&[good(), good()]);
    assert_eq!(h.aborts(1), 0);
    assert_eq!(h.dp.state().flows[1], 5);
    // The last origin that could take new flows cannot go.
    assert!(matches!(
        h.c.set_weight("o1", 0, now),
        Err(ControlError::Refused(_))
    ));
    assert!(matches!(
        h.c.drain("o1", None, now),
        Err(ControlError::Refused(_))
    ));
    assert!(matches!(
        h.c.set_weight("nope", 1, now),
        Err(ControlError::UnknownOrigin(_))
    ));
    assert_eq!(
        h.dp.table_shares(),
        vec![(0, TABLE)],
        "refusals changed nothing"
    );
}

#[test]
fn balance_keeps_tracked_flows_on_healthy_origins() {
    let mut h = Harness::new(Steering::Balance, &[1, 1, 1]);
    h.window(&[good(), good(), good()]);
    {
        let mut s = h.dp.state();
        s.flows[0] = 10;
        s.flows[1] = 20;
        s.flows[2] = 30;
    }
    h.c.refresh_dataplane_metrics();
    let before = h.dp.state().table.clone().expect("table");
    // o2 times out: one bad window moves nothing (hysteresis).
    let d = h.window(&[good(), timeout(), good()]);
    assert_eq!((d.action, d.reason), (Action::Stay, Reason::ActiveDegraded));
    assert_eq!(h.tables_published(), 1);
    // Two: out of rotation, its viewers reset, nobody else's.
    let d = h.window(&[good(), timeout(), good()]);
    assert_eq!(
        (d.action, d.reason),
        (Action::Rebalance, Reason::ActiveUnhealthy)
    );
    assert_eq!(&h.dp.state().flows[..3], &[10, 0, 30]);
    assert_eq!((h.aborts(0), h.aborts(2)), (0, 0));
    // New flows: o2's slots moved, and hardly any other (Maglev's disruption bound: at most
    // 1% of the table beyond the leaving origin's share). Tracked flows did not move at all.
    let after = h.dp.state().table.clone().expect("table");
    let others_moved = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| **b != 1 && b != a)
        .count();
    assert!(
        (others_moved as f64) < 0.01 * TABLE as f64,
        "{others_moved} slots of healthy origins moved"
    );
    assert!(after.iter().all(|o| *o != 1));
    // o2 recovers: back in after the hysteresis, and the table is the first one again.
    h.window(&[good(), good(), good()]);
    let d = h.window(&[good(), good(), good()]);
    assert_eq!(
        (d.action, d.reason),
        (Action::Rebalance, Reason::OriginRecovered)
    );
    assert_eq!(h.dp.state().table.as_deref(), Some(&before[..]));
}

#[test]
fn balance_with_every_origin_bad_stays_and_alerts() {
    let mut h = Harness::new(Steering::Balance, &[1, 1]);
    h.window(&[good(), good()]);
    h.window(&[refused(), good()]);
    assert_eq!(h.dp.table_shares(), vec![(1, TABLE)]);
    let d = h.window(&[refused(), refused()]);
    assert_eq!((d.action, d.reason), (Action::BothBad, Reason::BothBad));
    assert_eq!(
        h.dp.table_shares(),
        vec![(1, TABLE)],
        "no table without an origin is published"
    );
    assert!(h.c.status().both_bad);
    assert_eq!(h.metric("switcher_both_bad"), 1.0);
}

#[test]
fn a_manual_override_in_balance_gives_the_whole_table_to_one_origin() {
    let mut h = Harness::new(Steering::Balance, &[1, 1, 1]);
    h.window(&[good(), good(), good()]);
    let now = h.now;
    let d =
        h.c.set_mode(Mode::Manual(OriginId(2)), now)
            .expect("override");
    assert_eq!(
        (d.action, d.reason),
        (Action::Rebalance, Reason::ManualOverride)
    );
    assert_eq!(h.dp.table_shares(), vec![(2, TABLE)]);
    // Pinned: the rules do not bring the others back.
    for _ in 0..3 {
        assert_eq!(h.window(&[good(), good(), good()]).reason, Reason::Manual);
    }
    assert_eq!(h.dp.table_shares(), vec![(2, TABLE)]);
    let d = h.c.set_mode(Mode::Auto, now).expect("auto");
    assert_eq!(d.action, Action::Rebalance);
    assert_eq!(h.dp.table_shares().len(), 3);
}

#[test]
fn a_failed_publication_is_retried_next_window() {
    let mut h = Harness::new(Steering::Balance, &[1, 1, 1]);
    h.window(&[good(), good(), good()]);
    h.dp.state().fail_set_lookup_table = true;
    let now = h.now;
    assert!(matches!(
        h.c.set_weight("o1", 2, now),
        Err(ControlError::Publish(_))
    ));
    assert_eq!(h.tables_published(), 1);
    h.dp.state().fail_set_lookup_table = false;
    h.window(&[good(), good(), good()]);
    assert_eq!(h.tables_published(), 2);
    let f = fractions(&h);
    assert_near(f[0].1, 0.5, "o1 has weight 2 of 4");
}

#[test]
fn healthz_names_every_origin_in_order() {
    let mut h = Harness::new(Steering::Balance, &[1, 2, 3]);
    h.window(&[good(), good(), good()]);
    let json = serde_json::to_value(h.c.status()).expect("status JSON");
    let keys: Vec<&String> = json["origins"]
        .as_object()
        .expect("origins object")
        .keys()
        .collect();
    assert_eq!(keys, ["o1", "o2", "o3"]);
    assert_eq!(json["policy"], "balance");
    assert_eq!(json["origins"]["o3"]["weight"], 3);
    assert_eq!(json["origins"]["o2"]["in_rotation"], true);
    assert_eq!(json["rotation"], serde_json::json!(["o1", "o2", "o3"]));
}

/// The policy of these tests: 2 windows of hysteresis, the contract's thresholds.
fn policy(steering: Steering) -> Policy {
    Policy {
        required_windows: 2,
        age_threshold_seconds: 6.0,
        msn_tolerance: 1,
        prefer_primary: true,
        steering,
    }
}

// --- the decider alone -------------------------------------------------------------------

fn decider(steering: Steering, n: usize) -> Decider {
    let policy = policy(steering);
    let origins = (1..=n).map(|i| (format!("o{i}"), 1)).collect();
    Decider::new(policy, origins, OriginId(0))
}

#[test]
fn balance_takes_back_only_an_origin_good_in_this_window() {
    let t = SystemTime::UNIX_EPOCH;
    let mut d = decider(Steering::Balance, 3);
    assert_eq!(d.rotation(), [OriginId(0), OriginId(1), OriginId(2)]);
    d.step(&[good(), good(), good()], t);
    d.set_drained(OriginId(1), true);
    assert_eq!(d.decide(t).rotation, ["o1", "o3"]);
    // Undrained while its latest window is bad: healthy still (one bad window), but not
    // good now, so it stays out until a good window.
    d.step(&[good(), timeout(), good()], t);
    d.set_drained(OriginId(1), false);
    let decision = d.decide(t);
    assert_eq!(
        (decision.action, decision.rotation.len()),
        (Action::Stay, 2)
    );
    let decision = d.step(&[good(), good(), good()], t);
    assert_eq!(decision.action, Action::Rebalance);
    assert_eq!(decision.rotation, ["o1", "o2", "o3"]);
    // In rotation, one bad window keeps it there (hysteresis); a refusal takes it out at once.
    assert_eq!(d.step(&[good(), timeout(), good()], t).action, Action::Stay);
    assert!(d.in_rotation(OriginId(1)));
    let decision = d.step(&[good(), good(), refused()], t);
    assert_eq!(decision.rotation, ["o1", "o2"]);
}

#[test]
fn failover_actions_follow_the_list_order() {
    let t = SystemTime::UNIX_EPOCH;
    let mut d = decider(Steering::Failover, 4);
    d.step(&[good(), good(), good(), good()], t);
    // o1 and o2 dead at once: straight to o3, a failover.
    let decision = d.step(&[refused(), refused(), good(), good()], t);
    assert_eq!(
        (decision.action, decision.to),
        (Action::Failover, OriginId(2))
    );
    assert_eq!(
        (decision.from_name.as_str(), decision.to_name.as_str()),
        ("o1", "o3")
    );
    assert_eq!(d.rotation(), [OriginId(2)]);
    // Every origin but the dead ones bad in this window: stay on o3 (degraded), never o4.
    let decision = d.step(&[refused(), refused(), timeout(), timeout()], t);
    assert_eq!(
        (decision.action, decision.reason),
        (Action::Stay, Reason::ActiveDegraded)
    );
    let decision = d.step(&[refused(), refused(), timeout(), timeout()], t);
    assert_eq!(
        (decision.action, decision.reason),
        (Action::BothBad, Reason::BothBad)
    );
    assert_eq!(d.active(), OriginId(2));
}

/// The origins a new flow may fall back to when its table origin has no listener
/// (`set_fallbacks`): the healthy ones that are not drained and have a weight, whatever the
/// policy. A hung or failing origin, or one being emptied, never gets a viewer that way.
#[test]
fn only_healthy_undrained_origins_take_listener_fallbacks() {
    for steering in [Steering::Failover, Steering::Balance] {
        let mut h = Harness::new(steering, &[1, 1, 1]);
        let fallbacks = |h: &Harness| h.dp.state().fallbacks.clone();
        h.window(&[good(), good(), good()]);
        assert_eq!(
            fallbacks(&h),
            Some(vec![0, 1, 2]),
            "{steering:?}: all healthy"
        );
        // o2 hangs: out once it is unhealthy (two bad windows).
        h.window(&[good(), timeout(), good()]);
        h.window(&[good(), timeout(), good()]);
        assert_eq!(
            fallbacks(&h),
            Some(vec![0, 2]),
            "{steering:?}: o2 unhealthy"
        );
        // o3 drained: out, though healthy.
        let now = h.now;
        h.c.drain("o3", None, now).expect("drain");
        assert_eq!(fallbacks(&h), Some(vec![0]), "{steering:?}: o3 drained");
        // Both back, then o1 at weight 0 (being emptied): out.
        let now = h.now;
        h.c.undrain("o3", now).expect("undrain");
        for _ in 0..3 {
            h.window(&[good(), good(), good()]);
        }
        let now = h.now;
        h.c.set_weight("o1", 0, now).expect("weight 0");
        assert_eq!(
            fallbacks(&h),
            Some(vec![1, 2]),
            "{steering:?}: o1 at weight 0"
        );
        let now = h.now;
        h.c.set_weight("o1", 1, now).expect("weight 1");
        for _ in 0..3 {
            h.window(&[good(), good(), good()]);
        }
        assert_eq!(fallbacks(&h), Some(vec![0, 1, 2]), "{steering:?}: all back");
    }
}

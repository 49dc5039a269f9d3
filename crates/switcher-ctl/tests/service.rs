//! The whole service with a fake data plane and two tiny playlist servers whose timestamps
//! the test controls; observed only through the admin endpoints and the fake data plane.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Call, FakeDataPlane, Reply, TestServer, http, playlist_aged, ts_body};
use serde_json::Value;
use switcher_common::{ORIGIN_BACKUP, ORIGIN_PRIMARY};
use switcher_ctl::config::Config;

const MSN: u64 = 2000;
const FRESH: Duration = Duration::from_secs(1);
const STALE: Duration = Duration::from_secs(30);
/// Fast probing so the tests take a second, not the defaults' several.
const INTERVAL_SECONDS: f64 = 0.05;
/// How long a test waits for a state it expects before failing.
const DEADLINE: Duration = Duration::from_secs(10);

/// A playlist server whose playlist is fresh (computed at each request) or stale.
async fn origin(stale: Arc<AtomicBool>) -> TestServer {
    TestServer::start(Arc::new(move |path| {
        if path.ends_with(".ts") {
            return Reply::ok(ts_body(20));
        }
        let age = if stale.load(Ordering::SeqCst) {
            STALE
        } else {
            FRESH
        };
        Reply::ok(playlist_aged(MSN, age))
    }))
    .await
}

struct Running {
    admin: SocketAddr,
    dp: FakeDataPlane,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), switcher_ctl::service::ServiceError>>,
}

impl Running {
    async fn start(primary: &TestServer, backup: &TestServer, required_windows: u32) -> Self {
        let config = Config {
            primary_base_url: primary.base_url(),
            backup_base_url: backup.base_url(),
            check_interval_seconds: INTERVAL_SECONDS,
            required_windows,
            probe_timeout_seconds: 0.5,
            ..Config::default()
        }
        .validate()
        .expect("valid config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind admin");
        let admin = listener.local_addr().expect("admin addr");
        let dp = FakeDataPlane::new(ORIGIN_PRIMARY);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(switcher_ctl::service::run(
            config,
            Box::new(dp.clone()),
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        Running {
            admin,
            dp,
            stop: Some(stop),
            task,
        }
    }

    async fn healthz(&self) -> Value {
        let (_, body) = http(self.admin, "GET", "/healthz", "").await;
        serde_json::from_str(&body).expect("healthz is JSON")
    }

    async fn metric(&self, prefix: &str) -> f64 {
        let (status, text) = http(self.admin, "GET", "/metrics", "").await;
        assert_eq!(status, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(prefix).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
            .trim()
            .parse()
            .expect("number")
    }

    /// Polls /healthz until `pred` holds; returns the JSON that satisfied it.
    async fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let h = self.healthz().await;
            if pred(&h) {
                return h;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}; last /healthz:\n{h:#}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(mut self) {
        drop(self.stop.take());
        let result = tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("service stops on shutdown");
        result.expect("service task").expect("service result");
    }
}

fn probed_good(h: &Value, origin: &str) -> bool {
    h["origins"][origin]["status"] == 200 && h["origins"][origin]["last_error"].is_null()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_primary_fails_over_and_switches_back() {
    let primary_stale = Arc::new(AtomicBool::new(false));
    let primary = origin(primary_stale.clone()).await;
    let backup = origin(Arc::new(AtomicBool::new(false))).await;
    let run = Running::start(&primary, &backup, 2).await;

    let h = run
        .wait_for("both origins probed good", |h| {
            probed_good(h, "primary") && probed_good(h, "backup")
        })
        .await;
    assert_eq!(h["active"], "primary");
    assert_eq!(h["mode"], "auto");
    assert_eq!(h["origins"]["primary"]["msn"], MSN);
    assert_eq!(run.metric("switcher_active_origin").await, 1.0);

    primary_stale.store(true, Ordering::SeqCst);
    let h = run.wait_for("failover", |h| h["active"] == "backup").await;
    let last = h["decisions"]
        .as_array()
        .expect("decisions")
        .last()
        .expect("a decision")
        .clone();
    assert_eq!(last["action"], "failover");
    assert_eq!(last["reason"], "active_unhealthy");
    assert!(
        last["detail"].as_str().expect("detail").contains("stale"),
        "{last}"
    );
    assert_eq!(h["origins"]["primary"]["healthy"], false);
    assert_eq!(run.dp.active(), ORIGIN_BACKUP);
    assert_eq!(run.metric("failovers_total").await, 1.0);
    assert_eq!(run.metric("switcher_active_origin").await, 0.0);
    assert!(run.metric("segment_age_seconds{origin=\"primary\"}").await > 6.0);
    assert_eq!(run.metric("switchbacks_total").await, 0.0);

    primary_stale.store(false, Ordering::SeqCst);
    run.wait_for("switchback", |h| h["active"] == "primary")
        .await;
    assert_eq!(run.metric("switchbacks_total").await, 1.0);
    assert_eq!(
        run.dp.calls(),
        vec![
            Call::SetActive(ORIGIN_BACKUP),
            Call::AbortFlows(ORIGIN_PRIMARY),
            Call::SetActive(ORIGIN_PRIMARY),
        ]
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_primary_fails_over_at_once_and_comes_back() {
    // Hysteresis of 40 windows x 50 ms = 2 s: only "refused counts at once" flips sooner.
    const WINDOWS: u32 = 40;
    let hysteresis = Duration::from_secs_f64(INTERVAL_SECONDS * f64::from(WINDOWS));
    let mut primary = origin(Arc::new(AtomicBool::new(false))).await;
    let backup = origin(Arc::new(AtomicBool::new(false))).await;
    let run = Running::start(&primary, &backup, WINDOWS).await;
    run.wait_for("both origins probed good", |h| {
        probed_good(h, "primary") && probed_good(h, "backup")
    })
    .await;

    let killed = Instant::now();
    primary.kill().await;
    let h = run.wait_for("failover", |h| h["active"] == "backup").await;
    let took = killed.elapsed();
    assert!(
        took < hysteresis / 2,
        "refused connection flipped in {took:?}, hysteresis would take {hysteresis:?}"
    );
    assert_eq!(h["origins"]["primary"]["last_error"], "connection refused");
    assert_eq!(run.dp.active(), ORIGIN_BACKUP);
    assert_eq!(run.metric("failovers_total").await, 1.0);
    // The prometheus crate sorts labels by name.
    assert!(
        run.metric("origin_probe_errors_total{kind=\"refused\",origin=\"primary\"}")
            .await
            >= 1.0
    );

    primary.restart().await;
    let restored = Instant::now();
    let h = run
        .wait_for("switchback", |h| h["active"] == "primary")
        .await;
    // The first good window can come right after the restart: 39 intervals at least.
    let good_windows = Duration::from_secs_f64(INTERVAL_SECONDS * f64::from(WINDOWS - 1));
    assert!(
        restored.elapsed() >= good_windows,
        "switchback after {:?}, before {WINDOWS} good windows:\n{h:#}",
        restored.elapsed()
    );
    assert_eq!(run.metric("switchbacks_total").await, 1.0);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_endpoint_pins_and_releases() {
    let primary = origin(Arc::new(AtomicBool::new(false))).await;
    let backup = origin(Arc::new(AtomicBool::new(false))).await;
    let run = Running::start(&primary, &backup, 2).await;
    run.wait_for("both origins probed good", |h| {
        probed_good(h, "primary") && probed_good(h, "backup")
    })
    .await;

    let (status, body) = http(run.admin, "POST", "/override", "backup").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(run.dp.active(), ORIGIN_BACKUP);
    let h = run.healthz().await;
    assert_eq!(
        (h["mode"].as_str(), h["manual_origin"].as_str()),
        (Some("manual"), Some("backup"))
    );
    // A few windows later the healthy primary is still not taken back.
    let pinned_windows = Duration::from_secs_f64(INTERVAL_SECONDS * 5.0);
    tokio::time::sleep(pinned_windows).await;
    assert_eq!(run.healthz().await["active"], "backup");

    let (status, _) = http(run.admin, "POST", "/override", "{\"mode\": \"auto\"}").await;
    assert_eq!(status, 200);
    run.wait_for("switchback after auto", |h| {
        h["active"] == "primary" && h["mode"] == "auto"
    })
    .await;

    let (status, _) = http(run.admin, "POST", "/override", "sideways").await;
    assert_eq!(status, 400);
    let (status, _) = http(run.admin, "GET", "/override", "").await;
    assert_eq!(status, 405);
    let (status, page) = http(run.admin, "GET", "/", "").await;
    assert_eq!(status, 200);
    assert!(page.contains("Active origin: <b>primary</b>"), "{page}");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_dead_answers_503_and_stays() {
    let mut primary = origin(Arc::new(AtomicBool::new(false))).await;
    let mut backup = origin(Arc::new(AtomicBool::new(false))).await;
    let run = Running::start(&primary, &backup, 2).await;
    run.wait_for("both origins probed good", |h| {
        probed_good(h, "primary") && probed_good(h, "backup")
    })
    .await;
    backup.kill().await;
    primary.kill().await;
    let h = run.wait_for("both bad", |h| h["both_bad"] == true).await;
    assert_eq!(h["active"], "primary");
    let (status, _) = http(run.admin, "GET", "/healthz", "").await;
    assert_eq!(status, 503);
    assert_eq!(run.metric("switcher_both_bad").await, 1.0);
    assert!(
        run.dp.calls().is_empty(),
        "never flipped to a dead backup: {:?}",
        run.dp.calls()
    );
    run.stop().await;
}

//! The whole service with a fake data plane and two tiny playlist servers whose timestamps
//! the test controls; observed only through the admin endpoints and the fake data plane.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{
    Call, FakeDataPlane, Reply, TempDir, TestServer, admin_socket, http, over_socket,
    playlist_aged, ts_body,
};
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
    /// The admin unix socket (state changes).
    socket: std::path::PathBuf,
    _dir: TempDir,
    dp: FakeDataPlane,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), switcher_ctl::service::ServiceError>>,
}

impl Running {
    async fn start(primary: &TestServer, backup: &TestServer, required_windows: u32) -> Self {
        Self::start_with(primary, backup, required_windows, |_| {}).await
    }

    /// Like `start`, with `tweak` applied to the config first.
    async fn start_with(
        primary: &TestServer,
        backup: &TestServer,
        required_windows: u32,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let mut config = Config {
            primary_base_url: primary.base_url(),
            backup_base_url: backup.base_url(),
            check_interval_seconds: INTERVAL_SECONDS,
            required_windows,
            probe_timeout_seconds: 0.5,
            ..Config::default()
        };
        tweak(&mut config);
        let config = config.validate().expect("valid config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind admin");
        let admin = listener.local_addr().expect("admin addr");
        let dir = TempDir::new("service");
        let socket = dir.path().join("admin.sock");
        let listeners = switcher_ctl::admin::Listeners {
            tcp: listener,
            unix: Some(admin_socket(&socket)),
        };
        let dp = FakeDataPlane::new(ORIGIN_PRIMARY);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(switcher_ctl::service::run(
            config,
            Box::new(dp.clone()),
            listeners,
            async move {
                let _ = stopped.await;
            },
        ));
        Running {
            admin,
            socket,
            _dir: dir,
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

    /// Probes of `origin` so far (each probe window probes each origin once; a first bad
    /// window is confirmed by an immediate second probe).
    async fn probes(&self, origin: &str) -> f64 {
        self.metric(&format!(
            "probe_duration_seconds_count{{origin=\"{origin}\"}}"
        ))
        .await
    }

    /// Asserts the data plane sends new flows to the backup and /healthz says it is pinned
    /// there by hand.
    async fn assert_pinned_to_backup(&self) {
        assert_eq!(self.dp.active(), ORIGIN_BACKUP);
        let h = self.healthz().await;
        assert_eq!(
            (h["mode"].as_str(), h["manual_origin"].as_str()),
            (Some("manual"), Some("backup"))
        );
    }

    /// Waits until both origins have been probed good; that /healthz.
    async fn wait_both_good(&self) -> Value {
        self.wait_for("both origins probed good", |h| {
            probed_good(h, "primary") && probed_good(h, "backup")
        })
        .await
    }

    /// Polls /healthz until `pred` holds; returns the JSON that satisfied it.
    async fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let last = std::sync::Mutex::new(Value::Null);
        let (last_ref, pred) = (&last, &pred);
        let held = test_kit::wait::try_poll_until_async(DEADLINE, move || async move {
            let h = self.healthz().await;
            if pred(&h) {
                return Some(h);
            }
            *last_ref.lock().expect("last /healthz") = h;
            None
        })
        .await;
        held.unwrap_or_else(|| {
            let last = last.lock().expect("last /healthz");
            panic!("timed out waiting for {what}; last /healthz:\n{last:#}")
        })
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

/// Two fresh origins and the service with `windows` of hysteresis, both origins probed good.
async fn started(windows: u32) -> (TestServer, TestServer, Running) {
    let primary = origin(Arc::new(AtomicBool::new(false))).await;
    let backup = origin(Arc::new(AtomicBool::new(false))).await;
    let run = Running::start(&primary, &backup, windows).await;
    run.wait_both_good().await;
    (primary, backup, run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_primary_fails_over_and_switches_back() {
    let primary_stale = Arc::new(AtomicBool::new(false));
    let primary = origin(primary_stale.clone()).await;
    let backup = origin(Arc::new(AtomicBool::new(false))).await;
    let run = Running::start(&primary, &backup, 2).await;

    let h = run.wait_both_good().await;
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
    let (mut primary, _backup, run) = started(WINDOWS).await;

    let before_kill = run.probes("primary").await;
    primary.kill().await;
    let h = run.wait_for("failover", |h| h["active"] == "backup").await;
    // Counted in probes, not in time: the flip came long before the hysteresis's windows.
    let probes = run.probes("primary").await - before_kill;
    assert!(
        probes < f64::from(WINDOWS / 2),
        "refused connection flipped after {probes} probes, hysteresis is {WINDOWS} windows"
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

    let before_restart = run.probes("primary").await;
    primary.restart().await;
    let h = run
        .wait_for("switchback", |h| h["active"] == "primary")
        .await;
    // The first good window can come right after the restart: 39 probes after it at least.
    let probes = run.probes("primary").await - before_restart;
    assert!(
        probes >= f64::from(WINDOWS - 1),
        "switchback after {probes} probes, before {WINDOWS} good windows:\n{h:#}"
    );
    assert_eq!(run.metric("switchbacks_total").await, 1.0);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_endpoint_pins_and_releases() {
    let (_primary, _backup, run) = started(2).await;

    let (status, body) = over_socket(&run.socket, "POST", "/override", "backup").await;
    assert_eq!(status, 200, "{body}");
    run.assert_pinned_to_backup().await;
    // A few windows later the healthy primary is still not taken back.
    let pinned_from = run.probes("primary").await;
    let running = &run;
    test_kit::wait_until_async(DEADLINE, "5 more probe windows", move || async move {
        running.probes("primary").await >= pinned_from + 5.0
    })
    .await;
    assert_eq!(run.healthz().await["active"], "backup");

    let (status, _) = over_socket(&run.socket, "POST", "/override", "{\"mode\": \"auto\"}").await;
    assert_eq!(status, 200);
    run.wait_for("switchback after auto", |h| {
        h["active"] == "primary" && h["mode"] == "auto"
    })
    .await;

    let (status, _) = over_socket(&run.socket, "POST", "/override", "sideways").await;
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
    let (mut primary, mut backup, run) = started(2).await;
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

/// Sends `raw` (a whole HTTP/1.1 request) over TCP and returns the status code and the body.
async fn raw_http(addr: SocketAddr, raw: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_requests_are_refused_and_change_nothing() {
    let (_primary, _backup, run) = started(2).await;

    // The attack of issue 13 verbatim: a page on evil.example posting a text/plain body (no
    // CORS preflight) through a rebound name.
    let csrf = "POST /override HTTP/1.1\r\nHost: evil.example:9180\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: close\r\n\r\nbackup";
    let (status, body) = raw_http(run.admin, csrf).await;
    assert_eq!(status, 403, "{body}");
    // Same POST with a loopback Host and no Origin: the TCP server is read-only anyway.
    let (status, body) = http(run.admin, "POST", "/override", "backup").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("unix socket"), "{body}");
    // A cross-site Origin with a good Host (CSRF without rebinding), and a rebound read.
    let admin = run.admin;
    for raw in [
        format!(
            "POST /override HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://evil.example\r\nContent-Length: 6\r\nConnection: close\r\n\r\nbackup"
        ),
        format!(
            "GET /api/state HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n"
        ),
        "GET /healthz HTTP/1.1\r\nHost: evil.example:9180\r\nConnection: close\r\n\r\n".into(),
        format!(
            "GET /healthz HTTP/1.1\r\nHost: {admin}\r\nSec-Fetch-Site: cross-site\r\nConnection: close\r\n\r\n"
        ),
    ] {
        let (status, body) = raw_http(run.admin, &raw).await;
        assert_eq!(status, 403, "{raw:?}: {body}");
    }
    // Nothing changed: no data plane call, still automatic on the primary.
    assert!(run.dp.calls().is_empty(), "{:?}", run.dp.calls());
    assert_eq!(run.dp.active(), ORIGIN_PRIMARY);
    let h = run.healthz().await;
    assert_eq!(
        (h["mode"].as_str(), h["active"].as_str()),
        (Some("auto"), Some("primary"))
    );

    // Good readers still read: loopback IP, localhost, a same-origin Origin.
    let port = run.admin.port();
    for raw in [
        format!("GET /healthz HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"),
        format!(
            "GET /api/state HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://{admin}\r\nSec-Fetch-Site: same-origin\r\nConnection: close\r\n\r\n"
        ),
    ] {
        let (status, body) = raw_http(run.admin, &raw).await;
        assert_eq!(status, 200, "{raw:?}: {body}");
    }
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_socket_is_private_and_refuses_to_pin_a_bad_origin_unless_forced() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let primary = origin(Arc::new(AtomicBool::new(false))).await;
    let mut backup = origin(Arc::new(AtomicBool::new(false))).await;
    let run = Running::start(&primary, &backup, 2).await;
    let meta = std::fs::metadata(&run.socket).expect("socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    run.wait_both_good().await;
    backup.kill().await;
    run.wait_for("backup bad", |h| {
        !h["origins"]["backup"]["last_error"].is_null()
    })
    .await;
    let (status, body) = over_socket(&run.socket, "POST", "/override", "backup").await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("--force"), "{body}");
    assert!(run.dp.calls().is_empty(), "{:?}", run.dp.calls());
    assert_eq!(run.healthz().await["mode"], "auto");

    let (status, body) = over_socket(
        &run.socket,
        "POST",
        "/override",
        r#"{"mode":"backup","force":true}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    run.assert_pinned_to_backup().await;
    let (status, _) = over_socket(&run.socket, "POST", "/override", "auto").await;
    assert_eq!(status, 200);
    run.wait_for("back on the primary", |h| h["active"] == "primary")
        .await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_connections_are_capped_and_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CAP: usize = 2;
    let primary = origin(Arc::new(AtomicBool::new(false))).await;
    let backup = origin(Arc::new(AtomicBool::new(false))).await;
    let run = Running::start_with(&primary, &backup, 2, |c| {
        c.admin_max_connections = CAP;
        c.admin_header_timeout_seconds = 0.5;
    })
    .await;

    // Fill every slot: one connection that says nothing, one that dribbles a head.
    let silent = tokio::net::TcpStream::connect(run.admin)
        .await
        .expect("connect");
    let mut slow = tokio::net::TcpStream::connect(run.admin)
        .await
        .expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .expect("partial head");
    // The good client queues behind them in the backlog.
    let good = tokio::spawn(http(run.admin, "GET", "/healthz", ""));
    let (status, body) = tokio::time::timeout(DEADLINE, good)
        .await
        .expect("the good client was served: the stalled connections were closed")
        .expect("client task");
    assert_eq!(status, 200, "{body}");
    // It could only get a slot after a stalled one was closed by the header timeout (the cap
    // is 2): that one's EOF is already in its socket, no wait needed. Asked of the socket
    // itself (a non-blocking peek): tokio's `try_read` answers from the readiness its reactor
    // has seen so far, and said "would block" when the reactor thread had not yet polled the
    // FIN (a CI failure, session 7).
    let mut buf = [0u8; 64];
    let closed_before = [&silent, &slow].iter().filter(|s| at_eof_now(s)).count();
    assert!(
        closed_before >= 1,
        "the good client was served while both stalled connections held the 2 slots"
    );
    // And both stalled connections are closed by the header timeout, without a byte.
    for (name, mut stream) in [("silent", silent), ("slowloris", slow)] {
        let read = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{name} connection never closed"))
            .expect("read");
        assert_eq!(read, 0, "{name}");
    }
    run.stop().await;
}

/// Whether the peer of `s` has closed it and everything it sent has been read: one
/// non-blocking `recv(MSG_PEEK)` on the socket, which answers 0 only at end of stream.
fn at_eof_now(s: &tokio::net::TcpStream) -> bool {
    use std::os::fd::AsRawFd as _;
    let mut byte = 0u8;
    // SAFETY: a valid socket descriptor and a one-byte buffer that outlives the call.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == 0
}

/// `switcher-ctl drain|undrain|set-weight` (the binary) against a running service with three
/// origins under the balance policy: each goes through the admin socket, and each shows in
/// the fake data plane's table, `/healthz`, `/metrics` and the status page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_undrain_and_set_weight_through_the_admin_socket() {
    let o1 = origin(Arc::new(AtomicBool::new(false))).await;
    let o2 = origin(Arc::new(AtomicBool::new(false))).await;
    let o3 = origin(Arc::new(AtomicBool::new(false))).await;
    let list = [&o1, &o2, &o3]
        .iter()
        .enumerate()
        .map(|(i, o)| {
            format!("o{}={}", i + 1, o.base_url())
                .parse()
                .expect("origin")
        })
        .collect();
    let run = Running::start_with(&o1, &o2, 2, |c| {
        c.origins = list;
        c.policy = switcher_ctl::config::Steering::Balance;
    })
    .await;
    run.wait_for("three origins probed good", |h| {
        ["o1", "o2", "o3"].iter().all(|o| probed_good(h, o))
    })
    .await;
    let table_origins = |dp: &FakeDataPlane| -> Vec<u32> {
        dp.table_shares().into_iter().map(|(o, _)| o).collect()
    };
    assert_eq!(table_origins(&run.dp), [0, 1, 2]);

    let socket = run.socket.clone();
    let cli = move |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switcher-ctl"))
            .args(args)
            .arg("--admin-socket")
            .arg(&socket)
            .output()
            .expect("run switcher-ctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let blocking = |args: Vec<&'static str>| {
        let cli = cli.clone();
        tokio::task::spawn_blocking(move || cli(&args))
    };

    let (code, text) = blocking(vec!["drain", "o2", "--deadline", "30"])
        .await
        .expect("cli");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("drained o2"), "{text}");
    assert_eq!(table_origins(&run.dp), [0, 2], "o2 gets no new flows");
    let h = run.healthz().await;
    assert_eq!(h["origins"]["o2"]["drained"], true, "{h:#}");
    assert_eq!(h["origins"]["o2"]["in_rotation"], false);
    assert_eq!(h["origins"]["o2"]["draining"], true);
    assert!(h["origins"]["o2"]["drain_deadline_seconds"].as_f64() > Some(20.0));
    assert_eq!(h["rotation"], serde_json::json!(["o1", "o3"]));
    assert_eq!(
        run.metric("switcher_origin_drained{origin=\"o2\"}").await,
        1.0
    );
    let (_, page) = http(run.admin, "GET", "/", "").await;
    assert!(
        page.contains("<td class=\"rotation\">drained (draining)</td>"),
        "{page}"
    );

    let (code, text) = blocking(vec!["set-weight", "o3", "3"]).await.expect("cli");
    assert_eq!(code, Some(0), "{text}");
    let shares = run.dp.table_shares();
    assert_eq!(shares.len(), 2);
    let o3_share = shares[1].1 as f64 / (shares[0].1 + shares[1].1) as f64;
    assert!((o3_share - 0.75).abs() < 0.01, "{shares:?}");
    assert_eq!(
        run.metric("switcher_origin_weight{origin=\"o3\"}").await,
        3.0
    );

    let (code, text) = blocking(vec!["undrain", "o2"]).await.expect("cli");
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(table_origins(&run.dp), [0, 1, 2]);
    let h = run.healthz().await;
    assert_eq!(h["origins"]["o2"]["drained"], false);
    assert_eq!(h["origins"]["o2"]["draining"], false);

    // Refusals: an unknown origin, a bad weight, the last origin, and the TCP server.
    let (code, text) = blocking(vec!["drain", "o9"]).await.expect("cli");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no origin named \"o9\""), "{text}");
    let (code, text) = blocking(vec!["set-weight", "o1", "10001"])
        .await
        .expect("cli");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("409"), "{text}");
    for o in ["o1", "o2"] {
        let (status, body) = over_socket(&run.socket, "POST", "/weight", &format!("{o} 0")).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = over_socket(&run.socket, "POST", "/drain", "o3").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(table_origins(&run.dp), [2], "the refusal changed nothing");
    let (status, _) = http(run.admin, "POST", "/drain", "o3").await;
    assert_eq!(status, 403, "the TCP admin server is read-only");
    let (status, _) = over_socket(&run.socket, "POST", "/drain", "o3 forever").await;
    assert_eq!(status, 400);
    run.stop().await;
}

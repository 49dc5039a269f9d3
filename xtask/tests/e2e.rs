//! End to end, the way a viewer lives it: the whole stack (ingest, ffmpeg publisher, two
//! packagers, two origins, switcher-ctl with XDP on the edge veth) in an "edge" network
//! namespace, and real players in a "client" namespace: an ffmpeg player *recording* the VIP
//! (`-c copy -f mpegts`) and hls.js in headless Chromium. Every drill of `xtask::faults`
//! (kill, packager kill, freeze, 5xx, slow, partition, truncate, control-plane restart) is
//! injected for real, followed by a switchback, and the test asserts on what the players
//! recorded: no video PTS hole over 1 s, no repeated or skipped media sequence number, the
//! player still running. Needs root; run through `cargo xtask test` (which builds the binaries
//! into target/debug first). Namespaces, attachments, rules and processes are removed even on
//! failure.

use std::{collections::BTreeSet, path::Path, time::Duration};

use test_kit::browser;
use test_kit::keepalive::Client;
use test_kit::netns::{self, BpfFs, Pair};
use test_kit::wait_until;
use xtask::faults::{self, Fault, Site};
use xtask::player::{Player, pts_holes, video_pts};
use xtask::stack::{Stack, StackConfig, http_get};

const VIP: &str = "10.77.0.2:8080";
/// The edge's address, where the origins listen too (a player on one origin itself).
const EDGE_IP: &str = "10.77.0.2";
const PLAYLIST: &str = "/hls/demo/index.m3u8";

/// Why the segments the player loaded (`segs`, MSNs in request order) and its `errors` fail
/// the drill: too few, one loaded twice, a gap, or an error; `None` when they pass.
fn gap_or_repeat(segs: &[u64], errors: &[String]) -> Option<String> {
    if segs.len() < 5 {
        return Some(format!("the player loaded too few segments: {segs:?}"));
    }
    let unique: BTreeSet<_> = segs.iter().collect();
    if unique.len() != segs.len() {
        return Some(format!("a segment was loaded twice: {segs:?}"));
    }
    if let Some(w) = segs.windows(2).find(|w| w[1] != w[0] + 1) {
        return Some(format!("gap between {} and {}: {segs:?}", w[0], w[1]));
    }
    (!errors.is_empty()).then(|| format!("player errors:\n{}", errors.join("\n")))
}

/// Installed in the status page: records every fragment hls.js loads (its MSN), fatal errors
/// and how far the video has played, for the drills to read; and a timed log of its loads and
/// errors (fatal or not), printed when a drill's hls.js check fails.
const HLS_WATCH: &str = r#"(() => {
  window.__frags = []; window.__fatal = []; window.__log = [];
  const log = (...e) => { window.__log.push([Date.now(), ...e]); if (window.__log.length > 400) window.__log.shift(); };
  const E = window.Hls.Events;
  window.__hls.on(E.FRAG_LOADING, (_, d) => log('frag-loading', d.frag.sn));
  window.__hls.on(E.FRAG_LOADED, (_, d) => { window.__frags.push(d.frag.sn); log('frag-loaded', d.frag.sn); });
  window.__hls.on(E.LEVEL_LOADED, (_, d) => log('playlist', d.details.startSN, d.details.endSN));
  window.__hls.on(E.ERROR, (_, d) => {
    log('error', d.details, d.fatal, d.response ? d.response.code : null, d.frag ? d.frag.sn : null);
    if (d.fatal) window.__fatal.push(d.details);
  });
  return true;
})()"#;

/// What a failed player check prints: hls.js's log from `since` (the page's `Date.now()`),
/// the drill's steps on the same clock, the client's TCP sockets (a connection still
/// retransmitting into the partition shows here) and the end of switcher-ctl's log.
fn drill_account(
    page: &mut browser::Cdp,
    since: f64,
    steps: &[(&str, f64)],
    client_ns: &str,
    run_dir: &Path,
) -> String {
    let log = page.eval(&format!(
        "JSON.stringify(window.__log.filter(e => e[0] >= {since}).map(e => [e[0] - {since}, ...e.slice(1)]))"
    ));
    let steps: Vec<String> = steps
        .iter()
        .map(|(s, t)| format!("{s} at {:.0} ms", t - since))
        .collect();
    let argv = xtask::stack::command_prefix(Some(client_ns), None);
    let sockets = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .args(["ss", "-tnoi"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| e.to_string());
    let ctl = std::fs::read_to_string(run_dir.join("logs/switcher-ctl.log")).unwrap_or_default();
    let ctl: Vec<&str> = ctl.lines().collect();
    format!(
        "steps (ms from the drill's start): {}\nhls.js: {log}\nclient sockets:\n{sockets}\nswitcher-ctl:\n{}",
        steps.join(", "),
        ctl[ctl.len().saturating_sub(40)..].join("\n")
    )
}

/// One drill: a recording ffmpeg player and hls.js play the VIP; `fault` is injected; after
/// the failover (or, for a control-plane restart, the restart) it is restored and the
/// primary takes new flows again. Asserts on what both players got.
fn drill(
    stack: &mut Stack,
    site: &Site,
    fault: Fault,
    client_ns: &str,
    run_dir: &Path,
    page: &mut browser::Cdp,
) {
    let name = fault.name();
    let rec = run_dir.join(format!("rec-{name}.ts"));
    let mut player = Player::start(Some(client_ns), &format!("http://{VIP}{PLAYLIST}"), &rec)
        .expect("start ffmpeg player");
    wait_until(
        Duration::from_secs(30),
        &format!("{name}: player loads 2 segments"),
        || player.segments().len() >= 2,
    );
    // A storage fault leaves the origin process up. A player on that origin itself, which the
    // edge does not move, plays on through the fault with the peer's copies of what the origin
    // cannot serve (origin's `peer`): what every player still on the origin before the failover
    // gets, here for the whole fault.
    let storage = matches!(fault, Fault::OriginTruncate | Fault::Origin5xx);
    let direct = storage.then(|| {
        let rec = run_dir.join(format!("rec-{name}-direct.ts"));
        let url = format!("http://{EDGE_IP}:{}{PLAYLIST}", site.port);
        let player = Player::start(Some(client_ns), &url, &rec).expect("start direct player");
        let (filled_before, _) = peer_fills(fault, site, client_ns);
        (player, rec, filled_before)
    });
    let frags_before = page.eval("window.__frags.length").as_u64().unwrap_or(0);
    // The drill's steps on the page's clock, for `drill_account`.
    let now = |page: &mut browser::Cdp| page.eval("Date.now()").as_f64().unwrap_or(0.0);
    let since = now(page);
    let mut steps = Vec::new();
    let reconnects_before = player.reconnects();
    // Every fault is injected between two of the ffmpeg player's requests, just after it
    // started a segment. ffmpeg does not retry a segment whose download fails half-way (it
    // skips to the next one), so a fault in the middle of a response costs it the rest of
    // that segment whatever the edge does: the reset comes at once, but the bytes are gone.
    // Mid-response faults are covered where they can be asserted: the abort test
    // (`switcher-ctl/tests/abort_netns.rs`: a stalled viewer is reset, a delivering one
    // finishes), and hls.js here, which plays on through every drill and retries a fragment
    // that fails. A partition in the middle of a response is reset by the edge itself (the
    // origin socket's reset is dropped by the partition too): asserted in the abort test and
    // measured by `cargo xtask bench failover`.
    let n = player.segments().len();
    player.wait_for(&format!("{name}: a new segment"), |p| {
        p.segments().len() > n
    });
    // No readiness signal exists for "the player has the whole segment": ffmpeg logs when it
    // opens a segment, not when it has read it, and the origin counts bytes handed to the
    // socket, not delivered. A 2 s segment crosses these links in a few milliseconds, so
    // half a second puts the fault between two requests without timing anything.
    std::thread::sleep(Duration::from_millis(500));
    let injected = faults::inject(fault, site, stack).expect("inject fault");
    steps.push(("injected", now(page)));
    if fault.fails_primary() {
        wait_until(
            Duration::from_secs(20),
            &format!("{name}: failover to backup"),
            || stack.active() == "backup",
        );
        steps.push(("failed over", now(page)));
    }
    // The player goes on through the fault: two more segments.
    let n = player.segments().len();
    player.wait_for(&format!("{name}: player goes on"), |p| {
        p.segments().len() >= n + 2
    });
    injected.restore(stack).expect("restore");
    steps.push(("restored", now(page)));
    wait_until(
        Duration::from_secs(30),
        &format!("{name}: primary active again"),
        || stack.active() == "primary",
    );
    steps.push(("switched back", now(page)));
    let n = player.segments().len();
    player.wait_for(
        &format!("{name}: player goes on after the switchback"),
        |p| p.segments().len() >= n + 2,
    );
    assert!(
        player.running(),
        "{name}: the player gave up:\n{}",
        player.tail(30)
    );
    if fault == Fault::CtlRestart {
        assert_eq!(
            player.reconnects(),
            reconnects_before,
            "{name}: a control-plane restart must not break a connection:\n{}",
            player.tail(30)
        );
    }
    let player_log = player.tail(80);
    let (segs, errors) = player.stop();
    steps.push(("checks", now(page)));
    if let Some(failure) = gap_or_repeat(&segs, &errors) {
        let why = drill_account(page, since, &steps, client_ns, run_dir);
        panic!("{name}: {failure}\nffmpeg player:\n{player_log}\n{why}");
    }
    let pts = video_pts(&rec).expect("ffprobe");
    assert!(
        pts.len() > 60,
        "{name}: recording has {} video packets",
        pts.len()
    );
    let (hole, repeats) = pts_holes(&pts);
    assert!(
        hole <= 1.0,
        "{name}: a {hole:.2} s hole in the recorded video ({segs:?})"
    );
    assert_eq!(repeats, 0, "{name}: repeated video in the recording");
    let _ = std::fs::remove_file(&rec);
    if let Some((direct, rec, filled_before)) = direct {
        check_direct_player(name, fault, direct, &rec, filled_before, site, client_ns);
    }
    // hls.js went on too: more fragments, none skipped, no fatal error. A fragment loaded
    // again is hls.js's own recovery (it refetches one it could not buffer whole), not a
    // skip: compare the distinct MSNs.
    let frags: Vec<u64> = page
        .eval("window.__frags")
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default();
    let new: BTreeSet<u64> = frags[frags_before as usize..].iter().copied().collect();
    if new.len() < 2 {
        let why = drill_account(page, since, &steps, client_ns, run_dir);
        panic!("{name}: hls.js loaded {new:?}\n{why}");
    }
    let distinct: Vec<u64> = frags
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for w in distinct.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "{name}: hls.js skipped a fragment: {frags:?}"
        );
    }
    let fatal = page.eval("window.__fatal.length").as_u64().unwrap_or(0);
    if fatal != 0 {
        let why = drill_account(page, since, &steps, client_ns, run_dir);
        panic!(
            "{name}: hls.js fatal errors: {}\n{why}",
            page.eval("JSON.stringify(window.__fatal)")
        );
    }
    eprintln!(
        "drill {name}: ffmpeg {} segments, max PTS step {hole:.3} s; hls.js {} fragments",
        segs.len(),
        new.len()
    );
    // `E2E_VERBOSE=1`: the same account as a failure's for every drill (when comparing a
    // failing drill with passing ones).
    if std::env::var_os("E2E_VERBOSE").is_some() {
        eprintln!("{}", drill_account(page, since, &steps, client_ns, run_dir));
    }
}

/// The player on the faulty origin itself (see `drill`): it recorded every segment whole, in
/// order, without a hole, and the origin served peer copies for the fault's reason since
/// `filled_before`.
fn check_direct_player(
    name: &str,
    fault: Fault,
    player: Player,
    rec: &Path,
    filled_before: f64,
    site: &Site,
    client_ns: &str,
) {
    let log = player.tail(80);
    let (segs, errors) = player.stop();
    if let Some(failure) = gap_or_repeat(&segs, &errors) {
        panic!(
            "{name}: the player on the {} origin itself: {failure}\n{log}",
            site.origin
        );
    }
    let (hole, repeats) = pts_holes(&video_pts(rec).expect("ffprobe"));
    assert!(
        hole <= 1.0 && repeats == 0,
        "{name}: the player on the origin itself recorded a {hole:.2} s hole, {repeats} repeats ({segs:?})"
    );
    let _ = std::fs::remove_file(rec);
    let (filled, series) = peer_fills(fault, site, client_ns);
    assert!(
        filled > filled_before,
        "{name}: the origin served no peer copy during the fault, so the player never met it:\n{series}"
    );
    eprintln!(
        "drill {name}: the player on the origin itself {} segments, max PTS step {hole:.3} s; peer fills: {series}",
        segs.len()
    );
}

/// The faulty origin's `origin_peer_fills_total{outcome="filled"}` for the reason of `fault`
/// (a storage fault), and every series of it that is not 0, for messages.
fn peer_fills(fault: Fault, site: &Site, client_ns: &str) -> (f64, String) {
    let origin = format!("{EDGE_IP}:{}", site.port);
    let metrics = http_get(Some(client_ns), &origin, "/metrics", Duration::from_secs(2))
        .expect("origin metrics")
        .text();
    let reason = if fault == Fault::OriginTruncate {
        "cut_short"
    } else {
        "unreadable"
    };
    let filled = test_kit::metrics::value(
        &metrics,
        &format!(r#"origin_peer_fills_total{{outcome="filled",reason="{reason}"}}"#),
    )
    .unwrap_or(0.0);
    let series = metrics
        .lines()
        .filter(|l| l.starts_with("origin_peer_fills_total{") && !l.ends_with(" 0"))
        .collect::<Vec<_>>()
        .join(", ");
    (filled, series)
}

#[test]
fn viewer_keeps_playing_through_origin_and_packager_failures() {
    test_kit::process::require_root();
    let pair = Pair::new();
    let bpf = BpfFs::new().on_drop(switcher_ctl::loader::detach);
    let mut cfg = StackConfig::for_test("ete", &pair, &bpf);
    let (ws, run_dir) = (xtask::workspace(), cfg.run_dir.clone());
    cfg.assets_dir = Some(ws.join("web/node_modules/hls.js/dist"));
    // A short drain, so that hls.js's keep-alive connections, left on the backup by a
    // switchback, are moved back to the primary before the next drill.
    cfg.switcher_args.extend(["--drain".into(), "5".into()]);
    // On the edge address too, so a browser in the client namespace reaches the page.
    cfg.admin = (
        std::net::Ipv4Addr::UNSPECIFIED,
        xtask::layout::SWITCHER_ADMIN.port(),
    )
        .into();
    let mut stack = Stack::new(cfg);
    stack.start_all().expect("stack starts");
    let client_ns = pair.client.name.clone();
    let vip_get = |path: &str| http_get(Some(&client_ns), VIP, path, Duration::from_secs(2));
    let vip_ok = |path: &str| vip_get(path).is_ok_and(|r| r.status == 200);

    // Both packagers fill their window; the VIP serves the primary's playlist.
    wait_until(
        Duration::from_secs(40),
        "a full playlist through the VIP",
        || matches!(vip_get(PLAYLIST), Ok(r) if r.status == 200 && r.text().matches(".ts").count() >= 4),
    );
    assert_eq!(stack.active(), "primary");
    let attach = pair.edge.exec(&["bpftool", "net", "show"]);
    assert!(
        attach.contains("driver id"),
        "native XDP on the edge veth:\n{attach}"
    );
    // Only switcher-ctl holds privileges, and after attaching only CAP_BPF + CAP_NET_ADMIN;
    // every other service runs as the service user with no-new-privs.
    for name in xtask::stack::SERVICES {
        let pid = stack
            .pid(name)
            .unwrap_or_else(|| panic!("{name} not running"));
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        if name == "switcher-ctl" {
            // CAP_NET_ADMIN is bit 12, CAP_BPF bit 39.
            let eff = u64::from_str_radix(&field("CapEff:"), 16).expect("CapEff");
            assert_eq!(
                eff,
                (1 << 12) | (1 << 39),
                "switcher-ctl keeps CAP_NET_ADMIN + CAP_BPF only"
            );
        } else {
            assert_eq!(field("NoNewPrivs:"), "1", "{name} runs with no-new-privs");
            let uid = field("Uid:");
            assert!(
                !uid.starts_with("0\t") && !uid.starts_with("0 "),
                "{name} runs unprivileged: Uid {uid}"
            );
            assert_eq!(
                field("CapEff:"),
                "0000000000000000",
                "{name} has no capability"
            );
        }
    }

    // The status page in headless Chromium in the client namespace: it shows the live state,
    // and its hls.js player plays our packagers' stream through the VIP (XDP on the veth).
    assert!(
        ws.join("web/node_modules/hls.js/dist/hls.min.js").exists(),
        "hls.js missing: npm ci --prefix web"
    );
    let profile = std::env::temp_dir().join(netns::unique("chr"));
    let (chromium, mut page) = pair.client.run({
        let profile = profile.clone();
        move || {
            let page = format!("http://10.77.0.2:{}/", xtask::layout::SWITCHER_ADMIN.port());
            let (chromium, port) = browser::start_chromium(&page, &profile);
            (chromium, browser::Cdp::attach(port))
        }
    });
    page.wait_for(
        "page shows the active origin",
        "document.querySelector('#summary b').textContent",
        |v| v == "primary",
    );
    page.wait_for(
        "page shows the primary's MSN",
        "Number(document.querySelector('#origin-primary .msn').textContent)",
        |v| v.as_f64() > Some(1e6),
    );
    page.wait_video_advances("player", 2.0);
    // `E2E_SCREENSHOT=docs/status-page.png` keeps a picture of the page of this real run.
    if let Some(path) = std::env::var_os("E2E_SCREENSHOT") {
        use base64::Engine as _;
        std::thread::sleep(Duration::from_secs(20)); // some history in the segment-age plot
        let shot = page.call(
            "Page.captureScreenshot",
            serde_json::json!({"format": "png"}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
    // hls.js: count the fragments it loads (by MSN) and its fatal errors from now on.
    page.eval(HLS_WATCH);

    // Every failure class, each with a fresh recording player and hls.js watching, then a
    // switchback. The primary is active before each drill.
    let site = stack.cfg.fault_site();
    // `E2E_DRILLS=origin-partition,...` runs only those, and `E2E_ROUNDS=N` runs them N times
    // (when chasing one failure class).
    let only = std::env::var("E2E_DRILLS").unwrap_or_default();
    let rounds: usize = std::env::var("E2E_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    for _ in 0..rounds {
        for fault in Fault::ALL {
            if only.is_empty() || only.split(',').any(|f| f == fault.name()) {
                drill(&mut stack, &site, fault, &client_ns, &run_dir, &mut page);
            }
        }
    }
    drop(page);
    drop(chromium);
    let _ = std::fs::remove_dir_all(&profile);

    // Every metric the Grafana dashboard and the alert rules use is exported by some service
    // of this running stack (scraped inside the edge namespace).
    let ws2 = ws.clone();
    xtask::stack::in_netns(Some(&pair.edge.name), move || {
        let targets: Vec<String> = xtask::monitoring::scrape_targets()
            .iter()
            .map(|t| t.addr.to_string())
            .collect();
        let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
        xtask::monitoring::check_exported(&ws2, &targets)
    })
    .expect("dashboard and rules only use exported metrics");

    // Phase 3: restarting switcher-ctl breaks no flow: an open keep-alive connection through
    // the VIP keeps working across the restart (the new run adopts the pinned programs).
    let mut conn = pair.client.run(|| {
        let mut c = Client::connect(VIP).expect("connect VIP");
        c.get(PLAYLIST).expect("first request");
        c
    });
    stack.kill("switcher-ctl", libc::SIGTERM).unwrap();
    assert!(
        conn.get(PLAYLIST).is_ok(),
        "flow works while the control plane is down"
    );
    stack.start("switcher-ctl").unwrap();
    assert!(
        conn.get(PLAYLIST).is_ok(),
        "flow survives the control-plane restart"
    );
    assert_eq!(stack.active(), "primary");

    // Phase 4: both origins down: switcher-ctl stays on the active origin and reports both bad;
    // when one returns, it serves from that one.
    stack.kill("origin-primary", libc::SIGKILL).unwrap();
    stack.kill("origin-backup", libc::SIGKILL).unwrap();
    wait_until(Duration::from_secs(5), "both bad reported", || {
        stack
            .healthz()
            .map(|h| h["both_bad"] == true)
            .unwrap_or(false)
    });
    assert_eq!(stack.active(), "primary", "with both bad, no flip");
    assert!(!vip_ok(PLAYLIST), "nothing to serve with both origins down");
    stack.start("origin-backup").unwrap();
    wait_until(
        Duration::from_secs(5),
        "backup takes over when it returns",
        || stack.active() == "backup",
    );
    wait_until(Duration::from_secs(5), "VIP serves again", || {
        vip_ok(PLAYLIST)
    });

    // The control plane's counters agree with what happened.
    let metrics = http_get(
        Some(&pair.edge.name),
        &xtask::layout::SWITCHER_ADMIN.to_string(),
        "/metrics",
        Duration::from_secs(2),
    )
    .expect("switcher-ctl's metrics")
    .text();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(-1.0)
    };
    // Counters are per process: since the restart in phase 3 there was exactly one failover.
    assert_eq!(
        value("failovers_total"),
        1.0,
        "failovers_total since the restart:\n{metrics}"
    );
    assert_eq!(
        value("switchbacks_total"),
        0.0,
        "switchbacks_total since the restart"
    );
    assert_eq!(
        value("switcher_active_origin"),
        0.0,
        "switcher_active_origin: 0 = backup"
    );

    // `switcher-ctl status` reads the pinned maps and agrees.
    let status = pair.edge.exec(&[
        ws.join("target/debug/switcher-ctl").to_str().unwrap(),
        "status",
        "--pin-root",
        bpf.pin_root().to_str().unwrap(),
    ]);
    assert!(
        status.to_lowercase().contains("backup"),
        "status shows the backup active:\n{status}"
    );

    stack.stop();
    let _ = std::fs::remove_dir_all(&run_dir);
}

//! `cargo xtask bench dsr`: direct server return against a proxy, in the multi-host lab
//! (`xtask::lab`: a router doing ECMP over two edges, two origin hosts, a client).
//!
//! Cases (`DSR_BENCH_CASES=a,b`, all by default, on one lab):
//! - `throughput`: edge CPU and viewer throughput, below, bound by the machine's CPU;
//! - `throughput-shaped`: the same rounds with the viewer's access link (the router's egress
//!   toward the client) shaped to `DSR_BENCH_RATE_MBIT` (400) Mbit/s, so the link is the
//!   bottleneck, below;
//! - `origin-host-loss`: `DSR_BENCH_HOST_LOSS_RUNS` (20) times, origin1's link goes down while
//!   a viewer (the failover benchmark's polling player) fetches the playlist and the newest
//!   segment through the VIP every 20 ms; the figure is the time from the fault to the first
//!   response on a connection the edges pin to origin2 (both edges' conntrack maps), the
//!   failover issue's measure (target p99 <= 0.5 s);
//! - `edge-kill`, `edge-link-down`: `DSR_BENCH_EDGE_RUNS` (10) times, edge1 is killed
//!   (switcher-ctl and FRR, SIGKILL) or its link goes down; the figure is the time until the
//!   router's kernel routes the VIP over edge2 only (target 1 s). The lab test prints this
//!   too but asserts no time.
//!
//! Throughput: three ways of fetching the same large file from the client namespace, interleaved over
//! several rounds (the order rotates each round):
//! - **direct**: straight to an origin host (through the router, no edge);
//! - **dsr**: through the VIP: an edge's XDP program encapsulates each request packet to an
//!   origin host, which answers the viewer directly;
//! - **haproxy**: through Debian's HAProxy (HTTP mode, round robin over the same two origin
//!   hosts) in edge1's namespace: every response byte crosses the edge.
//!
//! Two measures of the viewer's throughput, reported side by side:
//! - **CPU-bound** (`throughput`): nothing limits the downloads but the machine. Every host
//!   of the lab shares one machine's CPUs (2 here), so this measures CPU per byte: through
//!   the VIP the client's ACKs cross the router twice and the edge's generic XDP, 3-8% more
//!   of the lab's CPU per byte (docs/ARCHITECTURE.md, "Lab caveats"), and the machine's other
//!   load moves each measurement by 20-40%.
//! - **Link-bound** (`throughput-shaped`): a token bucket on the router's egress toward the
//!   client (`Shaper`: rate `DSR_BENCH_RATE_MBIT`, burst 10 ms of tokens, latency 20 ms) holds
//!   every path below what the machine carries, as a viewer's access link does in production,
//!   where the edge and the router are other machines. It measures what the path does to the
//!   viewer: extra latency, loss, reordering or MTU trouble each lower TCP's share of the
//!   link. It does not measure CPU cost (the CPU-bound case and the edge-CPU column do). Its
//!   report gives each path's link use (bytes the shaper sent / (rate x time), from `tc -s`),
//!   so a reader sees the link was the bottleneck (each path close to 1.0; if direct is not,
//!   the rate is too high for the machine under its load, and the report says so), and the
//!   shaper's drops. The shaper is removed after the case, also on failure.
//!
//! The lab runs the release binaries (`DSR_BENCH_BIN_DIR` to choose others): switcher-ctl's
//! CPU time is the edge's cost here and the origins' speed bounds the throughput, and a debug
//! build inflates both.
//!
//! Each measurement runs `DSR_BENCH_PARALLEL` downloaders, each fetching the file
//! `DSR_BENCH_FETCHES` times on fresh connections (curl), and takes the wall time.
//!
//! What "edge CPU" counts (there is no exact per-namespace CPU account in Linux):
//! - dsr: CPU time (user + system, `/proc/<pid>/stat`) of both edges' switcher-ctl, plus the
//!   run time of every program pinned under both edges' pin roots (`bpftool prog show`,
//!   `run_time_ns`, with `kernel.bpf_stats_enabled=1`);
//! - haproxy: CPU time (user + system) of the haproxy process.
//!
//! Neither counts softirq work the kernel does outside a process's or a program's account:
//! for dsr the generic-XDP skb handling and the forwarding of the encapsulated packet; for
//! haproxy the TCP receive processing done in softirq context (its send path and the receive
//! path run from its own syscalls are counted, as system time). The machine's whole busy CPU
//! (`/proc/stat`: every namespace, and any other job on the machine) is reported too; on a
//! machine that other jobs keep busy it is ~2 CPUs x the wall time, so per Gbit it only
//! restates the throughput.
//!
//! "Viewer-path CPU" is the lab's own cost of the downloads, which other jobs on the machine
//! do not inflate: the downloads' processes (curl, summed by the kernel into this process's
//! children's usage when they are reaped) plus the origins, both edges' switcher-ctl, HAProxy
//! and the ksoftirqd threads (user + system, `/proc/<pid>/stat`). The kernel charges the
//! network work it runs in a process's context (softirq on leaving a bottom-half-disabled
//! section) to that process: the path of a client's ACK through the router, the edge's XDP
//! and the origin host's receive runs from curl's send, the path of a response from the
//! origin's sendfile. Not counted: the packagers, ingest, FRR (they run alike in every case)
//! and softirq work that happens to run in another job's context (timers).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::failover::{Player, Seen, flows_by_port};
use super::util;
use test_kit::netns::snmp_field;
use xtask::lab::{EDGES, LOADED_PROBE_TIMEOUTS, Lab, LabConfig, ORIGIN_HOSTS, VIP, VIP_PORT};

/// Port HAProxy listens on in edge1's namespace.
const HAPROXY_PORT: u16 = 8888;
/// The stream's playlist, to know the lab serves.
const PLAYLIST: &str = "/hls/demo/index.m3u8";

/// One way of reaching the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Direct,
    Dsr,
    Haproxy,
}

impl Route {
    const ALL: [Route; 3] = [Route::Direct, Route::Dsr, Route::Haproxy];

    fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Dsr => "dsr",
            Route::Haproxy => "haproxy",
        }
    }
}

/// One measurement.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Response bytes received by the client.
    bytes: u64,
    /// Wall time of the downloads.
    secs: f64,
    /// Edge CPU seconds (see the module docs); 0 for direct.
    edge_cpu: f64,
    /// Busy CPU seconds of the whole machine.
    machine_cpu: f64,
    /// Viewer-path CPU seconds (see the module docs).
    path_cpu: f64,
    /// What the shaper of the client's link counted (`throughput-shaped` only).
    link: Option<LinkCounters>,
}

impl Sample {
    /// Bytes the shaper sent / (its rate x the wall time), `rate` in bytes per second; NaN
    /// without a shaper.
    fn link_use(&self, rate: f64) -> f64 {
        self.link
            .map_or(f64::NAN, |l| l.bytes as f64 / self.secs / rate)
    }
    fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.secs / 1e9
    }
    /// Edge CPU (in CPUs) per Gbit/s of viewer traffic: CPU seconds per Gbit.
    fn edge_per_gbps(&self) -> f64 {
        self.edge_cpu / (self.bytes as f64 * 8.0 / 1e9)
    }
    fn machine_per_gbps(&self) -> f64 {
        self.machine_cpu / (self.bytes as f64 * 8.0 / 1e9)
    }
    fn path_per_gbps(&self) -> f64 {
        self.path_cpu / (self.bytes as f64 * 8.0 / 1e9)
    }
}

/// The cases `DSR_BENCH_CASES` may name (all by default), in the order they run.
const CASES: [&str; 5] = [
    "throughput",
    "throughput-shaped",
    "origin-host-loss",
    "edge-kill",
    "edge-link-down",
];
/// Longest a failover, a switchback or a reconvergence may take before the run fails.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// Index of the primary origin (origin1) in the edges' data-plane maps; origin2 is 1.
const PRIMARY_INDEX: u32 = 0;

/// Runs the benchmark and writes its report into `out`.
pub fn run(ws: &Path, out: &mut String) -> Result<()> {
    let cases: Vec<String> = match std::env::var("DSR_BENCH_CASES") {
        Ok(v) => v.split(',').map(|c| c.trim().to_string()).collect(),
        Err(_) => CASES.iter().map(|c| c.to_string()).collect(),
    };
    if let Some(bad) = cases.iter().find(|c| !CASES.contains(&c.as_str())) {
        bail!(
            "DSR_BENCH_CASES: unknown case {bad:?} ({})",
            CASES.join(", ")
        );
    }
    let bin_dir = std::env::var_os("DSR_BENCH_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target/release"));
    writeln!(
        out,
        "Machine: {}. Lab binaries: {}; XDP in generic mode (veth).",
        util::machine(),
        bin_dir.display(),
    )?;
    let throughput_cases = ["throughput", "throughput-shaped"];
    if cases.iter().any(|c| throughput_cases.contains(&c.as_str())) {
        // Probe timeouts for origins under heavy load (as the lab tests'): with switcher-ctl's
        // defaults, the edges could fail over from a busy origin in the middle of a round.
        let (run_dir, lab) = start_lab(&bin_dir, "tput", LOADED_PROBE_TIMEOUTS)?;
        writeln!(out, "Edge resets: {}.\n", edge_resets(&lab)?)?;
        if cases.iter().any(|c| c == "throughput") {
            throughput(&lab, &run_dir.0, out, None)?;
        }
        if cases.iter().any(|c| c == "throughput-shaped") {
            let mbit = util::env_count("DSR_BENCH_RATE_MBIT", 400)? as u64;
            if mbit == 0 {
                bail!("DSR_BENCH_RATE_MBIT: 0 is no rate (Mbit/s, e.g. 400)");
            }
            throughput(&lab, &run_dir.0, out, Some(mbit))?;
        }
    }
    if !cases
        .iter()
        .any(|c| !throughput_cases.contains(&c.as_str()))
    {
        return Ok(());
    }
    // The failure cases run with switcher-ctl's default probe timeouts, as the failover
    // benchmark does: a lost host is judged within them.
    let (_run_dir, mut lab) = start_lab(&bin_dir, "loss", DEFAULT_PROBE_TIMEOUTS)?;
    writeln!(
        out,
        "\nFailure cases: probe timeouts {DEFAULT_PROBE_TIMEOUTS:?} s (connect, whole probe: switcher-ctl's defaults), probe interval 0.1 s; edge resets: {}.",
        edge_resets(&lab)?
    )?;
    if cases.iter().any(|c| c == "origin-host-loss") {
        let runs = util::env_count("DSR_BENCH_HOST_LOSS_RUNS", 20)?;
        let mut figures = Vec::new();
        for i in 0..runs {
            let f = origin_host_loss_once(&mut lab)
                .with_context(|| format!("origin-host-loss run {i}"))?;
            println!("origin-host-loss run {i}: {f:.3} s");
            figures.push(f);
        }
        report_times(
            out,
            "Origin host loss",
            "origin1's link goes down (its host is gone) while a viewer polls the playlist and the newest segment through the VIP every 20 ms; the figure is the time from the fault to the first response on a connection the edges pin to origin2 (read from both edges' conntrack maps), resolution 20 ms",
            &figures,
            Some(0.5),
        )?;
    }
    for (case, what) in [
        (
            "edge-kill",
            "edge1's switcher-ctl and FRR daemons are killed (SIGKILL: the kernel closes bgpd's BGP connection, so the router hears of it at once)",
        ),
        (
            "edge-link-down",
            "edge1's link to the router goes down from edge1's side (the router's end loses its carrier; BFD 300 ms x 3 declares the session down)",
        ),
    ] {
        if !cases.iter().any(|c| c == case) {
            continue;
        }
        let runs = util::env_count("DSR_BENCH_EDGE_RUNS", 10)?;
        let mut figures = Vec::new();
        for i in 0..runs {
            let f = edge_loss_once(&mut lab, case).with_context(|| format!("{case} run {i}"))?;
            println!("{case} run {i}: router reconverged in {f:.3} s");
            figures.push(f);
        }
        report_times(
            out,
            &format!("Router reconvergence, {case}"),
            &format!(
                "{what}; the figure is the time from the fault to the router's kernel routing the VIP over edge2 only, polled with `ip route` every ~50 ms"
            ),
            &figures,
            Some(1.0),
        )?;
    }
    writeln!(
        out,
        "Load average after the run: {}.",
        std::fs::read_to_string("/proc/loadavg")?.trim()
    )?;
    Ok(())
}

/// switcher-ctl's default probe timeouts (connect, whole probe), in seconds.
const DEFAULT_PROBE_TIMEOUTS: (f64, f64) = (0.1, 0.5);

/// Starts a lab from `bin_dir` in `/run/hls-edge-dsrbench-<tag>-<pid>` with these probe
/// timeouts, once the stream reaches viewers through the VIP. Drop the lab first.
fn start_lab(bin_dir: &Path, tag: &str, probe_timeouts: (f64, f64)) -> Result<(RemoveDir, Lab)> {
    let run_dir = PathBuf::from(format!(
        "/run/hls-edge-dsrbench-{tag}-{}",
        std::process::id()
    ));
    let cleanup = RemoveDir(run_dir.clone());
    let lab = Lab::start(LabConfig {
        bin_dir: bin_dir.to_path_buf(),
        run_dir,
        stream: "demo".into(),
        video: (320, 240, 10),
        native: false,
        probe_timeouts,
    })
    .context("starting the lab")?;
    lab.wait_for("the playlist through the VIP", SETTLE_LIMIT, |lab| {
        Ok(matches!(lab.get(PLAYLIST), Ok((200, b)) if b.starts_with(b"#EXTM3U")))
    })?;
    Ok((cleanup, lab))
}

/// The edges' report of how they reset viewers of a retired remote origin (`status`).
fn edge_resets(lab: &Lab) -> Result<String> {
    let mut said = Vec::new();
    for e in EDGES {
        let pins = lab.pin_root(e).to_string_lossy().into_owned();
        let sw = lab.cfg.bin_dir.join("switcher-ctl");
        let out = lab.run_in(e, &[&sw.to_string_lossy(), "status", "--pin-root", &pins])?;
        let line = out
            .split("edge resets: ")
            .nth(1)
            .and_then(|r| r.lines().next())
            .unwrap_or("not reported")
            .to_string();
        said.push(format!("{e} {line}"));
    }
    Ok(said.join("; "))
}

/// Both edges healthy on origin1, the router routing the VIP over both.
fn settled(lab: &Lab) -> Result<bool> {
    for e in EDGES {
        if lab.edge_active(e)? != "primary" {
            return Ok(false);
        }
    }
    Ok(lab.vip_nexthops()?.len() == 2)
}

/// One origin host loss: the seconds from the fault to the viewer's first response from
/// origin2 (see [`run`]'s report text).
fn origin_host_loss_once(lab: &mut Lab) -> Result<f64> {
    lab.wait_for("both edges on origin1", SETTLE_LIMIT, settled)?;
    let player = Player::start(&lab.ns_name("client"), &format!("{VIP}:{VIP_PORT}"));
    // The fault must find the viewer on origin1 and both edges still steering there (an
    // origin host back from the previous run can be judged bad again while its packager
    // catches up, and a viewer already moved to origin2 would measure nothing).
    lab.wait_for(
        "the player to poll origin1, both edges on it",
        SETTLE_LIMIT,
        |lab| {
            let recent = player.seen_since(Instant::now() - Duration::from_secs(1));
            let Some(last) = recent.last() else {
                return Ok(false);
            };
            let on_origin1 = EDGES.iter().any(|e| {
                flows_by_port(&lab.ns_name(e), &lab.pin_root(e))
                    .is_ok_and(|m| m.get(&last.port) == Some(&PRIMARY_INDEX))
            });
            Ok(recent.len() >= 4 && on_origin1 && settled(lab)?)
        },
    )?;
    let counters_before = Counters::read(lab).unwrap_or_default();
    let before = player.seen_since(Instant::now() - Duration::from_millis(100));
    let wall0 = chrono::Utc::now();
    let t0 = Instant::now();
    lab.link("origin1", false)?;
    let pinned = |lab: &Lab| -> Result<Vec<BTreeMap<u16, u32>>> {
        EDGES
            .iter()
            .map(|e| flows_by_port(&lab.ns_name(e), &lab.pin_root(e)))
            .collect()
    };
    let mut first = None;
    let found = lab.wait_for("a response from origin2", SETTLE_LIMIT, |lab| {
        let flows = pinned(lab)?;
        first = player.seen_since(t0).into_iter().find(|s| {
            flows
                .iter()
                .any(|m| m.get(&s.port).is_some_and(|&o| o != PRIMARY_INDEX))
        });
        Ok(first.is_some())
    });
    // What happened, for a figure far from the others (best effort: a busy edge's admin may
    // not answer in time, and that must not end the benchmark).
    match diagnose(lab, &player, &before, t0, wall0, &counters_before) {
        Ok(d) => println!("  {d}"),
        Err(e) => println!("  diagnostics unavailable: {e:#}"),
    }
    // Restore whatever happened, so the next run (or the lab's teardown) starts whole.
    lab.link("origin1", true)?;
    found?;
    drop(player);
    Ok(first.context("found")?.at.duration_since(t0).as_secs_f64())
}

/// Counters read before and after an origin-host-loss run (see [`diagnose`]).
#[derive(Clone, Debug, Default)]
struct Counters {
    /// Per edge: `switcher_edge_resets_total` (established viewers reset by the edge).
    edge_resets: Vec<f64>,
    /// Per edge: `switcher_handshake_resets_total` (pending handshakes reset by the edge).
    handshake_resets: Vec<f64>,
    /// Per edge: probes under way that a failed new connection to their origin ended
    /// (lines of switcher-ctl's log saying [`WATCHDOG_ENDED`]).
    watchdog_ended: Vec<usize>,
    /// The router's packets with no route (`IpExt InNoRoutes`, /proc/net/netstat): every
    /// packet to the lost host once its link's routes are gone.
    no_routes: u64,
    /// The router's ICMP "destination unreachable" sent (`Icmp OutDestUnreachs`,
    /// /proc/net/snmp): fewer than `no_routes` when the kernel's per-source limit of routing
    /// errors (`net.ipv4.route.error_cost`/`error_burst`) held some back.
    unreachables_sent: u64,
}

impl Counters {
    fn read(lab: &Lab) -> Result<Counters> {
        let per_edge = |metric: &str| -> Result<Vec<f64>> {
            EDGES.iter().map(|e| lab.edge_counter(e, metric)).collect()
        };
        let router = |file: &str, table: &str, field: &str| -> Result<u64> {
            let text = lab.run_in("router", &["cat", file])?;
            snmp_field(&text, table, field).with_context(|| format!("{table} {field} in {file}"))
        };
        let watchdog_ended = EDGES
            .iter()
            .map(|e| {
                let log = lab.cfg.run_dir.join(format!("logs/switcher-{e}.log"));
                let text = std::fs::read_to_string(&log)
                    .with_context(|| format!("reading {}", log.display()))?;
                Ok(text.matches(WATCHDOG_ENDED).count())
            })
            .collect::<Result<_>>()?;
        Ok(Counters {
            watchdog_ended,
            edge_resets: per_edge("switcher_edge_resets_total")?,
            handshake_resets: per_edge("switcher_handshake_resets_total")?,
            no_routes: router("/proc/net/netstat", "IpExt", "InNoRoutes")?,
            unreachables_sent: router("/proc/net/snmp", "Icmp", "OutDestUnreachs")?,
        })
    }
}

/// switcher-ctl's log line for a probe under way ended by a failed new connection to its
/// origin (`switcher_ctl::probe::WATCHDOG_ENDED`; xtask does not link switcher-ctl).
const WATCHDOG_ENDED: &str = "probe under way ended: a new connection to its origin failed";

/// One origin-host-loss run's diagnostics, times in seconds after the fault: each edge's
/// decisions since the fault (its first bad window and what the probe saw: `unreachable`
/// (the router's ICMP answer), `connect timed out`, `timed out` (a probe under way when the
/// link went down waits out the whole probe timeout); its failover), the resets each edge
/// sent (and when each edge logged cutting its viewers off), the probes under way that a
/// failed new connection ended, the router's routing errors against the "unreachable" it
/// sent, and the player's failed polls and new connections (which edge pinned each, to which
/// origin index).
fn diagnose(
    lab: &Lab,
    player: &Player,
    before: &[Seen],
    t0: Instant,
    wall0: chrono::DateTime<chrono::Utc>,
    counters_before: &Counters,
) -> Result<String> {
    let since = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
    let flows: Vec<BTreeMap<u16, u32>> = EDGES
        .iter()
        .map(|e| flows_by_port(&lab.ns_name(e), &lab.pin_root(e)))
        .collect::<Result<_>>()?;
    let pinned = |p: u16| -> String {
        let at: Vec<String> = EDGES
            .iter()
            .zip(&flows)
            .filter_map(|(e, m)| Some(format!("{e}->{}", m.get(&p)?)))
            .collect();
        format!("{p}@[{}]", at.join(","))
    };
    let mut lines = Vec::new();
    let old: Vec<String> = before
        .iter()
        .map(|s| s.port)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(pinned)
        .collect();
    lines.push(format!("player before the fault on {}", old.join(" ")));
    for (c, port) in player.connects_since(t0) {
        lines.push(format!("+{:.3} connected {}", since(c), pinned(port)));
    }
    for (e, why) in player.error_log_since(t0) {
        lines.push(format!("+{:.3} poll failed: {why}", since(e)));
    }
    let after = Counters::read(lab)?;
    let diff = |a: &[f64], b: &[f64]| -> Vec<f64> {
        a.iter()
            .zip(b.iter().chain(std::iter::repeat(&0.0)))
            .map(|(a, b)| a - b)
            .collect()
    };
    lines.push(format!(
        "edge resets {:?}, handshake resets {:?}, probes under way ended by a failed new connection {:?} (edge1, edge2); router: {} packets without a route, {} unreachables sent",
        diff(&after.edge_resets, &counters_before.edge_resets),
        diff(&after.handshake_resets, &counters_before.handshake_resets),
        after
            .watchdog_ended
            .iter()
            .zip(counters_before.watchdog_ended.iter().chain(std::iter::repeat(&0)))
            .map(|(a, b)| a.saturating_sub(*b))
            .collect::<Vec<_>>(),
        after.no_routes.saturating_sub(counters_before.no_routes),
        after.unreachables_sent.saturating_sub(counters_before.unreachables_sent),
    ));
    // What each edge logged since the fault about cutting viewers off and about probes
    // under way ended early: when the resets went out, after the failover decision.
    for e in EDGES {
        let log = lab.cfg.run_dir.join(format!("logs/switcher-{e}.log"));
        for line in std::fs::read_to_string(&log).unwrap_or_default().lines() {
            if !(line.contains("aborted viewer connections") || line.contains(WATCHDOG_ENDED)) {
                continue;
            }
            let Some(at) = line
                .split_whitespace()
                .next()
                .and_then(|t| seconds_since(wall0, t))
            else {
                continue;
            };
            if at >= 0.0 {
                let what = match line.split_once(WATCHDOG_ENDED) {
                    Some((_, fields)) => format!("{WATCHDOG_ENDED}:{fields}"),
                    None => {
                        let counts: Vec<&str> = line
                            .split_whitespace()
                            .filter(|w| {
                                ["edge_resets=", "handshake_resets=", "flows_removed="]
                                    .iter()
                                    .any(|k| w.starts_with(k))
                            })
                            .collect();
                        format!("aborted viewer connections {}", counts.join(" "))
                    }
                };
                lines.push(format!("+{at:.3} {e} logged: {what}"));
            }
        }
    }
    // Each edge's decisions since the fault (the history keeps every notable one).
    for e in EDGES {
        let body = xtask::stack::http_get(
            Some(&lab.ns_name(e)),
            &xtask::lab::EDGE_ADMIN.to_string(),
            "/healthz",
            Duration::from_secs(2),
        )?
        .body;
        let h: serde_json::Value = serde_json::from_slice(&body)?;
        for d in h["decisions"].as_array().into_iter().flatten() {
            let Some(at) = d["at"].as_str().and_then(|t| seconds_since(wall0, t)) else {
                continue;
            };
            if at >= 0.0 {
                lines.push(format!(
                    "+{at:.3} {e} {} {}: {}",
                    d["action"].as_str().unwrap_or("?"),
                    d["reason"].as_str().unwrap_or("?"),
                    d["detail"].as_str().unwrap_or("?")
                ));
            }
        }
    }
    lines.sort_by(|a, b| {
        let t = |l: &str| {
            l.strip_prefix('+')
                .and_then(|r| r.split(' ').next()?.parse::<f64>().ok())
        };
        t(a).unwrap_or(-1.0).total_cmp(&t(b).unwrap_or(-1.0))
    });
    Ok(lines.join("\n  "))
}

/// One loss of edge1 (`edge-kill` or `edge-link-down`): the seconds until the router routes
/// the VIP over edge2 only.
fn edge_loss_once(lab: &mut Lab, case: &str) -> Result<f64> {
    lab.wait_for("both edges on origin1", SETTLE_LIMIT, settled)?;
    let edge2 = lab.host("edge2").addr;
    let t0 = Instant::now();
    if case == "edge-kill" {
        lab.kill_edge("edge1")?;
    } else {
        lab.link("edge1", false)?;
    }
    let dropped = lab.wait_for("the router to drop edge1", SETTLE_LIMIT, |lab| {
        Ok(lab.vip_nexthops()? == vec![edge2])
    });
    let figure = t0.elapsed().as_secs_f64();
    if case == "edge-kill" {
        lab.restart_edge("edge1")?;
    } else {
        lab.link("edge1", true)?;
    }
    dropped?;
    Ok(figure)
}

/// Writes one table line of times: median, p99, range, against `target` when given.
fn report_times(
    out: &mut String,
    title: &str,
    what: &str,
    figures: &[f64],
    target: Option<f64>,
) -> Result<()> {
    let mut sorted = figures.to_vec();
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted
        .get(((0.99 * sorted.len() as f64).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN);
    let (lo, hi) = (
        sorted.first().copied().unwrap_or(f64::NAN),
        sorted.last().copied().unwrap_or(f64::NAN),
    );
    writeln!(
        out,
        "\n{title} ({} runs): {what}.\n\n| median | p99 | range | target |\n|---|---|---|---|\n| {:.3} s | {p99:.3} s | {lo:.3}-{hi:.3} s | {} |\n\nEvery run: {}.",
        figures.len(),
        util::median_f64(figures.to_vec()),
        target.map_or("none".to_string(), |t| format!("<= {t} s")),
        figures
            .iter()
            .map(|f| format!("{f:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    Ok(())
}

/// The throughput cases: HAProxy next to the lab and `DSR_BENCH_ROUNDS` interleaved rounds;
/// with `shaped_mbit`, `throughput-shaped`: the viewer's access link shaped to that rate for
/// the whole case (see [`Shaper`]).
fn throughput(lab: &Lab, run_dir: &Path, out: &mut String, shaped_mbit: Option<u64>) -> Result<()> {
    let w = Workload::from_env()?;
    let haproxy = which("haproxy").context("haproxy not found: run scripts/setup")?;
    // Removed when dropped: at the end of this function, also on failure.
    let shaper = shaped_mbit.map(|m| Shaper::install(lab, m)).transpose()?;
    let stats_before = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")?;
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
    let result = measure(lab, run_dir, &haproxy, &w, shaper.as_ref());
    // Restore the setting whatever happened (it costs every BPF program two clock reads).
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_before.trim());
    let (samples, load) = result?;
    match &shaper {
        None => report(out, &samples, &w, &load),
        Some(sh) => report_shaped(out, sh, &samples, &w, &load),
    }
}

/// What each throughput measurement downloads, and how many rounds (env, with defaults).
struct Workload {
    /// Interleaved rounds (`DSR_BENCH_ROUNDS`, 5).
    rounds: usize,
    /// Parallel downloaders (`DSR_BENCH_PARALLEL`, 8).
    parallel: usize,
    /// Fetches per downloader, each on a fresh connection (`DSR_BENCH_FETCHES`, 4).
    fetches: usize,
    /// Size of the file in MiB (`DSR_BENCH_FILE_MIB`, 32).
    mib: usize,
}

impl Workload {
    fn from_env() -> Result<Workload> {
        Ok(Workload {
            rounds: util::env_count("DSR_BENCH_ROUNDS", 5)?,
            parallel: util::env_count("DSR_BENCH_PARALLEL", 8)?,
            fetches: util::env_count("DSR_BENCH_FETCHES", 4)?,
            mib: util::env_count("DSR_BENCH_FILE_MIB", 32)?,
        })
    }
}

/// The viewer's access link for `throughput-shaped`: a token bucket (`tc-tbf(8)`) on the
/// router's egress toward the client, so the responses of every path (direct, dsr, haproxy:
/// all reach the client over that link) are bound by the link's rate rather than by the
/// machine's CPU. Removed (`tc qdisc del`, back to veth's default) when dropped.
///
/// - rate: `DSR_BENCH_RATE_MBIT` Mbit/s (default 400: well under every path's CPU-bound
///   throughput in the lab, 0.9-3.5 Gbit/s on the 2-CPU machine, HAProxy the slowest);
/// - burst: 10 ms of tokens (500 kB at 400 Mbit/s). tc-tbf(8): the bucket must hold at
///   least rate / HZ bytes or the rate is not reached (tokens that arrive between two runs of
///   the shaper and overflow the bucket are lost; 200 kB here, `CONFIG_HZ=250`), and at least
///   one packet; 10 ms leaves room for the shaper's dequeue running late on a loaded machine.
///   Above the rate it lets through at most one bucket per measurement: 0.05% of the 1 GiB;
/// - latency: 20 ms, the longest a packet may wait in the queue (the queue holds the burst
///   plus rate x 20 ms). A queue shorter than the path's round trip would leave the link idle after each
///   loss (the bandwidth-delay rule); round trips in the lab under load measured 0.02-12 ms
///   (`ss -ti`), so 20 ms keeps the link the bottleneck, as an access link's buffer does.
struct Shaper {
    /// The router's namespace.
    ns: String,
    /// The router's end of the client's link.
    dev: String,
    mbit: u64,
    burst: u64,
}

/// The shaper's counters: bytes it sent (Ethernet frames without FCS, as tbf counts them)
/// and packets it dropped (queue full).
#[derive(Clone, Copy, Debug, Default)]
struct LinkCounters {
    bytes: u64,
    drops: u64,
}

impl Shaper {
    /// tbf's latency parameter, in milliseconds (see the type's docs).
    const LATENCY_MS: u64 = 20;

    fn install(lab: &Lab, mbit: u64) -> Result<Shaper> {
        let shaper = Shaper {
            ns: lab.router.name.clone(),
            dev: lab.host("client").router_iface.clone(),
            mbit,
            // 10 ms of tokens, never less than a full-size frame.
            burst: (mbit * 1_000_000 / 8 / 100).max(1600),
        };
        shaper
            .tc(&[
                "qdisc",
                "replace",
                "dev",
                &shaper.dev,
                "root",
                "tbf",
                "rate",
                &format!("{mbit}mbit"),
                "burst",
                &shaper.burst.to_string(),
                "latency",
                &format!("{}ms", Self::LATENCY_MS),
            ])
            .context("shaping the client's link (tc tbf)")?;
        // What the kernel took, so the report states the link's real rate.
        let rate = shaper.qdisc()?["options"]["rate"].as_u64().unwrap_or(0);
        if rate != mbit * 1_000_000 / 8 {
            bail!(
                "tbf on {} runs at {rate} B/s, not {mbit} Mbit/s",
                shaper.dev
            );
        }
        Ok(shaper)
    }

    fn tc(&self, args: &[&str]) -> Result<String> {
        let mut argv = vec!["ip", "netns", "exec", &self.ns, "tc"];
        argv.extend_from_slice(args);
        Ok(test_kit::process::try_sh(&argv)?)
    }

    /// The tbf qdisc's entry in `tc -s -j qdisc show`.
    fn qdisc(&self) -> Result<serde_json::Value> {
        let out = self.tc(&["-s", "-j", "qdisc", "show", "dev", &self.dev])?;
        root_tbf(&out).with_context(|| format!("the shaper on {}", self.dev))
    }

    fn counters(&self) -> Result<LinkCounters> {
        LinkCounters::of(&self.qdisc()?)
    }

    /// Bytes a second the link carries.
    fn bytes_per_sec(&self) -> f64 {
        self.mbit as f64 * 1e6 / 8.0
    }
}

/// The root tbf qdisc's entry in `tc -s -j qdisc show dev <dev>`'s output.
fn root_tbf(out: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(out).context("tc's JSON")?;
    v.as_array()
        .and_then(|q| q.iter().find(|q| q["kind"] == "tbf" && q["root"] == true))
        .cloned()
        .with_context(|| format!("no root tbf qdisc: {out}"))
}

impl LinkCounters {
    /// The counters of a qdisc's entry in `tc -s -j` output.
    fn of(q: &serde_json::Value) -> Result<LinkCounters> {
        Ok(LinkCounters {
            bytes: q["bytes"].as_u64().context("tbf: no byte count")?,
            drops: q["drops"].as_u64().context("tbf: no drop count")?,
        })
    }
}

impl Drop for Shaper {
    fn drop(&mut self) {
        let dev = self.dev.clone();
        if let Err(e) = self.tc(&["qdisc", "del", "dev", &dev, "root"]) {
            eprintln!("removing the shaper from {dev}: {e:#}");
        }
    }
}

/// Starts HAProxy and takes `rounds` interleaved rounds of every path (with the shaper's
/// counters around each measurement when the client's link is shaped).
fn measure(
    lab: &Lab,
    run_dir: &Path,
    haproxy: &Path,
    w: &Workload,
    shaper: Option<&Shaper>,
) -> Result<(Vec<(Route, Sample)>, String)> {
    let &Workload {
        rounds,
        parallel,
        fetches,
        mib,
    } = w;
    // The same file on both origin hosts.
    // Whole MPEG-TS packets: the origin refuses a `.ts` that is not (cut short).
    let size = (mib << 20) / 188 * 188;
    let mut content = vec![0u8; size];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut content)?;
    for o in ORIGIN_HOSTS {
        let dir = lab.hls_dir(o).join("big");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("big.ts"), &content)?;
    }
    drop(content);

    let edge1 = lab.host("edge1").addr;
    let cfg = run_dir.join("haproxy.cfg");
    let mut conf = format!(
        "global\n maxconn 4096\ndefaults\n mode http\n timeout connect 5s\n timeout client 60s\n timeout server 60s\n\
         frontend viewers\n bind {edge1}:{HAPROXY_PORT}\n default_backend origins\n\
         backend origins\n balance roundrobin\n"
    );
    for o in ORIGIN_HOSTS {
        conf += &format!(" server {o} {}:{VIP_PORT}\n", lab.host(o).addr);
    }
    std::fs::write(&cfg, conf)?;
    let mut hap = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &lab.ns_name("edge1")])
            .arg(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(util::log_file(run_dir, "haproxy")?)
            .spawn()
            .context("starting haproxy")?,
    );
    let url = |p: Route| -> String {
        let host = match p {
            Route::Direct => format!("{}:{VIP_PORT}", lab.host("origin1").addr),
            Route::Dsr => format!("{VIP}:{VIP_PORT}"),
            Route::Haproxy => format!("{edge1}:{HAPROXY_PORT}"),
        };
        format!("http://{host}/hls/big/big.ts")
    };
    lab.wait_for(
        "haproxy to serve the file",
        Duration::from_secs(20),
        |lab| {
            if let Some(status) = hap.0.try_wait()? {
                bail!("haproxy exited ({status})");
            }
            download(lab, &url(Route::Haproxy), 1, 1).map(|b| b == size as u64)
        },
    )?;
    let hap_pid = hap.0.id();

    let mut samples = Vec::new();
    for round in 0..rounds {
        for k in 0..Route::ALL.len() {
            let p = Route::ALL[(round + k) % Route::ALL.len()];
            let edge = || -> Result<f64> {
                Ok(match p {
                    Route::Direct => 0.0,
                    Route::Haproxy => proc_cpu(hap_pid)?,
                    Route::Dsr => {
                        let mut s = 0.0;
                        for e in EDGES {
                            let pid = lab
                                .pid(&format!("switcher-{e}"))
                                .context("the edge's switcher-ctl is not running")?;
                            s += proc_cpu(pid)? + prog_run_secs(&lab.pin_root(e))?;
                        }
                        s
                    }
                })
            };
            let (e0, m0, l0) = (edge()?, machine_busy()?, lab_cpu(lab, hap_pid)?);
            let link0 = shaper.map(Shaper::counters).transpose()?;
            let c0 = children_cpu();
            let start = Instant::now();
            let bytes = download(lab, &url(p), parallel, fetches)?;
            let secs = start.elapsed().as_secs_f64();
            let c1 = children_cpu();
            let link1 = shaper.map(Shaper::counters).transpose()?;
            let (e1, m1, l1) = (edge()?, machine_busy()?, lab_cpu(lab, hap_pid)?);
            let want = (parallel * fetches * size) as u64;
            if bytes != want {
                bail!("{}: received {bytes} bytes, expected {want}", p.name());
            }
            let s = Sample {
                bytes,
                secs,
                edge_cpu: e1 - e0,
                machine_cpu: m1 - m0,
                path_cpu: (c1 - c0) + (l1 - l0),
                link: link0.zip(link1).map(|(a, b)| LinkCounters {
                    bytes: b.bytes - a.bytes,
                    drops: b.drops - a.drops,
                }),
            };
            let link = match (shaper, s.link) {
                (Some(sh), Some(l)) => format!(
                    ", link use {:.3} of the rate, {} shaper drops",
                    s.link_use(sh.bytes_per_sec()),
                    l.drops
                ),
                _ => String::new(),
            };
            println!(
                "round {round} {}: {:.3} Gbit/s, edge CPU {:.3} s, machine CPU {:.3} s, viewer-path CPU {:.3} s{link}",
                p.name(),
                s.gbps(),
                s.edge_cpu,
                s.machine_cpu,
                s.path_cpu
            );
            samples.push((p, s));
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg")?;
    Ok((samples, load.trim().to_string()))
}

/// Runs `parallel` downloaders in the client namespace, each fetching `url` `fetches` times
/// on fresh connections, as the service user; the response bytes received.
fn download(lab: &Lab, url: &str, parallel: usize, fetches: usize) -> Result<u64> {
    let script = format!(
        "for w in $(seq {parallel}); do (for f in $(seq {fetches}); do \
         curl -sf --max-time 120 -o /dev/null -w '%{{size_download}}\\n' {url} || echo fail; done) & done; wait"
    );
    // As the service user, as every viewer of the lab.
    let mut argv = lab.unprivileged("client");
    argv.extend(["sh".to_string(), "-c".into(), script]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = test_kit::process::try_sh(&argv)?;
    let mut total = 0;
    for l in out.lines() {
        total += l
            .trim()
            .parse::<u64>()
            .with_context(|| format!("a download through {url} failed: {l:?}"))?;
    }
    Ok(total)
}

/// User + system CPU seconds of process `pid`.
fn proc_cpu(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/pid/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

/// User + system CPU seconds of this process's reaped children (and theirs): the downloads.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// CPU seconds of the lab's long-running processes on the viewers' path (the origins, both
/// edges' switcher-ctl, HAProxy) and of the ksoftirqd threads (see the module docs).
fn lab_cpu(lab: &Lab, haproxy: u32) -> Result<f64> {
    let mut pids = vec![haproxy];
    for name in ORIGIN_HOSTS
        .iter()
        .map(|o| format!("origin-{o}"))
        .chain(EDGES.iter().map(|e| format!("switcher-{e}")))
    {
        pids.push(
            lab.pid(&name)
                .with_context(|| format!("{name} is not running"))?,
        );
    }
    for entry in std::fs::read_dir("/proc")? {
        let path = entry?.path();
        if std::fs::read_to_string(path.join("comm")).is_ok_and(|c| c.starts_with("ksoftirqd/"))
            && let Some(pid) = path.file_name().and_then(|n| n.to_str()?.parse().ok())
        {
            pids.push(pid);
        }
    }
    pids.iter().map(|&pid| proc_cpu(pid)).sum()
}

/// Run time (seconds, summed) of every program pinned under `pin_root` (needs
/// `kernel.bpf_stats_enabled=1`).
fn prog_run_secs(pin_root: &Path) -> Result<f64> {
    let mut ns = 0u64;
    for entry in std::fs::read_dir(pin_root.join("progs"))? {
        let path = entry?.path();
        let out = Command::new("bpftool")
            .args(["-j", "prog", "show", "pinned"])
            .arg(&path)
            .output()?;
        if !out.status.success() {
            bail!("bpftool prog show pinned {}: {:?}", path.display(), out);
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        ns += v["run_time_ns"].as_u64().unwrap_or(0);
    }
    Ok(ns as f64 / 1e9)
}

/// Busy CPU seconds of the whole machine (every CPU, every state but idle and iowait).
fn machine_busy() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(busy as f64 / hz)
}

fn which(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Median and range of `f` over the samples of path `p`.
fn stats(samples: &[(Route, Sample)], p: Route, f: impl Fn(&Sample) -> f64) -> (f64, f64, f64) {
    let v: Vec<f64> = samples
        .iter()
        .filter(|(q, _)| *q == p)
        .map(|(_, s)| f(s))
        .collect();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (util::median_f64(v), lo, hi)
}

/// Per-round ratios `num / den` of `f` (rounds pair the samples taken in the same round).
fn ratios(
    samples: &[(Route, Sample)],
    num: Route,
    den: Route,
    f: impl Fn(&Sample) -> f64,
) -> (f64, f64, f64) {
    let a: Vec<f64> = samples
        .iter()
        .filter(|(q, _)| *q == num)
        .map(|(_, s)| f(s))
        .collect();
    let b: Vec<f64> = samples
        .iter()
        .filter(|(q, _)| *q == den)
        .map(|(_, s)| f(s))
        .collect();
    let v: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y).collect();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (util::median_f64(v), lo, hi)
}

fn report(out: &mut String, samples: &[(Route, Sample)], w: &Workload, load: &str) -> Result<()> {
    let &Workload {
        rounds,
        parallel,
        fetches,
        mib,
    } = w;
    writeln!(
        out,
        "Throughput (load average after it: {load}): {rounds} interleaved rounds; each \
         measurement: {parallel} parallel downloaders x {fetches} fetches of a {mib} MiB file, \
         fresh connection per fetch (curl in the client namespace, as the service user).\n"
    )?;
    writeln!(
        out,
        "| path | throughput Gbit/s median (range) | edge CPU-s per Gbit median (range) | viewer-path CPU-s per Gbit median (range) | machine CPU-s per Gbit median (range) |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    for p in Route::ALL {
        let (g, glo, ghi) = stats(samples, p, Sample::gbps);
        let (e, elo, ehi) = stats(samples, p, Sample::edge_per_gbps);
        let (m, mlo, mhi) = stats(samples, p, Sample::machine_per_gbps);
        let (v, vlo, vhi) = stats(samples, p, Sample::path_per_gbps);
        writeln!(
            out,
            "| {} | {g:.2} ({glo:.2}-{ghi:.2}) | {} | {v:.3} ({vlo:.3}-{vhi:.3}) | {m:.3} ({mlo:.3}-{mhi:.3}) |",
            p.name(),
            if p == Route::Direct {
                "-".to_string()
            } else {
                format!("{e:.4} ({elo:.4}-{ehi:.4})")
            }
        )?;
    }
    let (r, lo, hi) = ratios(samples, Route::Haproxy, Route::Dsr, Sample::edge_per_gbps);
    writeln!(
        out,
        "\nEdge CPU per Gbit/s, haproxy / dsr (per round): median {r:.1}x (range {lo:.1}-{hi:.1}x; target >= 10x)."
    )?;
    let (r, lo, hi) = ratios(samples, Route::Dsr, Route::Direct, Sample::gbps);
    writeln!(
        out,
        "Throughput, dsr / direct (per round): median {r:.2}x (range {lo:.2}-{hi:.2}x; target >= 0.95x)."
    )?;
    let (r, lo, hi) = ratios(samples, Route::Haproxy, Route::Direct, Sample::gbps);
    writeln!(
        out,
        "Throughput, haproxy / direct (per round): median {r:.2}x (range {lo:.2}-{hi:.2}x)."
    )?;
    let (r, lo, hi) = ratios(samples, Route::Dsr, Route::Direct, Sample::path_per_gbps);
    writeln!(
        out,
        "Viewer-path CPU per Gbit, dsr / direct (per round): median {r:.3}x (range {lo:.3}-{hi:.3}x): \
         what the lab itself spends more per byte through the VIP; on a machine the lab has to \
         itself, throughput dsr / direct would be about its inverse."
    )?;
    writeln!(
        out,
        "\nWhat this counts: dsr edge CPU = both edges' switcher-ctl CPU time (user+system) plus \
         the run time of the programs pinned under their pin roots (bpftool run_time_ns, \
         kernel.bpf_stats_enabled=1); haproxy edge CPU = the haproxy process's user+system time. \
         Neither counts softirq work outside those accounts (dsr: generic-XDP skb handling and \
         forwarding of the encapsulated packets; haproxy: TCP receive processing in softirq). \
         Viewer-path CPU = the downloads' processes (curl, with the kernel's network work run in \
         their context: the ACKs' path through router, edge XDP and origin host) + the origins, \
         both edges' switcher-ctl, HAProxy and ksoftirqd (user+system); other jobs do not count \
         in it. Machine CPU is the whole machine's /proc/stat (client, router, origins, edges, and any other job on the machine), so under outside load it says little: with the machine saturated it is ~2 CPUs x wall time, i.e. per Gbit just 2 / throughput. On a 2-CPU VM shared \
         with other jobs, the client, the origins and the edge compete for the same two CPUs, so \
         throughput is bound by the machine, not the edge, and absolute figures move with the \
         other load; the per-round ratios are the figures to read."
    )?;
    Ok(())
}

/// The `throughput-shaped` report: the viewer's throughput through a link shaped to the
/// shaper's rate, per path, next to the link's use (how close each path came to the rate).
fn report_shaped(
    out: &mut String,
    shaper: &Shaper,
    samples: &[(Route, Sample)],
    w: &Workload,
    load: &str,
) -> Result<()> {
    let &Workload {
        rounds,
        parallel,
        fetches,
        mib,
    } = w;
    let rate = shaper.bytes_per_sec();
    let use_of_rate = |s: &Sample| s.link_use(rate);
    let drops = |s: &Sample| s.link.map_or(f64::NAN, |l| l.drops as f64);
    // A full-size response packet on the client's 1500-byte link: 1448 bytes of payload
    // (MSS 1460 less the timestamp option) in a 1514-byte frame, which tbf counts.
    let ceiling = shaper.mbit as f64 * 1448.0 / 1514.0;
    writeln!(
        out,
        "\nThroughput through a shaped access link (load average after it: {load}): the \
         router's egress toward the client shaped by a token bucket (`tc qdisc replace dev \
         <router's end of the client link> root tbf rate {}mbit burst {} latency {}ms`), so \
         the viewer's link, not the machine's CPU, is the bottleneck; {rounds} interleaved \
         rounds, the same downloads ({parallel} parallel downloaders x {fetches} fetches of a \
         {mib} MiB file, fresh connection per fetch). The most payload the link carries is \
         {ceiling:.0} Mbit/s (1448 bytes per 1514-byte frame).\n",
        shaper.mbit,
        shaper.burst,
        Shaper::LATENCY_MS,
    )?;
    writeln!(
        out,
        "| path | viewer throughput Mbit/s median (range) | link use: bytes sent / (rate x time) median (range) | shaper drops per measurement median (range) |"
    )?;
    writeln!(out, "|---|---|---|---|")?;
    for p in Route::ALL {
        let (g, glo, ghi) = stats(samples, p, Sample::gbps);
        let (u, ulo, uhi) = stats(samples, p, use_of_rate);
        let (d, dlo, dhi) = stats(samples, p, drops);
        writeln!(
            out,
            "| {} | {:.0} ({:.0}-{:.0}) | {u:.3} ({ulo:.3}-{uhi:.3}) | {d:.0} ({dlo:.0}-{dhi:.0}) |",
            p.name(),
            g * 1e3,
            glo * 1e3,
            ghi * 1e3,
        )?;
    }
    let (r, lo, hi) = ratios(samples, Route::Dsr, Route::Direct, Sample::gbps);
    writeln!(
        out,
        "\nThroughput through the shaped link, dsr / direct (per round): median {r:.3}x (range {lo:.3}-{hi:.3}x; target >= 0.95x)."
    )?;
    let (r, lo, hi) = ratios(samples, Route::Haproxy, Route::Direct, Sample::gbps);
    writeln!(
        out,
        "Throughput through the shaped link, haproxy / direct (per round): median {r:.3}x (range {lo:.3}-{hi:.3}x)."
    )?;
    let (u, ulo, _) = stats(samples, Route::Direct, use_of_rate);
    if u < 0.9 {
        writeln!(
            out,
            "**Direct did not reach the rate** (link use median {u:.3}, lowest {ulo:.3}): \
             {} Mbit/s is too high for this machine under this load, so these figures are \
             bound by the CPU too; rerun with a lower DSR_BENCH_RATE_MBIT.",
            shaper.mbit
        )?;
    }
    writeln!(
        out,
        "\nWhat this measures: what the path does to a viewer whose own link is the bottleneck, \
         as in production, where the edge and the router are other machines: any extra \
         latency, loss, reordering or MTU trouble on a path shows as a lower share of the \
         link (TCP's throughput falls with each). What it does not: CPU cost (the CPU-bound \
         case and its edge-CPU and viewer-path-CPU columns cover that), since every path is \
         held below what the machine can carry. Both are reported because on one shared \
         2-CPU machine the CPU-bound ratio mixes the lab's own CPU per byte through the VIP \
         (the client's ACKs cross the router twice and the edge's generic XDP) and the other \
         jobs' load into the viewer's figure."
    )?;
    Ok(())
}

/// Kills and reaps a child on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes the lab's run directory on drop.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Seconds from `wall0` to the RFC 3339 time `t` (negative before it), if `t` parses.
fn seconds_since(wall0: chrono::DateTime<chrono::Utc>, t: &str) -> Option<f64> {
    let t = chrono::DateTime::parse_from_rfc3339(t).ok()?;
    Some((t.with_timezone(&chrono::Utc) - wall0).num_milliseconds() as f64 / 1000.0)
}

#[cfg(test)]
mod shaper_tests {
    use super::{LinkCounters, root_tbf};

    /// `tc -s -j qdisc show dev <veth>` (iproute2 6.1) with the shaper on, after traffic.
    const SHAPED: &str = r#"[{"kind":"tbf","handle":"8003:","root":true,"refcnt":3,"options":{"rate":50000000,"burst":500000,"lat":20000},"bytes":7246408066,"packets":4788633,"drops":262395,"overlimits":6093095,"requeues":0,"backlog":1456468,"qlen":102}]"#;

    #[test]
    fn root_tbf_counters_and_rate() {
        let q = root_tbf(SHAPED).unwrap();
        assert_eq!(q["options"]["rate"].as_u64(), Some(400 * 1_000_000 / 8));
        let c = LinkCounters::of(&q).unwrap();
        assert_eq!((c.bytes, c.drops), (7_246_408_066, 262_395));
    }

    #[test]
    fn no_shaper_is_an_error() {
        // veth's default (noqueue: nothing listed) and another qdisc at the root.
        assert!(root_tbf("[]").is_err());
        let other = r#"[{"kind":"fq_codel","handle":"0:","root":true,"bytes":1,"drops":0}]"#;
        assert!(root_tbf(other).is_err());
        assert!(root_tbf("not json").is_err());
    }
}

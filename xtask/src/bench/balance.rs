//! `cargo xtask bench balance`: wrk through the VIP in balance mode over four origins, against
//! the same four origins loaded directly (the control that isolates the data plane), and
//! against wrk straight to one origin; per origin-core.
//!
//! Setup: the stack of `cargo xtask run --origins 4 --policy balance` from `target/release`
//! in an edge network namespace (native XDP on a veth), wrk in a client namespace. Every case
//! takes the same path up to the edge's veth: the VIP is `10.77.0.2:8080`, which the data
//! plane steers (Maglev table, conntrack, port rewrite both ways) over the four origins; origin
//! `oI` is `10.77.0.2:808I`, which the data plane passes untouched. The request is the live
//! playlist (small: what costs is per request and per packet, which is where steering costs
//! too).
//!
//! Each round runs four cases, each `wrk -d5s`:
//! - **VIP x4**: four wrk processes in parallel (`-t1 -c12` each, 48 connections), all to the
//!   VIP; the data plane spreads their connections over the four origins.
//! - **direct x4**: the same four wrk processes, one per origin port. The same client
//!   processes, the same total connections and the same four origin processes as VIP x4; only
//!   the steering differs. VIP x4 / direct x4 is the data plane's cost.
//! - **VIP x1**: one `wrk -t2 -c50` to the VIP (the first version of this bench).
//! - **direct x1**: one `wrk -t2 -c50` to origin o1 alone. VIP x1 / direct x1 mixes the
//!   steering with four origin processes sharing the machine's cores against one.
//!
//! The pairs alternate which case goes first from round to round.
//!
//! "Per origin-core" is requests per CPU-second the origin processes spent (user + system,
//! from /proc), so a figure does not depend on how many cores the origins had. The data
//! plane's own cost is spent in softirq, which the kernel charges to whatever task runs
//! (often wrk), so it shows in the raw throughput ratio, reported too, more than in the
//! per-origin-core one.
//!
//! Before the first round the bench waits until `/healthz` shows all four origins in
//! rotation and every origin, and the VIP, answer the playlist with 200. During each VIP run
//! it reads switcher-ctl's counters of rotation changes (`switcher_lookup_table_rebuilds_total`,
//! `switcher_retired_flows_total`, `switcher_aborted_connections_total`,
//! `dataplane_held_requests_total`), so errors in a VIP run can be told apart from a rotation
//! change. `BALANCE_BENCH_ROUNDS` (default 5).

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use test_kit::netns::{BpfFs, Pair};
use xtask::stack::{Stack, StackConfig, http_get};

use super::origin::{parse_wrk, tree_cpu_seconds};
use super::util::{TempDir, env_count, median_f64};

/// Origins of the balanced stack.
const ORIGINS: usize = 4;
/// wrk's duration for every case.
const DURATION: &str = "-d5s";
/// One wrk's threads and connections in the x4 cases (four of them: 48 connections).
const WRK_X4: [&str; 2] = ["-t1", "-c12"];
/// The single wrk's threads and connections in the x1 cases, as in `bench origin`.
const WRK_X1: [&str; 2] = ["-t2", "-c50"];
/// The edge address (the VIP's and the origins').
const EDGE: &str = "10.77.0.2";
/// The request.
const PLAYLIST: &str = "/hls/demo/index.m3u8";
/// switcher-ctl counters that move when an origin's rotation changes or its flows are
/// retired; read around each VIP run.
const ROTATION_COUNTERS: [&str; 4] = [
    "switcher_lookup_table_rebuilds_total",
    "switcher_retired_flows_total",
    "switcher_aborted_connections_total",
    "dataplane_held_requests_total",
];

/// One case's figures, summed over its wrk processes.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Load {
    /// Requests completed.
    requests: u64,
    /// Requests per second (the sum of the wrk processes' rates).
    requests_per_sec: f64,
    /// CPU seconds the origin processes spent during the run.
    cpu_seconds: f64,
    /// Non-2xx/3xx responses.
    non_2xx: u64,
    /// Socket errors (connect, read, write, timeout).
    socket_errors: u64,
}

impl Load {
    /// Requests per origin CPU-second.
    fn per_core(&self) -> f64 {
        self.requests as f64 / self.cpu_seconds.max(1e-9)
    }
}

/// Parses one wrk report into a [`Load`] (without CPU time).
fn parse_load(text: &str) -> Result<Load> {
    let r = parse_wrk(text).with_context(|| format!("unexpected wrk output:\n{text}"))?;
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .map_or(Ok(0), |v| v.trim().parse::<u64>())?;
    Ok(Load {
        requests: r.requests,
        requests_per_sec: r.requests_per_sec,
        cpu_seconds: 0.0,
        non_2xx,
        socket_errors: r.errors - non_2xx,
    })
}

/// The sum of `a` and `b` (parallel wrk processes).
fn sum(a: Load, b: Load) -> Load {
    Load {
        requests: a.requests + b.requests,
        requests_per_sec: a.requests_per_sec + b.requests_per_sec,
        cpu_seconds: a.cpu_seconds + b.cpu_seconds,
        non_2xx: a.non_2xx + b.non_2xx,
        socket_errors: a.socket_errors + b.socket_errors,
    }
}

/// The sum of every sample of counter `name` (all label sets) in Prometheus text `text`.
fn counter_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            // `name{...} v` or `name v`, not `name_suffix v`.
            let value = if rest.starts_with('{') {
                rest.rsplit_once('}')?.1
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None;
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// The rotation counters' current values.
fn rotation_counters(stack: &Stack) -> Result<[f64; 4]> {
    let text = http_get(
        stack.cfg.netns.as_deref(),
        &stack.cfg.admin_addr(),
        "/metrics",
        Duration::from_secs(5),
    )?
    .text();
    Ok(ROTATION_COUNTERS.map(|n| counter_sum(&text, n)))
}

/// wrk processes run in parallel from the client namespace, one per URL in `urls`, each with
/// `args`; the result is their sum, with the CPU seconds the processes `pids` spent meanwhile.
fn measured(client_ns: &str, urls: &[String], args: &[&str], pids: &[u32]) -> Result<Load> {
    let cpu = || -> Result<f64> { pids.iter().map(|&p| tree_cpu_seconds(p)).sum() };
    let before = cpu()?;
    let children = urls
        .iter()
        .map(|url| {
            Command::new("ip")
                .args(["netns", "exec", client_ns, "wrk"])
                .args(args)
                .arg(DURATION)
                .arg(url)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("running wrk (apt-get install wrk)")
        })
        .collect::<Result<Vec<_>>>()?;
    let mut total = Load::default();
    let mut failure = None;
    // Wait for every child before failing, so none is left running.
    for child in children {
        let output = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            failure.get_or_insert(format!(
                "wrk failed: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            ));
            continue;
        }
        let load = parse_load(&text)?;
        if load.non_2xx + load.socket_errors > 0 {
            eprintln!("wrk reported errors:\n{text}");
        }
        total = sum(total, load);
    }
    if let Some(f) = failure {
        bail!(f);
    }
    total.cpu_seconds = cpu()? - before;
    Ok(total)
}

/// A VIP run, with how much the rotation counters moved during it.
fn measured_vip(
    stack: &Stack,
    client_ns: &str,
    urls: &[String],
    args: &[&str],
    pids: &[u32],
) -> Result<(Load, [f64; 4])> {
    let before = rotation_counters(stack)?;
    let load = measured(client_ns, urls, args, pids)?;
    let after = rotation_counters(stack)?;
    Ok((load, std::array::from_fn(|i| after[i] - before[i])))
}

/// `min..max` of ratios.
fn range(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.3}x..{max:.3}x")
}

/// `median (min..max)` of absolute figures.
fn spread(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.0} ({min:.0}..{max:.0})", median_f64(v.to_vec()))
}

/// The load average (1, 5, 15 minutes).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Waits until `/healthz` shows every origin in rotation and every origin, and the VIP,
/// answer the playlist with 200 from the client namespace.
fn wait_ready(stack: &Stack, names: &[String], client_ns: &str, urls: &[String]) -> Result<()> {
    if !test_kit::wait::try_wait_until(Duration::from_secs(60), || {
        stack
            .healthz()
            .is_ok_and(|h| names.iter().all(|n| h["origins"][n]["in_rotation"] == true))
    }) {
        bail!("the four origins did not all come into rotation");
    }
    for url in urls {
        let addr = url
            .strip_prefix("http://")
            .and_then(|u| u.split_once('/'))
            .map(|(a, _)| a)
            .context("bad url")?;
        if !test_kit::wait::try_wait_until(Duration::from_secs(30), || {
            http_get(Some(client_ns), addr, PLAYLIST, Duration::from_secs(2))
                .is_ok_and(|r| r.status == 200)
        }) {
            bail!("{url} did not answer 200");
        }
    }
    Ok(())
}

/// One round's four cases and the rotation-counter deltas of its VIP runs.
struct Round {
    vip4: Load,
    direct4: Load,
    vip1: Load,
    direct1: Load,
    rotation: [f64; 4],
}

/// Runs the benchmark and appends its markdown report to `out`.
pub fn run(workspace: &Path, out: &mut String) -> Result<()> {
    let rounds = env_count("BALANCE_BENCH_ROUNDS", 5)?;
    let bin_dir = workspace.join("target/release");
    for b in ["ingest", "packager", "origin", "switcher-ctl"] {
        if !bin_dir.join(b).is_file() {
            bail!("{b} not built: run `cargo build --release --workspace --bins`");
        }
    }
    // wrk's 50 connections come from one client address: above the origins' per-address cap.
    // SAFETY: set before the stack or any other thread of this process starts.
    unsafe { std::env::set_var("ORIGIN_MAX_CONNECTIONS_PER_ADDRESS", "1024") };
    let pair = Pair::new();
    let bpf = BpfFs::new();
    let dir = TempDir::new("balance-bench")?;
    // The service user must be able to enter the run directory.
    std::fs::set_permissions(
        &dir.path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let mut cfg = StackConfig::in_namespaces(bin_dir, dir.path.clone(), &pair, &bpf);
    cfg.origins = ORIGINS;
    cfg.switcher_args
        .extend(["--policy".into(), "balance".into()]);
    let mut stack = Stack::new(cfg);
    stack.start_all().context("starting the stack")?;
    let names = xtask::layout::origin_names(ORIGINS);
    let result = (|| -> Result<()> {
        let client = pair.client.name.clone();
        let vip_url = format!("http://{EDGE}:{}{PLAYLIST}", xtask::layout::VIP_PORT);
        let origin_urls: Vec<String> = (0..ORIGINS)
            .map(|i| format!("http://{EDGE}:{}{PLAYLIST}", xtask::layout::origin_port(i)))
            .collect();
        let mut all_urls = origin_urls.clone();
        all_urls.push(vip_url.clone());
        wait_ready(&stack, &names, &client, &all_urls)?;
        let pids: Vec<u32> = names
            .iter()
            .map(|n| {
                stack
                    .pid(&format!("origin-{n}"))
                    .with_context(|| format!("origin-{n} not running"))
            })
            .collect::<Result<_>>()?;
        let vip_x4 = vec![vip_url.clone(); ORIGINS];
        let vip_x1 = [vip_url];
        let direct_x1 = [origin_urls[0].clone()];
        let load_before = load_average();
        let mut results = Vec::new();
        for round in 0..rounds {
            let vip4 = || measured_vip(&stack, &client, &vip_x4, &WRK_X4, &pids);
            let direct4 = || measured(&client, &origin_urls, &WRK_X4, &pids);
            let vip1 = || measured_vip(&stack, &client, &vip_x1, &WRK_X1, &pids);
            let direct1 = || measured(&client, &direct_x1, &WRK_X1, &pids[..1]);
            let ((v4, r4), d4, (v1, r1), d1) = if round % 2 == 0 {
                (vip4()?, direct4()?, vip1()?, direct1()?)
            } else {
                let d4 = direct4()?;
                let v4 = vip4()?;
                let d1 = direct1()?;
                (v4, d4, vip1()?, d1)
            };
            eprintln!(
                "balance round {}: VIP x4 / direct x4 per origin-core {:.3}x, raw {:.3}x; \
                 VIP x1 / direct x1 per origin-core {:.3}x, raw {:.3}x",
                round + 1,
                v4.per_core() / d4.per_core(),
                v4.requests_per_sec / d4.requests_per_sec,
                v1.per_core() / d1.per_core(),
                v1.requests_per_sec / d1.requests_per_sec,
            );
            results.push(Round {
                vip4: v4,
                direct4: d4,
                vip1: v1,
                direct1: d1,
                rotation: std::array::from_fn(|i| r4[i] + r1[i]),
            });
        }
        let load_after = load_average();
        report(out, rounds, &results, &load_before, &load_after);
        Ok(())
    })();
    stack.stop();
    result
}

/// Writes the markdown report of `results`.
fn report(out: &mut String, rounds: usize, results: &[Round], load_before: &str, load_after: &str) {
    let _ = writeln!(
        out,
        "Machine: {}; load average {load_before} before, {load_after} after. Stack from \
         target/release in namespaces (native XDP on a veth), {ORIGINS} origins, `--policy \
         balance`; wrk `{DURATION}` from the client namespace for `{PLAYLIST}`. {rounds} rounds; \
         each pair alternates which goes first. Cases: **VIP x4** = four `wrk {}` in parallel \
         to the VIP (:8080, steered over the four origins); **direct x4** = the same four wrk, \
         one per origin port (:8081..:8084, passed untouched); **VIP x1** = one `wrk {}` to the \
         VIP; **direct x1** = the same to origin o1 alone. Per origin-core = requests / \
         CPU-seconds of the origin processes (all four, or o1 alone for direct x1).\n",
        super::util::machine(),
        WRK_X4.join(" "),
        WRK_X1.join(" "),
    );
    let _ = writeln!(
        out,
        "| round | VIP x4 req/s | VIP x4 origin CPU s | direct x4 req/s | direct x4 origin CPU s | \
         VIP x1 req/s | VIP x1 origin CPU s | direct x1 req/s | direct x1 origin CPU s | \
         errors non-2xx+socket (VIP x4 / direct x4 / VIP x1 / direct x1) | rotation counters \
         moved during VIP runs |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let errors = |l: &Load| format!("{}+{}", l.non_2xx, l.socket_errors);
    for (i, r) in results.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} | {} / {} / {} / {} | {} |",
            i + 1,
            r.vip4.requests_per_sec,
            r.vip4.cpu_seconds,
            r.direct4.requests_per_sec,
            r.direct4.cpu_seconds,
            r.vip1.requests_per_sec,
            r.vip1.cpu_seconds,
            r.direct1.requests_per_sec,
            r.direct1.cpu_seconds,
            errors(&r.vip4),
            errors(&r.direct4),
            errors(&r.vip1),
            errors(&r.direct1),
            if r.rotation.iter().all(|d| *d == 0.0) {
                "none".to_string()
            } else {
                ROTATION_COUNTERS
                    .iter()
                    .zip(r.rotation)
                    .filter(|(_, d)| *d != 0.0)
                    .map(|(n, d)| format!("{n} +{d}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    }
    let col = |f: fn(&Round) -> f64| results.iter().map(f).collect::<Vec<f64>>();
    let _ = writeln!(
        out,
        "\n| case | req/s median (range) | requests per origin CPU-second median (range) |\n|---|---|---|"
    );
    for (name, rate, pc) in [
        (
            "VIP x4",
            col(|r| r.vip4.requests_per_sec),
            col(|r| r.vip4.per_core()),
        ),
        (
            "direct x4",
            col(|r| r.direct4.requests_per_sec),
            col(|r| r.direct4.per_core()),
        ),
        (
            "VIP x1",
            col(|r| r.vip1.requests_per_sec),
            col(|r| r.vip1.per_core()),
        ),
        (
            "direct x1",
            col(|r| r.direct1.requests_per_sec),
            col(|r| r.direct1.per_core()),
        ),
    ] {
        let _ = writeln!(out, "| {name} | {} | {} |", spread(&rate), spread(&pc));
    }
    let _ = writeln!(
        out,
        "\n| ratio (per round, then median and range) | per origin-core | raw req/s | what it measures |\n|---|---|---|---|"
    );
    for (name, pc, raw, what) in [
        (
            "VIP x4 / direct x4",
            col(|r| r.vip4.per_core() / r.direct4.per_core()),
            col(|r| r.vip4.requests_per_sec / r.direct4.requests_per_sec),
            "the data plane alone: same clients, connections and origin processes (target >= 0.97x)",
        ),
        (
            "VIP x1 / direct x1",
            col(|r| r.vip1.per_core() / r.direct1.per_core()),
            col(|r| r.vip1.requests_per_sec / r.direct1.requests_per_sec),
            "the data plane plus four origin processes sharing the cores against one",
        ),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {:.3}x ({}) | {:.3}x ({}) | {what} |",
            median_f64(pc.clone()),
            range(&pc),
            median_f64(raw.clone()),
            range(&raw)
        );
    }
    let _ = writeln!(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_errors_apart_and_sums_parallel_runs() {
        let text = "Running 5s test @ http://10.77.0.2:8080/x\n  1 threads and 12 connections\n\
            100000 requests in 5.00s, 15.00MB read\n\
            Socket errors: connect 1, read 2, write 0, timeout 4\n\
            Non-2xx or 3xx responses: 30\n\
            Requests/sec:  20000.00\nTransfer/sec:      3.00MB\n";
        let a = parse_load(text).expect("parse");
        assert_eq!((a.requests, a.non_2xx, a.socket_errors), (100000, 30, 7));
        let clean =
            "  10 requests in 5.00s, 1.00KB read\nRequests/sec:  2.00\nTransfer/sec: 200B\n";
        let b = parse_load(clean).expect("parse");
        assert_eq!((b.non_2xx, b.socket_errors), (0, 0));
        let s = sum(a, b);
        assert_eq!(s.requests, 100010);
        assert_eq!(s.requests_per_sec, 20002.0);
        assert_eq!((s.non_2xx, s.socket_errors), (30, 7));
    }

    #[test]
    fn sums_a_counter_over_labels_only_by_its_exact_name() {
        let text = "# HELP switcher_retired_flows_total x\n\
            # TYPE switcher_retired_flows_total counter\n\
            switcher_retired_flows_total{origin=\"o1\"} 3\n\
            switcher_retired_flows_total{origin=\"o2\"} 4\n\
            switcher_retired_flows_total_extra 100\n\
            switcher_lookup_table_rebuilds_total 2\n";
        assert_eq!(counter_sum(text, "switcher_retired_flows_total"), 7.0);
        assert_eq!(
            counter_sum(text, "switcher_lookup_table_rebuilds_total"),
            2.0
        );
        assert_eq!(counter_sum(text, "dataplane_held_requests_total"), 0.0);
    }

    #[test]
    fn per_core_divides_requests_by_origin_cpu_seconds() {
        let l = Load {
            requests: 1000,
            cpu_seconds: 2.0,
            ..Load::default()
        };
        assert_eq!(l.per_core(), 500.0);
    }
}

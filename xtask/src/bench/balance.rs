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
//! Each round runs five cases, each `wrk -d5s`:
//! - **VIP x4**: one `wrk -t48 -c48` (one connection per wrk thread) to the VIP; the data
//!   plane spreads the connections over the four origins.
//! - **matched x4**: the same wrk with a script (`split_script`) that sends its threads
//!   straight to the origin ports, as many to each origin as the VIP x4 run just before had
//!   there (counted with `ss` once all 48 are open). The same client, the same origin
//!   processes and the same connections per origin as VIP x4; only the path differs. VIP x4 /
//!   matched x4 is the data plane's cost, the quantity.
//! - **direct x4**: the same with 12 threads per origin port: the even split.
//! - **VIP x1**: one `wrk -t2 -c50` to the VIP (the first version of this bench).
//! - **direct x1**: one `wrk -t2 -c50` to origin o1 alone. VIP x1 / direct x1 mixes the
//!   steering with four origin processes sharing the machine's cores against one.
//!
//! Odd rounds run VIP x4 first, even rounds direct x4 and direct x1 first; matched x4 always
//! follows its VIP x4 run.
//!
//! Then the **pooled comparison**, the figure the target is read from: `BALANCE_BENCH_PAIRS`
//! (default 48) pairs of a short VIP x4 run and its matched x4 run
//! (`BALANCE_BENCH_PAIR_SECONDS`, default 2 s each). Why: a run's requests per origin
//! CPU-second depend on how wrk's 48 threads and the origins happen to interleave, set anew at
//! each start, and the 5 s rounds spread by +-25% for the same case run twice in a row, far
//! more than the data plane's share of a request; a ratio per round, or a median of a few,
//! says little about a 3% target. Many short starts average that, all runs' requests over all
//! their CPU-seconds ([`pooled_ratio`]) is the figure, with a bootstrap interval over the pairs
//! ([`bootstrap_interval`]). `BALANCE_BENCH_ROUNDS=0` runs only the pairs.
//!
//! Why this client (the first control, four `wrk -t1 -c12` to the VIP against the same four
//! one per origin port, gave 0.82x): the origin's CPU per request depends on how many
//! requests each wakeup finds, which the client side shapes, not the path.
//! - With twelve connections per wrk thread, a thread's burst of requests lands on one origin
//!   when direct, but on four through the VIP: the origins woke up about 45% more often per
//!   request (context switches per request 0.29 against 0.20), with the data plane's own
//!   programs under 0.5% of the CPU (perf, BENCHMARKS.md). One connection per client thread
//!   is what independent viewers look like, and makes both paths alike.
//! - Maglev splits 48 connections unevenly (e.g. 18/9/15/10); an origin's batching, and so its
//!   CPU per request, follows its share. The matched case gives each origin the same share.
//! - Four wrk processes started through `ip netns exec` on a loaded machine did not always
//!   overlap (one round counted 13 of 48 connections open); one process starts its threads
//!   together.
//!
//! "Per origin-core" is requests per CPU-second the origin processes spent (user + system,
//! from /proc), so a figure does not depend on how many cores the origins had. The data
//! plane's own cost is spent in softirq, which the kernel charges to whatever task runs
//! (often wrk or an origin), so it shows in both figures. The report also gives the origin
//! threads' context switches per request, and the VIP runs' connection split.
//!
//! `BALANCE_BENCH_PERF=DIR` records each case system-wide (`perf record -a -g`, 4 s) as
//! `DIR/CASE-ROUND.data`, for `perf report --no-children --sort sym` side by side.
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
/// wrk's duration for every case of the rounds.
const DURATION: &str = "-d5s";
/// Default pairs of the pooled comparison (`BALANCE_BENCH_PAIRS`).
const PAIRS: usize = 48;
/// Default seconds of each run of a pair (`BALANCE_BENCH_PAIR_SECONDS`).
const PAIR_SECONDS: usize = 2;
/// Resamples of the bootstrap interval of the pooled ratio.
const BOOTSTRAP_RESAMPLES: usize = 10_000;
/// One wrk's threads and connections in the x4 cases (four of them: 48 connections).
const WRK_X4: [&str; 2] = ["-t48", "-c48"];
/// The connections of an x4 case (`WRK_X4`'s `-c`).
const X4_CONNECTIONS: u32 = 48;
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
    /// Established connections per origin port (:8081..), sampled in the middle of the run.
    conns: [u32; ORIGINS],
    /// Context switches of the origin processes' threads (voluntary + involuntary).
    switches: u64,
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
        conns: [0; ORIGINS],
        switches: 0,
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
        conns: std::array::from_fn(|i| a.conns[i] + b.conns[i]),
        switches: a.switches + b.switches,
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

/// Where the cases run, and what is recorded besides wrk's figures.
struct Setup<'a> {
    /// The client namespace (wrk).
    client_ns: &'a str,
    /// The edge namespace (origins), where connections are counted.
    edge_ns: &'a str,
    /// `BALANCE_BENCH_PERF`: a directory for a system-wide `perf record -g` of each case.
    perf_dir: Option<std::path::PathBuf>,
}

/// Context switches of every thread of process `pid` (0 if it is gone).
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// The connections a wrk command line asks for (its `-cN`), 0 if none.
fn connections_of(args: &[String]) -> u32 {
    args.iter()
        .find_map(|a| a.strip_prefix("-c")?.parse().ok())
        .unwrap_or(0)
}

/// Established TCP connections in namespace `ns` per local origin port (:8081..), from `ss`.
fn connections_per_origin(ns: &str) -> Result<[u32; ORIGINS]> {
    let output = Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-Htn", "state", "established"])
        .output()
        .context("running ss")?;
    Ok(count_local_ports(&String::from_utf8_lossy(&output.stdout)))
}

/// Counts `ss -Htn state established` lines per local origin port (:8081..).
fn count_local_ports(text: &str) -> [u32; ORIGINS] {
    let mut counts = [0; ORIGINS];
    for line in text.lines() {
        // Recv-Q Send-Q Local:Port Peer:Port
        let Some(local) = line.split_whitespace().nth(2) else {
            continue;
        };
        let Some(port) = local
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
        else {
            continue;
        };
        if let Some(i) = (0..ORIGINS).find(|&i| xtask::layout::origin_port(i) == port) {
            counts[i] += 1;
        }
    }
    counts
}

/// wrk processes run in parallel from the client namespace, one per URL in `urls`, each with
/// `args`; the result is their sum, with the CPU seconds the processes `pids` spent meanwhile
/// and the connections per origin in the middle of the run. With a perf directory, the run is
/// also recorded as `DIR/LABEL.data`.
fn measured(
    setup: &Setup,
    label: &str,
    runs: &[(String, Vec<String>)],
    pids: &[u32],
) -> Result<Load> {
    measured_for(setup, label, runs, pids, DURATION)
}

/// [`measured`] with wrk's `-dN` given.
fn measured_for(
    setup: &Setup,
    label: &str,
    runs: &[(String, Vec<String>)],
    pids: &[u32],
    duration: &str,
) -> Result<Load> {
    // The previous case's connections must be gone before this one's are counted (a closing
    // wrk's last connections were counted as this case's otherwise).
    test_kit::wait::try_wait_until(Duration::from_secs(10), || {
        connections_per_origin(setup.edge_ns).is_ok_and(|c| c.iter().sum::<u32>() == 0)
    });
    let cpu = || -> Result<f64> { pids.iter().map(|&p| tree_cpu_seconds(p)).sum() };
    let before = cpu()?;
    let switches_before = pids.iter().map(|&p| context_switches(p)).sum::<u64>();
    let children = runs
        .iter()
        .map(|(url, args)| {
            Command::new("ip")
                .args(["netns", "exec", setup.client_ns, "wrk"])
                .args(args)
                .arg(duration)
                .arg(url)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("running wrk (apt-get install wrk)")
        })
        .collect::<Result<Vec<_>>>()?;
    let perf = match &setup.perf_dir {
        Some(dir) => Some(
            Command::new("perf")
                .args(["record", "-a", "-g", "-q", "-o"])
                .arg(dir.join(format!("{label}.data")))
                .args(["--", "sleep", "4"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("running perf")?,
        ),
        None => None,
    };
    // The split once every connection is open (wrk opens them all at its start and keeps
    // them; under load that can take a while). If they never all show, the last count is kept
    // and the report shows a total below the connections asked for.
    let expected: u32 = runs.iter().map(|(_, args)| connections_of(args)).sum();
    let mut conns = [0; ORIGINS];
    test_kit::wait::try_wait_until(Duration::from_secs(4), || {
        conns = connections_per_origin(setup.edge_ns).unwrap_or(conns);
        conns.iter().sum::<u32>() == expected
    });
    if let Some(mut p) = perf {
        p.wait()?;
    }
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
    total.switches = pids.iter().map(|&p| context_switches(p)).sum::<u64>() - switches_before;
    total.conns = conns;
    Ok(total)
}

/// A VIP run, with how much the rotation counters moved during it.
fn measured_vip(
    stack: &Stack,
    setup: &Setup,
    label: &str,
    runs: &[(String, Vec<String>)],
    pids: &[u32],
    duration: &str,
) -> Result<(Load, [f64; 4])> {
    let before = rotation_counters(stack)?;
    let load = measured_for(setup, label, runs, pids, duration)?;
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
    matched4: Load,
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
        let wrk = |url: &String, args: &[&str]| -> (String, Vec<String>) {
            (url.clone(), args.iter().map(|a| a.to_string()).collect())
        };
        let vip_x4 = [wrk(&vip_url, &WRK_X4)];
        let vip_x1 = [wrk(&vip_url, &WRK_X1)];
        let direct_x1 = [wrk(&origin_urls[0], &WRK_X1)];
        // The x4 cases straight to the origins: the same single wrk as VIP x4, its threads
        // spread over the origin ports by a script, `split[i]` threads to origin i.
        let split_run =
            |name: &str, split: &[u32; ORIGINS]| -> Result<Vec<(String, Vec<String>)>> {
                let script = dir.path.join(format!("{name}.lua"));
                std::fs::write(&script, split_script(split))?;
                let mut run = wrk(&origin_urls[0], &WRK_X4);
                run.1
                    .extend(["-s".to_string(), script.to_string_lossy().into_owned()]);
                Ok(vec![run])
            };
        let direct_x4 = split_run("even", &[X4_CONNECTIONS / ORIGINS as u32; ORIGINS])?;
        let load_before = load_average();
        let mut results = Vec::new();
        let setup = Setup {
            client_ns: &client,
            edge_ns: &pair.edge.name,
            perf_dir: std::env::var_os("BALANCE_BENCH_PERF").map(Into::into),
        };
        for round in 0..rounds {
            let r = round + 1;
            let vip4 = || {
                measured_vip(
                    &stack,
                    &setup,
                    &format!("vip4-{r}"),
                    &vip_x4,
                    &pids,
                    DURATION,
                )
            };
            let matched4 = |split: &[u32; ORIGINS]| -> Result<Load> {
                let name = format!("matched4-{r}");
                measured(
                    &setup,
                    &name,
                    &split_run(&name, &matched_split(split))?,
                    &pids,
                )
            };
            let direct4 = || measured(&setup, &format!("direct4-{r}"), &direct_x4, &pids);
            let vip1 = || {
                measured_vip(
                    &stack,
                    &setup,
                    &format!("vip1-{r}"),
                    &vip_x1,
                    &pids,
                    DURATION,
                )
            };
            let direct1 = || measured(&setup, &format!("direct1-{r}"), &direct_x1, &pids[..1]);
            let ((v4, r4), m4, d4, (v1, r1), d1) = if round % 2 == 0 {
                let (v4, r4) = vip4()?;
                let m4 = matched4(&v4.conns)?;
                ((v4, r4), m4, direct4()?, vip1()?, direct1()?)
            } else {
                let d4 = direct4()?;
                let (v4, r4) = vip4()?;
                let m4 = matched4(&v4.conns)?;
                let d1 = direct1()?;
                ((v4, r4), m4, d4, vip1()?, d1)
            };
            eprintln!(
                "balance round {r}: VIP x4 / matched x4 per origin-core {:.3}x, raw {:.3}x; \
                 VIP x4 / direct x4 per origin-core {:.3}x, raw {:.3}x; \
                 VIP x1 / direct x1 per origin-core {:.3}x, raw {:.3}x",
                v4.per_core() / m4.per_core(),
                v4.requests_per_sec / m4.requests_per_sec,
                v4.per_core() / d4.per_core(),
                v4.requests_per_sec / d4.requests_per_sec,
                v1.per_core() / d1.per_core(),
                v1.requests_per_sec / d1.requests_per_sec,
            );
            eprintln!(
                "  connections per origin: VIP x4 {:?}, matched x4 {:?}, direct x4 {:?}; \
                 origin CPU s: {:.2} / {:.2} / {:.2}; switches per request: {:.3} / {:.3} / {:.3}",
                v4.conns,
                m4.conns,
                d4.conns,
                v4.cpu_seconds,
                m4.cpu_seconds,
                d4.cpu_seconds,
                v4.switches as f64 / v4.requests as f64,
                m4.switches as f64 / m4.requests as f64,
                d4.switches as f64 / d4.requests as f64,
            );
            results.push(Round {
                vip4: v4,
                matched4: m4,
                direct4: d4,
                vip1: v1,
                direct1: d1,
                rotation: std::array::from_fn(|i| r4[i] + r1[i]),
            });
        }
        let load_after = load_average();
        if rounds > 0 {
            report(out, rounds, &results, &load_before, &load_after);
        }
        // The pooled comparison: many short VIP x4 / matched x4 pairs (see `report_pairs`).
        let pairs = env_count("BALANCE_BENCH_PAIRS", PAIRS)?;
        let duration = format!(
            "-d{}s",
            env_count("BALANCE_BENCH_PAIR_SECONDS", PAIR_SECONDS)?
        );
        let load_before = load_average();
        let mut measured_pairs = Vec::new();
        for p in 1..=pairs {
            let (vip, rotation) = measured_vip(
                &stack,
                &setup,
                &format!("pair-vip4-{p}"),
                &vip_x4,
                &pids,
                &duration,
            )?;
            let name = format!("pair-matched4-{p}");
            let matched = measured_for(
                &setup,
                &name,
                &split_run(&name, &matched_split(&vip.conns))?,
                &pids,
                &duration,
            )?;
            eprintln!(
                "balance pair {p}: VIP x4 / matched x4 per origin-core {:.3}x ({} / {} requests, \
                 split {})",
                vip.per_core() / matched.per_core(),
                vip.requests,
                matched.requests,
                split(&vip.conns),
            );
            measured_pairs.push(PairRun {
                vip,
                matched,
                rotation,
            });
        }
        if pairs > 0 {
            report_pairs(
                out,
                &duration,
                &measured_pairs,
                &load_before,
                &load_average(),
            );
        }
        Ok(())
    })();
    stack.stop();
    result
}

/// A wrk script that sends thread `i` (in creation order) to the origin port the split gives
/// it: the first `split[0]` threads to origin o1, the next `split[1]` to o2, and so on. With
/// one connection per thread, that is the split's connections per origin.
fn split_script(split: &[u32; ORIGINS]) -> String {
    let ports: Vec<String> = split
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| {
            std::iter::repeat_n(xtask::layout::origin_port(i).to_string(), n as usize)
        })
        .collect();
    format!(
        "-- Generated by `cargo xtask bench balance`: thread i connects to ports[i].\n\
         local ports = {{{}}}\n\
         local n = 0\n\
         function setup(thread)\n  \
           n = n + 1\n  \
           thread.addr = wrk.lookup(wrk.host, tostring(ports[n]))[1]\n\
         end\n",
        ports.join(", ")
    )
}

/// The split a matched x4 run copies from its VIP x4 run's connections per origin: the same,
/// or, when the VIP run's connections did not all show, the even split; the round or pair is
/// then reported and left out of the ratio ([`complete`], [`PairRun::complete`]).
fn matched_split(vip_conns: &[u32; ORIGINS]) -> [u32; ORIGINS] {
    if vip_conns.iter().sum::<u32>() == X4_CONNECTIONS {
        *vip_conns
    } else {
        [X4_CONNECTIONS / ORIGINS as u32; ORIGINS]
    }
}

/// One pair of the pooled comparison: a VIP x4 run and the matched x4 run after it.
struct PairRun {
    vip: Load,
    matched: Load,
    /// How much the rotation counters moved during the VIP run.
    rotation: [f64; 4],
}

impl PairRun {
    /// As [`complete`] for a round: every VIP connection counted and matched.
    fn complete(&self) -> bool {
        matched_in_full(&self.vip, &self.matched)
    }
}

/// VIP x4 / matched x4 per origin-core over all of `pairs` together: the VIP runs' requests
/// per origin CPU-second, all requests over all CPU-seconds, against the matched runs'.
/// Pooling weighs each run by its length in requests and CPU, so a run that happened to batch
/// well (many requests a wakeup) does not count more than its share, as a ratio of two such
/// runs would.
fn pooled_ratio(pairs: &[(Load, Load)]) -> f64 {
    let per_core = |side: fn(&(Load, Load)) -> &Load| {
        let requests: u64 = pairs.iter().map(|p| side(p).requests).sum();
        let cpu: f64 = pairs.iter().map(|p| side(p).cpu_seconds).sum();
        requests as f64 / cpu.max(1e-9)
    };
    per_core(|p| &p.0) / per_core(|p| &p.1)
}

/// The 95% percentile-bootstrap interval of [`pooled_ratio`]: `resamples` times, as many pairs
/// as there are drawn with replacement (a fixed-seed xorshift, so a report can be recomputed),
/// and the 2.5th and 97.5th percentiles of the pooled ratios of the draws. Resampling pairs,
/// not runs, keeps each VIP run with the matched run that copied its split.
fn bootstrap_interval(pairs: &[(Load, Load)], resamples: usize, seed: u64) -> (f64, f64) {
    if pairs.is_empty() || resamples == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut state = seed.max(1);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut ratios: Vec<f64> = (0..resamples)
        .map(|_| {
            let draw: Vec<(Load, Load)> = (0..pairs.len())
                .map(|_| pairs[(next() % pairs.len() as u64) as usize])
                .collect();
            pooled_ratio(&draw)
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((q * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    (at(0.025), at(0.975))
}

/// Writes the markdown report of the pooled comparison.
fn report_pairs(
    out: &mut String,
    duration: &str,
    pairs: &[PairRun],
    load_before: &str,
    load_after: &str,
) {
    let complete: Vec<(Load, Load)> = pairs
        .iter()
        .filter(|p| p.complete())
        .map(|p| (p.vip, p.matched))
        .collect();
    let _ = writeln!(
        out,
        "### VIP x4 / matched x4, pooled over {n} short pairs\n\n\
         Machine: {machine}; load average {load_before} before, {load_after} after. {n} pairs, \
         each a VIP x4 run (`wrk {x4} {duration}`) and the matched x4 run after it (the same \
         wrk straight to the origin ports, as many connections to each as the VIP run had \
         there). Why pairs this short, and pooled: a wrk run's requests per origin CPU-second \
         depend on how its 48 threads and the four origins happen to interleave, which is set \
         anew at each start (5 s runs of the same case, twice in a row, spread by +-25%). Many short starts average that out; pooling all runs' requests over all their \
         CPU-seconds is the ratio, and the 95% interval is a bootstrap over the pairs \
         ({BOOTSTRAP_RESAMPLES} resamples).\n",
        n = pairs.len(),
        machine = super::util::machine(),
        x4 = WRK_X4.join(" "),
    );
    let per_pair: Vec<f64> = complete
        .iter()
        .map(|(v, m)| v.per_core() / m.per_core())
        .collect();
    let errors: u64 = pairs
        .iter()
        .map(|p| p.vip.non_2xx + p.vip.socket_errors + p.matched.non_2xx + p.matched.socket_errors)
        .sum();
    let moved = pairs
        .iter()
        .filter(|p| p.rotation.iter().any(|d| *d != 0.0))
        .count();
    if complete.is_empty() {
        let _ = writeln!(
            out,
            "No complete pair (every VIP split short of {X4_CONNECTIONS}).\n"
        );
        return;
    }
    let (lo, hi) = bootstrap_interval(&complete, BOOTSTRAP_RESAMPLES, 0x5eed_ba1a);
    let sum = |f: fn(&(Load, Load)) -> f64| complete.iter().map(f).sum::<f64>();
    let _ = writeln!(
        out,
        "| figure | value |\n|---|---|\n\
         | VIP x4 / matched x4 per origin-core, pooled (target >= 0.97x) | **{:.3}x** (95% interval {lo:.3}x..{hi:.3}x) |\n\
         | the same, per pair: median (range) | {:.3}x ({}) |\n\
         | requests per origin CPU-second, pooled: VIP x4 / matched x4 | {:.0} / {:.0} |\n\
         | complete pairs (VIP split counted in full and matched) | {} of {} |\n\
         | errors (non-2xx + socket, all runs) | {errors} |\n\
         | pairs whose VIP run moved a rotation counter | {moved} |\n",
        pooled_ratio(&complete),
        median_f64(per_pair.clone()),
        range(&per_pair),
        sum(|p| p.0.requests as f64) / sum(|p| p.0.cpu_seconds),
        sum(|p| p.1.requests as f64) / sum(|p| p.1.cpu_seconds),
        complete.len(),
        pairs.len(),
    );
}

/// Whether a round's x4 comparison holds: every VIP x4 connection was counted, and matched
/// x4 had the same connections per origin.
fn complete(r: &Round) -> bool {
    matched_in_full(&r.vip4, &r.matched4)
}

/// Every connection of the VIP x4 run `vip` was counted, and `matched` had the same ones per
/// origin: the comparison of the two holds.
fn matched_in_full(vip: &Load, matched: &Load) -> bool {
    vip.conns.iter().sum::<u32>() == X4_CONNECTIONS && matched.conns == vip.conns
}

/// `a/b/c/d` of a connection split.
fn split(c: &[u32; ORIGINS]) -> String {
    c.iter().map(u32::to_string).collect::<Vec<_>>().join("/")
}

/// Context switches of the origin threads per request.
fn switches_per_request(l: &Load) -> f64 {
    l.switches as f64 / l.requests.max(1) as f64
}

/// Writes the markdown report of `results`.
fn report(out: &mut String, rounds: usize, results: &[Round], load_before: &str, load_after: &str) {
    let _ = writeln!(
        out,
        "Machine: {}; load average {load_before} before, {load_after} after. Stack from \
         target/release in namespaces (native XDP on a veth), {ORIGINS} origins, `--policy \
         balance`; wrk `{DURATION}` from the client namespace for `{PLAYLIST}`. {rounds} rounds; \
         odd rounds run VIP x4, matched x4, direct x4, VIP x1, direct x1, even rounds direct x4, \
         VIP x4, matched x4, direct x1, VIP x1 (matched x4 needs its VIP run's split). Cases: \
         **VIP x4** = one `wrk {x4}` to the VIP (:8080, steered over the four origins; one \
         connection per wrk thread); **matched x4** = the same wrk with a script that sends its \
         threads straight to the origin ports (:8081..:8084, passed untouched), as many to each \
         origin as the VIP x4 run before it had there; **direct x4** = the same with 12 each; \
         **VIP x1** = one `wrk {x1}` to the VIP; **direct x1** = the same to origin o1 alone. \
         Per origin-core = requests / CPU-seconds of the origin processes (all four, or o1 alone \
         for direct x1).\n",
        super::util::machine(),
        x4 = WRK_X4.join(" "),
        x1 = WRK_X1.join(" "),
    );
    let _ = writeln!(
        out,
        "| round | VIP x4 req/s | VIP x4 origin CPU s | VIP x4 split o1/o2/o3/o4 | matched x4 req/s | \
         matched x4 origin CPU s | direct x4 req/s | direct x4 origin CPU s | VIP x1 req/s | \
         VIP x1 origin CPU s | direct x1 req/s | direct x1 origin CPU s | origin context \
         switches per request (VIP x4 / matched x4 / direct x4) | errors non-2xx+socket (VIP \
         x4 / matched x4 / direct x4 / VIP x1 / direct x1) | rotation counters moved during \
         VIP runs |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let errors = |l: &Load| format!("{}+{}", l.non_2xx, l.socket_errors);
    for (i, r) in results.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.2} | {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | \
             {:.2} | {:.3} / {:.3} / {:.3} | {} / {} / {} / {} / {} | {} |",
            i + 1,
            r.vip4.requests_per_sec,
            r.vip4.cpu_seconds,
            split(&r.vip4.conns),
            r.matched4.requests_per_sec,
            r.matched4.cpu_seconds,
            r.direct4.requests_per_sec,
            r.direct4.cpu_seconds,
            r.vip1.requests_per_sec,
            r.vip1.cpu_seconds,
            r.direct1.requests_per_sec,
            r.direct1.cpu_seconds,
            switches_per_request(&r.vip4),
            switches_per_request(&r.matched4),
            switches_per_request(&r.direct4),
            errors(&r.vip4),
            errors(&r.matched4),
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
            "matched x4",
            col(|r| r.matched4.requests_per_sec),
            col(|r| r.matched4.per_core()),
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
    // Rounds whose VIP split was not fully counted have no matched case (see `complete`).
    let matched: Vec<&Round> = results.iter().filter(|r| complete(r)).collect();
    let matched_col = |f: fn(&Round) -> f64| matched.iter().map(|r| f(r)).collect::<Vec<f64>>();
    for (name, pc, raw, what) in [
        (
            "VIP x4 / matched x4",
            matched_col(|r| r.vip4.per_core() / r.matched4.per_core()),
            matched_col(|r| r.vip4.requests_per_sec / r.matched4.requests_per_sec),
            "the data plane alone: same origin processes, same connections per origin, one \
             connection per client thread; only the path differs (target >= 0.97x)",
        ),
        (
            "VIP x4 / direct x4",
            col(|r| r.vip4.per_core() / r.direct4.per_core()),
            col(|r| r.vip4.requests_per_sec / r.direct4.requests_per_sec),
            "the data plane plus Maglev's uneven split of 48 connections against 12 each",
        ),
        (
            "VIP x1 / direct x1",
            col(|r| r.vip1.per_core() / r.direct1.per_core()),
            col(|r| r.vip1.requests_per_sec / r.direct1.requests_per_sec),
            "the data plane plus four origin processes sharing the cores against one",
        ),
    ] {
        if pc.is_empty() {
            let _ = writeln!(out, "| {name} | no complete round | | {what} |");
            continue;
        }
        let _ = writeln!(
            out,
            "| {name} | {:.3}x ({}) | {:.3}x ({}) | {what} |",
            median_f64(pc.clone()),
            range(&pc),
            median_f64(raw.clone()),
            range(&raw)
        );
    }
    if matched.len() < results.len() {
        let _ = writeln!(
            out,
            "\nVIP x4 / matched x4 leaves out {} of {} rounds: their VIP x4 split was not counted \
             in full (its column sums to less than {X4_CONNECTIONS}), or matched x4 counted \
             other connections per origin.",
            results.len() - matched.len(),
            results.len()
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
    fn counts_established_connections_per_origin_port_only() {
        let ss = "0      0      10.77.0.2:8081    10.77.0.1:40000\n\
            0      0      10.77.0.2:8081    10.77.0.1:40002\n\
            0      0      10.77.0.2:8084    10.77.0.1:40004\n\
            0      0      10.77.0.2:9090    10.77.0.1:40006\n\
            0      0      [::1]:8082        [::1]:40008\n\
            garbage\n";
        assert_eq!(count_local_ports(ss), [2, 1, 0, 1]);
    }

    #[test]
    fn split_script_sends_each_thread_to_its_origin_port() {
        let script = split_script(&[2, 0, 1, 1]);
        assert!(
            script.contains("local ports = {8081, 8081, 8083, 8084}"),
            "{script}"
        );
        assert!(script.contains("function setup(thread)"), "{script}");
        assert!(script.contains("thread.addr = wrk.lookup(wrk.host, tostring(ports[n]))[1]"));
    }

    #[test]
    fn a_round_is_complete_only_with_every_vip_connection_matched() {
        let load = |conns| Load {
            conns,
            ..Load::default()
        };
        let round = |vip, matched| Round {
            vip4: load(vip),
            matched4: load(matched),
            direct4: Load::default(),
            vip1: Load::default(),
            direct1: Load::default(),
            rotation: [0.0; 4],
        };
        assert!(complete(&round([18, 9, 11, 10], [18, 9, 11, 10])));
        assert!(!complete(&round([4, 3, 3, 3], [4, 3, 3, 3])));
        assert!(!complete(&round([18, 9, 11, 10], [12, 12, 12, 12])));
    }

    #[test]
    fn reads_the_connection_count_of_a_wrk_command_line() {
        let args = ["-t7".to_string(), "-c7".to_string()];
        assert_eq!(connections_of(&args), 7);
        assert_eq!(connections_of(&["-t2".to_string()]), 0);
    }

    /// A pair of loads with these requests and CPU-seconds.
    fn pair(vip: (u64, f64), matched: (u64, f64)) -> (Load, Load) {
        let load = |(requests, cpu_seconds)| Load {
            requests,
            cpu_seconds,
            ..Load::default()
        };
        (load(vip), load(matched))
    }

    #[test]
    fn pooled_ratio_weighs_runs_by_their_requests_and_cpu() {
        // Per pair 2.0x and 0.5x (median 1.25x); pooled, 1,100 requests over 2 s against
        // 1,100 over 4 s: 2x.
        let pairs = [pair((1000, 1.0), (500, 1.0)), pair((100, 1.0), (600, 3.0))];
        let pooled = pooled_ratio(&pairs);
        let expected = (1100.0 / 2.0) / (1100.0 / 4.0);
        assert!((pooled - expected).abs() < 1e-12, "{pooled}");
        // The same loads on both sides: exactly 1.
        assert_eq!(pooled_ratio(&[pair((700, 1.5), (700, 1.5))]), 1.0);
    }

    #[test]
    fn the_bootstrap_interval_holds_the_pooled_ratio_and_narrows_with_agreement() {
        // Pairs that all say 0.9x: every resample says 0.9x.
        let same: Vec<(Load, Load)> = (0..20).map(|_| pair((900, 1.0), (1000, 1.0))).collect();
        let (lo, hi) = bootstrap_interval(&same, 1000, 7);
        assert!(
            (lo - 0.9).abs() < 1e-12 && (hi - 0.9).abs() < 1e-12,
            "{lo} {hi}"
        );
        // Pairs spread 0.8x..1.2x: the interval holds the pooled ratio, is wider than nothing
        // and within the pairs' own range, and is the same for the same seed.
        let spread: Vec<(Load, Load)> = (0..20)
            .map(|i| pair((800 + 20 * i, 1.0), (1000, 1.0)))
            .collect();
        let pooled = pooled_ratio(&spread);
        let (lo, hi) = bootstrap_interval(&spread, 2000, 7);
        assert!(lo < pooled && pooled < hi, "{lo} {pooled} {hi}");
        assert!(lo >= 0.8 && hi <= 1.2, "{lo} {hi}");
        assert_eq!(bootstrap_interval(&spread, 2000, 7), (lo, hi));
        assert!(bootstrap_interval(&[], 100, 7).0.is_nan());
    }

    #[test]
    fn a_matched_run_copies_a_complete_vip_split_only() {
        assert_eq!(matched_split(&[18, 9, 11, 10]), [18, 9, 11, 10]);
        assert_eq!(matched_split(&[4, 3, 3, 3]), [12; 4]);
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

//! `cargo xtask bench balance`: wrk through the VIP in balance mode over four origins against
//! wrk straight to one origin, per origin-core.
//!
//! Setup: the stack of `cargo xtask run --origins 4 --policy balance` from `target/release`
//! in an edge network namespace (native XDP on a veth), wrk in a client namespace. Both cases
//! take the same path up to the edge's veth: the VIP case asks `10.77.0.2:8080`, which the
//! data plane steers (Maglev table, conntrack, port rewrite both ways) over the four
//! origins; the direct case asks origin 1 on `10.77.0.2:8081`, which the data plane passes
//! untouched. The request is the live playlist (small: what costs is per request and per
//! packet, which is where steering costs too). Rounds alternate which case goes first; each
//! runs `wrk -t2 -c50 -d5s`.
//!
//! "Per origin-core" is requests per CPU-second the origin processes spent (user + system,
//! from /proc), so a figure does not depend on how many cores the origins had: the direct
//! case has one origin, the VIP case four, and on a machine with fewer cores than origins the
//! four share them. The ratio (VIP / direct) says whether steering makes an origin serve fewer
//! requests per core. The data plane's own cost is spent in softirq, which the kernel charges
//! to whatever task runs (often wrk), so it is visible in the raw throughput ratio, reported
//! too, rather than in the per-origin-core one. `BALANCE_BENCH_ROUNDS` (default 5).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use test_kit::netns::{BpfFs, Pair};
use xtask::stack::{Stack, StackConfig};

use super::origin::{WrkResult, parse_wrk, tree_cpu_seconds};
use super::util::{TempDir, env_count, median_f64};

/// Origins of the balanced stack.
const ORIGINS: usize = 4;
/// wrk's threads, connections and duration, as in `bench origin`.
const WRK_ARGS: [&str; 3] = ["-t2", "-c50", "-d5s"];
/// The edge address (the VIP's and the origins').
const EDGE: &str = "10.77.0.2";
/// The request.
const PLAYLIST: &str = "/hls/demo/index.m3u8";

/// One wrk run from the client namespace against `url`, with the CPU seconds the processes
/// `pids` spent meanwhile.
fn measured(client_ns: &str, url: &str, pids: &[u32]) -> Result<WrkResult> {
    let cpu = || -> Result<f64> { pids.iter().map(|&p| tree_cpu_seconds(p)).sum() };
    let before = cpu()?;
    let output = Command::new("ip")
        .args(["netns", "exec", client_ns, "wrk"])
        .args(WRK_ARGS)
        .arg(url)
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut r = parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))?;
    r.cpu_seconds = cpu()? - before;
    Ok(r)
}

/// Requests per origin CPU-second.
fn per_core(r: &WrkResult) -> f64 {
    r.requests as f64 / r.cpu_seconds.max(1e-9)
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
        if !test_kit::wait::try_wait_until(Duration::from_secs(60), || {
            stack
                .healthz()
                .is_ok_and(|h| names.iter().all(|n| h["origins"][n]["in_rotation"] == true))
        }) {
            bail!("the four origins did not all come into rotation");
        }
        let pids: Vec<u32> = names
            .iter()
            .map(|n| {
                stack
                    .pid(&format!("origin-{n}"))
                    .with_context(|| format!("origin-{n} not running"))
            })
            .collect::<Result<_>>()?;
        let client = pair.client.name.clone();
        let vip_url = format!("http://{EDGE}:{}{PLAYLIST}", xtask::layout::VIP_PORT);
        let direct_url = format!("http://{EDGE}:{}{PLAYLIST}", xtask::layout::origin_port(0));
        let (mut per_core_ratio, mut raw_ratio) = (Vec::new(), Vec::new());
        let _ = writeln!(
            out,
            "Machine: {}. Stack from target/release in namespaces (native XDP on a veth), {ORIGINS} \
             origins, `--policy balance`; `wrk {}` from the client namespace for `{PLAYLIST}`, \
             through the VIP (:8080, steered over the four) and straight to origin o1 (:8081, \
             passed untouched); {rounds} rounds alternating which goes first. Per origin-core = \
             requests / CPU-seconds of the origin processes.\n",
            super::util::machine(),
            WRK_ARGS.join(" ")
        );
        let _ = writeln!(
            out,
            "| round | VIP req/s | VIP origin CPU s | direct req/s | direct origin CPU s | per origin-core VIP/direct | raw VIP/direct | errors |\n|---|---|---|---|---|---|---|---|"
        );
        for round in 0..rounds {
            let (vip, direct) = if round % 2 == 0 {
                let v = measured(&client, &vip_url, &pids)?;
                (v, measured(&client, &direct_url, &pids[..1])?)
            } else {
                let d = measured(&client, &direct_url, &pids[..1])?;
                (measured(&client, &vip_url, &pids)?, d)
            };
            let pc = per_core(&vip) / per_core(&direct);
            let raw = vip.requests_per_sec / direct.requests_per_sec;
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.2} | {:.0} | {:.2} | {pc:.3}x | {raw:.3}x | {} / {} |",
                round + 1,
                vip.requests_per_sec,
                vip.cpu_seconds,
                direct.requests_per_sec,
                direct.cpu_seconds,
                vip.errors,
                direct.errors
            );
            eprintln!(
                "balance round {}: per origin-core {pc:.3}x, raw {raw:.3}x",
                round + 1
            );
            per_core_ratio.push(pc);
            raw_ratio.push(raw);
        }
        let range = |v: &[f64]| {
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{min:.3}x..{max:.3}x")
        };
        let _ = writeln!(
            out,
            "\nPer origin-core, VIP (balance over 4) / direct (1 origin): median {:.3}x, range {} \
             (target >= 0.97x). Raw throughput VIP / direct: median {:.3}x, range {}.\n",
            median_f64(per_core_ratio.clone()),
            range(&per_core_ratio),
            median_f64(raw_ratio.clone()),
            range(&raw_ratio)
        );
        Ok(())
    })();
    stack.stop();
    result
}

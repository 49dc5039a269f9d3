//! `cargo xtask bench dsr`: direct server return against a proxy, in the multi-host lab
//! (`xtask::lab`: a router doing ECMP over two edges, two origin hosts, a client).
//!
//! Three ways of fetching the same large file from the client namespace, interleaved over
//! several rounds (the order rotates each round):
//! - **direct**: straight to an origin host (through the router, no edge);
//! - **dsr**: through the VIP: an edge's XDP program encapsulates each request packet to an
//!   origin host, which answers the viewer directly;
//! - **haproxy**: through Debian's HAProxy (HTTP mode, round robin over the same two origin
//!   hosts) in edge1's namespace: every response byte crosses the edge.
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
//! (`/proc/stat`: every namespace, and any other job on the machine) is reported too.

use std::{
    fmt::Write as _,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::util;
use xtask::lab::{EDGES, Lab, LabConfig, ORIGIN_HOSTS, VIP, VIP_PORT};

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
}

impl Sample {
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
}

/// Runs the benchmark and writes its report into `out`.
pub fn run(ws: &Path, out: &mut String) -> Result<()> {
    let rounds = util::env_count("DSR_BENCH_ROUNDS", 5)?;
    let parallel = util::env_count("DSR_BENCH_PARALLEL", 8)?;
    let fetches = util::env_count("DSR_BENCH_FETCHES", 4)?;
    let mib = util::env_count("DSR_BENCH_FILE_MIB", 32)?;
    let bin_dir = std::env::var_os("DSR_BENCH_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target/debug"));
    let haproxy = which("haproxy").context("haproxy not found: run scripts/setup")?;
    let stats_before = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")?;
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
    let result = measure(&bin_dir, &haproxy, rounds, parallel, fetches, mib);
    // Restore the setting whatever happened (it costs every BPF program two clock reads).
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_before.trim());
    let (samples, load) = result?;
    report(
        out, &bin_dir, &samples, rounds, parallel, fetches, mib, &load,
    )
}

/// Starts the lab and HAProxy and takes `rounds` interleaved rounds of every path.
fn measure(
    bin_dir: &Path,
    haproxy: &Path,
    rounds: usize,
    parallel: usize,
    fetches: usize,
    mib: usize,
) -> Result<(Vec<(Route, Sample)>, String)> {
    let run_dir = PathBuf::from(format!("/run/hls-edge-dsrbench-{}", std::process::id()));
    let _cleanup = RemoveDir(run_dir.clone());
    let lab = Lab::start(LabConfig {
        bin_dir: bin_dir.to_path_buf(),
        run_dir: run_dir.clone(),
        stream: "demo".into(),
        video: (320, 240, 10),
        native: false,
    })
    .context("starting the lab")?;
    lab.wait_for(
        "the playlist through the VIP",
        Duration::from_secs(60),
        |lab| Ok(matches!(lab.get(PLAYLIST), Ok((200, b)) if b.starts_with(b"#EXTM3U"))),
    )?;
    // The same file on both origin hosts.
    let size = mib << 20;
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
            .stderr(util::log_file(&run_dir, "haproxy")?)
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
            let (e0, m0) = (edge()?, machine_busy()?);
            let start = Instant::now();
            let bytes = download(&lab, &url(p), parallel, fetches)?;
            let secs = start.elapsed().as_secs_f64();
            let (e1, m1) = (edge()?, machine_busy()?);
            let want = (parallel * fetches * size) as u64;
            if bytes != want {
                bail!("{}: received {bytes} bytes, expected {want}", p.name());
            }
            let s = Sample {
                bytes,
                secs,
                edge_cpu: e1 - e0,
                machine_cpu: m1 - m0,
            };
            println!(
                "round {round} {}: {:.2} Gbit/s, edge CPU {:.3} s, machine CPU {:.3} s",
                p.name(),
                s.gbps(),
                s.edge_cpu,
                s.machine_cpu
            );
            samples.push((p, s));
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg")?;
    Ok((samples, load.trim().to_string()))
}

/// Runs `parallel` downloaders in the client namespace, each fetching `url` `fetches` times
/// on fresh connections; the response bytes received.
fn download(lab: &Lab, url: &str, parallel: usize, fetches: usize) -> Result<u64> {
    let script = format!(
        "for w in $(seq {parallel}); do (for f in $(seq {fetches}); do \
         curl -sf --max-time 120 -o /dev/null -w '%{{size_download}}\\n' {url} || echo fail; done) & done; wait"
    );
    let out = lab.run_in("client", &["sh", "-c", &script])?;
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

#[allow(clippy::too_many_arguments)]
fn report(
    out: &mut String,
    bin_dir: &Path,
    samples: &[(Route, Sample)],
    rounds: usize,
    parallel: usize,
    fetches: usize,
    mib: usize,
    load: &str,
) -> Result<()> {
    writeln!(
        out,
        "Machine: {}; load average after the run: {load}. Lab binaries: {}. \
         {rounds} interleaved rounds; each measurement: {parallel} parallel downloaders x \
         {fetches} fetches of a {mib} MiB file, fresh connection per fetch (curl in the client \
         namespace). XDP in generic mode (veth).\n",
        util::machine(),
        bin_dir.display()
    )?;
    writeln!(
        out,
        "| path | throughput Gbit/s median (range) | edge CPU-s per Gbit median (range) | machine CPU-s per Gbit median (range) |"
    )?;
    writeln!(out, "|---|---|---|---|")?;
    for p in Route::ALL {
        let (g, glo, ghi) = stats(samples, p, Sample::gbps);
        let (e, elo, ehi) = stats(samples, p, Sample::edge_per_gbps);
        let (m, mlo, mhi) = stats(samples, p, Sample::machine_per_gbps);
        writeln!(
            out,
            "| {} | {g:.2} ({glo:.2}-{ghi:.2}) | {} | {m:.3} ({mlo:.3}-{mhi:.3}) |",
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
    writeln!(
        out,
        "\nWhat this counts: dsr edge CPU = both edges' switcher-ctl CPU time (user+system) plus \
         the run time of the programs pinned under their pin roots (bpftool run_time_ns, \
         kernel.bpf_stats_enabled=1); haproxy edge CPU = the haproxy process's user+system time. \
         Neither counts softirq work outside those accounts (dsr: generic-XDP skb handling and \
         forwarding of the encapsulated packets; haproxy: TCP receive processing in softirq). \
         Machine CPU is the whole machine's /proc/stat (client, router, origins, edges, and any other job on the machine), so under outside load it says little. On a 2-CPU VM shared \
         with other jobs, the client, the origins and the edge compete for the same two CPUs, so \
         throughput is bound by the machine, not the edge, and absolute figures move with the \
         other load; the per-round ratios are the figures to read."
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

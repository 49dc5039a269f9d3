//! `cargo xtask bench failover` (issue 3): how long viewers are without a playlist when the
//! primary origin dies. 20 runs per configuration: `kill -9` the primary origin while a client
//! polls the VIP; the figure is the time from the kill to the first 200 served by the backup
//! through the VIP. p50/p99/max for the defaults (0.2 s interval, 2 windows) and for the
//! seed's cadence (5 s interval, 3 windows).
//!
//! Assumptions (the whole stack, but no packager or ingest):
//! * Built binaries: `target/release/origin` and `target/release/switcher-ctl` (override
//!   with `FAILOVER_BENCH_ORIGIN_BIN` / `FAILOVER_BENCH_SWITCHER_BIN`). Runs as root: the
//!   switcher attaches XDP (generic) to `lo`.
//! * No packager: this bench writes both origins' live playlists itself and refreshes them
//!   every second (atomic write + rename, PROGRAM-DATE-TIME from the wall clock), so both are
//!   always fresh; the primary's carries `## origin=primary`, the backup's `## origin=backup`
//!   (comment lines, ignored by players and by the switcher's parser), which is how the
//!   client tells who answered through the VIP.
//! * Free loopback ports are picked for the VIP, both origins and the admin server; pins go
//!   under `/sys/fs/bpf/switcher-bench-<pid>` (bpffs mounted by the loader if needed), and
//!   `switcher-ctl detach` removes them at the end, errors included.
//! * The client opens a fresh connection per poll (every `POLL_INTERVAL`), as a player that
//!   lost its connection does; the resolution of the figure is that interval.
//! * Between runs the primary is restarted and the bench waits for the switchback (the
//!   hysteresis of good windows: ~15 s per run with the seed's cadence) so each run starts
//!   from the primary.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::util::TempDir;
use super::util::free_port;
use anyhow::{Context, Result, bail};

/// Kills per configuration.
const RUNS: usize = 20;
/// How often the client polls the VIP (the resolution of the measurement).
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Socket timeouts of one client poll.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest a failover may take before the run counts as failed (seed: 3 x 5 s + a probe).
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);
/// Longest to wait for the stack to be ready or to switch back.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the playlists are rewritten (segment target duration is 2 s; 1 s keeps the age
/// well under any threshold).
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Segment duration and window of the generated playlists (the contract in the README).
const TARGET_SECONDS: u64 = 2;
const WINDOW: u64 = 6;
/// Stream name in the URLs.
const STREAM: &str = "bench";
/// How long a process gets after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// One configuration under test: name and the extra `switcher-ctl run` flags.
struct Setup {
    name: &'static str,
    flags: &'static [&'static str],
}

const SETUPS: [Setup; 2] = [
    Setup {
        name: "defaults (0.2 s interval, 2 windows)",
        flags: &[],
    },
    Setup {
        name: "seed cadence (5 s interval, 3 windows)",
        flags: &["--interval", "5", "--required-windows", "3"],
    },
];

/// Runs the benchmark and appends its markdown report to `out`.
pub fn run(workspace: &Path, out: &mut String) -> Result<()> {
    let bin = |var: &str, name: &str| -> Result<PathBuf> {
        let p = std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target/release").join(name));
        if !p.is_file() {
            bail!(
                "{} not found: run `cargo build --release -p {name}` first",
                p.display()
            );
        }
        Ok(p)
    };
    let origin_bin = bin("FAILOVER_BENCH_ORIGIN_BIN", "origin")?;
    let switcher_bin = bin("FAILOVER_BENCH_SWITCHER_BIN", "switcher-ctl")?;

    let dir = TempDir::new("failover-bench")?;
    let roots = [dir.path.join("primary"), dir.path.join("backup")];
    let labels = ["primary", "backup"];
    for root in &roots {
        std::fs::create_dir_all(root.join(STREAM)).context("creating origin roots")?;
    }
    // The refresher keeps both playlists fresh for the whole bench.
    let stop_refresh = Arc::new(AtomicBool::new(false));
    let refresher = {
        let (roots, stop) = (roots.clone(), stop_refresh.clone());
        std::thread::spawn(move || -> Result<()> {
            while !stop.load(Ordering::SeqCst) {
                for (root, label) in roots.iter().zip(labels) {
                    write_playlist(&root.join(STREAM), label)?;
                }
                std::thread::sleep(REFRESH_INTERVAL);
            }
            Ok(())
        })
    };
    let result = run_setups(&origin_bin, &switcher_bin, &roots, out);
    stop_refresh.store(true, Ordering::SeqCst);
    let refreshed = refresher
        .join()
        .map_err(|_| anyhow::anyhow!("playlist refresher panicked"))?;
    result.and(refreshed)
}

fn run_setups(
    origin_bin: &Path,
    switcher_bin: &Path,
    roots: &[PathBuf; 2],
    out: &mut String,
) -> Result<()> {
    let _ = writeln!(
        out,
        "### Failover: kill -9 of the primary origin to first 200 from the backup via the VIP\n"
    );
    let _ = writeln!(
        out,
        "| configuration | runs | p50 | p99 | max |\n|---|---|---|---|---|"
    );
    for setup in &SETUPS {
        let mut samples = measure(origin_bin, switcher_bin, roots, setup)
            .with_context(|| format!("setup {}", setup.name))?;
        samples.sort();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            setup.name,
            samples.len(),
            ms(percentile(&samples, 50)),
            ms(percentile(&samples, 99)),
            ms(*samples.last().unwrap_or(&Duration::ZERO))
        );
    }
    let _ = writeln!(
        out,
        "\nClient poll every {} ms over a fresh connection; {RUNS} runs each.",
        POLL_INTERVAL.as_millis()
    );
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn measure(
    origin_bin: &Path,
    switcher_bin: &Path,
    roots: &[PathBuf; 2],
    setup: &Setup,
) -> Result<Vec<Duration>> {
    let [vip, primary_port, backup_port, admin] =
        [free_port()?, free_port()?, free_port()?, free_port()?];
    let vip = SocketAddr::from(([127, 0, 0, 1], vip));
    let admin = SocketAddr::from(([127, 0, 0, 1], admin));
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/switcher-bench-{}", std::process::id()));
    let origin = |root: &Path, port: u16| -> Result<Proc> {
        Proc::spawn(
            Command::new(origin_bin)
                .arg("--root")
                .arg(root)
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}")),
            "origin",
        )
    };
    let mut primary = origin(&roots[0], primary_port)?;
    let _backup = origin(&roots[1], backup_port)?;
    // Whatever happens below, the pins go; declared before the switcher so it drops after it
    // (guards drop in reverse order): detach once the switcher has stopped.
    let _detach = Detach {
        bin: switcher_bin.to_path_buf(),
        pin_root: pin_root.clone(),
    };
    let _switcher = Proc::spawn(
        Command::new(switcher_bin)
            .arg("run")
            .args(["--iface", "lo", "--stream", STREAM])
            .arg("--vip")
            .arg(vip.to_string())
            .arg("--primary")
            .arg(format!("http://127.0.0.1:{primary_port}"))
            .arg("--backup")
            .arg(format!("http://127.0.0.1:{backup_port}"))
            .arg("--admin")
            .arg(admin.to_string())
            .arg("--pin-root")
            .arg(&pin_root)
            .args(setup.flags),
        "switcher-ctl",
    )?;
    let path = format!("/hls/{STREAM}/index.m3u8");

    let mut samples = Vec::with_capacity(RUNS);
    for run in 0..RUNS {
        wait_until(
            READY_TIMEOUT,
            "primary active and serving via the VIP",
            || {
                healthz_active(admin).as_deref() == Some("primary")
                    && served_by(vip, &path) == Some("primary")
            },
        )
        .with_context(|| format!("run {run}"))?;
        let killed = Instant::now();
        primary.kill9();
        let took = loop {
            if served_by(vip, &path) == Some("backup") {
                break killed.elapsed();
            }
            if killed.elapsed() > FAILOVER_LIMIT {
                bail!(
                    "run {run}: no 200 from the backup through the VIP within {FAILOVER_LIMIT:?}"
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        };
        samples.push(took);
        primary = origin(&roots[0], primary_port)?;
    }
    Ok(samples)
}

/// One GET through `addr` on a fresh connection; which origin answered 200, if any.
fn served_by(addr: SocketAddr, path: &str) -> Option<&'static str> {
    let (status, body) = get(addr, path)?;
    if status != 200 {
        return None;
    }
    ["primary", "backup"]
        .into_iter()
        .find(|o| body.contains(&format!("## origin={o}")))
}

/// `"active"` of a running switcher's /healthz.
fn healthz_active(admin: SocketAddr) -> Option<String> {
    let (_, body) = get(admin, "/healthz")?;
    // A tiny extraction keeps xtask free of a JSON dependency: `"active": "primary"`.
    let rest = body.split("\"active\"").nth(1)?;
    let value = rest.split('"').nth(1)?;
    Some(value.to_string())
}

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT).ok()?;
    s.set_read_timeout(Some(CLIENT_TIMEOUT)).ok()?;
    s.set_write_timeout(Some(CLIENT_TIMEOUT)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text.into_owned()))
}

fn wait_until(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(POLL_INTERVAL * 10);
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// Writes a fresh live playlist (newest segment ending now) atomically into `dir`.
fn write_playlist(dir: &Path, label: &str) -> Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs();
    // Time-based MSN, as our packagers number segments.
    let newest = now / TARGET_SECONDS;
    let first = newest + 1 - WINDOW;
    let mut s = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{TARGET_SECONDS}\n#EXT-X-MEDIA-SEQUENCE:{first}\n## origin={label}\n"
    );
    for msn in first..=newest {
        let start = msn * TARGET_SECONDS;
        let _ = write!(
            s,
            "#EXT-X-PROGRAM-DATE-TIME:{}\n#EXTINF:{TARGET_SECONDS}.000,\nseg{msn}.ts\n",
            rfc3339(start)
        );
    }
    let tmp = dir.join(".index.m3u8.tmp");
    std::fs::write(&tmp, s).context("writing playlist")?;
    std::fs::rename(&tmp, dir.join("index.m3u8")).context("renaming playlist")?;
    Ok(())
}

/// UTC RFC 3339 for Unix seconds, std only (civil-from-days, H. Hinnant).
fn rfc3339(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    child: Child,
    killed: bool,
}

impl Proc {
    fn spawn(cmd: &mut Command, name: &str) -> Result<Self> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            child,
            killed: false,
        })
    }

    /// `kill -9`: the failure under test.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.killed = true;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.killed {
            return;
        }
        // SIGTERM first so switcher-ctl and the origin shut down cleanly; `kill` keeps this std-only.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `switcher-ctl detach` for the bench's pin root when dropped.
struct Detach {
    bin: PathBuf,
    pin_root: PathBuf,
}

impl Drop for Detach {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .arg("detach")
            .arg("--pin-root")
            .arg(&self.pin_root)
            .stdout(Stdio::null())
            .status();
    }
}

//! Helpers every benchmark needs: free loopback ports, readiness waits, log files, process
//! memory. std + anyhow only.

use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};

/// How long a server under test may take to accept connections.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A port free on 127.0.0.1 right now (bound then released; the race with other processes is
/// accepted).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .context("binding a free port")?
        .local_addr()?
        .port())
}

/// Waits until 127.0.0.1:`port` accepts connections.
pub fn wait_port(port: u16) -> Result<()> {
    if !test_kit::wait::try_wait_until(READY_TIMEOUT, || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    }) {
        bail!("server on port {port} not ready after {READY_TIMEOUT:?}");
    }
    Ok(())
}

/// How long publishers may take to be publishing (an ffmpeg start, an RTMP handshake).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until the ingest whose admin endpoint is on `admin_port` (loopback) reports `n`
/// publish sessions (`ingest_publishers`): the streams are published, players can join.
pub fn wait_published(admin_port: u16, n: usize) -> Result<()> {
    let url = format!("http://127.0.0.1:{admin_port}/metrics");
    let published = || {
        test_kit::http::get(&url)
            .ok()
            .and_then(|r| test_kit::metrics::value(&r.text(), "ingest_publishers"))
            .is_some_and(|v| v >= n as f64)
    };
    if !test_kit::wait::try_wait_until(PUBLISH_TIMEOUT, published) {
        bail!("{n} streams not published after {PUBLISH_TIMEOUT:?} ({url})");
    }
    Ok(())
}

/// `dir/name` opened for appending (a child's stdout/stderr).
pub fn log_file(dir: &Path, name: &str) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .with_context(|| format!("opening {name}"))
}

/// Resident set size of `pid` in KiB (VmRSS of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS line")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .context("VmRSS value")
}

/// A temporary directory, removed with everything in it on drop (std has none).
pub struct TempDir {
    /// Its path.
    pub path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/<prefix>-<pid>-<nanos>`.
    pub fn new(prefix: &str) -> Result<TempDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Median of `v` (mean of the middle two for an even count; NaN when empty).
pub fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The binaries `names` from the directory named by `$dir_var` (default `target/release`),
/// or an error naming `build` when one is missing.
pub fn release_bins(
    workspace: &Path,
    dir_var: &str,
    names: &[&str],
    build: &str,
) -> Result<Vec<PathBuf>> {
    let dir = std::env::var_os(dir_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target/release"));
    names
        .iter()
        .map(|name| {
            let bin = dir.join(name);
            if !bin.is_file() {
                bail!("{} not found: run `{build}` first", bin.display());
            }
            Ok(bin)
        })
        .collect()
}

/// `$var` as a comma-separated list of counts, or `default`.
pub fn env_counts(var: &str, default: &[usize]) -> Result<Vec<usize>> {
    match std::env::var(var) {
        Ok(s) => s
            .split(',')
            .map(|p| p.trim().parse().with_context(|| var.to_owned()))
            .collect(),
        Err(_) => Ok(default.to_vec()),
    }
}

/// `$var` as a count, or `default`.
pub fn env_count(var: &str, default: usize) -> Result<usize> {
    match std::env::var(var) {
        Ok(s) => s.trim().parse().with_context(|| var.to_owned()),
        Err(_) => Ok(default),
    }
}

/// This machine, for the report: CPU model and logical CPU count (figures from another
/// machine must never be mistaken for this one's).
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cpus} CPUs")
}

/// CPU a benchmark pins the server under test to; the load generators get the others.
pub const SERVER_CPU: usize = 0;

/// Which CPUs a process of a benchmark runs on (see [`pinned`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The server under test: [`SERVER_CPU`] alone.
    Server,
    /// Publishers and load generators: every other CPU.
    Load,
}

/// Whether benchmarks pin: on with 2 or more CPUs unless `pin_var` is `0`.
pub fn pinning(pin_var: &str) -> bool {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpus >= 2 && std::env::var(pin_var).map_or(true, |v| v != "0")
}

/// `program` under `taskset` on its side's CPUs, or plain when [`pinning`] is off. taskset
/// execs the program, so the child's pid is the program's.
///
/// Why pin: unpinned, the scheduler puts the load generator (woken by every response) on the
/// server's CPU, where it preempts the server, and how much CPU each server gets then depends
/// on the machine's other load more than on the server. Pinned, each server has one CPU of
/// its own and the load generator the rest, on any machine with 2 or more CPUs.
pub fn pinned(program: &Path, side: Side, pin_var: &str) -> Command {
    if !pinning(pin_var) {
        return Command::new(program);
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let list = match side {
        Side::Server => SERVER_CPU.to_string(),
        Side::Load => (0..cpus)
            .filter(|&c| c != SERVER_CPU)
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(","),
    };
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(list).arg(program);
    cmd
}

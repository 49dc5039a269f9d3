//! `cargo xtask bench failover`: for every failure class of [`xtask::faults`], the time from
//! the fault to the first media byte a player gets from the healthy origin, p50/p99/max over
//! `FAILOVER_BENCH_RUNS` runs (20 by default); and the thundering-herd check: a switchback
//! with `FAILOVER_BENCH_HERD` (1,000) open viewer connections on the backup resets none of
//! them within the drain time.
//!
//! Setup: the whole stack (ingest, ffmpeg test pattern, two packagers, two origins,
//! switcher-ctl with native XDP on a veth) from `target/release` in an edge network namespace,
//! viewers in a client namespace, as in the end-to-end test; switcher-ctl runs with its
//! defaults (0.2 s interval, 2 windows, 0.1 s connect timeout, segment checks, 30 s drain).
//!
//! The player polls like an impatient player: every `POLL` it fetches the playlist and the
//! newest segment over a keep-alive connection (a new one after an error; a request whose
//! reused connection was reset before it was answered is sent again once on a new one, as
//! HTTP clients do: [`fetch`]), recording when each response's first byte arrives and on
//! which local port. Which origin served a port is read from the data plane's conntrack map
//! (`bpftool map dump`, BTF-decoded) once the failover has settled: the first response after
//! the fault on a connection pinned to the backup is the figure. Its resolution is `POLL`.
//!
//! `FAILOVER_BENCH_FAULTS=a,b` runs only those classes (`herd` for the herd check);
//! `FAILOVER_BENCH_SWITCHER_ARGS` adds `switcher-ctl run` flags (e.g. `--finish 0`).
//!
//! `FAILOVER_BENCH_POLICY=balance FAILOVER_BENCH_ORIGINS=4` runs the stack of `cargo xtask
//! run --origins 4 --policy balance` instead. Each run's fault then acts on the origin the
//! player's connection is pinned to (read from the conntrack map), and the figure is the
//! first response after the fault on a connection pinned to any other origin; "failover" is
//! that origin leaving the rotation, "switchback" its coming back. The herd check is
//! failover's (viewers left on the backup at a switchback) and is skipped.
//!
//! `ctl-restart` has no failover: its figure is the number of the player's requests that
//! failed while switcher-ctl was down and restarting (0 expected).
//!
//! Every class also reports the player's failed polls from the fault to the restore: what a
//! player that does not retry would have lost. Origins are each other's peers (origin's
//! `peer`), as `cargo xtask run` starts them; `FAILOVER_BENCH_PEERS=0` starts them without, to
//! measure what peer fill changes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use test_kit::keepalive::Client;
use test_kit::netns::{BpfFs, Pair};
use xtask::faults::{self, Fault, Site};
use xtask::stack::{Stack, StackConfig};

use super::util::{TempDir, env_count};

/// The VIP in the edge namespace.
const VIP: &str = "10.77.0.2:8080";
/// Stream and playlist.
const PLAYLIST: &str = "/hls/demo/index.m3u8";
/// How often the player polls (the resolution of the figures).
const POLL: Duration = Duration::from_millis(20);
/// Socket timeouts of the player: longer than any failover we measure, so a hung request
/// shows up as a late figure rather than an early error.
const PLAYER_TIMEOUT: Duration = Duration::from_secs(10);
/// Index of the backup origin in the data plane's maps (`switcher_common::ORIGIN_BACKUP`;
/// xtask does not link the data plane's crates, see `prereq`).
const BACKUP_INDEX: u32 = 1;
/// Longest a failover or a switchback may take before the run counts as failed.
const SETTLE_LIMIT: Duration = Duration::from_secs(40);

/// One response's first byte, as the player saw it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Seen {
    /// When its status line arrived.
    pub(super) at: Instant,
    /// The player's local port (which flow, in the data plane's conntrack map).
    pub(super) port: u16,
}

/// What the polling player records.
#[derive(Default)]
struct Log {
    seen: Vec<Seen>,
    /// Failed polls: when, and the error (`bench dsr`'s per-run diagnostics print them).
    errors: Vec<(Instant, String)>,
    /// New connections: when the connect returned, and the local port.
    connects: Vec<(Instant, u16)>,
    /// Requests sent again on a new connection because the reused one failed before any
    /// response byte (see [`fetch`]).
    retries: Vec<Instant>,
}

/// The player's keep-alive connection, and whether it has answered a request already.
struct Conn {
    client: Client,
    reused: bool,
}

/// A player in the client namespace (see the module docs); `bench dsr` uses it too.
pub(super) struct Player {
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Player {
    /// Starts polling `vip` (`address:port`) from namespace `client_ns`.
    pub(super) fn start(client_ns: &str, vip: &str) -> Player {
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s, vip) = (log.clone(), stop.clone(), vip.to_string());
        let thread = test_kit::netns::spawn_in(client_ns, move || {
            let mut conn: Option<Conn> = None;
            while !s.load(Ordering::SeqCst) {
                let r = poll_once(&mut conn, &vip, &l);
                if let Err(e) = r {
                    conn = None;
                    l.lock()
                        .expect("log")
                        .errors
                        .push((Instant::now(), format!("{e:#}")));
                }
                std::thread::sleep(POLL);
            }
        });
        Player {
            log,
            stop,
            thread: Some(thread),
        }
    }

    /// The responses whose first byte came at or after `t`.
    pub(super) fn seen_since(&self, t: Instant) -> Vec<Seen> {
        let log = self.log.lock().expect("log");
        log.seen.iter().filter(|s| s.at >= t).copied().collect()
    }

    /// How many requests were sent again after `t` because their reused connection had been
    /// closed or reset ([`fetch`]).
    pub(super) fn retries_since(&self, t: Instant) -> usize {
        let log = self.log.lock().expect("log");
        log.retries.iter().filter(|r| **r >= t).count()
    }

    /// How many polls failed at or after `t`.
    pub(super) fn errors_since(&self, t: Instant) -> usize {
        let log = self.log.lock().expect("log");
        log.errors.iter().filter(|(e, _)| *e >= t).count()
    }

    /// The failed polls at or after `t`: when, and why.
    pub(super) fn error_log_since(&self, t: Instant) -> Vec<(Instant, String)> {
        let log = self.log.lock().expect("log");
        log.errors
            .iter()
            .filter(|(e, _)| *e >= t)
            .cloned()
            .collect()
    }

    /// The connections made at or after `t`: when the connect returned, and the local port.
    pub(super) fn connects_since(&self, t: Instant) -> Vec<(Instant, u16)> {
        let log = self.log.lock().expect("log");
        log.connects
            .iter()
            .filter(|(c, _)| *c >= t)
            .copied()
            .collect()
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One GET on the keep-alive connection; returns the body of a 200. Records the first byte.
fn get(conn: &mut Client, path: &str, log: &Mutex<Log>) -> Result<Vec<u8>> {
    let port = conn.local_port();
    let (status, body) = conn
        .request(path, |_| {
            log.lock().expect("log").seen.push(Seen {
                at: Instant::now(),
                port,
            });
        })
        .with_context(|| format!("GET {path}"))?;
    if status != 200 {
        bail!("status {status}");
    }
    Ok(body)
}

/// One GET as HTTP clients send it (RFC 9112 9.3.1; ffmpeg's HLS demuxer, browsers): a request
/// on a reused keep-alive connection that fails before any response byte (the server or the
/// edge closed or reset the idle connection meanwhile) is sent again, once, on a new
/// connection. Only that: an error status, a failure in the middle of a response or on a new
/// connection is a failed request, as it is for a player that does not retry.
fn fetch(conn: &mut Option<Conn>, vip: &str, path: &str, log: &Mutex<Log>) -> Result<Vec<u8>> {
    loop {
        if conn.is_none() {
            let client = Client::connect_within(vip, PLAYER_TIMEOUT).context("connect")?;
            log.lock()
                .expect("log")
                .connects
                .push((Instant::now(), client.local_port()));
            *conn = Some(Conn {
                client,
                reused: false,
            });
        }
        let c = conn.as_mut().expect("connected");
        let port = c.client.local_port();
        let mut answered = false;
        let result = c.client.request(path, |_| {
            answered = true;
            log.lock().expect("log").seen.push(Seen {
                at: Instant::now(),
                port,
            });
        });
        match result {
            Ok((status, body)) => {
                c.reused = true;
                if status != 200 {
                    bail!("GET {path}: status {status}");
                }
                return Ok(body);
            }
            Err(e) => {
                // Closed or reset before any answer: what an idle keep-alive connection meets
                // when the server or the edge ended it. A timeout or a garbled answer is not.
                let closed = matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof
                );
                let stale = c.reused && !answered && closed;
                *conn = None;
                if !stale {
                    return Err(e).with_context(|| format!("GET {path}"));
                }
                log.lock().expect("log").retries.push(Instant::now());
            }
        }
    }
}

fn poll_once(conn: &mut Option<Conn>, vip: &str, log: &Mutex<Log>) -> Result<()> {
    let playlist = String::from_utf8(fetch(conn, vip, PLAYLIST, log)?)?;
    let newest = playlist
        .lines()
        .rfind(|l| !l.is_empty() && !l.starts_with('#'))
        .context("empty playlist")?
        .to_string();
    let body = fetch(conn, vip, &format!("/hls/demo/{newest}"), log)?;
    if body.len() % 188 != 0 {
        bail!("segment cut short");
    }
    Ok(())
}

/// Origin index per client port of the flows in the data plane's conntrack map.
pub(super) fn flows_by_port(edge_ns: &str, pin_root: &Path) -> Result<BTreeMap<u16, u32>> {
    let map = pin_root.join("maps/SWITCHER_FLOWS");
    let out = test_kit::process::try_sh(&[
        "ip",
        "netns",
        "exec",
        edge_ns,
        "bpftool",
        "-j",
        "map",
        "dump",
        "pinned",
        &map.to_string_lossy(),
    ])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("bpftool JSON")?;
    let mut by_port = BTreeMap::new();
    for e in v.as_array().context("array")? {
        // `bpftool -j` gives the raw bytes in key/value and the BTF-decoded fields under
        // "formatted" (`-p` without `-j` prints the decoded ones at the top).
        let e = if e.get("formatted").is_some() {
            &e["formatted"]
        } else {
            e
        };
        let port_be = e["key"]["client_port_be"]
            .as_u64()
            .with_context(|| format!("no client_port_be in {e}"))? as u16;
        let origin = e["value"]["origin"]
            .as_u64()
            .with_context(|| format!("no origin in {e}"))? as u32;
        by_port.insert(u16::from_be(port_be), origin);
    }
    Ok(by_port)
}

fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    if !test_kit::wait::try_wait_until(limit, &mut f) {
        bail!("timed out waiting for: {what}");
    }
    Ok(())
}

/// The policy the bench runs, over which origins.
struct Setup {
    /// `--policy balance` (else the two-origin failover stack).
    balance: bool,
    /// The origins' names, in preference order (index = data-plane slot).
    names: Vec<String>,
}

impl Setup {
    /// Every origin healthy and, under failover, the primary active; under balance, every
    /// origin in rotation.
    fn settled(&self, stack: &Stack) -> bool {
        let Ok(h) = stack.healthz() else {
            return false;
        };
        // Healthy and seen good: an origin is healthy before its first probe ("innocent
        // until probed"), so `healthy` alone held at switcher-ctl's start, before any playlist
        // existed, and the first run's fault came before the stream did (session 8: run 1 of
        // origin-kill took 1.6-2.7 s, the others 0.03 s).
        let all_healthy = self.names.iter().all(|n| {
            let o = &h["origins"][n];
            o["healthy"] == true
                && o["msn"].is_u64()
                && o["consecutive_good"].as_u64().is_some_and(|g| g >= 2)
        });
        all_healthy
            && if self.balance {
                self.names
                    .iter()
                    .all(|n| h["origins"][n]["in_rotation"] == true)
            } else {
                h["active"] == "primary"
            }
    }

    /// Whether origin `victim` takes new flows (failover: it is the active origin).
    fn takes_new_flows(&self, stack: &Stack, victim: usize) -> bool {
        let name = &self.names[victim];
        stack.healthz().is_ok_and(|h| {
            if self.balance {
                h["origins"][name]["in_rotation"] == true
            } else {
                h["active"] == name.as_str()
            }
        })
    }
}

/// One run of `fault`: the figure in seconds (for ctl-restart: failed requests), and the
/// player's requests that failed from the fault to the restore.
fn run_once(
    stack: &mut Stack,
    setup: &Setup,
    pair: &Pair,
    bpf: &BpfFs,
    fault: Fault,
) -> Result<(f64, usize)> {
    wait(
        "every origin healthy, the preferred one active",
        SETTLE_LIMIT,
        || setup.settled(stack),
    )?;
    let player = Player::start(&pair.client.name, VIP);
    wait("the player polls", SETTLE_LIMIT, || {
        player
            .seen_since(Instant::now() - Duration::from_secs(1))
            .len()
            >= 4
    })?;
    // The origin the fault acts on: failover, the primary (slot 0); balance, the origin of
    // the player's connection, so that the player has something to fail over from.
    let victim = if setup.balance {
        let mut victim = None;
        wait(
            "the player's flow in the conntrack map",
            SETTLE_LIMIT,
            || {
                let flows = flows_by_port(&pair.edge.name, &bpf.pin_root()).unwrap_or_default();
                let last = player.seen_since(Instant::now() - Duration::from_secs(1));
                victim = last
                    .last()
                    .and_then(|s| flows.get(&s.port))
                    .map(|&o| o as usize);
                victim.is_some()
            },
        )?;
        victim.expect("found")
    } else {
        0
    };
    let site = stack.cfg.fault_site_on(victim);
    let t0 = Instant::now();
    let injected = faults::inject(fault, &site, stack)?;
    let figure = if fault.fails_primary() {
        wait("failover", SETTLE_LIMIT, || {
            !setup.takes_new_flows(stack, victim)
        })?;
        // The first response after the fault on a connection the data plane pins to another
        // origin (the player reconnects once its old connection is reset or fails).
        let deadline = Instant::now() + SETTLE_LIMIT;
        let elsewhere = |o: Option<&u32>| {
            if setup.balance {
                o.is_some_and(|&o| o as usize != victim)
            } else {
                o == Some(&BACKUP_INDEX)
            }
        };
        let first = loop {
            let flows = flows_by_port(&pair.edge.name, &bpf.pin_root())?;
            let seen = player.seen_since(t0);
            if let Some(s) = seen.iter().find(|s| elsewhere(flows.get(&s.port))) {
                break *s;
            }
            if Instant::now() > deadline {
                let ports: std::collections::BTreeSet<u16> = seen.iter().map(|s| s.port).collect();
                bail!(
                    "no response from another origin after the fault: player ports {ports:?}, flows {flows:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        first.at.duration_since(t0).as_secs_f64()
    } else {
        std::thread::sleep(Duration::from_secs(1));
        0.0
    };
    // What a player that does not retry loses: every poll that failed while the fault was in
    // force (the polling player opens a new connection after each).
    let failed_polls = player.errors_since(t0);
    let retries = player.retries_since(t0);
    if retries > 0 {
        eprintln!("  {retries} requests sent again on a new connection (reused one reset)");
    }
    injected.restore(stack)?;
    let figure = if fault.fails_primary() {
        figure
    } else {
        // A restarted control plane: requests that failed meanwhile.
        std::thread::sleep(Duration::from_secs(2));
        player.errors_since(t0) as f64
    };
    drop(player);
    wait("switchback", SETTLE_LIMIT, || {
        setup.takes_new_flows(stack, victim)
    })?;
    Ok((figure, failed_polls))
}

/// The herd: `n` keep-alive viewers on the backup during a failover; after the switchback,
/// within the drain time, each sends a request every second for `watch`: how many fail.
fn herd(
    stack: &mut Stack,
    site: &Site,
    pair: &Pair,
    n: usize,
    watch: Duration,
) -> Result<(usize, usize)> {
    let injected = faults::inject(Fault::OriginKill, site, stack)?;
    wait("failover", SETTLE_LIMIT, || stack.active() == "backup")?;
    let conns = pair.client.run(move || -> Result<Vec<Client>> {
        let log = Mutex::new(Log::default());
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let mut c = Client::connect_within(VIP, PLAYER_TIMEOUT)?;
            get(&mut c, PLAYLIST, &log)?;
            v.push(c);
        }
        Ok(v)
    })?;
    injected.restore(stack)?;
    wait("switchback", SETTLE_LIMIT, || stack.active() == "primary")?;
    let stop = Instant::now() + watch;
    let (conns, failed, requests) = pair.client.run(move || {
        let log = Mutex::new(Log::default());
        let mut conns = conns;
        let (mut failed, mut requests) = (0, 0);
        while Instant::now() < stop {
            for c in conns.iter_mut() {
                requests += 1;
                if get(c, PLAYLIST, &log).is_err() {
                    failed += 1;
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        (conns, failed, requests)
    });
    drop(conns);
    Ok((failed, requests))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Runs the benchmark and appends its markdown report to `out`.
pub fn run(workspace: &Path, out: &mut String) -> Result<()> {
    let runs = env_count("FAILOVER_BENCH_RUNS", 20)?;
    let herd_n = env_count("FAILOVER_BENCH_HERD", 1000)?;
    let only = std::env::var("FAILOVER_BENCH_FAULTS").unwrap_or_default();
    // Extra `switcher-ctl run` flags, e.g. `--finish 0` (space separated).
    let extra = std::env::var("FAILOVER_BENCH_SWITCHER_ARGS").unwrap_or_default();
    let balance = match std::env::var("FAILOVER_BENCH_POLICY").as_deref() {
        Ok("balance") => true,
        Ok("failover") | Err(_) => false,
        Ok(other) => bail!("FAILOVER_BENCH_POLICY: {other:?} is neither failover nor balance"),
    };
    let origins = env_count("FAILOVER_BENCH_ORIGINS", xtask::layout::DEFAULT_ORIGINS)?;
    // `FAILOVER_BENCH_PEERS=0`: origins without peers (no peer fill), to measure what it
    // changes.
    let peer_fill = std::env::var("FAILOVER_BENCH_PEERS").as_deref() != Ok("0");
    if !(2..=xtask::layout::MAX_ORIGINS).contains(&origins) {
        bail!(
            "FAILOVER_BENCH_ORIGINS: 2 to {}",
            xtask::layout::MAX_ORIGINS
        );
    }
    let bin_dir = workspace.join("target/release");
    for b in ["ingest", "packager", "origin", "switcher-ctl"] {
        if !bin_dir.join(b).is_file() {
            bail!("{b} not built: run `cargo build --release --workspace --bins`");
        }
    }
    // Every viewer of this bench comes from the one client address: lift the origins'
    // per-address connection cap above the herd's size (the services inherit this variable).
    // SAFETY: set before the stack or any other thread of this process starts.
    unsafe {
        std::env::set_var(
            "ORIGIN_MAX_CONNECTIONS_PER_ADDRESS",
            (herd_n + 512).to_string(),
        )
    };
    let pair = Pair::new();
    // The client end receives through NAPI with GRO, as a NIC does: the edge transmits its own
    // resets with XDP_TX, and a veth hands XDP frames only to a peer that receives that way
    // (switcher-ctl's `edge_rst` module).
    pair.client
        .exec(&["ethtool", "-K", &pair.client_if, "gro", "on"]);
    let bpf = BpfFs::new();
    let dir = TempDir::new("failover-bench")?;
    // The service user must be able to enter the run directory.
    std::fs::set_permissions(
        &dir.path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let mut cfg = StackConfig::in_namespaces(bin_dir, dir.path.clone(), &pair, &bpf);
    cfg.origins = origins;
    cfg.peer_fill = peer_fill;
    if balance {
        cfg.switcher_args
            .extend(["--policy".into(), "balance".into()]);
    }
    cfg.switcher_args
        .extend(extra.split_whitespace().map(String::from));
    let mut stack = Stack::new(cfg);
    stack.start_all().context("starting the stack")?;
    let setup = Setup {
        balance,
        names: xtask::layout::origin_names(origins),
    };
    let site = stack.cfg.fault_site();
    wait("a full playlist", Duration::from_secs(60), || {
        setup.settled(&stack)
    })?;
    let machine = super::util::machine();
    let _ = writeln!(
        out,
        "Machine: {machine}. Stack from target/release in namespaces (native XDP on a veth), \
         {origins} origins{}, policy {}, switcher-ctl defaults{}; player polling every {} ms; \
         {runs} runs per class. Failed polls: the player's requests (a playlist and the newest \
         segment each) that failed from the fault to the restore, what a player that does not \
         retry would have lost.\n",
        if peer_fill {
            " (each the other's peer)"
        } else {
            " without peers (`FAILOVER_BENCH_PEERS=0`)"
        },
        if balance { "balance" } else { "failover" },
        if extra.is_empty() {
            String::new()
        } else {
            format!(" plus `{extra}`")
        },
        POLL.as_millis()
    );
    let _ = writeln!(
        out,
        "| failure class | fault to first media byte from the healthy origin: p50 | p99 | range (min-max) | target p99 | failed polls per run: median (range) |\n|---|---|---|---|---|---|"
    );
    let result = (|| -> Result<()> {
        for fault in Fault::ALL {
            if !only.is_empty() && !only.split(',').any(|f| f == fault.name()) {
                continue;
            }
            let mut samples = Vec::with_capacity(runs);
            let mut polls = Vec::with_capacity(runs);
            let mut failed: Vec<String> = Vec::new();
            for i in 0..runs {
                match run_once(&mut stack, &setup, &pair, &bpf, fault) {
                    Ok((s, p)) => {
                        eprintln!("{} run {}: {s:.3}, {p} failed polls", fault.name(), i + 1);
                        samples.push(s);
                        polls.push(p as f64);
                    }
                    // A run that could not be measured is reported, not hidden; the stack is
                    // brought back to the primary before the next one.
                    Err(e) => {
                        eprintln!("{} run {}: FAILED: {e:#}", fault.name(), i + 1);
                        failed.push(format!("{e:#}"));
                        wait("switchback after a failed run", SETTLE_LIMIT, || {
                            setup.settled(&stack)
                        })?;
                    }
                }
            }
            if !failed.is_empty() {
                let _ = writeln!(
                    out,
                    "| {} | {} of {runs} runs could not be measured: {} | | | | |",
                    fault.name(),
                    failed.len(),
                    failed[0].replace('|', "/")
                );
            }
            samples.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
            polls.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
            let polls = format!(
                "{} ({}-{})",
                percentile(&polls, 0.5),
                polls.first().copied().unwrap_or(f64::NAN),
                polls.last().copied().unwrap_or(f64::NAN)
            );
            if fault == Fault::CtlRestart {
                let _ = writeln!(
                    out,
                    "| {} | failed player requests per restart: p50 {} | p99 {} | max {} | 0 | {polls} |",
                    fault.name(),
                    percentile(&samples, 0.5),
                    percentile(&samples, 0.99),
                    samples.last().copied().unwrap_or(f64::NAN)
                );
            } else {
                let target = match fault {
                    Fault::OriginKill | Fault::OriginPartition | Fault::Origin5xx => "0.5 s",
                    Fault::PackagerKill => "-",
                    _ => "1.5 s",
                };
                let _ = writeln!(
                    out,
                    "| {} | {:.3} s | {:.3} s | {:.3}-{:.3} s | {target} | {polls} |",
                    fault.name(),
                    percentile(&samples, 0.5),
                    percentile(&samples, 0.99),
                    samples.first().copied().unwrap_or(f64::NAN),
                    samples.last().copied().unwrap_or(f64::NAN)
                );
            }
        }
        if herd_n > 0 && !balance && (only.is_empty() || only.split(',').any(|f| f == "herd")) {
            match herd(&mut stack, &site, &pair, herd_n, Duration::from_secs(10)) {
                Ok((failed, requests)) => {
                    let _ = writeln!(
                        out,
                        "\nThundering herd: {herd_n} keep-alive viewers on the backup at the switchback; \
                         in the next 10 s (drain 30 s) they sent {requests} requests, {failed} failed (target 0).\n"
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "\nThundering herd: could not be measured: {e:#}\n");
                }
            }
        }
        Ok(())
    })();
    stack.stop();
    result
}

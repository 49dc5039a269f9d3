//! `cargo xtask bench ingest`: our RTMP ingest against nginx-rtmp (Debian
//! `libnginx-mod-rtmp`), one ffmpeg publisher -> N players, on loopback.
//!
//! Expects `target/release/ingest` and `target/release/ingest-loadgen` (or the directory
//! named by `INGEST_BENCH_BIN_DIR`); build them with `cargo build --release -p ingest`.
//! Needs `ffmpeg`, `nginx` and `/usr/lib/nginx/modules/ngx_rtmp_module.so`.
//!
//! Method: a 10 s 1280x720 30 fps H.264 + AAC clip (the `demo` stream's shape: keyframe
//! every 2 s) is encoded once, then published in a loop with `-re -c copy` so the publisher
//! costs almost no CPU. For each server and each N, `ingest-loadgen` connects N players
//! (rtmp::PlayClient), and after a warm-up the server's CPU time and RSS (VmRSS) are
//! sampled over a fixed interval. CPU time is the sum of the first field of
//! /proc/PID/task/*/schedstat (nanoseconds on CPU, per thread): utime+stime in clock ticks
//! (10 ms) is too coarse for the 10-player case, which uses about 1% of a core. Both
//! servers' threads live for the whole run, so no time is lost with an exited thread.
//! Players' received byte counts are checked so a server that sends nothing cannot "win";
//! the "media Mbit/s per player" column is the audio/video payload players received (no
//! RTMP framing) over the loadgen's own clock, and should match the clip's bitrate.
//!
//! Each (N, server) pair is measured `INGEST_BENCH_REPEAT` times (default 3), rotating
//! which server goes first, and the table shows medians; the ratio column is the median of
//! the per-repetition ratios, each from back-to-back runs, so a machine that is busy
//! with something else for a while skews both sides of a ratio alike.
//!
//! Fairness: nginx runs one process (`master_process off`, one worker), our ingest runs
//! its default runtime (one thread); both use 4096-byte chunks. Our ingest is measured
//! twice: as shipped (merged reads and writes every 100 ms, `--merge-ms`) and with
//! `--merge-ms 0`, which forwards every publisher read at once as nginx-rtmp does (it has
//! no such knob), so the report shows what merging buys and what the rest of the server
//! costs.
//!
//! Pinning (default when the machine has 2 or more CPUs; `INGEST_BENCH_PIN=0` turns it
//! off): the server runs on CPU 0, the publisher and the load generator on the others
//! (`taskset`). Unpinned, the scheduler puts the load generator, woken by every write to a
//! player, on the server's CPU, where it preempts the server: at 100 players we measured
//! ~850 involuntary context switches per second for the ingest and ~70 for nginx
//! (/proc/PID/status), a scheduler artefact that moves the CPU figures by tens of percent
//! and does not exist when players are on other machines. Pinned, both see a handful per
//! second. Pinning helps both servers, and the old ingest too: compare only ratios from
//! the same mode.
//! Override N with `INGEST_BENCH_PLAYERS=10,100`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::util::{
    PUBLISH_TIMEOUT, env_count, env_counts, free_port, log_file, median_f64, release_bins, rss_kib,
    wait_port, wait_published,
};
use super::util::{Side, TempDir, pinned};
use anyhow::{Context, Result, bail};

/// Player counts measured by default.
const DEFAULT_PLAYERS: &[usize] = &[10, 100, 500];
/// Time for players to connect and reach steady state before sampling.
const WARMUP: Duration = Duration::from_secs(4);
/// Sampling interval.
const MEASURE: Duration = Duration::from_secs(10);
/// How long a server may take to accept connections.
/// Poll interval for readiness.
/// Length of the pre-encoded clip.
const CLIP_SECONDS: &str = "10";
/// Repetitions per (N, server) pair unless `INGEST_BENCH_REPEAT` says otherwise.
const DEFAULT_REPEAT: usize = 3;
/// A sample counts only if every player stayed connected and received at least this
/// fraction of the clip's bitrate: a starved server (or load generator) does less work,
/// so its CPU figure would flatter it.
const MIN_RATE_FRACTION: f64 = 0.9;
/// Attempts per repetition to get a valid pair of samples before reporting an invalid one.
const MAX_ATTEMPTS: usize = 3;
/// Turns pinning off when `0` (see the module doc).
const PIN_VAR: &str = "INGEST_BENCH_PIN";
/// nginx-rtmp's module path in Debian.
const NGINX_RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

/// A server under test.
#[derive(Clone, Copy)]
enum Server {
    /// Our ingest; `merge_ms` overrides `--merge-ms` (None: the default).
    Ingest { merge_ms: Option<u64> },
    /// nginx with libnginx-mod-rtmp.
    Nginx,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Ingest { merge_ms: None } => "ingest",
            Server::Ingest { merge_ms: Some(0) } => "ingest --merge-ms 0",
            Server::Ingest { .. } => "ingest (--merge-ms set)",
            Server::Nginx => "nginx-rtmp",
        }
    }
}

/// The servers measured, in the report's order: our ingest as shipped; our ingest forwarding
/// every publisher read at once (`--merge-ms 0`, what nginx-rtmp does), to show what the
/// merged reads and writes buy; and the peer.
const SERVERS: [Server; 3] = [
    Server::Ingest { merge_ms: None },
    Server::Ingest { merge_ms: Some(0) },
    Server::Nginx,
];
/// nginx-rtmp's index in [`SERVERS`], the ratios' denominator.
const NGINX: usize = 2;

/// One measurement.
#[derive(Clone, Copy)]
struct Sample {
    cpu_percent: f64,
    rss_mib: f64,
    players_connected: usize,
    mbit_per_player: f64,
}

/// Median of each field (players connected: the minimum, so a flaky run shows).
fn median(samples: &[Sample]) -> Sample {
    let med = |f: fn(&Sample) -> f64| median_f64(samples.iter().map(f).collect());
    Sample {
        cpu_percent: med(|s| s.cpu_percent),
        rss_mib: med(|s| s.rss_mib),
        players_connected: samples
            .iter()
            .map(|s| s.players_connected)
            .min()
            .unwrap_or(0),
        mbit_per_player: med(|s| s.mbit_per_player),
    }
}

/// Runs the benchmark and appends its markdown report to `out`.
pub fn run(workspace: &Path, out: &mut String) -> Result<()> {
    let bins = release_bins(
        workspace,
        "INGEST_BENCH_BIN_DIR",
        &["ingest", "ingest-loadgen"],
        "cargo build --release -p ingest",
    )?;
    let (ingest_bin, loadgen_bin) = (&bins[0], &bins[1]);
    if !Path::new(NGINX_RTMP_MODULE).is_file() {
        bail!("{NGINX_RTMP_MODULE} not found: apt-get install libnginx-mod-rtmp");
    }
    let players = env_counts("INGEST_BENCH_PLAYERS", DEFAULT_PLAYERS)?;
    let repeat = env_count("INGEST_BENCH_REPEAT", DEFAULT_REPEAT)?;
    let dir = TempDir::new("bench-ingest")?;
    let clip = dir.path.join("clip.flv");
    test_kit::Publisher::new(1280, 720, 30)
        .seconds(CLIP_SECONDS.parse::<f64>()?)
        .preset("veryfast")
        .gop(60)
        .video_bitrate("2500k")
        .try_encode(&clip)
        .context("ffmpeg failed to encode the bench clip")?;

    let clip_secs: f64 = CLIP_SECONDS.parse()?;
    let clip_mbit = std::fs::metadata(&clip)?.len() as f64 * 8.0 / 1e6 / clip_secs;
    let mut rows = Vec::new();
    let mut invalid = Vec::new();
    for &n in &players {
        let valid = |s: &Sample| {
            s.players_connected == n && s.mbit_per_player >= MIN_RATE_FRACTION * clip_mbit
        };
        // Per server: its samples, and its per-repetition CPU ratios to nginx-rtmp.
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); SERVERS.len()];
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); SERVERS.len()];
        for rep in 0..repeat.max(1) {
            for attempt in 1..=MAX_ATTEMPTS {
                // Rotate the order, so a machine busy for a while skews all servers alike.
                let mut got = vec![None; SERVERS.len()];
                for k in 0..SERVERS.len() {
                    let i = (rep + k) % SERVERS.len();
                    let server = SERVERS[i];
                    let sample = match server {
                        Server::Nginx => measure_nginx(loadgen_bin, &clip, &dir.path, n),
                        Server::Ingest { merge_ms } => {
                            measure_ours(ingest_bin, merge_ms, loadgen_bin, &clip, &dir.path, n)
                        }
                    }
                    .with_context(|| format!("{} with {n} players", server.name()))?;
                    got[i] = Some(sample);
                }
                let got: Vec<Sample> = got.into_iter().map(|s| s.expect("measured")).collect();
                let ok = got.iter().all(valid);
                if !ok && attempt < MAX_ATTEMPTS {
                    let short: Vec<String> = SERVERS
                        .iter()
                        .zip(&got)
                        .map(|(sv, s)| {
                            format!(
                                "{} {} at {:.2}",
                                sv.name(),
                                s.players_connected,
                                s.mbit_per_player
                            )
                        })
                        .collect();
                    eprintln!(
                        "bench ingest: N={n}: players short of the stream ({} Mbit/s); repeating",
                        short.join(", ")
                    );
                    continue;
                }
                if !ok {
                    invalid.push(n);
                }
                let nginx = got[NGINX].cpu_percent;
                for (i, s) in got.into_iter().enumerate() {
                    ratios[i].push(s.cpu_percent / nginx);
                    samples[i].push(s);
                }
                break;
            }
        }
        let per_server: Vec<(Sample, f64)> = samples
            .iter()
            .zip(ratios)
            .map(|(s, r)| (median(s), median_f64(r)))
            .collect();
        rows.push((n, per_server));
    }

    writeln!(
        out,
        "\n### RTMP fan-out: ingest vs nginx-rtmp (1 publisher, 720p30 ~2.6 Mbit/s, {}s sample, median of {}, {})\n",
        MEASURE.as_secs(),
        repeat.max(1),
        if std::env::var("INGEST_BENCH_PIN").is_ok_and(|v| v == "0") {
            "unpinned"
        } else {
            "server pinned to its own CPU"
        }
    )?;
    writeln!(
        out,
        "| players | server | connected | media Mbit/s per player | CPU % (1 core = 100) | CPU ms/s per player | RSS MiB | CPU ratio to nginx-rtmp |"
    )?;
    writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|")?;
    for (n, per_server) in &rows {
        for (i, (server, (s, ratio))) in SERVERS.iter().zip(per_server).enumerate() {
            let r = if i == NGINX {
                String::new()
            } else {
                format!("{ratio:.2}")
            };
            writeln!(
                out,
                "| {n} | {} | {} | {:.2} | {:.2} | {:.3} | {:.1} | {r} |",
                server.name(),
                s.players_connected,
                s.mbit_per_player,
                s.cpu_percent,
                s.cpu_percent * 10.0 / *n as f64,
                s.rss_mib
            )?;
        }
    }
    writeln!(
        out,
        "\nClip: {clip_mbit:.2} Mbit/s. A repetition counts when all players stay connected and get at least {:.0}% of that.",
        MIN_RATE_FRACTION * 100.0
    )?;
    if !invalid.is_empty() {
        writeln!(
            out,
            "Not met after {MAX_ATTEMPTS} attempts (machine overloaded?) for N = {invalid:?}: treat those rows with suspicion."
        )?;
    }
    Ok(())
}

fn measure_ours(
    bin: &Path,
    merge_ms: Option<u64>,
    loadgen: &Path,
    clip: &Path,
    dir: &Path,
    n: usize,
) -> Result<Sample> {
    let port = free_port()?;
    let admin = free_port()?;
    let mut cmd = pinned(bin, Side::Server, PIN_VAR);
    if let Some(ms) = merge_ms {
        cmd.arg("--merge-ms").arg(ms.to_string());
    }
    let server = Proc::spawn(
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--admin")
            .arg(format!("127.0.0.1:{admin}"))
            // Every player comes from 127.0.0.1.
            .arg("--max-connections-per-address")
            .arg("0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log_file(dir, "ingest.log")?),
    )?;
    measure(&server, port, loadgen, clip, dir, n, &|| {
        wait_published(admin, 1)
    })
}

fn measure_nginx(loadgen: &Path, clip: &Path, dir: &Path, n: usize) -> Result<Sample> {
    let port = free_port()?;
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(&prefix).context("creating nginx prefix")?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "load_module {NGINX_RTMP_MODULE};\n\
             daemon off;\nmaster_process off;\nworker_processes 1;\n\
             worker_rlimit_nofile 8192;\n\
             error_log {p}/error.log warn;\npid {p}/nginx.pid;\n\
             events {{ worker_connections 4096; }}\n\
             rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096;\n\
               application live {{ live on; record off; }} }} }}\n",
            p = prefix.display()
        ),
    )
    .context("writing nginx.conf")?;
    let server = Proc::spawn(
        pinned(Path::new("nginx"), Side::Server, PIN_VAR)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log_file(dir, "nginx.stderr")?),
    )?;
    // nginx-rtmp exports no metrics here: the stream is published once ffprobe, an RTMP
    // player, can read its streams (nginx keeps a player of an unpublished stream waiting,
    // so each try is bounded).
    let url = format!("rtmp://127.0.0.1:{port}/live/bench");
    measure(&server, port, loadgen, clip, dir, n, &|| {
        wait_playable(&url)
    })
}

/// Waits until ffprobe can read the streams of the RTMP `url`.
fn wait_playable(url: &str) -> Result<()> {
    let playable = || {
        Command::new("ffprobe")
            .args(["-v", "error", "-rw_timeout", "2000000", url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !test_kit::wait::try_wait_until(PUBLISH_TIMEOUT, playable) {
        bail!("{url} not playable after {PUBLISH_TIMEOUT:?}");
    }
    Ok(())
}

fn measure(
    server: &Proc,
    port: u16,
    loadgen: &Path,
    clip: &Path,
    dir: &Path,
    n: usize,
    published: &dyn Fn() -> Result<()>,
) -> Result<Sample> {
    wait_port(port)?;
    let url = format!("rtmp://127.0.0.1:{port}/live/bench");
    let _publisher = Proc::spawn(
        pinned(Path::new("ffmpeg"), Side::Load, PIN_VAR)
            .args(test_kit::publisher::replay_args(clip, &url))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(dir, "publisher.log")?),
    )?;
    // Players join a published stream.
    published()?;
    let secs = (WARMUP + MEASURE).as_secs() + 2;
    let lg_out = dir.join("loadgen.out");
    let loadgen = Proc::spawn(
        pinned(loadgen, Side::Load, PIN_VAR)
            .arg("--url")
            .arg(&url)
            .arg("--players")
            .arg(n.to_string())
            .arg("--seconds")
            .arg(secs.to_string())
            .stdout(std::fs::File::create(&lg_out).context("loadgen output file")?)
            .stderr(log_file(dir, "loadgen.err")?),
    )?;
    std::thread::sleep(WARMUP);
    let lines_before = read_lines(&lg_out);
    let (cpu0, t0) = (cpu_ns(server.pid())?, Instant::now());
    std::thread::sleep(MEASURE);
    let (cpu1, t1) = (cpu_ns(server.pid())?, Instant::now());
    let rss_mib = rss_kib(server.pid())? as f64 / 1024.0;
    let lines_after = read_lines(&lg_out);
    drop(loadgen);
    let cpu_percent = (cpu1 - cpu0) as f64 / 1e9 / (t1 - t0).as_secs_f64() * 100.0;
    // Loadgen lines: `connected=N events=E bytes=B ms=T`, T on the loadgen's own clock.
    let parse = |l: Option<&String>| -> (usize, u64, u64) {
        let (mut connected, mut bytes, mut ms) = (0, 0, 0);
        for kv in l.map(String::as_str).unwrap_or("").split_whitespace() {
            match kv.split_once('=') {
                Some(("connected", v)) => connected = v.parse().unwrap_or(0),
                Some(("bytes", v)) => bytes = v.parse().unwrap_or(0),
                Some(("ms", v)) => ms = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        (connected, bytes, ms)
    };
    let (_, b0, ms0) = parse(lines_before.last());
    let (connected, b1, ms1) = parse(lines_after.last());
    let mbit_per_player = if connected > 0 && ms1 > ms0 {
        b1.saturating_sub(b0) as f64 * 8.0 / 1e6 / ((ms1 - ms0) as f64 / 1e3) / connected as f64
    } else {
        0.0
    };
    if connected == 0 || b1 <= b0 {
        bail!(
            "players received nothing (connected={connected}); see {}",
            dir.display()
        );
    }
    Ok(Sample {
        cpu_percent,
        rss_mib,
        players_connected: connected,
        mbit_per_player,
    })
}

fn read_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Nanoseconds on CPU of all threads of `pid` (first field of each
/// /proc/PID/task/TID/schedstat).
fn cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).context("listing /proc/PID/task")? {
        let path = task?.path().join("schedstat");
        // A thread that exited since the listing has nothing more to add.
        let Ok(s) = std::fs::read_to_string(&path) else {
            continue;
        };
        total += s
            .split_whitespace()
            .next()
            .context("empty schedstat")?
            .parse::<u64>()
            .with_context(|| format!("parsing {}", path.display()))?;
    }
    Ok(total)
}

/// A child process killed on drop, on every path.
struct Proc(Child);

impl Proc {
    fn spawn(cmd: &mut Command) -> Result<Proc> {
        Ok(Proc(cmd.spawn().with_context(|| {
            format!("spawning {:?}", cmd.get_program())
        })?))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

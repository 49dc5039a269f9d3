//! `cargo xtask bench packager`: our packager against `ffmpeg -c copy -f hls`, both pulling
//! the same streams from our ingest (as shipped: merged writes every 100 ms) on loopback.
//!
//! Expects `target/release/packager` and `target/release/ingest` (or the directory named by
//! `PACKAGER_BENCH_BIN_DIR`); build them with `cargo build --release -p packager -p ingest`.
//! Needs `ffmpeg`.
//!
//! Method: a 10 s 1280x720 30 fps H.264 + AAC clip (the `demo` stream's shape: keyframe every
//! 2 s, ~2.5 Mbit/s) is encoded once, then N ffmpeg publishers push it in a loop to the ingest
//! with `-re -c copy` (no re-encoding, so publishers cost little; they are not measured). For
//! each N the packagers run one after the other against the same publishers:
//! - ours as a user runs it: one process with N `--source` flags (one thread per stream);
//! - ffmpeg: one `ffmpeg -i rtmp://... -c copy -f hls -hls_time 2` process per stream (it has no
//!   multi-stream mode), CPU and RSS summed.
//!
//! After a 5 s warm-up, CPU is sampled over 15 s as each thread's exact on-CPU time
//! (`/proc/PID/task/TID/schedstat`, ns), which the ratios use, with utime+stime of
//! /proc/PID/stat (10 ms clock ticks, too coarse for one stream at ~1 ms/s) as a cross-check,
//! and RSS (VmRSS) at the end. Each stream's newest media sequence number must advance during
//! the window, so a packager that writes nothing cannot "win". Each N is measured
//! `PACKAGER_BENCH_REPEAT` times (default 3), alternating which packager goes first, and the
//! report gives medians. Caveat: on 2 cores the ingest and the publishers share the CPUs
//! with the packager under test, and other load on the machine starves the `-re` publishers
//! so less media flows: the report therefore also gives CPU per second of media published
//! (from the playlists) and the 1-minute load average.
//! Override N with `PACKAGER_BENCH_STREAMS=1,5,20`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::util::TempDir;
use super::util::{
    env_count, env_counts, free_port, log_file, median_f64, release_bins, rss_kib, wait_port,
    wait_published,
};
use anyhow::{Context, Result, bail};

/// Stream counts measured by default.
const DEFAULT_STREAMS: &[usize] = &[1, 20];
/// Time for packagers to connect and write their first segments before sampling.
const WARMUP: Duration = Duration::from_secs(5);
/// Sampling interval.
const MEASURE: Duration = Duration::from_secs(15);
/// How long a server may take to accept connections.
/// Poll interval for readiness.
/// Length of the pre-encoded clip.
const CLIP_SECONDS: &str = "10";
/// HLS target duration both packagers use (the contract in the README).
const HLS_TIME: &str = "2";
/// Playlist window both packagers use.
const HLS_LIST_SIZE: &str = "6";

/// Repetitions unless `PACKAGER_BENCH_REPEAT` says otherwise.
const DEFAULT_REPEAT: usize = 3;

/// One row pair of the report: medians over the repetitions.
struct Row {
    ours: Sample,
    ffmpeg: Sample,
    /// Median of the per-repetition ratios of schedstat CPU.
    cpu_ratio: f64,
    /// Median of the per-repetition ratios of CPU per media second.
    media_ratio: f64,
}

impl Row {
    fn from_pairs(pairs: &[(Sample, Sample)]) -> Self {
        let med = median_f64;
        let median_sample = |pick: fn(&(Sample, Sample)) -> &Sample| {
            let field = |f: fn(&Sample) -> f64| med(pairs.iter().map(|p| f(pick(p))).collect());
            Sample {
                cpu_percent: field(|s| s.cpu_percent),
                sched_percent: field(|s| s.sched_percent),
                rss_mib: field(|s| s.rss_mib),
                media_seconds: field(|s| s.media_seconds),
                loadavg: field(|s| s.loadavg),
            }
        };
        Row {
            ours: median_sample(|p| &p.0),
            ffmpeg: median_sample(|p| &p.1),
            cpu_ratio: med(pairs
                .iter()
                .map(|(o, f)| o.sched_percent / f.sched_percent)
                .collect()),
            media_ratio: med(pairs
                .iter()
                .map(|(o, f)| o.ms_per_media_second() / f.ms_per_media_second())
                .collect()),
        }
    }
}

/// One packager's measurement over all its processes.
struct Sample {
    /// CPU from utime+stime, 100 = one core busy.
    cpu_percent: f64,
    /// CPU from the threads' schedstat run time, 100 = one core busy.
    sched_percent: f64,
    /// Resident memory summed over the processes.
    rss_mib: f64,
    /// Media time published during the window, all streams: segments added times the mean
    /// EXTINF of the final playlist (whole segments, so +-1 segment per stream).
    media_seconds: f64,
    /// 1-minute load average at the end of the window: other work on the machine skews
    /// everything (starved publishers deliver fewer segments, caches are cold).
    loadavg: f64,
}

impl Sample {
    /// CPU (schedstat) per second of media published: unlike CPU per wall-clock second, this
    /// does not flatter a packager whose publishers were starved by other load.
    fn ms_per_media_second(&self) -> f64 {
        self.sched_percent * 10.0 * MEASURE.as_secs_f64() / self.media_seconds
    }
}

/// Runs the benchmark and appends its markdown report to `out`.
pub fn run(workspace: &Path, out: &mut String) -> Result<()> {
    let bins = release_bins(
        workspace,
        "PACKAGER_BENCH_BIN_DIR",
        &["packager", "ingest"],
        "cargo build --release -p packager -p ingest",
    )?;
    let (packager_bin, ingest_bin) = (&bins[0], &bins[1]);
    let streams = env_counts("PACKAGER_BENCH_STREAMS", DEFAULT_STREAMS)?;
    let dir = TempDir::new("bench-packager")?;
    let clip = dir.path.join("clip.flv");
    encode_clip(&clip)?;

    let repeat = env_count("PACKAGER_BENCH_REPEAT", DEFAULT_REPEAT)?;
    let mut rows = Vec::new();
    for &n in &streams {
        let pairs = measure_pairs(ingest_bin, packager_bin, &clip, &dir.path, n, repeat)
            .with_context(|| format!("{n} streams"))?;
        rows.push((n, Row::from_pairs(&pairs)));
    }

    writeln!(
        out,
        "\n### RTMP -> HLS packaging: packager vs `ffmpeg -c copy -f hls` \
         (720p30 ~2.5 Mbit/s + AAC per stream, {}s sample after {}s warm-up, median of {})\n",
        MEASURE.as_secs(),
        WARMUP.as_secs(),
        repeat.max(1)
    )?;
    writeln!(
        out,
        "Ours: one process with N `--source`s; ffmpeg: one process per stream, summed. \
         CPU is on-CPU time from schedstat (ns), 1 core = 100 %; the tick-based figure \
         (utime+stime, 10 ms ticks) is a coarse cross-check. Ratios are medians of the \
         per-repetition ratios (back-to-back runs). Target: ours <= 0.5x ffmpeg's CPU.\n"
    )?;
    writeln!(
        out,
        "| streams | packager | processes | CPU % (schedstat) | CPU ms/s per stream | CPU % (ticks) | RSS MiB total | RSS MiB per stream | media s packaged | CPU ms per media s | CPU ratio ours/ffmpeg | ratio per media s | loadavg |"
    )?;
    writeln!(
        out,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for (n, row) in &rows {
        for (name, procs, s, r, rw) in [
            (
                "packager",
                1,
                &row.ours,
                format!("{:.2}", row.cpu_ratio),
                format!("{:.2}", row.media_ratio),
            ),
            ("ffmpeg", *n, &row.ffmpeg, String::new(), String::new()),
        ] {
            let per = *n as f64;
            writeln!(
                out,
                "| {n} | {name} | {procs} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {:.0} | {:.2} | {r} | {rw} | {:.1} |",
                s.sched_percent,
                s.sched_percent * 10.0 / per,
                s.cpu_percent,
                s.rss_mib,
                s.rss_mib / per,
                s.media_seconds,
                s.ms_per_media_second(),
                s.loadavg,
            )?;
        }
    }
    Ok(())
}

fn encode_clip(clip: &Path) -> Result<()> {
    test_kit::Publisher::new(1280, 720, 30)
        .audio_source("sine=frequency=440:sample_rate=48000")
        .seconds(CLIP_SECONDS.parse::<f64>()?)
        .preset("veryfast")
        .fixed_gop(60)
        .video_bitrate("2500k")
        .yuv420p()
        .audio_bitrate("128k")
        .try_encode(clip)
        .context("ffmpeg failed to encode the bench clip")
}

/// Starts an ingest and `n` publishers, then measures our packager and ffmpeg in turn,
/// `repeat` times; returns the (ours, ffmpeg) pairs.
fn measure_pairs(
    ingest_bin: &Path,
    packager_bin: &Path,
    clip: &Path,
    dir: &Path,
    n: usize,
    repeat: usize,
) -> Result<Vec<(Sample, Sample)>> {
    let run_dir = dir.join(format!("n{n}"));
    std::fs::create_dir_all(&run_dir).context("creating the run directory")?;
    let port = free_port()?;
    let admin = free_port()?;
    let _ingest = Proc::spawn(
        Command::new(ingest_bin)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--admin")
            .arg(format!("127.0.0.1:{admin}"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&run_dir, "ingest.log")?),
    )?;
    wait_port(port)?;
    let names: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
    let url = |name: &str| format!("rtmp://127.0.0.1:{port}/live/{name}");
    let mut publishers = Vec::new();
    for name in &names {
        publishers.push(Proc::spawn(
            Command::new("ffmpeg")
                .args(test_kit::publisher::replay_args(clip, &url(name)))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(&run_dir, &format!("publish-{name}.log"))?),
        )?);
    }
    wait_published(admin, n)?;

    let run_ours = |rep: usize| -> Result<Sample> {
        let ours_out = run_dir.join(format!("ours-{rep}"));
        let mut cmd = Command::new(packager_bin);
        for name in &names {
            cmd.arg("--source").arg(url(name));
        }
        let proc = Proc::spawn(
            cmd.arg("--out")
                .arg(&ours_out)
                .arg("--admin")
                .arg(format!("127.0.0.1:{}", free_port()?))
                .args(["--target-duration", HLS_TIME, "--window", HLS_LIST_SIZE])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(&run_dir, "packager.log")?),
        )?;
        sample(&[proc], &ours_out, &names).context("our packager")
    };
    let run_ffmpeg = |rep: usize| -> Result<Sample> {
        let ff_out = run_dir.join(format!("ffmpeg-{rep}"));
        let mut procs = Vec::new();
        for name in &names {
            let stream_dir = ff_out.join(name);
            std::fs::create_dir_all(&stream_dir).context("creating an ffmpeg output dir")?;
            procs.push(Proc::spawn(
                Command::new("ffmpeg")
                    .args(["-hide_banner", "-loglevel", "error", "-i", &url(name)])
                    .args(["-c", "copy", "-f", "hls", "-hls_time", HLS_TIME])
                    .args(["-hls_list_size", HLS_LIST_SIZE])
                    .args(["-hls_flags", "delete_segments+program_date_time"])
                    .arg("-hls_segment_filename")
                    .arg(stream_dir.join("%d.ts"))
                    .arg(stream_dir.join("index.m3u8"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log_file(&run_dir, &format!("ffmpeg-hls-{name}.log"))?),
            )?);
        }
        sample(&procs, &ff_out, &names).context("ffmpeg hls")
    };
    let mut pairs = Vec::new();
    for rep in 0..repeat.max(1) {
        // Alternate which goes first, so a machine busy for a while skews both alike.
        let pair = if rep % 2 == 0 {
            let o = run_ours(rep)?;
            (o, run_ffmpeg(rep)?)
        } else {
            let f = run_ffmpeg(rep)?;
            (run_ours(rep)?, f)
        };
        pairs.push(pair);
    }
    drop(publishers);
    Ok(pairs)
}

/// Warms up, samples the processes' CPU over [`MEASURE`] and their RSS at the end, and checks
/// that every stream's playlist advanced during the window.
fn sample(procs: &[Proc], out_dir: &Path, names: &[String]) -> Result<Sample> {
    std::thread::sleep(WARMUP);
    for p in procs {
        p.check_running()?;
    }
    let msn0: Vec<Option<u64>> = names.iter().map(|n| media_sequence(out_dir, n)).collect();
    let cpu0 = total(procs, |p| cpu_ticks(p.pid()))?;
    let ns0 = total(procs, |p| run_ns(p.pid()))?;
    let t0 = Instant::now();
    std::thread::sleep(MEASURE);
    let cpu1 = total(procs, |p| cpu_ticks(p.pid()))?;
    let ns1 = total(procs, |p| run_ns(p.pid()))?;
    let elapsed = t0.elapsed();
    let rss = total(procs, |p| rss_kib(p.pid()))?;
    for p in procs {
        p.check_running()?;
    }
    let mut media_seconds = 0.0;
    for (name, before) in names.iter().zip(&msn0) {
        let after = media_sequence(out_dir, name);
        let advanced = match (before, after) {
            (Some(b), Some(a)) if a > *b => a - b,
            _ => bail!(
                "stream {name}: playlist did not advance during the sample ({before:?} -> {after:?}) in {}",
                out_dir.display()
            ),
        };
        media_seconds += advanced as f64 * mean_extinf(out_dir, name).unwrap_or(f64::NAN);
    }
    let hz = clock_ticks_per_second()?;
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    Ok(Sample {
        loadavg,
        cpu_percent: cpu1.saturating_sub(cpu0) as f64 / hz / elapsed.as_secs_f64() * 100.0,
        sched_percent: ns1.saturating_sub(ns0) as f64 / 1e9 / elapsed.as_secs_f64() * 100.0,
        rss_mib: rss as f64 / 1024.0,
        media_seconds,
    })
}

fn total(procs: &[Proc], f: impl Fn(&Proc) -> Result<u64>) -> Result<u64> {
    procs.iter().map(f).sum()
}

/// Media sequence number of the newest segment of `dir/name/index.m3u8` (MEDIA-SEQUENCE plus
/// the segments listed after the first), if it exists yet. Not MEDIA-SEQUENCE itself: that
/// stands still until the window is full, which takes longer than the warm-up.
fn media_sequence(dir: &Path, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(name).join("index.m3u8")).ok()?;
    crate::drill::newest_msn(&text)
}

/// Mean `#EXTINF` duration of `dir/name/index.m3u8` (parsed by m3u8-rs).
fn mean_extinf(dir: &Path, name: &str) -> Option<f64> {
    let text = std::fs::read(dir.join(name).join("index.m3u8")).ok()?;
    let media = m3u8_rs::parse_media_playlist_res(&text).ok()?;
    let n = media.segments.len();
    (n > 0).then(|| {
        media
            .segments
            .iter()
            .map(|s| f64::from(s.duration))
            .sum::<f64>()
            / n as f64
    })
}

/// utime + stime (fields 14 and 15 of /proc/PID/stat, after the parenthesised comm).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc/PID/stat")?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state), so utime (14) is index 11 and stime (15) index 12.
    Ok(f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?)
}

/// Sum of the threads' on-CPU time in ns (first field of /proc/PID/task/TID/schedstat).
/// Threads that exit during the window take their time with them; neither packager's
/// long-lived threads do.
fn run_ns(pid: u32) -> Result<u64> {
    let mut sum = 0;
    let tasks = format!("/proc/{pid}/task");
    for entry in std::fs::read_dir(&tasks).with_context(|| format!("listing {tasks}"))? {
        let Ok(stat) = std::fs::read_to_string(entry?.path().join("schedstat")) else {
            continue; // the thread exited meanwhile
        };
        sum += stat
            .split_whitespace()
            .next()
            .context("empty schedstat")?
            .parse::<u64>()
            .context("schedstat run time")?;
    }
    Ok(sum)
}

fn clock_ticks_per_second() -> Result<f64> {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("getconf CLK_TCK")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// A child process killed on drop, on every path.
struct Proc {
    child: std::cell::RefCell<Child>,
    pid: u32,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Result<Proc> {
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
        Ok(Proc {
            pid: child.id(),
            child: std::cell::RefCell::new(child),
        })
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails if the process has exited (a crash would otherwise read as 0 CPU).
    fn check_running(&self) -> Result<()> {
        match self.child.borrow_mut().try_wait()? {
            None => Ok(()),
            Some(status) => bail!("process {} exited early: {status}", self.pid),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let child = self.child.get_mut();
        let _ = child.kill();
        let _ = child.wait();
    }
}

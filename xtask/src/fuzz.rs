//! `cargo xtask fuzz <target>`: coverage-guided fuzzing (cargo-fuzz, libFuzzer) of the parsers
//! that take bytes from a peer; `cargo xtask fuzz list` names the targets.
//!
//! The targets are the files of `fuzz/fuzz_targets/`, thin wrappers around the functions of
//! `crates/fuzz-harness`, whose replay test runs `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` under `cargo xtask test`. This command only fuzzes:
//! * cargo-fuzz is installed from crates.io on first use (`cargo install cargo-fuzz --locked`);
//! * the build uses the stable toolchain with `RUSTC_BOOTSTRAP=1`, since cargo-fuzz passes
//!   `-Z` flags to rustc; the default sanitizer is `none` (the parsers are safe Rust, so
//!   AddressSanitizer would find nothing a panic does not, at a third of the speed), with
//!   debug assertions and overflow checks on (cargo-fuzz's default);
//! * new inputs go to `fuzz/work/<target>/` (not versioned); the repository's corpus is read
//!   only, unless `--merge` adds to it the inputs that bring new coverage;
//! * a crash stops the run and is left in `fuzz/artifacts/<target>/`; the summary says how to
//!   minimize it and where the regression file goes.
//!
//! One libFuzzer process, one job: the machines this runs on are small and shared.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::prereq;

/// Seconds of fuzzing when neither `--runs` nor `--time` is given.
const DEFAULT_SECONDS: u64 = 60;
/// libFuzzer's per-input timeout: an input that takes longer is a hang, reported as a crash.
const INPUT_TIMEOUT_SECONDS: u64 = 10;
/// libFuzzer's memory limit per process.
const RSS_LIMIT_MB: u64 = 2048;
/// The target that needs root (BPF_PROG_TEST_RUN).
const ROOT_TARGET: &str = "ebpf";

/// `cargo xtask fuzz` arguments.
#[derive(clap::Args)]
pub struct FuzzArgs {
    /// The target to fuzz, or `list` to print the targets.
    target: String,
    /// Stop after this many executions.
    #[arg(long, conflicts_with = "time")]
    runs: Option<u64>,
    /// Stop after this many seconds (60 when neither this nor --runs is given).
    #[arg(long)]
    time: Option<u64>,
    /// Afterwards, merge the inputs that add coverage into fuzz/corpus/<target>/.
    #[arg(long)]
    merge: bool,
    /// Sanitizer for cargo fuzz: none, or address (slower).
    #[arg(long, default_value = "none")]
    sanitizer: String,
}

/// The targets: the file stems of `fuzz/fuzz_targets/*.rs`, sorted.
pub fn targets(ws: &Path) -> Result<Vec<String>> {
    let dir = ws.join("fuzz/fuzz_targets");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem()
        {
            names.push(stem.to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Figures from libFuzzer's final statistics (`-print_final_stats=1`) and progress lines.
#[derive(Debug, Default, PartialEq)]
struct Stats {
    executions: Option<u64>,
    exec_per_sec: Option<u64>,
    /// Path of a crash (or hang, or leak) input, from "Test unit written to ...".
    crash: Option<String>,
}

impl Stats {
    fn add_line(&mut self, line: &str) {
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            self.executions = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            self.exec_per_sec = v.trim().parse().ok();
        } else if let Some(rest) = line.split("Test unit written to ").nth(1) {
            self.crash = Some(rest.trim().to_string());
        } else if let Some(rest) = line.strip_prefix('#') {
            // Progress: "#123456\tpulse  cov: ... exec/s: 4321 rss: ...": the latest count is
            // the execution count if the run ends without final statistics (a crash).
            let mut words = rest.split_whitespace();
            if let Some(Ok(n)) = words.next().map(str::parse) {
                self.executions = Some(n);
            }
            let mut words = rest.split_whitespace().skip_while(|w| *w != "exec/s:");
            if let Some(Ok(n)) = words.nth(1).map(str::parse) {
                self.exec_per_sec = Some(n);
            }
        }
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Installs cargo-fuzz from crates.io when `cargo fuzz` is not there.
fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new(cargo())
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    let status = Command::new(cargo())
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed ({status})");
    }
    Ok(())
}

/// Variables `cargo run` sets for xtask itself. Build scripts (ring's) declare some of them
/// with `rerun-if-env-changed`, so passing them on would make every fuzz build started from
/// here rebuild what a `cargo fuzz` typed in a shell built, and back.
const CARGO_RUN_VARS: &[&str] = &[
    "CARGO_MANIFEST_",
    "CARGO_PKG_",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "OUT_DIR",
];

/// `cargo fuzz run` for `target` with `dirs` as corpus directories and libFuzzer `flags`.
fn cargo_fuzz_run(ws: &Path, args: &FuzzArgs, dirs: &[&Path], flags: &[String]) -> Command {
    let mut cmd = Command::new(cargo());
    for (name, _) in std::env::vars_os() {
        let name_str = name.to_string_lossy();
        if CARGO_RUN_VARS.iter().any(|p| name_str.starts_with(p)) {
            cmd.env_remove(&name);
        }
    }
    cmd.current_dir(ws)
        // cargo-fuzz passes -Z flags; the stable toolchain accepts them with this.
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "run", "--sanitizer", &args.sanitizer, &args.target])
        .args(dirs)
        .arg("--")
        .args(flags);
    cmd
}

fn shell_words(cmd: &Command) -> String {
    let mut s = String::from("RUSTC_BOOTSTRAP=1 ");
    s += &cmd.get_program().to_string_lossy();
    for a in cmd.get_args() {
        s.push(' ');
        s += &a.to_string_lossy();
    }
    s
}

/// `cargo xtask fuzz`.
pub fn run(ws: &Path, args: FuzzArgs) -> Result<()> {
    let all = targets(ws)?;
    if args.target == "list" {
        for t in &all {
            let note = if t == ROOT_TARGET {
                "  (needs root)"
            } else {
                ""
            };
            println!("{t}{note}");
        }
        return Ok(());
    }
    if !all.contains(&args.target) {
        bail!(
            "unknown fuzz target {:?}; targets: {}",
            args.target,
            all.join(", ")
        );
    }
    if args.target == ROOT_TARGET {
        prereq::become_root()?;
        // The eBPF object is built by switcher-ctl's build script: bpf-linker and a BPF rustc.
        prereq::ensure(ws)?;
    }
    ensure_cargo_fuzz()?;

    let corpus = ws.join("fuzz/corpus").join(&args.target);
    let work = ws.join("fuzz/work").join(&args.target);
    let artifacts: PathBuf = ws.join("fuzz/artifacts").join(&args.target);
    for dir in [&corpus, &work, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let limit = match (args.runs, args.time) {
        (Some(n), _) => format!("-runs={n}"),
        (None, t) => format!("-max_total_time={}", t.unwrap_or(DEFAULT_SECONDS)),
    };
    let flags = vec![
        limit,
        "-print_final_stats=1".into(),
        format!("-timeout={INPUT_TIMEOUT_SECONDS}"),
        format!("-rss_limit_mb={RSS_LIMIT_MB}"),
        // Trailing slash: libFuzzer prepends this to the file name.
        format!("-artifact_prefix={}/", artifacts.display()),
    ];
    // New inputs are written to the first directory: the scratch one, not the repository's.
    let mut cmd = cargo_fuzz_run(ws, &args, &[&work, &corpus], &flags);
    let command = shell_words(&cmd);
    eprintln!("xtask: {command}");
    let started = Instant::now();
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .context("running cargo fuzz")?;
    let mut stats = Stats::default();
    for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
        let line = line?;
        eprintln!("{line}");
        stats.add_line(&line);
    }
    let status = child.wait()?;
    let seconds = started.elapsed().as_secs();
    let crashes = u32::from(stats.crash.is_some());
    println!(
        "\nxtask fuzz {}: {} executions, {} exec/s, {crashes} crashes, {seconds} s wall (with the build)\n  command: {command}",
        args.target,
        stats.executions.map_or("?".into(), |n| n.to_string()),
        stats.exec_per_sec.map_or("?".into(), |n| n.to_string()),
    );
    if let Some(crash) = &stats.crash {
        println!(
            "  crash input: {crash}\n  minimize: RUSTC_BOOTSTRAP=1 cargo fuzz tmin --sanitizer {} {} {crash}\n  then add the minimized input to fuzz/regressions/{}/ (replayed by `cargo xtask test`)",
            args.sanitizer, args.target, args.target
        );
        bail!("fuzz target {} crashed", args.target);
    }
    if !status.success() {
        bail!("cargo fuzz failed ({status})");
    }
    if args.merge {
        // Adds to the repository's corpus only the scratch inputs that bring new coverage.
        let mut merge = cargo_fuzz_run(ws, &args, &[&corpus, &work], &["-merge=1".into()]);
        eprintln!("xtask: {}", shell_words(&merge));
        let status = merge.status().context("running the corpus merge")?;
        if !status.success() {
            bail!("corpus merge failed ({status})");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_stats_win_over_progress() {
        let mut s = Stats::default();
        s.add_line(
            "#524288\tpulse  cov: 812 ft: 2913 corp: 160/31Kb lim: 4096 exec/s: 87381 rss: 60Mb",
        );
        assert_eq!(
            (s.executions, s.exec_per_sec),
            (Some(524_288), Some(87_381))
        );
        s.add_line("stat::number_of_executed_units: 10000000");
        s.add_line("stat::average_exec_per_sec:     83333");
        assert_eq!(
            (s.executions, s.exec_per_sec),
            (Some(10_000_000), Some(83_333))
        );
        assert_eq!(s.crash, None);
    }

    #[test]
    fn crash_path_is_found() {
        let mut s = Stats::default();
        s.add_line("artifact_prefix='fuzz/artifacts/flv/'; Test unit written to fuzz/artifacts/flv/crash-0a1b");
        assert_eq!(s.crash.as_deref(), Some("fuzz/artifacts/flv/crash-0a1b"));
    }
}

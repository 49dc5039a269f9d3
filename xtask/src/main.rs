//! `cargo xtask`: the project's automation, so that two commands are all a user needs.
//!
//! * `cargo xtask run`: set up what is missing, build, start the whole stack on this machine.
//! * `cargo xtask test`: set up what is missing, build, run every test (unit, fixture,
//!   BPF_PROG_TEST_RUN, network-namespace integration, interop, end-to-end, monitoring checks).
//! * `cargo xtask bench <name>`: benchmarks against their peers; results go to BENCHMARKS.md.
//! * `cargo xtask drill <fault>`: failover drills against a running stack.
//! * `cargo xtask lab [--drill ...]`: the multi-host lab (BGP/ECMP edges, DSR origin hosts).
//! * `cargo xtask setup`: only the installation step (`scripts/setup`).
//! * `cargo xtask codegen [--check]`: the deployment files from the layout (`layout`, `codegen`).
//! * `cargo xtask fuzz <target>`: coverage-guided fuzzing of the peer-facing parsers.
//!
//! # Layout
//! * `prereq`: what the build and the tests need, and running `scripts/setup` when missing.
//! * `testing`: the test runner with its summary.
//! * `bench/`: one module per benchmark.
//! * `stack`: starting and stopping the services (`run`, drills, end-to-end tests).
//! * `drill`: fault injection against a running stack.
//! * `control`: the unix socket through which a drill asks `run` to start a service again.
//! * `fuzz`: cargo-fuzz (libFuzzer) runs of `fuzz/`.

mod bench;
mod control;
mod drill;
mod fuzz;
mod lab_run;
mod prereq;
mod run;
mod testing;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, test and benchmark the eBPF HLS edge"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing (Debian packages, bpf-linker, bpffs, hls.js): scripts/setup.
    Setup,
    /// Build the eBPF object and every service (release).
    Build,
    /// Run every test; prints a summary line at the end.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter), after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Start the whole stack on this machine (Ctrl-C stops it and detaches).
    Run(run::RunArgs),
    /// Start the multi-host lab in namespaces (router with ECMP, two edges announcing the VIP
    /// over BGP, two origin hosts answering viewers directly, ingest, client); drills.
    Lab(lab_run::LabArgs),
    /// Inject a fault into a running stack, restore it, and print a timeline.
    Drill(drill::DrillArgs),
    /// Benchmarks against their peers (results appended to BENCHMARKS.md).
    Bench {
        /// Which benchmark.
        #[arg(value_enum)]
        name: bench::Bench,
    },
    /// Write scripts/edge.env.example, the units' generated blocks, prometheus.yml's targets
    /// and the README's deployment table from xtask/src/layout.rs and the binaries' flags.
    Codegen {
        /// Change nothing; fail with a diff when a committed file differs.
        #[arg(long)]
        check: bool,
    },
    /// Coverage-guided fuzzing of a peer-facing parser (`list` names the targets).
    Fuzz(fuzz::FuzzArgs),
}

use xtask::workspace;

fn main() -> Result<()> {
    let cli = Cli::parse();
    let ws = workspace();
    match cli.cmd {
        Cmd::Setup => prereq::run_setup(&ws),
        Cmd::Build => {
            prereq::ensure(&ws)?;
            prereq::cargo(&ws, &["build", "--release", "--workspace", "--bins"])
        }
        Cmd::Test { args } => testing::run(&ws, &args),
        Cmd::Run(args) => run::run(&ws, args),
        Cmd::Lab(args) => lab_run::run(&ws, args),
        Cmd::Drill(args) => drill::run(&ws, args),
        Cmd::Bench { name } => bench::run(&ws, name),
        Cmd::Codegen { check } => {
            // The schemas come from the built binaries (switcher-ctl's build needs the eBPF
            // toolchain that setup installs).
            prereq::ensure(&ws)?;
            let mut args = vec!["build", "--bins"];
            for bin in xtask::codegen::BINARIES {
                args.extend(["-p", bin]);
            }
            prereq::cargo(&ws, &args)?;
            xtask::codegen::run(&ws, &xtask::codegen::debug_bin_dir(&ws), check)
        }
        Cmd::Fuzz(args) => fuzz::run(&ws, args),
    }
}

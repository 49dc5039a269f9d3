//! Benchmarks. Each compares against its named peer in the same run and reports the ratio;
//! results are printed and appended to BENCHMARKS.md with the command that produced them.

mod balance;
mod dsr;
mod failover;
mod ingest;
mod origin;
mod packager;
mod util;

use std::{fmt::Write as _, path::Path};

use anyhow::Result;

use crate::prereq;

/// The benchmarks, by the name `cargo xtask bench` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Bench {
    /// XDP program cost (BPF_PROG_TEST_RUN) and wrk through the VIP against direct.
    Datapath,
    /// The origin against nginx.
    Origin,
    /// The ingest against nginx-rtmp.
    Ingest,
    /// The packager against ffmpeg's HLS muxer.
    Packager,
    /// Failover time per failure class, and the thundering herd at switchback.
    Failover,
    /// wrk through the VIP balanced over four origins against wrk straight to the same four
    /// origins (the data plane alone) and against wrk straight to one origin.
    Balance,
    /// Direct server return in the multi-host lab: edge CPU per Gbit/s against HAProxy, and
    /// throughput against straight to an origin host.
    Dsr,
    /// Every benchmark above, in that order.
    All,
}

impl Bench {
    /// Every single benchmark, in the order `all` runs them.
    const EACH: [Bench; 7] = [
        Bench::Datapath,
        Bench::Origin,
        Bench::Ingest,
        Bench::Packager,
        Bench::Failover,
        Bench::Balance,
        Bench::Dsr,
    ];

    /// The name on the command line and in BENCHMARKS.md.
    fn name(self) -> &'static str {
        match self {
            Bench::Datapath => "datapath",
            Bench::Origin => "origin",
            Bench::Ingest => "ingest",
            Bench::Packager => "packager",
            Bench::Failover => "failover",
            Bench::Balance => "balance",
            Bench::Dsr => "dsr",
            Bench::All => "all",
        }
    }
}

/// Runs benchmark `which` (or all) and appends its report to BENCHMARKS.md.
pub fn run(ws: &Path, which: Bench) -> Result<()> {
    prereq::become_root()?;
    prereq::ensure(ws)?;
    let benches: Vec<Bench> = match which {
        Bench::All => Bench::EACH.to_vec(),
        one => vec![one],
    };
    // Every bench runs release binaries, the lab's included: the eBPF object is built the
    // same either way, but switcher-ctl's CPU time is the DSR bench's edge cost and the
    // origins' speed is its throughput, and a debug build inflates both.
    prereq::cargo(ws, &["build", "--release", "--workspace", "--bins"])?;
    for bench in benches {
        if bench == Bench::Datapath {
            // A cargo bench of its own (it needs the eBPF object and the netns fixtures); it
            // prints and appends its own section.
            prereq::cargo(ws, &["bench", "-p", "switcher-ctl", "--bench", "datapath"])?;
            continue;
        }
        let mut out = String::new();
        writeln!(
            out,
            "\n## `cargo xtask bench {}` ({})\n",
            bench.name(),
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
        )?;
        match bench {
            Bench::Origin => origin::run(ws, &mut out)?,
            Bench::Ingest => ingest::run(ws, &mut out)?,
            Bench::Packager => packager::run(ws, &mut out)?,
            Bench::Failover => failover::run(ws, &mut out)?,
            Bench::Balance => balance::run(ws, &mut out)?,
            Bench::Dsr => dsr::run(ws, &mut out)?,
            Bench::Datapath | Bench::All => unreachable!("handled above"),
        }
        println!("{out}");
        let path = ws.join("BENCHMARKS.md");
        let mut text = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
        text.push_str(&out);
        std::fs::write(&path, text)?;
    }
    Ok(())
}

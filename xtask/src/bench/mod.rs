//! Benchmarks. Each compares against its named peer in the same run and reports the ratio;
//! results are printed and appended to BENCHMARKS.md with the command that produced them.

mod failover;
mod ingest;
mod origin;
mod packager;
mod util;

use std::{fmt::Write as _, path::Path};

use anyhow::{Result, bail};

use crate::prereq;

/// Runs benchmark `name` (or all) and appends its report to BENCHMARKS.md.
pub fn run(ws: &Path, name: &str) -> Result<()> {
    prereq::become_root()?;
    prereq::ensure(ws)?;
    let names: Vec<&str> = match name {
        "all" => vec!["datapath", "origin", "ingest", "packager", "failover"],
        n => vec![n],
    };
    prereq::cargo(ws, &["build", "--release", "--workspace", "--bins"])?;
    for n in names {
        if n == "datapath" {
            // A cargo bench of its own (it needs the eBPF object and the netns fixtures); it
            // prints and appends its own section.
            prereq::cargo(ws, &["bench", "-p", "switcher-ctl", "--bench", "datapath"])?;
            continue;
        }
        let mut out = String::new();
        let date = std::process::Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d %H:%M UTC")
            .output()?;
        writeln!(
            out,
            "\n## `cargo xtask bench {n}` ({})\n",
            String::from_utf8_lossy(&date.stdout).trim()
        )?;
        match n {
            "origin" => origin::run(ws, &mut out)?,
            "ingest" => ingest::run(ws, &mut out)?,
            "packager" => packager::run(ws, &mut out)?,
            "failover" => failover::run(ws, &mut out)?,
            other => {
                bail!("unknown benchmark {other:?} (datapath|origin|ingest|packager|failover|all)")
            }
        }
        println!("{out}");
        let path = ws.join("BENCHMARKS.md");
        let mut text = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
        text.push_str(&out);
        std::fs::write(&path, text)?;
    }
    Ok(())
}

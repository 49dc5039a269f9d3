//! `cargo xtask test`: prerequisites, build, every test, one summary line.
//!
//! Tests that attach eBPF programs or create network namespaces need root, so the whole run
//! goes through sudo when started by a user. Output is streamed as cargo prints it and the
//! `test result:` lines are added up into a final `N passed, N failed` line.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::prereq;

/// Counts from cargo's `test result:` lines.
#[derive(Default, Debug, PartialEq)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    /// Adds a line like `test result: ok. 12 passed; 0 failed; 1 ignored; ...`.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            let (n, what) = match words.as_slice() {
                [_, n, what, ..] if n.parse::<u64>().is_ok() => (n, what),
                [n, what, ..] => (n, what),
                _ => continue,
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match *what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

pub fn run(ws: &Path, extra: &[String]) -> Result<()> {
    prereq::become_root()?;
    // What an earlier run left when it was killed before its drops ran (namespaces with XDP
    // still attached, bpffs mounts, run directories), or a failed test kept for a look (its
    // run directory, with the services' logs): removed before anything starts.
    for removed in test_kit::netns::reap_stale() {
        println!(
            "xtask test: removed {removed}, left by an earlier run (killed, or a failed test's logs)"
        );
    }
    prereq::ensure(ws)?;
    // Binaries first: interop and end-to-end tests start them as real processes.
    prereq::cargo(ws, &["build", "--workspace", "--bins"])?;

    let mut args: Vec<String> = vec!["test".into(), "--workspace".into(), "--no-fail-fast".into()];
    if !extra.is_empty() {
        args.push("--".into());
        args.extend(extra.iter().cloned());
    }
    let mut child = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(&args)
        .current_dir(ws)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let mut tally = Tally::default();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        tally.add_line(&line);
    }
    let status = child.wait()?;
    println!(
        "\nxtask test: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    if !status.success() || tally.failed > 0 {
        bail!("tests failed");
    }
    if tally.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_adds_cargo_result_lines() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.2s");
        t.add_line(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 5 tests");
        assert_eq!(
            t,
            Tally {
                passed: 15,
                failed: 2,
                ignored: 1
            }
        );
    }
}

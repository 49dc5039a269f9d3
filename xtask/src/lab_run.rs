//! `cargo xtask lab`: builds, starts the multi-host lab (`xtask::lab`) and prints the VIP, the
//! URLs and how to inspect each part; runs the drills asked for; Ctrl-C stops and removes
//! everything.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::Args;
use xtask::lab::{DRILLS, Lab, LabConfig};

use crate::prereq;

/// Options of `cargo xtask lab`.
#[derive(Args, Debug)]
pub struct LabArgs {
    /// Stream name.
    #[arg(long, default_value = "demo")]
    pub stream: String,
    /// Directory for logs, FRR configurations and HLS output (default: a fresh one under /run).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Run these drills once the lab is up, in order (edge-kill, edge-link-down,
    /// origin-host-kill, router-flap), printing a timeline for each.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(DRILLS))]
    pub drill: Vec<String>,
    /// Stop after the drills instead of waiting for Ctrl-C.
    #[arg(long)]
    pub exit: bool,
    /// Attach XDP in veth's native mode instead of generic (see `xtask::lab`).
    #[arg(long)]
    pub native: bool,
}

pub fn run(ws: &Path, args: LabArgs) -> Result<()> {
    prereq::become_root()?;
    prereq::ensure(ws)?;
    prereq::cargo(ws, &["build", "--release", "--workspace", "--bins"])?;
    let run_dir = args
        .run_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/run/hls-edge-lab-{}", std::process::id())));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    eprintln!(
        "xtask: starting the lab (router, 2 edges, 2 origin hosts, ingest, client); logs in {}",
        run_dir.join("logs").display()
    );
    let mut lab = Lab::start(LabConfig {
        bin_dir: ws.join("target/release"),
        run_dir,
        stream: args.stream.clone(),
        video: (1280, 720, 30),
        native: args.native,
        probe_timeouts: xtask::lab::LOADED_PROBE_TIMEOUTS,
    })?;
    println!("{}", lab.describe());
    for d in &args.drill {
        println!("drill {d}:");
        for (what, at) in lab.drill(d)? {
            println!("  {:>8.3} s  {what}", at.as_secs_f64());
        }
    }
    if !args.exit {
        println!("  Ctrl-C stops everything and removes the namespaces.");
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("xtask: stopping the lab");
    drop(lab);
    Ok(())
}

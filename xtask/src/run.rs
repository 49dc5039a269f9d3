//! `cargo xtask run`: the whole stack on this machine until Ctrl-C.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use xtask::stack::{self, Stack, StackConfig};

use crate::prereq;

/// Options of `cargo xtask run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Interface to attach the data plane to.
    #[arg(long, default_value = "lo")]
    pub iface: String,
    /// The VIP viewers connect to.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub vip: SocketAddr,
    /// Stream name.
    #[arg(long, default_value = "demo")]
    pub stream: String,
    /// Do not start the ffmpeg test pattern (publish with your own OBS/ffmpeg).
    #[arg(long)]
    pub no_publisher: bool,
    /// Directory for each service's log and the HLS output (default: `/run/hls-edge`, which the
    /// `hlsedge` service user can reach; it may not be able to enter the checkout).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Pin root of the eBPF objects.
    #[arg(long, default_value = "/sys/fs/bpf/switcher")]
    pub pin_root: PathBuf,
    /// Packager+origin pairs to start, origin i (1..N) on port 8080+i: 2 are the primary and
    /// the backup, other counts are named o1..oN.
    #[arg(long, default_value_t = xtask::layout::DEFAULT_ORIGINS, value_parser = origin_count)]
    pub origins: usize,
    /// switcher-ctl's steering policy: failover (one active origin, in preference order) or
    /// balance (every healthy origin, weighted Maglev).
    #[arg(long, default_value = "failover", value_parser = ["failover", "balance"])]
    pub policy: String,
}

/// `--origins`: 1 to [`xtask::layout::MAX_ORIGINS`].
fn origin_count(s: &str) -> Result<usize, String> {
    let max = xtask::layout::MAX_ORIGINS;
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("must be a number of origins from 1 to {max}")),
    }
}

/// Default run directory (the service user can always reach it).
const DEFAULT_ROOT_RUN_DIR: &str = "/run/hls-edge";
/// File naming the run directory of the running stack, for `cargo xtask drill`.
pub const RUN_DIR_POINTER: &str = "/run/hls-edge.rundir";

/// A fresh publish key for this run: 128 random bits, hex.
fn publish_key() -> Result<String> {
    use std::io::Read as _;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

pub fn run(ws: &Path, args: RunArgs) -> Result<()> {
    prereq::become_root()?;
    prereq::ensure(ws)?;
    prereq::cargo(ws, &["build", "--release", "--workspace", "--bins"])?;
    for port in xtask::layout::listen_ports_for(args.origins) {
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_err() {
            bail!("port {port} is in use: is a stack already running? (stop it, or free the port)");
        }
    }
    // The unprivileged system user, never the invoking one (whose files and sudo rights a
    // compromised service would inherit).
    let user = stack::SERVICE_USER.to_string();
    let run_dir = match &args.run_dir {
        Some(d) if d.is_absolute() => d.clone(),
        Some(d) => ws.join(d),
        None => PathBuf::from(DEFAULT_ROOT_RUN_DIR),
    };
    // Where drills find this run.
    std::fs::write(RUN_DIR_POINTER, run_dir.to_string_lossy().as_bytes())?;
    let cfg = StackConfig {
        bin_dir: ws.join("target/release"),
        run_dir: run_dir.clone(),
        iface: args.iface.clone(),
        vip: args.vip,
        stream: args.stream.clone(),
        publisher: !args.no_publisher,
        video: (1280, 720, 30),
        netns: None,
        service_user: Some(user),
        pin_root: args.pin_root.clone(),
        assets_dir: Some(ws.join("web/node_modules/hls.js/dist")),
        switcher_args: vec!["--policy".into(), args.policy.clone()],
        admin: stack::SWITCHER_ADMIN.into(),
        origins: args.origins,
        peer_fill: true,
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let mut stack = Stack::new(cfg);
    // Only holders of the key publish (ours gets it); nobody takes the stream name.
    let key = publish_key()?;
    stack.set_publish_key(&key);
    eprintln!(
        "xtask: starting ingest, publisher, {n} packagers, {n} origins and switcher-ctl, policy {} (logs in {})",
        args.policy,
        run_dir.join("logs").display(),
        n = args.origins,
    );
    stack.start_all()?;
    let vip = args.vip;
    let pins = args.pin_root.display();
    println!(
        "\n  play      ffplay http://{vip}/hls/{s}/index.m3u8   (or VLC, or the status page's player)\n  \
         publish   rtmp://127.0.0.1:{rtmp}/live/{s}?key={key}{own}\n  \
         status    http://{admin}/   metrics http://{admin}/metrics   health http://{admin}/healthz\n  \
         origins   {origins}\n  \
         kernel    sudo bpftool prog show | grep switcher;  sudo bpftool net show dev {iface}\n            \
         sudo bpftool map dump pinned {pins}/maps/SWITCHER_FLOWS;  sudo tc filter show dev {iface} egress\n  \
         drills    cargo xtask drill origin-kill | packager-kill | origin-freeze | origin-5xx\n  \
         Ctrl-C stops everything and detaches.\n",
        s = args.stream,
        own = if args.no_publisher {
            "   (publish there with OBS/ffmpeg)"
        } else {
            ""
        },
        iface = args.iface,
        rtmp = stack::RTMP_PORT,
        admin = stack::SWITCHER_ADMIN,
        origins = xtask::layout::origin_names(args.origins)
            .iter()
            .enumerate()
            .map(|(i, name)| format!(
                "{name} http://127.0.0.1:{}/hls/{}/index.m3u8",
                xtask::layout::origin_port(i),
                args.stream
            ))
            .collect::<Vec<_>>()
            .join("\n            "),
    );
    let requests = crate::control::listen(&run_dir)?;
    let mut tick = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if tick.is_multiple_of(10) {
            print!("\r{}\x1b[K", status_line(&stack));
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
        }
        tick += 1;
        // Drills ask for a service to be started again (a request on the control socket),
        // so it stays our child; between requests this waits one tick.
        if let Ok(request) = requests.recv_timeout(Duration::from_millis(100)) {
            let name = request.service.clone();
            let _ = stack.kill(&name, libc::SIGKILL);
            let started = stack.start(&name);
            match &started {
                Ok(()) => eprintln!("\nxtask: restarted {name} (drill)"),
                Err(e) => eprintln!("\nxtask: restarting {name}: {e:#}"),
            }
            request.answer(&started);
        }
        for (name, svc) in stack.services.iter_mut() {
            if let Some(child) = svc.child.as_mut()
                && let Ok(Some(st)) = child.try_wait()
            {
                eprintln!(
                    "\nxtask: {name} exited ({st}); see {}",
                    run_dir.join("logs").join(format!("{name}.log")).display()
                );
                svc.child = None;
            }
        }
    }
    println!("\nxtask: stopping");
    stack.stop();
    let _ = std::fs::remove_file(RUN_DIR_POINTER);
    println!("xtask: stopped, data plane detached, pins removed");
    Ok(())
}

/// One line: active origin and each origin's segment age and newest MSN.
pub fn status_line(stack: &Stack) -> String {
    let names = xtask::layout::origin_names(stack.cfg.origins);
    match stack.healthz() {
        Ok(h) => {
            let o = |name: &str| {
                let x = &h["origins"][name];
                let age = x["age_seconds"]
                    .as_f64()
                    .map(|a| format!("{a:.1}s"))
                    .unwrap_or_else(|| "-".into());
                let msn = x["msn"]
                    .as_u64()
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".into());
                let ok = if x["healthy"].as_bool().unwrap_or(false) {
                    "ok"
                } else {
                    "BAD"
                };
                format!("{name} {ok} age {age} msn {msn}")
            };
            let origins: Vec<String> = names.iter().map(|n| o(n)).collect();
            format!(
                "active {} ({}) | {}",
                h["active"].as_str().unwrap_or("?"),
                h["mode"].as_str().unwrap_or("?"),
                origins.join(" | ")
            )
        }
        Err(e) => format!("switcher-ctl not answering: {e}"),
    }
}

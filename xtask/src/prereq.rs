//! Prerequisites: what building and testing need, checked cheaply; `scripts/setup` installs
//! whatever is missing (it is idempotent, so running it again is always safe).

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Commands the build, the tests or the stack run, with the reason.
const COMMANDS: &[(&str, &str)] = &[
    ("bpf-linker", "links the eBPF object"),
    ("bpftool", "inspection; tests list attachments with it"),
    ("ip", "network namespaces in tests"),
    ("tc", "TC attachment checks"),
    ("ethtool", "checksum offload off in namespace tests"),
    ("ffmpeg", "publisher, player and packager peer"),
    ("ffprobe", "decoding checks"),
    ("rtmpdump", "RTMP player interop"),
    // The prometheus package's: nothing runs the server itself.
    ("promtool", "monitoring config and rule tests"),
    ("chromium", "status page and hls.js player tests"),
    (
        "curl",
        "HTTP client of the lab test and the origin benchmark",
    ),
    ("nft", "partition and slow-origin drills"),
    ("systemd-analyze", "unit checks (verify, security)"),
    ("vtysh", "FRR's shell: the lab's BGP and BFD state"),
    ("wrk", "HTTP load in benchmarks"),
    ("nginx", "the benchmarks' reference origin and RTMP ingest"),
    ("haproxy", "the DSR benchmark's proxy peer"),
];

/// Files the tests and benchmarks run or load that are not on PATH, with the reason
/// (`scripts/setup` installs their packages: frr, libnginx-mod-rtmp).
const FILES: &[(&str, &str)] = &[
    ("/usr/lib/frr/zebra", "FRR's routing daemon in the lab"),
    ("/usr/lib/frr/bgpd", "FRR's BGP speaker in the lab"),
    ("/usr/lib/frr/bfdd", "FRR's BFD daemon in the lab"),
    (
        "/usr/lib/nginx/modules/ngx_rtmp_module.so",
        "nginx-rtmp, the ingest benchmark's reference",
    ),
];

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn on_path(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// What is missing, each with the reason it is needed.
pub fn missing(ws: &Path) -> Vec<String> {
    let mut out: Vec<String> = COMMANDS
        .iter()
        .filter(|(c, _)| !on_path(c))
        .map(|(c, why)| format!("{c} ({why})"))
        .collect();
    out.extend(
        FILES
            .iter()
            .filter(|(f, _)| !Path::new(f).exists())
            .map(|(f, why)| format!("{f} ({why})")),
    );
    let debian = Path::new("/usr/bin/rustc").exists()
        && Path::new("/usr/lib/rustlib/bpfel-unknown-none/lib").exists();
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !debian && !nightly {
        out.push(
            "a rustc that can build for bpfel-unknown-none (Debian rustc-web or nightly)".into(),
        );
    }
    if ws.join("web/package-lock.json").exists()
        && !ws.join("web/node_modules/hls.js/dist/hls.min.js").exists()
    {
        out.push("hls.js in web/node_modules (status page player)".into());
    }
    out
}

/// Runs `scripts/setup` (it re-executes itself with sudo when not root).
pub fn run_setup(ws: &Path) -> Result<()> {
    let status = Command::new("bash")
        .arg(ws.join("scripts/setup"))
        .status()
        .context("running scripts/setup")?;
    if !status.success() {
        bail!("scripts/setup failed ({status})");
    }
    Ok(())
}

/// Runs setup when something is missing, then checks again.
pub fn ensure(ws: &Path) -> Result<()> {
    let before = missing(ws);
    if before.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: missing: {}; running scripts/setup",
        before.join(", ")
    );
    run_setup(ws)?;
    let after = missing(ws);
    if !after.is_empty() {
        bail!("still missing after scripts/setup: {}", after.join(", "));
    }
    Ok(())
}

/// Runs cargo in the workspace with inherited output.
pub fn cargo(ws: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(ws)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Re-runs this xtask command as root through sudo when needed (attaching eBPF programs and
/// creating network namespaces need CAP_BPF/CAP_NET_ADMIN/CAP_SYS_ADMIN). Returns only when
/// already root.
pub fn become_root() -> Result<()> {
    if is_root() {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    eprintln!("xtask: re-running as root through sudo");
    let status = Command::new("sudo")
        .arg("--preserve-env=PATH,HOME,CARGO_HOME,RUSTUP_HOME,RUST_LOG")
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .status()
        .context("running sudo")?;
    std::process::exit(status.code().unwrap_or(1));
}

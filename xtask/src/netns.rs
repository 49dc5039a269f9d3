//! Network namespaces for benchmarks and tests: uniquely named namespaces and a veth pair
//! (client <-> edge) that are always removed, a private bpffs outside `/sys` (`ip netns exec`
//! remounts `/sys`, so pins go under `/run`), and running code inside a namespace from a
//! thread (`setns` is per thread; threads it starts stay in the namespace).
//!
//! Needs root. Traffic only flows inside the namespaces made here.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::{Context as _, Result, bail};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs a command; its stdout, or an error with its output.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A short unique name (interface names are limited to 15 bytes).
pub fn unique(tag: &str) -> String {
    format!(
        "hx{}{}{}",
        std::process::id() % 100_000,
        tag,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace, deleted on drop (with the veth ends inside it).
pub struct Netns {
    /// Its name under /var/run/netns.
    pub name: String,
}

impl Netns {
    /// Creates a namespace with `lo` up.
    pub fn new(tag: &str) -> Result<Netns> {
        let name = unique(tag);
        sh(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `f` on a thread that joined this namespace; sockets it creates live here.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        crate::stack::in_netns(Some(&self.name), f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// Joins the calling thread to namespace `name` (used by threads that stay there).
pub fn enter(name: &str) -> Result<()> {
    let path = format!("/var/run/netns/{name}");
    let file = File::open(&path).with_context(|| format!("open {path}"))?;
    // SAFETY: valid fd of a netns file; affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Starts a thread in namespace `name` running `f`.
pub fn spawn_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<Result<T>> {
    let name = name.to_string();
    thread::spawn(move || {
        enter(&name)?;
        Ok(f())
    })
}

/// client ns <-> veth <-> edge ns: 10.77.0.1 (client) / 10.77.0.2 (edge), checksum offload
/// off on both ends so the receiver verifies every checksum the data plane rewrote.
pub struct Pair {
    /// The viewers' side.
    pub client: Netns,
    /// The edge: origins, switcher-ctl, XDP on its veth.
    pub edge: Netns,
    /// The edge's veth.
    pub edge_if: String,
}

/// Client address of a [`Pair`].
pub const CLIENT_V4: &str = "10.77.0.1";
/// Edge address of a [`Pair`] (the VIP's address).
pub const EDGE_V4: &str = "10.77.0.2";

impl Pair {
    /// Creates both namespaces and the veth between them.
    pub fn new() -> Result<Pair> {
        let client = Netns::new("c")?;
        let edge = Netns::new("e")?;
        let client_if = unique("vc");
        let edge_if = unique("ve");
        sh(&[
            "ip",
            "link",
            "add",
            &client_if,
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            &edge_if,
            "netns",
            &edge.name,
        ])?;
        for (ns, ifname, v4) in [(&client, &client_if, CLIENT_V4), (&edge, &edge_if, EDGE_V4)] {
            ns.exec(&["ip", "addr", "add", &format!("{v4}/24"), "dev", ifname])?;
            ns.exec(&["ethtool", "-K", ifname, "tx", "off", "rx", "off"])?;
            ns.exec(&["ip", "link", "set", ifname, "up"])?;
        }
        Ok(Pair {
            client,
            edge,
            edge_if,
        })
    }
}

/// A bpffs mounted outside /sys (visible to every `ip netns exec`), unmounted on drop, which
/// releases every pin under it.
pub struct BpfFs {
    /// The mount point.
    pub dir: PathBuf,
}

impl BpfFs {
    /// Mounts a fresh bpffs under /run.
    pub fn new() -> Result<BpfFs> {
        let dir = PathBuf::from(format!("/run/{}", unique("bpf")));
        std::fs::create_dir_all(&dir)?;
        sh(&["mount", "-t", "bpf", "bpf", &dir.to_string_lossy()])?;
        Ok(BpfFs { dir })
    }

    /// The pin root to give switcher-ctl.
    pub fn pin_root(&self) -> PathBuf {
        self.dir.join("switcher")
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

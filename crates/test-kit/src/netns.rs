//! Network namespaces for tests and benchmarks: uniquely named namespaces and veth pairs that
//! are always removed (on drop, so also when a test panics), a private bpffs for pins
//! (`ip netns exec` remounts `/sys`, so pins go under `/run`), and running code inside a
//! namespace from a thread (`setns` is per thread; threads it starts stay in the namespace).
//!
//! Needs root. Traffic only flows inside the namespaces made here.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

use crate::process::{sh, try_sh};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (interface names are limited to 15 bytes, so
/// keep `tag` to three characters): "hx", this process's id (mod 100,000), `tag` (lowercase
/// letters only, so that [`creator_of`] can read the id back) and a sequence number.
pub fn unique(tag: &str) -> String {
    assert!(
        !tag.is_empty() && tag.bytes().all(|b| b.is_ascii_lowercase()),
        "tag {tag:?}: lowercase letters only"
    );
    format!(
        "hx{}{}{}",
        std::process::id() % 100_000,
        tag,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The id (mod 100,000) of the process that made `name` with [`unique`], or `None` when
/// `name` is not such a name.
pub fn creator_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("hx")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (pid, rest) = rest.split_at(digits);
    let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
    let (_tag, seq) = rest.split_at(letters);
    let well_formed = (1..=5).contains(&digits)
        && letters > 0
        && !seq.is_empty()
        && seq.bytes().all(|b| b.is_ascii_digit());
    well_formed.then(|| pid.parse().ok()).flatten()
}

/// Removes what earlier runs left when they were killed before their drops ran (SIGKILL, the
/// OOM killer, a machine restart): every network namespace, bpffs mount under /run and
/// directory in the temporary directory named by [`unique`] whose creating process is gone
/// (no live process has its id, mod 100,000). Processes still inside such a namespace (the
/// servers a killed test had started) are killed first; deleting the namespace removes its
/// veths and whatever XDP or TC program was attached to them, and unmounting the bpffs drops
/// its pins. What a live process made is left alone. Returns what was removed.
///
/// `cargo xtask test` runs this first: CI runs on the machine a session just used.
pub fn reap_stale() -> Vec<String> {
    let live: std::collections::HashSet<u32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .map(|pid| pid % 100_000)
                .collect()
        })
        .unwrap_or_default();
    let stale = |name: &str| creator_of(name).is_some_and(|pid| !live.contains(&pid));
    let names_in = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| stale(n))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut removed = Vec::new();
    for name in names_in(Path::new("/var/run/netns")) {
        kill_inside(&Path::new("/var/run/netns").join(&name));
        if Command::new("ip")
            .args(["netns", "delete", &name])
            .status()
            .is_ok_and(|s| s.success())
        {
            removed.push(format!("netns {name}"));
        }
    }
    for name in names_in(Path::new("/run")) {
        let dir = Path::new("/run").join(&name);
        let _ = Command::new("umount").arg(&dir).status();
        if std::fs::remove_dir(&dir).is_ok() {
            removed.push(dir.display().to_string());
        }
    }
    let tmp = std::env::temp_dir();
    for name in names_in(&tmp) {
        let dir = tmp.join(&name);
        if std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir.display().to_string());
        }
    }
    removed
}

/// Kills (SIGKILL) every process whose network namespace is the one bound at `ns_file`.
fn kill_inside(ns_file: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(ns) = std::fs::metadata(ns_file) else {
        return;
    };
    let target = format!("net:[{}]", ns.ino());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for pid in procs.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let inside = std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .is_ok_and(|l| l.to_string_lossy() == target);
        if inside {
            // SAFETY: a plain kill(2) of a process id read from /proc.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Joins the calling thread to namespace `name` (for threads that stay there).
pub fn enter(name: &str) -> std::io::Result<()> {
    let path = format!("/var/run/netns/{name}");
    let file = File::open(&path)?;
    // SAFETY: valid fd of a netns file; affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("setns {path}: {e}")));
    }
    Ok(())
}

/// Runs `f` on a thread inside namespace `ns` (or in this one when `None`) and returns what
/// it returns; sockets it creates live there. Panics if the namespace cannot be joined or `f`
/// panics.
pub fn run_in<T: Send + 'static>(ns: Option<&str>, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.map(str::to_string);
    thread::spawn(move || {
        if let Some(ns) = ns {
            enter(&ns).unwrap_or_else(|e| panic!("{e}"));
        }
        f()
    })
    .join()
    .expect("thread in netns panicked")
}

/// Starts a thread in namespace `name` running `f`; the join handle holds `f`'s result, or
/// the error joining the namespace.
pub fn spawn_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<std::io::Result<T>> {
    let name = name.to_string();
    thread::spawn(move || {
        enter(&name)?;
        Ok(f())
    })
}

/// A network namespace, deleted on drop (with the veth ends inside it).
pub struct Netns {
    /// Its name under /var/run/netns.
    pub name: String,
}

impl Netns {
    /// Creates a namespace with `lo` up; `tag` (up to three characters) goes into its name.
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace: its stdout, or an error with its output.
    pub fn try_exec(&self, args: &[&str]) -> std::io::Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        try_sh(&full)
    }

    /// Runs a command inside the namespace; its stdout. Panics when it fails.
    pub fn exec(&self, args: &[&str]) -> String {
        self.try_exec(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `f` on a thread that joined this namespace; sockets it creates live here.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        run_in(Some(&self.name), f)
    }

    /// A counter of /proc/net/snmp's `Tcp:` lines (e.g. "InCsumErrors") inside the namespace.
    pub fn tcp_snmp(&self, field: &str) -> u64 {
        snmp_field(&self.exec(&["cat", "/proc/net/snmp"]), "Tcp", field)
            .unwrap_or_else(|| panic!("no Tcp {field}"))
    }
}

/// One field of a `/proc/net/snmp`-style table (a header line `Table: names...` followed by
/// `Table: values...`).
pub fn snmp_field(text: &str, table: &str, field: &str) -> Option<u64> {
    let prefix = format!("{table}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let i = names.split_whitespace().position(|n| n == field);
        if let Some(i) = i {
            return values.split_whitespace().nth(i)?.parse().ok();
        }
    }
    None
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// Client address of a [`Pair`].
pub const CLIENT_V4: &str = "10.77.0.1";
/// Edge address of a [`Pair`] (the VIP's address).
pub const EDGE_V4: &str = "10.77.0.2";
/// Client IPv6 address of a [`Pair`].
pub const CLIENT_V6: &str = "fd77::1";
/// Edge IPv6 address of a [`Pair`].
pub const EDGE_V6: &str = "fd77::2";

/// client ns <-> veth <-> edge ns: [`CLIENT_V4`]/[`EDGE_V4`] and [`CLIENT_V6`]/[`EDGE_V6`],
/// checksum offload off on both ends so the receiver verifies every checksum the data plane
/// rewrote.
pub struct Pair {
    /// The viewers' side.
    pub client: Netns,
    /// The edge: origins, switcher-ctl, XDP on its veth.
    pub edge: Netns,
    /// The client's veth.
    pub client_if: String,
    /// The edge's veth.
    pub edge_if: String,
}

impl Pair {
    /// Creates both namespaces and the veth between them.
    pub fn new() -> Pair {
        let client = Netns::new("c");
        let edge = Netns::new("e");
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
        ]);
        for (ns, ifname, v4, v6) in [
            (&client, &client_if, CLIENT_V4, CLIENT_V6),
            (&edge, &edge_if, EDGE_V4, EDGE_V6),
        ] {
            ns.exec(&["ip", "addr", "add", &format!("{v4}/24"), "dev", ifname]);
            // `nodad`: usable at once, no duplicate address detection to wait for.
            ns.exec(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                ifname,
                "nodad",
            ]);
            ns.exec(&["ethtool", "-K", ifname, "tx", "off", "rx", "off"]);
            ns.exec(&["ip", "link", "set", ifname, "up"]);
        }
        Pair {
            client,
            edge,
            client_if,
            edge_if,
        }
    }
}

impl Default for Pair {
    fn default() -> Self {
        Pair::new()
    }
}

/// What a [`BpfFs`] runs on its pin root before it unmounts (e.g. switcher-ctl's detach).
type Cleanup = Box<dyn FnOnce(&Path) + Send>;

/// A bpffs mounted outside /sys (visible to every `ip netns exec`), unmounted on drop, which
/// releases every pin under it.
pub struct BpfFs {
    /// The mount point.
    pub dir: PathBuf,
    cleanup: Option<Cleanup>,
}

impl BpfFs {
    /// Mounts a fresh bpffs under /run.
    pub fn new() -> BpfFs {
        let dir = PathBuf::from(format!("/run/{}", unique("bpf")));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        sh(&["mount", "-t", "bpf", "bpf", &dir.to_string_lossy()]);
        BpfFs { dir, cleanup: None }
    }

    /// Runs `cleanup` on [`BpfFs::pin_root`] before unmounting: detaching what the pins
    /// attached, so nothing stays attached even while a namespace outlives the test.
    /// Its result is ignored: a drop has no one to report to.
    pub fn on_drop<R>(mut self, cleanup: impl FnOnce(&Path) -> R + Send + 'static) -> BpfFs {
        self.cleanup = Some(Box::new(move |root| {
            let _ = cleanup(root);
        }));
        self
    }

    /// The pin root to give switcher-ctl.
    pub fn pin_root(&self) -> PathBuf {
        self.dir.join("switcher")
    }
}

impl Default for BpfFs {
    fn default() -> Self {
        BpfFs::new()
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            cleanup(&self.pin_root());
        }
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::{creator_of, snmp_field, unique};

    #[test]
    fn the_creator_of_a_unique_name_is_read_back() {
        let name = unique("ve");
        assert_eq!(creator_of(&name), Some(std::process::id() % 100_000));
        assert_eq!(creator_of("hx20632e1"), Some(20632));
        assert_eq!(creator_of("hx7bpf12"), Some(7));
        // Not names `unique` makes: another prefix, no tag, no sequence number, a pid of
        // more than five digits.
        for other in [
            "eth0",
            "hx20632",
            "hx20632e",
            "hxe1",
            "hx123456e1",
            "hx1e1x",
            "hx1E1",
        ] {
            assert_eq!(creator_of(other), None, "{other}");
        }
    }

    #[test]
    fn snmp_fields_by_table_and_name() {
        let text = "Ip: Forwarding DefaultTTL InNoRoutes\n\
                    Ip: 1 64 9\n\
                    Icmp: InMsgs OutDestUnreachs\n\
                    Icmp: 5 7\n\
                    IcmpMsg: InType3 OutType3\n\
                    IcmpMsg: 1 2\n";
        assert_eq!(snmp_field(text, "Icmp", "OutDestUnreachs"), Some(7));
        assert_eq!(snmp_field(text, "Ip", "InNoRoutes"), Some(9));
        // `IcmpMsg:` is another table, not `Icmp:`.
        assert_eq!(snmp_field(text, "Icmp", "OutType3"), None);
        assert_eq!(snmp_field(text, "Tcp", "InSegs"), None);
    }
}

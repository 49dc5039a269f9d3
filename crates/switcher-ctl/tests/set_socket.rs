//! `switcher-ctl set` against a real `switcher-ctl run` (needs root): the run attaches to `lo`
//! of a network namespace of its own, with its pins on a private bpffs and its admin socket in
//! a temp dir; `set` reaches it through that socket only. Both origins are unreachable, so
//! pinning one is refused until `--force`.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::TempDir;
use switcher_common::ORIGIN_BACKUP;
use switcher_ctl::dataplane::DataPlane;
use switcher_ctl::loader::Pinned;
use test_kit::netns::{BpfFs, Netns};

const BIN: &str = env!("CARGO_BIN_EXE_switcher-ctl");
/// How long the run may take to attach and start serving.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Detaches inside the namespace when dropped: interface indexes are per namespace, and the
/// namespace's `lo` has the host `lo`'s index, so a detach from the host (BpfFs's drop) would
/// remove TC filters from the host's `lo`. After this one, that detach finds no pins.
struct DetachIn<'a>(&'a Netns, std::path::PathBuf);

impl Drop for DetachIn<'_> {
    fn drop(&mut self) {
        let root = self.1.clone();
        self.0.run(move || {
            if let Err(e) = switcher_ctl::loader::detach(&root) {
                eprintln!("detach in the namespace: {e:#}");
            }
        });
    }
}

/// The running `switcher-ctl run`, stopped with SIGKILL if the test fails before SIGTERM.
struct Run(Child);

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn set_goes_through_the_admin_socket() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "attaching needs root; run via `cargo xtask test`"
    );
    // Dropped in reverse: the run stops, then the detach inside the namespace, then the
    // namespace and the bpffs go.
    let bpf = BpfFs::new().on_drop(switcher_ctl::loader::detach);
    let ns = Netns::new("set");
    let pin_root = bpf.pin_root();
    let _detach = DetachIn(&ns, pin_root.clone());
    let dir = TempDir::new("set");
    let socket = dir.path().join("admin.sock");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, BIN, "run", "--iface", "lo"])
        .args(["--vip", "127.0.0.1:8080", "--admin", "127.0.0.1:9180"])
        .args(["--primary", "http://127.0.0.1:18081"])
        .args(["--backup", "http://127.0.0.1:18082"])
        .arg("--pin-root")
        .arg(&pin_root)
        .arg("--admin-socket")
        .arg(&socket)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start switcher-ctl run");
    let stderr = child.stderr.take().expect("stderr");
    let run = Run(child);
    // Readiness: the service's "switcher running" line (logged once the admin servers run).
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("run: {line}");
            if line.contains("switcher running") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(READY_TIMEOUT)
        .expect("switcher-ctl run became ready");
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let set = |args: &[&str]| -> Output {
        Command::new(BIN)
            .arg("set")
            .args(args)
            .arg("--admin-socket")
            .arg(&socket)
            .arg("--pin-root")
            .arg(&pin_root)
            .output()
            .expect("run switcher-ctl set")
    };
    let text = |o: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    let refused = set(&["backup"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("409") && text(&refused).contains("--force"),
        "{}",
        text(&refused)
    );
    let active = || {
        Pinned::open(&pin_root)
            .expect("pins")
            .active()
            .expect("active")
    };
    assert_ne!(
        active(),
        ORIGIN_BACKUP,
        "a refused set changed the data plane"
    );

    let forced = set(&["backup", "--force"]);
    assert!(forced.status.success(), "{}", text(&forced));
    assert!(
        text(&forced).contains("set backup through the running service"),
        "{}",
        text(&forced)
    );
    assert_eq!(active(), ORIGIN_BACKUP, "the pinned active map says backup");

    let auto = set(&["auto"]);
    assert!(auto.status.success(), "{}", text(&auto));

    // SIGTERM: the run stops cleanly and takes its socket with it (the pins stay).
    let mut run = run;
    // SAFETY: kill(2) on our own child's pid (`ip netns exec` execs switcher-ctl in place).
    assert_eq!(
        unsafe { libc::kill(run.0.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let status = run.0.wait().expect("wait for run");
    assert!(status.success(), "run exited with {status}");
    assert!(!socket.exists(), "the admin socket outlived the run");
    assert_eq!(
        active(),
        ORIGIN_BACKUP,
        "the data plane keeps the last origin"
    );
}

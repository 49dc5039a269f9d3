//! Running commands and owning child processes in tests.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Runs a command; its stdout, or an error that carries the command and its output.
pub fn try_sh(args: &[&str]) -> std::io::Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "{args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command and returns its stdout; panics with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    try_sh(args).unwrap_or_else(|e| panic!("{e}"))
}

/// How long a child gets to exit on SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// A child process stopped and reaped when this is dropped, passed or failed: SIGTERM first
/// (Chromium then stops and reaps its own helpers, ffmpeg closes its output), SIGKILL after
/// a grace period.
pub struct Killed(pub Child);

impl Killed {
    /// The process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Waits for the process to exit on its own; its status.
    pub fn wait(&mut self) -> ExitStatus {
        self.0.wait().expect("wait for child")
    }

    /// Waits up to `timeout` for the process to exit on its own; its status, or `None` while
    /// it still runs (it is stopped on drop).
    pub fn wait_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        crate::wait::try_poll_until(timeout, || self.0.try_wait().ok().flatten())
    }
}

impl From<Child> for Killed {
    fn from(child: Child) -> Self {
        Killed(child)
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let start = Instant::now();
        while start.elapsed() < TERM_GRACE {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pins the calling thread to CPU `cpu` (benchmarks and tests that measure one core, or that
/// need per-CPU state on a known CPU).
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and sched_setaffinity(0, ...) act
    // on it and on the calling thread only.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        rc,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
}

/// Pins the calling thread to the CPU it runs on now (tests of per-CPU state, such as the
/// data plane's flow cache, that must send every packet through one CPU).
pub fn pin_to_current_cpu() {
    // SAFETY: a libc call without arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    assert!(
        cpu >= 0,
        "sched_getcpu: {}",
        std::io::Error::last_os_error()
    );
    pin_to_cpu(cpu as usize);
}

/// `line` without ANSI escape sequences (CSI: ESC [ parameters final-letter), for matching a
/// child's log lines whatever its colour setting.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Fails the test at once, with a hint, unless it runs as root (namespaces, eBPF).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root; run it through `cargo xtask test`"
    );
}

/// Fails the test at once, with a hint, unless every binary in `names` was built in `dir`.
pub fn require_binaries(dir: &std::path::Path, names: &[&str]) {
    for name in names {
        assert!(
            dir.join(name).exists(),
            "{}/{name} missing: run `cargo xtask test`, which builds it",
            dir.display()
        );
    }
}

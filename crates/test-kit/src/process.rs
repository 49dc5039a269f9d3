//! Running commands and owning child processes in tests.

use std::process::{Child, Command};
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

//! A real HLS player for drills, tests and benchmarks: ffmpeg reading a live playlist and
//! *recording* it (`-c copy -f mpegts`), so what it got can be checked afterwards on the
//! recording itself (video PTS holes, repeats) and on its log (which segments it loaded, which
//! connections it had to retry).

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

/// An ffmpeg player recording a live HLS stream; it keeps every log line (which segments it
/// loaded, errors, retries).
pub struct Player {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// The thread collecting the log; it ends when ffmpeg's stderr closes.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Player {
    /// Starts a player recording `url` into `out` (MPEG-TS, streams copied), inside network
    /// namespace `ns` when given.
    pub fn start(ns: Option<&str>, url: &str, out: &Path) -> std::io::Result<Player> {
        Player::start_with(&crate::stack::command_prefix(ns, None), url, out)
    }

    /// Starts a player recording `url` into `out`, run through `prefix` (e.g.
    /// [`crate::stack::command_prefix`]: inside a namespace, as an unprivileged user).
    pub fn start_with(prefix: &[String], url: &str, out: &Path) -> std::io::Result<Player> {
        let mut argv: Vec<&str> = prefix.iter().map(String::as_str).collect();
        argv.extend(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "verbose"]);
        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            // What a resilient player does: retry a failed segment or playlist request.
            .args([
                "-reconnect",
                "1",
                "-reconnect_on_network_error",
                "1",
                "-reconnect_delay_max",
                "1",
            ])
            .args(["-live_start_index", "-2"])
            .args(["-i", url])
            .args(["-map", "0", "-c", "copy", "-f", "mpegts", "-y"])
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stderr = child.stderr.take().expect("stderr is piped");
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(line);
            }
        });
        Ok(Player {
            child,
            lines,
            reader: Some(reader),
        })
    }

    /// Media sequence numbers of the segments the player requested, in order.
    pub fn segments(&self) -> Vec<u64> {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|l| l.contains("HLS request for url"))
            .filter_map(|l| {
                let end = l.find(".ts'")?;
                let start = l[..end].rfind('/')? + 1;
                l[start..end].parse().ok()
            })
            .collect()
    }

    /// Decoder and demuxer error lines. A reset keep-alive connection that ffmpeg retries on a
    /// new connection is the designed way a killed origin's viewers move (the data plane
    /// resets retired flows), not an error; a segment that cannot be loaded is.
    pub fn errors(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                (l.contains("error")
                    || l.contains("corrupt")
                    || l.contains("concealing")
                    || l.contains("failed to open segment"))
                    && !l.contains("reconnect")
                    && !l.contains("keepalive request failed")
            })
            .cloned()
            .collect()
    }

    /// Waits up to 20 s for `f` to hold of this player; panics with `what` and the end of
    /// ffmpeg's log when it does not (for tests).
    pub fn wait_for(&self, what: &str, mut f: impl FnMut(&Player) -> bool) {
        if test_kit::wait::try_wait_until(Duration::from_secs(20), || f(self)) {
            return;
        }
        panic!(
            "timed out waiting for: {what}\nplayer log tail:\n{}",
            self.tail(40)
        );
    }

    /// The last lines ffmpeg printed (for failure messages).
    pub fn tail(&self, n: usize) -> String {
        let lines = self
            .lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The player's process id (ffmpeg's: `ip netns exec` and `setpriv` exec it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether ffmpeg is still running (a player that gave up has exited).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Log lines mentioning a connection that was reset or retried.
    pub fn reconnects(&self) -> usize {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|l| l.contains("keepalive request failed") || l.contains("reconnect"))
            .count()
    }

    pub fn stop(mut self) -> (Vec<u64>, Vec<String>) {
        // SIGINT lets ffmpeg finish the recording cleanly.
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        test_kit::wait::try_wait_until(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten().is_some()
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Every log line is in once the reader has seen the end of ffmpeg's stderr.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let (segs, mut errors) = (self.segments(), self.errors());
        if segs.len() < 5 {
            errors.push(format!("player log tail:\n{}", self.tail(40)));
        }
        (segs, errors)
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Video PTS (seconds) of a recording, in file order (ffprobe).
pub fn video_pts(file: &Path) -> std::io::Result<Vec<f64>> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(["-show_entries", "packet=pts_time", "-of", "csv=p=0"])
        .arg(file)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect())
}

/// The largest step between neighbouring video PTS (a hole in the recording) and how many
/// PTS appear twice (repeated media). PTS are in presentation order only within a GOP, so
/// they are sorted first.
pub fn pts_holes(pts: &[f64]) -> (f64, usize) {
    let mut sorted = pts.to_vec();
    sorted.sort_by(f64::total_cmp);
    let max_step = sorted.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    let repeats = sorted.windows(2).filter(|w| w[1] - w[0] < 1e-6).count();
    (max_step, repeats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_and_repeats() {
        let smooth: Vec<f64> = (0..90).map(|i| f64::from(i) / 30.0).collect();
        assert_eq!(pts_holes(&smooth).1, 0);
        assert!(pts_holes(&smooth).0 < 0.04);
        // A 2 s segment missing, frames within a GOP out of order, one frame repeated.
        let mut bad: Vec<f64> = (0..30).map(|i| f64::from(i) / 30.0).collect();
        bad.extend((90..120).map(|i| f64::from(i) / 30.0));
        bad.swap(3, 5);
        bad.push(1.0 / 30.0);
        let (hole, repeats) = pts_holes(&bad);
        assert!((hole - 61.0 / 30.0).abs() < 1e-9, "hole {hole}");
        assert_eq!(repeats, 1);
    }
}

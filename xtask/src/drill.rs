//! `cargo xtask drill <fault>`: against a stack started by `cargo xtask run`, inject a fault,
//! watch what the control plane and a player reading the VIP see, restore, print a timeline.
//! The faults are [`xtask::faults::Fault`] (kill, packager-kill, freeze, 5xx, slow, partition,
//! truncate, ctl-restart), the same the end-to-end drill test injects.
//!
//! The drill talks to the `run` process through its run directory: `pids/<service>` (written
//! by `run`) to find processes, and the control socket ([`crate::control`]) to ask `run` to
//! start a service again (so it stays `run`'s child and Ctrl-C still stops it).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use test_kit::http::Response;
use xtask::faults::{self, Fault, Processes, Site};
use xtask::player::{Player, pts_holes, video_pts};
use xtask::stack::{self, http_get};

use crate::prereq;

/// The services of a `cargo xtask run`, reached through its pid files and its control
/// socket (a restarted service stays `run`'s child, so Ctrl-C still stops it).
struct RunProcesses {
    run_dir: PathBuf,
}

impl Processes for RunProcesses {
    fn signal(&mut self, name: &str, sig: i32) -> Result<()> {
        signal(pid(&self.run_dir, name)?, sig)
    }
    fn start(&mut self, name: &str) -> Result<()> {
        crate::control::request_start(&self.run_dir, name)
    }
}

/// Options of `cargo xtask drill`.
#[derive(Args, Debug)]
pub struct DrillArgs {
    /// The fault to inject.
    #[arg(value_enum)]
    pub fault: Fault,
    /// How long the fault lasts before it is restored, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// How long to keep watching after the restore (switchback), seconds.
    #[arg(long, default_value_t = 20.0)]
    pub after: f64,
    /// The run directory of the running stack (default: the one `cargo xtask run` announced).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// VIP of the running stack.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub vip: String,
    /// Stream name.
    #[arg(long, default_value = "demo")]
    pub stream: String,
    /// The origin the fault acts on, by name (a stack of N origins: `o1`..`oN`). Default: the
    /// first origin in preference order (the primary of the two-origin stack).
    #[arg(long)]
    pub origin: Option<String>,
}

/// What the player reading the VIP saw.
#[derive(Default, Debug)]
pub struct PlayerView {
    /// Playlist fetches.
    pub polls: u64,
    /// Failed fetches (connection error or non-200).
    pub errors: u64,
    /// Times the newest MSN went backwards.
    pub regressions: u64,
    /// Times the newest MSN jumped by more than the window (segments a player would miss).
    pub gaps: u64,
    /// Newest MSN seen first and last.
    pub first_msn: Option<u64>,
    /// Newest MSN seen last.
    pub last_msn: Option<u64>,
}

/// The newest media sequence number of a media playlist (RFC 8216 6.3.5: MEDIA-SEQUENCE
/// plus the segments before the last one); `None` for anything else.
pub fn newest_msn(playlist: &str) -> Option<u64> {
    let media = m3u8_rs::parse_media_playlist_res(playlist.as_bytes()).ok()?;
    let n = media.segments.len() as u64;
    (n > 0).then(|| media.media_sequence + n - 1)
}

/// Window size of our playlists: a jump larger than this loses segments for a player.
const WINDOW: u64 = 6;

impl PlayerView {
    /// Records one playlist fetch.
    pub fn record(&mut self, result: Result<Response>) {
        self.polls += 1;
        let msn = match result {
            Ok(r) if r.status == 200 => newest_msn(&r.text()),
            _ => None,
        };
        let Some(msn) = msn else {
            self.errors += 1;
            return;
        };
        if let Some(last) = self.last_msn {
            if msn < last {
                self.regressions += 1;
            } else if msn > last + WINDOW {
                self.gaps += 1;
            }
        }
        self.first_msn.get_or_insert(msn);
        self.last_msn = Some(msn);
    }
}

fn pid(run_dir: &Path, name: &str) -> Result<i32> {
    let p = run_dir.join("pids").join(name);
    std::fs::read_to_string(&p)
        .with_context(|| {
            format!(
                "{} missing: is `cargo xtask run` running with run dir {}?",
                p.display(),
                run_dir.display()
            )
        })?
        .trim()
        .parse()
        .context("bad pid file")
}

fn signal(pid: i32, sig: i32) -> Result<()> {
    // SAFETY: plain kill(2).
    if unsafe { libc::kill(pid, sig) } != 0 {
        bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn stream_dir(run_dir: &Path, origin: &str, stream: &str) -> PathBuf {
    stack::hls_dir(run_dir, origin).join(stream)
}

/// The drill's target in the running stack, from switcher-ctl's `/healthz`: the origin
/// asked for (else the first in preference order), its port (`cargo xtask run` puts origin
/// `index` on [`xtask::layout::origin_port`]), and the policy.
fn target(h: &serde_json::Value, asked: Option<&str>) -> Result<(String, u16, bool)> {
    let origins = h["origins"]
        .as_object()
        .context("switcher-ctl's /healthz lists no origins")?;
    let name = match asked {
        Some(n) => n.to_string(),
        None => origins
            .iter()
            .min_by_key(|(_, o)| o["index"].as_u64().unwrap_or(u64::MAX))
            .map(|(n, _)| n.clone())
            .context("no origin")?,
    };
    let Some(index) = origins.get(&name).and_then(|o| o["index"].as_u64()) else {
        bail!(
            "no origin named {name:?} (the stack has {})",
            origins.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    let balance = h["policy"] == "balance";
    Ok((name, xtask::layout::origin_port(index as usize), balance))
}

/// Whether the target takes new flows: under failover it is the active origin, under
/// balance it is in rotation.
fn takes_new_flows(h: &serde_json::Value, origin: &str, balance: bool) -> bool {
    if balance {
        h["origins"][origin]["in_rotation"] == true
    } else {
        h["active"] == origin
    }
}

pub fn run(ws: &Path, args: DrillArgs) -> Result<()> {
    prereq::become_root()?;
    let run_dir = match &args.run_dir {
        Some(d) if d.is_absolute() => d.clone(),
        Some(d) => ws.join(d),
        None => PathBuf::from(
            std::fs::read_to_string(crate::run::RUN_DIR_POINTER)
                .context(
                    "no running stack found (start one with `cargo xtask run`, or pass --run-dir)",
                )?
                .trim(),
        ),
    };
    let health = || -> Result<serde_json::Value> {
        let response = http_get(
            None,
            &stack::SWITCHER_ADMIN.to_string(),
            "/healthz",
            Duration::from_secs(1),
        )?;
        Ok(response.json()?)
    };
    let h0 = health()
        .context("switcher-ctl admin not reachable: start the stack with `cargo xtask run`")?;
    let (origin, port, balance) = target(&h0, args.origin.as_deref())?;
    if !takes_new_flows(&h0, &origin, balance) {
        bail!(
            "{origin} takes no new flows (active: {}, in rotation: {}); wait for the stack to \
             settle or pick another --origin",
            h0["active"],
            h0["rotation"]
        );
    }
    let playlist = format!("/hls/{}/index.m3u8", args.stream);
    // A real player recording the VIP through the whole drill: what a viewer got.
    let recording = std::env::temp_dir().join(format!("drill-{}.ts", args.fault.name()));
    let mut player = Player::start(None, &format!("http://{}{playlist}", args.vip), &recording)
        .context("starting the ffmpeg player")?;
    let started = test_kit::wait::try_wait_until(Duration::from_secs(30), || {
        player.segments().len() >= 2 || !player.running()
    });
    if !started || player.segments().len() < 2 {
        bail!("the ffmpeg player loaded no segment:\n{}", player.tail(20));
    }
    let t0 = Instant::now();
    let mut timeline: Vec<(f64, String)> = Vec::new();
    let mark = |what: String, timeline: &mut Vec<(f64, String)>| {
        let t = t0.elapsed().as_secs_f64();
        println!("  {t:7.3}s  {what}");
        timeline.push((t, what));
    };
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    println!(
        "drill {:?} at unix time {now} (times below are seconds since the fault)",
        args.fault
    );
    let target = args.fault.service_on(&origin);
    let target_pid = pid(&run_dir, &target)?;
    let stream_dir = stream_dir(&run_dir, &origin, &args.stream);
    let site = Site {
        netns: None,
        origin: origin.clone(),
        port,
        service_user: owner(&stream_dir),
        stream_dir,
    };
    let mut procs = RunProcesses {
        run_dir: run_dir.clone(),
    };
    let mut active_fault = Some(faults::inject(args.fault, &site, &mut procs)?);
    mark(
        format!(
            "fault: {} on {target} (pid {target_pid})",
            args.fault.name()
        ),
        &mut timeline,
    );

    let mut view = PlayerView::default();
    let mut detected = false;
    let mut flipped = false;
    let mut first_good_after_flip = false;
    let mut restored = false;
    let mut switched_back = false;
    let hold = Duration::from_secs_f64(args.hold);
    let end = hold + Duration::from_secs_f64(args.after);
    while t0.elapsed() < end {
        let r = http_get(None, &args.vip, &playlist, Duration::from_secs(2));
        let ok = matches!(&r, Ok(r) if r.status == 200);
        view.record(r);
        if let Ok(h) = health() {
            if !detected && h["origins"][&origin]["healthy"] == false {
                detected = true;
                mark(
                    format!(
                        "detected: {origin} unhealthy ({})",
                        h["origins"][&origin]["last_error"]
                    ),
                    &mut timeline,
                );
            }
            if !flipped && !takes_new_flows(&h, &origin, balance) {
                flipped = true;
                let what = if balance {
                    format!(
                        "flip: {origin} out of rotation (rotation {})",
                        h["rotation"]
                    )
                } else {
                    format!(
                        "flip: active origin = {}",
                        h["active"].as_str().unwrap_or("?")
                    )
                };
                mark(what, &mut timeline);
            }
            if flipped && !first_good_after_flip && ok {
                first_good_after_flip = true;
                mark(
                    "first 200 through the VIP after the flip".into(),
                    &mut timeline,
                );
            }
            if restored && !switched_back && takes_new_flows(&h, &origin, balance) {
                switched_back = true;
                let what = if balance {
                    format!("switchback: {origin} back in rotation")
                } else {
                    format!("switchback: active origin = {origin}")
                };
                mark(what, &mut timeline);
            }
        }
        if !restored && t0.elapsed() >= hold {
            if let Some(f) = active_fault.take() {
                f.restore(&mut procs)?;
            }
            restored = true;
            mark(format!("restore: {target}"), &mut timeline);
        }
        if switched_back && t0.elapsed() > hold + Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !restored {
        bail!("drill ended before the restore");
    }
    println!(
        "\nplayer reading http://{}{playlist} every 100 ms: {} fetches, {} errors, {} MSN regressions (repeats), \
         {} gaps larger than the window; newest MSN {} -> {}",
        args.vip,
        view.polls,
        view.errors,
        view.regressions,
        view.gaps,
        view.first_msn.map_or("-".into(), |m| m.to_string()),
        view.last_msn.map_or("-".into(), |m| m.to_string()),
    );
    let still_running = player.running();
    let reconnects = player.reconnects();
    let (segments, errors) = player.stop();
    let pts = video_pts(&recording).context("ffprobe of the recording")?;
    let (hole, repeats) = pts_holes(&pts);
    let skipped = segments.windows(2).filter(|w| w[1] != w[0] + 1).count();
    println!(
        "ffmpeg player recording the VIP ({}): {} segments (MSN {} -> {}), {skipped} skipped or repeated, \
         {} video frames, largest PTS step {hole:.3} s, {repeats} repeated frames, \
         {reconnects} connections retried, {} error lines, {}",
        recording.display(),
        segments.len(),
        segments.first().map_or("-".into(), |m| m.to_string()),
        segments.last().map_or("-".into(), |m| m.to_string()),
        pts.len(),
        errors.len(),
        if still_running {
            "still playing at the end"
        } else {
            "it had given up"
        },
    );
    if !flipped && args.fault.fails_primary() {
        println!("note: no flip happened (the fault may have been too short for the hysteresis)");
    }
    Ok(())
}

/// The user owning `path` (the services' user), by name.
fn owner(path: &Path) -> Option<String> {
    let out = std::process::Command::new("stat")
        .args(["-c", "%U"])
        .arg(path)
        .output()
        .ok()?;
    let name = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && name != "root" && !name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::anyhow;

    #[test]
    fn newest_msn_and_player_view() {
        let pl = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:100\n#EXTINF:2,\n100.ts\n#EXTINF:2,\n101.ts\n";
        assert_eq!(newest_msn(pl), Some(101));
        assert_eq!(newest_msn("#EXTM3U\n"), None);
        let mut v = PlayerView::default();
        let ok = |msn: u64| {
            Ok(Response {
                status: 200,
                body: format!(
                    "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:{msn}\n#EXTINF:2,\n{msn}.ts\n"
                )
                .into_bytes(),
            })
        };
        v.record(ok(10));
        v.record(ok(11));
        v.record(ok(10));
        v.record(ok(30));
        v.record(Err(anyhow!("refused")));
        assert_eq!((v.polls, v.errors, v.regressions, v.gaps), (5, 1, 1, 1));
        assert_eq!(v.last_msn, Some(30));
    }

    #[test]
    fn the_target_is_the_named_origin_or_the_first_and_its_port_follows_its_index() {
        let two = serde_json::json!({
            "policy": "failover", "active": "primary", "rotation": ["primary"],
            "origins": {
                "primary": {"index": 0, "in_rotation": true},
                "backup": {"index": 1, "in_rotation": false}
            }
        });
        // The two-origin stack: the primary by default, as before `--origin`.
        assert_eq!(
            target(&two, None).unwrap(),
            ("primary".to_string(), 8081, false)
        );
        assert!(takes_new_flows(&two, "primary", false));
        assert!(!takes_new_flows(&two, "backup", false));
        let four = serde_json::json!({
            "policy": "balance", "active": "o1", "rotation": ["o1", "o2", "o4"],
            "origins": {
                "o3": {"index": 2, "in_rotation": false},
                "o1": {"index": 0, "in_rotation": true},
                "o2": {"index": 1, "in_rotation": true},
                "o4": {"index": 3, "in_rotation": true}
            }
        });
        assert_eq!(target(&four, None).unwrap(), ("o1".to_string(), 8081, true));
        assert_eq!(
            target(&four, Some("o4")).unwrap(),
            ("o4".to_string(), 8084, true)
        );
        assert!(target(&four, Some("primary")).is_err());
        // Balance: an origin takes new flows while in rotation, active or not.
        assert!(takes_new_flows(&four, "o2", true));
        assert!(!takes_new_flows(&four, "o3", true));
    }
}

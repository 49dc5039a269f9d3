//! The multi-host lab (`xtask::lab`) in network namespaces: a router doing ECMP over two edges
//! that announce the VIP with FRR, two origin hosts answering viewers directly (IP-in-IP from
//! the edges' XDP, decapsulated by `switcher-ctl decap`), real ingest, packagers and origins.
//!
//! * Viewers are spread over both edges: both edges' data-plane counters grow, the origin
//!   hosts decapsulate, and every fetch through the VIP gets the playlist (whose bytes never
//!   cross an edge).
//! * An edge with no healthy origin withdraws the VIP: the router then routes it over the
//!   other edge only, viewers keep being served, and the route comes back with the health.
//! * No service runs as root: ingest, publisher, packagers and origins run as the service user
//!   with no-new-privs, FRR as `frr`, and switcher-ctl keeps only CAP_BPF + CAP_NET_ADMIN.
//! * An origin host lost with a viewer idle on a keep-alive connection to it: the edge resets
//!   that viewer itself (ECONNRESET), as nothing from the lost host can reach it.
//! * Edge loss is hitless: 100 slow downloads complete byte-identical, and an ffmpeg player
//!   recording the VIP through the kill has no hole over 1 s and no repeat in its recording.
//!
//! Needs root, FRR (`scripts/setup`), and the binaries in target/debug (`cargo xtask test`
//! builds them). Everything is removed on drop, also on failure.

use std::{path::PathBuf, time::Duration};

use xtask::lab::{EDGES, Lab, LabConfig, ORIGIN_HOSTS, VIP, VIP_PORT};
use xtask::player::{Player, pts_holes, video_pts};

const PLAYLIST: &str = "/hls/demo/index.m3u8";
/// Fresh connections (so fresh source ports, so L4-hashed paths) per spread check.
const VIEWERS: usize = 64;
const WAIT: Duration = Duration::from_secs(60);

/// Removes the run directory on drop, unless the test failed (its logs are kept).
struct RunDir(PathBuf);
impl Drop for RunDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("lab logs kept in {}", self.0.join("logs").display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn fetch_all(lab: &Lab, n: usize) {
    fetch_all_by(lab, n, Lab::get);
}

/// [`fetch_all`] by IPv6 viewers (the dual-stack VIP's IPv6 address; 6in4 to the origins).
fn fetch_all6(lab: &Lab, n: usize) {
    fetch_all_by(lab, n, Lab::get6);
}

/// A fetch through the VIP: status and body (`Lab::get`, `Lab::get6`).
type Fetch = fn(&Lab, &str) -> anyhow::Result<(u16, Vec<u8>)>;

fn fetch_all_by(lab: &Lab, n: usize, get: Fetch) {
    for i in 0..n {
        let (status, body) = get(lab, PLAYLIST)
            .unwrap_or_else(|e| panic!("viewer {i}: fetch through the VIP failed: {e:#}"));
        assert_eq!(status, 200, "viewer {i}: status");
        assert!(
            body.starts_with(b"#EXTM3U"),
            "viewer {i}: not a playlist: {:?}",
            String::from_utf8_lossy(&body)
        );
    }
}

/// Starts the lab (debug binaries, generic XDP) in `/run/hls-edge-<tag>-<pid>`. Drop the lab
/// before the run directory (declare them in this order), so logs are written until the end.
fn start_lab(tag: &str) -> (RunDir, Lab) {
    test_kit::process::require_root();
    let run_dir = RunDir(PathBuf::from(format!(
        "/run/hls-edge-{tag}-{}",
        std::process::id()
    )));
    let lab = Lab::start(LabConfig {
        bin_dir: xtask::workspace().join("target/debug"),
        run_dir: run_dir.0.clone(),
        stream: "demo".into(),
        video: (320, 240, 10),
        native: false,
        probe_timeouts: xtask::lab::LOADED_PROBE_TIMEOUTS,
    })
    .expect("start the lab");
    (run_dir, lab)
}

#[test]
fn lab_spreads_viewers_over_both_edges_and_an_unhealthy_edge_withdraws() {
    let (_run_dir, lab) = start_lab("labtest");
    lab.wait_for("the playlist through the VIP", WAIT, |lab| {
        Ok(matches!(lab.get(PLAYLIST), Ok((200, b)) if b.starts_with(b"#EXTM3U")))
    })
    .expect("the stream reaches viewers through the VIP");
    assert_least_privilege(&lab);

    // ECMP spread: both edges carry requests; the origin hosts decapsulate them.
    let packets = |lab: &Lab, e: &str| {
        lab.edge_counter(e, "dataplane_packets_total")
            .expect("edge metrics")
    };
    // The encapsulation counters, on /metrics (read at scrape time) per origin.
    let encap = |lab: &Lab, e: &str| {
        lab.edge_counter(e, "dataplane_encap_packets_total")
            .expect("edge metrics")
    };
    let before: Vec<f64> = EDGES.iter().map(|e| packets(&lab, e)).collect();
    let encap_before: Vec<f64> = EDGES.iter().map(|e| encap(&lab, e)).collect();
    let decap_before: u64 = ORIGIN_HOSTS
        .iter()
        .map(|o| lab.decapsulated(o).expect("decap status"))
        .sum();
    fetch_all(&lab, VIEWERS);
    for (i, e) in EDGES.iter().enumerate() {
        // The metric is refreshed every probe window.
        lab.wait_for(&format!("{e}'s counters to show traffic"), WAIT, |lab| {
            Ok(packets(lab, e) > before[i])
        })
        .unwrap_or_else(|err| {
            panic!(
                "{e} steered none of {VIEWERS} viewers (ECMP over both edges expected): {err:#}\n{}",
                lab.describe()
            )
        });
    }
    for (i, e) in EDGES.iter().enumerate() {
        let scraped = encap(&lab, e);
        assert!(
            scraped > encap_before[i],
            "{e}'s dataplane_encap_packets_total did not move ({scraped}) while it steered viewers to remote origins"
        );
        // The metric mirrors the data plane's counters, which the CLI reads from the pins.
        let cli = lab
            .edge_encap(e, "encapsulated")
            .expect("switcher-ctl status") as f64;
        assert!(
            cli >= scraped,
            "{e}: /metrics says {scraped} encapsulated, more than the pinned counters' {cli}"
        );
    }
    let decap_after: u64 = ORIGIN_HOSTS
        .iter()
        .map(|o| lab.decapsulated(o).expect("decap status"))
        .sum();
    assert!(
        decap_after >= decap_before + VIEWERS as u64,
        "the origin hosts decapsulated {} packets for {VIEWERS} viewers",
        decap_after - decap_before
    );

    // IPv6 viewers of the dual-stack VIP: announced over the same sessions, spread over both
    // edges, carried as 6in4 over the IPv4 links, decapsulated by the origin hosts.
    let sent6 = |lab: &Lab, e: &str| {
        lab.edge_encap(e, "encapsulated")
            .expect("switcher-ctl status")
            + lab.edge_encap(e, "to_stack").expect("switcher-ctl status")
    };
    let sent6_before: Vec<u64> = EDGES.iter().map(|e| sent6(&lab, e)).collect();
    let decap6_before: u64 = ORIGIN_HOSTS
        .iter()
        .map(|o| lab.decapsulated(o).expect("decap status"))
        .sum();
    fetch_all6(&lab, VIEWERS);
    for (i, e) in EDGES.iter().enumerate() {
        let now = sent6(&lab, e);
        assert!(
            now > sent6_before[i],
            "{e} encapsulated none of {VIEWERS} IPv6 viewers' packets (ECMP over both edges expected)\n{}",
            lab.describe()
        );
        assert_eq!(
            lab.edge_encap(e, "errors").expect("switcher-ctl status"),
            0,
            "{e}: encapsulation errors"
        );
    }
    let decap6_after: u64 = ORIGIN_HOSTS
        .iter()
        .map(|o| lab.decapsulated(o).expect("decap status"))
        .sum();
    assert!(
        decap6_after >= decap6_before + VIEWERS as u64,
        "the origin hosts decapsulated {} packets for {VIEWERS} IPv6 viewers",
        decap6_after - decap6_before
    );

    // No announcement without health: edge1's probes are cut, so it sees no healthy origin.
    let edge2 = lab.host("edge2").addr;
    for cmd in [
        &["nft", "add", "table", "ip", "labfault"][..],
        &[
            "nft", "add", "chain", "ip", "labfault", "out", "{", "type", "filter", "hook",
            "output", "priority", "0", ";", "}",
        ],
        &[
            "nft", "add", "rule", "ip", "labfault", "out", "tcp", "dport", "8080", "drop",
        ],
    ] {
        lab.run_in("edge1", cmd).expect("nft");
    }
    lab.wait_for("edge1 to withdraw the VIP", WAIT, |lab| {
        Ok(lab.vip_nexthops()? == vec![edge2])
    })
    .expect("the router routes the VIP over edge2 only");
    lab.wait_for("edge1 to withdraw the IPv6 VIP", WAIT, |lab| {
        Ok(lab.vip6_edges()? == vec!["edge2"])
    })
    .expect("the router routes the IPv6 VIP over edge2 only");
    let announced = lab
        .run_in("edge1", &["ip", "route", "show", "proto", "77"])
        .expect("ip route");
    assert!(
        announced.trim().is_empty(),
        "edge1 still has its announcement route: {announced}"
    );
    fetch_all(&lab, 8);
    fetch_all6(&lab, 8);
    lab.run_in("edge1", &["nft", "delete", "table", "ip", "labfault"])
        .expect("nft delete");
    lab.wait_for("edge1 to announce the VIP again", WAIT, |lab| {
        Ok(lab.vip_nexthops()?.len() == 2)
    })
    .expect("the router routes the VIP over both edges again");
    lab.wait_for("edge1 to announce the IPv6 VIP again", WAIT, |lab| {
        Ok(lab.vip6_edges()?.len() == 2)
    })
    .expect("the router routes the IPv6 VIP over both edges again");
    fetch_all(&lab, 8);
}

/// A `/proc/PID/status` field's value (`Uid`, `NoNewPrivs`, `CapEff`, ...).
fn proc_status(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// Asserts that process `pid` (`what`) runs with no root uid (real, effective, saved, fs) and,
/// when `no_new_privs`, cannot regain privileges by exec.
fn assert_unprivileged(what: &str, pid: u32, no_new_privs: bool) {
    let uids = proc_status(pid, "Uid");
    assert!(
        uids.split_whitespace().all(|u| u != "0"),
        "{what} (pid {pid}) runs with a root uid: Uid {uids}"
    );
    if no_new_privs {
        assert_eq!(
            proc_status(pid, "NoNewPrivs"),
            "1",
            "{what} (pid {pid}) runs without no-new-privs"
        );
    }
}

/// CAP_NET_ADMIN (12) and CAP_BPF (39): all switcher-ctl keeps after attaching.
const SWITCHER_CAPS: u64 = (1 << 12) | (1 << 39);

/// No process of the lab runs as root: the services run as the service user with
/// no-new-privs, FRR's daemons as `frr`, switcher-ctl with CAP_BPF + CAP_NET_ADMIN only.
fn assert_least_privilege(lab: &Lab) {
    let procs = lab.processes();
    for svc in ["ingest", "publisher", "packager-origin1", "origin-origin2"] {
        assert!(
            procs.iter().any(|(n, _, u)| n == svc && *u),
            "{svc} is not among the lab's unprivileged processes: {procs:?}"
        );
    }
    for (name, pid, unprivileged) in &procs {
        if *unprivileged {
            assert_unprivileged(name, *pid, true);
        } else if name.starts_with("switcher-") {
            let eff = u64::from_str_radix(&proc_status(*pid, "CapEff"), 16).expect("CapEff");
            let prm = u64::from_str_radix(&proc_status(*pid, "CapPrm"), 16).expect("CapPrm");
            assert_eq!(
                (eff, prm),
                (SWITCHER_CAPS, SWITCHER_CAPS),
                "{name} (pid {pid}) kept more than CAP_BPF + CAP_NET_ADMIN: effective {eff:#x}, permitted {prm:#x}"
            );
        } else {
            // FRR: zebra, bfdd and bgpd switch to the `frr` user after startup.
            assert_unprivileged(name, *pid, false);
        }
    }
}

/// Size of the file the slow downloads fetch: about 3 MiB, whole MPEG-TS packets (the origin
/// refuses a `.ts` that is not, as cut short).
const BIG: usize = (3 << 20) / 188 * 188;
/// Concurrent slow downloads through the VIP.
const DOWNLOADS: usize = 100;

#[test]
fn edge_loss_is_hitless_for_established_downloads() {
    let (_run_dir, mut lab) = start_lab("labloss");
    lab.wait_for("the playlist through the VIP", WAIT, |lab| {
        Ok(matches!(lab.get(PLAYLIST), Ok((200, b)) if b.starts_with(b"#EXTM3U")))
    })
    .expect("the stream reaches viewers through the VIP");
    // The same large file on both origin hosts.
    let mut content = vec![0u8; BIG];
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut content))
        .expect("random content");
    for o in ORIGIN_HOSTS {
        let dir = lab.hls_dir(o).join("big");
        std::fs::create_dir_all(&dir).expect("create the file's directory");
        std::fs::write(dir.join("big.ts"), &content).expect("write the file");
    }
    let url = format!(
        "http://{}:{}/hls/big/big.ts",
        xtask::lab::VIP,
        xtask::lab::VIP_PORT
    );
    // Viewers run as the service user, as the services do.
    let viewer = lab.unprivileged("client");
    let out_dir = lab.user_dir("downloads").expect("downloads directory");
    // A player records the live stream through the VIP across the edge loss.
    let rec = lab
        .user_dir("recordings")
        .expect("recordings directory")
        .join("vip.ts");
    let mut player =
        Player::start_with(&viewer, &format!("http://{VIP}:{VIP_PORT}{PLAYLIST}"), &rec)
            .expect("start the ffmpeg player");
    player.wait_for("the player loads 2 segments", |p| p.segments().len() >= 2);
    // Checked once it plays: right after the spawn, `ip netns exec` may not have exec'd it.
    assert_unprivileged("the player", player.pid(), true);
    let before: Vec<f64> = EDGES
        .iter()
        .map(|e| lab.edge_counter(e, "dataplane_packets_total").unwrap())
        .collect();
    // ~30 s each at 100 kB/s: still running when the edge dies.
    let mut curls: Vec<(PathBuf, std::process::Child)> = (0..DOWNLOADS)
        .map(|i| {
            let out = out_dir.join(format!("{i}.ts"));
            let child = std::process::Command::new(&viewer[0])
                .args(&viewer[1..])
                .args(["curl", "-sS", "--fail"])
                // A stalled download fails the test instead of hanging it.
                .args(["--limit-rate", "100k", "--max-time", "120", "-o"])
                .arg(&out)
                .arg(&url)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start curl");
            (out, child)
        })
        .collect();
    // Every download has started (bytes arrived) before the edge dies.
    lab.wait_for("every download to start", WAIT, |_| {
        for (i, (_, c)) in curls.iter_mut().enumerate() {
            if let Some(status) = c.try_wait()?
                && !status.success()
            {
                let mut err = String::new();
                if let Some(mut e) = c.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("download {i} ended before the edge loss ({status}): {err}");
            }
        }
        Ok(curls
            .iter()
            .all(|(out, _)| std::fs::metadata(out).is_ok_and(|m| m.len() > 0)))
    })
    .expect("downloads started");
    let edge1_carried = lab
        .edge_counter("edge1", "dataplane_packets_total")
        .unwrap()
        > before[0];
    assert!(
        edge1_carried,
        "ECMP put none of {DOWNLOADS} downloads on edge1; the edge loss would test nothing"
    );
    let adopted_before = lab.edge_encap("edge2", "adopted").unwrap();
    let segments_at_kill = player.segments().len();
    lab.kill_edge("edge1").expect("kill edge1");
    let edge2 = lab.host("edge2").addr;
    let reconverged = lab
        .wait_for("the router to drop edge1", WAIT, |lab| {
            Ok(lab.vip_nexthops()? == vec![edge2])
        })
        .expect("the router routes the VIP over edge2 only");
    eprintln!(
        "router reconverged {:.3} s after edge1 was killed (BFD 300 ms x 3)",
        reconverged.as_secs_f64()
    );
    for (i, (out, child)) in curls.iter_mut().enumerate() {
        let status = child.wait().expect("curl wait");
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        assert!(status.success(), "download {i} failed ({status}): {err}");
        let got = std::fs::read(&out).expect("downloaded file");
        assert!(
            got == content,
            "download {i}: {} bytes, not byte-identical to the {BIG}-byte original",
            got.len()
        );
    }
    let adopted = lab.edge_encap("edge2", "adopted").unwrap() - adopted_before;
    assert!(
        adopted > 0,
        "edge2 adopted no packet of edge1's downloads: the takeover path was not exercised"
    );
    eprintln!("edge2 carried {adopted} packets of connections it never saw start");

    // The player went on through the loss: two more segments after the downloads (which
    // outlast the kill by ~30 s), still running, and its recording has no hole and no repeat.
    player.wait_for("the player goes on after the edge loss", |p| {
        p.segments().len() >= segments_at_kill + 2
    });
    assert!(player.running(), "the player gave up:\n{}", player.tail(30));
    let (segs, errors) = player.stop();
    assert!(
        errors.is_empty(),
        "player errors across the edge loss:\n{}",
        errors.join("\n")
    );
    for w in segs.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "the player skipped or repeated a segment across the edge loss: {segs:?}"
        );
    }
    let pts = video_pts(&rec).expect("ffprobe the recording");
    // 10 fps for the ~30 s of downloads at least.
    assert!(
        pts.len() > 200,
        "the recording has {} video packets ({} segments loaded)",
        pts.len(),
        segs.len()
    );
    let (hole, repeats) = pts_holes(&pts);
    assert!(
        hole <= 1.0,
        "a {hole:.2} s hole in the video recorded through the VIP across the edge loss ({segs:?})"
    );
    assert_eq!(repeats, 0, "repeated video in the recording");
    eprintln!(
        "player through the edge loss: {} segments, {} video packets, largest PTS step {hole:.3} s",
        segs.len(),
        pts.len()
    );
}

/// A keep-alive connection through the VIP from the client namespace, after one whole
/// playlist response on it (so the edge has recorded the viewer's acknowledgment); reads on
/// it time out after 10 s.
fn keep_alive_viewer(lab: &Lab) -> std::net::TcpStream {
    let client = lab.ns_name("client");
    test_kit::netns::run_in(Some(&client), || {
        let mut conn = test_kit::keepalive::Client::connect_within(
            &format!("{VIP}:{VIP_PORT}"),
            Duration::from_secs(10),
        )
        .expect("connect to the VIP");
        let body = conn.get(PLAYLIST).expect("the playlist");
        assert!(body.starts_with(b"#EXTM3U"), "not a playlist");
        conn.into_stream()
    })
}

#[test]
fn lab_drills_recover_and_viewers_stay_served() {
    let (_run_dir, mut lab) = start_lab("labdrill");
    lab.wait_for("the playlist through the VIP", WAIT, |lab| {
        Ok(matches!(lab.get(PLAYLIST), Ok((200, b)) if b.starts_with(b"#EXTM3U")))
    })
    .expect("the stream reaches viewers through the VIP");
    for drill in xtask::lab::DRILLS {
        // A viewer idle on a keep-alive connection to origin1 when its host is lost: nothing
        // of origin1 can reach it any more, so only the edge's own reset ends its connection.
        let stranded = (drill == "origin-host-kill").then(|| {
            lab.wait_for("both edges on origin1", WAIT, |lab| {
                Ok(EDGES
                    .iter()
                    .all(|e| lab.edge_active(e).is_ok_and(|a| a == "primary")))
            })
            .expect("both edges on origin1 before the host loss");
            keep_alive_viewer(&lab)
        });
        // Each drill waits for its fault to be seen (router or edges) and for the recovery,
        // and fails if either does not come.
        let timeline = lab
            .drill(drill)
            .unwrap_or_else(|e| panic!("drill {drill}: {e:#}"));
        if let Some(mut conn) = stranded {
            use std::io::Read as _;
            // The reset came during the drill; without it, the read times out.
            let mut buf = [0u8; 1];
            match conn.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                other => panic!(
                    "a viewer stranded on the lost origin host was not reset by the edge: read gave {other:?}"
                ),
            }
        }
        for (what, at) in &timeline {
            eprintln!("{drill} {:>8.3} s  {what}", at.as_secs_f64());
        }
        let fetches: Vec<&String> = timeline
            .iter()
            .map(|(w, _)| w)
            .filter(|w| w.starts_with("viewer fetch"))
            .collect();
        assert!(
            !fetches.is_empty() && fetches.iter().all(|w| w.ends_with(": 200")),
            "{drill}: viewers not served during and after the fault: {fetches:?}"
        );
    }
    a_cut_segment_is_served_from_the_other_origin_host(&lab);
}

/// Peer fill across hosts (origin's `peer`): a segment cut short on origin1's disk is served
/// whole, from origin2's copy over the routed network, to a request at origin1 itself; a request
/// for origin1's own copy only (what the edges' probes send) still gets its own error. Last in
/// its test: the cut segment retires origin1 on both edges while it is listed.
fn a_cut_segment_is_served_from_the_other_origin_host(lab: &Lab) {
    let stream = &lab.cfg.stream;
    let (dir1, dir2) = (
        lab.hls_dir("origin1").join(stream),
        lab.hls_dir("origin2").join(stream),
    );
    let playlist = std::fs::read_to_string(dir1.join("index.m3u8")).expect("origin1's playlist");
    let segment = playlist
        .lines()
        .rfind(|l| !l.is_empty() && !l.starts_with('#'))
        .expect("a listed segment")
        .to_string();
    let mut whole = Vec::new();
    lab.wait_for("origin2 has the segment", WAIT, |_| {
        whole = std::fs::read(dir2.join(&segment)).unwrap_or_default();
        Ok(!whole.is_empty())
    })
    .expect("origin2 writes the segment origin1 listed");
    let tmp = dir1.join(".cut-by-test");
    std::fs::write(&tmp, &whole[..whole.len() / 2 + 1]).expect("write the cut copy");
    std::fs::rename(&tmp, dir1.join(&segment)).expect("cut origin1's segment");
    let url = format!(
        "http://{}:{VIP_PORT}/hls/{stream}/{segment}",
        lab.host("origin1").addr
    );
    let curl = |extra: &[&str]| {
        let mut argv = vec![
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
        ];
        argv.extend_from_slice(extra);
        argv.push(&url);
        lab.run_in("edge1", &argv).expect("curl from edge1")
    };
    assert_eq!(
        curl(&[]).trim(),
        format!("200 {}", whole.len()),
        "origin1 serves origin2's whole copy of its cut segment {segment}"
    );
    assert!(
        curl(&["-H", "x-hls-edge-local-only: 1"]).starts_with("500"),
        "origin1's own copy is still refused to a local-only request"
    );
}

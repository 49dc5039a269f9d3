//! The multi-host lab (`xtask::lab`) in network namespaces: a router doing ECMP over two edges
//! that announce the VIP with FRR, two origin hosts answering viewers directly (IP-in-IP from
//! the edges' XDP, decapsulated by `switcher-ctl decap`), real ingest, packagers and origins.
//!
//! * Viewers are spread over both edges: both edges' data-plane counters grow, the origin
//!   hosts decapsulate, and every fetch through the VIP gets the playlist (whose bytes never
//!   cross an edge).
//! * An edge with no healthy origin withdraws the VIP: the router then routes it over the
//!   other edge only, viewers keep being served, and the route comes back with the health.
//!
//! Needs root, FRR (`scripts/setup`), and the binaries in target/debug (`cargo xtask test`
//! builds them). Everything is removed on drop, also on failure.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use xtask::lab::{EDGES, Lab, LabConfig, ORIGIN_HOSTS};

const PLAYLIST: &str = "/hls/demo/index.m3u8";
/// Fresh connections (so fresh source ports, so L4-hashed paths) per spread check.
const VIEWERS: usize = 64;
const WAIT: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Removes the run directory on drop.
struct RunDir(PathBuf);
impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fetch_all(lab: &Lab, n: usize) {
    for i in 0..n {
        let (status, body) = lab
            .get(PLAYLIST)
            .unwrap_or_else(|e| panic!("viewer {i}: fetch through the VIP failed: {e:#}"));
        assert_eq!(status, 200, "viewer {i}: status");
        assert!(
            body.starts_with(b"#EXTM3U"),
            "viewer {i}: not a playlist: {:?}",
            String::from_utf8_lossy(&body)
        );
    }
}

#[test]
fn lab_spreads_viewers_over_both_edges_and_an_unhealthy_edge_withdraws() {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "the lab test needs root; run it through `cargo xtask test`"
    );
    let run_dir = RunDir(PathBuf::from(format!(
        "/run/hls-edge-labtest-{}",
        std::process::id()
    )));
    let lab = Lab::start(LabConfig {
        bin_dir: workspace().join("target/debug"),
        run_dir: run_dir.0.clone(),
        stream: "demo".into(),
        video: (320, 240, 10),
    })
    .expect("start the lab");
    lab.wait_for("the playlist through the VIP", WAIT, |lab| {
        Ok(matches!(lab.get(PLAYLIST), Ok((200, b)) if b.starts_with(b"#EXTM3U")))
    })
    .expect("the stream reaches viewers through the VIP");

    // ECMP spread: both edges carry requests; the origin hosts decapsulate them.
    let packets = |lab: &Lab, e: &str| {
        lab.edge_counter(e, "dataplane_packets_total")
            .expect("edge metrics")
    };
    let before: Vec<f64> = EDGES.iter().map(|e| packets(&lab, e)).collect();
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
    let decap_after: u64 = ORIGIN_HOSTS
        .iter()
        .map(|o| lab.decapsulated(o).expect("decap status"))
        .sum();
    assert!(
        decap_after >= decap_before + VIEWERS as u64,
        "the origin hosts decapsulated {} packets for {VIEWERS} viewers",
        decap_after - decap_before
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
    let announced = lab
        .run_in("edge1", &["ip", "route", "show", "proto", "77"])
        .expect("ip route");
    assert!(
        announced.trim().is_empty(),
        "edge1 still has its announcement route: {announced}"
    );
    fetch_all(&lab, 8);
    lab.run_in("edge1", &["nft", "delete", "table", "ip", "labfault"])
        .expect("nft delete");
    lab.wait_for("edge1 to announce the VIP again", WAIT, |lab| {
        Ok(lab.vip_nexthops()?.len() == 2)
    })
    .expect("the router routes the VIP over both edges again");
    fetch_all(&lab, 8);
}

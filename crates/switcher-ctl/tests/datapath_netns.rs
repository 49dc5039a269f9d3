//! The data plane on real interfaces, in network namespaces the test creates (needs root):
//! * veth: client ns <-> veth <-> edge ns, XDP native on the edge veth, TC egress, two HTTP
//!   origins on :8081/:8082 in the edge ns, requests from the client ns to VIP:8080;
//! * local: everything on `lo` inside one namespace, XDP generic or TC ingress.
//!
//! Namespaces, attachments and pins are removed even when a test fails (Drop guards).

mod netns;

use std::{net::SocketAddr, path::Path};

use netns::{BIG_LEN, BpfFs, Client, EDGE_V4, EDGE_V6, Netns, Pair, big_body, get_once, serve};
use switcher_common::{
    ATTACH_TC, ATTACH_XDP_GENERIC, ATTACH_XDP_NATIVE, ORIGIN_BACKUP, ORIGIN_PRIMARY,
};
use switcher_ctl::{
    dataplane::DataPlane,
    loader::{self, AttachConfig, AttachMode, Pinned},
};

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "namespace tests need root; run them via `cargo xtask test`"
    );
}

/// Starts the two origins inside `ns` on [::]:8081 ("primary") and [::]:8082 ("backup").
fn start_origins(ns: &Netns) {
    ns.run(|| {
        serve(
            std::net::TcpListener::bind("[::]:8081").expect("bind 8081"),
            "primary",
        );
        serve(
            std::net::TcpListener::bind("[::]:8082").expect("bind 8082"),
            "backup",
        );
    });
}

fn attach_in(ns: &Netns, cfg: AttachConfig) -> Pinned {
    ns.run(move || {
        let mut p = Pinned::attach(&cfg).expect("attach");
        p.set_active(ORIGIN_PRIMARY).unwrap();
        p
    })
}

fn whoami(ns: &Netns, addr: &'static str) -> String {
    ns.run(move || {
        String::from_utf8(get_once(addr, "/whoami").expect("GET /whoami via VIP")).unwrap()
    })
}

#[test]
fn veth_native_xdp_steers_pins_and_retires_flows() {
    require_root();
    let pair = Pair::new();
    let bpf = BpfFs::new();
    start_origins(&pair.edge);
    let csum_errors_before = (
        pair.edge.tcp_snmp("InCsumErrors"),
        pair.client.tcp_snmp("InCsumErrors"),
    );

    let cfg = AttachConfig {
        iface: pair.edge_if.clone(),
        vip: format!("{EDGE_V4}:8080").parse().unwrap(),
        vip_v6: Some(EDGE_V6.parse().unwrap()),
        origins: vec![
            "0.0.0.0:8081".parse().unwrap(),
            "0.0.0.0:8082".parse().unwrap(),
        ],
        pin_root: bpf.pin_root(),
        mode: AttachMode::Native,
    };
    let mut dp = attach_in(&pair.edge, cfg.clone());
    assert_eq!(
        dp.vip().unwrap().attach_mode,
        ATTACH_XDP_NATIVE,
        "veth has native XDP"
    );
    let net = pair.edge.exec(&["bpftool", "net", "show"]);
    assert!(
        net.contains(&format!("{}(", pair.edge_if)) && net.contains("driver id"),
        "bpftool net show lists native XDP:\n{net}"
    );
    assert!(
        net.contains("switcher_tc_egress"),
        "bpftool net show lists TC egress:\n{net}"
    );
    let filters = pair
        .edge
        .exec(&["tc", "filter", "show", "dev", &pair.edge_if, "egress"]);
    assert!(
        filters.contains("switcher_tc_egress"),
        "tc filter show lists the egress program:\n{filters}"
    );
    for map in ["SWITCHER_CONFIG", "SWITCHER_FLOWS", "SWITCHER_STATS"] {
        assert!(
            bpf.pin_root().join("maps").join(map).exists(),
            "{map} pinned"
        );
    }
    // BTF-defined maps: bpftool decodes keys and values field by field.
    let dump = netns::sh(&[
        "bpftool",
        "map",
        "dump",
        "pinned",
        bpf.pin_root()
            .join("maps/SWITCHER_CONFIG")
            .to_str()
            .unwrap(),
    ]);
    assert!(
        dump.contains("\"port_be\": 36895") && dump.contains("\"attach_mode\": 1"),
        "BTF-decoded dump:\n{dump}"
    );

    // The VIP reaches the active origin, over IPv4 and IPv6.
    assert_eq!(whoami(&pair.client, "10.77.0.2:8080"), "primary");
    assert_eq!(whoami(&pair.client, "[fd77::2]:8080"), "primary");

    // An open keep-alive connection stays on its origin across a flip; new ones go to backup.
    let mut kept = pair.client.run(|| {
        let mut c = Client::connect("10.77.0.2:8080").expect("connect VIP");
        assert_eq!(c.get("/whoami").unwrap(), b"primary");
        c
    });
    dp.set_active(ORIGIN_BACKUP).unwrap();
    assert_eq!(whoami(&pair.client, "10.77.0.2:8080"), "backup");
    assert_eq!(whoami(&pair.client, "[fd77::2]:8080"), "backup");
    assert_eq!(
        kept.get("/whoami").expect("kept connection still works"),
        b"primary"
    );

    // A 1 MiB body through the VIP arrives byte-identical (curl in the client ns).
    let out = std::env::temp_dir().join(format!("{}-big", netns::unique("b")));
    pair.client.exec(&[
        "curl",
        "-sS",
        "--fail",
        "-o",
        out.to_str().unwrap(),
        "http://10.77.0.2:8080/big",
    ]);
    let got = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    assert_eq!(got.len(), BIG_LEN);
    assert!(got == big_body(), "1 MiB body differs");

    // Retiring the primary resets its flows: the kept connection fails, the next one lands on
    // the active origin.
    let retired = dp.retire_flows(ORIGIN_PRIMARY).unwrap();
    assert!(
        retired >= 1,
        "the kept connection's flow was tracked on primary"
    );
    let after = kept.get("/whoami");
    assert!(after.is_err(), "retired flow must be reset, got {after:?}");
    assert_eq!(whoami(&pair.client, "10.77.0.2:8080"), "backup");

    let c = dp.counters().unwrap();
    assert!(
        c[0].rewrites > 0 && c[1].rewrites > 0,
        "both origins saw rewritten requests: {c:?}"
    );
    assert!(
        c[0].reply_rewrites > 0 && c[1].reply_rewrites > 0,
        "replies rewritten at TC egress: {c:?}"
    );
    assert!(
        c[1].resteered >= 1,
        "the retired flow's next packet was adopted by backup: {c:?}"
    );
    let csum_errors_after = (
        pair.edge.tcp_snmp("InCsumErrors"),
        pair.client.tcp_snmp("InCsumErrors"),
    );
    assert_eq!(
        csum_errors_after, csum_errors_before,
        "TcpInCsumErrors must not grow (offload off)"
    );

    // A second attach adopts the pinned programs instead of reloading: flows survive.
    let mut kept2 = pair.client.run(|| {
        let mut c = Client::connect("10.77.0.2:8080").unwrap();
        assert_eq!(c.get("/whoami").unwrap(), b"backup");
        c
    });
    drop(dp);
    let dp2 = pair
        .edge
        .run(move || Pinned::attach(&cfg).expect("re-attach adopts"));
    assert_eq!(
        dp2.active().unwrap(),
        ORIGIN_BACKUP,
        "adoption keeps the active origin"
    );
    assert_eq!(
        kept2.get("/whoami").expect("flow survives re-attach"),
        b"backup"
    );

    // Detach removes programs and pins; then nothing answers on the VIP.
    // Detach runs where the programs are: interface indexes are per namespace.
    let root = bpf.pin_root();
    pair.edge
        .run(move || loader::detach(&root).expect("detach"));
    assert!(!bpf.pin_root().exists(), "pins removed");
    let net = pair.edge.exec(&["bpftool", "net", "show"]);
    assert!(
        !net.contains("switcher_"),
        "nothing attached after detach:\n{net}"
    );
    let refused = pair.client.run(|| get_once("10.77.0.2:8080", "/whoami"));
    assert!(
        refused.is_err(),
        "without the data plane nothing listens on the VIP"
    );
}

fn local_mode(mode: AttachMode, expect: u32) {
    require_root();
    let ns = Netns::new("l");
    let bpf = BpfFs::new();
    start_origins(&ns);
    let cfg = AttachConfig {
        iface: "lo".into(),
        vip: "127.0.0.1:8080".parse::<SocketAddr>().unwrap(),
        vip_v6: Some("::1".parse().unwrap()),
        origins: vec![
            "127.0.0.1:8081".parse().unwrap(),
            "127.0.0.1:8082".parse().unwrap(),
        ],
        pin_root: bpf.pin_root(),
        mode,
    };
    let mut dp = attach_in(&ns, cfg);
    assert_eq!(dp.vip().unwrap().attach_mode, expect);
    assert_eq!(whoami(&ns, "127.0.0.1:8080"), "primary");
    assert_eq!(whoami(&ns, "[::1]:8080"), "primary");
    // A client port that talked to the VIP (flow pinned to primary), then connects straight
    // to the primary (as a probe or wrk does): the stale flow must not rewrite its replies.
    let direct = ns.run(|| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let mut via_vip = Client::connect_from("127.0.0.1:8080", port).unwrap();
        assert_eq!(via_vip.get("/whoami").unwrap(), b"primary");
        // Fully closed first: a late packet of it would be adopted as a flow again.
        via_vip.close().unwrap();
        Client::connect_from("127.0.0.1:8081", port).and_then(|mut c| c.get("/whoami"))
    });
    assert_eq!(
        direct.unwrap_or_else(|e| panic!(
            "direct connection from a port a VIP flow used: {e}; counters {:?}",
            dp.counters()
        )),
        b"primary"
    );
    assert_eq!(
        dp.counters().unwrap()[ORIGIN_PRIMARY as usize].stale_flows,
        1
    );
    let mut kept = ns.run(|| {
        let mut c = Client::connect("127.0.0.1:8080").unwrap();
        assert_eq!(c.get("/whoami").unwrap(), b"primary");
        c
    });
    dp.set_active(ORIGIN_BACKUP).unwrap();
    assert_eq!(whoami(&ns, "127.0.0.1:8080"), "backup");
    assert_eq!(
        kept.get("/whoami").unwrap(),
        b"primary",
        "keep-alive stays on its origin"
    );
    let body = ns.run(|| get_once("127.0.0.1:8080", "/big"));
    let body =
        body.unwrap_or_else(|e| panic!("GET /big via VIP: {e}; counters {:?}", dp.counters()));
    assert!(body == big_body(), "1 MiB body through the VIP on lo");
    assert!(dp.retire_flows(ORIGIN_PRIMARY).unwrap() >= 1);
    assert!(kept.get("/whoami").is_err(), "retired flow is reset");
    assert_eq!(whoami(&ns, "127.0.0.1:8080"), "backup");
    assert_eq!(ns.tcp_snmp("InCsumErrors"), 0);
    let root = bpf.pin_root();
    ns.run(move || loader::detach(&root).unwrap());
    assert!(!Path::new(&bpf.pin_root()).exists());
    let filters = ns.exec(&["tc", "filter", "show", "dev", "lo", "egress"]);
    assert!(
        !filters.contains("switcher_"),
        "TC egress removed:\n{filters}"
    );
}

#[test]
fn lo_generic_xdp_in_a_namespace() {
    local_mode(AttachMode::Generic, ATTACH_XDP_GENERIC);
}

#[test]
fn lo_tc_ingress_in_a_namespace() {
    local_mode(AttachMode::Tc, ATTACH_TC);
}

/// `auto` on lo picks TC ingress (faster than generic XDP there, see the loader).
#[test]
fn lo_auto_picks_tc_ingress() {
    local_mode(AttachMode::Auto, ATTACH_TC);
}

//! The data plane on real interfaces, in network namespaces the test creates (needs root):
//! * veth: client ns <-> veth <-> edge ns, XDP native on the edge veth, TC egress, two HTTP
//!   origins on :8081/:8082 in the edge ns, requests from the client ns to VIP:8080;
//! * local: everything on `lo` inside one namespace, XDP generic or TC ingress.
//!
//! Namespaces, attachments and pins are removed even when a test fails (Drop guards).

use std::{net::SocketAddr, path::Path};

use switcher_common::{
    ATTACH_TC, ATTACH_XDP_GENERIC, ATTACH_XDP_NATIVE, MAX_FLOWS, MIN_FLOWS, ORIGIN_BACKUP,
    ORIGIN_PRIMARY, STATS_UNSTEERED,
};
use switcher_ctl::{
    dataplane::DataPlane,
    loader::{self, AttachConfig, AttachMode, Pinned},
};
use test_kit::keepalive::{BIG_LEN, Client, big_body, get_once, serve};
use test_kit::netns::{self, BpfFs, CLIENT_V4, EDGE_V4, EDGE_V6, Netns, Pair};
use test_kit::packet::{ACK, Pkt, SYN, send_raw_v4};
use test_kit::process::pin_to_cpu;

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

/// The edge's data plane on its veth: native XDP, the VIP on the edge's IPv4 address, the two
/// origins of `start_origins` on this host.
fn edge_config(pair: &Pair, bpf: &BpfFs) -> AttachConfig {
    AttachConfig::primary_backup(
        &pair.edge_if,
        format!("{EDGE_V4}:8080").parse().unwrap(),
        std::net::Ipv4Addr::UNSPECIFIED.into(),
        bpf.pin_root(),
    )
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
    let bpf = BpfFs::new().on_drop(switcher_ctl::loader::detach);
    start_origins(&pair.edge);
    let csum_errors_before = (
        pair.edge.tcp_snmp("InCsumErrors"),
        pair.client.tcp_snmp("InCsumErrors"),
    );

    let cfg = AttachConfig {
        vip_v6: Some(EDGE_V6.parse().unwrap()),
        ..edge_config(&pair, &bpf)
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
    let dump = test_kit::process::sh(&[
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

    // A 1 MiB body through the VIP arrives byte-identical (a fresh client in the client ns).
    let big = test_kit::http::get_in(
        Some(&pair.client.name),
        "10.77.0.2:8080",
        "/big",
        std::time::Duration::from_secs(10),
    )
    .expect("GET /big through the VIP");
    assert_eq!(big.status, 200);
    let got = big.body;
    assert_eq!(got.len(), BIG_LEN);
    assert!(got == big_body(), "1 MiB body differs");

    // Retiring the primary resets its flows: the kept connection fails, the next one lands on
    // the active origin. Retiring is one write (the origin's generation moves on): the
    // entries stay until the data plane meets them or `reap_retired` deletes them (the
    // closed connections of the first requests are entries too, met by no packet).
    let primary_entries = |dp: &Pinned| {
        dp.flow_entries()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.origin == ORIGIN_PRIMARY)
            .count()
    };
    let before = primary_entries(&dp);
    let retired = dp.retire_flows(ORIGIN_PRIMARY).unwrap();
    assert!(
        retired >= 1,
        "the kept connection's flow was tracked on primary"
    );
    assert_eq!(
        primary_entries(&dp),
        before,
        "retiring deletes no entry on the failover path"
    );
    assert_eq!(dp.flow_counts().unwrap()[ORIGIN_PRIMARY as usize], 0);
    let after = kept.get("/whoami");
    assert!(after.is_err(), "retired flow must be reset, got {after:?}");
    assert_eq!(whoami(&pair.client, "10.77.0.2:8080"), "backup");
    let left = primary_entries(&dp);
    assert!(
        left < before,
        "the data plane forgot the retired flow it met ({before} -> {left})"
    );
    let reaped = dp.reap_retired(usize::MAX).unwrap();
    assert_eq!(
        primary_entries(&dp),
        0,
        "reap_retired deleted the retired entries ({reaped} of them)"
    );

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
        c[STATS_UNSTEERED as usize].untracked >= 1,
        "the retired flow's next packet passed to the edge's stack, which reset it: {c:?}"
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
    let mut moved = cfg.clone();
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
    let kept2_addr = kept2.local_addr();
    assert!(dp2.flow_of(kept2_addr).unwrap().is_some());
    assert_eq!(dp2.flow_counts().unwrap()[ORIGIN_BACKUP as usize], 1);
    // A restart that puts another origin in the backup's slot retires the flows pinned to
    // the one it replaces (the new one has no socket for them): one generation on, no walk.
    drop(dp2);
    moved.origins[ORIGIN_BACKUP as usize].set_port(8083);
    let mut dp3 = pair
        .edge
        .run(move || Pinned::attach(&moved).expect("re-attach, another backup"));
    assert_eq!(
        dp3.flow_of(kept2_addr).unwrap(),
        None,
        "a flow of the replaced origin is retired"
    );
    assert_eq!(
        dp3.flow_counts().unwrap()[ORIGIN_BACKUP as usize],
        0,
        "the slot's new origin starts with no open flow"
    );
    assert!(
        dp3.reap_retired(usize::MAX).unwrap() >= 1,
        "attaching found the retired flow and deletes it"
    );
    drop(dp3);

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
    let bpf = BpfFs::new().on_drop(switcher_ctl::loader::detach);
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
        max_flows: MAX_FLOWS,
        dsr: false,
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
        // Fully closed first: while the origin may still send on the VIP connection
        // (ESTABLISHED or CLOSE_WAIT), a SYN for the same 4-tuple is not taken as the end of
        // that flow (it could be spoofed), and the flow is kept.
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

/// Issue 13 item 9: spoofed packets cannot evict a viewer. A viewer holds a keep-alive
/// connection through the VIP while the client namespace floods the VIP, from a raw socket,
/// with bare ACKs and SYNs from 16 times more (address, port) pairs than the flow table holds
/// (the smallest table there is, so the flood is small). Before the fix each bare ACK created
/// a flow and the viewer's was evicted, its replies left un-rewritten; now bare ACKs create
/// nothing, SYNs only handshakes, and the viewer's flow stays, with its requests answered.
/// Also: a table size other than the pinned one is not applied on adoption.
#[test]
fn spoofed_flood_does_not_evict_a_viewer() {
    require_root();
    let pair = Pair::new();
    let bpf = BpfFs::new().on_drop(switcher_ctl::loader::detach);
    start_origins(&pair.edge);
    let cfg = AttachConfig {
        max_flows: MIN_FLOWS,
        ..edge_config(&pair, &bpf)
    };
    let mut dp = attach_in(&pair.edge, cfg.clone());
    let capacity = dp.flow_capacity().unwrap();
    assert!(
        (MIN_FLOWS..MIN_FLOWS + 1024).contains(&capacity),
        "the flow table has --max-flows entries (rounded to the CPUs): {capacity}"
    );

    let mut viewer = pair.client.run(|| {
        let mut c = Client::connect("10.77.0.2:8080").expect("connect VIP");
        assert_eq!(c.get("/whoami").unwrap(), b"primary");
        c
    });
    let viewer_addr: SocketAddr = format!("{CLIENT_V4}:{}", viewer.local_port())
        .parse()
        .unwrap();
    assert_eq!(
        dp.flow_of(viewer_addr).unwrap().map(|f| f.origin),
        Some(ORIGIN_PRIMARY),
        "the viewer's handshake established its flow"
    );

    // 16 x the table, each kind: bare ACKs (from the client's own address, every port but the
    // viewer's, then spoofed addresses) and SYNs (the same). The SYN-ACKs to the client's
    // address pass TC egress and are reset by the client's stack; those to spoofed addresses
    // go nowhere.
    let per_kind = 16 * MIN_FLOWS as usize;
    let viewer_port = viewer.local_port();
    let sources = move || {
        (0..per_kind).map(move |i| {
            let port = 1024 + (i % 60_000) as u16;
            if i < 60_000 && port != viewer_port {
                (CLIENT_V4.to_string(), port)
            } else {
                (format!("10.99.{}.{}", (i >> 8) & 0xff, i & 0xff), port)
            }
        })
    };
    // From every CPU in turn: the tables keep one LRU list per CPU, and the program runs on
    // the CPU that sent (veth), so a flood from one CPU would only ever evict that CPU's share.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sent = pair.client.run(move || {
        let mut sent = (0, 0);
        for cpu in 0..cpus {
            pin_to_cpu(cpu);
            let mine = move |i: &usize| i % cpus == cpu;
            let acks = sources()
                .enumerate()
                .filter(|(i, _)| mine(i))
                .map(|(_, (a, p))| Pkt::tcp(&a, p, EDGE_V4, 8080, ACK).build());
            let syns = sources()
                .enumerate()
                .filter(|(i, _)| mine(i))
                .map(|(_, (a, p))| Pkt::tcp(&a, p, EDGE_V4, 8080, SYN).build());
            sent.0 += send_raw_v4(acks);
            sent.1 += send_raw_v4(syns);
        }
        sent
    });
    assert!(
        sent.0 >= per_kind * 9 / 10 && sent.1 >= per_kind * 9 / 10,
        "the flood went out: {sent:?} of {per_kind} each"
    );

    assert_eq!(
        dp.flow_of(viewer_addr).unwrap().map(|f| f.origin),
        Some(ORIGIN_PRIMARY),
        "the viewer's flow survived the flood"
    );
    assert_eq!(
        viewer.get("/whoami").unwrap_or_else(|e| panic!(
            "the viewer's request after the flood: {e}; {:?}",
            dp.counters()
        )),
        b"primary",
        "the viewer's replies are still rewritten"
    );
    let c = dp.counters().unwrap();
    let u = STATS_UNSTEERED as usize;
    // The programs saw most of the flood (veth may drop some when its ring is full).
    assert!(
        c[u].untracked >= (per_kind / 2) as u64,
        "bare ACKs reached the program and passed as untracked: {c:?}"
    );
    assert!(
        c[ORIGIN_PRIMARY as usize].new_flows >= (per_kind / 2) as u64,
        "spoofed SYNs started handshakes: {c:?}"
    );
    assert_eq!(
        c[ORIGIN_PRIMARY as usize].established, 1,
        "the viewer's is the only handshake that ever completed: {c:?}"
    );
    // The spoofed SYNs left handshakes behind (nothing completes them); retiring the origin
    // removes them with its flows.
    let pending = dp.handshake_count();
    assert!(pending > 0, "spoofed SYNs left handshakes");
    assert_eq!(
        dp.retire_handshakes(ORIGIN_PRIMARY).unwrap(),
        pending as u64
    );
    assert_eq!(dp.handshake_count(), 0);
    // And a new viewer still gets in.
    assert_eq!(whoami(&pair.client, "10.77.0.2:8080"), "primary");

    // Adoption keeps the pinned size whatever --max-flows says (and keeps the viewer).
    drop(dp);
    let bigger = AttachConfig {
        max_flows: 4 * MIN_FLOWS,
        ..cfg
    };
    let dp = pair
        .edge
        .run(move || Pinned::attach(&bigger).expect("re-attach adopts"));
    assert_eq!(dp.flow_capacity().unwrap(), capacity);
    assert_eq!(viewer.get("/whoami").unwrap(), b"primary");
}

/// Sizes below the minimum are refused before anything is attached.
#[test]
fn max_flows_below_the_minimum_is_refused() {
    require_root();
    let ns = Netns::new("m");
    let bpf = BpfFs::new().on_drop(switcher_ctl::loader::detach);
    let cfg = AttachConfig {
        iface: "lo".into(),
        vip: "127.0.0.1:8080".parse().unwrap(),
        vip_v6: None,
        origins: vec!["127.0.0.1:8081".parse().unwrap()],
        pin_root: bpf.pin_root(),
        mode: AttachMode::Tc,
        max_flows: MIN_FLOWS - 1,
        dsr: false,
    };
    let err = ns.run(move || Pinned::attach(&cfg).err().map(|e| format!("{e:#}")));
    let err = err.expect("attach must refuse");
    assert!(err.contains("minimum"), "{err}");
    assert!(!bpf.pin_root().join("maps").exists(), "nothing pinned");
}

/// Kills and reaps the `switcher-ctl run` of a test, whatever happens to the test.
struct RunningCtl(std::process::Child);

impl Drop for RunningCtl {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real `switcher-ctl run` with `--vip` given twice (127.0.0.1:8080 and [::1]:8080) on
/// `lo` in a namespace: an IPv4 viewer and an IPv6 viewer reach an origin through the VIP at
/// the same time, and `status` lists both VIPs.
#[test]
fn run_serves_an_ipv4_and_an_ipv6_vip_at_once() {
    require_root();
    let ns = Netns::new("v");
    let bpf = BpfFs::new();
    start_origins(&ns);
    let dir = std::env::temp_dir().join(netns::unique("dual"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pin_root = bpf.pin_root();
    let bin = env!("CARGO_BIN_EXE_switcher-ctl");
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, bin, "run", "--iface", "lo"])
        .args(["--vip", "127.0.0.1:8080", "--vip", "[::1]:8080"])
        .arg("--pin-root")
        .arg(&pin_root)
        .args(["--admin", "127.0.0.1:0", "--admin-socket"])
        .arg(dir.join("admin.sock"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("SWITCHER_") {
            cmd.env_remove(key);
        }
    }
    let mut ctl = RunningCtl(cmd.spawn().expect("start switcher-ctl run"));
    // Ready when `status` shows the data plane attached with both VIPs (the VIP map is
    // written last); a run that exits is a failure, not something to wait for.
    let status = || {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name, bin, "status", "--pin-root"])
            .arg(&pin_root)
            .args(["--admin-socket"])
            .arg(dir.join("admin.sock"))
            .output()
            .expect("switcher-ctl status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut last = String::new();
    let attached = test_kit::wait::try_wait_until(std::time::Duration::from_secs(30), || {
        if let Some(code) = ctl.0.try_wait().expect("poll switcher-ctl") {
            panic!("switcher-ctl run exited early ({code}); last status:\n{last}");
        }
        last = status();
        last.contains("vip: 127.0.0.1:8080") && last.contains("vip: [::1]:8080")
    });
    assert!(
        attached,
        "switcher-ctl run did not attach both VIPs in 30 s; last status:\n{last}"
    );
    // Both families at once: a keep-alive IPv6 viewer stays served while IPv4 viewers come.
    let mut v6 = ns.run(|| {
        let mut c = Client::connect("[::1]:8080").expect("IPv6 viewer connects to the VIP");
        assert_eq!(c.get("/whoami").expect("IPv6 through the VIP"), b"primary");
        c
    });
    assert_eq!(whoami(&ns, "127.0.0.1:8080"), "primary");
    assert_eq!(v6.get("/whoami").expect("IPv6 keep-alive"), b"primary");
    assert_eq!(whoami(&ns, "[::1]:8080"), "primary");
    drop(v6);
    drop(ctl);
    let root = bpf.pin_root();
    ns.run(move || loader::detach(&root).expect("detach"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `Pinned::set_lookup_table` on real maps and real connections, in a namespace on `lo`: every
/// new connection lands on the origin `maglev::Table::lookup` gives its 5-tuple, both origins
/// get some; `flow_counts` counts open flows from counters (closing connections lowers it, with
/// no map walk), and `retire_flows` (batch delete) empties an origin's count.
#[test]
fn lookup_table_steers_real_connections_and_flows_are_counted_without_a_walk() {
    use switcher_ctl::maglev;
    require_root();
    let ns = Netns::new("m");
    let bpf = BpfFs::new();
    start_origins(&ns);
    let cfg = AttachConfig {
        iface: "lo".into(),
        vip: "127.0.0.1:8080".parse::<SocketAddr>().unwrap(),
        vip_v6: None,
        origins: vec![
            "127.0.0.1:8081".parse().unwrap(),
            "127.0.0.1:8082".parse().unwrap(),
        ],
        pin_root: bpf.pin_root(),
        mode: AttachMode::Tc,
        max_flows: MAX_FLOWS,
        dsr: false,
    };
    let mut dp = attach_in(&ns, cfg);
    let names = ["primary", "backup"];
    let backends: Vec<maglev::Backend<'_>> = names
        .iter()
        .map(|name| maglev::Backend { name, weight: 1 })
        .collect();
    let table = maglev::build(&backends, maglev::DEFAULT_TABLE_SIZE).expect("table");
    dp.set_lookup_table(table.slots())
        .expect("publish the table");
    assert!(
        dp.set_lookup_table(&table.slots()[1..]).is_err(),
        "a table of the wrong size is refused"
    );

    // 40 keep-alive viewers: each on the origin the table gives its tuple.
    let clients = ns.run(|| {
        (0..40)
            .map(|_| {
                let mut c = Client::connect("127.0.0.1:8080").expect("connect VIP");
                let who = String::from_utf8(c.get("/whoami").expect("GET via VIP")).unwrap();
                (c, who)
            })
            .collect::<Vec<_>>()
    });
    let mut per_origin = [0u64; 2];
    for (c, who) in &clients {
        let hash = maglev::flow_hash_v4(
            std::net::Ipv4Addr::LOCALHOST,
            c.local_port(),
            std::net::Ipv4Addr::LOCALHOST,
            8080,
            6,
        );
        let want = table.lookup(hash).expect("a full table");
        assert_eq!(
            who,
            names[want],
            "port {} steered by the table",
            c.local_port()
        );
        per_origin[want] += 1;
    }
    assert!(
        per_origin.iter().all(|&n| n > 0),
        "both origins: {per_origin:?}"
    );
    let counts = dp.flow_counts().expect("flow counts");
    assert_eq!(&counts[..2], &per_origin, "open flows per origin");

    // Closing a viewer: the origin's FIN (seen at egress before `close` returns) ends its flow.
    let mut open = per_origin;
    let mut rest = Vec::new();
    for (i, (c, who)) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            let o = names.iter().position(|n| *n == who).unwrap();
            ns.run(move || c.close().expect("close"));
            open[o] -= 1;
        } else {
            rest.push((c, who));
        }
    }
    assert_eq!(&dp.flow_counts().expect("flow counts")[..2], &open);

    // Retiring the primary removes its flows (batch) and its count; the backup's stay.
    let retired = dp.retire_flows(ORIGIN_PRIMARY).expect("retire");
    assert_eq!(
        retired, per_origin[0],
        "every flow of the primary, closed ones too, is in the table until retired"
    );
    let counts = dp.flow_counts().expect("flow counts");
    assert_eq!((counts[0], counts[1]), (0, open[1]));
    drop(rest);
    let root = bpf.pin_root();
    ns.run(move || loader::detach(&root).expect("detach"));
}

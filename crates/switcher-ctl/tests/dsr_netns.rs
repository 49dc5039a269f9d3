//! Direct server return for an IPv6 viewer through real kernels (needs root): 6in4 from the
//! edge's XDP over an IPv4 underlay, the origin host's decap program, and the origin's reply
//! straight to the viewer, in namespaces made here (no BGP: a static route to the VIP).
//!
//! ```text
//!   client fd10:1::2 ---- router ---- edge    10.10.11.2 (XDP, --dsr, VIP [fd00::1]:8080)
//!                           |  \----- origin  10.10.21.2 (decap; fd00::1 on lo; :8080)
//! ```
//! * router: forwards IPv4 and IPv6; `fd00::1/128` via the edge (what BGP would install).
//! * edge: generic XDP on its veth with the origin host as a remote origin; IPv4 forwarding
//!   on (the route lookup from XDP is a forwarding lookup); an IPv6 address on its link only
//!   (the router's next hop for the VIP), no IPv6 route toward the origin host: the 6in4
//!   packets travel as IPv4.
//! * origin: `switcher-ctl decap`'s library call with only the IPv6 VIP, the VIP on `lo`, an
//!   HTTP origin on `[::]:8080` whose replies go to the viewer through the router, never
//!   through the edge.
//!
//! Links inside have MTU 1600 (the client's 1500), checksum offload off on every veth so
//! every receiver verifies checksums. Namespaces and pins are removed on drop.
//!
//! Also: the IPv6 VIP's announcement route (what `run --announce` installs for BGP), in a
//! namespace of its own.

use std::net::SocketAddr;

use switcher_common::{ORIGIN_PRIMARY, STATS_UNSTEERED};
use switcher_ctl::{
    dataplane::DataPlane,
    decap::{self, DecapMode, DecapSetup},
    loader::{self, AttachConfig, AttachMode, Pinned},
};
use test_kit::keepalive::{BIG_LEN, big_body, get_once, serve};
use test_kit::netns::{BpfFs, Netns, unique};
use test_kit::process::{require_root, sh};

const VIP6: &str = "fd00::1";
const ORIGIN_HOST: &str = "10.10.21.2";

/// A veth between `a` (named `a_if`, addresses `a_addrs`) and `b`, both up, offload off.
fn link(a: &Netns, a_addrs: &[&str], b: &Netns, b_addrs: &[&str], mtu: &str) -> (String, String) {
    let (a_if, b_if) = (unique("da"), unique("db"));
    sh(&[
        "ip", "link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if,
        "netns", &b.name,
    ]);
    for (ns, ifname, addrs) in [(a, &a_if, a_addrs), (b, &b_if, b_addrs)] {
        for addr in addrs {
            if addr.contains(':') {
                // `nodad`: usable at once.
                ns.exec(&["ip", "-6", "addr", "add", addr, "dev", ifname, "nodad"]);
            } else {
                ns.exec(&["ip", "addr", "add", addr, "dev", ifname]);
            }
        }
        ns.exec(&["ip", "link", "set", ifname, "mtu", mtu]);
        ns.exec(&["ethtool", "-K", ifname, "tx", "off", "rx", "off"]);
        ns.exec(&["ip", "link", "set", ifname, "up"]);
    }
    (a_if, b_if)
}

#[test]
fn an_ipv6_viewer_is_served_by_a_remote_origin_through_6in4() {
    require_root();
    let (client, router, edge, origin) = (
        Netns::new("dc"),
        Netns::new("dr"),
        Netns::new("de"),
        Netns::new("do"),
    );
    link(
        &client,
        &["fd10:1::2/64"],
        &router,
        &["fd10:1::1/64"],
        "1500",
    );
    let (edge_if, _) = link(
        &edge,
        &["10.10.11.2/24", "fd10:11::2/64"],
        &router,
        &["10.10.11.1/24", "fd10:11::1/64"],
        "1600",
    );
    let (origin_if, _) = link(
        &origin,
        &["10.10.21.2/24", "fd10:21::2/64"],
        &router,
        &["10.10.21.1/24", "fd10:21::1/64"],
        "1600",
    );
    client.exec(&["ip", "-6", "route", "add", "default", "via", "fd10:1::1"]);
    router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    router.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    // What the edge's BGP announcement would install: the VIP toward the edge.
    router.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        &format!("{VIP6}/128"),
        "via",
        "fd10:11::2",
    ]);
    edge.exec(&["ip", "route", "add", "default", "via", "10.10.11.1"]);
    edge.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // An encapsulated packet handed to the stack (no neighbour entry yet) has the edge's own
    // address as its source: without accept_local the stack drops it as a martian, and the
    // neighbour is never resolved.
    edge.exec(&["sysctl", "-qw", "net.ipv4.conf.all.accept_local=1"]);
    origin.exec(&["ip", "route", "add", "default", "via", "10.10.21.1"]);
    origin.exec(&["ip", "-6", "route", "add", "default", "via", "fd10:21::1"]);
    let vip6 = format!("{VIP6}/128");
    origin.exec(&["ip", "-6", "addr", "add", &vip6, "dev", "lo"]);

    // The origin host: decap for the IPv6 VIP only, an origin on the VIP's port.
    let decap_pins = BpfFs::new().on_drop(decap::detach);
    let decap_root = decap_pins.pin_root();
    let iface = origin_if.clone();
    origin.run(move || {
        decap::attach(&DecapSetup {
            iface,
            vip_v4: None,
            vip_v6: Some(VIP6.parse().unwrap()),
            local: None,
            pin_root: decap_root,
            mode: DecapMode::Generic,
        })
        .expect("decap attaches");
        serve(
            std::net::TcpListener::bind("[::]:8080").expect("bind 8080"),
            "origin1",
        );
    });

    // The edge: the IPv6 VIP alone, the origin host as a remote origin.
    let edge_pins = BpfFs::new().on_drop(loader::detach);
    let cfg = AttachConfig {
        mode: AttachMode::Generic,
        dsr: true,
        ..AttachConfig::native(
            &edge_if,
            format!("[{VIP6}]:8080").parse().unwrap(),
            vec![format!("{ORIGIN_HOST}:8080").parse::<SocketAddr>().unwrap()],
            edge_pins.pin_root(),
        )
    };
    let pinned = edge.run(move || {
        let mut p = Pinned::attach(&cfg).expect("attach with --dsr");
        p.set_active(ORIGIN_PRIMARY).unwrap();
        p
    });
    let origins = pinned.origins().unwrap();
    assert_ne!(
        origins[0].flags & switcher_common::ORIGIN_REMOTE,
        0,
        "the origin host is a remote origin"
    );

    let vip = format!("[{VIP6}]:8080");
    let got = client.run(move || {
        let who = get_once(&vip, "/whoami")?;
        let big = get_once(&vip, "/big")?;
        Ok::<_, std::io::Error>((who, big))
    });
    // What each end counted, for the failure message.
    let encap = loader::encap_counters(&edge_pins.pin_root()).unwrap();
    let (_, d) = decap::status(&decap_pins.pin_root()).unwrap();
    let state = format!(
        "edge encap {:?}, edge steering {:?}, origin decap {d:?}",
        encap[0],
        pinned.counters().unwrap()[0]
    );
    let (who, big) = got.unwrap_or_else(|e| panic!("GETs via the IPv6 VIP: {e}; {state}"));
    assert_eq!(who, b"origin1", "the remote origin answered");
    assert_eq!(big.len(), BIG_LEN);
    assert!(big == big_body(), "the download arrived intact");

    // Requests went out encapsulated (from XDP, or through the stack while the neighbour was
    // unknown), none failed; the origin host decapsulated them; replies bypassed the edge.
    let sent = encap[0].encapsulated + encap[0].to_stack;
    assert!(
        sent >= 6,
        "two connections' handshakes and requests were encapsulated: {:?}",
        encap[0]
    );
    assert_eq!(
        (encap[0].too_big, encap[0].errors),
        (0, 0),
        "{:?}",
        encap[0]
    );
    assert!(
        d.decapsulated >= sent,
        "the origin host decapsulated every request: {d:?}, edge sent {sent}"
    );
    assert_eq!(d.malformed, 0, "{d:?}");
    let c = pinned.counters().unwrap();
    assert_eq!(c[0].reply_rewrites, 0, "no reply crossed the edge");
    assert_eq!(
        c[STATS_UNSTEERED as usize].untracked, 0,
        "no viewer packet fell out of its flow"
    );
    drop(pinned);
    drop((client, router, edge, origin));
}

/// The announcement route of a dual-stack VIP's IPv6 address (`run --announce`): a blackhole
/// `/128` with protocol 77 the kernel takes, and removes again; withdrawing twice succeeds.
#[test]
fn the_ipv6_vip_route_is_announced_and_withdrawn() {
    require_root();
    let ns = Netns::new("da");
    let vip: std::net::IpAddr = VIP6.parse().unwrap();
    ns.run(move || switcher_ctl::announce::route(vip, true))
        .expect("add the IPv6 announcement route");
    let shown = ns.exec(&["ip", "-6", "route", "show", "proto", "77"]);
    assert!(
        shown.starts_with(&format!("blackhole {VIP6} ")),
        "a blackhole /128 to the VIP: {shown:?}"
    );
    for _ in 0..2 {
        ns.run(move || switcher_ctl::announce::route(vip, false))
            .expect("withdraw the IPv6 announcement route");
    }
    let shown = ns.exec(&["ip", "-6", "route", "show", "proto", "77"]);
    assert!(shown.trim().is_empty(), "withdrawn: {shown:?}");
}

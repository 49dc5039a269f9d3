//! Direct server return through BPF_PROG_TEST_RUN, in the style of `datapath_fixtures.rs`:
//! tables of {description, input, expected verdict, expected output bytes, expected counter
//! changes} on the real programs and maps.
//!
//! * Encap (`switcher_xdp` with remote origins): exact outer headers (built here from scratch,
//!   checksum computed in full; for 6in4 also one header written out byte by byte), next hop
//!   from `bpf_fib_lookup`, verdicts for a known neighbour (redirect), a missing neighbour (to
//!   the stack), an oversized packet (for IPv6 on both sides of the MTU), no route; the
//!   handshake of a remote origin completes on the client's first ACK; a packet of no flow is
//!   adopted statelessly; IPv4 viewers by IP-in-IP, IPv6 viewers by 6in4 (protocol 41). Every
//!   case starts from the same state (no flow, no handshake, new flows to the remote origin,
//!   no listener check) and states its preconditions (the handshake a case on a flow needs
//!   runs in that case); the cases run in order and then in reverse.
//! * Decap (`switcher_decap`): the inner packet comes out with the frame's Ethernet header
//!   (EtherType IPv6 for 6in4: the original IPv6 frame exactly); foreign, malformed and other
//!   packets pass unchanged and are counted. Every case writes the decap configuration it
//!   runs with.
//!
//! The route lookup needs a known routing table: the cases run on a thread inside a namespace
//! made here (veth `dsr0` 192.0.2.1/24, neighbour 192.0.2.2 permanent, 198.51.100.0/24 via it).
//! Needs root.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use switcher_common::{
    Counters, FlowKey, FlowValue, MIN_FLOWS, MaglevTable, ORIGIN_CONFIGURED, ORIGIN_REMOTE, Origin,
    STATS_UNSTEERED, VIP_CHECK_LISTENER, VIP_ENABLED, VIP_HAS_V4, VIP_HAS_V6, VipConfig,
    dsr::{
        self, DECAP_ENABLED, DECAP_VIP_V4, DECAP_VIP_V6, DecapConfig, DecapCounters, EncapCounters,
    },
    map_names, prog_names,
};
use switcher_ctl::handshake_table::HandshakeTable;
use test_kit::netns::Netns;
use test_kit::packet::{ACK, PSH, Pkt, SYN, checksum, verify_checksums};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;

const VIP4: &str = "10.0.0.1";
const VIP6: &str = "fd00::1";
const VIP_PORT: u16 = 8080;
/// The edge's address on the test veth (the outer source the route lookup gives).
const EDGE: &str = "192.0.2.1";
/// The next hop toward the origin hosts, with a permanent neighbour entry.
const GATEWAY: &str = "192.0.2.2";
const GATEWAY_MAC: [u8; 6] = [0x02, 0xd5, 0, 0, 0, 0x02];
/// Slot 0: an origin on this host (port rewrite), for contrast.
const LOCAL: u32 = 0;
/// Slot 1: remote origin host 198.51.100.7, routed via the gateway.
const REMOTE: u32 = 1;
const REMOTE_HOST: &str = "198.51.100.7";
/// Slot 2: remote origin host on the veth's subnet without a neighbour entry.
const NO_NEIGH: u32 = 2;
const NO_NEIGH_HOST: &str = "192.0.2.9";
/// Slot 3: remote origin host with no route.
const NO_ROUTE: u32 = 3;
const NO_ROUTE_HOST: &str = "203.0.113.5";
const U: u32 = STATS_UNSTEERED;

/// The namespace the encap cases run in, with its routes; removed on drop.
struct Net {
    ns: Netns,
    mac: [u8; 6],
}

fn net() -> Net {
    let ns = Netns::new("dsr");
    ns.exec(&[
        "ip", "link", "add", "dsr0", "type", "veth", "peer", "name", "dsr1",
    ]);
    ns.exec(&["ip", "link", "set", "dsr0", "up"]);
    ns.exec(&["ip", "link", "set", "dsr1", "up"]);
    ns.exec(&["ip", "addr", "add", &format!("{EDGE}/24"), "dev", "dsr0"]);
    let mac = GATEWAY_MAC
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    ns.exec(&[
        "ip",
        "neigh",
        "replace",
        GATEWAY,
        "lladdr",
        &mac,
        "dev",
        "dsr0",
        "nud",
        "permanent",
    ]);
    ns.exec(&[
        "ip",
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        GATEWAY,
        "dev",
        "dsr0",
    ]);
    // The lookup is a forwarding lookup from the ingress interface.
    ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let text = ns.exec(&["cat", "/sys/class/net/dsr0/address"]);
    let mac: Vec<u8> = text
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("MAC hex"))
        .collect();
    Net {
        mac: mac.try_into().expect("6-byte MAC"),
        ns,
    }
}

fn origin(addr: &str, port: u16, flags: u16) -> Origin {
    Origin {
        addr_v4: addr.parse::<Ipv4Addr>().unwrap().octets(),
        addr_v6: [0; 16],
        port_be: port.to_be(),
        flags,
        generation: 0,
    }
}

fn load() -> Ebpf {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "DSR fixtures need root (BPF_PROG_TEST_RUN); run them through `cargo xtask test`"
    );
    let mut ebpf = switcher_ctl::loader::size_for_cpus(&mut EbpfLoader::new())
        .map_max_entries(map_names::FLOWS, MIN_FLOWS)
        .load(switcher_ctl::loader::EBPF_OBJECT)
        .expect("load eBPF object");
    for name in [prog_names::XDP_INGRESS, dsr::prog_names::XDP_DECAP] {
        let p: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
        p.load()
            .unwrap_or_else(|e| panic!("verifier accepts {name}: {e:?}"));
    }
    let p: &mut SchedClassifier = ebpf
        .program_mut(prog_names::TC_INGRESS)
        .unwrap()
        .try_into()
        .unwrap();
    p.load().expect("verifier accepts TC ingress");
    ebpf
}

/// The dual-stack VIP with `extra` flags.
fn set_vip(ebpf: &mut Ebpf, extra: u16) {
    let mut cfg: Array<_, VipConfig> =
        Array::try_from(ebpf.map_mut(map_names::CONFIG).unwrap()).unwrap();
    cfg.set(
        0,
        VipConfig {
            addr_v4: VIP4.parse::<Ipv4Addr>().unwrap().octets(),
            addr_v6: VIP6.parse::<Ipv6Addr>().unwrap().octets(),
            port_be: VIP_PORT.to_be(),
            flags: VIP_HAS_V4 | VIP_HAS_V6 | VIP_ENABLED | extra,
            ifindex: 0,
            attach_mode: 0,
        },
        0,
    )
    .unwrap();
}

fn configure_edge(ebpf: &mut Ebpf) {
    set_vip(ebpf, 0);
    let mut origins: Array<_, Origin> =
        Array::try_from(ebpf.map_mut(map_names::ORIGINS).unwrap()).unwrap();
    let remote = ORIGIN_CONFIGURED | ORIGIN_REMOTE;
    origins
        .set(LOCAL, origin("0.0.0.0", 8081, ORIGIN_CONFIGURED), 0)
        .unwrap();
    origins
        .set(REMOTE, origin(REMOTE_HOST, VIP_PORT, remote), 0)
        .unwrap();
    origins
        .set(NO_NEIGH, origin(NO_NEIGH_HOST, VIP_PORT, remote), 0)
        .unwrap();
    origins
        .set(NO_ROUTE, origin(NO_ROUTE_HOST, VIP_PORT, remote), 0)
        .unwrap();
    set_active(ebpf, REMOTE);
}

/// New flows go to origin `index`: a uniform Maglev table made live (the way the control
/// plane publishes one: write the table that is not live, then switch).
fn set_active(ebpf: &mut Ebpf, index: u32) {
    let live: Array<_, u32> = Array::try_from(ebpf.map(map_names::MAGLEV_LIVE).unwrap()).unwrap();
    let next = 1 - live.get(&0, 0).unwrap();
    let table = Box::new(MaglevTable::uniform(u8::try_from(index).unwrap()));
    let mut tables: Array<_, MaglevTable> =
        Array::try_from(ebpf.map_mut(map_names::MAGLEV).unwrap()).unwrap();
    tables.set(next, table.as_ref(), 0).unwrap();
    let mut live: Array<_, u32> =
        Array::try_from(ebpf.map_mut(map_names::MAGLEV_LIVE).unwrap()).unwrap();
    live.set(0, next, 0).unwrap();
}

fn run(ebpf: &Ebpf, name: &str, input: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; input.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(input);
    opts.data_out = Some(&mut out);
    let r = if name == prog_names::TC_INGRESS {
        let p: &SchedClassifier = ebpf.program(name).unwrap().try_into().unwrap();
        p.test_run(opts)
    } else {
        let p: &Xdp = ebpf.program(name).unwrap().try_into().unwrap();
        p.test_run(opts)
    }
    .expect("BPF_PROG_TEST_RUN");
    let n = r.data_size_out as usize;
    (r.return_value, out[..n].to_vec())
}

fn counters(ebpf: &Ebpf) -> Vec<Counters> {
    let stats: PerCpuArray<_, Counters> =
        PerCpuArray::try_from(ebpf.map(map_names::STATS).unwrap()).unwrap();
    (0..=U)
        .map(|s| {
            let mut sum = Counters::default();
            for c in stats.get(&s, 0).unwrap().iter() {
                sum.add(c);
            }
            sum
        })
        .collect()
}

fn encap_counters(ebpf: &Ebpf) -> Vec<EncapCounters> {
    let stats: PerCpuArray<_, EncapCounters> =
        PerCpuArray::try_from(ebpf.map(dsr::map_names::ENCAP_STATS).unwrap()).unwrap();
    (0..4)
        .map(|s| {
            let mut sum = EncapCounters::default();
            for c in stats.get(&s, 0).unwrap().iter() {
                sum.add(c);
            }
            sum
        })
        .collect()
}

fn decap_counters(ebpf: &Ebpf) -> DecapCounters {
    let stats: PerCpuArray<_, DecapCounters> =
        PerCpuArray::try_from(ebpf.map(dsr::map_names::DECAP_STATS).unwrap()).unwrap();
    let mut sum = DecapCounters::default();
    for c in stats.get(&0, 0).unwrap().iter() {
        sum.add(c);
    }
    sum
}

fn flows(ebpf: &Ebpf) -> Vec<(FlowKey, FlowValue)> {
    let flows: HashMap<_, FlowKey, FlowValue> =
        HashMap::try_from(ebpf.map(map_names::FLOWS).unwrap()).unwrap();
    flows.iter().filter_map(Result::ok).collect()
}

/// `inner` (a whole frame from `Pkt::build`) inside an outer IPv4 header from `src` to `dst`,
/// built from scratch: what the edge must send. TOS and DF copied from the inner header.
fn ipip(eth_dst: [u8; 6], eth_src: [u8; 6], src: &str, dst: &str, inner: &[u8]) -> Vec<u8> {
    let ip_in = &inner[14..];
    let (tos, df) = (ip_in[1], ip_in[6] & 0x40);
    outer_v4(
        (eth_dst, eth_src),
        (src, dst),
        tos,
        df,
        dsr::IPPROTO_IPIP,
        ip_in,
    )
}

/// `inner` (a whole IPv6 frame from `Pkt::build`) inside an outer IPv4 header from `src` to
/// `dst` (6in4, RFC 4213), built from scratch: what the edge must send. TOS = the inner
/// traffic class, DF set, TTL 64, protocol 41, EtherType IPv4.
fn six_in_four(eth_dst: [u8; 6], eth_src: [u8; 6], src: &str, dst: &str, inner: &[u8]) -> Vec<u8> {
    assert_eq!(&inner[12..14], &[0x86, 0xdd], "an IPv6 frame");
    let ip_in = &inner[14..];
    let tclass = (ip_in[0] << 4) | (ip_in[1] >> 4);
    outer_v4(
        (eth_dst, eth_src),
        (src, dst),
        tclass,
        0x40,
        dsr::IPPROTO_IPV6,
        ip_in,
    )
}

/// An Ethernet frame (EtherType IPv4) of a 20-byte outer IPv4 header (`tos`, the DF byte
/// `df`, identification 0, TTL `OUTER_TTL`, `proto`, checksum computed) before `ip_in`.
fn outer_v4(
    (eth_dst, eth_src): ([u8; 6], [u8; 6]),
    (src, dst): (&str, &str),
    tos: u8,
    df: u8,
    proto: u8,
    ip_in: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[1] = tos;
    h[2..4].copy_from_slice(&((20 + ip_in.len()) as u16).to_be_bytes());
    h[6] = df;
    h[8] = dsr::OUTER_TTL;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.parse::<Ipv4Addr>().unwrap().octets());
    h[16..20].copy_from_slice(&dst.parse::<Ipv4Addr>().unwrap().octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(ip_in);
    f
}

/// `frame` (IPv6) with traffic class `tclass` and flow label `label` (neither is covered by
/// the TCP checksum).
fn with_tclass(mut frame: Vec<u8>, tclass: u8, label: u32) -> Vec<u8> {
    assert_eq!(&frame[12..14], &[0x86, 0xdd], "an IPv6 frame");
    let word = 6u32 << 28 | u32::from(tclass) << 20 | (label & 0xf_ffff);
    frame[14..18].copy_from_slice(&word.to_be_bytes());
    frame
}

/// Checks the outer IPv4 header checksum and the inner packet's checksums of an IP-in-IP or
/// 6in4 frame.
fn verify_ipip(frame: &[u8]) {
    assert_eq!(checksum(&frame[14..34]), 0, "outer header checksum");
    let mut inner = frame[..12].to_vec();
    match frame[14 + 9] {
        dsr::IPPROTO_IPIP => inner.extend_from_slice(&[0x08, 0x00]),
        dsr::IPPROTO_IPV6 => inner.extend_from_slice(&[0x86, 0xdd]),
        other => panic!("outer protocol {other}"),
    }
    inner.extend_from_slice(&frame[34..]);
    verify_checksums(&inner).expect("inner checksums");
}

struct Expect {
    desc: &'static str,
    verdict: u32,
    output: Option<Vec<u8>>,
    /// (slot, Counters field, increase)
    counters: Vec<(u32, &'static str, u64)>,
    /// (slot, EncapCounters field, increase)
    encap: Vec<(u32, &'static str, u64)>,
}

fn field(c: &Counters, name: &str) -> u64 {
    c.get(name)
        .unwrap_or_else(|| panic!("unknown counter {name}"))
}
const FIELDS: [&str; 7] = [
    "packets",
    "bytes",
    "new_flows",
    "rewrites",
    "passes",
    "established",
    "untracked",
];
fn encap_field(c: &EncapCounters, name: &str) -> u64 {
    match name {
        "encapsulated" => c.encapsulated,
        "bytes" => c.bytes,
        "to_stack" => c.to_stack,
        "too_big" => c.too_big,
        "errors" => c.errors,
        "adopted" => c.adopted,
        other => panic!("unknown encap counter {other}"),
    }
}
const ENCAP_FIELDS: [&str; 6] = [
    "encapsulated",
    "bytes",
    "to_stack",
    "too_big",
    "errors",
    "adopted",
];

fn check_case(ebpf: &Ebpf, prog: &str, input: &[u8], e: &Expect) {
    let (c0, e0) = (counters(ebpf), encap_counters(ebpf));
    let (verdict, out) = run(ebpf, prog, input);
    assert_eq!(verdict, e.verdict, "{}: verdict", e.desc);
    match &e.output {
        None => assert_eq!(out, input, "{}: must pass unchanged", e.desc),
        Some(want) => {
            assert_eq!(&out, want, "{}: output bytes", e.desc);
            verify_ipip(&out);
        }
    }
    let (c1, e1) = (counters(ebpf), encap_counters(ebpf));
    for slot in 0..=U {
        for f in FIELDS {
            let want: u64 = e
                .counters
                .iter()
                .filter(|(s, n, _)| *s == slot && *n == f)
                .map(|(_, _, d)| d)
                .sum();
            let got = field(&c1[slot as usize], f) - field(&c0[slot as usize], f);
            assert_eq!(got, want, "{}: counter {f} of slot {slot}", e.desc);
        }
    }
    for slot in 0..4u32 {
        for f in ENCAP_FIELDS {
            let want: u64 = e
                .encap
                .iter()
                .filter(|(s, n, _)| *s == slot && *n == f)
                .map(|(_, _, d)| d)
                .sum();
            let got = encap_field(&e1[slot as usize], f) - encap_field(&e0[slot as usize], f);
            assert_eq!(got, want, "{}: encap counter {f} of slot {slot}", e.desc);
        }
    }
}

/// The edge's Ethernet address as `Pkt::build` writes it (the frame's destination).
const FRAME_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const FRAME_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// A precondition of an encap case, applied after [`reset`].
enum Given {
    /// New flows go to this origin.
    Active(u32),
    /// The VIP asks for the listener check (`VIP_CHECK_LISTENER`).
    CheckListener,
    /// A packet through `switcher_xdp`, which must encapsulate it to the remote origin.
    Packet(Vec<u8>),
}

/// One encap case: its preconditions, its packet, what must come out, and the origins of the
/// flows the map must hold afterwards.
struct EncapCase {
    given: Vec<Given>,
    prog: &'static str,
    input: Vec<u8>,
    expect: Expect,
    flows_after: Vec<u32>,
}

/// Back to the state every encap case starts from: no flow, no handshake, new flows to the
/// remote origin, no listener check.
fn reset(ebpf: &mut Ebpf) {
    fn clear<V: aya::Pod>(ebpf: &mut Ebpf, name: &str) {
        let mut map: HashMap<_, FlowKey, V> =
            HashMap::try_from(ebpf.map_mut(name).unwrap()).unwrap();
        let keys: Vec<FlowKey> = map.keys().filter_map(Result::ok).collect();
        for k in &keys {
            map.remove(k).unwrap();
        }
    }
    clear::<FlowValue>(ebpf, map_names::FLOWS);
    // As user space does after deleting flows: no CPU's copy of them may steer again.
    switcher_ctl::flow_cache::Versions::new(
        switcher_ctl::mmapped::array_of(ebpf, map_names::FLOW_CACHE_VERSIONS).unwrap(),
    )
    .unwrap()
    .invalidate_all();
    switcher_ctl::flow_cache::Copies::new(
        switcher_ctl::mmapped::array_of(ebpf, map_names::FLOW_CACHE).unwrap(),
    )
    .unwrap()
    .clear();
    HandshakeTable::new(switcher_ctl::mmapped::array_of(ebpf, map_names::HANDSHAKES).unwrap())
        .unwrap()
        .clear();
    assert!(flows(ebpf).is_empty());
    set_active(ebpf, REMOTE);
    set_vip(ebpf, 0);
}

/// Runs one encap case from the reset state.
fn run_encap_case(ebpf: &mut Ebpf, c: &EncapCase) {
    reset(ebpf);
    for g in &c.given {
        match g {
            Given::Active(index) => set_active(ebpf, *index),
            Given::CheckListener => set_vip(ebpf, VIP_CHECK_LISTENER),
            Given::Packet(input) => assert_eq!(
                run(ebpf, prog_names::XDP_INGRESS, input).0,
                XDP_REDIRECT,
                "{}: a precondition packet is encapsulated",
                c.expect.desc
            ),
        }
    }
    check_case(ebpf, c.prog, &c.input, &c.expect);
    let origins: Vec<u32> = flows(ebpf).iter().map(|(_, v)| v.origin).collect();
    assert_eq!(
        origins, c.flows_after,
        "{}: flows afterwards",
        c.expect.desc
    );
}

/// Every case from the reset state, in the table's order and then in reverse: a case that
/// relied on state an earlier case left would fail in one of the two.
#[test]
fn encapsulation_to_remote_origins() {
    let net = net();
    let mac = net.mac;
    net.ns.run(move || {
        // The local origin's port has a listener (IPv6 and IPv4): with the listener check, a
        // new flow the table gives an origin without one falls back to it.
        let _listener = std::net::TcpListener::bind("[::]:8081").expect("listen on 8081");
        let mut ebpf = load();
        configure_edge(&mut ebpf);
        let xdp = prog_names::XDP_INGRESS;
        let get = b"GET /hls/demo/index.m3u8 HTTP/1.1\r\n\r\n";
        let syn = Pkt::tcp("10.1.1.1", 40000, VIP4, VIP_PORT, SYN).build();
        let ack = Pkt::tcp("10.1.1.1", 40000, VIP4, VIP_PORT, ACK).build();
        let req = Pkt::tcp("10.1.1.1", 40000, VIP4, VIP_PORT, ACK | PSH)
            .with_payload(get)
            .build();
        let mut df = Pkt::tcp("10.1.1.2", 40001, VIP4, VIP_PORT, SYN);
        df.frag = 0x4000;
        let df = df.build();
        let stray = Pkt::tcp("10.1.1.3", 40002, VIP4, VIP_PORT, ACK)
            .with_payload(b"x")
            .build();
        let big = Pkt::tcp("10.1.1.4", 40003, VIP4, VIP_PORT, SYN)
            .with_payload(&[0u8; 1450])
            .build();
        let syn2 = Pkt::tcp("10.1.1.5", 40004, VIP4, VIP_PORT, SYN).build();
        let syn3 = Pkt::tcp("10.1.1.6", 40005, VIP4, VIP_PORT, SYN).build();
        let syn4 = Pkt::tcp("10.1.1.7", 40006, VIP4, VIP_PORT, SYN).build();
        // IPv6 viewers: DSCP EF (46) and ECT(1) in the traffic class, a flow label.
        let syn6 = with_tclass(Pkt::tcp("fd00::99", 50000, VIP6, VIP_PORT, SYN).build(), 0xb9, 0x12345);
        let ack6 = Pkt::tcp("fd00::99", 50000, VIP6, VIP_PORT, ACK).build();
        let req6 = with_tclass(
            Pkt::tcp("fd00::99", 50000, VIP6, VIP_PORT, ACK | PSH).with_payload(get).build(),
            0x02, // ECT(0), DSCP 0
            0,
        );
        let stray6 = Pkt::tcp("fd00::98", 50001, VIP6, VIP_PORT, ACK).with_payload(b"x").build();
        // 40 + 20 + payload bytes of IPv6: 1480 fits the veth's 1500 once encapsulated, 1481 not.
        let fits6 = Pkt::tcp("fd00::97", 50002, VIP6, VIP_PORT, SYN).with_payload(&[0u8; 1420]).build();
        let big6 = Pkt::tcp("fd00::96", 50003, VIP6, VIP_PORT, SYN).with_payload(&[0u8; 1421]).build();
        let syn6b = Pkt::tcp("fd00::95", 50004, VIP6, VIP_PORT, SYN).build();
        let syn6c = Pkt::tcp("fd00::94", 50005, VIP6, VIP_PORT, SYN).build();
        let syn6d = Pkt::tcp("fd00::93", 50006, VIP6, VIP_PORT, SYN).build();
        let to_remote = |inner: &[u8]| ipip(GATEWAY_MAC, mac, EDGE, REMOTE_HOST, inner);
        let to_remote6 = |inner: &[u8]| six_in_four(GATEWAY_MAC, mac, EDGE, REMOTE_HOST, inner);
        let steered = |slot: u32, len: usize| vec![(slot, "packets", 1), (slot, "bytes", len as u64)];
        let sent = |slot: u32, inner: &[u8]| {
            vec![
                (slot, "encapsulated", 1),
                (slot, "bytes", (inner.len() + 20) as u64),
            ]
        };
        let case = |given: Vec<Given>, input: &[u8], expect: Expect, flows_after: Vec<u32>| EncapCase {
            given,
            prog: xdp,
            input: input.to_vec(),
            expect,
            flows_after,
        };

        let cases = vec![
            case(vec![], &syn, Expect {
                desc: "SYN to the VIP, active origin remote: encapsulated to its host, redirected to the route's interface",
                verdict: XDP_REDIRECT,
                output: Some(to_remote(&syn)),
                counters: [steered(REMOTE, syn.len()), vec![(REMOTE, "new_flows", 1)]].concat(),
                encap: sent(REMOTE, &syn),
            }, vec![]), // a SYN records a handshake, not a flow
            case(vec![Given::Packet(syn.clone())], &ack, Expect {
                desc: "the client's handshake ACK (no SYN-ACK seen: DSR) completes the handshake",
                verdict: XDP_REDIRECT,
                output: Some(to_remote(&ack)),
                counters: [steered(REMOTE, ack.len()), vec![(REMOTE, "established", 1)]].concat(),
                encap: sent(REMOTE, &ack),
            }, vec![REMOTE]),
            // A tracked flow's packet steered from this CPU's copy of the flow (the flow cache,
            // filled by the request before it): the fast path of a cache hit encapsulates too.
            case(vec![Given::Packet(syn.clone()), Given::Packet(ack.clone()), Given::Packet(req.clone())], &req, Expect {
                desc: "a request of the flow steered from the CPU's copy of it (a cache hit): encapsulated",
                verdict: XDP_REDIRECT,
                output: Some(to_remote(&req)),
                counters: steered(REMOTE, req.len()),
                encap: sent(REMOTE, &req),
            }, vec![REMOTE]),
            // Failover: new flows go to the local origin; the flow stays on the remote one.
            case(vec![Given::Packet(syn.clone()), Given::Packet(ack.clone()), Given::Active(LOCAL)], &req, Expect {
                desc: "a request of the flow follows it to the remote origin after a flip",
                verdict: XDP_REDIRECT,
                output: Some(to_remote(&req)),
                counters: steered(REMOTE, req.len()),
                encap: sent(REMOTE, &req),
            }, vec![REMOTE]),
            case(vec![Given::Active(LOCAL)], &stray, Expect {
                desc: "a packet of no flow, new flows local: passed to the stack (reset there)",
                verdict: XDP_PASS,
                output: None,
                counters: vec![(U, "passes", 1), (U, "untracked", 1)],
                encap: vec![],
            }, vec![]),
            case(vec![], &stray, Expect {
                desc: "a packet of no flow, new flows remote: adopted without state (another edge's flow)",
                verdict: XDP_REDIRECT,
                output: Some(to_remote(&stray)),
                counters: steered(REMOTE, stray.len()),
                encap: [sent(REMOTE, &stray), vec![(REMOTE, "adopted", 1)]].concat(),
            }, vec![]), // adopting creates no flow
            case(vec![], &df, Expect {
                desc: "DF is copied to the outer header",
                verdict: XDP_REDIRECT,
                output: Some(to_remote(&df)),
                counters: [steered(REMOTE, df.len()), vec![(REMOTE, "new_flows", 1)]].concat(),
                encap: sent(REMOTE, &df),
            }, vec![]),
            case(vec![], &big, Expect {
                desc: "larger than the route's MTU once encapsulated: dropped, counted too_big",
                verdict: XDP_DROP,
                output: None,
                counters: [steered(REMOTE, big.len()), vec![(REMOTE, "new_flows", 1)]].concat(),
                encap: vec![(REMOTE, "too_big", 1)],
            }, vec![]),
            case(vec![Given::Active(NO_NEIGH)], &syn2, Expect {
                desc: "no neighbour entry for the origin host: encapsulated, handed to the stack with the frame's MACs",
                verdict: XDP_PASS,
                output: Some(ipip(FRAME_DST, FRAME_SRC, EDGE, NO_NEIGH_HOST, &syn2)),
                counters: [steered(NO_NEIGH, syn2.len()), vec![(NO_NEIGH, "new_flows", 1)]].concat(),
                encap: vec![(NO_NEIGH, "to_stack", 1), (NO_NEIGH, "bytes", (syn2.len() + 20) as u64)],
            }, vec![]),
            case(vec![Given::Active(NO_ROUTE)], &syn3, Expect {
                desc: "no route to the origin host: dropped, counted as an error",
                verdict: XDP_DROP,
                output: None,
                counters: [steered(NO_ROUTE, syn3.len()), vec![(NO_ROUTE, "new_flows", 1)]].concat(),
                encap: vec![(NO_ROUTE, "errors", 1)],
            }, vec![]),
            case(vec![], &syn6, Expect {
                desc: "IPv6 SYN to the VIP, active origin remote: 6in4 to its host (traffic class in the TOS, DF), redirected",
                verdict: XDP_REDIRECT,
                output: Some(to_remote6(&syn6)),
                counters: [steered(REMOTE, syn6.len()), vec![(REMOTE, "new_flows", 1)]].concat(),
                encap: sent(REMOTE, &syn6),
            }, vec![]),
            case(vec![Given::Packet(syn6.clone())], &ack6, Expect {
                desc: "the IPv6 client's handshake ACK completes the handshake",
                verdict: XDP_REDIRECT,
                output: Some(to_remote6(&ack6)),
                counters: [steered(REMOTE, ack6.len()), vec![(REMOTE, "established", 1)]].concat(),
                encap: sent(REMOTE, &ack6),
            }, vec![REMOTE]),
            case(vec![Given::Packet(syn6.clone()), Given::Packet(ack6.clone()), Given::Active(LOCAL)], &req6, Expect {
                desc: "a request of an IPv6 flow follows it to the remote origin after a flip, ECN in the TOS",
                verdict: XDP_REDIRECT,
                output: Some(to_remote6(&req6)),
                counters: steered(REMOTE, req6.len()),
                encap: sent(REMOTE, &req6),
            }, vec![REMOTE]),
            case(vec![], &stray6, Expect {
                desc: "an IPv6 packet of no flow, new flows remote: adopted without state",
                verdict: XDP_REDIRECT,
                output: Some(to_remote6(&stray6)),
                counters: steered(REMOTE, stray6.len()),
                encap: [sent(REMOTE, &stray6), vec![(REMOTE, "adopted", 1)]].concat(),
            }, vec![]),
            case(vec![Given::Active(LOCAL)], &stray6, Expect {
                desc: "an IPv6 packet of no flow, new flows local: passed to the stack",
                verdict: XDP_PASS,
                output: None,
                counters: vec![(U, "passes", 1), (U, "untracked", 1)],
                encap: vec![],
            }, vec![]),
            case(vec![], &fits6, Expect {
                desc: "IPv6 packet of 1480 bytes: 1500 encapsulated, the route's MTU, sent",
                verdict: XDP_REDIRECT,
                output: Some(to_remote6(&fits6)),
                counters: [steered(REMOTE, fits6.len()), vec![(REMOTE, "new_flows", 1)]].concat(),
                encap: sent(REMOTE, &fits6),
            }, vec![]),
            case(vec![], &big6, Expect {
                desc: "IPv6 packet of 1481 bytes: 1501 encapsulated, over the MTU, dropped, counted too_big",
                verdict: XDP_DROP,
                output: None,
                counters: [steered(REMOTE, big6.len()), vec![(REMOTE, "new_flows", 1)]].concat(),
                encap: vec![(REMOTE, "too_big", 1)],
            }, vec![]),
            case(vec![Given::Active(NO_NEIGH)], &syn6b, Expect {
                desc: "IPv6, no neighbour entry for the origin host: 6in4 handed to the stack with the frame's MACs",
                verdict: XDP_PASS,
                output: Some(six_in_four(FRAME_DST, FRAME_SRC, EDGE, NO_NEIGH_HOST, &syn6b)),
                counters: [steered(NO_NEIGH, syn6b.len()), vec![(NO_NEIGH, "new_flows", 1)]].concat(),
                encap: vec![(NO_NEIGH, "to_stack", 1), (NO_NEIGH, "bytes", (syn6b.len() + 20) as u64)],
            }, vec![]),
            case(vec![Given::Active(NO_ROUTE)], &syn6c, Expect {
                desc: "IPv6, no route to the origin host: dropped, counted as an error",
                verdict: XDP_DROP,
                output: None,
                counters: [steered(NO_ROUTE, syn6c.len()), vec![(NO_ROUTE, "new_flows", 1)]].concat(),
                encap: vec![(NO_ROUTE, "errors", 1)],
            }, vec![]),
            case(vec![Given::CheckListener], &syn6d, Expect {
                desc: "listener check on: an IPv6 SYN the table gives a remote origin stays on it (nothing of it listens here, yet it is alive)",
                verdict: XDP_REDIRECT,
                output: Some(to_remote6(&syn6d)),
                counters: [steered(REMOTE, syn6d.len()), vec![(REMOTE, "new_flows", 1)]].concat(),
                encap: sent(REMOTE, &syn6d),
            }, vec![]),
            EncapCase {
                prog: prog_names::TC_INGRESS,
                ..case(vec![], &syn6d, Expect {
                    desc: "TC ingress cannot encapsulate IPv6 either: passed, counted as an error",
                    verdict: TC_ACT_OK,
                    output: None,
                    counters: vec![(REMOTE, "new_flows", 1)],
                    encap: vec![(REMOTE, "errors", 1)],
                }, vec![])
            },
            EncapCase {
                prog: prog_names::TC_INGRESS,
                ..case(vec![], &syn4, Expect {
                    desc: "TC ingress cannot encapsulate: passed, counted as an error",
                    verdict: TC_ACT_OK,
                    output: None,
                    counters: vec![(REMOTE, "new_flows", 1)],
                    encap: vec![(REMOTE, "errors", 1)],
                }, vec![])
            },
        ];
        // One CPU for every run: the flow cache is per CPU, and the cache-hit case needs the
        // copy its precondition packets filled.
        test_kit::process::pin_to_current_cpu();
        for c in cases.iter().chain(cases.iter().rev()) {
            run_encap_case(&mut ebpf, c);
        }

        // One 6in4 header written out byte by byte, not by `six_in_four`.
        reset(&mut ebpf);
        let (verdict, out) = run(&ebpf, xdp, &syn6);
        assert_eq!(verdict, XDP_REDIRECT);
        let mut head = GATEWAY_MAC.to_vec();
        head.extend_from_slice(&mac);
        head.extend_from_slice(&[0x08, 0x00]); // EtherType IPv4
        head.extend_from_slice(&[
            0x45, // version 4, IHL 5
            0xb9, // TOS: the traffic class, DSCP 46 and ECT(1)
            0x00, 80, // total length: 20 + 40 + 20 (the IPv6 SYN)
            0x00, 0x00, // identification
            0x40, 0x00, // DF, offset 0
            64,   // TTL
            41,   // protocol: IPv6
            0x4d, 0x90, // header checksum
            192, 0, 2, 1, // the edge (route's source)
            198, 51, 100, 7, // the origin host
        ]);
        assert_eq!(&out[..34], head.as_slice(), "Ethernet and outer header of a 6in4 SYN");
        assert_eq!(&out[34..], &syn6[14..], "the IPv6 packet follows unchanged");
        assert_eq!(checksum(&out[14..34]), 0, "the written-out checksum is right");

        reset(&mut ebpf);
        set_active(&mut ebpf, LOCAL);
        let local = Pkt::tcp("10.1.1.8", 40007, VIP4, VIP_PORT, SYN).build();
        let (verdict, out) = run(&ebpf, xdp, &local);
        assert_eq!(verdict, XDP_PASS, "a local origin keeps the port rewrite");
        assert_eq!(&out[14 + 20 + 2..14 + 20 + 4], &8081u16.to_be_bytes());
        verify_checksums(&out).expect("rewritten checksums");
    });
}

/// Writes the decap configuration: this host is the remote origin host, VIPs per `vips`
/// (`DECAP_VIP_V4`, `DECAP_VIP_V6`); 0 disables decapsulation altogether.
fn configure_decap(ebpf: &mut Ebpf, vips: u32) {
    let mut cfg: Array<_, DecapConfig> =
        Array::try_from(ebpf.map_mut(dsr::map_names::DECAP_CONFIG).unwrap()).unwrap();
    let flags = if vips == 0 { 0 } else { DECAP_ENABLED | vips };
    cfg.set(
        0,
        DecapConfig {
            local_v4: REMOTE_HOST.parse::<Ipv4Addr>().unwrap().octets(),
            vip_v4: VIP4.parse::<Ipv4Addr>().unwrap().octets(),
            flags,
            vip_v6: VIP6.parse::<Ipv6Addr>().unwrap().octets(),
        },
        0,
    )
    .unwrap();
}

/// Both VIPs configured.
const BOTH: u32 = DECAP_VIP_V4 | DECAP_VIP_V6;

/// `frame` with its Ethernet addresses replaced.
fn with_macs(mut frame: Vec<u8>, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    frame[..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame
}

fn decap_delta(before: &DecapCounters, after: &DecapCounters) -> DecapCounters {
    DecapCounters {
        decapsulated: after.decapsulated - before.decapsulated,
        bytes: after.bytes - before.bytes,
        foreign: after.foreign - before.foreign,
        malformed: after.malformed - before.malformed,
        passed: after.passed - before.passed,
    }
}

/// One decap case: the configuration it runs with, its frame, and what must come out (`None`:
/// the frame unchanged) with which counter.
struct DecapCase {
    desc: &'static str,
    vips: u32,
    input: Vec<u8>,
    output: Option<Vec<u8>>,
    counter: &'static str,
}

#[test]
fn decapsulation_on_the_origin_host() {
    let mut ebpf = load();
    let decap = dsr::prog_names::XDP_DECAP;
    let eth_dst = [0x02, 0xaa, 0, 0, 0, 0x07];
    let eth_src = [0x02, 0xbb, 0, 0, 0, 0x01];
    let inner = Pkt::tcp("10.1.1.1", 40000, VIP4, VIP_PORT, ACK | PSH)
        .with_payload(b"GET /hls/demo/index.m3u8 HTTP/1.1\r\n\r\n")
        .build();
    let good = ipip(eth_dst, eth_src, EDGE, REMOTE_HOST, &inner);
    // The IPv6 request as the viewer's frame would reach the origin host if it were local:
    // the original frame the decapsulation must give back, byte for byte.
    let inner6 = with_macs(
        with_tclass(
            Pkt::tcp("fd00::99", 50000, VIP6, VIP_PORT, ACK | PSH)
                .with_payload(b"GET /hls/demo/index.m3u8 HTTP/1.1\r\n\r\n")
                .build(),
            0xb9,
            0x12345,
        ),
        eth_dst,
        eth_src,
    );
    let good6 = six_in_four(eth_dst, eth_src, EDGE, REMOTE_HOST, &inner6);

    // Before configuration the program passes everything.
    let (v, out) = run(&ebpf, decap, &good);
    assert_eq!((v, out.as_slice()), (XDP_PASS, good.as_slice()));
    assert_eq!(
        decap_counters(&ebpf).passed,
        1,
        "unconfigured: counted passed"
    );

    let mut want4 = eth_dst.to_vec();
    want4.extend_from_slice(&eth_src);
    want4.extend_from_slice(&inner[12..]);

    let other_host = ipip(eth_dst, eth_src, EDGE, "198.51.100.8", &inner);
    let other_vip = ipip(
        eth_dst,
        eth_src,
        EDGE,
        REMOTE_HOST,
        &Pkt::tcp("10.1.1.1", 40000, "10.0.0.9", VIP_PORT, ACK).build(),
    );
    let truncated = good[..good.len() - 10].to_vec();
    let short_inner = good[..14 + 20 + 8].to_vec();
    let with_options = {
        let mut b = good.clone();
        b[14] = 0x46;
        b
    };
    let fragment = {
        let mut b = good.clone();
        b[14 + 6] = 0x20; // MF
        b
    };
    let inner_v6 = {
        let mut b = good.clone();
        b[34] = 0x65;
        b
    };
    let plain = inner.clone();
    let arp = {
        let mut b = good.clone();
        b[12..14].copy_from_slice(&[0x08, 0x06]);
        b
    };
    // 6in4 variants.
    let other_vip6 = six_in_four(
        eth_dst,
        eth_src,
        EDGE,
        REMOTE_HOST,
        &Pkt::tcp("fd00::99", 50000, "fd00::9", VIP_PORT, ACK).build(),
    );
    let other_host6 = six_in_four(eth_dst, eth_src, EDGE, "198.51.100.8", &inner6);
    let short_inner6 = {
        // The outer header says 20 + 40 bytes, the frame ends 10 bytes into the IPv6 header's
        // destination address.
        let mut b = good6[..14 + 20 + 30].to_vec();
        b[14 + 2..14 + 4].copy_from_slice(&60u16.to_be_bytes());
        b[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
        let c = checksum(&b[14..34]);
        b[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
        b
    };
    let truncated6 = good6[..good6.len() - 10].to_vec();
    let v4_in_41 = {
        // An IPv4 request to the VIP inside protocol 41: the outer header is IP-in-IP's but
        // for the protocol number.
        let mut b = good.clone();
        b[14 + 9] = dsr::IPPROTO_IPV6;
        b[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
        let c = checksum(&b[14..34]);
        b[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
        b
    };
    let fragment6 = {
        let mut b = good6.clone();
        b[14 + 6] = 0x20; // MF
        b
    };
    let plain6 = inner6.clone();

    let case = |desc, vips, input: &[u8], output: Option<&[u8]>, counter| DecapCase {
        desc,
        vips,
        input: input.to_vec(),
        output: output.map(<[u8]>::to_vec),
        counter,
    };
    let cases = vec![
        case(
            "IP-in-IP to this host for the IPv4 VIP: the inner packet with the frame's Ethernet header",
            BOTH,
            &good,
            Some(&want4),
            "decapsulated",
        ),
        case(
            "IP-in-IP with only the IPv4 VIP configured",
            DECAP_VIP_V4,
            &good,
            Some(&want4),
            "decapsulated",
        ),
        case(
            "6in4 to this host for the IPv6 VIP: exactly the original IPv6 frame (EtherType IPv6)",
            BOTH,
            &good6,
            Some(&inner6),
            "decapsulated",
        ),
        case(
            "6in4 with only the IPv6 VIP configured",
            DECAP_VIP_V6,
            &good6,
            Some(&inner6),
            "decapsulated",
        ),
        case(
            "decapsulation disabled: 6in4 passes",
            0,
            &good6,
            None,
            "passed",
        ),
        case(
            "IP-in-IP for another host",
            BOTH,
            &other_host,
            None,
            "foreign",
        ),
        case(
            "IP-in-IP for another inner destination",
            BOTH,
            &other_vip,
            None,
            "foreign",
        ),
        case(
            "IP-in-IP with no IPv4 VIP configured",
            DECAP_VIP_V6,
            &good,
            None,
            "foreign",
        ),
        case(
            "outer length beyond the frame",
            BOTH,
            &truncated,
            None,
            "malformed",
        ),
        case(
            "inner header cut short",
            BOTH,
            &short_inner,
            None,
            "malformed",
        ),
        case(
            "outer header with options",
            BOTH,
            &with_options,
            None,
            "malformed",
        ),
        case(
            "fragmented outer packet",
            BOTH,
            &fragment,
            None,
            "malformed",
        ),
        case("inner header not IPv4", BOTH, &inner_v6, None, "malformed"),
        case(
            "6in4 for another inner destination",
            BOTH,
            &other_vip6,
            None,
            "foreign",
        ),
        case("6in4 for another host", BOTH, &other_host6, None, "foreign"),
        case(
            "6in4 with no IPv6 VIP configured",
            DECAP_VIP_V4,
            &good6,
            None,
            "foreign",
        ),
        case(
            "6in4 whose IPv6 header is cut short",
            BOTH,
            &short_inner6,
            None,
            "malformed",
        ),
        case(
            "6in4 whose outer length is beyond the frame",
            BOTH,
            &truncated6,
            None,
            "malformed",
        ),
        case(
            "an IPv4 packet inside protocol 41",
            BOTH,
            &v4_in_41,
            None,
            "malformed",
        ),
        case("fragmented 6in4", BOTH, &fragment6, None, "malformed"),
        case(
            "plain TCP to the VIP (not encapsulated)",
            BOTH,
            &plain,
            None,
            "passed",
        ),
        case(
            "plain IPv6 TCP to the VIP (not encapsulated)",
            BOTH,
            &plain6,
            None,
            "passed",
        ),
        case("not IP", BOTH, &arp, None, "passed"),
    ];
    // Each case writes its own configuration; counters are compared as changes.
    for c in cases.iter().chain(cases.iter().rev()) {
        configure_decap(&mut ebpf, c.vips);
        let before = decap_counters(&ebpf);
        let (v, out) = run(&ebpf, decap, &c.input);
        assert_eq!(v, XDP_PASS, "{}: verdict", c.desc);
        match &c.output {
            None => assert_eq!(out, c.input, "{}: must pass unchanged", c.desc),
            Some(want) => {
                assert_eq!(&out, want, "{}: output bytes", c.desc);
                verify_checksums(&out).expect("inner checksums untouched");
            }
        }
        let delta = decap_delta(&before, &decap_counters(&ebpf));
        let mut want = DecapCounters::default();
        match c.counter {
            "decapsulated" => {
                want.decapsulated = 1;
                want.bytes = c.input.len() as u64;
            }
            "foreign" => want.foreign = 1,
            "malformed" => want.malformed = 1,
            "passed" => want.passed = 1,
            other => panic!("unknown decap counter {other}"),
        }
        assert_eq!(delta, want, "{}: counters", c.desc);
    }
}

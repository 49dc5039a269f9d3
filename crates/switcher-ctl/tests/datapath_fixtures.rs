//! The data plane's fixture table, Katran style: every case is {description, program, input
//! packet, expected verdict, expected output bytes, expected counter changes}, run through
//! BPF_PROG_TEST_RUN (aya `TestRun`) on the real programs and maps. Every case starts from the
//! same state (no flow, no handshake, steering on, the primary active) and states its
//! preconditions: the control-plane actions and the packets that build the flow or handshake
//! it is about (a case on a tracked flow runs that flow's handshake first). No case depends on
//! another; the table runs in its order and then in reverse to show it.
//!
//! Expected outputs are built from scratch by the test's own packet builder (full checksum
//! computation), so a wrong incremental checksum update shows up as a byte mismatch; every
//! rewritten packet is also checked with `verify_checksums`. Counter changes are asserted for
//! every field of every slot: a case lists the fields it changes; every other must stay put.
//!
//! Needs root (CAP_BPF + CAP_NET_ADMIN for BPF_PROG_TEST_RUN of XDP/TC programs).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd as _;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use switcher_common::{
    Counters, FlowKey, FlowValue, Handshake, HandshakeBucket, HandshakeSlot, MAGLEV_NO_ORIGIN,
    MAGLEV_SIZE, MAX_ORIGINS, MaglevTable, ORIGIN_CONFIGURED, ORIGIN_FALLBACK, Origin, STATS_SLOTS,
    STATS_UNSTEERED, VIP_CHECK_LISTENER, VIP_ENABLED, VIP_HAS_V4, VIP_HAS_V6, VipConfig, map_names,
    prog_names,
};
use switcher_ctl::handshake_table::HandshakeTable;
use switcher_ctl::maglev;
use test_kit::netns;
use test_kit::packet::{ACK, DEFAULT_SEQ, FIN, ICMP, PSH, Pkt, RST, SYN, UDP, verify_checksums};

const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;

const VIP4: &str = "10.0.0.1";
const VIP6: &str = "fd00::1";
const VIP_PORT: u16 = 8080;
const PRIMARY: u32 = 0;
const BACKUP: u32 = 1;
/// Slot 2: an origin at another address (10.0.0.2 / fd00::2, port 9000).
const REMOTE: u32 = 2;
const U: u32 = STATS_UNSTEERED;

#[derive(Clone, Copy, Debug)]
enum Prog {
    Xdp,
    TcIngress,
    TcEgress,
}

/// A precondition of a case, run in order on the case's own harness before its packet. The
/// counters these steps move are not the case's: only its own packet is measured.
#[derive(Clone)]
enum Given {
    /// The control plane sends every new flow to this origin (policy failover).
    Active(u32),
    /// The control plane retires an origin: its flows are deleted (at least one must exist).
    Retire(u32),
    /// Steering on or off (`VIP_ENABLED` in the VIP config).
    Enabled(bool),
    /// A packet through a program, which must let it through; the state it leaves behind is
    /// the precondition.
    Packet(Prog, Vec<u8>),
    /// A check of the state the steps so far built.
    Holds(State),
}

impl std::fmt::Debug for Given {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Given::Active(o) => write!(f, "origin {o} active"),
            Given::Retire(o) => write!(f, "origin {o} retired"),
            Given::Enabled(on) => write!(f, "steering enabled: {on}"),
            Given::Packet(prog, bytes) => {
                write!(f, "a {}-byte packet through {prog:?}", bytes.len())
            }
            Given::Holds(s) => write!(f, "{s:?}"),
        }
    }
}

/// Which conntrack map a [`State`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Map {
    Flows,
    Handshakes,
}

/// The origin a client's entry in one map is pinned to; `None`: the client has no entry.
#[derive(Clone, Copy, Debug)]
struct State {
    map: Map,
    client: SocketAddr,
    origin: Option<u32>,
}

fn flow(client: &str, port: u16, origin: Option<u32>) -> State {
    State {
        map: Map::Flows,
        client: SocketAddr::new(client.parse().unwrap(), port),
        origin,
    }
}

fn handshake(client: &str, port: u16, origin: Option<u32>) -> State {
    State {
        map: Map::Handshakes,
        ..flow(client, port, origin)
    }
}

struct Case {
    desc: &'static str,
    given: Vec<Given>,
    prog: Prog,
    input: Vec<u8>,
    /// `None`: the packet must come out unchanged.
    output: Option<Vec<u8>>,
    /// (slot, counter, increase); every counter not listed must not change.
    deltas: Vec<(u32, &'static str, u64)>,
    /// The map state the case's packet must leave.
    then: Vec<State>,
}

fn case(
    desc: &'static str,
    prog: Prog,
    input: Vec<u8>,
    output: Option<Vec<u8>>,
    deltas: Vec<(u32, &'static str, u64)>,
) -> Case {
    Case {
        desc,
        given: Vec::new(),
        prog,
        input,
        output,
        deltas,
        then: Vec::new(),
    }
}

impl Case {
    fn given(mut self, steps: Vec<Given>) -> Case {
        self.given = steps;
        self
    }

    fn then(mut self, states: Vec<State>) -> Case {
        self.then = states;
        self
    }
}

/// The origin's SYN-ACK carries DEFAULT_SEQ as its initial sequence number; the client's ACK
/// completes the handshake by acknowledging the next one.
const ISN_ACK: u32 = DEFAULT_SEQ.wrapping_add(1);

/// The address and port origin `origin` answers from: the VIP's address for the origins on it,
/// its own for the remote one.
fn origin_addr(origin: u32, v6: bool) -> (&'static str, u16) {
    match (origin, v6) {
        (REMOTE, false) => ("10.0.0.2", 9000),
        (REMOTE, true) => ("fd00::2", 9000),
        (o, false) => (VIP4, 8081 + o as u16),
        (o, true) => (VIP6, 8081 + o as u16),
    }
}

/// The client address and port of `syn`, as strings for `Pkt::tcp`.
fn client_of(syn: &Pkt) -> (String, u16) {
    (syn.src.to_string(), syn.sport)
}

/// The SYN-ACK of `origin` to the client of `syn`.
fn syn_ack_of(origin: u32, syn: &Pkt) -> Pkt {
    let (addr, port) = origin_addr(origin, syn.src.is_ipv6());
    let (client, cport) = client_of(syn);
    Pkt::tcp(addr, port, &client, cport, SYN | ACK)
}

/// The client's ACK of the origin's ISN + 1 on the connection `syn` opened.
fn handshake_ack_of(syn: &Pkt) -> Pkt {
    let (client, cport) = client_of(syn);
    Pkt::tcp(&client, cport, &syn.dst.to_string(), syn.dport, ACK).with_ack(ISN_ACK)
}

/// The client of `syn` has sent its SYN to the VIP with `origin` active: a handshake on
/// `origin` whose ISN is not known yet.
fn syn_seen(origin: u32, syn: &Pkt) -> Vec<Given> {
    let (client, port) = client_of(syn);
    vec![
        Given::Active(origin),
        Given::Packet(Prog::Xdp, syn.build()),
        Given::Holds(handshake(&client, port, Some(origin))),
    ]
}

/// [`syn_seen`], then the origin's SYN-ACK at TC egress: the handshake waits for the ACK of
/// the origin's ISN.
fn syn_ack_seen(origin: u32, syn: &Pkt) -> Vec<Given> {
    let mut steps = syn_seen(origin, syn);
    steps.push(Given::Packet(
        Prog::TcEgress,
        syn_ack_of(origin, syn).build(),
    ));
    steps
}

/// [`syn_ack_seen`], then the client's handshake ACK: an established flow on `origin`.
fn tracked(origin: u32, syn: &Pkt) -> Vec<Given> {
    let (client, port) = client_of(syn);
    let mut steps = syn_ack_seen(origin, syn);
    steps.push(Given::Packet(Prog::Xdp, handshake_ack_of(syn).build()));
    steps.push(Given::Holds(flow(&client, port, Some(origin))));
    steps
}

fn field(c: &Counters, name: &str) -> u64 {
    c.get(name)
        .unwrap_or_else(|| panic!("unknown counter {name}"))
}
const FIELDS: [&str; 17] = Counters::FIELD_NAMES;

/// A SYN steered to `slot` (a handshake recorded).
fn steered_new(slot: u32, len: usize) -> Vec<(u32, &'static str, u64)> {
    vec![
        (slot, "packets", 1),
        (slot, "bytes", len as u64),
        (slot, "rewrites", 1),
        (slot, "new_flows", 1),
    ]
}
/// A request of a tracked flow or handshake steered to `slot`.
fn steered(slot: u32, len: usize) -> Vec<(u32, &'static str, u64)> {
    vec![
        (slot, "packets", 1),
        (slot, "bytes", len as u64),
        (slot, "rewrites", 1),
    ]
}
fn pass() -> Vec<(u32, &'static str, u64)> {
    vec![(U, "passes", 1)]
}
fn pass_as(what: &'static str) -> Vec<(u32, &'static str, u64)> {
    vec![(U, "passes", 1), (U, what, 1)]
}
/// A request of a handshake steered to `slot` that completes it.
fn steered_established(slot: u32, len: usize) -> Vec<(u32, &'static str, u64)> {
    [steered(slot, len), vec![(slot, "established", 1)]].concat()
}

fn with_dport(mut p: Pkt, port: u16) -> Pkt {
    p.dport = port;
    p
}
fn with_sport(mut p: Pkt, port: u16) -> Pkt {
    p.sport = port;
    p
}

struct Harness {
    ebpf: Ebpf,
}

impl Harness {
    fn new() -> Harness {
        assert!(
            nix_is_root(),
            "datapath fixtures need root (BPF_PROG_TEST_RUN); run them through `cargo xtask test`"
        );
        let mut ebpf = switcher_ctl::loader::size_for_cpus(&mut EbpfLoader::new())
            .load(switcher_ctl::loader::EBPF_OBJECT)
            .expect("load eBPF object");
        {
            let p: &mut Xdp = ebpf
                .program_mut(prog_names::XDP_INGRESS)
                .unwrap()
                .try_into()
                .unwrap();
            p.load().expect("verifier accepts XDP program");
        }
        for name in [prog_names::TC_INGRESS, prog_names::TC_EGRESS] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load()
                .unwrap_or_else(|e| panic!("verifier accepts {name}: {e:?}"));
        }
        let mut h = Harness { ebpf };
        h.configure(true);
        let mut origins: Array<_, Origin> =
            Array::try_from(h.ebpf.map_mut(map_names::ORIGINS).unwrap()).unwrap();
        let o = |port: u16| Origin {
            addr_v4: [0; 4],
            addr_v6: [0; 16],
            port_be: port.to_be(),
            flags: ORIGIN_CONFIGURED | ORIGIN_FALLBACK,
            generation: 0,
        };
        origins.set(PRIMARY, o(8081), 0).unwrap();
        origins.set(BACKUP, o(8082), 0).unwrap();
        let remote = Origin {
            addr_v4: "10.0.0.2".parse::<Ipv4Addr>().unwrap().octets(),
            addr_v6: "fd00::2".parse::<Ipv6Addr>().unwrap().octets(),
            port_be: 9000u16.to_be(),
            flags: ORIGIN_CONFIGURED | ORIGIN_FALLBACK,
            generation: 0,
        };
        origins.set(REMOTE, remote, 0).unwrap();
        h
    }

    fn configure(&mut self, enabled: bool) {
        let mut cfg: Array<_, VipConfig> =
            Array::try_from(self.ebpf.map_mut(map_names::CONFIG).unwrap()).unwrap();
        let vip = VipConfig {
            addr_v4: VIP4.parse::<Ipv4Addr>().unwrap().octets(),
            addr_v6: VIP6.parse::<Ipv6Addr>().unwrap().octets(),
            port_be: VIP_PORT.to_be(),
            flags: VIP_HAS_V4 | VIP_HAS_V6 | if enabled { VIP_ENABLED } else { 0 },
            ifindex: 0,
            attach_mode: 0,
        };
        cfg.set(0, vip, 0).unwrap();
    }

    /// Back to the state every fixture case starts from: no flow, no handshake, steering on,
    /// the primary active (the origins are never changed by a case).
    fn reset(&mut self) {
        fn clear<V: aya::Pod>(ebpf: &mut Ebpf, name: &str) {
            let mut map: HashMap<_, FlowKey, V> =
                HashMap::try_from(ebpf.map_mut(name).unwrap()).unwrap();
            let keys: Vec<FlowKey> = map.keys().filter_map(Result::ok).collect();
            for k in &keys {
                map.remove(k).unwrap();
            }
        }
        clear::<FlowValue>(&mut self.ebpf, map_names::FLOWS);
        // As user space does after deleting flows: no CPU's copy of them may steer again. And
        // no copy at all, so no case inherits another's.
        self.cache_versions().invalidate_all();
        self.flow_cache().clear();
        self.handshake_table().clear();
        assert!(self.flows().is_empty() && self.handshakes().is_empty());
        self.configure(true);
        self.set_active(PRIMARY);
    }

    /// A loopback VIP (127.0.0.1:8080) with the listener check on, for the fallback test.
    fn configure_loopback_with_listener_check(&mut self) {
        let mut cfg: Array<_, VipConfig> =
            Array::try_from(self.ebpf.map_mut(map_names::CONFIG).unwrap()).unwrap();
        let vip = VipConfig {
            addr_v4: [127, 0, 0, 1],
            addr_v6: [0; 16],
            port_be: VIP_PORT.to_be(),
            flags: VIP_HAS_V4 | VIP_ENABLED | VIP_CHECK_LISTENER,
            ifindex: 0,
            attach_mode: 0,
        };
        cfg.set(0, vip, 0).unwrap();
    }

    /// Policy failover: a lookup table whose every slot is `idx` (what `Pinned::set_active`
    /// publishes).
    fn set_active(&mut self, idx: u32) {
        self.publish(&vec![idx; MAGLEV_SIZE as usize]);
    }

    /// Publishes a lookup table as `Pinned::set_lookup_table` does: the table that is not
    /// live is written, then made live.
    fn publish(&mut self, slots: &[u32]) {
        assert_eq!(slots.len(), MAGLEV_SIZE as usize);
        let live: Array<_, u32> =
            Array::try_from(self.ebpf.map(map_names::MAGLEV_LIVE).unwrap()).unwrap();
        let next = 1 - live.get(&0, 0).unwrap();
        let mut table = Box::new(MaglevTable::uniform(MAGLEV_NO_ORIGIN));
        for (t, &s) in table.slots.iter_mut().zip(slots) {
            *t = if s == maglev::NO_BACKEND {
                MAGLEV_NO_ORIGIN
            } else {
                u8::try_from(s).unwrap()
            };
        }
        let mut tables: Array<_, MaglevTable> =
            Array::try_from(self.ebpf.map_mut(map_names::MAGLEV).unwrap()).unwrap();
        tables.set(next, table.as_ref(), 0).unwrap();
        let mut live: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut(map_names::MAGLEV_LIVE).unwrap()).unwrap();
        live.set(0, next, 0).unwrap();
    }

    /// Retires origin `idx`'s flows as the control plane does: the origin's generation moves
    /// on, and no entry is deleted. Returns how many entries of the origin it retired.
    fn retire(&mut self, idx: u32) -> usize {
        let generation = {
            let mut origins: Array<_, Origin> =
                Array::try_from(self.ebpf.map_mut(map_names::ORIGINS).unwrap()).unwrap();
            let mut o = origins.get(&idx, 0).unwrap();
            o.generation = o.generation.wrapping_add(1);
            origins.set(idx, o, 0).unwrap();
            o.generation
        };
        self.flows()
            .iter()
            .filter(|(_, v)| v.origin == idx && v.generation != generation)
            .count()
    }

    fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        let flows: HashMap<_, FlowKey, FlowValue> =
            HashMap::try_from(self.ebpf.map(map_names::FLOWS).unwrap()).unwrap();
        flows.iter().filter_map(Result::ok).collect()
    }

    /// The VIP as configured (`SWITCHER_CONFIG`).
    fn vip(&self) -> VipConfig {
        let cfg: Array<_, VipConfig> =
            Array::try_from(self.ebpf.map(map_names::CONFIG).unwrap()).unwrap();
        cfg.get(&0, 0).unwrap()
    }

    /// The handshake table, mapped (`switcher_ctl::handshake_table`).
    fn handshake_table(&self) -> HandshakeTable {
        HandshakeTable::new(
            switcher_ctl::mmapped::array_of(&self.ebpf, map_names::HANDSHAKES).unwrap(),
        )
        .unwrap()
    }

    /// The flow cache's versions, mapped (`switcher_ctl::flow_cache`).
    fn cache_versions(&self) -> switcher_ctl::flow_cache::Versions {
        switcher_ctl::flow_cache::Versions::new(
            switcher_ctl::mmapped::array_of(&self.ebpf, map_names::FLOW_CACHE_VERSIONS).unwrap(),
        )
        .unwrap()
    }

    /// Every CPU's flow cache (`SWITCHER_FLOW_CACHE`), mapped.
    fn flow_cache(&self) -> switcher_ctl::flow_cache::Copies {
        switcher_ctl::flow_cache::Copies::new(
            switcher_ctl::mmapped::array_of(&self.ebpf, map_names::FLOW_CACHE).unwrap(),
        )
        .unwrap()
    }

    /// Moves the `refreshed` tick of every CPU's copy of `key` by `delta` (wrapping), so that
    /// a test decides whether the copy's next hit refreshes ([`postpone_refresh`],
    /// [`make_refresh_due`]) instead of the clock.
    fn shift_refreshed(&mut self, key: &FlowKey, delta: u32) {
        let slot = switcher_common::flow_cache_slot(&key.words());
        let cache = self.flow_cache();
        let mut shifted = 0;
        for cpu in 0..cache.cpus() {
            cache.update(cpu, slot, |c| {
                if c.key == key.words() {
                    c.refreshed = c.refreshed.wrapping_add(delta);
                    shifted += 1;
                }
            });
        }
        assert!(shifted > 0, "a CPU holds a copy of the flow");
    }

    fn handshakes(&self) -> Vec<(FlowKey, Handshake)> {
        self.handshake_table().entries()
    }

    /// The origin `client`'s entry in `map` is pinned to, if it has one.
    fn origin_of(&self, map: Map, client: SocketAddr) -> Option<u32> {
        let key = switcher_ctl::loader::flow_key(client);
        match map {
            Map::Flows => self
                .flows()
                .into_iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.origin),
            Map::Handshakes => self
                .handshakes()
                .into_iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.origin),
        }
    }

    /// Checks one expected map state.
    fn holds(&self, s: &State) -> Result<(), String> {
        let got = self.origin_of(s.map, s.client);
        if got == s.origin {
            Ok(())
        } else {
            Err(format!(
                "{:?} of {}: origin {got:?}, want {:?}",
                s.map, s.client, s.origin
            ))
        }
    }

    /// Applies one precondition step.
    fn given(&mut self, g: &Given) -> Result<(), String> {
        match g {
            Given::Active(idx) => self.set_active(*idx),
            Given::Retire(idx) => {
                if self.retire(*idx) == 0 {
                    return Err(format!("retiring found no flow of origin {idx}"));
                }
            }
            Given::Enabled(on) => self.configure(*on),
            Given::Packet(prog, input) => {
                let (verdict, _, _) = self.run(*prog, input, 1);
                if verdict != pass_verdict(*prog) {
                    return Err(format!("verdict {verdict}"));
                }
            }
            Given::Holds(s) => self.holds(s)?,
        }
        Ok(())
    }

    fn counters(&self) -> Vec<Counters> {
        let stats: PerCpuArray<_, Counters> =
            PerCpuArray::try_from(self.ebpf.map(map_names::STATS).unwrap()).unwrap();
        (0..STATS_SLOTS)
            .map(|s| {
                let mut sum = Counters::default();
                for c in stats.get(&s, 0).unwrap().iter() {
                    sum.add(c);
                }
                sum
            })
            .collect()
    }

    /// Runs `prog` on `input`; returns (verdict, output bytes).
    fn run(
        &mut self,
        prog: Prog,
        input: &[u8],
        repeat: u32,
    ) -> (u32, Vec<u8>, std::time::Duration) {
        let mut out = vec![0u8; input.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(input);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat;
        let r = match prog {
            Prog::Xdp => {
                let p: &Xdp = self
                    .ebpf
                    .program(prog_names::XDP_INGRESS)
                    .unwrap()
                    .try_into()
                    .unwrap();
                p.test_run(opts)
            }
            Prog::TcIngress | Prog::TcEgress => {
                let name = if matches!(prog, Prog::TcIngress) {
                    prog_names::TC_INGRESS
                } else {
                    prog_names::TC_EGRESS
                };
                let p: &SchedClassifier = self.ebpf.program(name).unwrap().try_into().unwrap();
                p.test_run(opts)
            }
        }
        .expect("BPF_PROG_TEST_RUN");
        let n = r.data_size_out as usize;
        (r.return_value, out[..n].to_vec(), r.duration)
    }
}

/// The verdict of a packet the program lets through: XDP_PASS or TC_ACT_OK.
fn pass_verdict(prog: Prog) -> u32 {
    if matches!(prog, Prog::Xdp) {
        XDP_PASS
    } else {
        TC_ACT_OK
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn hexdiff(a: &[u8], b: &[u8]) -> String {
    let mut s = format!("len {} vs {}\n", a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x != y {
            s += &format!("  byte {i}: got {x:#04x} want {y:#04x}\n");
        }
    }
    s
}

fn table() -> Vec<Case> {
    use Given::*;
    use Prog::*;
    let c1 = Pkt::tcp("10.1.1.1", 40000, VIP4, VIP_PORT, SYN);
    let c1_ack = Pkt::tcp("10.1.1.1", 40000, VIP4, VIP_PORT, ACK | PSH)
        .with_ack(ISN_ACK)
        .with_payload(b"GET /hls/demo/index.m3u8 HTTP/1.1\r\n\r\n");
    let c1_bad_ack = Pkt::tcp("10.1.1.1", 40000, VIP4, VIP_PORT, ACK);
    let c2 = Pkt::tcp("10.1.1.2", 40001, VIP4, VIP_PORT, SYN);
    let c2_ack = Pkt::tcp("10.1.1.2", 40001, VIP4, VIP_PORT, ACK).with_ack(ISN_ACK);
    let c3_ack = Pkt::tcp("10.1.1.3", 40002, VIP4, VIP_PORT, ACK);
    let v6 = Pkt::tcp("fd00::99", 50000, VIP6, VIP_PORT, SYN);
    let v6_ack = Pkt::tcp("fd00::99", 50000, VIP6, VIP_PORT, ACK)
        .with_ack(ISN_ACK)
        .with_payload(b"hello");
    // Clients of the origin at another address.
    let remote_syn = Pkt::tcp("10.1.1.9", 40009, VIP4, VIP_PORT, SYN);
    let remote_v6_syn = Pkt::tcp("fd00::97", 50002, VIP6, VIP_PORT, SYN);
    let remote2_syn = Pkt::tcp("10.1.2.2", 41001, VIP4, VIP_PORT, SYN);
    let remote_ack = Pkt::tcp("10.1.2.2", 41001, VIP4, VIP_PORT, ACK).with_ack(ISN_ACK);
    // Replies (origin -> client).
    let r1 = Pkt::tcp(VIP4, 8081, "10.1.1.1", 40000, SYN | ACK);
    let r1_out = Pkt::tcp(VIP4, VIP_PORT, "10.1.1.1", 40000, SYN | ACK);
    let r2 = Pkt::tcp(VIP4, 8082, "10.1.1.2", 40001, SYN | ACK);
    let r2_out = Pkt::tcp(VIP4, VIP_PORT, "10.1.1.2", 40001, SYN | ACK);
    let r_remote =
        Pkt::tcp("10.0.0.2", 9000, "10.1.1.9", 40009, ACK).with_payload(b"segment bytes");
    let r_remote_out =
        Pkt::tcp(VIP4, VIP_PORT, "10.1.1.9", 40009, ACK).with_payload(b"segment bytes");
    let r_remote2 = |flags: u8| Pkt::tcp("10.0.0.2", 9000, "10.1.2.2", 41001, flags);
    let r_remote2_out = |flags: u8| Pkt::tcp(VIP4, VIP_PORT, "10.1.2.2", 41001, flags);
    // Connections straight to an origin from a client port that holds a VIP flow.
    let direct_to_backup = Pkt::tcp("10.1.1.1", 40000, VIP4, 8082, SYN).build();
    let direct_to_primary = Pkt::tcp("10.1.1.1", 40000, VIP4, 8081, SYN).build();
    let direct_to_remote = Pkt::tcp("10.1.2.2", 41001, "10.0.0.2", 9000, SYN).build();

    // c1's flow on the primary, flipped to the backup, then the primary retired (its flow
    // deleted): what a reused client port finds.
    let c1_retired = [tracked(PRIMARY, &c1), vec![Active(BACKUP), Retire(PRIMARY)]].concat();
    // The same, after steering was disabled and re-enabled with the primary active again.
    let c1_port_reused = [
        c1_retired.clone(),
        vec![Enabled(false), Enabled(true), Active(PRIMARY)],
    ]
    .concat();
    // c1's flow on the primary, forgotten by a SYN straight to the primary's port.
    let c1_forgotten = [
        tracked(PRIMARY, &c1),
        vec![
            Packet(Xdp, direct_to_primary.clone()),
            Holds(flow("10.1.1.1", 40000, None)),
        ],
    ]
    .concat();
    // remote2's flow, whose FIN the remote origin has sent.
    let remote2_closed = [
        tracked(REMOTE, &remote2_syn),
        vec![Packet(TcEgress, r_remote2(FIN | ACK).build())],
    ]
    .concat();

    let mut v4_options = Pkt::tcp("10.1.1.5", 40005, VIP4, VIP_PORT, SYN);
    v4_options.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    let mut frag_mf = Pkt::tcp("10.1.1.6", 40006, VIP4, VIP_PORT, SYN);
    frag_mf.frag = 0x2000; // MF
    let mut frag_off = Pkt::tcp("10.1.1.6", 40006, VIP4, VIP_PORT, ACK);
    frag_off.frag = 0x0010; // offset 128 bytes
    let mut df = Pkt::tcp("10.1.1.7", 40007, VIP4, VIP_PORT, SYN);
    df.frag = 0x4000; // DF is not a fragment: steered
    let mut v6_frag = Pkt::tcp("fd00::98", 50001, VIP6, VIP_PORT, SYN);
    v6_frag.v6_ext = Some(44);
    let mut v6_hbh = Pkt::tcp("fd00::98", 50001, VIP6, VIP_PORT, SYN);
    v6_hbh.v6_ext = Some(0);

    let syn1 = c1.build();
    let truncated_tcp = {
        let mut b = c2.build();
        b.truncate(14 + 20 + 10);
        b
    };
    let truncated_ip = {
        let mut b = c2.build();
        b.truncate(14 + 10);
        b
    };
    let truncated_v6 = {
        let mut b = v6.build();
        b.truncate(14 + 30);
        b
    };
    let lying_tot_len = {
        let mut b = c2.build();
        b.truncate(b.len() - 4);
        b
    };
    let zero_tot_len = {
        let mut b = c2.build();
        b[16] = 0;
        b[17] = 0;
        b
    };
    let bad_version = {
        let mut b = c2.build();
        b[14] = 0x55;
        b
    };
    let arp = {
        let mut b = vec![0xff; 12];
        b.extend_from_slice(&[0x08, 0x06]);
        b.extend_from_slice(&[0u8; 28]);
        b
    };
    let vlan = {
        let mut b = c2.build();
        b[12] = 0x81;
        b[13] = 0x00;
        b
    };

    // Segments to another port than the VIP's and not SYNs: the shapes `switcher_xdp`'s fast
    // exit passes (`packet::is_elsewhere_common`), and those it must leave to the full
    // classification, which counts them as it always did.
    let other_v4 = Pkt::tcp("10.1.1.1", 40000, VIP4, 443, ACK).with_payload(b"x");
    let other_v6 = Pkt::tcp("fd00::99", 50000, VIP6, 443, ACK).with_payload(b"x");
    let mut other_options = Pkt::tcp("10.1.1.5", 40005, VIP4, 443, ACK);
    other_options.ip_options = vec![1, 1, 1, 0];
    let mut other_frag = Pkt::tcp("10.1.1.6", 40006, VIP4, 443, ACK);
    other_frag.frag = 0x2000; // MF
    let mut other_v6_frag = Pkt::tcp("fd00::98", 50001, VIP6, 443, ACK);
    other_v6_frag.v6_ext = Some(44);
    let mut other_v6_hbh = Pkt::tcp("fd00::98", 50001, VIP6, 443, ACK);
    other_v6_hbh.v6_ext = Some(0);
    let other_v4_with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = other_v4.build();
        f(&mut b);
        b
    };
    let other_bad_version = other_v4_with(&|b| b[14] = 0x55);
    let other_short_doff = other_v4_with(&|b| b[14 + 20 + 12] = 0x40); // data offset 4
    let other_truncated_tcp = other_v4_with(&|b| b.truncate(14 + 20 + 10));
    let other_lying_len = other_v4_with(&|b| b.truncate(b.len() - 1));
    let other_v6_bad_version = {
        let mut b = other_v6.build();
        b[14] = 0x45;
        b
    };
    let other_v6_truncated_tcp = {
        let mut b = other_v6.build();
        b.truncate(14 + 40 + 10);
        b
    };

    let len = |p: &Pkt| p.build().len();
    vec![
        case(
            "IPv4 ACK to another port passes, counted as a pass only",
            Xdp,
            other_v4.build(),
            None,
            pass(),
        ),
        case(
            "IPv6 ACK to another port passes, counted as a pass only",
            Xdp,
            other_v6.build(),
            None,
            pass(),
        ),
        case(
            "IPv4 ACK to another port whose length lies passes, a pass only (length not checked)",
            Xdp,
            other_lying_len,
            None,
            pass(),
        ),
        case(
            "IPv4 options to another port pass, counted",
            Xdp,
            other_options.build(),
            None,
            pass_as("ip_options"),
        ),
        case(
            "IPv4 fragment to another port passes, counted",
            Xdp,
            other_frag.build(),
            None,
            pass_as("fragments"),
        ),
        case(
            "IPv6 fragment header to another port passes, counted",
            Xdp,
            other_v6_frag.build(),
            None,
            pass_as("fragments"),
        ),
        case(
            "IPv6 hop-by-hop header to another port passes, counted",
            Xdp,
            other_v6_hbh.build(),
            None,
            pass_as("ip_options"),
        ),
        case(
            "bad IP version to another port passes, malformed",
            Xdp,
            other_bad_version,
            None,
            pass_as("malformed"),
        ),
        case(
            "IPv6 EtherType with version 4 to another port passes, malformed",
            Xdp,
            other_v6_bad_version,
            None,
            pass_as("malformed"),
        ),
        case(
            "TCP data offset below 5 to another port passes, malformed",
            Xdp,
            other_short_doff,
            None,
            pass_as("malformed"),
        ),
        case(
            "truncated TCP header to another port passes, malformed",
            Xdp,
            other_truncated_tcp,
            None,
            pass_as("malformed"),
        ),
        case(
            "truncated IPv6 TCP header to another port passes, malformed",
            Xdp,
            other_v6_truncated_tcp,
            None,
            pass_as("malformed"),
        ),
        case(
            "IPv4 SYN to VIP goes to the active origin (primary) as a handshake",
            Xdp,
            syn1.clone(),
            Some(with_dport(c1.clone(), 8081).build()),
            steered_new(PRIMARY, syn1.len()),
        )
        .given(vec![Active(PRIMARY)])
        .then(vec![handshake("10.1.1.1", 40000, Some(PRIMARY))]),
        case(
            "an ACK before the origin's SYN-ACK follows the handshake, establishes nothing",
            Xdp,
            c1_ack.build(),
            Some(with_dport(c1_ack.clone(), 8081).build()),
            steered(PRIMARY, len(&c1_ack)),
        )
        .given(syn_seen(PRIMARY, &c1))
        .then(vec![flow("10.1.1.1", 40000, None)]),
        case(
            "TC egress: primary's SYN-ACK gets the VIP port back (its ISN recorded)",
            TcEgress,
            r1.build(),
            Some(r1_out.build()),
            vec![(PRIMARY, "reply_rewrites", 1)],
        )
        .given(syn_seen(PRIMARY, &c1)),
        case(
            "an ACK of another number (a blind spoofer's guess) establishes nothing",
            Xdp,
            c1_bad_ack.build(),
            Some(with_dport(c1_bad_ack.clone(), 8081).build()),
            steered(PRIMARY, len(&c1_bad_ack)),
        )
        .given(syn_ack_seen(PRIMARY, &c1))
        .then(vec![flow("10.1.1.1", 40000, None)]),
        case(
            "the ACK of the origin's ISN + 1 completes the handshake: an established flow",
            Xdp,
            c1_ack.build(),
            Some(with_dport(c1_ack.clone(), 8081).build()),
            steered_established(PRIMARY, len(&c1_ack)),
        )
        .given(syn_ack_seen(PRIMARY, &c1))
        .then(vec![flow("10.1.1.1", 40000, Some(PRIMARY))]),
        case(
            "tracked flow's next packet stays on primary",
            Xdp,
            c1_ack.build(),
            Some(with_dport(c1_ack.clone(), 8081).build()),
            steered(PRIMARY, len(&c1_ack)),
        )
        .given(tracked(PRIMARY, &c1)),
        case(
            "after the flip, the tracked flow stays on primary",
            Xdp,
            c1_ack.build(),
            Some(with_dport(c1_ack.clone(), 8081).build()),
            steered(PRIMARY, len(&c1_ack)),
        )
        .given([tracked(PRIMARY, &c1), vec![Active(BACKUP)]].concat()),
        case(
            "a SYN from a tracked flow's address and port follows the flow (cannot move it)",
            Xdp,
            syn1.clone(),
            Some(with_dport(c1.clone(), 8081).build()),
            steered(PRIMARY, syn1.len()),
        )
        .given([tracked(PRIMARY, &c1), vec![Active(BACKUP)]].concat())
        .then(vec![flow("10.1.1.1", 40000, Some(PRIMARY))]),
        case(
            "new SYN after the flip goes to backup",
            Xdp,
            c2.build(),
            Some(with_dport(c2.clone(), 8082).build()),
            steered_new(BACKUP, len(&c2)),
        )
        .given(vec![Active(PRIMARY), Active(BACKUP)]),
        case(
            "TC egress: backup's SYN-ACK gets the VIP port back",
            TcEgress,
            r2.build(),
            Some(r2_out.build()),
            vec![(BACKUP, "reply_rewrites", 1)],
        )
        .given(syn_seen(BACKUP, &c2)),
        case(
            "TC ingress: the handshake ACK establishes the flow on backup",
            TcIngress,
            c2_ack.build(),
            Some(with_dport(c2_ack.clone(), 8082).build()),
            steered_established(BACKUP, len(&c2_ack)),
        )
        .given(syn_ack_seen(BACKUP, &c2))
        .then(vec![flow("10.1.1.2", 40001, Some(BACKUP))]),
        case(
            "retired primary: its flow's next packet passes to the stack (which resets it)",
            Xdp,
            c1_ack.build(),
            None,
            pass_as("untracked"),
        )
        .given(c1_retired.clone())
        .then(vec![flow("10.1.1.1", 40000, None)]),
        case(
            "TC egress: a reply from the retired origin's port no longer matches",
            TcEgress,
            r1.build(),
            None,
            vec![],
        )
        .given(c1_retired.clone()),
        case(
            "a bare ACK of no flow creates nothing and passes to the stack",
            Xdp,
            c3_ack.build(),
            None,
            pass_as("untracked"),
        )
        .then(vec![
            flow("10.1.1.3", 40002, None),
            handshake("10.1.1.3", 40002, None),
        ]),
        case(
            "TC ingress: the same bare ACK again: still no flow",
            TcIngress,
            c3_ack.build(),
            None,
            pass_as("untracked"),
        )
        .given(vec![Packet(Xdp, c3_ack.build())])
        .then(vec![
            flow("10.1.1.3", 40002, None),
            handshake("10.1.1.3", 40002, None),
        ]),
        case(
            "RST of a tracked flow is steered like any packet",
            Xdp,
            Pkt::tcp("10.1.1.2", 40001, VIP4, VIP_PORT, RST).build(),
            Some(Pkt::tcp("10.1.1.2", 40001, VIP4, 8082, RST).build()),
            steered(
                BACKUP,
                len(&Pkt::tcp("10.1.1.2", 40001, VIP4, VIP_PORT, RST)),
            ),
        )
        .given(tracked(BACKUP, &c2))
        .then(vec![flow("10.1.1.2", 40001, Some(BACKUP))]),
        case(
            "other port on the VIP address passes unchanged",
            Xdp,
            Pkt::tcp("10.1.1.1", 40000, VIP4, 22, SYN).build(),
            None,
            pass(),
        ),
        case(
            "VIP port on another address passes unchanged",
            Xdp,
            Pkt::tcp("10.1.1.1", 40000, "10.0.0.3", VIP_PORT, SYN).build(),
            None,
            pass(),
        ),
        case(
            "UDP to VIP:8080 passes unchanged",
            Xdp,
            Pkt::tcp("10.1.1.1", 40000, VIP4, VIP_PORT, 0)
                .proto(UDP)
                .with_payload(b"x")
                .build(),
            None,
            pass(),
        ),
        case(
            "ICMP to the VIP passes unchanged",
            Xdp,
            Pkt::tcp("10.1.1.1", 0, VIP4, 0, 0).proto(ICMP).build(),
            None,
            pass(),
        ),
        case("ARP passes unchanged", Xdp, arp, None, pass()),
        case(
            "VLAN-tagged frame passes unchanged",
            Xdp,
            vlan,
            None,
            pass(),
        ),
        case(
            "IPv6 SYN to the IPv6 VIP is steered",
            Xdp,
            v6.build(),
            Some(with_dport(v6.clone(), 8082).build()),
            steered_new(BACKUP, len(&v6)),
        )
        .given(vec![Active(BACKUP)]),
        case(
            "TC egress: IPv6 SYN-ACK from backup",
            TcEgress,
            Pkt::tcp(VIP6, 8082, "fd00::99", 50000, SYN | ACK).build(),
            Some(Pkt::tcp(VIP6, VIP_PORT, "fd00::99", 50000, SYN | ACK).build()),
            vec![(BACKUP, "reply_rewrites", 1)],
        )
        .given(syn_seen(BACKUP, &v6)),
        case(
            "IPv6 handshake ACK establishes the flow",
            Xdp,
            v6_ack.build(),
            Some(with_dport(v6_ack.clone(), 8082).build()),
            steered_established(BACKUP, len(&v6_ack)),
        )
        .given(syn_ack_seen(BACKUP, &v6))
        .then(vec![flow("fd00::99", 50000, Some(BACKUP))]),
        case(
            "IPv6 to another address passes unchanged",
            Xdp,
            Pkt::tcp("fd00::99", 50000, "fd00::7", VIP_PORT, SYN).build(),
            None,
            pass(),
        ),
        case(
            "truncated IPv4 header passes, counted malformed",
            Xdp,
            truncated_ip,
            None,
            pass_as("malformed"),
        ),
        case(
            "truncated TCP header passes, counted malformed",
            Xdp,
            truncated_tcp,
            None,
            pass_as("malformed"),
        ),
        case(
            "truncated IPv6 header passes, counted malformed",
            Xdp,
            truncated_v6,
            None,
            pass_as("malformed"),
        ),
        case(
            "IPv4 total length beyond the frame passes, malformed",
            Xdp,
            lying_tot_len,
            None,
            pass_as("malformed"),
        ),
        case(
            "bad IP version passes, malformed",
            Xdp,
            bad_version,
            None,
            pass_as("malformed"),
        ),
        case(
            "IPv4 total length 0 on a small packet (not GSO) passes, malformed",
            Xdp,
            zero_tot_len,
            None,
            pass_as("malformed"),
        ),
        case(
            "IPv4 options pass unchanged, counted",
            Xdp,
            v4_options.build(),
            None,
            pass_as("ip_options"),
        ),
        case(
            "IPv4 first fragment (MF) passes unchanged",
            Xdp,
            frag_mf.build(),
            None,
            pass_as("fragments"),
        ),
        case(
            "IPv4 later fragment (offset) passes unchanged",
            Xdp,
            frag_off.build(),
            None,
            pass_as("fragments"),
        ),
        case(
            "IPv4 DF (not a fragment) is steered",
            Xdp,
            df.build(),
            Some(with_dport(df.clone(), 8082).build()),
            steered_new(BACKUP, len(&df)),
        )
        .given(vec![Active(BACKUP)]),
        case(
            "IPv6 fragment header passes unchanged",
            Xdp,
            v6_frag.build(),
            None,
            pass_as("fragments"),
        ),
        case(
            "IPv6 hop-by-hop header passes unchanged, counted",
            Xdp,
            v6_hbh.build(),
            None,
            pass_as("ip_options"),
        ),
        case(
            "TC ingress: SYN rewritten like XDP does",
            TcIngress,
            Pkt::tcp("10.1.2.1", 41000, VIP4, VIP_PORT, SYN).build(),
            Some(Pkt::tcp("10.1.2.1", 41000, VIP4, 8082, SYN).build()),
            steered_new(
                BACKUP,
                len(&Pkt::tcp("10.1.2.1", 41000, VIP4, VIP_PORT, SYN)),
            ),
        )
        .given(vec![Active(BACKUP)]),
        case(
            "TC ingress: IPv6 data packet of a tracked flow",
            TcIngress,
            v6_ack.build(),
            Some(with_dport(v6_ack.clone(), 8082).build()),
            steered(BACKUP, len(&v6_ack)),
        )
        .given(tracked(BACKUP, &v6)),
        case(
            "origin at another address: IPv4 destination address and port rewritten",
            Xdp,
            remote_syn.build(),
            Some(Pkt::tcp("10.1.1.9", 40009, "10.0.0.2", 9000, SYN).build()),
            steered_new(REMOTE, len(&remote_syn)),
        )
        .given(vec![Active(REMOTE)])
        .then(vec![
            handshake("10.1.1.9", 40009, Some(REMOTE)),
            flow("10.1.1.9", 40009, None),
        ]),
        case(
            "TC egress: the remote origin's reply gets VIP address and port",
            TcEgress,
            r_remote.build(),
            Some(r_remote_out.build()),
            vec![(REMOTE, "reply_rewrites", 1)],
        )
        .given(syn_seen(REMOTE, &remote_syn)),
        case(
            "TC egress: a reply from the right port but wrong address is left alone",
            TcEgress,
            Pkt::tcp("10.0.0.5", 9000, "10.1.1.9", 40009, ACK).build(),
            None,
            vec![],
        )
        .given(syn_seen(REMOTE, &remote_syn)),
        case(
            "origin at another address: IPv6 destination rewritten",
            Xdp,
            remote_v6_syn.build(),
            Some(Pkt::tcp("fd00::97", 50002, "fd00::2", 9000, SYN).build()),
            steered_new(REMOTE, len(&remote_v6_syn)),
        )
        .given(vec![Active(REMOTE)]),
        case(
            "TC egress: IPv6 reply from the remote origin",
            TcEgress,
            syn_ack_of(REMOTE, &remote_v6_syn).build(),
            Some(Pkt::tcp(VIP6, VIP_PORT, "fd00::97", 50002, SYN | ACK).build()),
            vec![(REMOTE, "reply_rewrites", 1)],
        )
        .given(syn_seen(REMOTE, &remote_v6_syn)),
        case(
            "TC ingress: IPv4 to the remote origin rewrites address (helpers)",
            TcIngress,
            remote2_syn.build(),
            Some(Pkt::tcp("10.1.2.2", 41001, "10.0.0.2", 9000, SYN).build()),
            steered_new(REMOTE, len(&remote2_syn)),
        )
        .given(vec![Active(REMOTE)]),
        case(
            "TC egress: the remote origin's SYN-ACK gets VIP address and port",
            TcEgress,
            r_remote2(SYN | ACK).build(),
            Some(r_remote2_out(SYN | ACK).build()),
            vec![(REMOTE, "reply_rewrites", 1)],
        )
        .given(syn_seen(REMOTE, &remote2_syn)),
        case(
            "the remote flow's handshake ACK establishes it",
            Xdp,
            remote_ack.build(),
            Some(
                Pkt::tcp("10.1.2.2", 41001, "10.0.0.2", 9000, ACK)
                    .with_ack(ISN_ACK)
                    .build(),
            ),
            steered_established(REMOTE, len(&remote_ack)),
        )
        .given(syn_ack_seen(REMOTE, &remote2_syn))
        .then(vec![flow("10.1.2.2", 41001, Some(REMOTE))]),
        case(
            "steering disabled: VIP traffic passes unchanged",
            Xdp,
            Pkt::tcp("10.1.1.1", 40000, VIP4, VIP_PORT, SYN).build(),
            None,
            pass(),
        )
        .given(vec![Enabled(false)]),
        case(
            "re-enabled with primary active: SYN reuses the port on primary",
            Xdp,
            with_sport(c1.clone(), 40000).build(),
            Some(with_dport(c1.clone(), 8081).build()),
            steered_new(PRIMARY, syn1.len()),
        )
        .given(c1_port_reused.clone()),
        case(
            "TC egress: primary's SYN-ACK on the reused port",
            TcEgress,
            r1.build(),
            Some(r1_out.build()),
            vec![(PRIMARY, "reply_rewrites", 1)],
        )
        .given([c1_port_reused.clone(), syn_seen(PRIMARY, &c1)].concat()),
        case(
            "the reused port's handshake completes on primary",
            Xdp,
            c1_ack.build(),
            Some(with_dport(c1_ack.clone(), 8081).build()),
            steered_established(PRIMARY, len(&c1_ack)),
        )
        .given([c1_port_reused.clone(), syn_ack_seen(PRIMARY, &c1)].concat())
        .then(vec![flow("10.1.1.1", 40000, Some(PRIMARY))]),
        // A client port reused for a connection straight to an origin (a probe, wrk): the VIP
        // flow it held, if pinned to that origin and over, must not rewrite the new
        // connection's replies. No socket exists here (the test's namespace has none for these
        // addresses), so for the origins on the VIP's address the flow counts as over; the
        // live-socket case is `stale_rule_keeps_a_flow_whose_origin_socket_is_live`.
        case(
            "SYN straight to the other origin's port from a pinned client port passes, flow kept",
            Xdp,
            direct_to_backup.clone(),
            None,
            pass(),
        )
        .given(tracked(PRIMARY, &c1))
        .then(vec![flow("10.1.1.1", 40000, Some(PRIMARY))]),
        case(
            "TC egress: the kept flow's reply still gets the VIP port",
            TcEgress,
            r1.build(),
            Some(r1_out.build()),
            vec![(PRIMARY, "reply_rewrites", 1)],
        )
        .given([tracked(PRIMARY, &c1), vec![Packet(Xdp, direct_to_backup)]].concat()),
        case(
            "SYN straight to the pinned origin's port forgets the finished flow (closed count +1: no FIN was seen)",
            Xdp,
            direct_to_primary.clone(),
            None,
            [
                pass(),
                vec![(PRIMARY, "stale_flows", 1), (PRIMARY, "flows_closed", 1)],
            ]
            .concat(),
        )
        .given(tracked(PRIMARY, &c1))
        .then(vec![flow("10.1.1.1", 40000, None)]),
        case(
            "TC egress: the direct connection's SYN-ACK passes unchanged",
            TcEgress,
            r1.build(),
            None,
            vec![],
        )
        .given(c1_forgotten.clone()),
        case(
            "TC ingress: a new VIP handshake from a reused port",
            TcIngress,
            syn1.clone(),
            Some(with_dport(c1.clone(), 8081).build()),
            steered_new(PRIMARY, syn1.len()),
        )
        .given(c1_forgotten.clone())
        .then(vec![handshake("10.1.1.1", 40000, Some(PRIMARY))]),
        case(
            "TC ingress: a SYN straight to its origin forgets the handshake too",
            TcIngress,
            direct_to_primary.clone(),
            None,
            [pass(), vec![(PRIMARY, "stale_flows", 1)]].concat(),
        )
        .given([c1_forgotten.clone(), syn_seen(PRIMARY, &c1)].concat())
        .then(vec![
            flow("10.1.1.1", 40000, None),
            handshake("10.1.1.1", 40000, None),
        ]),
        case(
            "an ACK straight to the origin (not a SYN) forgets nothing",
            Xdp,
            Pkt::tcp("10.1.2.2", 41001, "10.0.0.2", 9000, ACK).build(),
            None,
            pass(),
        )
        .given(tracked(REMOTE, &remote2_syn))
        .then(vec![flow("10.1.2.2", 41001, Some(REMOTE))]),
        case(
            "a SYN straight to a remote origin whose flow it never closed: flow kept",
            Xdp,
            direct_to_remote.clone(),
            None,
            [pass(), vec![(REMOTE, "stale_kept", 1)]].concat(),
        )
        .given(tracked(REMOTE, &remote2_syn))
        .then(vec![flow("10.1.2.2", 41001, Some(REMOTE))]),
        case(
            "TC egress: the remote origin's FIN is rewritten (flow marked and counted closed)",
            TcEgress,
            r_remote2(FIN | ACK).build(),
            Some(r_remote2_out(FIN | ACK).build()),
            vec![(REMOTE, "reply_rewrites", 1), (REMOTE, "flows_closed", 1)],
        )
        .given(tracked(REMOTE, &remote2_syn)),
        case(
            "TC egress: the origin's second FIN counts no second close",
            TcEgress,
            r_remote2(FIN | ACK).build(),
            Some(r_remote2_out(FIN | ACK).build()),
            vec![(REMOTE, "reply_rewrites", 1)],
        )
        .given(remote2_closed.clone()),
        case(
            "a SYN straight to the remote origin now forgets its closed flow",
            Xdp,
            direct_to_remote,
            None,
            [pass(), vec![(REMOTE, "stale_flows", 1)]].concat(),
        )
        .given(remote2_closed)
        .then(vec![flow("10.1.2.2", 41001, None)]),
    ]
}

/// Runs one case from the reset state: its preconditions, then its packet; returns what went
/// wrong.
fn run_case(h: &mut Harness, c: &Case) -> Vec<String> {
    h.reset();
    for (i, g) in c.given.iter().enumerate() {
        if let Err(e) = h.given(g) {
            return vec![format!("precondition {i} ({g:?}): {e}")];
        }
    }
    let before = h.counters();
    let (verdict, out, _) = h.run(c.prog, &c.input, 1);
    let after = h.counters();
    let mut errs = Vec::new();
    let want_verdict = pass_verdict(c.prog);
    if verdict != want_verdict {
        errs.push(format!("verdict {verdict}, want {want_verdict}"));
    }
    let want = c.output.clone().unwrap_or_else(|| c.input.clone());
    if out != want {
        errs.push(format!(
            "output differs from expected:\n{}",
            hexdiff(&out, &want)
        ));
    }
    if c.output.is_some()
        && let Err(e) = verify_checksums(&out)
    {
        errs.push(format!("recomputed checksum rejects output: {e}"));
    }
    for slot in 0..STATS_SLOTS {
        for f in FIELDS {
            let got = field(&after[slot as usize], f) - field(&before[slot as usize], f);
            let want: u64 = c
                .deltas
                .iter()
                .filter(|(s, n, _)| *s == slot && *n == f)
                .map(|d| d.2)
                .sum();
            if got != want {
                errs.push(format!("counter slot {slot} {f}: +{got}, want +{want}"));
            }
        }
    }
    errs.extend(c.then.iter().filter_map(|s| h.holds(s).err()));
    if let Some((k, v)) = h.flows().iter().find(|(_, v)| v.origin >= MAX_ORIGINS) {
        errs.push(format!("flow {k:?} on origin {}", v.origin));
    }
    errs
}

/// Every case, from the reset state, in the table's order and then in reverse: a case that
/// relied on state an earlier case left would fail in one of the two.
#[test]
fn fixture_table() {
    let mut h = Harness::new();
    let cases = table();
    assert!(cases.len() >= 20, "the table must cover at least 20 cases");
    let forward = cases.iter().enumerate();
    let order: Vec<(usize, &Case)> = forward.clone().chain(forward.rev()).collect();
    let failures: Vec<String> = order
        .into_iter()
        .filter_map(|(i, c)| {
            let errs = run_case(&mut h, c);
            (!errs.is_empty()).then(|| format!("case {i}: {}\n    {}", c.desc, errs.join("\n    ")))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} fixture case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A malformed frame shorter than Ethernet cannot go through BPF_PROG_TEST_RUN (the kernel
/// refuses inputs under 14 bytes); what it must not do is reach the programs at all.
#[test]
fn kernel_refuses_frames_shorter_than_ethernet() {
    let h = Harness::new();
    let mut out = vec![0u8; 64];
    let mut opts = TestRunOptions::new();
    let short = [0u8; 10];
    opts.data_in = Some(&short);
    opts.data_out = Some(&mut out);
    let p: &Xdp = h
        .ebpf
        .program(prog_names::XDP_INGRESS)
        .unwrap()
        .try_into()
        .unwrap();
    assert!(p.test_run(opts).is_err());
    // And nothing was counted.
    assert!(h.counters().iter().all(|c| *c == Counters::default()));
}

/// With VIP_CHECK_LISTENER, a new flow whose active origin has no listening socket on this
/// host (its process died, the control plane has not flipped yet) goes to an origin that has
/// one, if the control plane flagged it `ORIGIN_FALLBACK` (healthy, not drained). Runs in a
/// namespace of its own, where the test decides which ports listen.
#[test]
fn new_flow_falls_back_to_a_listening_origin() {
    let ns = netns::Netns::new("f");
    ns.run(|| {
        let mut h = Harness::new();
        h.configure_loopback_with_listener_check();
        h.set_active(PRIMARY);
        // Only the two local origins: an origin at another address cannot be checked from
        // here and would count as alive.
        let mut origins: Array<_, Origin> =
            Array::try_from(h.ebpf.map_mut(map_names::ORIGINS).unwrap()).unwrap();
        let unset = Origin {
            addr_v4: [0; 4],
            addr_v6: [0; 16],
            port_be: 0,
            flags: 0,
            generation: 0,
        };
        origins.set(REMOTE, unset, 0).unwrap();
        let syn = |port: u16| Pkt::tcp("127.0.0.1", port, "127.0.0.1", VIP_PORT, SYN);
        let steer = |h: &mut Harness, port: u16| -> (u16, Vec<Counters>) {
            let before = h.counters();
            let (verdict, out, _) = h.run(Prog::Xdp, &syn(port).build(), 1);
            assert_eq!(verdict, XDP_PASS);
            verify_checksums(&out).expect("checksums");
            let after = h.counters();
            let delta = before.iter().zip(&after).map(|(b, a)| {
                let mut d = *a;
                d.new_flows -= b.new_flows;
                d.listener_fallbacks -= b.listener_fallbacks;
                d
            });
            (u16::from_be_bytes([out[36], out[37]]), delta.collect())
        };

        // Only the backup listens: the SYN goes there, counted as a fallback.
        let backup = std::net::TcpListener::bind("127.0.0.1:8082").expect("bind backup port");
        let (port, d) = steer(&mut h, 41000);
        assert_eq!(
            port, 8082,
            "no listener on the active origin's port: fall back"
        );
        assert_eq!(
            (
                d[BACKUP as usize].new_flows,
                d[BACKUP as usize].listener_fallbacks
            ),
            (1, 1)
        );
        assert_eq!(d[PRIMARY as usize].new_flows, 0);

        // The backup no longer flagged ORIGIN_FALLBACK (the control plane found it unhealthy
        // or drained it): no fallback to it, listening or not; the active origin gets the SYN.
        let mut origins: Array<_, Origin> =
            Array::try_from(h.ebpf.map_mut(map_names::ORIGINS).unwrap()).unwrap();
        let mut b = origins.get(&BACKUP, 0).unwrap();
        b.flags &= !ORIGIN_FALLBACK;
        origins.set(BACKUP, b, 0).unwrap();
        let (port, d) = steer(&mut h, 41003);
        assert_eq!(port, 8081, "no fallback to an origin not flagged for it");
        assert_eq!(d.iter().map(|c| c.listener_fallbacks).sum::<u64>(), 0);
        b.flags |= ORIGIN_FALLBACK;
        let mut origins: Array<_, Origin> =
            Array::try_from(h.ebpf.map_mut(map_names::ORIGINS).unwrap()).unwrap();
        origins.set(BACKUP, b, 0).unwrap();

        // The primary listens again: back to the active origin, no fallback.
        let primary = std::net::TcpListener::bind("127.0.0.1:8081").expect("bind primary port");
        let (port, d) = steer(&mut h, 41001);
        assert_eq!(port, 8081);
        assert_eq!(
            (
                d[PRIMARY as usize].new_flows,
                d[PRIMARY as usize].listener_fallbacks
            ),
            (1, 0)
        );

        // Nobody listens: the active origin gets it (and will reset it), as without the check.
        drop(primary);
        drop(backup);
        let (port, d) = steer(&mut h, 41002);
        assert_eq!(port, 8081);
        assert_eq!(d.iter().map(|c| c.listener_fallbacks).sum::<u64>(), 0);
    });
}

/// The stale-flow rule against a spoofed SYN: a SYN straight to a local origin from a tracked
/// client port forgets the flow only when the origin holds no socket it may still send on for
/// that 4-tuple. Runs in a namespace of its own with a real connection to a real listener,
/// whose state the test walks through: established and CLOSE_WAIT keep the flow (counted
/// `stale_kept`), the origin's close forgets it.
#[test]
fn stale_rule_keeps_a_flow_whose_origin_socket_is_live() {
    let ns = netns::Netns::new("s");
    ns.run(|| {
        use std::io::{Read as _, Write as _};
        let mut h = Harness::new();
        h.configure_loopback_with_listener_check();
        h.set_active(PRIMARY);
        let listener = std::net::TcpListener::bind("127.0.0.1:8081").expect("bind primary port");
        let mut client = std::net::TcpStream::connect("127.0.0.1:8081").expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        let port = client.local_addr().unwrap().port();
        const LO: &str = "127.0.0.1";

        // The same client port's VIP connection, established through the programs (the test
        // runs feed the maps; no packet reaches the stack).
        let isn_ack = DEFAULT_SEQ.wrapping_add(1);
        for (prog, pkt) in [
            (Prog::Xdp, Pkt::tcp(LO, port, LO, VIP_PORT, SYN)),
            (Prog::TcEgress, Pkt::tcp(LO, 8081, LO, port, SYN | ACK)),
            (
                Prog::Xdp,
                Pkt::tcp(LO, port, LO, VIP_PORT, ACK).with_ack(isn_ack),
            ),
        ] {
            let (verdict, out, _) = h.run(prog, &pkt.build(), 1);
            assert_eq!(
                verdict,
                if matches!(prog, Prog::Xdp) {
                    XDP_PASS
                } else {
                    TC_ACT_OK
                }
            );
            assert_ne!(out, pkt.build(), "{pkt:?} is rewritten");
        }
        let tracked = |h: &Harness| {
            h.flows()
                .iter()
                .any(|(k, v)| k.client_port_be == port.to_be() && v.origin == PRIMARY)
        };
        assert!(tracked(&h), "the handshake established a flow");

        let spoofed_syn = Pkt::tcp(LO, port, LO, 8081, SYN).build();
        let syn = |h: &mut Harness| -> (u64, u64) {
            let before = h.counters()[PRIMARY as usize];
            let (verdict, out, _) = h.run(Prog::Xdp, &spoofed_syn, 1);
            assert_eq!(
                (verdict, &out),
                (XDP_PASS, &spoofed_syn),
                "passes unchanged"
            );
            let after = h.counters()[PRIMARY as usize];
            (
                after.stale_kept - before.stale_kept,
                after.stale_flows - before.stale_flows,
            )
        };

        // Established at the origin: a SYN for that 4-tuple is not the client's; keep the flow.
        assert_eq!(syn(&mut h), (1, 0));
        assert!(tracked(&h), "a spoofed SYN must not delete a live flow");

        // The client has finished sending (CLOSE_WAIT at the origin), but the origin may still
        // be answering: keep it.
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(server.read(&mut buf).unwrap(), 0, "the origin saw the FIN");
        assert_eq!(syn(&mut h), (1, 0));
        assert!(tracked(&h));

        // The origin closed its side: the flow is over, and the SYN forgets it.
        server.write_all(b"bye").unwrap();
        drop(server);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"bye");
        assert_eq!(syn(&mut h), (0, 1));
        assert!(!tracked(&h), "a finished flow is forgotten");
        drop(listener);
    });
}

/// A flow finishing its last response from a retired origin (`FLOW_FINISHING`, set by the
/// control plane): the viewer's next request (a segment with data) is dropped and counted
/// `held`, so the retired origin starts no other response; its acknowledgements still reach
/// the origin (rewritten), so the response in flight completes, even after its origin's
/// generation moved on. Without the flag the same request is steered as usual, and passes
/// untouched once the generation moved.
#[test]
fn a_finishing_flow_holds_new_requests_but_passes_acks() {
    const XDP_DROP: u32 = 1;
    const TC_ACT_SHOT: u32 = 2;
    let mut h = Harness::new();
    let client: Ipv4Addr = "10.1.7.7".parse().unwrap();
    let mut client_addr = [0u8; 16];
    client_addr[..4].copy_from_slice(&client.octets());
    let key = FlowKey {
        client_addr,
        client_port_be: 47000u16.to_be(),
        family: switcher_common::FAMILY_V4,
    };
    let set_flow = |h: &mut Harness, flags: u32| {
        let mut flows: HashMap<_, FlowKey, FlowValue> =
            HashMap::try_from(h.ebpf.map_mut(map_names::FLOWS).unwrap()).unwrap();
        flows
            .insert(
                key,
                FlowValue {
                    origin: PRIMARY,
                    flags,
                    client_ack: 0,
                    hop_mac: [0; 6],
                    local_mac: [0; 6],
                    generation: 0,
                },
                0,
            )
            .unwrap();
        // As user space does after changing a flow (`Pinned::abort_flows`): without it, the
        // CPU that steered the flow's last packet would go on steering from its copy.
        h.cache_versions().invalidate([&key]);
    };
    let request = Pkt::tcp("10.1.7.7", 47000, VIP4, VIP_PORT, ACK | PSH)
        .with_payload(b"GET /hls/demo/1001.ts HTTP/1.1\r\n\r\n")
        .build();
    let ack = Pkt::tcp("10.1.7.7", 47000, VIP4, VIP_PORT, ACK).build();
    let held = |h: &Harness| h.counters()[PRIMARY as usize].held;

    // A plain flow: the request goes to the primary.
    set_flow(&mut h, switcher_common::FLOW_SEEN_SYN);
    let (verdict, out, _) = h.run(Prog::Xdp, &request, 1);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(
        u16::from_be_bytes([out[36], out[37]]),
        8081,
        "steered to the primary"
    );

    let reply = Pkt::tcp(VIP4, 8081, "10.1.7.7", 47000, ACK | PSH)
        .with_payload(b"late bytes")
        .build();
    let (_, out, _) = h.run(Prog::TcEgress, &reply, 1);
    assert_eq!(
        u16::from_be_bytes([out[34], out[35]]),
        VIP_PORT,
        "the primary's reply comes from the VIP"
    );

    // The primary retired (its generation moved on, as the control plane does after marking
    // the finishing flows): a plain flow of the old generation is over, its request passes
    // unchanged to the stack...
    assert_eq!(h.retire(PRIMARY), 1);
    // (Its origin's replies are not rewritten to come from the VIP either.)
    let (_, out, _) = h.run(Prog::TcEgress, &reply, 1);
    assert_eq!(out, reply, "a retired flow's reply passes unchanged");
    let untracked = |h: &Harness| h.counters()[U as usize].untracked;
    let before = untracked(&h);
    let (verdict, out, _) = h.run(Prog::Xdp, &request, 1);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, request, "a retired flow's request passes unchanged");
    assert_eq!(untracked(&h), before + 1);

    // ... and a finishing one of that same old generation lives on: the request is dropped
    // (XDP and TC), the bare ACK still goes through.
    set_flow(
        &mut h,
        switcher_common::FLOW_SEEN_SYN | switcher_common::FLOW_FINISHING,
    );
    let (verdict, _, _) = h.run(Prog::Xdp, &request, 1);
    assert_eq!(
        verdict, XDP_DROP,
        "XDP drops a new request on a finishing flow"
    );
    let (verdict, _, _) = h.run(Prog::TcIngress, &request, 1);
    assert_eq!(verdict, TC_ACT_SHOT, "TC ingress drops it too");
    assert_eq!(held(&h), 2);
    let (verdict, out, _) = h.run(Prog::Xdp, &ack, 1);
    assert_eq!(verdict, XDP_PASS, "an acknowledgement keeps flowing");
    assert_eq!(u16::from_be_bytes([out[36], out[37]]), 8081);
    verify_checksums(&out).expect("checksums of the rewritten ACK");
    assert_eq!(held(&h), 2, "an ACK is not held");
}

// ---------------------------------------------------------------------------------------------
// Balance: new flows steered by the Maglev lookup table.

/// Origins of the balance fixtures: origin `i` is named `BALANCE_NAMES[i]` and listens on the
/// VIP's address, port `8081 + i`.
const BALANCE_NAMES: [&str; 4] = ["origin-a", "origin-b", "origin-c", "origin-d"];

/// A harness with the four balance origins configured (and no remote one).
fn balance_harness() -> Harness {
    let mut h = Harness::new();
    let mut origins: Array<_, Origin> =
        Array::try_from(h.ebpf.map_mut(map_names::ORIGINS).unwrap()).unwrap();
    for i in 0..BALANCE_NAMES.len() as u32 {
        let o = Origin {
            addr_v4: [0; 4],
            addr_v6: [0; 16],
            port_be: (8081 + i as u16).to_be(),
            flags: ORIGIN_CONFIGURED | ORIGIN_FALLBACK,
            generation: 0,
        };
        origins.set(i, o, 0).unwrap();
    }
    h
}

/// The Maglev table of the balance origins with `weights`, as the control plane builds it.
fn balance_table(weights: [u32; 4]) -> maglev::Table {
    let backends: Vec<maglev::Backend<'_>> = BALANCE_NAMES
        .iter()
        .zip(weights)
        .map(|(name, weight)| maglev::Backend { name, weight })
        .collect();
    maglev::build(&backends, MAGLEV_SIZE).expect("valid table")
}

/// A client of the balance fixtures: the `i`-th of many distinct 5-tuples, IPv4 or IPv6.
fn client(i: u32, v6: bool) -> (String, u16) {
    let port = 1024 + (i * 7919 % 60000) as u16;
    if v6 {
        (format!("fd00:1::{:x}:{:x}", i / 251, i % 251 + 1), port)
    } else {
        (
            format!("10.{}.{}.{}", 2 + i / 62500, i / 250 % 250, i % 250 + 1),
            port,
        )
    }
}

/// The origin Maglev's user-space lookup gives a flow from `(addr, port)` to the VIP.
fn expected_origin(table: &maglev::Table, addr: &str, port: u16) -> Option<u32> {
    let hash = match addr.parse::<std::net::IpAddr>().unwrap() {
        std::net::IpAddr::V4(a) => {
            maglev::flow_hash_v4(a, port, VIP4.parse().unwrap(), VIP_PORT, 6)
        }
        std::net::IpAddr::V6(a) => {
            maglev::flow_hash_v6(a, port, VIP6.parse().unwrap(), VIP_PORT, 6)
        }
    };
    table.lookup(hash).map(|b| b as u32)
}

/// Runs `pkt` through `prog`: the balance origin its destination port was rewritten to, or
/// `None` when it passed unchanged.
fn steered_to(h: &mut Harness, prog: Prog, pkt: &Pkt) -> Option<u32> {
    let input = pkt.build();
    let (verdict, out, _) = h.run(prog, &input, 1);
    let pass = if matches!(prog, Prog::Xdp) {
        XDP_PASS
    } else {
        TC_ACT_OK
    };
    assert_eq!(verdict, pass, "{pkt:?}");
    if out == input {
        return None;
    }
    verify_checksums(&out).expect("checksums of a steered packet");
    let l4 = if pkt.dst.is_ipv6() { 14 + 40 } else { 14 + 20 };
    let port = u16::from_be_bytes([out[l4 + 2], out[l4 + 3]]);
    Some(u32::from(port - 8081))
}

fn syn_of(addr: &str, port: u16) -> Pkt {
    let vip = if addr.contains(':') { VIP6 } else { VIP4 };
    Pkt::tcp(addr, port, vip, VIP_PORT, SYN)
}

/// The data plane hashes a flow exactly as `maglev::flow_hash_v4/v6` + `slot_index` do: for
/// many IPv4 and IPv6 tuples, through XDP and TC ingress, its choice is the one
/// `maglev::Table::lookup` makes, with unequal weights so every origin owns slots.
#[test]
fn data_plane_choice_equals_maglev_table_lookup() {
    let mut h = balance_harness();
    let table = balance_table([1, 2, 3, 4]);
    h.publish(table.slots());
    let mut seen = [0u32; 4];
    for i in 0..1_200 {
        let (addr, port) = client(i, i % 3 == 0);
        let prog = if i % 2 == 0 {
            Prog::Xdp
        } else {
            Prog::TcIngress
        };
        let got = steered_to(&mut h, prog, &syn_of(&addr, port));
        let want = expected_origin(&table, &addr, port);
        assert_eq!(got, want, "tuple {addr}:{port} through {prog:?}");
        seen[got.unwrap() as usize] += 1;
    }
    assert!(
        seen.iter().all(|&n| n > 0),
        "every origin got new flows: {seen:?}"
    );
    // Heavier origins get more (weights 1..4 over 1,200 flows: far apart).
    assert!(seen[0] < seen[3], "weights show in the spread: {seen:?}");
}

/// The same 5-tuple always gets the same origin: its SYN (retransmitted, or after the table
/// was rebuilt from the same inputs and published into the other buffer) lands on one origin.
#[test]
fn the_same_tuple_always_gets_the_same_origin() {
    let mut h = balance_harness();
    h.publish(balance_table([3, 1, 1, 2]).slots());
    let tuples: Vec<(String, u16)> = (0..200).map(|i| client(i, i % 2 == 1)).collect();
    let first: Vec<Option<u32>> = tuples
        .iter()
        .map(|(a, p)| steered_to(&mut h, Prog::Xdp, &syn_of(a, *p)))
        .collect();
    assert!(first.iter().all(Option::is_some));
    let distinct: std::collections::HashSet<_> = first.iter().collect();
    assert!(distinct.len() > 1, "flows spread over several origins");
    for round in 0..3 {
        // Rebuilt from the same inputs: byte-identical, published into the other table.
        h.publish(balance_table([3, 1, 1, 2]).slots());
        for ((a, p), want) in tuples.iter().zip(&first) {
            let prog = if round % 2 == 0 {
                Prog::TcIngress
            } else {
                Prog::Xdp
            };
            assert_eq!(
                steered_to(&mut h, prog, &syn_of(a, *p)),
                *want,
                "{a}:{p} round {round}"
            );
        }
    }
}

/// A table without origin X (weight 0: drained or unhealthy) sends no new flow to X, and its
/// counters show none.
#[test]
fn a_weight_zero_origin_gets_no_new_flow() {
    let mut h = balance_harness();
    let table = balance_table([1, 1, 0, 1]);
    h.publish(table.slots());
    let before = h.counters();
    let mut seen = [0u32; 4];
    for i in 0..2_000 {
        let (addr, port) = client(i, i % 4 == 0);
        let got = steered_to(&mut h, Prog::Xdp, &syn_of(&addr, port)).expect("steered");
        seen[got as usize] += 1;
    }
    let after = h.counters();
    assert_eq!(seen[2], 0, "no new flow to the weight-0 origin: {seen:?}");
    assert_eq!(after[2].new_flows, before[2].new_flows);
    for o in [0, 1, 3] {
        assert!(seen[o] > 500, "origin {o} takes its share: {seen:?}");
    }
}

/// Completes the handshake of `(addr, port)` through the programs: SYN (steered by the
/// table), the origin's SYN-ACK at TC egress, the client's ACK of its ISN. Returns the origin.
fn establish(h: &mut Harness, addr: &str, port: u16) -> u32 {
    let origin = steered_to(h, Prog::Xdp, &syn_of(addr, port)).expect("SYN steered");
    let vip = if addr.contains(':') { VIP6 } else { VIP4 };
    let synack = Pkt::tcp(vip, 8081 + origin as u16, addr, port, SYN | ACK).build();
    let (verdict, out, _) = h.run(Prog::TcEgress, &synack, 1);
    assert_eq!(verdict, TC_ACT_OK);
    assert_ne!(out, synack, "the SYN-ACK is rewritten to come from the VIP");
    let ack = Pkt::tcp(addr, port, vip, VIP_PORT, ACK).with_ack(DEFAULT_SEQ.wrapping_add(1));
    assert_eq!(steered_to(h, Prog::Xdp, &ack), Some(origin));
    origin
}

/// Tracked flows never move when a table is swapped, even to a table that sends every new flow
/// elsewhere; a retired origin's flow is gone (its next packet passes to the stack, which
/// resets it), and the client's new connection from the same tuple is steered by the table.
#[test]
fn a_table_swap_moves_no_tracked_flow_and_a_retired_flow_is_resteered() {
    let mut h = balance_harness();
    h.publish(balance_table([1, 1, 1, 1]).slots());
    let mut pinned: Vec<(String, u16, u32)> = Vec::new();
    for i in 0..64 {
        let (addr, port) = client(i, i % 2 == 0);
        let origin = establish(&mut h, &addr, port);
        pinned.push((addr, port, origin));
    }
    assert!(
        pinned.iter().any(|p| p.2 == 0) && pinned.iter().any(|p| p.2 != 0),
        "flows on origin 0 and on others"
    );
    let data = |addr: &str, port: u16| {
        let vip = if addr.contains(':') { VIP6 } else { VIP4 };
        Pkt::tcp(addr, port, vip, VIP_PORT, ACK | PSH).with_payload(b"GET /seg.ts HTTP/1.1\r\n\r\n")
    };

    // Origin 0 drained, then every new flow to origin 3: no tracked flow moves.
    let drained = balance_table([0, 1, 1, 1]);
    h.publish(drained.slots());
    h.publish(balance_table([0, 0, 0, 1]).slots());
    for (addr, port, origin) in &pinned {
        let prog = if port % 2 == 0 {
            Prog::Xdp
        } else {
            Prog::TcIngress
        };
        assert_eq!(
            steered_to(&mut h, prog, &data(addr, *port)),
            Some(*origin),
            "tracked flow {addr}:{port} stays on origin {origin}"
        );
    }

    // Retire origin 0 (its generation moved, as the control plane does) with the drained
    // table live: its viewers' next packets pass unchanged, counted untracked, and the data
    // plane forgets their entries; their reconnection from the same tuple goes where the
    // table says, never to origin 0.
    h.publish(drained.slots());
    let retired = h.retire(0);
    assert!(retired > 0);
    let entries_of_0 = |h: &Harness| h.flows().iter().filter(|(_, v)| v.origin == 0).count();
    assert_eq!(entries_of_0(&h), retired, "retiring deletes nothing");
    for (addr, port, origin) in pinned.iter().filter(|p| p.2 == 0) {
        let before = h.counters()[U as usize].untracked;
        let entries = entries_of_0(&h);
        assert_eq!(steered_to(&mut h, Prog::Xdp, &data(addr, *port)), None);
        assert_eq!(h.counters()[U as usize].untracked, before + 1);
        assert_eq!(
            entries_of_0(&h),
            entries - 1,
            "the retired flow met is forgotten"
        );
        let again = steered_to(&mut h, Prog::Xdp, &syn_of(addr, *port));
        assert_eq!(again, expected_origin(&drained, addr, *port));
        assert_ne!(
            again,
            Some(*origin),
            "re-steered away from the retired origin"
        );
    }
    // The others still follow their flows.
    for (addr, port, origin) in pinned.iter().filter(|p| p.2 != 0) {
        assert_eq!(
            steered_to(&mut h, Prog::Xdp, &data(addr, *port)),
            Some(*origin)
        );
    }
}

/// An empty table (no origin in rotation): a new flow passes to the stack, which resets it.
#[test]
fn an_empty_table_steers_no_new_flow() {
    let mut h = balance_harness();
    let empty = balance_table([0, 0, 0, 0]);
    assert!(empty.is_empty());
    h.publish(empty.slots());
    let before = h.counters()[U as usize].passes;
    assert_eq!(
        steered_to(&mut h, Prog::Xdp, &syn_of("10.9.9.9", 4242)),
        None
    );
    assert_eq!(h.counters()[U as usize].passes, before + 1);
}

/// A SYN from the address and port of a flow its origin has closed (FIN seen at egress) is a
/// new connection: it is steered by the table, not to the old flow's origin (which may be
/// drained or dead by now). A SYN on a flow the origin has not closed still follows the flow.
#[test]
fn a_syn_on_a_flow_its_origin_closed_is_steered_by_the_table() {
    let mut h = balance_harness();
    h.publish(balance_table([1, 1, 1, 1]).slots());
    // Two flows on origins other than 3.
    let mut flows = Vec::new();
    let mut i = 0;
    while flows.len() < 2 {
        let (addr, port) = client(i, i % 2 == 0);
        i += 1;
        if expected_origin(&balance_table([1, 1, 1, 1]), &addr, port) == Some(3) {
            continue;
        }
        let origin = establish(&mut h, &addr, port);
        flows.push((addr, port, origin));
    }
    // Every new flow to origin 3 from now on.
    h.publish(balance_table([0, 0, 0, 1]).slots());
    let (closed, open) = (&flows[0], &flows[1]);
    let vip = |addr: &str| if addr.contains(':') { VIP6 } else { VIP4 };
    let fin = Pkt::tcp(
        vip(&closed.0),
        8081 + closed.2 as u16,
        &closed.0,
        closed.1,
        FIN | ACK,
    );
    let before = h.counters()[closed.2 as usize].flows_closed;
    let (verdict, _, _) = h.run(Prog::TcEgress, &fin.build(), 1);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(h.counters()[closed.2 as usize].flows_closed, before + 1);
    assert_eq!(
        steered_to(&mut h, Prog::Xdp, &syn_of(&closed.0, closed.1)),
        Some(3),
        "the closed flow's port starts a new flow where the table says"
    );
    assert_eq!(
        steered_to(&mut h, Prog::Xdp, &syn_of(&open.0, open.1)),
        Some(open.2),
        "a SYN on an open flow follows it"
    );
}

/// The flow's value, looked up by client address and port.
fn flow_of(h: &Harness, client: &str, port: u16) -> Option<FlowValue> {
    let key =
        switcher_ctl::loader::flow_key(std::net::SocketAddr::new(client.parse().unwrap(), port));
    h.flows()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// What an edge reset needs is recorded per flow (docs/ARCHITECTURE.md, "Edge-originated
/// resets"): the handshake ACK's Ethernet addresses and acknowledgment number when the flow
/// is created; afterwards the acknowledgment number whenever a segment acknowledges more,
/// through XDP and TC ingress alike, and never moved back by a reordered older segment or
/// changed by a segment without ACK.
#[test]
fn flows_record_the_clients_latest_ack_and_link_addresses() {
    // One CPU: a copy left on another would hold an older number (and, more than 2^31 behind,
    // could sort first).
    test_kit::process::pin_to_current_cpu();
    let mut h = Harness::new();
    h.set_active(PRIMARY);
    let isn_ack = DEFAULT_SEQ.wrapping_add(1);
    let (client, port) = ("10.1.8.8", 48000);
    let syn = Pkt::tcp(client, port, VIP4, VIP_PORT, SYN).build();
    assert_eq!(h.run(Prog::Xdp, &syn, 1).0, XDP_PASS);
    let syn_ack = Pkt::tcp(VIP4, 8081, client, port, SYN | ACK).build();
    assert_eq!(h.run(Prog::TcEgress, &syn_ack, 1).0, TC_ACT_OK);
    let ack = |n: u32| {
        Pkt::tcp(client, port, VIP4, VIP_PORT, ACK)
            .with_ack(n)
            .build()
    };
    h.run(Prog::Xdp, &ack(isn_ack), 1);
    let flow = flow_of(&h, client, port).expect("the handshake ACK creates the flow");
    assert_eq!(flow.client_ack, isn_ack, "the handshake ACK's number");
    // `Pkt` frames go from 02:00:00:00:00:01 to 02:00:00:00:00:02.
    assert_eq!(flow.hop_mac, [2, 0, 0, 0, 0, 1], "the frame's source");
    assert_eq!(
        flow.local_mac,
        [2, 0, 0, 0, 0, 2],
        "the frame's destination"
    );

    let steps: [(Prog, Vec<u8>, u32, &str); 6] = [
        (
            Prog::Xdp,
            ack(isn_ack + 1000),
            isn_ack + 1000,
            "XDP: more acknowledged",
        ),
        (
            Prog::Xdp,
            ack(isn_ack + 500),
            isn_ack + 1000,
            "a reordered older ACK",
        ),
        (
            Prog::TcIngress,
            ack(isn_ack + 3000),
            isn_ack + 3000,
            "TC ingress: more acknowledged",
        ),
        (
            Prog::Xdp,
            Pkt::tcp(client, port, VIP4, VIP_PORT, RST)
                .with_ack(isn_ack + 9000)
                .build(),
            isn_ack + 3000,
            "a segment without ACK",
        ),
        (
            Prog::Xdp,
            Pkt::tcp(client, port, VIP4, VIP_PORT, ACK | PSH)
                .with_ack(isn_ack + 4000)
                .with_payload(b"GET /hls/demo/1002.ts HTTP/1.1\r\n\r\n")
                .build(),
            isn_ack + 4000,
            "a request with ACK",
        ),
        // Serial-number arithmetic (RFC 1982): across the 2^32 wrap is still forward.
        (
            Prog::Xdp,
            ack(isn_ack.wrapping_add(0x8000_0000 - 1)),
            isn_ack.wrapping_add(0x8000_0000 - 1),
            "a big step forward",
        ),
    ];
    // The number an edge reset would carry first: the newest of the entry's and of the CPUs'
    // cached copies' (`flow_cache::client_acks`).
    let newest = |h: &Harness| {
        let key = switcher_ctl::loader::flow_key(std::net::SocketAddr::new(
            client.parse().unwrap(),
            port,
        ));
        let flow = flow_of(h, client, port).expect("flow");
        acks_of(h, &key, &flow)[0]
    };
    for (prog, frame, want, what) in steps {
        h.run(prog, &frame, 1);
        let got = newest(&h);
        assert_eq!(got, want, "{what}: client_ack {got:#x}, want {want:#x}");
    }
    let wrapped = isn_ack
        .wrapping_add(0x8000_0000 - 1)
        .wrapping_add(0x7000_0000);
    h.run(Prog::Xdp, &ack(wrapped), 1);
    assert_eq!(
        newest(&h),
        wrapped,
        "forward across the wrap of the sequence space"
    );
    // The link addresses stay those of the handshake ACK.
    let flow = flow_of(&h, client, port).expect("flow");
    assert_eq!((flow.hop_mac, flow.origin), ([2, 0, 0, 0, 0, 1], PRIMARY));
}

/// What an edge reset of a pending handshake needs is recorded with it (docs/ARCHITECTURE.md,
/// "Edge-originated resets"): the SYN's sequence number (the client's ISN) and its Ethernet
/// addresses, through XDP and TC ingress alike; a retransmitted SYN with another ISN (a new
/// connection from the same port) replaces them. The reset switcher-ctl builds from the entry
/// acknowledges that ISN + 1 and goes back the way the SYN came.
#[test]
fn handshakes_record_the_clients_isn_and_link_addresses() {
    let mut h = Harness::new();
    h.set_active(PRIMARY);
    let vip = h.vip();
    for (prog, client, port, isn) in [
        (Prog::Xdp, "10.1.8.9", 48001, 0x5555_0001u32),
        (Prog::TcIngress, "10.1.8.9", 48002, 0xffff_ffff),
    ] {
        let syn = Pkt::tcp(client, port, VIP4, VIP_PORT, SYN)
            .with_seq(isn)
            .build();
        assert_eq!(h.run(prog, &syn, 1).0, pass_verdict(prog));
        let key = switcher_ctl::loader::flow_key(SocketAddr::new(client.parse().unwrap(), port));
        let (_, hs) = h
            .handshakes()
            .into_iter()
            .find(|(k, _)| *k == key)
            .expect("the SYN's handshake");
        // `Pkt` frames go from 02:00:00:00:00:01 to 02:00:00:00:00:02.
        assert_eq!(
            (hs.client_isn, hs.hop_mac, hs.local_mac, hs.origin),
            (isn, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], PRIMARY),
            "{prog:?}"
        );
        let spec = switcher_ctl::edge_rst::handshake_rst(&vip, &key, &hs).expect("a reset");
        assert_eq!(spec.ack, Some(isn.wrapping_add(1)), "{prog:?}");
        assert_eq!(spec.seq, 0, "no SYN-ACK seen");
        assert_eq!(
            (spec.dst_mac, spec.src_mac),
            ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        );
        // The origin's SYN-ACK: a client that got it expects the origin's ISN + 1.
        let syn_ack = Pkt::tcp(VIP4, 8081, client, port, SYN | ACK).build();
        assert_eq!(h.run(Prog::TcEgress, &syn_ack, 1).0, TC_ACT_OK);
        let (_, hs) = h
            .handshakes()
            .into_iter()
            .find(|(k, _)| *k == key)
            .expect("the handshake");
        let spec = switcher_ctl::edge_rst::handshake_rst(&vip, &key, &hs).expect("a reset");
        assert_eq!(
            (spec.seq, spec.ack),
            (ISN_ACK, Some(isn.wrapping_add(1))),
            "{prog:?}"
        );
    }
    // A new SYN from the same port with another ISN replaces the recorded one.
    let syn = Pkt::tcp("10.1.8.9", 48001, VIP4, VIP_PORT, SYN)
        .with_seq(0x7777)
        .build();
    h.run(Prog::Xdp, &syn, 1);
    let key = switcher_ctl::loader::flow_key("10.1.8.9:48001".parse().unwrap());
    let hs = h
        .handshakes()
        .into_iter()
        .find(|(k, _)| *k == key)
        .expect("the handshake")
        .1;
    assert_eq!(hs.client_isn, 0x7777);
}

/// The handshake table is set-associative (`switcher-ebpf/src/handshakes.rs`): a connection's
/// handshake sits in one of the `HANDSHAKE_WAYS` slots of the bucket its request's flow hash
/// picks, the bucket user space computes too (`handshake_table::bucket_of`). A retransmitted
/// SYN keeps its slot; a SYN finding its bucket full replaces the one handshake its ISN picks
/// and keeps the others (whose ACKs still complete), the lost one's ACK passes to the stack
/// (untracked); a completed handshake empties its slot for the next SYN.
#[test]
fn a_full_handshake_bucket_replaces_one_handshake_and_keeps_the_others() {
    let mut h = Harness::new();
    h.set_active(PRIMARY);
    let vip = h.vip();
    // Five clients whose connections to the VIP share one bucket: one bucket in 65,536, so a
    // search over 10.2.0.0/16 port 40000 finds such a group within a few thousand addresses.
    let ways = switcher_common::HANDSHAKE_WAYS as usize;
    let mut by_bucket: std::collections::HashMap<u32, Vec<SocketAddr>> = Default::default();
    let (bucket, clients) = (0u32..65_536)
        .find_map(|i| {
            let client = SocketAddr::new(Ipv4Addr::from(0x0a02_0000 + i).into(), 40_000);
            let key = switcher_ctl::loader::flow_key(client);
            let b = switcher_ctl::handshake_table::bucket_of(&key, &vip).unwrap();
            let group = by_bucket.entry(b).or_default();
            group.push(client);
            (group.len() == ways + 1).then(|| (b, group.clone()))
        })
        .expect("five clients in one bucket");
    let syn = |c: &SocketAddr, isn: u32| {
        Pkt::tcp(&c.ip().to_string(), c.port(), VIP4, VIP_PORT, SYN).with_seq(isn)
    };
    let held = |h: &Harness, c: &SocketAddr| {
        let key = switcher_ctl::loader::flow_key(*c);
        h.handshakes().iter().any(|(k, _)| *k == key)
    };
    // The first four fill the bucket's slots in order (an empty slot is taken first); their
    // ISNs are 4k + 1, so none would pick slot 2 as the one to replace.
    for (i, c) in clients[..ways].iter().enumerate() {
        assert_eq!(
            h.run(Prog::Xdp, &syn(c, 4 * i as u32 + 1).build(), 1).0,
            XDP_PASS
        );
    }
    assert!(
        clients[..ways].iter().all(|c| held(&h, c)),
        "four handshakes in bucket {bucket}"
    );
    assert_eq!(h.handshakes().len(), ways);
    // User space finds them in the bucket it computes (it reads only that bucket).
    let table = h.handshake_table();
    let key0 = switcher_ctl::loader::flow_key(clients[0]);
    assert!(
        table.record_syn_ack(&key0, &vip, DEFAULT_SEQ),
        "bucket_of is the data plane's bucket"
    );
    // A retransmitted SYN keeps its slot.
    h.run(Prog::Xdp, &syn(&clients[1], 5).build(), 1);
    assert_eq!(
        h.handshakes().len(),
        ways,
        "a retransmission takes no other slot"
    );
    // The fifth, ISN 4k + 2: the bucket is full, so it replaces the handshake in slot 2, the
    // third client's, and only that one.
    assert_eq!(
        h.run(Prog::Xdp, &syn(&clients[ways], 6).build(), 1).0,
        XDP_PASS
    );
    let kept: Vec<bool> = clients.iter().map(|c| held(&h, c)).collect();
    assert_eq!(kept, [true, true, false, true, true], "clients {clients:?}");
    // The third client's ACK finds no handshake: it passes, untracked, and the stack resets it.
    let u = STATS_UNSTEERED as usize;
    let untracked = h.counters()[u].untracked;
    let lost = handshake_ack_of(&syn(&clients[2], 9));
    assert_eq!(h.run(Prog::Xdp, &lost.build(), 1).0, XDP_PASS);
    assert_eq!(h.counters()[u].untracked, untracked + 1);
    assert_eq!(h.origin_of(Map::Flows, clients[2]), None);
    // The first client's handshake (its SYN-ACK recorded above) completes: a flow, and its
    // slot empty, which the next SYN of the bucket takes instead of replacing another.
    let established = h.counters()[PRIMARY as usize].established;
    h.run(
        Prog::Xdp,
        &handshake_ack_of(&syn(&clients[0], 1)).build(),
        1,
    );
    assert_eq!(h.counters()[PRIMARY as usize].established, established + 1);
    assert_eq!(h.origin_of(Map::Flows, clients[0]), Some(PRIMARY));
    assert!(
        !held(&h, &clients[0]),
        "the completed handshake left its slot"
    );
    h.run(Prog::Xdp, &syn(&clients[2], 2).build(), 1);
    let kept: Vec<bool> = clients.iter().map(|c| held(&h, c)).collect();
    assert_eq!(
        kept,
        [false, true, true, true, true],
        "the freed slot was taken"
    );
}

/// The emitter transmits (`XDP_TX`) exactly the frames switcher-ctl builds for an edge reset,
/// bare RSTs and the RST+ACKs of pending handshakes, unchanged, and drops anything else:
/// another source address or port, other flags, data.
#[test]
fn the_reset_emitter_transmits_only_resets_from_the_vip() {
    const XDP_DROP: u32 = 1;
    const XDP_TX: u32 = 3;
    let mut h = Harness::new();
    {
        let p: &mut Xdp = h
            .ebpf
            .program_mut(prog_names::EMIT_RST)
            .unwrap()
            .try_into()
            .unwrap();
        p.load().expect("verifier accepts the emitter");
    }
    let emit = |h: &Harness, frame: &[u8]| -> (u32, Vec<u8>) {
        let p: &Xdp = h
            .ebpf
            .program(prog_names::EMIT_RST)
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = vec![0u8; frame.len() + 64];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let r = p.test_run(opts).expect("BPF_PROG_TEST_RUN");
        (r.return_value, out[..r.data_size_out as usize].to_vec())
    };
    let spec = |vip: &str, client: &str| switcher_ctl::edge_rst::RstSpec {
        vip: vip.parse().unwrap(),
        client: client.parse().unwrap(),
        seq: 0x1234_5678,
        ack: None,
        src_mac: [2, 0, 0, 0, 0, 2],
        dst_mac: [2, 0, 0, 0, 0, 1],
    };
    for (vip, client) in [
        ("10.0.0.1:8080", "10.1.9.9:49000"),
        ("[fd00::1]:8080", "[fd00::99]:49001"),
    ] {
        for ack in [None, Some(0xabcd_0001)] {
            let s = switcher_ctl::edge_rst::RstSpec {
                ack,
                ..spec(vip, client)
            };
            let frame = switcher_ctl::edge_rst::rst_frame(&s).unwrap();
            verify_checksums(&frame).expect("the built reset's checksums");
            let (verdict, out) = emit(&h, &frame);
            assert_eq!(
                verdict, XDP_TX,
                "a reset (ack {ack:?}) from the VIP {vip} is transmitted"
            );
            assert_eq!(out, frame, "unchanged");
        }
    }
    let refused: [(&str, Vec<u8>); 8] = [
        (
            "from another address",
            switcher_ctl::edge_rst::rst_frame(&spec("10.0.0.9:8080", "10.1.9.9:49000")).unwrap(),
        ),
        (
            "from another port (an origin's)",
            switcher_ctl::edge_rst::rst_frame(&spec("10.0.0.1:8081", "10.1.9.9:49000")).unwrap(),
        ),
        (
            "a SYN",
            Pkt::tcp(VIP4, VIP_PORT, "10.1.9.9", 49000, SYN).build(),
        ),
        (
            "RST with SYN",
            Pkt::tcp(VIP4, VIP_PORT, "10.1.9.9", 49000, RST | SYN).build(),
        ),
        (
            "an ACK",
            Pkt::tcp(VIP4, VIP_PORT, "10.1.9.9", 49000, ACK).build(),
        ),
        (
            "an RST carrying data",
            Pkt::tcp(VIP4, VIP_PORT, "10.1.9.9", 49000, RST)
                .with_payload(b"x")
                .build(),
        ),
        (
            "an RST+ACK carrying data",
            Pkt::tcp(VIP4, VIP_PORT, "10.1.9.9", 49000, RST | ACK)
                .with_payload(b"x")
                .build(),
        ),
        (
            "UDP",
            Pkt::tcp(VIP4, VIP_PORT, "10.1.9.9", 49000, 0)
                .proto(UDP)
                .with_payload(b"x")
                .build(),
        ),
    ];
    for (what, frame) in refused {
        assert_eq!(emit(&h, &frame).0, XDP_DROP, "{what} is dropped");
    }
    // Steering disabled: nothing is transmitted.
    h.configure(false);
    let frame =
        switcher_ctl::edge_rst::rst_frame(&spec("10.0.0.1:8080", "10.1.9.9:49000")).unwrap();
    assert_eq!(emit(&h, &frame).0, XDP_DROP);
}

/// The batch delete (`mapbatch::delete`, what paced drains and the deletion of retired flows
/// use) deletes the keys that are there and names those that are not (evicted, or forgotten
/// by the data plane meanwhile: they must get no edge reset), wherever they sit in the batch.
#[test]
fn batch_delete_names_the_keys_already_gone() {
    let mut h = Harness::new();
    let key = |i: u8| switcher_ctl::loader::flow_key(SocketAddr::from(([10, 3, 0, i], 40_000)));
    let mut flows: HashMap<_, FlowKey, FlowValue> =
        HashMap::try_from(h.ebpf.map_mut(map_names::FLOWS).unwrap()).unwrap();
    let value = FlowValue {
        origin: PRIMARY,
        flags: switcher_common::FLOW_SEEN_SYN,
        client_ack: 0,
        hop_mac: [0; 6],
        local_mac: [0; 6],
        generation: 0,
    };
    for i in [1, 2, 4] {
        flows.insert(key(i), value, 0).unwrap();
    }
    // Missing at the front, in the middle (twice in a row) and at the end.
    let batch = [key(0), key(1), key(3), key(5), key(2), key(4), key(6)];
    let map: &dyn aya::maps::IterableMap<FlowKey, FlowValue> = &flows;
    let deleted = switcher_ctl::mapbatch::delete(map.map().fd().as_fd(), &batch).unwrap();
    assert_eq!(deleted.count, 3);
    assert_eq!(deleted.missing, vec![0, 2, 3, 6]);
    assert_eq!(flows.keys().count(), 0, "every present key deleted");
}

/// A handshake slot that a SYN on another CPU has claimed and is writing
/// (`HANDSHAKE_CLAIMED_FAMILY`) is never written by a second SYN, even one whose ISN picks it
/// as the slot to replace: the claim is one compare-and-swap, so two SYNs never mix one slot.
/// The SYN that finds no slot it can claim is still steered; it just records no handshake.
/// Once the slot is released, a SYN takes it, and its completed handshake empties it again.
#[test]
fn a_claimed_handshake_slot_is_left_to_its_writer() {
    let mut h = Harness::new();
    h.set_active(PRIMARY);
    let vip = h.vip();
    let client: SocketAddr = "10.4.0.9:40123".parse().unwrap();
    let key = switcher_ctl::loader::flow_key(client);
    let bucket = switcher_ctl::handshake_table::bucket_of(&key, &vip).unwrap();
    let claimed = HandshakeSlot {
        key: FlowKey {
            client_addr: [0; 16],
            client_port_be: 0,
            family: switcher_common::HANDSHAKE_CLAIMED_FAMILY,
        },
        hs: Handshake {
            origin: u32::MAX,
            flags: 0,
            expect_ack: 0,
            client_isn: 0,
            hop_mac: [0; 6],
            local_mac: [0; 6],
        },
    };
    let set_bucket = |h: &mut Harness, slots: [HandshakeSlot; 4]| {
        let mut a: Array<_, HandshakeBucket> =
            Array::try_from(h.ebpf.map_mut(map_names::HANDSHAKES).unwrap()).unwrap();
        a.set(bucket, HandshakeBucket { slots }, 0).unwrap();
    };
    let get_bucket = |h: &mut Harness| {
        let a: Array<_, HandshakeBucket> =
            Array::try_from(h.ebpf.map_mut(map_names::HANDSHAKES).unwrap()).unwrap();
        a.get(&bucket, 0).unwrap()
    };
    set_bucket(&mut h, [claimed; 4]);
    let syn = Pkt::tcp("10.4.0.9", 40123, VIP4, VIP_PORT, SYN).with_seq(7);
    let (verdict, out, _) = h.run(Prog::Xdp, &syn.build(), 1);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(
        u16::from_be_bytes([out[36], out[37]]),
        8081,
        "the SYN is steered all the same"
    );
    assert_eq!(
        get_bucket(&mut h).slots,
        [claimed; 4],
        "no claimed slot written (ISN 7 picks slot 3 to replace)"
    );
    assert!(
        h.handshakes().is_empty(),
        "a claimed slot is not a handshake"
    );

    // Released (emptied) slot 1: the next SYN claims and fills it; the others stay claimed.
    let mut slots = [claimed; 4];
    slots[1].key.family = 0;
    set_bucket(&mut h, slots);
    h.run(Prog::Xdp, &syn.build(), 1);
    let b = get_bucket(&mut h);
    assert_eq!(b.slots[1].key, key, "the SYN took the empty slot");
    assert_eq!(b.slots[1].hs.origin, PRIMARY);
    assert_eq!(b.slots[1].hs.client_isn, 7);
    assert_eq!([b.slots[0], b.slots[2], b.slots[3]], [claimed; 3]);

    // Its handshake completes (SYN-ACK recorded, then the client's ACK): a flow, and the
    // slot emptied by the compare-and-swap of `remove`.
    assert!(h.handshake_table().record_syn_ack(&key, &vip, DEFAULT_SEQ));
    h.run(Prog::Xdp, &handshake_ack_of(&syn).build(), 1);
    assert_eq!(h.origin_of(Map::Flows, client), Some(PRIMARY));
    assert!(
        !get_bucket(&mut h).slots[1].is_used(),
        "the slot is empty again"
    );
}

// ---------------------------------------------------------------------------------------------
// The flow cache (`switcher-ebpf/src/flow_cache.rs`): each CPU's copies of the flows it steers.

/// A segment of `client`:`port` to the VIP acknowledging `ack` (the origin's ISN + `ack`).
fn ack_of(client: &str, port: u16, ack: u32) -> Vec<u8> {
    Pkt::tcp(client, port, VIP4, VIP_PORT, ACK)
        .with_ack(DEFAULT_SEQ.wrapping_add(ack))
        .build()
}

/// The destination port of a rewritten IPv4 frame.
fn dport_of(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[36], frame[37]])
}

/// Dates the copies of `key` 2^20 ticks ahead: their hits do not refresh (the age is compared
/// signed) until [`make_refresh_due`] or a refill, however long the test takes.
fn postpone_refresh(h: &mut Harness, key: &FlowKey) {
    h.shift_refreshed(key, 1 << 20);
}

/// Dates the copies of `key` 2^21 ticks back (2^20 from a [`postpone_refresh`]): their next
/// hit refreshes.
fn make_refresh_due(h: &mut Harness, key: &FlowKey) {
    h.shift_refreshed(key, (1u32 << 21).wrapping_neg());
}

/// Each CPU fills its own part of `SWITCHER_FLOW_CACHE`, at the index user space reads it
/// from (`switcher_common::flow_cache_index`): a packet steered on CPU c leaves a copy at
/// (c, slot) and on no other CPU's part, and the loader sized the map for every possible CPU.
#[test]
fn each_cpu_fills_its_own_part_of_the_flow_cache() {
    // The CPUs this test may run on (all of them, unless started under a narrower mask).
    let allowed: Vec<usize> = {
        // SAFETY: libc calls on a zeroed `cpu_set_t`, for this thread (pid 0).
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(
                libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set),
                0
            );
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        }
    };
    let mut h = Harness::new();
    h.set_active(PRIMARY);
    assert_eq!(
        h.flow_cache().cpus() * switcher_common::FLOW_CACHE_SLOTS,
        switcher_ctl::flow_cache::entries(),
        "sized for every possible CPU"
    );
    assert!(
        allowed.iter().all(|&c| (c as u32) < h.flow_cache().cpus()),
        "every CPU has its part"
    );
    let (client, port) = ("10.1.9.7", 49007);
    assert_eq!(establish(&mut h, client, port), PRIMARY);
    let key = switcher_ctl::loader::flow_key(SocketAddr::new(client.parse().unwrap(), port));
    let slot = switcher_common::flow_cache_slot(&key.words());
    for &cpu in &allowed {
        test_kit::process::pin_to_cpu(cpu);
        h.flow_cache().clear();
        let (verdict, out, _) = h.run(Prog::Xdp, &ack_of(client, port, 1), 1);
        assert_eq!((verdict, dport_of(&out)), (XDP_PASS, 8081));
        let copies = h.flow_cache().of_slot(slot);
        let holders: Vec<usize> = copies
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key == key.words())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(holders, vec![cpu], "the copy is in CPU {cpu}'s part only");
    }
}

/// A copy steers its flow until user space says the entry changed: an entry deleted without
/// [`switcher_ctl::flow_cache::Versions::invalidate`] is still steered from the copy (why
/// every delete and flag change in `Pinned` is followed by it), and after it the flow's next
/// packet is untracked. A copy of an origin that was retired (its generation moved, no entry
/// changed) is not used either.
#[test]
fn a_copy_is_used_until_its_entry_changes_or_its_origin_is_retired() {
    test_kit::process::pin_to_current_cpu();
    let mut h = Harness::new();
    h.set_active(PRIMARY);
    let (client, port) = ("10.1.9.1", 49001);
    assert_eq!(establish(&mut h, client, port), PRIMARY);
    let key = switcher_ctl::loader::flow_key(SocketAddr::new(client.parse().unwrap(), port));
    let seg = ack_of(client, port, 1);
    let (verdict, out, _) = h.run(Prog::Xdp, &seg, 1);
    assert_eq!((verdict, dport_of(&out)), (XDP_PASS, 8081));
    let copies = h
        .flow_cache()
        .of_slot(switcher_common::flow_cache_slot(&key.words()));
    assert!(
        copies
            .iter()
            .any(|s| s.key == key.words() && s.origin == PRIMARY),
        "the steered packet left a copy on its CPU"
    );

    // No refresh due, whatever time the test takes (a refresh would find the entry gone).
    postpone_refresh(&mut h, &key);
    let mut flows: HashMap<_, FlowKey, FlowValue> =
        HashMap::try_from(h.ebpf.map_mut(map_names::FLOWS).unwrap()).unwrap();
    let entry = flows.get(&key, 0).unwrap();
    flows.remove(&key).unwrap();
    let (verdict, out, _) = h.run(Prog::Xdp, &seg, 1);
    assert_eq!(
        (verdict, dport_of(&out)),
        (XDP_PASS, 8081),
        "without invalidation the copy still steers the deleted flow"
    );
    h.cache_versions().invalidate([&key]);
    let untracked = |h: &Harness| h.counters()[U as usize].untracked;
    let before = untracked(&h);
    let (verdict, out, _) = h.run(Prog::Xdp, &seg, 1);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, seg, "after invalidation the deleted flow is untracked");
    assert_eq!(untracked(&h), before + 1);

    // The entry back, copied again by a packet; then the primary retired.
    let mut flows: HashMap<_, FlowKey, FlowValue> =
        HashMap::try_from(h.ebpf.map_mut(map_names::FLOWS).unwrap()).unwrap();
    flows.insert(key, entry, 0).unwrap();
    h.cache_versions().invalidate([&key]);
    for _ in 0..2 {
        let (_, out, _) = h.run(Prog::Xdp, &seg, 1);
        assert_eq!(dport_of(&out), 8081);
    }
    assert_eq!(h.retire(PRIMARY), 1);
    let before = untracked(&h);
    let (_, out, _) = h.run(Prog::Xdp, &seg, 1);
    assert_eq!(out, seg, "a retired origin's copy does not steer");
    assert_eq!(untracked(&h), before + 1);
    assert!(
        flow_of(&h, client, port).is_none(),
        "the retired entry is forgotten"
    );
}

/// Two client ports of `client` whose flows share a flow-cache slot (the first such pair from
/// port 50,000 on).
fn ports_sharing_a_slot(client: &str) -> (u16, u16) {
    let slot = |port: u16| {
        let key = switcher_ctl::loader::flow_key(SocketAddr::new(client.parse().unwrap(), port));
        switcher_common::flow_cache_slot(&key.words())
    };
    let mut seen = std::collections::HashMap::new();
    (50_000..u16::MAX)
        .find_map(|p| seen.insert(slot(p), p).map(|a| (a, p)))
        .expect("two client ports sharing a cache slot")
}

/// The acknowledgment numbers an edge reset of `key` -> `flow` would carry
/// (`flow_cache::client_acks` over every CPU's copy in the key's slot).
fn acks_of(h: &Harness, key: &FlowKey, flow: &FlowValue) -> Vec<u32> {
    let slot = switcher_common::flow_cache_slot(&key.words());
    let copies = h.flow_cache().of_slot(slot);
    switcher_ctl::flow_cache::client_acks(&copies, key, flow)
}

/// While a flow's packets hit its copy, the newest acknowledgment number is in the copy only;
/// when another flow takes the slot, the copy gives it back to the flow's entry, so an edge
/// reset never starts from a number older than the flow's last miss. The other flow's
/// handshake completes after the copy was made, which moves the slot's version: the number is
/// given back all the same (the entry still holds the one the copy started from).
#[test]
fn a_copy_gives_its_ack_back_when_another_flow_takes_its_slot() {
    test_kit::process::pin_to_current_cpu();
    let mut h = Harness::new();
    h.set_active(PRIMARY);
    let client = "10.1.9.2";
    let key =
        |port: u16| switcher_ctl::loader::flow_key(SocketAddr::new(client.parse().unwrap(), port));
    let (a, b) = ports_sharing_a_slot(client);
    assert_eq!(establish(&mut h, client, a), PRIMARY);

    h.run(Prog::Xdp, &ack_of(client, a, 5_000), 1);
    postpone_refresh(&mut h, &key(a));
    h.run(Prog::Xdp, &ack_of(client, a, 7_000), 1);
    let entry = |h: &Harness| flow_of(h, client, a).unwrap();
    assert_eq!(
        entry(&h).client_ack,
        DEFAULT_SEQ.wrapping_add(5_000),
        "the miss moved the entry, the hit only the copy"
    );
    assert_eq!(
        acks_of(&h, &key(a), &entry(&h)),
        [
            DEFAULT_SEQ.wrapping_add(7_000),
            DEFAULT_SEQ.wrapping_add(5_000)
        ],
        "an edge reset tries the copy's number first, then the entry's"
    );

    // Flow b's handshake (its promotion moves the slot's version), then its packet takes the
    // slot.
    assert_eq!(establish(&mut h, client, b), PRIMARY);
    let (_, out, _) = h.run(Prog::Xdp, &ack_of(client, b, 100), 1);
    assert_eq!(dport_of(&out), 8081);
    assert_eq!(
        entry(&h).client_ack,
        DEFAULT_SEQ.wrapping_add(7_000),
        "the copy gave its number back"
    );
}

/// A hit on a copy `FLOW_CACHE_REFRESH_TICKS` jiffies old looks the entry up: the
/// acknowledgment number reaches the entry, and an entry that left the table without a version
/// change (as the LRU evicts) stops steering the flow at the copy's next refresh; its packet is
/// then untracked. Hits before that touch only the copy.
#[test]
fn a_copy_refreshes_from_its_entry_when_it_is_old() {
    test_kit::process::pin_to_current_cpu();
    let mut h = Harness::new();
    h.set_active(PRIMARY);
    let (client, port) = ("10.1.9.3", 49003);
    assert_eq!(establish(&mut h, client, port), PRIMARY);
    let key = switcher_ctl::loader::flow_key(SocketAddr::new(client.parse().unwrap(), port));
    let entry = |h: &Harness| flow_of(h, client, port).unwrap().client_ack;
    // The first packet misses (fills the copy, writes the entry), the next one hits.
    h.run(Prog::Xdp, &ack_of(client, port, 100), 1);
    postpone_refresh(&mut h, &key);
    let (_, out, _) = h.run(Prog::Xdp, &ack_of(client, port, 200), 1);
    assert_eq!(dport_of(&out), 8081);
    assert_eq!(
        entry(&h),
        DEFAULT_SEQ.wrapping_add(100),
        "a hit with no refresh due moves only the copy"
    );
    make_refresh_due(&mut h, &key);
    let (_, out, _) = h.run(Prog::Xdp, &ack_of(client, port, 300), 1);
    assert_eq!(dport_of(&out), 8081);
    assert_eq!(
        entry(&h),
        DEFAULT_SEQ.wrapping_add(300),
        "the refresh wrote the copy's number through"
    );

    // The entry leaves the table with no version change, as an LRU eviction does.
    let mut flows: HashMap<_, FlowKey, FlowValue> =
        HashMap::try_from(h.ebpf.map_mut(map_names::FLOWS).unwrap()).unwrap();
    flows.remove(&key).unwrap();
    let seg = ack_of(client, port, 100_000);
    postpone_refresh(&mut h, &key);
    let (_, out, _) = h.run(Prog::Xdp, &seg, 1);
    assert_eq!(
        dport_of(&out),
        8081,
        "the copy steers until its next refresh"
    );
    make_refresh_due(&mut h, &key);
    let untracked = h.counters()[U as usize].untracked;
    let (_, out, _) = h.run(Prog::Xdp, &seg, 1);
    assert_eq!(out, seg, "the refresh found the entry gone: untracked");
    assert_eq!(h.counters()[U as usize].untracked, untracked + 1);
    assert!(
        !h.flow_cache()
            .of_slot(switcher_common::flow_cache_slot(&key.words()))
            .iter()
            .any(|c| c.key == key.words()),
        "and the copy is gone"
    );
    let (_, out, _) = h.run(Prog::Xdp, &seg, 1);
    assert_eq!(out, seg, "and stays untracked");
    assert_eq!(h.counters()[U as usize].untracked, untracked + 2);
}

/// A copy never moves its entry's acknowledgment number back: when the entry got ahead of the
/// copy (another CPU's miss or refresh), the refresh takes the entry's number into the copy,
/// so a later give-back (another flow taking the slot) writes nothing older.
#[test]
fn a_copy_never_moves_its_entrys_ack_back() {
    test_kit::process::pin_to_current_cpu();
    let mut h = Harness::new();
    h.set_active(PRIMARY);
    let client = "10.1.9.4";
    let key =
        |port: u16| switcher_ctl::loader::flow_key(SocketAddr::new(client.parse().unwrap(), port));
    let (a, b) = ports_sharing_a_slot(client);
    assert_eq!(establish(&mut h, client, a), PRIMARY);
    assert_eq!(establish(&mut h, client, b), PRIMARY);
    h.run(Prog::Xdp, &ack_of(client, a, 100), 1);

    // The entry gets ahead of the copy, as another CPU's packets would move it.
    let ahead = DEFAULT_SEQ.wrapping_add(50_000);
    let mut flows: HashMap<_, FlowKey, FlowValue> =
        HashMap::try_from(h.ebpf.map_mut(map_names::FLOWS).unwrap()).unwrap();
    let mut v = flows.get(&key(a), 0).unwrap();
    v.client_ack = ahead;
    flows.insert(key(a), v, 0).unwrap();
    // A hit that refreshes, acknowledging less than the entry holds.
    make_refresh_due(&mut h, &key(a));
    h.run(Prog::Xdp, &ack_of(client, a, 200), 1);
    // Flow b takes the slot.
    let (_, out, _) = h.run(Prog::Xdp, &ack_of(client, b, 100), 1);
    assert_eq!(dport_of(&out), 8081);
    assert_eq!(
        flow_of(&h, client, a).unwrap().client_ack,
        ahead,
        "the entry's number did not move back"
    );
}

/// `switcher_mark_finishing`, run by user space through its pin (`finish_mark::FinishMarker`,
/// what `Pinned::abort_flows` uses), sets `FLOW_FINISHING` and nothing else: what the data
/// plane wrote in the entry (the client's acknowledgment number, TC egress's
/// `FLOW_ORIGIN_CLOSED`) stays, and the CPU's copy of the flow is made stale, so the flow's
/// next request is held at once. A flow without an entry is reported, not created, and an
/// entry of another origin or generation than the caller read (a later connection of the
/// client port) is left alone.
#[test]
fn marking_a_flow_finishing_changes_only_its_flag() {
    use switcher_common::{FLOW_FINISHING, FLOW_ORIGIN_CLOSED, FinishMark};
    const XDP_DROP: u32 = 1;
    test_kit::process::pin_to_current_cpu();
    let mut h = Harness::new();
    h.set_active(PRIMARY);
    let (client, port) = ("10.1.9.5", 49005);
    assert_eq!(establish(&mut h, client, port), PRIMARY);
    let key = switcher_ctl::loader::flow_key(SocketAddr::new(client.parse().unwrap(), port));
    let request = |ack: u32| {
        Pkt::tcp(client, port, VIP4, VIP_PORT, ACK | PSH)
            .with_ack(DEFAULT_SEQ.wrapping_add(ack))
            .with_payload(b"GET /hls/demo/1001.ts HTTP/1.1\r\n\r\n")
            .build()
    };
    // A request (a miss: the entry records its acknowledgment number, the CPU keeps a copy),
    // then the origin's FIN (TC egress marks the entry closed).
    assert_eq!(dport_of(&h.run(Prog::Xdp, &request(700), 1).1), 8081);
    let fin = Pkt::tcp(VIP4, 8081, client, port, FIN | ACK).build();
    assert_eq!(h.run(Prog::TcEgress, &fin, 1).0, TC_ACT_OK);
    let before = flow_of(&h, client, port).unwrap();
    assert_eq!(before.client_ack, DEFAULT_SEQ.wrapping_add(700));
    assert_ne!(
        before.flags & FLOW_ORIGIN_CLOSED,
        0,
        "the FIN closed the flow"
    );

    // The marker through a pin, as switcher-ctl opens it.
    let pin = std::path::PathBuf::from(format!("/sys/fs/bpf/swfx-mark-{}", std::process::id()));
    struct Unpin(std::path::PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _unpin = Unpin(pin.clone());
    {
        let p: &mut Xdp = h
            .ebpf
            .program_mut(prog_names::MARK_FINISHING)
            .unwrap()
            .try_into()
            .unwrap();
        p.load().expect("verifier accepts the marker");
        p.pin(&pin).expect("pin the marker");
    }
    let marker = switcher_ctl::finish_mark::FinishMarker::open(&pin).unwrap();
    let mark = FinishMark::of(&key, &before);
    for other in [
        FinishMark {
            generation: before.generation.wrapping_add(1),
            ..mark
        },
        FinishMark {
            origin: before.origin ^ 1,
            ..mark
        },
    ] {
        assert!(
            !marker.mark(&other).unwrap(),
            "an entry of another connection is not marked: {other:?}"
        );
        assert_eq!(flow_of(&h, client, port).unwrap(), before, "{other:?}");
    }
    assert!(marker.mark(&mark).unwrap(), "the flow has an entry");
    let after = flow_of(&h, client, port).unwrap();
    assert_eq!(
        after,
        FlowValue {
            flags: before.flags | FLOW_FINISHING,
            ..before
        },
        "only the flag changed"
    );
    let (verdict, _, _) = h.run(Prog::Xdp, &request(800), 1);
    assert_eq!(
        verdict, XDP_DROP,
        "the next request is held: the copy did not steer it"
    );
    assert_eq!(h.counters()[PRIMARY as usize].held, 1);
    // That miss refilled the CPU's copy, flag included: the one after it is held by the copy
    // (the fast path of a cache hit), counted once, and its acknowledgement still steered.
    let (verdict, _, _) = h.run(Prog::Xdp, &request(900), 1);
    assert_eq!(verdict, XDP_DROP, "a request held from the copy");
    assert_eq!(h.counters()[PRIMARY as usize].held, 2, "counted once");
    let bare_ack = Pkt::tcp(client, port, VIP4, VIP_PORT, ACK)
        .with_ack(DEFAULT_SEQ.wrapping_add(900))
        .build();
    assert_eq!(dport_of(&h.run(Prog::Xdp, &bare_ack, 1).1), 8081);
    assert_eq!(h.counters()[PRIMARY as usize].held, 2, "an ACK is not held");

    let gone = switcher_ctl::loader::flow_key(SocketAddr::new(client.parse().unwrap(), 1));
    assert!(
        !marker.mark(&FinishMark { key: gone, ..mark }).unwrap(),
        "no entry, nothing marked"
    );
    assert!(flow_of(&h, client, 1).is_none(), "and none created");
}

/// Every program in the object passes the verifier, the never-attached bench programs too: a
/// change that makes one of them unloadable (LLVM spilling a register the verifier calls
/// unreadable, say) fails here, not first in `cargo xtask bench datapath`.
#[test]
fn every_program_in_the_object_passes_the_verifier() {
    let mut ebpf = switcher_ctl::loader::size_for_cpus(&mut EbpfLoader::new())
        .load(switcher_ctl::loader::EBPF_OBJECT)
        .expect("load eBPF object");
    let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_string()).collect();
    for name in &names {
        let loaded = match ebpf.program_mut(name).expect("program") {
            aya::programs::Program::Xdp(p) => p.load(),
            aya::programs::Program::SchedClassifier(p) => p.load(),
            _ => panic!("{name}: a program type the data plane does not use"),
        };
        if let Err(e) = loaded {
            panic!("{name} does not load: {e:?}");
        }
    }
    assert!(
        names.iter().any(|n| n == prog_names::XDP_INGRESS)
            && names.iter().any(|n| n == prog_names::BENCH_CACHE_MISS),
        "the product's and the bench's programs are in the object: {names:?}"
    );
}

/// The tracked packet's fast path (`fast_tracked` in switcher-ebpf's main.rs, which parses the
/// commonest IPv4 shape itself) takes the decisions the full parse takes, for packets of a
/// flow this CPU holds a copy of: a segment with TCP options (a timestamp ACK, the commonest
/// ACK) is steered, the options not counted as data, so a finishing flow's bare ACK passes
/// and its request is held; the same flow's segments with a lying IP length, a zero one, or IP
/// options pass unchanged, counted as the full parse counts them, and are not rewritten.
#[test]
fn the_fast_path_decides_as_the_full_parse_does() {
    use switcher_common::FLOW_FINISHING;
    const XDP_DROP: u32 = 1;
    test_kit::process::pin_to_current_cpu();
    let mut h = Harness::new();
    h.set_active(PRIMARY);
    let (client, port) = ("10.1.9.9", 49009);
    assert_eq!(establish(&mut h, client, port), PRIMARY);
    let key = switcher_ctl::loader::flow_key(SocketAddr::new(client.parse().unwrap(), port));
    // 12 bytes of TCP options (NOP, NOP, timestamps) before `data`: the data offset says 8
    // words. XDP checks no checksum, so the builder's (over a 20-byte header) does not matter.
    let with_options = |data: &[u8]| {
        let mut payload = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
        payload.extend_from_slice(data);
        let mut b = Pkt::tcp(client, port, VIP4, VIP_PORT, ACK | PSH)
            .with_ack(DEFAULT_SEQ.wrapping_add(1))
            .with_payload(&payload)
            .build();
        b[14 + 20 + 12] = 8 << 4;
        b
    };
    let bare_ack = with_options(b"");
    let request = with_options(b"GET /hls/demo/1002.ts HTTP/1.1\r\n\r\n");

    // Steered from the copy (the first packet fills it, the second hits).
    for _ in 0..2 {
        let (verdict, out, _) = h.run(Prog::Xdp, &request, 1);
        assert_eq!((verdict, dport_of(&out)), (XDP_PASS, 8081));
    }

    // The flow finishing, as user space marks it (the entry's flag, then the version), and
    // its copy refilled by a bare ACK (a miss) and then hit.
    let mut flows: HashMap<_, FlowKey, FlowValue> =
        HashMap::try_from(h.ebpf.map_mut(map_names::FLOWS).unwrap()).unwrap();
    let mut entry = flows.get(&key, 0).unwrap();
    entry.flags |= FLOW_FINISHING;
    flows.insert(key, entry, 0).unwrap();
    h.cache_versions().invalidate([&key]);
    postpone_refresh(&mut h, &key);
    for what in ["miss", "hit"] {
        let (verdict, out, _) = h.run(Prog::Xdp, &bare_ack, 1);
        assert_eq!(
            (verdict, dport_of(&out)),
            (XDP_PASS, 8081),
            "a finishing flow's bare ACK with options is steered ({what})"
        );
    }
    let held = h.counters()[PRIMARY as usize].held;
    let (verdict, _, _) = h.run(Prog::Xdp, &request, 1);
    assert_eq!(verdict, XDP_DROP, "a finishing flow's request is held");
    assert_eq!(h.counters()[PRIMARY as usize].held, held + 1);

    // Malformed or optioned IP headers of the same flow: passed unchanged, counted, whatever
    // the copy says.
    let lying = {
        let mut b = request.clone();
        b.truncate(b.len() - 4);
        b
    };
    let zero = {
        let mut b = request.clone();
        b[16] = 0;
        b[17] = 0;
        b
    };
    let mut optioned = Pkt::tcp(client, port, VIP4, VIP_PORT, ACK)
        .with_ack(DEFAULT_SEQ.wrapping_add(1))
        .with_payload(b"GET / HTTP/1.1\r\n\r\n");
    optioned.ip_options = vec![1, 1, 1, 0];
    let optioned = optioned.build();
    for (what, frame, counter) in [
        ("an IP length beyond the frame", lying, "malformed"),
        ("an IP length of 0 on a small frame", zero, "malformed"),
        ("IP options", optioned, "ip_options"),
    ] {
        let before = h.counters();
        let (verdict, out, _) = h.run(Prog::Xdp, &frame, 1);
        let after = h.counters();
        assert_eq!(verdict, XDP_PASS, "{what}");
        assert_eq!(out, frame, "{what}: passed unchanged");
        let u = U as usize;
        let count = |c: &Counters| match counter {
            "malformed" => c.malformed,
            _ => c.ip_options,
        };
        assert_eq!(count(&after[u]), count(&before[u]) + 1, "{what}: counted");
        assert_eq!(
            after[PRIMARY as usize].rewrites, before[PRIMARY as usize].rewrites,
            "{what}: not rewritten"
        );
    }
}

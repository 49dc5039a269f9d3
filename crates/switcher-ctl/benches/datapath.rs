//! `cargo xtask bench datapath` (needs root).
//!
//! 1. The XDP program's cost per packet through BPF_PROG_TEST_RUN with repeat = 1,000,000, for
//!    a SYN to the VIP (flow lookup + handshake insert), a packet of a tracked flow (its
//!    CPU's copy of the flow; the miss, a flow lookup, is a floor row), a packet not for the
//!    VIP, a SYN straight to an origin (stale-flow check), a
//!    SYN with the listener check, a bare ACK of no flow (what a spoofed flood costs), and the
//!    SYN, the tracked flow and the packet not for the VIP over IPv6 (the VIP is dual-stack),
//!    against an empty XDP_PASS program on the same packet in the same run; every repetition
//!    is checked to take the path it is named after (see `prog_test_run`). Then rows that a
//!    repeated packet cannot measure: a flood of SYNs from distinct clients, the handshake
//!    ACK that inserts the flow, and tracked flows of many clients in turn, which the flow
//!    cache does not all hold (see [`distinct_rows`]). And the same request path through TC
//!    ingress, `switcher_tc_ingress` against an empty TC program on an skb (see
//!    [`tc_ingress_rows`]).
//! 2. wrk through VIP:8080 against wrk straight to the origin (:8081), same run, same origin
//!    process (`target/release/origin`): client ns -> veth -> edge ns with native XDP, and on
//!    `lo` inside a namespace with generic XDP and with TC ingress.
//!
//! 3. The control plane's data-plane reads and writes at 200,000 tracked flows: what a scrape
//!    reads (`flow_counts` + `counters`), `GET /healthz` and `GET /metrics` from the admin
//!    server, retiring an origin's flows as the controller does
//!    (`abort_flows`; and `retire_flows`), and deleting the retired entries afterwards
//!    (`reap_retired`), against the map walks they replaced (peer, same run).
//!
//! Appends a markdown section to BENCHMARKS.md. `SWITCHER_BENCH_WRK=0` skips part 2,
//! `SWITCHER_BENCH_SCALE=0` part 3 (part 1 needs no release binaries and takes a minute or
//! two). `SWITCHER_BENCH_PEER_OBJ=<object>` times an earlier build's data plane in the same
//! rounds as this one (part 1); `SWITCHER_BENCH_ROUNDS=<n>` sets part 1's rounds (default 11).
//! `SWITCHER_BENCH_PROFILE_SECS=<n>` measures nothing and writes nothing: it runs the tracked
//! flow's packet (or `SWITCHER_BENCH_PROFILE_PACKET`: `tracked6`, `syn`, `elsewhere`,
//! `untracked`) through `switcher_xdp` (or `SWITCHER_BENCH_PROFILE_PROG`) for n seconds, for a
//! profiler; `scripts/profile-datapath.py` runs it under `perf record` and gives the samples
//! by source line, and the x86 instructions the packet runs.
//!
//! # How part 1 measures (and what the empty program costs)
//! Each BPF_PROG_TEST_RUN call runs the program `REPEAT` times on one buffer. Three clocks
//! time each call; the table reports the first and the ratios of all three:
//! * **CPU time** of the calling thread (`CLOCK_THREAD_CPUTIME_ID`) across the call, divided
//!   by the repeat count: sub-ns resolution, and time other tasks run on the CPU is not
//!   counted (the kernel's loop calls `cond_resched()` and the machine is shared). The
//!   syscall's own entry, exit and buffer copies (a few microseconds) add under 0.01 ns a
//!   packet. Interrupts that hit the CPU during the call are charged to it, alike for every
//!   program since the programs alternate call by call.
//! * the kernel's own **`duration`**: its `ktime` average over the repetitions, truncated to
//!   whole ns (at 7-20 ns that alone is 5-15% quantisation: why it is no longer the headline).
//! * **wall** time (`CLOCK_MONOTONIC`) across the call: includes preemption by other tasks.
//!
//! The measuring thread is pinned to one CPU, and the programs alternate call by call
//! (ours, the earlier build's, the empty one; which goes first rotates from round to round),
//! [`ROUNDS`] times (or `SWITCHER_BENCH_ROUNDS`); every ratio is taken within one round, then the median and range over the
//! rounds are reported.
//!
//! The empty program (`bench_xdp_pass`, `return XDP_PASS`) costs what every XDP program pays
//! in this harness before doing anything: the kernel's test loop (`bpf_test_run`: the
//! repetition counter, a `signal_pending` and a `need_resched` check per repetition), the
//! call into the program (an indirect call through a retpoline on a CPU with that Spectre v2
//! mitigation, as this VM has), and the JITed program's prologue and epilogue. None of that is
//! data-plane work, and its share differs between machines (mitigations, clock speed): a ratio
//! against it depends on the machine, so the rows also give the absolute ns above it, and the
//! header names the mitigations ([`mitigations`]). How much: on an Intel Xeon VM with
//! retpolines the empty program took 8.3 ns and a `SWITCHER_FLOWS` lookup 14 ns above it; on
//! an AMD EPYC VM with retpolines and the SRSO "Safe RET" mitigation (every kernel `ret`
//! through a thunk) 35 ns and 43 ns (the lookup calls `__htab_map_lookup_elem` and `memcmp`,
//! two returns; array lookups are inlined and pay none), so the same build's tracked flow was
//! 4.3x there and 2.7x here (BENCHMARKS.md, 2026-12-02, session 7).
use std::{
    fmt::Write as _,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{Program, SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use switcher_common::{
    BENCH_COUNT_FAILED, BENCH_COUNT_FRESH, BENCH_COUNT_FRESH_HASH, BENCH_COUNT_FRESH_LRU, Counters,
    FLOW_SEEN_SYN, FlowKey, FlowValue, HANDSHAKE_ISN_SEEN, Handshake, MAX_FLOWS, MaglevTable,
    ORIGIN_CONFIGURED, ORIGIN_FALLBACK, Origin, STATS_SLOTS, STATS_UNSTEERED, VIP_CHECK_LISTENER,
    VIP_ENABLED, VIP_HAS_V4, VIP_HAS_V6, VipConfig, bench_map_names, map_names, prog_names,
};
use switcher_ctl::{
    dataplane::DataPlane,
    handshake_table::HandshakeTable,
    loader::{AttachConfig, AttachMode, Pinned},
};
use test_kit::netns::{self, BpfFs, EDGE_V4, Netns, Pair};
use test_kit::packet::{ACK, Pkt, SYN};
use test_kit::process::pin_to_cpu;

const REPEAT: u32 = 1_000_000;

/// The never-attached programs besides the empty one (`switcher-ebpf/src/bench.rs`).
const BENCH_ONLY: [&str; 14] = [
    prog_names::BENCH_FLOW_LOOKUP,
    prog_names::BENCH_FRESH_KEY,
    prog_names::BENCH_HS_LRU_FRESH,
    prog_names::BENCH_HS_LRU_SAME,
    prog_names::BENCH_HS_HASH_FRESH,
    prog_names::BENCH_HS_HASH_SAME,
    prog_names::BENCH_CACHE_MISS,
    prog_names::BENCH_NFV_BEFORE,
    prog_names::BENCH_NFV_NO_FAST,
    prog_names::BENCH_TF_PARSE,
    prog_names::BENCH_TF_COPY,
    prog_names::BENCH_TF_ORIGIN,
    prog_names::BENCH_TF_REWRITE,
    prog_names::BENCH_TF_COUNT,
];
/// Repetitions of each BPF_PROG_TEST_RUN measurement, ours and the empty program's
/// interleaved; the median and the range of the per-round ratios are reported. Odd, so the
/// median is a measured round. `SWITCHER_BENCH_ROUNDS` overrides it (made odd).
const ROUNDS: usize = 11;

/// The number of rounds: [`ROUNDS`] or `SWITCHER_BENCH_ROUNDS`.
fn rounds() -> usize {
    std::env::var("SWITCHER_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(ROUNDS, |n| n.max(1) | 1)
}
/// Tracked flows of the control-plane measurements (issue 15 item 6).
const SCALE_FLOWS: u32 = 200_000;
const WRK_SECONDS: &str = "4";
/// Direct/VIP wrk pairs per measurement; medians are reported.
const PAIRS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Which counter proves a repetition took the path a case is meant to measure.
#[derive(Clone, Copy)]
enum Taken {
    /// Steered and rewritten toward origin 0.
    Rewrite,
    /// Passed unchanged (unsteered slot).
    Pass,
    /// Passed unchanged as a packet of no flow (unsteered slot, `untracked`).
    Untracked,
}

fn stats(ebpf: &Ebpf) -> Vec<Counters> {
    let map: PerCpuArray<_, Counters> =
        PerCpuArray::try_from(ebpf.map(map_names::STATS).unwrap()).unwrap();
    (0..STATS_SLOTS)
        .map(|slot| {
            let mut sum = Counters::default();
            for c in map.get(&slot, 0).unwrap().iter() {
                sum.add(c);
            }
            sum
        })
        .collect()
}

/// BPF_PROG_TEST_RUN with `repeat` runs the program again and again on the *same* buffer,
/// which the program rewrites in place: a request rewritten from VIP:8080 to an origin's
/// port would, from the second repetition on, be a packet to that port, not to the VIP, and
/// the run would time the pass path. So origin 0 here is the VIP's own address and port (an
/// identity rewrite: the same lookups, checksum arithmetic and stores, and the same packet
/// every repetition), and each case checks, from the counters, that every repetition took
/// the path it is named after.
/// Loads an object's XDP programs and configures its maps for the measurements: VIP
/// 10.0.0.1:8080, origin 0 at the VIP's own address and port (identity rewrite, see above),
/// origin 1 on 8082, every lookup-table slot to origin 0 (when the object has the table), and
/// the tracked flows' entries (one IPv4, one IPv6: [`tracked_keys`]).
fn load_for_bench(object: &[u8], vip: VipConfig, tracked: &[FlowKey]) -> Ebpf {
    // The bench-only maps are declared with one entry (the steering load creates them too):
    // the insert floors' maps get the size the LRU `SWITCHER_HANDSHAKES` had (`MAX_FLOWS`).
    // (Names an earlier build's object lacks are ignored.)
    let mut loader = EbpfLoader::new();
    // Sized for every CPU as the product sizes it, unless the object is an earlier build's
    // whose flow cache is a per-CPU array (its declared size is already per CPU; sizing it
    // would give every CPU all CPUs' slots).
    let cache_type = aya_obj::Object::parse(object)
        .ok()
        .and_then(|o| o.maps.get(map_names::FLOW_CACHE).map(|m| m.map_type()));
    if cache_type == Some(aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32) {
        switcher_ctl::loader::size_for_cpus(&mut loader);
    }
    let mut ebpf = loader
        .map_max_entries(bench_map_names::HS_LRU, MAX_FLOWS)
        .map_max_entries(bench_map_names::HS_HASH, MAX_FLOWS)
        .load(object)
        .expect("load object");
    for name in [prog_names::XDP_INGRESS, prog_names::BENCH_XDP_PASS] {
        let p: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
        p.load().expect("load program");
    }
    // TC ingress (an earlier build's object lacks the empty TC program).
    for name in [prog_names::TC_INGRESS, prog_names::BENCH_TC_PASS] {
        if let Some(p) = ebpf.program_mut(name) {
            let p: &mut SchedClassifier = p.try_into().unwrap();
            p.load().unwrap_or_else(|e| panic!("load {name}: {e:?}"));
        }
    }
    // Building blocks, floors and variants of this build only (an earlier build's object may
    // lack them).
    for name in BENCH_ONLY {
        if let Some(p) = ebpf.program_mut(name) {
            let p: &mut Xdp = p.try_into().unwrap();
            p.load().unwrap_or_else(|e| panic!("load {name}: {e:?}"));
        }
    }
    set_vip(&mut ebpf, vip);
    for (i, port) in [(0, 8080u16), (1, 8082)] {
        let origin = Origin {
            addr_v4: [0; 4],
            addr_v6: [0; 16],
            port_be: port.to_be(),
            flags: ORIGIN_CONFIGURED | ORIGIN_FALLBACK,
            generation: 0,
        };
        let map = ebpf.map_mut(map_names::ORIGINS).unwrap();
        if let Ok(mut origins) = Array::<_, Origin>::try_from(&mut *map) {
            origins.set(i, origin, 0).unwrap();
        } else {
            let mut origins = Array::<_, legacy::Origin>::try_from(map).expect("origins map");
            origins.set(i, legacy::Origin::from(origin), 0).unwrap();
        }
    }
    // Every slot of the lookup table to origin 0 (policy failover), as `set_active(0)` does;
    // the SYN case pays for the flow hash and the table read like any table. (An object of
    // an earlier build has no table; its zeroed `SWITCHER_ACTIVE` says origin 0.)
    if ebpf.map(map_names::MAGLEV).is_some() {
        publish_uniform(&mut ebpf, 0);
    }
    insert_flows(&mut ebpf, tracked);
    ebpf
}

/// Enters `keys` in `SWITCHER_FLOWS` as completed handshakes leave them, pinned to origin 0
/// (an earlier build's value layout too).
fn insert_flows(ebpf: &mut Ebpf, keys: &[FlowKey]) {
    let flow = FlowValue {
        origin: 0,
        flags: FLOW_SEEN_SYN,
        client_ack: 0,
        hop_mac: [0; 6],
        local_mac: [0; 6],
        generation: 0,
    };
    let map = ebpf.map_mut(map_names::FLOWS).unwrap();
    if let Ok(mut flows) = HashMap::<_, FlowKey, FlowValue>::try_from(&mut *map) {
        for key in keys {
            flows.insert(key, flow, 0).unwrap();
        }
    } else {
        let mut flows = HashMap::<_, FlowKey, legacy::FlowValue>::try_from(map).expect("flows map");
        for key in keys {
            flows.insert(key, legacy::FlowValue::from(flow), 0).unwrap();
        }
    }
}

/// The map values of builds before origin generations (BENCHMARKS.md, 2026-12-02, session 8),
/// 24 bytes each, so an earlier build's object (`SWITCHER_BENCH_PEER_OBJ`) can be set up.
mod legacy {
    /// `switcher_common::Origin` without `generation`.
    #[repr(C, align(4))]
    #[derive(Clone, Copy)]
    pub struct Origin {
        addr_v4: [u8; 4],
        addr_v6: [u8; 16],
        port_be: u16,
        flags: u16,
    }

    /// `switcher_common::FlowValue` without `generation`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct FlowValue {
        origin: u32,
        flags: u32,
        client_ack: u32,
        hop_mac: [u8; 6],
        local_mac: [u8; 6],
    }

    // SAFETY: `repr(C)`, integers and byte arrays only, no padding (24 bytes each).
    unsafe impl aya::Pod for Origin {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowValue {}
    const _: () = assert!(core::mem::size_of::<Origin>() == 24);
    const _: () = assert!(core::mem::size_of::<FlowValue>() == 24);

    impl From<switcher_common::Origin> for Origin {
        fn from(o: switcher_common::Origin) -> Self {
            Origin {
                addr_v4: o.addr_v4,
                addr_v6: o.addr_v6,
                port_be: o.port_be,
                flags: o.flags,
            }
        }
    }

    impl From<switcher_common::FlowValue> for FlowValue {
        fn from(f: switcher_common::FlowValue) -> Self {
            FlowValue {
                origin: f.origin,
                flags: f.flags,
                client_ack: f.client_ack,
                hop_mac: f.hop_mac,
                local_mac: f.local_mac,
            }
        }
    }
}

fn set_vip(ebpf: &mut Ebpf, vip: VipConfig) {
    Array::<_, VipConfig>::try_from(ebpf.map_mut(map_names::CONFIG).unwrap())
        .unwrap()
        .set(0, vip, 0)
        .unwrap();
}

/// One BPF_PROG_TEST_RUN call's cost per repetition, ns, by the three clocks of the module
/// docs.
#[derive(Clone, Copy)]
struct Cost {
    /// CPU time of the calling thread / repetitions.
    cpu: f64,
    /// The kernel's `duration` (whole ns).
    kernel: f64,
    /// CLOCK_MONOTONIC / repetitions.
    wall: f64,
    /// The program's return code (of the last repetition).
    ret: u32,
}

/// CPU time of the calling thread, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs program `prog` of `ebpf` (XDP, or TC on an skb) `repeat` times on `data` (one call).
fn test_run(ebpf: &Ebpf, prog: &str, data: &[u8], repeat: u32) -> Cost {
    let p = ebpf.program(prog).unwrap();
    let mut buf = vec![0u8; data.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(data);
    opts.data_out = Some(&mut buf);
    opts.repeat = repeat;
    let wall = Instant::now();
    let cpu = thread_cpu_ns();
    let r = match p {
        Program::Xdp(p) => p.test_run(opts),
        Program::SchedClassifier(p) => p.test_run(opts),
        _ => panic!("{prog}: neither XDP nor TC"),
    }
    .expect("test run");
    let cpu = thread_cpu_ns() - cpu;
    let wall = wall.elapsed();
    assert!(
        buf[..data.len()] == *data,
        "{prog}: the packet must come out as it went in (identity rewrite)"
    );
    let n = f64::from(repeat.max(1));
    Cost {
        cpu: cpu as f64 / n,
        kernel: r.duration.as_nanos() as f64,
        wall: wall.as_nanos() as f64 / n,
        ret: r.return_value,
    }
}

/// Median, min and max of `v`.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let lo = v.iter().cloned().fold(f64::MAX, f64::min);
    let hi = v.iter().cloned().fold(f64::MIN, f64::max);
    (median(v.to_vec()), lo, hi)
}

/// Per-round ratios `a[i] / b[i]` of one clock.
fn ratios(a: &[Cost], b: &[Cost], clock: fn(&Cost) -> f64) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| clock(x) / clock(y)).collect()
}

/// The object of an earlier build named by `SWITCHER_BENCH_PEER_OBJ`, loaded like ours. It
/// must have this build's map layout for the maps the bench writes, but for
/// `SWITCHER_HANDSHAKES`, which [`SynAckWriter`] writes in either shape.
fn load_peer(vip: VipConfig, tracked: &[FlowKey]) -> Option<(String, Ebpf)> {
    let path = std::env::var("SWITCHER_BENCH_PEER_OBJ").ok()?;
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // Aligned copy: the object loader wants 8-byte alignment.
    let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
    // SAFETY: a byte view of the u64 buffer, as long as it.
    let view =
        unsafe { std::slice::from_raw_parts_mut(aligned.as_mut_ptr().cast::<u8>(), bytes.len()) };
    view.copy_from_slice(&bytes);
    Some((path, load_for_bench(view, vip, tracked)))
}

fn prog_test_run(out: &mut String) {
    // One CPU for every measurement of this part (the last one: CPU 0 takes more of the
    // machine's interrupts), so the programs compared see the same core and caches.
    pin_to_cpu(nproc() - 1);
    // Progress on stderr (the table goes to stdout and BENCHMARKS.md).
    let started = Instant::now();
    // Dual-stack, as `cargo xtask run` serves it (10.0.0.1 and fd00::1).
    let vip = VipConfig {
        addr_v4: [10, 0, 0, 1],
        addr_v6: VIP_V6.parse::<std::net::Ipv6Addr>().unwrap().octets(),
        port_be: 8080u16.to_be(),
        flags: VIP_ENABLED | VIP_HAS_V4 | VIP_HAS_V6,
        ifindex: 0,
        attach_mode: 0,
    };
    // The tracked flows' entries, as a completed handshake leaves them.
    let tracked = tracked_keys();
    let mut ebpf = load_for_bench(switcher_ctl::loader::EBPF_OBJECT, vip, &tracked);
    // An earlier build's object (e.g. main's), measured in the same rounds: a change's effect
    // without the drift between runs of a shared machine.
    let (peer_path, mut peer) = match load_peer(vip, &tracked) {
        Some((path, ebpf)) => (Some(path), Some(ebpf)),
        None => (None, None),
    };

    // The profile mode (see the module's docs): the tracked flow's packet and nothing else.
    if let Ok(secs) = std::env::var("SWITCHER_BENCH_PROFILE_SECS") {
        let secs: u64 = secs.parse().expect("SWITCHER_BENCH_PROFILE_SECS: seconds");
        let prog =
            std::env::var("SWITCHER_BENCH_PROFILE_PROG").unwrap_or_else(|_| "switcher_xdp".into());
        // Which packet: `SWITCHER_BENCH_PROFILE_PACKET`, one of the timed rows'.
        let packet =
            std::env::var("SWITCHER_BENCH_PROFILE_PACKET").unwrap_or_else(|_| "tracked".into());
        let pkt = match packet.as_str() {
            "tracked" => tracked_pkt(),
            "tracked6" => tracked_pkt_v6(),
            "syn" => Pkt::tcp("10.1.1.1", 40001, "10.0.0.1", 8080, SYN).build(),
            "elsewhere" => Pkt::tcp("10.1.1.1", 40000, "10.0.0.9", 443, ACK).build(),
            "untracked" => Pkt::tcp("10.1.1.3", 40003, "10.0.0.1", 8080, ACK).build(),
            other => panic!(
                "SWITCHER_BENCH_PROFILE_PACKET={other}: tracked, tracked6, syn, elsewhere or \
                 untracked"
            ),
        };
        // The flow's copy in this CPU's cache, as the timed rows have it (a `bench_tf_*` step
        // only reads it).
        test_run(&ebpf, "switcher_xdp", &tracked_pkt(), 1);
        test_run(&ebpf, "switcher_xdp", &tracked_pkt_v6(), 1);
        let until = Instant::now() + Duration::from_secs(secs);
        let mut calls = 0u64;
        while Instant::now() < until {
            let ret = test_run(&ebpf, &prog, &pkt, REPEAT).ret;
            // 2: XDP_PASS, every one of these packets' (a `bench_tf_*` step returns
            // XDP_ABORTED off the tracked path).
            assert_eq!(ret, 2, "{prog} did not pass the {packet} packet");
            calls += 1;
        }
        eprintln!("profile: {calls} calls of {REPEAT} repetitions of {prog}");
        std::process::exit(0);
    }
    // A SYN from a port with no flow (a SYN of a tracked flow follows the flow instead).
    let syn = Pkt::tcp("10.1.1.1", 40001, "10.0.0.1", 8080, SYN).build();
    let cases = [
        (
            "SYN to the VIP, the same SYN repeated (flow lookup + handshake record + rewrite)",
            syn.clone(),
            Taken::Rewrite,
            false,
        ),
        (
            "tracked flow, 1 KiB payload (flow-cache hit + rewrite; a copy 32 ticks old also a lookup)",
            tracked_pkt(),
            Taken::Rewrite,
            false,
        ),
        (
            "packet not for the VIP (parse + pass)",
            Pkt::tcp("10.1.1.1", 40000, "10.0.0.9", 443, ACK).build(),
            Taken::Pass,
            false,
        ),
        (
            "SYN straight to an origin (stale-flow lookup + pass)",
            Pkt::tcp("10.1.1.2", 40001, "10.0.0.1", 8082, SYN).build(),
            Taken::Pass,
            false,
        ),
        (
            "bare ACK of no flow (a spoofed flood: flow and handshake lookups + pass)",
            Pkt::tcp("10.1.1.3", 40003, "10.0.0.1", 8080, ACK).build(),
            Taken::Untracked,
            false,
        ),
        (
            "IPv6: SYN to the VIP, the same SYN repeated",
            Pkt::tcp("fd01::1", 40001, VIP_V6, 8080, SYN).build(),
            Taken::Rewrite,
            false,
        ),
        (
            "IPv6: tracked flow, 1 KiB payload",
            tracked_pkt_v6(),
            Taken::Rewrite,
            false,
        ),
        (
            "IPv6: packet not for the VIP",
            Pkt::tcp("fd01::1", 40000, "fd00::9", 443, ACK).build(),
            Taken::Pass,
            false,
        ),
        (
            "SYN, listener check on (production setting; nothing listens here, so every origin is looked up)",
            Pkt::tcp("10.1.1.2", 40002, "10.0.0.1", 8080, SYN).build(),
            Taken::Rewrite,
            true,
        ),
    ];
    writeln!(
        out,
        "### XDP program cost, BPF_PROG_TEST_RUN, repeat = {REPEAT}, {} interleaved rounds on one pinned CPU\n",
        rounds()
    )
    .unwrap();
    writeln!(
        out,
        "ns/pkt by the calling thread's CPU time; ratios to the empty program per round (median, range), \
         by CPU time, and, for comparison, by the kernel's whole-ns `duration` and by wall time.\n"
    )
    .unwrap();
    if let Some(path) = &peer_path {
        writeln!(
            out,
            "Peer: the object `{path}` (an earlier build), run in the same rounds.\n"
        )
        .unwrap();
        writeln!(
            out,
            "| packet | switcher_xdp ns/pkt | earlier build ns/pkt | empty XDP_PASS ns/pkt | ratio (median) | ratio range | earlier build's ratio (median) | ratio by kernel `duration` (this / earlier) | ratio by wall time (this / earlier) |"
        )
        .unwrap();
        writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|").unwrap();
    } else {
        writeln!(
            out,
            "| packet | switcher_xdp ns/pkt | empty XDP_PASS ns/pkt | ratio (median) | ratio range | ratio by kernel `duration` | ratio by wall time |"
        )
        .unwrap();
        writeln!(out, "|---|---:|---:|---:|---:|---:|---:|").unwrap();
    }
    let mut empty_cpu = Vec::new();
    for (desc, data, path, listener_check) in cases {
        if listener_check {
            let checked = VipConfig {
                flags: vip.flags | VIP_CHECK_LISTENER,
                ..vip
            };
            set_vip(&mut ebpf, checked);
            if let Some(p) = peer.as_mut() {
                set_vip(p, checked);
            }
        }
        let (ours, theirs, base) = interleaved_with_peer(
            &ebpf,
            peer.as_ref(),
            [prog_names::XDP_INGRESS, prog_names::BENCH_XDP_PASS],
            &data,
            path,
            desc,
        );
        let cpu = |c: &Cost| c.cpu;
        let kernel = |c: &Cost| c.kernel;
        let wall = |c: &Cost| c.wall;
        let (r, lo, hi) = spread(&ratios(&ours, &base, cpu));
        let o = median(ours.iter().map(cpu).collect());
        let b = median(base.iter().map(cpu).collect());
        empty_cpu.extend(base.iter().map(cpu));
        if peer.is_some() {
            let (pr, _, _) = spread(&ratios(&theirs, &base, cpu));
            let (kr, klo, khi) = spread(&ratios(&ours, &theirs, kernel));
            let (wr, wlo, whi) = spread(&ratios(&ours, &theirs, wall));
            writeln!(
                out,
                "| {desc} | {o:.2} | {:.2} | {b:.2} | {r:.2}x | {lo:.2}x..{hi:.2}x | {pr:.2}x | {kr:.2} ({klo:.2}..{khi:.2}) | {wr:.2} ({wlo:.2}..{whi:.2}) |",
                median(theirs.iter().map(cpu).collect()),
            )
            .unwrap();
        } else {
            let (kr, klo, khi) = spread(&ratios(&ours, &base, kernel));
            let (wr, wlo, whi) = spread(&ratios(&ours, &base, wall));
            writeln!(
                out,
                "| {desc} | {o:.2} | {b:.2} | {r:.2}x | {lo:.2}x..{hi:.2}x | {kr:.2}x ({klo:.2}..{khi:.2}) | {wr:.2}x ({wlo:.2}..{whi:.2}) |",
            )
            .unwrap();
        }
    }
    set_vip(&mut ebpf, vip);
    if let Some(p) = peer.as_mut() {
        set_vip(p, vip);
    }
    parallel_syns(out, &mut ebpf, vip, peer.is_some());
    out.push('\n');
    tc_ingress_rows(out, &ebpf, peer.as_ref());
    eprintln!("datapath bench: first table done, {:?}", started.elapsed());
    flow_lookup_alone(out, &ebpf, &syn);
    floors(out, &ebpf, &tracked_pkt());
    eprintln!("datapath bench: floors done, {:?}", started.elapsed());
    parse_variants(out, &ebpf);
    eprintln!("datapath bench: variants done, {:?}", started.elapsed());
    tracked_steps(out, &ebpf);
    eprintln!(
        "datapath bench: tracked-flow steps done, {:?}",
        started.elapsed()
    );
    distinct_rows(out, &mut ebpf, peer.as_mut(), median(empty_cpu));
}

/// Runs `prog` of this build, the same program of the earlier build (`peer`, if any) and the
/// empty program `base` of this build on `data`, [`rounds`] times each, interleaved so drift
/// on a shared machine hits them alike, with which goes first rotating from round to round,
/// so none always runs after the same one; returns their costs (ours, the peer's, the empty
/// program's). Asserts from the counters that every repetition of ours took `path`, and that
/// none completed a handshake (the tracked case must be the established flow's path).
fn interleaved_with_peer(
    ebpf: &Ebpf,
    peer: Option<&Ebpf>,
    [prog, base_prog]: [&str; 2],
    data: &[u8],
    path: Taken,
    desc: &str,
) -> (Vec<Cost>, Vec<Cost>, Vec<Cost>) {
    let before = stats(ebpf);
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut base = Vec::new();
    for round in 0..rounds() {
        for turn in 0..3 {
            match (round + turn) % 3 {
                0 => ours.push(test_run(ebpf, prog, data, REPEAT)),
                1 => {
                    if let Some(p) = peer {
                        theirs.push(test_run(p, prog, data, REPEAT));
                    }
                }
                _ => base.push(test_run(ebpf, base_prog, data, REPEAT)),
            }
        }
    }
    let after = stats(ebpf);
    let runs = u64::from(REPEAT) * rounds() as u64;
    let u = STATS_UNSTEERED as usize;
    let took = match path {
        Taken::Rewrite => after[0].rewrites - before[0].rewrites,
        Taken::Pass => after[u].passes - before[u].passes,
        Taken::Untracked => after[u].untracked - before[u].untracked,
    };
    assert_eq!(
        after[0].established, before[0].established,
        "{desc}: unexpected handshake completion"
    );
    assert_eq!(
        took, runs,
        "{desc}: not every repetition took the measured path"
    );
    (ours, theirs, base)
}

/// The request path through TC ingress (`switcher_tc_ingress`, for interfaces where XDP
/// cannot attach, and `lo` under `cargo xtask run`) against the empty TC program
/// (`bench_tc_pass`) on the same packet, interleaved like the XDP rows, each repetition checked
/// to take its path. A TC program runs on an skb that the test run builds once per call, and
/// rewrites through the kernel's checksum and store helpers (calls), where XDP writes the
/// packet itself: its cost is not comparable to XDP's, only to its own baseline and to the
/// earlier build's `switcher_tc_ingress` (`SWITCHER_BENCH_PEER_OBJ`).
fn tc_ingress_rows(out: &mut String, ebpf: &Ebpf, peer: Option<&Ebpf>) {
    let cases = [
        (
            "SYN to the VIP, the same SYN repeated",
            Pkt::tcp("10.1.1.1", 40001, "10.0.0.1", 8080, SYN).build(),
            Taken::Rewrite,
        ),
        (
            "tracked flow, 1 KiB payload (flow-cache hit + rewrite by helpers)",
            tracked_pkt(),
            Taken::Rewrite,
        ),
        (
            "packet not for the VIP",
            Pkt::tcp("10.1.1.1", 40000, "10.0.0.9", 443, ACK).build(),
            Taken::Pass,
        ),
        (
            "IPv6: tracked flow, 1 KiB payload",
            tracked_pkt_v6(),
            Taken::Rewrite,
        ),
    ];
    writeln!(
        out,
        "### TC ingress program cost (`switcher_tc_ingress`), BPF_PROG_TEST_RUN on an skb, repeat = {REPEAT}, {} interleaved rounds on one pinned CPU\n",
        rounds()
    )
    .unwrap();
    writeln!(
        out,
        "ns/pkt by the calling thread's CPU time; ratios to the empty TC program (`bench_tc_pass`, TC_ACT_OK) per round (median, range).{}\n",
        if peer.is_some() {
            " The earlier build's program in the same rounds, compared by the kernel's `duration`."
        } else {
            ""
        }
    )
    .unwrap();
    writeln!(
        out,
        "| packet | switcher_tc_ingress ns/pkt | empty TC ns/pkt | ratio (median) | ratio range | ns above empty (median) |{}",
        if peer.is_some() {
            " earlier build ns/pkt | ratio by kernel `duration` (this / earlier) |"
        } else {
            ""
        }
    )
    .unwrap();
    writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|{}",
        if peer.is_some() { "---:|---:|" } else { "" }
    )
    .unwrap();
    for (desc, data, path) in cases {
        let (ours, theirs, base) = interleaved_with_peer(
            ebpf,
            peer,
            [prog_names::TC_INGRESS, prog_names::BENCH_TC_PASS],
            &data,
            path,
            &format!("TC ingress, {desc}"),
        );
        // 0: TC_ACT_OK, every one of these packets'.
        assert!(
            ours.iter().chain(&theirs).all(|c| c.ret == 0),
            "TC ingress, {desc}: a run did not return TC_ACT_OK"
        );
        let cpu = |c: &Cost| c.cpu;
        let (r, lo, hi) = spread(&ratios(&ours, &base, cpu));
        let o = median(ours.iter().map(cpu).collect());
        let b = median(base.iter().map(cpu).collect());
        let above = median(ours.iter().zip(&base).map(|(x, y)| x.cpu - y.cpu).collect());
        write!(
            out,
            "| {desc} | {o:.2} | {b:.2} | {r:.2}x | {lo:.2}x..{hi:.2}x | {above:.1} |"
        )
        .unwrap();
        if peer.is_some() {
            let (kr, klo, khi) = spread(&ratios(&ours, &theirs, |c| c.kernel));
            write!(
                out,
                " {:.2} | {kr:.2} ({klo:.2}..{khi:.2}) |",
                median(theirs.iter().map(cpu).collect())
            )
            .unwrap();
        }
        out.push('\n');
    }
    out.push('\n');
}

/// The cost of the one `SWITCHER_FLOWS` lookup (a hit) of the tracked-flow path, alone:
/// `bench_flow_lookup` against the empty program, interleaved like the rows above. What is
/// left of a tracked flow's cost beyond it is parsing, the VIP and origin reads, the rewrite
/// and the counter update.
fn flow_lookup_alone(out: &mut String, ebpf: &Ebpf, data: &[u8]) {
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for round in 0..rounds() {
        // Which one goes first alternates from round to round.
        for turn in 0..2 {
            if (round + turn) % 2 == 0 {
                ours.push(test_run(ebpf, prog_names::BENCH_FLOW_LOOKUP, data, REPEAT));
            } else {
                base.push(test_run(ebpf, prog_names::BENCH_XDP_PASS, data, REPEAT));
            }
        }
    }
    let (r, lo, hi) = spread(&ratios(&ours, &base, |c| c.cpu));
    let o = median(ours.iter().map(|c| c.cpu).collect());
    let b = median(base.iter().map(|c| c.cpu).collect());
    writeln!(
        out,
        "Building block: one `SWITCHER_FLOWS` lookup (a hit, 20-byte key) and nothing else (`bench_flow_lookup`): {o:.2} ns/pkt against the empty program's {b:.2}, {r:.2}x ({lo:.2}x..{hi:.2}x), i.e. {:.1} ns for the lookup.\n",
        o - b
    )
    .unwrap();
}

/// The VIP's IPv6 address in part 1.
const VIP_V6: &str = "fd00::1";
/// The tracked flows' clients (IPv4, IPv6), each with the VIP address it talks to; their port
/// is [`TRACKED_PORT`].
const TRACKED: [(&str, &str); 2] = [("10.1.1.1", "10.0.0.1"), ("fd01::1", VIP_V6)];
/// The tracked flows' client port.
const TRACKED_PORT: u16 = 40000;

/// The flows part 1 tracks ([`TRACKED`]).
fn tracked_keys() -> [FlowKey; 2] {
    TRACKED.map(|(client, _)| {
        let ip: std::net::IpAddr = client.parse().unwrap();
        switcher_ctl::loader::flow_key((ip, TRACKED_PORT).into())
    })
}

/// A tracked flow's packet: an ACK with 1 KiB of data from `client`:[`TRACKED_PORT`] to
/// `vip`:8080 (a pair of [`TRACKED`]).
fn tracked_pkt_of((client, vip): (&str, &str)) -> Vec<u8> {
    Pkt::tcp(client, TRACKED_PORT, vip, 8080, ACK)
        .with_payload(&[7u8; 1024])
        .build()
}

/// The IPv6 tracked flow's packet.
fn tracked_pkt_v6() -> Vec<u8> {
    tracked_pkt_of(TRACKED[1])
}

/// The IPv4 tracked flow's packet (10.1.1.1:40000 to the VIP).
fn tracked_pkt() -> Vec<u8> {
    tracked_pkt_of(TRACKED[0])
}

/// This CPU-summed `BENCH_COUNTS` value at `index`.
fn bench_count(ebpf: &Ebpf, index: u32) -> u64 {
    let map: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map(bench_map_names::COUNTS).unwrap()).unwrap();
    map.get(&index, 0).unwrap().iter().sum()
}

/// Runs every program of `progs` on `data` once per round (repeat [`REPEAT`]), in an order
/// that rotates from round to round, for `rounds` rounds: per program, its cost per round.
fn interleaved(ebpf: &Ebpf, progs: &[&str], data: &[u8], rounds: usize) -> Vec<Vec<Cost>> {
    let mut costs = vec![Vec::new(); progs.len()];
    for round in 0..rounds {
        for turn in 0..progs.len() {
            let which = (round + turn) % progs.len();
            costs[which].push(test_run(ebpf, progs[which], data, REPEAT));
        }
    }
    costs
}

/// Per-round differences `a[i] - b[i]` of CPU time, ns.
fn above(a: &[Cost], b: &[Cost]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x.cpu - y.cpu).collect()
}

/// Floors of the targets, measured with never-attached programs in the same rounds as the
/// empty program, `bench_flow_lookup` and `switcher_xdp` on the tracked flow's packet:
/// * what recording state on a SYN costs at the least: one insert into a map shaped like
///   `SWITCHER_HANDSHAKES` (LRU hash, per-CPU lists, `MAX_FLOWS`), of a fresh key each
///   repetition (the LRU evicts once this CPU's share is full, as under a SYN flood) or of
///   the same key (the repeated-SYN row's case), and the same into a preallocated plain hash
///   (fresh: insert + delete of an older key, steady state); `bench_fresh_key` is the fresh
///   key's derivation alone, to subtract;
/// * the tracked flow's packet when its copy in the flow cache is stale (`bench_cache_miss`:
///   `switcher_xdp` after an atomic add that makes it so), every repetition a miss: the
///   `SWITCHER_FLOWS` lookup and the copy's fill, against `switcher_xdp`'s hit.
fn floors(out: &mut String, ebpf: &Ebpf, tracked: &[u8]) {
    const PROGS: [(&str, &str); 9] = [
        (prog_names::BENCH_XDP_PASS, "empty program (baseline)"),
        (
            prog_names::XDP_INGRESS,
            "`switcher_xdp`, tracked flow (the product path: a flow-cache hit; a copy 32 ticks old also a lookup)",
        ),
        (
            prog_names::BENCH_CACHE_MISS,
            "`bench_cache_miss`: `switcher_xdp` with the flow's copy made stale first (an atomic add, then a miss: `SWITCHER_FLOWS` lookup + fill)",
        ),
        (
            prog_names::BENCH_FLOW_LOOKUP,
            "`bench_flow_lookup`: one `SWITCHER_FLOWS` lookup (hit) alone",
        ),
        (
            prog_names::BENCH_FRESH_KEY,
            "`bench_fresh_key`: the fresh key's derivation alone (per-CPU counter + key build)",
        ),
        (
            prog_names::BENCH_HS_LRU_FRESH,
            "`bench_hs_lru_fresh`: insert of a fresh key into an LRU hash of the shape `SWITCHER_HANDSHAKES` had until branch hsarray (evicting)",
        ),
        (
            prog_names::BENCH_HS_LRU_SAME,
            "`bench_hs_lru_same`: insert of the same key into that LRU hash",
        ),
        (
            prog_names::BENCH_HS_HASH_FRESH,
            "`bench_hs_hash_fresh`: insert of a fresh key + delete of an older one, preallocated plain hash",
        ),
        (
            prog_names::BENCH_HS_HASH_SAME,
            "`bench_hs_hash_same`: insert of the same key into the plain hash",
        ),
    ];
    let names: Vec<&str> = PROGS.iter().map(|(p, _)| *p).collect();
    // Fill the tracked flow's copy on this CPU: from then on every `switcher_xdp` repetition
    // hits it (each `bench_cache_miss` run leaves it filled and current again), and every
    // `bench_cache_miss` repetition misses (it makes the copy stale first).
    test_run(ebpf, prog_names::XDP_INGRESS, tracked, 1);
    let before = (
        stats(ebpf)[0],
        bench_count(ebpf, BENCH_COUNT_FAILED),
        [
            BENCH_COUNT_FRESH,
            BENCH_COUNT_FRESH_LRU,
            BENCH_COUNT_FRESH_HASH,
        ]
        .map(|i| bench_count(ebpf, i)),
    );
    let costs = interleaved(ebpf, &names, tracked, rounds());
    let runs = u64::from(REPEAT) * rounds() as u64;
    let after = stats(ebpf)[0];
    assert_eq!(
        after.rewrites - before.0.rewrites,
        2 * runs,
        "switcher_xdp and bench_cache_miss rewrote every repetition"
    );
    assert_eq!(
        bench_count(ebpf, BENCH_COUNT_FAILED) - before.1,
        0,
        "every insert (and every delete of a present key) succeeded"
    );
    for (i, b) in [
        BENCH_COUNT_FRESH,
        BENCH_COUNT_FRESH_LRU,
        BENCH_COUNT_FRESH_HASH,
    ]
    .into_iter()
    .zip(before.2)
    {
        assert_eq!(
            bench_count(ebpf, i) - b,
            runs,
            "every fresh-key repetition drew a new key"
        );
    }
    writeln!(
        out,
        "### Floors: never-attached programs, tracked flow's packet, repeat = {REPEAT}, {} interleaved rounds on one pinned CPU\n",
        rounds()
    )
    .unwrap();
    writeln!(
        out,
        "| program | ns/pkt (median) | ratio to the empty program (median) | ratio range | ns above empty (median of per-round differences, range) |"
    )
    .unwrap();
    writeln!(out, "|---|---:|---:|---:|---:|").unwrap();
    let base = &costs[0];
    for ((_, desc), c) in PROGS.iter().zip(&costs) {
        let (r, lo, hi) = spread(&ratios(c, base, |c| c.cpu));
        let (a, alo, ahi) = spread(&above(c, base));
        writeln!(
            out,
            "| {desc} | {:.2} | {r:.2}x | {lo:.2}x..{hi:.2}x | {a:.1} ({alo:.1}..{ahi:.1}) |",
            median(c.iter().map(|c| c.cpu).collect()),
        )
        .unwrap();
    }
    let (r, lo, hi) = spread(&ratios(&costs[2], &costs[1], |c| c.cpu));
    writeln!(
        out,
        "\n`bench_cache_miss` / `switcher_xdp` on the tracked flow (a miss against a hit), same rounds: {r:.2} ({lo:.2}..{hi:.2}).\n"
    )
    .unwrap();
}

/// Rounds of [`parse_variants`]: three times [`rounds`] (a few ns apart need more rounds, and
/// these programs are cheap).
fn variant_rounds() -> usize {
    3 * rounds()
}

/// The not-for-the-VIP variants (`bench_nfv_*`: `switcher_xdp` with another way of parsing or
/// counting, never attached; `bench_nfv_before` is the path before the product counted early)
/// against `switcher_xdp` and the empty program in the same rounds, on packets not for the VIP
/// (IPv4, IPv6) and on the tracked flow's (a variant must not cost the packets for the VIP
/// more).
fn parse_variants(out: &mut String, ebpf: &Ebpf) {
    const PROGS: [&str; 4] = [
        prog_names::XDP_INGRESS,
        prog_names::BENCH_NFV_BEFORE,
        prog_names::BENCH_NFV_NO_FAST,
        prog_names::BENCH_XDP_PASS,
    ];
    let variants = PROGS.len() - 1;
    writeln!(
        out,
        "### Not-for-the-VIP variants against `switcher_xdp`, repeat = {REPEAT}, {} interleaved rounds on one pinned CPU\n",
        variant_rounds()
    )
    .unwrap();
    writeln!(
        out,
        "| packet | program | ns/pkt (median) | ratio to the empty program (median, range) | ns above empty (median) | ratio to `switcher_xdp` (median, range) |"
    )
    .unwrap();
    writeln!(out, "|---|---|---:|---:|---:|---:|").unwrap();
    let packets = [
        (
            "not for the VIP, IPv4",
            Pkt::tcp("10.1.1.1", 40000, "10.0.0.9", 443, ACK).build(),
            Taken::Pass,
        ),
        (
            "not for the VIP, IPv6",
            Pkt::tcp("fd00::1:1", 40000, "fd00::9", 443, ACK).build(),
            Taken::Pass,
        ),
        ("tracked flow, IPv4", tracked_pkt(), Taken::Rewrite),
    ];
    for (desc, data, path) in packets {
        let before = stats(ebpf);
        let costs = interleaved(ebpf, &PROGS, &data, variant_rounds());
        let after = stats(ebpf);
        let runs = u64::from(REPEAT) * variant_rounds() as u64;
        let u = STATS_UNSTEERED as usize;
        let took = match path {
            Taken::Pass => after[u].passes - before[u].passes,
            _ => after[0].rewrites - before[0].rewrites,
        };
        assert_eq!(
            took,
            variants as u64 * runs,
            "{desc}: every variant took the measured path"
        );
        let base = &costs[variants];
        for (prog, c) in PROGS.iter().zip(&costs).take(variants) {
            let (r, lo, hi) = spread(&ratios(c, base, |c| c.cpu));
            let (p, plo, phi) = spread(&ratios(c, &costs[0], |c| c.cpu));
            let (a, _, _) = spread(&above(c, base));
            writeln!(
                out,
                "| {desc} | `{prog}` | {:.2} | {r:.2}x ({lo:.2}x..{hi:.2}x) | {a:.1} | {p:.3} ({plo:.3}..{phi:.3}) |",
                median(c.iter().map(|c| c.cpu).collect()),
            )
            .unwrap();
        }
        writeln!(
            out,
            "| {desc} | empty program | {:.2} | | | |",
            median(base.iter().map(|c| c.cpu).collect())
        )
        .unwrap();
    }
    out.push('\n');
}

/// The tracked flow's path step by step: the `bench_tf_*` programs (`switcher_xdp`'s tracked
/// path cut after each step, never attached), `switcher_xdp`, `bench_nfv_no_fast` (`switcher_xdp` without the fast exit for packets not for the
/// VIP, which the tracked packet runs through first) and `bench_flow_lookup` (the lookup
/// alone) against the empty program, in [`variant_rounds`] interleaved rounds on the tracked
/// flow's packet. Each row gives its time above the empty program and what it adds to the
/// row before it (median of the per-round differences).
fn tracked_steps(out: &mut String, ebpf: &Ebpf) {
    const PROGS: [(&str, &str); 9] = [
        (prog_names::BENCH_XDP_PASS, "empty program (baseline)"),
        (
            prog_names::BENCH_TF_PARSE,
            "`bench_tf_parse`: VIP lookup, parse (`classify`), VIP check",
        ),
        (
            prog_names::BENCH_TF_COPY,
            "`bench_tf_copy`: + flow key, this CPU's copy of the flow (slot version, slot, key check)",
        ),
        (
            prog_names::BENCH_TF_ORIGIN,
            "`bench_tf_origin`: + the copy's origin and generation, client ACK, refresh check (a lookup if the copy is 32 ticks old), FINISHING check, origin target, remote check",
        ),
        (
            prog_names::BENCH_TF_REWRITE,
            "`bench_tf_rewrite`: + rewrite (ports, checksum)",
        ),
        (
            prog_names::BENCH_TF_COUNT,
            "`bench_tf_count`: + counter update (the whole tracked path)",
        ),
        (
            prog_names::XDP_INGRESS,
            "`switcher_xdp`: the product (the fast exit's tests, then the tracked packet's fast path: the commonest IPv4 shape parsed apart, the same steps after it)",
        ),
        (
            prog_names::BENCH_NFV_NO_FAST,
            "`bench_nfv_no_fast`: `switcher_xdp` without the not-for-the-VIP fast exit (the tracked packet's fast path kept)",
        ),
        (
            prog_names::BENCH_FLOW_LOOKUP,
            "`bench_flow_lookup`: the `SWITCHER_FLOWS` lookup alone (constant key)",
        ),
    ];
    let names: Vec<&str> = PROGS.iter().map(|(p, _)| *p).collect();
    let data = tracked_pkt();
    // The steps read the flow's copy, which `switcher_xdp` makes.
    test_run(ebpf, prog_names::XDP_INGRESS, &data, 1);
    let before = stats(ebpf)[0];
    let costs = interleaved(ebpf, &names, &data, variant_rounds());
    let runs = u64::from(REPEAT) * variant_rounds() as u64;
    assert_eq!(
        stats(ebpf)[0].rewrites - before.rewrites,
        3 * runs,
        "bench_tf_count, switcher_xdp and bench_nfv_no_fast rewrote every repetition"
    );
    for ((prog, _), c) in PROGS.iter().zip(&costs) {
        assert!(
            c.iter().all(|c| c.ret == 2),
            "{prog}: every call returned XDP_PASS (took the tracked path)"
        );
    }
    writeln!(
        out,
        "### Tracked flow step by step, repeat = {REPEAT}, {} interleaved rounds on one pinned CPU
",
        variant_rounds()
    )
    .unwrap();
    writeln!(
        out,
        "| program | ns/pkt (median) | ratio to the empty program (median, range) | ns above empty (median, range) | ns above the row before (median, range) |"
    )
    .unwrap();
    writeln!(out, "|---|---:|---:|---:|---:|").unwrap();
    let base = &costs[0];
    for (i, ((_, desc), c)) in PROGS.iter().zip(&costs).enumerate() {
        let (r, lo, hi) = spread(&ratios(c, base, |c| c.cpu));
        let (a, alo, ahi) = spread(&above(c, base));
        // Steps 1..=6 add to the row before; the last two rows are comparisons.
        let step = if (1..=6).contains(&i) {
            let (d, dlo, dhi) = spread(&above(c, &costs[i - 1]));
            format!("{d:.1} ({dlo:.1}..{dhi:.1})")
        } else {
            String::new()
        };
        writeln!(
            out,
            "| {desc} | {:.2} | {r:.2}x ({lo:.2}x..{hi:.2}x) | {a:.1} ({alo:.1}..{ahi:.1}) | {step} |",
            median(c.iter().map(|c| c.cpu).collect()),
        )
        .unwrap();
    }
    let (r, lo, hi) = spread(&ratios(&costs[6], &costs[7], |c| c.cpu));
    writeln!(
        out,
        "
`switcher_xdp` / `bench_nfv_no_fast` on the tracked flow, same rounds: {r:.3} ({lo:.3}..{hi:.3}).
"
    )
    .unwrap();
}

/// Distinct packets per round in [`distinct_rows`].
const DISTINCT: usize = 20_000;
/// Clients of the "in turn" tracked row that mostly hits (see [`distinct_rows`]).
const FEW_CLIENTS: usize = 1_000;
/// Clients of the "in turn" tracked row that mostly misses: four times `FLOW_CACHE_SLOTS`.
const MANY_CLIENTS: usize = 4 * switcher_common::FLOW_CACHE_SLOTS as usize;

/// `n` clients from the IPv4 address `first` on, one address each, port 30,000.
fn clients_in_turn(first: u32, n: usize) -> Vec<std::net::SocketAddrV4> {
    (0..n)
        .map(|i| std::net::SocketAddrV4::new(std::net::Ipv4Addr::from(first + i as u32), 30_000))
        .collect()
}

/// The initial sequence number the origin "sends" in [`distinct_rows`]' handshakes.
const BENCH_ISN: u32 = 7_000_000;

/// Records the origin's SYN-ACK (ISN [`BENCH_ISN`]) in the handshake entry of a client, as
/// TC egress does: `expect_ack` = ISN + 1 and [`HANDSHAKE_ISN_SEEN`] in the entry the client's
/// SYN left in `SWITCHER_HANDSHAKES`. Written from user space on the measuring thread's CPU.
/// Set up once per program, so that between a SYN and its timed ACK the harness does no more
/// than the write itself (mapping the table for every packet made the ACK row's programs,
/// the empty one too, run colder).
enum SynAckWriter {
    /// This build: the mapped array (`HandshakeTable`), and the VIP (its bucket hash).
    Table(HandshakeTable, VipConfig),
    /// A peer object built before 2026-12-02 (branch hsarray): an LRU hash of `FlowKey` ->
    /// `Handshake`, written with map syscalls.
    Lru,
}

impl SynAckWriter {
    fn new(ebpf: &Ebpf) -> Self {
        match ebpf.map(map_names::HANDSHAKES).unwrap() {
            Map::Array(_) => {
                let table = HandshakeTable::new(
                    switcher_ctl::mmapped::array_of(ebpf, map_names::HANDSHAKES).unwrap(),
                )
                .unwrap();
                let vip = Array::<_, VipConfig>::try_from(ebpf.map(map_names::CONFIG).unwrap())
                    .unwrap()
                    .get(&0, 0)
                    .unwrap();
                SynAckWriter::Table(table, vip)
            }
            _ => SynAckWriter::Lru,
        }
    }

    fn record(&self, ebpf: &mut Ebpf, client: std::net::SocketAddrV4) {
        let key = switcher_ctl::loader::flow_key(client.into());
        match self {
            SynAckWriter::Table(table, vip) => {
                assert!(
                    table.record_syn_ack(&key, vip, BENCH_ISN),
                    "the SYN left a handshake"
                )
            }
            SynAckWriter::Lru => {
                let map = ebpf.map_mut(map_names::HANDSHAKES).unwrap();
                let mut m = HashMap::<_, FlowKey, Handshake>::try_from(map).expect(
                    "an earlier build's handshake table: an LRU hash of FlowKey -> Handshake",
                );
                let mut h = m.get(&key, 0).expect("the SYN left a handshake");
                h.flags |= HANDSHAKE_ISN_SEEN;
                h.expect_ack = BENCH_ISN + 1;
                m.insert(key, h, 0).unwrap();
            }
        }
    }
}

/// Rows a repeated packet cannot measure, because the first repetition changes the state the
/// next one sees: a SYN flood from distinct clients (every SYN a new handshake), and the
/// handshake ACK that inserts a flow (the next repetition would be a tracked flow's packet).
///
/// Method: one BPF_PROG_TEST_RUN call with repeat = 1 per packet, [`DISTINCT`] packets of
/// distinct clients per program per round, the kernel's `duration` (whole ns of that one run)
/// averaged over them; the empty program runs on the same packets the same way. A single
/// call runs cold (the syscall in between evicts some of the program's cache lines) and its
/// `duration` includes reading the clock twice, so everything costs more than in the repeated
/// rows; hence a control row, the same SYN again and again one call each (no new state), and
/// the figure to compare is the difference, ns above the empty program.
/// `equivalent ratio` = 1 + that difference / `empty_repeated` (the empty program's median CPU
/// time per repetition above): the ratio the row would have in the repeated table.
///
/// The ACK row: each client's SYN runs first (not timed), then its SYN-ACK is recorded from
/// user space ([`SynAckWriter`]), then its ACK of that ISN is timed: validation, the
/// flow's LRU insert and the handshake entry's removal. The flows accumulate (all inserted
/// from one CPU, whose LRU list holds `MAX_FLOWS / CPUs`), so later rounds also pay for
/// evicting the oldest flows, as a full edge does. So do the SYN flood's handshakes (20,000
/// a round and program, never completed): they fill the handshake table's buckets (an earlier
/// build's LRU hash: that CPU's share), after which every flood SYN replaces a pending
/// handshake, as a real flood's does.
///
/// The tracked rows: flows entered from user space ([`insert_flows`], again after each ACK
/// row, whose inserts evict the oldest entries of that CPU's LRU list), whose packets come in
/// turn, one each per pass, as many viewers' ACKs interleave.
/// The control is one flow's packet every call (a flow-cache hit each time, cold). With
/// [`FEW_CLIENTS`] clients, a client alone in its cache slot hits on every pass after the
/// first and one that shares its slot misses on every pass (the other flow took the slot in
/// between): the share alone, computed from `flow_cache_slot`, is the row's expected hit
/// rate. With [`MANY_CLIENTS`], four times the slots, nearly every packet misses (an earlier
/// build, without the cache, pays the same lookup in every tracked row).
fn distinct_rows(out: &mut String, ebpf: &mut Ebpf, peer: Option<&mut Ebpf>, empty_repeated: f64) {
    writeln!(
        out,
        "### One call per packet: repeat = 1, {DISTINCT} packets per program per round, {} rounds; kernel `duration` averaged\n",
        rounds()
    )
    .unwrap();
    writeln!(
        out,
        "| packet | program | ns/pkt | empty XDP_PASS ns/pkt (same packets) | ns above empty (median, range) | equivalent ratio (median) |"
    )
    .unwrap();
    writeln!(out, "|---|---|---:|---:|---:|---:|").unwrap();
    let mut programs: Vec<(&str, &mut Ebpf)> = vec![("this build", ebpf)];
    if let Some(p) = peer {
        programs.push(("earlier build", p));
    }
    let syn_ack: Vec<SynAckWriter> = programs.iter().map(|(_, p)| SynAckWriter::new(p)).collect();
    // A fresh client for every packet of every row, program and round: 10.2.0.0 onwards.
    let mut next = 0usize;
    let mut fresh = move || {
        next += 1;
        std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::from(0x0a02_0000u32 + next as u32),
            20_000 + (next % 40_000) as u16,
        )
    };
    let few = clients_in_turn(0x0a03_0000, FEW_CLIENTS);
    let many = clients_in_turn(0x0a04_0000, MANY_CLIENTS);
    let flow_keys = |clients: &[std::net::SocketAddrV4]| -> Vec<FlowKey> {
        clients
            .iter()
            .map(|c| switcher_ctl::loader::flow_key((*c).into()))
            .collect()
    };
    let (few_keys, many_keys) = (flow_keys(&few), flow_keys(&many));
    let alone = |keys: &[FlowKey]| {
        let mut per_slot = std::collections::HashMap::new();
        let slots: Vec<u32> = keys
            .iter()
            .map(|k| switcher_common::flow_cache_slot(&k.words()))
            .collect();
        for s in &slots {
            *per_slot.entry(*s).or_insert(0u32) += 1;
        }
        100.0 * slots.iter().filter(|s| per_slot[*s] == 1).count() as f64 / slots.len() as f64
    };
    let rows: [String; 6] = [
        "the same SYN, one call each (control: a cold call, no new state)".into(),
        "SYN flood, distinct clients (flow lookup + handshake record + rewrite)".into(),
        "handshake ACK, distinct clients (validation + flow insert into the LRU)".into(),
        "tracked flow, the same client each call (control: a flow-cache hit each call, cold)"
            .into(),
        format!(
            "tracked flows of {FEW_CLIENTS} clients in turn ({:.1}% alone in their cache slot: hits; the rest miss)",
            alone(&few_keys)
        ),
        format!(
            "tracked flows of {MANY_CLIENTS} clients in turn (4x the cache's slots; {:.1}% alone in theirs: nearly all miss)",
            alone(&many_keys)
        ),
    ];
    let in_turn = |clients: &[std::net::SocketAddrV4], i: usize| {
        let c = clients[i % clients.len()];
        Pkt::tcp(&c.ip().to_string(), c.port(), "10.0.0.1", 8080, ACK)
            .with_payload(&[7u8; 1024])
            .build()
    };
    let tracked_control = tracked_pkt();
    // [row][program] -> (ours, empty) per round.
    let mut results = vec![vec![(Vec::new(), Vec::new()); programs.len()]; rows.len()];
    let control = Pkt::tcp("10.1.4.1", 43000, "10.0.0.1", 8080, SYN).build();
    let n_programs = programs.len();
    for round in 0..rounds() {
        // Which program goes first alternates from round to round.
        for turn in 0..n_programs {
            let which = (round + turn) % n_programs;
            let prog = &mut *programs[which].1;
            for (row, res) in results.iter_mut().enumerate() {
                if row == 3 {
                    // After the ACK row, whose inserts evict the oldest entries.
                    insert_flows(prog, &few_keys);
                    insert_flows(prog, &many_keys);
                }
                let before = stats(prog)[0];
                let mut ours = 0.0;
                let mut base = 0.0;
                for i in 0..DISTINCT {
                    let pkt = match row {
                        0 => control.clone(),
                        3 => tracked_control.clone(),
                        4 => in_turn(&few, i),
                        5 => in_turn(&many, i),
                        1 => {
                            let c = fresh();
                            Pkt::tcp(&c.ip().to_string(), c.port(), "10.0.0.1", 8080, SYN).build()
                        }
                        _ => {
                            let c = fresh();
                            let ip = c.ip().to_string();
                            let syn = Pkt::tcp(&ip, c.port(), "10.0.0.1", 8080, SYN).build();
                            test_run(prog, prog_names::XDP_INGRESS, &syn, 1);
                            syn_ack[which].record(prog, c);
                            Pkt::tcp(&ip, c.port(), "10.0.0.1", 8080, ACK)
                                .with_ack(BENCH_ISN + 1)
                                .build()
                        }
                    };
                    ours += test_run(prog, prog_names::XDP_INGRESS, &pkt, 1).kernel;
                    base += test_run(prog, prog_names::BENCH_XDP_PASS, &pkt, 1).kernel;
                }
                let after = stats(prog)[0];
                let n = DISTINCT as u64;
                match row {
                    0 | 1 => assert_eq!(after.new_flows - before.new_flows, n, "{}", rows[row]),
                    2 => assert_eq!(
                        after.established - before.established,
                        n,
                        "every ACK completed its handshake"
                    ),
                    _ => assert_eq!(
                        after.rewrites - before.rewrites,
                        n,
                        "every tracked packet was steered: {}",
                        rows[row]
                    ),
                }
                res[which].0.push(ours / DISTINCT as f64);
                res[which].1.push(base / DISTINCT as f64);
            }
        }
    }
    for (row, res) in rows.iter().zip(&results) {
        for ((name, _), (ours, base)) in programs.iter().zip(res) {
            let extra: Vec<f64> = ours.iter().zip(base).map(|(o, b)| o - b).collect();
            let (e, lo, hi) = spread(&extra);
            writeln!(
                out,
                "| {row} | {name} | {:.1} | {:.1} | {e:.1} ({lo:.1}..{hi:.1}) | {:.2}x |",
                median(ours.clone()),
                median(base.clone()),
                1.0 + e / empty_repeated
            )
            .unwrap();
        }
    }
    out.push('\n');
}

/// Makes a lookup table whose every slot is `origin` live (what `Pinned::set_active` does).
fn publish_uniform(ebpf: &mut Ebpf, origin: u8) {
    let table = Box::new(MaglevTable::uniform(origin));
    Array::<_, MaglevTable>::try_from(ebpf.map_mut(map_names::MAGLEV).unwrap())
        .unwrap()
        .set(1, table.as_ref(), 0)
        .unwrap();
    Array::<_, u32>::try_from(ebpf.map_mut(map_names::MAGLEV_LIVE).unwrap())
        .unwrap()
        .set(0, 1, 0)
        .unwrap();
}

/// New flows from every CPU at once, each CPU on its own client port: what the per-CPU LRU
/// lists (`BPF_F_NO_COMMON_LRU`) are for. One thread pinned per CPU runs BPF_PROG_TEST_RUN; the row gives the mean over
/// the threads (CPU time), against the empty program run the same way.
/// `peer_column`: the table has the earlier build's columns, left empty here (only this build
/// runs on every CPU).
fn parallel_syns(out: &mut String, ebpf: &mut Ebpf, vip: VipConfig, peer_column: bool) {
    set_vip(ebpf, vip);
    let cpus = nproc();
    let packets: Vec<Vec<u8>> = (0..cpus)
        .map(|i| Pkt::tcp("10.1.3.1", 42000 + i as u16, "10.0.0.1", 8080, SYN).build())
        .collect();
    let ebpf = &*ebpf;
    let all_at_once = |prog: &str| -> Cost {
        let per_thread: Vec<Cost> = std::thread::scope(|s| {
            let handles: Vec<_> = packets
                .iter()
                .enumerate()
                .map(|(cpu, data)| {
                    s.spawn(move || {
                        pin_to_cpu(cpu);
                        test_run(ebpf, prog, data, REPEAT)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let n = per_thread.len() as f64;
        Cost {
            cpu: per_thread.iter().map(|c| c.cpu).sum::<f64>() / n,
            kernel: per_thread.iter().map(|c| c.kernel).sum::<f64>() / n,
            wall: per_thread.iter().map(|c| c.wall).sum::<f64>() / n,
            ret: per_thread[0].ret,
        }
    };
    let before = stats(ebpf);
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for round in 0..rounds() {
        for turn in 0..2 {
            if (round + turn) % 2 == 0 {
                ours.push(all_at_once(prog_names::XDP_INGRESS));
            } else {
                base.push(all_at_once(prog_names::BENCH_XDP_PASS));
            }
        }
    }
    let after = stats(ebpf);
    assert_eq!(
        after[0].new_flows - before[0].new_flows,
        u64::from(REPEAT) * (rounds() * cpus) as u64,
        "every repetition on every CPU took the SYN path"
    );
    let (r, lo, hi) = spread(&ratios(&ours, &base, |c| c.cpu));
    let (kr, klo, khi) = spread(&ratios(&ours, &base, |c| c.kernel));
    let (wr, wlo, whi) = spread(&ratios(&ours, &base, |c| c.wall));
    let o = median(ours.iter().map(|c| c.cpu).collect());
    let b = median(base.iter().map(|c| c.cpu).collect());
    let desc = format!("SYN to the VIP on all {cpus} CPUs at once (handshake record; contention)");
    if peer_column {
        writeln!(
            out,
            "| {desc} | {o:.2} | | {b:.2} | {r:.2}x | {lo:.2}x..{hi:.2}x | | | |"
        )
        .unwrap();
    } else {
        writeln!(
            out,
            "| {desc} | {o:.2} | {b:.2} | {r:.2}x | {lo:.2}x..{hi:.2}x | {kr:.2}x ({klo:.2}..{khi:.2}) | {wr:.2}x ({wlo:.2}..{whi:.2}) |"
        )
        .unwrap();
    }
}

/// The origin binary the wrk runs use.
fn origin_bin() -> PathBuf {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = ws.join("target/release/origin");
    assert!(
        p.exists(),
        "{} missing: cargo build --release -p origin",
        p.display()
    );
    p
}

/// A docroot with a ~600 B playlist and a 1 MiB segment.
fn docroot() -> PathBuf {
    let dir = std::env::temp_dir().join(netns::unique("www"));
    let hls = dir.join("hls/demo");
    std::fs::create_dir_all(&hls).unwrap();
    let mut pl = String::from(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:880000000\n",
    );
    for i in 0..6 {
        pl += &format!(
            "#EXT-X-PROGRAM-DATE-TIME:2026-11-25T19:00:{:02}.000Z\n#EXTINF:2.000,\n{}.ts\n",
            i * 2,
            880000000 + i
        );
    }
    std::fs::write(hls.join("index.m3u8"), pl).unwrap();
    std::fs::write(hls.join("seg.ts"), vec![0x47u8; 1 << 20]).unwrap();
    dir
}

/// The origin's `--root`: it serves `/hls/<stream>/<file>` from `<root>/<stream>/<file>`.
fn origin_root(docroot: &Path) -> PathBuf {
    docroot.join("hls")
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_origin(ns: &Netns, root: &Path, listen: &str) -> Proc {
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(origin_bin())
        .args([
            "--root",
            origin_root(root).to_str().unwrap(),
            "--listen",
            listen,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start origin");
    let probe = listen.replace("0.0.0.0", "127.0.0.1");
    let ready = ns.run(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(&probe).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    assert!(ready, "origin did not start");
    Proc(child)
}

/// (req/s, MB/s) from wrk run inside `ns` against `url`.
fn wrk(ns: &Netns, url: &str) -> (f64, f64) {
    let out = ns.exec(&["wrk", "-t2", "-c50", "-d", WRK_SECONDS, "--latency", url]);
    let mut rps = 0.0;
    let mut mbs = 0.0;
    for line in out.lines() {
        if let Some(v) = line.trim().strip_prefix("Requests/sec:") {
            rps = v.trim().parse().unwrap();
        }
        if let Some(v) = line.trim().strip_prefix("Transfer/sec:") {
            let v = v.trim();
            let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap());
            let n: f64 = num.parse().unwrap();
            mbs = match unit {
                "GB" => n * 1024.0,
                "MB" => n,
                "KB" => n / 1024.0,
                _ => n / 1048576.0,
            };
        }
        // A benchmark of error responses measures nothing: stop.
        assert!(
            !line.contains("Non-2xx"),
            "wrk got error responses from {url}: {line}"
        );
        if line.contains("Socket errors") {
            eprintln!("wrk reported socket errors for {url}: {line}");
        }
    }
    (rps, mbs)
}

fn compare(out: &mut String, label: &str, ns: &Netns, vip: &str, direct: &str) {
    for (what, path) in [
        ("playlist ~600 B", "/hls/demo/index.m3u8"),
        ("segment 1 MiB", "/hls/demo/seg.ts"),
    ] {
        // Alternate direct and VIP runs, PAIRS times, and report the medians: drift of a
        // shared machine then hits both sides alike.
        let mut d = (Vec::new(), Vec::new());
        let mut v = (Vec::new(), Vec::new());
        for _ in 0..PAIRS {
            let x = wrk(ns, &format!("http://{direct}{path}"));
            d.0.push(x.0);
            d.1.push(x.1);
            let y = wrk(ns, &format!("http://{vip}{path}"));
            v.0.push(y.0);
            v.1.push(y.1);
        }
        let (d, v) = ((median(d.0), median(d.1)), (median(v.0), median(v.1)));
        writeln!(
            out,
            "| {label} | {what} | {:.0} | {:.0} | {:.3}x | {:.1} | {:.1} | {:.3}x |",
            v.0,
            d.0,
            v.0 / d.0,
            v.1,
            d.1,
            v.1 / d.1
        )
        .unwrap();
    }
}

fn wrk_section(out: &mut String) {
    let root = docroot();
    writeln!(out, "### wrk through the VIP vs straight to the origin (`wrk -t2 -c50 -d{WRK_SECONDS}s`, same origin process, median of {PAIRS} alternating pairs)\n").unwrap();
    writeln!(
        out,
        "| topology | file | VIP req/s | direct req/s | ratio | VIP MB/s | direct MB/s | ratio |"
    )
    .unwrap();
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|").unwrap();
    {
        let pair = Pair::new();
        let bpf = BpfFs::new().on_drop(switcher_ctl::loader::detach);
        let _origin = start_origin(&pair.edge, &root, "0.0.0.0:8081");
        let cfg = AttachConfig::primary_backup(
            &pair.edge_if,
            format!("{EDGE_V4}:8080").parse().unwrap(),
            std::net::Ipv4Addr::UNSPECIFIED.into(),
            bpf.pin_root(),
        );
        let dp = pair.edge.run(move || {
            let mut p = Pinned::attach(&cfg).expect("attach");
            p.set_active(0).unwrap();
            p
        });
        compare(
            out,
            "veth, native XDP",
            &pair.client,
            &format!("{EDGE_V4}:8080"),
            &format!("{EDGE_V4}:8081"),
        );
        let root = bpf.pin_root();
        pair.edge
            .run(move || switcher_ctl::loader::detach(&root).unwrap());
        drop(dp);
    }
    for (mode, label) in [
        (AttachMode::Generic, "lo, generic XDP"),
        (AttachMode::Tc, "lo, TC ingress"),
    ] {
        let ns = Netns::new("b");
        let bpf = BpfFs::new().on_drop(switcher_ctl::loader::detach);
        let _origin = start_origin(&ns, &root, "127.0.0.1:8081");
        let cfg = AttachConfig {
            mode,
            ..loopback_config(bpf.pin_root())
        };
        let dp = ns.run(move || {
            let mut p = Pinned::attach(&cfg).expect("attach");
            p.set_active(0).unwrap();
            p
        });
        compare(out, label, &ns, "127.0.0.1:8080", "127.0.0.1:8081");
        let root = bpf.pin_root();
        ns.run(move || switcher_ctl::loader::detach(&root).unwrap());
        drop(dp);
    }
    let _ = std::fs::remove_dir_all(&root);
    out.push('\n');
}

/// (median, min, max) of `v`, milliseconds.
fn stats_ms(v: &[Duration]) -> (f64, f64, f64) {
    let ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let lo = ms.iter().cloned().fold(f64::MAX, f64::min);
    let hi = ms.iter().cloned().fold(f64::MIN, f64::max);
    (median(ms), lo, hi)
}

/// The pinned flow map, opened on its own (as a test or `bpftool` would) to fill it.
fn pinned_flows(root: &Path) -> HashMap<MapData, FlowKey, FlowValue> {
    let data = MapData::from_pin(root.join("maps").join(map_names::FLOWS)).expect("open pin");
    HashMap::try_from(Map::HashMap(data)).expect("flow map")
}

/// Inserts `n` flows pinned to `origin` in its generation `generation` from this thread.
fn fill_flows(
    flows: &mut HashMap<MapData, FlowKey, FlowValue>,
    n: u32,
    origin: u32,
    generation: u32,
) {
    for i in 0..n {
        let client = std::net::SocketAddr::from((
            [10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8],
            40_000,
        ));
        let key = switcher_ctl::loader::flow_key(client);
        let value = FlowValue {
            origin,
            flags: FLOW_SEEN_SYN,
            client_ack: 0,
            hop_mac: [0; 6],
            local_mac: [0; 6],
            generation,
        };
        flows.insert(key, value, 0).expect("insert flow");
    }
}

/// Part 3: a scrape's data-plane reads and a retirement at [`SCALE_FLOWS`] tracked flows,
/// against the map walks of the builds before (walking `SWITCHER_FLOWS` to count, walking it
/// again and deleting key by key to retire).
///
/// A retirement is timed on the path the controller takes (`abort_flows` of every flow, as
/// `Controller::retire` calls it, cut at once) and on `retire_flows`; both retire by moving the
/// origin's generation. What is left is timed too: deleting the retired entries
/// (`reap_retired`, which the controller spreads over windows, `REAPS_PER_WINDOW` at a time).
/// Not timed: the per-viewer work of an abort, which this harness has none of (no origin
/// sockets to destroy; TC on `lo` sends no edge resets).
fn control_plane_at_scale(out: &mut String) {
    // The maps' LRU lists are per CPU and a user-space insert fills the inserting CPU's share:
    // size them so one CPU's share holds every flow, and insert from one pinned CPU.
    let max_flows = SCALE_FLOWS * nproc() as u32 + 4096;
    let ns = Netns::new("cp");
    let bpf = BpfFs::new();
    let root = bpf.pin_root();
    let cfg = AttachConfig {
        mode: AttachMode::Tc,
        max_flows,
        ..loopback_config(root.clone())
    };
    let dp = ns.run(move || Pinned::attach(&cfg).expect("attach"));
    let root2 = root.clone();
    let m = std::thread::spawn(move || {
        pin_to_cpu(0);
        let mut dp = dp;
        let mut flows = pinned_flows(&root2);
        let mut m = ScaleTimes::default();
        let generation = |dp: &Pinned| dp.generation(0).expect("generation");
        fill_flows(&mut flows, SCALE_FLOWS, 0, generation(&dp));
        for _ in 0..21 {
            let t = Instant::now();
            let counts = dp.flow_counts().expect("flow counts");
            let counters = dp.counters().expect("counters");
            m.scrape.push(t.elapsed());
            assert_eq!(counts.len() + 1, counters.len());
        }
        // Peer: the walk the builds before did for every scrape.
        for _ in 0..3 {
            let t = Instant::now();
            let mut counts = vec![0u64; switcher_common::MAX_ORIGINS as usize];
            for (_, v) in flows.iter().filter_map(Result::ok) {
                counts[v.origin as usize] += 1;
            }
            m.walk_count.push(t.elapsed());
            assert_eq!(counts[0], u64::from(SCALE_FLOWS), "every flow walked");
        }
        // The read half of a retirement: every entry, in batches.
        for _ in 0..3 {
            let t = Instant::now();
            let all = dp.flow_entries().expect("batch read");
            m.read_all.push(t.elapsed());
            assert_eq!(all.len(), SCALE_FLOWS as usize);
        }
        for round in 0..ROUNDS_AT_SCALE {
            if round > 0 {
                fill_flows(&mut flows, SCALE_FLOWS, 0, generation(&dp));
            }
            let t = Instant::now();
            let a = dp.abort_flows(0, usize::MAX, false).expect("abort");
            m.abort.push(t.elapsed());
            assert_eq!(a.removed, u64::from(SCALE_FLOWS), "every flow retired");
            assert_eq!(dp.flow_counts().expect("counts")[0], 0);
            let t = Instant::now();
            let reaped = dp.reap_retired(usize::MAX).expect("reap");
            m.reap.push(t.elapsed());
            assert_eq!(
                reaped,
                u64::from(SCALE_FLOWS),
                "every retired entry deleted"
            );

            fill_flows(&mut flows, SCALE_FLOWS, 0, generation(&dp));
            let t = Instant::now();
            let removed = dp.retire_flows(0).expect("retire");
            m.retire.push(t.elapsed());
            assert_eq!(removed, u64::from(SCALE_FLOWS), "every flow retired");
            assert_eq!(dp.reap_retired(usize::MAX).expect("reap"), removed);
        }
        // Peer: walk, then one delete syscall per key (the retirement of the builds before
        // batch operations).
        fill_flows(&mut flows, SCALE_FLOWS, 0, generation(&dp));
        let t = Instant::now();
        let keys: Vec<FlowKey> = flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.origin == 0)
            .map(|(k, _)| k)
            .collect();
        let removed = keys.iter().filter(|k| flows.remove(k).is_ok()).count();
        m.walk_retire.push(t.elapsed());
        assert_eq!(removed, SCALE_FLOWS as usize);
        fill_flows(&mut flows, SCALE_FLOWS, 0, generation(&dp));
        (m.healthz, m.metrics) = admin_at_scale(dp);
        m
    })
    .join()
    .expect("measuring thread");
    ns.run(move || switcher_ctl::loader::detach(&root).unwrap());
    writeln!(
        out,
        "### Control plane at {SCALE_FLOWS} tracked flows (ms; median and range)\n"
    )
    .unwrap();
    writeln!(
        out,
        "| operation | this build | rounds | the map walk of builds before (peer) | rounds | ratio |"
    )
    .unwrap();
    writeln!(out, "|---|---:|---:|---:|---:|---:|").unwrap();
    for (what, ours, peer) in [
        (
            "scrape: `flow_counts()` + `counters()`",
            &m.scrape,
            &m.walk_count,
        ),
        (
            "read every flow (batch lookup, the first half of a retirement; peer: the walk)",
            &m.read_all,
            &m.walk_count,
        ),
        (
            "`GET /healthz` from the admin server (HTTP over loopback, a new connection each)",
            &m.healthz,
            &m.walk_count,
        ),
        (
            "`GET /metrics` from the admin server (likewise)",
            &m.metrics,
            &m.walk_count,
        ),
        (
            "retire an origin's 200,000 flows as the controller does (`abort_flows`, all, cut at once)",
            &m.abort,
            &m.walk_retire,
        ),
        ("retire them with `retire_flows`", &m.retire, &m.walk_retire),
        (
            "then delete the retired entries (`reap_retired`, all at once; the controller spreads it over windows)",
            &m.reap,
            &m.walk_retire,
        ),
    ] {
        let (med, lo, hi) = stats_ms(ours);
        let (pm, plo, phi) = stats_ms(peer);
        writeln!(
            out,
            "| {what} | {med:.2} ({lo:.2}..{hi:.2}) | {} | {pm:.1} ({plo:.1}..{phi:.1}) | {} | {:.3}x |",
            ours.len(),
            peer.len(),
            med / pm
        )
        .unwrap();
    }
    out.push('\n');
}

/// `GET /healthz` and `GET /metrics`, 21 of each, alternating, from the admin server of a
/// controller over `dp` (the product's handlers, `admin::serve` on 127.0.0.1, a new
/// connection per request as a scraper makes): what the issue's targets are about, end to end.
fn admin_at_scale(dp: Pinned) -> (Vec<Duration>, Vec<Duration>) {
    use std::sync::{Arc, Mutex};
    use switcher_ctl::{admin, config::Config, service};
    let controller = service::controller(&Config::default(), Box::new(dp)).expect("controller");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        rt.block_on(admin::serve(
            listener,
            Arc::new(Mutex::new(controller)),
            async move {
                let _ = stopped.await;
            },
        ))
    });
    let (mut healthz, mut metrics) = (Vec::new(), Vec::new());
    for _ in 0..21 {
        for (path, times) in [("/healthz", &mut healthz), ("/metrics", &mut metrics)] {
            let t = Instant::now();
            let r = test_kit::http::get(&format!("http://{addr}{path}")).expect("admin GET");
            times.push(t.elapsed());
            assert_eq!(r.status, 200, "{path}");
            if path == "/healthz" {
                // Counted from the data plane's counters (0 here: these flows were inserted
                // by user space, not established through the VIP), never by a walk.
                let status = r.json().expect("/healthz is JSON");
                assert!(status["flows"].is_object(), "/healthz has flow counts");
            }
        }
    }
    let _ = stop.send(());
    server.join().expect("admin server");
    (healthz, metrics)
}

/// Rounds of each retirement at [`SCALE_FLOWS`] (each refills the table first).
const ROUNDS_AT_SCALE: usize = 5;

/// What part 3 times.
#[derive(Default)]
struct ScaleTimes {
    scrape: Vec<Duration>,
    walk_count: Vec<Duration>,
    read_all: Vec<Duration>,
    abort: Vec<Duration>,
    reap: Vec<Duration>,
    retire: Vec<Duration>,
    walk_retire: Vec<Duration>,
    healthz: Vec<Duration>,
    metrics: Vec<Duration>,
}

/// `lscpu`'s model name, for the report.
fn cpu_model() -> String {
    let out = Command::new("lscpu").output().expect("lscpu");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Model name:").map(|m| m.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into())
}

/// What the kernel reports for the CPU vulnerabilities whose mitigations tax calls, returns
/// and indirect branches (`/sys/devices/system/cpu/vulnerabilities`): they set what the empty
/// program costs (an indirect call into it, its return) and what every helper or kernel
/// function call of the measured programs costs (a map lookup of a hash map calls
/// `__htab_map_lookup_elem` and `memcmp`; an array lookup is inlined), so ratios to the empty
/// program differ between machines by as much as the programs do (BENCHMARKS.md, 2026-12-02,
/// session 7: an empty program of 8 ns on an Intel Xeon, 35 ns on an AMD EPYC with Safe RET).
fn mitigations() -> String {
    ["spectre_v2", "retbleed", "spec_rstack_overflow"]
        .iter()
        .filter_map(|v| {
            let path = format!("/sys/devices/system/cpu/vulnerabilities/{v}");
            let state = std::fs::read_to_string(path).ok()?;
            Some(format!("{v}: {}", state.trim()))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Online CPUs (not `available_parallelism`, which counts only the CPUs this thread may run
/// on, and part 1 pins itself to one).
fn nproc() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the data-path benchmark needs root"
    );
    let mut out = String::new();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .unwrap();
    writeln!(
        out,
        "\n## `cargo xtask bench datapath` ({})\n",
        String::from_utf8_lossy(&date.stdout).trim()
    )
    .unwrap();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    writeln!(
        out,
        "Machine: {}, {} CPUs, kernel {}; load average at start: {}.\nCPU mitigations that tax calls and returns: {}.\n",
        cpu_model(),
        nproc(),
        String::from_utf8_lossy(&Command::new("uname").arg("-r").output().unwrap().stdout).trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        mitigations()
    )
    .unwrap();
    // In a thread of its own: it pins itself to one CPU, and the wrk processes of part 2 must
    // not inherit that.
    let part1 = std::thread::spawn(|| {
        let mut s = String::new();
        prog_test_run(&mut s);
        s
    })
    .join()
    .expect("part 1");
    out.push_str(&part1);
    print!("{out}");
    if std::env::var("SWITCHER_BENCH_SCALE").as_deref() != Ok("0") {
        let mut scale = String::new();
        control_plane_at_scale(&mut scale);
        print!("{scale}");
        out.push_str(&scale);
    }
    if std::env::var("SWITCHER_BENCH_WRK").as_deref() != Ok("0") {
        let mut wrk_out = String::new();
        wrk_section(&mut wrk_out);
        print!("{wrk_out}");
        out.push_str(&wrk_out);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../BENCHMARKS.md");
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    text.push_str(&out);
    std::fs::write(&path, text).unwrap();
}

/// The data plane on `lo` with the VIP and both origins on 127.0.0.1 (native XDP by default;
/// callers set the mode).
fn loopback_config(pin_root: std::path::PathBuf) -> AttachConfig {
    AttachConfig::primary_backup(
        "lo",
        "127.0.0.1:8080".parse().unwrap(),
        std::net::Ipv4Addr::LOCALHOST.into(),
        pin_root,
    )
}

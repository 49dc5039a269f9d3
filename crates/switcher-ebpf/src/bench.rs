//! Never-attached programs for `cargo xtask bench datapath` (`switcher-ctl/benches/datapath.rs`),
//! which runs them with `BPF_PROG_TEST_RUN` next to `switcher_xdp` and the empty program. None
//! is loaded by switcher-ctl for steering. The insert floors use maps of their own, declared
//! here with one entry each (the bench sizes them when it loads the object;
//! `switcher_common::bench_map_names`); the tracked-flow programs read and write the product's
//! maps as `switcher_xdp` does, in the bench's own load of the object, never in a pinned one.
//!
//! * `bench_xdp_pass`: the empty program, the baseline of every ratio; `bench_tc_pass`, the
//!   empty TC program, the baseline of `switcher_tc_ingress`'s.
//! * `bench_flow_lookup`: one `SWITCHER_FLOWS` lookup (a hit), what a tracked flow's packet
//!   pays for its lookup when it misses the flow cache.
//! * `bench_fresh_key`, `bench_hs_{lru,hash}_{fresh,same}`: floors of the SYN path's state
//!   write in a kernel hash map: one insert into the LRU hash `SWITCHER_HANDSHAKES` was until
//!   branch hsarray (and a preallocated plain hash for comparison), of a new key each
//!   repetition (a SYN flood) or of the same key (a retransmitted SYN, and the bench's
//!   repeated-SYN row). What made the handshake table an array (`crate::handshakes`).
//! * `bench_cache_miss`: `switcher_xdp` with the packet's copy in the flow cache made stale
//!   before each run, so a tracked flow's packet takes the miss path (`crate::flow_cache`).
//! * `bench_nfv_*`: `switcher_xdp` with another way of parsing and counting a packet not for
//!   the VIP (`crate::ParseVariant`), timed against the product's in the same rounds.
//! * `bench_tf_*`: the tracked-flow path of `switcher_xdp` cut after each of its steps (parse
//!   and VIP check; + flow key and this CPU's copy of the flow; + the copy's fields, client ACK
//!   and origin; + the rewrite; + the counters), built from the product's own functions, so
//!   the bench can say what each step adds; `switcher_xdp` adds the fast exit's tests for
//!   packets not for the VIP, and the `Verdict` hand-over from `cached_verdict` to the rewrite.

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_NO_COMMON_LRU, TC_ACT_OK},
    btf_maps::{HashMap, LruHashMap, PerCpuArray},
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
};
use switcher_common::{
    FlowKey, Handshake, BENCH_COUNT_FAILED, BENCH_COUNT_FRESH, BENCH_COUNT_FRESH_HASH,
    BENCH_COUNT_FRESH_LRU, BENCH_HASH_WINDOW, FAMILY_V4,
};

use crate::{
    count_steered, flow_cache, maps, packet::classify, steer, xdp_request, xdp_rewrite_dst,
};

/// The shape `SWITCHER_HANDSHAKES` had until branch hsarray (key, value, flags; the bench
/// gives it `MAX_FLOWS` entries): one entry in the object.
#[btf_map(name = "BENCH_HS_LRU")]
static HS_LRU: LruHashMap<FlowKey, Handshake, 1, { BPF_F_NO_COMMON_LRU as usize }> =
    LruHashMap::new();

/// The same key and value in a preallocated plain hash (no eviction): one entry in the object.
#[btf_map(name = "BENCH_HS_HASH")]
static HS_HASH: HashMap<FlowKey, Handshake, 1> = HashMap::new();

/// What the bench programs did, per CPU (`BENCH_COUNT_*` indices).
#[btf_map(name = "BENCH_COUNTS")]
static COUNTS: PerCpuArray<u64, 4> = PerCpuArray::new();

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = COUNTS.get_ptr_mut(index) {
        // SAFETY: per-CPU value, this program alone on this CPU.
        unsafe { *c += 1 };
    }
}

/// Benchmark baseline, never attached: passes every packet without reading it, so
/// `cargo xtask bench datapath` can state the data plane's cost relative to an empty program
/// measured in the same run.
#[xdp]
#[inline(always)]
pub fn bench_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The empty TC program, never attached: the baseline of `switcher_tc_ingress` in the bench
/// (a TC program runs on an skb, which costs the test run more than an XDP buffer does).
#[classifier]
#[inline(always)]
pub fn bench_tc_pass(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// Benchmark building block, never attached: one `SWITCHER_FLOWS` lookup of a constant key
/// (client 10.1.1.1:40000, IPv4: the tracked flow `cargo xtask bench datapath` inserts), then
/// XDP_PASS. What the tracked-flow path pays for its one lookup, measured alone. (Until
/// branch dp-floor the key was built with `[0u8; 16]`, which added a 12-byte byte-loop
/// `memset` call to what this measured; the product's tracked path builds its key without.)
#[xdp]
#[inline(always)]
pub fn bench_flow_lookup(_ctx: XdpContext) -> u32 {
    let found = with_key(40000u64 << 32 | 0x0a01_0101, |key| {
        maps::FLOWS.get_ptr(key).is_some()
    });
    if found {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_ABORTED
    }
}

/// The number of a new IPv4 key (see [`with_key`]) from this CPU's counter
/// `BENCH_COUNTS[counter]` (one inlined per-CPU lookup and an add): address = the number's low
/// 32 bits, port = the next 16. `None` if the counter cannot be read (never, for an index in
/// range).
#[inline(always)]
fn fresh_key(counter: u32) -> Option<u64> {
    let c = COUNTS.get_ptr_mut(counter)?;
    // SAFETY: per-CPU value, this program alone on this CPU.
    let n = unsafe {
        let n = *c;
        *c = n + 1;
        n
    };
    Some(n)
}

/// The IPv4 key of counter value `n` (see [`fresh_key`]), written in place as five 4-byte
/// stores and handed to `f` by reference: built the ordinary way (`[0u8; 16]`, then the
/// address), or moved, the zeroing becomes a call of the BPF build's byte-by-byte `memset`,
/// which is not what the product's key costs.
#[inline(always)]
fn with_key<R>(n: u64, f: impl FnOnce(&FlowKey) -> R) -> R {
    let port_family = u32::from(((n >> 32) as u16).to_be()) | u32::from(FAMILY_V4) << 16;
    let words = [(n as u32).to_be(), 0, 0, 0, port_family];
    let mut key = core::mem::MaybeUninit::<FlowKey>::uninit();
    let p = key.as_mut_ptr().cast::<u32>();
    let mut i = 0;
    while i < 5 {
        // SAFETY: `FlowKey` is 20 bytes of plain integers, 4-byte aligned: five u32 stores
        // write all of it. Volatile, so LLVM does not merge the zero stores into a `memset`.
        unsafe { core::ptr::write_volatile(p.add(i), words[i]) };
        i += 1;
    }
    // SAFETY: every byte written above.
    f(unsafe { &*key.as_ptr() })
}

/// The handshake value the floors insert: what a SYN writes (origin, ISN, link addresses).
#[inline(always)]
fn handshake(n: u64) -> Handshake {
    Handshake {
        origin: 0,
        flags: 0,
        expect_ack: 0,
        client_isn: n as u32,
        hop_mac: [2, 0, 0, 0, 0, 1],
        local_mac: [2, 0, 0, 0, 0, 2],
    }
}

/// Floor, never attached: [`fresh_key`] alone (its key is written to the stack and read back
/// through a volatile load so it is built), the part of `bench_hs_*_fresh` that is not the map.
#[xdp]
#[inline(always)]
pub fn bench_fresh_key(_ctx: XdpContext) -> u32 {
    let Some(n) = fresh_key(BENCH_COUNT_FRESH) else {
        return xdp_action::XDP_ABORTED;
    };
    let hs = handshake(n);
    with_key(n, |key| {
        // SAFETY: reads of locals; keeps key and value from being optimised away.
        unsafe {
            core::ptr::read_volatile(key);
            core::ptr::read_volatile(&hs);
        }
    });
    xdp_action::XDP_PASS
}

/// Floor, never attached: one insert of a fresh key into the LRU hash shaped like
/// `SWITCHER_HANDSHAKES` (once this CPU's share is full, every insert evicts its oldest entry,
/// as a SYN flood's do).
#[xdp]
#[inline(always)]
pub fn bench_hs_lru_fresh(_ctx: XdpContext) -> u32 {
    let Some(n) = fresh_key(BENCH_COUNT_FRESH_LRU) else {
        return xdp_action::XDP_ABORTED;
    };
    if with_key(n, |key| HS_LRU.insert(key, &handshake(n), 0)).is_err() {
        count(BENCH_COUNT_FAILED);
    }
    xdp_action::XDP_PASS
}

/// Floor, never attached: one insert of the same key into that LRU hash (a retransmitted SYN,
/// and what the bench's "same SYN repeated" row pays: the LRU takes a free node and frees the
/// old one of the key each time).
#[xdp]
#[inline(always)]
pub fn bench_hs_lru_same(_ctx: XdpContext) -> u32 {
    if with_key(1 << 40, |key| HS_LRU.insert(key, &handshake(1), 0)).is_err() {
        count(BENCH_COUNT_FAILED);
    }
    xdp_action::XDP_PASS
}

/// Floor, never attached: one insert of a fresh key into the preallocated plain hash, and the
/// delete of the key inserted `BENCH_HASH_WINDOW` inserts earlier on this CPU (a plain hash
/// does not evict; what a design with a non-LRU handshake table would pay per SYN in steady
/// state, the delete standing for a completion or expiry).
#[xdp]
#[inline(always)]
pub fn bench_hs_hash_fresh(_ctx: XdpContext) -> u32 {
    let Some(n) = fresh_key(BENCH_COUNT_FRESH_HASH) else {
        return xdp_action::XDP_ABORTED;
    };
    if with_key(n, |key| HS_HASH.insert(key, &handshake(n), 0)).is_err() {
        count(BENCH_COUNT_FAILED);
    }
    if n >= BENCH_HASH_WINDOW && with_key(n - BENCH_HASH_WINDOW, |key| HS_HASH.remove(key)).is_err()
    {
        count(BENCH_COUNT_FAILED);
    }
    xdp_action::XDP_PASS
}

/// Floor, never attached: one insert of the same key into the plain hash.
#[xdp]
#[inline(always)]
pub fn bench_hs_hash_same(_ctx: XdpContext) -> u32 {
    if with_key(1 << 40, |key| HS_HASH.insert(key, &handshake(1), 0)).is_err() {
        count(BENCH_COUNT_FAILED);
    }
    xdp_action::XDP_PASS
}

/// Variant, never attached: `switcher_xdp` with the packet's copy in this CPU's flow cache
/// made stale first (`flow_cache::invalidate`, one atomic add to its slot's version), so every
/// run of a tracked flow's packet misses: the `SWITCHER_FLOWS` lookup and the fill of the
/// copy, what a packet pays when its flow's copy was taken by another flow or made stale by a
/// change. An upper bound of the miss: the atomic add is not part of it.
#[xdp]
#[inline(always)]
pub fn bench_cache_miss(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if let Some(vip) = steer::vip() {
        if let Some(t) = classify(start, end, end - start, vip.port_be).segment() {
            flow_cache::invalidate(&steer::flow_key(&t));
        }
    }
    xdp_request::<{ crate::PRODUCT_PARSE.count_early }, { crate::PRODUCT_PARSE.fast_exit }>(&ctx)
}

/// Variant, never attached: `switcher_xdp` as it was before `ParseVariant::count_early` (a
/// packet not for the VIP counted after its class is matched), the reference the product's
/// choice is timed against.
#[xdp]
#[inline(always)]
pub fn bench_nfv_before(ctx: XdpContext) -> u32 {
    xdp_request::<false, false>(&ctx)
}

/// Variant, never attached: the product's parsing and counting without the fast exit
/// (`ParseVariant::fast_exit`), i.e. `switcher_xdp` before branch dplean.
#[xdp]
#[inline(always)]
pub fn bench_nfv_no_fast(ctx: XdpContext) -> u32 {
    xdp_request::<true, false>(&ctx)
}

/// How far a `bench_tf_*` program runs the tracked-flow path (see [`tracked_until`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    /// The VIP's lookup, the packet's parse (`classify`) and the VIP check.
    Parse,
    /// + the flow key and this CPU's copy of the flow (`flow_cache::probe`, a hit).
    Copy,
    /// + the copy's origin (read, generation checked), the client ACK, the refresh check (a
    /// copy `FLOW_CACHE_REFRESH_TICKS` jiffies old looks the entry up), the FINISHING check and the origin's
    /// target (`steer::steer_cached`), and the remote check
    /// (`steer::Target::remote_host`): everything `switcher_xdp` decides before rewriting.
    Origin,
    /// + the rewrite (`xdp_rewrite_dst`).
    Rewrite,
    /// + the counter update (`count_steered`): the whole tracked path, without the
    /// `Verdict` hand-over of `switcher_xdp` and its fast exit for packets not for the VIP.
    Count,
}

/// The tracked-flow path of `switcher_xdp` (`request_segment`, then `request_verdict`'s checks
/// and its `cached_verdict`, with the product's functions) up to `until`, then XDP_PASS;
/// XDP_ABORTED if the packet does not take the tracked path (the bench checks the return
/// code). Results the later steps would use are fed to the return code, so LLVM keeps each
/// step's work.
#[inline(always)]
fn tracked_until(ctx: &XdpContext, until: Step) -> u32 {
    let Some(vip) = steer::vip() else {
        return xdp_action::XDP_ABORTED;
    };
    let (start, end) = (ctx.data(), ctx.data_end());
    let Some(t) = classify(start, end, end - start, vip.port_be).segment() else {
        return xdp_action::XDP_ABORTED;
    };
    if !steer::is_to_vip(&t, vip) {
        return xdp_action::XDP_ABORTED;
    }
    if until == Step::Parse {
        return pass_if(t.sport != 0);
    }
    let key = steer::flow_key(&t);
    // The bench fills the copy (a `switcher_xdp` run) before it times these.
    let probe = flow_cache::probe(&key);
    let Some(slot) = probe.hit() else {
        return xdp_action::XDP_ABORTED;
    };
    if until == Step::Copy {
        return xdp_action::XDP_PASS;
    }
    if t.is_syn() {
        return xdp_action::XDP_ABORTED;
    }
    let Some(steer::Decision::Steer(target)) = steer::steer_cached(slot, &t) else {
        return xdp_action::XDP_ABORTED;
    };
    if target.remote_host.is_some() {
        return xdp_action::XDP_ABORTED;
    }
    if until == Step::Origin {
        return pass_if(target.port != 0 && target.addr.is_none());
    }
    let rewritten = xdp_rewrite_dst(start, end, &t, &target).is_some();
    if until == Step::Rewrite {
        return pass_if(rewritten);
    }
    count_steered(&target, end - start, rewritten, false);
    pass_if(rewritten)
}

/// XDP_PASS if `ok`, else XDP_ABORTED.
#[inline(always)]
fn pass_if(ok: bool) -> u32 {
    if ok {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_ABORTED
    }
}

/// Step, never attached: the tracked flow's parse and VIP check ([`Step::Parse`]).
#[xdp]
#[inline(always)]
pub fn bench_tf_parse(ctx: XdpContext) -> u32 {
    tracked_until(&ctx, Step::Parse)
}

/// Step, never attached: + this CPU's copy of the flow ([`Step::Copy`]).
#[xdp]
#[inline(always)]
pub fn bench_tf_copy(ctx: XdpContext) -> u32 {
    tracked_until(&ctx, Step::Copy)
}

/// Step, never attached: + the flow's fields, client ACK and origin ([`Step::Origin`]).
#[xdp]
#[inline(always)]
pub fn bench_tf_origin(ctx: XdpContext) -> u32 {
    tracked_until(&ctx, Step::Origin)
}

/// Step, never attached: + the rewrite ([`Step::Rewrite`]).
#[xdp]
#[inline(always)]
pub fn bench_tf_rewrite(ctx: XdpContext) -> u32 {
    tracked_until(&ctx, Step::Rewrite)
}

/// Step, never attached: + the counter update ([`Step::Count`]).
#[xdp]
#[inline(always)]
pub fn bench_tf_count(ctx: XdpContext) -> u32 {
    tracked_until(&ctx, Step::Count)
}

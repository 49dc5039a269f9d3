//! Every map of the data plane, declared in one place. Control maps are written by user space
//! (switcher-ctl) and only read here; the conntrack map is written by both (the data plane
//! inserts flows and forgets stale ones, user space deletes a retired origin's flows); the
//! handshake map and the statistics are written only here. Key/value types and names come
//! from `switcher-common`.
//!
//! The flow table is an LRU hash with per-CPU LRU lists (`BPF_F_NO_COMMON_LRU`): no lock
//! shared by every CPU on insert or eviction, and a flood processed on one CPU (one RX queue)
//! evicts only that CPU's share of the entries; the price is that each CPU owns
//! `max_entries / CPUs` of the capacity, so uneven RSS spreads fill some CPUs' share first.
//! On a 2-vCPU VM the insert path costs the same either way, within noise (BENCHMARKS.md,
//! the "all CPUs at once" row); the lock it avoids matters with many CPUs. Its size here is
//! the default; switcher-ctl sets it from `--max-flows` when it loads the object. The
//! handshake table is an array (see `handshakes` for why), of fixed size.
//!
//! The never-attached benchmark programs' own maps (`BENCH_*`) are declared with them, in
//! `bench`: no attached program reads or writes them.
//!
//! BTF-defined maps (`.maps` section): the kernel gets the key and value types, so
//! `bpftool map dump` prints them field by field.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU},
    btf_maps::{Array, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use switcher_common::{
    dsr::{DecapConfig, DecapCounters, EncapCounters},
    Counters, FlowCacheSlot, FlowKey, FlowValue, HandshakeBucket, MaglevTable, Origin, VipConfig,
    FLOW_CACHE_SLOTS, HANDSHAKE_BUCKETS, MAGLEV_TABLES, MAX_FLOWS, MAX_ORIGINS, STATS_SLOTS,
};

/// Map flags of the connection maps: per-CPU LRU lists.
const LRU_FLAGS: usize = BPF_F_NO_COMMON_LRU as usize;

/// Control, written by user space at attach time. Key 0 -> the VIP (address, port, flags).
#[btf_map(name = "SWITCHER_CONFIG")]
pub static CONFIG: Array<VipConfig, 1> = Array::new();

/// Control, written by user space. Key = origin index (0 primary, 1 backup) -> its address
/// and port. Unconfigured slots have `flags == 0`.
#[btf_map(name = "SWITCHER_ORIGINS")]
pub static ORIGINS: Array<Origin, { MAX_ORIGINS as usize }> = Array::new();

/// User space's own record, never read here. Key 0 -> the origin of the last `set_active`
/// (policy failover), so `status` and a restarted control plane can read it back.
#[btf_map(name = "SWITCHER_ACTIVE")]
pub static ACTIVE: Array<u32, 1> = Array::new();

/// Control, written by user space. Key = table number (0 or 1) -> a Maglev lookup table
/// (slot -> origin index). Only the live table (`MAGLEV_LIVE`) is read, one byte per new flow;
/// user space writes the other one whole before making it live.
#[btf_map(name = "SWITCHER_MAGLEV")]
pub static MAGLEV: Array<MaglevTable, { MAGLEV_TABLES as usize }> = Array::new();

/// Control, written by user space after the table it names. Key 0 -> the live table's number.
#[btf_map(name = "SWITCHER_MAGLEV_LIVE")]
pub static MAGLEV_LIVE: Array<u32, 1> = Array::new();

/// User space's own counts, never read here. Key = origin index -> open flows user space
/// removed from `FLOWS` (retired or aborted before their origin closed them); subtracted from
/// the data plane's `established - flows_closed` to count open flows without a map walk.
#[btf_map(name = "SWITCHER_FLOWS_REMOVED")]
pub static FLOWS_REMOVED: Array<u64, { MAX_ORIGINS as usize }> = Array::new();

/// Conntrack of established flows. Key = client address/port/family of a connection to the
/// VIP -> the origin it is pinned to. Inserted here only when a handshake completes
/// (`steer::steer_request`); deleted by user space when it retires an origin, and here when
/// a SYN from the same client port goes straight to the flow's origin after the flow is over
/// (`steer::forget_stale_flow`); evicted least-recently-used when full.
#[btf_map(name = "SWITCHER_FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowValue, { MAX_FLOWS as usize }, LRU_FLAGS> =
    LruHashMap::new();

/// Each CPU's direct-mapped cache of `FLOWS` (`flow_cache`): CPU and key slot
/// (`flow_cache_index`, `flow_cache_slot`) -> a copy of the flow's entry. A plain array, each
/// CPU's part contiguous, not a per-CPU array (see `flow_cache_index` for why). Written here
/// only, each part by the CPU it belongs to: filled when a packet of a tracked flow misses,
/// and its `client_ack` kept current on every hit. Read by user space for edge resets.
/// Declared with one CPU's part; the loader sizes it for every possible CPU (a CPU beyond the
/// map's size finds no slot and steers from `FLOWS`). Mmapable (`BPF_F_MMAPABLE`): user space
/// reads a slot's copies in place, without a syscall per CPU, and the values start on a page,
/// so each CPU's part (96 pages) shares no cache line with the next one's.
#[btf_map(name = "SWITCHER_FLOW_CACHE")]
pub static FLOW_CACHE: Array<
    FlowCacheSlot,
    { FLOW_CACHE_SLOTS as usize },
    { BPF_F_MMAPABLE as usize },
> = Array::new();

/// The flow cache's versions: cache slot -> a counter incremented (atomically) after every
/// insert into or delete from `FLOWS` of a key of that slot, and every `FLOW_FINISHING` mark:
/// here when a handshake completes, a flow is forgotten or marked (`switcher_mark_finishing`),
/// by user space when it deletes flows. (What else the data plane writes in place, the
/// client's acknowledgment number and `FLOW_ORIGIN_CLOSED`, a hit does not read from the
/// entry.)
/// A cached copy is a hit only while its slot's version is the one it was filled with.
/// Mmapable (`BPF_F_MMAPABLE`): user space increments the words in place.
#[btf_map(name = "SWITCHER_FLOW_CACHE_VERSIONS")]
pub static FLOW_CACHE_VERSIONS: Array<
    u32,
    { FLOW_CACHE_SLOTS as usize },
    { BPF_F_MMAPABLE as usize },
> = Array::new();

/// Connections between SYN and handshake ACK (see `switcher_common::HandshakeSlot`), a
/// set-associative table in an array of buckets, indexed by flow hash (`handshakes`).
/// Written by ingress on a SYN, updated by TC egress with the origin's SYN-ACK, emptied by
/// ingress when the matching ACK moves the connection to `FLOWS`; a SYN finding its bucket
/// full replaces one of its handshakes, which is what a spoofed SYN flood does, away from the
/// established flows. User space empties the slots of a retired origin.
/// Mmapable (`BPF_F_MMAPABLE`): user space counts and empties slots in place, one word at a
/// time, never overwriting a bucket a SYN is writing.
#[btf_map(name = "SWITCHER_HANDSHAKES")]
pub static HANDSHAKES: Array<
    HandshakeBucket,
    { HANDSHAKE_BUCKETS as usize },
    { BPF_F_MMAPABLE as usize },
> = Array::new();

/// Statistics, written only here, per CPU. Key = origin index, or `STATS_UNSTEERED` for
/// traffic bound to no origin -> counters (see `switcher_common::Counters`).
#[btf_map(name = "SWITCHER_STATS")]
pub static STATS: PerCpuArray<Counters, { STATS_SLOTS as usize }> = PerCpuArray::new();

// Direct server return (`encap`, `decap`); types in `switcher_common::dsr`.

/// Statistics of the encapsulation path, written only here, per CPU. Key = origin index ->
/// counters (see `switcher_common::dsr::EncapCounters`).
#[btf_map(name = "SWITCHER_ENCAP_STATS")]
pub static ENCAP_STATS: PerCpuArray<EncapCounters, { MAX_ORIGINS as usize }> = PerCpuArray::new();

/// Control of the decap program, written by `switcher-ctl decap`. Key 0 -> this host's
/// address and the VIP.
#[btf_map(name = "SWITCHER_DECAP_CONFIG")]
pub static DECAP_CONFIG: Array<DecapConfig, 1> = Array::new();

/// Statistics of the decap program, written only here, per CPU. Key 0 -> counters.
#[btf_map(name = "SWITCHER_DECAP_STATS")]
pub static DECAP_STATS: PerCpuArray<DecapCounters, 1> = PerCpuArray::new();

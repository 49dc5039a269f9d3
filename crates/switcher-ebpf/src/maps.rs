//! Every map of the data plane, declared in one place. Control maps are written by user space
//! (switcher-ctl) and only read here; the conntrack map is written by both (the data plane
//! inserts flows and forgets stale ones, user space deletes a retired origin's flows);
//! statistics are written only
//! here, per CPU. Key/value types and names come from `switcher-common`.
//!
//! BTF-defined maps (`.maps` section): the kernel gets the key and value types, so
//! `bpftool map dump` prints them field by field.

use aya_ebpf::{
    btf_maps::{Array, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use switcher_common::{
    Counters, FlowKey, FlowValue, Origin, VipConfig, MAX_FLOWS, MAX_ORIGINS, STATS_SLOTS,
};

/// Control, written by user space at attach time. Key 0 -> the VIP (address, port, flags).
#[btf_map(name = "SWITCHER_CONFIG")]
pub static CONFIG: Array<VipConfig, 1> = Array::new();

/// Control, written by user space. Key = origin index (0 primary, 1 backup) -> its address
/// and port. Unconfigured slots have `flags == 0`.
#[btf_map(name = "SWITCHER_ORIGINS")]
pub static ORIGINS: Array<Origin, { MAX_ORIGINS as usize }> = Array::new();

/// Control, written by user space on every flip. Key 0 -> index of the origin that new flows
/// (SYN, or a packet of an unknown flow) are steered to.
#[btf_map(name = "SWITCHER_ACTIVE")]
pub static ACTIVE: Array<u32, 1> = Array::new();

/// Conntrack. Key = client address/port/family of a connection to the VIP -> the origin it is
/// pinned to. Inserted here on SYN and on unknown flows; deleted by user space when it retires
/// an origin, and here when a SYN from the same client port goes straight to the flow's
/// origin (`steer::forget_stale_flow`); evicted least-recently-used when full.
#[btf_map(name = "SWITCHER_FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowValue, { MAX_FLOWS as usize }> = LruHashMap::new();

/// Statistics, written only here, per CPU. Key = origin index, or `STATS_UNSTEERED` for
/// traffic bound to no origin -> counters (see `switcher_common::Counters`).
#[btf_map(name = "SWITCHER_STATS")]
pub static STATS: PerCpuArray<Counters, { STATS_SLOTS as usize }> = PerCpuArray::new();

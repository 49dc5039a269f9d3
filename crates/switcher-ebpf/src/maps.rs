//! Every map of the data plane, declared in one place. Control maps are written by user space
//! (switcher-ctl) and only read here; the conntrack map is written by both (the data plane
//! inserts flows, user space deletes a retired origin's flows); statistics are written only
//! here, per CPU. Key/value types and names come from `switcher-common`.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use switcher_common::{
    Counters, FlowKey, FlowValue, Origin, VipConfig, MAX_FLOWS, MAX_ORIGINS, STATS_SLOTS,
};

/// Control, written by user space at attach time. Key 0 -> the VIP (address, port, flags).
#[map(name = "SWITCHER_CONFIG")]
pub static CONFIG: Array<VipConfig> = Array::with_max_entries(1, 0);

/// Control, written by user space. Key = origin index (0 primary, 1 backup) -> its address
/// and port. Unconfigured slots have `flags == 0`.
#[map(name = "SWITCHER_ORIGINS")]
pub static ORIGINS: Array<Origin> = Array::with_max_entries(MAX_ORIGINS, 0);

/// Control, written by user space on every flip. Key 0 -> index of the origin that new flows
/// (SYN, or a packet of an unknown flow) are steered to.
#[map(name = "SWITCHER_ACTIVE")]
pub static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// Conntrack. Key = client address/port/family of a connection to the VIP -> the origin it is
/// pinned to. Inserted here on SYN and on unknown flows; deleted by user space when it retires
/// an origin; evicted least-recently-used when full.
#[map(name = "SWITCHER_FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// Statistics, written only here, per CPU. Key = origin index, or `STATS_UNSTEERED` for
/// traffic bound to no origin -> counters (see `switcher_common::Counters`).
#[map(name = "SWITCHER_STATS")]
pub static STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(STATS_SLOTS, 0);

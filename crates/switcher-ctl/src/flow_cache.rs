//! User space's side of the data plane's flow cache (`switcher-ebpf/src/flow_cache.rs`;
//! docs/ARCHITECTURE.md, "The flow cache"): each CPU keeps copies of the `SWITCHER_FLOWS`
//! entries of the flows it steers, and steers their packets from the copies.
//!
//! Two duties follow for user space:
//! * After it changes or deletes entries of `SWITCHER_FLOWS` (flows marked finishing, paced
//!   drains, finished and retired flows deleted), it makes every copy of them stale
//!   ([`Versions::invalidate`]): otherwise a CPU would go on steering a deleted flow, or keep
//!   sending a finishing flow's requests to its retired origin. Retiring a whole origin (its
//!   generation) changes no entry and needs nothing: the data plane checks the generation on
//!   every hit.
//! * The client's newest acknowledgment number, which an edge reset needs, is in the copies
//!   while they are hits, not in the entry: [`client_acks`] gives every candidate.

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Result;
use aya::maps::MapData;
use switcher_common::{
    FLOW_CACHE_SLOTS, FlowCacheSlot, FlowKey, FlowValue, flow_cache_index, flow_cache_slot,
};

use crate::mmapped::Mapped;

/// The flow cache's versions (`SWITCHER_FLOW_CACHE_VERSIONS`), mapped: user space increments
/// them with atomics, as the data plane does (a map update syscall would write back a value
/// read earlier and lose a concurrent increment).
pub struct Versions {
    /// One word per cache slot.
    words: Mapped<u32>,
}

impl Versions {
    /// Maps `map`, which must be this build's `SWITCHER_FLOW_CACHE_VERSIONS`.
    pub fn new(map: MapData) -> Result<Self> {
        Ok(Versions {
            words: Mapped::new(
                map,
                switcher_common::map_names::FLOW_CACHE_VERSIONS,
                FLOW_CACHE_SLOTS as usize,
            )?,
        })
    }

    /// The version of cache slot `i`.
    fn word(&self, i: usize) -> &AtomicU32 {
        // SAFETY: a word inside the mapping (which lives as long as `self`), 8-byte aligned
        // (see `Mapped::at`); the data plane writes it only atomically.
        unsafe { AtomicU32::from_ptr(self.words.at(i)) }
    }

    /// Makes every CPU's copy of the flows `keys` stale: call it after their entries in
    /// `SWITCHER_FLOWS` were changed or deleted, never before (a copy made in between would
    /// carry the new version and the old entry).
    pub fn invalidate<'k>(&self, keys: impl IntoIterator<Item = &'k FlowKey>) {
        for key in keys {
            self.word(flow_cache_slot(&key.words()) as usize)
                .fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Makes every copy stale (a test or bench that rewrote the flow table wholesale).
    pub fn invalidate_all(&self) {
        for i in 0..self.words.len() {
            self.word(i).fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Where the kernel lists the CPUs that can ever be online.
const POSSIBLE_CPUS: &str = "/sys/devices/system/cpu/possible";

/// The size every loader of the object gives `SWITCHER_FLOW_CACHE`: [`FLOW_CACHE_SLOTS`] for
/// each CPU number up to the highest possible CPU (CPUs brought online later included; a gap
/// in the numbering gets slots no program uses).
pub fn entries() -> u32 {
    cpu_ids_end().saturating_mul(FLOW_CACHE_SLOTS)
}

/// One more than the highest possible CPU number in [`POSSIBLE_CPUS`] ("0-3", "0,2-5"): every
/// number `bpf_get_smp_processor_id` returns is below it. 1 when the file cannot be read or
/// parsed, logged: then only CPU 0's packets use the cache (the others steer from
/// `SWITCHER_FLOWS`, correctly but without it).
fn cpu_ids_end() -> u32 {
    let listed = std::fs::read_to_string(POSSIBLE_CPUS);
    let end = listed.as_deref().ok().and_then(|t| {
        let last = t.trim().rsplit([',', '-']).next()?;
        last.parse::<u32>().ok()?.checked_add(1)
    });
    end.unwrap_or_else(|| {
        tracing::warn!(
            file = POSSIBLE_CPUS,
            listed = ?listed,
            "cannot tell the possible CPUs: the flow cache is sized for CPU 0 only"
        );
        1
    })
}

/// Every CPU's copies (`SWITCHER_FLOW_CACHE`), mapped: user space reads a slot's copies in
/// place, one per CPU, without a syscall each (an edge reset of many flows on a host with
/// many CPUs would otherwise make one map read per flow's slot and CPU).
pub struct Copies {
    /// [`entries`] slots, CPU-major ([`flow_cache_index`]).
    slots: Mapped<FlowCacheSlot>,
}

impl Copies {
    /// Maps `map`, which must be this build's `SWITCHER_FLOW_CACHE` as loaded on this machine
    /// ([`entries`] mmapable slots); anything else, e.g. pins of an earlier build, is refused.
    pub fn new(map: MapData) -> Result<Self> {
        Ok(Copies {
            slots: Mapped::new(
                map,
                switcher_common::map_names::FLOW_CACHE,
                entries() as usize,
            )?,
        })
    }

    /// The CPUs whose slots the map holds.
    pub fn cpus(&self) -> u32 {
        (self.slots.len() / FLOW_CACHE_SLOTS as usize) as u32
    }

    /// Every CPU's copy in cache slot `slot` (< `FLOW_CACHE_SLOTS`), in CPU order. Each copy
    /// is read whole but not atomically: read them once the data plane no longer writes them
    /// (after an RCU grace period, as for an edge reset), or expect a torn copy.
    pub fn of_slot(&self, slot: u32) -> Vec<FlowCacheSlot> {
        (0..self.cpus())
            .map(|cpu| {
                let p = self.slots.at(flow_cache_index(cpu, slot) as usize);
                // SAFETY: a value inside the mapping (which lives as long as `self`), 8-byte
                // aligned; every bit pattern is a `FlowCacheSlot`.
                unsafe { std::ptr::read_volatile(p) }
            })
            .collect()
    }

    /// Changes CPU `cpu`'s copy in slot `slot` with `change` (a test dating a copy or moving
    /// its number). A plain read-modify-write: only while that CPU runs no program on it.
    pub fn update(&self, cpu: u32, slot: u32, change: impl FnOnce(&mut FlowCacheSlot)) {
        let p = self.slots.at(flow_cache_index(cpu, slot) as usize);
        // SAFETY: as in `of_slot`.
        let mut copy = unsafe { std::ptr::read_volatile(p) };
        change(&mut copy);
        // SAFETY: as in `of_slot`; the caller keeps the CPU from writing it meanwhile.
        unsafe { std::ptr::write_volatile(p, copy) };
    }

    /// Empties every CPU's copy (a test or bench starting over; the data plane never needs
    /// it).
    pub fn clear(&self) {
        for i in 0..self.slots.len() {
            // SAFETY: as in `of_slot`.
            unsafe { std::ptr::write_volatile(self.slots.at(i), FlowCacheSlot::default()) };
        }
    }
}

/// The acknowledgment numbers an edge reset of the flow `key` -> `flow` should carry, given
/// `copies`, every CPU's copy in the key's cache slot ([`copies`]): those of the copies of the
/// same flow (same key, origin and generation, whatever their version: a copy made stale by a
/// delete still holds the newest number), the newest first, then the entry's, each once. Read
/// after the flow stopped being steered (its origin's generation moved, or its entry was
/// deleted, and an RCU grace period passed), so no CPU is still updating them.
///
/// The copies come first because they are never older than the entry was when they were made,
/// and the entry may be behind them (a hit moves only its copy, and writes through only when
/// the copy is `FLOW_CACHE_REFRESH_TICKS` jiffies old); among themselves they are ordered by
/// serial comparison (RFC 1982) from the first one, which is right while they are within 2^31
/// of each other, as numbers recorded moments apart are (a copy left by an earlier connection
/// of the same client port to the same origin may sort anywhere).
///
/// Several numbers mean several resets: the client accepts the one equal to its `RCV.NXT`,
/// answers one in its window with a challenge ACK (which the edge's stack resets exactly, the
/// flow being gone) and ignores the others (`crate::edge_rst`), so the order does not decide
/// which one works, and an earlier connection's copy adds one such harmless reset.
pub fn client_acks(copies: &[FlowCacheSlot], key: &FlowKey, flow: &FlowValue) -> Vec<u32> {
    let words = key.words();
    let mut acks: Vec<u32> = copies
        .iter()
        .filter(|s| s.key == words && s.origin == flow.origin && s.generation == flow.generation)
        .map(|s| s.client_ack)
        .collect();
    if let Some(&first) = acks.first() {
        acks.sort_by_key(|a| std::cmp::Reverse(a.wrapping_sub(first) as i32));
        acks.dedup();
    }
    if !acks.contains(&flow.client_ack) {
        acks.push(flow.client_ack);
    }
    acks
}

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

use anyhow::{Context as _, Result};
use aya::maps::{Array, MapData};
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

/// The size every loader of the object gives `SWITCHER_FLOW_CACHE`: [`FLOW_CACHE_SLOTS`] for
/// each possible CPU (`/sys/devices/system/cpu/possible`: CPUs brought online later included).
pub fn entries() -> u32 {
    let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1)) as u32;
    cpus.saturating_mul(FLOW_CACHE_SLOTS)
}

/// The CPUs whose slots `cache` holds (its size over [`FLOW_CACHE_SLOTS`]).
fn cpus<M: std::borrow::Borrow<MapData>>(cache: &Array<M, FlowCacheSlot>) -> u32 {
    cache.len() / FLOW_CACHE_SLOTS
}

/// Empties every CPU's copy (a test or bench starting over; the data plane never needs it):
/// one map write per slot.
pub fn clear<M: std::borrow::BorrowMut<MapData>>(
    cache: &mut Array<M, FlowCacheSlot>,
) -> Result<()> {
    for i in 0..cache.len() {
        cache
            .set(i, FlowCacheSlot::default(), 0)
            .context("writing SWITCHER_FLOW_CACHE")?;
    }
    Ok(())
}

/// Every CPU's copy in cache slot `slot` (< `FLOW_CACHE_SLOTS`): one map read per CPU.
pub fn copies<M: std::borrow::Borrow<MapData>>(
    cache: &Array<M, FlowCacheSlot>,
    slot: u32,
) -> Result<Vec<FlowCacheSlot>> {
    (0..cpus(cache))
        .map(|cpu| {
            cache
                .get(&flow_cache_index(cpu, slot), 0)
                .context("reading SWITCHER_FLOW_CACHE")
        })
        .collect()
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

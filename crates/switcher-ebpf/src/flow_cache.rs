//! The flow cache: each CPU's direct-mapped copy of the `SWITCHER_FLOWS` entries of the flows
//! it is seeing packets of (docs/ARCHITECTURE.md, "The flow cache").
//!
//! Why: a packet of an established flow, the commonest packet to the VIP, paid for one lookup
//! in the kernel's LRU hash map (hashing a 20-byte key with `jhash`, walking a bucket,
//! comparing, and the LRU's reference bit), about half of its cost. This CPU's slot, in a
//! plain array of every CPU's slots, is an array access that the verifier inlines, so a hit
//! costs a short hash of the key ([`switcher_common::flow_cache_slot`]), the CPU's number
//! (inlined too), two independent loads (the slot's version and the slot) and a compare of
//! six words. A miss (another flow in the slot, a stale version, a SYN) takes the map lookup
//! as before and fills the slot.
//!
//! # Why a hit is never stale
//! Every insert into or delete from `SWITCHER_FLOWS`, and every flag user space sets on an
//! entry, is followed by an increment of its slot's version in `SWITCHER_FLOW_CACHE_VERSIONS`
//! ([`invalidate`] here, when a handshake completes or a flow is forgotten; `flow_cache.rs` in
//! switcher-ctl, when user space marks flows finishing or deletes them). What the data plane
//! writes in place (the client's acknowledgment number, `FLOW_ORIGIN_CLOSED`) a hit does not
//! read from the entry. A slot is filled with the version read *before* the map lookup whose
//! entry it copies ([`probe`], then [`Probe::fill`]): if the lookup saw the entry from before a
//! change, the version was read before the increment that follows that change, so the copy
//! carries an old version and is a miss from then on. The version read is a load-acquire
//! (`BPF_LOAD_ACQ`, BPF ISA v4), so no later load, the lookup's included, is made before it on
//! any architecture: the x86-64 JIT emits it as a plain load (x86 keeps loads in order), the
//! arm64 JIT as `ldar`.
//! Retiring an origin changes no entry: a hit checks the origin's generation like a lookup.
//! What a copy does not hold, `FLOW_ORIGIN_CLOSED`, only a SYN reads, and SYNs do not use the
//! cache.
//!
//! # The LRU, and the client's acknowledgment number
//! A hit does not touch `SWITCHER_FLOWS`, so the LRU would see the busiest flows as idle, and
//! the entry would not learn the client's newest acknowledgment number, which an edge reset
//! needs (`FlowValue::client_ack`; a hit records it in the copy). So a hit on a copy filled or
//! refreshed `FLOW_CACHE_REFRESH_TICKS` jiffies ago or more looks the entry up ([`refresh`]):
//! the lookup sets the LRU's reference bit, the number is written through, and a copy whose
//! entry is gone (evicted, which increments no version) is dropped. In between, user space
//! reads every CPU's copy of a flow when it resets one, and a copy taken by another flow
//! writes its number back to the entry first ([`Probe::fill`]).
//!
//! The entry's number is written by several CPUs (each one's misses, refreshes and
//! give-backs), so those writes are compare-and-swaps (`steer::advance_ack`,
//! `steer::replace_ack`): a number is never overwritten by an older one that was read before it
//! was stored.

use core::intrinsics::{atomic_load, atomic_xadd, AtomicOrdering};

use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_jiffies64};
use switcher_common::{
    flow_cache_index, flow_cache_slot, FlowCacheSlot, FlowKey, FlowValue, FLOW_CACHE_REFRESH_TICKS,
};

use crate::maps::{FLOWS, FLOW_CACHE, FLOW_CACHE_VERSIONS};
use crate::steer::{advance_ack, replace_ack};

/// The low 32 bits of the kernel's `jiffies`, for [`FlowCacheSlot::refreshed`]. The verifier
/// inlines `bpf_jiffies64` on 64-bit JITs as one load of the kernel's variable: no call.
#[inline(always)]
fn ticks() -> u32 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_jiffies64() as u32 }
}

/// A key as [`FlowKey::words`] computes them, without the byte shuffling (one load a word).
#[inline(always)]
fn words(key: &FlowKey) -> [u32; 5] {
    // SAFETY: `FlowKey` is `repr(C, align(4))`, 20 bytes without padding (asserted in
    // switcher-common): exactly five aligned words.
    unsafe { core::ptr::read((key as *const FlowKey).cast::<[u32; 5]>()) }
}

/// A packet's slot in this CPU's cache, and the slot's version as read before the packet's
/// `SWITCHER_FLOWS` lookup.
///
/// A plain struct with a null slot for "none" ([`Probe::NONE`]), not an `Option`: LLVM leaves
/// the payload of a `None` undefined and may spill it from a register the verifier considers
/// unreadable, which it rejects (it did, in a bench variant of `switcher_xdp`).
pub struct Probe {
    /// This CPU's slot; null when there is none to use.
    slot: *mut FlowCacheSlot,
    /// `SWITCHER_FLOW_CACHE_VERSIONS` of the slot, read first.
    version: u32,
    /// The packet's key ([`words`]).
    key: [u32; 5],
}

/// The slot of `key` on this CPU, to test ([`Probe::hit`]) and, on a miss, to fill once the
/// entry has been looked up ([`Probe::fill`]). [`Probe::NONE`] only if a map access fails: a
/// CPU beyond the size the loader gave `SWITCHER_FLOW_CACHE` (the slot index is masked to
/// the arrays' size).
#[inline(always)]
pub fn probe(key: &FlowKey) -> Probe {
    let key = words(key);
    let index = flow_cache_slot(&key);
    let Some(version) = FLOW_CACHE_VERSIONS.get_ptr(index) else {
        return Probe::NONE;
    };
    // SAFETY: a pointer into the array, valid while the program runs, 4-byte aligned. A
    // load-acquire: it must stay before the map lookup that follows (see the module's docs).
    let version = unsafe { atomic_load::<u32, { AtomicOrdering::Acquire }>(version) };
    // SAFETY: a helper without arguments (inlined by the verifier on x86-64 and arm64).
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(slot) = FLOW_CACHE.get_ptr_mut(flow_cache_index(cpu, index)) else {
        return Probe::NONE;
    };
    Probe { slot, version, key }
}

impl Probe {
    /// No slot: never a hit, and nothing to fill (a SYN's, which does not use the cache).
    pub const NONE: Probe = Probe {
        slot: core::ptr::null_mut(),
        version: 0,
        key: [0; 5],
    };

    /// This CPU's copy of the flow, when the slot holds this key at its current version.
    #[inline(always)]
    pub fn hit(&self) -> Option<&mut FlowCacheSlot> {
        if self.slot.is_null() {
            return None;
        }
        // SAFETY: a slot of this CPU's part of the array (indexed by no other CPU), valid while
        // the program runs; no other program runs on this CPU meanwhile, and user space only
        // reads it.
        let s = unsafe { &mut *self.slot };
        // Word by word, OR-folded into one test (comparing the arrays compiles to a call of a
        // byte-wise `memcmp`).
        let mut diff = s.version ^ self.version;
        let mut i = 0;
        while i < 5 {
            diff |= s.key[i] ^ self.key[i];
            i += 1;
        }
        (diff == 0).then_some(s)
    }

    /// Copies the entry `flow` (found after [`probe`]) into the slot, with the version read
    /// then. A copy of another flow in the slot gives its acknowledgment number back to that
    /// flow's entry first, so it is not lost ([`write_back`]).
    #[inline(always)]
    pub fn fill(&self, flow: *const FlowValue) {
        if self.slot.is_null() {
            return;
        }
        // SAFETY: as in `hit`.
        let s = unsafe { &mut *self.slot };
        // This flow's own stale copy too: its number may be newer than this (reordered)
        // packet's.
        if s.key[4] != 0 && s.client_ack != s.base_ack {
            write_back(s);
        }
        // SAFETY: a pointer into the map value, valid while the program runs (RCU); the
        // fields are read once each.
        unsafe {
            s.origin = (*flow).origin;
            s.generation = (*flow).generation;
            s.flags = (*flow).flags;
            s.client_ack = (*flow).client_ack;
        }
        s.base_ack = s.client_ack;
        s.refreshed = ticks();
        s.key = self.key;
        s.version = self.version;
    }
}

/// The entry of the copy `s`'s flow, if `SWITCHER_FLOWS` holds one of the same origin and
/// generation (the same flow, or a later connection of its client port to the same origin).
#[inline(always)]
fn entry_of(s: &FlowCacheSlot) -> Option<*mut FlowValue> {
    // SAFETY: five words are a `FlowKey` (see `words`); every bit pattern is one.
    let key: FlowKey = unsafe { core::mem::transmute(s.key) };
    let f = FLOWS.get_ptr_mut(&key)?;
    // SAFETY: a pointer into the map value, valid while the program runs (RCU).
    let same = unsafe { (*f).origin == s.origin && (*f).generation == s.generation };
    same.then_some(f)
}

/// Writes the acknowledgment number of the copy `s`, about to be refilled, back to its entry,
/// if the entry still holds the number the copy started from (`base_ack`: then it is the same
/// connection, and nothing newer reached the entry) and the copy's is newer. Whatever the
/// copy's version (a version moves for any key of the slot); a later connection of the same
/// client port has another number in its entry and is left alone.
#[inline(always)]
fn write_back(s: &FlowCacheSlot) {
    let Some(f) = entry_of(s) else {
        return;
    };
    if (s.client_ack.wrapping_sub(s.base_ack) as i32) <= 0 {
        return;
    }
    // SAFETY: a pointer to the map value, valid while the program runs (RCU). A
    // compare-and-swap: "still holds `base_ack`" and the store are one step, so a number
    // another CPU stored meanwhile is never overwritten.
    unsafe { replace_ack(f, s.base_ack, s.client_ack) };
}

/// On a hit of the copy `s` whose last fill or refresh is `FLOW_CACHE_REFRESH_TICKS` jiffies
/// old or more (see the module's docs): looks its entry up (the LRU's reference bit), moves
/// the entry's acknowledgment number forward to the copy's and the copy's to the entry's,
/// whichever is newer, and returns false, the
/// copy emptied, when the entry is gone or is another flow's: the packet then takes the miss
/// path. True, with nothing done, on other hits: one load of `jiffies` and a compare.
#[inline(always)]
pub fn refresh(s: &mut FlowCacheSlot) -> bool {
    let now = ticks();
    if (now.wrapping_sub(s.refreshed) as i32) < FLOW_CACHE_REFRESH_TICKS as i32 {
        return true;
    }
    let Some(f) = entry_of(s) else {
        *s = FlowCacheSlot::default();
        return false;
    };
    // SAFETY: a pointer to the map value, valid while the program runs (RCU). The copy keeps
    // the newer of the two numbers, and its base is what the entry holds, so that a later
    // `write_back` replaces exactly that (when the swap lost to two other CPUs, the entry may
    // hold an older number than the copy's). The copy never holds one older than its base,
    // which `write_back` would otherwise write, moving the entry back.
    let entry = unsafe { advance_ack(f, s.client_ack) };
    if (entry.wrapping_sub(s.client_ack) as i32) > 0 {
        s.client_ack = entry;
    }
    s.base_ack = entry;
    s.refreshed = now;
    true
}

/// Makes every CPU's copy of `key`'s entry stale: called after each insert or delete of
/// `key` in `SWITCHER_FLOWS`. An atomic add: user space and other CPUs increment the same
/// words.
#[inline(always)]
pub fn invalidate(key: &FlowKey) {
    let index = flow_cache_slot(&words(key));
    if let Some(v) = FLOW_CACHE_VERSIONS.get_ptr_mut(index) {
        // SAFETY: a pointer into the array, valid while the program runs, 4-byte aligned.
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(v, 1) };
    }
}

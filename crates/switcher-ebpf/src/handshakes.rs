//! The handshake table (`maps::HANDSHAKES`): connections between their SYN and the client's
//! ACK of the origin's SYN-ACK (why the data plane keeps them: `steer::steer_request`).
//!
//! # Shape
//! A set-associative table in a `BPF_MAP_TYPE_ARRAY`: `HANDSHAKE_BUCKETS` buckets of
//! `HANDSHAKE_WAYS` slots (`switcher_common::HandshakeBucket`). A connection's bucket is the
//! low bits of its request's flow hash (the Maglev hash of client -> VIP, which a SYN computes
//! anyway for its table slot), and its handshake sits in any slot of that bucket. A SYN takes
//! the slot already holding its connection (a retransmission), else an empty one, else one
//! chosen by its initial sequence number (random per connection), whose handshake is lost.
//!
//! # Why not a hash map
//! It was an LRU hash (`BPF_F_NO_COMMON_LRU`) until 2026-12-02. One insert there costs
//! 130-160 ns for a key already present and 650-690 ns for a new one once the table is full,
//! which is every SYN of a flood (BENCHMARKS.md, 2026-12-02, branch dp-floor: a plain
//! preallocated hash is no better, 53 ns and 390-420 ns), against an empty program's 8-10 ns.
//! Here a SYN costs an inlined array lookup, at most four key compares and twelve stores, so
//! a SYN flood costs the edge little more than the SYN parse does.
//!
//! # What is given up, and why it is acceptable
//! * Capacity is per bucket: a live handshake is lost only when its bucket is full and a new
//!   SYN picks its slot, i.e. while it waits one round trip for its ACK, three other
//!   connections fill its bucket (1 of 65,536) and a fourth arrives whose ISN picks its slot.
//!   With 1,000 handshakes in flight (0.015 a bucket) that is about one handshake in 10^9
//!   (Poisson: 0.015^4 / 4! / 4); under a SYN flood, handshakes are replaced as the LRU evicted them
//!   (the flood's SYNs land in every bucket), and the client's retransmitted SYN starts over.
//! * Slots are written without a lock. A SYN first **claims** its slot: one compare-and-swap
//!   (`BPF_CMPXCHG`, 64-bit) of the 8 bytes holding the key's port/family word and the origin
//!   word, from what it saw there (empty, its own connection, or the handshake it replaces)
//!   to `HANDSHAKE_CLAIMED_FAMILY` (no connection's family, so no reader matches it and no
//!   other SYN takes it). It then writes the other words, and publishes the port/family and
//!   origin words last with an atomic exchange, which is fully ordered: a reader that matches
//!   the key sees the rest written, on every architecture. A SYN that loses the claim to
//!   another CPU records nothing: it is steered all the same, and its ACK, finding no
//!   handshake, is reset by the edge's stack, so the client connects again. [`remove`] empties
//!   a slot by a compare-and-swap of those 8 bytes from what `find` read, so a SYN that took
//!   the slot meanwhile keeps it. Cost: two locked instructions per SYN, one per completed
//!   handshake (BENCHMARKS.md, 2026-12-02, session 8). Until session 8 the writes were plain
//!   stores, and two SYNs in one bucket at the same instant could mix one slot, or a
//!   completing handshake empty a slot another SYN had just taken.
//! * Readers compare the key, read the fields and compare the key again, every word with a
//!   load-acquire (`BPF_LOAD_ACQ`, BPF ISA v4: a plain load on x86-64, `ldar` on arm64), so
//!   the second compare is made after the fields are read, on every architecture: a reader
//!   that overlaps a writer sees the claimed family, or another key, and finds nothing; it
//!   never sees a mix. Readers of a handshake are its SYN-ACK and ACK, a round trip after its
//!   SYN's write, so only another SYN of the same bucket writing at that instant can overlap
//!   them.
//! * What is left: a `remove` can still empty a slot that a SYN of another
//!   client, from the same port, claimed and wrote between the key check and the swap
//!   (nanoseconds; the same bucket of 65,536 and the same port number).
//! * Abandoned handshakes (a SYN never answered, a client that gave up) stay until a SYN
//!   reuses their slot; they cost nothing but the slot.
//!
//! User space maps the array (`BPF_F_MMAPABLE`) to count handshakes and empty those of a
//! retired origin, each with a compare-and-swap of its port/family word
//! (`switcher-ctl/src/handshake_table.rs`), which a claimed slot never matches.

use core::{
    intrinsics::{atomic_cxchg, atomic_load, atomic_xchg, AtomicOrdering},
    ptr::{read_volatile, write_volatile},
};

use switcher_common::{
    handshake_bucket, FlowKey, HANDSHAKE_CLAIMED_FAMILY, HANDSHAKE_ISN_SEEN, HANDSHAKE_WAYS,
};

use crate::maps::HANDSHAKES;

/// 4-byte words per slot (`HandshakeSlot`, 48 bytes; its layout is pinned in switcher-common).
const SLOT_WORDS: usize = 12;
/// Word of a slot: the key's client port (low half, network order) and family (high half);
/// 0 in an empty slot.
const W_PORT_FAMILY: usize = 4;
/// Word of a slot: `Handshake::origin`.
const W_ORIGIN: usize = 5;
/// Word of a slot: `Handshake::flags`.
const W_FLAGS: usize = 6;
/// Word of a slot: `Handshake::expect_ack`.
const W_EXPECT_ACK: usize = 7;
/// Word of a slot: `Handshake::client_isn`.
const W_CLIENT_ISN: usize = 8;
/// Words of a slot: `Handshake::hop_mac` then `local_mac` (12 bytes).
const W_MACS: usize = 9;
/// The port/family word and the origin word of a slot being written (see [`claim`]).
const CLAIMED: u64 = pair((HANDSHAKE_CLAIMED_FAMILY as u32) << 16, u32::MAX);

/// The claim word of a slot whose port/family word is `port_family` and origin word `origin`
/// (little-endian: the port/family word, at the lower address, is the low half).
#[inline(always)]
const fn pair(port_family: u32, origin: u32) -> u64 {
    port_family as u64 | (origin as u64) << 32
}

#[cfg(target_endian = "big")]
compile_error!("the handshake slot's claim word assumes little-endian (bpfel)");

// The claim's 8 bytes: the port/family word and the origin word after it, 8-byte aligned in
// every slot (slots are 48 bytes; the kernel keeps map values 8-byte aligned).
const _: () = assert!(W_ORIGIN == W_PORT_FAMILY + 1 && W_PORT_FAMILY % 2 == 0);
const _: () = assert!(SLOT_WORDS % 2 == 0);

/// A connection as the table compares it: its `FlowKey`, read as five words where the caller
/// built it (on the stack, for its flow-table lookup).
///
/// Read word by word, each time a slot is compared, not copied: a copy of the five words,
/// kept across the map lookups in between (BPF calls, which leave only four registers),
/// was stored to other stack slots and loaded back anyway (BENCHMARKS.md, 2026-12-02,
/// branch hsarray). Nor assembled from the packet's address: that made LLVM keep the parsed
/// address as 16 separate bytes, and every flow lookup then built its key with 16 one-byte
/// stores (the tracked flow 1.17x slower in the same rounds).
#[derive(Clone, Copy)]
pub struct Key<'a>(&'a FlowKey);

impl<'a> Key<'a> {
    /// The table's view of the connection `k`.
    #[inline(always)]
    pub fn of(k: &'a FlowKey) -> Self {
        Key(k)
    }

    /// Word `i` (< 5) of the key: its address words, then port and family.
    #[inline(always)]
    fn word(&self, i: usize) -> u32 {
        // SAFETY: `FlowKey` is 20 bytes of plain integers, 4-byte aligned (pinned in
        // switcher-common): five u32 words, `i` < 5 at every call.
        unsafe { read_volatile((self.0 as *const FlowKey).cast::<u32>().add(i)) }
    }
}

/// A handshake found in the table: where it is, and the fields the data plane reads.
pub struct Found<'a> {
    /// The slot's first word, for [`set_isn_seen`] and [`remove`].
    slot: *mut u32,
    /// The connection's key, to check it still holds the slot when writing it.
    key: Key<'a>,
    /// `Handshake::origin`.
    pub origin: u32,
    /// `Handshake::flags`.
    pub flags: u32,
    /// `Handshake::expect_ack`.
    pub expect_ack: u32,
}

/// The first word of the bucket of flow hash `hash`.
#[inline(always)]
fn bucket(hash: u32) -> Option<*mut u32> {
    let b = HANDSHAKES.get_ptr_mut(handshake_bucket(hash))?;
    Some(b.cast::<u32>())
}

/// Word `w` of the slot at `s`.
///
/// # Safety
/// `s` is a slot of a bucket from [`bucket`], `w < SLOT_WORDS`.
#[inline(always)]
unsafe fn load(s: *mut u32, w: usize) -> u32 {
    // SAFETY: per the caller. A load-acquire: each word is read once, where it is written
    // here, and no later load of the slot is made before it (module docs).
    unsafe { atomic_load::<u32, { AtomicOrdering::Acquire }>(s.add(w)) }
}

/// Writes word `w` of the slot at `s`.
///
/// # Safety
/// As [`load`].
#[inline(always)]
unsafe fn store(s: *mut u32, w: usize, v: u32) {
    // SAFETY: per the caller.
    unsafe { write_volatile(s.add(w), v) }
}

/// The slot's port/family word and origin word, as one 8-byte word (the port/family word in
/// the low half: little-endian), for the atomics below.
///
/// Core's `AtomicU64` has no compare-and-swap on the BPF target (its `atomic_cas` is off,
/// though the instruction set has had `BPF_CMPXCHG` on 64-bit words since Linux 5.12), hence
/// the intrinsics, which LLVM's BPF backend lowers to `BPF_CMPXCHG` / `BPF_XCHG`.
///
/// # Safety
/// As [`load`].
#[inline(always)]
unsafe fn claim_word(s: *mut u32) -> *mut u64 {
    // SAFETY: per the caller; 8-byte aligned (asserted above).
    unsafe { s.add(W_PORT_FAMILY).cast::<u64>() }
}

/// Claims the slot at `s` for writing, if it still holds what the caller saw (`seen`, its
/// claim word: empty, the same connection, or the handshake it replaces): one
/// compare-and-swap, so two SYNs never write one slot at once, and a slot emptied or taken
/// meanwhile is left alone. False when another CPU got there first; the SYN then records
/// nothing (its ACK finds no handshake and is reset by the edge's stack; the client connects
/// again).
///
/// # Safety
/// As [`load`].
#[inline(always)]
unsafe fn claim(s: *mut u32, seen: u64) -> bool {
    // Claimed by another SYN (its family is no connection's), whatever its origin word.
    if seen as u32 >> 16 == u32::from(HANDSHAKE_CLAIMED_FAMILY) {
        return false;
    }
    // SAFETY: per the caller.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::Relaxed }>(
            claim_word(s),
            seen,
            CLAIMED,
        )
        .1
    }
}

/// Whether the slot at `s` holds connection `k`.
///
/// # Safety
/// As [`load`].
#[inline(always)]
unsafe fn holds(s: *mut u32, k: &Key<'_>) -> bool {
    // SAFETY: per the caller; words 0..=4 are the key. The port/family word first: it tells
    // most other connections apart, and it is 0 in an empty slot or one being written.
    unsafe {
        load(s, W_PORT_FAMILY) == k.word(4)
            && (load(s, 0) ^ k.word(0))
                | (load(s, 1) ^ k.word(1))
                | (load(s, 2) ^ k.word(2))
                | (load(s, 3) ^ k.word(3))
                == 0
    }
}

/// The handshake of connection `k`, whose request's flow hash is `hash`, if the table has it.
#[inline(always)]
pub fn find<'a>(k: &Key<'a>, hash: u32) -> Option<Found<'a>> {
    let b = bucket(hash)?;
    let mut w = 0;
    while w < HANDSHAKE_WAYS as usize {
        // SAFETY: slot `w` of the bucket (the loop bound is the number of ways).
        unsafe {
            let s = b.add(w * SLOT_WORDS);
            if holds(s, k) {
                let found = Found {
                    slot: s,
                    key: *k,
                    origin: load(s, W_ORIGIN),
                    flags: load(s, W_FLAGS),
                    expect_ack: load(s, W_EXPECT_ACK),
                };
                // A SYN on another CPU may have taken the slot while it was read.
                return holds(s, k).then_some(found);
            }
        }
        w += 1;
    }
    None
}

/// Records the handshake of connection `k` (flow hash `hash`) pinned to `origin`: its SYN's
/// sequence number `client_isn` and the SYN frame's Ethernet addresses, `eth` being the
/// frame's first 12 bytes as three native words (destination, then source address). A
/// handshake this connection already had is replaced (a retransmitted SYN).
#[inline(always)]
pub fn record(k: &Key<'_>, hash: u32, origin: u32, client_isn: u32, eth: [u32; 3]) {
    let Some(b) = bucket(hash) else { return };
    // The slot already holding `k`, else the first empty one, else the one the SYN's
    // sequence number picks (random per connection, so a flood cannot aim at one slot).
    // SAFETY: slots 0..HANDSHAKE_WAYS of the bucket; the victim index is masked into range.
    // With the port/family word the slot must still have for the choice to hold: this
    // connection's, or 0 for an empty slot (`None`: a victim, whatever it holds).
    let (s, expect) = unsafe {
        let mut mine = None;
        let mut empty = None;
        let mut w = 0;
        while w < HANDSHAKE_WAYS as usize {
            let s = b.add(w * SLOT_WORDS);
            if holds(s, k) {
                mine = Some(s);
                break;
            }
            if empty.is_none() && load(s, W_PORT_FAMILY) == 0 {
                empty = Some(s);
            }
            w += 1;
        }
        match (mine, empty) {
            (Some(s), _) => (s, Some(k.word(4))),
            (None, Some(s)) => (s, Some(0)),
            (None, None) => (
                b.add((client_isn & (HANDSHAKE_WAYS - 1)) as usize * SLOT_WORDS),
                None,
            ),
        }
    };
    // SAFETY: `s` is a slot of the bucket. One 8-byte load: the pair as it is at one instant,
    // which the claim then swaps only if it is still that; a slot chosen as empty (or as this
    // connection's) that another SYN took since the scan is left to it.
    let seen = unsafe { read_volatile(claim_word(s)) };
    if expect.is_some_and(|pf| seen as u32 != pf) || !unsafe { claim(s, seen) } {
        return;
    }
    // The frame's addresses, destination (this edge) then source (the client's hop), as the
    // slot keeps them: hop_mac (source) then local_mac (destination).
    let hop_lo = eth[1] >> 16 | eth[2] << 16;
    let hop_hi_local_lo = eth[2] >> 16 | eth[0] << 16;
    let local_hi = eth[0] >> 16 | eth[1] << 16;
    // SAFETY: `s` is a slot of the bucket, claimed: no reader matches it and no other writer
    // takes it until the port/family word is written, last, with the origin, by an atomic
    // exchange (fully ordered: the other words are visible first, on every architecture).
    unsafe {
        store(s, 0, k.word(0));
        store(s, 1, k.word(1));
        store(s, 2, k.word(2));
        store(s, 3, k.word(3));
        store(s, W_FLAGS, 0);
        store(s, W_EXPECT_ACK, 0);
        store(s, W_CLIENT_ISN, client_isn);
        store(s, W_MACS, hop_lo);
        store(s, W_MACS + 1, hop_hi_local_lo);
        store(s, W_MACS + 2, local_hi);
        atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(claim_word(s), pair(k.word(4), origin));
    }
}

/// Records what the origin's SYN-ACK says: the ACK that completes the handshake must carry
/// `expect_ack` (its initial sequence number + 1).
#[inline(always)]
pub fn set_isn_seen(f: &Found<'_>, expect_ack: u32) {
    // SAFETY: a slot from `find`. A SYN of another connection taking the slot meanwhile gets
    // these two words overwritten by its own record or keeps a number its ACK cannot match.
    unsafe {
        if holds(f.slot, &f.key) {
            store(f.slot, W_EXPECT_ACK, expect_ack);
            store(f.slot, W_FLAGS, f.flags | HANDSHAKE_ISN_SEEN);
        }
    }
}

/// Empties the slot of a handshake `find` returned, unless another connection has taken it
/// since. Returns whether it did.
///
/// One compare-and-swap of the claim word (port/family and origin), after comparing the
/// address: a SYN that claims the slot between the two makes the swap fail, so its handshake
/// is never emptied. (A SYN of another client from the same port, to the same origin, that
/// claims and writes the slot in between would be: two connections in one bucket of 65,536
/// within nanoseconds, from one port number.)
#[inline(always)]
pub fn remove(f: &Found<'_>) -> bool {
    // SAFETY: a slot from `find`.
    unsafe {
        if !holds(f.slot, &f.key) {
            return false;
        }
        let mine = pair(f.key.word(4), f.origin);
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::Relaxed }>(
            claim_word(f.slot),
            mine,
            0,
        )
        .1
    }
}

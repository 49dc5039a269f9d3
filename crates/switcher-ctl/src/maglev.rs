//! Maglev consistent hashing: the lookup table that spreads new flows over the origins in
//! rotation, in proportion to their weights, and the flow hash that indexes it.
//!
//! Reference: D. E. Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
//! Balancer", NSDI'16, section 3.4 ("Consistent Hashing", Pseudocode 1). Weights as in Katran's
//! `MaglevHashV2` (facebookincubator/katran, `katran/lib/MaglevHashV2.cpp`, offsets and skips in
//! `katran/lib/MaglevBase.cpp`), see "Weights" below.
//!
//! Pure: no I/O, no clock, no randomness. The control plane builds a [`Table`] with [`build`]
//! on every health or weight change and copies [`Table::slots`] into the data plane's array;
//! the data plane indexes it with [`slot_index`]`(`[`flow_hash_v4`]`(...))` (or the IPv6 one).
//!
//! # The contract: same inputs, same table, on every edge and across releases
//!
//! Several edges behind one ECMP router must send a flow to the same origin whichever edge
//! receives it, and a control-plane upgrade must not reshuffle every viewer. So everything
//! below is part of the contract: changing any of it is a deliberate, coordinated change,
//! and the golden values in `tests/maglev.rs` catch an accidental one.
//!
//! **Backend permutation** ([`backend_permutation`]). Each backend is identified by its stable
//! name (the operator's origin name, UTF-8 bytes, not its address, so re-addressing an origin
//! keeps its slots). With `M` the table size (a prime):
//! * `h = FNV-1a-64(name)` (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`;
//!   [`fnv1a64`]);
//! * `offset = fmix64(h ^ OFFSET_SEED) % M`, `skip = fmix64(h ^ SKIP_SEED) % (M - 1) + 1`,
//!   where `fmix64` is MurmurHash3's 64-bit finalizer ([`fmix64`]) and the seeds are
//!   [`OFFSET_SEED`] and [`SKIP_SEED`];
//! * the backend's preference list is `(offset + j * skip) % M` for `j = 0, 1, ...`; `M` prime
//!   and `1 <= skip < M` make it a permutation of every slot (paper, section 3.4).
//!
//! FNV-1a and fmix64 are a few lines each, specified in public documents (the FNV draft,
//! draft-eastlake-fnv; MurmurHash3's `fmix64`) and implemented here, so the table does not
//! depend on a crate's version. FNV-1a alone mixes short names poorly in its high bits; fmix64
//! is a bijection with full avalanche, and two different seeds give offset and skip that are
//! independent, as Katran does with two MurmurHash3 seeds.
//!
//! **Population** ([`build`]): Pseudocode 1 of the paper, with weighted turns (below). Backends
//! take turns in byte order of their names (not in the caller's order, so two edges that list
//! the same origins differently still agree); in its turn a backend takes the first slot of its
//! preference list that is still free. The table is full after exactly `M` placements.
//!
//! **Flow hash** ([`flow_hash_v4`], [`flow_hash_v6`], [`slot_index`]): the Linux kernel's
//! `jhash2()` (`include/linux/jhash.h`, Bob Jenkins' lookup3 `hashword()`) over u32 words,
//! seed [`FLOW_HASH_SEED`], then `slot = hash * M / 2^32` ([`slot_index`]). See
//! [`flow_hash_v4`] for the words.
//!
//! # Weights
//!
//! The paper says only that weights adjust "the relative frequency of the backends' turns".
//! Katran has two realisations. `MaglevHash` (V1) lets a backend take `weight` slots in its
//! first turn and one per turn after that, so shares are proportional to weights only in the
//! first round and drift towards equal after it. `MaglevHashV2` gives each backend a credit:
//! every round it adds its weight, and whenever the credit reaches the largest weight it takes
//! one turn (one slot) and pays the largest weight back. Turns, hence slots, are then in
//! proportion to the weights throughout (within one slot plus rounding, see `tests/maglev.rs`),
//! and each turn still takes the next free slot of the backend's own preference list, which
//! is what keeps disruption minimal. We use V2.
//!
//! A backend of weight 0 takes no turn and gets no slot: the table is the same as without it
//! (draining or unhealthy origins can be passed with weight 0 or left out, same result).
//!
//! # No backend
//!
//! When no backend has a weight above 0, [`build`] returns an *empty* table: still `M` slots
//! (the data plane's array has a fixed size), every one [`NO_BACKEND`]; [`Table::is_empty`] is
//! true and [`Table::lookup`] gives `None`. The data plane must treat [`NO_BACKEND`] as "no
//! origin to steer to" (what it then does, pass or fall back, is the caller's policy).
//!
//! # Table size
//!
//! [`DEFAULT_TABLE_SIZE`] = 65,537 (the paper's and Katran's default). The paper recommends
//! `M` well above the number of backends (`M > 100 N` keeps the imbalance under 1%); at 65,537
//! that is comfortable far beyond the 16 origins we need. Smaller primes are for tests.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Default lookup table size: a prime, as the permutations require. The data plane's Maglev
/// array must have exactly this many entries.
pub const DEFAULT_TABLE_SIZE: u32 = switcher_common::MAGLEV_SIZE;

/// Slot value meaning "no backend": only found in an empty table (no backend of weight > 0).
pub const NO_BACKEND: u32 = u32::MAX;

/// Seed XORed into the name hash before [`fmix64`] to get a backend's offset
/// (ASCII "maglev-o"). Part of the contract.
pub const OFFSET_SEED: u64 = 0x6d61_676c_6576_2d6f;

/// Seed XORed into the name hash before [`fmix64`] to get a backend's skip
/// (ASCII "maglev-s"). Part of the contract.
pub const SKIP_SEED: u64 = 0x6d61_676c_6576_2d73;

/// `initval` of [`jhash2`] in the flow hash (ASCII "HLSe"). Part of the contract: the data
/// plane uses the same value (one definition, in `switcher_common::flow_hash`).
pub const FLOW_HASH_SEED: u32 = switcher_common::flow_hash::FLOW_HASH_SEED;

/// FNV-1a 64-bit offset basis (draft-eastlake-fnv, section 5).
const FNV64_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV 64-bit prime (draft-eastlake-fnv, section 5).
const FNV64_PRIME: u64 = 0x0000_0100_0000_01b3;

/// One backend (origin) given to [`build`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend<'a> {
    /// Stable name, the same on every edge (the operator's origin name). Its bytes alone
    /// decide the backend's preference list; names must be unique.
    pub name: &'a str,
    /// Relative weight. 0 means no slot (drained, unhealthy or switched off).
    pub weight: u32,
}

/// Why [`build`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// The table size is not a prime, so the preference lists would not be permutations.
    #[error("Maglev table size {0} is not a prime (65537 is the default)")]
    SizeNotPrime(u32),
    /// Two backends share a name, so they would share a preference list.
    #[error("two Maglev backends are named {0:?}; names must be unique")]
    DuplicateName(String),
    /// More backends than a slot can index (slot values are `u32`, [`NO_BACKEND`] reserved).
    #[error("{0} Maglev backends is more than a table slot can index")]
    TooManyBackends(usize),
}

/// A backend's preference list: slot `j` of it is `(offset + j * skip) % size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permutation {
    /// First preferred slot, in `0..size`.
    pub offset: u32,
    /// Step between preferred slots, in `1..size`.
    pub skip: u32,
}

/// A built lookup table: `size` slots, each the index (into the slice given to [`build`]) of
/// the backend that owns it, or [`NO_BACKEND`] in every slot when the table is empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    slots: Vec<u32>,
}

impl Table {
    /// Number of slots (the prime given to [`build`]).
    pub fn size(&self) -> u32 {
        // `build` only makes tables of a `u32` size.
        self.slots.len() as u32
    }

    /// The slots, in order: what the control plane writes into the data plane's array.
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// True when no backend had a weight above 0: every slot is [`NO_BACKEND`]. Otherwise
    /// every slot holds a backend.
    pub fn is_empty(&self) -> bool {
        // Population fills all slots or none, so the first one tells.
        self.slots[0] == NO_BACKEND
    }

    /// The backend (index into the slice given to [`build`]) for a flow hash, as the data
    /// plane picks it; `None` for an empty table.
    pub fn lookup(&self, flow_hash: u32) -> Option<usize> {
        match self.slots[slot_index(flow_hash, self.size()) as usize] {
            NO_BACKEND => None,
            backend => Some(backend as usize),
        }
    }

    /// How many slots each of the first `backends` backends owns (for metrics and tests).
    pub fn entry_counts(&self, backends: usize) -> Vec<u32> {
        let mut counts = vec![0; backends];
        for &slot in &self.slots {
            if let Some(count) = counts.get_mut(slot as usize) {
                *count += 1;
            }
        }
        counts
    }
}

/// Builds the lookup table of `size` slots (a prime; [`DEFAULT_TABLE_SIZE`] in production) for
/// `backends`. Slot values are indices into `backends`; which *name* owns a slot depends only on
/// the set of `(name, weight)` pairs with weight > 0 and on `size`, not on the order of
/// `backends`. No backend of weight > 0 gives an empty table (see the module docs).
///
/// Cost: `4 * size` bytes, and about `size * ln(size)` probes (the paper's estimate) plus
/// `size` rounds over the backends at worst; a few milliseconds at 65,537 with 16 backends.
pub fn build(backends: &[Backend<'_>], size: u32) -> Result<Table, MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::SizeNotPrime(size));
    }
    if backends.len() >= NO_BACKEND as usize {
        return Err(MaglevError::TooManyBackends(backends.len()));
    }
    // Turn order is by name so that the caller's order does not matter; sorting also finds
    // duplicates (weight-0 ones included: a duplicate is a configuration mistake either way).
    let mut by_name: Vec<usize> = (0..backends.len()).collect();
    by_name.sort_unstable_by(|&a, &b| backends[a].name.cmp(backends[b].name));
    if let Some(pair) = by_name
        .windows(2)
        .find(|pair| backends[pair[0]].name == backends[pair[1]].name)
    {
        return Err(MaglevError::DuplicateName(
            backends[pair[0]].name.to_owned(),
        ));
    }

    let mut slots = vec![NO_BACKEND; size as usize];
    let mut turns: Vec<Turn> = by_name
        .into_iter()
        .filter(|&i| backends[i].weight > 0)
        .map(|i| {
            let perm = backend_permutation(backends[i].name, size);
            Turn {
                // Fits: checked against NO_BACKEND above.
                backend: i as u32,
                weight: u64::from(backends[i].weight),
                credit: 0,
                next: perm.offset,
                skip: perm.skip,
            }
        })
        .collect();
    let Some(max_weight) = turns.iter().map(|t| t.weight).max() else {
        return Ok(Table { slots });
    };

    // Pseudocode 1 of the paper with Katran V2's weighted turns. A backend of the largest
    // weight takes a turn every round, so this ends within `size` rounds.
    let mut filled = 0u32;
    loop {
        for turn in &mut turns {
            turn.credit += turn.weight;
            if turn.credit < max_weight {
                continue;
            }
            turn.credit -= max_weight;
            // Every slot before `next` in this backend's list is taken, and taken slots stay
            // taken, so the search resumes there. The list visits every slot and the table is
            // not full yet, so it finds one.
            while slots[turn.next as usize] != NO_BACKEND {
                turn.next = step(turn.next, turn.skip, size);
            }
            slots[turn.next as usize] = turn.backend;
            turn.next = step(turn.next, turn.skip, size);
            filled += 1;
            if filled == size {
                return Ok(Table { slots });
            }
        }
    }
}

/// A weighted backend's state during population.
struct Turn {
    /// Index into the caller's slice: the slot value.
    backend: u32,
    /// Its weight (> 0), widened so that `credit + weight` cannot overflow.
    weight: u64,
    /// Accumulated weight; a turn is taken (and paid for) when it reaches the largest weight.
    credit: u64,
    /// Next candidate slot in the preference list (the paper's `permutation[i][next[i]]`).
    next: u32,
    /// The preference list's step.
    skip: u32,
}

/// The next slot of a preference list: `(slot + skip) % size`, without overflowing `u32`.
fn step(slot: u32, skip: u32, size: u32) -> u32 {
    let next = u64::from(slot) + u64::from(skip);
    let size = u64::from(size);
    // slot < size and skip < size, so one subtraction is a full reduction.
    (if next >= size { next - size } else { next }) as u32
}

/// A backend's preference list in a table of `size` slots (a prime >= 2), from its name
/// alone (see the module docs for the formula; part of the contract).
pub fn backend_permutation(name: &str, size: u32) -> Permutation {
    let h = fnv1a64(name.as_bytes());
    let size = u64::from(size);
    Permutation {
        offset: (fmix64(h ^ OFFSET_SEED) % size) as u32,
        skip: (fmix64(h ^ SKIP_SEED) % (size - 1) + 1) as u32,
    }
}

/// FNV-1a, 64 bits (draft-eastlake-fnv): for each byte, `h ^= byte; h *= FNV64_PRIME`,
/// starting from the offset basis. Hashes backend names; tests also use it as a checksum.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV64_OFFSET_BASIS, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV64_PRIME)
    })
}

/// MurmurHash3's 64-bit finalizer `fmix64` (Austin Appleby, MurmurHash3.cpp): a bijection on
/// `u64` in which every input bit affects every output bit.
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Whether `n` is prime (trial division; `n` is a table size, checked once per build).
fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let n = u64::from(n);
    (3..)
        .step_by(2)
        .take_while(|d| d * d <= n)
        .all(|d| !n.is_multiple_of(d))
}

/// The table slot of a flow: `flow_hash * table_size / 2^32`, the one function the data
/// plane calls too (`switcher_common::flow_hash::slot_index`, which says why not `%`).
pub use switcher_common::flow_hash::slot_index;

/// The flow hash of an IPv4 flow: [`jhash2`] over 4 words with [`FLOW_HASH_SEED`]:
/// `[src addr, dst addr, ports, proto]`.
///
/// Each word is the packet's bytes read as a little-endian `u32`: on the little-endian BPF
/// target (`bpfel`) that is a plain load of the header field, no byte swap.
/// * addresses: the 4 address bytes as on the wire (`iphdr.saddr`, `iphdr.daddr` loaded as
///   `u32`);
/// * ports: the first 4 bytes of the TCP/UDP header, source port then destination port, each
///   in network byte order (one `u32` load at the L4 header);
/// * proto: the IP protocol number (6 for TCP) as a `u32`.
///
/// Ports and addresses here are host values (`8080`, `Ipv4Addr`); this function puts them in
/// wire order itself.
pub fn flow_hash_v4(src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16, proto: u8) -> u32 {
    let words = [
        u32::from_le_bytes(src.octets()),
        u32::from_le_bytes(dst.octets()),
        ports_word(src_port, dst_port),
        u32::from(proto),
    ];
    jhash2(&words, FLOW_HASH_SEED)
}

/// The flow hash of an IPv6 flow: [`jhash2`] over 10 words with [`FLOW_HASH_SEED`]:
/// `[src addr (4 words), dst addr (4 words), ports, proto]`, words as in [`flow_hash_v4`]
/// (each address is its 16 wire bytes as 4 little-endian `u32`s: `in6_addr.s6_addr32[0..4]`
/// loaded on `bpfel`; proto is the transport protocol, 6 for TCP).
pub fn flow_hash_v6(src: Ipv6Addr, src_port: u16, dst: Ipv6Addr, dst_port: u16, proto: u8) -> u32 {
    let mut words = [0u32; 10];
    for (word, chunk) in words[..8].iter_mut().zip(
        src.octets()
            .chunks_exact(4)
            .chain(dst.octets().chunks_exact(4)),
    ) {
        *word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    words[8] = ports_word(src_port, dst_port);
    words[9] = u32::from(proto);
    jhash2(&words, FLOW_HASH_SEED)
}

/// Source and destination port as the first 4 bytes of a TCP/UDP header, read little-endian.
fn ports_word(src_port: u16, dst_port: u16) -> u32 {
    let [s0, s1] = src_port.to_be_bytes();
    let [d0, d1] = dst_port.to_be_bytes();
    u32::from_le_bytes([s0, s1, d0, d1])
}

/// The Linux kernel's `jhash2(k, length, initval)` (`include/linux/jhash.h`; Bob Jenkins'
/// lookup3 `hashword()`): hash of `words` with `initval`. Same result as the kernel's for the
/// same words. The data plane runs this very code (`switcher_common::flow_hash::jhash2`,
/// compiled for BPF), so user space and kernel cannot disagree on it.
pub fn jhash2(words: &[u32], initval: u32) -> u32 {
    switcher_common::flow_hash::jhash2(words, initval)
}

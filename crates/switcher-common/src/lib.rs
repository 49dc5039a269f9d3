//! Map keys and values shared by the kernel programs (`switcher-ebpf`) and user space
//! (`switcher-ctl`). Every type that crosses the kernel/user boundary is defined here once.
//!
//! # Layout rules
//! * `#[repr(C)]`, `Clone + Copy`, and no implicit padding: every byte of every value is a
//!   named field (explicit `_pad`/`reserved` fields where alignment needs them), so a value
//!   written by one side is read bit-for-bit by the other and `bpftool map dump` shows no
//!   uninitialised bytes. `const` assertions below pin every size.
//! * Booleans are `u16`/`u32` flags, never `bool` (aya's convention for `Pod`).
//! * Byte order is stated on every field: addresses and ports that are compared with packet
//!   bytes are kept in **network byte order** so the data plane never swaps them; indices and
//!   counters are host order.
//! * IPv4 addresses live in the first 4 bytes of a 16-byte address field, the other 12 bytes
//!   zero; the accompanying `family` field says which it is.
#![no_std]
#![deny(missing_docs)]

/// Number of origins the data plane knows (origin indices `0..MAX_ORIGINS`). Index
/// [`ORIGIN_PRIMARY`] and [`ORIGIN_BACKUP`] are the two of the failover shorthand. An origin
/// index must fit a [`MaglevTable`] slot (`u8`, [`MAGLEV_NO_ORIGIN`] reserved).
pub const MAX_ORIGINS: u32 = 16;
/// Origin index of the primary origin (default port 8081).
pub const ORIGIN_PRIMARY: u32 = 0;
/// Origin index of the backup origin (default port 8082).
pub const ORIGIN_BACKUP: u32 = 1;
/// Slot of the [`STATS`](Counters) map that counts traffic bound to no origin: packets that
/// were not for the VIP, or that could not be parsed.
pub const STATS_UNSTEERED: u32 = MAX_ORIGINS;
/// Number of slots in the per-CPU statistics map: one per origin plus [`STATS_UNSTEERED`].
pub const STATS_SLOTS: u32 = MAX_ORIGINS + 1;
/// Slots of the Maglev lookup table (a prime, as Maglev's permutations require; the paper's
/// and Katran's default). A new flow goes to the origin of slot
/// `flow_hash::slot_index(jhash2(flow words, FLOW_HASH_SEED), MAGLEV_SIZE)` (see [`flow_hash`]).
pub const MAGLEV_SIZE: u32 = 65_537;
/// [`MaglevTable`] slot value meaning "no origin" (an empty table: no origin in rotation).
/// The data plane passes such a new flow to the stack, which resets it.
pub const MAGLEV_NO_ORIGIN: u8 = 0xff;
/// Number of Maglev tables in `SWITCHER_MAGLEV`: the live one and the one user space writes
/// next (see [`map_names::MAGLEV`]).
pub const MAGLEV_TABLES: u32 = 2;
const _: () = assert!(MAX_ORIGINS <= MAGLEV_NO_ORIGIN as u32);

/// Default capacity of the conntrack map (established flows). The object declares the map
/// with this size; switcher-ctl sets it from `--max-flows` at load time. At ~100 bytes an
/// entry (key, value and the kernel's element header) the map takes ~25 MiB of kernel memory
/// at this size; an edge with more concurrent viewers raises it. (The handshake table has a
/// fixed size, [`HANDSHAKE_BUCKETS`] x [`HANDSHAKE_WAYS`].)
pub const MAX_FLOWS: u32 = 262_144;
/// Buckets of the handshake table `SWITCHER_HANDSHAKES` (a power of two): a connection's bucket
/// is the low bits of its flow hash ([`handshake_bucket`]).
pub const HANDSHAKE_BUCKETS: u32 = 65_536;
/// Slots per bucket of the handshake table: a connection's handshake may sit in any of them.
/// Losing a live handshake to a collision takes this many other SYNs landing in its bucket
/// while it waits for its ACK; see `switcher-ebpf/src/handshakes.rs`.
pub const HANDSHAKE_WAYS: u32 = 4;
const _: () = assert!(HANDSHAKE_BUCKETS.is_power_of_two() && HANDSHAKE_WAYS.is_power_of_two());

/// The handshake-table bucket (the `SWITCHER_HANDSHAKES` index) of a connection whose
/// request's flow hash (the Maglev hash of client -> VIP, see [`flow_hash`]) is `flow_hash`.
#[inline(always)]
pub const fn handshake_bucket(flow_hash: u32) -> u32 {
    flow_hash & (HANDSHAKE_BUCKETS - 1)
}

/// Smallest `--max-flows` switcher-ctl accepts: the maps use per-CPU LRU lists
/// (`BPF_F_NO_COMMON_LRU`), which split the capacity evenly between the CPUs, and a CPU with
/// a handful of entries would evict live flows at once.
pub const MIN_FLOWS: u32 = 1_024;

/// `family` value: IPv4 (same number as `AF_INET`).
pub const FAMILY_V4: u16 = 2;
/// `family` value: IPv6 (same number as `AF_INET6`).
pub const FAMILY_V6: u16 = 10;

/// Names of the maps, as the loader finds them in the object and pins them under the pin
/// root. Kept here so the kernel declarations and user space cannot drift apart.
pub mod map_names {
    /// Array[1] of [`VipConfig`](super::VipConfig).
    pub const CONFIG: &str = "SWITCHER_CONFIG";
    /// Array[MAX_ORIGINS] of [`Origin`](super::Origin). Configured origins fill slots
    /// `0..n` without a gap (the data plane's loops over origins stop at the first empty
    /// slot); user space keeps it that way.
    pub const ORIGINS: &str = "SWITCHER_ORIGINS";
    /// Array[1] of `u32`: the origin of the last `set_active` (policy failover). Written and
    /// read by user space only (the data plane steers new flows by `SWITCHER_MAGLEV`); kept in
    /// a map so `status` and a restarted control plane read it.
    pub const ACTIVE: &str = "SWITCHER_ACTIVE";
    /// Array[[`MAGLEV_TABLES`](super::MAGLEV_TABLES)] of [`MaglevTable`](super::MaglevTable):
    /// two lookup tables, one live (named by `SWITCHER_MAGLEV_LIVE`), the other written by user
    /// space when it publishes a new table. Read by the data plane for every new flow.
    pub const MAGLEV: &str = "SWITCHER_MAGLEV";
    /// Array[1] of `u32`: which `SWITCHER_MAGLEV` table is live (0 or 1). User space writes the
    /// other table whole, then this index (an aligned 4-byte store the data plane reads
    /// atomically), then waits for an RCU grace period so no program still reads the table it
    /// will write next. A packet reads one slot of one table: the old table or the new one.
    pub const MAGLEV_LIVE: &str = "SWITCHER_MAGLEV_LIVE";
    /// Array[MAX_ORIGINS] of `u64`: per origin, the open flows user space removed (retired or
    /// aborted flows the origin had not closed). Written by user space only; open flows per
    /// origin = `established - flows_closed` (data plane, [`Counters`](super::Counters)) minus
    /// this, so counting flows never walks `SWITCHER_FLOWS`.
    pub const FLOWS_REMOVED: &str = "SWITCHER_FLOWS_REMOVED";
    /// LruHashMap (per-CPU LRU lists) of [`FlowKey`](super::FlowKey) ->
    /// [`FlowValue`](super::FlowValue): established flows.
    pub const FLOWS: &str = "SWITCHER_FLOWS";
    /// Array[[`HANDSHAKE_BUCKETS`](super::HANDSHAKE_BUCKETS)] of
    /// [`HandshakeBucket`](super::HandshakeBucket), mmapable: connections whose handshake has
    /// not completed, a set-associative table (bucket by flow hash,
    /// [`handshake_bucket`](super::handshake_bucket)).
    pub const HANDSHAKES: &str = "SWITCHER_HANDSHAKES";
    /// PerCpuArray[STATS_SLOTS] of [`Counters`](super::Counters).
    pub const STATS: &str = "SWITCHER_STATS";
    /// Array[[`FLOW_CACHE_SLOTS`](super::FLOW_CACHE_SLOTS) x possible CPUs] of
    /// [`FlowCacheSlot`](super::FlowCacheSlot), CPU-major ([`flow_cache_index`](super::flow_cache_index)):
    /// each CPU's direct-mapped cache of `SWITCHER_FLOWS`, written by the data plane only, each
    /// CPU its own part; user space reads it for the newest acknowledgment numbers of the
    /// flows it resets, in place (mmapable). Sized by whoever loads the object
    /// (`loader::size_for_cpus`); the object declares one CPU's part.
    pub const FLOW_CACHE: &str = "SWITCHER_FLOW_CACHE";
    /// Array[[`FLOW_CACHE_SLOTS`](super::FLOW_CACHE_SLOTS)] of `u32`, mmapable: per cache
    /// slot, a version that whoever changes or deletes a flow of that slot in `SWITCHER_FLOWS`
    /// increments afterwards (data plane and user space alike), which makes every CPU's cached
    /// copy of it stale.
    pub const FLOW_CACHE_VERSIONS: &str = "SWITCHER_FLOW_CACHE_VERSIONS";
}

/// Names of the programs in the object.
pub mod prog_names {
    /// XDP on ingress: requests to the VIP are steered to an origin.
    pub const XDP_INGRESS: &str = "switcher_xdp";
    /// TC ingress: the same request path for interfaces where XDP cannot attach.
    pub const TC_INGRESS: &str = "switcher_tc_ingress";
    /// TC egress: replies from an origin on a tracked flow get the VIP's address and port back.
    pub const TC_EGRESS: &str = "switcher_tc_egress";
    /// XDP program never attached: switcher-ctl runs it with `BPF_PROG_TEST_RUN` in live-frame
    /// mode to transmit an RST it built (an edge-originated reset) out of the VIP's interface.
    pub const EMIT_RST: &str = "switcher_emit_rst";
    /// XDP program never attached: switcher-ctl runs it with `BPF_PROG_TEST_RUN` on a
    /// `FlowKey` to set `FLOW_FINISHING` on that flow in place (a map update would write the
    /// whole value over what the data plane writes in it).
    pub const MARK_FINISHING: &str = "switcher_mark_finishing";
    /// An empty XDP program (XDP_PASS), only loaded by the data-path benchmark as baseline.
    pub const BENCH_XDP_PASS: &str = "bench_xdp_pass";
    /// An empty TC program (TC_ACT_OK), only loaded by the data-path benchmark as the baseline
    /// of `switcher_tc_ingress`.
    pub const BENCH_TC_PASS: &str = "bench_tc_pass";
    /// XDP program that only looks up one constant key in `SWITCHER_FLOWS` (the data-path
    /// benchmark's tracked flow): the cost of the flow lookup alone, for the benchmark.
    pub const BENCH_FLOW_LOOKUP: &str = "bench_flow_lookup";
    /// Benchmark floor, never attached: only the fresh-key derivation the insert floors below
    /// share (a per-CPU counter add and the key built from it), to subtract from them.
    pub const BENCH_FRESH_KEY: &str = "bench_fresh_key";
    /// Benchmark floor, never attached: one insert of a fresh key into an LRU hash of the shape
    /// `SWITCHER_HANDSHAKES` had until it became an array (`bench_map_names::HS_LRU`), what a
    /// SYN flood's SYN cost there.
    pub const BENCH_HS_LRU_FRESH: &str = "bench_hs_lru_fresh";
    /// Benchmark floor, never attached: one insert of the same key into that LRU hash, what a
    /// retransmitted (or this bench's repeated) SYN costs there.
    pub const BENCH_HS_LRU_SAME: &str = "bench_hs_lru_same";
    /// Benchmark floor, never attached: one insert of a fresh key into a preallocated plain
    /// hash of the same shape (`bench_map_names::HS_HASH`) and one delete of the key inserted
    /// `BENCH_HASH_WINDOW` inserts earlier (a plain hash does not evict: steady state).
    pub const BENCH_HS_HASH_FRESH: &str = "bench_hs_hash_fresh";
    /// Benchmark floor, never attached: one insert of the same key into the plain hash.
    pub const BENCH_HS_HASH_SAME: &str = "bench_hs_hash_same";
    /// Benchmark variant, never attached: `switcher_xdp` with the packet's copy in the flow
    /// cache made stale before each run (a tracked flow's packet then always misses).
    pub const BENCH_CACHE_MISS: &str = "bench_cache_miss";
    /// Benchmark variant, never attached: `switcher_xdp` as it was before branch dp-floor
    /// (a packet not for the VIP counted after the class is matched).
    pub const BENCH_NFV_BEFORE: &str = "bench_nfv_before";
    /// Benchmark variant, never attached: `switcher_xdp` without the fast exit for a packet
    /// not for the VIP (branch dplean), i.e. the product's path before it.
    pub const BENCH_NFV_NO_FAST: &str = "bench_nfv_no_fast";
    /// Benchmark step, never attached: the tracked-flow path of `switcher_xdp` up to its parse
    /// and VIP check.
    pub const BENCH_TF_PARSE: &str = "bench_tf_parse";
    /// Benchmark step, never attached: [`BENCH_TF_PARSE`] + the flow key and this CPU's copy
    /// of the flow (a flow-cache hit).
    pub const BENCH_TF_COPY: &str = "bench_tf_copy";
    /// Benchmark step, never attached: [`BENCH_TF_COPY`] + the copy's origin, the client ACK
    /// record, the FINISHING check, the origin's target and the remote check.
    pub const BENCH_TF_ORIGIN: &str = "bench_tf_origin";
    /// Benchmark step, never attached: [`BENCH_TF_ORIGIN`] + the rewrite.
    pub const BENCH_TF_REWRITE: &str = "bench_tf_rewrite";
    /// Benchmark step, never attached: [`BENCH_TF_REWRITE`] + the counter update: the whole
    /// tracked path (`switcher_xdp` adds its hand-over between parse and rewrite, and its
    /// fast exit for packets not for the VIP).
    pub const BENCH_TF_COUNT: &str = "bench_tf_count";
}

/// Maps only the never-attached benchmark programs use (`switcher-ebpf/src/bench.rs`). The
/// object declares them with one entry each, so loading it for steering costs next to
/// nothing; the data-path bench sizes them when it loads the object. Never pinned.
pub mod bench_map_names {
    /// LruHashMap (per-CPU LRU lists) of [`FlowKey`](super::FlowKey) ->
    /// [`Handshake`](super::Handshake): the shape `SWITCHER_HANDSHAKES` had until it became an
    /// array, for the insert floors.
    pub const HS_LRU: &str = "BENCH_HS_LRU";
    /// HashMap (preallocated) of [`FlowKey`](super::FlowKey) -> [`Handshake`](super::Handshake).
    pub const HS_HASH: &str = "BENCH_HS_HASH";
    /// PerCpuArray[4] of `u64`, indices `BENCH_COUNT_*`: what the bench programs did, so the
    /// bench can check every repetition took the path it measures.
    pub const COUNTS: &str = "BENCH_COUNTS";
}

/// Inserts between a plain-hash insert and the delete of the same key (`bench_hs_hash_fresh`).
pub const BENCH_HASH_WINDOW: u64 = 65_536;
/// `BENCH_COUNTS` index: inserts (or deletes of a key that must be present) that failed.
pub const BENCH_COUNT_FAILED: u32 = 0;
/// `BENCH_COUNTS` index: the fresh-key counter of `bench_fresh_key` (keys drawn on this CPU).
pub const BENCH_COUNT_FRESH: u32 = 1;
/// `BENCH_COUNTS` index: the fresh-key counter of `bench_hs_lru_fresh`.
pub const BENCH_COUNT_FRESH_LRU: u32 = 2;
/// `BENCH_COUNTS` index: the fresh-key counter of `bench_hs_hash_fresh` (its own, so the key it
/// deletes is one it inserted).
pub const BENCH_COUNT_FRESH_HASH: u32 = 3;

/// The virtual service: value of the `SWITCHER_CONFIG` map (key 0). Written by user space at
/// attach time, read by every program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipConfig {
    /// IPv4 VIP address, network byte order; meaningful when `flags & VIP_HAS_V4`.
    pub addr_v4: [u8; 4],
    /// IPv6 VIP address, network byte order; meaningful when `flags & VIP_HAS_V6`.
    pub addr_v6: [u8; 16],
    /// VIP TCP port, network byte order.
    pub port_be: u16,
    /// `VIP_HAS_V4 | VIP_HAS_V6 | VIP_ENABLED`.
    pub flags: u16,
    /// Interface index the programs are attached to, host order. Not read by the data plane:
    /// kept here so `status` and `detach` know where the programs are without other state.
    pub ifindex: u32,
    /// How the request path is attached, one of the `ATTACH_*` values, host order. Not read
    /// by the data plane.
    pub attach_mode: u32,
}

/// [`VipConfig::attach_mode`]: XDP in the driver (native).
pub const ATTACH_XDP_NATIVE: u32 = 1;
/// [`VipConfig::attach_mode`]: XDP in the generic (skb) path, e.g. on `lo`.
pub const ATTACH_XDP_GENERIC: u32 = 2;
/// [`VipConfig::attach_mode`]: TC ingress classifier (no XDP).
pub const ATTACH_TC: u32 = 3;

/// [`VipConfig::flags`]: `addr_v4` is set.
pub const VIP_HAS_V4: u16 = 1;
/// [`VipConfig::flags`]: `addr_v6` is set.
pub const VIP_HAS_V6: u16 = 2;
/// [`VipConfig::flags`]: steering is on. Cleared, every packet passes unchanged (counted).
pub const VIP_ENABLED: u16 = 4;
/// [`VipConfig::flags`]: before steering a new flow to an origin on this host (all-zero origin
/// address), check that a socket listens on its port (`bpf_sk_lookup_tcp`); if none does (the
/// origin process died and the control plane has not published a table without it yet), steer
/// the flow to the first other origin flagged [`ORIGIN_FALLBACK`] that has one. Closes the gap
/// between a crash and the next probe.
pub const VIP_CHECK_LISTENER: u16 = 8;

/// One origin: value of the `SWITCHER_ORIGINS` map, keyed by origin index. Written by user
/// space; read by the programs to rewrite requests (destination) and recognise replies (source).
///
/// Aligned to 4 bytes (the byte layout is that of `repr(C)` alone: the same offsets, 28 bytes)
/// so that the data plane reads the addresses as aligned 4-byte words: with the 2-byte
/// alignment its fields alone give, the BPF build reads an address byte by byte.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// IPv4 address of the origin, network byte order; all zero means "the VIP's own address"
    /// (only the port is rewritten), the common case of origins on the edge host itself.
    pub addr_v4: [u8; 4],
    /// IPv6 address of the origin, network byte order; all zero means "the VIP's own address".
    pub addr_v6: [u8; 16],
    /// Origin TCP port, network byte order.
    pub port_be: u16,
    /// `ORIGIN_CONFIGURED`, set when the slot holds an origin.
    pub flags: u16,
    /// The origin's generation, host order: every flow pinned to it records the generation it
    /// was pinned in ([`FlowValue::generation`]), and a flow of an older generation is over
    /// (the data plane treats it as untracked), unless it is [`FLOW_FINISHING`]. User space
    /// adds one to retire all of an origin's flows with this one write, instead of deleting
    /// each flow on the failover path (docs/ARCHITECTURE.md, "Retiring flows"); the entries
    /// left behind are deleted afterwards, paced. Kept when a restarted control plane adopts
    /// the maps with the same origin in the slot, and changed when the slot gets another one.
    pub generation: u32,
}

/// [`Origin::flags`]: the slot holds an origin.
pub const ORIGIN_CONFIGURED: u16 = 1;
/// [`Origin::flags`]: the origin is on another host and answers viewers directly (direct
/// server return, see [`dsr`]): requests are sent to it unchanged inside an outer IPv4 header
/// addressed to `addr_v4` (the origin host; IPv4-in-IPv4 for IPv4 viewers, IPv6-in-IPv4 for
/// IPv6 viewers, so `addr_v6` is unused), and `port_be` is the VIP's port. Replies never
/// cross the edge.
pub const ORIGIN_REMOTE: u16 = 2;
/// [`Origin::flags`]: the origin may take a new flow whose lookup-table origin has no
/// listening socket on this host ([`VIP_CHECK_LISTENER`]). Set by user space for the origins
/// that are healthy, not drained and of weight above 0 (every configured origin until the control plane's first
/// decision), so that such a flow never goes to an origin that is hung, failing or draining.
/// Not part of what names an origin: it changes with health, the origin stays the same.
pub const ORIGIN_FALLBACK: u16 = 4;

/// A Maglev lookup table: value of one `SWITCHER_MAGLEV` element. `slots[i]` is the origin
/// index (into `SWITCHER_ORIGINS`) that new flows hashing to slot `i` go to, or
/// [`MAGLEV_NO_ORIGIN`]. Built by switcher-ctl's `maglev` module (or filled with one origin
/// for policy failover); written whole by user space, one byte read per new flow by the data
/// plane. One byte a slot keeps a table at 64 KiB, written with one syscall.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MaglevTable {
    /// Origin index per slot.
    pub slots: [u8; MAGLEV_SIZE as usize],
}

impl MaglevTable {
    /// A table whose every slot is `origin` (policy failover: every new flow to one origin).
    pub const fn uniform(origin: u8) -> MaglevTable {
        MaglevTable {
            slots: [origin; MAGLEV_SIZE as usize],
        }
    }
}

/// The flow hash that indexes the Maglev table: the Linux kernel's `jhash2()`
/// (`include/linux/jhash.h`, Bob Jenkins' lookup3 `hashword()`) over the flow's words with
/// [`FLOW_HASH_SEED`]. One definition for the data plane and user space (switcher-ctl's
/// `maglev::flow_hash_v4/v6` state the word layout and call this).
pub mod flow_hash {
    /// `initval` of [`jhash2`] in the flow hash (ASCII "HLSe"). Part of the contract: every
    /// edge computes the same slot for a flow.
    pub const FLOW_HASH_SEED: u32 = 0x484c_5365;
    /// jhash's arbitrary initial value (`JHASH_INITVAL` in `include/linux/jhash.h`).
    const JHASH_INITVAL: u32 = 0xdead_beef;

    /// The slot of a flow of hash `hash` in a table of `size` slots: `hash * size / 2^32`, the
    /// multiply-shift range reduction (Lemire, "A fast alternative to the modulo reduction",
    /// 2016), as uniform as `hash % size` for a uniform 32-bit hash (each slot gets
    /// `2^32 / size` hashes, give or take one), and the hash's high bits pick the slot, so the
    /// low bits stay free for the handshake table's bucket ([`handshake_bucket`](super::handshake_bucket)).
    ///
    /// Why not `%` (what it was until 2026-12-02): the BPF build turned `% 65,537` into a
    /// multiply, shift, multiply and subtract whose result the verifier cannot bound, so the
    /// data plane read it back through the stack to keep a range check; here the verifier
    /// itself bounds the product (a u32 times `size`, shifted right by 32, is below `size`), with
    /// no check and no stack round trip, on the path of every new flow.
    #[inline(always)]
    pub const fn slot_index(hash: u32, size: u32) -> u32 {
        ((hash as u64 * size as u64) >> 32) as u32
    }

    /// The kernel's `jhash2(k, length, initval)`: hash of `words` with `initval`.
    #[inline(always)]
    pub fn jhash2(words: &[u32], initval: u32) -> u32 {
        // The kernel adds `length << 2` in u32; a flow has at most 10 words.
        let init = JHASH_INITVAL
            .wrapping_add((words.len() as u32).wrapping_shl(2))
            .wrapping_add(initval);
        let (mut a, mut b, mut c) = (init, init, init);
        let mut rest = words;
        while rest.len() > 3 {
            a = a.wrapping_add(rest[0]);
            b = b.wrapping_add(rest[1]);
            c = c.wrapping_add(rest[2]);
            mix(&mut a, &mut b, &mut c);
            rest = &rest[3..];
        }
        // The last 1 to 3 words, then the final mix; nothing left (an empty key) returns `c`.
        match *rest {
            [x, y, z] => {
                c = c.wrapping_add(z);
                b = b.wrapping_add(y);
                a = a.wrapping_add(x);
            }
            [x, y] => {
                b = b.wrapping_add(y);
                a = a.wrapping_add(x);
            }
            [x] => a = a.wrapping_add(x),
            _ => return c,
        }
        finalize(&mut a, &mut b, &mut c);
        c
    }

    /// `__jhash_mix` of `include/linux/jhash.h`: mixes 3 words reversibly.
    #[inline(always)]
    fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
        *a = a.wrapping_sub(*c);
        *a ^= c.rotate_left(4);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a);
        *b ^= a.rotate_left(6);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b);
        *c ^= b.rotate_left(8);
        *b = b.wrapping_add(*a);
        *a = a.wrapping_sub(*c);
        *a ^= c.rotate_left(16);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a);
        *b ^= a.rotate_left(19);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b);
        *c ^= b.rotate_left(4);
        *b = b.wrapping_add(*a);
    }

    /// `__jhash_final` of `include/linux/jhash.h`: final mixing of 3 words into `c`.
    #[inline(always)]
    fn finalize(a: &mut u32, b: &mut u32, c: &mut u32) {
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(14));
        *a ^= *c;
        *a = a.wrapping_sub(c.rotate_left(11));
        *b ^= *a;
        *b = b.wrapping_sub(a.rotate_left(25));
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(16));
        *a ^= *c;
        *a = a.wrapping_sub(c.rotate_left(4));
        *b ^= *a;
        *b = b.wrapping_sub(a.rotate_left(14));
        *c ^= *b;
        *c = c.wrapping_sub(b.rotate_left(24));
    }
}

/// Key of the `SWITCHER_FLOWS` conntrack map and of the handshake table's slots: one viewer
/// connection as it looks on ingress, client -> VIP. Replies (origin -> client) are looked up
/// by rebuilding this key from the packet's destination. Written by the data plane; the
/// entries of a retired origin's flows are deleted afterwards (see [`Origin::generation`]).
///
/// 4-byte aligned (no padding: 20 bytes either way), so the data plane reads a key it built as
/// five words (`handshakes::Key::of`).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Client address, network byte order (IPv4 in the first 4 bytes, rest zero).
    pub client_addr: [u8; 16],
    /// Client TCP port, network byte order.
    pub client_port_be: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u16,
}

/// Value of the `SWITCHER_FLOWS` map: an established flow and the origin it is pinned to.
/// Inserted by the data plane only when the client acknowledges the origin's initial sequence
/// number (see [`Handshake`]), so an off-path attacker with spoofed addresses cannot create one.
///
/// It also keeps what the edge needs to reset the viewer itself when the origin cannot
/// (docs/ARCHITECTURE.md, "Edge-originated resets"): the client's latest acknowledgment
/// number and the link-layer addresses its packets carry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowValue {
    /// Index into `SWITCHER_ORIGINS`, host byte order.
    pub origin: u32,
    /// `FLOW_*` flags, host order.
    pub flags: u32,
    /// The acknowledgment number of the newest segment the client sent on this flow, as seen
    /// by ingress, **host order**: the client's `RCV.NXT` once nothing is in flight toward it,
    /// so the sequence number of an RST the edge sends it (RFC 5961 3.2). Set when the flow
    /// is created (the handshake ACK) and written again only when a segment acknowledges
    /// more (serial-number comparison, RFC 1982), so reordered segments never move it back.
    pub client_ack: u32,
    /// Ethernet source address of the client's handshake ACK as it sits in the frame (the
    /// client, or the router it comes through): the destination of an edge RST. Written once,
    /// when the flow is created. All zero on interfaces without Ethernet addresses (`lo`).
    pub hop_mac: [u8; 6],
    /// Ethernet destination address of that same frame (this edge's interface): the source
    /// of an edge RST. Written once, with `hop_mac`.
    pub local_mac: [u8; 6],
    /// [`Origin::generation`] of the flow's origin when the flow was created, host order. The
    /// flow is live while it equals the origin's current generation (or the flow is
    /// [`FLOW_FINISHING`]); an older one is a retired flow, as good as deleted.
    pub generation: u32,
}

impl FlowValue {
    /// Whether the flow is still steered, given its origin's current [`Origin::generation`]
    /// (see [`flow_is_live`]).
    pub const fn is_live(&self, origin_generation: u32) -> bool {
        flow_is_live(self.generation, self.flags, origin_generation)
    }
}

/// The input of the never-attached `switcher_mark_finishing` program, which user space runs
/// with `BPF_PROG_TEST_RUN` to set [`FLOW_FINISHING`] on a flow in place (docs/ARCHITECTURE.md,
/// "Stranded connections"): the flow's key, and the origin and generation its entry held when
/// user space chose the flow. The program marks the entry only if it still holds both, so a
/// later connection from the same client port (an entry of another origin, or one created
/// after a retirement) is neither marked nor, as [`FLOW_FINISHING`] would, kept alive.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinishMark {
    /// The flow's `SWITCHER_FLOWS` key.
    pub key: FlowKey,
    /// [`FlowValue::origin`] as user space read it, host order.
    pub origin: u32,
    /// [`FlowValue::generation`] as user space read it, host order.
    pub generation: u32,
}

impl FinishMark {
    /// The mark of the flow `key` whose entry user space read as `value`.
    pub const fn of(key: &FlowKey, value: &FlowValue) -> FinishMark {
        FinishMark {
            key: *key,
            origin: value.origin,
            generation: value.generation,
        }
    }
}

impl FlowKey {
    /// The key as five native-order words (its bytes in memory order): the form the flow
    /// cache stores and hashes ([`FlowCacheSlot::key`], [`flow_cache_slot`]). The last word
    /// holds the port and the family, never 0 for a real key (no family is 0).
    pub const fn words(&self) -> [u32; 5] {
        let a = &self.client_addr;
        let p = self.client_port_be.to_ne_bytes();
        let f = self.family.to_ne_bytes();
        [
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
            u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
            u32::from_ne_bytes([p[0], p[1], f[0], f[1]]),
        ]
    }
}

/// Slots of each CPU's flow cache in `SWITCHER_FLOW_CACHE`, and versions in
/// `SWITCHER_FLOW_CACHE_VERSIONS` (a power of two: a key's slot is [`flow_cache_slot`]).
/// 48 bytes a slot: 384 KiB a CPU. What it holds are the flows sending right now on that CPU,
/// not every tracked flow: a flow whose slot another flow took meanwhile is looked up in
/// `SWITCHER_FLOWS` again (docs/ARCHITECTURE.md, "The flow cache").
pub const FLOW_CACHE_SLOTS: u32 = 8192;

/// The index in `SWITCHER_FLOW_CACHE` of cache slot `slot` of CPU `cpu`: each CPU's slots are
/// contiguous. One plain array rather than a per-CPU one, because a per-CPU array's element is
/// reached through a table of per-element pointers, a dependent load, and a packet of one of
/// many interleaved flows finds both cold (BENCHMARKS.md, 2026-12-03, session 11: a packet of
/// one of 1,000 flows in turn cost 0.70x as much with the plain array).
#[inline(always)]
pub const fn flow_cache_index(cpu: u32, slot: u32) -> u32 {
    cpu * FLOW_CACHE_SLOTS + slot
}

/// One slot of the flow cache (`SWITCHER_FLOW_CACHE`, each CPU its own): a copy of what a tracked
/// packet needs from its `SWITCHER_FLOWS` entry, so that the commonest packet, one of an
/// established flow, costs an array access instead of a hash-map lookup. Written by the data
/// plane only, on the CPU it belongs to.
///
/// A slot is a hit for a packet when its key is the packet's and its `version` is the slot's
/// current one in `SWITCHER_FLOW_CACHE_VERSIONS`: every change to a flow's entry (insert,
/// delete, flags set by user space) increments that version afterwards, and a slot is filled
/// with the version read *before* its `SWITCHER_FLOWS` lookup, so a copy that may predate a
/// change is never a hit. The origin's generation is checked on every hit, as for the entry
/// itself: retiring an origin needs no cache change. All-zero is an empty slot.
///
/// A hit also looks the entry up when the copy was last filled or refreshed
/// [`FLOW_CACHE_REFRESH_TICKS`] or more jiffies ago: that keeps the LRU's reference bit of a
/// busy flow set (a hit alone does not touch the map, and the LRU would evict the busiest
/// flows first), writes the acknowledgment number through, and drops a copy whose entry the
/// LRU evicted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheSlot {
    /// The flow's key ([`FlowKey::words`]).
    pub key: [u32; 5],
    /// The slot's version in `SWITCHER_FLOW_CACHE_VERSIONS` when it was filled.
    pub version: u32,
    /// [`FlowValue::origin`].
    pub origin: u32,
    /// [`FlowValue::generation`].
    pub generation: u32,
    /// [`FlowValue::flags`] when the slot was filled (only `FLOW_FINISHING` is read; a SYN,
    /// which reads `FLOW_ORIGIN_CLOSED`, never uses the cache).
    pub flags: u32,
    /// The client's newest acknowledgment number, as [`FlowValue::client_ack`], kept here
    /// while the slot is a hit (the entry's own goes stale): user space tries both for an edge
    /// reset, and the data plane writes it through to the entry at each refresh and when
    /// another flow takes the slot.
    pub client_ack: u32,
    /// The entry's `client_ack` when the copy was filled or last refreshed: the copy's number
    /// is written back to the entry only while the entry still holds this one, i.e. it is the
    /// same connection and nothing newer reached it.
    pub base_ack: u32,
    /// The low 32 bits of the kernel's `jiffies` (`bpf_jiffies64`) when the copy was filled
    /// or last refreshed, for [`FLOW_CACHE_REFRESH_TICKS`].
    pub refreshed: u32,
}

/// A hit looks its entry up when the copy's `refreshed` is this many jiffies old or more (see
/// [`FlowCacheSlot`]): 128 ms at `CONFIG_HZ=250` (Debian's), 32 ms at 1000, 320 ms at 100.
///
/// By time, not by packet count: what the lookup is for is the LRU, which evicts an entry
/// not referenced since its last pass over the list, however many packets the flow sent
/// before; a count would leave a flow sending a few packets a second unreferenced for
/// minutes. A busy flow pays one lookup per 32 ticks, whatever its rate; a flow sending less
/// often than that looks its entry up on each packet, which is what it paid without the
/// cache. The age is compared signed (RFC 1982), so a test can date a copy either way. The cost of
/// that: a copy left without a single hit for 2^31 ticks or more (99 days at 250 Hz, 24.8 at
/// 1000), in a slot no other flow took and whose version no insert or delete moved in all that
/// time, reads as dated in the future when its flow comes back, and skips its refreshes for
/// up to 2^31 more ticks. It still steers the flow where its entry would (a hit checks the
/// origin's generation, and any insert or delete of the key moves the version), but the LRU
/// does not see the flow referenced meanwhile and may evict its entry, which no version
/// records, and the entry's `client_ack` is not written through (an edge reset reads every
/// CPU's copy anyway). Only an edge that saw no other flow in that slot for months gets
/// there.
pub const FLOW_CACHE_REFRESH_TICKS: u32 = 32;

/// The flow-cache slot of a key given as [`FlowKey::words`]: each word, zero-extended, times
/// its own odd 64-bit constant, the products summed (multiply-add hashing), then the sum's
/// high half folded into its low half and one more multiply, whose top bits
/// ([`FLOW_CACHE_SLOTS`] of them) are the slot. The same function in the data plane and in
/// user space.
///
/// Why this one: every tracked packet computes it before it can load its slot. The five
/// products are independent (the CPU multiplies them in parallel), so the slot is known after
/// two multiplies' latency, three adds and a fold, in 64-bit arithmetic, BPF's own.
/// murmur3's 32-bit chain, which this replaced (`h = (h ^ word) * c` five times, then its
/// finaliser: seven dependent multiplies, each step masked back to 32 bits in BPF's 64-bit
/// registers), was a fifth of `switcher_xdp`'s samples on a tracked flow in a `perf record`
/// of the data-path bench (BENCHMARKS.md, session 12). Without the fold and the last
/// multiply (plain multiply-add-shift), structured keys collided far more than random slots
/// would: 4,000 consecutive IPv4 addresses left 16% of them alone in their slot, against 61%
/// for random slots; the unit tests check such key sets. Not keyed: a client can only make
/// its flows share a slot with others' by opening real connections, and a flow whose slot
/// another took is looked up in `SWITCHER_FLOWS`, as without the cache.
#[inline(always)]
pub const fn flow_cache_slot(key: &[u32; 5]) -> u32 {
    const K: [u64; 5] = [
        0x9e37_79b9_7f4a_7c15,
        0xc2b2_ae3d_27d4_eb4f,
        0x1656_67b1_9e37_79f9,
        0x85eb_ca77_c2b2_ae63,
        0x27d4_eb2f_1656_67c5,
    ];
    let mut h = (key[0] as u64)
        .wrapping_mul(K[0])
        .wrapping_add((key[1] as u64).wrapping_mul(K[1]))
        .wrapping_add(
            (key[2] as u64)
                .wrapping_mul(K[2])
                .wrapping_add((key[3] as u64).wrapping_mul(K[3])),
        )
        .wrapping_add((key[4] as u64).wrapping_mul(K[4]));
    h ^= h >> 32;
    h = h.wrapping_mul(0xd6e8_feb8_6659_fd93);
    (h >> (64 - FLOW_CACHE_SLOTS.trailing_zeros())) as u32
}

/// Whether a flow of generation `flow_generation` and `FLOW_*` `flags` is still steered, its
/// origin being at `origin_generation`: the same generation, or a retired origin's flow left
/// to finish its response. The one rule the data plane (which reads the fields in place,
/// without copying the value) and user space ([`FlowValue::is_live`]) use to tell live flows
/// from retired ones.
pub const fn flow_is_live(flow_generation: u32, flags: u32, origin_generation: u32) -> bool {
    flow_generation == origin_generation || flags & FLOW_FINISHING != 0
}

/// [`FlowValue::flags`]: the flow started with a SYN through the VIP (every flow the data plane
/// creates has it; kept so user space can tell them from entries it wrote itself).
pub const FLOW_SEEN_SYN: u32 = 1;
/// [`FlowValue::flags`]: the origin sent a FIN or RST on this flow (seen by TC egress; replies
/// come from our own origin, so an attacker cannot set it). A SYN straight to an origin that
/// is not on this host forgets the flow only when this is set.
pub const FLOW_ORIGIN_CLOSED: u32 = 2;
/// [`FlowValue::flags`]: the flow's origin was retired while this connection was delivering a
/// response, which it may finish (set by user space, docs/ARCHITECTURE.md "Stranded
/// connections"). The data plane drops the viewer's next request on it (a segment carrying
/// data), so the retired origin never starts another response; the control plane resets the
/// connection once the response is done, and the viewer retries that request elsewhere. Such a
/// flow outlives its origin's retirement (see [`FlowValue::is_live`]): it is set before the
/// generation moves, and the flow is deleted by user space when it ends.
pub const FLOW_FINISHING: u32 = 4;

/// The handshake of a [`HandshakeSlot`]: a connection between its SYN and the client's ACK of
/// the origin's SYN-ACK, pinned to the origin its SYN went to. Written only by the data plane:
/// ingress inserts it on a SYN, TC egress records the origin's initial sequence number from
/// the SYN-ACK, and the client's ACK of exactly that number moves the connection to
/// `SWITCHER_FLOWS`. A spoofed SYN flood churns only this map; established flows are elsewhere.
///
/// It also keeps what the edge needs to reset the client itself while the connection is
/// pending, when its origin is cut off (docs/ARCHITECTURE.md, "Edge-originated resets"): the
/// client's initial sequence number and the SYN's link-layer addresses, written with the entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// Index into `SWITCHER_ORIGINS`, host byte order.
    pub origin: u32,
    /// `HANDSHAKE_*` flags, host order.
    pub flags: u32,
    /// The origin's initial sequence number + 1, host order: the acknowledgment number the
    /// client's handshake ACK must carry. Meaningful when `flags & HANDSHAKE_ISN_SEEN`.
    pub expect_ack: u32,
    /// The client's initial sequence number (its SYN's sequence number), host order: an edge
    /// reset of the pending connection acknowledges it + 1, the only acknowledgment number a
    /// client in SYN-SENT accepts an RST with (RFC 9293 3.10.7.3).
    pub client_isn: u32,
    /// Ethernet source address of the SYN as it sits in the frame (the client, or the router
    /// it comes through): the destination of an edge reset. As [`FlowValue::hop_mac`].
    pub hop_mac: [u8; 6],
    /// Ethernet destination address of the SYN (this edge's interface): the source of an edge
    /// reset. As [`FlowValue::local_mac`].
    pub local_mac: [u8; 6],
}

/// [`Handshake::flags`]: TC egress saw the origin's SYN-ACK; `expect_ack` is set.
pub const HANDSHAKE_ISN_SEEN: u32 = 1;

/// Value of the `SWITCHER_HANDSHAKES` array: one slot of the set-associative handshake table,
/// a connection's key and its [`Handshake`]. A slot whose `key.family` is 0 is empty (the
/// data plane empties a slot by zeroing the 4 bytes of port and family). A connection of flow
/// hash `hash` may sit in any slot of bucket [`handshake_bucket`]`(hash)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeSlot {
    /// The connection (`family` 0: an empty slot).
    pub key: FlowKey,
    /// Its handshake.
    pub hs: Handshake,
}

/// Value of the `SWITCHER_HANDSHAKES` array: one bucket of the handshake table, 192 bytes.
/// The whole array (12 MiB) is fixed in size: `--max-flows` sizes the flow table only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeBucket {
    /// The bucket's slots, in no order.
    pub slots: [HandshakeSlot; HANDSHAKE_WAYS as usize],
}

/// [`FlowKey::family`] of a [`HandshakeSlot`] that a SYN has claimed and is writing (its
/// `Handshake::origin` is then `u32::MAX`): no connection has this family, so no reader
/// matches the slot, and no other SYN writes it until the writer puts the key's port and
/// family there, last. The data plane claims a slot by one compare-and-swap of the 8 bytes
/// that hold the key's port and family and the handshake's origin (`handshakes.rs`).
pub const HANDSHAKE_CLAIMED_FAMILY: u16 = 0xffff;

impl HandshakeSlot {
    /// Whether the slot holds a handshake (neither empty nor being written).
    pub const fn is_used(&self) -> bool {
        self.key.family != 0 && self.key.family != HANDSHAKE_CLAIMED_FAMILY
    }
}

/// Per-CPU statistics: value of the `SWITCHER_STATS` map, one slot per origin index plus
/// [`STATS_UNSTEERED`]. Written only by the data plane; user space sums the CPUs.
/// All fields are host-order packet/byte counts since load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Request packets steered to this origin (ingress).
    pub packets: u64,
    /// Bytes of those packets (L2 frame length as the program saw it).
    pub bytes: u64,
    /// SYNs of new connections steered to this origin (a handshake entry created). A spoofed
    /// SYN flood shows here, and not in `established`.
    pub new_flows: u64,
    /// Request packets rewritten toward this origin.
    pub rewrites: u64,
    /// Reply packets from this origin rewritten back to the VIP (egress).
    pub reply_rewrites: u64,
    /// Packets passed unchanged (unsteered slot: not for the VIP, steering disabled, no origin).
    pub passes: u64,
    /// Packets dropped (a checksum helper or store failed at TC; never used for parse errors).
    pub drops: u64,
    /// Packets too short for the headers they claim; passed unchanged.
    pub malformed: u64,
    /// IP fragments (IPv4 MF/offset, IPv6 fragment header); passed unchanged.
    pub fragments: u64,
    /// IPv4 with options or IPv6 with extension headers before TCP; passed unchanged.
    pub ip_options: u64,
    /// Handshakes that completed through the VIP: the client acknowledged this origin's initial
    /// sequence number, and the connection moved to the flow table.
    pub established: u64,
    /// Unsteered slot only: packets to the VIP that are not a SYN and belong to no flow or
    /// handshake (a flow whose origin was retired, one evicted from a full table,
    /// one older than the data plane, or a spoofed packet such as a bare-ACK flood). They pass
    /// unchanged to this host's stack, which answers with a TCP reset from the VIP (nothing
    /// listens there), so a live client learns at once that its connection is gone.
    pub untracked: u64,
    /// New flows steered to this origin because the origin the lookup table chose had no
    /// listening socket (see [`VIP_CHECK_LISTENER`]).
    pub listener_fallbacks: u64,
    /// Flows (or handshakes) pinned to this origin forgotten because their client opened a
    /// connection straight to this origin from the same port, and the VIP connection was over
    /// (its entry would have rewritten the new connection's replies).
    pub stale_flows: u64,
    /// SYNs straight to this origin from the client port of a flow pinned to it that is still
    /// open (the origin holds a live socket for it, or, for an origin on another host, sent no
    /// FIN or RST): the flow is kept. A spoofed SYN aimed at a viewer's flow shows here.
    pub stale_kept: u64,
    /// Requests dropped on a flow that is finishing its last response from a retired origin
    /// (see [`FLOW_FINISHING`]).
    pub held: u64,
    /// Established flows of this origin that ended as the data plane saw it: the origin's
    /// first FIN or RST on the flow (TC egress, which sets `FLOW_ORIGIN_CLOSED`), or an open
    /// flow the data plane forgot. `established - flows_closed` minus what user space removed
    /// (`SWITCHER_FLOWS_REMOVED`) is the origin's open flows, read without walking the map.
    pub flows_closed: u64,
}

// Sizes pinned: a change here is a change of the kernel/user contract.
const _: () = assert!(core::mem::size_of::<VipConfig>() == 32);
const _: () = assert!(core::mem::size_of::<Origin>() == 28);
const _: () = assert!(core::mem::offset_of!(Origin, generation) == 24);
const _: () = assert!(core::mem::offset_of!(Origin, addr_v6) == 4);
const _: () = assert!(core::mem::offset_of!(Origin, port_be) == 20);
const _: () = assert!(core::mem::offset_of!(Origin, flags) == 22);
const _: () = assert!(core::mem::offset_of!(VipConfig, addr_v6) == 4);
const _: () = assert!(core::mem::align_of::<VipConfig>() == 4);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 20);
const _: () = assert!(core::mem::align_of::<FlowKey>() == 4);
const _: () = assert!(core::mem::size_of::<FlowValue>() == 28);
const _: () = assert!(core::mem::size_of::<FinishMark>() == 28);
const _: () = assert!(core::mem::size_of::<FlowCacheSlot>() == 48);
const _: () = assert!(FLOW_CACHE_SLOTS.is_power_of_two());
const _: () = assert!(core::mem::offset_of!(FlowValue, generation) == 24);
const _: () = assert!(core::mem::size_of::<Handshake>() == 28);
// The data plane reads and writes slots as 4-byte words at these offsets (`handshakes.rs`).
const _: () = assert!(core::mem::size_of::<HandshakeSlot>() == 48);
const _: () = assert!(core::mem::size_of::<HandshakeBucket>() == 48 * HANDSHAKE_WAYS as usize);
const _: () = assert!(core::mem::offset_of!(HandshakeSlot, hs) == 20);
const _: () = assert!(core::mem::offset_of!(FlowKey, client_port_be) == 16);
const _: () = assert!(core::mem::offset_of!(Handshake, hop_mac) == 16);
const _: () = assert!(core::mem::size_of::<Counters>() == 17 * 8);
const _: () = assert!(core::mem::size_of::<MaglevTable>() == MAGLEV_SIZE as usize);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is `repr(C)`, `Copy`, made only of integers and byte arrays, and has
    // no implicit padding (sizes asserted above equal the sum of their fields).
    unsafe impl aya::Pod for super::VipConfig {}
    unsafe impl aya::Pod for super::Origin {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::FinishMark {}
    unsafe impl aya::Pod for super::FlowCacheSlot {}
    unsafe impl aya::Pod for super::Handshake {}
    unsafe impl aya::Pod for super::HandshakeSlot {}
    unsafe impl aya::Pod for super::HandshakeBucket {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::MaglevTable {}
}

impl Counters {
    /// Adds `other` field by field (user space sums per-CPU values with it).
    pub fn add(&mut self, other: &Counters) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.new_flows += other.new_flows;
        self.rewrites += other.rewrites;
        self.reply_rewrites += other.reply_rewrites;
        self.passes += other.passes;
        self.drops += other.drops;
        self.malformed += other.malformed;
        self.fragments += other.fragments;
        self.ip_options += other.ip_options;
        self.established += other.established;
        self.untracked += other.untracked;
        self.listener_fallbacks += other.listener_fallbacks;
        self.stale_flows += other.stale_flows;
        self.stale_kept += other.stale_kept;
        self.held += other.held;
        self.flows_closed += other.flows_closed;
    }

    /// Every field's name (as in the struct), in declaration order.
    pub const FIELD_NAMES: [&'static str; 17] = [
        "packets",
        "bytes",
        "new_flows",
        "rewrites",
        "reply_rewrites",
        "passes",
        "drops",
        "malformed",
        "fragments",
        "ip_options",
        "established",
        "untracked",
        "listener_fallbacks",
        "stale_flows",
        "stale_kept",
        "held",
        "flows_closed",
    ];

    /// The field named `name` (one of [`Counters::FIELD_NAMES`]), for tables of expected
    /// counter changes (the data-plane fixtures); `None` for an unknown name.
    pub fn get(&self, name: &str) -> Option<u64> {
        Some(match name {
            "packets" => self.packets,
            "bytes" => self.bytes,
            "new_flows" => self.new_flows,
            "rewrites" => self.rewrites,
            "reply_rewrites" => self.reply_rewrites,
            "passes" => self.passes,
            "drops" => self.drops,
            "malformed" => self.malformed,
            "fragments" => self.fragments,
            "ip_options" => self.ip_options,
            "established" => self.established,
            "untracked" => self.untracked,
            "listener_fallbacks" => self.listener_fallbacks,
            "stale_flows" => self.stale_flows,
            "stale_kept" => self.stale_kept,
            "held" => self.held,
            "flows_closed" => self.flows_closed,
            _ => return None,
        })
    }
}

pub mod dsr {
    //! Direct server return: the types of the encapsulation path (edge) and of the decap
    //! program (origin host). An origin flagged [`ORIGIN_REMOTE`](super::ORIGIN_REMOTE) is
    //! reached over an IPv4 underlay: IPv4 requests by IPv4-in-IPv4 (RFC 2003, protocol
    //! [`IPPROTO_IPIP`]), IPv6 requests by IPv6-in-IPv4 (RFC 4213 "6in4", protocol
    //! [`IPPROTO_IPV6`]); its host strips the outer header in eBPF and its origin, listening on
    //! the VIP (on `lo`, ARP for it off), answers the viewer directly. Same layout rules as the
    //! rest of this crate.

    /// Names of the maps of the DSR path.
    pub mod map_names {
        /// PerCpuArray[MAX_ORIGINS] of [`EncapCounters`](super::EncapCounters), by origin index.
        pub const ENCAP_STATS: &str = "SWITCHER_ENCAP_STATS";
        /// Array[1] of [`DecapConfig`](super::DecapConfig).
        pub const DECAP_CONFIG: &str = "SWITCHER_DECAP_CONFIG";
        /// PerCpuArray[1] of [`DecapCounters`](super::DecapCounters).
        pub const DECAP_STATS: &str = "SWITCHER_DECAP_STATS";
    }

    /// Names of the DSR programs in the object.
    pub mod prog_names {
        /// XDP on an origin host: strips the outer IPv4 header of IP-in-IP and 6in4 packets
        /// for the VIP.
        pub const XDP_DECAP: &str = "switcher_decap";
    }

    /// IP protocol number of IPv4-in-IPv4 (RFC 2003).
    pub const IPPROTO_IPIP: u8 = 4;
    /// IP protocol number of IPv6-in-IPv4 (RFC 4213 "6in4", the outer header's protocol).
    pub const IPPROTO_IPV6: u8 = 41;
    /// TTL of the outer header the edge builds (both inner families).
    pub const OUTER_TTL: u8 = 64;

    /// Per-CPU counters of the encapsulation path, by origin index (value of
    /// `SWITCHER_ENCAP_STATS`). Written only by the data plane; host order; since load. Both
    /// inner families count here alike (IP-in-IP and 6in4).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct EncapCounters {
        /// Requests encapsulated toward this origin's host and sent from XDP (`XDP_TX` or
        /// `bpf_redirect` to the interface the route says).
        pub encapsulated: u64,
        /// Bytes of those packets as sent (outer header included).
        pub bytes: u64,
        /// Encapsulated, but the route lookup could not complete (no neighbour entry yet, or
        /// forwarding off on the ingress interface): handed to this host's stack, which routes
        /// it and resolves the neighbour (needs `net.ipv4.ip_forward=1` and `accept_local`
        /// on the interface: the packet's source is this host's address).
        pub to_stack: u64,
        /// Encapsulated packet larger than the route's MTU (the inner IPv4 or IPv6 packet + 20
        /// bytes): dropped (the viewer's TCP retransmits; the edge-to-origin path needs 20
        /// bytes more MTU than viewers use).
        pub too_big: u64,
        /// No route to the origin host (unreachable, blackhole, prohibit), or growing the
        /// packet failed: dropped. Also a request steered to a remote origin through TC
        /// ingress (which cannot encapsulate): passed to the stack, which resets it.
        pub errors: u64,
        /// Packets of no flow or handshake (taken over from another edge, or whose state was
        /// evicted) sent to the origin new flows go to, without creating state.
        pub adopted: u64,
    }

    /// The decap program's configuration (value of `SWITCHER_DECAP_CONFIG`, key 0). Written by
    /// `switcher-ctl decap` at attach time.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct DecapConfig {
        /// This host's address that edges encapsulate to (outer destination), network order.
        pub local_v4: [u8; 4],
        /// The IPv4 VIP (inner destination of IP-in-IP), network order; meaningful when
        /// `flags & DECAP_VIP_V4`.
        pub vip_v4: [u8; 4],
        /// `DECAP_ENABLED | DECAP_VIP_V4 | DECAP_VIP_V6`; host order.
        pub flags: u32,
        /// The IPv6 VIP (inner destination of 6in4), network order; meaningful when
        /// `flags & DECAP_VIP_V6`.
        pub vip_v6: [u8; 16],
    }

    /// [`DecapConfig::flags`]: decapsulation is on (cleared, every packet passes, counted).
    pub const DECAP_ENABLED: u32 = 1;
    /// [`DecapConfig::flags`]: `vip_v4` is set; IP-in-IP to it is decapsulated.
    pub const DECAP_VIP_V4: u32 = 2;
    /// [`DecapConfig::flags`]: `vip_v6` is set; 6in4 to it is decapsulated.
    pub const DECAP_VIP_V6: u32 = 4;

    /// Per-CPU counters of the decap program (value of `SWITCHER_DECAP_STATS`, key 0). Written
    /// only by the data plane; host order; since load.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DecapCounters {
        /// IP-in-IP (protocol 4) or 6in4 (protocol 41) packets to this host for the VIP of
        /// the inner family whose outer header was removed.
        pub decapsulated: u64,
        /// Bytes of those packets as received (outer header included).
        pub bytes: u64,
        /// IP-in-IP or 6in4 packets not for this host, or whose inner destination is not the
        /// configured VIP of its family (or no VIP of that family is configured): passed
        /// unchanged.
        pub foreign: u64,
        /// IP-in-IP or 6in4 packets to this host too short for the headers they claim, with
        /// outer options, fragmented, or whose inner header is not the protocol's family
        /// (IPv4 for protocol 4, IPv6 for 41) with a length consistent with the outer one:
        /// passed unchanged.
        pub malformed: u64,
        /// Everything else (neither IP-in-IP nor 6in4, or decapsulation disabled): passed
        /// unchanged.
        pub passed: u64,
    }

    const _: () = assert!(core::mem::size_of::<EncapCounters>() == 6 * 8);
    const _: () = assert!(core::mem::size_of::<DecapConfig>() == 28);
    const _: () = assert!(core::mem::size_of::<DecapCounters>() == 5 * 8);

    #[cfg(feature = "user")]
    mod pod {
        // SAFETY: `repr(C)`, `Copy`, integers and byte arrays only, no implicit padding (sizes
        // asserted above).
        unsafe impl aya::Pod for super::EncapCounters {}
        unsafe impl aya::Pod for super::DecapConfig {}
        unsafe impl aya::Pod for super::DecapCounters {}
    }

    impl EncapCounters {
        /// Adds `other` field by field (user space sums per-CPU values with it).
        pub fn add(&mut self, other: &EncapCounters) {
            self.encapsulated += other.encapsulated;
            self.bytes += other.bytes;
            self.to_stack += other.to_stack;
            self.too_big += other.too_big;
            self.errors += other.errors;
            self.adopted += other.adopted;
        }
    }

    impl DecapCounters {
        /// Adds `other` field by field (user space sums per-CPU values with it).
        pub fn add(&mut self, other: &DecapCounters) {
            self.decapsulated += other.decapsulated;
            self.bytes += other.bytes;
            self.foreign += other.foreign;
            self.malformed += other.malformed;
            self.passed += other.passed;
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// The share of `slots` alone in theirs, and the most keys in one slot.
    fn spread(slots: &[u32]) -> (f64, usize) {
        let mut count = std::vec![0usize; FLOW_CACHE_SLOTS as usize];
        for &s in slots {
            count[s as usize] += 1;
        }
        let alone = slots.iter().filter(|&&s| count[s as usize] == 1).count();
        (
            alone as f64 / slots.len() as f64,
            *count.iter().max().unwrap(),
        )
    }

    /// Keys of `n` clients: IPv4 address `addr(i)` (as the wire's bytes) and port `port(i)`.
    fn v4_keys(n: u32, addr: impl Fn(u32) -> [u8; 4], port: impl Fn(u32) -> u16) -> Vec<[u32; 5]> {
        (0..n)
            .map(|i| {
                let mut client_addr = [0; 16];
                client_addr[..4].copy_from_slice(&addr(i));
                FlowKey {
                    client_addr,
                    client_port_be: port(i).to_be(),
                    family: FAMILY_V4,
                }
                .words()
            })
            .collect()
    }

    #[test]
    fn flow_cache_slots_spread_like_random_ones() {
        // n keys in 8,192 random slots: a key is alone in its slot with probability
        // (1 - 1/8192)^(n-1), 0.885 for 1,000 and 0.614 for 4,000 (the bounds leave room for
        // chance: a few hundredths); the fullest slot holds 3-5.
        for (n, alone_at_least) in [(1000u32, 0.84), (4000, 0.57)] {
            let cases: [(&str, Vec<[u32; 5]>); 5] = [
                (
                    "one address, consecutive ports",
                    v4_keys(n, |_| [10, 1, 1, 1], |i| 32768 + i as u16),
                ),
                (
                    "consecutive addresses, one port",
                    v4_keys(n, |i| [10, 1, (i >> 8) as u8, i as u8], |_| 40000),
                ),
                (
                    "addresses by 65, ports by 7",
                    v4_keys(
                        n,
                        |i| [172, 16, ((i * 65) >> 8) as u8, (i * 65) as u8],
                        |i| 32768 + (i * 7) as u16,
                    ),
                ),
                (
                    "16 addresses, consecutive ports each",
                    v4_keys(
                        n,
                        |i| [10, 0, 0, (i % 16) as u8],
                        |i| 40000 + (i / 16) as u16,
                    ),
                ),
                (
                    "IPv6, one /64, consecutive interface ids",
                    (0..n)
                        .map(|i| {
                            let mut client_addr = [0u8; 16];
                            client_addr[..8].copy_from_slice(&[0x20, 1, 0x0d, 0xb8, 0, 0, 0, 1]);
                            client_addr[12..].copy_from_slice(&i.to_be_bytes());
                            FlowKey {
                                client_addr,
                                client_port_be: 443u16.to_be(),
                                family: FAMILY_V6,
                            }
                            .words()
                        })
                        .collect(),
                ),
            ];
            for (name, keys) in cases {
                let slots: Vec<u32> = keys.iter().map(flow_cache_slot).collect();
                assert!(slots.iter().all(|&s| s < FLOW_CACHE_SLOTS), "{name}");
                let (alone, most) = spread(&slots);
                assert!(alone >= alone_at_least, "{n} keys, {name}: {alone} alone");
                assert!(most <= 7, "{n} keys, {name}: {most} in one slot");
            }
        }
    }

    #[test]
    fn a_flow_cache_slot_depends_on_every_word() {
        let base = [0x0101_010a, 0, 0, 0, 0x0002_409c];
        let slot = flow_cache_slot(&base);
        for word in 0..5 {
            // Some bit of each word moves the slot (each bit does, for most bits).
            let moved = (0..32)
                .filter(|bit| {
                    let mut k = base;
                    k[word] ^= 1 << bit;
                    flow_cache_slot(&k) != slot
                })
                .count();
            assert!(moved >= 28, "word {word}: {moved} of 32 bits move the slot");
        }
    }
}

//! The steering decisions, independent of how a program rewrites bytes: which packets are
//! requests to the VIP and which origin they go to (recording handshakes and flows), which
//! packets are replies of a tracked flow, when a flow is over, and the per-origin counters.

use core::ffi::c_void;
use core::intrinsics::{atomic_cxchg, atomic_or, AtomicOrdering};

use aya_ebpf::{
    bindings::{bpf_sock_tuple, BPF_F_CURRENT_NETNS},
    helpers::{bpf_sk_lookup_tcp, bpf_sk_release},
};
use switcher_common::{
    flow_hash::{jhash2, slot_index, FLOW_HASH_SEED},
    flow_is_live, Counters, FinishMark, FlowCacheSlot, FlowKey, FlowValue, Origin, VipConfig,
    FAMILY_V4, FLOW_FINISHING, FLOW_ORIGIN_CLOSED, FLOW_SEEN_SYN, HANDSHAKE_ISN_SEEN, MAGLEV_SIZE,
    MAX_ORIGINS, ORIGIN_CONFIGURED, ORIGIN_FALLBACK, ORIGIN_REMOTE, STATS_UNSTEERED,
    VIP_CHECK_LISTENER, VIP_ENABLED, VIP_HAS_V4, VIP_HAS_V6,
};

use crate::{
    flow_cache, handshakes,
    maps::{CONFIG, FLOWS, MAGLEV, MAGLEV_LIVE, ORIGINS, STATS},
    packet::{eth_addrs, eth_words, tcp, EthAddrs, Tcp},
};

/// IP protocol number of TCP, the last word of the flow hash.
const PROTO_TCP: u32 = 6;

/// Applies `f` to this CPU's counters of `slot`.
#[inline(always)]
pub fn count(slot: u32, f: impl FnOnce(&mut Counters)) {
    if let Some(c) = STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU value, only this program on this CPU touches it (no preemption
        // inside a BPF program on one CPU for the same map value's per-CPU copy).
        f(unsafe { &mut *c });
    }
}

/// The configured VIP, if steering is enabled: a reference into the map value, so callers
/// load only the fields they use (the commonest packet, not for the VIP, needs only the port
/// and the flags; a copy of the whole value cost loads and stack stores on every packet).
#[inline(always)]
pub fn vip() -> Option<&'static VipConfig> {
    let vip = CONFIG.get(0)?;
    if vip.flags & VIP_ENABLED == 0 {
        return None;
    }
    Some(vip)
}

// Addresses are read, compared and built as 4-byte words, never as `[u8; N]` values: the BPF
// build compares and copies byte arrays byte by byte (a load, shift and OR per byte of a map
// value, or a call of compiler_builtins' byte-loop `memset`/`memcmp`, BPF having no such
// instructions); see BENCHMARKS.md, 2026-12-02, branch dp-memset.

/// The IPv4 address field `a` of a map value as one aligned 4-byte load.
///
/// `a` must be a field of a [`VipConfig`] or an [`Origin`] in a map: both are 4-byte aligned
/// with their addresses at offsets 0 and 4 (pinned in switcher-common), and the kernel keeps
/// map values 8-byte aligned.
#[inline(always)]
fn map_word(a: &[u8; 4]) -> u32 {
    // SAFETY: a valid reference, 4-byte aligned per the above.
    unsafe { core::ptr::read((a as *const [u8; 4]).cast::<u32>()) }
}

/// The IPv6 address field `a` of a map value as four aligned 4-byte loads (native order, the
/// bytes in memory order). `a` as for [`map_word`].
#[inline(always)]
fn map_words(a: &[u8; 16]) -> [u32; 4] {
    let p = (a as *const [u8; 16]).cast::<u32>();
    // SAFETY: a valid reference, 4-byte aligned as for `map_word`; the 4 words are its 16 bytes.
    unsafe { [p.read(), p.add(1).read(), p.add(2).read(), p.add(3).read()] }
}

/// Whether two addresses given as four words are equal (no early exit: one compare).
#[inline(always)]
fn same_words(a: [u32; 4], b: [u32; 4]) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) == 0
}

/// Whether `t` is addressed to the VIP.
#[inline(always)]
pub fn is_to_vip(t: &Tcp, vip: &VipConfig) -> bool {
    if t.dport != vip.port_be {
        return false;
    }
    let d = t.daddr;
    if t.family == FAMILY_V4 {
        vip.flags & VIP_HAS_V4 != 0 && d[0] == map_word(&vip.addr_v4)
    } else {
        vip.flags & VIP_HAS_V6 != 0 && same_words(d, map_words(&vip.addr_v6))
    }
}

/// A configured origin by index.
#[inline(always)]
fn origin(index: u32) -> Option<&'static Origin> {
    // A reference, not a copy: a tracked flow's packet reads only the port and the address.
    let o = ORIGINS.get(index)?;
    if o.flags & ORIGIN_CONFIGURED == 0 {
        return None;
    }
    Some(o)
}

/// Where a request goes: origin index, and the destination to write.
pub struct Target {
    /// Origin index (stats slot).
    pub index: u32,
    /// New destination port, network order.
    pub port: u16,
    /// New destination address when the origin's differs from the VIP's, as four native
    /// words (`Tcp::daddr`'s form, for the same reason; IPv4 in the first), `None` to keep the
    /// VIP address.
    pub addr: Option<[u32; 4]>,
    /// The origin's host when it is a remote (DSR) origin (`encap::remote_host_of`): the
    /// request is encapsulated to it instead of rewritten. Read with the rest from the one
    /// `SWITCHER_ORIGINS` lookup (until branch dplean, `encap::remote_host` looked the origin
    /// up a second time for every steered request).
    pub remote_host: Option<[u8; 4]>,
}

/// The origin address to write for `family` (four native words, as `Tcp::daddr`), or `None`
/// when the origin lives at the VIP's own address (all-zero origin address).
#[inline(always)]
fn origin_addr(o: &Origin, family: u16) -> Option<[u32; 4]> {
    let w = if family == FAMILY_V4 {
        [map_word(&o.addr_v4), 0, 0, 0]
    } else {
        map_words(&o.addr_v6)
    };
    if w[0] | w[1] | w[2] | w[3] == 0 {
        return None;
    }
    Some(w)
}

/// `bpf_sock.state` values (the kernel's `tcp_states.h`) of a connection whose origin may
/// still send data: established, SYN_RECV (TCP Fast Open), and CLOSE_WAIT (the client has
/// finished, the origin may still be answering). Every other state (a listener, FIN_WAIT*,
/// LAST_ACK, CLOSING, CLOSE) means the origin has finished with the connection or never had it.
const TCP_ESTABLISHED: u32 = 1;
/// See [`TCP_ESTABLISHED`].
const TCP_SYN_RECV: u32 = 3;
/// See [`TCP_ESTABLISHED`].
const TCP_CLOSE_WAIT: u32 = 8;

/// The state of the TCP socket on this host that a segment from the client of `t` to the
/// VIP's address (`t.daddr`) on `port_be` would reach: the established socket of that tuple
/// if there is one, else a listener on the port; `None` when there is neither. (The kernel's
/// lookup hides TIME_WAIT sockets and gives the listener for a connection still in SYN_RECV.)
#[inline(always)]
fn socket_state(ctx: *mut c_void, t: &Tcp, port_be: u16) -> Option<u32> {
    // The zeroing compiles to a call of the byte-loop `memset` (24-32 bytes; see `map_word`).
    // Kept: writing only the family's member inlined pushed `switcher_xdp` past the 512-byte
    // stack, and as a BPF-to-BPF call taking `t` it kept the parsed packet in memory and slowed
    // the tracked flow by ~1.2x (BENCHMARKS.md, 2026-12-02, branch dp-memset). Only SYNs to an
    // origin's port (with a tracked flow) and the listener check reach it.
    // SAFETY: an all-zero bpf_sock_tuple is a valid value of the C union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size;
    // SAFETY: writing the union member that matches the family, as the kernel reads it; the
    // socket the lookup returns is read once and released on every path.
    unsafe {
        if t.family == FAMILY_V4 {
            let v4 = &mut tuple.__bindgen_anon_1.ipv4;
            v4.saddr = t.saddr[0];
            v4.daddr = t.daddr[0];
            v4.sport = t.sport;
            v4.dport = port_be;
            size = core::mem::size_of_val(v4) as u32;
        } else {
            let v6 = &mut tuple.__bindgen_anon_1.ipv6;
            v6.saddr = t.saddr;
            v6.daddr = t.daddr;
            v6.sport = t.sport;
            v6.dport = port_be;
            size = core::mem::size_of_val(v6) as u32;
        }
        let sk = bpf_sk_lookup_tcp(ctx, &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0);
        if sk.is_null() {
            return None;
        }
        let state = (*sk).state;
        bpf_sk_release(sk as *mut c_void);
        Some(state)
    }
}

/// Whether a TCP socket on this host would take a connection from the client of `t` to the
/// VIP's address (`t.daddr`) on `port_be`: a listener, or an established socket of that tuple.
#[inline(always)]
fn has_socket(ctx: *mut c_void, t: &Tcp, port_be: u16) -> bool {
    socket_state(ctx, t, port_be).is_some()
}

/// Whether origin `o` can take a new flow: always for an origin at another address or on
/// another host (`ORIGIN_REMOTE`, whose IPv6 flows go to its host's IPv4 address with no
/// IPv6 origin address set): it is not on this host to look at. Otherwise when a socket
/// listens on its port.
#[inline(always)]
fn alive(ctx: *mut c_void, t: &Tcp, o: &Origin) -> bool {
    o.flags & ORIGIN_REMOTE != 0
        || origin_addr(o, t.family).is_some()
        || has_socket(ctx, t, o.port_be)
}

/// An address (four native words in memory order, see `Tcp::saddr`) as the 4 little-endian
/// words the flow hash reads (`s6_addr32` on bpfel: the same words).
#[inline(always)]
fn addr_words(a: [u32; 4]) -> [u32; 4] {
    a.map(|w| u32::from_le_bytes(w.to_ne_bytes()))
}

/// The flow's Maglev hash, word for word what switcher-ctl's `maglev::flow_hash_v4/v6`
/// compute: `[src addr, dst addr, ports, proto]`, each word the packet's bytes read as a
/// little-endian u32 (the ports word is the first 4 bytes of the TCP header: `sport` and
/// `dport` hold the wire bytes, so on bpfel `sport | dport << 16` is that load). For a
/// request to the VIP it also picks the connection's handshake-table bucket.
#[inline(always)]
pub(crate) fn flow_hash(t: &Tcp) -> u32 {
    hash_of(t.family, t.saddr, t.sport, t.daddr, t.dport)
}

/// The flow hash of a request of the connection whose client is `client`:`client_port`,
/// of `family`, to the VIP: what its handshake-table bucket is, computed from a packet that is
/// not that request (a reply, or a SYN to an origin's port). `None` when the VIP has no
/// address of that family (no such connection can exist). `client` as `Tcp::saddr`.
#[inline(always)]
fn vip_flow_hash(family: u16, client: [u32; 4], client_port: u16, vip: &VipConfig) -> Option<u32> {
    let v = vip_addr(vip, family)?;
    Some(hash_of(family, client, client_port, v, vip.port_be))
}

/// [`flow_hash`] of the segment `src`:`src_port` -> `dst`:`dst_port` of `family` (addresses
/// as `Tcp::saddr`).
#[inline(always)]
fn hash_of(family: u16, src: [u32; 4], src_port: u16, dst: [u32; 4], dst_port: u16) -> u32 {
    let ports = u32::from(src_port) | u32::from(dst_port) << 16;
    let s = addr_words(src);
    let d = addr_words(dst);
    if family == FAMILY_V4 {
        jhash2(&[s[0], d[0], ports, PROTO_TCP], FLOW_HASH_SEED)
    } else {
        jhash2(
            &[
                s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3], ports, PROTO_TCP,
            ],
            FLOW_HASH_SEED,
        )
    }
}

/// The origin index the live Maglev table gives a flow of flow hash `hash`, if it names one
/// (an empty table holds `MAGLEV_NO_ORIGIN`, which is out of range).
#[inline(always)]
fn maglev_origin(hash: u32) -> Option<u32> {
    let live = *MAGLEV_LIVE.get(0)?;
    let table = MAGLEV.get(live)?;
    // Below MAGLEV_SIZE by construction, which the verifier sees from the arithmetic itself.
    let slot = slot_index(hash, MAGLEV_SIZE) as usize;
    // SAFETY: `slot` < MAGLEV_SIZE, the array's length (see `slot_index`).
    let index = u32::from(unsafe { *table.slots.as_ptr().add(slot) });
    (index < MAX_ORIGINS).then_some(index)
}

/// The origin a new flow `t` of flow hash `hash` ([`flow_hash`]) goes to: the live Maglev
/// table's choice, or, with [`VIP_CHECK_LISTENER`] and no socket on that origin's port, the
/// first other origin flagged `ORIGIN_FALLBACK` that has one. Returns (index, origin, fell
/// back).
#[inline(always)]
pub(crate) fn new_flow_origin(
    ctx: *mut c_void,
    t: &Tcp,
    vip: &VipConfig,
    hash: u32,
) -> Option<(u32, &'static Origin, bool)> {
    let index = maglev_origin(hash)?;
    let o = origin(index)?;
    if vip.flags & VIP_CHECK_LISTENER == 0 || alive(ctx, t, &o) {
        return Some((index, o, false));
    }
    let mut i = 0;
    while i < MAX_ORIGINS {
        // Origins fill slots 0.. without a gap: the first empty slot ends the list.
        let Some(other) = origin(i) else { break };
        // Only an origin the control plane says may take new flows (healthy, not drained, weight above 0).
        if i != index && other.flags & ORIGIN_FALLBACK != 0 && alive(ctx, t, &other) {
            return Some((i, other, true));
        }
        i += 1;
    }
    // Nobody listens: the table's origin answers with a reset, as without the check.
    Some((index, o, false))
}

// The layout `flow_key` writes.
const _: () = assert!(core::mem::offset_of!(FlowKey, client_port_be) == 16);
const _: () = assert!(core::mem::offset_of!(FlowKey, family) == 18);
const _: () = assert!(core::mem::align_of::<FlowKey>() == 4);

/// The flow key of a request `t` (its client's address and port, and the family), as
/// `FLOWS` and `HANDSHAKES` are keyed.
#[inline(always)]
pub(crate) fn flow_key(t: &Tcp) -> FlowKey {
    key_of(t.saddr, t.sport, t.family)
}

/// The flow key of client address `addr` (four native words, `Tcp::saddr`'s form) and port
/// `port_be`, of `family`.
///
/// Written as four 4-byte words of address and one of port and family. Why: built as a
/// struct literal, the port and the family were two 2-byte stack stores (and, with the
/// address converted to bytes, the address 16 one-byte stores), and the map's hash (the
/// kernel's `jhash`) reads them back as 4-byte loads, which the CPU cannot forward from
/// smaller stores: a stall on every lookup (BENCHMARKS.md, 2026-12-02, branch dplean:
/// `bench_tf_lookup` against `bench_flow_lookup`, whose constant key is five 4-byte stores).
#[inline(always)]
fn key_of(addr: [u32; 4], port_be: u16, family: u16) -> FlowKey {
    let mut key = core::mem::MaybeUninit::<FlowKey>::uninit();
    let p = key.as_mut_ptr().cast::<u8>();
    let (port, family) = (port_be.to_ne_bytes(), family.to_ne_bytes());
    // SAFETY: `FlowKey` is `repr(C)`: 16 bytes of address, then the port and the family (2
    // bytes each), no padding (20 bytes), 4-byte aligned (both asserted in switcher-common),
    // so the word at offset 16 is aligned. Every byte is written.
    unsafe {
        p.cast::<[u32; 4]>().write(addr);
        p.add(16)
            .cast::<u32>()
            .write(u32::from_ne_bytes([port[0], port[1], family[0], family[1]]));
        key.assume_init()
    }
}

/// What ingress does with a packet for the VIP.
pub enum Decision {
    /// Rewrite it toward this origin.
    Steer(Target),
    /// Not a SYN, and no flow or handshake knows it: pass it unchanged to this host's stack,
    /// which resets it (nothing listens on the VIP). Counted `untracked`.
    Untracked,
    /// A new connection but no usable origin: pass it; the stack resets it.
    NoOrigin,
    /// A request on a flow finishing its last response from a retired origin
    /// (`FLOW_FINISHING`): drop it, so that origin never starts another response. The
    /// viewer's TCP retransmits it until the control plane resets the connection, and the
    /// viewer then sends it on a new connection, to the healthy origin. Origin index.
    Hold(u32),
}

/// The [`Target`] of origin `index` for a packet of `family`.
#[inline(always)]
fn target(index: u32, o: &Origin, family: u16) -> Target {
    Target {
        index,
        port: o.port_be,
        addr: origin_addr(o, family),
        remote_host: crate::encap::remote_host_of(o),
    }
}

/// Steers a request `t` already known to be for the VIP.
///
/// Flow state, and why it is built this way (an attacker can spoof any source address and
/// port, but cannot read the replies sent to an address it spoofs):
/// * A packet of an established flow (the common case; steered from this CPU's copy of its
///   `FLOWS` entry by `crate::cached_verdict` before this is called, else here after one
///   lookup) follows it; a SYN too (a client reusing the port of a flow that is still
///   tracked stays on that origin, and a spoofed SYN cannot move a viewer's flow), unless the
///   origin has closed the flow (`FLOW_ORIGIN_CLOSED`): then the SYN starts a new flow,
///   steered by the table.
/// * Any other SYN goes to the origin the Maglev table gives its 5-tuple (or, see
///   [`new_flow_origin`], a live one) and is recorded in the handshake table
///   ([`handshakes`]), never in `FLOWS`: a
///   spoofed SYN flood evicts only other handshakes.
/// * A non-SYN packet of a handshake goes to the handshake's origin. When it acknowledges the
///   origin's initial sequence number + 1 (recorded by TC egress from the SYN-ACK), the client
///   has seen the SYN-ACK, so its address is real: the connection moves to `FLOWS`.
/// * Any other packet creates nothing and passes to the stack ([`Decision::Untracked`]): a
///   flow whose origin was retired (an older generation, see `FlowValue::is_live`) gets a
///   reset from the VIP that way, and so does a bare-ACK flood, which cannot fill the tables.
///
/// `frame` is the packet's `[start, end)`: its Ethernet addresses are recorded in the
/// handshake with the client's ISN (a SYN) and in the flow when a handshake completes (read
/// only then), and an established flow records the client's acknowledgment number
/// ([`record_client_ack`]): what an edge-originated reset needs.
#[inline(always)]
pub fn steer_request(
    ctx: *mut c_void,
    t: &Tcp,
    vip: &VipConfig,
    frame: (usize, usize),
) -> Decision {
    let key = flow_key(t);
    // This CPU's copy of the flow (`flow_cache`) did not decide this packet
    // (`crate::cached_verdict`, which its one caller asks first: a miss, or a copy whose origin
    // retired or whose refresh found the entry gone), so the entry (or its absence) decides,
    // and the entry is copied into the slot. Not for a SYN, which reads the entry's
    // `FLOW_ORIGIN_CLOSED` (not copied).
    let cached = if t.is_syn() {
        flow_cache::Probe::NONE
    } else {
        flow_cache::probe(&key)
    };
    if let Some(flow) = FLOWS.get_ptr_mut(&key) {
        // SAFETY: a pointer into the map value, valid while this program runs (RCU); fields are
        // read once, and the one write (`record_client_ack`) is a compare-and-swap.
        let (index, flags, generation) =
            unsafe { ((*flow).origin, (*flow).flags, (*flow).generation) };
        // The flow's origin, while the flow is live: its slot still holds an origin, and the
        // origin was not retired since the flow was pinned (`FlowValue::is_live`).
        let live = origin(index).filter(|o| flow_is_live(generation, flags, o.generation));
        match live {
            // The origin ended this flow (its FIN or RST, seen at TC egress: nobody else can
            // set the flag), so this SYN is a new connection from a reused client port: it is
            // steered as new, by the table, not to an origin that may have been drained or
            // retired since. (A closed flow is not an open one, so the control plane, counting
            // open flows, does not necessarily retire it.)
            Some(_) if t.is_syn() && flags & FLOW_ORIGIN_CLOSED != 0 => {}
            Some(o) => {
                record_client_ack(flow, t);
                cached.fill(flow);
                if flags & FLOW_FINISHING != 0 && t.payload {
                    return Decision::Hold(index);
                }
                return Decision::Steer(target(index, o, t.family));
            }
            // Retired (an older generation of its origin, counted out by user space when it
            // moved the generation) or its slot emptied (a restart with fewer origins): the
            // flow is over, and this packet is a new SYN or untracked.
            None => {}
        }
        // Forgotten here rather than left for user space to reap: a SYN then records a new
        // handshake, and a retired flow's next packet finds nothing, like a deleted one.
        if FLOWS.remove(&key).is_ok() {
            flow_cache::invalidate(&key);
        }
    }
    // The flow's hash: its Maglev slot, and its handshake-table bucket.
    let hash = flow_hash(t);
    let hkey = handshakes::Key::of(&key);
    if t.is_syn() {
        let Some((index, o, fell_back)) = new_flow_origin(ctx, t, vip, hash) else {
            return Decision::NoOrigin;
        };
        // The client's ISN and the SYN's link addresses: what an edge reset of the pending
        // connection needs (docs/ARCHITECTURE.md, "Edge-originated resets").
        handshakes::record(&hkey, hash, index, t.seq, eth_words(frame.0, frame.1));
        count(index, |c| {
            c.new_flows += 1;
            if fell_back {
                c.listener_fallbacks += 1;
            }
        });
        return Decision::Steer(target(index, &o, t.family));
    }
    let Some(hs) = handshakes::find(&hkey, hash) else {
        return Decision::Untracked;
    };
    let Some(o) = origin(hs.origin) else {
        return Decision::Untracked;
    };
    // A remote (DSR) origin's SYN-ACK never crosses the edge: its handshake completes on the
    // client's first ACK (see `encap`, "Flow state without replies").
    let remote = o.flags & ORIGIN_REMOTE != 0;
    if t.flags & tcp::ACK != 0
        && (remote || hs.flags & HANDSHAKE_ISN_SEEN != 0 && t.ack_seq == hs.expect_ack)
        && promote(
            &key,
            &hs,
            o.generation,
            t.ack_seq,
            &eth_addrs(frame.0, frame.1),
        )
    {
        count(hs.origin, |c| c.established += 1);
    }
    Decision::Steer(target(hs.origin, &o, t.family))
}

/// Steers a packet `t` (not a SYN) of a flow from this CPU's copy of it, `slot`
/// (`flow_cache`), by the rules `steer_request` applies to the entry: `None` when the copy's
/// origin was retired or its slot emptied, or the copy's periodic refresh found its entry gone
/// (`flow_cache::refresh`), for the entry (or its absence) to decide.
#[inline(always)]
pub(crate) fn steer_cached(slot: &mut FlowCacheSlot, t: &Tcp) -> Option<Decision> {
    let o =
        origin(slot.origin).filter(|o| flow_is_live(slot.generation, slot.flags, o.generation))?;
    record_ack(&mut slot.client_ack, t);
    if !flow_cache::refresh(slot) {
        return None;
    }
    if slot.flags & FLOW_FINISHING != 0 && t.payload {
        return Some(Decision::Hold(slot.origin));
    }
    Some(Decision::Steer(target(slot.origin, o, t.family)))
}

/// Keeps the flow's `client_ack` at the newest acknowledgment number the client sent, for an
/// edge-originated reset (docs/ARCHITECTURE.md, "Edge-originated resets"). Written only when
/// the number moves forward (RFC 1982 serial comparison: a reordered older segment does not
/// move it back), so a stream of segments acknowledging the same data costs one compare each;
/// the store happens about once per window of data the client receives.
///
/// The entry is shared by every CPU, so the store is [`advance_ack`]'s compare-and-swap: a
/// number another CPU stored since this one read the entry is never overwritten by an older
/// one.
#[inline(always)]
pub(crate) fn record_client_ack(flow: *mut FlowValue, t: &Tcp) {
    if t.flags & tcp::ACK == 0 {
        return;
    }
    // SAFETY: see steer_request: a pointer to the map value.
    unsafe { advance_ack(flow, t.ack_seq) };
}

/// The entry `flow`'s `client_ack`, which several CPUs write with compare-and-swaps: a
/// 4-byte `BPF_CMPXCHG` (it needs the 32-bit ALU, BPF ISA v3 and later; this object is built
/// for v4). Until session 14 the object was built for v1, and the swap was an 8-byte one on
/// this field and the first four bytes of `hop_mac`, which never change under it.
#[inline(always)]
fn ack_field(flow: *mut FlowValue) -> *mut u32 {
    flow.cast::<u8>()
        .wrapping_add(core::mem::offset_of!(FlowValue, client_ack))
        .cast::<u32>()
}

/// Moves the entry `flow`'s `client_ack`, which several CPUs write, forward to `to` when `to`
/// is newer (RFC 1982 serial comparison), with a compare-and-swap ([`ack_field`]), and returns
/// the number the entry holds as this CPU last saw it: `to` once stored, or a number another
/// CPU stored that is at least as new. Two tries: after a second failure (two other CPUs wrote
/// the entry meanwhile, not necessarily newer numbers) the last number seen there is returned,
/// which may be older than `to`: `to` did not reach the entry, and a caller that keeps its own
/// copy of the number (`flow_cache::refresh`) must keep `to` itself.
///
/// # Safety
/// `flow` points to a `SWITCHER_FLOWS` value, valid while this program runs.
#[inline(always)]
pub(crate) unsafe fn advance_ack(flow: *mut FlowValue, to: u32) -> u32 {
    let field = ack_field(flow);
    // SAFETY: per the caller; an aligned 4-byte load.
    let mut seen = unsafe { core::ptr::read_volatile(field) };
    for _ in 0..2 {
        if (to.wrapping_sub(seen) as i32) <= 0 {
            return seen;
        }
        // SAFETY: per the caller.
        let (old, stored) = unsafe {
            atomic_cxchg::<u32, { AtomicOrdering::SeqCst }, { AtomicOrdering::Relaxed }>(
                field, seen, to,
            )
        };
        if stored {
            return to;
        }
        seen = old;
    }
    seen
}

/// Sets `flag` in the entry `flow`'s `flags` with one atomic fetch-or, so that two writers
/// (TC egress's `FLOW_ORIGIN_CLOSED`, [`mark_finishing`]'s `FLOW_FINISHING`) never undo each
/// other; true when this call set it, false when it was already set. (Until session 14, built
/// for BPF ISA v1, it was a loop of 8-byte compare-and-swaps on `origin` and `flags`.)
///
/// # Safety
/// As [`advance_ack`].
#[inline(always)]
pub(crate) unsafe fn set_flow_flag(flow: *mut FlowValue, flag: u32) -> bool {
    // SAFETY: per the caller; an aligned 4-byte field of the value, no reference made.
    let old =
        unsafe { atomic_or::<u32, u32, { AtomicOrdering::SeqCst }>(&raw mut (*flow).flags, flag) };
    old & flag == 0
}

/// Marks the flow `key` finishing (`FLOW_FINISHING`, docs/ARCHITECTURE.md "Stranded
/// connections") for user space, which runs `switcher_mark_finishing` on the key: sets the flag
/// in place ([`set_flow_flag`]) and makes every CPU's copy of the flow stale, so its next
/// request is held. False when the flow has no entry, or one of another origin or generation
/// than user space read (a later connection from the same client port: see `FinishMark`).
///
/// Why the data plane and not a map update: an update writes the whole value, so user space's
/// read-modify-write would undo what the data plane wrote in place in between (the client's
/// acknowledgment number, `FLOW_ORIGIN_CLOSED`); here only the flag's word changes, atomically.
#[inline(always)]
pub fn mark_finishing(mark: &FinishMark) -> bool {
    let Some(f) = FLOWS.get_ptr_mut(&mark.key) else {
        return false;
    };
    // SAFETY: a pointer to the map value, valid while the program runs (RCU). Origin and
    // generation are written only when the entry is created (a new entry is a new element).
    if unsafe { (*f).origin != mark.origin || (*f).generation != mark.generation } {
        return false;
    }
    // SAFETY: as above.
    unsafe { set_flow_flag(f, FLOW_FINISHING) };
    flow_cache::invalidate(&mark.key);
    true
}

/// Stores `to` as the entry `flow`'s `client_ack` if it still holds `expect`, in one
/// compare-and-swap ([`ack_field`]): the copy's give-back (`flow_cache`).
///
/// # Safety
/// As [`advance_ack`].
#[inline(always)]
pub(crate) unsafe fn replace_ack(flow: *mut FlowValue, expect: u32, to: u32) {
    // SAFETY: per the caller.
    unsafe {
        atomic_cxchg::<u32, { AtomicOrdering::SeqCst }, { AtomicOrdering::Relaxed }>(
            ack_field(flow),
            expect,
            to,
        );
    }
}

/// Records the client's acknowledgment number of `t` in this CPU's cached copy of its flow
/// (`flow_cache`), at `ack`: written by this CPU only, so a plain store.
#[inline(always)]
fn record_ack(ack: *mut u32, t: &Tcp) {
    if t.flags & tcp::ACK == 0 {
        return;
    }
    // SAFETY: `ack` points into a map value, valid while this program runs; an aligned u32.
    unsafe {
        if (t.ack_seq.wrapping_sub(*ack) as i32) > 0 {
            *ack = t.ack_seq;
        }
    }
}

/// Moves a completed handshake to the flow table, pinned to the handshake's origin in its
/// current `generation`, with the client's acknowledgment number and the frame's Ethernet
/// addresses (an edge reset's sequence number and addresses). False when the insert failed
/// (memory pressure); the handshake entry then stays and the next ACK tries again.
///
/// The generation is the one read now: a handshake of an origin being retired is taken out of
/// the handshake table before the generation moves, and user space waits for programs that
/// read it to finish (`take_handshakes` in switcher-ctl), so none is promoted into the new one.
#[inline(always)]
fn promote(
    key: &FlowKey,
    hs: &handshakes::Found<'_>,
    generation: u32,
    client_ack: u32,
    macs: &EthAddrs,
) -> bool {
    let flow = FlowValue {
        origin: hs.origin,
        flags: FLOW_SEEN_SYN,
        client_ack,
        hop_mac: macs.src,
        local_mac: macs.dst,
        generation,
    };
    if FLOWS.insert(key, &flow, 0).is_err() {
        return false;
    }
    // A copy of an earlier flow of this key (a reused client port) must not outlive it.
    flow_cache::invalidate(key);
    handshakes::remove(hs);
    true
}

/// Whether `t` is addressed to origin `o` itself (its own address, or the VIP's address with
/// its port for an origin that shares the VIP's address).
#[inline(always)]
fn is_to_origin(t: &Tcp, o: &Origin, vip: &VipConfig) -> bool {
    if o.port_be != t.dport {
        return false;
    }
    origin_addr(o, t.family)
        .or_else(|| vip_addr(vip, t.family))
        .is_some_and(|addr| same_words(addr, t.daddr))
}

/// Forgets a flow a new direct connection has outlived.
///
/// Flows are keyed by the client's address and port, so that replies (origin -> client) find
/// them. When that client opens a connection straight to an origin's port (a probe, a
/// monitoring check, wrk) from a port an earlier VIP connection used, and that VIP flow was
/// pinned to the same origin, both connections are the same 4-tuple at the origin: the VIP
/// one is over, and its entry would make the egress program rewrite the new connection's
/// replies into VIP ones, which the client drops (its SYN never completes).
///
/// But anyone can send a SYN with a viewer's address and port, so the flow is forgotten only
/// when it is over, by evidence an attacker cannot forge:
/// * origin on this host (its address is the VIP's): the origin holds no socket for that
///   4-tuple that it may still send on (the kernel's own connection table, looked up with
///   `bpf_sk_lookup_tcp`; see [`TCP_ESTABLISHED`]);
/// * origin on another host: the origin sent a FIN or RST on the flow (`FLOW_ORIGIN_CLOSED`,
///   set by TC egress).
///
/// A live flow is kept and the SYN counted `stale_kept`. A handshake pinned to that origin
/// is forgotten outright: it cannot be told apart from the new connection. Only SYNs to an
/// origin's port pay for the lookups.
#[inline(always)]
pub fn forget_stale_flow(ctx: *mut c_void, t: &Tcp, vip: &VipConfig) {
    if !t.is_syn() || !is_origin_port(t.dport) {
        return;
    }
    let key = flow_key(t);
    // SAFETY: copied out at once (see steer_request).
    if let Some(flow) = (unsafe { FLOWS.get(&key) }).copied() {
        let Some(o) = origin(flow.origin) else { return };
        if !flow.is_live(o.generation) {
            // Retired, and counted out by user space then: nothing to keep or count.
            if FLOWS.remove(&key).is_ok() {
                flow_cache::invalidate(&key);
            }
            return;
        }
        if !is_to_origin(t, &o, vip) {
            return;
        }
        let over = match origin_addr(&o, t.family) {
            Some(_) => flow.flags & FLOW_ORIGIN_CLOSED != 0,
            None => !matches!(
                socket_state(ctx, t, t.dport),
                Some(TCP_ESTABLISHED | TCP_SYN_RECV | TCP_CLOSE_WAIT)
            ),
        };
        if over {
            if FLOWS.remove(&key).is_ok() {
                flow_cache::invalidate(&key);
                let open = flow.flags & FLOW_ORIGIN_CLOSED == 0;
                count(flow.origin, |c| {
                    c.stale_flows += 1;
                    c.flows_closed += u64::from(open);
                });
            }
        } else {
            count(flow.origin, |c| c.stale_kept += 1);
        }
        return;
    }
    let Some(hash) = vip_flow_hash(t.family, t.saddr, t.sport, vip) else {
        return;
    };
    if let Some(hs) = handshakes::find(&handshakes::Key::of(&key), hash) {
        if let Some(o) = origin(hs.origin) {
            if is_to_origin(t, &o, vip) && handshakes::remove(&hs) {
                count(hs.origin, |c| c.stale_flows += 1);
            }
        }
    }
}

/// The VIP's address for `family` as four native words (`Tcp::saddr`'s form; IPv4 in the
/// first), if it has one.
#[inline(always)]
fn vip_addr(vip: &VipConfig, family: u16) -> Option<[u32; 4]> {
    if family == FAMILY_V4 {
        if vip.flags & VIP_HAS_V4 == 0 {
            return None;
        }
        Some([map_word(&vip.addr_v4), 0, 0, 0])
    } else {
        if vip.flags & VIP_HAS_V6 == 0 {
            return None;
        }
        Some(map_words(&vip.addr_v6))
    }
}

/// Whether `t` comes from the VIP (its address for the family, and its port): the only
/// source an edge-originated reset may have.
#[inline(always)]
pub fn is_from_vip(t: &Tcp, vip: &VipConfig) -> bool {
    t.sport == vip.port_be && vip_addr(vip, t.family).is_some_and(|a| same_words(a, t.saddr))
}

/// Where a reply goes back to: origin index, and the source to restore.
pub struct Reply {
    /// Origin index (stats slot).
    pub index: u32,
    /// VIP port to write as source, network order.
    pub port: u16,
    /// VIP address to write as source when the origin's address differs from it, as four
    /// native words (`Tcp::saddr`'s form).
    pub addr: Option<[u32; 4]>,
    /// This reply is the origin's first FIN or RST on an established flow: the flow is over
    /// (counted `flows_closed` by the caller, once per flow).
    pub closed: bool,
}

/// If `t` is a reply of a tracked flow or handshake from the origin it is pinned to, returns
/// what its source must become. Records on the way what only the origin can tell: the
/// SYN-ACK's initial sequence number (the handshake can then complete, see
/// [`steer_request`]), and a FIN or RST (the flow may be forgotten, see
/// [`forget_stale_flow`]).
#[inline(always)]
pub fn match_reply(t: &Tcp, vip: &VipConfig) -> Option<Reply> {
    let key = key_of(t.daddr, t.dport, t.family);
    // The values are written in place below; a concurrent writer on another CPU can only set
    // the same bits or the same sequence number (the origin's retransmitted SYN-ACK).
    let flow = FLOWS.get_ptr_mut(&key);
    let handshake = if flow.is_none() {
        let hash = vip_flow_hash(t.family, t.daddr, t.dport, vip)?;
        Some(handshakes::find(&handshakes::Key::of(&key), hash)?)
    } else {
        None
    };
    let (index, generation) = match (flow, &handshake) {
        // SAFETY: a pointer into the map value, valid while this program runs (RCU).
        (Some(f), _) => unsafe { ((*f).origin, Some(((*f).generation, (*f).flags))) },
        (None, Some(h)) => (h.origin, None),
        (None, None) => return None,
    };
    let o = origin(index)?;
    if let Some((g, flags)) = generation {
        if !flow_is_live(g, flags, o.generation) {
            // A retired flow: its origin's replies pass unchanged (the viewer was reset), and
            // it is not counted closed (user space counted it out when it retired it).
            return None;
        }
    }
    if o.port_be != t.sport {
        return None;
    }
    let vip_addr = vip_addr(vip, t.family)?;
    let addr = match origin_addr(&o, t.family) {
        // The origin answers from its own address: it must be that one, and it becomes the VIP.
        Some(a) if same_words(a, t.saddr) => Some(vip_addr),
        Some(_) => return None,
        // The origin shares the VIP's address: only the port changes.
        None if same_words(vip_addr, t.saddr) => None,
        None => return None,
    };
    let mut closed = false;
    // SAFETY: as above; single aligned u32 stores.
    unsafe {
        if let Some(f) = flow {
            if t.flags & (tcp::FIN | tcp::RST) != 0 && (*f).flags & FLOW_ORIGIN_CLOSED == 0 {
                // An atomic fetch-or (`set_flow_flag`): a FINISHING mark set meanwhile is not
                // lost, and a FIN and an RST of one flow on two CPUs count it closed once.
                closed = set_flow_flag(f, FLOW_ORIGIN_CLOSED);
            }
        } else if let Some(h) = &handshake {
            if t.flags & (tcp::SYN | tcp::ACK) == tcp::SYN | tcp::ACK {
                handshakes::set_isn_seen(h, t.seq.wrapping_add(1));
            }
        }
    }
    Some(Reply {
        index,
        port: vip.port_be,
        addr,
        closed,
    })
}

/// Quick filter before the conntrack lookup on egress: is `sport` some origin's port?
#[inline(always)]
pub fn is_origin_port(sport: u16) -> bool {
    let mut i = 0;
    while i < MAX_ORIGINS {
        // Origins fill slots 0.. without a gap: the first empty slot ends the list, so a host
        // with two origins pays two lookups per packet it sends, not MAX_ORIGINS.
        let Some(o) = origin(i) else { break };
        if o.port_be == sport {
            return true;
        }
        i += 1;
    }
    false
}

/// Counts a packet passed unchanged in the unsteered slot.
#[inline(always)]
pub fn count_pass(f: impl FnOnce(&mut Counters)) {
    count(STATS_UNSTEERED, |c| {
        c.passes += 1;
        f(c)
    });
}

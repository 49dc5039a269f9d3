//! Direct server return, edge side: a request steered to an origin flagged `ORIGIN_REMOTE`
//! is sent to that origin's host unchanged inside an outer IPv4 header, from XDP: an IPv4
//! request as IPv4-in-IPv4 (RFC 2003, protocol 4), an IPv6 request as IPv6-in-IPv4 (RFC 4213
//! "6in4", protocol 41) over the same IPv4 underlay, so a dual-stack VIP needs nothing but
//! IPv4 between the edges and the origin hosts. The origin host strips the outer header
//! (`decap`) and its origin, which listens on the VIP (both families), answers the viewer
//! directly: replies never cross the edge (docs/ARCHITECTURE.md, "Beyond one host").
//!
//! The outer header: version 4, no options, identification 0, TTL [`OUTER_TTL`], source =
//! the address the kernel would send from toward the origin host, destination = the origin
//! host; header checksum computed in full (20 bytes); the frame's EtherType becomes IPv4.
//! * IPv4 inside: TOS (DSCP and ECN) and DF copied from the inner header (RFC 2003 3.1;
//!   RFC 6040's "normal mode" for ECN), protocol 4.
//! * IPv6 inside: TOS = the inner traffic class (DSCP and ECN; RFC 2983's uniform model for
//!   DSCP, which RFC 4213 3.5 points to, and RFC 6040 normal mode for ECN: the ECN field is
//!   copied, never reset), DF set (as RFC 4213 3.2 has it when the tunnel MTU is not a fixed
//!   1280: IPv6 is not fragmented on the way, and the decap end refuses fragmented outer
//!   packets anyway, so an underlay router must drop, not fragment), protocol 41. The flow
//!   label is not carried. The entry enforces the route's MTU (below); as for IPv4, an
//!   oversized request is dropped without an ICMPv6 Packet Too Big to the viewer.
//!
//! Neither the inner TTL nor the inner hop limit is decremented, at either end. The packet is
//! addressed to the VIP, which the edge and the origin host serve together: the tunnel runs
//! inside the destination, not between two routers (RFC 2003 3.1 decrements the inner TTL only
//! when tunneling is part of forwarding the datagram; in RFC 4213 3.3's single-hop model the
//! source and the final destination do not decrement the hop limit), so the origin gets the
//! packet exactly as the viewer sent it.
//!
//! Next hop by `bpf_fib_lookup` (a forwarding lookup from the ingress interface, with
//! `BPF_FIB_LOOKUP_SRC` for the outer source), then `XDP_TX` when the route leaves through the
//! ingress interface, `bpf_redirect` otherwise. Outcomes, counted per origin in
//! `SWITCHER_ENCAP_STATS` (`switcher_common::dsr::EncapCounters`):
//! * route and neighbour known: sent from XDP (`encapsulated`);
//! * no neighbour entry yet: the encapsulated packet goes to this host's stack, which forwards
//!   it (resolving the neighbour; needs `ip_forward`, and `accept_local`: the outer source
//!   is this host's address, a martian to the stack otherwise) (`to_stack`);
//! * larger than the route's MTU (the inner IPv4 or IPv6 packet + 20 bytes: the lookup's
//!   `tot_len`, which the kernel checks against the route's MTU): dropped (`too_big`); the
//!   edge-to-origin links need 20 bytes more MTU than the viewers' path (viewer requests are
//!   small; full-size segments are not);
//! * no route, forwarding disabled on the ingress interface, or the head adjust failed:
//!   dropped (`errors`).
//!
//! Both families share the counters (`SWITCHER_ENCAP_STATS` has no family split). TC ingress
//! cannot encapsulate: a request it steers to a remote origin passes to the stack (counted
//! `errors`), which resets it.
//!
//! # Flow state without replies
//! The edge never sees the origin's SYN-ACK, so the handshake check of `steer::steer_request`
//! (the client acknowledges the origin's initial sequence number) cannot run: for a remote
//! origin a handshake moves to the flow table on the client's first ACK instead. A spoofer
//! can therefore create flows (SYN then ACK) and evict real ones from a full table; an
//! evicted flow, like a flow this edge never saw (another edge failed and the router moved
//! it here), is steered statelessly to the origin new flows go to ([`adopt`]), which is the
//! same origin on every edge while they agree on it. Flows of remote origins leave the table
//! by LRU eviction or when the control plane retires their origin (no FIN/RST is seen).

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
    EbpfContext as _,
};
use switcher_common::{
    dsr::{EncapCounters, IPPROTO_IPIP, IPPROTO_IPV6, OUTER_TTL},
    Counters, Origin, VipConfig, FAMILY_V4, ORIGIN_CONFIGURED, ORIGIN_REMOTE,
};

use crate::{
    maps::ENCAP_STATS,
    packet::{ipv4, ipv6, ptr_at, Tcp, ETH_HLEN, IPV4_HLEN, IPV6_HLEN},
    steer,
};

/// `AF_INET`, the family field of `bpf_fib_lookup`.
const AF_INET: u8 = 2;
/// EtherType IPv4 as it sits in the packet.
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
/// Offset of the TOS byte in the IPv4 header.
const TOS: usize = 1;
/// The DF bit of the IPv4 flags/fragment-offset field, host order.
const DF: u16 = 0x4000;
/// Bytes of the outer header.
const OUTER_LEN: usize = IPV4_HLEN;

/// Applies `f` to this CPU's encap counters of origin `index`.
#[inline(always)]
pub fn count(index: u32, f: impl FnOnce(&mut EncapCounters)) {
    if let Some(c) = ENCAP_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU value, only this program on this CPU touches it.
        f(unsafe { &mut *c });
    }
}

/// The host address of origin `o` (a `SWITCHER_ORIGINS` value) when it is a configured remote
/// (DSR) origin, else `None`: what `steer::Target::remote_host` holds, read from the origin
/// the target was made of, so a steered request looks its origin up once.
#[inline(always)]
pub fn remote_host_of(o: &Origin) -> Option<[u8; 4]> {
    if o.flags & (ORIGIN_CONFIGURED | ORIGIN_REMOTE) != ORIGIN_CONFIGURED | ORIGIN_REMOTE {
        return None;
    }
    Some(o.addr_v4)
}

/// A packet of no flow or handshake (`steer::Decision::Untracked`): when new flows go to a
/// remote origin, it is sent there without creating state (a flow another edge carried until
/// the router moved it here goes on; a stray packet is reset by that origin host). Returns
/// the origin's index and host, or `None` to keep the local behaviour (pass to the stack).
#[inline(always)]
pub fn adopt(ctx: *mut core::ffi::c_void, t: &Tcp, vip: &VipConfig) -> Option<(u32, [u8; 4])> {
    let (index, o, _) = steer::new_flow_origin(ctx, t, vip, steer::flow_hash(t))?;
    let host = remote_host_of(o)?;
    count(index, |c| c.adopted += 1);
    Some((index, host))
}

/// What the outer header takes from the inner packet of `t`: (TOS, DF bit as in the flags
/// field, the inner packet's IP length or 0 when its header says 0 (GSO, BIG TCP), outer
/// protocol). `None` when the header is out of bounds (classification ruled that out).
#[inline(always)]
fn inner_fields(start: usize, end: usize, t: &Tcp) -> Option<(u8, u16, usize, u8)> {
    if t.family == FAMILY_V4 {
        let h = ptr_at::<[u8; IPV4_HLEN]>(start, end, t.l3_off)?;
        // SAFETY: bounds-checked by `ptr_at`.
        let h = unsafe { h.read_unaligned() };
        let df = u16::from_be_bytes([h[ipv4::FRAG_OFF], h[ipv4::FRAG_OFF + 1]]) & DF;
        let len = u16::from_be_bytes([h[ipv4::TOT_LEN], h[ipv4::TOT_LEN + 1]]) as usize;
        Some((h[TOS], df, len, IPPROTO_IPIP))
    } else {
        // Version, traffic class, flow label, payload length: the first 8 bytes are enough.
        let h = ptr_at::<[u8; 8]>(start, end, t.l3_off)?;
        // SAFETY: bounds-checked by `ptr_at`.
        let h = unsafe { h.read_unaligned() };
        // The traffic class straddles the first two bytes (4 bits after the version).
        let tclass = (h[0] << 4) | (h[1] >> 4);
        let payload = u16::from_be_bytes([h[ipv6::PAYLOAD_LEN], h[ipv6::PAYLOAD_LEN + 1]]) as usize;
        let len = if payload == 0 { 0 } else { IPV6_HLEN + payload };
        Some((tclass, DF, len, IPPROTO_IPV6))
    }
}

/// The Internet checksum of a 20-byte IPv4 header whose checksum field is zero.
#[inline(always)]
fn header_checksum(h: &[u8; OUTER_LEN]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < OUTER_LEN {
        sum += u16::from_be_bytes([h[i], h[i + 1]]) as u32;
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// 4-byte words of [`FibParams`] (64 bytes, 4-byte aligned).
const FIB_WORDS: usize = core::mem::size_of::<FibParams>() / 4;
const _: () = assert!(core::mem::size_of::<FibParams>() % 4 == 0);
const _: () = assert!(core::mem::align_of::<FibParams>() >= 4);

/// Zeroes `fib` in place, as 4-byte words: `core::mem::zeroed()` compiled to a call of
/// compiler_builtins' byte-loop `memset` (64 iterations; BPF has no memset instruction), and
/// LLVM merges plain word stores, or a copy of a zeroed value, back into such calls, hence
/// volatile stores into the value the helper reads (see BENCHMARKS.md, 2026-12-02, branch
/// dp-memset).
#[inline(always)]
fn zero_fib(fib: &mut core::mem::MaybeUninit<FibParams>) -> &mut FibParams {
    let p = fib.as_mut_ptr().cast::<u32>();
    let mut i = 0;
    while i < FIB_WORDS {
        // SAFETY: word `i` of `fib`, aligned (asserted above).
        unsafe { p.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: every byte was written above, and all-zero is a valid bpf_fib_lookup (plain
    // integers and unions of them).
    unsafe { fib.assume_init_mut() }
}

/// Encapsulates the request `t` (already steered to remote origin `index` on `host`) and
/// sends it; returns the XDP verdict. Counts in both the origin's `Counters` (packets,
/// bytes as received) and its encap counters.
#[inline(always)]
pub fn xdp_encap(ctx: &XdpContext, t: &Tcp, index: u32, host: [u8; 4]) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let rx_len = end - start;
    steer::count(index, |c: &mut Counters| {
        c.packets += 1;
        c.bytes += rx_len as u64;
    });
    // What the outer header copies from the inner one, and the frame's own Ethernet header
    // (kept for the stack path), read before the head moves.
    let (Some(eth), Some((tos, df, claimed, proto))) = (
        ptr_at::<[u8; ETH_HLEN]>(start, end, 0),
        inner_fields(start, end, t),
    ) else {
        count(index, |c| c.errors += 1);
        return xdp_action::XDP_DROP;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let eth = unsafe { eth.read_unaligned() };
    // The IP length, not the frame's (Ethernet pads short frames); classify checked it fits.
    let inner_len = if claimed == 0 {
        rx_len - ETH_HLEN
    } else {
        claimed
    };
    let outer_len = inner_len + OUTER_LEN;
    if outer_len > 0xffff {
        count(index, |c| c.errors += 1);
        return xdp_action::XDP_DROP;
    }

    let mut fib_mem = core::mem::MaybeUninit::<FibParams>::uninit();
    let fib = zero_fib(&mut fib_mem);
    fib.family = AF_INET;
    fib.l4_protocol = proto;
    fib.__bindgen_anon_1.tot_len = outer_len as u16;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_2.tos = tos;
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(host);
    // SAFETY: the helper reads and writes exactly `size_of::<FibParams>()` bytes of `fib`.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut *fib,
            core::mem::size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_SRC,
        )
    };
    let to_stack = match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => false,
        // The route is known (the source address too); the stack resolves the neighbour.
        BPF_FIB_LKUP_RET_NO_NEIGH => true,
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            count(index, |c| c.too_big += 1);
            return xdp_action::XDP_DROP;
        }
        _ => {
            count(index, |c| c.errors += 1);
            return xdp_action::XDP_DROP;
        }
    };
    // SAFETY: union member written by the helper for AF_INET.
    let src = unsafe { fib.__bindgen_anon_3.ipv4_src }.to_ne_bytes();

    // Room for the outer header in front of the Ethernet header.
    // SAFETY: the helper checks the headroom and fails rather than overrun it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(OUTER_LEN as i32)) } != 0 {
        count(index, |c| c.errors += 1);
        return xdp_action::XDP_DROP;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    let Some(hdr) = ptr_at::<[u8; ETH_HLEN + OUTER_LEN]>(start, end, 0) else {
        count(index, |c| c.errors += 1);
        return xdp_action::XDP_DROP;
    };
    let mut ip = [0u8; OUTER_LEN];
    ip[0] = 0x45;
    ip[TOS] = tos;
    ip[ipv4::TOT_LEN..ipv4::TOT_LEN + 2].copy_from_slice(&(outer_len as u16).to_be_bytes());
    ip[ipv4::FRAG_OFF..ipv4::FRAG_OFF + 2].copy_from_slice(&df.to_be_bytes());
    ip[8] = OUTER_TTL;
    ip[ipv4::PROTO] = proto;
    ip[ipv4::SADDR..ipv4::SADDR + 4].copy_from_slice(&src);
    ip[ipv4::DADDR..ipv4::DADDR + 4].copy_from_slice(&host);
    let check = header_checksum(&ip);
    ip[ipv4::CHECK..ipv4::CHECK + 2].copy_from_slice(&check.to_be_bytes());
    let mut frame = [0u8; ETH_HLEN + OUTER_LEN];
    if to_stack {
        // The frame's own MACs (its destination is this host's, so the stack takes it as
        // addressed to it and routes it by the IP header); the lookup filled none.
        frame[..12].copy_from_slice(&eth[..12]);
    } else {
        frame[0..6].copy_from_slice(&fib.dmac);
        frame[6..12].copy_from_slice(&fib.smac);
    }
    // IPv4 whatever the inner family (an IPv6 frame's 0x86DD is replaced).
    frame[12..14].copy_from_slice(&ETH_P_IP);
    frame[ETH_HLEN..].copy_from_slice(&ip);
    // SAFETY: bounds-checked by `ptr_at` after the head moved.
    unsafe { hdr.write_unaligned(frame) };

    let tx_len = (end - start) as u64;
    if to_stack {
        count(index, |c| {
            c.to_stack += 1;
            c.bytes += tx_len;
        });
        return xdp_action::XDP_PASS;
    }
    count(index, |c| {
        c.encapsulated += 1;
        c.bytes += tx_len;
    });
    if fib.ifindex == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        // SAFETY: plain helper call; returns XDP_REDIRECT, or XDP_ABORTED on a bad ifindex.
        unsafe { bpf_redirect(fib.ifindex, 0) as u32 }
    }
}

//! Direct server return, origin-host side: the decap program (`switcher_decap`, XDP) strips
//! the outer IPv4 header of packets addressed to this host that carry a request for the VIP:
//! IPv4-in-IPv4 (RFC 2003, protocol 4) whose inner destination is the IPv4 VIP, and
//! IPv6-in-IPv4 (RFC 4213 "6in4", protocol 41) whose inner destination is the IPv6 VIP; the
//! inner packet then reaches the origin listening on the VIP (this kernel has no ipip or sit
//! module to do it). Loaded on origin hosts by `switcher-ctl decap`, configured by
//! `SWITCHER_DECAP_CONFIG` (docs/ARCHITECTURE.md, "Beyond one host").
//!
//! Everything else passes unchanged and is counted (`switcher_common::dsr::DecapCounters`):
//! IP-in-IP or 6in4 for another host, for another inner destination, or for a family with no
//! VIP configured (`foreign`); IP-in-IP or 6in4 to this host that is truncated, fragmented,
//! carries outer options, or whose inner header is not of the protocol's family (IPv4 in
//! protocol 4, IPv6 in 41) with a length consistent with the outer one (`malformed`); anything
//! that is neither (`passed`).
//!
//! Stripping moves the Ethernet header forward over the outer IP header and then the packet
//! start (`bpf_xdp_adjust_head`), with the EtherType of the inner family (IPv6 for 6in4); the
//! inner header is left as it came (its checksum, TTL or hop limit and ECN field are the
//! viewer's), as a tunnel endpoint does. (RFC 6040 would have the decapsulator copy a CE mark
//! of the outer header into the inner one; the edge copies ECN outward and no underlay router
//! of this design marks, so it is not done, for either family.)

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use switcher_common::dsr::{
    DecapConfig, DecapCounters, DECAP_ENABLED, DECAP_VIP_V4, DECAP_VIP_V6, IPPROTO_IPIP,
    IPPROTO_IPV6,
};

use crate::{
    maps::{DECAP_CONFIG, DECAP_STATS},
    packet::{ipv4, ipv6, ptr_at, ETH_HLEN, IPV4_HLEN, IPV6_HLEN},
};

/// EtherType IPv4 as it sits in the packet.
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
/// EtherType IPv6 as it sits in the packet.
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
/// Offset of the EtherType in the Ethernet header.
const ETH_TYPE_OFF: usize = 12;
/// Offset of the inner IP header in an encapsulated frame.
const INNER_OFF: usize = ETH_HLEN + IPV4_HLEN;

/// What the program does with a packet, and which counter says so.
enum Outcome {
    /// Strip the outer header; the inner packet is IPv6 (6in4) when true, IPv4 when false.
    Decap(bool),
    Foreign,
    Malformed,
    Passed,
}

/// Applies `f` to this CPU's decap counters.
#[inline(always)]
fn count(f: impl FnOnce(&mut DecapCounters)) {
    if let Some(c) = DECAP_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU value, only this program on this CPU touches it.
        f(unsafe { &mut *c });
    }
}

/// Classifies the frame `[start, end)`.
#[inline(always)]
fn classify(start: usize, end: usize) -> Outcome {
    let Some(cfg) = DECAP_CONFIG.get(0) else {
        return Outcome::Passed;
    };
    if cfg.flags & DECAP_ENABLED == 0 {
        return Outcome::Passed;
    }
    let Some(eth_type) = ptr_at::<[u8; 2]>(start, end, ETH_TYPE_OFF) else {
        return Outcome::Passed;
    };
    // SAFETY: bounds-checked by `ptr_at` (here and below).
    if unsafe { eth_type.read_unaligned() } != ETH_P_IP {
        return Outcome::Passed;
    }
    let Some(outer) = ptr_at::<[u8; IPV4_HLEN]>(start, end, ETH_HLEN) else {
        // Too short to say whether it is encapsulated: the stack drops it.
        return Outcome::Passed;
    };
    let outer = unsafe { outer.read_unaligned() };
    let proto = outer[ipv4::PROTO];
    if proto != IPPROTO_IPIP && proto != IPPROTO_IPV6 {
        return Outcome::Passed;
    }
    if outer[ipv4::DADDR..ipv4::DADDR + 4] != cfg.local_v4 {
        return Outcome::Foreign;
    }
    let frag = u16::from_be_bytes([outer[ipv4::FRAG_OFF], outer[ipv4::FRAG_OFF + 1]]);
    if outer[0] != 0x45 || frag & ipv4::MF_OFFSET_MASK != 0 {
        return Outcome::Malformed;
    }
    let outer_len = u16::from_be_bytes([outer[ipv4::TOT_LEN], outer[ipv4::TOT_LEN + 1]]) as usize;
    if proto == IPPROTO_IPIP {
        inner_v4(start, end, cfg, outer_len)
    } else {
        inner_v6(start, end, cfg, outer_len)
    }
}

/// The IPv4 packet inside IP-in-IP (`outer_len`: the outer header's total length).
#[inline(always)]
fn inner_v4(start: usize, end: usize, cfg: &DecapConfig, outer_len: usize) -> Outcome {
    // Inner header first, lengths after (the verifier's order, see `packet::classify_v4`).
    let Some(inner) = ptr_at::<[u8; IPV4_HLEN]>(start, end, INNER_OFF) else {
        return Outcome::Malformed;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let inner = unsafe { inner.read_unaligned() };
    let inner_len = u16::from_be_bytes([inner[ipv4::TOT_LEN], inner[ipv4::TOT_LEN + 1]]) as usize;
    if inner[0] >> 4 != 4
        || ((inner[0] & 0x0f) as usize) * 4 < IPV4_HLEN
        || inner_len < IPV4_HLEN
        || outer_len != inner_len + IPV4_HLEN
        || ETH_HLEN + outer_len > end - start
    {
        return Outcome::Malformed;
    }
    if cfg.flags & DECAP_VIP_V4 == 0 || inner[ipv4::DADDR..ipv4::DADDR + 4] != cfg.vip_v4 {
        return Outcome::Foreign;
    }
    Outcome::Decap(false)
}

/// The IPv6 packet inside 6in4 (`outer_len`: the outer header's total length).
#[inline(always)]
fn inner_v6(start: usize, end: usize, cfg: &DecapConfig, outer_len: usize) -> Outcome {
    // The whole fixed header must be there (inner header first, lengths after, as above).
    let Some(inner) = ptr_at::<[u8; IPV6_HLEN]>(start, end, INNER_OFF) else {
        return Outcome::Malformed;
    };
    let h = inner as usize;
    // SAFETY: both reads lie inside the 40 bytes bounds-checked by `ptr_at`.
    let (head, daddr) = unsafe {
        (
            (h as *const [u8; 8]).read_unaligned(),
            ((h + ipv6::DADDR) as *const [u8; 16]).read_unaligned(),
        )
    };
    let payload = u16::from_be_bytes([head[ipv6::PAYLOAD_LEN], head[ipv6::PAYLOAD_LEN + 1]]);
    // A payload length of 0 (a jumbogram) never matches: the outer length says otherwise.
    if head[0] >> 4 != 6
        || outer_len != IPV4_HLEN + IPV6_HLEN + payload as usize
        || ETH_HLEN + outer_len > end - start
    {
        return Outcome::Malformed;
    }
    if cfg.flags & DECAP_VIP_V6 == 0 || daddr != cfg.vip_v6 {
        return Outcome::Foreign;
    }
    Outcome::Decap(true)
}

/// The decap program's body.
#[inline(always)]
pub fn xdp_decap(ctx: &XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let len = (end - start) as u64;
    let v6 = match classify(start, end) {
        Outcome::Decap(v6) => v6,
        Outcome::Foreign => {
            count(|c| c.foreign += 1);
            return xdp_action::XDP_PASS;
        }
        Outcome::Malformed => {
            count(|c| c.malformed += 1);
            return xdp_action::XDP_PASS;
        }
        Outcome::Passed => {
            count(|c| c.passed += 1);
            return xdp_action::XDP_PASS;
        }
    };
    let Some(eth) = ptr_at::<[u8; ETH_HLEN]>(start, end, 0) else {
        count(|c| c.malformed += 1);
        return xdp_action::XDP_PASS;
    };
    let Some(moved) = ptr_at::<[u8; ETH_HLEN]>(start, end, IPV4_HLEN) else {
        count(|c| c.malformed += 1);
        return xdp_action::XDP_PASS;
    };
    // SAFETY: both bounds-checked; the Ethernet header lands right before the inner IP header,
    // over the end of the outer one, with the inner family's EtherType (already IPv4 for
    // IP-in-IP).
    unsafe {
        let mut e = eth.read_unaligned();
        if v6 {
            e[ETH_TYPE_OFF..ETH_TYPE_OFF + 2].copy_from_slice(&ETH_P_IPV6);
        }
        moved.write_unaligned(e);
    }
    // SAFETY: shrinking the head by the outer header, which `classify` showed is there.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, IPV4_HLEN as i32) } != 0 {
        // Cannot happen for a packet this long; the frame is already altered, so drop it
        // rather than deliver a corrupt one.
        count(|c| c.malformed += 1);
        return xdp_action::XDP_DROP;
    }
    count(|c| {
        c.decapsulated += 1;
        c.bytes += len;
    });
    xdp_action::XDP_PASS
}

//! Direct server return, origin-host side: the decap program (`switcher_decap`, XDP) strips
//! the outer IPv4 header of IPv4-in-IPv4 packets (RFC 2003) addressed to this host whose
//! inner destination is the VIP, so the inner packet reaches the origin listening on the VIP
//! (this kernel has no ipip module to do it). Loaded on origin hosts by
//! `switcher-ctl decap`, configured by `SWITCHER_DECAP_CONFIG`.
//!
//! Everything else passes unchanged and is counted (`switcher_common::dsr::DecapCounters`):
//! IP-in-IP for another host or another inner destination (`foreign`); IP-in-IP to this host
//! that is truncated, fragmented, carries outer options, or whose inner header is not plain
//! IPv4 with a consistent length (`malformed`); anything that is not IP-in-IP (`passed`).
//!
//! Stripping moves the Ethernet header forward over the outer IP header and then the packet
//! start (`bpf_xdp_adjust_head`); the inner header is left as it came (its checksum and TTL
//! are the viewer's), as a tunnel endpoint does.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use switcher_common::dsr::{DecapCounters, DECAP_ENABLED, IPPROTO_IPIP};

use crate::{
    maps::{DECAP_CONFIG, DECAP_STATS},
    packet::{ipv4, ptr_at, ETH_HLEN, IPV4_HLEN},
};

/// EtherType IPv4 as it sits in the packet.
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
/// Offset of the EtherType in the Ethernet header.
const ETH_TYPE_OFF: usize = 12;

/// What the program does with a packet, and which counter says so.
enum Outcome {
    Decap,
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
        // Too short to say whether it is IP-in-IP: the stack drops it.
        return Outcome::Passed;
    };
    let outer = unsafe { outer.read_unaligned() };
    if outer[ipv4::PROTO] != IPPROTO_IPIP {
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
    // Inner header first, lengths after (the verifier's order, see `packet::classify_v4`).
    let Some(inner) = ptr_at::<[u8; IPV4_HLEN]>(start, end, ETH_HLEN + IPV4_HLEN) else {
        return Outcome::Malformed;
    };
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
    if inner[ipv4::DADDR..ipv4::DADDR + 4] != cfg.vip_v4 {
        return Outcome::Foreign;
    }
    Outcome::Decap
}

/// The decap program's body.
#[inline(always)]
pub fn xdp_decap(ctx: &XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let len = (end - start) as u64;
    match classify(start, end) {
        Outcome::Decap => {}
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
    }
    let Some(eth) = ptr_at::<[u8; ETH_HLEN]>(start, end, 0) else {
        count(|c| c.malformed += 1);
        return xdp_action::XDP_PASS;
    };
    let Some(moved) = ptr_at::<[u8; ETH_HLEN]>(start, end, IPV4_HLEN) else {
        count(|c| c.malformed += 1);
        return xdp_action::XDP_PASS;
    };
    // SAFETY: both bounds-checked; the Ethernet header (EtherType IPv4 already) lands right
    // before the inner IP header, over the end of the outer one.
    unsafe { moved.write_unaligned(eth.read_unaligned()) };
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

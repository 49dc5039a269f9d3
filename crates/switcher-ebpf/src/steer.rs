//! The steering decisions, independent of how a program rewrites bytes: which packets are
//! requests to the VIP and which origin they go to (recording the flow), which packets are
//! replies of a tracked flow, and the per-origin counters.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{bpf_sock_tuple, BPF_F_CURRENT_NETNS},
    helpers::{bpf_sk_lookup_tcp, bpf_sk_release},
};
use switcher_common::{
    Counters, FlowKey, FlowValue, Origin, VipConfig, FAMILY_V4, FLOW_SEEN_SYN, MAX_ORIGINS,
    ORIGIN_CONFIGURED, STATS_UNSTEERED, VIP_CHECK_LISTENER, VIP_ENABLED, VIP_HAS_V4, VIP_HAS_V6,
};

use crate::{
    maps::{ACTIVE, CONFIG, FLOWS, ORIGINS, STATS},
    packet::{tcp, Tcp},
};

/// Applies `f` to this CPU's counters of `slot`.
#[inline(always)]
pub fn count(slot: u32, f: impl FnOnce(&mut Counters)) {
    if let Some(c) = STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU value, only this program on this CPU touches it (no preemption
        // inside a BPF program on one CPU for the same map value's per-CPU copy).
        f(unsafe { &mut *c });
    }
}

/// The configured VIP, if steering is enabled.
#[inline(always)]
pub fn vip() -> Option<VipConfig> {
    let vip = *CONFIG.get(0)?;
    if vip.flags & VIP_ENABLED == 0 {
        return None;
    }
    Some(vip)
}

/// Whether `t` is addressed to the VIP.
#[inline(always)]
pub fn is_to_vip(t: &Tcp, vip: &VipConfig) -> bool {
    if t.dport != vip.port_be {
        return false;
    }
    if t.family == FAMILY_V4 {
        vip.flags & VIP_HAS_V4 != 0 && t.daddr[..4] == vip.addr_v4
    } else {
        vip.flags & VIP_HAS_V6 != 0 && t.daddr == vip.addr_v6
    }
}

/// A configured origin by index.
#[inline(always)]
fn origin(index: u32) -> Option<Origin> {
    let o = *ORIGINS.get(index)?;
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
    /// New destination address when the origin's differs from the VIP's (IPv4 in the first
    /// 4 bytes), `None` to keep the VIP address.
    pub addr: Option<[u8; 16]>,
}

/// The origin address to write for `family`, or `None` when the origin lives at the VIP's
/// own address (all-zero origin address).
#[inline(always)]
fn origin_addr(o: &Origin, family: u16) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    if family == FAMILY_V4 {
        if o.addr_v4 == [0; 4] {
            return None;
        }
        out[..4].copy_from_slice(&o.addr_v4);
    } else {
        if o.addr_v6 == [0; 16] {
            return None;
        }
        out = o.addr_v6;
    }
    Some(out)
}

/// Whether a TCP socket on this host would take a connection from the client of `t` to the
/// VIP's address (`t.daddr`) on `port_be`: a listener, or an established socket of that tuple.
#[inline(always)]
fn has_socket(ctx: *mut c_void, t: &Tcp, port_be: u16) -> bool {
    // SAFETY: an all-zero bpf_sock_tuple is a valid value of the C union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size;
    // SAFETY: writing the union member that matches the family, as the kernel reads it.
    unsafe {
        if t.family == FAMILY_V4 {
            let v4 = &mut tuple.__bindgen_anon_1.ipv4;
            v4.saddr = u32::from_ne_bytes([t.saddr[0], t.saddr[1], t.saddr[2], t.saddr[3]]);
            v4.daddr = u32::from_ne_bytes([t.daddr[0], t.daddr[1], t.daddr[2], t.daddr[3]]);
            v4.sport = t.sport;
            v4.dport = port_be;
            size = core::mem::size_of_val(v4) as u32;
        } else {
            let v6 = &mut tuple.__bindgen_anon_1.ipv6;
            let mut i = 0;
            while i < 4 {
                let j = i * 4;
                v6.saddr[i] = u32::from_ne_bytes([
                    t.saddr[j],
                    t.saddr[j + 1],
                    t.saddr[j + 2],
                    t.saddr[j + 3],
                ]);
                v6.daddr[i] = u32::from_ne_bytes([
                    t.daddr[j],
                    t.daddr[j + 1],
                    t.daddr[j + 2],
                    t.daddr[j + 3],
                ]);
                i += 1;
            }
            v6.sport = t.sport;
            v6.dport = port_be;
            size = core::mem::size_of_val(v6) as u32;
        }
        let sk = bpf_sk_lookup_tcp(ctx, &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0);
        if sk.is_null() {
            return false;
        }
        bpf_sk_release(sk as *mut c_void);
    }
    true
}

/// Whether origin `o` can take a new flow: always for an origin at another address (it is not
/// on this host to look at), otherwise when a socket listens on its port.
#[inline(always)]
fn alive(ctx: *mut c_void, t: &Tcp, o: &Origin) -> bool {
    origin_addr(o, t.family).is_some() || has_socket(ctx, t, o.port_be)
}

/// The origin a new flow goes to: the active one, or, with [`VIP_CHECK_LISTENER`] and no
/// socket on the active origin's port, the first other configured origin that has one.
/// Returns (index, origin, fell back).
#[inline(always)]
fn new_flow_origin(ctx: *mut c_void, t: &Tcp, vip: &VipConfig) -> Option<(u32, Origin, bool)> {
    let index = *ACTIVE.get(0)?;
    if index >= MAX_ORIGINS {
        return None;
    }
    let o = origin(index)?;
    if vip.flags & VIP_CHECK_LISTENER == 0 || alive(ctx, t, &o) {
        return Some((index, o, false));
    }
    let mut i = 0;
    while i < MAX_ORIGINS {
        if i != index {
            if let Some(other) = origin(i) {
                if alive(ctx, t, &other) {
                    return Some((i, other, true));
                }
            }
        }
        i += 1;
    }
    // Nobody listens: the active origin answers with a reset, as without the check.
    Some((index, o, false))
}

/// Steers a request `t` already known to be for the VIP: a SYN goes to the active origin
/// (or, see [`new_flow_origin`], to a live one when the active origin has no listener);
/// another packet follows its tracked flow, or (unknown flow, or its origin no longer
/// configured) is adopted like a new flow. Records new flows. `None`: no usable origin.
#[inline(always)]
pub fn steer_request(ctx: *mut c_void, t: &Tcp, vip: &VipConfig) -> Option<Target> {
    let key = FlowKey {
        client_addr: t.saddr,
        client_port_be: t.sport,
        family: t.family,
    };
    let syn = t.flags & tcp::SYN != 0 && t.flags & tcp::ACK == 0;
    if !syn {
        // SAFETY: the value is copied out at once; a concurrent delete cannot free it while
        // this program runs (RCU).
        if let Some(flow) = unsafe { FLOWS.get(&key) } {
            let index = flow.origin;
            if let Some(o) = origin(index) {
                return Some(Target {
                    index,
                    port: o.port_be,
                    addr: origin_addr(&o, t.family),
                });
            }
        }
    }
    let (index, o, fell_back) = new_flow_origin(ctx, t, vip)?;
    let value = FlowValue {
        origin: index,
        flags: if syn { FLOW_SEEN_SYN } else { 0 },
    };
    // An insert can only fail on memory pressure; the packet is still steered (statelessly) and
    // the next one tries again.
    let _ = FLOWS.insert(&key, &value, 0);
    count(index, |c| {
        c.new_flows += 1;
        if fell_back {
            c.listener_fallbacks += 1;
        }
        if !syn {
            c.resteered += 1;
        }
    });
    Some(Target {
        index,
        port: o.port_be,
        addr: origin_addr(&o, t.family),
    })
}

/// Forgets a flow a new direct connection has outlived.
///
/// Flows are keyed by the client's address and port, so that replies (origin -> client) find
/// them. When that client opens a connection straight to an origin's port (a probe, a
/// monitoring check, wrk) from a port an earlier VIP connection used, and that VIP flow was
/// pinned to the same origin, both connections are the same 4-tuple at the origin: the VIP
/// one is over, and its entry would make the egress program rewrite the new connection's
/// replies into VIP ones, which the client drops (its SYN never completes). So a SYN straight
/// to the origin a flow is pinned to removes that flow. Only SYNs pay for the lookup.
#[inline(always)]
pub fn forget_stale_flow(t: &Tcp, vip: &VipConfig) {
    if t.flags & tcp::SYN == 0 || t.flags & tcp::ACK != 0 || !is_origin_port(t.dport) {
        return;
    }
    let key = FlowKey {
        client_addr: t.saddr,
        client_port_be: t.sport,
        family: t.family,
    };
    // SAFETY: copied out at once (see steer_request).
    let Some(index) = (unsafe { FLOWS.get(&key) }).map(|f| f.origin) else {
        return;
    };
    let Some(o) = origin(index) else { return };
    if o.port_be != t.dport {
        return;
    }
    let to_that_origin = match origin_addr(&o, t.family) {
        Some(addr) => addr == t.daddr,
        None => vip_addr(vip, t.family) == Some(t.daddr),
    };
    if to_that_origin && FLOWS.remove(&key).is_ok() {
        count(index, |c| c.stale_flows += 1);
    }
}

/// The VIP's address for `family` (IPv4 in the first 4 bytes), if it has one.
#[inline(always)]
fn vip_addr(vip: &VipConfig, family: u16) -> Option<[u8; 16]> {
    if family == FAMILY_V4 {
        if vip.flags & VIP_HAS_V4 == 0 {
            return None;
        }
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&vip.addr_v4);
        Some(a)
    } else {
        if vip.flags & VIP_HAS_V6 == 0 {
            return None;
        }
        Some(vip.addr_v6)
    }
}

/// Where a reply goes back to: origin index, and the source to restore.
pub struct Reply {
    /// Origin index (stats slot).
    pub index: u32,
    /// VIP port to write as source, network order.
    pub port: u16,
    /// VIP address to write as source when the origin's address differs from it.
    pub addr: Option<[u8; 16]>,
}

/// If `t` is a reply of a tracked flow from the origin that flow is pinned to, returns what
/// its source must become.
#[inline(always)]
pub fn match_reply(t: &Tcp, vip: &VipConfig) -> Option<Reply> {
    let key = FlowKey {
        client_addr: t.daddr,
        client_port_be: t.dport,
        family: t.family,
    };
    // SAFETY: copied out at once (see steer_request).
    let index = unsafe { FLOWS.get(&key) }?.origin;
    let o = origin(index)?;
    if o.port_be != t.sport {
        return None;
    }
    let vip_addr = vip_addr(vip, t.family)?;
    let addr = match origin_addr(&o, t.family) {
        // The origin answers from its own address: it must be that one, and it becomes the VIP.
        Some(a) if a == t.saddr => Some(vip_addr),
        Some(_) => return None,
        // The origin shares the VIP's address: only the port changes.
        None if t.saddr == vip_addr => None,
        None => return None,
    };
    Some(Reply {
        index,
        port: vip.port_be,
        addr,
    })
}

/// Quick filter before the conntrack lookup on egress: is `sport` some origin's port?
#[inline(always)]
pub fn is_origin_port(sport: u16) -> bool {
    let mut i = 0;
    while i < MAX_ORIGINS {
        if let Some(o) = origin(i) {
            if o.port_be == sport {
                return true;
            }
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

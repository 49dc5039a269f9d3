//! switcher-ebpf: the in-kernel data plane of the HLS edge.
//!
//! Viewers connect to a virtual port (the VIP, e.g. 127.0.0.1:8080) on which nothing listens.
//! * `switcher_xdp` (XDP, ingress) rewrites requests to the VIP toward the origin their flow is
//!   pinned to (new flows: the origin the Maglev lookup table gives their 5-tuple), updating
//!   checksums incrementally (RFC 1624).
//! * `switcher_tc_ingress` (TC, ingress) is the same request path for interfaces where XDP
//!   cannot attach, using the kernel's checksum helpers.
//! * `switcher_tc_egress` (TC, egress) gives replies of tracked flows the VIP's address and port
//!   back, so the viewer only ever talks to the VIP.
//! * Origins on other hosts (`ORIGIN_REMOTE`) are reached by IP-in-IP (IPv4 viewers) or 6in4
//!   (IPv6 viewers) from XDP and answer the viewer directly (`encap`); `switcher_decap` (XDP,
//!   on the origin host) strips the outer header there (`decap`).
//!
//! # Layout
//! * `maps`: every map, with who writes it.
//! * `packet`: bounds-checked parsing and header offsets.
//! * `csum`: RFC 1624 incremental checksum (XDP).
//! * `steer`: VIP matching, flow pinning, reply matching, counters.
//! * `flow_cache`: each CPU's copy of the flows it steers, in front of the flow table.
//! * `handshakes`: the handshake table, a set-associative array.
//! * `encap`, `decap`: direct server return, both ends.
//! * `bench`: never-attached programs for `cargo xtask bench datapath` (baseline, floors,
//!   prototypes, parse variants) and their own maps.
//! * this file: the programs, thin; rewriting bytes per program type.
//!
//! Anything that is not IPv4/IPv6 TCP to the VIP (or a tracked reply) passes unchanged;
//! malformed, fragmented or option-carrying packets pass unchanged and are counted.
//!
//! # Under spoofed packets
//! Anyone can send packets with any source address and port; what they cannot do, off the
//! path, is read the replies. So state is created only in proportion to what a spoofer cannot
//! fake (see `steer::steer_request` and `steer::forget_stale_flow`):
//! * A SYN creates a handshake entry (`SWITCHER_HANDSHAKES`), never a flow. The connection
//!   enters the flow table (`SWITCHER_FLOWS`) when the client acknowledges the origin's
//!   initial sequence number, which only the real client has seen. A spoofed SYN flood churns
//!   the handshake table (new connections may need a retry); established flows stay.
//! * A non-SYN packet of no flow or handshake creates nothing and passes to the stack, which
//!   resets it (nothing listens on the VIP): a bare-ACK flood costs a flow lookup and a
//!   handshake-bucket scan a packet.
//! * A SYN from a tracked address and port follows its flow (it cannot move it), and a SYN
//!   straight to an origin forgets a flow only once the flow is over, by the origin's own
//!   socket state or its FIN/RST.
//!
//! What remains, and the counters that show it (`switcher_common::Counters`, exported by
//! switcher-ctl as `dataplane_*_total`): a SYN flood (`new_flows` far above `established`);
//! a non-SYN flood (`untracked`, each packet also answered by a reset from the stack); spoofed
//! SYNs aimed at live viewers (`stale_kept`); and real connections from many addresses the
//! attacker owns, which are real flows and can evict the least recently used ones when the
//! table (`--max-flows`) is full, like any connection-exhaustion attack. An attacker on the
//! path, who sees sequence numbers, can reset connections anyway and is out of scope.
#![no_std]
#![no_main]
// The handshake table's slot claim (`handshakes::claim`): core's atomics have no
// compare-and-swap on the BPF target. The build already runs a nightly-capable rustc.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod bench;
mod csum;
mod decap;
mod encap;
mod flow_cache;
mod handshakes;
mod maps;
mod packet;
mod steer;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
    EbpfContext as _,
};
use packet::{
    classify, ipv4, ipv6, ptr_at, tcp, Class, Kind, Tcp, ETH_HLEN, IPV4_HLEN, IPV6_HLEN, TCP_HLEN,
};
use switcher_common::{Counters, FinishMark, VipConfig, FAMILY_V4};

/// `bpf_l4_csum_replace` flag: the changed field is part of the pseudo-header.
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
/// Bytes of headers the TC programs need in the linear area for IPv6 (see [`tc_pull`]).
const TC_PULL_LEN: u32 = (ETH_HLEN + IPV6_HLEN + TCP_HLEN) as u32;
/// Bytes of headers the TC programs need in the linear area for IPv4 (see [`tc_pull`]).
const TC_PULL_LEN_V4: u32 = (ETH_HLEN + IPV4_HLEN + TCP_HLEN) as u32;
/// Offset of the EtherType in the Ethernet header.
const ETH_TYPE_OFF: usize = 12;
/// EtherType IPv4, network byte order as it sits in the packet.
const ETH_P_IP_BE: u16 = 0x0800u16.to_be();

/// Counts a packet that was classified as not steerable and passes unchanged.
#[inline(always)]
fn count_unsteerable(class: &Class) {
    steer::count_pass(|c: &mut Counters| match class.kind {
        Kind::Malformed => c.malformed += 1,
        Kind::Fragment => c.fragments += 1,
        Kind::IpOptions => c.ip_options += 1,
        Kind::Other | Kind::Elsewhere | Kind::Tcp => {}
    });
}

/// What the request path does with a TCP segment ([`request_segment`], then [`request_verdict`]).
///
/// The segment itself stays with the caller, borrowed: when the verdict carried it, it was
/// moved through the stack into the verdict and out again for the rewrite; without that,
/// `switcher_xdp` is 205 instructions shorter and its tracked flow 0.97 (IPv6 0.92) of the
/// time by kernel `duration`, within the noise (BENCHMARKS.md, 2026-12-02, session 9, run E).
enum Verdict {
    /// Rewrite it toward the target.
    Rewrite(steer::Target),
    /// Pass it unchanged.
    Pass,
    /// Drop it (a request held on a finishing flow, see `steer::Decision::Hold`).
    Drop,
    /// Encapsulate it toward a remote origin (index, host address); see `encap`.
    Encap(u32, [u8; 4]),
}

/// How the request path parses and counts a packet not for the VIP: the product's choice
/// ([`PRODUCT_PARSE`]) and the alternatives the data-path bench measures against it in the same
/// rounds (`bench::bench_nfv_*`, never attached). Every variant takes the same decisions and
/// counts the same counters; only the instructions differ.
#[derive(Clone, Copy)]
struct ParseVariant {
    /// A segment to another port (`Kind::Elsewhere`) is counted where it is recognised, with
    /// the one `passes` add, before any other class is looked at.
    count_early: bool,
    /// XDP only ([`xdp_request`]): before any classification, a segment to another port in
    /// the commonest IPv4 or IPv6 shape is recognised by `packet::is_elsewhere_common` and
    /// counted as [`count_early`](Self::count_early) counts it ([`fast_exit`]); every other
    /// packet takes the full path. (TC ingress, the fallback attachment, keeps the full path:
    /// its rewrite's helper calls cost far more than the parse; BENCHMARKS.md, session 14.)
    fast_exit: bool,
}

/// The variant the product uses: counting early (see BENCHMARKS.md, 2026-12-02, branch
/// dp-floor, for its time against the previous path, `bench_nfv_before`, in the same rounds)
/// and the fast exit before it (branch dplean, against `bench_nfv_no_fast`, the product
/// without it, and against main's object). (Parsing IPv4 with one bounds check for the common
/// shape showed no gain beyond noise, and its variants were dropped in session 9, when their
/// verification went past the verifier's 1,000,000-instruction limit.)
const PRODUCT_PARSE: ParseVariant = ParseVariant {
    count_early: true,
    fast_exit: true,
};

/// The request path's parse, shared by XDP and TC ingress, with a [`ParseVariant`] spelled out
/// (const generics take no structs): the product's is [`PRODUCT_PARSE`]. The TCP segment when
/// the packet is one [`request_verdict`] decides; `None` for every other packet, counted, which
/// passes unchanged.
///
/// `vip` is `steer::vip()`, which the caller looks up first: its port lets parsing stop early
/// for the commonest packet on an edge NIC, one that is not for the VIP (`Kind::Elsewhere`),
/// with one per-CPU counter add.
#[inline(always)]
fn request_segment<const COUNT_EARLY: bool>(
    vip: Option<&VipConfig>,
    start: usize,
    end: usize,
    len: usize,
) -> Option<Tcp> {
    let class = packet::classify(start, end, len, vip.map_or(0, |v| v.port_be));
    if COUNT_EARLY && class.kind == Kind::Elsewhere {
        steer::count_pass(|_| {});
        return None;
    }
    let Some(t) = class.segment() else {
        count_unsteerable(&class);
        return None;
    };
    Some(t)
}

/// The request decision shared by XDP and TC ingress, for the TCP segment `t` of the packet
/// `[start, end)` ([`request_segment`]). `probed`: this CPU's flow cache already missed this
/// packet ([`fast_tracked`]), so it is not asked again.
#[inline(always)]
fn request_verdict(
    ctx: *mut core::ffi::c_void,
    t: &Tcp,
    vip: Option<&VipConfig>,
    start: usize,
    end: usize,
    probed: bool,
) -> Verdict {
    let Some(vip) = vip else {
        steer::count_pass(|_| {});
        return Verdict::Pass;
    };
    if !steer::is_to_vip(t, vip) {
        steer::forget_stale_flow(ctx, t, vip);
        steer::count_pass(|_| {});
        return Verdict::Pass;
    }
    if !probed {
        if let Some(verdict) = cached_verdict(t) {
            return verdict;
        }
    }
    match steer::steer_request(ctx, t, vip, (start, end)) {
        // Either family: IPv6 requests go in 6in4 (see `encap`).
        steer::Decision::Steer(target) => match target.remote_host {
            None => Verdict::Rewrite(target),
            Some(host) => Verdict::Encap(target.index, host),
        },
        steer::Decision::Untracked => {
            if let Some((index, host)) = encap::adopt(ctx, t, vip) {
                return Verdict::Encap(index, host);
            }
            steer::count_pass(|c| c.untracked += 1);
            Verdict::Pass
        }
        // For the VIP but no usable origin: the stack answers (RST, nothing listens there).
        steer::Decision::NoOrigin => {
            steer::count_pass(|_| {});
            Verdict::Pass
        }
        steer::Decision::Hold(index) => {
            steer::count(index, |c| c.held += 1);
            Verdict::Drop
        }
    }
}

/// The fast exit of [`ParseVariant::fast_exit`]: true when the packet `[start, end)` is a
/// segment to another port than the VIP's in the commonest shape (see
/// `packet::is_elsewhere_common`), then counted as [`request_segment`] counts
/// `Kind::Elsewhere` (one `passes` add in the unsteered slot); false, nothing counted, for
/// every other packet, which the caller then gives to [`request_segment`].
///
/// Why it exists (BENCHMARKS.md, 2026-12-02, branch dplean): inlined into the one big request
/// path, the same checks in `classify` ran with the VIP port and the class discriminant
/// spilled to the stack and reloaded, for the packet that is most of an edge NIC's traffic.
#[inline(always)]
fn fast_exit(vip: Option<&VipConfig>, start: usize, end: usize) -> bool {
    let Some(vip) = vip else { return false };
    if !packet::is_elsewhere_common(start, end, vip.port_be) {
        return false;
    }
    steer::count_pass(|_| {});
    true
}

/// Counts a steered request once its rewrite is done or failed (`dropped`: at TC, a failed
/// rewrite drops the packet): one per-CPU update per packet.
#[inline(always)]
fn count_steered(target: &steer::Target, len: usize, rewritten: bool, dropped: bool) {
    steer::count(target.index, |c| {
        c.packets += 1;
        c.bytes += len as u64;
        c.rewrites += u64::from(rewritten);
        c.drops += u64::from(dropped);
    });
}

#[xdp]
#[inline(always)]
pub fn switcher_xdp(ctx: XdpContext) -> u32 {
    xdp_request::<{ PRODUCT_PARSE.count_early }, { PRODUCT_PARSE.fast_exit }>(&ctx)
}

/// The verdict of a packet `t` for the VIP from this CPU's copy of its flow (`flow_cache`),
/// when the packet is not a SYN and has a valid copy whose origin is live: what
/// `steer::steer_request` would decide for it from the flow's entry, with the same side
/// effects (the copy's client ACK, its periodic refresh, a held request's count). `None` for
/// every other packet, which `steer_request` then decides from the entry (probing the cache
/// again, to fill the slot; it does not read the copy).
///
/// Why apart from `steer_request`, with the verdict returned at once (docs/ARCHITECTURE.md, "The
/// flow cache"): inside it, the hit's compare branched into the miss path word by word, each branch
/// setting up that path's registers; the tracked packet ran 567 x86 instructions of JIT code, 452
/// with this (counted by `scripts/profile-datapath.py`; BENCHMARKS.md, 2026-12-03, session 13).
#[inline(always)]
fn cached_verdict(t: &Tcp) -> Option<Verdict> {
    if t.is_syn() {
        return None;
    }
    let probe = flow_cache::probe(&steer::flow_key(t));
    let slot = probe.hit()?;
    match steer::steer_cached(slot, t)? {
        steer::Decision::Steer(target) => Some(match target.remote_host {
            None => Verdict::Rewrite(target),
            Some(host) => Verdict::Encap(target.index, host),
        }),
        steer::Decision::Hold(index) => {
            steer::count(index, |c| c.held += 1);
            Some(Verdict::Drop)
        }
        // Not a decision a copy gives (`steer_cached` steers or holds).
        steer::Decision::Untracked | steer::Decision::NoOrigin => None,
    }
}

/// The XDP request path with a [`ParseVariant`] spelled out: `switcher_xdp` is the product's
/// variant, `bench::bench_nfv_*` the others. Every variant takes the tracked packet's fast
/// path ([`fast_tracked`]) first.
#[inline(always)]
fn xdp_request<const COUNT_EARLY: bool, const FAST_EXIT: bool>(ctx: &XdpContext) -> u32 {
    let vip = steer::vip();
    // Read after the VIP's lookup (a helper call, which clobbers the caller-saved registers),
    // so only the context is kept across it.
    let (start, end) = (ctx.data(), ctx.data_end());
    if FAST_EXIT {
        if fast_exit(vip, start, end) {
            return xdp_action::XDP_PASS;
        }
    }
    // A flag set in the match, not `let probed = match ..`: that form cost the hit 11 x86
    // instructions (295 against 284, `scripts/profile-datapath.py`).
    let mut probed = false;
    match fast_tracked(ctx, vip, start, end) {
        Fast::Acted(action) => return action,
        Fast::Missed => probed = true,
        Fast::NotTaken => {}
    }
    // Read again past the fast paths, with loads the optimiser may not merge with the first
    // ones: with the same values, LLVM threads what the fast exit's checks found into
    // `classify`'s, keeping flags and the packet length live (some on the stack) on the fast
    // exit's own path instead of leaving it self-contained. (`core::hint::black_box` does the
    // same through a stack round trip, which cost the tracked flow more.)
    // SAFETY: the context the kernel passed, valid for the whole run.
    let (start, end) = unsafe {
        (
            core::ptr::read_volatile(&(*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize,
        )
    };
    // This program is not frags-aware, so the kernel hands it linear packets: the readable
    // range is the whole packet.
    let Some(t) = request_segment::<COUNT_EARLY>(vip, start, end, end - start) else {
        return xdp_action::XDP_PASS;
    };
    let verdict = request_verdict(ctx.as_ptr(), &t, vip, start, end, probed);
    xdp_act(ctx, &t, start, end, verdict)
}

/// What [`fast_tracked`] did with a packet.
enum Fast {
    /// Decided from this CPU's copy of the flow, and carried out: the XDP action.
    Acted(u32),
    /// A request segment of the path's shape to the VIP that this CPU's cache does not decide
    /// (no valid copy, or one whose origin is not live): the full path decides it without
    /// probing the cache again.
    Missed,
    /// Not of the path's shape, or not to the VIP: the full path, as if there were no fast
    /// path.
    NotTaken,
}

/// The fast path of a tracked flow's request (XDP, every [`ParseVariant`]): a request
/// segment in the commonest shape (`packet::common_v4_request`) to the VIP whose flow this
/// CPU's cache holds ([`cached_verdict`]) is decided from the copy, and its rewrite or
/// encapsulation done and counted, without the full parse.
///
/// Why (BENCHMARKS.md, session 14): the same decision through the full parse ran 453 x86
/// instructions, about a fifth of them stack stores and loads of the parsed segment's fields,
/// which the full path keeps for SYNs and misses.
#[inline(always)]
fn fast_tracked(ctx: &XdpContext, vip: Option<&VipConfig>, start: usize, end: usize) -> Fast {
    let Some(vip) = vip else {
        return Fast::NotTaken;
    };
    let Some(t) = packet::common_v4_request(start, end, vip.port_be) else {
        return Fast::NotTaken;
    };
    if !steer::is_to_vip(&t, vip) {
        return Fast::NotTaken;
    }
    match cached_verdict(&t) {
        Some(verdict) => Fast::Acted(xdp_act(ctx, &t, start, end, verdict)),
        None => Fast::Missed,
    }
}

/// Carries out `verdict` on the XDP packet `[start, end)` whose segment is `t`.
#[inline(always)]
fn xdp_act(ctx: &XdpContext, t: &Tcp, start: usize, end: usize, verdict: Verdict) -> u32 {
    match verdict {
        Verdict::Rewrite(target) => {
            // A failed rewrite (headers out of bounds, which parsing already ruled out) passes
            // the packet unchanged, counted but not as rewritten.
            let rewritten = xdp_rewrite_dst(start, end, t, &target).is_some();
            count_steered(&target, end - start, rewritten, false);
            xdp_action::XDP_PASS
        }
        Verdict::Encap(index, host) => encap::xdp_encap(ctx, t, index, host),
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

/// Writes the request's new destination straight into the packet with RFC 1624 updates.
///
/// Loads and stores have the field's width (`ptr::read`/`ptr::write`, not the unaligned
/// variants, which LLVM splits into bytes for BPF): see `packet::load` on alignment.
#[inline(always)]
fn xdp_rewrite_dst(start: usize, end: usize, t: &Tcp, target: &steer::Target) -> Option<()> {
    let check = ptr_at::<u16>(start, end, t.l4_off + tcp::CHECK)?;
    let dport = ptr_at::<u16>(start, end, t.l4_off + tcp::DPORT)?;
    // SAFETY: every pointer was bounds-checked by `ptr_at`.
    unsafe {
        let mut c = csum::replace16(check.read(), t.dport, target.port);
        dport.write(target.port);
        if let Some(addr) = target.addr {
            if t.family == FAMILY_V4 {
                let daddr = ptr_at::<u32>(start, end, t.l3_off + ipv4::DADDR)?;
                let ip_check = ptr_at::<u16>(start, end, t.l3_off + ipv4::CHECK)?;
                let (old, new) = (t.daddr[0], addr[0]);
                ip_check.write(csum::replace_word(ip_check.read(), old, new));
                c = csum::replace_word(c, old, new);
                daddr.write(new);
            } else {
                let daddr = ptr_at::<[u32; 4]>(start, end, t.l3_off + ipv6::DADDR)?;
                let mut i = 0;
                while i < 4 {
                    c = csum::replace_word(c, t.daddr[i], addr[i]);
                    i += 1;
                }
                daddr.write(addr);
            }
        }
        check.write(c);
    }
    Some(())
}

#[classifier]
#[inline(always)]
pub fn switcher_tc_ingress(ctx: TcContext) -> i32 {
    tc_pull(&ctx);
    let len = ctx.len() as usize;
    let vip = steer::vip();
    let (start, end) = (ctx.data(), ctx.data_end());
    let Some(t) = request_segment::<{ PRODUCT_PARSE.count_early }>(vip, start, end, len) else {
        return TC_ACT_OK;
    };
    let target = match request_verdict(ctx.as_ptr(), &t, vip, start, end, false) {
        Verdict::Rewrite(target) => target,
        Verdict::Pass => return TC_ACT_OK,
        Verdict::Drop => return TC_ACT_SHOT,
        // Direct server return is built in XDP only: on a TC attachment the stack resets it.
        Verdict::Encap(index, _) => {
            encap::count(index, |c| c.errors += 1);
            return TC_ACT_OK;
        }
    };
    match tc_rewrite(
        &ctx,
        &t,
        tcp::DPORT,
        t.dport,
        target.port,
        Field::Dst,
        t.daddr,
        target.addr,
    ) {
        Ok(()) => {
            count_steered(&target, len, true, false);
            TC_ACT_OK
        }
        Err(_) => {
            count_steered(&target, len, false, true);
            TC_ACT_SHOT
        }
    }
}

/// Makes the headers readable through direct packet access (an skb may be non-linear), on
/// ingress and egress, pulling only when the linear area is shorter than the packet's own
/// family needs (IPv4: Ethernet + IPv4 + TCP fixed headers, 54 bytes; otherwise IPv6's 74).
/// A pull that cannot succeed (a packet shorter than that) leaves a packet that parsing
/// classifies as what it is, malformed or short.
///
/// Why not one length for both families: the skbs TCP sends are clones whose
/// linear area holds just the headers (66 bytes for IPv4 with timestamps), the payload in
/// page fragments. Pulling IPv6's 74 bytes out of such a clone made the kernel copy its head
/// (`bpf_skb_pull_data` -> `skb_ensure_writable` -> `pskb_expand_head`) for every packet
/// the host sent on this interface, steered or not: ~1.5% of all CPU under `bench balance`'s
/// load, in the direct case as much as through the VIP. Without the pull, the reply rewrite's
/// stores fall inside the headers TCP pushed on the clone, which the kernel lets a clone write
/// without a copy (`skb_clone_writable`). On ingress, the one length made every IPv4 packet
/// of 54 to 73 bytes (a bare ACK, to the VIP or not) call the helper in vain: 20.7 ns above the
/// empty TC program for a packet not for the VIP (BENCHMARKS.md, session 14).
#[inline(always)]
fn tc_pull(ctx: &TcContext) {
    let (start, end) = (ctx.data(), ctx.data_end());
    let need = match ptr_at::<u16>(start, end, ETH_TYPE_OFF) {
        // SAFETY: bounds-checked by `ptr_at`.
        Some(ty) if unsafe { ty.read() } == ETH_P_IP_BE => TC_PULL_LEN_V4,
        _ => TC_PULL_LEN,
    };
    if end - start < need as usize {
        let _ = ctx.pull_data(need);
    }
}

#[classifier]
#[inline(always)]
pub fn switcher_tc_egress(ctx: TcContext) -> i32 {
    tc_pull(&ctx);
    let Some(t) = classify(ctx.data(), ctx.data_end(), ctx.len() as usize, 0).segment() else {
        // Egress is everything the host sends; counting it would drown the ingress counters.
        return TC_ACT_OK;
    };
    if !steer::is_origin_port(t.sport) {
        return TC_ACT_OK;
    }
    let Some(vip) = steer::vip() else {
        return TC_ACT_OK;
    };
    let Some(reply) = steer::match_reply(&t, vip) else {
        return TC_ACT_OK;
    };
    match tc_rewrite(
        &ctx,
        &t,
        tcp::SPORT,
        t.sport,
        reply.port,
        Field::Src,
        t.saddr,
        reply.addr,
    ) {
        Ok(()) => {
            steer::count(reply.index, |c| {
                c.reply_rewrites += 1;
                c.flows_closed += u64::from(reply.closed);
            });
            TC_ACT_OK
        }
        Err(_) => {
            steer::count(reply.index, |c| {
                c.drops += 1;
                c.flows_closed += u64::from(reply.closed);
            });
            TC_ACT_SHOT
        }
    }
}

/// Which address field a TC rewrite changes.
#[derive(Clone, Copy)]
enum Field {
    Src,
    Dst,
}

/// Rewrites a port (and optionally the matching address) with the kernel's checksum helpers,
/// which are correct for CHECKSUM_PARTIAL skbs too.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tc_rewrite(
    ctx: &TcContext,
    t: &Tcp,
    port_off: usize,
    old_port: u16,
    new_port: u16,
    field: Field,
    old_addr: [u32; 4],
    new_addr: Option<[u32; 4]>,
) -> Result<(), i64> {
    let csum_off = t.l4_off + tcp::CHECK;
    ctx.l4_csum_replace(csum_off, old_port as u64, new_port as u64, 2)?;
    ctx.store(t.l4_off + port_off, &new_port, 0)?;
    let Some(new) = new_addr else {
        return Ok(());
    };
    if t.family == FAMILY_V4 {
        let off = t.l3_off
            + if matches!(field, Field::Src) {
                ipv4::SADDR
            } else {
                ipv4::DADDR
            };
        let (old4, new4) = (old_addr[0], new[0]);
        ctx.l4_csum_replace(csum_off, old4 as u64, new4 as u64, BPF_F_PSEUDO_HDR | 4)?;
        ctx.l3_csum_replace(t.l3_off + ipv4::CHECK, old4 as u64, new4 as u64, 4)?;
        ctx.store(off, &new4, 0)?;
    } else {
        let off = t.l3_off
            + if matches!(field, Field::Src) {
                ipv6::SADDR
            } else {
                ipv6::DADDR
            };
        let mut i = 0;
        while i < 4 {
            let (o, n) = (old_addr[i], new[i]);
            ctx.l4_csum_replace(csum_off, o as u64, n as u64, BPF_F_PSEUDO_HDR | 4)?;
            i += 1;
        }
        // The four words in memory order are the address's 16 bytes.
        ctx.store(off, &new, 0)?;
    }
    Ok(())
}

/// Origin host side of direct server return: strips the outer header of IP-in-IP packets for
/// the VIP (see `decap`); everything else passes unchanged.
#[xdp]
#[inline(always)]
pub fn switcher_decap(ctx: XdpContext) -> u32 {
    decap::xdp_decap(&ctx)
}

/// Never attached: transmits one edge-originated reset that switcher-ctl built, run by it with
/// `BPF_PROG_TEST_RUN` in live-frame mode (`BPF_F_TEST_XDP_LIVE_FRAMES`) on the VIP's
/// interface (docs/ARCHITECTURE.md, "Edge-originated resets"). Why this way: switcher-ctl
/// keeps only CAP_BPF and CAP_NET_ADMIN after attaching, and a raw socket needs CAP_NET_RAW;
/// a live-frame run needs nothing more, and XDP_TX puts the frame on the wire without the
/// host's stack, so the partition or firewall that cut the origin off does not drop it.
///
/// The frame arrives complete (Ethernet addresses from the flow, sequence number, checksums:
/// `switcher-ctl/src/edge_rst.rs`); this program only checks that it is what it must be, a
/// TCP RST (bare, or with ACK for a pending handshake) without data from the VIP's address and
/// port, and drops anything else, so the program can never put another kind of packet on the
/// wire.
#[xdp]
#[inline(always)]
pub fn switcher_emit_rst(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    // No port filter (0): the reset goes from the VIP's port to the client's.
    let Some(t) = classify(start, end, end - start, 0).segment() else {
        return xdp_action::XDP_DROP;
    };
    let Some(vip) = steer::vip() else {
        return xdp_action::XDP_DROP;
    };
    // A bare RST (a synchronized connection), or RST+ACK (a connection in SYN-SENT, which
    // accepts an RST only with the ACK of its SYN: RFC 9293 3.10.7.3).
    if (t.flags != tcp::RST && t.flags != tcp::RST | tcp::ACK)
        || t.payload
        || !steer::is_from_vip(&t, vip)
    {
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_TX
}

/// Never attached: marks one flow finishing for switcher-ctl, which runs it with
/// `BPF_PROG_TEST_RUN` on a `FinishMark` (28 bytes: the flow's key, origin and generation) as
/// the packet (docs/ARCHITECTURE.md, "Stranded connections"; `steer::mark_finishing` says why
/// not a map update). XDP_PASS when marked, XDP_DROP when the flow has no entry of that origin
/// and generation, XDP_ABORTED when the input is shorter than a `FinishMark` (a caller of
/// another build; switcher-ctl then marks with a map update). (Shorter, not "other than": the
/// verifier learns a packet's bounds from an ordering compare, not from `!=`.)
#[xdp]
#[inline(always)]
pub fn switcher_mark_finishing(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + core::mem::size_of::<FinishMark>() > end {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: 28 bytes within the packet (checked above); every bit pattern is a mark.
    let mark = unsafe { core::ptr::read_unaligned(start as *const FinishMark) };
    if steer::mark_finishing(&mark) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program; required by no_std.
    loop {}
}

/// License of the object: GPL, so the programs may call GPL-only helpers.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";

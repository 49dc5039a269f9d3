//! Packet parsing shared by the XDP and TC programs. Every read goes through [`ptr_at`], the
//! one bounds check the verifier sees. Only the shapes the data plane acts on are parsed:
//! Ethernet II -> IPv4 without options, or IPv6 without extension headers -> TCP. Anything
//! else is classified so the caller can pass it unchanged and count why.

use core::mem::size_of;

use switcher_common::{FAMILY_V4, FAMILY_V6};

/// Ethernet header length (no VLAN tags: tagged frames are not IP here and pass).
pub const ETH_HLEN: usize = 14;
/// Offset of the EtherType in the Ethernet header.
const ETH_TYPE_OFF: usize = 12;
/// EtherType IPv4, network byte order as it sits in the packet.
const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
/// EtherType IPv6, network byte order.
const ETH_P_IPV6_BE: u16 = 0x86DDu16.to_be();

/// IPv4 header without options.
pub const IPV4_HLEN: usize = 20;
/// IPv6 fixed header.
pub const IPV6_HLEN: usize = 40;
/// TCP header without options.
pub const TCP_HLEN: usize = 20;
/// Largest length a 16-bit IP length field can state; longer GSO packets carry 0 there.
const MAX_IP_LEN: usize = 0xffff;
/// IP protocol number of TCP.
const IPPROTO_TCP: u8 = 6;
/// IPv6 next-header value of the fragment header.
const IPPROTO_FRAGMENT: u8 = 44;

/// IPv4 field offsets (RFC 791).
pub mod ipv4 {
    /// Total length.
    pub const TOT_LEN: usize = 2;
    /// Flags (3 bits) and fragment offset (13 bits).
    pub const FRAG_OFF: usize = 6;
    /// Protocol.
    pub const PROTO: usize = 9;
    /// Header checksum.
    pub const CHECK: usize = 10;
    /// Source address.
    pub const SADDR: usize = 12;
    /// Destination address.
    pub const DADDR: usize = 16;
    /// More-fragments flag and offset mask, host order (the reserved and DF bits excluded).
    pub const MF_OFFSET_MASK: u16 = 0x3fff;
}

/// IPv6 field offsets (RFC 8200).
pub mod ipv6 {
    /// Payload length.
    pub const PAYLOAD_LEN: usize = 4;
    /// Next header.
    pub const NEXTHDR: usize = 6;
    /// Source address.
    pub const SADDR: usize = 8;
    /// Destination address.
    pub const DADDR: usize = 24;
}

/// TCP field offsets (RFC 9293).
pub mod tcp {
    /// Source port.
    pub const SPORT: usize = 0;
    /// Destination port.
    pub const DPORT: usize = 2;
    /// Sequence number.
    pub const SEQ: usize = 4;
    /// Acknowledgment number.
    pub const ACK_SEQ: usize = 8;
    /// Data offset (high 4 bits).
    pub const DOFF: usize = 12;
    /// Flags byte (CWR ECE URG ACK PSH RST SYN FIN).
    pub const FLAGS: usize = 13;
    /// Checksum.
    pub const CHECK: usize = 16;
    /// FIN flag bit.
    pub const FIN: u8 = 0x01;
    /// SYN flag bit.
    pub const SYN: u8 = 0x02;
    /// RST flag bit.
    pub const RST: u8 = 0x04;
    /// ACK flag bit.
    pub const ACK: u8 = 0x10;
}

/// Bounds-checked pointer to a `T` at `off` bytes into the packet `[start, end)`.
#[inline(always)]
pub fn ptr_at<T>(start: usize, end: usize, off: usize) -> Option<*mut T> {
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Reads a `T` at `base + off` with one load of `T`'s width. `base` points to a header the
/// caller bounds-checked whole with [`ptr_at`], and `off + size_of::<T>()` lies inside it.
///
/// Why not `read_unaligned`: for the BPF target LLVM turns an unaligned read into one load
/// per byte plus shifts and ORs (a 16-byte address became 16 loads and 30 ALU instructions),
/// and that was most of the cost of parsing. Headers are not always aligned to `T` (the IP
/// header starts at offset 14), but the verifier accepts misaligned packet loads unless
/// BPF_F_STRICT_ALIGNMENT is asked for, and the JITs of the architectures an edge runs on
/// (x86-64, arm64) emit plain loads that the CPU handles. aya's own examples read packet
/// headers through typed pointers the same way.
///
/// # Safety
/// `base + off .. base + off + size_of::<T>()` must be inside a bounds-checked header.
#[inline(always)]
unsafe fn load<T: Copy>(base: usize, off: usize) -> T {
    // SAFETY: in bounds per the caller; see above for alignment.
    unsafe { core::ptr::read((base + off) as *const T) }
}

/// A frame's Ethernet addresses, as they sit in it.
pub struct EthAddrs {
    /// Destination (this edge's interface, for a request).
    pub dst: [u8; 6],
    /// Source (the client, or the router it comes through).
    pub src: [u8; 6],
}

/// The Ethernet addresses of the frame `[start, end)`; all zero when it is shorter than an
/// Ethernet header (which `classify` has already ruled out for a TCP segment).
#[inline(always)]
pub fn eth_addrs(start: usize, end: usize) -> EthAddrs {
    match ptr_at::<[u8; ETH_HLEN]>(start, end, 0) {
        // SAFETY: both fields lie inside the Ethernet header checked by `ptr_at`.
        Some(eth) => unsafe {
            EthAddrs {
                dst: load(eth as usize, 0),
                src: load(eth as usize, 6),
            }
        },
        None => EthAddrs {
            dst: [0; 6],
            src: [0; 6],
        },
    }
}

/// The first 12 bytes of the frame `[start, end)`, its destination and source Ethernet
/// addresses, as three native 4-byte words (three loads; `EthAddrs`' byte arrays are copied
/// byte by byte). All zero when it is shorter than an Ethernet header.
#[inline(always)]
pub fn eth_words(start: usize, end: usize) -> [u32; 3] {
    match ptr_at::<[u8; ETH_HLEN]>(start, end, 0) {
        // SAFETY: the three words lie inside the Ethernet header checked by `ptr_at`.
        Some(eth) => unsafe {
            let e = eth as usize;
            [load(e, 0), load(e, 4), load(e, 8)]
        },
        None => [0; 3],
    }
}

/// A TCP segment the data plane may act on. Addresses and ports in network byte order.
#[derive(Clone, Copy)]
pub struct Tcp {
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u16,
    /// Offset of the L3 header from the start of the packet.
    pub l3_off: usize,
    /// Offset of the TCP header from the start of the packet.
    pub l4_off: usize,
    /// Source address as four native words in memory order (the 16 wire bytes read as four
    /// 4-byte loads; IPv4 in the first word, the others 0).
    ///
    /// Words, not `[u8; 16]`: held in registers, a byte array is split by LLVM into one value
    /// per byte, which every 4-byte use (the VIP compare, the flow key, the rewrite) shifted
    /// and ORed back together, with the bytes spilled to the stack and the IPv6 bytes zeroed
    /// there on every IPv4 packet (BENCHMARKS.md, 2026-12-02, branch dplean).
    pub saddr: [u32; 4],
    /// Destination address, as [`saddr`](Self::saddr).
    pub daddr: [u32; 4],
    /// Source port, network order.
    pub sport: u16,
    /// Destination port, network order.
    pub dport: u16,
    /// TCP flags byte.
    pub flags: u8,
    /// Sequence number, host order.
    pub seq: u32,
    /// Acknowledgment number, host order (meaningful when the ACK flag is set).
    pub ack_seq: u32,
    /// The segment carries data (a request), not only flags and an acknowledgment. Taken
    /// from the IP length, never from the frame's: Ethernet pads short frames.
    pub payload: bool,
}

impl Tcp {
    /// No segment: [`Class`]'s for the kinds that have none.
    const ZERO: Tcp = Tcp {
        family: 0,
        l3_off: 0,
        l4_off: 0,
        saddr: [0; 4],
        daddr: [0; 4],
        sport: 0,
        dport: 0,
        flags: 0,
        seq: 0,
        ack_seq: 0,
        payload: false,
    };

    /// A connection request: SYN without ACK.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.flags & (tcp::SYN | tcp::ACK) == tcp::SYN
    }
}

/// What a packet is, as far as the data plane cares.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Not IPv4/IPv6 (ARP, VLAN-tagged, ...), or IP but not TCP: not ours.
    Other,
    /// Shorter than the headers it claims.
    Malformed,
    /// An IP fragment.
    Fragment,
    /// IPv4 options or IPv6 extension headers before TCP.
    IpOptions,
    /// A well-formed TCP segment to another port than the one the caller steers, and not a
    /// SYN: nothing to do but pass it. Told apart before the segment's addresses are read,
    /// which is what makes the common not-for-the-VIP packet cheap; its IP length is not
    /// checked either (a malformed one is counted as a pass, not as malformed).
    Elsewhere,
    /// A TCP segment we can act on ([`Class::segment`]).
    Tcp,
}

/// A packet's [`Kind`], and its segment when it is [`Kind::Tcp`].
///
/// A struct whose segment is zeroed for the other kinds, not an enum whose `Tcp` variant
/// carries it: an enum leaves the segment's fields undefined on the other kinds' paths, and
/// where those paths join LLVM may store such an undefined register to the stack, which the
/// verifier rejects (`R7 !read_ok`, in `switcher_tc_egress` built for BPF ISA v4; BENCHMARKS.md,
/// session 7 for v3). The zeroing costs the other kinds' paths a few constant stores at most.
#[derive(Clone, Copy)]
pub struct Class {
    /// What the packet is.
    pub kind: Kind,
    /// The segment when `kind` is [`Kind::Tcp`], zeroed otherwise.
    tcp: Tcp,
}

impl Class {
    /// A packet of kind `kind`, not [`Kind::Tcp`].
    #[inline(always)]
    const fn of(kind: Kind) -> Class {
        Class {
            kind,
            tcp: Tcp::ZERO,
        }
    }

    /// [`Kind::Other`].
    pub const OTHER: Class = Class::of(Kind::Other);
    /// [`Kind::Malformed`].
    pub const MALFORMED: Class = Class::of(Kind::Malformed);
    /// [`Kind::Fragment`].
    pub const FRAGMENT: Class = Class::of(Kind::Fragment);
    /// [`Kind::IpOptions`].
    pub const IP_OPTIONS: Class = Class::of(Kind::IpOptions);
    /// [`Kind::Elsewhere`].
    pub const ELSEWHERE: Class = Class::of(Kind::Elsewhere);

    /// The segment, when the packet is one the data plane may act on.
    #[inline(always)]
    pub fn segment(&self) -> Option<Tcp> {
        (self.kind == Kind::Tcp).then_some(self.tcp)
    }
}

/// Classifies the packet `[start, end)` (starting at the Ethernet header). `len` is the whole
/// packet's length, which for an skb with paged data (TCP payload in fragments) is more than
/// the linear `[start, end)` the program can read directly; the IP length fields are checked
/// against it.
#[inline(always)]
///
/// `steered_port` (network order, 0 for none) is the port the caller steers: a non-SYN
/// segment to any other port is [`Kind::Elsewhere`]. SYNs are always [`Kind::Tcp`] (a SYN
/// straight to an origin's port may end a stale flow, see `steer::forget_stale_flow`).
pub fn classify(start: usize, end: usize, len: usize, steered_port: u16) -> Class {
    let Some(eth) = ptr_at::<[u8; ETH_HLEN]>(start, end, 0) else {
        return Class::MALFORMED;
    };
    // SAFETY: the type field is inside the Ethernet header checked above.
    let eth_type: u16 = unsafe { load(eth as usize, ETH_TYPE_OFF) };
    if eth_type == ETH_P_IP_BE {
        classify_v4(start, end, len, steered_port)
    } else if eth_type == ETH_P_IPV6_BE {
        classify_v6(start, end, len, steered_port)
    } else {
        Class::OTHER
    }
}

#[inline(always)]
fn classify_v4(start: usize, end: usize, len: usize, steered_port: u16) -> Class {
    let l3 = ETH_HLEN;
    let Some(hdr) = ptr_at::<[u8; IPV4_HLEN]>(start, end, l3) else {
        return Class::MALFORMED;
    };
    let h = hdr as usize;
    // SAFETY (every `load` below): offsets inside the 20-byte header checked above.
    let vihl: u8 = unsafe { load(h, 0) };
    let version = vihl >> 4;
    let ihl = (vihl & 0x0f) as usize * 4;
    if version != 4 || ihl < IPV4_HLEN {
        return Class::MALFORMED;
    }
    if unsafe { load::<u8>(h, ipv4::PROTO) } != IPPROTO_TCP {
        return Class::OTHER;
    }
    let frag = u16::from_be(unsafe { load(h, ipv4::FRAG_OFF) });
    if frag & ipv4::MF_OFFSET_MASK != 0 {
        return Class::FRAGMENT;
    }
    if ihl != IPV4_HLEN {
        return Class::IP_OPTIONS;
    }
    v4_tcp(start, end, len, h, steered_port)
}

/// Whether the packet `[start, end)` is, in one of its two commonest shapes, what [`classify`]
/// calls [`Kind::Elsewhere`] for `steered_port`: Ethernet + IPv4 without options (version/IHL
/// byte 0x45), not a fragment, TCP, or Ethernet + IPv6 with TCP as next header; then a TCP
/// header of at least 20 bytes (data offset >= 5) whose destination port is not
/// `steered_port` (0: none) and which is not a SYN. False means "not decided here": the
/// caller classifies the packet in full, so a shape this leaves out (a short frame, options,
/// extension headers, a fragment, a SYN, ...) is classified exactly as before.
///
/// Why a second parse of the same fields: this is the request path's fast exit for the
/// commonest packet on an edge NIC, one not for the VIP (`crate::ParseVariant::fast_exit`).
/// In [`classify`] the same checks come one field at a time, each leaving a class to tell
/// apart afterwards, inside the one big inlined request path whose register pressure spilled
/// the VIP port and the class to the stack on that path; here the fields are tested with one
/// bounds check per family and nothing else is live but `start`, `end` and the port. Every
/// check mirrors one of [`classify_v4`] / [`classify_v6`] / [`tcp_at`]'s (commented below);
/// the data-path fixtures check the counters of every class. See BENCHMARKS.md, 2026-12-02,
/// branch dplean, for what it saves.
#[inline(always)]
pub fn is_elsewhere_common(start: usize, end: usize, steered_port: u16) -> bool {
    // `tcp_at`: no port to steer, nothing is `Elsewhere`.
    if steered_port == 0 {
        return false;
    }
    let Some(all) = ptr_at::<[u8; ETH_HLEN + IPV4_HLEN + TCP_HLEN]>(start, end, 0) else {
        return false;
    };
    let a = all as usize;
    // SAFETY (every `load` below): offsets inside the bytes bounds-checked just before (for
    // IPv6, the longer check in its branch).
    let eth_type: u16 = unsafe { load(a, ETH_TYPE_OFF) };
    // The checks are those of `classify_v4` / `classify_v6` and `tcp_at`, all of which must
    // pass; the destination port and the SYN flag come first, where the TCP header would be,
    // so a packet for the VIP or a SYN (which take the full path) leaves after a few tests.
    let (h, l4) = if eth_type == ETH_P_IP_BE {
        (a + ETH_HLEN, a + ETH_HLEN + IPV4_HLEN)
    } else if eth_type == ETH_P_IPV6_BE {
        let Some(all6) = ptr_at::<[u8; ETH_HLEN + IPV6_HLEN + TCP_HLEN]>(start, end, 0) else {
            return false;
        };
        (
            all6 as usize + ETH_HLEN,
            all6 as usize + ETH_HLEN + IPV6_HLEN,
        )
    } else {
        return false;
    };
    let dport: u16 = unsafe { load(l4, tcp::DPORT) };
    let flags: u8 = unsafe { load(l4, tcp::FLAGS) };
    // `tcp_at`: to another port, not a SYN.
    if dport == steered_port || flags & (tcp::SYN | tcp::ACK) == tcp::SYN {
        return false;
    }
    if eth_type == ETH_P_IP_BE {
        // `classify_v4`: version 4 and IHL 5 (IHL < 5 is malformed, > 5 carries options), TCP,
        // no fragment offset or more-fragments flag. (IHL 5 puts the TCP header at `l4`.)
        if unsafe { load::<u8>(h, 0) } != 0x45
            || unsafe { load::<u8>(h, ipv4::PROTO) } != IPPROTO_TCP
            || u16::from_be(unsafe { load(h, ipv4::FRAG_OFF) }) & ipv4::MF_OFFSET_MASK != 0
        {
            return false;
        }
    } else if unsafe { load::<u8>(h, 0) } >> 4 != 6
        || unsafe { load::<u8>(h, ipv6::NEXTHDR) } != IPPROTO_TCP
    {
        // `classify_v6`: version 6, TCP right after the fixed header.
        return false;
    }
    // `tcp_at`: a header of at least 20 bytes.
    let doff: u8 = unsafe { load(l4, tcp::DOFF) };
    doff >= (TCP_HLEN as u8 / 4) << 4
}

/// The segment of the packet `[start, end)` when it is, in the commonest shape, a request
/// segment of an established connection to `port` (the VIP's, network order): Ethernet +
/// IPv4 without options, not a fragment, TCP with a header of at least 20 bytes, not a SYN,
/// and an IP length that is not 0 (a GSO packet's) and fits in the packet. Exactly the segment
/// [`classify`] gives such a packet, from the same checks made in one pass over bytes bounds-
/// checked once; `None` for every other packet, which `classify` then classifies.
///
/// Why (BENCHMARKS.md, session 14): the tracked packet's fast path (`fast_tracked` in
/// main.rs) builds only what a flow-cache hit uses, without the general parse, whose
/// segment, carried to a decision that also serves SYNs and misses, was spilled to the stack
/// field by field.
#[inline(always)]
pub fn common_v4_request(start: usize, end: usize, port: u16) -> Option<Tcp> {
    let all = ptr_at::<[u8; ETH_HLEN + IPV4_HLEN + TCP_HLEN]>(start, end, 0)? as usize;
    let (h, l4) = (all + ETH_HLEN, all + ETH_HLEN + IPV4_HLEN);
    // SAFETY (every `load` below): offsets inside the 54 bytes bounds-checked just before.
    let dport: u16 = unsafe { load(l4, tcp::DPORT) };
    let flags: u8 = unsafe { load(l4, tcp::FLAGS) };
    // The port and the SYN flag first: most packets that are not this path's leave here.
    if dport != port
        || flags & (tcp::SYN | tcp::ACK) == tcp::SYN
        || unsafe { load::<u16>(all, ETH_TYPE_OFF) } != ETH_P_IP_BE
    {
        return None;
    }
    // `classify_v4`: version 4 and IHL 5, TCP, no fragment offset or more-fragments flag.
    if unsafe { load::<u8>(h, 0) } != 0x45
        || unsafe { load::<u8>(h, ipv4::PROTO) } != IPPROTO_TCP
        || u16::from_be(unsafe { load(h, ipv4::FRAG_OFF) }) & ipv4::MF_OFFSET_MASK != 0
    {
        return None;
    }
    // `tcp_at`: a header of at least 20 bytes; `v4_tcp`'s length check (0 is left to it).
    let hdr_len = ((unsafe { load::<u8>(l4, tcp::DOFF) } >> 4) as usize) * 4;
    let tot_len = u16::from_be(unsafe { load(h, ipv4::TOT_LEN) }) as usize;
    if hdr_len < TCP_HLEN || tot_len < IPV4_HLEN + TCP_HLEN || ETH_HLEN + tot_len > end - start {
        return None;
    }
    Some(Tcp {
        family: FAMILY_V4,
        l3_off: ETH_HLEN,
        l4_off: ETH_HLEN + IPV4_HLEN,
        saddr: [unsafe { load::<u32>(h, ipv4::SADDR) }, 0, 0, 0],
        daddr: [unsafe { load::<u32>(h, ipv4::DADDR) }, 0, 0, 0],
        sport: unsafe { load(l4, tcp::SPORT) },
        dport,
        flags,
        seq: u32::from_be(unsafe { load(l4, tcp::SEQ) }),
        ack_seq: u32::from_be(unsafe { load(l4, tcp::ACK_SEQ) }),
        payload: tot_len - IPV4_HLEN > hdr_len,
    })
}

/// The TCP segment of an IPv4 packet whose 20-byte header (no options, not a fragment, TCP)
/// is at `h`, bounds-checked by the caller.
#[inline(always)]
fn v4_tcp(start: usize, end: usize, len: usize, h: usize, steered_port: u16) -> Class {
    let l3 = ETH_HLEN;
    // SAFETY (every `load` below): offsets inside the 20-byte header at `h`, which the caller
    // bounds-checked.
    // The TCP header is bounds-checked first, the claimed length after: in the other order
    // LLVM drops the header check as implied by the length check, and the verifier, which
    // cannot follow a variable length, rejects the program.
    let tot_len = u16::from_be(unsafe { load(h, ipv4::TOT_LEN) }) as usize;
    // GSO/BIG TCP packets (length field 0) always carry data.
    let ip_payload = if tot_len == 0 {
        usize::MAX
    } else {
        tot_len.saturating_sub(IPV4_HLEN)
    };
    // A GSO/BIG TCP packet longer than the field can say has it 0: the kernel takes the
    // length from the skb (`iph_totlen()`), and so do we.
    let length_ok = || {
        (tot_len == 0 && len - l3 > MAX_IP_LEN)
            || (tot_len >= IPV4_HLEN + TCP_HLEN && l3 + tot_len <= len)
    };
    tcp_at(
        start,
        end,
        FAMILY_V4,
        l3,
        l3 + IPV4_HLEN,
        || unsafe {
            (
                [load::<u32>(h, ipv4::SADDR), 0, 0, 0],
                [load::<u32>(h, ipv4::DADDR), 0, 0, 0],
            )
        },
        ip_payload,
        length_ok,
        steered_port,
    )
}

#[inline(always)]
fn classify_v6(start: usize, end: usize, len: usize, steered_port: u16) -> Class {
    let l3 = ETH_HLEN;
    let Some(hdr) = ptr_at::<[u8; IPV6_HLEN]>(start, end, l3) else {
        return Class::MALFORMED;
    };
    let h = hdr as usize;
    // SAFETY (every `load` below): offsets inside the 40-byte header checked above.
    if unsafe { load::<u8>(h, 0) } >> 4 != 6 {
        return Class::MALFORMED;
    }
    let next: u8 = unsafe { load(h, ipv6::NEXTHDR) };
    if next == IPPROTO_FRAGMENT {
        return Class::FRAGMENT;
    }
    if next != IPPROTO_TCP {
        // Extension headers (hop-by-hop, routing, ...) or another protocol. Only the shapes
        // with TCP right after the fixed header are steered; count the extension-header case.
        return if is_v6_extension(next) {
            Class::IP_OPTIONS
        } else {
            Class::OTHER
        };
    }
    let payload = u16::from_be(unsafe { load(h, ipv6::PAYLOAD_LEN) }) as usize;
    let ip_payload = if payload == 0 { usize::MAX } else { payload };
    // Header first, claimed length after (see classify_v4). IPv6 BIG TCP: payload length 0,
    // length from the skb.
    let length_ok = || {
        (payload == 0 && len - l3 - IPV6_HLEN > MAX_IP_LEN)
            || (payload >= TCP_HLEN && l3 + IPV6_HLEN + payload <= len)
    };
    tcp_at(
        start,
        end,
        FAMILY_V6,
        l3,
        l3 + IPV6_HLEN,
        || unsafe { (load_addr6(h, ipv6::SADDR), load_addr6(h, ipv6::DADDR)) },
        ip_payload,
        length_ok,
        steered_port,
    )
}

/// A 16-byte address at `base + off`, as four 4-byte loads (see [`Tcp::saddr`]).
///
/// # Safety
/// As [`load`], for the 16 bytes.
#[inline(always)]
unsafe fn load_addr6(base: usize, off: usize) -> [u32; 4] {
    // SAFETY: per the caller.
    unsafe {
        [
            load(base, off),
            load(base, off + 4),
            load(base, off + 8),
            load(base, off + 12),
        ]
    }
}

/// IPv6 extension headers that may precede TCP (RFC 8200 4.1; fragment handled apart).
#[inline(always)]
fn is_v6_extension(next: u8) -> bool {
    // hop-by-hop 0, routing 43, ESP 50, AH 51, destination options 60, mobility 135,
    // HIP 139, shim6 140.
    matches!(next, 0 | 43 | 50 | 51 | 60 | 135 | 139 | 140)
}

/// The TCP header at `l4_off`; `ip_payload` is the IP payload length the IP header claims
/// (TCP header and data; `usize::MAX` for a GSO packet whose length field is 0). `addrs`
/// reads the source and destination addresses from the IP header, called only for a segment
/// the caller may act on: a packet to another port (`Kind::Elsewhere`) never loads them.
/// `length_ok` checks the IP header's claimed length against the packet's, after the TCP
/// header's bounds (see `v4_tcp`) and before the segment is built: a segment built and then
/// replaced by [`Class::MALFORMED`] made LLVM merge every field of it with the zeroed one,
/// which cost the tracked packet a dozen instructions.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tcp_at(
    start: usize,
    end: usize,
    family: u16,
    l3_off: usize,
    l4_off: usize,
    addrs: impl FnOnce() -> ([u32; 4], [u32; 4]),
    ip_payload: usize,
    length_ok: impl FnOnce() -> bool,
    steered_port: u16,
) -> Class {
    let Some(hdr) = ptr_at::<[u8; TCP_HLEN]>(start, end, l4_off) else {
        return Class::MALFORMED;
    };
    let h = hdr as usize;
    // SAFETY (every `load` below): offsets inside the 20-byte header checked above.
    let hdr_len = ((unsafe { load::<u8>(h, tcp::DOFF) } >> 4) as usize) * 4;
    if hdr_len < TCP_HLEN {
        return Class::MALFORMED;
    }
    let dport: u16 = unsafe { load(h, tcp::DPORT) };
    let flags: u8 = unsafe { load(h, tcp::FLAGS) };
    if steered_port != 0 && dport != steered_port && flags & (tcp::SYN | tcp::ACK) != tcp::SYN {
        // Passed unchanged whatever its length says: checking it would only move the packet
        // from one pass counter to another, on the path every packet not for us takes.
        return Class::ELSEWHERE;
    }
    if !length_ok() {
        return Class::MALFORMED;
    }
    let (saddr, daddr) = addrs();
    Class {
        kind: Kind::Tcp,
        tcp: Tcp {
            family,
            l3_off,
            l4_off,
            saddr,
            daddr,
            sport: unsafe { load(h, tcp::SPORT) },
            dport,
            flags,
            seq: u32::from_be(unsafe { load(h, tcp::SEQ) }),
            ack_seq: u32::from_be(unsafe { load(h, tcp::ACK_SEQ) }),
            payload: ip_payload > hdr_len,
        },
    }
}

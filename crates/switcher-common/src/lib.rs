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

/// Number of origins the data plane knows. Index [`ORIGIN_PRIMARY`] and [`ORIGIN_BACKUP`]
/// are the two of the contract; the map has room for a few more.
pub const MAX_ORIGINS: u32 = 4;
/// Origin index of the primary origin (default port 8081).
pub const ORIGIN_PRIMARY: u32 = 0;
/// Origin index of the backup origin (default port 8082).
pub const ORIGIN_BACKUP: u32 = 1;
/// Slot of the [`STATS`](Counters) map that counts traffic bound to no origin: packets that
/// were not for the VIP, or that could not be parsed.
pub const STATS_UNSTEERED: u32 = MAX_ORIGINS;
/// Number of slots in the per-CPU statistics map: one per origin plus [`STATS_UNSTEERED`].
pub const STATS_SLOTS: u32 = MAX_ORIGINS + 1;
/// Capacity of the LRU conntrack map (flows). At ~56 bytes a flow this is ~15 MiB of kernel
/// memory; an edge with more concurrent viewers raises it.
pub const MAX_FLOWS: u32 = 262_144;

/// `family` value: IPv4 (same number as `AF_INET`).
pub const FAMILY_V4: u16 = 2;
/// `family` value: IPv6 (same number as `AF_INET6`).
pub const FAMILY_V6: u16 = 10;

/// Names of the maps, as the loader finds them in the object and pins them under the pin
/// root. Kept here so the kernel declarations and user space cannot drift apart.
pub mod map_names {
    /// Array[1] of [`VipConfig`](super::VipConfig).
    pub const CONFIG: &str = "SWITCHER_CONFIG";
    /// Array[MAX_ORIGINS] of [`Origin`](super::Origin).
    pub const ORIGINS: &str = "SWITCHER_ORIGINS";
    /// Array[1] of `u32`: the active origin's index.
    pub const ACTIVE: &str = "SWITCHER_ACTIVE";
    /// LruHashMap of [`FlowKey`](super::FlowKey) -> [`FlowValue`](super::FlowValue).
    pub const FLOWS: &str = "SWITCHER_FLOWS";
    /// PerCpuArray[STATS_SLOTS] of [`Counters`](super::Counters).
    pub const STATS: &str = "SWITCHER_STATS";
}

/// Names of the programs in the object.
pub mod prog_names {
    /// XDP on ingress: requests to the VIP are steered to an origin.
    pub const XDP_INGRESS: &str = "switcher_xdp";
    /// TC ingress: the same request path for interfaces where XDP cannot attach.
    pub const TC_INGRESS: &str = "switcher_tc_ingress";
    /// TC egress: replies from an origin on a tracked flow get the VIP's address and port back.
    pub const TC_EGRESS: &str = "switcher_tc_egress";
    /// An empty XDP program (XDP_PASS), only loaded by the data-path benchmark as baseline.
    pub const BENCH_XDP_PASS: &str = "bench_xdp_pass";
}

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
/// origin process died and the control plane has not flipped yet), steer the flow to the next
/// configured origin that has one. Closes the gap between a crash and the next probe.
pub const VIP_CHECK_LISTENER: u16 = 8;

/// One origin: value of the `SWITCHER_ORIGINS` map, keyed by origin index. Written by user
/// space; read by the programs to rewrite requests (destination) and recognise replies (source).
#[repr(C)]
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
}

/// [`Origin::flags`]: the slot holds an origin.
pub const ORIGIN_CONFIGURED: u16 = 1;

/// Key of the `SWITCHER_FLOWS` conntrack map: one viewer connection as it looks on ingress,
/// client -> VIP. Replies (origin -> client) are looked up by rebuilding this key from the
/// packet's destination and the configured VIP. Written by the data plane (new flows); deleted
/// by user space when it retires an origin.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Client address, network byte order (IPv4 in the first 4 bytes, rest zero).
    pub client_addr: [u8; 16],
    /// Client TCP port, network byte order.
    pub client_port_be: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u16,
}

/// Value of the `SWITCHER_FLOWS` map: the origin the flow is pinned to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowValue {
    /// Index into `SWITCHER_ORIGINS`, host byte order.
    pub origin: u32,
    /// `FLOW_*` flags, host order.
    pub flags: u32,
}

/// [`FlowValue::flags`]: the flow started with a SYN (seen from its first packet). Flows
/// without it were adopted mid-stream (e.g. re-steered after their origin was retired).
pub const FLOW_SEEN_SYN: u32 = 1;

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
    /// Flows created for this origin (SYN or unknown flow).
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
    /// Packets of an unknown, non-SYN flow (e.g. one whose origin was retired) adopted by the
    /// active origin.
    pub resteered: u64,
    /// New flows steered to this origin because the active origin had no listening socket
    /// (see [`VIP_CHECK_LISTENER`]).
    pub listener_fallbacks: u64,
    /// Flows pinned to this origin forgotten because their client opened a connection
    /// straight to this origin from the same port (the VIP flow was over; its entry would
    /// have rewritten the new connection's replies).
    pub stale_flows: u64,
}

// Sizes pinned: a change here is a change of the kernel/user contract.
const _: () = assert!(core::mem::size_of::<VipConfig>() == 32);
const _: () = assert!(core::mem::size_of::<Origin>() == 24);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 20);
const _: () = assert!(core::mem::size_of::<FlowValue>() == 8);
const _: () = assert!(core::mem::size_of::<Counters>() == 13 * 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is `repr(C)`, `Copy`, made only of integers and byte arrays, and has
    // no implicit padding (sizes asserted above equal the sum of their fields).
    unsafe impl aya::Pod for super::VipConfig {}
    unsafe impl aya::Pod for super::Origin {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::Counters {}
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
        self.resteered += other.resteered;
        self.listener_fallbacks += other.listener_fallbacks;
        self.stale_flows += other.stale_flows;
    }
}

//! Edge-originated resets: the edge itself sends a viewer the TCP RST that ends its connection
//! to a retired origin (docs/ARCHITECTURE.md, "Edge-originated resets").
//!
//! Why: the reset of a destroyed origin socket ([`crate::sockdiag`]) goes through the host's
//! stack, so whatever cut the origin off (a partition, a firewall rule) drops it too, and an
//! origin on another host has no socket here at all. The data plane records, per flow, the
//! client's latest acknowledgment number and the Ethernet addresses of its handshake ACK
//! ([`switcher_common::FlowValue`]; while the flow's packets hit a CPU's copy of it, the newest
//! number is in the copy: [`crate::flow_cache::client_acks`]); from those, [`rst_frame`]
//! builds the whole frame, and [`Emitter`] transmits it with the `switcher_emit_rst` XDP
//! program.
//!
//! Connections still in their handshake are reset too ([`handshake_rst`]): a viewer whose
//! SYN went to an origin that is now retired, cut off or gone waits in SYN-SENT for its own
//! SYN retransmission (1 s, then 3 s...) unless told. The data plane records the client's
//! ISN and the SYN's Ethernet addresses in the handshake entry ([`switcher_common::Handshake`]).
//!
//! # Why the sequence number is right
//! A stalled, hung or partitioned origin sends nothing that reaches the viewer any more, so
//! once the viewer has acknowledged what it got, its latest ACK equals its `RCV.NXT`, and an
//! RST with that sequence number resets the connection at once (RFC 5961 3.2; RFC 9293
//! 3.10.7.4). If the number is in the window but not exact (an ACK the viewer delayed, data
//! still in flight toward it), the viewer answers with a challenge ACK; the flow is removed
//! before the RST is sent, so that ACK is untracked and passes to the edge's stack, which
//! resets it with `SEQ = its ACK number`: exact. A number outside the window is ignored by
//! the viewer: never a wrong reset of something else.
//!
//! # Why a pending handshake's reset is accepted
//! A client in SYN-SENT ignores the sequence number of an RST and accepts it only with ACK set
//! and the acknowledgment number of its SYN, its ISN + 1 (RFC 9293 3.10.7.3, "If the ACK bit
//! is set ... If the RST bit is set ... If the ACK was acceptable then signal to the user
//! 'error: connection reset'"; Linux's `tcp_rcv_synsent_state_process`, which fails the
//! connect with `ECONNREFUSED`). A client that already got the origin's SYN-ACK is
//! synchronized: when the origin's ISN is recorded the reset's sequence number is that ISN + 1,
//! the client's `RCV.NXT`, exact (else 0, which it ignores or answers with a challenge ACK that
//! the edge's stack resets, the entry being removed first, as above).
//!
//! # Why a live-frame test run, not a raw socket
//! switcher-ctl keeps only CAP_BPF and CAP_NET_ADMIN after attaching; a raw socket needs
//! CAP_NET_RAW. `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` runs an XDP program on a
//! frame we supply, as if received on the interface, and an `XDP_TX` verdict transmits it
//! there, past the host's stack and its firewall. Measured on this project's test topology:
//! * a veth: delivered when the peer receives through NAPI (GRO on, or an XDP program on the
//!   peer); veth's `ndo_xdp_xmit` drops frames otherwise, silently. This holds whatever mode
//!   the request path is attached in (the live-frame `XDP_TX` is a redirect to the device, not
//!   the driver's own XDP path): the DSR lab attaches in generic mode with GRO on the router's
//!   ends of the edges' links. A NIC with native XDP transmits them (`ndo_xdp_xmit`).
//! * `lo`: `lo` has no `ndo_xdp_xmit`, and a frame passed up the stack from a local address
//!   (the VIP) to a local address (the viewer) is dropped as martian unless `accept_local` is
//!   set. On `lo` the reset of the destroyed origin socket stays the only one, so edge resets
//!   are sent only when the request path is XDP on another interface (`status` says which).
//!
//! The other way considered, a UDP datagram that TC egress rewrites into the RST, works on
//! every interface, but rewrites a protocol in flight under checksum offload (a
//! `CHECKSUM_PARTIAL` UDP skb points the device at the wrong checksum field) and binds a UDP
//! port on the VIP; the live frame needs neither.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use aya::programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;
use switcher_common::{
    FAMILY_V4, FlowKey, FlowValue, HANDSHAKE_ISN_SEEN, Handshake, VIP_HAS_V4, VIP_HAS_V6, VipConfig,
};

/// EtherTypes.
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// IP protocol number of TCP.
const IPPROTO_TCP: u8 = 6;
/// TTL / hop limit of an edge reset (Linux's default).
const TTL: u8 = 64;
/// TCP header without options, and its data offset field (5 words, high nibble).
const TCP_HLEN: usize = 20;
const TCP_DOFF: u8 = 5 << 4;
/// TCP RST flag.
const TCP_RST: u8 = 0x04;
/// TCP ACK flag (with RST: the reset of a connection in SYN-SENT).
const TCP_ACK: u8 = 0x10;
/// IPv4 "don't fragment": an RST is 40 bytes.
const IPV4_DF: u16 = 0x4000;

/// What one reset says: from the VIP to the client, with the sequence number the client
/// expects, on the link the client's packets came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RstSpec {
    /// Source: the VIP's address and port (what the viewer connected to).
    pub vip: SocketAddr,
    /// Destination: the viewer.
    pub client: SocketAddr,
    /// Sequence number: the viewer's latest acknowledgment number.
    pub seq: u32,
    /// Acknowledgment number, with ACK set: a connection in SYN-SENT (its ISN + 1); `None`
    /// for a bare RST (a synchronized connection).
    pub ack: Option<u32>,
    /// Ethernet source: the edge's interface.
    pub src_mac: [u8; 6],
    /// Ethernet destination: the viewer, or the router its packets come through.
    pub dst_mac: [u8; 6],
}

/// One's-complement sum of `data` as big-endian 16-bit words (RFC 1071), not folded.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [b] = words.remainder() {
        acc += u32::from(*b) << 8;
    }
    acc
}

/// Folds and inverts an accumulated sum: the Internet checksum.
fn finish(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The frame of `spec`: Ethernet II, IPv4 (no options) or IPv6 (no extension headers), and a
/// 20-byte TCP header with RST set (and ACK with `spec.ack`, else acknowledgment number 0),
/// window 0, checksums computed. Fails when the VIP and the client are of different families.
pub fn rst_frame(spec: &RstSpec) -> Result<Vec<u8>> {
    let mut tcp = [0u8; TCP_HLEN];
    tcp[0..2].copy_from_slice(&spec.vip.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&spec.client.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&spec.seq.to_be_bytes());
    // Without `ack`, acknowledgment number 0: an RST without ACK (RFC 9293 3.10.7.4 validates
    // an RST in a synchronized state by its sequence number only). With it, RST+ACK (3.10.7.3).
    tcp[12] = TCP_DOFF;
    tcp[13] = TCP_RST;
    if let Some(ack) = spec.ack {
        tcp[8..12].copy_from_slice(&ack.to_be_bytes());
        tcp[13] |= TCP_ACK;
    }
    let mut frame = Vec::with_capacity(14 + 40 + TCP_HLEN);
    frame.extend_from_slice(&spec.dst_mac);
    frame.extend_from_slice(&spec.src_mac);
    match (spec.vip.ip(), spec.client.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + TCP_HLEN) as u16).to_be_bytes());
            ip[6..8].copy_from_slice(&IPV4_DF.to_be_bytes());
            ip[8] = TTL;
            ip[9] = IPPROTO_TCP;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let check = finish(sum16(&ip, 0));
            ip[10..12].copy_from_slice(&check.to_be_bytes());
            let pseudo = sum16(&src.octets(), sum16(&dst.octets(), 0))
                + u32::from(IPPROTO_TCP)
                + TCP_HLEN as u32;
            let check = finish(sum16(&tcp, pseudo));
            tcp[16..18].copy_from_slice(&check.to_be_bytes());
            frame.extend_from_slice(&ip);
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(TCP_HLEN as u16).to_be_bytes());
            ip[6] = IPPROTO_TCP;
            ip[7] = TTL;
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
            let pseudo = sum16(&src.octets(), sum16(&dst.octets(), 0))
                + TCP_HLEN as u32
                + u32::from(IPPROTO_TCP);
            let check = finish(sum16(&tcp, pseudo));
            tcp[16..18].copy_from_slice(&check.to_be_bytes());
            frame.extend_from_slice(&ip);
        }
        _ => bail!(
            "VIP {} and client {} are of different address families",
            spec.vip,
            spec.client
        ),
    }
    frame.extend_from_slice(&tcp);
    Ok(frame)
}

/// The reset of the flow `key` -> `value` of a data plane serving `vip`: from the VIP's
/// address of the flow's family and its port, to the flow's client, with the client's
/// latest acknowledgment number and the flow's Ethernet addresses reversed. `None` when the
/// VIP has no address of the flow's family (a flow of another configuration).
pub fn flow_rst(vip: &VipConfig, key: &FlowKey, value: &FlowValue) -> Option<RstSpec> {
    let (vip, client) = endpoints(vip, key)?;
    Some(RstSpec {
        vip,
        client,
        seq: value.client_ack,
        ack: None,
        src_mac: value.local_mac,
        dst_mac: value.hop_mac,
    })
}

/// The reset of the pending handshake `key` -> `hs` of a data plane serving `vip`: from the
/// VIP to the client, RST+ACK acknowledging the client's SYN (`client_isn + 1`), sequence
/// number the origin's ISN + 1 when its SYN-ACK was seen (else 0), with the SYN's Ethernet
/// addresses reversed. `None` when the VIP has no address of the key's family.
///
/// The entry is read while the data plane may write it: TC egress records the origin's ISN
/// in place (`expect_ack`, then the flag). A read between the two gives sequence number 0, and
/// a connection replaced by a new SYN from the same port between the read and the reset gets
/// an acknowledgment number that is not its ISN + 1: both are resets the client ignores, never
/// a reset of another connection.
pub fn handshake_rst(vip: &VipConfig, key: &FlowKey, hs: &Handshake) -> Option<RstSpec> {
    let (vip, client) = endpoints(vip, key)?;
    Some(RstSpec {
        vip,
        client,
        seq: if hs.flags & HANDSHAKE_ISN_SEEN != 0 {
            hs.expect_ack
        } else {
            0
        },
        ack: Some(hs.client_isn.wrapping_add(1)),
        src_mac: hs.local_mac,
        dst_mac: hs.hop_mac,
    })
}

/// The VIP's address of `key`'s family with its port, and `key`'s client; `None` when the VIP
/// has no address of that family.
fn endpoints(vip: &VipConfig, key: &FlowKey) -> Option<(SocketAddr, SocketAddr)> {
    let port = u16::from_be(vip.port_be);
    let (vip_ip, client_ip) = if key.family == FAMILY_V4 {
        if vip.flags & VIP_HAS_V4 == 0 {
            return None;
        }
        let c = &key.client_addr;
        (
            IpAddr::from(vip.addr_v4),
            IpAddr::from([c[0], c[1], c[2], c[3]]),
        )
    } else {
        if vip.flags & VIP_HAS_V6 == 0 {
            return None;
        }
        (IpAddr::from(vip.addr_v6), IpAddr::from(key.client_addr))
    };
    Some((
        SocketAddr::new(vip_ip, port),
        SocketAddr::new(client_ip, u16::from_be(key.client_port_be)),
    ))
}

/// `struct xdp_md` of a live-frame run (`include/uapi/linux/bpf.h`): data, data_end,
/// data_meta, ingress_ifindex, rx_queue_index, egress_ifindex, each a native-endian u32. The
/// frame starts at offset 0 and ends at its length; the kernel takes the device from
/// `ingress_ifindex` and transmits an `XDP_TX` verdict there.
pub fn xdp_md(frame_len: usize, ifindex: u32) -> [u8; 24] {
    let mut md = [0u8; 24];
    md[4..8].copy_from_slice(&(frame_len as u32).to_ne_bytes());
    md[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    md
}

/// Transmits edge resets on one interface with the pinned `switcher_emit_rst` program.
pub struct Emitter {
    prog: Xdp,
    ifindex: u32,
}

impl Emitter {
    /// Opens the program pinned at `pin` for the interface `ifindex`.
    pub fn open(pin: &Path, ifindex: u32) -> Result<Emitter> {
        let prog = Xdp::from_pin(pin, XdpAttachType::Interface)
            .with_context(|| format!("opening the pinned program {}", pin.display()))?;
        Ok(Emitter { prog, ifindex })
    }

    /// Transmits `frame` (see [`rst_frame`]). The kernel does not report what became of a
    /// live frame (a device that cannot take it drops it); an error here means the run itself
    /// failed (no such interface, no permission).
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        let md = xdp_md(frame.len(), self.ifindex);
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&md),
            repeat: 1,
            attrs: TestRunAttrs::new().xdp_live_frames(1),
            ..TestRunOptions::new()
        };
        self.prog
            .test_run(opts)
            .context("BPF_PROG_TEST_RUN (live frame) of switcher_emit_rst")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOP: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const LOCAL: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

    /// An independent check: the one's-complement sum over a header (or pseudo-header plus
    /// segment) with its checksum in place is 0xffff.
    fn sums_to_ones(parts: &[&[u8]]) -> bool {
        let mut acc = 0u32;
        for p in parts {
            for w in p.chunks(2) {
                acc += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
            }
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc == 0xffff
    }

    #[test]
    fn ipv4_rst_bytes() {
        let spec = RstSpec {
            vip: "10.77.0.2:8080".parse().unwrap(),
            client: "10.77.0.1:40000".parse().unwrap(),
            seq: 0x0102_0304,
            ack: None,
            src_mac: LOCAL,
            dst_mac: HOP,
        };
        let f = rst_frame(&spec).unwrap();
        // Worked by hand: IPv4 header words 0x4500+0x0028+0x4000+0x4006+0x0a4d+0x0002+0x0a4d
        // +0x0001 = 0xd9cb -> checksum 0x2634. TCP: pseudo-header 0x0a4d+0x0002+0x0a4d+0x0001
        // +0x0006+0x0014 = 0x14b7, header 0x1f90+0x9c40+0x0102+0x0304+0x5004 = 0x1_0fda,
        // total 0x1_2491 -> 0x2492 -> checksum 0xdb6d.
        let want: Vec<u8> = [
            &HOP[..],
            &LOCAL[..],
            &[0x08, 0x00],
            // IPv4: 0x45, tos 0, len 40, id 0, DF, ttl 64, tcp, checksum, src, dst
            &[
                0x45, 0x00, 0x00, 0x28, 0x00, 0x00, 0x40, 0x00, 0x40, 0x06, 0x26, 0x34,
            ],
            &[10, 77, 0, 2, 10, 77, 0, 1],
            // TCP: 8080 -> 40000, seq, ack 0, doff 5, RST, window 0, checksum, urg 0
            &[0x1f, 0x90, 0x9c, 0x40, 0x01, 0x02, 0x03, 0x04, 0, 0, 0, 0],
            &[0x50, 0x04, 0x00, 0x00, 0xdb, 0x6d, 0x00, 0x00],
        ]
        .concat();
        assert_eq!(f, want);
        assert!(sums_to_ones(&[&f[14..34]]), "IPv4 header checksum");
        let pseudo = [&f[26..34], &[0, 6, 0, 20][..]].concat();
        assert!(sums_to_ones(&[&pseudo, &f[34..]]), "TCP checksum");
    }

    #[test]
    fn ipv4_rst_ack_bytes() {
        // A pending handshake's reset: RST+ACK acknowledging the client's SYN (ISN 0xa1b2c3d4),
        // sequence number 0 (no SYN-ACK seen).
        let spec = RstSpec {
            vip: "10.77.0.2:8080".parse().unwrap(),
            client: "10.77.0.1:40000".parse().unwrap(),
            seq: 0,
            ack: Some(0xa1b2_c3d5),
            src_mac: LOCAL,
            dst_mac: HOP,
        };
        let f = rst_frame(&spec).unwrap();
        // Worked by hand: the IPv4 header is the bare RST's (checksum 0x2634). TCP:
        // pseudo-header 0x14b7 (as above), header 0x1f90+0x9c40+0xa1b2+0xc3d5+0x5014
        // = 0x2_716b, total 0x2_8622 -> 0x8624 -> checksum 0x79db.
        let want: Vec<u8> = [
            &HOP[..],
            &LOCAL[..],
            &[0x08, 0x00],
            &[
                0x45, 0x00, 0x00, 0x28, 0x00, 0x00, 0x40, 0x00, 0x40, 0x06, 0x26, 0x34,
            ],
            &[10, 77, 0, 2, 10, 77, 0, 1],
            // TCP: 8080 -> 40000, seq 0, ack ISN + 1, doff 5, RST|ACK, window 0, checksum, urg 0
            &[0x1f, 0x90, 0x9c, 0x40, 0, 0, 0, 0, 0xa1, 0xb2, 0xc3, 0xd5],
            &[0x50, 0x14, 0x00, 0x00, 0x79, 0xdb, 0x00, 0x00],
        ]
        .concat();
        assert_eq!(f, want);
        assert!(sums_to_ones(&[&f[14..34]]), "IPv4 header checksum");
        let pseudo = [&f[26..34], &[0, 6, 0, 20][..]].concat();
        assert!(sums_to_ones(&[&pseudo, &f[34..]]), "TCP checksum");
    }

    #[test]
    fn ipv6_rst_bytes() {
        let spec = RstSpec {
            vip: "[fd00::1]:8080".parse().unwrap(),
            client: "[fd00::99]:50000".parse().unwrap(),
            seq: 0xffff_fffe,
            ack: None,
            src_mac: LOCAL,
            dst_mac: HOP,
        };
        let f = rst_frame(&spec).unwrap();
        assert_eq!(f.len(), 14 + 40 + 20);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(
            &f[14..22],
            &[0x60, 0, 0, 0, 0x00, 0x14, 0x06, 0x40],
            "version 6, payload 20, next header TCP, hop limit 64"
        );
        assert_eq!(
            &f[54..62],
            &[0x1f, 0x90, 0xc3, 0x50, 0xff, 0xff, 0xff, 0xfe]
        );
        assert_eq!(&f[66..68], &[0x50, 0x04], "doff 5, RST only");
        let pseudo = [&f[22..54], &[0, 0, 0, 20, 0, 0, 0, 6][..]].concat();
        assert!(sums_to_ones(&[&pseudo, &f[54..]]), "TCP checksum");
    }

    #[test]
    fn mixed_families_are_refused() {
        let spec = RstSpec {
            vip: "10.0.0.1:8080".parse().unwrap(),
            client: "[fd00::99]:50000".parse().unwrap(),
            seq: 1,
            ack: None,
            src_mac: LOCAL,
            dst_mac: HOP,
        };
        assert!(rst_frame(&spec).is_err());
    }

    #[test]
    fn flow_rst_reverses_the_recorded_addresses() {
        let vip = VipConfig {
            addr_v4: [10, 77, 0, 2],
            addr_v6: [0; 16],
            port_be: 8080u16.to_be(),
            flags: VIP_HAS_V4,
            ifindex: 3,
            attach_mode: 1,
        };
        let mut client_addr = [0u8; 16];
        client_addr[..4].copy_from_slice(&[10, 77, 0, 1]);
        let key = FlowKey {
            client_addr,
            client_port_be: 40000u16.to_be(),
            family: FAMILY_V4,
        };
        let value = FlowValue {
            origin: 0,
            flags: 1,
            client_ack: 77,
            hop_mac: HOP,
            local_mac: LOCAL,
            generation: 0,
        };
        let spec = flow_rst(&vip, &key, &value).unwrap();
        assert_eq!(spec.vip, "10.77.0.2:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(
            spec.client,
            "10.77.0.1:40000".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(spec.seq, 77);
        assert_eq!((spec.src_mac, spec.dst_mac), (LOCAL, HOP));
        // An IPv6 flow on a VIP without an IPv6 address has no reset.
        let v6 = FlowKey {
            family: switcher_common::FAMILY_V6,
            ..key
        };
        assert_eq!(flow_rst(&vip, &v6, &value), None);
    }

    /// A pending handshake of client 10.77.0.1:40000 as the data plane writes it on the SYN
    /// (ISN 0xffff_ffff: its + 1 wraps), no SYN-ACK seen yet.
    fn pending() -> (FlowKey, Handshake) {
        let mut client_addr = [0u8; 16];
        client_addr[..4].copy_from_slice(&[10, 77, 0, 1]);
        let key = FlowKey {
            client_addr,
            client_port_be: 40000u16.to_be(),
            family: FAMILY_V4,
        };
        let hs = Handshake {
            origin: 1,
            flags: 0,
            expect_ack: 0,
            client_isn: 0xffff_ffff,
            hop_mac: HOP,
            local_mac: LOCAL,
        };
        (key, hs)
    }

    fn vip4() -> VipConfig {
        VipConfig {
            addr_v4: [10, 77, 0, 2],
            addr_v6: [0; 16],
            port_be: 8080u16.to_be(),
            flags: VIP_HAS_V4,
            ifindex: 3,
            attach_mode: 1,
        }
    }

    #[test]
    fn handshake_rst_acknowledges_the_clients_syn() {
        let (key, hs) = pending();
        let spec = handshake_rst(&vip4(), &key, &hs).unwrap();
        assert_eq!(spec.vip, "10.77.0.2:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(
            spec.client,
            "10.77.0.1:40000".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(spec.ack, Some(0), "the ISN + 1, wrapped");
        assert_eq!(spec.seq, 0, "no SYN-ACK seen: sequence number 0");
        assert_eq!((spec.src_mac, spec.dst_mac), (LOCAL, HOP));
        // Once the origin's SYN-ACK is recorded, a client that got it is synchronized: the
        // sequence number is its RCV.NXT, the origin's ISN + 1.
        let seen = Handshake {
            flags: HANDSHAKE_ISN_SEEN,
            expect_ack: 5001,
            ..hs
        };
        assert_eq!(handshake_rst(&vip4(), &key, &seen).unwrap().seq, 5001);
        // An expect_ack written before its flag (a read between TC egress's two stores) is not
        // used.
        let half = Handshake {
            expect_ack: 5001,
            ..hs
        };
        assert_eq!(handshake_rst(&vip4(), &key, &half).unwrap().seq, 0);
        // A VIP without an address of the key's family has no reset.
        let v6_only = VipConfig {
            flags: VIP_HAS_V6,
            ..vip4()
        };
        assert_eq!(handshake_rst(&v6_only, &key, &hs), None);
    }

    #[test]
    fn xdp_md_layout() {
        let md = xdp_md(54, 7);
        let word = |i: usize| u32::from_ne_bytes(md[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(
            (word(0), word(1), word(2), word(3), word(4), word(5)),
            (0, 54, 0, 7, 0, 0)
        );
    }
}

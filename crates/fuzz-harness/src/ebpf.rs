//! Target `ebpf`: the input is one Ethernet frame, run through the data plane's three programs
//! with BPF_PROG_TEST_RUN (aya `TestRun`) on the real object and maps, as the fixture table in
//! `crates/switcher-ctl/tests/datapath_fixtures.rs` does. Needs root (CAP_BPF + CAP_NET_ADMIN).
//!
//! The maps hold a fixed setup: VIP 10.0.0.1 / fd00::1 port 8080, primary origin on port 8081
//! (active) and backup on 8082, both at the VIP's address. Flows persist across inputs (as
//! they do on a live edge), so later inputs meet the state earlier ones left.
//!
//! The rules, judged by an independent parser here (the data plane rules of the project's
//! design):
//! * a frame that is not a well-formed, unfragmented, option-free IPv4/IPv6 TCP segment to
//!   the VIP passes unchanged, through XDP and TC ingress alike;
//! * a SYN to the VIP is steered to the active origin; any other segment to the VIP passes
//!   unchanged or is steered to a configured origin;
//! * a steered segment differs from the input only in the destination port and the TCP
//!   checksum, and a valid checksum stays valid (RFC 1624);
//! * the reply of a steered segment (its mirror image, from the origin's port) leaves TC
//!   egress with the VIP's port as source and a valid checksum; other frames leave egress
//!   unchanged unless they come from an origin's port.
//!
//! Coverage guidance comes from this parser, not from the kernel (libFuzzer cannot see inside
//! the BPF program); the rules are checked on every input regardless.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::{Mutex, OnceLock},
};

use aya::{
    Ebpf,
    maps::Array,
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use switcher_common::{
    ORIGIN_BACKUP, ORIGIN_CONFIGURED, ORIGIN_FALLBACK, ORIGIN_PRIMARY, Origin, VIP_ENABLED,
    VIP_HAS_V4, VIP_HAS_V6, VipConfig, map_names, prog_names,
};

/// XDP verdict of every frame: the data plane rewrites in place and never drops.
const XDP_PASS: u32 = 2;
/// TC verdict of every frame here (`TC_ACT_SHOT` only follows a failed rewrite).
const TC_ACT_OK: u32 = 0;
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const VIP_PORT: u16 = 8080;
const PRIMARY_PORT: u16 = 8081;
const BACKUP_PORT: u16 = 8082;
/// Ports of the configured origins.
const ORIGIN_PORTS: [u16; 2] = [PRIMARY_PORT, BACKUP_PORT];
/// BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
const MIN_FRAME: usize = 14;
/// Longest frame tried: a full 1500-byte MTU frame (test runs of XDP are limited to a page).
const MAX_FRAME: usize = 1514;
/// Extra room in the output buffer.
const OUT_SLACK: usize = 256;

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_HLEN: usize = 20;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// IPv4 more-fragments flag and fragment offset.
const IPV4_MF_OFFSET: u16 = 0x3fff;
/// Offsets inside the TCP header.
const TCP_SPORT: usize = 0;
const TCP_DPORT: usize = 2;
const TCP_FLAGS: usize = 13;
const TCP_CHECK: usize = 16;

/// The loaded object with its maps set up.
struct Dataplane {
    ebpf: Ebpf,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Dataplane {
    fn load() -> Dataplane {
        assert!(is_root(), "the ebpf target needs root (BPF_PROG_TEST_RUN)");
        let mut ebpf = switcher_ctl::loader::size_for_cpus(&mut aya::EbpfLoader::new())
            .load(switcher_ctl::loader::EBPF_OBJECT)
            .expect("load the eBPF object");
        let xdp: &mut Xdp = ebpf
            .program_mut(prog_names::XDP_INGRESS)
            .expect("XDP program in the object")
            .try_into()
            .expect("an XDP program");
        xdp.load().expect("verifier accepts the XDP program");
        for name in [prog_names::TC_INGRESS, prog_names::TC_EGRESS] {
            let tc: &mut SchedClassifier = ebpf
                .program_mut(name)
                .expect("TC program in the object")
                .try_into()
                .expect("a TC program");
            tc.load().expect("verifier accepts the TC program");
        }
        let mut config: Array<_, VipConfig> =
            Array::try_from(ebpf.map_mut(map_names::CONFIG).expect("config map")).expect("array");
        let vip = VipConfig {
            addr_v4: VIP4.octets(),
            addr_v6: VIP6.octets(),
            port_be: VIP_PORT.to_be(),
            flags: VIP_HAS_V4 | VIP_HAS_V6 | VIP_ENABLED,
            ifindex: 0,
            attach_mode: 0,
        };
        config.set(0, vip, 0).expect("write config");
        let mut origins: Array<_, Origin> =
            Array::try_from(ebpf.map_mut(map_names::ORIGINS).expect("origins map")).expect("array");
        for (index, port) in [(ORIGIN_PRIMARY, PRIMARY_PORT), (ORIGIN_BACKUP, BACKUP_PORT)] {
            let origin = Origin {
                addr_v4: [0; 4],
                addr_v6: [0; 16],
                port_be: port.to_be(),
                flags: ORIGIN_CONFIGURED | ORIGIN_FALLBACK,
                generation: 0,
            };
            origins.set(index, origin, 0).expect("write origin");
        }
        // A zeroed lookup table (the state after load) sends every new flow to origin 0, the
        // primary; say so rather than rely on it.
        const _: () = assert!(ORIGIN_PRIMARY == 0);
        Dataplane { ebpf }
    }

    /// Runs program `name` on `frame`: (verdict, output frame), or `None` when the kernel
    /// refuses to build a test packet from the frame (EINVAL).
    fn run(&self, name: &str, frame: &[u8]) -> Option<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + OUT_SLACK];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let program = self.ebpf.program(name).expect("program in the object");
        let result = if name == prog_names::XDP_INGRESS {
            let p: &Xdp = program.try_into().expect("an XDP program");
            p.test_run(opts)
        } else {
            let p: &SchedClassifier = program.try_into().expect("a TC program");
            p.test_run(opts)
        };
        match result {
            Ok(r) => {
                let n = r.data_size_out as usize;
                Some((r.return_value, out[..n].to_vec()))
            }
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EINVAL) =>
            {
                None
            }
            Err(e) => panic!("BPF_PROG_TEST_RUN of {name}: {e}"),
        }
    }

    /// [`Dataplane::run`] for a program that must accept the frame.
    fn must_run(&self, name: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run(name, frame)
            .unwrap_or_else(|| panic!("BPF_PROG_TEST_RUN of {name} refused the frame (EINVAL)"))
    }

    /// [`Dataplane::run`] for a TC program. The kernel builds an skb from the frame and refuses
    /// some that are too short for the protocol their Ethernet header names (seen: IPv6 frames
    /// shorter than an IPv6 header); such a frame cannot be steered, so it must be one this
    /// parser also finds not steerable.
    fn run_tc(&self, name: &str, frame: &[u8]) -> Option<(u32, Vec<u8>)> {
        let result = self.run(name, frame);
        if result.is_none() {
            assert!(
                parse(frame).is_none(),
                "BPF_PROG_TEST_RUN of {name} refused a well-formed TCP frame"
            );
        }
        result
    }
}

/// The data plane, loaded on first use and shared by every input of the process.
fn dataplane() -> &'static Mutex<Dataplane> {
    static DATAPLANE: OnceLock<Mutex<Dataplane>> = OnceLock::new();
    DATAPLANE.get_or_init(|| Mutex::new(Dataplane::load()))
}

/// A TCP segment the data plane may act on, as this independent parser sees it.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Offset of the TCP header.
    l4: usize,
    /// End of the TCP segment (from the IP length; the rest of the frame is padding).
    end: usize,
    v6: bool,
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
    flags: u8,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parses a well-formed, unfragmented IPv4/IPv6 TCP segment without IP options or IPv6
/// extension headers; `None` for anything else (not ours, malformed, truncated, fragment).
fn parse(f: &[u8]) -> Option<Segment> {
    let ethertype = be16(f, 12);
    let (v6, l4, end, saddr, daddr) = match ethertype {
        0x0800 => {
            let ip = f.get(ETH_HLEN..ETH_HLEN + IPV4_HLEN)?;
            if ip[0] != 0x45 || ip[9] != IPPROTO_TCP || be16(ip, 6) & IPV4_MF_OFFSET != 0 {
                return None;
            }
            let tot_len = usize::from(be16(ip, 2));
            if tot_len < IPV4_HLEN + TCP_HLEN || ETH_HLEN + tot_len > f.len() {
                return None;
            }
            let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
            s[..4].copy_from_slice(&ip[12..16]);
            d[..4].copy_from_slice(&ip[16..20]);
            (false, ETH_HLEN + IPV4_HLEN, ETH_HLEN + tot_len, s, d)
        }
        0x86dd => {
            let ip = f.get(ETH_HLEN..ETH_HLEN + IPV6_HLEN)?;
            if ip[0] >> 4 != 6 || ip[6] != IPPROTO_TCP {
                return None;
            }
            let payload = usize::from(be16(ip, 4));
            let l4 = ETH_HLEN + IPV6_HLEN;
            if payload < TCP_HLEN || l4 + payload > f.len() {
                return None;
            }
            let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
            s.copy_from_slice(&ip[8..24]);
            d.copy_from_slice(&ip[24..40]);
            (true, l4, l4 + payload, s, d)
        }
        _ => return None,
    };
    let tcp = &f[l4..l4 + TCP_HLEN];
    if usize::from(tcp[12] >> 4) * 4 < TCP_HLEN {
        return None;
    }
    Some(Segment {
        l4,
        end,
        v6,
        saddr,
        daddr,
        sport: be16(tcp, TCP_SPORT),
        dport: be16(tcp, TCP_DPORT),
        flags: tcp[TCP_FLAGS],
    })
}

/// The VIP address in the segment's family (IPv4 in the first 4 bytes).
fn vip_addr(s: &Segment) -> [u8; 16] {
    let mut a = [0u8; 16];
    if s.v6 {
        a = VIP6.octets();
    } else {
        a[..4].copy_from_slice(&VIP4.octets());
    }
    a
}

/// One's-complement sum (RFC 1071), not folded.
fn sum16(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        acc += u64::from(*b) << 8;
    }
    acc
}

/// Whether the TCP checksum of `s` in frame `f` verifies (pseudo-header + segment).
fn tcp_checksum_ok(f: &[u8], s: &Segment) -> bool {
    let addr_len = if s.v6 { 16 } else { 4 };
    let mut acc = sum16(&s.saddr[..addr_len], 0);
    acc = sum16(&s.daddr[..addr_len], acc);
    acc += u64::from(IPPROTO_TCP) + (s.end - s.l4) as u64;
    acc = sum16(&f[s.l4..s.end], acc);
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc == 0xffff
}

/// Asserts that `out` is `input` with only the 2-byte port at `port_at` and the TCP checksum
/// changed, the port now `port`, and a valid checksum still valid.
fn assert_port_rewrite(
    what: &str,
    input: &[u8],
    out: &[u8],
    s: &Segment,
    port_at: usize,
    port: u16,
) {
    assert_eq!(out.len(), input.len(), "{what}: length changed");
    let port_bytes = s.l4 + port_at..s.l4 + port_at + 2;
    let check_bytes = s.l4 + TCP_CHECK..s.l4 + TCP_CHECK + 2;
    for (i, (a, b)) in input.iter().zip(out).enumerate() {
        if !port_bytes.contains(&i) && !check_bytes.contains(&i) {
            assert_eq!(a, b, "{what}: byte {i} changed");
        }
    }
    assert_eq!(be16(out, port_bytes.start), port, "{what}: wrong port");
    if tcp_checksum_ok(input, s) {
        assert!(tcp_checksum_ok(out, s), "{what}: checksum no longer valid");
    }
}

/// Checks one ingress program's result; returns the origin port when it steered the frame.
fn check_request(what: &str, frame: &[u8], verdict: u32, out: &[u8], pass: u32) -> Option<u16> {
    assert_eq!(verdict, pass, "{what}: verdict");
    let to_vip = parse(frame).filter(|s| s.dport == VIP_PORT && s.daddr == vip_addr(s));
    let Some(s) = to_vip else {
        assert_eq!(out, frame, "{what}: a frame not for the VIP changed");
        return None;
    };
    let syn = s.flags & TCP_SYN != 0 && s.flags & TCP_ACK == 0;
    if out == frame {
        assert!(!syn, "{what}: a SYN to the VIP passed unchanged");
        return None;
    }
    let port = be16(out, s.l4 + TCP_DPORT);
    assert!(
        ORIGIN_PORTS.contains(&port),
        "{what}: steered to port {port}"
    );
    if syn {
        assert_eq!(
            port, PRIMARY_PORT,
            "{what}: a SYN not steered to the active origin"
        );
    }
    assert_port_rewrite(what, frame, out, &s, TCP_DPORT, port);
    Some(port)
}

/// The reply to `frame` (addresses and ports swapped; the checksum stays as valid as it was,
/// since both sums are symmetric).
fn mirror(frame: &[u8], s: &Segment) -> Vec<u8> {
    let mut m = frame.to_vec();
    let (src, len) = if s.v6 {
        (ETH_HLEN + 8, 16)
    } else {
        (ETH_HLEN + 12, 4)
    };
    let (saddr, daddr) = (&frame[src..src + len], &frame[src + len..src + 2 * len]);
    m[src..src + len].copy_from_slice(daddr);
    m[src + len..src + 2 * len].copy_from_slice(saddr);
    m[s.l4..s.l4 + 2].copy_from_slice(&frame[s.l4 + 2..s.l4 + 4]);
    m[s.l4 + 2..s.l4 + 4].copy_from_slice(&frame[s.l4..s.l4 + 2]);
    m
}

/// The target body.
pub fn run(data: &[u8]) {
    if data.len() < MIN_FRAME {
        return;
    }
    let frame = &data[..data.len().min(MAX_FRAME)];
    let dp = dataplane()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());

    let (verdict, xdp_out) = dp.must_run(prog_names::XDP_INGRESS, frame);
    let steered = check_request("xdp", frame, verdict, &xdp_out, XDP_PASS);
    if let Some((verdict, tc_out)) = dp.run_tc(prog_names::TC_INGRESS, frame) {
        check_request("tc ingress", frame, verdict, &tc_out, TC_ACT_OK);
    }

    // Egress on the frame itself: only a segment from an origin's port at the VIP's address
    // (a reply of some flow) may change, and only its source port, to the VIP's.
    if let Some((verdict, out)) = dp.run_tc(prog_names::TC_EGRESS, frame) {
        assert_eq!(verdict, TC_ACT_OK, "tc egress: verdict");
        let reply =
            parse(frame).filter(|s| ORIGIN_PORTS.contains(&s.sport) && s.saddr == vip_addr(s));
        match reply {
            Some(s) if out != frame => {
                assert_port_rewrite("tc egress", frame, &out, &s, TCP_SPORT, VIP_PORT)
            }
            _ => assert_eq!(out, frame, "tc egress: a frame that is no reply changed"),
        }
    }

    // The reply of a steered request: its flow is tracked, so egress must restore the VIP.
    if steered.is_some() {
        let s = parse(&xdp_out).expect("a steered frame still parses");
        let reply = mirror(&xdp_out, &s);
        let rs = parse(&reply).expect("a mirrored frame parses");
        let (verdict, out) = dp.must_run(prog_names::TC_EGRESS, &reply);
        assert_eq!(verdict, TC_ACT_OK, "tc egress (reply): verdict");
        assert_ne!(
            out, reply,
            "tc egress: the reply of a steered request was not rewritten"
        );
        assert_port_rewrite("tc egress (reply)", &reply, &out, &rs, TCP_SPORT, VIP_PORT);
    }
}

#[cfg(test)]
mod tests {
    //! The rule checker itself, on hand-made frames (no kernel involved).
    use super::*;

    /// IPv4 SYN 10.1.1.1:40000 -> VIP:8080 with a valid checksum (as `fuzz/seeds/packets.py`).
    fn syn_to_vip() -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        f.extend_from_slice(&[0x45, 0, 0, 40, 0, 1, 0, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&[10, 1, 1, 1, 10, 0, 0, 1]);
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&VIP_PORT.to_be_bytes());
        f.extend_from_slice(&[
            0, 0, 3, 0xe8, 0, 0, 0, 0, 0x50, TCP_SYN, 0xff, 0xff, 0, 0, 0, 0,
        ]);
        let s = parse(&f).expect("parses");
        // Fill the checksum so that the segment verifies.
        let mut acc = sum16(&s.saddr[..4], 0);
        acc = sum16(&s.daddr[..4], acc) + u64::from(IPPROTO_TCP) + (s.end - s.l4) as u64;
        acc = sum16(&f[s.l4..s.end], acc);
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        f[s.l4 + TCP_CHECK..s.l4 + TCP_CHECK + 2].copy_from_slice(&(!(acc as u16)).to_be_bytes());
        f
    }

    /// `frame` with its destination port set to `port`, checksum adjusted (RFC 1624).
    fn steer(frame: &[u8], port: u16) -> Vec<u8> {
        let s = parse(frame).expect("parses");
        let mut out = frame.to_vec();
        let old_check = be16(frame, s.l4 + TCP_CHECK);
        let mut acc = u64::from(!old_check) + u64::from(!s.dport) + u64::from(port);
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        out[s.l4 + TCP_DPORT..s.l4 + TCP_DPORT + 2].copy_from_slice(&port.to_be_bytes());
        out[s.l4 + TCP_CHECK..s.l4 + TCP_CHECK + 2].copy_from_slice(&(!(acc as u16)).to_be_bytes());
        out
    }

    #[test]
    fn a_correct_rewrite_passes_the_rules() {
        let f = syn_to_vip();
        let s = parse(&f).expect("a well-formed SYN parses");
        assert!(tcp_checksum_ok(&f, &s));
        let out = steer(&f, PRIMARY_PORT);
        assert_eq!(
            check_request("t", &f, XDP_PASS, &out, XDP_PASS),
            Some(PRIMARY_PORT)
        );
        let reply = mirror(&out, &s);
        let rs = parse(&reply).expect("mirror parses");
        assert!(
            tcp_checksum_ok(&reply, &rs),
            "a mirror keeps a valid checksum"
        );
        assert_eq!((rs.sport, rs.dport), (PRIMARY_PORT, 40000));
    }

    #[test]
    #[should_panic(expected = "a SYN to the VIP passed unchanged")]
    fn an_unsteered_syn_breaks_the_rules() {
        let f = syn_to_vip();
        check_request("t", &f, XDP_PASS, &f, XDP_PASS);
    }

    #[test]
    #[should_panic(expected = "checksum no longer valid")]
    fn a_stale_checksum_breaks_the_rules() {
        let f = syn_to_vip();
        let mut out = f.clone();
        out[34 + TCP_DPORT..34 + TCP_DPORT + 2].copy_from_slice(&PRIMARY_PORT.to_be_bytes());
        check_request("t", &f, XDP_PASS, &out, XDP_PASS);
    }

    #[test]
    #[should_panic(expected = "a frame not for the VIP changed")]
    fn touching_a_malformed_frame_breaks_the_rules() {
        let mut f = syn_to_vip();
        f[16..18].copy_from_slice(&1000u16.to_be_bytes()); // total length past the frame
        assert!(parse(&f).is_none());
        let out = steer(&syn_to_vip(), PRIMARY_PORT);
        check_request("t", &f, XDP_PASS, &out, XDP_PASS);
    }
}

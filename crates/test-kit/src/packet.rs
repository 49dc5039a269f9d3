//! Test packet builder: Ethernet + IPv4/IPv6 + TCP/UDP/ICMP with checksums computed from
//! scratch, and a verifier that recomputes them on a packet the data plane produced.

use std::net::IpAddr;

/// One's-complement sum of `data` (RFC 1071), not yet inverted.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [b] = chunks.remainder() {
        acc += (*b as u32) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum16(data, 0))
}

fn pseudo_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut acc = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = sum16(&s.octets(), acc);
            acc = sum16(&d.octets(), acc);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            acc = sum16(&s.octets(), acc);
            acc = sum16(&d.octets(), acc);
        }
        _ => panic!("mixed families"),
    }
    acc + proto as u32 + len as u32
}

/// L4 checksum over pseudo-header + segment (checksum field must be zero in `seg`).
pub fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, seg: &[u8]) -> u16 {
    !fold(sum16(seg, pseudo_sum(src, dst, proto, seg.len())))
}

/// TCP flag SYN.
pub const SYN: u8 = 0x02;
/// TCP flag ACK.
pub const ACK: u8 = 0x10;
/// TCP flag PSH.
pub const PSH: u8 = 0x08;
/// TCP flag RST.
pub const RST: u8 = 0x04;
/// TCP flag FIN.
pub const FIN: u8 = 0x01;

/// Sequence number [`Pkt::tcp`] gives every segment unless told otherwise.
pub const DEFAULT_SEQ: u32 = 0x0102_0304;
/// Acknowledgment number [`Pkt::tcp`] gives every segment with ACK unless told otherwise.
pub const DEFAULT_ACK: u32 = 0x0a0b_0c0d;

/// IP protocol number of TCP.
pub const TCP: u8 = 6;
/// IP protocol number of UDP.
pub const UDP: u8 = 17;
/// IP protocol number of ICMP.
pub const ICMP: u8 = 1;

/// A packet description; `build()` makes the bytes.
#[derive(Clone, Debug)]
pub struct Pkt {
    /// Source address (its family is the packet's).
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol ([`TCP`], [`UDP`], [`ICMP`]).
    pub proto: u8,
    /// TCP flags.
    pub flags: u8,
    /// L4 payload.
    pub payload: Vec<u8>,
    /// IPv4 options bytes (multiple of 4).
    pub ip_options: Vec<u8>,
    /// IPv4 flags+fragment offset field (host order).
    pub frag: u16,
    /// IPv6: insert an extension header of this type before the L4 header.
    pub v6_ext: Option<u8>,
    /// TCP sequence number.
    pub seq: u32,
    /// TCP acknowledgment number (written only when the ACK flag is set).
    pub ack: u32,
}

impl Pkt {
    /// A TCP segment with `flags` and the default sequence numbers.
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Pkt {
        Pkt {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport,
            proto: TCP,
            flags,
            payload: Vec::new(),
            ip_options: Vec::new(),
            frag: 0,
            v6_ext: None,
            seq: DEFAULT_SEQ,
            ack: DEFAULT_ACK,
        }
    }
    /// With sequence number `seq`.
    pub fn with_seq(mut self, seq: u32) -> Pkt {
        self.seq = seq;
        self
    }
    /// With acknowledgment number `ack`.
    pub fn with_ack(mut self, ack: u32) -> Pkt {
        self.ack = ack;
        self
    }
    /// With payload `p`.
    pub fn with_payload(mut self, p: &[u8]) -> Pkt {
        self.payload = p.to_vec();
        self
    }
    /// With IP protocol `proto` (the L4 header follows it).
    pub fn proto(mut self, proto: u8) -> Pkt {
        self.proto = proto;
        self
    }

    /// L4 segment bytes with a correct checksum.
    fn l4(&self) -> Vec<u8> {
        let mut seg = match self.proto {
            TCP => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&self.sport.to_be_bytes());
                h[2..4].copy_from_slice(&self.dport.to_be_bytes());
                h[4..8].copy_from_slice(&self.seq.to_be_bytes());
                h[8..12].copy_from_slice(
                    &(if self.flags & ACK != 0 { self.ack } else { 0 }).to_be_bytes(),
                );
                h[12] = 5 << 4;
                h[13] = self.flags;
                h[14..16].copy_from_slice(&64240u16.to_be_bytes());
                h
            }
            UDP => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&self.sport.to_be_bytes());
                h[2..4].copy_from_slice(&self.dport.to_be_bytes());
                h[4..6].copy_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                h
            }
            _ => vec![8, 0, 0, 0, 0x12, 0x34, 0, 1], // ICMP echo request
        };
        seg.extend_from_slice(&self.payload);
        match self.proto {
            TCP => {
                let c = l4_checksum(self.src, self.dst, TCP, &seg);
                seg[16..18].copy_from_slice(&c.to_be_bytes());
            }
            UDP => {
                let c = l4_checksum(self.src, self.dst, UDP, &seg);
                seg[6..8].copy_from_slice(&c.to_be_bytes());
            }
            _ => {
                let c = checksum(&seg);
                seg[2..4].copy_from_slice(&c.to_be_bytes());
            }
        }
        seg
    }

    /// The whole frame.
    pub fn build(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        let l4 = self.l4();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let ihl = 20 + self.ip_options.len();
                let mut ip = vec![0u8; 20];
                ip[0] = 0x40 | (ihl / 4) as u8;
                ip[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
                ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
                ip[6..8].copy_from_slice(&self.frag.to_be_bytes());
                ip[8] = 64;
                ip[9] = self.proto;
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                ip.extend_from_slice(&self.ip_options);
                let c = checksum(&ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86DDu16.to_be_bytes());
                let ext_len = if self.v6_ext.is_some() { 8 } else { 0 };
                let mut ip = vec![0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&((ext_len + l4.len()) as u16).to_be_bytes());
                ip[6] = self.v6_ext.unwrap_or(self.proto);
                ip[7] = 64;
                ip[8..24].copy_from_slice(&s.octets());
                ip[24..40].copy_from_slice(&d.octets());
                f.extend_from_slice(&ip);
                if self.v6_ext.is_some() {
                    // Generic 8-byte extension header: next header, length 0, padding.
                    f.extend_from_slice(&[self.proto, 0, 0, 0, 0, 0, 0, 0]);
                }
            }
            _ => panic!("mixed families"),
        }
        f.extend_from_slice(&l4);
        f
    }
}

/// Recomputes every checksum of a TCP frame from scratch; returns an error naming the first
/// wrong one.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let (src, dst, l4): (IpAddr, IpAddr, &[u8]) = match ethertype {
        0x0800 => {
            let ip = &frame[14..];
            let ihl = (ip[0] & 0xf) as usize * 4;
            if checksum(&ip[..ihl]) != 0 {
                return Err("IPv4 header checksum".into());
            }
            let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            let s: [u8; 4] = ip[12..16].try_into().unwrap();
            let d: [u8; 4] = ip[16..20].try_into().unwrap();
            (s.into(), d.into(), &ip[ihl..tot])
        }
        0x86DD => {
            let ip = &frame[14..];
            let plen = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            let s: [u8; 16] = ip[8..24].try_into().unwrap();
            let d: [u8; 16] = ip[24..40].try_into().unwrap();
            (s.into(), d.into(), &ip[40..40 + plen])
        }
        other => return Err(format!("not IP: {other:#x}")),
    };
    // Summing the segment with its checksum in place gives 0xffff (i.e. ~0 == 0) if right.
    if fold(sum16(l4, pseudo_sum(src, dst, TCP, l4.len()))) != 0xffff {
        return Err("TCP checksum".into());
    }
    Ok(())
}

/// Sends `frames` (Ethernet frames as the test packet builder makes them; the Ethernet header
/// is dropped) as raw IPv4 packets with the addresses they carry, spoofed or not, from the
/// calling thread's namespace. Returns how many the kernel took.
pub fn send_raw_v4(frames: impl IntoIterator<Item = Vec<u8>>) -> usize {
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let mut sent = 0;
    for frame in frames {
        let ip = &frame[14..];
        let mut dst: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        dst.sin_family = libc::AF_INET as libc::sa_family_t;
        dst.sin_addr.s_addr = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
        // SAFETY: valid buffer and address of the stated sizes. IPPROTO_RAW implies
        // IP_HDRINCL: the kernel sends the header as given.
        let rc = unsafe {
            libc::sendto(
                fd,
                ip.as_ptr().cast(),
                ip.len(),
                0,
                (&dst as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc == ip.len() as isize {
            sent += 1;
        }
    }
    // SAFETY: fd opened above.
    unsafe { libc::close(fd) };
    sent
}

//! Announcing the VIP to the network: with several edges behind a router doing ECMP, each
//! edge's BGP speaker (FRR bgpd, or BIRD) announces the VIP (/32, and /128 for the IPv6
//! address of a dual-stack VIP: one [`Announcer`] per address), and switcher-ctl decides
//! whether it does: only while the data plane is attached and at least one origin is healthy;
//! withdrawn when no origin is, and on shutdown.
//!
//! Through the speaker's supported interface, without touching its configuration: switcher-ctl
//! installs a blackhole route to VIP/32 (VIP/128) in the main routing table with its own
//! protocol number ([`RTPROT_SWITCHER`]), and the speaker redistributes kernel routes matching
//! the VIP (FRR: `redistribute kernel route-map <map matching VIP/32>` in the address family of
//! the VIP; BIRD: a `kernel` protocol with
//! `learn` and an export filter). Removing the route withdraws the announcement. A route is
//! one netlink message (CAP_NET_ADMIN, which switcher-ctl keeps after dropping privileges),
//! and zebra sees it at once. The blackhole never carries a viewer's packet in the normal case:
//! XDP takes packets for the VIP before routing, and a VIP address configured on the host (the
//! single-host setup) is in the local table, which the kernel consults first.
//!
//! A crashed switcher-ctl leaves the route in place while its pinned data plane keeps steering;
//! a crashed or killed speaker is taken out by the router's BFD (or hold timer).

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

/// Routing protocol number of the announcement route (`ip route show proto 77`). Any number
/// the kernel does not use and the routing daemons do not claim (they use 11 and 186..=196).
pub const RTPROT_SWITCHER: u8 = 77;

const NLMSG_HDRLEN: usize = 16;
const RTMSG_LEN: usize = 12;
const RTA_DST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const RT_TABLE_MAIN: u8 = 254;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_BLACKHOLE: u8 = 6;

/// Announces and withdraws one VIP address by its route, remembering which it last did so
/// that each change is logged once.
pub struct Announcer {
    vip: IpAddr,
    announced: Option<bool>,
}

impl Announcer {
    /// An announcer for `vip` (IPv4 or IPv6); nothing is done until [`Announcer::set`].
    pub fn new(vip: IpAddr) -> Announcer {
        Announcer {
            vip,
            announced: None,
        }
    }

    /// Announces (`true`) or withdraws (`false`) the VIP, if that changes anything. Errors are
    /// logged and retried by the next call.
    pub fn set(&mut self, announce: bool, reason: &str) {
        if self.announced == Some(announce) {
            return;
        }
        match route(self.vip, announce) {
            Ok(()) => {
                tracing::info!(vip = %self.vip, announce, reason, "VIP announcement changed");
                self.announced = Some(announce);
            }
            Err(e) => {
                tracing::error!(vip = %self.vip, announce, error = %e, "changing the VIP route failed")
            }
        }
    }

    /// Whether the VIP is announced, as far as this announcer knows.
    pub fn announced(&self) -> bool {
        self.announced == Some(true)
    }
}

/// Encodes the RTM_NEWROUTE (replace) or RTM_DELROUTE message of the blackhole route to
/// `vip`/32 (IPv4) or `vip`/128 (IPv6) with protocol [`RTPROT_SWITCHER`] (rtnetlink(7)).
pub fn encode_route(vip: IpAddr, add: bool, seq: u32) -> Vec<u8> {
    let (family, prefix, addr) = match vip {
        IpAddr::V4(a) => (libc::AF_INET, 32, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6, 128, a.octets().to_vec()),
    };
    let rta_len = 4 + addr.len();
    let len = NLMSG_HDRLEN + RTMSG_LEN + rta_len;
    let (ty, flags) = if add {
        (
            libc::RTM_NEWROUTE,
            libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE,
        )
    } else {
        (libc::RTM_DELROUTE, libc::NLM_F_REQUEST | libc::NLM_F_ACK)
    };
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(&(flags as u16).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    b.extend_from_slice(&[
        family as u8,
        prefix,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_SWITCHER,
        RT_SCOPE_UNIVERSE,
        RTN_BLACKHOLE,
    ]);
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&(rta_len as u16).to_ne_bytes());
    b.extend_from_slice(&RTA_DST.to_ne_bytes());
    b.extend_from_slice(&addr);
    b
}

/// Adds (replacing) or deletes the announcement route; deleting a route that is not there
/// succeeds.
pub fn route(vip: IpAddr, add: bool) -> io::Result<()> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let msg = encode_route(vip, add, 1);
    // SAFETY: buffer valid for its length; the kernel is the default destination.
    let sent = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 1024];
    // SAFETY: buffer valid for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    match ack_errno(&buf[..n as usize]) {
        Some(0) => Ok(()),
        Some(e) if !add && e == -libc::ESRCH => Ok(()),
        Some(e) => Err(io::Error::from_raw_os_error(-e)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no netlink acknowledgment",
        )),
    }
}

/// The error number of a netlink acknowledgment (0: success), if `reply` starts with one.
fn ack_errno(reply: &[u8]) -> Option<i32> {
    if reply.len() < NLMSG_HDRLEN + 4 {
        return None;
    }
    let ty = u16::from_ne_bytes([reply[4], reply[5]]);
    if ty != NLMSG_ERROR {
        return None;
    }
    Some(i32::from_ne_bytes([
        reply[16], reply[17], reply[18], reply[19],
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn route_message_matches_the_kernel_layout() {
        let m = encode_route(Ipv4Addr::new(10, 99, 0, 1).into(), true, 7);
        assert_eq!(m.len(), 16 + 12 + 8);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 36);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), libc::RTM_NEWROUTE);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        // family, /32, main table, our protocol, blackhole
        assert_eq!(m[16], libc::AF_INET as u8);
        assert_eq!(m[17], 32);
        assert_eq!(m[20], RT_TABLE_MAIN);
        assert_eq!(m[21], RTPROT_SWITCHER);
        assert_eq!(m[23], RTN_BLACKHOLE);
        assert_eq!(&m[32..36], &[10, 99, 0, 1]);
        let del = encode_route(Ipv4Addr::new(10, 99, 0, 1).into(), false, 8);
        assert_eq!(u16::from_ne_bytes([del[4], del[5]]), libc::RTM_DELROUTE);
        let flags = u16::from_ne_bytes([del[6], del[7]]);
        assert_eq!(flags & libc::NLM_F_CREATE as u16, 0);
    }

    #[test]
    fn ipv6_route_message_is_a_slash_128() {
        let vip: Ipv6Addr = "fd00:99::1".parse().unwrap();
        let m = encode_route(vip.into(), true, 9);
        assert_eq!(m.len(), 16 + 12 + 4 + 16);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 48);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), libc::RTM_NEWROUTE);
        assert_eq!(m[16], libc::AF_INET6 as u8);
        assert_eq!(m[17], 128);
        assert_eq!(m[20], RT_TABLE_MAIN);
        assert_eq!(m[21], RTPROT_SWITCHER);
        assert_eq!(m[23], RTN_BLACKHOLE);
        // rtattr: length 20, RTA_DST, the address.
        assert_eq!(u16::from_ne_bytes([m[28], m[29]]), 20);
        assert_eq!(u16::from_ne_bytes([m[30], m[31]]), RTA_DST);
        assert_eq!(&m[32..48], &vip.octets());
    }

    #[test]
    fn acknowledgments_are_decoded() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack[16..20].copy_from_slice(&(-libc::ESRCH).to_ne_bytes());
        assert_eq!(ack_errno(&ack), Some(-libc::ESRCH));
        ack[4..6].copy_from_slice(&16u16.to_ne_bytes());
        assert_eq!(ack_errno(&ack), None);
        assert_eq!(ack_errno(&ack[..10]), None);
    }
}

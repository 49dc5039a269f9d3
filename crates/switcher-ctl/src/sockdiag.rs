//! Resetting viewer connections on this host: the kernel's `sock_diag` netlink interface
//! (`NETLINK_SOCK_DIAG`), dump (`SOCK_DIAG_BY_FAMILY`) and destroy (`SOCK_DESTROY`,
//! `CONFIG_INET_DIAG_DESTROY`, CAP_NET_ADMIN).
//!
//! Why: a viewer whose request the retired origin's kernel has already ACKed sends nothing
//! more; it waits for an answer that a hung origin never sends. Removing its flow from the
//! conntrack map changes nothing for a connection that sends no packet. Destroying the
//! origin-side socket makes the kernel abort it (`tcp_abort`: an RST to the peer, `ECONNABORTED`
//! to the owner), whatever the origin process is doing, stopped or deadlocked included. The
//! RST leaves through the TC egress program while the flow is still in the map, so the viewer
//! sees it from the VIP and reconnects through the VIP to the healthy origin
//! (docs/ARCHITECTURE.md, "Stranded connections").
//!
//! Why two steps, dump then destroy by cookie: an exact `SOCK_DESTROY` lookup
//! (`inet_diag_find_one_icsk`) falls back to the *listening* socket when the connection is
//! already gone, and destroying that would kill the origin's listener. Destroying only sockets
//! just seen in a dump, each by its 64-bit cookie, can never hit another socket.
//!
//! Why by hand: the rust-netlink crates model `SOCK_DIAG_BY_FAMILY` dumps but not
//! `SOCK_DESTROY`; the whole protocol here is two fixed-size C structs (`nlmsghdr` +
//! `inet_diag_req_v2`, 72 bytes) and the reply header, encoded and decoded by the pure
//! functions below and unit-tested against kernel layouts. The I/O part is one netlink socket.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `NETLINK_SOCK_DIAG` protocol number.
const NETLINK_SOCK_DIAG: i32 = 4;
/// Message type: dump sockets of one family (`linux/sock_diag.h`).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// Message type: destroy one socket (`linux/sock_diag.h`).
const SOCK_DESTROY: u16 = 21;
/// `nlmsghdr` flags.
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
/// Netlink control message types.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// Sizes of the C structs (`nlmsghdr`, `inet_diag_req_v2`, `inet_diag_msg` head).
const NLMSG_HDR_LEN: usize = 16;
const REQ_V2_LEN: usize = 56;
/// `inet_diag_msg`: family, state, timer, retrans (4), id (48), expires, rqueue, wqueue, uid,
/// inode (20).
const DIAG_MSG_LEN: usize = 72;
/// TCP states (`include/net/tcp_states.h`) excluded from aborts: LISTEN (10) is the origin's
/// listener, never a viewer; TIME_WAIT (6) and CLOSE (7) have nothing left to reset.
const TCP_LISTEN: u8 = 10;
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE: u8 = 7;
/// State mask for the dump: every state but LISTEN, TIME_WAIT and CLOSE.
const DUMP_STATES: u32 = !((1 << TCP_LISTEN) | (1 << TCP_TIME_WAIT) | (1 << TCP_CLOSE));
/// Receive buffer for dump replies: the kernel fills up to a page-sized skb per read, bigger
/// buffers just take more messages per syscall.
const RECV_BUF: usize = 64 * 1024;
/// Destroy requests per `send`: 72 bytes each, well under the socket's send buffer.
const DESTROY_BATCH: usize = 512;

/// `idiag_ext` bit asking for `INET_DIAG_INFO` (a `struct tcp_info`) with each socket.
const EXT_INFO: u8 = 1 << (INET_DIAG_INFO - 1);
/// Attribute type of `struct tcp_info` in a dump reply.
const INET_DIAG_INFO: u16 = 2;
/// Offsets in `struct tcp_info` (`include/uapi/linux/tcp.h`), stable kernel ABI.
const TI_UNACKED: usize = 24;
const TI_LAST_DATA_SENT: usize = 44;
const TI_LAST_ACK_RECV: usize = 56;
const TI_NOTSENT_BYTES: usize = 144;

/// What `struct tcp_info` says about a response in flight on a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Progress {
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Bytes written by the owner and not yet sent (`None` on kernels without the field).
    pub notsent: Option<u32>,
    /// Milliseconds since new data was last sent.
    pub last_data_sent_ms: u32,
    /// Milliseconds since the peer last acknowledged something.
    pub last_ack_recv_ms: u32,
}

impl Progress {
    /// A response is being delivered and the viewer is taking it: data waits to be sent or
    /// acknowledged, and the viewer acknowledged something within `stall_ms`. An idle
    /// keep-alive connection or a request nobody answers has nothing pending; a viewer we can
    /// no longer reach (partition) stops acknowledging. The time since new data was sent is
    /// not used: a sender that lost packets waits out retransmission timeouts (200 ms,
    /// doubling) without sending new data and is still delivering.
    pub fn delivering(&self, stall_ms: u32) -> bool {
        let pending = self.unacked > 0 || self.notsent.is_some_and(|n| n > 0);
        pending && self.last_ack_recv_ms < stall_ms
    }
}

/// One TCP socket of this host, as a dump reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpSock {
    /// `AF_INET` or `AF_INET6` (an IPv6 socket may carry IPv4-mapped addresses).
    pub family: u8,
    /// TCP state (`TCP_ESTABLISHED` = 1, ...).
    pub state: u8,
    /// The socket's own address and port (the origin side).
    pub local: SocketAddr,
    /// The peer's address and port (the viewer).
    pub remote: SocketAddr,
    /// The kernel's socket cookie: names this socket and no other, ever.
    pub cookie: u64,
    /// Delivery state from `tcp_info`, when the dump carried it.
    pub progress: Option<Progress>,
}

impl TcpSock {
    /// The peer as the data plane keys flows: IPv4-mapped IPv6 peers as plain IPv4.
    pub fn remote_canonical(&self) -> SocketAddr {
        SocketAddr::new(self.remote.ip().to_canonical(), self.remote.port())
    }

    /// The local address, IPv4-mapped IPv6 as plain IPv4.
    pub fn local_canonical(&self) -> SocketAddr {
        SocketAddr::new(self.local.ip().to_canonical(), self.local.port())
    }
}

fn put_u16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_ne_bytes());
}
fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_ne_bytes());
}

/// 16 bytes of an `idiag_src`/`idiag_dst` field: IPv4 in the first 4, IPv6 (or mapped) in all.
fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&v4.octets());
            out
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Appends one `nlmsghdr` + `inet_diag_req_v2` (TCP) to `buf`.
fn encode_req(
    buf: &mut Vec<u8>,
    msg_type: u16,
    flags: u16,
    seq: u32,
    family: u8,
    states: u32,
    sock: Option<&TcpSock>,
) {
    put_u32(buf, (NLMSG_HDR_LEN + REQ_V2_LEN) as u32);
    put_u16(buf, msg_type);
    put_u16(buf, flags);
    put_u32(buf, seq);
    put_u32(buf, 0); // nlmsg_pid: the kernel
    buf.push(family);
    buf.push(libc::IPPROTO_TCP as u8);
    // idiag_ext: a dump asks for tcp_info; a destroy needs nothing.
    buf.push(if msg_type == SOCK_DIAG_BY_FAMILY {
        EXT_INFO
    } else {
        0
    });
    buf.push(0); // pad
    put_u32(buf, states);
    // inet_diag_sockid: ports and addresses in network order, interface, cookie.
    let (sport, dport, src, dst, cookie) = match sock {
        Some(s) => (
            s.local.port(),
            s.remote.port(),
            addr_bytes(s.local.ip()),
            addr_bytes(s.remote.ip()),
            s.cookie,
        ),
        // A dump's id is unused: all zero, "no cookie".
        None => (0, 0, [0; 16], [0; 16], u64::MAX),
    };
    buf.extend_from_slice(&sport.to_be_bytes());
    buf.extend_from_slice(&dport.to_be_bytes());
    buf.extend_from_slice(&src);
    buf.extend_from_slice(&dst);
    put_u32(buf, 0); // idiag_if
    // idiag_cookie[2]: the kernel joins them as cookie[0] | cookie[1] << 32.
    put_u32(buf, cookie as u32);
    put_u32(buf, (cookie >> 32) as u32);
}

/// A dump request for every TCP socket of `family` not in LISTEN/TIME_WAIT/CLOSE.
pub fn encode_dump(family: u8, seq: u32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(NLMSG_HDR_LEN + REQ_V2_LEN);
    encode_req(
        &mut buf,
        SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family,
        DUMP_STATES,
        None,
    );
    buf
}

/// Appends a destroy request for exactly `sock` (by tuple and cookie), acked by the kernel.
pub fn encode_destroy(buf: &mut Vec<u8>, sock: &TcpSock, seq: u32) {
    encode_req(
        buf,
        SOCK_DESTROY,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        sock.family,
        u32::MAX,
        Some(sock),
    );
}

/// One decoded netlink message of a reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// A socket of a dump.
    Sock(TcpSock),
    /// End of a dump.
    Done,
    /// An ack (`errno` 0) or an error for request `seq`; `errno` is positive.
    Ack {
        /// Sequence number of the request it answers.
        seq: u32,
        /// 0 for success, else the positive errno.
        errno: i32,
    },
    /// Another message type, skipped.
    Other(u16),
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn decode_addr(family: u8, raw: &[u8], port: u16) -> Option<SocketAddr> {
    let ip = if i32::from(family) == libc::AF_INET {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        let octets: [u8; 16] = raw.get(..16)?.try_into().ok()?;
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    Some(SocketAddr::new(ip, port))
}

/// The `INET_DIAG_INFO` attribute among a dump message's attributes (`struct rtattr`: length
/// and type, then the payload, 4-byte aligned), decoded.
fn decode_progress(mut attrs: &[u8]) -> Option<Progress> {
    while attrs.len() >= 4 {
        let len = usize::from(u16_at(attrs, 0)?);
        let kind = u16_at(attrs, 2)?;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == INET_DIAG_INFO {
            let info = &attrs[4..len];
            return Some(Progress {
                unacked: u32_at(info, TI_UNACKED)?,
                notsent: u32_at(info, TI_NOTSENT_BYTES),
                last_data_sent_ms: u32_at(info, TI_LAST_DATA_SENT)?,
                last_ack_recv_ms: u32_at(info, TI_LAST_ACK_RECV)?,
            });
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or(&[]);
    }
    None
}

/// Decodes every netlink message in one datagram. A truncated or malformed message ends the
/// datagram (the kernel never sends one; a bound, not a panic).
pub fn decode(datagram: &[u8]) -> Vec<Reply> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDR_LEN <= datagram.len() {
        let Some(len) = u32_at(datagram, off).map(|l| l as usize) else {
            break;
        };
        if len < NLMSG_HDR_LEN || off + len > datagram.len() {
            break;
        }
        let msg = &datagram[off..off + len];
        let kind = u16_at(msg, 4).unwrap_or(0);
        let body = &msg[NLMSG_HDR_LEN..];
        let reply = match kind {
            NLMSG_DONE => Reply::Done,
            NLMSG_ERROR => {
                // nlmsgerr: int error (negative errno), then the request's header.
                let err = u32_at(body, 0).map_or(0, |e| e as i32);
                let seq = u32_at(body, 4 + 8).unwrap_or(0);
                Reply::Ack { seq, errno: -err }
            }
            SOCK_DIAG_BY_FAMILY if body.len() >= DIAG_MSG_LEN => {
                let family = body[0];
                let state = body[1];
                let sport = u16::from_be_bytes([body[4], body[5]]);
                let dport = u16::from_be_bytes([body[6], body[7]]);
                let local = decode_addr(family, &body[8..24], sport);
                let remote = decode_addr(family, &body[24..40], dport);
                let cookie = u64::from(u32_at(body, 44).unwrap_or(0))
                    | (u64::from(u32_at(body, 48).unwrap_or(0)) << 32);
                let progress = decode_progress(&body[DIAG_MSG_LEN..]);
                match (local, remote) {
                    (Some(local), Some(remote)) => Reply::Sock(TcpSock {
                        family,
                        state,
                        local,
                        remote,
                        cookie,
                        progress,
                    }),
                    _ => Reply::Other(kind),
                }
            }
            other => Reply::Other(other),
        };
        out.push(reply);
        // Messages are 4-byte aligned (NLMSG_ALIGN).
        off += (len + 3) & !3;
    }
    out
}

/// The sockets to reset for one origin: those whose local end is `origin` (its address and
/// port, IPv4-mapped or not) and whose peer is one of `viewers` (the clients of the flows
/// pinned to that origin, as the data plane keys them). Everything else is left alone: other
/// origins' connections, other ports, and connections to the origin that did not come through
/// the VIP (a probe, a monitoring check), whose peers are not in the flow map.
pub fn select_viewer_sockets(
    socks: &[TcpSock],
    origin: &[SocketAddr],
    viewers: &std::collections::HashSet<SocketAddr>,
) -> Vec<TcpSock> {
    socks
        .iter()
        .filter(|s| {
            s.state != TCP_LISTEN
                && origin.contains(&s.local_canonical())
                && viewers.contains(&s.remote_canonical())
        })
        .copied()
        .collect()
}

/// A `NETLINK_SOCK_DIAG` socket of this network namespace.
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
}

impl SockDiag {
    /// Opens the socket. Needs no privilege; destroying needs CAP_NET_ADMIN.
    pub fn open() -> io::Result<SockDiag> {
        // SAFETY: plain socket(2) call; the result is checked before it is owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A bounded wait: the kernel answers at once, but a reply lost for any reason must
        // not hang the control loop.
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: valid fd, option value of the documented type and size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        Ok(SockDiag { fd, seq: 1 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, buf: &[u8]) -> io::Result<()> {
        // SAFETY: valid fd and buffer; destination 0 (the kernel) is the socket's default.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: valid fd and writable buffer of the given length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Every TCP socket of this namespace in a state that can be reset (both families).
    pub fn dump(&mut self) -> io::Result<Vec<TcpSock>> {
        let mut socks = Vec::new();
        let mut buf = vec![0u8; RECV_BUF];
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let seq = self.next_seq();
            self.send(&encode_dump(family, seq))?;
            'dump: loop {
                let n = self.recv(&mut buf)?;
                for reply in decode(&buf[..n]) {
                    match reply {
                        Reply::Sock(s) => socks.push(s),
                        Reply::Done => break 'dump,
                        Reply::Ack { errno, .. } if errno != 0 => {
                            return Err(io::Error::from_raw_os_error(errno));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(socks)
    }

    /// Destroys `socks` (each by tuple and cookie). Returns how many the kernel aborted; a
    /// socket that closed in the meantime (`ENOENT`) is not an error.
    pub fn destroy(&mut self, socks: &[TcpSock]) -> io::Result<usize> {
        let mut destroyed = 0;
        let mut buf = vec![0u8; RECV_BUF];
        for batch in socks.chunks(DESTROY_BATCH) {
            let mut req = Vec::with_capacity(batch.len() * (NLMSG_HDR_LEN + REQ_V2_LEN));
            for s in batch {
                let seq = self.next_seq();
                encode_destroy(&mut req, s, seq);
            }
            self.send(&req)?;
            let mut acked = 0;
            while acked < batch.len() {
                let n = self.recv(&mut buf)?;
                for reply in decode(&buf[..n]) {
                    if let Reply::Ack { errno, .. } = reply {
                        acked += 1;
                        match errno {
                            0 => destroyed += 1,
                            libc::ENOENT => {}
                            e => return Err(io::Error::from_raw_os_error(e)),
                        }
                    }
                }
            }
        }
        Ok(destroyed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(local: &str, remote: &str, cookie: u64) -> TcpSock {
        TcpSock {
            family: libc::AF_INET as u8,
            state: 1,
            local: local.parse().expect("addr"),
            remote: remote.parse().expect("addr"),
            cookie,
            progress: None,
        }
    }

    #[test]
    fn destroy_request_layout_matches_the_kernel_structs() {
        let s = sock("127.0.0.1:8081", "10.0.0.2:40000", 0x1122_3344_5566_7788);
        let mut buf = Vec::new();
        encode_destroy(&mut buf, &s, 7);
        assert_eq!(buf.len(), 72, "nlmsghdr (16) + inet_diag_req_v2 (56)");
        assert_eq!(u32_at(&buf, 0), Some(72));
        assert_eq!(u16_at(&buf, 4), Some(SOCK_DESTROY));
        assert_eq!(u16_at(&buf, 6), Some(NLM_F_REQUEST | NLM_F_ACK));
        assert_eq!(u32_at(&buf, 8), Some(7));
        assert_eq!(buf[16], libc::AF_INET as u8);
        assert_eq!(buf[17], libc::IPPROTO_TCP as u8);
        // sockid at 24: sport, dport big-endian, then src, dst.
        assert_eq!(&buf[24..26], &8081u16.to_be_bytes());
        assert_eq!(&buf[26..28], &40000u16.to_be_bytes());
        assert_eq!(&buf[28..32], &[127, 0, 0, 1]);
        assert_eq!(&buf[44..48], &[10, 0, 0, 2]);
        assert_eq!(u32_at(&buf, 64), Some(0x5566_7788), "cookie low word");
        assert_eq!(u32_at(&buf, 68), Some(0x1122_3344), "cookie high word");
    }

    #[test]
    fn dump_request_excludes_listeners() {
        let buf = encode_dump(libc::AF_INET6 as u8, 3);
        assert_eq!(u16_at(&buf, 6), Some(NLM_F_REQUEST | NLM_F_DUMP));
        let states = u32_at(&buf, 20).expect("states");
        assert_eq!(states & (1 << TCP_LISTEN), 0, "a listener is never dumped");
        assert_ne!(states & (1 << 1), 0, "ESTABLISHED is");
    }

    #[test]
    fn decodes_dump_messages_acks_and_stops_at_garbage() {
        // One inet_diag_msg for 127.0.0.1:8081 <- 127.0.0.1:5555, cookie 9.
        let mut msg = Vec::new();
        put_u32(&mut msg, (NLMSG_HDR_LEN + DIAG_MSG_LEN) as u32);
        put_u16(&mut msg, SOCK_DIAG_BY_FAMILY);
        put_u16(&mut msg, 2);
        put_u32(&mut msg, 1);
        put_u32(&mut msg, 0);
        let mut body = vec![0u8; DIAG_MSG_LEN];
        body[0] = libc::AF_INET as u8;
        body[1] = 1;
        body[4..6].copy_from_slice(&8081u16.to_be_bytes());
        body[6..8].copy_from_slice(&5555u16.to_be_bytes());
        body[8..12].copy_from_slice(&[127, 0, 0, 1]);
        body[24..28].copy_from_slice(&[127, 0, 0, 1]);
        body[44..48].copy_from_slice(&9u32.to_ne_bytes());
        msg.extend_from_slice(&body);
        // An ack with ENOENT for seq 5.
        put_u32(&mut msg, 36);
        put_u16(&mut msg, NLMSG_ERROR);
        put_u16(&mut msg, 0);
        put_u32(&mut msg, 5);
        put_u32(&mut msg, 0);
        put_u32(&mut msg, (-libc::ENOENT) as u32);
        put_u32(&mut msg, 72);
        put_u16(&mut msg, SOCK_DESTROY);
        put_u16(&mut msg, 0);
        put_u32(&mut msg, 5);
        put_u32(&mut msg, 0);
        // Garbage: a length beyond the datagram.
        put_u32(&mut msg, 9999);
        msg.extend_from_slice(&[0; 12]);
        let replies = decode(&msg);
        assert_eq!(
            replies,
            vec![
                Reply::Sock(sock("127.0.0.1:8081", "127.0.0.1:5555", 9)),
                Reply::Ack {
                    seq: 5,
                    errno: libc::ENOENT
                },
            ]
        );
    }

    #[test]
    fn selects_only_the_origins_viewer_sockets() {
        let origin: Vec<SocketAddr> = vec!["127.0.0.1:8081".parse().expect("addr")];
        let viewers: std::collections::HashSet<SocketAddr> = ["127.0.0.1:40000", "127.0.0.1:40001"]
            .iter()
            .map(|a| a.parse().expect("addr"))
            .collect();
        let mut mapped = sock("127.0.0.1:8081", "127.0.0.1:40001", 2);
        mapped.family = libc::AF_INET6 as u8;
        mapped.local = "[::ffff:127.0.0.1]:8081".parse().expect("addr");
        mapped.remote = "[::ffff:127.0.0.1]:40001".parse().expect("addr");
        let socks = [
            sock("127.0.0.1:8081", "127.0.0.1:40000", 1), // a viewer of the origin: reset
            mapped,                                       // the same, dual-stack socket: reset
            sock("127.0.0.1:8082", "127.0.0.1:40000", 3), // another origin's socket: kept
            sock("127.0.0.1:8081", "127.0.0.1:50000", 4), // not via the VIP (a probe): kept
            sock("10.0.0.1:8081", "127.0.0.1:40000", 5),  // same port, other address: kept
            sock("127.0.0.1:40000", "127.0.0.1:8081", 6), // the client end of a local viewer: kept
            sock("127.0.0.1:9180", "127.0.0.1:40000", 7), // another service: kept
        ];
        let picked: Vec<u64> = select_viewer_sockets(&socks, &origin, &viewers)
            .iter()
            .map(|s| s.cookie)
            .collect();
        assert_eq!(picked, vec![1, 2]);
    }

    #[test]
    fn decodes_tcp_info_and_judges_delivery() {
        let mut info = vec![0u8; 160];
        info[TI_UNACKED..TI_UNACKED + 4].copy_from_slice(&3u32.to_ne_bytes());
        info[TI_LAST_DATA_SENT..TI_LAST_DATA_SENT + 4].copy_from_slice(&12u32.to_ne_bytes());
        info[TI_LAST_ACK_RECV..TI_LAST_ACK_RECV + 4].copy_from_slice(&5u32.to_ne_bytes());
        let mut attrs = Vec::new();
        // An unrelated attribute first (type 7, 5 bytes: padded to 8), then INET_DIAG_INFO.
        put_u16(&mut attrs, 5);
        put_u16(&mut attrs, 7);
        attrs.extend_from_slice(&[9, 0, 0, 0]);
        put_u16(&mut attrs, (4 + info.len()) as u16);
        put_u16(&mut attrs, INET_DIAG_INFO);
        attrs.extend_from_slice(&info);
        let p = decode_progress(&attrs).expect("tcp_info");
        assert_eq!(
            p,
            Progress {
                unacked: 3,
                notsent: Some(0),
                last_data_sent_ms: 12,
                last_ack_recv_ms: 5
            }
        );
        assert!(p.delivering(200), "data in flight, acked 5 ms ago");
        let stalled = Progress {
            last_ack_recv_ms: 900,
            ..p
        };
        assert!(!stalled.delivering(200), "the viewer stopped acknowledging");
        let idle = Progress { unacked: 0, ..p };
        assert!(
            !idle.delivering(200),
            "nothing in flight: idle or waiting for an answer"
        );
        assert!(
            decode_progress(&[200, 0, 2, 0]).is_none(),
            "bad length: no panic"
        );
    }

    #[test]
    fn mapped_addresses_are_canonical() {
        let s = TcpSock {
            family: libc::AF_INET6 as u8,
            state: 1,
            local: "[::ffff:127.0.0.1]:8081".parse().expect("addr"),
            remote: "[::ffff:10.0.0.2]:40000".parse().expect("addr"),
            cookie: 1,
            progress: None,
        };
        assert_eq!(
            s.remote_canonical(),
            "10.0.0.2:40000".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(
            s.local_canonical(),
            "127.0.0.1:8081".parse::<SocketAddr>().expect("addr")
        );
    }
}

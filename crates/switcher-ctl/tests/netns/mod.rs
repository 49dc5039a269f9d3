//! Network-namespace fixtures for integration tests: uniquely named namespaces and veth pairs
//! that are always removed (Drop), a private bpffs for pins (`ip netns exec` remounts /sys, so
//! pins go under /run), running code inside a namespace from a thread (setns is per thread),
//! and a tiny keep-alive HTTP server that says which origin answered.
//!
//! Traffic only flows inside the namespaces the tests create.

#![allow(dead_code)]

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs a command, panicking with its output on failure.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A short unique name (interface names are limited to 15 bytes).
pub fn unique(tag: &str) -> String {
    format!(
        "sw{}{}{}",
        std::process::id() % 100_000,
        tag,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace, deleted on drop (which also deletes the veth ends inside it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }
    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }
    /// Runs `f` on a thread that joined this namespace; sockets it creates live here.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: valid fd of a netns file; affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }
    /// A counter from /proc/net/snmp's Tcp line (e.g. "InCsumErrors") inside the namespace.
    pub fn tcp_snmp(&self, field: &str) -> u64 {
        let snmp = self.exec(&["cat", "/proc/net/snmp"]);
        let mut lines = snmp.lines().filter(|l| l.starts_with("Tcp:"));
        let names: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let values: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let i = names
            .iter()
            .position(|n| *n == field)
            .unwrap_or_else(|| panic!("no Tcp {field}"));
        values[i].parse().unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// client ns <-> veth <-> edge ns, IPv4 10.77.0.1 (client) / 10.77.0.2 (edge) and IPv6
/// fd77::1 / fd77::2, checksum offload off on both ends so the receiver verifies checksums.
pub struct Pair {
    pub client: Netns,
    pub edge: Netns,
    pub client_if: String,
    pub edge_if: String,
}

pub const CLIENT_V4: &str = "10.77.0.1";
pub const EDGE_V4: &str = "10.77.0.2";
pub const CLIENT_V6: &str = "fd77::1";
pub const EDGE_V6: &str = "fd77::2";

impl Pair {
    pub fn new() -> Pair {
        let client = Netns::new("c");
        let edge = Netns::new("e");
        let client_if = unique("vc");
        let edge_if = unique("ve");
        sh(&[
            "ip",
            "link",
            "add",
            &client_if,
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            &edge_if,
            "netns",
            &edge.name,
        ]);
        for (ns, ifname, v4, v6) in [
            (&client, &client_if, CLIENT_V4, CLIENT_V6),
            (&edge, &edge_if, EDGE_V4, EDGE_V6),
        ] {
            ns.exec(&["ip", "addr", "add", &format!("{v4}/24"), "dev", ifname]);
            ns.exec(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                ifname,
                "nodad",
            ]);
            ns.exec(&["ethtool", "-K", ifname, "tx", "off", "rx", "off"]);
            ns.exec(&["ip", "link", "set", ifname, "up"]);
        }
        Pair {
            client,
            edge,
            client_if,
            edge_if,
        }
    }
}

/// A bpffs mounted outside /sys (visible to every `ip netns exec`), unmounted on drop.
pub struct BpfFs {
    pub dir: PathBuf,
}

impl BpfFs {
    pub fn new() -> BpfFs {
        let dir = PathBuf::from(format!("/run/{}", unique("bpf")));
        std::fs::create_dir_all(&dir).unwrap();
        sh(&["mount", "-t", "bpf", "bpf", dir.to_str().unwrap()]);
        BpfFs { dir }
    }
    pub fn pin_root(&self) -> PathBuf {
        self.dir.join("switcher")
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = switcher_ctl::loader::detach(&self.pin_root());
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Size of the large body `/big` serves.
pub const BIG_LEN: usize = 1 << 20;

/// Deterministic content of `/big`.
pub fn big_body() -> Vec<u8> {
    (0..BIG_LEN).map(|i| (i * 7 % 251) as u8).collect()
}

/// Serves HTTP/1.1 keep-alive on `listener` until the process ends: `/whoami` answers `name`,
/// `/big` answers [`big_body`]. One thread per connection.
pub fn serve(listener: TcpListener, name: &'static str) {
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            thread::spawn(move || {
                let _ = handle(conn, name);
            });
        }
    });
}

fn handle(conn: TcpStream, name: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" {
                break;
            }
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        let body: Vec<u8> = match path {
            "/big" => big_body(),
            _ => name.as_bytes().to_vec(),
        };
        write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Origin: {name}\r\n\r\n",
            body.len()
        )?;
        conn.write_all(&body)?;
    }
}

/// A keep-alive HTTP client connection.
pub struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: &str) -> std::io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Client { stream, reader })
    }
    /// Like [`Client::connect`], from local port `port` (SO_REUSEADDR, so a port whose last
    /// connection is in TIME_WAIT can connect elsewhere).
    pub fn connect_from(addr: &str, port: u16) -> std::io::Result<Client> {
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        let local: std::net::SocketAddr = match addr {
            std::net::SocketAddr::V4(_) => ([127, 0, 0, 1], port).into(),
            std::net::SocketAddr::V6(_) => (std::net::Ipv6Addr::LOCALHOST, port).into(),
        };
        socket.bind(&local.into())?;
        socket.connect_timeout(&addr.into(), Duration::from_secs(3))?;
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Client { stream, reader })
    }

    /// The local (client) port of this connection.
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().expect("local address").port()
    }

    /// Closes this side and waits for the peer's FIN, so that no packet of the connection is
    /// still in flight afterwards (the final ACK goes out as the FIN is taken in).
    pub fn close(mut self) -> std::io::Result<()> {
        self.stream.shutdown(std::net::Shutdown::Write)?;
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest)?;
        Ok(())
    }

    /// GET `path` on this connection; returns the body.
    pub fn get(&mut self, path: &str) -> std::io::Result<Vec<u8>> {
        write!(self.stream, "GET {path} HTTP/1.1\r\nHost: vip\r\n\r\n")?;
        let mut len = None;
        let mut status = String::new();
        if self.reader.read_line(&mut status)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        loop {
            let mut h = String::new();
            if self.reader.read_line(&mut h)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed in headers",
                ));
            }
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            }
        }
        let mut body = vec![0u8; len.unwrap_or(0)];
        self.reader.read_exact(&mut body)?;
        Ok(body)
    }
}

/// One request on a fresh connection.
pub fn get_once(addr: &str, path: &str) -> std::io::Result<Vec<u8>> {
    Client::connect(addr)?.get(path)
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

//! A tiny keep-alive HTTP/1.1 server that says which origin answered (`/whoami`) and serves
//! a large deterministic body (`/big`), and a raw keep-alive client that controls its own
//! connection (which local port, when it closes), for data-plane tests where the connection
//! itself is what is checked. For plain fetches use [`crate::http`].

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

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
        // Head and body in one write (see `Client::request` on small writes and Nagle).
        let mut response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Origin: {name}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(&body);
        conn.write_all(&response)?;
    }
}

/// One keep-alive HTTP/1.1 client connection: GETs with a `Content-Length` response each.
pub struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

/// Connect timeout of [`Client::connect`] and [`Client::connect_from`].
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Read timeout of [`Client::connect`] and [`Client::connect_from`].
const READ_TIMEOUT: Duration = Duration::from_secs(5);

impl Client {
    /// The connection's local address (the viewer's address and port, as a flow is keyed).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.stream
            .local_addr()
            .expect("a connected socket has a local address")
    }

    /// Connects to `addr` (3 s connect timeout, 5 s read timeout).
    pub fn connect(addr: &str) -> std::io::Result<Client> {
        let stream = TcpStream::connect_timeout(&parse(addr)?, CONNECT_TIMEOUT)?;
        Client::over(stream, READ_TIMEOUT)
    }

    /// Connects to `addr` with `timeout` for the connect and for every read and write.
    pub fn connect_within(addr: &str, timeout: Duration) -> std::io::Result<Client> {
        let stream = TcpStream::connect_timeout(&parse(addr)?, timeout)?;
        stream.set_write_timeout(Some(timeout))?;
        Client::over(stream, timeout)
    }

    /// Like [`Client::connect`], from local port `port` of any local address (SO_REUSEADDR,
    /// so a port whose last connection is in TIME_WAIT can connect elsewhere).
    pub fn connect_from(addr: &str, port: u16) -> std::io::Result<Client> {
        let client = Self::connect_from_within(addr, port, CONNECT_TIMEOUT)?;
        client.stream.set_read_timeout(Some(READ_TIMEOUT))?;
        Ok(client)
    }

    /// Like [`Client::connect_from`], with one `timeout` for the connect, every read and every
    /// write (as [`Client::connect_within`]).
    pub fn connect_from_within(
        addr: &str,
        port: u16,
        timeout: Duration,
    ) -> std::io::Result<Client> {
        let addr = parse(addr)?;
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        let local: std::net::SocketAddr = match addr {
            std::net::SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, port).into(),
            std::net::SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, port).into(),
        };
        socket.bind(&local.into())?;
        socket.connect_timeout(&addr.into(), timeout)?;
        let stream: TcpStream = socket.into();
        stream.set_write_timeout(Some(timeout))?;
        Client::over(stream, timeout)
    }

    fn over(stream: TcpStream, read_timeout: Duration) -> std::io::Result<Client> {
        stream.set_read_timeout(Some(read_timeout))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Client { stream, reader })
    }

    /// The connection itself, after the responses read so far (for a test that watches
    /// what happens to it next, e.g. a reset).
    pub fn into_stream(self) -> TcpStream {
        self.stream
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

    /// GET `path` on this connection; returns the body, whatever the status.
    pub fn get(&mut self, path: &str) -> std::io::Result<Vec<u8>> {
        self.request(path, |_| {}).map(|(_, body)| body)
    }

    /// GET `path` on this connection; `on_status` gets the status code as soon as the status
    /// line has arrived (before the headers and body: the first byte, for timing). Returns
    /// the status and the body.
    pub fn request(
        &mut self,
        path: &str,
        on_status: impl FnOnce(u16),
    ) -> std::io::Result<(u16, Vec<u8>)> {
        // One write: `write!` on the socket would send the formatted pieces as separate small
        // segments, and Nagle's algorithm holds the second until the server acknowledges the
        // first, which it delays (~40 ms) while the request is incomplete. That made every
        // request ~40 ms, and 1,000 keep-alive viewers served in turn outlived the origin's
        // 10 s idle limit (`bench failover`'s herd, session 8).
        let request = format!("GET {path} HTTP/1.1\r\nHost: vip\r\n\r\n");
        self.stream.write_all(request.as_bytes())?;
        let mut len = None;
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3)?.parse::<u16>().ok())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("status line {status_line:?}"),
                )
            })?;
        on_status(status);
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
        Ok((status, body))
    }
}

fn parse(addr: &str) -> std::io::Result<std::net::SocketAddr> {
    addr.parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("address {addr:?}: {e}"),
        )
    })
}

/// One request on a fresh connection.
pub fn get_once(addr: &str, path: &str) -> std::io::Result<Vec<u8>> {
    Client::connect(addr)?.get(path)
}

//! Test harness: an origin bound to 127.0.0.1:0 over a temporary root, and a raw HTTP/1.1
//! client that sends exactly the bytes a test writes (no path normalisation).

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound on any single client read in tests, so a hung server fails the test instead
/// of hanging it.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running origin over a temp dir laid out as `<tmp>/root/demo/...`, with `<tmp>/secret.m3u8`
/// outside the root.
pub struct Server {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<origin::Result<()>>>,
}

pub const PLAYLIST: &str = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:1\n#EXTINF:2.0,\nseg1.ts\n";
pub const SECRET: &str = "TOP-SECRET-OUTSIDE-ROOT";
/// Length of the generated segment `demo/seg1.ts`: 53 MPEG-TS packets (the origin refuses a
/// `.ts` that is not whole packets as cut short).
pub const SEGMENT_LEN: usize = 53 * 188;

/// Deterministic, position-dependent bytes so that a wrong slice is detected.
pub fn segment_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

impl Server {
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Starts a server; `tweak` adjusts the default config (short timeouts etc.).
    pub async fn start(tweak: impl FnOnce(&mut origin::Config)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        Self::start_bound(listener, tweak).await
    }

    /// [`Server::start`] on a listener bound already (servers that name each other).
    pub async fn start_bound(
        listener: TcpListener,
        tweak: impl FnOnce(&mut origin::Config),
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        let demo = root.join("demo");
        std::fs::create_dir_all(&demo).expect("mkdir demo");
        std::fs::write(demo.join("index.m3u8"), PLAYLIST).expect("write playlist");
        std::fs::write(demo.join("seg1.ts"), segment_bytes(SEGMENT_LEN)).expect("write segment");
        std::fs::write(demo.join("seg1.m4s"), b"moof").expect("write m4s");
        std::fs::write(demo.join("init.mp4"), b"ftyp").expect("write init");
        std::fs::write(demo.join("notes.txt"), b"private").expect("write txt");
        std::fs::write(dir.path().join("secret.m3u8"), SECRET).expect("write secret");
        let mut config = origin::Config::new(&root);
        tweak(&mut config);
        Self::serve(listener, dir, config)
    }

    pub async fn start_with(dir: tempfile::TempDir, config: origin::Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        Self::serve(listener, dir, config)
    }

    fn serve(listener: TcpListener, dir: tempfile::TempDir, config: origin::Config) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(origin::run(listener, config, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            dir,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> origin::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("task");
        tokio::time::timeout(CLIENT_TIMEOUT, task)
            .await
            .expect("run returns after shutdown")
            .expect("run task")
    }

    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub fn take_task(&mut self) -> JoinHandle<origin::Result<()>> {
        self.task.take().expect("task")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[]).await
    }

    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        req.push_str("\r\n");
        raw(self.addr, req.as_bytes()).await
    }

    /// Replaces `relative` atomically (temp file + rename), as the packager does.
    pub fn replace(&self, relative: &str, contents: &[u8]) {
        let target = self.root().join(relative);
        let tmp = target.with_file_name(".tmp-replace");
        std::fs::write(&tmp, contents).expect("write temp");
        std::fs::rename(&tmp, &target).expect("rename into place");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` as is and reads until the server closes the connection.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    let mut buf = Vec::new();
    tokio::time::timeout(CLIENT_TIMEOUT, stream.read_to_end(&mut buf))
        .await
        .expect("server closes the connection in time")
        .expect("read response");
    parse(&buf)
        .unwrap_or_else(|| panic!("unparsable response: {:?}", String::from_utf8_lossy(&buf)))
}

pub fn parse(buf: &[u8]) -> Option<Response> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Response {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    })
}

/// Value of an un-labelled or exactly-labelled sample in a Prometheus text exposition.
#[allow(unused_imports)] // each test binary uses a different subset
pub use test_kit::metrics::value as metric;

pub fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).expect("symlink");
}

/// An h2 client connection (prior knowledge or negotiated by ALPN) over `io`; its connection
/// task runs in the background.
pub async fn h2_client<IO>(
    io: IO,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

/// The whole body of a response of hyper's client.
pub async fn body(response: hyper::Response<hyper::body::Incoming>) -> bytes::Bytes {
    use http_body_util::BodyExt as _;
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

//! Test helpers shared by the integration tests: a fake data plane that records every call,
//! live playlists with controlled timestamps, and tiny HTTP servers on 127.0.0.1:0 whose
//! answer (status, body, delay) the test changes while they run.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use switcher_common::{Counters, MAX_ORIGINS, STATS_SLOTS};
use switcher_ctl::dataplane::{Aborted, DataPlane, OriginIndex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Target duration of the generated playlists (the contract: 2 s segments).
pub const TARGET_SECONDS: f64 = 2.0;
/// Segments per generated playlist (the contract: window of 6).
pub const WINDOW: u64 = 6;

/// A call the controller made on the data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    SetActive(OriginIndex),
    /// A published lookup table: slots per origin index (origin index -> slot count).
    SetLookupTable(Vec<(OriginIndex, usize)>),
    RetireFlows(OriginIndex),
    AbortFlows(OriginIndex),
}

/// What the fake data plane holds; shared with the test through an `Arc`.
#[derive(Debug)]
pub struct FakeState {
    pub active: OriginIndex,
    pub calls: Vec<Call>,
    pub flows: Vec<u64>,
    pub counters: Vec<Counters>,
    pub fail_set_active: bool,
    /// The latest published lookup table, if any.
    pub table: Option<Vec<OriginIndex>>,
    pub fail_set_lookup_table: bool,
    /// The latest `set_fallbacks`, if any.
    pub fallbacks: Option<Vec<OriginIndex>>,
}

/// A data plane in memory.
#[derive(Clone)]
pub struct FakeDataPlane(pub Arc<Mutex<FakeState>>);

impl FakeDataPlane {
    pub fn new(active: OriginIndex) -> Self {
        FakeDataPlane(Arc::new(Mutex::new(FakeState {
            active,
            calls: Vec::new(),
            flows: vec![0; MAX_ORIGINS as usize],
            counters: vec![Counters::default(); STATS_SLOTS as usize],
            fail_set_active: false,
            table: None,
            fail_set_lookup_table: false,
            fallbacks: None,
        })))
    }
    pub fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().expect("fake data plane lock")
    }
    pub fn active(&self) -> OriginIndex {
        self.state().active
    }
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }
    /// Slots per origin index in the latest published table (index -> count), sorted by index.
    pub fn table_shares(&self) -> Vec<(OriginIndex, usize)> {
        self.state()
            .table
            .as_deref()
            .map(shares)
            .unwrap_or_default()
    }
}

/// Slots per origin index in `table`, sorted by index.
pub fn shares(table: &[OriginIndex]) -> Vec<(OriginIndex, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for o in table {
        *counts.entry(*o).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

impl DataPlane for FakeDataPlane {
    fn active(&self) -> anyhow::Result<OriginIndex> {
        Ok(self.state().active)
    }
    fn set_active(&mut self, origin: OriginIndex) -> anyhow::Result<()> {
        let mut s = self.state();
        if s.fail_set_active {
            anyhow::bail!("injected set_active failure");
        }
        s.active = origin;
        s.calls.push(Call::SetActive(origin));
        Ok(())
    }
    fn set_lookup_table(&mut self, slots: &[OriginIndex]) -> anyhow::Result<()> {
        let mut s = self.state();
        if s.fail_set_lookup_table {
            anyhow::bail!("injected set_lookup_table failure");
        }
        anyhow::ensure!(
            slots.len() == switcher_ctl::maglev::DEFAULT_TABLE_SIZE as usize,
            "a table of {} slots",
            slots.len()
        );
        s.calls.push(Call::SetLookupTable(shares(slots)));
        s.table = Some(slots.to_vec());
        Ok(())
    }
    fn retire_flows(&mut self, origin: OriginIndex) -> anyhow::Result<u64> {
        let mut s = self.state();
        s.calls.push(Call::RetireFlows(origin));
        let n = std::mem::take(&mut s.flows[origin as usize]);
        Ok(n)
    }
    fn set_fallbacks(&mut self, origins: &[OriginIndex]) -> anyhow::Result<()> {
        self.state().fallbacks = Some(origins.to_vec());
        Ok(())
    }
    fn reap_retired(&mut self, _budget: usize) -> anyhow::Result<u64> {
        // The fake's retirements leave no entries behind.
        Ok(0)
    }
    fn abort_flows(
        &mut self,
        origin: OriginIndex,
        max: usize,
        _finish_in_flight: bool,
    ) -> anyhow::Result<Aborted> {
        let mut s = self.state();
        s.calls.push(Call::AbortFlows(origin));
        let n = s.flows[origin as usize];
        let taken = n.min(max as u64);
        s.flows[origin as usize] -= taken;
        Ok(Aborted {
            reset: taken,
            // Like the real data plane on native XDP: one edge reset per removed flow.
            edge_resets: taken,
            // The fake tracks no handshakes.
            handshake_resets: 0,
            removed: taken,
            finishing: 0,
            remaining: n - taken,
        })
    }
    fn flow_counts(&self) -> anyhow::Result<Vec<u64>> {
        Ok(self.state().flows.clone())
    }
    fn counters(&self) -> anyhow::Result<Vec<Counters>> {
        Ok(self.state().counters.clone())
    }
    /// Same-host origins only: nothing is ever encapsulated.
    fn encap_counters(&self) -> anyhow::Result<Vec<switcher_common::dsr::EncapCounters>> {
        Ok(vec![
            switcher_common::dsr::EncapCounters::default();
            switcher_common::MAX_ORIGINS as usize
        ])
    }
}

/// A live media playlist of `WINDOW` 2 s segments, newest MSN `newest_msn`, every segment
/// with PROGRAM-DATE-TIME, whose newest segment ends at `newest_end`.
pub fn live_playlist(newest_msn: u64, newest_end: SystemTime) -> String {
    assert!(
        newest_msn + 1 >= WINDOW,
        "newest MSN {newest_msn} leaves no room for a window of {WINDOW}"
    );
    let first = newest_msn + 1 - WINDOW;
    let mut s = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:{first}\n"
    );
    for i in 0..WINDOW {
        let start = newest_end - Duration::from_secs_f64(TARGET_SECONDS * (WINDOW - i) as f64);
        let start: chrono::DateTime<chrono::Utc> = start.into();
        s.push_str(&format!(
            "#EXT-X-PROGRAM-DATE-TIME:{}\n#EXTINF:{TARGET_SECONDS:.3},\nseg{}.ts\n",
            start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            first + i
        ));
    }
    s
}

/// A live playlist whose newest segment ended `age` ago.
pub fn playlist_aged(newest_msn: u64, age: Duration) -> String {
    live_playlist(newest_msn, SystemTime::now() - age)
}

/// A body of `packets` MPEG-TS-framed packets (sync byte, then filler): what the probe's
/// segment check accepts.
pub fn ts_body(packets: usize) -> String {
    format!("G{}", "x".repeat(187)).repeat(packets)
}

/// What a [`TestServer`] answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: String) -> Self {
        Reply {
            status: 200,
            body,
            delay: Duration::ZERO,
        }
    }
}

/// How a [`TestServer`] builds each answer: a fixed reply, or a function of the request path
/// evaluated at request time (so playlists can stay fresh as time passes).
pub type Responder = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// A one-request-per-connection HTTP/1.1 server on 127.0.0.1, answering with the current
/// responder. `kill` closes the listener (connections are then refused); `restart` binds the
/// same port again.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepts: Arc<std::sync::atomic::AtomicUsize>,
    responder: Arc<Mutex<Responder>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(responder: Responder) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test server");
        let addr = listener.local_addr().expect("local addr");
        let responder = Arc::new(Mutex::new(responder));
        let accepts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = Some(tokio::spawn(serve(
            listener,
            responder.clone(),
            accepts.clone(),
        )));
        TestServer {
            addr,
            accepts,
            responder,
            task,
        }
    }

    /// Serves a fixed reply.
    pub async fn fixed(reply: Reply) -> Self {
        Self::start(Arc::new(move |_| reply.clone())).await
    }

    pub fn set(&self, responder: Responder) {
        *self.responder.lock().expect("responder lock") = responder;
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Closes the listener: later connects are refused.
    pub async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens on the same port again.
    pub async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind test server port");
        self.task = Some(tokio::spawn(serve(
            listener,
            self.responder.clone(),
            self.accepts.clone(),
        )));
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Largest request head the test server reads.
const MAX_HEAD: usize = 8192;

async fn serve(
    listener: TcpListener,
    responder: Arc<Mutex<Responder>>,
    accepts: Arc<std::sync::atomic::AtomicUsize>,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        accepts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let responder = responder.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head);
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let f = responder.lock().expect("responder lock").clone();
            let reply = f(&path);
            if !reply.delay.is_zero() {
                tokio::time::sleep(reply.delay).await;
            }
            let response = format!(
                "HTTP/1.1 {} X\r\nContent-Type: application/vnd.apple.mpegurl\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                reply.status,
                reply.body.len(),
                reply.body
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// `method path` with `body` to an admin endpoint (test_kit::http, on a blocking thread):
/// returns (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let (method, url, body) = (
        method.to_string(),
        format!("http://{addr}{path}"),
        body.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        let r = test_kit::http::request(&method, &url, body.as_bytes(), test_kit::http::TIMEOUT)
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        (r.status, r.text())
    })
    .await
    .expect("request thread")
}

/// A directory of its own under the system temp dir, removed (with its contents) on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("switcher-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tokio listener on the admin socket `path` (bound by the service's own `bind_unix`).
pub fn admin_socket(path: &std::path::Path) -> tokio::net::UnixListener {
    let std = switcher_ctl::admin::bind_unix(path).expect("bind admin socket");
    tokio::net::UnixListener::from_std(std).expect("admin socket listener")
}

/// One request over the admin unix socket: (status, body).
pub async fn over_socket(
    path: &std::path::Path,
    method: &str,
    uri: &str,
    body: &str,
) -> (u16, String) {
    let (status, body) = switcher_ctl::admin::request(
        &switcher_ctl::admin::Endpoint::Unix(path.to_path_buf()),
        method.parse().expect("method"),
        uri,
        body,
        Duration::from_secs(5),
    )
    .await
    .expect("admin socket request");
    (status.as_u16(), body)
}

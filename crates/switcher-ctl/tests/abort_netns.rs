//! Aborting a retired origin's viewer connections, on the real data plane in namespaces
//! (needs root): client ns <-> veth <-> edge ns with native XDP; a *hung* primary on :8081
//! (the kernel accepts and ACKs requests, the process never answers, like a SIGSTOPped origin)
//! and a working backup on :8082.
//!
//! What must be reset: the viewer waiting on the hung primary through the VIP. What must not:
//! a connection straight to the primary's port (a probe, a monitoring check), and a viewer on
//! the backup.
//!
//! Behind a *partition* (nftables drops the primary's packets both ways in the edge
//! namespace), the reset of the destroyed origin socket is dropped too: the viewer is reached
//! only by the edge's own reset (docs/ARCHITECTURE.md, "Edge-originated resets"). So is a
//! viewer whose SYN went to the partitioned primary: the edge resets its pending handshake,
//! and its connect fails at once instead of waiting for its own SYN retransmission.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switcher_common::{ORIGIN_BACKUP, ORIGIN_PRIMARY};
use switcher_ctl::{
    dataplane::DataPlane,
    loader::{AttachConfig, Pinned},
};
use test_kit::keepalive::{Client, serve};
use test_kit::netns::{self as netns, BpfFs, Pair};
use test_kit::wait_until;

/// Failsafe read timeout of the stranded viewer: without an abort its read would wait this
/// long and fail with `TimedOut`, which the test reports; the abort makes it fail with a reset
/// long before. Not a timing assertion: only the error kind is checked.
const STRANDED_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// The primary: a request for `/stream` gets an endless body (a response being delivered,
/// like a slow origin still sending a segment); any other request is read and never answered
/// (a hung origin: its kernel ACKs, nobody answers).
fn half_hung_origin(listener: TcpListener) {
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut req = [0u8; 512];
                let n = s.read(&mut req).unwrap_or(0);
                if req[..n].windows(7).any(|w| w == b"/stream") {
                    let chunk = vec![b'x'; 64 * 1024];
                    while s.write_all(&chunk).is_ok() {}
                } else {
                    // Hold the connection open, answer nothing.
                    std::thread::park();
                }
            });
        }
    });
}

/// A viewer reading `/stream` through the VIP at a steady pace in the client namespace;
/// returns (bytes read so far, the error that ended it).
type Reading = Arc<Mutex<(u64, Option<ErrorKind>)>>;

fn start_streaming_viewer(pair: &Pair) -> Reading {
    let state: Reading = Arc::new(Mutex::new((0, None)));
    let out = state.clone();
    // A thread started in the namespace stays in it.
    pair.client.run(move || {
        std::thread::spawn(move || {
            let mut s = TcpStream::connect("10.77.0.2:8080").expect("connect VIP");
            s.write_all(b"GET /stream HTTP/1.1\r\nHost: vip\r\n\r\n")
                .expect("send request");
            s.set_read_timeout(Some(STRANDED_READ_TIMEOUT))
                .expect("timeout");
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        out.lock().expect("lock").1 = Some(ErrorKind::UnexpectedEof);
                        return;
                    }
                    Ok(n) => out.lock().expect("lock").0 += n as u64,
                    Err(e) => {
                        out.lock().expect("lock").1 = Some(e.kind());
                        return;
                    }
                }
                // About 3 MB/s: a player taking a segment, not a flood.
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    });
    state
}

/// Bound on each wait.
const WAIT: Duration = Duration::from_secs(20);

#[test]
fn abort_resets_the_viewers_of_a_hung_origin_and_nothing_else() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root: `cargo xtask test`"
    );
    let pair = Pair::new();
    let bpf = BpfFs::new().on_drop(switcher_ctl::loader::detach);
    let mut dp = edge_with_hung_primary(&pair, &bpf);

    // The stranded viewer: its request is ACKed by the primary's kernel, never answered.
    let mut stranded = pair.client.run(|| {
        let mut s = TcpStream::connect("10.77.0.2:8080").expect("connect VIP");
        s.write_all(b"GET /hls/demo/seg1.ts HTTP/1.1\r\nHost: vip\r\n\r\n")
            .expect("send request");
        s.set_read_timeout(Some(STRANDED_READ_TIMEOUT))
            .expect("timeout");
        s
    });
    // A viewer the primary is delivering a response to, right now.
    let streaming = start_streaming_viewer(&pair);
    wait_until(WAIT, "the streaming viewer receives", || {
        streaming.lock().expect("lock").0 > 1 << 20
    });
    // A connection straight to the primary's port from the edge (not through the VIP).
    let direct = pair.edge.run(|| {
        let s = TcpStream::connect("10.77.0.2:8081").expect("direct connect");
        s.set_nonblocking(true).expect("nonblocking");
        s
    });
    // A viewer on the backup, keep-alive.
    dp.set_active(ORIGIN_BACKUP).expect("backup active");
    let mut on_backup = pair.client.run(|| {
        let mut c = Client::connect("10.77.0.2:8080").expect("connect VIP");
        assert_eq!(c.get("/whoami").expect("backup answers"), b"backup");
        c
    });
    let flows = dp.flow_counts().expect("flows");
    assert_eq!(
        flows[ORIGIN_PRIMARY as usize], 2,
        "two viewers pinned to the primary"
    );
    assert_eq!(
        flows[ORIGIN_BACKUP as usize], 1,
        "one viewer pinned to the backup"
    );

    // Sockets are per namespace: the control plane runs in the edge's, as in production.
    let (aborted, mut dp) = abort_primary(&pair, dp);
    assert_eq!(
        aborted.reset, 1,
        "exactly the stranded viewer's socket is destroyed"
    );
    assert_eq!(aborted.removed, 1);
    assert_eq!(aborted.finishing, 1, "the delivering connection may finish");
    assert_eq!(aborted.remaining, 0);
    // The stranded viewer's flow was retired by the primary's generation; the finishing one
    // stays live (and open).
    assert_eq!(
        dp.flow_counts().expect("flows")[ORIGIN_PRIMARY as usize],
        1,
        "only the finishing viewer's flow is open"
    );

    // The stranded viewer gets the reset from the VIP (it would not accept one from :8081).
    let err = pair
        .client
        .run(move || {
            let mut buf = [0u8; 64];
            stranded.read(&mut buf).map(|n| n.to_string())
        })
        .expect_err("the stranded viewer's read must fail");
    assert_eq!(
        err.kind(),
        ErrorKind::ConnectionReset,
        "reset by the abort, not a timeout: {err}"
    );

    // The direct connection is untouched: no reset, nothing to read, still writable.
    let direct_state = pair.edge.run(move || {
        let mut buf = [0u8; 1];
        let mut d = direct;
        let read = d.read(&mut buf).map_err(|e| e.kind());
        let write = d.write_all(b"x").map_err(|e| e.kind());
        (read, write)
    });
    assert_eq!(
        direct_state,
        (Err(ErrorKind::WouldBlock), Ok(())),
        "a non-VIP connection to the origin port is not reset"
    );
    // The delivering connection keeps receiving; once the finish time is over (the caller
    // stops asking to finish), it is reset too.
    let before = streaming.lock().expect("lock").0;
    wait_until(WAIT, "the finishing viewer still receives", || {
        streaming.lock().expect("lock").0 > before + (1 << 20)
    });
    assert_eq!(streaming.lock().expect("lock").1, None);
    let (cut, mut dp) = pair.edge.run(move || {
        let a = dp
            .abort_flows(ORIGIN_PRIMARY, usize::MAX, false)
            .expect("abort");
        (a, dp)
    });
    assert_eq!((cut.reset, cut.finishing), (1, 0));
    wait_until(WAIT, "the finishing viewer is reset", || {
        streaming.lock().expect("lock").1.is_some()
    });
    assert_eq!(
        streaming.lock().expect("lock").1,
        Some(ErrorKind::ConnectionReset)
    );
    // The backup's viewer keeps its connection and its flow.
    assert_eq!(
        on_backup.get("/whoami").expect("backup viewer unaffected"),
        b"backup"
    );
    assert_eq!(dp.flow_counts().expect("flows")[ORIGIN_BACKUP as usize], 1);
    assert_eq!(dp.flow_counts().expect("flows")[ORIGIN_PRIMARY as usize], 0);
    // The retired entry is deleted by the next window's reaping (or was, by the data plane,
    // if the viewer sent again); the finishing one was deleted when it was cut.
    dp.reap_retired(usize::MAX).expect("reap");
    let left: Vec<_> = dp
        .flow_entries()
        .expect("entries")
        .into_iter()
        .filter(|(_, v)| v.origin == ORIGIN_PRIMARY)
        .collect();
    assert!(left.is_empty(), "no primary entry left: {left:?}");
    // The viewer reconnects through the VIP and lands on the backup.
    let again = pair.client.run(|| {
        let mut c = Client::connect("10.77.0.2:8080").expect("reconnect VIP");
        c.get("/whoami").expect("answer")
    });
    assert_eq!(again, b"backup");
    // Aborting an origin with no flow is a no-op.
    let again = pair.edge.run(move || {
        dp.abort_flows(ORIGIN_PRIMARY, usize::MAX, true)
            .expect("abort again")
    });
    assert_eq!(again.reset, 0);
    let root = bpf.pin_root();
    pair.edge
        .run(move || switcher_ctl::loader::detach(&root).expect("detach"));
}

/// nftables table of the partition, in the edge namespace; removed on drop.
struct Partition<'a> {
    ns: &'a netns::Netns,
    table: String,
}

impl<'a> Partition<'a> {
    /// Drops every packet to or from `port` in `ns`, as `cargo xtask drill origin-partition`.
    fn new(ns: &'a netns::Netns, port: u16) -> Partition<'a> {
        let table = netns::unique("p");
        let script = format!(
            "table inet {table} {{\n chain in {{ type filter hook input priority 0; \
             tcp dport {port} drop; }}\n chain out {{ type filter hook output priority 0; \
             tcp sport {port} drop; }}\n}}\n"
        );
        let path = std::env::temp_dir().join(format!("{table}.nft"));
        std::fs::write(&path, script).expect("write nft script");
        let p = Partition { ns, table };
        ns.exec(&["nft", "-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        p
    }
}

impl Drop for Partition<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns.name,
                "nft",
                "delete",
                "table",
                "inet",
            ])
            .arg(&self.table)
            .status();
    }
}

/// A viewer through the VIP whose request the hung primary's kernel ACKs and nobody answers.
fn stranded_viewer(pair: &Pair, path: &'static str) -> TcpStream {
    pair.client.run(move || {
        let mut s = TcpStream::connect("10.77.0.2:8080").expect("connect VIP");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: vip\r\n\r\n").as_bytes())
            .expect("send request");
        s.set_read_timeout(Some(STRANDED_READ_TIMEOUT))
            .expect("timeout");
        s
    })
}

#[test]
fn edge_resets_reach_viewers_behind_a_partition() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root: `cargo xtask test`"
    );
    let pair = Pair::new();
    // The edge transmits its resets with XDP_TX; a veth delivers XDP frames only to a peer
    // that receives through NAPI (GRO on, as a NIC would), see switcher_ctl::edge_rst.
    pair.client
        .exec(&["ethtool", "-K", &pair.client_if, "gro", "on"]);
    let bpf = BpfFs::new();
    let dp = edge_with_hung_primary(&pair, &bpf);
    let mut exact = stranded_viewer(&pair, "/hls/demo/seg1.ts");
    let mut inexact = stranded_viewer(&pair, "/hls/demo/seg2.ts");
    // A connection from the client straight to the primary's port, not through the VIP.
    let direct = pair.client.run(|| {
        let s = TcpStream::connect("10.77.0.2:8081").expect("direct connect");
        s.set_nonblocking(true).expect("nonblocking");
        s
    });
    let flows = dp.flow_counts().expect("flows");
    assert_eq!(
        flows[ORIGIN_PRIMARY as usize], 2,
        "two viewers on the primary"
    );

    // One viewer's recorded acknowledgment number is made in-window but not exact (ahead of
    // what it has received): it must answer the edge's reset with a challenge ACK, which
    // finds no flow and is reset by the edge's stack, exactly.
    let inexact_port = inexact.local_addr().expect("local").port();
    {
        use aya::maps::{HashMap, Map, MapData};
        let pin = bpf
            .pin_root()
            .join("maps")
            .join(switcher_common::map_names::FLOWS);
        let mut flows: HashMap<MapData, switcher_common::FlowKey, switcher_common::FlowValue> =
            HashMap::try_from(Map::HashMap(MapData::from_pin(&pin).expect("flows pin")))
                .or_else(|_| {
                    HashMap::try_from(Map::LruHashMap(MapData::from_pin(&pin).expect("flows pin")))
                })
                .expect("flows map");
        let key = switcher_ctl::loader::flow_key(
            format!("10.77.0.1:{inexact_port}").parse().expect("addr"),
        );
        let mut v = flows.get(&key, 0).expect("the viewer's flow");
        assert_ne!(v.hop_mac, [0; 6], "the client's link address is recorded");
        v.client_ack = v.client_ack.wrapping_add(1000);
        flows.insert(key, v, 0).expect("update flow");
        // And every CPU's copy of the flow (`flow_cache`), where the newest number is while
        // the flow's packets hit it: an edge reset tries those numbers too.
        let cache_pin = bpf
            .pin_root()
            .join("maps")
            .join(switcher_common::map_names::FLOW_CACHE);
        let cache = switcher_ctl::flow_cache::Copies::new(
            MapData::from_pin(&cache_pin).expect("flow cache pin"),
        )
        .expect("flow cache map");
        let slot = switcher_common::flow_cache_slot(&key.words());
        for cpu in 0..cache.cpus() {
            cache.update(cpu, slot, |c| {
                if c.key == key.words() {
                    c.client_ack = c.client_ack.wrapping_add(1000);
                }
            });
        }
    }

    let untracked = |dp: &Pinned| {
        dp.counters().expect("counters")[switcher_common::STATS_UNSTEERED as usize].untracked
    };
    let untracked_before = untracked(&dp);
    let partition = Partition::new(&pair.edge, 8081);
    let (aborted, mut dp) = abort_primary(&pair, dp);
    assert_eq!(
        aborted.reset, 2,
        "both origin sockets destroyed (their RSTs are dropped)"
    );
    assert_eq!(aborted.removed, 2);
    assert_eq!(aborted.edge_resets, 2, "one edge reset per removed flow");
    assert_eq!(
        dp.flow_counts().expect("flows")[ORIGIN_PRIMARY as usize],
        0,
        "counted out, though the partition dropped their origin's resets before TC egress"
    );
    for (name, s) in [("exact", &mut exact), ("in-window", &mut inexact)] {
        let err = pair
            .client
            .run({
                let mut s = s.try_clone().expect("clone");
                move || {
                    let mut buf = [0u8; 64];
                    s.read(&mut buf).map(|n| n.to_string())
                }
            })
            .expect_err("the stranded viewer's read must fail");
        assert_eq!(
            err.kind(),
            ErrorKind::ConnectionReset,
            "{name}: reset by the edge behind the partition, not a timeout: {err}"
        );
    }
    // The in-window viewer's challenge ACK found no flow: it passed to the edge's stack.
    assert!(
        untracked(&dp) > untracked_before,
        "the challenge ACK reached the edge's stack as an untracked packet"
    );
    // The connection straight to the origin's port is untouched: no reset, nothing to read.
    let direct_read = pair.client.run(move || {
        let mut buf = [0u8; 1];
        let mut d = direct;
        d.read(&mut buf).map_err(|e| e.kind())
    });
    assert_eq!(
        direct_read,
        Err(ErrorKind::WouldBlock),
        "a non-VIP connection is not reset"
    );
    drop(partition);
    // The viewers reconnect through the VIP to the backup.
    dp.set_active(ORIGIN_BACKUP).expect("backup active");
    let again = pair.client.run(|| {
        let mut c = Client::connect("10.77.0.2:8080").expect("reconnect VIP");
        c.get("/whoami").expect("answer")
    });
    assert_eq!(again, b"backup");
    let root = bpf.pin_root();
    pair.edge
        .run(move || switcher_ctl::loader::detach(&root).expect("detach"));
}

/// Failsafe timeout of the connect whose SYN is lost behind the partition: far beyond the
/// client's first SYN retransmission (1 s), which without the edge's reset would reach the
/// backup (active by then) and succeed. Not a timing assertion: only the outcome is checked.
const PENDING_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn edge_resets_refuse_pending_handshakes_behind_a_partition() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root: `cargo xtask test`"
    );
    let pair = Pair::new();
    // See `edge_resets_reach_viewers_behind_a_partition`: XDP_TX frames reach a GRO peer.
    pair.client
        .exec(&["ethtool", "-K", &pair.client_if, "gro", "on"]);
    let bpf = BpfFs::new();
    let dp = edge_with_hung_primary(&pair, &bpf);
    let partition = Partition::new(&pair.edge, 8081);
    // A viewer connects to the VIP: its SYN is steered to the primary and dropped there.
    let connecting = pair.client.run(|| {
        std::thread::spawn(|| {
            let vip = "10.77.0.2:8080".parse().expect("vip");
            TcpStream::connect_timeout(&vip, PENDING_CONNECT_TIMEOUT)
                .map(|_| ())
                .map_err(|e| e.kind())
        })
    });
    wait_until(WAIT, "the viewer's SYN is a pending handshake", || {
        dp.handshake_count() == 1
    });
    // The primary is cut at once (not finishing), after the backup takes new flows, as the
    // control plane does.
    let (aborted, dp) = pair.edge.run(move || {
        let mut dp = dp;
        dp.set_active(ORIGIN_BACKUP).expect("backup active");
        let a = dp
            .abort_flows(ORIGIN_PRIMARY, usize::MAX, false)
            .expect("abort");
        (a, dp)
    });
    assert_eq!(aborted.handshake_resets, 1, "one pending handshake reset");
    assert_eq!(dp.handshake_count(), 0, "and its slot emptied");
    assert_eq!(
        connecting.join().expect("connect thread"),
        Err(ErrorKind::ConnectionRefused),
        "the connect is refused by the edge's reset, not completed by a retransmitted SYN \
         (to the backup) nor timed out"
    );
    drop(partition);
    // The viewer reconnects through the VIP to the backup.
    let again = pair.client.run(|| {
        let mut c = Client::connect("10.77.0.2:8080").expect("reconnect VIP");
        c.get("/whoami").expect("answer")
    });
    assert_eq!(again, b"backup");
    let root = bpf.pin_root();
    pair.edge
        .run(move || switcher_ctl::loader::detach(&root).expect("detach"));
}

/// The edge of the tests: a primary on :8081 that ACKs requests and never answers (hung), a
/// backup on :8082 that answers, and the data plane attached (native XDP) with the primary
/// active.
fn edge_with_hung_primary(pair: &Pair, bpf: &BpfFs) -> Pinned {
    pair.edge.run(|| {
        half_hung_origin(TcpListener::bind("[::]:8081").expect("bind 8081"));
        serve(TcpListener::bind("[::]:8082").expect("bind 8082"), "backup");
    });
    let cfg = AttachConfig::primary_backup(
        &pair.edge_if,
        "10.77.0.2:8080".parse().expect("vip"),
        "10.77.0.2".parse().expect("origin address"),
        bpf.pin_root(),
    );
    pair.edge.run(move || {
        let mut p = Pinned::attach(&cfg).expect("attach");
        p.set_active(ORIGIN_PRIMARY).expect("primary active");
        p
    })
}

/// Aborts every connection of the primary (letting delivering ones finish), from the edge's
/// namespace: sockets are per namespace, and the control plane runs in the edge's, as in
/// production.
fn abort_primary(pair: &Pair, mut dp: Pinned) -> (switcher_ctl::dataplane::Aborted, Pinned) {
    pair.edge.run(move || {
        let a = dp
            .abort_flows(ORIGIN_PRIMARY, usize::MAX, true)
            .expect("abort");
        (a, dp)
    })
}

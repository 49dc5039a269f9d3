//! `cargo xtask lab`: the multi-host topology of direct server return in network namespaces,
//! used by the lab command, its drills and the lab tests.
//!
//! ```text
//!                         client 10.10.1.2
//!                               |
//!   edge1 10.10.11.2 ---- router (FRR bgpd+bfdd, ECMP, L4 hash) ---- origin1 10.10.21.2
//!   edge2 10.10.12.2 ----/      |         \---------------------- origin2 10.10.22.2
//!                          ingest 10.10.30.2
//! ```
//! * Every host is a namespace with one veth to the router (host .2, router .1 of its /24).
//! * **router**: forwards, `fib_multipath_hash_policy=1` (L4 hash), `rp_filter` off (replies
//!   from the VIP come from the origin hosts, not from the edges the VIP is routed to),
//!   `ignore_routes_with_linkdown=1` and `icmp_ratelimit=0` (the ICMP layer's own limit per
//!   host it answers, lifted): a host whose link is down has no route, as with a router that
//!   drops a connected route with its link, and packets to it are answered "unreachable".
//!   Those answers stay limited per host they go to by the kernel's routing-error budget (`net.ipv4.route.error_cost` /
//!   `error_burst`: a burst of five, then one a second; global sysctls, not per namespace on
//!   this kernel, so the lab leaves them alone): an edge whose viewer traffic or probes of
//!   the lost host spent its budget gets no answer and judges the host by its probe's connect
//!   timeout instead, as behind a real router that rate-limits unreachables (the origin-host-
//!   loss benchmark prints both counts per run). GRO on its ends of the edges' links:
//!   veth delivers the edges' `XDP_TX` frames (their edge resets) only to a NAPI receiver. FRR
//!   zebra + bgpd + bfdd, one eBGP session per edge with BFD (300 ms x 3), 1 s / 3 s timers and
//!   a 1 s connect retry,
//!   `maximum-paths 2`.
//! * **edge1, edge2**: `switcher-ctl run --dsr --announce` with XDP on the veth, both origin
//!   hosts as remote origins; FRR zebra + bgpd + bfdd redistributing the kernel route
//!   switcher-ctl installs for the VIP (`announce`). Forwarding on (the route lookup from XDP
//!   is a forwarding lookup). XDP is attached in generic (skb) mode by default: in native
//!   mode the frames an edge sends with `XDP_TX` reach the router only with NAPI on the
//!   router's end (GRO on, which [`LabConfig::native`] sets), and with that, under load (100
//!   concurrent downloads; again with `bench dsr`'s 8 x 4, 2026-12-02), an edge's link to the
//!   router stalls for good: the edge's veth drops everything its stack sends (TX `dropped`
//!   grows, so its own probes time out), the router's end receives nothing more, and ethtool
//!   shows XDP_TX frames lost to a full ring (`rx_queue_0_xdp_tx_errors`). That is the veth
//!   transmit queue stopped by veth's backpressure (since 6.17, a sender stops its queue when
//!   the peer's ring is full and the peer's NAPI poll wakes it) and never woken; turning GRO
//!   off and on again on the router's end, which rebuilds that NAPI context, brings the link
//!   back at once. A kernel matter (veth's wake-up when XDP_TX frames share the ring with the
//!   stack's packets), not of the edge's program. Probe timeouts are a parameter
//!   ([`LabConfig::probe_timeouts`]): the tests raise them to 1 s (connect) and 3 s (playlist
//!   and segment), since with debug builds on a loaded 2-CPU machine an origin serving 100
//!   downloads answered the probe in over 1 s and the edges failed over from it; the
//!   origin-host-loss benchmark keeps switcher-ctl's defaults.
//! * **origin1, origin2**: a packager pulling from the ingest host, an origin on `0.0.0.0:8080`
//!   (the VIP's port: it answers viewers on the VIP, and the edges' probes on the host address),
//!   the VIP on `lo` with `arp_ignore=1`/`arp_announce=2`, `switcher-ctl decap` on the veth.
//! * **ingest**: the RTMP ingest and an ffmpeg test-pattern publisher.
//! * **client**: nothing runs; viewers go there (`ip netns exec <client> curl ...`).
//!
//! * **IPv6** (a dual-stack VIP, [`VIP6`]): every link also has `fd10:10:<octet>::/64` (host
//!   `::2`, router `::1`, no DAD); the router forwards IPv6 with the same L4 multipath hash;
//!   the edges serve `--vip` twice and announce the IPv6 VIP over the same IPv4 BGP sessions
//!   (address family ipv6, next hop their IPv6 link address); they send IPv6 viewers' requests
//!   as 6in4 over the IPv4 links (`accept_local` on, for the ones the stack forwards); the
//!   origin hosts own the IPv6 VIP on `lo`, decapsulate 6in4 too, and their origins also
//!   listen on `[VIP6]:8080`.
//!
//! Links inside the lab have MTU 1600, so a full-size viewer packet still fits once the edge
//! adds its 20-byte outer header; the client's link has 1500. Checksum offload is off on every
//! veth, so packets carry full checksums through XDP and every receiver verifies them.
//!
//! Privileges: ingest, the ffmpeg publisher, the packagers and the origins run as the
//! unprivileged service user (`hlsedge`, created by scripts/setup) with no-new-privs, from
//! copies of their binaries under the run directory, as the single-host stack runs them
//! (`xtask::stack`); so do the viewers the tests start ([`Lab::unprivileged`]). switcher-ctl
//! starts as root and keeps only CAP_BPF + CAP_NET_ADMIN once attached; FRR's daemons switch
//! to Debian's `frr` user themselves. Each origin host's HLS directory stays root's, with the
//! stream's directory the service user's (where the packager writes).
//!
//! Names are unique per run (`hx<pid><tag><n>`); dropping the [`Lab`] stops every process,
//! detaches the programs, unmounts the lab's bpffs (releasing every pin) and deletes every
//! namespace, also on failure.

use std::{
    collections::BTreeMap,
    fs,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};

use test_kit::netns::{BpfFs, Netns, unique};
use test_kit::process::try_sh;

/// Runs a command; its stdout, or an error with its output.
fn sh(args: &[&str]) -> Result<String> {
    Ok(try_sh(args)?)
}
use crate::stack::{
    RTMP_PORT, SERVICE_USER, command_prefix, give_dir, http_get, spawn_logged, stage_binaries,
    stop_child, wait_ready,
};

/// The VIP viewers use.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// The VIP's IPv6 address (a dual-stack VIP): IPv6 viewers reach the origin hosts by 6in4
/// over the same IPv4 links, and the edges announce it over the same BGP sessions.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);
/// The VIP's port (and the origins' port: they answer on the VIP directly): the layout's.
pub use crate::layout::VIP_PORT;
/// Admin address of each edge's switcher-ctl, inside its namespace: the layout's.
pub const EDGE_ADMIN: SocketAddrV4 = crate::layout::SWITCHER_ADMIN;
/// Admin address of each origin host's packager, inside its namespace: the layout's
/// (primary's; each host runs one packager).
pub const PACKAGER_ADMIN: SocketAddrV4 = crate::layout::packager_admin(0);
/// Admin address of the ingest, inside its namespace: the layout's.
pub const INGEST_ADMIN: SocketAddrV4 = crate::layout::INGEST_ADMIN;
/// AS number of the router.
const ROUTER_AS: u32 = 65000;
/// AS number of both edges (the router does eBGP multipath over them).
const EDGE_AS: u32 = 65001;
/// MTU of the links inside the lab (viewer MTU 1500 + the outer header, with room).
const LAB_MTU: &str = "1600";
/// How long a process may take to be ready.
const READY: Duration = Duration::from_secs(60);

/// The hosts of the lab, by role, with the third octet of their /24.
pub const ROLES: [(&str, u8); 6] = [
    ("client", 1),
    ("edge1", 11),
    ("edge2", 12),
    ("origin1", 21),
    ("origin2", 22),
    ("ingest", 30),
];
/// The drills of [`Lab::drill`].
pub const DRILLS: [&str; 4] = [
    "edge-kill",
    "edge-link-down",
    "origin-host-kill",
    "router-flap",
];
/// The edges.
pub const EDGES: [&str; 2] = ["edge1", "edge2"];
/// The origin hosts.
pub const ORIGIN_HOSTS: [&str; 2] = ["origin1", "origin2"];

/// What to start.
#[derive(Clone, Debug)]
pub struct LabConfig {
    /// Directory with the built binaries (switcher-ctl, ingest, packager, origin).
    pub bin_dir: PathBuf,
    /// Logs, FRR configurations, HLS output.
    pub run_dir: PathBuf,
    /// Stream name.
    pub stream: String,
    /// Test pattern size and rate.
    pub video: (u32, u32, u32),
    /// Attach XDP in the driver (veth's native mode) instead of the generic (skb) path, on
    /// the edges and for decap (see the module docs for why the lab defaults to generic).
    pub native: bool,
    /// The edges' probe timeouts in seconds: connect, and the whole probe (`switcher-ctl
    /// run`'s defaults are 0.1 and 0.5; see [`LOADED_PROBE_TIMEOUTS`]).
    pub probe_timeouts: (f64, f64),
}

/// Probe timeouts (connect, whole probe) for a lab whose origins serve heavy traffic from
/// debug builds on a loaded machine: with 100 downloads, an origin answered the probe in over
/// 1 s there, and the edges failed over from it (the tests, `cargo xtask lab`).
pub const LOADED_PROBE_TIMEOUTS: (f64, f64) = (1.0, 3.0);

/// A host of the lab: its namespace and its link to the router.
pub struct Host {
    /// Its namespace.
    pub ns: Netns,
    /// Its address.
    pub addr: Ipv4Addr,
    /// The router's address on its link.
    pub gateway: Ipv4Addr,
    /// Its end of the link.
    pub iface: String,
    /// The router's end of the link.
    pub router_iface: String,
}

/// One process of the lab.
struct Proc {
    ns: String,
    argv: Vec<String>,
    /// Runs as [`SERVICE_USER`] with no-new-privs (everything but switcher-ctl and FRR).
    unprivileged: bool,
    child: Option<Child>,
}

/// The running lab. Drop stops and removes everything.
pub struct Lab {
    /// Its configuration.
    pub cfg: LabConfig,
    procs: BTreeMap<String, Proc>,
    /// Hosts by role.
    pub hosts: BTreeMap<&'static str, Host>,
    /// The router.
    pub router: Netns,
    /// The bpffs every switcher-ctl pins under (outside /sys, see `netns::BpfFs`).
    pub bpffs: BpfFs,
}

/// Address `.host` of the /24 of `octet`.
fn addr(octet: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, octet, host)
}

/// The IPv6 address of `host` on the /64 of link `octet` (`fd10:10:<octet>::<host>`).
pub fn addr6(octet: u8, host: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd10, 0x10, u16::from(octet), 0, 0, 0, 0, u16::from(host))
}

impl Lab {
    /// Builds the topology and starts every process, waiting for each to be ready and for the
    /// router to route the VIP over both edges.
    pub fn start(cfg: LabConfig) -> Result<Lab> {
        for bin in ["switcher-ctl", "ingest", "packager", "origin"] {
            if !cfg.bin_dir.join(bin).exists() {
                bail!(
                    "{} missing: build the workspace first",
                    cfg.bin_dir.join(bin).display()
                );
            }
        }
        for tool in [
            "/usr/lib/frr/zebra",
            "/usr/lib/frr/bgpd",
            "/usr/lib/frr/bfdd",
        ] {
            if !Path::new(tool).exists() {
                bail!(
                    "{tool} missing: install FRR (`sudo scripts/setup` installs the frr package)"
                );
            }
        }
        fs::create_dir_all(cfg.run_dir.join("logs"))?;
        let router = Netns::new("rt");
        let bpffs = BpfFs::new();
        let mut lab = Lab {
            cfg,
            procs: BTreeMap::new(),
            hosts: BTreeMap::new(),
            router,
            bpffs,
        };
        lab.build_network()?;
        lab.start_processes()?;
        Ok(lab)
    }

    fn build_network(&mut self) -> Result<()> {
        let r = &self.router;
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.fib_multipath_hash_policy", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            // A link without carrier takes its routes with it, so traffic to a host whose
            // link is down gets an ICMP "unreachable" instead of vanishing, within the
            // kernel's per-source budget of routing errors (see the module docs).
            ("net.ipv4.conf.default.ignore_routes_with_linkdown", "1"),
            // Every ICMP error of the lab comes from this router to a handful of hosts; lift
            // the ICMP layer's limit per host it answers (one a second after a burst of six).
            // The routing errors' own budget per host still applies (module docs).
            ("net.ipv4.icmp_ratelimit", "0"),
            // IPv6 viewers: forwarded, and spread over the edges by the same L4 hash.
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv6.conf.default.forwarding", "1"),
            ("net.ipv6.fib_multipath_hash_policy", "1"),
        ] {
            r.try_exec(&["sysctl", "-qw", &format!("{key}={value}")])?;
        }
        for (role, octet) in ROLES {
            let ns = Netns::new(&role[..1]);
            let iface = unique("h");
            let router_iface = unique("r");
            sh(&[
                "ip",
                "link",
                "add",
                &iface,
                "netns",
                &ns.name,
                "type",
                "veth",
                "peer",
                "name",
                &router_iface,
                "netns",
                &r.name,
            ])?;
            let mtu = if role == "client" { "1500" } else { LAB_MTU };
            let (host, gateway) = (addr(octet, 2), addr(octet, 1));
            let (host6, gateway6) = (addr6(octet, 2), addr6(octet, 1));
            for (n, ifname, a, a6) in [
                (&ns, &iface, host, host6),
                (r, &router_iface, gateway, gateway6),
            ] {
                n.try_exec(&["ip", "link", "set", ifname, "mtu", mtu])?;
                n.try_exec(&["ip", "addr", "add", &format!("{a}/24"), "dev", ifname])?;
                // `nodad`: usable at once.
                n.try_exec(&[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("{a6}/64"),
                    "dev",
                    ifname,
                    "nodad",
                ])?;
                n.try_exec(&["ethtool", "-K", ifname, "tx", "off", "rx", "off"])?;
                n.try_exec(&["ip", "link", "set", ifname, "up"])?;
            }
            ns.try_exec(&["ip", "route", "add", "default", "via", &gateway.to_string()])?;
            ns.try_exec(&[
                "ip",
                "-6",
                "route",
                "add",
                "default",
                "via",
                &gateway6.to_string(),
            ])?;
            ns.try_exec(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"])?;
            ns.try_exec(&["sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0"])?;
            if role.starts_with("edge") {
                // XDP_TX from the edge (its edge resets, in either mode, and everything it
                // sends in native mode) lands on the router's end: veth takes XDP frames in
                // only with NAPI on, which GRO turns on.
                r.try_exec(&["ethtool", "-K", &router_iface, "gro", "on"])?;
                ns.try_exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
                // A request encapsulated before the router's neighbour entry exists goes to
                // the stack with the edge's own address as its source: a martian without this.
                ns.try_exec(&["sysctl", "-qw", "net.ipv4.conf.all.accept_local=1"])?;
            }
            if role.starts_with("origin") {
                ns.try_exec(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
                // Neighbour solicitations are answered only on the interface that has the
                // address: no sysctl needed for the IPv6 VIP.
                let vip6 = format!("{VIP6}/128");
                ns.try_exec(&["ip", "-6", "addr", "add", &vip6, "dev", "lo"])?;
                for key in ["all", &iface] {
                    ns.try_exec(&[
                        "sysctl",
                        "-qw",
                        &format!("net.ipv4.conf.{key}.arp_ignore=1"),
                    ])?;
                    ns.try_exec(&[
                        "sysctl",
                        "-qw",
                        &format!("net.ipv4.conf.{key}.arp_announce=2"),
                    ])?;
                }
            }
            self.hosts.insert(
                role,
                Host {
                    ns,
                    addr: host,
                    gateway,
                    iface,
                    router_iface,
                },
            );
        }
        Ok(())
    }

    /// A host by role.
    pub fn host(&self, role: &str) -> &Host {
        &self.hosts[role]
    }

    fn bin(&self, name: &str) -> String {
        self.cfg.bin_dir.join(name).to_string_lossy().into_owned()
    }

    /// The copy of an unprivileged service's binary the service user runs (see
    /// [`stage_binaries`]).
    fn staged(&self, name: &str) -> String {
        self.dir("bin").join(name).to_string_lossy().into_owned()
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.cfg.run_dir.join(name)
    }

    /// The HLS directory of an origin host.
    pub fn hls_dir(&self, origin_host: &str) -> PathBuf {
        self.dir(&format!("hls-{origin_host}"))
    }

    /// Pin root of an edge's switcher-ctl, or of an origin host's decap program.
    pub fn pin_root(&self, role: &str) -> PathBuf {
        self.bpffs.dir.join(role)
    }

    fn start_processes(&mut self) -> Result<()> {
        stage_binaries(
            &self.cfg.bin_dir,
            &self.cfg.run_dir,
            &["ingest", "packager", "origin"],
        )?;
        // Routing first: the edges announce as soon as an origin is healthy.
        self.start_frr_all()?;
        let ingest_ns = self.host("ingest").ns.name.clone();
        let rtmp = format!("0.0.0.0:{RTMP_PORT}");
        self.spawn(
            "ingest",
            &ingest_ns,
            vec![
                self.staged("ingest"),
                "--listen".into(),
                rtmp,
                "--admin".into(),
                INGEST_ADMIN.to_string(),
            ],
            true,
            Some(format!("127.0.0.1:{RTMP_PORT}")),
        )?;
        let (w, h, fps) = self.cfg.video;
        let publish = format!("rtmp://127.0.0.1:{RTMP_PORT}/live/{}", self.cfg.stream);
        let publisher: Vec<String> = std::iter::once("ffmpeg".to_string())
            .chain(
                crate::stack::live_publisher(w, h, fps)
                    .video_bitrate("1000k")
                    .audio_bitrate("64k")
                    .args(&publish),
            )
            .collect();
        self.spawn("publisher", &ingest_ns, publisher, true, None)?;
        let source = format!(
            "rtmp://{}:{RTMP_PORT}/live/{}",
            self.host("ingest").addr,
            self.cfg.stream
        );
        for o in ORIGIN_HOSTS {
            let ns = self.host(o).ns.name.clone();
            // The HLS directory stays root's (tests put files there); only the stream's
            // directory, where the packager writes, is the service user's.
            let dir = self.hls_dir(o);
            give_dir(&dir.join(&self.cfg.stream), SERVICE_USER)?;
            let dir = dir.to_string_lossy().into_owned();
            self.spawn(
                &format!("packager-{o}"),
                &ns,
                vec![
                    self.staged("packager"),
                    "--source".into(),
                    source.clone(),
                    "--out".into(),
                    dir.clone(),
                    "--admin".into(),
                    PACKAGER_ADMIN.to_string(),
                ],
                true,
                Some(PACKAGER_ADMIN.to_string()),
            )?;
            // The other origin host is this one's peer (origin's `peer`: a file this one
            // cannot serve), reached over the routed network as the edges' probes reach it.
            let peers = ORIGIN_HOSTS.iter().filter(|p| **p != o).flat_map(|p| {
                [
                    "--peer".to_string(),
                    format!("http://{}:{VIP_PORT}", self.host(p).addr),
                ]
            });
            let argv = [
                self.staged("origin"),
                "--root".into(),
                dir,
                "--listen".into(),
                format!("0.0.0.0:{VIP_PORT}"),
                "--listen".into(),
                format!("[{VIP6}]:{VIP_PORT}"),
            ]
            .into_iter()
            .chain(peers)
            .collect();
            self.spawn(
                &format!("origin-{o}"),
                &ns,
                argv,
                true,
                Some(format!("127.0.0.1:{VIP_PORT}")),
            )?;
            let iface = self.host(o).iface.clone();
            let pins = self.pin_root(o).to_string_lossy().into_owned();
            let (sw, vip, vip6) = (self.bin("switcher-ctl"), VIP.to_string(), VIP6.to_string());
            self.run_in(
                o,
                &[
                    &sw,
                    "decap",
                    "--iface",
                    &iface,
                    "--vip",
                    &vip,
                    "--vip",
                    &vip6,
                    "--mode",
                    self.xdp_mode(),
                    "--pin-root",
                    &pins,
                ],
            )?;
        }
        for e in EDGES {
            self.start_edge(e)?;
        }
        self.wait_for(
            "the router to route the VIP over both edges",
            READY,
            |lab| Ok(lab.vip_nexthops()?.len() == 2),
        )?;
        self.wait_for(
            "the router to route the IPv6 VIP over both edges",
            READY,
            |lab| Ok(lab.vip6_edges()?.len() == 2),
        )?;
        Ok(())
    }

    /// Starts (or restarts) an edge's switcher-ctl.
    pub fn start_edge(&mut self, edge: &str) -> Result<()> {
        let ns = self.host(edge).ns.name.clone();
        let iface = self.host(edge).iface.clone();
        let origin = |o: &str| format!("http://{}:{VIP_PORT}", self.host(o).addr);
        let argv = vec![
            self.bin("switcher-ctl"),
            "run".into(),
            "--iface".into(),
            iface,
            "--vip".into(),
            format!("{VIP}:{VIP_PORT}"),
            "--vip".into(),
            format!("[{VIP6}]:{VIP_PORT}"),
            "--primary".into(),
            origin("origin1"),
            "--backup".into(),
            origin("origin2"),
            "--stream".into(),
            self.cfg.stream.clone(),
            "--pin-root".into(),
            self.pin_root(edge).to_string_lossy().into_owned(),
            "--admin".into(),
            EDGE_ADMIN.to_string(),
            "--admin-socket".into(),
            self.dir(&format!("{edge}.sock"))
                .to_string_lossy()
                .into_owned(),
            "--attach-mode".into(),
            self.xdp_mode().into(),
            "--dsr".into(),
            "--announce".into(),
            "--probe-connect-timeout".into(),
            self.cfg.probe_timeouts.0.to_string(),
            "--probe-timeout".into(),
            self.cfg.probe_timeouts.1.to_string(),
        ];
        self.spawn(
            &format!("switcher-{edge}"),
            &ns,
            argv,
            false,
            Some(EDGE_ADMIN.to_string()),
        )
    }

    /// `native` or `generic`, per [`LabConfig::native`].
    fn xdp_mode(&self) -> &'static str {
        if self.cfg.native { "native" } else { "generic" }
    }

    /// The FRR configuration of `role` (router or an edge), for bgpd.
    fn bgpd_conf(&self, role: &str) -> String {
        if role == "router" {
            let mut c = format!(
                "router bgp {ROUTER_AS}\n bgp router-id 10.10.0.1\n no bgp ebgp-requires-policy\n"
            );
            for e in EDGES {
                let a = self.host(e).addr;
                c += &format!(
                    " neighbor {a} remote-as {EDGE_AS}\n neighbor {a} bfd\n neighbor {a} timers 1 3\n neighbor {a} timers connect 1\n"
                );
            }
            c += " address-family ipv4 unicast\n  maximum-paths 2\n exit-address-family\n";
            // The IPv6 VIP over the same sessions; its next hop is the edge's IPv6 address on
            // the link (bgpd takes it from the session's interface).
            c += " address-family ipv6 unicast\n  maximum-paths 2\n";
            for e in EDGES {
                c += &format!("  neighbor {} activate\n", self.host(e).addr);
            }
            c += " exit-address-family\n";
            c
        } else {
            let h = self.host(role);
            format!(
                "ip prefix-list VIP seq 5 permit {VIP}/32\n\
                 route-map VIP permit 10\n match ip address prefix-list VIP\n\
                 ipv6 prefix-list VIP6 seq 5 permit {VIP6}/128\n\
                 route-map VIP6 permit 10\n match ipv6 address prefix-list VIP6\n\
                 route-map NH6 permit 10\n set ipv6 next-hop global {a6}\n\
                 router bgp {EDGE_AS}\n bgp router-id {a}\n no bgp ebgp-requires-policy\n \
                 neighbor {g} remote-as {ROUTER_AS}\n neighbor {g} bfd\n neighbor {g} timers 1 3\n neighbor {g} timers connect 1\n \
                 address-family ipv4 unicast\n  redistribute kernel route-map VIP\n exit-address-family\n \
                 address-family ipv6 unicast\n  redistribute kernel route-map VIP6\n  neighbor {g} activate\n  neighbor {g} route-map NH6 out\n exit-address-family\n",
                a = h.addr,
                g = h.gateway,
                a6 = addr6(h.addr.octets()[2], 2),
            )
        }
    }

    /// The namespace name of `role` (`router` included).
    pub fn ns_name(&self, role: &str) -> String {
        if role == "router" {
            self.router.name.clone()
        } else {
            self.host(role).ns.name.clone()
        }
    }

    fn start_frr_all(&mut self) -> Result<()> {
        for role in ["router", "edge1", "edge2"] {
            for daemon in ["zebra", "bfdd", "bgpd"] {
                self.start_frr(role, daemon)?;
            }
        }
        Ok(())
    }

    /// Starts one FRR daemon of `role` in the foreground (a child of ours), with its own path
    /// space (`-N <namespace name>`) and configuration under the run directory.
    pub fn start_frr(&mut self, role: &str, daemon: &str) -> Result<()> {
        let ns = self.ns_name(role);
        let conf_dir = self.dir(&format!("frr-{role}"));
        let state = PathBuf::from(format!("/var/run/frr/{ns}"));
        for d in [&conf_dir, &state] {
            fs::create_dir_all(d)?;
            sh(&["chown", "frr:frr", &d.to_string_lossy()])?;
        }
        let conf = conf_dir.join(format!("{daemon}.conf"));
        let text = match daemon {
            "bgpd" => self.bgpd_conf(role),
            // Routes with their next hops inline rather than as kernel nexthop objects: with
            // nexthop objects, FRR 8.4's zebra kept routing the VIP over one edge after that
            // edge's link flapped, though both BGP sessions were up with the VIP from each.
            "zebra" => "no zebra nexthop kernel enable\n".to_string(),
            _ => String::new(),
        };
        fs::write(&conf, text)?;
        sh(&["chown", "frr:frr", &conf.to_string_lossy()])?;
        let argv = vec![
            format!("/usr/lib/frr/{daemon}"),
            "-N".into(),
            ns.clone(),
            "-f".into(),
            conf.to_string_lossy().into_owned(),
            "-i".into(),
            conf_dir
                .join(format!("{daemon}.pid"))
                .to_string_lossy()
                .into_owned(),
        ];
        // FRR drops to Debian's `frr` user itself (it keeps the capabilities it needs).
        self.spawn(&format!("{daemon}-{role}"), &ns, argv, false, None)?;
        if daemon == "zebra" {
            // bgpd and bfdd connect to zebra's socket; wait for it.
            let sock = state.join("zserv.api");
            self.wait_for(&format!("zebra of {role}"), READY, move |_| {
                Ok(sock.exists())
            })?;
        }
        Ok(())
    }

    /// Starts a process inside namespace `ns` (as [`SERVICE_USER`] with no-new-privs when
    /// `unprivileged`), logging to `logs/<name>.log`, and waits until `ready` accepts
    /// connections (inside the namespace).
    fn spawn(
        &mut self,
        name: &str,
        ns: &str,
        argv: Vec<String>,
        unprivileged: bool,
        ready: Option<String>,
    ) -> Result<()> {
        let log_path = self.dir("logs").join(format!("{name}.log"));
        let mut full = command_prefix(Some(ns), unprivileged.then_some(SERVICE_USER));
        full.extend(argv.iter().cloned());
        let child = spawn_logged(name, &full, &log_path)?;
        self.procs.insert(
            name.to_string(),
            Proc {
                ns: ns.to_string(),
                argv,
                unprivileged,
                child: Some(child),
            },
        );
        match ready {
            Some(addr) => wait_ready(name, Some(ns), &addr, &log_path),
            None => Ok(()),
        }
    }

    /// Sends `signal` to a process of the lab and reaps it (SIGKILL after 10 s).
    pub fn kill(&mut self, name: &str, signal: i32) -> Result<()> {
        let p = self
            .procs
            .get_mut(name)
            .ok_or_else(|| anyhow!("no process {name}"))?;
        if let Some(child) = p.child.take() {
            stop_child(child, signal);
        }
        Ok(())
    }

    /// The pid of a running process of the lab (`switcher-edge1`, ...), for benchmarks that
    /// read its CPU time.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs.get(name)?.child.as_ref().map(Child::id)
    }

    /// Every running process of the lab: its name, its pid, and whether it was started as
    /// [`SERVICE_USER`] (everything but switcher-ctl and FRR, which drop privileges
    /// themselves).
    pub fn processes(&self) -> Vec<(String, u32, bool)> {
        self.procs
            .iter()
            .filter_map(|(n, p)| Some((n.clone(), p.child.as_ref()?.id(), p.unprivileged)))
            .collect()
    }

    /// The argv prefix that runs a command in `role`'s namespace as [`SERVICE_USER`] with
    /// no-new-privs: how viewers (curl, players) run in the client namespace.
    pub fn unprivileged(&self, role: &str) -> Vec<String> {
        command_prefix(Some(&self.ns_name(role)), Some(SERVICE_USER))
    }

    /// A directory `name` under the run directory that [`SERVICE_USER`] may write (downloads,
    /// recordings of unprivileged viewers).
    pub fn user_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir(name);
        give_dir(&dir, SERVICE_USER)?;
        Ok(dir)
    }

    /// Starts a killed process again, the same way.
    pub fn restart(&mut self, name: &str) -> Result<()> {
        let p = self
            .procs
            .get(name)
            .ok_or_else(|| anyhow!("no process {name}"))?;
        let (ns, argv, unprivileged) = (p.ns.clone(), p.argv.clone(), p.unprivileged);
        self.spawn(name, &ns, argv, unprivileged, None)
    }

    /// Runs a command inside `role`'s namespace to completion; its stdout.
    pub fn run_in(&self, role: &str, argv: &[&str]) -> Result<String> {
        let ns = self.ns_name(role);
        let mut full = vec!["ip", "netns", "exec", &ns];
        full.extend_from_slice(argv);
        sh(&full)
    }

    /// Polls `cond` every 50 ms until it holds or `timeout` passes.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Lab) -> Result<bool>,
    ) -> Result<Duration> {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < timeout {
            match cond(self) {
                Ok(true) => return Ok(start.elapsed()),
                Ok(false) => {}
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("timed out after {timeout:?} waiting for {what} (last error: {last:?})")
    }

    /// The next hops the router's kernel uses for the VIP (one per edge that announces it).
    pub fn vip_nexthops(&self) -> Result<Vec<Ipv4Addr>> {
        let out = self.run_in(
            "router",
            &["ip", "-4", "route", "show", &format!("{VIP}/32")],
        )?;
        Ok(parse_nexthops(&out))
    }

    /// The edges the router routes the IPv6 VIP over, by the router's interface each next hop
    /// leaves by (zebra installs the edges' link-local addresses as next hops, so the
    /// interface, not the address, says which edge).
    pub fn vip6_edges(&self) -> Result<Vec<&'static str>> {
        let out = self.run_in(
            "router",
            &["ip", "-6", "route", "show", &format!("{VIP6}/128")],
        )?;
        let words: Vec<&str> = out.split_whitespace().collect();
        Ok(words
            .windows(2)
            .filter(|w| w[0] == "dev")
            .filter_map(|w| {
                EDGES
                    .iter()
                    .copied()
                    .find(|e| self.host(e).router_iface == w[1])
            })
            .collect())
    }

    /// Whether the router's BFD session with `edge` is down (`show bfd peers brief`).
    pub fn bfd_down(&self, edge: &str) -> Result<bool> {
        let addr = self.host(edge).addr.to_string();
        let out = sh(&[
            "vtysh",
            "-N",
            &self.ns_name("router"),
            "-c",
            "show bfd peers brief",
        ])?;
        Ok(out
            .lines()
            .any(|l| l.split_whitespace().any(|w| w == addr) && l.contains("down")))
    }

    /// The edge at `addr`, by role.
    pub fn edge_at(&self, addr: Ipv4Addr) -> Option<&'static str> {
        EDGES.into_iter().find(|e| self.host(e).addr == addr)
    }

    /// Sum over origins of a `dataplane_*` counter in an edge's `/metrics`.
    pub fn edge_counter(&self, edge: &str, metric: &str) -> Result<f64> {
        let ns = self.ns_name(edge);
        let body = http_get(
            Some(&ns),
            &EDGE_ADMIN.to_string(),
            "/metrics",
            Duration::from_secs(2),
        )?
        .body;
        Ok(sum_metric(&String::from_utf8_lossy(&body), metric))
    }

    /// `switcher-ctl decap --status` of an origin host: its decapsulated count.
    pub fn decapsulated(&self, origin_host: &str) -> Result<u64> {
        let pins = self.pin_root(origin_host).to_string_lossy().into_owned();
        let sw = self.bin("switcher-ctl");
        let out = self.run_in(
            origin_host,
            &[&sw, "decap", "--status", "--pin-root", &pins],
        )?;
        out.split_whitespace()
            .skip_while(|w| *w != "decapsulated")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("no decapsulated count in {out:?}"))
    }

    /// Sum over an edge's remote origins of one encapsulation counter (`encapsulated`,
    /// `adopted`, ...), from `switcher-ctl status`.
    pub fn edge_encap(&self, edge: &str, counter: &str) -> Result<u64> {
        let pins = self.pin_root(edge).to_string_lossy().into_owned();
        let sw = self.bin("switcher-ctl");
        let out = self.run_in(
            edge,
            &[
                &sw,
                "status",
                "--pin-root",
                &pins,
                "--admin",
                &EDGE_ADMIN.to_string(),
            ],
        )?;
        Ok(out
            .lines()
            .filter(|l| l.starts_with("encap "))
            .filter_map(|l| {
                l.split_whitespace()
                    .skip_while(|w| *w != counter)
                    .nth(1)?
                    .parse::<u64>()
                    .ok()
            })
            .sum())
    }

    /// GETs `path` through the VIP from the client namespace, on a fresh connection.
    pub fn get(&self, path: &str) -> Result<(u16, Vec<u8>)> {
        let r = http_get(
            Some(&self.ns_name("client")),
            &format!("{VIP}:{VIP_PORT}"),
            path,
            Duration::from_secs(5),
        )?;
        Ok((r.status, r.body))
    }

    /// [`Lab::get`] through the IPv6 VIP (an IPv6 viewer; 6in4 to the origin hosts).
    pub fn get6(&self, path: &str) -> Result<(u16, Vec<u8>)> {
        let r = http_get(
            Some(&self.ns_name("client")),
            &format!("[{VIP6}]:{VIP_PORT}"),
            path,
            Duration::from_secs(5),
        )?;
        Ok((r.status, r.body))
    }

    /// Sets a host's link to the router down or up, from the host's side (the router's end
    /// loses its carrier and stays configured, as with a cable pulled at the host).
    pub fn link(&self, role: &str, up: bool) -> Result<()> {
        let iface = self.host(role).iface.clone();
        self.run_in(
            role,
            &["ip", "link", "set", &iface, if up { "up" } else { "down" }],
        )?;
        if up {
            // Admin down removed the host's default route with the link.
            let gw = self.host(role).gateway.to_string();
            self.run_in(role, &["ip", "route", "replace", "default", "via", &gw])?;
        }
        Ok(())
    }

    /// Kills an edge the hard way: its switcher-ctl and its FRR daemons (SIGKILL). Its XDP
    /// program stays attached (pinned); the router takes the edge out when BFD times out.
    pub fn kill_edge(&mut self, edge: &str) -> Result<()> {
        self.kill(&format!("switcher-{edge}"), libc::SIGKILL)?;
        for d in ["bgpd", "bfdd", "zebra"] {
            self.kill(&format!("{d}-{edge}"), libc::SIGKILL)?;
        }
        Ok(())
    }

    /// Starts a killed edge again (FRR, then switcher-ctl, which adopts the pinned programs).
    pub fn restart_edge(&mut self, edge: &str) -> Result<()> {
        for d in ["zebra", "bfdd", "bgpd"] {
            self.start_frr(edge, d)?;
        }
        self.start_edge(edge)
    }

    /// Runs one drill (see [`DRILLS`]) and restores: a timeline of (event, time since the
    /// fault). Viewers keep fetching the playlist through the VIP during it; a failed fetch is
    /// an event of the timeline.
    pub fn drill(&mut self, name: &str) -> Result<Vec<(String, Duration)>> {
        self.drill_steps(name)
            .map_err(|e| e.context(format!("routing state:\n{}", self.routing_state())))
    }

    /// The router's route and BGP/BFD state and each edge's announcement, for diagnostics.
    pub fn routing_state(&self) -> String {
        let router = self.ns_name("router");
        let show = |argv: &[&str]| match sh(argv) {
            Ok(out) => out,
            Err(e) => format!("{e:#}\n"),
        };
        let mut s = show(&[
            "ip",
            "netns",
            "exec",
            &router,
            "ip",
            "route",
            "show",
            &VIP.to_string(),
        ]);
        s += &show(&[
            "vtysh",
            "-N",
            &router,
            "-c",
            "show bgp summary",
            "-c",
            "show bfd peers brief",
        ]);
        for e in EDGES {
            let ns = self.ns_name(e);
            s += &format!("{e} announcement: ");
            s += &show(&[
                "ip", "netns", "exec", &ns, "ip", "route", "show", "proto", "77",
            ]);
        }
        s
    }

    fn drill_steps(&mut self, name: &str) -> Result<Vec<(String, Duration)>> {
        let t0 = Instant::now();
        let mut timeline = Vec::new();
        let mark = |what: String, tl: &mut Vec<(String, Duration)>| tl.push((what, t0.elapsed()));
        let edge2 = self.host("edge2").addr;
        let only_edge2 = move |lab: &Lab| Ok(lab.vip_nexthops()? == vec![edge2]);
        let both = |lab: &Lab| Ok(lab.vip_nexthops()?.len() == 2);
        match name {
            "edge-kill" | "edge-link-down" => {
                if name == "edge-kill" {
                    self.kill_edge("edge1")?;
                } else {
                    self.link("edge1", false)?;
                }
                mark(format!("{name}: edge1 down"), &mut timeline);
                self.wait_for("the router to drop edge1", READY, only_edge2)?;
                mark(
                    "router routes the VIP over edge2 only".into(),
                    &mut timeline,
                );
                // The fault is over for the router only when BFD has taken the session down
                // (zebra drops the next hop on the carrier loss alone).
                self.wait_for("the router's BFD to declare edge1 down", READY, |lab| {
                    lab.bfd_down("edge1")
                })?;
                mark("router BFD: edge1 down".into(), &mut timeline);
                self.check_fetch(&mut timeline, t0)?;
                if name == "edge-kill" {
                    self.restart_edge("edge1")?;
                } else {
                    self.link("edge1", true)?;
                }
                mark("edge1 restored".into(), &mut timeline);
                self.wait_for("the router to route over both edges", READY, both)?;
                mark(
                    "router routes the VIP over both edges".into(),
                    &mut timeline,
                );
            }
            "origin-host-kill" => {
                self.link("origin1", false)?;
                mark("origin1 unreachable".into(), &mut timeline);
                for e in EDGES {
                    self.wait_for(&format!("{e} to fail over"), READY, |lab| {
                        Ok(lab.edge_active(e)? == "backup")
                    })?;
                    mark(
                        format!("{e} active origin: backup (origin2)"),
                        &mut timeline,
                    );
                }
                self.check_fetch(&mut timeline, t0)?;
                self.link("origin1", true)?;
                mark("origin1 reachable again".into(), &mut timeline);
                for e in EDGES {
                    self.wait_for(&format!("{e} to switch back"), READY, |lab| {
                        Ok(lab.edge_active(e)? == "primary")
                    })?;
                    mark(
                        format!("{e} active origin: primary (origin1)"),
                        &mut timeline,
                    );
                }
            }
            "router-flap" => {
                self.kill("bgpd-router", libc::SIGKILL)?;
                mark("router bgpd killed".into(), &mut timeline);
                // zebra removes the dead bgpd's routes when it sees its socket close (no
                // graceful restart here), a few milliseconds later. Waiting for that first
                // makes the routes found below the new bgpd's: without it, the check could
                // see the old routes still in place, and the fetch that follows find them
                // gone (ENETUNREACH from the router; CI, 2026-12-02).
                self.wait_for("zebra to remove the dead bgpd's VIP route", READY, |lab| {
                    Ok(lab.vip_nexthops()?.is_empty())
                })?;
                mark("router VIP route removed".into(), &mut timeline);
                self.start_frr("router", "bgpd")?;
                mark("router bgpd started".into(), &mut timeline);
                self.wait_for("the router to route over both edges", READY, both)?;
                mark(
                    "router routes the VIP over both edges".into(),
                    &mut timeline,
                );
            }
            other => bail!("unknown drill {other:?} ({})", DRILLS.join(", ")),
        }
        self.check_fetch(&mut timeline, t0)?;
        Ok(timeline)
    }

    /// Fetches the playlist through the VIP and notes the outcome in the timeline.
    fn check_fetch(&self, timeline: &mut Vec<(String, Duration)>, t0: Instant) -> Result<()> {
        let path = format!("/hls/{}/index.m3u8", self.cfg.stream);
        let what = match self.get(&path) {
            Ok((200, body)) if body.starts_with(b"#EXTM3U") => {
                "viewer fetch through the VIP: 200".to_string()
            }
            Ok((status, _)) => format!("viewer fetch through the VIP: HTTP {status}"),
            Err(e) => format!("viewer fetch through the VIP failed: {e:#}"),
        };
        timeline.push((what, t0.elapsed()));
        Ok(())
    }

    /// The active origin an edge's switcher-ctl reports (`primary`/`backup`).
    pub fn edge_active(&self, edge: &str) -> Result<String> {
        let ns = self.ns_name(edge);
        let body = http_get(
            Some(&ns),
            &EDGE_ADMIN.to_string(),
            "/healthz",
            Duration::from_secs(2),
        )?
        .body;
        let h: serde_json::Value = serde_json::from_slice(&body)?;
        Ok(h["active"].as_str().unwrap_or_default().to_string())
    }

    /// Prints what is where and how to look at each part.
    pub fn describe(&self) -> String {
        let ns = |r: &str| self.ns_name(r);
        let sw = self.bin("switcher-ctl");
        let mut s = format!(
            "\n  VIP        http://{VIP}:{VIP_PORT}/hls/{stream}/index.m3u8  (from the client namespace)\n  \
             play       sudo ip netns exec {client} ffplay http://{VIP}:{VIP_PORT}/hls/{stream}/index.m3u8\n  \
             fetch      sudo ip netns exec {client} curl -s http://{VIP}:{VIP_PORT}/hls/{stream}/index.m3u8\n  \
             router     sudo ip netns exec {router} ip route show {VIP}     (one next hop per announcing edge)\n             \
             sudo vtysh -N {router} -c 'show bgp summary' -c 'show bfd peers brief'\n",
            stream = self.cfg.stream,
            client = ns("client"),
            router = ns("router"),
        );
        for e in EDGES {
            s += &format!(
                "  {e}      {addr}: sudo ip netns exec {n} curl -s http://{EDGE_ADMIN}/healthz   (and /metrics)\n             \
                 sudo ip netns exec {n} {sw} status --pin-root {pins} --admin {EDGE_ADMIN}\n             \
                 sudo ip netns exec {n} ip route show proto 77   (the announcement);  sudo vtysh -N {n}\n",
                addr = self.host(e).addr,
                n = ns(e),
                pins = self.pin_root(e).display(),
            );
        }
        for o in ORIGIN_HOSTS {
            s += &format!(
                "  {o}    {addr}: sudo ip netns exec {n} {sw} decap --status --pin-root {pins}\n             \
                 sudo ip netns exec {n} curl -s http://{addr}:{VIP_PORT}/hls/{stream}/index.m3u8\n",
                addr = self.host(o).addr,
                n = ns(o),
                pins = self.pin_root(o).display(),
                stream = self.cfg.stream,
            );
        }
        s += &format!(
            "  ingest     rtmp://{}:{RTMP_PORT}/live/{} (inside the lab)\n  logs       {}\n",
            self.host("ingest").addr,
            self.cfg.stream,
            self.dir("logs").display()
        );
        s
    }

    /// Stops every process and detaches every program (the namespaces and the bpffs go when
    /// the fields drop).
    pub fn stop(&mut self) {
        let names: Vec<String> = self.procs.keys().cloned().collect();
        // switcher-ctl first (it withdraws the VIP on SIGTERM), FRR last.
        let mut order: Vec<&String> = names.iter().filter(|n| n.starts_with("switcher")).collect();
        order.extend(names.iter().filter(|n| !n.starts_with("switcher")));
        for n in order {
            let _ = self.kill(n, libc::SIGTERM);
        }
        let sw = self.bin("switcher-ctl");
        for e in EDGES.into_iter().filter(|e| self.hosts.contains_key(e)) {
            let pins = self.pin_root(e).to_string_lossy().into_owned();
            let _ = self.run_in(e, &[&sw, "detach", "--pin-root", &pins]);
        }
        for o in ORIGIN_HOSTS
            .into_iter()
            .filter(|o| self.hosts.contains_key(o))
        {
            let pins = self.pin_root(o).to_string_lossy().into_owned();
            let _ = self.run_in(o, &[&sw, "decap", "--detach", "--pin-root", &pins]);
        }
        let mut frr_state = vec![self.router.name.clone()];
        frr_state.extend(
            EDGES
                .iter()
                .filter_map(|e| self.hosts.get(e))
                .map(|h| h.ns.name.clone()),
        );
        for ns in frr_state {
            let _ = fs::remove_dir_all(format!("/var/run/frr/{ns}"));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The next hops of an `ip route show` of one prefix: `via A` on the route line, or one
/// `nexthop via A` line per path of a multipath route.
pub fn parse_nexthops(out: &str) -> Vec<Ipv4Addr> {
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "via")
        .filter_map(|w| w[1].parse().ok())
        .collect()
}

/// Sum of every sample of `metric` (any labels) in a Prometheus text exposition.
pub fn sum_metric(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nexthops_of_single_and_multipath_routes() {
        let single = "10.99.0.1 nhid 6 via 10.10.11.2 dev hx1r3 proto bgp metric 20 \n";
        assert_eq!(parse_nexthops(single), vec![Ipv4Addr::new(10, 10, 11, 2)]);
        let multi = "10.99.0.1 nhid 9 proto bgp metric 20 \n\tnexthop via 10.10.11.2 dev a weight 1 \n\tnexthop via 10.10.12.2 dev b weight 1 \n";
        assert_eq!(
            parse_nexthops(multi),
            vec![Ipv4Addr::new(10, 10, 11, 2), Ipv4Addr::new(10, 10, 12, 2)]
        );
        assert!(parse_nexthops("").is_empty());
    }

    #[test]
    fn metric_sums_over_labels_only_for_that_name() {
        let text = "# HELP dataplane_packets_total x\n\
                    dataplane_packets_total{origin=\"primary\"} 3\n\
                    dataplane_packets_total{origin=\"backup\"} 4\n\
                    dataplane_packets_total_extra 100\n";
        assert_eq!(sum_metric(text, "dataplane_packets_total"), 7.0);
    }
}

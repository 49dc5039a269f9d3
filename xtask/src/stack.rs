//! The whole stack as processes: ingest, an ffmpeg publisher, N packagers, N origins (two by
//! default: primary and backup; `cargo xtask run --origins N`) and switcher-ctl, started in dependency order with a readiness check for each, optionally inside
//! a network namespace, with every service but switcher-ctl dropped to an unprivileged user
//! with no-new-privs (`setpriv --no-new-privs`: no setuid or file capability can raise it
//! again). The ingest and the origins listen on the VIP's address when it is a loopback one
//! (`cargo xtask run` on `lo`), not on every address. Root never follows a path the service
//! user owns: only the HLS directories are given to it, and root's own files (logs, pid
//! files) are opened without following symlinks.
//! Used by `cargo xtask run`, the drills and the end-to-end tests.
//!
//! Each service's argv is kept so a drill can kill it and start it again the same way; its
//! output goes to `<run dir>/logs/<name>.log`. Dropping a [`Stack`] stops every process and
//! detaches the data plane.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};

// Ports and admin addresses: the layout's, written once there.
pub use crate::layout::{INGEST_ADMIN, ORIGIN_PORTS, PACKAGER_ADMINS, RTMP_PORT, SWITCHER_ADMIN};
/// How long a service may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The unprivileged user the services run as (created by scripts/setup).
pub const SERVICE_USER: &str = "hlsedge";

/// Names of the services of the default (two-origin) stack, in start order
/// ([`Stack::service_names`] for any number of origins).
pub const SERVICES: [&str; 7] = [
    "ingest",
    "publisher",
    "packager-primary",
    "packager-backup",
    "origin-primary",
    "origin-backup",
    "switcher-ctl",
];

/// What to start and where.
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// Directory with the built binaries (target/debug or target/release).
    pub bin_dir: PathBuf,
    /// Logs, HLS output directories.
    pub run_dir: PathBuf,
    /// Interface the data plane attaches to.
    pub iface: String,
    /// The VIP viewers use.
    pub vip: SocketAddr,
    /// Stream name.
    pub stream: String,
    /// Start the ffmpeg test-pattern publisher.
    pub publisher: bool,
    /// Test pattern size and rate (contract: 1280x720 at 30 fps; tests use less).
    pub video: (u32, u32, u32),
    /// Run every process inside this network namespace.
    pub netns: Option<String>,
    /// Drop services other than switcher-ctl to this user (when running as root).
    pub service_user: Option<String>,
    /// Pin root for switcher-ctl.
    pub pin_root: PathBuf,
    /// Directory with hls.js for the status page.
    pub assets_dir: Option<PathBuf>,
    /// Extra arguments for `switcher-ctl run`.
    pub switcher_args: Vec<String>,
    /// Address switcher-ctl's admin server binds (contract: 127.0.0.1:9180).
    pub admin: SocketAddr,
    /// Packager+origin pairs: origin i (0-based) on [`crate::layout::origin_port`]`(i)`,
    /// named by [`crate::layout::origin_names`] ([`crate::layout::DEFAULT_ORIGINS`]: the
    /// primary and the backup).
    pub origins: usize,
    /// Give each origin every other one as a peer (`--peer`, origin's `peer` module). On by
    /// default; off only to measure what it changes (`FAILOVER_BENCH_PEERS=0`).
    pub peer_fill: bool,
}

impl StackConfig {
    /// The whole stack in `pair`'s edge namespace, as the end-to-end test and the failover
    /// benchmark run it: the VIP on the edge address, the data plane on the edge veth with its
    /// pins in `bpf`, a 640x360 test pattern, every service but switcher-ctl as the service
    /// user, switcher-ctl's admin socket in `run_dir` (the default one under /run is shared by
    /// every mount namespace, so two runs on one machine would collide there).
    pub fn in_namespaces(
        bin_dir: PathBuf,
        run_dir: PathBuf,
        pair: &test_kit::netns::Pair,
        bpf: &test_kit::netns::BpfFs,
    ) -> StackConfig {
        let edge: std::net::Ipv4Addr = test_kit::netns::EDGE_V4.parse().expect("edge address");
        let admin_socket = run_dir.join("admin.sock").to_string_lossy().into_owned();
        StackConfig {
            bin_dir,
            run_dir,
            iface: pair.edge_if.clone(),
            vip: (edge, crate::layout::VIP_PORT).into(),
            stream: crate::layout::STREAM.into(),
            publisher: true,
            video: (640, 360, 30),
            netns: Some(pair.edge.name.clone()),
            service_user: Some(SERVICE_USER.into()),
            pin_root: bpf.pin_root(),
            assets_dir: None,
            switcher_args: vec!["--admin-socket".into(), admin_socket],
            admin: SWITCHER_ADMIN.into(),
            origins: crate::layout::DEFAULT_ORIGINS,
            peer_fill: true,
        }
    }

    /// An end-to-end test's stack: [`StackConfig::in_namespaces`] on the workspace's debug
    /// build, with a run directory of its own under the temp directory (named after `tag`).
    /// Fails the test at once, saying what to run, when a service binary is not built.
    pub fn for_test(
        tag: &str,
        pair: &test_kit::netns::Pair,
        bpf: &test_kit::netns::BpfFs,
    ) -> StackConfig {
        let bin_dir = crate::workspace().join("target/debug");
        let services = crate::layout::services();
        let mut binaries: Vec<&str> = services
            .iter()
            .filter_map(crate::layout::Service::binary)
            .collect();
        binaries.dedup();
        test_kit::process::require_binaries(&bin_dir, &binaries);
        let run_dir = std::env::temp_dir().join(test_kit::netns::unique(tag));
        StackConfig::in_namespaces(bin_dir, run_dir, pair, bpf)
    }

    /// Where the drills inject faults into this stack: on its first origin (the primary of
    /// the two-origin stack).
    pub fn fault_site(&self) -> crate::faults::Site {
        self.fault_site_on(0)
    }

    /// Where the drills inject faults into this stack's origin `i` (0-based, preference
    /// order).
    pub fn fault_site_on(&self, i: usize) -> crate::faults::Site {
        let name = crate::layout::origin_names(self.origins)[i].clone();
        crate::faults::Site {
            netns: self.netns.clone(),
            port: crate::layout::origin_port(i),
            stream_dir: hls_dir(&self.run_dir, &name).join(&self.stream),
            origin: name,
            service_user: self.service_user.clone(),
        }
    }

    /// Where to reach the admin server from this host (an unspecified bind address is reached
    /// through loopback).
    pub fn admin_addr(&self) -> String {
        if self.admin.ip().is_unspecified() {
            format!("127.0.0.1:{}", self.admin.port())
        } else {
            self.admin.to_string()
        }
    }
}

/// One service: how to start it and, while it runs, its process.
pub struct Service {
    /// Full argv (the binary first).
    pub argv: Vec<String>,
    /// Runs as root (switcher-ctl) rather than as the service user.
    pub privileged: bool,
    /// The address that answers once it is ready (checked inside the namespace).
    pub ready: Option<String>,
    /// The running process.
    pub child: Option<Child>,
}

/// The running stack.
pub struct Stack {
    /// Its configuration.
    pub cfg: StackConfig,
    /// Services by name.
    pub services: BTreeMap<String, Service>,
}

/// Runs `f` on a thread inside network namespace `ns` (or here when `None`).
pub use test_kit::netns::run_in as in_netns;

/// Waits until `addr` accepts TCP connections inside `ns`.
pub fn wait_port(ns: Option<&str>, addr: &str, timeout: Duration) -> bool {
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(_) => return false,
    };
    in_netns(ns, move || {
        test_kit::wait::try_wait_until(timeout, || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })
    })
}

/// GETs `http://addr/path` inside `ns` with a fresh connection.
pub fn http_get(
    ns: Option<&str>,
    addr: &str,
    path: &str,
    timeout: Duration,
) -> Result<test_kit::http::Response> {
    test_kit::http::get_in(ns, addr, path, timeout)
        .with_context(|| format!("GET http://{addr}{path}"))
}

impl StackConfig {
    fn hls_dir(&self, which: &str) -> PathBuf {
        hls_dir(&self.run_dir, which)
    }
    fn bin(&self, name: &str) -> String {
        self.bin_dir.join(name).to_string_lossy().into_owned()
    }
    fn rtmp_url(&self) -> String {
        format!(
            "rtmp://{}:{RTMP_PORT}/live/{}",
            host_for(self.local_ip()),
            self.stream
        )
    }
    /// Address the ingest and the origins listen on: the VIP's when it is a loopback
    /// address (nothing else needs them); otherwise every address, since local clients
    /// (packagers, scrapes) use 127.0.0.1 and viewers the VIP.
    fn bind_ip(&self) -> std::net::IpAddr {
        if self.vip.ip().is_loopback() {
            self.vip.ip()
        } else {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        }
    }
    /// The IPv6 VIP served next to a loopback IPv4 one (dual stack on `lo`): `::1`, on the
    /// same port. The origins then listen on `::1` too, so the data plane can steer IPv6
    /// viewers to them (it rewrites the port, never the address family).
    fn vip_v6(&self) -> Option<std::net::Ipv6Addr> {
        (self.vip.ip() == std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST))
            .then_some(std::net::Ipv6Addr::LOCALHOST)
    }
    /// Where local clients reach what listens on [`StackConfig::bind_ip`].
    fn local_ip(&self) -> std::net::IpAddr {
        match self.bind_ip() {
            ip if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
            ip => ip,
        }
    }
}

impl Stack {
    /// Builds the service table for `cfg` (nothing started).
    pub fn new(cfg: StackConfig) -> Stack {
        let mut services = BTreeMap::new();
        let svc = |argv: Vec<String>, privileged: bool, ready: Option<String>| Service {
            argv,
            privileged,
            ready,
            child: None,
        };
        services.insert(
            "ingest".into(),
            svc(
                vec![
                    cfg.bin("ingest"),
                    "--listen".into(),
                    format!("{}:{RTMP_PORT}", host_for(cfg.bind_ip())),
                    "--admin".into(),
                    INGEST_ADMIN.to_string(),
                ],
                false,
                Some(format!("{}:{RTMP_PORT}", host_for(cfg.local_ip()))),
            ),
        );
        let (w, h, fps) = cfg.video;
        services.insert(
            "publisher".into(),
            svc(
                std::iter::once("ffmpeg".to_string())
                    .chain(
                        live_publisher(w, h, fps)
                            .video_bitrate("2000k")
                            .audio_bitrate("128k")
                            .args(&cfg.rtmp_url()),
                    )
                    .collect(),
                false,
                None,
            ),
        );
        let names = crate::layout::origin_names(cfg.origins);
        for (i, which) in names.iter().enumerate() {
            let admin = crate::layout::packager_admin(i);
            services.insert(
                format!("packager-{which}"),
                svc(
                    vec![
                        cfg.bin("packager"),
                        "--source".into(),
                        cfg.rtmp_url(),
                        "--out".into(),
                        cfg.hls_dir(which).to_string_lossy().into_owned(),
                        "--admin".into(),
                        admin.to_string(),
                    ],
                    false,
                    Some(admin.to_string()),
                ),
            );
        }
        let vip_host = cfg.vip.ip();
        let origin_url = |i: usize| {
            format!(
                "http://{}:{}",
                host_for(vip_host),
                crate::layout::origin_port(i)
            )
        };
        for (i, which) in names.iter().enumerate() {
            let port = crate::layout::origin_port(i);
            // Every other origin is a peer, the next one first, so that the fills of several
            // failing origins spread (origin's `peer`: a file this one cannot serve).
            let peers = (1..names.len())
                .filter(|_| cfg.peer_fill)
                .flat_map(|k| ["--peer".into(), origin_url((i + k) % names.len())]);
            services.insert(
                format!("origin-{which}"),
                svc(
                    vec![
                        cfg.bin("origin"),
                        "--root".into(),
                        cfg.hls_dir(which).to_string_lossy().into_owned(),
                        "--listen".into(),
                        format!("{}:{port}", host_for(cfg.bind_ip())),
                    ]
                    .into_iter()
                    .chain(
                        cfg.vip_v6()
                            .map(|v6| ["--listen".into(), format!("[{v6}]:{port}")])
                            .into_iter()
                            .flatten(),
                    )
                    .chain(peers)
                    .collect(),
                    false,
                    Some(format!("{}:{port}", host_for(cfg.local_ip()))),
                ),
            );
        }
        let mut sw = vec![
            cfg.bin("switcher-ctl"),
            "run".into(),
            "--iface".into(),
            cfg.iface.clone(),
            "--vip".into(),
            cfg.vip.to_string(),
            "--stream".into(),
            cfg.stream.clone(),
            "--pin-root".into(),
            cfg.pin_root.to_string_lossy().into_owned(),
            "--admin".into(),
            cfg.admin.to_string(),
        ];
        if cfg.origins == crate::layout::DEFAULT_ORIGINS {
            // The seed's two-origin shorthand, as the deployment's units use it.
            sw.extend([
                "--primary".into(),
                origin_url(0),
                "--backup".into(),
                origin_url(1),
            ]);
        } else {
            for (i, name) in names.iter().enumerate() {
                sw.extend(["--origin".into(), format!("{name}={}", origin_url(i))]);
            }
        }
        if let Some(v6) = cfg.vip_v6() {
            sw.push("--vip".into());
            sw.push(format!("[{v6}]:{}", cfg.vip.port()));
        }
        if let Some(a) = &cfg.assets_dir {
            sw.push("--assets-dir".into());
            sw.push(a.to_string_lossy().into_owned());
        }
        sw.extend(cfg.switcher_args.iter().cloned());
        services.insert("switcher-ctl".into(), svc(sw, true, Some(cfg.admin_addr())));
        Stack { cfg, services }
    }

    /// Requires `key` to publish (`ingest --publish-key`) and gives it to our publisher.
    pub fn set_publish_key(&mut self, key: &str) {
        if let Some(ingest) = self.services.get_mut("ingest") {
            ingest.argv.extend(["--publish-key".into(), key.into()]);
        }
        if let Some(url) = self
            .services
            .get_mut("publisher")
            .and_then(|p| p.argv.last_mut())
        {
            url.push_str(&format!("?key={key}"));
        }
    }

    /// Names of the services, in start order: the ingest, the publisher, the packagers, the
    /// origins, switcher-ctl.
    pub fn service_names(&self) -> Vec<String> {
        let names = crate::layout::origin_names(self.cfg.origins);
        let mut out = vec!["ingest".to_string(), "publisher".into()];
        out.extend(names.iter().map(|n| format!("packager-{n}")));
        out.extend(names.iter().map(|n| format!("origin-{n}")));
        out.push("switcher-ctl".into());
        out
    }

    /// Starts every service in order, waiting for each to be ready.
    pub fn start_all(&mut self) -> Result<()> {
        fs::create_dir_all(self.cfg.run_dir.join("logs"))?;
        let origins = crate::layout::origin_names(self.cfg.origins);
        for which in &origins {
            fs::create_dir_all(self.cfg.hls_dir(which))?;
        }
        if self.cfg.service_user.is_some() {
            self.stage_binaries()?;
        }
        if let Some(user) = &self.cfg.service_user {
            // Only the HLS directories (what the packagers write), and not recursively:
            // their content is the service user's already, and a recursive chown as root
            // would act on whatever that user put there.
            for which in &origins {
                give_dir(&self.cfg.hls_dir(which), user)?;
            }
        }
        for name in self.service_names() {
            if name == "publisher" && !self.cfg.publisher {
                continue;
            }
            self.start(&name)?;
        }
        Ok(())
    }

    /// Runs the unprivileged services from copies of their binaries (see [`stage_binaries`]).
    fn stage_binaries(&mut self) -> Result<()> {
        const STAGED: [&str; 3] = ["ingest", "packager", "origin"];
        let staged = stage_binaries(&self.cfg.bin_dir, &self.cfg.run_dir, &STAGED)?;
        for name in STAGED {
            let from = self.cfg.bin_dir.join(name).to_string_lossy().into_owned();
            let to = staged.join(name).to_string_lossy().into_owned();
            for svc in self.services.values_mut().filter(|s| !s.privileged) {
                if svc.argv[0] == from {
                    svc.argv[0] = to.clone();
                }
            }
        }
        Ok(())
    }

    /// Starts (or restarts) one service and waits until it is ready.
    pub fn start(&mut self, name: &str) -> Result<()> {
        let ns = self.cfg.netns.clone();
        let user = self.cfg.service_user.clone();
        let log_path = self.cfg.run_dir.join("logs").join(format!("{name}.log"));
        let svc = self
            .services
            .get_mut(name)
            .ok_or_else(|| anyhow!("no service {name}"))?;
        let as_user = if svc.privileged {
            None
        } else {
            user.as_deref()
        };
        let mut argv = command_prefix(ns.as_deref(), as_user);
        argv.extend(svc.argv.iter().cloned());
        let child = spawn_logged(name, &argv, &log_path)?;
        let pid = child.id();
        svc.child = Some(child);
        let pids = self.cfg.run_dir.join("pids");
        fs::create_dir_all(&pids)?;
        {
            use std::io::Write as _;
            open_nofollow(&pids.join(name), false)?.write_all(format!("{pid}\n").as_bytes())?;
        }
        if let Some(addr) = svc.ready.clone() {
            wait_ready(name, ns.as_deref(), &addr, &log_path)?;
        }
        Ok(())
    }

    /// The active origin switcher-ctl reports (`""` when its admin is unreachable).
    pub fn active(&self) -> String {
        self.healthz()
            .ok()
            .and_then(|h| h["active"].as_str().map(String::from))
            .unwrap_or_default()
    }

    /// Whether switcher-ctl reports `origin` healthy.
    pub fn healthy(&self, origin: &str) -> bool {
        self.healthz()
            .map(|h| h["origins"][origin]["healthy"] == true)
            .unwrap_or(false)
    }

    /// Process id of a running service.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.services.get(name)?.child.as_ref().map(|c| c.id())
    }

    /// Sends `signal` (e.g. libc::SIGKILL) to a service and reaps it.
    pub fn kill(&mut self, name: &str, signal: i32) -> Result<()> {
        let svc = self
            .services
            .get_mut(name)
            .ok_or_else(|| anyhow!("no service {name}"))?;
        if let Some(child) = svc.child.take() {
            stop_child(child, signal);
        }
        Ok(())
    }

    /// Sends SIGSTOP/SIGCONT (freeze drills) without reaping.
    pub fn signal(&self, name: &str, signal: i32) -> Result<()> {
        let pid = self
            .pid(name)
            .ok_or_else(|| anyhow!("{name} not running"))?;
        // SAFETY: plain kill(2).
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            bail!(
                "signal {signal} to {name}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// switcher-ctl's /healthz as JSON.
    pub fn healthz(&self) -> Result<serde_json::Value> {
        let response = http_get(
            self.cfg.netns.as_deref(),
            &self.cfg.admin_addr(),
            "/healthz",
            Duration::from_secs(2),
        )?;
        Ok(response.json()?)
    }

    /// Stops every service (switcher-ctl last, so the VIP works until the end) and detaches.
    pub fn stop(&mut self) {
        let names = self.service_names();
        for name in names
            .iter()
            .rev()
            .filter(|n| *n != "switcher-ctl")
            .chain(["switcher-ctl".to_string()].iter())
        {
            let _ = self.kill(name, libc::SIGTERM);
        }
        let mut detach = Vec::new();
        if let Some(ns) = &self.cfg.netns {
            detach.extend(["ip".to_string(), "netns".into(), "exec".into(), ns.clone()]);
        }
        detach.extend([
            self.cfg.bin("switcher-ctl"),
            "detach".into(),
            "--pin-root".into(),
            self.cfg.pin_root.to_string_lossy().into_owned(),
        ]);
        let _ = Command::new(&detach[0])
            .args(&detach[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The host part of an origin URL for a VIP address: origins listen on every address, so the
/// VIP's own address reaches them.
fn host_for(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// Opens `path` for writing (appending, or truncating) without following a symlink at its
/// last component: root writes logs and pid files in a run directory that an earlier run's
/// service user may have been able to write to.
fn open_nofollow(path: &Path, append: bool) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("opening {} (a symlink is refused)", path.display()))
}

/// Starts `argv` (the whole command line: namespace and user prefix included, see
/// [`command_prefix`]) with stdin closed, stdout and stderr appended to `log_path` (not
/// following a symlink), and `RUST_LOG` passed on (`info` by default).
pub fn spawn_logged(name: &str, argv: &[String], log_path: &Path) -> Result<Child> {
    let log = open_nofollow(log_path, true)?;
    Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .spawn()
        .with_context(|| format!("starting {name}: {}", argv.join(" ")))
}

/// Waits until the service `name` accepts connections on `addr` inside `ns`; an error with
/// the tail of its log when it does not within [`READY_TIMEOUT`].
pub fn wait_ready(name: &str, ns: Option<&str>, addr: &str, log_path: &Path) -> Result<()> {
    if wait_port(ns, addr, READY_TIMEOUT) {
        return Ok(());
    }
    let tail = fs::read_to_string(log_path).unwrap_or_default();
    let tail: Vec<&str> = tail.lines().rev().take(15).collect();
    bail!(
        "{name} not ready on {addr} within {READY_TIMEOUT:?}; log tail:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}

/// Sends `signal` (e.g. `libc::SIGTERM`) to `child` and reaps it; SIGKILL when it has not
/// exited after 10 s. `ip netns exec` and `setpriv` exec the command, so the child's pid is
/// the service's.
pub fn stop_child(mut child: Child, signal: i32) {
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(child.id() as i32, signal) };
    let exited = test_kit::wait::try_wait_until(Duration::from_secs(10), || {
        child.try_wait().ok().flatten().is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Creates `dir` (and its parents, as root) and gives it, not recursively, to `user`: a
/// directory a service running as `user` writes in.
pub fn give_dir(dir: &Path, user: &str) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (uid, gid) = user_ids(user)?;
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
        .with_context(|| format!("chown {} to {user}", dir.display()))
}

/// Copies the unprivileged services' binaries (`names` in `bin_dir`) into `<run_dir>/bin`, so
/// the service user can run them wherever the build tree is (a checkout under /root is not
/// readable by others); the staged directory.
pub fn stage_binaries(bin_dir: &Path, run_dir: &Path, names: &[&str]) -> Result<PathBuf> {
    let staged = run_dir.join("bin");
    fs::create_dir_all(&staged)?;
    for name in names {
        let (from, to) = (bin_dir.join(name), staged.join(name));
        fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(staged)
}

/// uid and gid of `user` (its primary group).
fn user_ids(user: &str) -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id").args([flag, user]).output()?;
        if !out.status.success() {
            bail!("no user {user} (scripts/setup creates it)");
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

/// The run directory's HLS output for `which` (an origin's name: primary, backup, o3...).
pub fn hls_dir(run_dir: &Path, which: &str) -> PathBuf {
    run_dir.join(format!("hls-{which}"))
}

/// The live test publisher of the stack and the lab: the test pattern at `w`x`h` and `fps`
/// with a 440 Hz tone, in real time, low latency, a keyframe exactly every 2 s (the packagers
/// cut 2 s segments); each says its bitrates.
pub fn live_publisher(w: u32, h: u32, fps: u32) -> test_kit::Publisher {
    test_kit::Publisher::new(w, h, fps)
        .audio_source("sine=frequency=440:sample_rate=48000")
        .log_level("warning")
        .realtime()
        .zerolatency()
        .yuv420p()
        .fixed_gop(fps * 2)
}

/// The argv prefix that runs a command inside network namespace `ns` (when given) as the
/// unprivileged `user` with no-new-privs (when given): `ip netns exec NS setpriv ... --`.
pub fn command_prefix(ns: Option<&str>, user: Option<&str>) -> Vec<String> {
    let mut argv: Vec<String> = Vec::new();
    if let Some(ns) = ns {
        argv.extend(["ip", "netns", "exec", ns].map(String::from));
    }
    if let Some(u) = user {
        argv.extend([
            "setpriv".into(),
            format!("--reuid={u}"),
            format!("--regid={u}"),
            "--init-groups".into(),
            "--no-new-privs".into(),
            "--".into(),
        ]);
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(origins: usize, policy: &str) -> StackConfig {
        StackConfig {
            bin_dir: "/bin-dir".into(),
            run_dir: "/run-dir".into(),
            iface: "lo".into(),
            vip: "127.0.0.1:8080".parse().expect("vip"),
            stream: "demo".into(),
            publisher: true,
            video: (640, 360, 30),
            netns: None,
            service_user: None,
            pin_root: "/pins".into(),
            assets_dir: None,
            switcher_args: vec!["--policy".into(), policy.into()],
            admin: SWITCHER_ADMIN.into(),
            origins,
            peer_fill: true,
        }
    }

    fn arg_after<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn four_origins_are_four_pairs_on_their_ports_and_named_to_switcher_ctl() {
        let stack = Stack::new(config(4, "balance"));
        let names = stack.service_names();
        assert_eq!(
            names,
            [
                "ingest",
                "publisher",
                "packager-o1",
                "packager-o2",
                "packager-o3",
                "packager-o4",
                "origin-o1",
                "origin-o2",
                "origin-o3",
                "origin-o4",
                "switcher-ctl"
            ]
        );
        assert!(names.iter().all(|n| stack.services.contains_key(n)));
        assert_eq!(stack.services.len(), names.len());
        let origin4 = &stack.services["origin-o4"].argv;
        // A loopback IPv4 VIP comes with [::1] (dual stack): the origins listen on both.
        assert_eq!(
            arg_after(origin4, "--listen"),
            ["127.0.0.1:8084", "[::1]:8084"]
        );
        assert_eq!(arg_after(origin4, "--root"), ["/run-dir/hls-o4"]);
        // Every other origin is a peer, the next one first.
        assert_eq!(
            arg_after(origin4, "--peer"),
            [
                "http://127.0.0.1:8081",
                "http://127.0.0.1:8082",
                "http://127.0.0.1:8083"
            ]
        );
        let packager3 = &stack.services["packager-o3"];
        assert_eq!(arg_after(&packager3.argv, "--admin"), ["127.0.0.1:9185"]);
        assert_eq!(arg_after(&packager3.argv, "--out"), ["/run-dir/hls-o3"]);
        let sw = &stack.services["switcher-ctl"].argv;
        assert_eq!(
            arg_after(sw, "--origin"),
            [
                "o1=http://127.0.0.1:8081",
                "o2=http://127.0.0.1:8082",
                "o3=http://127.0.0.1:8083",
                "o4=http://127.0.0.1:8084"
            ]
        );
        assert_eq!(arg_after(sw, "--policy"), ["balance"]);
        assert!(arg_after(sw, "--primary").is_empty());
        assert_eq!(arg_after(sw, "--vip"), ["127.0.0.1:8080", "[::1]:8080"]);
        // The drills' site of origin 3 of 4: its port and its HLS directory.
        let site = stack.cfg.fault_site_on(2);
        assert_eq!((site.origin.as_str(), site.port), ("o3", 8083));
        assert_eq!(site.stream_dir, Path::new("/run-dir/hls-o3/demo"));
        assert_eq!(stack.cfg.fault_site().origin, "o1");
    }

    #[test]
    fn two_origins_keep_the_primary_backup_shorthand() {
        let stack = Stack::new(config(2, "failover"));
        assert_eq!(stack.service_names(), SERVICES);
        let sw = &stack.services["switcher-ctl"].argv;
        assert_eq!(arg_after(sw, "--primary"), ["http://127.0.0.1:8081"]);
        assert_eq!(arg_after(sw, "--backup"), ["http://127.0.0.1:8082"]);
        assert!(arg_after(sw, "--origin").is_empty());
        let site = stack.cfg.fault_site();
        assert_eq!((site.origin.as_str(), site.port), ("primary", 8081));
        assert_eq!(site.stream_dir, Path::new("/run-dir/hls-primary/demo"));
        assert_eq!(
            arg_after(&stack.services["origin-backup"].argv, "--listen"),
            ["127.0.0.1:8082", "[::1]:8082"]
        );
    }
}

//! Loading, attaching and pinning the eBPF data plane, and adopting or removing what an earlier
//! `switcher-ctl run` left pinned.
//!
//! # Pin layout (under the pin root, default `/sys/fs/bpf/switcher`)
//! * `maps/SWITCHER_CONFIG`, `maps/SWITCHER_ORIGINS`, `maps/SWITCHER_ACTIVE`,
//!   `maps/SWITCHER_MAGLEV`, `maps/SWITCHER_MAGLEV_LIVE`, `maps/SWITCHER_FLOWS`,
//!   `maps/SWITCHER_HANDSHAKES`, `maps/SWITCHER_STATS`, `maps/SWITCHER_FLOWS_REMOVED`,
//!   `maps/SWITCHER_FLOW_CACHE`, `maps/SWITCHER_FLOW_CACHE_VERSIONS`: every map (see
//!   `switcher_common::map_names`).
//! * `progs/switcher_xdp`, `progs/switcher_tc_ingress`, `progs/switcher_tc_egress`, and two
//!   programs that are never attached, which user space runs with BPF_PROG_TEST_RUN:
//!   `progs/switcher_emit_rst` (transmits edge resets, see [`crate::edge_rst`]) and
//!   `progs/switcher_mark_finishing` (marks a flow finishing in place, see
//!   [`crate::finish_mark`]).
//! * `links/xdp`: the XDP bpf_link (when XDP is used); it keeps the program attached after
//!   the process exits, so a control-plane restart or crash leaves traffic flowing.
//!
//! TC programs are attached through a clsact qdisc with netlink filters (not tcx links), so
//! `tc filter show` and `bpftool net show` list them; those filters live in the qdisc, not
//! in a link, and are removed by [`detach`] by program name. Where they are attached (ifindex,
//! mode) is kept in `SWITCHER_CONFIG` itself, so no state lives outside bpffs.
//!
//! # Flow table size
//! `SWITCHER_FLOWS` gets [`AttachConfig::max_flows`] entries, set in the object before it is
//! loaded (a map's size is fixed at creation); `SWITCHER_HANDSHAKES` has a fixed size
//! (`switcher_common::HANDSHAKE_BUCKETS`), which user space checks when it maps it. Adopting pinned
//! maps keeps their size, whatever `max_flows` says, because replacing them would drop every
//! viewer's flow: a mismatch is logged with both numbers and how to apply the new size.

use std::{
    collections::HashSet,
    fs,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    maps::{Array, HashMap, IterableMap, Map, MapData, PerCpuArray},
    programs::{
        SchedClassifier, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, TcAttachOptions, TcAttachType},
    },
};
use switcher_common::{
    ATTACH_TC, ATTACH_XDP_GENERIC, ATTACH_XDP_NATIVE, Counters, FAMILY_V4, FAMILY_V6,
    FLOW_FINISHING, FLOW_ORIGIN_CLOSED, FlowKey, FlowValue, Handshake, MAGLEV_NO_ORIGIN,
    MAGLEV_SIZE, MAGLEV_TABLES, MAX_ORIGINS, MIN_FLOWS, MaglevTable, ORIGIN_CONFIGURED,
    ORIGIN_FALLBACK, ORIGIN_REMOTE, Origin, STATS_SLOTS, VIP_CHECK_LISTENER, VIP_ENABLED,
    VIP_HAS_V4, VIP_HAS_V6, VipConfig, map_names, prog_names,
};

use crate::dataplane::{Aborted, DataPlane, OriginIndex};
use crate::sockdiag::{self, SockDiag};

/// The compiled data plane, built by `build.rs` from `crates/switcher-ebpf`.
pub static EBPF_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/switcher"));

/// Default pin root of the contract.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/switcher";
/// Below this many flows per CPU (the maps' LRU lists are per CPU, and a CPU evicts from its
/// own list only), `load_object` warns: uneven RSS would evict live flows early.
const FEW_FLOWS_PER_CPU: u32 = 256;
/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// TC filter priority of our classifiers (low number = runs first). Fixed so a restarted
/// control plane and `tc filter show` find them at a known place.
const TC_PRIORITY: u16 = 1;

/// How to attach the request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// Native XDP if the driver has it, else generic XDP, else TC ingress. On `lo`, TC ingress
    /// (then generic XDP): faster there, see `load_and_attach`.
    #[default]
    Auto,
    /// Native (driver) XDP only.
    Native,
    /// Generic (skb) XDP only.
    Generic,
    /// TC ingress classifier only.
    Tc,
}

impl std::str::FromStr for AttachMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Self::Auto,
            "native" => Self::Native,
            "generic" => Self::Generic,
            "tc" => Self::Tc,
            other => bail!("unknown attach mode {other:?} (auto|native|generic|tc)"),
        })
    }
}

/// What to attach and where.
#[derive(Clone, Debug)]
pub struct AttachConfig {
    /// Interface whose ingress carries viewers' requests and whose egress carries replies.
    pub iface: String,
    /// The VIP (address and port viewers connect to).
    pub vip: SocketAddr,
    /// An IPv6 VIP address served on the same port as `vip`, when `vip` is IPv4 (dual stack).
    pub vip_v6: Option<Ipv6Addr>,
    /// Origins by index (0 primary, 1 backup). An origin whose address equals the VIP's (or is
    /// unspecified) only gets its port rewritten.
    pub origins: Vec<SocketAddr>,
    /// Pin root on a bpffs.
    pub pin_root: PathBuf,
    /// Attach mode of the request path.
    pub mode: AttachMode,
    /// Entries of the flow table (at least
    /// [`MIN_FLOWS`]; [`switcher_common::MAX_FLOWS`] is the usual default). Split evenly
    /// between the CPUs (per-CPU LRU lists) and rounded up to a multiple of their number by the
    /// kernel. Only applied when the maps are created, not when pinned ones are adopted.
    pub max_flows: u32,
    /// Direct server return: an origin whose address is not on this host is remote
    /// (`ORIGIN_REMOTE`, reached by IP-in-IP, see [`remote_origin`]) instead of getting its
    /// address rewritten.
    pub dsr: bool,
}

impl AttachConfig {
    /// The common case: native XDP on `iface`, one VIP family, origins on this host or
    /// rewritten to their address (no DSR), and the default table size. Callers change the
    /// rest with struct update syntax.
    pub fn native(
        iface: &str,
        vip: SocketAddr,
        origins: Vec<SocketAddr>,
        pin_root: PathBuf,
    ) -> Self {
        Self {
            iface: iface.to_string(),
            vip,
            vip_v6: None,
            origins,
            pin_root,
            mode: AttachMode::Native,
            max_flows: switcher_common::MAX_FLOWS,
            dsr: false,
        }
    }

    /// [`AttachConfig::native`] with the default two origins (the contract's primary on
    /// 8081 and backup on 8082, see [`crate::config::DEFAULT_PRIMARY`]) at `origin_ip`; the
    /// unspecified address stands for the VIP's own. What the namespace tests and the
    /// data-path benchmark attach.
    pub fn primary_backup(
        iface: &str,
        vip: SocketAddr,
        origin_ip: IpAddr,
        pin_root: PathBuf,
    ) -> Self {
        let origins = [8081, 8082]
            .into_iter()
            .map(|port| SocketAddr::new(origin_ip, port))
            .collect();
        Self::native(iface, vip, origins, pin_root)
    }
}

/// The data plane's maps, opened from their pins. Implements [`DataPlane`].
pub struct Pinned {
    root: PathBuf,
    config: Array<MapData, VipConfig>,
    origins: Array<MapData, Origin>,
    active: Array<MapData, u32>,
    maglev: Array<MapData, MaglevTable>,
    maglev_live: Array<MapData, u32>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    handshakes: crate::handshake_table::HandshakeTable,
    stats: PerCpuArray<MapData, Counters>,
    flows_removed: Array<MapData, u64>,
    /// Each CPU's copies of flows (read for edge resets) and their versions (made stale after
    /// every change to `flows`): [`crate::flow_cache`].
    flow_cache: crate::flow_cache::Copies,
    cache_versions: crate::flow_cache::Versions,
    /// The edge-reset transmitter, opened on first use; `Some(None)` once it turned out to be
    /// unavailable (not native XDP, or pins of a build without it), so that is logged once.
    emitter: Option<Option<crate::edge_rst::Emitter>>,
    /// The program that marks flows finishing in place, opened on first use; `Some(None)`
    /// with pins of a build without it (then a map update does it, see
    /// [`crate::finish_mark`]), logged once.
    marker: Option<Option<crate::finish_mark::FinishMarker>>,
    /// Keys of flows retired by a generation change and not deleted yet: deleted a few
    /// thousand per call of [`DataPlane::reap_retired`], after the failover, not during it.
    retired: Vec<FlowKey>,
}

/// Whether `a` and `b` name the same origin (address, port, kind), generations and
/// `ORIGIN_FALLBACK` (which follows its health) aside.
fn same_origin(a: &Origin, b: &Origin) -> bool {
    let kind = |o: &Origin| o.flags & !ORIGIN_FALLBACK;
    (a.addr_v4, a.addr_v6, a.port_be, kind(a)) == (b.addr_v4, b.addr_v6, b.port_be, kind(b))
}

fn maps_dir(root: &Path) -> PathBuf {
    root.join("maps")
}
fn progs_dir(root: &Path) -> PathBuf {
    root.join("progs")
}
fn xdp_link_path(root: &Path) -> PathBuf {
    root.join("links/xdp")
}

/// Whether `path` is on a bpffs.
fn is_bpffs(path: &Path) -> bool {
    nix_statfs_magic(path)
        .map(|m| m == BPF_FS_MAGIC)
        .unwrap_or(false)
}

fn nix_statfs_magic(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a properly sized out-buffer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut buf) };
    (rc == 0).then_some(buf.f_type as i64)
}

/// Whether `path` is the root of a mount: on another device than its parent.
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (fs::metadata(path), path.parent().map(fs::metadata)) {
        (Ok(me), Some(Ok(parent))) => me.dev() != parent.dev(),
        _ => false,
    }
}

/// What [`ensure_bpffs`] did to the file system, undone on drop unless [`BpffsMount::keep`]
/// is called: an attach that fails leaves no mount and no directory behind.
#[must_use = "dropping it undoes the mount; call keep() once the pins are in place"]
#[derive(Debug, Default)]
pub struct BpffsMount {
    /// The pin root, when a bpffs was mounted on it.
    mounted: Option<PathBuf>,
    /// Directories created on the way, outermost first.
    created: Vec<PathBuf>,
}

impl BpffsMount {
    /// Keeps the mount and the directories (the pins live there now).
    pub fn keep(mut self) {
        self.mounted = None;
        self.created.clear();
    }

    /// Whether a bpffs was mounted on the pin root.
    pub fn mounted(&self) -> bool {
        self.mounted.is_some()
    }
}

impl Drop for BpffsMount {
    fn drop(&mut self) {
        if let Some(path) = self.mounted.take() {
            match umount(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "unmounted the bpffs mounted for this attach")
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "unmounting bpffs failed")
                }
            }
        }
        for dir in self.created.drain(..).rev() {
            // Only if empty: whatever something else put there stays.
            let _ = fs::remove_dir(&dir);
        }
    }
}

fn c_path(path: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt as _;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

/// mount -t bpf -o mode=0700,nosuid,nodev,noexec bpf `path` (the options the systemd unit
/// uses for /sys/fs/bpf).
fn mount_bpffs(path: &Path) -> std::io::Result<()> {
    let target = c_path(path)?;
    // SAFETY: NUL-terminated strings that outlive the call; mount(2) does not keep them.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn umount(path: &Path) -> std::io::Result<()> {
    let target = c_path(path)?;
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(target.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes sure the pin root is on a bpffs, touching as little as possible:
/// * already on a bpffs (the pin root, or the nearest existing ancestor, e.g. /sys/fs/bpf):
///   only the missing directories are created;
/// * otherwise a bpffs is mounted on the pin root itself, never on a parent (that would hide
///   the parent's contents), and only when the pin root is missing or an empty directory.
///
/// The returned guard undoes the mount and the new directories unless kept. Mounting needs
/// CAP_SYS_ADMIN; under systemd the unit mounts /sys/fs/bpf instead.
pub fn ensure_bpffs(pin_root: &Path) -> Result<BpffsMount> {
    if !pin_root.is_absolute() || pin_root.parent().is_none() {
        bail!(
            "pin root {} must be an absolute path other than /",
            pin_root.display()
        );
    }
    let mut guard = BpffsMount::default();
    // The missing directories, innermost first, and the nearest existing ancestor.
    let mut missing = Vec::new();
    let mut existing = pin_root;
    while !existing.exists() {
        missing.push(existing.to_path_buf());
        existing = existing
            .parent()
            .ok_or_else(|| anyhow!("no existing ancestor of {}", pin_root.display()))?;
    }
    let on_bpffs = is_bpffs(existing);
    if !on_bpffs && missing.is_empty() {
        // The pin root exists on another file system: mount over it only if that hides nothing.
        if !pin_root.is_dir() {
            bail!("pin root {} is not a directory", pin_root.display());
        }
        let empty = fs::read_dir(pin_root)
            .with_context(|| format!("reading {}", pin_root.display()))?
            .next()
            .is_none();
        if !empty {
            bail!(
                "pin root {} is not on a bpffs and not empty: refusing to mount a bpffs over its contents (mount one there yourself, or choose an empty or new directory)",
                pin_root.display()
            );
        }
    }
    for dir in missing.iter().rev() {
        fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
        guard.created.push(dir.clone());
    }
    if !on_bpffs {
        mount_bpffs(pin_root).with_context(|| {
            format!(
                "{} is not on a bpffs and mounting one there failed (needs CAP_SYS_ADMIN; or mount one first: mount -t bpf bpf {})",
                pin_root.display(),
                pin_root.display()
            )
        })?;
        guard.mounted = Some(pin_root.to_path_buf());
        tracing::info!(path = %pin_root.display(), "mounted bpffs on the pin root");
    }
    for dir in [
        maps_dir(pin_root),
        progs_dir(pin_root),
        pin_root.join("links"),
    ] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(guard)
}

fn ifindex(iface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(iface)?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("no interface named {iface:?}");
    }
    Ok(idx)
}

/// Whether edge resets can be sent where the request path described by `vip` is attached:
/// the `XDP_TX` of a live-frame run goes out through the interface's `ndo_xdp_xmit`, whatever
/// XDP mode the request path itself uses (native, or generic as on the DSR lab's veths), and
/// `lo` has none (see [`crate::edge_rst`]). A TC-attached request path keeps the origin
/// socket's reset only.
fn edge_resets_possible(vip: &VipConfig) -> Result<()> {
    let name = ifname(vip.ifindex)?;
    let loopback = std::fs::read_to_string(format!("/sys/class/net/{name}/flags"))
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .map_or(name == "lo", |flags| flags & libc::IFF_LOOPBACK as u32 != 0);
    match vip.attach_mode {
        ATTACH_XDP_NATIVE | ATTACH_XDP_GENERIC if !loopback => Ok(()),
        mode => bail!(
            "the request path is {} on {name}: only the origin socket's reset is sent",
            attach_mode_name(mode)
        ),
    }
}

fn ifname(index: u32) -> Result<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buffer of IF_NAMESIZE bytes as the function requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        bail!("no interface with index {index}");
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Ok(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}

fn open_map(root: &Path, name: &str) -> Result<Map> {
    let path = maps_dir(root).join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("map {name}"))
}

/// Builds the VIP map value for `cfg`.
fn vip_config(cfg: &AttachConfig, ifindex: u32, attach_mode: u32) -> VipConfig {
    let mut v = VipConfig {
        addr_v4: [0; 4],
        addr_v6: [0; 16],
        port_be: cfg.vip.port().to_be(),
        flags: VIP_ENABLED | VIP_CHECK_LISTENER,
        ifindex,
        attach_mode,
    };
    match cfg.vip.ip() {
        IpAddr::V4(a) => {
            v.addr_v4 = a.octets();
            v.flags |= VIP_HAS_V4;
        }
        IpAddr::V6(a) => {
            v.addr_v6 = a.octets();
            v.flags |= VIP_HAS_V6;
        }
    }
    if let Some(a) = cfg.vip_v6 {
        v.addr_v6 = a.octets();
        v.flags |= VIP_HAS_V6;
    }
    v
}

/// The origin map value for `addr`: the address is left zero ("the VIP's own") when it equals
/// the VIP's or is unspecified, so only the port is rewritten.
pub fn origin_value(addr: SocketAddr, vip: &VipConfig) -> Origin {
    let mut o = Origin {
        addr_v4: [0; 4],
        addr_v6: [0; 16],
        port_be: addr.port().to_be(),
        flags: ORIGIN_CONFIGURED,
        // Set by `Pinned::attach`, which knows the generation the slot had.
        generation: 0,
    };
    match addr.ip() {
        IpAddr::V4(a) if !a.is_unspecified() && a.octets() != vip.addr_v4 => o.addr_v4 = a.octets(),
        IpAddr::V6(a) if !a.is_unspecified() && a.octets() != vip.addr_v6 => o.addr_v6 = a.octets(),
        _ => {}
    }
    o
}

/// [`origin_value`] for a run with direct server return: an origin whose address is not on
/// this host (a UDP socket cannot bind it) is flagged `ORIGIN_REMOTE`. A remote origin is
/// named by its host's IPv4 address (the underlay between edges and origin hosts is IPv4;
/// IPv6 viewers reach it by 6in4) and must listen on the VIP's port, on the VIP (both
/// addresses of a dual-stack VIP: it answers viewers directly, unchanged).
/// docs/ARCHITECTURE.md, "Beyond one host".
pub fn remote_origin(addr: SocketAddr, vip: &VipConfig) -> Result<Origin> {
    let mut o = origin_value(addr, vip);
    if std::net::UdpSocket::bind(SocketAddr::new(addr.ip(), 0)).is_ok() {
        return Ok(o);
    }
    if !addr.is_ipv4() {
        bail!(
            "remote origin {addr}: name a remote origin by its host's IPv4 address (direct \
             server return encapsulates in IPv4, IPv6 viewers included)"
        );
    }
    if addr.port() != u16::from_be(vip.port_be) {
        bail!(
            "remote origin {addr}: must listen on the VIP's port {} (it answers viewers directly)",
            u16::from_be(vip.port_be)
        );
    }
    o.flags |= ORIGIN_REMOTE;
    Ok(o)
}

/// What the host lacks for direct server return on `iface`, one line each (empty: nothing),
/// reading sysctls through `read` (a path under `/proc/sys`, e.g. `net/ipv4/ip_forward`; `None`
/// when unreadable). docs/ARCHITECTURE.md, "Beyond one host":
/// * forwarding: the route lookup from XDP is a forwarding lookup, and an encapsulated packet
///   XDP cannot send yet (no neighbour entry) is forwarded by the stack;
/// * `accept_local` (the interface's or `all`): that packet's source is this host's own
///   address, which the stack otherwise drops as martian, so the neighbour is never resolved
///   and the viewer's connection never completes (`tests/dsr_netns.rs` saw exactly that).
pub fn dsr_sysctl_problems(iface: &str, read: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let on = |path: &str| read(path).is_some_and(|v| v.trim() == "1");
    let mut problems = Vec::new();
    if !on("net/ipv4/ip_forward") || !on(&format!("net/ipv4/conf/{iface}/forwarding")) {
        problems.push(format!(
            "IPv4 forwarding is off on {iface} (net.ipv4.ip_forward=1 turns it on): remote \
             origins are unreachable"
        ));
    }
    if !on("net/ipv4/conf/all/accept_local") && !on(&format!("net/ipv4/conf/{iface}/accept_local"))
    {
        problems.push(format!(
            "net.ipv4.conf.{iface}.accept_local is 0: a request encapsulated before the next \
             hop's neighbour entry exists is dropped as martian and the entry is never made"
        ));
    }
    problems
}

impl Pinned {
    /// Loads and attaches the programs per `cfg` and pins everything, or, when an earlier run
    /// left them pinned and attached, adopts them (open flows keep working). Either way the VIP
    /// and origins maps are (re)written from `cfg`; the active origin is kept when adopting.
    pub fn attach(cfg: &AttachConfig) -> Result<Pinned> {
        if cfg.origins.is_empty() || cfg.origins.len() > MAX_ORIGINS as usize {
            bail!("need 1..={MAX_ORIGINS} origins, got {}", cfg.origins.len());
        }
        if cfg.max_flows < MIN_FLOWS {
            bail!(
                "max flows {} is below the minimum of {MIN_FLOWS}",
                cfg.max_flows
            );
        }
        // The interface first: a wrong name must fail before anything is mounted or created.
        let idx = ifindex(&cfg.iface)?;
        let mut mounts = vec![ensure_bpffs(&cfg.pin_root)?];
        let adopted = match Pinned::open(&cfg.pin_root) {
            Ok(p) => {
                let old = p.vip()?;
                if old.ifindex == idx && p.is_attached(&old) {
                    tracing::info!(pin_root = %cfg.pin_root.display(), iface = %cfg.iface, "adopting pinned data plane");
                    p.warn_on_size_mismatch(cfg.max_flows);
                    Some((p, old.attach_mode))
                } else {
                    tracing::info!("pinned state is stale or for another interface; reloading");
                    drop(p);
                    detach(&cfg.pin_root)?;
                    mounts.push(ensure_bpffs(&cfg.pin_root)?);
                    None
                }
            }
            Err(e) if maps_dir(&cfg.pin_root).join(map_names::CONFIG).exists() => {
                // Pins of another build (e.g. without a map this one has): unusable, so start
                // over rather than fail on pinning over them.
                tracing::warn!(error = %format!("{e:#}"), "pinned maps cannot be adopted; reloading");
                detach(&cfg.pin_root)?;
                mounts.push(ensure_bpffs(&cfg.pin_root)?);
                None
            }
            Err(_) => None,
        };
        let (mut pinned, mode) = match adopted {
            Some(x) => x,
            None => {
                let mode = load_and_attach(cfg, idx)?;
                (Pinned::open(&cfg.pin_root)?, mode)
            }
        };
        let vip = vip_config(cfg, idx, mode);
        pinned
            .config
            .set(0, vip, 0)
            .context("writing SWITCHER_CONFIG")?;
        // Slots 0..n in order, the rest emptied: no gap (the data plane stops at the first
        // empty slot, see `map_names::ORIGINS`).
        let mut replaced = Vec::new();
        let mut values = Vec::with_capacity(MAX_ORIGINS as usize);
        for i in 0..MAX_ORIGINS {
            let mut value = match cfg.origins.get(i as usize) {
                Some(a) if cfg.dsr => remote_origin(*a, &vip)?,
                Some(a) => origin_value(*a, &vip),
                None => Origin {
                    addr_v4: [0; 4],
                    addr_v6: [0; 16],
                    port_be: 0,
                    flags: 0,
                    generation: 0,
                },
            };
            if value.flags & ORIGIN_CONFIGURED != 0 {
                // Until the control plane's first decision says which are healthy.
                value.flags |= ORIGIN_FALLBACK;
            }
            // The same origin in the slot keeps its generation, so its flows survive a
            // control-plane restart; another one (or none) gets the next, which retires the
            // flows pinned to the one it replaces (a fresh map's slots are all zero).
            let old = pinned
                .origins
                .get(&i, 0)
                .context("reading SWITCHER_ORIGINS")?;
            value.generation = if same_origin(&old, &value) {
                old.generation
            } else {
                if old.flags & ORIGIN_CONFIGURED != 0 {
                    replaced.push(i);
                }
                old.generation.wrapping_add(1)
            };
            values.push(value);
        }
        pinned.write_origins(&values, &replaced)?;
        mounts.into_iter().for_each(BpffsMount::keep);
        if cfg.dsr {
            let read = |p: &str| std::fs::read_to_string(Path::new("/proc/sys").join(p)).ok();
            for problem in dsr_sysctl_problems(&cfg.iface, read) {
                tracing::warn!("direct server return: {problem}");
            }
        }
        Ok(pinned)
    }

    /// Opens the pinned maps (for `status`, `set`, and adoption). Fails when nothing is pinned.
    pub fn open(pin_root: &Path) -> Result<Pinned> {
        if !maps_dir(pin_root).join(map_names::CONFIG).exists() {
            bail!(
                "nothing attached at {} (no pinned maps)",
                pin_root.display()
            );
        }
        Ok(Pinned {
            root: pin_root.to_path_buf(),
            config: Array::try_from(open_map(pin_root, map_names::CONFIG)?)?,
            origins: Array::try_from(open_map(pin_root, map_names::ORIGINS)?)?,
            active: Array::try_from(open_map(pin_root, map_names::ACTIVE)?)?,
            maglev: Array::try_from(open_map(pin_root, map_names::MAGLEV)?)?,
            maglev_live: Array::try_from(open_map(pin_root, map_names::MAGLEV_LIVE)?)?,
            flows: HashMap::try_from(open_map(pin_root, map_names::FLOWS)?)?,
            handshakes: crate::handshake_table::HandshakeTable::new(
                MapData::from_pin(maps_dir(pin_root).join(map_names::HANDSHAKES))
                    .context("opening pinned map SWITCHER_HANDSHAKES")?,
            )?,
            stats: PerCpuArray::try_from(open_map(pin_root, map_names::STATS)?)?,
            flows_removed: Array::try_from(open_map(pin_root, map_names::FLOWS_REMOVED)?)?,
            flow_cache: crate::flow_cache::Copies::new(
                MapData::from_pin(maps_dir(pin_root).join(map_names::FLOW_CACHE))
                    .context("opening pinned map SWITCHER_FLOW_CACHE")?,
            )?,
            cache_versions: crate::flow_cache::Versions::new(
                MapData::from_pin(maps_dir(pin_root).join(map_names::FLOW_CACHE_VERSIONS))
                    .context("opening pinned map SWITCHER_FLOW_CACHE_VERSIONS")?,
            )?,
            emitter: None,
            marker: None,
            retired: Vec::new(),
        })
    }

    /// The VIP map value (address, port, where attached).
    pub fn vip(&self) -> Result<VipConfig> {
        Ok(self.config.get(&0, 0)?)
    }

    /// Every origin slot, configured or not (`flags == 0` when not).
    pub fn origins(&self) -> Result<Vec<Origin>> {
        (0..MAX_ORIGINS)
            .map(|i| Ok(self.origins.get(&i, 0)?))
            .collect()
    }

    /// One line saying how and where the programs are attached.
    pub fn attach_info(&self) -> String {
        match self.vip() {
            Ok(v) => format!(
                "{} on {} (ifindex {}), pins under {}; edge resets: {}",
                attach_mode_name(v.attach_mode),
                ifname(v.ifindex).unwrap_or_else(|_| "?".into()),
                v.ifindex,
                self.root.display(),
                if edge_resets_possible(&v).is_err() {
                    "off (need XDP on an interface that transmits XDP frames, not lo; the origin socket's reset only)"
                } else if progs_dir(&self.root).join(prog_names::EMIT_RST).exists() {
                    "on"
                } else {
                    "off (pins of a build without them)"
                }
            ),
            Err(e) => format!("unreadable config: {e}"),
        }
    }

    /// Whether the programs described by `vip` are still attached (the pinned XDP link exists,
    /// or our TC ingress filter is on the interface).
    fn is_attached(&self, vip: &VipConfig) -> bool {
        match vip.attach_mode {
            ATTACH_XDP_NATIVE | ATTACH_XDP_GENERIC => xdp_link_path(&self.root).exists(),
            ATTACH_TC => ifname(vip.ifindex)
                .map(|n| tc_filter_present(&n, "ingress", prog_names::TC_INGRESS))
                .unwrap_or(false),
            _ => false,
        }
    }

    /// Pin root these maps came from.
    pub fn pin_root(&self) -> &Path {
        &self.root
    }

    /// Entries of the flow table as the kernel created it (`--max-flows`, rounded up to a
    /// multiple of the number of possible CPUs).
    pub fn flow_capacity(&self) -> Result<u32> {
        let flows: &dyn IterableMap<FlowKey, FlowValue> = &self.flows;
        Ok(flows
            .map()
            .info()
            .context("reading SWITCHER_FLOWS info")?
            .max_entries())
    }

    /// Logs, clearly, when adopted maps are not the size `max_flows` asks for.
    fn warn_on_size_mismatch(&self, max_flows: u32) {
        match self.flow_capacity() {
            Ok(have) if have != kernel_flow_capacity(max_flows) => tracing::warn!(
                pinned = have,
                requested = max_flows,
                pin_root = %self.root.display(),
                "the pinned flow table has another size than --max-flows; keeping the pinned one \
                 (replacing it would drop every open flow). To apply the new size: \
                 `switcher-ctl detach` (resets every viewer connection), then start again"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read the pinned flow table size")
            }
        }
    }

    /// The established flow of the client at `client`, if the flow table has a live one (for
    /// tests and diagnostics: one lookup, not a walk).
    pub fn flow_of(&self, client: SocketAddr) -> Result<Option<FlowValue>> {
        let key = flow_key(client);
        match self.flows.get(&key, 0) {
            // A retired flow is as good as gone: the data plane no longer steers it.
            Ok(v) if is_retired(&v, &self.live_generations()?) => Ok(None),
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("looking up SWITCHER_FLOWS"),
        }
    }

    /// Every entry of the flow table, retired ones included (what `bpftool map dump` shows;
    /// for tests and diagnostics: a walk, in batches).
    pub fn flow_entries(&self) -> Result<Vec<(FlowKey, FlowValue)>> {
        batch_entries(&self.flows)
    }

    /// Removes the handshakes pinned to `origin` (connections between SYN and handshake ACK):
    /// retiring an origin must remove them with its flows, or a handshake completing just
    /// after the retirement would enter the flow table pinned to the retired origin. Returns
    /// how many were removed.
    pub fn retire_handshakes(&mut self, origin: u32) -> Result<u64> {
        Ok(self.take_handshakes(origin)?.1)
    }

    /// Removes the handshakes pinned to `origin`; returns them as read, and how many were
    /// removed (one that completed or was replaced meanwhile is not).
    ///
    /// Waits for the programs running meanwhile to finish before it returns: one that read a
    /// handshake of `origin` just before it was emptied may still be moving it into the flow
    /// table (`promote`: insert, then empty the slot), and the caller's walk of the flow table
    /// must see that flow, or it would stay pinned to the retired origin. (~8 ms, an RCU grace
    /// period; found in review, session 7.)
    fn take_handshakes(&mut self, origin: u32) -> Result<(Vec<(FlowKey, Handshake)>, u64)> {
        let taken = self.handshakes.take(origin);
        wait_for_readers();
        let removed = taken.len() as u64;
        Ok((taken, removed))
    }

    /// [`Pinned::retire_handshakes`], then, when `reset`, an edge reset to the client of each
    /// handshake ([`crate::edge_rst::handshake_rst`]): a client in SYN-SENT fails its connect
    /// at once instead of waiting for its own SYN retransmission. Removed first, so that a
    /// client that already got the SYN-ACK and answers the reset with a challenge ACK finds no
    /// handshake and is reset by the edge's stack. (A handshake that completed between the
    /// read and the removal is a flow of `origin`, which the caller aborts next anyway.)
    /// Returns how many resets were handed to the kernel.
    fn retire_and_reset_handshakes(&mut self, origin: u32, reset: bool) -> Result<u64> {
        let (taken, _) = self.take_handshakes(origin)?;
        if !reset || taken.is_empty() {
            return Ok(0);
        }
        let Ok(vip) = self.vip() else {
            return Ok(0);
        };
        let specs: Vec<_> = taken
            .iter()
            .filter_map(|(k, h)| crate::edge_rst::handshake_rst(&vip, k, h))
            .collect();
        Ok(self.send_resets(&specs))
    }

    /// Writes `table` into the table that is not live, makes it live, then waits until no
    /// program can still be reading the old one (which the next publish overwrites).
    fn publish(&mut self, table: &MaglevTable) -> Result<()> {
        let live = self
            .maglev_live
            .get(&0, 0)
            .context("reading SWITCHER_MAGLEV_LIVE")?;
        let next = if live == 0 { 1 } else { 0 };
        debug_assert!(next < MAGLEV_TABLES);
        // One syscall copies the whole 64 KiB value; no program reads this table now (the
        // last publish waited for its readers to finish).
        self.maglev
            .set(next, table, 0)
            .context("writing SWITCHER_MAGLEV")?;
        // An aligned u32 store: a program reads the old number or the new one.
        self.maglev_live
            .set(0, next, 0)
            .context("writing SWITCHER_MAGLEV_LIVE")?;
        wait_for_readers();
        Ok(())
    }

    /// The current [`Origin::generation`] of origin slot `origin`.
    pub fn generation(&self, origin: OriginIndex) -> Result<u32> {
        Ok(self
            .origins
            .get(&origin, 0)
            .context("reading SWITCHER_ORIGINS")?
            .generation)
    }

    /// The live flows of `origin` ([`FlowValue::is_live`]), read with batch lookups.
    fn live_flows(&self, origin: OriginIndex) -> Result<Vec<(FlowKey, FlowValue)>> {
        let generation = self.generation(origin)?;
        Ok(batch_entries(&self.flows)?
            .into_iter()
            .filter(|(_, f)| f.origin == origin && f.is_live(generation))
            .collect())
    }

    /// Retires every live flow of `origin` that is not finishing with one map write: the
    /// origin's generation moves on, and the data plane treats a flow of an older one as
    /// untracked (docs/ARCHITECTURE.md, "Retiring flows"). `flows` are those flows as the
    /// caller read them, after taking the origin's handshakes (none completes into the new
    /// generation, see [`Pinned::take_handshakes`]): their entries are deleted later by
    /// [`DataPlane::reap_retired`]. `kept_open`: how many of the finishing flows, which stay
    /// live, are open.
    ///
    /// The open-flow count of `origin` is then set to `kept_open`, from the counters read just
    /// before the write, whatever the caller's read said: a flow whose socket the caller
    /// destroyed was counted closed by TC egress if (and only if) its reset crossed it, a flow
    /// established after the read is retired too, and an open flow the LRU evicted unseen
    /// stops being counted.
    ///
    /// The array element is written in place (array maps copy the new value over the old):
    /// a program reading it meanwhile sees the same address and port, and the old generation
    /// or the new, either of which is right for a packet racing the retirement.
    fn retire_generation(
        &mut self,
        origin: OriginIndex,
        flows: &[(FlowKey, FlowValue)],
        kept_open: u64,
    ) -> Result<()> {
        let mut o = self
            .origins
            .get(&origin, 0)
            .context("reading SWITCHER_ORIGINS")?;
        o.generation = o.generation.wrapping_add(1);
        let c = self.origin_counters(origin)?;
        self.origins
            .set(origin, o, 0)
            .context("writing SWITCHER_ORIGINS")?;
        self.set_open(origin, &c, kept_open)?;
        self.retired.extend(flows.iter().map(|(k, _)| *k));
        Ok(())
    }

    /// Deletes `flows` of `origin` (batch deletes) and counts their open ones out of the
    /// open-flow count; returns those that were still there (one the data plane forgot
    /// meanwhile gets no edge reset). Each is read again first: whether it is open is what its
    /// flags say now (a reset of its socket that crossed TC egress was counted closed there),
    /// and a key that holds a flow of another origin by now (its client reconnected from the
    /// same port) is left alone. One read syscall per flow: for the few of a paced drain or of
    /// finished responses, not for a whole origin's.
    fn delete_flows(
        &mut self,
        origin: OriginIndex,
        flows: Vec<(FlowKey, FlowValue)>,
    ) -> Result<Vec<(FlowKey, FlowValue)>> {
        let now: Vec<(FlowKey, FlowValue)> = flows
            .into_iter()
            .filter_map(|(k, _)| {
                let v = self.flows.get(&k, 0).ok()?;
                (v.origin == origin).then_some((k, v))
            })
            .collect();
        if now.is_empty() {
            return Ok(now);
        }
        let keys: Vec<FlowKey> = now.iter().map(|(k, _)| *k).collect();
        // Invalidated whatever the delete says: a failed batch may have deleted some.
        let deleted = batch_delete(&self.flows, &keys);
        self.cache_versions.invalidate(&keys);
        let deleted = deleted?;
        let mut gone = deleted.missing.into_iter().peekable();
        let removed: Vec<(FlowKey, FlowValue)> = now
            .into_iter()
            .enumerate()
            .filter(|(i, _)| gone.next_if_eq(i).is_none())
            .map(|(_, f)| f)
            .collect();
        let open = removed
            .iter()
            .filter(|(_, f)| f.flags & FLOW_ORIGIN_CLOSED == 0)
            .count() as u64;
        self.count_removed(origin, open)?;
        Ok(removed)
    }

    /// Per origin slot, the generation its live flows have, `None` for an empty slot (whose
    /// flows are all over).
    fn live_generations(&self) -> Result<[Option<u32>; MAX_ORIGINS as usize]> {
        let mut generations = [None; MAX_ORIGINS as usize];
        for (g, o) in generations.iter_mut().zip(self.origins()?) {
            *g = (o.flags & ORIGIN_CONFIGURED != 0).then_some(o.generation);
        }
        Ok(generations)
    }

    /// Writes the origin slots when attaching (`values[i]` into slot `i`). The flows of the
    /// slots in `replaced` (another origin or none there now) are over: their finishing ones,
    /// which a generation change spares, are deleted first, and those slots' open-flow counts
    /// start again from zero, from counters read just before the write (so the flows the new
    /// origin gets from then on count). Then collects every retired flow (an older generation
    /// of its origin, or an empty slot) for [`DataPlane::reap_retired`]: those an earlier run
    /// did not get to delete, and those of the replaced slots. One walk, before the write.
    fn write_origins(&mut self, values: &[Origin], replaced: &[OriginIndex]) -> Result<()> {
        let entries = batch_entries(&self.flows)?;
        let finishing: HashSet<FlowKey> = entries
            .iter()
            .filter(|(_, f)| replaced.contains(&f.origin) && f.flags & FLOW_FINISHING != 0)
            .map(|(k, _)| *k)
            .collect();
        let deleted = batch_delete(&self.flows, &finishing.iter().copied().collect::<Vec<_>>());
        self.cache_versions.invalidate(&finishing);
        deleted?;
        let before = replaced
            .iter()
            .map(|&slot| Ok((slot, self.origin_counters(slot)?)))
            .collect::<Result<Vec<_>>>()?;
        for (i, value) in values.iter().enumerate() {
            self.origins
                .set(i as u32, *value, 0)
                .context("writing SWITCHER_ORIGINS")?;
        }
        for (slot, c) in &before {
            self.set_open(*slot, c, 0)?;
        }
        let generations = self.live_generations()?;
        self.retired.extend(
            entries
                .iter()
                .filter(|(k, f)| is_retired(f, &generations) && !finishing.contains(k))
                .map(|(k, _)| *k),
        );
        if !self.retired.is_empty() {
            tracing::info!(
                flows = self.retired.len(),
                "retired flows left in the flow table; deleting them, paced"
            );
        }
        Ok(())
    }

    /// The counters of stats slot `slot` (an origin, or `STATS_UNSTEERED`), summed over CPUs.
    fn origin_counters(&self, slot: u32) -> Result<Counters> {
        let per_cpu = self.stats.get(&slot, 0)?;
        let mut sum = Counters::default();
        for c in per_cpu.iter() {
            sum.add(c);
        }
        Ok(sum)
    }

    /// Sets what user space removed from `origin` so that its open-flow count (established,
    /// minus closed, minus removed) is `open`, given its counters `c`.
    fn set_open(&mut self, origin: OriginIndex, c: &Counters, open: u64) -> Result<()> {
        let removed = c
            .established
            .saturating_sub(c.flows_closed)
            .saturating_sub(open);
        self.flows_removed
            .set(origin, removed, 0)
            .context("writing SWITCHER_FLOWS_REMOVED")?;
        Ok(())
    }

    /// Deletes those of `keys` that are still retired flows; how many.
    ///
    /// Each key is read again just before its delete: a viewer that reconnected from the same
    /// address and port since has a new, live flow under it, which must stay. (A reconnection
    /// between this read and the delete, microseconds, would still lose its flow and be reset
    /// once; the data plane forgets a retired flow it meets itself.)
    fn reap(&self, keys: &[FlowKey]) -> Result<u64> {
        let generations = self.live_generations()?;
        let doomed: Vec<FlowKey> = keys
            .iter()
            .filter(|k| {
                self.flows
                    .get(k, 0)
                    .is_ok_and(|v| is_retired(&v, &generations))
            })
            .copied()
            .collect();
        let deleted = batch_delete(&self.flows, &doomed);
        self.cache_versions.invalidate(&doomed);
        Ok(deleted?.count)
    }

    /// Adds `open` to the open flows removed from `origin` (see `SWITCHER_FLOWS_REMOVED`).
    fn count_removed(&mut self, origin: OriginIndex, open: u64) -> Result<()> {
        if open == 0 {
            return Ok(());
        }
        let old = self.flows_removed.get(&origin, 0)?;
        self.flows_removed
            .set(origin, old + open, 0)
            .context("writing SWITCHER_FLOWS_REMOVED")?;
        Ok(())
    }

    /// Number of connections in their handshake (a read of the whole mapped
    /// `SWITCHER_HANDSHAKES`, 12 MiB; a large number with few `established` means a SYN
    /// flood).
    pub fn handshake_count(&self) -> usize {
        self.handshakes.count()
    }
}

/// The encapsulation counters per origin slot (summed over CPUs), from the pins under
/// `pin_root` (direct server return; all zero without remote origins).
pub fn encap_counters(pin_root: &Path) -> Result<Vec<switcher_common::dsr::EncapCounters>> {
    use switcher_common::dsr::{EncapCounters, map_names as dsr_maps};
    let stats: PerCpuArray<MapData, EncapCounters> =
        PerCpuArray::try_from(open_map(pin_root, dsr_maps::ENCAP_STATS)?)?;
    (0..MAX_ORIGINS)
        .map(|slot| {
            let mut sum = EncapCounters::default();
            for c in stats.get(&slot, 0)?.iter() {
                sum.add(c);
            }
            Ok(sum)
        })
        .collect()
}

/// The conntrack key of a client address (as the data plane builds it from a request).
pub fn flow_key(client: SocketAddr) -> FlowKey {
    let mut client_addr = [0u8; 16];
    let family = match client.ip() {
        IpAddr::V4(a) => {
            client_addr[..4].copy_from_slice(&a.octets());
            FAMILY_V4
        }
        IpAddr::V6(a) => {
            client_addr = a.octets();
            FAMILY_V6
        }
    };
    FlowKey {
        client_addr,
        client_port_be: client.port().to_be(),
        family,
    }
}

/// The size the kernel gives a per-CPU-LRU map asked for `max_flows` entries: rounded up to a
/// multiple of the number of possible CPUs.
fn kernel_flow_capacity(max_flows: u32) -> u32 {
    let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1)) as u32;
    max_flows.div_ceil(cpus).saturating_mul(cpus)
}

/// Human name of a `VipConfig::attach_mode` value.
pub fn attach_mode_name(mode: u32) -> &'static str {
    match mode {
        ATTACH_XDP_NATIVE => "xdp (native)",
        ATTACH_XDP_GENERIC => "xdp (generic)",
        ATTACH_TC => "tc ingress",
        _ => "unknown",
    }
}

/// Whether `tc filter show dev IFACE DIR` lists a filter named `name`.
fn tc_filter_present(iface: &str, dir: &str, name: &str) -> bool {
    std::process::Command::new("tc")
        .args(["filter", "show", "dev", iface, dir])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(name))
        .unwrap_or(false)
}

/// Loads the object, pins maps and programs, attaches the request path (per `cfg.mode`) and
/// TC egress. Returns the `ATTACH_*` mode used. On any failure it leaves nothing attached or
/// pinned (the caller has adopted or removed earlier pins before this runs, so every pin
/// under `cfg.pin_root` is this call's).
fn load_and_attach(cfg: &AttachConfig, ifindex: u32) -> Result<u32> {
    let attached = pin_and_attach(cfg, ifindex);
    if attached.is_err() {
        let _ = tc::qdisc_detach_program(&cfg.iface, TcAttachType::Egress, prog_names::TC_EGRESS);
        let _ = remove_pins(&cfg.pin_root);
    }
    attached
}

/// [`load_and_attach`] without the clean-up on failure.
fn pin_and_attach(cfg: &AttachConfig, ifindex: u32) -> Result<u32> {
    let root = &cfg.pin_root;
    let mut ebpf = load_object(cfg.max_flows)?;
    for name in [
        map_names::CONFIG,
        map_names::ORIGINS,
        map_names::ACTIVE,
        map_names::MAGLEV,
        map_names::MAGLEV_LIVE,
        map_names::FLOWS,
        map_names::HANDSHAKES,
        map_names::STATS,
        map_names::FLOWS_REMOVED,
        map_names::FLOW_CACHE,
        map_names::FLOW_CACHE_VERSIONS,
        switcher_common::dsr::map_names::ENCAP_STATS,
    ] {
        let map = ebpf
            .map(name)
            .ok_or_else(|| anyhow!("object has no map {name}"))?;
        map.pin(maps_dir(root).join(name))
            .with_context(|| format!("pinning map {name}"))?;
    }
    // Steering is off until user space has written the VIP and origins (VIP_ENABLED unset in the
    // zeroed map), so nothing is rewritten toward an unconfigured slot in between.
    tc::qdisc_add_clsact(&cfg.iface)
        .or_else(|e| {
            if matches!(e, tc::TcError::NetlinkError(_)) {
                Ok(())
            } else {
                Err(e)
            }
        })
        .context("adding clsact qdisc")?;

    for tool in [prog_names::EMIT_RST, prog_names::MARK_FINISHING] {
        load_tool(&mut ebpf, root, tool)?;
    }
    // Egress first: replies must be rewritten before any request is steered.
    attach_tc(
        &mut ebpf,
        root,
        &cfg.iface,
        prog_names::TC_EGRESS,
        TcAttachType::Egress,
    )?;

    let lo = cfg.iface == "lo";
    let attempts: &[u32] = match cfg.mode {
        // On lo, TC ingress before generic XDP: generic XDP must linearize every GSO skb for a
        // program that is not frags-aware (64 KiB copies on loopback), measured at 0.95-0.97x
        // of direct throughput against 0.99-1.0x for TC (`cargo xtask bench datapath`).
        AttachMode::Auto if lo => &[ATTACH_TC, ATTACH_XDP_GENERIC],
        AttachMode::Auto => &[ATTACH_XDP_NATIVE, ATTACH_XDP_GENERIC, ATTACH_TC],
        AttachMode::Native => &[ATTACH_XDP_NATIVE],
        AttachMode::Generic => &[ATTACH_XDP_GENERIC],
        AttachMode::Tc => &[ATTACH_TC],
    };
    let mut last_err = None;
    for &mode in attempts {
        let result = match mode {
            ATTACH_TC => attach_tc(
                &mut ebpf,
                root,
                &cfg.iface,
                prog_names::TC_INGRESS,
                TcAttachType::Ingress,
            ),
            _ => attach_xdp(&mut ebpf, root, &cfg.iface, mode),
        };
        match result {
            Ok(()) => {
                tracing::info!(iface = %cfg.iface, ifindex, mode = attach_mode_name(mode), "attached request path");
                return Ok(mode);
            }
            Err(e) => {
                tracing::warn!(mode = attach_mode_name(mode), error = %format!("{e:#}"), "attach failed, trying next mode");
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow!("no attach mode to try")))
}

/// Loads the object (creating its maps, not yet the programs) with the connection maps sized
/// for `max_flows` entries each.
pub fn load_object(max_flows: u32) -> Result<Ebpf> {
    let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1)) as u32;
    if max_flows / cpus < FEW_FLOWS_PER_CPU {
        tracing::warn!(
            max_flows,
            cpus,
            "each CPU's LRU list gets fewer than {FEW_FLOWS_PER_CPU} flows; \
             raise --max-flows, or flows will be evicted while the table is mostly empty"
        );
    }
    size_for_cpus(&mut EbpfLoader::new())
        .map_max_entries(map_names::FLOWS, max_flows)
        .load(EBPF_OBJECT)
        .with_context(|| format!("loading the eBPF object (max flows {max_flows})"))
}

/// Sizes the object's maps that hold a part for each CPU and are not per-CPU maps
/// (`SWITCHER_FLOW_CACHE`, [`crate::flow_cache::entries`]): every loader of the object that
/// runs its programs calls it (a CPU beyond the declared size would run without a flow cache).
pub fn size_for_cpus<'l, 'a>(loader: &'l mut EbpfLoader<'a>) -> &'l mut EbpfLoader<'a> {
    loader.map_max_entries(map_names::FLOW_CACHE, crate::flow_cache::entries())
}

/// The oldest Linux release that loads the object: it is built for BPF ISA v4 and uses its
/// load-acquire (`BPF_LOAD_ACQ`, Linux 6.15; docs/ARCHITECTURE.md, "The object's instruction
/// set").
const MIN_KERNEL: (u32, u32) = (6, 15);

/// The major and minor numbers of a kernel release string (`6.18.44-fc-v1098` -> (6, 18)).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// What to say when the verifier refuses program `name`: on a kernel older than
/// [`MIN_KERNEL`], that it is the likely cause (the kernel then refuses the load-acquire
/// instructions as invalid, which names neither the release nor the ISA).
pub(crate) fn verifier_context(name: &str) -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    match kernel_version(release) {
        Some(v) if v < MIN_KERNEL => format!(
            "loading {name} (verifier): this kernel ({release}) is older than Linux {}.{}, \
             which the data plane needs (BPF ISA v4's load-acquire)",
            MIN_KERNEL.0, MIN_KERNEL.1
        ),
        _ => format!("loading {name} (verifier)"),
    }
}

/// Loads and pins one of the XDP programs user space runs itself and never attaches: the
/// edge-reset emitter ([`crate::edge_rst`]) and the finishing marker
/// ([`crate::finish_mark`]).
fn load_tool(ebpf: &mut Ebpf, root: &Path, name: &str) -> Result<()> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("object has no program {name}"))?
        .try_into()?;
    prog.load().with_context(|| verifier_context(name))?;
    prog.pin(progs_dir(root).join(name))
        .with_context(|| format!("pinning {name}"))?;
    Ok(())
}

fn attach_xdp(ebpf: &mut Ebpf, root: &Path, iface: &str, mode: u32) -> Result<()> {
    let prog: &mut Xdp = ebpf
        .program_mut(prog_names::XDP_INGRESS)
        .ok_or_else(|| anyhow!("object has no program {}", prog_names::XDP_INGRESS))?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load()
            .with_context(|| verifier_context(prog_names::XDP_INGRESS))?;
        prog.pin(progs_dir(root).join(prog_names::XDP_INGRESS))
            .context("pinning XDP program")?;
    }
    let xdp_mode = if mode == ATTACH_XDP_NATIVE {
        XdpMode::Driver
    } else {
        XdpMode::Skb
    };
    let id = prog
        .attach(iface, xdp_mode)
        .with_context(|| format!("attaching XDP ({xdp_mode:?}) to {iface}"))?;
    let link: FdLink = prog
        .take_link(id)?
        .try_into()
        .map_err(|e| anyhow!("XDP attached without a bpf_link (kernel too old?): {e:?}"))?;
    link.pin(xdp_link_path(root)).context("pinning XDP link")?;
    Ok(())
}

fn attach_tc(
    ebpf: &mut Ebpf,
    root: &Path,
    iface: &str,
    name: &str,
    dir: TcAttachType,
) -> Result<()> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("object has no program {name}"))?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load().with_context(|| verifier_context(name))?;
        prog.pin(progs_dir(root).join(name))
            .with_context(|| format!("pinning {name}"))?;
    }
    // Replace an older filter of ours, if a crashed run left one.
    let _ = tc::qdisc_detach_program(iface, dir, name);
    let id = prog
        .attach_with_options(
            iface,
            dir,
            TcAttachOptions::Netlink(NlOptions {
                priority: TC_PRIORITY,
                ..Default::default()
            }),
        )
        .with_context(|| format!("attaching {name} to {iface} {dir:?}"))?;
    // The netlink filter outlives this process by design: forget the link so dropping the
    // program does not remove it. `detach` removes it by name.
    std::mem::forget(prog.take_link(id)?);
    Ok(())
}

/// Detaches everything a run attached under `pin_root` and removes the pins. Idempotent:
/// detaching when nothing is attached succeeds.
pub fn detach(pin_root: &Path) -> Result<()> {
    // Only the VIP map, for where the TC filters are: pins of an older build, which lack a map
    // this one has (and which `Pinned::open` refuses), must come off as cleanly.
    let vip = open_map(pin_root, map_names::CONFIG)
        .and_then(|m| Ok(Array::<_, VipConfig>::try_from(m)?))
        .and_then(|a| Ok(a.get(&0, 0)?));
    if let Err(e) = &vip
        && maps_dir(pin_root).join(map_names::CONFIG).exists()
    {
        tracing::warn!(error = %format!("{e:#}"), "cannot read the pinned VIP: TC filters of this data plane, if any, stay attached (`tc filter show dev IFACE ingress|egress`)");
    }
    if let Ok(vip) = vip
        && let Ok(name) = ifname(vip.ifindex)
    {
        for (dir, prog) in [
            (TcAttachType::Ingress, prog_names::TC_INGRESS),
            (TcAttachType::Egress, prog_names::TC_EGRESS),
        ] {
            match tc::qdisc_detach_program(&name, dir, prog) {
                Ok(()) => tracing::info!(iface = %name, prog, "detached TC filter"),
                Err(tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(iface = %name, prog, error = %e, "detaching TC filter"),
            }
        }
    }
    let link = xdp_link_path(pin_root);
    if link.exists() {
        // Unpinning drops the last reference to the link, which detaches the XDP program.
        let pinned = PinnedLink::from_pin(&link).context("opening pinned XDP link")?;
        drop(pinned.unpin().context("unpinning XDP link")?);
        tracing::info!("detached XDP");
    }
    remove_pins(pin_root)
}

/// Removes every pin under `root` and the directories (pins are files on bpffs). Shared by
/// the steering programs and the decap program (`decap.rs`), which pin under the same layout.
pub(crate) fn remove_pins(root: &Path) -> Result<()> {
    if !root.exists() {
        return Ok(());
    }
    for sub in ["maps", "progs", "links"] {
        let dir = root.join(sub);
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                fs::remove_file(e.path())
                    .with_context(|| format!("unpinning {}", e.path().display()))?;
            }
        }
        let _ = fs::remove_dir(&dir);
    }
    // A bpffs mounted on the pin root itself (`ensure_bpffs`) stays: removing its mount point
    // would fail, and unmounting needs CAP_SYS_ADMIN, which `detach` does not have.
    if is_mount_point(root) {
        return Ok(());
    }
    fs::remove_dir(root)
        .or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        })
        .with_context(|| format!("removing {}", root.display()))?;
    Ok(())
}

/// Every entry of a conntrack-keyed map, read with batch lookups (see [`crate::mapbatch`]).
fn batch_entries<V: aya::Pod>(map: &HashMap<MapData, FlowKey, V>) -> Result<Vec<(FlowKey, V)>> {
    let map: &dyn IterableMap<FlowKey, V> = map;
    crate::mapbatch::lookup_all(map.map().fd().as_fd()).context("batch lookup of a flow map")
}

/// Deletes `keys` from a conntrack-keyed map with batch deletes; which were still there.
fn batch_delete<V: aya::Pod>(
    map: &HashMap<MapData, FlowKey, V>,
    keys: &[FlowKey],
) -> Result<crate::mapbatch::Deleted> {
    let map: &dyn IterableMap<FlowKey, V> = map;
    crate::mapbatch::delete(map.map().fd().as_fd(), keys).context("batch delete from a flow map")
}

/// A table whose every slot is `origin`, on the heap (64 KiB).
fn uniform_table(origin: u8) -> Box<MaglevTable> {
    let mut t = empty_table();
    t.slots.fill(origin);
    t
}

/// A table of [`MAGLEV_NO_ORIGIN`] slots, on the heap.
fn empty_table() -> Box<MaglevTable> {
    // Built in place: a 64 KiB value is not worth a trip through the stack.
    let slots: Box<[u8; MAGLEV_SIZE as usize]> = vec![MAGLEV_NO_ORIGIN; MAGLEV_SIZE as usize]
        .into_boxed_slice()
        .try_into()
        .expect("MAGLEV_SIZE bytes");
    // SAFETY: MaglevTable is repr(C) with the slots array as its only field: same layout.
    unsafe { Box::from_raw(Box::into_raw(slots).cast::<MaglevTable>()) }
}

/// Waits for an RCU grace period: every BPF program running when it starts has finished when
/// it ends (programs run under `rcu_read_lock`). `membarrier(MEMBARRIER_CMD_GLOBAL)` is
/// `synchronize_rcu()` in the kernel (`kernel/sched/membarrier.c`). After a table switch this
/// guarantees no packet still reads the old table when the next publish overwrites it.
fn wait_for_readers() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        // EINVAL with nohz_full CPUs. A program reads the table for well under a
        // microsecond, and a publish takes longer than that, so a straggler is already
        // unlikely; this pause makes it practically impossible where the kernel cannot wait.
        tracing::debug!(error = %std::io::Error::last_os_error(), "membarrier(GLOBAL) unavailable; pausing instead");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The viewer of a flow, as a socket address (IPv4 in the first 4 bytes of the key).
fn flow_client(k: &FlowKey) -> SocketAddr {
    let port = u16::from_be(k.client_port_be);
    let ip = if k.family == switcher_common::FAMILY_V4 {
        IpAddr::from([
            k.client_addr[0],
            k.client_addr[1],
            k.client_addr[2],
            k.client_addr[3],
        ])
    } else {
        IpAddr::from(k.client_addr)
    };
    SocketAddr::new(ip, port)
}

/// Whether flow `f` is retired, given [`Pinned::live_generations`]: its origin slot is empty,
/// or it is not live in its origin's generation ([`FlowValue::is_live`]).
fn is_retired(f: &FlowValue, generations: &[Option<u32>; MAX_ORIGINS as usize]) -> bool {
    generations
        .get(f.origin as usize)
        .copied()
        .flatten()
        .is_none_or(|g| !f.is_live(g))
}

/// The sockets of this host whose local end is one of `local` and whose peer is one of
/// `viewers` (see [`sockdiag`]), with their delivery state, and the netlink socket that
/// found them (to destroy them with).
fn viewer_sockets(
    local: &[SocketAddr],
    viewers: &HashSet<SocketAddr>,
) -> Result<(SockDiag, Vec<sockdiag::TcpSock>)> {
    let mut diag = SockDiag::open().context("opening a sock_diag netlink socket")?;
    let socks = diag.dump().context("dumping TCP sockets")?;
    Ok((
        diag,
        sockdiag::select_viewer_sockets(&socks, local, viewers),
    ))
}

impl Pinned {
    /// The addresses an origin's sockets have locally on this host: its own address, or the
    /// VIP's (both families) when the origin shares the VIP's address.
    fn origin_local_addrs(&self, origin: OriginIndex) -> Result<Vec<SocketAddr>> {
        let o = self.origins.get(&origin, 0)?;
        let vip = self.vip()?;
        let port = u16::from_be(o.port_be);
        let mut out = Vec::new();
        if o.addr_v4 != [0; 4] {
            out.push(SocketAddr::new(IpAddr::from(o.addr_v4), port));
        } else if vip.flags & VIP_HAS_V4 != 0 {
            out.push(SocketAddr::new(IpAddr::from(vip.addr_v4), port));
        }
        if o.addr_v6 != [0; 16] {
            out.push(SocketAddr::new(IpAddr::from(o.addr_v6), port));
        } else if vip.flags & VIP_HAS_V6 != 0 {
            out.push(SocketAddr::new(IpAddr::from(vip.addr_v6), port));
        }
        Ok(out)
    }
}

impl Pinned {
    /// The edge-reset transmitter, when this data plane can send edge resets: the request
    /// path is XDP on an interface other than `lo` ([`edge_resets_possible`]; see
    /// [`crate::edge_rst`] for why) and the program is pinned. Opened once; unavailability is logged once.
    fn emitter(&mut self) -> Option<&crate::edge_rst::Emitter> {
        if self.emitter.is_none() {
            let opened = self
                .vip()
                .and_then(|vip| {
                    edge_resets_possible(&vip)?;
                    crate::edge_rst::Emitter::open(
                        &progs_dir(&self.root).join(prog_names::EMIT_RST),
                        vip.ifindex,
                    )
                })
                .inspect_err(
                    |e| tracing::warn!(error = %format!("{e:#}"), "edge resets unavailable"),
                )
                .ok();
            self.emitter = Some(opened);
        }
        self.emitter.as_ref().and_then(Option::as_ref)
    }

    /// The finishing marker ([`crate::finish_mark`]), opened once; `None` with pins of a
    /// build without it, logged once.
    fn marker(&mut self) -> Option<&crate::finish_mark::FinishMarker> {
        if self.marker.is_none() {
            let opened = crate::finish_mark::FinishMarker::open(
                &progs_dir(&self.root).join(prog_names::MARK_FINISHING),
            )
            .inspect_err(|e| {
                tracing::warn!(
                    error = %format!("{e:#}"),
                    "no finishing marker (pins of an older build): finishing flows are marked \
                     with a map update, which can undo an acknowledgment number or close the \
                     data plane records meanwhile"
                )
            })
            .ok();
            self.marker = Some(opened);
        }
        self.marker.as_ref().and_then(Option::as_ref)
    }

    /// Marks the flow `key`, read as `value`, finishing (`FLOW_FINISHING`), in place through
    /// the data plane ([`crate::finish_mark`]), or with a map update on pins without the
    /// program (which makes the flow's copies stale itself). False when the flow has no entry
    /// of `value`'s origin and generation any more.
    fn mark_finishing(&mut self, key: &FlowKey, value: &FlowValue) -> Result<bool> {
        let mark = switcher_common::FinishMark::of(key, value);
        if let Some(m) = self.marker() {
            match m.mark(&mark) {
                Ok(marked) => return Ok(marked),
                // Not expected (the program takes any `FinishMark`; only pins of a build whose
                // program read a bare key refuse one); the map update below does the same,
                // less atomically.
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "switcher_mark_finishing failed: marking by a map update");
                }
            }
        }
        let Ok(mut v) = self.flows.get(key, 0) else {
            return Ok(false);
        };
        if v.origin != mark.origin || v.generation != mark.generation {
            return Ok(false);
        }
        if v.flags & FLOW_FINISHING == 0 {
            v.flags |= FLOW_FINISHING;
            self.flows.insert(key, v, 0)?;
            self.cache_versions.invalidate([key]);
        }
        Ok(true)
    }

    /// Sends an edge reset to the client of each flow (see [`crate::edge_rst`]), one for each
    /// acknowledgment number the flow may be at ([`crate::flow_cache::client_acks`]); how many
    /// flows got at least one. Failures are logged; the origin socket's reset and the edge's
    /// stack (which resets a viewer's next packet) remain.
    fn send_edge_resets(&mut self, flows: &[(FlowKey, FlowValue)]) -> u64 {
        if flows.is_empty() {
            return 0;
        }
        let Ok(vip) = self.vip() else {
            return 0;
        };
        // Before reading the copies: nothing to do where resets cannot be sent (e.g. on `lo`).
        if self.emitter().is_none() {
            return 0;
        }
        // A program that was steering one of these flows from its copy as the flow was retired
        // or deleted has finished, and recorded its number, once this returns.
        wait_for_readers();
        // The flows in cache-slot order: each slot's copies are read once (in place, from the
        // mapping) however many flows share it, and only one slot's copies are held at a time.
        let mut order: Vec<(u32, usize)> = flows
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (switcher_common::flow_cache_slot(&k.words()), i))
            .collect();
        order.sort_unstable();
        let mut copies = (u32::MAX, Vec::new());
        // The index of each flow's first reset in `specs`.
        let mut firsts = Vec::with_capacity(flows.len());
        let mut specs = Vec::with_capacity(flows.len());
        for (slot, i) in order {
            let (k, v) = &flows[i];
            if copies.0 != slot {
                copies = (slot, self.flow_cache.of_slot(slot));
            }
            let acks = crate::flow_cache::client_acks(&copies.1, k, v);
            let before = specs.len();
            specs.extend(acks.into_iter().filter_map(|client_ack| {
                crate::edge_rst::flow_rst(&vip, k, &FlowValue { client_ack, ..*v })
            }));
            if specs.len() > before {
                firsts.push(before as u64);
            }
        }
        let sent = self.send_resets(&specs);
        firsts.iter().filter(|&&first| first < sent).count() as u64
    }

    /// Builds and transmits each reset of `specs`; how many were handed to the kernel (0 where
    /// this data plane cannot send edge resets). Stops at the first failure, logged.
    fn send_resets(&mut self, specs: &[crate::edge_rst::RstSpec]) -> u64 {
        if specs.is_empty() {
            return 0;
        }
        let Some(emitter) = self.emitter() else {
            return 0;
        };
        let mut sent = 0;
        for spec in specs {
            match crate::edge_rst::rst_frame(spec).and_then(|f| emitter.send(&f)) {
                Ok(()) => sent += 1,
                Err(e) => {
                    tracing::error!(client = %spec.client, error = %format!("{e:#}"), "sending an edge reset failed");
                    break;
                }
            }
        }
        sent
    }
}

impl DataPlane for Pinned {
    fn active(&self) -> Result<OriginIndex> {
        Ok(self.active.get(&0, 0)?)
    }

    fn set_active(&mut self, origin: OriginIndex) -> Result<()> {
        if origin >= MAX_ORIGINS {
            bail!("origin index {origin} out of range");
        }
        let o = self.origins.get(&origin, 0)?;
        if o.flags & ORIGIN_CONFIGURED == 0 {
            bail!("origin {origin} is not configured");
        }
        // Fits: origin < MAX_ORIGINS <= MAGLEV_NO_ORIGIN.
        self.publish(&uniform_table(origin as u8))?;
        self.active
            .set(0, origin, 0)
            .context("writing SWITCHER_ACTIVE")?;
        Ok(())
    }

    fn set_lookup_table(&mut self, slots: &[OriginIndex]) -> Result<()> {
        if slots.len() != MAGLEV_SIZE as usize {
            bail!(
                "a lookup table has {MAGLEV_SIZE} slots, got {}",
                slots.len()
            );
        }
        let mut table = empty_table();
        let mut used = [false; MAX_ORIGINS as usize];
        for (slot, &origin) in table.slots.iter_mut().zip(slots) {
            *slot = if origin == crate::maglev::NO_BACKEND {
                MAGLEV_NO_ORIGIN
            } else {
                let u = used
                    .get_mut(origin as usize)
                    .ok_or_else(|| anyhow!("origin index {origin} out of range"))?;
                *u = true;
                origin as u8
            };
        }
        for (origin, _) in used.iter().enumerate().filter(|(_, u)| **u) {
            let o = self.origins.get(&(origin as u32), 0)?;
            if o.flags & ORIGIN_CONFIGURED == 0 {
                bail!("the lookup table names origin {origin}, which is not configured");
            }
        }
        self.publish(&table)
    }

    fn set_fallbacks(&mut self, origins: &[OriginIndex]) -> Result<()> {
        for (i, mut o) in (0..MAX_ORIGINS).zip(self.origins()?) {
            if o.flags & ORIGIN_CONFIGURED == 0 {
                continue;
            }
            let flags = if origins.contains(&i) {
                o.flags | ORIGIN_FALLBACK
            } else {
                o.flags & !ORIGIN_FALLBACK
            };
            if flags != o.flags {
                // Written in place (see `retire_generation`): a program sees the old flags or
                // the new, and the rest unchanged.
                o.flags = flags;
                self.origins
                    .set(i, o, 0)
                    .context("writing SWITCHER_ORIGINS")?;
            }
        }
        Ok(())
    }

    fn retire_flows(&mut self, origin: OriginIndex) -> Result<u64> {
        // A handshake completing after this would enter the flow table pinned to `origin`.
        self.retire_handshakes(origin)?;
        // Left to finish by an abort (a generation change spares them): over now.
        let (finishing, live): (Vec<_>, Vec<_>) = self
            .live_flows(origin)?
            .into_iter()
            .partition(|(_, f)| f.flags & FLOW_FINISHING != 0);
        let deleted = self.delete_flows(origin, finishing)?;
        self.retire_generation(origin, &live, 0)?;
        Ok((live.len() + deleted.len()) as u64)
    }

    fn abort_flows(
        &mut self,
        origin: OriginIndex,
        max: usize,
        finish_in_flight: bool,
    ) -> Result<Aborted> {
        // A handshake completing after this would enter the flow table pinned to `origin`;
        // its client's next packet then finds nothing and the edge's stack resets it. An
        // origin cut at once (no finishing) also has its pending handshakes reset: their SYNs
        // went to an origin that is slow, stuck or gone, and would wait for a retransmission.
        let handshake_resets = self.retire_and_reset_handshakes(origin, !finish_in_flight)?;
        let all = self.live_flows(origin)?;
        let flows = &all[..all.len().min(max)];
        if flows.is_empty() {
            return Ok(Aborted {
                handshake_resets,
                ..Aborted::default()
            });
        }
        let viewers: HashSet<SocketAddr> = flows.iter().map(|(k, _)| flow_client(k)).collect();
        let local = self.origin_local_addrs(origin)?;
        // The origin-side sockets of these viewers on this host (none for a remote origin).
        let (diag, socks) = match viewer_sockets(&local, &viewers) {
            Ok((d, s)) => (Some(d), s),
            Err(e) => {
                // Without the reset the flows are still retired: a viewer that sends again
                // finds no flow and the edge's stack resets it from the VIP.
                tracing::error!(error = %format!("{e:#}"), "listing viewer connections failed");
                (None, Vec::new())
            }
        };
        let finishing: HashSet<SocketAddr> = socks
            .iter()
            .filter(|s| {
                finish_in_flight
                    && s.progress
                        .is_some_and(|p| p.delivering(crate::dataplane::DELIVERY_STALL_MS))
            })
            .map(|s| s.remote_canonical())
            .collect();
        let doomed: Vec<sockdiag::TcpSock> = socks
            .into_iter()
            .filter(|s| !finishing.contains(&s.remote_canonical()))
            .collect();
        // Reset first, while the flows are live: the RSTs leave through the egress program,
        // which rewrites them to come from the VIP only for live flows.
        let reset = match diag {
            None => 0,
            Some(_) if doomed.is_empty() => 0,
            Some(mut d) => match d.destroy(&doomed) {
                Ok(n) => n as u64,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "destroying sockets failed (needs CAP_NET_ADMIN and CONFIG_INET_DIAG_DESTROY)");
                    0
                }
            },
        };
        let (delivering, mut cut): (Vec<_>, Vec<_>) = flows
            .iter()
            .copied()
            .partition(|(k, _)| finishing.contains(&flow_client(k)));
        let mut kept = Vec::with_capacity(delivering.len());
        for (k, v) in delivering {
            // Its next request is dropped by the data plane: the retired origin finishes this
            // response and starts no other (FLOW_FINISHING). Set before the generation moves
            // below, which spares finishing flows; the CPUs' copies of the flow are made
            // stale with it. A flow that cannot be marked is cut with the others: left
            // unmarked, it would stay on the retired origin for its next request too.
            if v.flags & FLOW_FINISHING == 0
                && let Err(e) = self.mark_finishing(&k, &v)
            {
                tracing::warn!(error = %format!("{e:#}"), "marking a flow finishing failed: it is cut instead");
                cut.push((k, v));
            } else {
                kept.push((k, v));
            }
        }
        // Flows left to finish by an earlier call, cut now: a generation change spares them,
        // so they are deleted (a few).
        let (finished, plain): (Vec<_>, Vec<_>) = cut
            .into_iter()
            .partition(|(_, v)| v.flags & FLOW_FINISHING != 0);
        let mut removed = self.delete_flows(origin, finished)?;
        if flows.len() == all.len() {
            // Every live flow of `origin` goes: one map write retires them, however many
            // viewers there are (docs/ARCHITECTURE.md, "Retiring flows").
            let kept_open = kept
                .iter()
                .filter(|(_, f)| f.flags & FLOW_ORIGIN_CLOSED == 0)
                .count() as u64;
            self.retire_generation(origin, &plain, kept_open)?;
            removed.extend(plain);
        } else {
            // A paced drain moves `max` of them: deleted one batch at a time.
            removed.extend(self.delete_flows(origin, plain)?);
        }
        // The edge's own resets, once the flows are retired: a viewer whose acknowledgment
        // number was not exact answers with a challenge ACK, which must find no live flow, so
        // the edge's stack resets it exactly (docs/ARCHITECTURE.md, "Edge-originated resets").
        let edge_resets = self.send_edge_resets(&removed);
        Ok(Aborted {
            reset,
            edge_resets,
            handshake_resets,
            removed: removed.len() as u64,
            finishing: kept.len() as u64,
            remaining: (all.len() - flows.len()) as u64,
        })
    }

    fn reap_retired(&mut self, budget: usize) -> Result<u64> {
        if self.retired.is_empty() {
            return Ok(0);
        }
        let from = self.retired.len().saturating_sub(budget);
        let batch: Vec<FlowKey> = self.retired.drain(from..).collect();
        let reaped = self.reap(&batch);
        if reaped.is_err() {
            // Tried again next window.
            self.retired.extend(batch);
        }
        reaped
    }

    fn flow_counts(&self) -> Result<Vec<u64>> {
        // MAX_ORIGINS + 1 small reads (per-CPU counters, then user space's removals), however
        // many flows there are.
        let counters = self.counters()?;
        (0..MAX_ORIGINS)
            .map(|o| {
                let c = &counters[o as usize];
                let removed = self.flows_removed.get(&o, 0)?;
                Ok(c.established
                    .saturating_sub(c.flows_closed)
                    .saturating_sub(removed))
            })
            .collect()
    }

    fn counters(&self) -> Result<Vec<Counters>> {
        (0..STATS_SLOTS)
            .map(|slot| self.origin_counters(slot))
            .collect()
    }

    fn encap_counters(&self) -> Result<Vec<switcher_common::dsr::EncapCounters>> {
        encap_counters(&self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::{EBPF_OBJECT, MIN_KERNEL, dsr_sysctl_problems, kernel_version};
    use switcher_common::prog_names;

    /// The reads one CPU makes of what another writes without a lock (the flow cache's slot
    /// version, the handshake table's words) are load-acquires, `BPF_LOAD_ACQ`, which LLVM
    /// emits only for BPF ISA v4 (`crates/switcher-ebpf/.cargo/config.toml`): built for an
    /// older ISA they would be plain loads, which an arm64 CPU may reorder (docs/ARCHITECTURE.md,
    /// "The object's instruction set"). Counted in the object's programs as linked, before any
    /// kernel.
    #[test]
    fn cross_cpu_reads_are_load_acquires() {
        /// `BPF_STX` (0x03) `| BPF_W` (0x00) `| BPF_ATOMIC` (0xc0): a 4-byte atomic instruction.
        const ATOMIC_W: u8 = 0xc3;
        /// The atomic's `imm` that makes it a load-acquire.
        const BPF_LOAD_ACQ: i32 = 0x100;
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded object parses");
        for name in [
            prog_names::XDP_INGRESS,
            prog_names::TC_INGRESS,
            prog_names::TC_EGRESS,
        ] {
            let prog = &obj.programs[name];
            let insns = &obj.functions[&prog.function_key()].instructions;
            let acquires = insns
                .iter()
                .filter(|i| i.code == ATOMIC_W && i.imm == BPF_LOAD_ACQ)
                .count();
            assert!(
                acquires > 0,
                "{name}: no load-acquire among {} instructions",
                insns.len()
            );
        }
    }

    #[test]
    fn kernel_releases_are_compared_by_major_and_minor() {
        assert_eq!(kernel_version("6.18.44-fc-v1098"), Some((6, 18)));
        assert_eq!(kernel_version("6.1.0-28-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("6.15"), Some((6, 15)));
        assert_eq!(kernel_version("7.0-rc1"), Some((7, 0)));
        assert_eq!(kernel_version("garbage"), None);
        assert!(kernel_version("6.1.0-28-amd64").unwrap() < MIN_KERNEL);
        assert!(kernel_version("6.9.12").unwrap() < MIN_KERNEL);
        assert!(kernel_version("6.15.0").unwrap() >= MIN_KERNEL);
        assert!(kernel_version("7.0.1").unwrap() >= MIN_KERNEL);
    }

    #[test]
    fn dsr_needs_forwarding_and_accept_local() {
        let sysctls = |set: &'static [(&'static str, &'static str)]| {
            move |p: &str| {
                set.iter()
                    .find(|(k, _)| *k == p)
                    .map(|(_, v)| format!("{v}\n"))
            }
        };
        let good = sysctls(&[
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv4/conf/eth0/forwarding", "1"),
            ("net/ipv4/conf/all/accept_local", "1"),
        ]);
        assert!(dsr_sysctl_problems("eth0", good).is_empty());
        let iface_only = sysctls(&[
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv4/conf/eth0/forwarding", "1"),
            ("net/ipv4/conf/eth0/accept_local", "1"),
            ("net/ipv4/conf/all/accept_local", "0"),
        ]);
        assert!(dsr_sysctl_problems("eth0", iface_only).is_empty());
        let no_local = sysctls(&[
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv4/conf/eth0/forwarding", "1"),
        ]);
        let p = dsr_sysctl_problems("eth0", no_local);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("accept_local"), "{p:?}");
        let nothing = dsr_sysctl_problems("eth0", |_| None);
        assert_eq!(nothing.len(), 2, "{nothing:?}");
        assert!(nothing[0].contains("forwarding"), "{nothing:?}");
    }
}

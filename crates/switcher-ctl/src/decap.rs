//! `switcher-ctl decap`: the origin-host end of direct server return. Loads the decap program
//! (`switcher_decap`, XDP) from the data plane's object, attaches it to the interface edges
//! send to, and pins it, so it keeps working after the command exits; `--detach` removes it.
//!
//! # Pin layout (under the decap pin root, default `/sys/fs/bpf/switcher-decap`)
//! * `maps/SWITCHER_DECAP_CONFIG` (this host's address, the VIP), `maps/SWITCHER_DECAP_STATS`
//!   (per-CPU counters, see `switcher_common::dsr::DecapCounters`);
//! * `progs/switcher_decap`; `links/xdp`: the XDP bpf_link.
//!
//! The host must own the VIP so that the decapsulated packet is delivered locally and the
//! origin, listening on it, answers from it: e.g. `ip addr add VIP/32 dev lo` with
//! `net.ipv4.conf.all.arp_ignore=1` and `arp_announce=2`, so the host never answers ARP for a
//! VIP that the edges announce.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    EbpfLoader,
    maps::{Array, MapData, PerCpuArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
    },
};
use switcher_common::{
    MIN_FLOWS,
    dsr::{DECAP_ENABLED, DecapConfig, DecapCounters, map_names, prog_names},
    map_names as edge_maps,
};

use crate::loader::{EBPF_OBJECT, ensure_bpffs, remove_pins};

/// Default pin root of the decap program (apart from the edge's, so a host can be both).
pub const DEFAULT_DECAP_PIN_ROOT: &str = "/sys/fs/bpf/switcher-decap";

/// How to attach the decap program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapMode {
    /// Native XDP, else generic.
    Auto,
    /// Native (driver) XDP only.
    Native,
    /// Generic (skb) XDP only.
    Generic,
}

/// What `switcher-ctl decap` attaches.
#[derive(Clone, Debug)]
pub struct DecapSetup {
    /// Interface the encapsulated packets arrive on.
    pub iface: String,
    /// The VIP (inner destination).
    pub vip: Ipv4Addr,
    /// This host's address the edges encapsulate to; `None`: the interface's first IPv4
    /// address.
    pub local: Option<Ipv4Addr>,
    /// Pin root on a bpffs.
    pub pin_root: PathBuf,
    /// Attach mode.
    pub mode: DecapMode,
}

fn link_path(root: &Path) -> PathBuf {
    root.join("links/xdp")
}
fn map_path(root: &Path, name: &str) -> PathBuf {
    root.join("maps").join(name)
}

/// The first IPv4 address of `iface` (getifaddrs(3)).
pub fn iface_v4(iface: &str) -> Result<Ipv4Addr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut found = None;
    let mut p = head;
    while !p.is_null() {
        // SAFETY: a node of the list getifaddrs returned; its strings and addresses live
        // until freeifaddrs.
        let ifa = unsafe { &*p };
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if name.to_bytes() == iface.as_bytes()
            && !ifa.ifa_addr.is_null()
            && unsafe { (*ifa.ifa_addr).sa_family } == libc::AF_INET as libc::sa_family_t
        {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            break;
        }
        p = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    found.ok_or_else(|| anyhow!("interface {iface:?} has no IPv4 address (pass --local)"))
}

/// Loads, configures, attaches and pins the decap program per `setup`. An earlier decap under
/// the same pin root is replaced.
pub fn attach(setup: &DecapSetup) -> Result<DecapConfig> {
    let local = match setup.local {
        Some(a) => a,
        None => iface_v4(&setup.iface)?,
    };
    if link_path(&setup.pin_root).exists() {
        detach(&setup.pin_root)?;
    }
    let mount = ensure_bpffs(&setup.pin_root)?;
    // The object's edge maps are created too; the connection tables at their smallest.
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(edge_maps::FLOWS, MIN_FLOWS)
        .map_max_entries(edge_maps::HANDSHAKES, MIN_FLOWS)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")?;
    let cfg = DecapConfig {
        local_v4: local.octets(),
        vip_v4: setup.vip.octets(),
        flags: DECAP_ENABLED,
    };
    {
        let mut map: Array<_, DecapConfig> = Array::try_from(
            ebpf.map_mut(map_names::DECAP_CONFIG)
                .ok_or_else(|| anyhow!("object has no map {}", map_names::DECAP_CONFIG))?,
        )?;
        map.set(0, cfg, 0).context("writing the decap config")?;
    }
    for name in [map_names::DECAP_CONFIG, map_names::DECAP_STATS] {
        ebpf.map(name)
            .ok_or_else(|| anyhow!("object has no map {name}"))?
            .pin(map_path(&setup.pin_root, name))
            .with_context(|| format!("pinning map {name}"))?;
    }
    let prog: &mut Xdp = ebpf
        .program_mut(prog_names::XDP_DECAP)
        .ok_or_else(|| anyhow!("object has no program {}", prog_names::XDP_DECAP))?
        .try_into()?;
    prog.load()
        .context("loading the decap program (verifier)")?;
    prog.pin(setup.pin_root.join("progs").join(prog_names::XDP_DECAP))
        .context("pinning the decap program")?;
    let modes: &[XdpMode] = match setup.mode {
        DecapMode::Auto => &[XdpMode::Driver, XdpMode::Skb],
        DecapMode::Native => &[XdpMode::Driver],
        DecapMode::Generic => &[XdpMode::Skb],
    };
    let mut last = None;
    for &mode in modes {
        match prog.attach(&setup.iface, mode) {
            Ok(id) => {
                let link: FdLink = prog
                    .take_link(id)?
                    .try_into()
                    .map_err(|e| anyhow!("XDP attached without a bpf_link: {e:?}"))?;
                link.pin(link_path(&setup.pin_root))
                    .context("pinning the decap XDP link")?;
                tracing::info!(iface = %setup.iface, ?mode, %local, vip = %setup.vip, "decap attached");
                mount.keep();
                return Ok(cfg);
            }
            Err(e) => {
                tracing::warn!(?mode, error = %e, "attaching decap failed, trying next mode");
                last = Some(e);
            }
        }
    }
    let _ = remove_pins(&setup.pin_root);
    Err(anyhow!(
        "attaching the decap program to {}: {}",
        setup.iface,
        last.map_or_else(|| "no mode".into(), |e| e.to_string())
    ))
}

/// The decap program's configuration and counters (summed over CPUs), from the pins.
pub fn status(pin_root: &Path) -> Result<(DecapConfig, DecapCounters)> {
    let open = |name: &str| -> Result<MapData> {
        MapData::from_pin(map_path(pin_root, name))
            .with_context(|| format!("no decap attached at {} ({name})", pin_root.display()))
    };
    let cfg: Array<_, DecapConfig> =
        Array::try_from(aya::maps::Map::Array(open(map_names::DECAP_CONFIG)?))?;
    let stats: PerCpuArray<_, DecapCounters> =
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(open(map_names::DECAP_STATS)?))?;
    let mut sum = DecapCounters::default();
    for c in stats.get(&0, 0)?.iter() {
        sum.add(c);
    }
    Ok((cfg.get(&0, 0)?, sum))
}

/// Detaches the decap program and removes its pins. Idempotent.
pub fn detach(pin_root: &Path) -> Result<()> {
    let link = link_path(pin_root);
    if link.exists() {
        let pinned = PinnedLink::from_pin(&link).context("opening the pinned decap link")?;
        // Unpinning drops the last reference to the link, which detaches the program.
        drop(pinned.unpin().context("unpinning the decap link")?);
        tracing::info!("decap detached");
    }
    remove_pins(pin_root)
}

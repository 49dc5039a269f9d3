//! `switcher-ctl decap`: the origin-host end of direct server return. Loads the decap program
//! (`switcher_decap`, XDP) from the data plane's object, attaches it to the interface edges
//! send to, and pins it, so it keeps working after the command exits; `--detach` removes it.
//!
//! # Pin layout (under the decap pin root, default `/sys/fs/bpf/switcher-decap`)
//! * `maps/SWITCHER_DECAP_CONFIG` (this host's address, the VIPs), `maps/SWITCHER_DECAP_STATS`
//!   (per-CPU counters, see `switcher_common::dsr::DecapCounters`);
//! * `progs/switcher_decap`; `links/xdp`: the XDP bpf_link.
//!
//! The VIP is one IPv4 address (IP-in-IP), one IPv6 address (6in4), or one of each for a
//! dual-stack VIP (`--vip` twice, like `run`'s): the edges reach this host at its IPv4 address
//! for both families (docs/ARCHITECTURE.md, "Beyond one host").
//!
//! The host must own the VIP so that the decapsulated packet is delivered locally and the
//! origin, listening on it, answers from it: e.g. `ip addr add VIP/32 dev lo` with
//! `net.ipv4.conf.all.arp_ignore=1` and `arp_announce=2`, so the host never answers ARP for a
//! VIP that the edges announce; for an IPv6 VIP `ip addr add VIP6/128 dev lo nodad` (neighbour
//! solicitations are answered only for addresses of the interface they arrive on, so no sysctl
//! is needed), and IPv6 routes back to the viewers.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
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
    dsr::{
        DECAP_ENABLED, DECAP_VIP_V4, DECAP_VIP_V6, DecapConfig, DecapCounters, map_names,
        prog_names,
    },
    map_names as edge_maps,
};

use crate::loader::{EBPF_OBJECT, ensure_bpffs, remove_pins, verifier_context};

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
    /// The VIP (inner destination): its IPv4 address, its IPv6 address, or both; see
    /// [`DecapSetup::vips`].
    pub vip_v4: Option<Ipv4Addr>,
    /// The IPv6 VIP (inner destination of 6in4).
    pub vip_v6: Option<Ipv6Addr>,
    /// This host's address the edges encapsulate to; `None`: the interface's first IPv4
    /// address.
    pub local: Option<Ipv4Addr>,
    /// Pin root on a bpffs.
    pub pin_root: PathBuf,
    /// Attach mode.
    pub mode: DecapMode,
}

impl DecapSetup {
    /// Sorts `--vip` values into [`DecapSetup::vip_v4`] and [`DecapSetup::vip_v6`]: one or two
    /// addresses, at most one per family, each a unicast address (the VIP the origin listens
    /// on). Returns (IPv4, IPv6).
    pub fn vips(vips: &[IpAddr]) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>)> {
        let (mut v4, mut v6) = (None, None);
        for vip in vips {
            if vip.is_unspecified() || vip.is_multicast() || vip.is_loopback() {
                bail!("--vip {vip}: must be a unicast address (the VIP the origin listens on)");
            }
            let dup = match *vip {
                IpAddr::V4(a) => v4.replace(a).is_some(),
                IpAddr::V6(a) => v6.replace(a).is_some(),
            };
            if dup {
                bail!("--vip: at most one IPv4 and one IPv6 address (the VIP of each family)");
            }
        }
        if v4.is_none() && v6.is_none() {
            bail!("--vip is required: the VIP's IPv4 address, IPv6 address, or both");
        }
        Ok((v4, v6))
    }

    /// The VIPs as given, for messages.
    pub fn vip_text(&self) -> String {
        vip_text(self.vip_v4, self.vip_v6)
    }
}

/// `4.3.2.1 and 2001:db8::1`, or the one address.
fn vip_text(v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> String {
    match (v4, v6) {
        (Some(a), Some(b)) => format!("{a} and {b}"),
        (Some(a), None) => a.to_string(),
        (None, Some(b)) => b.to_string(),
        (None, None) => "no VIP".into(),
    }
}

/// The configured VIPs of a decap config (from the pins), for `--status`.
pub fn config_vips(cfg: &DecapConfig) -> String {
    vip_text(
        (cfg.flags & DECAP_VIP_V4 != 0).then(|| Ipv4Addr::from(cfg.vip_v4)),
        (cfg.flags & DECAP_VIP_V6 != 0).then(|| Ipv6Addr::from(cfg.vip_v6)),
    )
}

/// The map value for `setup` with this host's address `local`.
pub fn decap_config(setup: &DecapSetup, local: Ipv4Addr) -> DecapConfig {
    let mut cfg = DecapConfig {
        local_v4: local.octets(),
        vip_v4: [0; 4],
        flags: DECAP_ENABLED,
        vip_v6: [0; 16],
    };
    if let Some(a) = setup.vip_v4 {
        cfg.vip_v4 = a.octets();
        cfg.flags |= DECAP_VIP_V4;
    }
    if let Some(a) = setup.vip_v6 {
        cfg.vip_v6 = a.octets();
        cfg.flags |= DECAP_VIP_V6;
    }
    cfg
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
    if setup.vip_v4.is_none() && setup.vip_v6.is_none() {
        bail!("decap needs a VIP (IPv4, IPv6 or both)");
    }
    let local = match setup.local {
        Some(a) => a,
        None => iface_v4(&setup.iface)?,
    };
    if link_path(&setup.pin_root).exists() {
        detach(&setup.pin_root)?;
    }
    let mount = ensure_bpffs(&setup.pin_root)?;
    // The object's edge maps are created too; the connection tables at their smallest (the
    // handshake array to MIN_FLOWS buckets instead of its 12 MiB: no edge program runs here).
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(edge_maps::FLOWS, MIN_FLOWS)
        .map_max_entries(edge_maps::HANDSHAKES, MIN_FLOWS)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")?;
    let cfg = decap_config(setup, local);
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
        .with_context(|| verifier_context(prog_names::XDP_DECAP))?;
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
                tracing::info!(iface = %setup.iface, ?mode, %local, vip = %setup.vip_text(), "decap attached");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(v4: Option<&str>, v6: Option<&str>) -> DecapSetup {
        DecapSetup {
            iface: "eth0".into(),
            vip_v4: v4.map(|a| a.parse().unwrap()),
            vip_v6: v6.map(|a| a.parse().unwrap()),
            local: None,
            pin_root: DEFAULT_DECAP_PIN_ROOT.into(),
            mode: DecapMode::Auto,
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn vips_take_one_address_per_family() {
        assert_eq!(
            DecapSetup::vips(&ips(&["10.0.0.1"])).unwrap(),
            (Some("10.0.0.1".parse().unwrap()), None)
        );
        assert_eq!(
            DecapSetup::vips(&ips(&["fd00::1"])).unwrap(),
            (None, Some("fd00::1".parse().unwrap()))
        );
        assert_eq!(
            DecapSetup::vips(&ips(&["fd00::1", "10.0.0.1"])).unwrap(),
            (
                Some("10.0.0.1".parse().unwrap()),
                Some("fd00::1".parse().unwrap())
            )
        );
        for bad in [
            &["10.0.0.1", "10.0.0.2"][..],
            &["fd00::1", "fd00::2"],
            &[],
            &["0.0.0.0"],
            &["::"],
            &["ff02::1"],
            &["::1"],
        ] {
            assert!(DecapSetup::vips(&ips(bad)).is_err(), "{bad:?} refused");
        }
    }

    #[test]
    fn config_flags_say_which_vips_are_set() {
        let local: Ipv4Addr = "198.51.100.7".parse().unwrap();
        let both = decap_config(&setup(Some("10.0.0.1"), Some("fd00::1")), local);
        assert_eq!(both.local_v4, [198, 51, 100, 7]);
        assert_eq!(both.vip_v4, [10, 0, 0, 1]);
        assert_eq!(both.vip_v6, "fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(both.flags, DECAP_ENABLED | DECAP_VIP_V4 | DECAP_VIP_V6);
        assert_eq!(config_vips(&both), "10.0.0.1 and fd00::1");

        let v6 = decap_config(&setup(None, Some("fd00::1")), local);
        assert_eq!(v6.flags, DECAP_ENABLED | DECAP_VIP_V6);
        assert_eq!(v6.vip_v4, [0; 4]);
        assert_eq!(config_vips(&v6), "fd00::1");

        let v4 = decap_config(&setup(Some("10.0.0.1"), None), local);
        assert_eq!(v4.flags, DECAP_ENABLED | DECAP_VIP_V4);
        assert_eq!(v4.vip_v6, [0; 16]);
        assert_eq!(config_vips(&v4), "10.0.0.1");
    }
}

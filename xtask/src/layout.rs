//! The deployment layout, written once: the services of one edge host, the unit that runs
//! each, the addresses they listen on, where Prometheus scrapes them, and the values a
//! systemd deployment gives their flags.
//!
//! Everything else comes from here or is checked against it:
//! * [`crate::stack`] (`cargo xtask run`, drills, end-to-end tests) starts the services on
//!   these ports;
//! * `cargo xtask codegen` ([`crate::codegen`]) writes, from this table and each binary's own
//!   clap definition, `scripts/edge.env.example`, the units' generated blocks and per-instance
//!   drop-ins, `hls-edge.target`, the scrape targets of `monitoring/prometheus.yml` and the
//!   README's configuration table; `cargo xtask codegen --check` (run by the tests) fails when
//!   a committed file differs.
//!
//! Ports are the contract's (docs/ARCHITECTURE.md): viewers use the VIP, which nothing listens
//! on; the data plane steers it to an origin. A flag's value is given here only where the
//! deployment needs it; when it equals the binary's own default the unit leaves it to the
//! binary, and codegen checks that the two still agree.

use std::net::{Ipv4Addr, SocketAddrV4};

/// The VIP's port (viewers' HLS URL); nothing listens on it.
pub const VIP_PORT: u16 = 8080;
/// RTMP port of the ingest.
pub const RTMP_PORT: u16 = 1935;
/// Most packager+origin pairs `cargo xtask run --origins N` starts (switcher-ctl's limit).
pub const MAX_ORIGINS: usize = 16;
/// Packager+origin pairs of the default stack and of the systemd deployment: the primary and
/// the backup.
pub const DEFAULT_ORIGINS: usize = 2;

/// HLS port of origin `i` (0-based): 8080 + i + 1, so origin 1 of N is on 8081 (the
/// contract: "with `--origins N`, origin i (1..N) on 8080+i").
pub const fn origin_port(i: usize) -> u16 {
    VIP_PORT + 1 + i as u16
}

/// Admin address (`/metrics`, `/healthz`) of packager `i` (0-based): 9183 + i.
pub const fn packager_admin(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9183 + i as u16)
}

/// Names of the origins (and their packagers) of a stack of `n` pairs, in preference order:
/// the two-origin shorthand's [`SIDES`] for 2, else `o1`..`oN`. The packager, the origin and
/// switcher-ctl's `origin` label all use them.
pub fn origin_names(n: usize) -> Vec<String> {
    if n == DEFAULT_ORIGINS {
        SIDES.iter().map(|s| s.to_string()).collect()
    } else {
        (1..=n).map(|i| format!("o{i}")).collect()
    }
}

/// HLS ports of the primary and backup origins (each also serves its `/metrics`).
pub const ORIGIN_PORTS: [u16; 2] = [origin_port(0), origin_port(1)];
/// switcher-ctl's admin server (status page, `/metrics`, `/healthz`).
pub const SWITCHER_ADMIN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9180);
/// The ingest's admin server (`/metrics`).
pub const INGEST_ADMIN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9181);
/// The primary and backup packagers' admin servers (`/metrics`, `/healthz`).
pub const PACKAGER_ADMINS: [SocketAddrV4; 2] = [packager_admin(0), packager_admin(1)];
/// The two sides of the chain, in the order of the port arrays above: packager, origin and
/// switcher-ctl's `origin` label all use these names.
pub const SIDES: [&str; 2] = ["primary", "backup"];
/// The stream the test publisher sends and the switcher probes.
pub const STREAM: &str = "demo";
/// RTMP application name.
pub const RTMP_APP: &str = "live";

/// Where the units expect the binaries.
pub const INSTALL_DIR: &str = "/usr/local/bin";
/// Configuration directory: the shared `edge.env` and each service's own file.
pub const CONFIG_DIR: &str = "/etc/hls-edge";
/// Root of the packagers' output (`StateDirectory=`), one directory per side.
pub const STATE_DIR: &str = "/var/lib/hls-edge";
/// Pin root of the eBPF objects (on the bpffs systemd mounts at /sys/fs/bpf).
pub const PIN_ROOT: &str = "/sys/fs/bpf/switcher";
/// The target that starts the whole edge.
pub const EDGE_TARGET: &str = "hls-edge.target";

/// What a service runs.
#[derive(Clone, Debug)]
pub enum Program {
    /// One of the workspace's binaries (from [`INSTALL_DIR`]), with the subcommand the unit
    /// runs.
    Binary {
        /// Binary name (`switcher-ctl`).
        name: &'static str,
        /// Subcommand (`run`), if the binary has them.
        subcommand: Option<&'static str>,
    },
    /// ffmpeg, the optional test publisher: its unit expands these variables in its own
    /// `ExecStart=`, so they are the unit's, not a binary's.
    Ffmpeg {
        /// The variables, with their default and meaning.
        vars: Vec<UnitVar>,
    },
}

/// A variable that a unit defines and expands itself (`${NAME}` in `ExecStart=`).
#[derive(Clone, Debug)]
pub struct UnitVar {
    /// Its name.
    pub name: &'static str,
    /// The unit's value.
    pub default: String,
    /// What it means.
    pub help: &'static str,
}

/// An address a service listens on in a systemd deployment, and the flag that sets it.
#[derive(Clone, Debug)]
pub struct Listen {
    /// What is served there (for the docs): `RTMP`, `HLS`, `admin`.
    pub what: &'static str,
    /// The flag's long name.
    pub flag: &'static str,
    /// The address.
    pub addr: SocketAddrV4,
}

/// Where Prometheus scrapes a service.
#[derive(Clone, Debug, PartialEq)]
pub struct ScrapeTarget {
    /// Prometheus job (the binary's name).
    pub job: &'static str,
    /// The address, on loopback.
    pub addr: SocketAddrV4,
    /// `origin` label: the side of the chain a packager or origin serves.
    pub side: Option<&'static str>,
}

/// One service of the edge.
#[derive(Clone, Debug)]
pub struct Service {
    /// Name under `cargo xtask run` (`<run dir>/logs/<name>.log`, drills): `origin-primary`.
    pub name: String,
    /// Its systemd unit: `hls-origin@primary.service` (an instance of a template).
    pub unit: String,
    /// The side it serves, for the instances of a template.
    pub side: Option<&'static str>,
    /// What it runs.
    pub program: Program,
    /// What it listens on.
    pub listens: Vec<Listen>,
    /// Prometheus job, scraped at the listen address named `admin` (or `HLS` for an origin).
    pub scrape: Option<&'static str>,
    /// Other flag values of the deployment: (long name, value). `%i`-free: the value of this
    /// instance.
    pub settings: Vec<(&'static str, String)>,
    /// Its own environment file, read after the shared one (`origin-primary.env`).
    pub env_file: String,
    /// Started by [`EDGE_TARGET`] (the optional publisher and the one-shot detach are not).
    pub in_edge_target: bool,
}

impl Service {
    /// The binary it runs, if it is one of ours.
    pub fn binary(&self) -> Option<&'static str> {
        match self.program {
            Program::Binary { name, .. } => Some(name),
            Program::Ffmpeg { .. } => None,
        }
    }

    /// The unit file that defines it: the template for an instance
    /// (`hls-origin@primary.service` -> `hls-origin@.service`).
    pub fn unit_file(&self) -> String {
        match self.side {
            Some(side) => self.unit.replace(&format!("@{side}."), "@."),
            None => self.unit.clone(),
        }
    }

    /// Every flag value of the deployment: its listen addresses, then its settings.
    pub fn flag_values(&self) -> Vec<(&'static str, String)> {
        self.listens
            .iter()
            .map(|l| (l.flag, l.addr.to_string()))
            .chain(self.settings.iter().cloned())
            .collect()
    }
}

/// `http://127.0.0.1:PORT`, how the switcher probes an origin on this host.
fn local_url(port: u16) -> String {
    format!("http://{}", SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// The RTMP URL of [`STREAM`] at the local ingest.
pub fn local_rtmp_url() -> String {
    format!(
        "rtmp://{}/{RTMP_APP}/{STREAM}",
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, RTMP_PORT)
    )
}

/// Every service of one edge host, in start order.
pub fn services() -> Vec<Service> {
    let any = |port| SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    let binary = |name, subcommand| Program::Binary { name, subcommand };
    let mut out = vec![Service {
        name: "ingest".into(),
        unit: "hls-ingest.service".into(),
        side: None,
        program: binary("ingest", None),
        listens: vec![
            Listen {
                what: "RTMP",
                flag: "listen",
                addr: any(RTMP_PORT),
            },
            Listen {
                what: "admin",
                flag: "admin",
                addr: INGEST_ADMIN,
            },
        ],
        scrape: Some("ingest"),
        settings: vec![("app", RTMP_APP.into())],
        env_file: "ingest.env".into(),
        in_edge_target: true,
    }];
    out.push(Service {
        name: "publisher".into(),
        unit: "hls-publisher-testsrc.service".into(),
        side: None,
        program: Program::Ffmpeg {
            vars: vec![
                UnitVar {
                    name: "PUBLISHER_URL",
                    default: local_rtmp_url(),
                    help: "Where to publish (append ?key=<INGEST_PUBLISH_KEY> when the ingest has a publish key).",
                },
                UnitVar {
                    name: "PUBLISHER_SIZE",
                    default: "1280x720".into(),
                    help: "Picture size.",
                },
                UnitVar {
                    name: "PUBLISHER_FPS",
                    default: "30".into(),
                    help: "Frame rate.",
                },
                UnitVar {
                    name: "PUBLISHER_GOP",
                    default: "60".into(),
                    help: "Frames per GOP: a keyframe every PUBLISHER_GOP / PUBLISHER_FPS seconds; keep it at 2 x fps for the 2 s segment target duration.",
                },
                UnitVar {
                    name: "PUBLISHER_VIDEO_BITRATE",
                    default: "2000k".into(),
                    help: "H.264 bitrate (ffmpeg syntax).",
                },
                UnitVar {
                    name: "PUBLISHER_AUDIO_BITRATE",
                    default: "128k".into(),
                    help: "AAC bitrate (ffmpeg syntax).",
                },
            ],
        },
        listens: vec![],
        scrape: None,
        settings: vec![],
        env_file: "publisher.env".into(),
        in_edge_target: false,
    });
    for (i, side) in SIDES.into_iter().enumerate() {
        out.push(Service {
            name: format!("packager-{side}"),
            unit: format!("hls-packager@{side}.service"),
            side: Some(side),
            program: binary("packager", None),
            listens: vec![Listen {
                what: "admin",
                flag: "admin",
                addr: PACKAGER_ADMINS[i],
            }],
            scrape: Some("packager"),
            settings: vec![
                ("source", local_rtmp_url()),
                ("out", format!("{STATE_DIR}/{side}")),
            ],
            env_file: format!("packager-{side}.env"),
            in_edge_target: true,
        });
    }
    for (i, side) in SIDES.into_iter().enumerate() {
        out.push(Service {
            name: format!("origin-{side}"),
            unit: format!("hls-origin@{side}.service"),
            side: Some(side),
            program: binary("origin", None),
            listens: vec![Listen {
                what: "HLS",
                flag: "listen",
                addr: any(ORIGIN_PORTS[i]),
            }],
            scrape: Some("origin"),
            settings: vec![
                ("root", format!("{STATE_DIR}/{side}")),
                // The other origin's copy, for a file this one cannot serve (origin's `peer`).
                ("peer", local_url(ORIGIN_PORTS[1 - i])),
            ],
            env_file: format!("origin-{side}.env"),
            in_edge_target: true,
        });
    }
    out.push(Service {
        name: "switcher-ctl".into(),
        unit: "hls-switcher.service".into(),
        side: None,
        program: binary("switcher-ctl", Some("run")),
        listens: vec![Listen {
            what: "admin",
            flag: "admin",
            addr: SWITCHER_ADMIN,
        }],
        scrape: Some("switcher-ctl"),
        settings: vec![
            ("iface", "lo".into()),
            (
                "vip",
                SocketAddrV4::new(Ipv4Addr::LOCALHOST, VIP_PORT).to_string(),
            ),
            ("primary", local_url(ORIGIN_PORTS[0])),
            ("backup", local_url(ORIGIN_PORTS[1])),
            ("stream", STREAM.into()),
            ("pin-root", PIN_ROOT.into()),
            ("admin-socket", "/run/switcher-ctl/admin.sock".into()),
            // hls.min.js for the status page's player (scripts/systemd/README.md installs it).
            ("assets-dir", "/usr/local/share/hls-edge/hls.js".into()),
        ],
        env_file: "switcher.env".into(),
        in_edge_target: true,
    });
    out.push(Service {
        name: "switcher-detach".into(),
        unit: "hls-switcher-detach.service".into(),
        side: None,
        program: binary("switcher-ctl", Some("detach")),
        listens: vec![],
        scrape: None,
        settings: vec![("pin-root", PIN_ROOT.into())],
        env_file: "switcher.env".into(),
        in_edge_target: false,
    });
    out
}

/// Every address Prometheus scrapes (`monitoring/prometheus.yml`), by job in service order.
pub fn scrape_targets() -> Vec<ScrapeTarget> {
    services()
        .iter()
        .filter_map(|s| {
            let job = s.scrape?;
            let listen = s
                .listens
                .iter()
                .find(|l| l.what == "admin")
                .or_else(|| s.listens.first())?;
            Some(ScrapeTarget {
                job,
                addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, listen.addr.port()),
                side: s.side,
            })
        })
        .collect()
}

/// Every TCP port the stack listens on (a running stack, or something else, holding one of
/// them makes `cargo xtask run` refuse to start).
pub fn listen_ports() -> Vec<u16> {
    listen_ports_for(DEFAULT_ORIGINS)
}

/// [`listen_ports`] of a stack of `n` packager+origin pairs: the deployment's, plus the
/// origins and packagers beyond the second.
pub fn listen_ports_for(n: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = services()
        .iter()
        .flat_map(|s| s.listens.iter().map(|l| l.addr.port()))
        .collect();
    for i in DEFAULT_ORIGINS..n {
        ports.push(origin_port(i));
        ports.push(packager_admin(i).port());
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_port_is_used_once() {
        let mut ports = listen_ports();
        ports.push(VIP_PORT);
        let n = ports.len();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), n, "a port is listed twice: {ports:?}");
        assert!(ports.contains(&RTMP_PORT) && ports.contains(&ORIGIN_PORTS[1]));
    }

    #[test]
    fn sixteen_origins_take_ports_of_their_own() {
        let mut ports = listen_ports_for(MAX_ORIGINS);
        ports.push(VIP_PORT);
        let n = ports.len();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), n, "a port is listed twice: {ports:?}");
        assert_eq!(origin_port(0), 8081);
        assert_eq!(origin_port(3), 8084, "origin 4 of 4 on 8080 + 4");
        assert_eq!(ORIGIN_PORTS, [8081, 8082]);
        assert_eq!(origin_names(2), ["primary", "backup"]);
        assert_eq!(origin_names(4), ["o1", "o2", "o3", "o4"]);
    }

    #[test]
    fn every_scraped_service_is_scraped_on_its_own_port() {
        let targets = scrape_targets();
        let jobs: Vec<&str> = targets.iter().map(|t| t.job).collect();
        assert_eq!(
            jobs,
            [
                "ingest",
                "packager",
                "packager",
                "origin",
                "origin",
                "switcher-ctl"
            ]
        );
        assert!(targets.contains(&ScrapeTarget {
            job: "origin",
            addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, ORIGIN_PORTS[1]),
            side: Some("backup"),
        }));
        assert_eq!(targets.last().map(|t| t.addr), Some(SWITCHER_ADMIN));
    }

    #[test]
    fn instances_share_their_template() {
        let s = services();
        let origin: Vec<String> = s
            .iter()
            .filter(|s| s.binary() == Some("origin"))
            .map(Service::unit_file)
            .collect();
        assert_eq!(origin, ["hls-origin@.service", "hls-origin@.service"]);
    }
}

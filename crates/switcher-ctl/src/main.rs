//! `switcher-ctl`: command line of the control plane. Parses the CLI and calls the library:
//! * `run`: attach (or adopt) the data plane, drop to CAP_BPF + CAP_NET_ADMIN, run the service.
//! * `status`: what is pinned (active origin, origins, flows, counters) and the running
//!   service's `/healthz` when reachable.
//! * `set NAME|auto [--force]`: override through the running service's admin unix
//!   socket (root only: the socket is mode 0600); without a running service, write the
//!   active map directly (primary/backup only: names of other origins live in the service).
//! * `drain NAME [--deadline S]`, `undrain NAME`, `set-weight NAME W`: through the admin
//!   socket of the running service (they change its state, there is no map to write alone).
//! * `detach`: remove programs and pins.
//! * `decap`: attach (or `--detach`, or `--status`) the origin-host end of direct server
//!   return.

use std::net::{SocketAddr, TcpListener as StdTcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hyper::{Method, StatusCode};
use switcher_common::ORIGIN_CONFIGURED;
use switcher_ctl::admin::Endpoint;
use switcher_ctl::config::{self, AttachModeArg, Config};
use switcher_ctl::dataplane::DataPlane;
use switcher_ctl::decide::OriginId;
use switcher_ctl::loader::{self, AttachConfig, AttachMode, Pinned};
use switcher_ctl::metrics::slot_label;
use switcher_ctl::{admin, decap, privileges, service};

/// How long `status`/`set` wait for a running service's admin server.
const ADMIN_CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Exit code of `run` for a configuration that cannot work (clap's own usage errors are 2 too).
const EXIT_INVALID_CONFIG: u8 = 2;
/// Worker threads of `run`: the loop, the probes and the admin server are light; two match
/// the small edge hosts this runs on.
const RUN_WORKER_THREADS: usize = 2;

#[derive(Parser)]
#[command(
    name = "switcher-ctl",
    version,
    about = "Control plane of the eBPF HLS edge"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the pins and the running service are; shared by the commands that only look.
#[derive(clap::Args)]
struct Where {
    /// Directory of the pinned eBPF maps and links (bpffs).
    #[arg(long, env = "SWITCHER_PIN_ROOT", default_value = config::DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
    /// Admin address of a running `switcher-ctl run`.
    #[arg(long, env = "SWITCHER_ADMIN", default_value = config::DEFAULT_ADMIN)]
    admin: SocketAddr,
    /// Admin unix socket of a running `switcher-ctl run` (state changes go through it).
    #[arg(long, env = "SWITCHER_ADMIN_SOCKET", default_value = config::DEFAULT_ADMIN_SOCKET)]
    admin_socket: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the data plane and run the failover service until SIGINT/SIGTERM.
    Run(Box<Config>),
    /// Show what is attached and, when a run is reachable, its health.
    Status(Where),
    /// Override the active origin (or go back to automatic).
    Set {
        /// An origin's name (primary, backup, or a --origin NAME), or auto.
        target: String,
        /// Pin the origin even though it is not healthy (without it the service refuses).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        at: Where,
    },
    /// Drain an origin: no new flows; its open flows finish, or are moved at the deadline.
    Drain {
        /// The origin's name.
        name: String,
        /// Seconds its open flows may take before they are moved (default: the service's
        /// --drain; 0 moves them now, paced).
        #[arg(long)]
        deadline: Option<f64>,
        #[command(flatten)]
        at: Where,
    },
    /// Undrain an origin: it may get new flows again.
    Undrain {
        /// The origin's name.
        name: String,
        #[command(flatten)]
        at: Where,
    },
    /// Set an origin's weight (its share of new flows under --policy balance; 0 takes it out).
    SetWeight {
        /// The origin's name.
        name: String,
        /// The new weight, 0 to 10000.
        weight: u32,
        #[command(flatten)]
        at: Where,
    },
    /// On an origin host: attach the program that strips the IP-in-IP or 6in4 header edges add for
    /// direct server return (or detach it, or show its counters).
    Decap(DecapArgs),
    /// Detach the programs and remove the pins.
    Detach {
        /// Directory of the pinned eBPF maps and links (bpffs).
        #[arg(long, env = "SWITCHER_PIN_ROOT", default_value = config::DEFAULT_PIN_ROOT)]
        pin_root: PathBuf,
    },
}

/// `switcher-ctl decap`.
#[derive(clap::Args)]
struct DecapArgs {
    /// Interface the encapsulated requests arrive on.
    #[arg(long, required_unless_present_any = ["detach", "status"])]
    iface: Option<String>,
    /// The VIP the origin on this host listens on (inner destination): an IPv4 address
    /// (IP-in-IP), an IPv6 address (6in4), or, given twice, one of each (a dual-stack VIP).
    #[arg(long, required_unless_present_any = ["detach", "status"], action = clap::ArgAction::Append)]
    vip: Vec<std::net::IpAddr>,
    /// This host's address edges encapsulate to (default: the interface's first IPv4 address).
    #[arg(long)]
    local: Option<std::net::Ipv4Addr>,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = DecapModeArg::Auto)]
    mode: DecapModeArg,
    /// Directory of the decap program's pins (bpffs).
    #[arg(long, env = "SWITCHER_DECAP_PIN_ROOT", default_value = decap::DEFAULT_DECAP_PIN_ROOT)]
    pin_root: PathBuf,
    /// Detach the decap program and remove its pins.
    #[arg(long, conflicts_with = "status")]
    detach: bool,
    /// Show the decap program's configuration and counters.
    #[arg(long)]
    status: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DecapModeArg {
    Auto,
    Native,
    Generic,
}

fn decap_cmd(args: DecapArgs) -> Result<ExitCode> {
    if args.detach {
        decap::detach(&args.pin_root)
            .with_context(|| format!("detaching decap under {}", args.pin_root.display()))?;
        println!(
            "decap detached; pins under {} removed",
            args.pin_root.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if args.status {
        let (cfg, c) = decap::status(&args.pin_root)?;
        println!(
            "decap: local {} vip {} enabled {}",
            std::net::Ipv4Addr::from(cfg.local_v4),
            decap::config_vips(&cfg),
            cfg.flags & switcher_common::dsr::DECAP_ENABLED != 0
        );
        println!(
            "counters (summed over CPUs): decapsulated {} bytes {} foreign {} malformed {} passed {}",
            c.decapsulated, c.bytes, c.foreign, c.malformed, c.passed
        );
        return Ok(ExitCode::SUCCESS);
    }
    let Some(iface) = args.iface else {
        bail!("--iface and --vip are required to attach");
    };
    let (vip_v4, vip_v6) = decap::DecapSetup::vips(&args.vip)?;
    let setup = decap::DecapSetup {
        iface,
        vip_v4,
        vip_v6,
        local: args.local,
        pin_root: args.pin_root,
        mode: match args.mode {
            DecapModeArg::Auto => decap::DecapMode::Auto,
            DecapModeArg::Native => decap::DecapMode::Native,
            DecapModeArg::Generic => decap::DecapMode::Generic,
        },
    };
    let cfg = decap::attach(&setup)
        .with_context(|| format!("attaching decap to {} (needs root)", setup.iface))?;
    println!(
        "decap attached to {}: requests encapsulated to {} for {} are decapsulated; pins under {}",
        setup.iface,
        std::net::Ipv4Addr::from(cfg.local_v4),
        setup.vip_text(),
        setup.pin_root.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    ::service::init_tracing();
    let cli: Cli = config_schema::parse(config::DEPRECATED_ENV);
    let result = match cli.command {
        Command::Run(config) => run(*config),
        Command::Status(at) => status(&at),
        Command::Set { target, force, at } => set(&target, force, &at),
        Command::Drain { name, deadline, at } => {
            let body = serde_json::json!({ "origin": name, "deadline_seconds": deadline });
            origin_request("/drain", &format!("drained {name}"), &body, &at)
        }
        Command::Undrain { name, at } => origin_request(
            "/undrain",
            &format!("undrained {name}"),
            &serde_json::json!({ "origin": name }),
            &at,
        ),
        Command::SetWeight { name, weight, at } => origin_request(
            "/weight",
            &format!("set the weight of {name} to {weight}"),
            &serde_json::json!({ "origin": name, "weight": weight }),
            &at,
        ),
        Command::Decap(args) => decap_cmd(args),
        Command::Detach { pin_root } => loader::detach(&pin_root)
            .with_context(|| format!("detaching under {}", pin_root.display()))
            .map(|()| {
                println!("detached; pins under {} removed", pin_root.display());
                ExitCode::SUCCESS
            }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("switcher-ctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The socket address of an origin base URL, for the data plane's origin map. The VIP's
/// family is preferred when the host resolves to both.
fn origin_addr(base_url: &str, vip: SocketAddr) -> Result<SocketAddr> {
    let uri: hyper::Uri = base_url
        .parse()
        .with_context(|| format!("origin URL {base_url:?}"))?;
    let host = uri
        .host()
        .context("origin URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving origin host {host:?}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4() == vip.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .with_context(|| format!("origin host {host:?} resolves to no address"))
}

/// Removes the admin socket file when `run` ends, however it ends.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(config: Config) -> Result<ExitCode> {
    // Every value is checked before anything touches the kernel or the file system.
    let config = match config.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switcher-ctl: invalid configuration: {e}");
            return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
        }
    };
    let attach = AttachConfig {
        iface: config.iface.clone(),
        vip: config.main_vip(),
        vip_v6: config.vip_v6_also(),
        origins: config
            .origin_list()
            .iter()
            .map(|o| origin_addr(&o.base_url, config.main_vip()))
            .collect::<Result<_>>()?,
        pin_root: config.pin_root.clone(),
        mode: match config.attach_mode {
            AttachModeArg::Auto => AttachMode::Auto,
            AttachModeArg::Native => AttachMode::Native,
            AttachModeArg::Generic => AttachMode::Generic,
            AttachModeArg::Tc => AttachMode::Tc,
        },
        max_flows: config.max_flows,
        dsr: config.dsr,
    };
    // Both admin listeners before attaching: a port or socket in use then fails with nothing
    // attached, and before dropping privileges, so a port below 1024 would still work.
    let listener = StdTcpListener::bind(config.admin)
        .with_context(|| format!("binding admin {}", config.admin))?;
    listener
        .set_nonblocking(true)
        .context("admin listener non-blocking")?;
    let unix = admin::bind_unix(&config.admin_socket)?;
    let _socket_file = SocketFile(config.admin_socket.clone());
    let pinned = Pinned::attach(&attach)
        .with_context(|| format!("attaching to {} (needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON to load the programs; adopting pinned ones needs only CAP_BPF + CAP_NET_ADMIN)", config.iface))?;
    tracing::info!(info = %pinned.attach_info(), "data plane attached");
    // Before the runtime exists: capabilities are per thread, and its threads inherit ours.
    privileges::drop_to_bpf_and_net_admin().context("dropping privileges")?;
    tracing::info!(effective = ?privileges::effective(), "privileges dropped");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUN_WORKER_THREADS)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listeners = admin::Listeners {
            tcp: tokio::net::TcpListener::from_std(listener).context("admin listener")?,
            unix: Some(tokio::net::UnixListener::from_std(unix).context("admin socket")?),
        };
        tracing::info!(socket = %config.admin_socket.display(), "admin socket listening (state changes)");
        service::run(
            config,
            Box::new(pinned),
            listeners,
            ::service::shutdown_signal(),
        )
        .await
        .context("service")
    })?;
    Ok(ExitCode::SUCCESS)
}

fn small_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn describe_origin(o: &switcher_common::Origin) -> String {
    if o.flags & ORIGIN_CONFIGURED == 0 {
        return "-".into();
    }
    let port = u16::from_be(o.port_be);
    if o.flags & switcher_common::ORIGIN_REMOTE != 0 {
        return format!(
            "{}:{port} (remote: IP-in-IP or 6in4, answers directly)",
            std::net::Ipv4Addr::from(o.addr_v4)
        );
    }
    if o.addr_v4 != [0; 4] {
        format!("{}:{port}", std::net::Ipv4Addr::from(o.addr_v4))
    } else if o.addr_v6 != [0; 16] {
        format!("[{}]:{port}", std::net::Ipv6Addr::from(o.addr_v6))
    } else {
        format!("<VIP address>:{port}")
    }
}

fn print_pinned(pin_root: &Path) -> Result<bool> {
    let pinned = match Pinned::open(pin_root) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %format!("{e:#}"), "opening pins");
            println!("nothing attached at {}", pin_root.display());
            return Ok(false);
        }
    };
    println!("attached: {}", pinned.attach_info());
    let vip = pinned.vip().context("reading the VIP map")?;
    let port = u16::from_be(vip.port_be);
    if vip.flags & switcher_common::VIP_HAS_V4 != 0 {
        println!("vip: {}:{port}", std::net::Ipv4Addr::from(vip.addr_v4));
    }
    if vip.flags & switcher_common::VIP_HAS_V6 != 0 {
        println!("vip: [{}]:{port}", std::net::Ipv6Addr::from(vip.addr_v6));
    }
    let active = pinned.active().context("reading the active map")?;
    println!(
        "active origin: index {active} ({} with the two-origin shorthand; the service's names are in its /healthz below)",
        slot_label(active)
    );
    let origins = pinned.origins().context("reading the origins map")?;
    let flows = pinned.flow_counts().context("reading the flows map")?;
    for (i, o) in origins.iter().enumerate() {
        if o.flags & ORIGIN_CONFIGURED != 0 {
            println!(
                "origin {} [{i}]: {}, flows {}, generation {}, listener fallback {}",
                slot_label(i as u32),
                describe_origin(o),
                flows.get(i).copied().unwrap_or(0),
                o.generation,
                if o.flags & switcher_common::ORIGIN_FALLBACK != 0 {
                    "yes"
                } else {
                    "no (unhealthy or drained)"
                }
            );
        }
    }
    // Direct server return: the encapsulation counters of the remote origins.
    if let Ok(encap) = loader::encap_counters(pin_root) {
        for (i, (o, c)) in origins.iter().zip(&encap).enumerate() {
            if o.flags & switcher_common::ORIGIN_REMOTE != 0 {
                println!(
                    "encap {} [{i}]: encapsulated {} bytes {} to_stack {} too_big {} errors {} adopted {}",
                    slot_label(i as u32),
                    c.encapsulated,
                    c.bytes,
                    c.to_stack,
                    c.too_big,
                    c.errors,
                    c.adopted
                );
            }
        }
    }
    println!("counters (summed over CPUs):");
    for (i, c) in pinned
        .counters()
        .context("reading the stats map")?
        .iter()
        .enumerate()
    {
        println!(
            "  {:<9} packets {} bytes {} new_flows {} rewrites {} reply_rewrites {} passes {} drops {} malformed {} fragments {} ip_options {} established {} untracked {} listener_fallbacks {} stale_flows {} stale_kept {} held {}",
            slot_label(i as u32),
            c.packets,
            c.bytes,
            c.new_flows,
            c.rewrites,
            c.reply_rewrites,
            c.passes,
            c.drops,
            c.malformed,
            c.fragments,
            c.ip_options,
            c.established,
            c.untracked,
            c.listener_fallbacks,
            c.stale_flows,
            c.stale_kept,
            c.held
        );
    }
    Ok(true)
}

fn status(at: &Where) -> Result<ExitCode> {
    let attached = print_pinned(&at.pin_root)?;
    let rt = small_runtime()?;
    match rt.block_on(admin::request(
        &Endpoint::Tcp(at.admin),
        Method::GET,
        "/healthz",
        "",
        ADMIN_CLIENT_TIMEOUT,
    )) {
        Ok((_, body)) => println!("service at {}:\n{body}", at.admin),
        Err(e) => println!("{e}"),
    }
    Ok(if attached {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One drain/undrain/set-weight request to the running service's admin socket.
fn origin_request(
    path: &str,
    done: &str,
    body: &serde_json::Value,
    at: &Where,
) -> Result<ExitCode> {
    let rt = small_runtime()?;
    let socket = Endpoint::Unix(at.admin_socket.clone());
    match rt.block_on(admin::request(
        &socket,
        Method::POST,
        path,
        &body.to_string(),
        ADMIN_CLIENT_TIMEOUT,
    ))? {
        (StatusCode::OK, body) => {
            println!("{done} through the running service at {socket}:\n{body}");
            Ok(ExitCode::SUCCESS)
        }
        (status, body) => bail!("the running service refused ({status}): {}", body.trim()),
    }
}

fn set(target: &str, force: bool, at: &Where) -> Result<ExitCode> {
    let rt = small_runtime()?;
    let socket = Endpoint::Unix(at.admin_socket.clone());
    let body = serde_json::json!({ "mode": target, "force": force }).to_string();
    match rt.block_on(admin::request(
        &socket,
        Method::POST,
        "/override",
        &body,
        ADMIN_CLIENT_TIMEOUT,
    )) {
        Ok((StatusCode::OK, body)) => {
            println!("set {target} through the running service at {socket}:\n{body}");
            Ok(ExitCode::SUCCESS)
        }
        Ok((status, body)) => bail!(
            "the running service refused the override ({status}): {}",
            body.trim()
        ),
        Err(admin::ClientError::Unreachable { reason, .. }) => {
            // A service that answers over TCP but not on this socket keeps its own idea of
            // the active origin: writing the map behind its back would be undone or, worse,
            // disagree with it silently.
            if rt
                .block_on(admin::request(
                    &Endpoint::Tcp(at.admin),
                    Method::GET,
                    "/healthz",
                    "",
                    ADMIN_CLIENT_TIMEOUT,
                ))
                .is_ok()
            {
                bail!(
                    "a switcher-ctl run answers at {} but not on the admin socket {socket} ({reason}); pass its --admin-socket",
                    at.admin
                );
            }
            let origin = match target {
                "primary" => OriginId::PRIMARY,
                "backup" => OriginId::BACKUP,
                "auto" => bail!(
                    "no switcher-ctl run reachable at {socket} ({reason}); auto needs a running service"
                ),
                other => bail!(
                    "no switcher-ctl run reachable at {socket} ({reason}); without it only primary and backup (indices 0 and 1) can be written to the pins, not {other:?}"
                ),
            };
            let mut pinned = Pinned::open(&at.pin_root).with_context(|| {
                format!(
                    "no switcher-ctl run reachable at {socket} ({reason}), and nothing attached at {}",
                    at.pin_root.display()
                )
            })?;
            pinned
                .set_active(origin.index())
                .context("writing the active map")?;
            // Flows on the other origin stay pinned to it: retiring them is the service's job
            // when it decides; an operator without a service gets the map write only.
            println!(
                "no switcher-ctl run reachable at {socket} ({reason}); wrote active origin = {target} to the pinned map under {} directly (new flows go there; a run started later adopts it)",
                at.pin_root.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.into()),
    }
}

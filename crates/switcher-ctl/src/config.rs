//! The control plane's configuration: one struct, every key a command-line flag with an
//! environment variable (the seed switcher's variables keep their names and meaning), serde
//! defaults so a partial config file or test literal fills in the rest, and [`Config::validate`]
//! as the one place that rejects nonsense before anything is attached.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Uri;
use serde::{Deserialize, Serialize};

pub use crate::decide::{MAX_ORIGINS, Steering};

/// Default interface: the edge host's own loopback (the contract: "default interface `lo`", README).
pub const DEFAULT_IFACE: &str = "lo";
/// Default VIP: nothing listens there; the data plane steers it to an origin.
pub const DEFAULT_VIP: &str = "127.0.0.1:8080";
/// Default primary origin base URL (the contract: primary on 8081).
pub const DEFAULT_PRIMARY: &str = "http://127.0.0.1:8081";
/// Default backup origin base URL (the contract: backup on 8082).
pub const DEFAULT_BACKUP: &str = "http://127.0.0.1:8082";
/// Largest origin weight (`--origin NAME=URL,weight=W`, `set-weight`): weights are relative,
/// and 10,000 is finer than any share a 65,537-slot Maglev table can show.
pub const MAX_WEIGHT: u32 = 10_000;
/// Weight of an origin that does not say (`--origin NAME=URL`, the two-origin shorthand).
pub const DEFAULT_WEIGHT: u32 = 1;
/// Longest origin name: it is a metric label value, a JSON key and a Maglev backend name.
pub const MAX_ORIGIN_NAME: usize = 32;
/// Default stream name (`cargo xtask run` publishes `demo`).
pub const DEFAULT_STREAM: &str = "demo";
/// Default pin root of the eBPF objects.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/switcher";
/// Default admin listen address. The TCP admin server is read-only (state changes go through
/// [`DEFAULT_ADMIN_SOCKET`]); loopback still, because metrics and the status page are for the
/// edge host's operators.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9180";
/// Default path of the admin unix socket, the only channel that changes state
/// (`switcher-ctl set`): mode 0600 in a 0700 directory, owned by the service's user (root),
/// so the file system is the authentication. Under systemd, `RuntimeDirectory=switcher-ctl`
/// makes `/run/switcher-ctl`.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/switcher-ctl/admin.sock";
/// Default cap on open admin connections, per listener (TCP and unix socket each): a
/// scraper, a status page or two and an operator need a handful; beyond the cap clients wait
/// in the kernel's backlog instead of costing tasks and buffers.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;
/// Default time an admin client has to send a request head (and its body), seconds; the
/// origin's header timeout. Also bounds an idle keep-alive connection.
pub const DEFAULT_ADMIN_HEADER_TIMEOUT_SECONDS: f64 = 10.0;
/// Shortest duration accepted for the probe interval, probe timeout, age threshold and admin
/// header timeout: tokio's timers count whole milliseconds (a zero interval panics).
pub const MIN_SECONDS: f64 = 0.001;
/// Longest duration accepted for them: a day. Far beyond any useful value, and far inside
/// what `Duration` and the timers can represent (1e20 s overflows `Duration`).
pub const MAX_SECONDS: f64 = 86_400.0;
/// Largest `SWITCHER_REQUIRED_WINDOWS`: 100,000 windows at the default interval is 5.5 hours.
pub const MAX_REQUIRED_WINDOWS: u32 = 100_000;
/// Largest `SWITCHER_MSN_TOLERANCE`: an origin 10^6 segments behind is weeks behind.
pub const MAX_MSN_TOLERANCE: u64 = 1_000_000;
/// Largest `SWITCHER_MAX_PLAYLIST_BYTES`: 64 MiB, a bound on what one origin can make a probe hold.
pub const MAX_MAX_PLAYLIST_BYTES: usize = 64 << 20;
/// Largest `SWITCHER_DECISION_HISTORY`: every entry is rendered into `/healthz` and the status page.
pub const MAX_DECISION_HISTORY: usize = 10_000;
/// Largest `SWITCHER_ADMIN_MAX_CONNECTIONS`.
pub const MAX_ADMIN_CONNECTIONS: usize = 4096;
/// Default probe interval. The seed polled every 5 s; a 2 s-segment live stream can afford
/// a probe per 0.1 s (a small playlist and a segment tail per origin, ~0.7 MB/s), so failover
/// is sub-second and a broken new segment is usually seen before players fetch it (they
/// reload the playlist about once per 2 s target duration).
pub const DEFAULT_INTERVAL_SECONDS: f64 = 0.1;
/// Default age threshold: three 2 s target durations. A healthy packager's newest segment
/// ends at most ~one target duration ago (plus probe latency); 6 s is clearly stalled while
/// still shorter than the 3 x 2 s of buffered segments a player holds.
pub const DEFAULT_AGE_THRESHOLD_SECONDS: f64 = 6.0;
/// Default hysteresis: two consecutive bad (or good) windows, so one lost probe never flips.
pub const DEFAULT_REQUIRED_WINDOWS: u32 = 2;
/// Default probe timeout: loopback origins answer in well under a millisecond; 0.5 s means a
/// hung origin, not a slow one. Larger than the interval on purpose: the loop waits for both
/// probes, so a hung origin slows the cadence to one probe per timeout rather than piling up.
pub const DEFAULT_PROBE_TIMEOUT_SECONDS: f64 = 0.5;
/// Default connect timeout of a probe: a SYN to an origin next to the edge is answered in
/// well under a millisecond; 0.1 s unanswered means its host or network is gone, or its accept
/// queue is full (a hung process), and is judged without waiting for the whole probe budget.
pub const DEFAULT_PROBE_CONNECT_TIMEOUT_SECONDS: f64 = 0.1;
/// Default drain time: a healthy origin that stops getting new flows (switchback, override)
/// keeps its open connections this long, then they are moved at a paced rate.
pub const DEFAULT_DRAIN_SECONDS: f64 = 30.0;
/// Default time a retired origin's connection that is still delivering a response may take to
/// finish it: three 2 s segments, about what a player has buffered.
pub const DEFAULT_FINISH_SECONDS: f64 = 6.0;
/// Default MSN tolerance (see [`Config::msn_tolerance`]).
pub const DEFAULT_MSN_TOLERANCE: u64 = 1;
/// Default cap on a playlist body: a 6-segment live playlist is well under 1 KiB; 1 MiB is
/// room for long DVR windows while bounding what a broken origin can make us buffer.
pub const DEFAULT_MAX_PLAYLIST_BYTES: usize = 1 << 20;
/// Default directory of hls.js, which the status page's player loads from
/// `/assets/hls.min.js`: where `npm ci --prefix web` puts it, relative to the directory
/// switcher-ctl starts in (the repository root under `cargo xtask run`).
pub const DEFAULT_ASSETS_DIR: &str = "web/node_modules/hls.js/dist";
/// Default number of recent decisions kept for `/healthz` and the status page.
pub const DEFAULT_DECISION_HISTORY: usize = 20;

/// Variables that had no `SWITCHER_` prefix and were renamed (every binary reads one shared
/// env file, so each name says whose it is). Ours are deprecated: still read, with a warning.
/// The seed switcher's six (`PRIMARY_BASE_URL`, `BACKUP_BASE_URL`, `PLAYLIST_PATH`,
/// `CHECK_INTERVAL_SECONDS`, `SEGMENT_AGE_THRESHOLD_SECONDS`, `REQUIRED_WINDOWS`) are kept
/// for good with their meaning, so a seed deployment's env file works unchanged (the
/// two-origin shorthand included): read as a second spelling, noted at info level. The
/// prefixed name is canonical, and wins when both are set.
pub const DEPRECATED_ENV: &[config_schema::DeprecatedEnv] = &[
    seed("PRIMARY_BASE_URL", "SWITCHER_PRIMARY_BASE_URL"),
    seed("BACKUP_BASE_URL", "SWITCHER_BACKUP_BASE_URL"),
    seed("PLAYLIST_PATH", "SWITCHER_PLAYLIST_PATH"),
    seed("CHECK_INTERVAL_SECONDS", "SWITCHER_CHECK_INTERVAL_SECONDS"),
    seed(
        "SEGMENT_AGE_THRESHOLD_SECONDS",
        "SWITCHER_SEGMENT_AGE_THRESHOLD_SECONDS",
    ),
    seed("REQUIRED_WINDOWS", "SWITCHER_REQUIRED_WINDOWS"),
    config_schema::DeprecatedEnv {
        old: "PROBE_TIMEOUT_SECONDS",
        new: "SWITCHER_PROBE_TIMEOUT_SECONDS",
        kind: config_schema::OldName::Deprecated,
    },
    config_schema::DeprecatedEnv {
        old: "MSN_TOLERANCE",
        new: "SWITCHER_MSN_TOLERANCE",
        kind: config_schema::OldName::Deprecated,
    },
    config_schema::DeprecatedEnv {
        old: "MAX_PLAYLIST_BYTES",
        new: "SWITCHER_MAX_PLAYLIST_BYTES",
        kind: config_schema::OldName::Deprecated,
    },
    config_schema::DeprecatedEnv {
        old: "PREFER_PRIMARY",
        new: "SWITCHER_PREFER_PRIMARY",
        kind: config_schema::OldName::Deprecated,
    },
    config_schema::DeprecatedEnv {
        old: "DECISION_HISTORY",
        new: "SWITCHER_DECISION_HISTORY",
        kind: config_schema::OldName::Deprecated,
    },
];

/// A seed switcher's name for a variable (see [`DEPRECATED_ENV`]).
const fn seed(old: &'static str, new: &'static str) -> config_schema::DeprecatedEnv {
    config_schema::DeprecatedEnv {
        old,
        new,
        kind: config_schema::OldName::Seed,
    }
}

/// How the loader attaches the ingress program (mapped onto the loader's own enum by `main`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttachModeArg {
    /// Native XDP where the driver has it, else generic XDP, else TC ingress.
    #[default]
    Auto,
    /// Native (driver) XDP only.
    Native,
    /// Generic (skb) XDP only; the mode `lo` supports.
    Generic,
    /// TC ingress through clsact.
    Tc,
}

/// Everything `switcher-ctl run` needs. Every field is a flag and an environment variable;
/// durations are seconds as `f64` because the seed's variables are seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default)]
pub struct Config {
    /// Interface the data plane attaches to.
    #[arg(long, env = "SWITCHER_IFACE", default_value = DEFAULT_IFACE)]
    pub iface: String,

    /// Virtual service address:port viewers connect to (nothing listens there). Give it twice,
    /// one IPv4 and one IPv6 address on the same port, to serve both families at once (dual
    /// stack; in the environment, comma-separated).
    #[arg(long, env = "SWITCHER_VIP", default_value = DEFAULT_VIP, value_delimiter = ',', action = clap::ArgAction::Append)]
    pub vip: Vec<SocketAddr>,

    /// Base URL of the primary origin; the playlist path is appended to it.
    #[arg(long = "primary", env = "SWITCHER_PRIMARY_BASE_URL", default_value = DEFAULT_PRIMARY)]
    pub primary_base_url: String,

    /// Base URL of the backup origin.
    #[arg(long = "backup", env = "SWITCHER_BACKUP_BASE_URL", default_value = DEFAULT_BACKUP)]
    pub backup_base_url: String,

    /// Origins, each `NAME=URL[,weight=W]`, in failover preference order (the first is
    /// preferred); repeat the flag for each, up to 16 (env: separated by spaces). NAME is 1-32
    /// letters, digits, `-` or `_` (it is the metric label, the JSON key and what `drain` and
    /// `set` take); URL is the base URL the playlist path is appended to; W (default 1, 0 to
    /// 10000) is its share of new flows under `--policy balance`. When given,
    /// `--primary`/`--backup` are not used; when not, they are the origins `primary` and
    /// `backup`, weight 1.
    #[arg(long = "origin", env = "SWITCHER_ORIGINS", value_delimiter = ' ')]
    pub origins: Vec<OriginArg>,

    /// How new flows are steered: `failover` sends them all to one active origin, the first
    /// healthy one in preference order; `balance` spreads them over every healthy origin in
    /// proportion to its weight (weighted Maglev consistent hashing).
    #[arg(long, env = "SWITCHER_POLICY", value_enum, default_value_t = Steering::Failover)]
    pub policy: Steering,

    /// Stream name; the playlist path defaults to `/hls/<stream>/index.m3u8`.
    #[arg(long, env = "SWITCHER_STREAM", default_value = DEFAULT_STREAM)]
    pub stream: String,

    /// Playlist path relative to each base URL; overrides `--stream`.
    #[arg(long, env = "SWITCHER_PLAYLIST_PATH")]
    pub playlist_path: Option<String>,

    /// Seconds between probe rounds (5 in the seed).
    #[arg(long = "interval", env = "SWITCHER_CHECK_INTERVAL_SECONDS", default_value_t = DEFAULT_INTERVAL_SECONDS)]
    pub check_interval_seconds: f64,

    /// An origin whose newest segment ended longer ago than this is stale (20 in the seed).
    #[arg(long = "age-threshold", env = "SWITCHER_SEGMENT_AGE_THRESHOLD_SECONDS", default_value_t = DEFAULT_AGE_THRESHOLD_SECONDS)]
    pub segment_age_threshold_seconds: f64,

    /// Consecutive bad windows before leaving the active origin, and consecutive good windows
    /// before an origin counts as healthy again (3 in the seed).
    /// A refused connection makes an origin bad at once.
    #[arg(long, env = "SWITCHER_REQUIRED_WINDOWS", default_value_t = DEFAULT_REQUIRED_WINDOWS)]
    pub required_windows: u32,

    /// Seconds a whole probe (connect, request, body, master-playlist hop) may take.
    #[arg(long = "probe-timeout", env = "SWITCHER_PROBE_TIMEOUT_SECONDS", default_value_t = DEFAULT_PROBE_TIMEOUT_SECONDS)]
    pub probe_timeout_seconds: f64,

    /// Seconds the TCP connect of a probe may take (within the probe timeout). A connect that
    /// times out is a bad window like any other (hysteresis applies).
    #[arg(long = "probe-connect-timeout", env = "SWITCHER_PROBE_CONNECT_TIMEOUT_SECONDS", default_value_t = DEFAULT_PROBE_CONNECT_TIMEOUT_SECONDS)]
    pub probe_connect_timeout_seconds: f64,

    /// Also fetch the newest segment of each playlist in every probe (within the probe
    /// timeout): the whole body when the segment is new, its last 64 KiB otherwise. Catches
    /// what a playlist alone cannot show: a segment path that hangs (stuck disk) or crawls, and
    /// a body shorter than its Content-Length or not whole MPEG-TS packets.
    #[arg(long = "probe-segments", env = "SWITCHER_PROBE_SEGMENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub probe_segments: bool,

    /// Seconds a healthy origin that stopped getting new flows (a switchback, an override)
    /// keeps its open viewer connections before the rest are moved (paced). An unhealthy
    /// origin's connections are aborted at once whatever this says.
    #[arg(long = "drain", env = "SWITCHER_DRAIN_SECONDS", default_value_t = DEFAULT_DRAIN_SECONDS)]
    pub drain_seconds: f64,

    /// Seconds a retired (unhealthy) origin's connection that is still delivering a response
    /// may take to finish it before it is reset too. Stalled, idle and waiting connections are
    /// reset at once; one that is delivering (data in flight, the viewer acknowledging) would
    /// lose the rest of its segment to a reset. 0 resets every connection at once.
    #[arg(long = "finish", env = "SWITCHER_FINISH_SECONDS", default_value_t = DEFAULT_FINISH_SECONDS)]
    pub finish_seconds: f64,

    /// How many media sequence numbers an origin may be behind the other one before it counts
    /// as bad. 1 by default: the two packagers publish the same segment independently, so a
    /// probe round can land between one origin's playlist update and the other's; one segment
    /// behind is that race, two is a real lag (the player would stall on it, RFC 8216 6.3.5).
    #[arg(long, env = "SWITCHER_MSN_TOLERANCE", default_value_t = DEFAULT_MSN_TOLERANCE)]
    pub msn_tolerance: u64,

    /// Largest playlist body accepted, in bytes; more is an error (`TooLarge`).
    #[arg(long, env = "SWITCHER_MAX_PLAYLIST_BYTES", default_value_t = DEFAULT_MAX_PLAYLIST_BYTES)]
    pub max_playlist_bytes: usize,

    /// Failover: when an origin later in the preference list is active and an earlier one (the
    /// primary) is healthy again, switch back to the earlier one (true), or stay until the
    /// active one fails itself (false).
    #[arg(long, env = "SWITCHER_PREFER_PRIMARY", default_value_t = true, action = clap::ArgAction::Set)]
    pub prefer_primary: bool,

    /// Directory of the pinned eBPF maps and links (bpffs).
    #[arg(long, env = "SWITCHER_PIN_ROOT", default_value = DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,

    /// Admin HTTP listen address, read-only: /metrics, /healthz, /, /api/state, /assets/.
    /// Requests whose Host is not an IP address, `localhost` or in `--admin-allowed-hosts`,
    /// or whose Origin is another site, are refused (DNS rebinding, CSRF).
    #[arg(long, env = "SWITCHER_ADMIN", default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,

    /// Admin unix socket, the one channel for state changes (`POST /override`, `/drain`,
    /// `/undrain`, `/weight`, used by `switcher-ctl set`, `drain`, `undrain`, `set-weight`):
    /// created mode 0600 (its directory 0700 when created), and only
    /// peers with uid 0 or the service's own uid are served.
    #[arg(long, env = "SWITCHER_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub admin_socket: PathBuf,

    /// Host names (besides IP addresses and `localhost`) the TCP admin server answers to,
    /// comma-separated, e.g. the edge's name for a remote Prometheus.
    #[arg(long, env = "SWITCHER_ADMIN_ALLOWED_HOSTS", value_delimiter = ',')]
    pub admin_allowed_hosts: Vec<String>,

    /// Most open connections per admin listener (TCP and unix socket each).
    #[arg(long, env = "SWITCHER_ADMIN_MAX_CONNECTIONS", default_value_t = DEFAULT_ADMIN_MAX_CONNECTIONS)]
    pub admin_max_connections: usize,

    /// Seconds an admin client has to send a request head (and its body); also closes idle
    /// keep-alive connections.
    #[arg(long, env = "SWITCHER_ADMIN_HEADER_TIMEOUT_SECONDS", default_value_t = DEFAULT_ADMIN_HEADER_TIMEOUT_SECONDS)]
    pub admin_header_timeout_seconds: f64,

    /// How the ingress program is attached.
    #[arg(long, env = "SWITCHER_ATTACH_MODE", value_enum, default_value_t = AttachModeArg::Auto)]
    pub attach_mode: AttachModeArg,

    /// Entries of the data plane's flow table (established viewer connections): ~100 bytes of
    /// kernel memory each, split evenly between the CPUs. (The handshake table has a fixed
    /// 262,144 slots, 12 MiB.)
    /// Applied when the maps are created; adopted pinned maps keep their size (a warning says
    /// so). Past it, the least recently used flow is evicted and its connection reset.
    #[arg(long, env = "SWITCHER_MAX_FLOWS", default_value_t = switcher_common::MAX_FLOWS,
          value_parser = clap::value_parser!(u32).range(i64::from(switcher_common::MIN_FLOWS)..))]
    pub max_flows: u32,

    /// Direct server return: origins whose address is not on this host are reached by IP-in-IP
    /// (IPv4 viewers) or 6in4 (IPv6 viewers) from XDP and answer viewers directly (their host
    /// runs `switcher-ctl decap` with the same VIPs, owns them, and the origin listens on the
    /// VIP's port). A remote origin is named by its host's IPv4 address (the underlay is
    /// IPv4); both `--vip` families are served. Needs XDP (TC ingress cannot encapsulate).
    /// Off: such origins get their address rewritten and their replies must come back through
    /// this host.
    #[arg(long, env = "SWITCHER_DSR")]
    pub dsr: bool,

    /// Announce the VIP /32 (and the /128 of a dual-stack VIP's IPv6 address) through this
    /// host's BGP speaker: a blackhole route to each with protocol 77 in the main table, which
    /// the speaker redistributes (FRR: `redistribute kernel` with a route-map matching the VIP,
    /// in each address family), present only while the data plane is attached and at least
    /// one origin is healthy; removed on shutdown.
    #[arg(long, env = "SWITCHER_ANNOUNCE")]
    pub announce: bool,

    /// Recent decisions kept for /healthz and the status page.
    #[arg(long, env = "SWITCHER_DECISION_HISTORY", default_value_t = DEFAULT_DECISION_HISTORY)]
    pub decision_history: usize,

    /// Directory holding `hls.min.js`, served at `/assets/hls.min.js` for the status page's
    /// player (relative paths are resolved against the working directory).
    #[arg(long, env = "SWITCHER_ASSETS_DIR", default_value = DEFAULT_ASSETS_DIR)]
    pub assets_dir: PathBuf,

    /// HLS URL the status page's player plays; default `http://<vip>/<playlist path>`, the
    /// stream as a viewer gets it through the VIP.
    #[arg(long, env = "SWITCHER_PLAYER_URL")]
    pub player_url: Option<String>,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A duration is not a number, or outside [`MIN_SECONDS`]..=[`MAX_SECONDS`].
    #[error("{key} must be a number of seconds from {min} to {max}, got {value}")]
    Duration {
        /// The key.
        key: &'static str,
        /// What was given.
        value: f64,
        /// Smallest accepted.
        min: f64,
        /// Largest accepted.
        max: f64,
    },
    /// A count outside its range.
    #[error("{key} must be from {min} to {max}, got {value}")]
    Range {
        /// The key.
        key: &'static str,
        /// What was given.
        value: u64,
        /// Smallest accepted.
        min: u64,
        /// Largest accepted.
        max: u64,
    },
    /// Any other value that cannot work.
    #[error("{key}: {value:?} {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What was given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An origin URL is not an absolute `http://host[:port]` URL.
    #[error("{key}: {url:?} is not an http:// URL with a host ({reason})")]
    Url {
        /// The key.
        key: &'static str,
        /// What was given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Primary and backup are the same URL, so failover could never help.
    #[error("primary and backup base URLs are the same ({0})")]
    SameOrigins(String),
    /// Two origins share a name or a URL.
    #[error("two origins have the same {what} {value:?}")]
    DuplicateOrigin {
        /// `name` or `URL`.
        what: &'static str,
        /// The shared value.
        value: String,
    },
    /// More origins than the data plane and the decider hold.
    #[error("SWITCHER_ORIGINS: {0} origins given, at most {MAX_ORIGINS} are supported")]
    TooManyOrigins(usize),
}

/// One origin of `--origin NAME=URL[,weight=W]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OriginArg {
    /// The origin's name.
    pub name: String,
    /// Its base URL (the playlist path is appended).
    pub base_url: String,
    /// Its share of new flows under the balance policy.
    pub weight: u32,
}

impl std::str::FromStr for OriginArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not NAME=URL[,weight=W]"))?;
        let mut parts = rest.split(',');
        let base_url = parts.next().unwrap_or_default().to_string();
        let mut weight = DEFAULT_WEIGHT;
        for option in parts {
            match option.split_once('=') {
                Some(("weight", w)) => {
                    weight = w.parse().map_err(|_| {
                        format!("weight {w:?} of origin {name:?} is not a whole number")
                    })?;
                }
                _ => {
                    return Err(format!(
                        "origin {name:?}: unknown option {option:?} (only weight=W)"
                    ));
                }
            }
        }
        Ok(OriginArg {
            name: name.to_string(),
            base_url,
            weight,
        })
    }
}

impl TryFrom<String> for OriginArg {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<OriginArg> for String {
    fn from(o: OriginArg) -> String {
        o.to_string()
    }
}

impl std::fmt::Display for OriginArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={},weight={}", self.name, self.base_url, self.weight)
    }
}

/// Whether `name` may name an origin: 1-32 ASCII letters, digits, `-`, `_`, and not a word
/// that means something else where names are used (`auto` for `set`, `unsteered` as a label).
pub fn valid_origin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ORIGIN_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && name != "auto"
        && name != crate::metrics::UNSTEERED_LABEL
}

impl Default for Config {
    fn default() -> Self {
        Config {
            iface: DEFAULT_IFACE.into(),
            vip: vec![
                DEFAULT_VIP
                    .parse()
                    .expect("DEFAULT_VIP is a socket address"),
            ],
            primary_base_url: DEFAULT_PRIMARY.into(),
            backup_base_url: DEFAULT_BACKUP.into(),
            origins: Vec::new(),
            policy: Steering::Failover,
            stream: DEFAULT_STREAM.into(),
            playlist_path: None,
            check_interval_seconds: DEFAULT_INTERVAL_SECONDS,
            segment_age_threshold_seconds: DEFAULT_AGE_THRESHOLD_SECONDS,
            required_windows: DEFAULT_REQUIRED_WINDOWS,
            probe_timeout_seconds: DEFAULT_PROBE_TIMEOUT_SECONDS,
            probe_connect_timeout_seconds: DEFAULT_PROBE_CONNECT_TIMEOUT_SECONDS,
            probe_segments: true,
            drain_seconds: DEFAULT_DRAIN_SECONDS,
            finish_seconds: DEFAULT_FINISH_SECONDS,
            msn_tolerance: DEFAULT_MSN_TOLERANCE,
            max_playlist_bytes: DEFAULT_MAX_PLAYLIST_BYTES,
            prefer_primary: true,
            pin_root: DEFAULT_PIN_ROOT.into(),
            admin: DEFAULT_ADMIN
                .parse()
                .expect("DEFAULT_ADMIN is a socket address"),
            admin_socket: DEFAULT_ADMIN_SOCKET.into(),
            admin_allowed_hosts: Vec::new(),
            admin_max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
            admin_header_timeout_seconds: DEFAULT_ADMIN_HEADER_TIMEOUT_SECONDS,
            attach_mode: AttachModeArg::Auto,
            max_flows: switcher_common::MAX_FLOWS,
            dsr: false,
            announce: false,
            decision_history: DEFAULT_DECISION_HISTORY,
            assets_dir: DEFAULT_ASSETS_DIR.into(),
            player_url: None,
        }
    }
}

/// A duration key: finite, within [`MIN_SECONDS`]..=[`MAX_SECONDS`], and convertible to a
/// `Duration` of at least a millisecond (the accessors below then cannot panic).
fn seconds(key: &'static str, value: f64) -> Result<(), ConfigError> {
    let in_range = (MIN_SECONDS..=MAX_SECONDS).contains(&value)
        && Duration::try_from_secs_f64(value).is_ok_and(|d| d >= Duration::from_millis(1));
    if in_range {
        Ok(())
    } else {
        Err(ConfigError::Duration {
            key,
            value,
            min: MIN_SECONDS,
            max: MAX_SECONDS,
        })
    }
}

fn range(key: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::Range {
            key,
            value,
            min,
            max,
        })
    }
}

fn invalid(key: &'static str, value: impl ToString, reason: &'static str) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        reason,
    }
}

/// An absolute path that is not `/` and has no `..`: the pin root may get a bpffs mounted on
/// it, and the socket's directory may be created, so a path that resolves elsewhere than it
/// reads is refused.
fn plain_absolute(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    use std::path::Component;
    if !path.is_absolute() {
        return Err(invalid(key, path.display(), "must be an absolute path"));
    }
    if path.parent().is_none() {
        return Err(invalid(key, path.display(), "must not be /"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(key, path.display(), "must not contain .."));
    }
    Ok(())
}

fn http_url(key: &'static str, url: &str) -> Result<Uri, ConfigError> {
    let bad = |reason: &str| ConfigError::Url {
        key,
        url: url.to_string(),
        reason: reason.into(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
    // Only plain HTTP: origins sit next to the edge and the probe speaks HTTP/1.1 itself.
    if uri.scheme_str() != Some("http") {
        return Err(bad("scheme must be http"));
    }
    if uri.host().is_none() {
        return Err(bad("no host"));
    }
    Ok(uri)
}

impl Config {
    /// The VIP viewers are told about (status page, player URL): the IPv4 one when there are
    /// two. Validated configs always have one.
    pub fn main_vip(&self) -> SocketAddr {
        let first = self.vip.first().copied();
        self.vip
            .iter()
            .copied()
            .find(SocketAddr::is_ipv4)
            .or(first)
            .unwrap_or_else(|| {
                DEFAULT_VIP
                    .parse()
                    .expect("DEFAULT_VIP is a socket address")
            })
    }

    /// The IPv6 VIP address served next to an IPv4 one (dual stack), if `--vip` gave both.
    pub fn vip_v6_also(&self) -> Option<std::net::Ipv6Addr> {
        if !self.main_vip().is_ipv4() {
            return None;
        }
        self.vip.iter().find_map(|v| match v.ip() {
            std::net::IpAddr::V6(a) => Some(a),
            std::net::IpAddr::V4(_) => None,
        })
    }

    /// Checks every key; returns the config unchanged when it can work.
    pub fn validate(self) -> Result<Self, ConfigError> {
        seconds(
            "SWITCHER_CHECK_INTERVAL_SECONDS",
            self.check_interval_seconds,
        )?;
        seconds(
            "SWITCHER_SEGMENT_AGE_THRESHOLD_SECONDS",
            self.segment_age_threshold_seconds,
        )?;
        seconds("SWITCHER_PROBE_TIMEOUT_SECONDS", self.probe_timeout_seconds)?;
        seconds(
            "SWITCHER_PROBE_CONNECT_TIMEOUT_SECONDS",
            self.probe_connect_timeout_seconds,
        )?;
        seconds("SWITCHER_DRAIN_SECONDS", self.drain_seconds)?;
        // 0 is allowed here: reset every connection at once.
        let finish_ok = self.finish_seconds == 0.0
            || seconds("SWITCHER_FINISH_SECONDS", self.finish_seconds).is_ok();
        if !finish_ok {
            return Err(ConfigError::Duration {
                key: "SWITCHER_FINISH_SECONDS",
                value: self.finish_seconds,
                min: 0.0,
                max: MAX_SECONDS,
            });
        }
        seconds(
            "SWITCHER_ADMIN_HEADER_TIMEOUT_SECONDS",
            self.admin_header_timeout_seconds,
        )?;
        range(
            "SWITCHER_REQUIRED_WINDOWS",
            self.required_windows.into(),
            1,
            MAX_REQUIRED_WINDOWS.into(),
        )?;
        range(
            "SWITCHER_MSN_TOLERANCE",
            self.msn_tolerance,
            0,
            MAX_MSN_TOLERANCE,
        )?;
        range(
            "SWITCHER_MAX_PLAYLIST_BYTES",
            self.max_playlist_bytes as u64,
            1,
            MAX_MAX_PLAYLIST_BYTES as u64,
        )?;
        range(
            "SWITCHER_DECISION_HISTORY",
            self.decision_history as u64,
            0,
            MAX_DECISION_HISTORY as u64,
        )?;
        range(
            "SWITCHER_ADMIN_MAX_CONNECTIONS",
            self.admin_max_connections as u64,
            1,
            MAX_ADMIN_CONNECTIONS as u64,
        )?;
        // IFNAMSIZ is 16 with the NUL; the name goes to if_nametoindex and netlink.
        let iface_ok = !self.iface.is_empty()
            && self.iface.len() < libc::IFNAMSIZ
            && self
                .iface
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
        if !iface_ok {
            return Err(invalid(
                "SWITCHER_IFACE",
                &self.iface,
                "is not an interface name (1-15 printable characters, no / or :)",
            ));
        }
        for vip in &self.vip {
            if vip.port() == 0 || vip.ip().is_unspecified() || vip.ip().is_multicast() {
                return Err(invalid(
                    "SWITCHER_VIP",
                    vip,
                    "must be a unicast address with a port",
                ));
            }
        }
        match self.vip.as_slice() {
            [_] => {}
            [a, b] if a.is_ipv4() != b.is_ipv4() && a.port() == b.port() => {}
            _ => {
                return Err(invalid(
                    "SWITCHER_VIP",
                    format!("{:?}", self.vip),
                    "must be one address, or one IPv4 and one IPv6 address on the same port",
                ));
            }
        }
        plain_absolute("SWITCHER_PIN_ROOT", &self.pin_root)?;
        plain_absolute("SWITCHER_ADMIN_SOCKET", &self.admin_socket)?;
        // sun_path holds 108 bytes with the NUL.
        if self.admin_socket.as_os_str().len() >= 108 {
            return Err(invalid(
                "SWITCHER_ADMIN_SOCKET",
                self.admin_socket.display(),
                "is longer than a unix socket path may be (107 bytes)",
            ));
        }
        for host in &self.admin_allowed_hosts {
            let ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !ok {
                return Err(invalid(
                    "SWITCHER_ADMIN_ALLOWED_HOSTS",
                    host,
                    "is not a host name (letters, digits, - and .)",
                ));
            }
        }
        if let Some(url) = &self.player_url {
            let scheme = url.parse::<Uri>().ok().and_then(|u| {
                u.host()?;
                u.scheme_str().map(str::to_string)
            });
            if !matches!(scheme.as_deref(), Some("http" | "https")) {
                return Err(invalid(
                    "SWITCHER_PLAYER_URL",
                    url,
                    "is not an http:// or https:// URL with a host",
                ));
            }
        }
        if self.origins.is_empty() {
            let primary = self.primary_url();
            let backup = self.backup_url();
            http_url("SWITCHER_PRIMARY_BASE_URL", &primary)?;
            http_url("SWITCHER_BACKUP_BASE_URL", &backup)?;
            if primary == backup {
                return Err(ConfigError::SameOrigins(primary));
            }
        } else {
            self.validate_origins()?;
        }
        Ok(self)
    }

    fn validate_origins(&self) -> Result<(), ConfigError> {
        const KEY: &str = "SWITCHER_ORIGINS";
        if self.origins.len() > MAX_ORIGINS {
            return Err(ConfigError::TooManyOrigins(self.origins.len()));
        }
        let mut names = std::collections::HashSet::new();
        let mut urls = std::collections::HashSet::new();
        for o in &self.origins {
            if !valid_origin_name(&o.name) {
                return Err(invalid(
                    KEY,
                    &o.name,
                    "is not an origin name (1-32 letters, digits, - or _; not auto or unsteered)",
                ));
            }
            http_url(KEY, &o.base_url)?;
            range(KEY, o.weight.into(), 0, MAX_WEIGHT.into())?;
            if !names.insert(o.name.as_str()) {
                return Err(ConfigError::DuplicateOrigin {
                    what: "name",
                    value: o.name.clone(),
                });
            }
            let url = join_url(&o.base_url, &self.playlist_path());
            if !urls.insert(url.clone()) {
                return Err(ConfigError::DuplicateOrigin {
                    what: "URL",
                    value: url,
                });
            }
        }
        if self.origins.iter().all(|o| o.weight == 0) {
            return Err(invalid(
                KEY,
                self.origins.len(),
                "origins all have weight 0: none could take a flow",
            ));
        }
        Ok(())
    }

    /// The origins in preference order: `--origin` when given, else the two-origin shorthand
    /// `primary` = `SWITCHER_PRIMARY_BASE_URL`, `backup` = `SWITCHER_BACKUP_BASE_URL` (or the
    /// seed's names of them), weight 1 each.
    pub fn origin_list(&self) -> Vec<OriginArg> {
        if !self.origins.is_empty() {
            return self.origins.clone();
        }
        vec![
            OriginArg {
                name: "primary".into(),
                base_url: self.primary_base_url.clone(),
                weight: DEFAULT_WEIGHT,
            },
            OriginArg {
                name: "backup".into(),
                base_url: self.backup_base_url.clone(),
                weight: DEFAULT_WEIGHT,
            },
        ]
    }

    /// Full playlist URL of every origin, in preference order.
    pub fn origin_urls(&self) -> Vec<String> {
        self.origin_list()
            .iter()
            .map(|o| join_url(&o.base_url, &self.playlist_path()))
            .collect()
    }

    /// The playlist path: `SWITCHER_PLAYLIST_PATH` when given, else `/hls/<stream>/index.m3u8`.
    pub fn playlist_path(&self) -> String {
        match &self.playlist_path {
            Some(p) => p.clone(),
            None => format!("/hls/{}/index.m3u8", self.stream),
        }
    }

    /// Full playlist URL of the primary origin.
    pub fn primary_url(&self) -> String {
        join_url(&self.primary_base_url, &self.playlist_path())
    }

    /// Full playlist URL of the backup origin.
    pub fn backup_url(&self) -> String {
        join_url(&self.backup_base_url, &self.playlist_path())
    }

    /// URL the status page's player plays: `--player-url`, else the stream through the VIP.
    pub fn player_url(&self) -> String {
        match &self.player_url {
            Some(u) => u.clone(),
            None => join_url(
                &format!("http://{}", self.main_vip()),
                &self.playlist_path(),
            ),
        }
    }

    // The accessors below convert validated values: [`Config::validate`] checked that each
    // converts, so they cannot panic on a validated config.

    /// Probe interval.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.check_interval_seconds)
    }

    /// Age threshold.
    pub fn age_threshold(&self) -> Duration {
        Duration::from_secs_f64(self.segment_age_threshold_seconds)
    }

    /// Probe timeout.
    pub fn probe_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.probe_timeout_seconds)
    }

    /// Connect timeout of a probe (never more than the whole probe's).
    pub fn probe_connect_timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.probe_connect_timeout_seconds)
            .unwrap_or(Duration::MAX)
            .min(self.probe_timeout())
    }

    /// How long a retired origin's delivering connections may take to finish.
    pub fn finish(&self) -> Duration {
        Duration::try_from_secs_f64(self.finish_seconds).unwrap_or(Duration::MAX)
    }

    /// Drain time of a healthy origin's flows.
    pub fn drain(&self) -> Duration {
        Duration::try_from_secs_f64(self.drain_seconds).unwrap_or(Duration::MAX)
    }

    /// Admin header (and body) timeout.
    pub fn admin_header_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.admin_header_timeout_seconds)
    }
}

/// Joins a base URL and a path with exactly one `/` between them, so the seed's
/// `PRIMARY_BASE_URL=http://origin/hls` + `PLAYLIST_PATH=index.m3u8` and our
/// `http://127.0.0.1:8081` + `/hls/demo/index.m3u8` both work.
pub fn join_url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_build_contract_urls() {
        let c = Config::default().validate().expect("defaults are valid");
        assert_eq!(c.primary_url(), "http://127.0.0.1:8081/hls/demo/index.m3u8");
        assert_eq!(c.backup_url(), "http://127.0.0.1:8082/hls/demo/index.m3u8");
        assert_eq!(c.player_url(), "http://127.0.0.1:8080/hls/demo/index.m3u8");
    }

    #[test]
    fn seed_style_base_and_path_join() {
        let c = Config {
            primary_base_url: "http://origin-primary/hls/".into(),
            backup_base_url: "http://origin-backup/hls".into(),
            playlist_path: Some("index.m3u8".into()),
            ..Config::default()
        };
        assert_eq!(c.primary_url(), "http://origin-primary/hls/index.m3u8");
        assert_eq!(c.backup_url(), "http://origin-backup/hls/index.m3u8");
    }

    #[test]
    fn validate_rejects_bad_values() {
        let bad = [
            Config {
                check_interval_seconds: 0.0,
                ..Config::default()
            },
            Config {
                segment_age_threshold_seconds: f64::NAN,
                ..Config::default()
            },
            Config {
                required_windows: 0,
                ..Config::default()
            },
            Config {
                primary_base_url: "https://x".into(),
                ..Config::default()
            },
            Config {
                backup_base_url: DEFAULT_PRIMARY.into(),
                ..Config::default()
            },
            // Each of these passed the old check, then panicked after attaching.
            Config {
                check_interval_seconds: 1e20,
                ..Config::default()
            },
            Config {
                check_interval_seconds: 1e-10,
                ..Config::default()
            },
            Config {
                probe_timeout_seconds: 1e20,
                ..Config::default()
            },
            Config {
                segment_age_threshold_seconds: f64::INFINITY,
                ..Config::default()
            },
            Config {
                admin_header_timeout_seconds: 0.0,
                ..Config::default()
            },
            Config {
                admin_max_connections: 0,
                ..Config::default()
            },
            Config {
                max_playlist_bytes: usize::MAX,
                ..Config::default()
            },
            Config {
                decision_history: usize::MAX,
                ..Config::default()
            },
            Config {
                required_windows: u32::MAX,
                ..Config::default()
            },
            Config {
                iface: "a-name-longer-than-15".into(),
                ..Config::default()
            },
            Config {
                iface: String::new(),
                ..Config::default()
            },
            Config {
                vip: vec!["0.0.0.0:8080".parse().expect("addr")],
                ..Config::default()
            },
            Config {
                vip: vec!["127.0.0.1:0".parse().expect("addr")],
                ..Config::default()
            },
            Config {
                vip: vec![
                    "127.0.0.1:8080".parse().expect("addr"),
                    "10.0.0.1:8080".parse().expect("addr"),
                ],
                ..Config::default()
            },
            Config {
                vip: vec![
                    "127.0.0.1:8080".parse().expect("addr"),
                    "[::1]:8081".parse().expect("addr"),
                ],
                ..Config::default()
            },
            Config {
                pin_root: "/".into(),
                ..Config::default()
            },
            Config {
                pin_root: "relative/pins".into(),
                ..Config::default()
            },
            Config {
                pin_root: "/sys/fs/bpf/../../etc".into(),
                ..Config::default()
            },
            Config {
                admin_socket: format!("/run/{}/admin.sock", "x".repeat(120)).into(),
                ..Config::default()
            },
            Config {
                admin_allowed_hosts: vec!["evil.example/".into()],
                ..Config::default()
            },
            Config {
                player_url: Some("javascript:alert(1)".into()),
                ..Config::default()
            },
            Config {
                probe_connect_timeout_seconds: 1e20,
                ..Config::default()
            },
            Config {
                drain_seconds: f64::INFINITY,
                ..Config::default()
            },
            Config {
                finish_seconds: -1.0,
                ..Config::default()
            },
            Config {
                finish_seconds: 1e20,
                ..Config::default()
            },
        ];
        for c in bad {
            assert!(c.clone().validate().is_err(), "{c:?} should be rejected");
        }
        // 0 means "reset at once" for SWITCHER_FINISH_SECONDS.
        Config {
            finish_seconds: 0.0,
            ..Config::default()
        }
        .validate()
        .expect("finish 0 is valid");
    }

    #[test]
    fn duration_errors_name_the_key_and_the_range() {
        let e = Config {
            check_interval_seconds: 1e20,
            ..Config::default()
        }
        .validate()
        .expect_err("1e20 s");
        assert_eq!(
            e.to_string(),
            "SWITCHER_CHECK_INTERVAL_SECONDS must be a number of seconds from 0.001 to 86400, got 100000000000000000000"
        );
        // The edges of the range are accepted, and their durations convert.
        for v in [MIN_SECONDS, MAX_SECONDS] {
            let c = Config {
                check_interval_seconds: v,
                probe_timeout_seconds: v,
                segment_age_threshold_seconds: v,
                ..Config::default()
            }
            .validate()
            .expect("edge of the range");
            assert_eq!(c.interval(), Duration::from_secs_f64(v));
        }
    }

    fn origin(s: &str) -> OriginArg {
        s.parse().expect("origin argument")
    }

    #[test]
    fn origin_arguments_parse_with_and_without_weight() {
        assert_eq!(
            origin("edge-a=http://10.0.0.1:8081"),
            OriginArg {
                name: "edge-a".into(),
                base_url: "http://10.0.0.1:8081".into(),
                weight: DEFAULT_WEIGHT,
            }
        );
        assert_eq!(origin("b=http://h:8082,weight=3").weight, 3);
        assert_eq!(origin("b=http://h:8082,weight=0").weight, 0);
        for bad in [
            "no-equals-sign",
            "b=http://h:8082,weight=-1",
            "b=http://h:8082,weight=1.5",
            "b=http://h:8082,weight=",
            "b=http://h:8082,weight=99999999999",
            "b=http://h:8082,colour=red",
        ] {
            assert!(bad.parse::<OriginArg>().is_err(), "{bad} parsed");
        }
        // The config file form is the same string.
        let c: Config = serde_json::from_str(
            r#"{"origins": ["a=http://h:1", "b=http://h:2,weight=2"], "policy": "balance"}"#,
        )
        .expect("config");
        assert_eq!(c.origins[1].weight, 2);
        assert_eq!(c.policy, Steering::Balance);
    }

    #[test]
    fn without_origins_the_shorthand_is_primary_and_backup() {
        let c = Config {
            primary_base_url: "http://p:1".into(),
            backup_base_url: "http://b:2".into(),
            ..Config::default()
        }
        .validate()
        .expect("valid");
        let names: Vec<(String, String, u32)> = c
            .origin_list()
            .into_iter()
            .map(|o| (o.name, o.base_url, o.weight))
            .collect();
        assert_eq!(
            names,
            [
                ("primary".into(), "http://p:1".into(), 1),
                ("backup".into(), "http://b:2".into(), 1)
            ]
        );
        assert_eq!(
            c.origin_urls(),
            [
                "http://p:1/hls/demo/index.m3u8",
                "http://b:2/hls/demo/index.m3u8"
            ]
        );
        assert_eq!(c.policy, Steering::Failover, "failover stays the default");
        // --origin replaces the shorthand.
        let c = Config {
            origins: vec![origin("x=http://x:1"), origin("y=http://y:1,weight=4")],
            ..Config::default()
        }
        .validate()
        .expect("valid");
        assert_eq!(c.origin_list()[1].name, "y");
        assert_eq!(c.origin_urls()[0], "http://x:1/hls/demo/index.m3u8");
    }

    #[test]
    fn validate_rejects_bad_origin_lists() {
        let with = |list: Vec<OriginArg>| Config {
            origins: list,
            ..Config::default()
        };
        let sixteen: Vec<OriginArg> = (1..=MAX_ORIGINS)
            .map(|i| origin(&format!("o{i}=http://127.0.0.1:{}", 8080 + i)))
            .collect();
        with(sixteen.clone())
            .validate()
            .expect("16 origins are fine");
        let mut seventeen = sixteen;
        seventeen.push(origin("o17=http://127.0.0.1:8097"));
        let cases = [
            (seventeen, "at most 16"),
            (
                vec![origin("a=http://h:1"), origin("a=http://h:2")],
                "same name",
            ),
            (
                vec![origin("a=http://h:1"), origin("b=http://h:1/")],
                "same URL",
            ),
            (vec![origin("a=http://h:1,weight=10001")], "from 0 to 10000"),
            (
                vec![
                    origin("a=http://h:1,weight=0"),
                    origin("b=http://h:2,weight=0"),
                ],
                "weight 0",
            ),
            (vec![origin("auto=http://h:1")], "not an origin name"),
            (vec![origin("unsteered=http://h:1")], "not an origin name"),
            (vec![origin("a b=http://h:1")], "not an origin name"),
            (vec![origin("=http://h:1")], "not an origin name"),
            (vec![origin("a=https://h:1")], "scheme must be http"),
        ];
        for (list, message) in cases {
            let e = with(list.clone()).validate().expect_err("invalid list");
            assert!(e.to_string().contains(message), "{list:?}: {e}");
        }
    }

    #[test]
    fn serde_default_fills_missing_keys() {
        let c: Config = serde_json::from_str(r#"{"required_windows": 3}"#).expect("parses");
        assert_eq!(c.required_windows, 3);
        assert_eq!(c.check_interval_seconds, DEFAULT_INTERVAL_SECONDS);
    }
}

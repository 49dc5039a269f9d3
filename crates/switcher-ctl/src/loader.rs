//! Loading, attaching and pinning the eBPF programs (work in progress).
//!
//! Planned API (owned by the data-plane work; other modules code against these names):
//! ```ignore
//! pub enum AttachMode { Auto, Native, Generic, Tc }
//! pub struct AttachConfig { pub iface: String, pub vip: std::net::SocketAddr,
//!     pub vip_v6: Option<std::net::Ipv6Addr>, pub origins: Vec<std::net::SocketAddr>,
//!     pub pin_root: std::path::PathBuf, pub mode: AttachMode }
//! pub struct Pinned { .. }            // implements crate::dataplane::DataPlane
//! impl Pinned {
//!     pub fn attach(cfg: &AttachConfig) -> anyhow::Result<Pinned>;   // load or adopt pins
//!     pub fn open(pin_root: &Path) -> anyhow::Result<Pinned>;        // pinned maps only
//!     pub fn vip(&self) -> anyhow::Result<switcher_common::VipConfig>;
//!     pub fn origins(&self) -> anyhow::Result<Vec<switcher_common::Origin>>;
//!     pub fn attach_info(&self) -> String;                            // mode, iface
//! }
//! pub fn detach(pin_root: &Path) -> anyhow::Result<()>;
//! ```

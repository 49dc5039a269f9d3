//! switcher-ctl: the control plane of the eBPF HLS edge.
//!
//! # Layout
//! * [`dataplane`]: the [`dataplane::DataPlane`] trait, everything the control logic may do
//!   to the kernel data plane (publish the lookup table or one active origin, retire flows,
//!   read counters), so the logic is tested against a fake without root.
//! * [`loader`]: loads the eBPF object with aya, attaches (XDP native/generic, TC fallback,
//!   TC egress via clsact/netlink), pins under the pin root, adopts pinned state, detaches.
//! * [`config`]: the one configuration struct; flags, environment variables (the seed's
//!   names), defaults, validation.
//! * [`probe`]: one playlist probe over a fresh connection; pure playlist parsing (age, MSN).
//! * [`decide`]: the steering state machine over N named origins, pure (reports + time in,
//!   decision out): failover (one active origin, in preference order) or balance (the origins
//!   in rotation).
//! * [`maglev`]: the weighted Maglev table builder and the flow hash that indexes it (pure).
//! * [`mapbatch`]: batch lookups and deletes on BPF hash maps (retiring 200,000 flows in a few
//!   dozen syscalls).
//! * [`handshake_table`]: the handshake table mapped into memory: read, count, and empty a
//!   retired origin's slots without overwriting the data plane's concurrent writes.
//! * [`flow_cache`]: the data plane's flow cache (each CPU its own copies), from user space:
//!   making copies of flows it changed stale, and the clients' newest acknowledgment numbers
//!   for edge resets.
//! * [`mmapped`]: mapping an mmapable array map into this process.
//! * [`control`]: the controller that owns the truth and applies decisions to the data plane
//!   (the active origin, or the Maglev table over the origins in rotation), drains origins
//!   and changes weights.
//! * [`metrics`]: the Prometheus registry and every metric.
//! * [`admin`]: the admin HTTP server (`/metrics`, `/healthz`, `/`, `/api/state`,
//!   `/assets/hls.min.js`, `POST /override`, `/drain`, `/undrain`, `/weight`).
//! * [`status_page`]: the status page (embedded HTML), its JSON state and its player asset.
//! * [`service`]: the run loop tying them together; `run(config, dataplane, listener, shutdown)`.
//! * [`sockdiag`]: resetting a retired origin's viewer connections on this host (netlink
//!   `SOCK_DESTROY`), so a viewer waiting on a hung origin reconnects at once.
//! * [`edge_rst`]: the edge's own TCP reset of a viewer (frame builder, pure; live-frame XDP
//!   transmit), for viewers the origin's reset cannot reach (a partition, a remote origin).
//! * [`finish`]: whether a retired origin's connection may finish the response it is
//!   delivering, by why the origin was retired (pure).
//! * [`privileges`]: dropping every capability but CAP_BPF and CAP_NET_ADMIN after attaching.
//! * [`decap`]: the origin-host end of direct server return (`switcher-ctl decap`).
//! * [`announce`]: announcing the VIP /32 through the host's BGP speaker (a route it
//!   redistributes) while attached and healthy.
#![deny(missing_docs)]

pub mod admin;
pub mod announce;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod decap;
pub mod decide;
pub mod edge_rst;
pub mod finish;
pub mod finish_mark;
pub mod flow_cache;
pub mod handshake_table;
pub mod loader;
pub mod maglev;
pub mod mapbatch;
pub mod metrics;
pub mod mmapped;
pub mod privileges;
pub mod probe;
pub mod service;
pub mod sockdiag;
pub mod status_page;

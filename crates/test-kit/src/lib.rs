//! What hls-edge's integration tests and benchmarks share, so that each spells out only what
//! it checks. Not published; a dev-dependency of the service crates and a dependency of xtask.
//!
//! # Layout
//! - [`netns`]: uniquely named network namespaces, a veth pair between a "client" and an
//!   "edge" namespace, a private bpffs; all removed on drop, also when a test panics.
//! - [`process`]: running a command ([`process::sh`]) and a child that is stopped and reaped
//!   on drop ([`process::Killed`]).
//! - [`wait`]: [`wait_until`] and its relatives: poll a readiness condition up to a bound,
//!   fail with what was awaited.
//! - [`http`]: a blocking HTTP client (ureq) for fetching from tests and benchmarks, also from
//!   inside a namespace.
//! - [`keepalive`]: a tiny keep-alive HTTP server that says which origin answered, and a raw
//!   keep-alive client that controls its connection (local port, close), for data-plane tests.
//! - [`metrics`]: reading a sample from a Prometheus text exposition.
//! - [`publisher`]: the ffmpeg test-pattern publisher ([`Publisher`]), one builder for every
//!   test, benchmark and the stack.
//! - [`browser`]: headless Chromium driven through the DevTools protocol.
//! - [`packet`]: Ethernet/IP/TCP packets with checksums built from scratch, for fixtures.
//!
//! Traffic only flows on loopback or inside the namespaces made here.
#![deny(missing_docs)]

pub mod browser;
pub mod http;
pub mod keepalive;
pub mod metrics;
pub mod netns;
pub mod packet;
pub mod process;
pub mod publisher;
pub mod wait;

pub use publisher::Publisher;
pub use wait::{poll_until, wait_until, wait_until_async};

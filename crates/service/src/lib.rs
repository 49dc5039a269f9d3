//! What every hls-edge binary shares around its core: the admin HTTP server, the shutdown
//! signal, the tracing setup and the configuration pattern. A service written with it has the
//! mini-redis shape: `src/bin/NAME.rs` parses and validates its config, calls
//! [`init_tracing`], binds its listeners and calls the library's
//! `run(listeners, ..., shutdown_signal())`; tests call the same `run` with listeners bound to
//! port 0 and a shutdown future of their own.
//!
//! # Layout
//! - [`accept`]: the accept loop every server runs, admin endpoints and the origin's data
//!   port alike: connection cap taken before `accept`, accept-error backoff, bounded drain at
//!   shutdown.
//! - [`server`]: [`serve_admin`], the hardened HTTP/1.1 server for admin endpoints
//!   (`/metrics`, `/healthz`, status pages, control sockets) over TCP or a unix socket: the
//!   accept loop, plus a header-read deadline and a request-head bound. [`Router`] is what a
//!   binary plugs in.
//! - [`http`]: small response helpers and [`http::metrics_router`], the `/metrics` +
//!   `/healthz` router of the services that only export metrics.
//! - [`shutdown`]: [`shutdown_signal`], SIGTERM or SIGINT.
//! - [`telemetry`]: [`init_tracing`], the one `tracing` setup (`RUST_LOG`, default `info`,
//!   stderr).
//! - [`config`]: the configuration pattern every binary follows, and checked conversions
//!   ([`config::seconds`]) used by `validate()`.
#![deny(missing_docs)]

pub mod accept;
pub mod config;
pub mod http;
pub mod server;
pub mod shutdown;
pub mod telemetry;

pub use server::{Limits, Listener, Peer, Router, serve_admin, serve_admin_with};
pub use shutdown::shutdown_signal;
pub use telemetry::init_tracing;

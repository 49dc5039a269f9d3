//! HLS origin: serves a packager's output directory to players (directly or behind the eBPF
//! VIP) over HTTP/1.1 and h2, optionally with TLS.
//!
//! URL contract: `http://HOST:PORT/hls/<stream>/<file>` (e.g. `/hls/demo/index.m3u8`), plus
//! `/healthz` and `/metrics`. Only GET, HEAD and OPTIONS are served.
//!
//! Live HLS rules it follows: playlists are sent with `Cache-Control: no-cache` and are never
//! stale or partial: the packager renames complete files into place, every request checks the
//! file now at the path (one `statx`) against the exact inode stamp of the bytes held in
//! memory, and any difference re-reads it from one open descriptor; segments are immutable, cached in memory
//! (bounded in bytes, keyed by path and file version) and sent with a one-year `immutable`
//! max-age. ETag/Last-Modified give cheap 304 revalidation of playlists.
//!
//! # Layout
//!
//! - [`config`]: the one configuration struct, its defaults and validation.
//! - [`server`]: accept loop, connection cap, TLS, HTTP/1.1+h2, timeouts, graceful drain;
//!   one single-threaded runtime per core on `SO_REUSEPORT` listeners ([`run_sharded`]).
//! - [`activity`]: write and request stamping behind the connection watchdog (idle,
//!   slowloris, idle h2).
//! - [`tls`]: rustls acceptor from PEM files, ALPN.
//! - [`h1`]: plain HTTP/1.1 connections served with `sendfile(2)` for file bodies; hands
//!   anything unusual to hyper.
//! - [`handler`]: HTTP semantics: methods, CORS, routing to files, 304/206/416.
//! - [`route`]: sans-IO path routing and the first traversal defence.
//! - [`files`]: opening below the root (openat2 `RESOLVE_BENEATH`, canonicalize fallback)
//!   and file versions.
//! - [`hls`]: content types and cache policy per HLS file type.
//! - [`cache`]: byte-bounded LRU of segment bodies; stamp-validated playlists (and why that is
//!   never stale).
//! - [`conditional`], [`range`]: sans-IO RFC 9110 preconditions and byte ranges.
//! - [`body`]: response bodies (memory or a file range), byte-counted.
//! - [`peer`]: peer fill, a peer origin's copy of a file this origin cannot serve.
//! - [`metrics`]: Prometheus metrics (`origin_*`).
//!
//! The binary (`src/main.rs`) only parses flags, binds with [`bind_shards`] and calls
//! [`run_sharded`]; tests call [`run`] with a listener bound to port 0.

#![deny(missing_docs)]

pub mod activity;
pub mod body;
pub mod cache;
pub mod conditional;
pub mod config;
pub mod error;
pub mod files;
pub mod h1;
pub mod handler;
pub mod hls;
pub mod metrics;
pub mod peer;
pub mod range;
pub mod route;
pub mod server;
pub mod tls;

pub use config::{Config, TlsFiles};
pub use error::{Error, Result};
pub use server::{bind_shards, run, run_sharded};

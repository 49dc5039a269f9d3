//! Library half of xtask: what both `cargo xtask` and the end-to-end tests use.
//!
//! # Layout
//! * [`layout`]: the deployment layout (services, ports, units, scrape targets), written once.
//! * [`codegen`]: `cargo xtask codegen`, the deployment files generated from the layout and
//!   the binaries' flags.
//! * [`lab`]: the multi-host lab of direct server return (router, two edges, two origin
//!   hosts, ingest, client) in network namespaces, with FRR for BGP/BFD.
//! * [`faults`]: the drills' failure classes, injected into a running stack and restored.
//! * [`player`]: a recording ffmpeg player and checks on what it recorded.
//! * [`stack`]: the whole stack as processes (start, kill, restart, stop, health).
//! * [`monitoring`]: promtool checks of `monitoring/` and the "every metric the dashboard and
//!   the rules use is exported" check against a running stack.

pub mod codegen;
pub mod faults;
pub mod lab;
pub mod layout;
pub mod monitoring;
pub mod player;
pub mod stack;

/// The workspace root (xtask lives one level below it).
pub fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

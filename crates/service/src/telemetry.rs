//! The one `tracing` setup of every binary.

use tracing_subscriber::EnvFilter;

/// Installs the global `tracing` subscriber: human-readable lines on stderr, filtered by
/// `RUST_LOG` (`info` when unset or unparsable; e.g. `RUST_LOG=ingest=debug,info`).
///
/// Why stderr: stdout is a command's output (`switcher-ctl status` prints JSON there), and
/// systemd's journal and `cargo xtask run` collect both streams anyway. ANSI colours only
/// when stderr is a terminal and `NO_COLOR` is unset, so journal lines and captured logs
/// stay plain text.
///
/// Calling it again is harmless (the first subscriber stays), so tests may call it freely.
pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .try_init();
}

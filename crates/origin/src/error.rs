//! Errors of the origin library. Per-request failures never surface here: the handler turns
//! them into HTTP statuses; these are the errors that stop the server from starting or running.

use std::path::PathBuf;

/// Result alias for the origin library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the server could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The root directory is missing or unreadable.
    #[error("cannot use root directory {path}: {source}")]
    Root {
        /// The root as configured.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The TLS certificate or key could not be loaded or do not match.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// Registering a metric failed (a duplicate name: a programming error).
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The listener failed in a way that is not per-connection.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

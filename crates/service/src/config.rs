//! The configuration pattern every binary follows, and the checked conversions its
//! `validate()` uses.
//!
//! # The pattern
//! - **One struct per binary, parsed by clap**, every field both a flag and an environment
//!   variable: `#[arg(long, env = "PREFIX_NAME", default_value_t = ...)]`. One prefix per
//!   binary (`INGEST_`, `PACKAGER_`, `ORIGIN_`; switcher-ctl keeps the seed's unprefixed
//!   names where the contract fixes them), so `--help` and `edge.env.example` list each
//!   key once and two services never read each other's variables.
//! - **Every key documented where it is declared**: the field's doc comment is the `--help`
//!   text (what it does, its unit in the name: `_seconds`, `_bytes`, `_ms`), defaults are
//!   named constants when code elsewhere needs them.
//! - **`validate()` before any side effect**: `Config::validate(self) -> Result<Self, _>`
//!   checks ranges and cross-field rules and converts raw numbers (e.g. seconds as `f64`)
//!   with the helpers below, *before* anything is bound, created, spawned or written, so a
//!   typo fails at start with the key's name and no half-started service. Accessors of a
//!   validated config may then convert without error handling.
//! - **Parsed through `config_schema::parse::<Config>(&deprecated)`**, not `Config::parse()`:
//!   it adds `--print-config-schema`, from which `cargo xtask codegen` writes
//!   `edge.env.example` and the systemd units, and keeps renamed variables working.
//! - **The binary only parses, validates and wires**: [`crate::init_tracing`], parse,
//!   `validate()?`, bind listeners, `run(listeners, config, shutdown_signal())`; errors
//!   leave `main` through `anyhow` with `.context(...)` naming the flag.
//!
//! ```
//! use std::time::Duration;
//!
//! /// Example service configuration.
//! #[derive(Debug, clap::Parser)]
//! struct Config {
//!     /// Seconds a client has to send its request head.
//!     #[arg(long, env = "EXAMPLE_HEADER_TIMEOUT_SECONDS", default_value_t = 5.0)]
//!     header_timeout_seconds: f64,
//! }
//!
//! impl Config {
//!     fn header_timeout(&self) -> Result<Duration, service::config::ConfigError> {
//!         service::config::seconds("header-timeout-seconds", self.header_timeout_seconds)
//!     }
//! }
//! # use clap::Parser;
//! let config = Config::parse_from(["example", "--header-timeout-seconds", "0.5"]);
//! assert_eq!(config.header_timeout().unwrap(), Duration::from_millis(500));
//! let bad = Config::parse_from(["example", "--header-timeout-seconds=-1"]);
//! assert!(bad.header_timeout().is_err());
//! ```

use std::time::Duration;

/// A configuration value that cannot be used, with the key it came from.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// A duration in seconds that is not a positive, finite number of at least a millisecond.
    #[error("--{key} must be a positive number of seconds (at least 0.001), not {value}")]
    Seconds {
        /// The flag's name, without dashes.
        key: &'static str,
        /// The value given.
        value: f64,
    },
}

/// Seconds as a [`Duration`]: finite, positive and at least a millisecond (a zero or
/// sub-millisecond timeout is a typo, not a choice), and representable.
pub fn seconds(key: &'static str, value: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| *d >= Duration::from_millis(1))
        .ok_or(ConfigError::Seconds { key, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_must_be_positive_finite_and_representable() {
        assert_eq!(seconds("t", 2.5), Ok(Duration::from_millis(2500)));
        assert_eq!(seconds("t", 0.001), Ok(Duration::from_millis(1)));
        for bad in [0.0, -1.0, 0.0001, f64::NAN, f64::INFINITY, 1e30] {
            assert!(
                matches!(
                    seconds("t", bad),
                    Err(ConfigError::Seconds { key: "t", .. })
                ),
                "{bad} accepted"
            );
        }
        // The message names the flag, so an operator knows what to fix.
        assert_eq!(
            seconds("interval", 0.0).unwrap_err().to_string(),
            "--interval must be a positive number of seconds (at least 0.001), not 0"
        );
    }
}

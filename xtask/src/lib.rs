//! Library half of xtask: what both `cargo xtask` and the end-to-end tests use.
//!
//! # Layout
//! * [`stack`]: the whole stack as processes (start, kill, restart, stop, health).

pub mod stack;

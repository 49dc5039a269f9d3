//! switcher-ctl: the control plane of the eBPF HLS edge.
//!
//! # Layout
//! * [`dataplane`]: the [`dataplane::DataPlane`] trait, everything the control logic may do
//!   to the kernel data plane (set the active origin, retire flows, read counters), so the
//!   logic is tested against a fake without root.
//! * [`loader`]: loads the eBPF object with aya, attaches (XDP native/generic, TC fallback,
//!   TC egress via clsact/netlink), pins under the pin root, adopts pinned state, detaches.
#![deny(missing_docs)]

pub mod dataplane;
pub mod loader;

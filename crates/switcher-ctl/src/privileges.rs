//! Least privilege after attaching: `switcher-ctl run` starts as root, or with CAP_BPF +
//! CAP_NET_ADMIN + CAP_PERFMON (measured on kernel 6.18: without CAP_PERFMON the verifier
//! refuses the programs' packet-pointer arithmetic; no CAP_SYS_ADMIN is needed unless bpffs
//! must be mounted), then keeps only CAP_BPF (map operations) and CAP_NET_ADMIN (attachments).
//! Adopting already-pinned programs on a restart needs only those two.
//!
//! Capabilities are per thread: call [`drop_to_bpf_and_net_admin`] before any other thread
//! exists (before the tokio runtime is built), so every later thread inherits the reduced sets.

use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities `run` keeps.
pub const KEPT: [Capability; 2] = [Capability::CAP_BPF, Capability::CAP_NET_ADMIN];

/// A capability set could not be changed.
#[derive(Debug, thiserror::Error)]
#[error("dropping capabilities ({step}): {source}")]
pub struct PrivilegeError {
    /// Which step failed.
    step: &'static str,
    /// The error from capget/capset/prctl.
    source: caps::errors::CapsError,
}

fn step<T>(step: &'static str, r: Result<T, caps::errors::CapsError>) -> Result<T, PrivilegeError> {
    r.map_err(|source| PrivilegeError { step, source })
}

/// Reduces the current thread's capabilities to [`KEPT`]: bounding set first (that needs
/// CAP_SETPCAP, which goes away with the effective set), then ambient and inheritable
/// cleared (nothing is handed to children), then effective before permitted (the kernel
/// refuses an effective set larger than the permitted one).
pub fn drop_to_bpf_and_net_admin() -> Result<(), PrivilegeError> {
    let keep: CapsHashSet = KEPT.into_iter().collect();
    // Shrinking the bounding set needs CAP_SETPCAP: root has it; a process started with
    // only file capabilities may not, and then its bounding set is left as it is (the
    // permitted set below is what limits this process; bounding limits what exec regains).
    if step(
        "read effective set",
        caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP),
    )? {
        // Only the capabilities this kernel has: dropping an unknown one fails with EINVAL.
        for cap in step("read bounding set", caps::read(None, CapSet::Bounding))? {
            if !keep.contains(&cap) {
                step(
                    "drop from bounding set",
                    caps::drop(None, CapSet::Bounding, cap),
                )?;
            }
        }
    }
    step("clear ambient set", caps::clear(None, CapSet::Ambient))?;
    step(
        "clear inheritable set",
        caps::clear(None, CapSet::Inheritable),
    )?;
    let permitted = step("read permitted set", caps::read(None, CapSet::Permitted))?;
    let keep: CapsHashSet = keep.intersection(&permitted).copied().collect();
    step(
        "set effective set",
        caps::set(None, CapSet::Effective, &keep),
    )?;
    step(
        "set permitted set",
        caps::set(None, CapSet::Permitted, &keep),
    )?;
    Ok(())
}

/// The current thread's effective capabilities, for the log line after dropping.
pub fn effective() -> Vec<String> {
    let mut v: Vec<String> = caps::read(None, CapSet::Effective)
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect();
    v.sort();
    v
}

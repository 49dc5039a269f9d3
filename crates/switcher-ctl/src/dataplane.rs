//! What the control plane may do to the data plane. [`crate::loader::Pinned`] implements it
//! on the real eBPF maps; tests implement it with a fake.

use switcher_common::Counters;

/// An origin slot of the data plane: [`switcher_common::ORIGIN_PRIMARY`] (0) or
/// [`switcher_common::ORIGIN_BACKUP`] (1).
pub type OriginIndex = u32;

/// Operations on the data plane's maps. Every map write of the control plane goes through it.
pub trait DataPlane: Send {
    /// The origin new flows go to (`SWITCHER_ACTIVE`).
    fn active(&self) -> anyhow::Result<OriginIndex>;
    /// Makes `origin` the one new flows (SYN, unknown flows) go to.
    fn set_active(&mut self, origin: OriginIndex) -> anyhow::Result<()>;
    /// Removes every tracked flow pinned to `origin`; their next packet is steered to the
    /// active origin (and reset there). Returns how many flows were removed.
    fn retire_flows(&mut self, origin: OriginIndex) -> anyhow::Result<u64>;
    /// Number of tracked flows per origin index (`[primary, backup, ...]`, MAX_ORIGINS long).
    fn flow_counts(&self) -> anyhow::Result<Vec<u64>>;
    /// Counters summed over CPUs, one per stats slot (origins, then the unsteered slot).
    fn counters(&self) -> anyhow::Result<Vec<Counters>>;
}

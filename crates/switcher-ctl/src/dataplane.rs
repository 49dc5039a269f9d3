//! What the control plane may do to the data plane. [`crate::loader::Pinned`] implements it
//! on the real eBPF maps; tests implement it with a fake.

use switcher_common::Counters;
use switcher_common::dsr::EncapCounters;

/// An origin slot of the data plane, `0..switcher_common::MAX_ORIGINS`
/// ([`switcher_common::ORIGIN_PRIMARY`] (0) and [`switcher_common::ORIGIN_BACKUP`] (1) in the
/// two-origin shorthand).
pub type OriginIndex = u32;

/// Operations on the data plane's maps. Every map write of the control plane goes through it.
pub trait DataPlane: Send {
    /// The origin of the last [`DataPlane::set_active`] (`SWITCHER_ACTIVE`): where every new
    /// flow goes under policy failover. Not changed by [`DataPlane::set_lookup_table`].
    fn active(&self) -> anyhow::Result<OriginIndex>;
    /// Makes `origin` the one new flows (handshakes) go to: publishes a lookup table whose
    /// every slot is `origin` (as [`DataPlane::set_lookup_table`] does), and records `origin`
    /// for [`DataPlane::active`].
    fn set_active(&mut self, origin: OriginIndex) -> anyhow::Result<()>;
    /// Publishes the lookup table new flows are steered by: `slots[i]` is the origin index of
    /// Maglev slot `i` (`slots.len() == switcher_common::MAGLEV_SIZE`). Packets see the old
    /// table or the new one, never a mix.
    ///
    /// A slot may hold [`crate::maglev::NO_BACKEND`] (an empty table: no origin in rotation);
    /// a new flow hashing there passes to the edge's stack, which resets it. Tracked flows
    /// never move. The data plane hashes a flow exactly as [`crate::maglev::flow_hash_v4`] /
    /// [`crate::maglev::flow_hash_v6`] with [`crate::maglev::slot_index`] do.
    fn set_lookup_table(&mut self, slots: &[OriginIndex]) -> anyhow::Result<()>;
    /// Makes `origins` the ones a new flow may go to when the origin the lookup table gives it
    /// has no listening socket on this host (`switcher_common::VIP_CHECK_LISTENER`), and no
    /// other: the control plane names the healthy origins that are not drained and have a weight
    /// (`switcher_common::ORIGIN_FALLBACK`). Until the first call, every configured origin.
    fn set_fallbacks(&mut self, origins: &[OriginIndex]) -> anyhow::Result<()>;
    /// Retires every tracked flow (and removes every handshake) pinned to `origin`, without
    /// resetting anything: a viewer's next packet finds no live flow and is passed to the
    /// edge's stack, which resets it from the VIP (nothing listens there). Returns how many
    /// flows were retired.
    ///
    /// Retiring all of an origin's flows is one map write, whatever their number: the
    /// origin's generation moves on (`switcher_common::Origin::generation`); the retired
    /// entries are deleted later by [`DataPlane::reap_retired`] (docs/ARCHITECTURE.md,
    /// "Retiring flows").
    fn retire_flows(&mut self, origin: OriginIndex) -> anyhow::Result<u64>;
    /// Aborts up to `max` viewer connections pinned to `origin`: the connections' sockets on
    /// this host are destroyed (the kernel sends the viewer an RST, which the egress program
    /// rewrites to come from the VIP, so the player reconnects through the VIP at once), then
    /// their flows are removed, and the edge sends each viewer an RST of its own (which
    /// reaches it when the origin's cannot: a partition, an origin on another host). Unlike
    /// [`DataPlane::retire_flows`], this reaches a viewer that sends nothing more because it
    /// waits on a hung origin. When the call aborts all of the origin's flows, they are
    /// retired as [`DataPlane::retire_flows`] does, with one write; a paced drain's `max`
    /// deletes its few in batches.
    ///
    /// Without `finish_in_flight` (an origin cut at once, see [`crate::finish::may_finish`]),
    /// the connections still in their handshake whose SYN went to `origin` are reset by the
    /// edge too (RST+ACK of the client's SYN, see [`crate::edge_rst`]): their SYN went to an
    /// origin that is slow, stuck or gone, and the client would otherwise wait for its own SYN
    /// retransmission (1 s or more). With it, they are only forgotten.
    ///
    /// With `finish_in_flight`, a connection that is delivering a response right now (see
    /// [`crate::sockdiag::Progress::delivering`] with [`DELIVERY_STALL_MS`]) is left to finish
    /// it, flow included: a reset there would cost the player the rest of that segment, while
    /// a stalled, idle or waiting connection loses nothing by a reset. The caller asks again
    /// next window; those connections are cut once they stop delivering or the caller stops
    /// asking for it.
    fn abort_flows(
        &mut self,
        origin: OriginIndex,
        max: usize,
        finish_in_flight: bool,
    ) -> anyhow::Result<Aborted>;
    /// Deletes up to `budget` of the flow entries retired by a generation change (see
    /// [`DataPlane::retire_flows`]); returns how many. Called once per window, so the
    /// failover itself never waits for them; the data plane forgets a retired flow it meets
    /// before that. A key that holds a live flow again by then (a viewer reconnecting from
    /// the same port) is kept.
    fn reap_retired(&mut self, budget: usize) -> anyhow::Result<u64>;
    /// Open flows per origin index (`[primary, backup, ...]`, MAX_ORIGINS long): flows
    /// established through the VIP that their origin has not closed (FIN or RST) and that were
    /// not removed. Read from counters, never by walking the flow map, so its cost does not
    /// depend on the number of viewers. An open flow the LRU evicts from a full table (only
    /// when `--max-flows` is reached) can no longer be seen closing and stays counted.
    fn flow_counts(&self) -> anyhow::Result<Vec<u64>>;
    /// Counters summed over CPUs, one per stats slot (origins, then the unsteered slot).
    fn counters(&self) -> anyhow::Result<Vec<Counters>>;
    /// Encapsulation counters summed over CPUs, one per origin slot (direct server return to
    /// origins on other hosts; zero for same-host origins).
    fn encap_counters(&self) -> anyhow::Result<Vec<EncapCounters>>;
}

/// A connection with data in flight that got no acknowledgement for this long is not
/// delivering. Generous on purpose: a transfer that loses packets (a throttled, slow origin)
/// waits out retransmission timeouts of 200 ms, 400 ms, 800 ms... and is still delivering,
/// and keeping a connection whose viewer we cannot reach anyway costs nothing (the reset could
/// not reach it either); an idle or waiting connection has no data in flight and is cut at once.
pub const DELIVERY_STALL_MS: u32 = 2_000;

/// What [`DataPlane::abort_flows`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Aborted {
    /// Connections reset (origin-side sockets destroyed on this host).
    pub reset: u64,
    /// Removed flows the edge reset itself, from the VIP with the client's latest
    /// acknowledgment number (see [`crate::edge_rst`]; one reset per number the flow may be
    /// at, [`crate::flow_cache::client_acks`]); 0 where the interface cannot transmit them
    /// (not native XDP).
    pub edge_resets: u64,
    /// Edge-originated resets of pending handshakes (RST+ACK of the client's SYN, see
    /// [`crate::edge_rst::handshake_rst`]), sent only without `finish_in_flight`; 0 where the
    /// interface cannot transmit them.
    pub handshake_resets: u64,
    /// Flows removed from the conntrack map.
    pub removed: u64,
    /// Connections left to finish the response they are delivering (flows kept).
    pub finishing: u64,
    /// Flows of the origin left in the map because of `max` (a paced drain continues).
    pub remaining: u64,
}

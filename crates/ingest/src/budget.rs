//! What peers may hold, by source address and in total: connection slots per address, and
//! the memory budget for partial RTMP messages.
//!
//! # Why declared lengths
//! A chunk header declares a message's length before its bytes arrive, and the reassembly
//! buffer then fills up to that length at the peer's pace. So a connection is charged the
//! sum of the declared lengths of its partial messages
//! ([`rtmp::chunk::ChunkDecoder::pending_bytes`]), from the moment the header is parsed:
//! the charge is an upper bound of what it can make us hold, and a peer that would go over
//! is closed before it has sent the bytes. Complete messages leave the budget; what the hub
//! keeps of them is bounded per stream (`--stream-buffer-bytes`, `--gop-cache-bytes`).
//!
//! # Why per address
//! One global budget alone lets a single peer fill it, and then every honest publisher's
//! next frame is refused. Each source address may hold at most
//! [`BudgetLimits::per_address`] of it, so an attacker needs many addresses to starve the
//! others, and the connection cap per address ([`BudgetLimits::connections_per_address`])
//! bounds slots the same way. Addresses are counted exactly (an IPv6 /64 is not grouped).
//!
//! A std `Mutex`, not a tokio one: never held across an `.await`; one short critical section
//! per connection open/close and per message header.

use crate::metrics::Metrics;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The knobs (from [`crate::Config`]); 0 means unlimited.
#[derive(Debug, Clone, Copy)]
pub struct BudgetLimits {
    /// Most simultaneous connections from one source address.
    pub connections_per_address: usize,
    /// Most bytes of partial messages across all connections.
    pub total: usize,
    /// Most bytes of partial messages across the connections of one source address.
    pub per_address: usize,
}

#[derive(Default)]
struct Usage {
    total: usize,
    by_addr: HashMap<IpAddr, AddrUsage>,
}

#[derive(Default, Clone, Copy)]
struct AddrUsage {
    connections: usize,
    bytes: usize,
}

/// Shared accounting; connections hold an [`AddrSlot`] each.
pub struct Budget {
    limits: BudgetLimits,
    usage: Mutex<Usage>,
    metrics: Arc<Metrics>,
}

/// Why a charge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The whole ingest's budget is spent.
    #[error("memory budget for partial messages exhausted")]
    Total,
    /// This address's share is spent.
    #[error("memory budget of this source address exhausted")]
    Address,
}

fn over(limit: usize, value: usize) -> bool {
    limit != 0 && value > limit
}

impl Budget {
    /// An empty budget.
    pub fn new(limits: BudgetLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            usage: Mutex::default(),
            metrics,
        })
    }

    /// A connection slot for `addr`, or `None` when the address is at its limit.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Option<AddrSlot> {
        let mut u = self.usage.lock().expect("budget lock");
        let a = u.by_addr.entry(addr).or_default();
        if over(self.limits.connections_per_address, a.connections + 1) {
            return None;
        }
        a.connections += 1;
        Some(AddrSlot {
            budget: self.clone(),
            addr,
            charged: 0,
        })
    }

    /// Bytes of partial messages charged now, over all connections.
    pub fn total(&self) -> usize {
        self.usage.lock().expect("budget lock").total
    }
}

/// One connection's slot: its address's connection count and its charge, both returned on
/// drop.
pub struct AddrSlot {
    budget: Arc<Budget>,
    addr: IpAddr,
    charged: usize,
}

impl AddrSlot {
    /// Sets this connection's charge to `bytes` (its decoder's pending bytes). Growing past
    /// the address's share or the total is refused and leaves the charge as it was.
    pub fn charge(&mut self, bytes: usize) -> Result<(), Refused> {
        if bytes == self.charged {
            return Ok(());
        }
        let b = &self.budget;
        let mut u = b.usage.lock().expect("budget lock");
        let total = u.total - self.charged + bytes;
        let a = u.by_addr.get_mut(&self.addr).expect("admitted address");
        let addr_bytes = a.bytes - self.charged + bytes;
        if bytes > self.charged {
            if over(b.limits.per_address, addr_bytes) {
                return Err(Refused::Address);
            }
            if over(b.limits.total, total) {
                return Err(Refused::Total);
            }
        }
        a.bytes = addr_bytes;
        u.total = total;
        self.charged = bytes;
        b.metrics.buffered_partial.set(total as i64);
        Ok(())
    }
}

impl Drop for AddrSlot {
    fn drop(&mut self) {
        let b = &self.budget;
        let mut u = b.usage.lock().expect("budget lock");
        u.total -= self.charged;
        let total = u.total;
        if let Some(a) = u.by_addr.get_mut(&self.addr) {
            a.bytes -= self.charged;
            a.connections -= 1;
            if a.connections == 0 {
                u.by_addr.remove(&self.addr);
            }
        }
        b.metrics.buffered_partial.set(total as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(conns: usize, total: usize, per_address: usize) -> Arc<Budget> {
        Budget::new(
            BudgetLimits {
                connections_per_address: conns,
                total,
                per_address,
            },
            Metrics::new(),
        )
    }

    #[test]
    fn connections_per_address_are_capped_and_returned() {
        let b = budget(2, 0, 0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = b.admit(a).expect("first");
        let _s2 = b.admit(a).expect("second");
        assert!(b.admit(a).is_none(), "third from the same address refused");
        let _o = b.admit(other).expect("other addresses unaffected");
        drop(s1);
        assert!(b.admit(a).is_some(), "slot returned on close");
    }

    #[test]
    fn charges_are_capped_per_address_and_in_total_and_released_on_drop() {
        let b = budget(0, 1000, 600);
        let (x, y, z): (IpAddr, IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            "192.0.2.3".parse().unwrap(),
        );
        let mut x1 = b.admit(x).unwrap();
        let mut x2 = b.admit(x).unwrap();
        x1.charge(400).expect("within");
        assert_eq!(x2.charge(300), Err(Refused::Address), "x's share is 600");
        x2.charge(200).expect("exactly the share");
        let mut y1 = b.admit(y).unwrap();
        y1.charge(400).expect("within the total");
        let mut z1 = b.admit(z).unwrap();
        assert_eq!(z1.charge(1), Err(Refused::Total));
        assert_eq!(b.total(), 1000);
        assert_eq!(b.metrics.buffered_partial.get(), 1000);
        // Shrinking is always allowed, and frees room for others.
        x1.charge(0).expect("shrink");
        z1.charge(400).expect("room again");
        drop((x2, y1, z1));
        assert_eq!(b.total(), 0);
        assert_eq!(b.metrics.buffered_partial.get(), 0);
        assert!(
            b.usage.lock().unwrap().by_addr.len() == 1,
            "only x1's address left"
        );
    }
}

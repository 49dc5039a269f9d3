//! User space's side of the handshake table `SWITCHER_HANDSHAKES` (connections between their
//! SYN and the ACK that completes them; the data plane's side and the table's shape are in
//! `switcher-ebpf/src/handshakes.rs`): reading it, counting it, and emptying the slots of a
//! retired origin's handshakes.
//!
//! The array is mapped into this process (`BPF_F_MMAPABLE`) instead of read and written with
//! map syscalls, because of how the data plane writes it: without a lock, one 4-byte word at
//! a time, a slot being empty when its port/family word is 0. An update syscall copies a
//! whole 192-byte bucket, and would put back the other slots of the bucket as they were when
//! it was read, erasing a SYN the data plane recorded in between. Here a slot is emptied with
//! one compare-and-swap of that word, which leaves the rest of the bucket alone and fails if
//! a SYN has taken the slot since it was read (the mapping: [`crate::mmapped`]).

use std::sync::atomic::{AtomicU32, Ordering};

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use aya::maps::MapData;
use switcher_common::{
    FAMILY_V4, FlowKey, HANDSHAKE_BUCKETS, HANDSHAKE_WAYS, Handshake, HandshakeBucket,
    HandshakeSlot, VIP_HAS_V4, VIP_HAS_V6, VipConfig, handshake_bucket,
};

use crate::{maglev, mmapped::Mapped};

/// IP protocol number of TCP, the last word of the flow hash.
const IPPROTO_TCP: u8 = 6;

/// Byte offset in a slot of the word holding the key's port and family (0: empty slot).
const PORT_FAMILY_OFF: usize = std::mem::offset_of!(FlowKey, client_port_be);

/// The handshake table, mapped.
pub struct HandshakeTable {
    /// Every bucket.
    buckets: Mapped<HandshakeBucket>,
}

impl HandshakeTable {
    /// Maps `map`, which must be the `SWITCHER_HANDSHAKES` of this build (an array of
    /// `HANDSHAKE_BUCKETS` mmapable buckets); pins left by a build that kept handshakes in a
    /// hash map are refused with what to do.
    pub fn new(map: MapData) -> Result<Self> {
        Ok(HandshakeTable {
            buckets: Mapped::new(map, "SWITCHER_HANDSHAKES", HANDSHAKE_BUCKETS as usize)?,
        })
    }

    /// Pointers to the slots of bucket `b` (< `HANDSHAKE_BUCKETS`).
    fn bucket_slots(&self, b: usize) -> impl Iterator<Item = *mut HandshakeSlot> + '_ {
        let bucket = self.buckets.at(b);
        // SAFETY: a pointer to the bucket's slots array, in bounds.
        let first = unsafe { std::ptr::addr_of_mut!((*bucket).slots) }.cast::<HandshakeSlot>();
        // SAFETY: slot `w` of the bucket's `HANDSHAKE_WAYS` slots.
        (0..HANDSHAKE_WAYS as usize).map(move |w| unsafe { first.add(w) })
    }

    /// Pointers to every slot, in array order.
    fn slots(&self) -> impl Iterator<Item = *mut HandshakeSlot> + '_ {
        (0..HANDSHAKE_BUCKETS as usize).flat_map(move |b| self.bucket_slots(b))
    }

    /// Every slot that holds a handshake, with a copy of it as read.
    fn used(&self) -> impl Iterator<Item = (*mut HandshakeSlot, HandshakeSlot)> + '_ {
        self.slots()
            .map(|s| (s, Self::read(s)))
            .filter(|(_, slot)| slot.is_used())
    }

    /// The word of the slot at `s` holding the key's port and family, the one the data plane
    /// writes last and empties a slot by zeroing.
    fn port_family<'s>(s: *mut HandshakeSlot) -> &'s AtomicU32 {
        // SAFETY: a word of a slot inside the mapping (which outlives every use here), 4-byte
        // aligned (map memory is page aligned, slots are 48 bytes, the word is at offset 16);
        // the data plane writes it only with aligned 4-byte stores.
        unsafe { AtomicU32::from_ptr(s.cast::<u8>().add(PORT_FAMILY_OFF).cast()) }
    }

    /// A copy of the slot at `s`, as it is now (it may be mid-write: see [`Self::take`]).
    fn read(s: *mut HandshakeSlot) -> HandshakeSlot {
        // SAFETY: a slot inside the mapping; any bytes are a valid `HandshakeSlot`.
        unsafe { std::ptr::read_volatile(s) }
    }

    /// Every handshake in the table.
    pub fn entries(&self) -> Vec<(FlowKey, Handshake)> {
        self.used().map(|(_, s)| (s.key, s.hs)).collect()
    }

    /// How many slots hold a handshake.
    pub fn count(&self) -> usize {
        self.used().count()
    }

    /// Empties the slots of the handshakes pinned to `origin`, and returns those it emptied as
    /// they were read. A slot a SYN took after it was read is left to that SYN (unless that
    /// SYN's client port and family are the same as the handshake it replaced: only that word
    /// is compared, and the new handshake is emptied with the old).
    pub fn take(&self, origin: u32) -> Vec<(FlowKey, Handshake)> {
        let mut taken = Vec::new();
        for (s, slot) in self.used() {
            if slot.hs.origin != origin {
                continue;
            }
            let seen = u32::from(slot.key.client_port_be) | u32::from(slot.key.family) << 16;
            if Self::port_family(s)
                .compare_exchange(seen, 0, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                taken.push((slot.key, slot.hs));
            }
        }
        taken
    }
}

impl HandshakeTable {
    /// Empties every slot (a test or bench starting over; the data plane never needs it).
    pub fn clear(&self) {
        for s in self.slots() {
            Self::port_family(s).store(0, Ordering::SeqCst);
        }
    }

    /// What TC egress records from the origin's SYN-ACK of initial sequence number `isn`, in
    /// the handshake of `key`, a connection to `vip`: for benches and tests that run the
    /// request path alone. Reads and writes that connection's bucket only. False when the
    /// table has no handshake of `key`.
    pub fn record_syn_ack(&self, key: &FlowKey, vip: &VipConfig, isn: u32) -> bool {
        let Some(bucket) = bucket_of(key, vip) else {
            return false;
        };
        for s in self.bucket_slots(bucket as usize) {
            let slot = Self::read(s);
            if slot.is_used() && slot.key == *key {
                let mut hs = slot.hs;
                hs.expect_ack = isn.wrapping_add(1);
                hs.flags |= switcher_common::HANDSHAKE_ISN_SEEN;
                // SAFETY: the handshake part of a slot inside the mapping.
                unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*s).hs), hs) };
                return true;
            }
        }
        false
    }
}

/// The bucket of connection `key` to `vip`: the low bits of its request's flow hash, as the
/// data plane computes it (`steer::flow_hash`). `None` when `vip` has no address of the key's
/// family.
pub fn bucket_of(key: &FlowKey, vip: &VipConfig) -> Option<u32> {
    let client_port = u16::from_be(key.client_port_be);
    let vip_port = u16::from_be(vip.port_be);
    let hash = if key.family == FAMILY_V4 {
        if vip.flags & VIP_HAS_V4 == 0 {
            return None;
        }
        let a = &key.client_addr;
        maglev::flow_hash_v4(
            Ipv4Addr::new(a[0], a[1], a[2], a[3]),
            client_port,
            Ipv4Addr::from(vip.addr_v4),
            vip_port,
            IPPROTO_TCP,
        )
    } else {
        if vip.flags & VIP_HAS_V6 == 0 {
            return None;
        }
        maglev::flow_hash_v6(
            Ipv6Addr::from(key.client_addr),
            client_port,
            Ipv6Addr::from(vip.addr_v6),
            vip_port,
            IPPROTO_TCP,
        )
    };
    Some(handshake_bucket(hash))
}

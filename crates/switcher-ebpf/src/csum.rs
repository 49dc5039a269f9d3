//! Incremental Internet checksum update (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')), used by
//! XDP, which has no checksum helpers. Works on 16-bit words exactly as they sit in the packet
//! (one's-complement sums do not depend on byte order as long as every word is read the same
//! way), so no byte swapping is needed. TC uses the kernel's helpers instead, which also handle
//! CHECKSUM_PARTIAL skbs.

/// Folds a 32-bit one's-complement accumulator into 16 bits.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Checksum `check` after one 16-bit word of the covered data changed from `old` to `new`.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check) as u32 + (!old) as u32 + new as u32;
    !fold(sum)
}

/// Checksum `check` after a 4-byte field changed from `old` to `new` (e.g. an IPv4 address).
#[inline(always)]
pub fn replace32(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let c = replace16(
        check,
        u16::from_ne_bytes([old[0], old[1]]),
        u16::from_ne_bytes([new[0], new[1]]),
    );
    replace16(
        c,
        u16::from_ne_bytes([old[2], old[3]]),
        u16::from_ne_bytes([new[2], new[3]]),
    )
}

/// Checksum `check` after a 16-byte field changed from `old` to `new` (an IPv6 address).
#[inline(always)]
pub fn replace128(check: u16, old: &[u8; 16], new: &[u8; 16]) -> u16 {
    let mut c = check;
    let mut i = 0;
    while i < 16 {
        c = replace16(
            c,
            u16::from_ne_bytes([old[i], old[i + 1]]),
            u16::from_ne_bytes([new[i], new[i + 1]]),
        );
        i += 2;
    }
    c
}

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

/// Checksum `check` after a 4-byte field changed from `old` to `new`, each given as the
/// native word of its 4 bytes (a 4-byte load of the field): its two halves are the field's
/// two 16-bit words, in one order or the other depending on the byte order, which a
/// one's-complement sum does not depend on.
#[inline(always)]
pub fn replace_word(check: u16, old: u32, new: u32) -> u16 {
    let sum = (!check) as u32 + (!old & 0xffff) + (!old >> 16) + (new & 0xffff) + (new >> 16);
    !fold(sum)
}

//! The RTMP handshake (RTMP spec 1.0 section 5.2), server and client side, sans-IO.
//!
//! Two flavours exist in the wild:
//! - plain (spec 5.2.3): C1/S1 = time, zero, random; C2/S2 echo the peer's C1/S1;
//! - digest ("FP9", not in the public spec; as implemented by Flash Player, librtmp,
//!   ffmpeg's `rtmpproto.c` and nginx-rtmp's `ngx_rtmp_handshake.c`): C1 carries a non-zero
//!   version and an HMAC-SHA256 digest at an offset derived from its own bytes; the server
//!   must answer with a digest-bearing S1 and an S2 whose last 32 bytes are keyed on the
//!   client's digest. ffmpeg checks those, so a plain answer breaks `ffmpeg -i rtmp://`.
//!
//! The server detects the flavour from C1: if a valid client digest is found at either
//! offset scheme it answers in kind, otherwise it answers plainly.

use bytes::{Buf, BufMut, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// RTMP version byte in C0/S0 (spec 5.2.2): 3 is plain RTMP.
pub const RTMP_VERSION: u8 = 3;
/// Size of C1/S1/C2/S2 (spec 5.2.3).
pub const HANDSHAKE_SIZE: usize = 1536;
/// HMAC-SHA256 digest length.
const DIGEST_LEN: usize = 32;
/// Digest offsets are taken modulo this (1536 - 8 header - 4 offset bytes - 764 other half
/// ... as librtmp/nginx compute it: 764 - 32 - 4).
const DIGEST_OFFSET_MODULO: usize = 728;
/// The two places the 4 offset bytes can sit in C1/S1 ("scheme 0" and "scheme 1").
const DIGEST_SCHEME_BASES: [usize; 2] = [8, 772];
/// The bytes shared by both keys' tails (Flash Player / FMS constants).
const KEY_TAIL: [u8; 32] = [
    0xF0, 0xEE, 0xC2, 0x4A, 0x80, 0x68, 0xBE, 0xE8, 0x2E, 0x00, 0xD0, 0xD1, 0x02, 0x9E, 0x7E, 0x57,
    0x6E, 0xEC, 0x5D, 0x2D, 0x29, 0x80, 0x6F, 0xAB, 0x93, 0xB8, 0xE6, 0x36, 0xCF, 0xEB, 0x31, 0xAE,
];
/// "Genuine Adobe Flash Player 001": the client's partial key signs C1.
const CLIENT_KEY_TEXT: &[u8] = b"Genuine Adobe Flash Player 001";
/// "Genuine Adobe Flash Media Server 001": the server's partial key signs S1.
const SERVER_KEY_TEXT: &[u8] = b"Genuine Adobe Flash Media Server 001";
/// Version we put in S1 bytes 4..8 (non-zero signals the digest flavour; value as nginx-rtmp).
const SERVER_VERSION: [u8; 4] = [0x0D, 0x0E, 0x0A, 0x0D];

/// Why a handshake failed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HandshakeError {
    /// C0/S0 was not version 3 (RTMPE and other versions are not supported).
    #[error("unsupported RTMP version {0}")]
    UnsupportedVersion(u8),
}

fn full_key(text: &[u8]) -> Vec<u8> {
    let mut k = text.to_vec();
    k.extend_from_slice(&KEY_TAIL);
    k
}

/// HMAC-SHA256 over `data` with the bytes `skip..skip+32` left out (where the digest sits).
fn hmac_skipping(key: &[u8], data: &[u8], skip: Option<usize>) -> [u8; DIGEST_LEN] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    match skip {
        Some(at) => {
            mac.update(&data[..at]);
            mac.update(&data[at + DIGEST_LEN..]);
        }
        None => mac.update(data),
    }
    mac.finalize().into_bytes().into()
}

fn digest_offset(block: &[u8], base: usize) -> usize {
    let sum: usize = block[base..base + 4].iter().map(|&b| b as usize).sum();
    sum % DIGEST_OFFSET_MODULO + base + 4
}

/// Finds a valid digest in a C1/S1 block signed with `key`; returns its offset.
fn find_digest(block: &[u8], key: &[u8]) -> Option<usize> {
    // nginx-rtmp tries scheme 1 first; order does not matter for correctness.
    DIGEST_SCHEME_BASES.iter().rev().find_map(|&base| {
        let at = digest_offset(block, base);
        (hmac_skipping(key, block, Some(at)) == block[at..at + DIGEST_LEN]).then_some(at)
    })
}

/// Writes a digest into `block` at scheme 0 (the offset bytes at 8..12).
fn write_digest(block: &mut [u8], key: &[u8]) -> usize {
    let at = digest_offset(block, DIGEST_SCHEME_BASES[0]);
    let d = hmac_skipping(key, block, Some(at));
    block[at..at + DIGEST_LEN].copy_from_slice(&d);
    at
}

/// Cheap non-cryptographic filler for the random fields: the spec only asks that they be
/// unpredictable enough to tell sessions apart, and the digest scheme's "security" is public.
fn fill_random(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for b in buf {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9E37_79B9_7F4A_7C15);
    t ^ (&t as *const u64 as u64)
}

fn epoch_ms_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u32)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ServerState {
    /// Waiting for C0+C1.
    C0C1,
    /// S0S1S2 produced, waiting for C2.
    C2,
    /// Done.
    Done,
}

/// Server side: feed bytes with [`ServerHandshake::read`], send whatever it appends to `out`.
#[derive(Debug)]
pub struct ServerHandshake {
    state: ServerState,
    /// Whether the client used the digest flavour (for logs and tests).
    digest: bool,
}

impl Default for ServerHandshake {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerHandshake {
    /// A fresh handshake waiting for C0+C1.
    pub fn new() -> Self {
        Self {
            state: ServerState::C0C1,
            digest: false,
        }
    }

    /// Whether the client sent a digest ("FP9") C1.
    pub fn is_digest(&self) -> bool {
        self.digest
    }

    /// Consumes handshake bytes from `buf`, appending S0+S1+S2 to `out` once C0+C1 is in.
    /// Returns `Ok(true)` when the handshake is complete; bytes after C2 stay in `buf`
    /// (clients pipeline their `connect` right behind C2).
    pub fn read(&mut self, buf: &mut BytesMut, out: &mut BytesMut) -> Result<bool, HandshakeError> {
        loop {
            match self.state {
                ServerState::C0C1 => {
                    if buf.len() < 1 + HANDSHAKE_SIZE {
                        return Ok(false);
                    }
                    let version = buf[0];
                    if version != RTMP_VERSION {
                        return Err(HandshakeError::UnsupportedVersion(version));
                    }
                    buf.advance(1);
                    let c1 = buf.split_to(HANDSHAKE_SIZE);
                    self.respond(&c1, out);
                    self.state = ServerState::C2;
                }
                ServerState::C2 => {
                    if buf.len() < HANDSHAKE_SIZE {
                        return Ok(false);
                    }
                    // C2 is not validated: clients differ in what they echo and nothing
                    // depends on it (nginx-rtmp and MediaMTX do not check it either).
                    buf.advance(HANDSHAKE_SIZE);
                    self.state = ServerState::Done;
                }
                ServerState::Done => return Ok(true),
            }
        }
    }

    fn respond(&mut self, c1: &[u8], out: &mut BytesMut) {
        out.put_u8(RTMP_VERSION);
        let client_version_nonzero = c1[4..8] != [0, 0, 0, 0];
        let client_digest = if client_version_nonzero {
            find_digest(c1, CLIENT_KEY_TEXT).map(|at| &c1[at..at + DIGEST_LEN])
        } else {
            None
        };
        let mut s1 = [0u8; HANDSHAKE_SIZE];
        fill_random(&mut s1, seed());
        s1[..4].copy_from_slice(&epoch_ms_u32().to_be_bytes());
        match client_digest {
            Some(cd) => {
                self.digest = true;
                s1[4..8].copy_from_slice(&SERVER_VERSION);
                write_digest(&mut s1, SERVER_KEY_TEXT);
                out.put_slice(&s1);
                // S2: random, signed with a key derived from the client's digest.
                let mut s2 = [0u8; HANDSHAKE_SIZE];
                fill_random(&mut s2, seed().rotate_left(17));
                let key = hmac_skipping(&full_key(SERVER_KEY_TEXT), cd, None);
                let sig = hmac_skipping(&key, &s2[..HANDSHAKE_SIZE - DIGEST_LEN], None);
                s2[HANDSHAKE_SIZE - DIGEST_LEN..].copy_from_slice(&sig);
                out.put_slice(&s2);
            }
            None => {
                s1[4..8].copy_from_slice(&[0; 4]);
                out.put_slice(&s1);
                // Spec 5.2.3: S2 echoes C1.
                out.put_slice(c1);
            }
        }
    }
}

/// Client side (plain flavour, which every server accepts).
#[derive(Debug)]
pub struct ClientHandshake {
    done: bool,
}

impl ClientHandshake {
    /// Starts a handshake: appends C0+C1 to `out`.
    pub fn start(out: &mut BytesMut) -> Self {
        out.put_u8(RTMP_VERSION);
        let mut c1 = [0u8; HANDSHAKE_SIZE];
        fill_random(&mut c1, seed());
        c1[..4].copy_from_slice(&epoch_ms_u32().to_be_bytes());
        c1[4..8].copy_from_slice(&[0; 4]);
        out.put_slice(&c1);
        Self { done: false }
    }

    /// Consumes S0+S1+S2 from `buf` and appends C2 (echo of S1) to `out`.
    /// Returns `Ok(true)` when done.
    pub fn read(&mut self, buf: &mut BytesMut, out: &mut BytesMut) -> Result<bool, HandshakeError> {
        if self.done {
            return Ok(true);
        }
        if buf.len() < 1 + 2 * HANDSHAKE_SIZE {
            return Ok(false);
        }
        if buf[0] != RTMP_VERSION {
            return Err(HandshakeError::UnsupportedVersion(buf[0]));
        }
        buf.advance(1);
        let s1 = buf.split_to(HANDSHAKE_SIZE);
        buf.advance(HANDSHAKE_SIZE); // S2
        out.put_slice(&s1);
        self.done = true;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a digest C1 the way ffmpeg's rtmpproto does (scheme 0, player version 9.0.124.2).
    fn digest_c1() -> Vec<u8> {
        let mut c1 = vec![0u8; HANDSHAKE_SIZE];
        fill_random(&mut c1, 12345);
        c1[4..8].copy_from_slice(&[9, 0, 124, 2]);
        write_digest(&mut c1, CLIENT_KEY_TEXT);
        c1
    }

    #[test]
    fn plain_handshake_echoes_c1() {
        let mut out = BytesMut::new();
        let mut client = ClientHandshake::start(&mut out);
        let c0c1 = out.split();
        let mut server = ServerHandshake::new();
        let mut inb = BytesMut::from(&c0c1[..100]);
        let mut s_out = BytesMut::new();
        assert_eq!(server.read(&mut inb, &mut s_out), Ok(false));
        assert!(s_out.is_empty());
        inb.extend_from_slice(&c0c1[100..]);
        assert_eq!(server.read(&mut inb, &mut s_out), Ok(false));
        assert_eq!(s_out.len(), 1 + 2 * HANDSHAKE_SIZE);
        assert!(!server.is_digest());
        assert_eq!(&s_out[1 + HANDSHAKE_SIZE..], &c0c1[1..], "S2 echoes C1");
        let mut c_out = BytesMut::new();
        assert_eq!(client.read(&mut s_out, &mut c_out), Ok(true));
        // C2 plus a pipelined byte of the next message.
        c_out.extend_from_slice(&[0x42]);
        assert_eq!(server.read(&mut c_out, &mut s_out), Ok(true));
        assert_eq!(&c_out[..], &[0x42]);
    }

    #[test]
    fn digest_handshake_answers_with_valid_s1_and_s2() {
        let c1 = digest_c1();
        let mut inb = BytesMut::new();
        inb.put_u8(RTMP_VERSION);
        inb.extend_from_slice(&c1);
        let mut server = ServerHandshake::new();
        let mut out = BytesMut::new();
        assert_eq!(server.read(&mut inb, &mut out), Ok(false));
        assert!(server.is_digest());
        let s1 = &out[1..1 + HANDSHAKE_SIZE];
        let s2 = &out[1 + HANDSHAKE_SIZE..];
        // What ffmpeg checks: S1 carries a server digest ...
        assert!(find_digest(s1, SERVER_KEY_TEXT).is_some(), "S1 digest");
        // ... and S2's tail is HMAC(HMAC(server full key, C1 digest), S2 head).
        let at = find_digest(&c1, CLIENT_KEY_TEXT).expect("client digest");
        let key = hmac_skipping(&full_key(SERVER_KEY_TEXT), &c1[at..at + DIGEST_LEN], None);
        let sig = hmac_skipping(&key, &s2[..HANDSHAKE_SIZE - DIGEST_LEN], None);
        assert_eq!(&s2[HANDSHAKE_SIZE - DIGEST_LEN..], &sig);
    }

    #[test]
    fn scheme_one_digest_is_found() {
        let mut c1 = vec![0u8; HANDSHAKE_SIZE];
        fill_random(&mut c1, 99);
        c1[4..8].copy_from_slice(&[9, 0, 124, 2]);
        let at = digest_offset(&c1, DIGEST_SCHEME_BASES[1]);
        let d = hmac_skipping(CLIENT_KEY_TEXT, &c1, Some(at));
        c1[at..at + DIGEST_LEN].copy_from_slice(&d);
        assert_eq!(find_digest(&c1, CLIENT_KEY_TEXT), Some(at));
    }

    #[test]
    fn bad_version_is_an_error() {
        let mut inb = BytesMut::from(&[6u8; 1 + HANDSHAKE_SIZE][..]);
        let mut out = BytesMut::new();
        assert_eq!(
            ServerHandshake::new().read(&mut inb, &mut out),
            Err(HandshakeError::UnsupportedVersion(6))
        );
    }

    #[test]
    fn nonzero_version_without_digest_falls_back_to_plain() {
        let mut c1 = vec![7u8; HANDSHAKE_SIZE];
        c1[4..8].copy_from_slice(&[9, 0, 124, 2]);
        let mut inb = BytesMut::new();
        inb.put_u8(RTMP_VERSION);
        inb.extend_from_slice(&c1);
        let mut server = ServerHandshake::new();
        let mut out = BytesMut::new();
        server.read(&mut inb, &mut out).expect("plain fallback");
        assert!(!server.is_digest());
        assert_eq!(&out[1 + HANDSHAKE_SIZE..], &c1[..]);
    }
}

//! Target `rtmp_handshake`: the input is what a client sends first (C0, C1, C2, and whatever
//! it pipelines behind), also read as what a server answers (S0, S1, S2).
//!
//! Invariants: feeding the bytes at once or one byte at a time gives the same outcome; a
//! complete handshake consumes exactly C0+C1+C2 and answers exactly S0+S1+S2; a plain
//! (non-digest) answer echoes C1 as S2 (RTMP spec 5.2.3); a refused version is the one sent.

use bytes::BytesMut;
use rtmp::handshake::{
    ClientHandshake, HANDSHAKE_SIZE, HandshakeError, RTMP_VERSION, ServerHandshake,
};

/// C0 + C1 (or S0 + S1).
const C0C1: usize = 1 + HANDSHAKE_SIZE;
/// C0 + C1 + C2 (or S0 + S1 + S2).
const FULL: usize = 1 + 2 * HANDSHAKE_SIZE;

/// What one server-side run ended with.
#[derive(Debug, PartialEq)]
struct Outcome {
    result: Result<bool, HandshakeError>,
    consumed: usize,
    answered: usize,
    digest: bool,
}

/// Runs the server side, feeding `data` in pieces of `step` bytes; returns the outcome and the
/// answer bytes.
fn serve(data: &[u8], step: usize) -> (Outcome, BytesMut) {
    let mut hs = ServerHandshake::new();
    let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
    let mut fed = 0;
    let mut result = Ok(false);
    for piece in data.chunks(step) {
        buf.extend_from_slice(piece);
        fed += piece.len();
        result = hs.read(&mut buf, &mut out);
        if !matches!(result, Ok(false)) {
            break;
        }
    }
    let outcome = Outcome {
        result,
        consumed: fed - buf.len(),
        answered: out.len(),
        digest: hs.is_digest(),
    };
    (outcome, out)
}

/// The target body.
pub fn run(data: &[u8]) {
    let (whole, answer) = serve(data, data.len().max(1));
    let (bytewise, _) = serve(data, 1);
    assert_eq!(whole, bytewise, "outcome depends on how the bytes arrive");

    match &whole.result {
        Ok(true) => {
            assert_eq!(whole.consumed, FULL, "a complete handshake is C0+C1+C2");
            assert_eq!(whole.answered, FULL, "the answer is S0+S1+S2");
        }
        Ok(false) if data.len() >= C0C1 => {
            assert_eq!(whole.consumed, C0C1, "C0+C1 consumed, waiting for C2");
            assert_eq!(whole.answered, FULL, "S0+S1+S2 sent once C0+C1 is in");
        }
        Ok(false) => assert_eq!((whole.consumed, whole.answered), (0, 0)),
        Err(HandshakeError::UnsupportedVersion(v)) => {
            assert_eq!(Some(v), data.first(), "the refused version is the one sent");
            assert_ne!(*v, RTMP_VERSION);
            assert_eq!(
                whole.answered, 0,
                "nothing is answered to a refused version"
            );
        }
    }
    if whole.answered == FULL {
        assert_eq!(answer[0], RTMP_VERSION);
        if !whole.digest {
            assert_eq!(&answer[C0C1..], &data[1..C0C1], "plain S2 echoes C1");
        }
    }

    // The same bytes as a server's S0+S1+S2, read by our play client.
    let mut c_out = BytesMut::new();
    let mut client = ClientHandshake::start(&mut c_out);
    let c0c1 = c_out.len();
    let mut buf = BytesMut::from(data);
    match client.read(&mut buf, &mut c_out) {
        Ok(true) => {
            assert_eq!(data.len() - buf.len(), FULL);
            assert_eq!(&c_out[c0c1..], &data[1..C0C1], "C2 echoes S1");
        }
        Ok(false) => assert!(data.len() < FULL && buf.len() == data.len()),
        Err(HandshakeError::UnsupportedVersion(v)) => assert_eq!(Some(&v), data.first()),
    }
}

//! The bodies of the fuzz targets: every parser that takes bytes from a peer, driven the way
//! its caller drives it, with the invariants it must keep checked by assertions.
//!
//! Each target is one function `fn(&[u8])` that must return for every input; a panic (an
//! assertion here, or one inside the parser: index out of bounds, arithmetic overflow,
//! `expect`) is a finding. The same functions run in two places:
//! * `fuzz/fuzz_targets/<target>.rs`: libFuzzer (cargo-fuzz), `cargo xtask fuzz <target>`;
//! * `tests/replay.rs`: every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`
//!   (the minimized corpus and every crash ever found), under `cargo xtask test`.
//!
//! # Layout
//! * [`rtmp_handshake`]: C0/C1/C2 on the server side, S0/S1/S2 on the client side.
//! * [`rtmp_chunk`]: the chunk stream decoder and message parsing, as the ingest drives them.
//! * [`amf0`]: AMF0 decoding and the decode/encode round trip.
//! * [`flv`]: FLV tag bodies, AVC and AAC configurations, FLV files through the packager's core.
//! * [`playlist`]: the probe's playlist parser (switcher-ctl) and variant URI resolution.
//! * [`origin`]: the origin's request path routing and `Range` parsing.
//! * [`ebpf`]: packets through the data plane's programs (BPF_PROG_TEST_RUN, needs root).
//!
//! Splitting rule: a target's input is the raw bytes a peer sends (no framing of our own),
//! so real captures are valid corpus entries as they are.
#![deny(missing_docs)]

pub mod amf0;
pub mod ebpf;
pub mod flv;
pub mod origin;
pub mod playlist;
pub mod rtmp_chunk;
pub mod rtmp_handshake;

/// A target's body: returns for every input, panics on a finding.
pub type Body = fn(&[u8]);

/// Every target: its name (the file name under `fuzz/fuzz_targets/` and the corpus directory)
/// and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("rtmp_handshake", rtmp_handshake::run),
    ("rtmp_chunk", rtmp_chunk::run),
    ("amf0", amf0::run),
    ("flv", flv::run),
    ("playlist", playlist::run),
    ("origin_path", origin::run_path),
    ("origin_range", origin::run_range),
    ("ebpf", ebpf::run),
];

/// The body of the target called `name`, if there is one.
pub fn target(name: &str) -> Option<Body> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

//! Sans-IO RTMP protocol core and a small async play client.
//!
//! # Layout
//! - [`handshake`]: C0/C1/C2 <-> S0/S1/S2, plain and digest ("FP9") flavours (spec 5.2).
//! - [`chunk`]: chunk stream decoder/encoder with header compression and caps (spec 5.3).
//! - [`message`]: protocol control, user control, command and data messages (spec 5.4,
//!   6.2, 7.1), builders for outgoing ones, acknowledgement bookkeeping.
//! - [`amf0`]: AMF0 values (AMF0 spec, 2007).
//! - [`media`]: keyframe / sequence-header detection in FLV audio/video bodies, legacy and
//!   Enhanced RTMP.
//! - [`client`]: [`client::PlayClient`], tokio-based, for the packager and tests.
//!
//! Everything except `client` is sans-IO: `read(&mut BytesMut) -> Result<Option<T>>`
//! where `Ok(None)` means "need more bytes", and outgoing bytes are appended to a buffer
//! the caller writes. Everything a peer can make us buffer is capped
//! ([`chunk::Limits`], [`amf0::MAX_DEPTH`], [`amf0::MAX_ENTRIES`]).
//!
//! # Why hand-written
//! The candidates were judged on: sans-IO shape, caps on peer-controlled buffering, digest
//! handshake, Enhanced RTMP pass-through, maintenance, and fit with rustc 1.95.
//! - `rml_rtmp`: the closest in shape (sans-IO sessions, digest handshake), but unmaintained
//!   since 2023, and its `ServerSession` owns publish/play policy (its own event model and
//!   stream bookkeeping) that the ingest needs to own (GOP cache, session ids, start time),
//!   and it has no caps on message size or chunk streams.
//! - xiu's `rtmp`: a complete server, but its chunk reader and sessions are tied to its own
//!   tokio networking and stream hub (not sans-IO), so reusing only the protocol core
//!   means carrying its whole stack.
//! - `scuffle-rtmp`: clean code, but self-described unstable, with frequent API changes and
//!   a dependency set that tracks newer toolchains.
//!
//! The protocol core is small (a few hundred lines per layer) and well specified, so it is
//! written here against the spec, with byte-level tests, hostile-input tests and interop
//! tests against ffmpeg and rtmpdump (in the `ingest` crate).
#![deny(missing_docs)]

pub mod amf0;
pub mod chunk;
pub mod client;
pub mod handshake;
pub mod media;
pub mod message;

pub use client::{ClientError, PlayClient, PlayEvent};

/// onMetaData property the ingest adds: UNIX wall-clock milliseconds at which RTMP
/// timestamp 0 of the current publish session would have occurred.
pub const STREAM_START_TIME_MS: &str = "streamStartTimeMs";
/// onMetaData property the ingest adds: a number that increments with every new publish
/// session of the stream.
pub const STREAM_SESSION_ID: &str = "streamSessionId";

//! RTMP -> HLS packager whose output is interchangeable between instances.
//!
//! Two packagers (primary and backup) reading the same ingest write the same playlist and
//! byte-identical MPEG-TS segments, so a player switched between origins sees no difference
//! (RFC 8216 6.3.5; docs/ARCHITECTURE.md, "Interchangeable packagers"). See [`segmenter`] for the rules
//! that make every decision a function of the stream alone.
//!
//! # Layout
//! - [`flv`]: FLV tag bodies (what RTMP audio/video messages carry) and an FLV file reader.
//! - [`h264`]: AVCDecoderConfigurationRecord, length-prefixed NALs -> Annex B (AUD, SPS/PPS).
//! - [`aac`]: AudioSpecificConfig -> ADTS headers.
//! - [`ts`]: deterministic MPEG-TS muxer (PAT/PMT, PES, PCR, continuity counters, stuffing).
//! - [`playlist`]: the sliding-window media playlist (m3u8-rs).
//! - [`segmenter`]: the sans-IO core, [`Packager::push`]: events in, [`Output`]s out.
//! - [`writer`]: applies outputs to a directory: atomic writes, retries, delayed deletion.
//! - [`source`]: the I/O edge: connectors (RTMP, FLV file), reconnect with backoff.
//! - [`metrics`]: Prometheus metrics (`packager_*`) and the admin endpoint.
//! - `src/bin/packager.rs`: CLI (clap, env vars), one thread per `--source`.
//!
//! Crates: `m3u8-rs` writes the playlist; the TS muxer is hand-written (why: see [`ts`]) and
//! tested against the `mpeg2ts` crate's reader and ffprobe.
//!
//! # Limits of interchangeability
//! Instances agree on everything derived from the session (numbers, names, PDT, bytes,
//! discontinuity numbering across publisher restarts, via `streamSessionId`). What only an
//! instance that watched it can know is not reproduced by a later joiner: a timestamp jump
//! inside a session (its discontinuity count, and after a backwards jump the rebased stream
//! time). A keyframe interval longer than the target duration skips numbers; the playlist then
//! restarts its window (see [`playlist::Playlist::push`]). Audio-only streams are not segmented.
#![deny(missing_docs)]

pub mod aac;
pub mod flv;
pub mod h264;
pub mod metrics;
pub mod playlist;
pub mod segmenter;
pub mod source;
pub mod ts;
pub mod writer;

pub use segmenter::{Config, Event, Metadata, Output, Packager};

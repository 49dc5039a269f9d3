//! ingest (work in progress).

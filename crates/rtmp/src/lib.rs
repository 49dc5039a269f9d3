//! rtmp (work in progress).

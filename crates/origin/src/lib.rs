//! origin (work in progress).

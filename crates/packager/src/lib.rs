//! packager (work in progress).

//! Targets `origin_path` and `origin_range`: what a client puts in the request line and the
//! `Range` header, as the origin's sans-IO parsers see them.
//!
//! Invariants (`origin_path`): a routed file path is relative, made of 2 to
//! [`MAX_HLS_DEPTH`] plain names (no `..`, `.`, root, leading dot, separator, NUL or control
//! character), so it can never name anything outside the root.
//!
//! Invariants (`origin_range`): a partial range lies inside the representation
//! (`start <= end < len`); an empty representation is never partially served.

use std::path::Component;

use origin::{
    range::{self, RangeRequest},
    route::{MAX_HLS_DEPTH, Route, route},
};

/// Body of `origin_path`: the input is the request target's path (hyper hands it as `&str`).
pub fn run_path(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Route::Hls(file) = route(path) else {
        return;
    };
    assert!(file.is_relative(), "routed path {file:?} is absolute");
    let names: Vec<Component> = file.components().collect();
    assert!(
        (2..=MAX_HLS_DEPTH).contains(&names.len()),
        "routed path {file:?} has {} components",
        names.len()
    );
    for c in names {
        let Component::Normal(name) = c else {
            panic!("routed path {file:?} has a {c:?} component");
        };
        let name = name.to_str().expect("decoded from UTF-8");
        assert!(
            !name.starts_with('.') && !name.contains(['/', '\\', '\0']),
            "routed path {file:?} has an unsafe name {name:?}"
        );
        assert!(
            !name.chars().any(char::is_control),
            "control character in {name:?}"
        );
    }
}

/// Body of `origin_range`: the input is a `Range` header value, read against representations
/// of several lengths (empty, tiny, the input's own length, huge).
pub fn run_range(data: &[u8]) {
    // hyper's `HeaderValue::to_str` only yields visible ASCII; the origin ignores the rest.
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    for len in [0, 1, 2, 100, data.len() as u64, u64::MAX - 1, u64::MAX] {
        match range::parse(header, len) {
            RangeRequest::Partial { start, end } => {
                assert!(
                    start <= end && end < len,
                    "{header:?} on {len} bytes gave {start}-{end}"
                );
            }
            RangeRequest::Full | RangeRequest::Unsatisfiable => {}
        }
    }
}

//! Request routing and path validation, sans-IO: turns the raw request path into a [`Route`]
//! without touching the file system.
//!
//! This is the first of two traversal defences. It works on the percent-*encoded* path, splits
//! it on `/`, then decodes each segment and refuses any segment that decodes to something that
//! could climb or escape (`..`, `.`, a `/` or `\`, NUL, a leading dot). The second defence,
//! in [`crate::files`], checks the canonical (symlink-resolved) path against the root.

use std::path::PathBuf;

use percent_encoding::percent_decode_str;

/// URL prefix of every HLS resource (`http://HOST:PORT/hls/<stream>/index.m3u8`).
pub const HLS_PREFIX: &str = "/hls/";
/// Liveness endpoint.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Prometheus exposition endpoint.
pub const METRICS_PATH: &str = "/metrics";
/// Most path segments accepted below `/hls/` (`<stream>/<file>` is 2; renditions in
/// sub-directories need 3).
pub const MAX_HLS_DEPTH: usize = 4;

/// What a request path designates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/healthz`.
    Healthz,
    /// `/metrics`.
    Metrics,
    /// A file below the root: a relative path made only of validated plain segments.
    Hls(PathBuf),
    /// Anything else, including every refused path.
    NotFound,
}

/// Coarse request class, used as a metric label (bounded cardinality, unlike paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// `.m3u8` media or master playlist.
    Playlist,
    /// `.ts`, `.m4s`, `.mp4` and other media files.
    Segment,
    /// `/healthz`.
    Healthz,
    /// `/metrics`.
    Metrics,
    /// Unknown or refused paths, bad methods, CORS preflights to unknown paths.
    Other,
}

impl RouteClass {
    /// Every class, in [`RouteClass::index`] order.
    pub const ALL: [RouteClass; 5] = [
        RouteClass::Playlist,
        RouteClass::Segment,
        RouteClass::Healthz,
        RouteClass::Metrics,
        RouteClass::Other,
    ];

    /// Position in [`RouteClass::ALL`], for per-class tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label value in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Playlist => "playlist",
            RouteClass::Segment => "segment",
            RouteClass::Healthz => "healthz",
            RouteClass::Metrics => "metrics",
            RouteClass::Other => "other",
        }
    }
}

/// Routes a raw (still percent-encoded) request path.
pub fn route(raw_path: &str) -> Route {
    match raw_path {
        HEALTHZ_PATH => Route::Healthz,
        METRICS_PATH => Route::Metrics,
        _ => match raw_path.strip_prefix(HLS_PREFIX) {
            Some(rest) => hls_relative_path(rest).map_or(Route::NotFound, Route::Hls),
            None => Route::NotFound,
        },
    }
}

/// Validates the part after `/hls/` and returns it as a relative path, or `None` if any
/// segment is unsafe. At least `<stream>/<file>` is required.
fn hls_relative_path(rest: &str) -> Option<PathBuf> {
    // Decoding never lengthens a segment, so this one allocation holds the whole path.
    let mut path = PathBuf::with_capacity(rest.len());
    let mut depth = 0;
    for raw in rest.split('/') {
        depth += 1;
        if depth > MAX_HLS_DEPTH {
            return None;
        }
        // Decode first, check after: `%2e%2e` and `%2f` must be judged as what they mean.
        let segment = percent_decode_str(raw).decode_utf8().ok()?;
        if !is_safe_segment(&segment) {
            return None;
        }
        path.push(segment.as_ref());
    }
    (depth >= 2).then_some(path)
}

/// A segment is safe when it is a plain, visible file or directory name. Leading dots are
/// refused as a whole: that covers `.` and `..`, and keeps the packager's hidden temp files
/// (written before the atomic rename) from ever being served.
fn is_safe_segment(segment: &str) -> bool {
    !segment.is_empty()
        && !segment.starts_with('.')
        && !segment.contains(['/', '\\', '\0'])
        && !segment.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_route() {
        assert_eq!(route("/healthz"), Route::Healthz);
        assert_eq!(route("/metrics"), Route::Metrics);
        assert_eq!(
            route("/hls/demo/index.m3u8"),
            Route::Hls(PathBuf::from("demo/index.m3u8"))
        );
        assert_eq!(
            route("/hls/demo/720p/seg%201.ts"),
            Route::Hls(PathBuf::from("demo/720p/seg 1.ts"))
        );
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for path in [
            "/hls/../etc/passwd",
            "/hls/demo/../../secret",
            "/hls/%2e%2e/secret",
            "/hls/%2E%2E/%2E%2E/secret",
            "/hls/demo/..%2f..%2fsecret",
            "/hls/demo%2f..%2f..%2fsecret/x",
            "/hls/demo/..%5c..%5csecret",
            "/hls//etc/passwd",
            "/hls/demo/index.m3u8%00.ts",
            "/hls/demo/.index.m3u8.tmp",
            "/hls/demo/./index.m3u8",
            "/hls/demo",
            "/hls/demo/",
            "/hls/%ff%fe/x.ts",
            "/hls/a/b/c/d/e.ts",
            "/etc/passwd",
            "//etc/passwd",
        ] {
            assert_eq!(route(path), Route::NotFound, "{path} must be refused");
        }
    }
}

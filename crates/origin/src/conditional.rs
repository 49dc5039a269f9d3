//! Conditional requests (RFC 9110 section 13), sans-IO: `If-None-Match`, `If-Modified-Since`
//! and `If-Range`, evaluated against a file's ETag and modification time.

use std::time::SystemTime;

use http::HeaderMap;
use http::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE};

/// Whether a GET/HEAD may be answered with 304 Not Modified (RFC 9110 section 13.2.2 order:
/// `If-None-Match` wins; `If-Modified-Since` is only consulted without it).
pub fn not_modified(headers: &HeaderMap, etag: &str, modified: SystemTime) -> bool {
    if let Some(value) = headers.get(IF_NONE_MATCH) {
        let Ok(value) = value.to_str() else {
            return false;
        };
        return etag_list_matches(value, etag);
    }
    headers
        .get(IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|since| httpdate::parse_http_date(since).ok())
        .is_some_and(|since| modified <= since)
}

/// Whether a `Range` may be honoured given `If-Range` (RFC 9110 section 13.1.5): absent, or
/// a strong match of the ETag, or exactly the Last-Modified date.
pub fn range_applies(headers: &HeaderMap, etag: &str, modified: SystemTime) -> bool {
    let Some(value) = headers.get(IF_RANGE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let value = value.trim();
    if value.starts_with('"') {
        return value == etag;
    }
    httpdate::parse_http_date(value).is_ok_and(|date| date == modified)
}

/// Weak comparison (RFC 9110 section 8.8.3.2) of a comma-separated list, or `*`.
fn etag_list_matches(list: &str, etag: &str) -> bool {
    let ours = etag.trim_start_matches("W/");
    list.split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == ours)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn headers(name: http::header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().expect("header value"));
        h
    }

    #[test]
    fn if_none_match() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(not_modified(&headers(IF_NONE_MATCH, "\"a\""), "\"a\"", t));
        assert!(not_modified(
            &headers(IF_NONE_MATCH, "\"x\", W/\"a\""),
            "\"a\"",
            t
        ));
        assert!(not_modified(&headers(IF_NONE_MATCH, "*"), "\"a\"", t));
        assert!(!not_modified(&headers(IF_NONE_MATCH, "\"b\""), "\"a\"", t));
    }

    #[test]
    fn if_modified_since() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let same = httpdate::fmt_http_date(t);
        let before = httpdate::fmt_http_date(t - Duration::from_secs(1));
        assert!(not_modified(&headers(IF_MODIFIED_SINCE, &same), "\"a\"", t));
        assert!(!not_modified(
            &headers(IF_MODIFIED_SINCE, &before),
            "\"a\"",
            t
        ));
    }

    #[test]
    fn if_range() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(range_applies(&HeaderMap::new(), "\"a\"", t));
        assert!(range_applies(&headers(IF_RANGE, "\"a\""), "\"a\"", t));
        assert!(!range_applies(&headers(IF_RANGE, "\"b\""), "\"a\"", t));
        assert!(range_applies(
            &headers(IF_RANGE, &httpdate::fmt_http_date(t)),
            "\"a\"",
            t
        ));
    }
}

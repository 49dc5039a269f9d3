//! `Range: bytes=...` parsing (RFC 9110 section 14), sans-IO.
//!
//! One range per request is served. A multi-range request is answered with the whole file
//! (RFC 9110 section 14.2 lets a server ignore Range), which every HLS player handles and
//! spares us multipart/byteranges bodies.

/// The outcome of reading a `Range` header against a representation of known length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range (absent, malformed, multiple, or not `bytes`): send everything (200).
    Full,
    /// Send `start..=end` (206).
    Partial {
        /// First byte offset, inclusive.
        start: u64,
        /// Last byte offset, inclusive.
        end: u64,
    },
    /// Syntactically valid but no byte of it exists (416).
    Unsatisfiable,
}

/// Interprets a `Range` header value for a representation of `len` bytes.
pub fn parse(header: &str, len: u64) -> RangeRequest {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    let spec = spec.trim();
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| -> Option<u64> {
        // `u64::from_str` accepts a leading `+`; the grammar is digits only.
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    if first.is_empty() {
        // Suffix range `-N`: the last N bytes.
        return match number(last) {
            None => RangeRequest::Full,
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if len == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
        };
    }
    let Some(start) = number(first) else {
        return RangeRequest::Full;
    };
    let end = if last.is_empty() {
        None
    } else {
        match number(last) {
            Some(end) if end >= start => Some(end),
            // `first > last` is invalid syntax: the header is ignored.
            _ => return RangeRequest::Full,
        }
    };
    if start >= len {
        return RangeRequest::Unsatisfiable;
    }
    let end = end.map_or(len - 1, |end| end.min(len - 1));
    RangeRequest::Partial { start, end }
}

#[cfg(test)]
mod tests {
    use super::RangeRequest::{Full, Partial, Unsatisfiable};
    use super::parse;

    #[test]
    fn ranges() {
        assert_eq!(parse("bytes=0-99", 1000), Partial { start: 0, end: 99 });
        assert_eq!(
            parse("bytes=100-", 1000),
            Partial {
                start: 100,
                end: 999
            }
        );
        assert_eq!(
            parse("bytes=-10", 1000),
            Partial {
                start: 990,
                end: 999
            }
        );
        assert_eq!(parse("bytes=-5000", 1000), Partial { start: 0, end: 999 });
        assert_eq!(
            parse("bytes=900-5000", 1000),
            Partial {
                start: 900,
                end: 999
            }
        );
        assert_eq!(parse("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(parse("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(parse("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse("bytes=5-1", 1000), Full);
        assert_eq!(parse("bytes=0-1,5-6", 1000), Full);
        assert_eq!(parse("items=0-1", 1000), Full);
        assert_eq!(parse("bytes=+1-2", 1000), Full);
        assert_eq!(parse("bytes=x", 1000), Full);
    }
}

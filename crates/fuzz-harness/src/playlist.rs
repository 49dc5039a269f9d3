//! Target `playlist`: the input is the body an origin answers to switcher-ctl's probe, parsed
//! by [`switcher_ctl::probe::parse_playlist`] and judged by [`switcher_ctl::probe::freshness`];
//! a master playlist's first variant URI, and a media playlist's newest segment URI (which the
//! probe fetches and checks with [`switcher_ctl::probe::check_ts`]), are resolved against the
//! probed URL as the prober does. The same bytes also go through `check_ts` as a segment body.
//!
//! Invariants: a hostile playlist makes the origin bad (an error), never a panic; a media
//! playlist's segment age is a number (not NaN) at any clock.

use std::time::{Duration, SystemTime};

use switcher_ctl::probe::{
    Parsed, check_ts, freshness, newest_segment_uri, parse_playlist, resolve,
};

/// The URL the contract probes (`http://HOST:PORT/hls/<stream>/index.m3u8`).
const PROBED_URL: &str = "http://127.0.0.1:8081/hls/demo/index.m3u8";

/// The target body.
pub fn run(data: &[u8]) {
    let base = PROBED_URL.parse().expect("valid URL");
    match parse_playlist(data) {
        Ok(Parsed::Media(facts)) => {
            for now in [
                SystemTime::UNIX_EPOCH,
                // 2025-01-01T00:00:00Z, when the seed playlists were written.
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600),
                SystemTime::UNIX_EPOCH + Duration::from_secs(u32::MAX as u64 * 4),
            ] {
                assert!(!facts.age_seconds(now).is_nan(), "segment age is NaN");
                if let Ok(f) = freshness(&facts, now) {
                    assert_eq!(f.newest_msn, facts.newest_msn);
                }
            }
            if let Some(uri) = newest_segment_uri(data) {
                let _ = resolve(&base, &uri);
            }
        }
        Ok(Parsed::Master { variant_uri }) => {
            let _ = resolve(&base, &variant_uri);
        }
        Err(_) => {}
    }
    let _ = check_ts(data);
}

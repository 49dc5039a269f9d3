//! Target `playlist`: the input is the body an origin answers to switcher-ctl's probe, parsed
//! by [`switcher_ctl::probe::parse_playlist`]; a master playlist's first variant URI is resolved
//! against the probed URL as the prober does before following it.
//!
//! Invariants: a hostile playlist makes the origin bad (an error), never a panic; a media
//! playlist's segment age is a number (not NaN) at any clock.

use std::time::{Duration, SystemTime};

use switcher_ctl::probe::{Parsed, parse_playlist, resolve};

/// The URL the contract probes (`http://HOST:PORT/hls/<stream>/index.m3u8`).
const PROBED_URL: &str = "http://127.0.0.1:8081/hls/demo/index.m3u8";

/// The target body.
pub fn run(data: &[u8]) {
    match parse_playlist(data) {
        Ok(Parsed::Media(facts)) => {
            for now in [
                SystemTime::UNIX_EPOCH,
                // 2025-01-01T00:00:00Z, when the seed playlists were written.
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600),
                SystemTime::UNIX_EPOCH + Duration::from_secs(u32::MAX as u64 * 4),
            ] {
                assert!(!facts.age_seconds(now).is_nan(), "segment age is NaN");
            }
        }
        Ok(Parsed::Master { variant_uri }) => {
            let base = PROBED_URL.parse().expect("valid URL");
            let _ = resolve(&base, &variant_uri);
        }
        Err(_) => {}
    }
}

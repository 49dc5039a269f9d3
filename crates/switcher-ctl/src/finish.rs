//! Whether a retired origin's connection may finish the response it is delivering, by why
//! the origin was retired (docs/ARCHITECTURE.md, "Stranded connections"). Pure.
//!
//! Finishing exists so a player does not lose the rest of a segment that is arriving at full
//! speed: an origin retired because its playlist went stale (its packager died), because it
//! answers 5xx or 404 to new requests, or because its playlist is unusable, still sends a
//! segment it has started at memory speed, and that segment is good. An origin retired
//! because it is slow or stuck is the opposite: the response in flight is the very thing that
//! crawls or stalls, and "finishing" it means the player waits out the whole finish budget
//! (6 s by default) for bytes a healthy origin would send in milliseconds. Those connections
//! are cut at once, and a player that retries (with a `Range` request, or the whole segment;
//! both origins' segments are byte-identical) gets the rest from the healthy origin.

use crate::decide::BadReason;
use crate::probe::ProbeError;

/// Whether connections of an origin retired for `reason` (its latest bad window's reason;
/// `None` when that window was good, e.g. an operator's override) may finish the response
/// they are delivering.
///
/// Cut at once (`false`): timeouts (the probe, or its connect), a broken or stalled newest
/// segment (or a corrupt one still listed: what is in flight may be it), a refused or failed
/// connection: the origin is slow, stuck, gone or serves broken segments.
/// May finish (`true`): HTTP errors, unusable or stale playlists, an MSN behind the other
/// origin's, and a failure of the probe itself: the origin still delivers at full speed.
pub fn may_finish(reason: Option<&BadReason>) -> bool {
    match reason {
        None | Some(BadReason::Stale { .. } | BadReason::Behind { .. }) => true,
        Some(BadReason::Probe(e)) => match e {
            ProbeError::Timeout
            | ProbeError::ConnectTimeout
            | ProbeError::Segment(_)
            | ProbeError::Corrupt(_)
            | ProbeError::CorruptListed(_)
            | ProbeError::Refused
            | ProbeError::Unreachable(_)
            | ProbeError::Io(_) => false,
            ProbeError::Http5xx(_)
            | ProbeError::HttpStatus(_)
            | ProbeError::Unparsable(_)
            | ProbeError::NoProgramDateTime
            | ProbeError::Empty
            | ProbeError::TooLarge(_)
            | ProbeError::BadUrl(_)
            | ProbeError::Invalid(_)
            | ProbeError::Internal(_) => true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(e: ProbeError) -> Option<BadReason> {
        Some(BadReason::Probe(e))
    }

    #[test]
    fn slow_stuck_or_gone_origins_are_cut_at_once() {
        for r in [
            probe(ProbeError::Timeout),
            probe(ProbeError::ConnectTimeout),
            probe(ProbeError::Segment("cut short".into())),
            probe(ProbeError::Corrupt("shrank".into())),
            probe(ProbeError::CorruptListed("seg7.ts".into())),
            probe(ProbeError::Refused),
            probe(ProbeError::Io("reset".into())),
            probe(ProbeError::Unreachable("no route to host".into())),
        ] {
            assert!(!may_finish(r.as_ref()), "{r:?}");
        }
    }

    #[test]
    fn origins_that_still_deliver_at_full_speed_may_finish() {
        for r in [
            None,
            Some(BadReason::Stale {
                age_seconds: 9.0,
                threshold_seconds: 6.0,
            }),
            Some(BadReason::Behind {
                msn: 1,
                other_msn: 5,
            }),
            probe(ProbeError::Http5xx(500)),
            probe(ProbeError::HttpStatus(404)),
            probe(ProbeError::Unparsable("x".into())),
            probe(ProbeError::NoProgramDateTime),
            probe(ProbeError::Empty),
            probe(ProbeError::Invalid("x".into())),
        ] {
            assert!(may_finish(r.as_ref()), "{r:?}");
        }
    }
}

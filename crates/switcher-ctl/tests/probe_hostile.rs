//! Hostile playlists: every one must become a `ProbeError` ("this origin is bad"), never a
//! panic and never a wrong age or MSN. The reproducers found against the prober first, then
//! many generated ones (a seeded generator, so a failure names the input that broke it), then
//! the same through a real probe over HTTP with the service's run loop still alive after it.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{Reply, TestServer};
use switcher_ctl::probe::{
    MAX_SEGMENT_SECONDS, Parsed, ProbeError, Prober, freshness, parse_playlist,
};

/// The crash reproducer: a 10^13 s segment after a PROGRAM-DATE-TIME overflowed the date sum
/// ("DateTime + TimeDelta overflowed").
const HUGE_EXTINF: &str = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:1\n#EXT-X-PROGRAM-DATE-TIME:2025-01-01T00:00:00.000Z\n#EXTINF:10000000000000,\n1.ts\n";
/// Read as a 1 s segment by m3u8-rs (the `e30` went into the title).
const EXPONENT_EXTINF: &str = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:1\n#EXT-X-PROGRAM-DATE-TIME:2025-01-01T00:00:00.000Z\n#EXTINF:1e30,\n1.ts\n";
/// The newest MSN wrapped to 0.
const MSN_OVERFLOW: &str = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:18446744073709551615\n#EXT-X-PROGRAM-DATE-TIME:2025-01-01T00:00:00.000Z\n#EXTINF:2,\n1.ts\n#EXTINF:2,\n2.ts\n";

fn invalid(body: &str) -> String {
    match parse_playlist(body.as_bytes()) {
        Err(ProbeError::Invalid(why)) => why,
        other => panic!("expected Invalid for {body:?}, got {other:?}"),
    }
}

#[test]
fn huge_extinf_is_invalid_not_a_panic() {
    let why = invalid(HUGE_EXTINF);
    assert!(why.contains("EXTINF"), "{why}");
}

#[test]
fn exponent_extinf_is_invalid_not_one_second() {
    let why = invalid(EXPONENT_EXTINF);
    assert!(why.contains("1e30"), "{why}");
    // The same with other spellings RFC 8216 4.2 does not allow.
    for d in [
        "-2", "+2", "2.", ".5", "2.0.0", "NaN", "inf", "0x10", "2 ", " 2", "1E3",
    ] {
        let body = EXPONENT_EXTINF.replace("1e30", d);
        invalid(&body);
    }
}

#[test]
fn media_sequence_overflow_is_invalid_not_zero() {
    let why = invalid(MSN_OVERFLOW);
    assert!(why.contains("18446744073709551615"), "{why}");
    // One segment at the largest MSN is fine: no addition overflows.
    let one = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:18446744073709551615\n#EXT-X-PROGRAM-DATE-TIME:2025-01-01T00:00:00.000Z\n#EXTINF:2,\n1.ts\n";
    match parse_playlist(one.as_bytes()) {
        Ok(Parsed::Media(m)) => assert_eq!(m.newest_msn, u64::MAX),
        other => panic!("{other:?}"),
    }
}

#[test]
fn longest_allowed_segment_still_parses() {
    let body = EXPONENT_EXTINF.replace("1e30", &format!("{MAX_SEGMENT_SECONDS}"));
    assert!(matches!(
        parse_playlist(body.as_bytes()),
        Ok(Parsed::Media(_))
    ));
    let body = EXPONENT_EXTINF.replace("1e30", &format!("{}.5", MAX_SEGMENT_SECONDS as u64));
    invalid(&body);
}

#[test]
fn dates_at_the_edge_of_the_calendar_are_invalid() {
    // chrono's last representable year is +262142: one more hour cannot be added.
    let body = HUGE_EXTINF
        .replace("2025-01-01T00:00:00.000Z", "+262142-12-31T23:59:59.000Z")
        .replace("10000000000000", "3600");
    match parse_playlist(body.as_bytes()) {
        // m3u8-rs may not read that year at all; either way it is an error, not a panic.
        Err(_) => {}
        Ok(p) => panic!("accepted {p:?}"),
    }
}

#[test]
fn far_future_dates_are_not_fresh() {
    let body = HUGE_EXTINF
        .replace("2025-01-01", "2999-01-01")
        .replace("10000000000000", "2");
    let Ok(Parsed::Media(facts)) = parse_playlist(body.as_bytes()) else {
        panic!("a valid playlist dated 2999");
    };
    match freshness(&facts, SystemTime::now()) {
        Err(ProbeError::Invalid(why)) => assert!(why.contains("future"), "{why}"),
        other => panic!("a playlist dated 2999 looked {other:?}"),
    }
}

/// xorshift64*: a seeded generator, enough to vary the inputs reproducibly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    /// The first item (a valid value) half the time, else any: enough inputs get past
    /// m3u8-rs to reach our own checks.
    fn mostly_first<'a>(&mut self, items: &[&'a str]) -> &'a str {
        if self.below(2) == 0 {
            items[0]
        } else {
            self.pick(items)
        }
    }
}

/// Numbers a hostile origin would try in numeric fields (the first is a good one).
const NUMBERS: &[&str] = &[
    "2.000",
    "0",
    "1",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999999999999999",
    "10000000000000",
    "3600",
    "3600.000001",
    "1e30",
    "-1",
    "1.7976931348623157e308",
    "340282356779733661637539395458142568448",
    "0.0000000000000000000001",
    "NaN",
    "",
    ".",
    "4294967296",
];

/// PROGRAM-DATE-TIME values, valid and not.
const DATES: &[&str] = &[
    "2025-01-01T00:00:00.000Z",
    "+262142-12-31T23:59:59.999Z",
    "-262143-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999+14:00",
    "0000-01-01T00:00:00-23:59",
    "2025-13-45T99:99:99Z",
    "2999-01-01T00:00:00Z",
    "garbage",
];

/// One generated playlist: a mix of the tags a probe reads, with hostile values, sometimes
/// cut short or with a byte flipped.
fn hostile(rng: &mut Rng) -> Vec<u8> {
    let mut s = String::from("#EXTM3U\n");
    if rng.below(4) != 0 {
        s.push_str(&format!(
            "#EXT-X-TARGETDURATION:{}\n",
            rng.mostly_first(NUMBERS)
        ));
    }
    if rng.below(4) != 0 {
        s.push_str(&format!(
            "#EXT-X-MEDIA-SEQUENCE:{}\n",
            rng.mostly_first(NUMBERS)
        ));
    }
    for i in 0..rng.below(6) {
        if rng.below(2) == 0 {
            s.push_str(&format!(
                "#EXT-X-PROGRAM-DATE-TIME:{}\n",
                rng.mostly_first(DATES)
            ));
        }
        if rng.below(8) == 0 {
            s.push_str("#EXT-X-DISCONTINUITY\n");
        }
        s.push_str(&format!(
            "#EXTINF:{}{}\ns{i}.ts\n",
            rng.mostly_first(NUMBERS),
            rng.mostly_first(&[",", "", ",title", ",\r"])
        ));
    }
    if rng.below(10) == 0 {
        s.push_str("#EXT-X-STREAM-INF:BANDWIDTH=1\nv/index.m3u8\n");
    }
    let mut bytes = s.into_bytes();
    if rng.below(5) == 0 && !bytes.is_empty() {
        let cut = rng.below(bytes.len());
        bytes.truncate(cut);
    }
    if rng.below(5) == 0 && !bytes.is_empty() {
        let at = rng.below(bytes.len());
        bytes[at] = rng.next() as u8;
    }
    bytes
}

#[test]
fn generated_hostile_playlists_never_panic_nor_lie() {
    const CASES: usize = 20_000;
    let mut rng = Rng(0x5eed_0fba_5eba_1100);
    let now = SystemTime::now();
    let mut media = 0;
    for case in 0..CASES {
        let body = hostile(&mut rng);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let parsed = parse_playlist(&body);
            if let Ok(Parsed::Media(facts)) = &parsed {
                let _ = freshness(facts, now);
            }
            parsed
        }));
        let parsed = outcome.unwrap_or_else(|_| {
            panic!(
                "case {case} panicked on {:?}",
                String::from_utf8_lossy(&body)
            )
        });
        if let Ok(Parsed::Media(facts)) = parsed {
            media += 1;
            // A media playlist that parsed has a sane end: within MAX_SEGMENT_SECONDS per
            // segment of a real date, and an MSN that did not wrap (no test input has more
            // than 6 segments, so an MSN below 6 only comes from a small MEDIA-SEQUENCE).
            let text = String::from_utf8_lossy(&body);
            let seq: Option<u64> = text
                .lines()
                .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
                .and_then(|v| v.parse().ok());
            if let Some(seq) = seq {
                assert!(
                    facts.newest_msn >= seq,
                    "case {case}: MSN {} wrapped below {seq}: {text:?}",
                    facts.newest_msn
                );
            }
            assert!(
                !text.contains("#EXTINF:1e30"),
                "case {case}: accepted an exponent duration: {text:?}"
            );
        }
    }
    // The generator must also produce playlists that parse, or it tests nothing past m3u8-rs.
    assert!(media > CASES / 50, "only {media} media playlists parsed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_origin_is_bad_over_http_and_probing_goes_on() {
    for body in [HUGE_EXTINF, EXPONENT_EXTINF, MSN_OVERFLOW] {
        let server = TestServer::fixed(Reply::ok(body.into())).await;
        let prober = Prober::new(
            Duration::from_secs(2),
            Duration::from_secs(1),
            1 << 20,
            false,
        );
        let r = prober.probe(&server.url("/hls/demo/index.m3u8")).await;
        assert!(
            matches!(r.outcome, Err(ProbeError::Invalid(_))),
            "{body:?}: {:?}",
            r.outcome
        );
        assert_eq!(r.status, Some(200));
        assert_eq!(r.outcome.unwrap_err().kind(), "invalid");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_keeps_running_against_a_hostile_origin() {
    use common::{FakeDataPlane, http};
    use switcher_common::ORIGIN_PRIMARY;
    let hostile = TestServer::fixed(Reply::ok(HUGE_EXTINF.into())).await;
    let good = TestServer::start(Arc::new(|_| {
        Reply::ok(common::playlist_aged(100, Duration::from_secs(1)))
    }))
    .await;
    let config = switcher_ctl::config::Config {
        primary_base_url: hostile.base_url(),
        backup_base_url: good.base_url(),
        check_interval_seconds: 0.05,
        // The test servers answer every path with the playlist: no segments to check.
        probe_segments: false,
        ..Default::default()
    }
    .validate()
    .expect("valid config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let admin = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let dp = FakeDataPlane::new(ORIGIN_PRIMARY);
    let task = tokio::spawn(switcher_ctl::service::run(
        config,
        Box::new(dp.clone()),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let healthz = || async move {
        let (_, body) = http(admin, "GET", "/healthz", "").await;
        serde_json::from_str::<serde_json::Value>(&body).expect("json")
    };
    let h = test_kit::wait::try_poll_until_async(Duration::from_secs(10), || async move {
        let h = healthz().await;
        (h["active"] == "backup").then_some(h)
    })
    .await
    .unwrap_or_else(|| panic!("never failed over from the hostile primary"));
    let err = h["origins"]["primary"]["last_error"].as_str().unwrap_or("");
    assert!(err.contains("invalid playlist"), "{h:#}");
    drop(stop);
    task.await
        .expect("service task did not panic")
        .expect("service ran");
}

//! Old variable names through clap, with the process environment (this file holds one test,
//! so nothing else reads the environment while it changes it): a name read under either
//! spelling gives the same value, and when both are set the current (prefixed) one wins, for
//! a deprecated name and for a seed name alike.

use clap::{CommandFactory as _, FromArgMatches as _};
use config_schema::{DeprecatedEnv, OldName, apply_deprecated_env};

#[derive(clap::Parser, Debug, PartialEq)]
struct Cli {
    #[arg(long, env = "DEMO_OLD_NAMES_URL", default_value = "default")]
    url: String,
    #[arg(long, env = "DEMO_OLD_NAMES_KEEP", default_value_t = 1)]
    keep: u32,
}

const OLD: &[DeprecatedEnv] = &[
    DeprecatedEnv {
        old: "OLD_NAMES_URL",
        new: "DEMO_OLD_NAMES_URL",
        kind: OldName::Seed,
    },
    DeprecatedEnv {
        old: "OLD_NAMES_KEEP",
        new: "DEMO_OLD_NAMES_KEEP",
        kind: OldName::Deprecated,
    },
];

/// Parses no arguments with exactly `vars` set among the four names.
fn parse_with(vars: &[(&str, &str)]) -> Cli {
    for name in [
        "OLD_NAMES_URL",
        "DEMO_OLD_NAMES_URL",
        "OLD_NAMES_KEEP",
        "DEMO_OLD_NAMES_KEEP",
    ] {
        // SAFETY: this test binary runs one test, on one thread; nothing else reads the
        // environment meanwhile.
        unsafe { std::env::remove_var(name) };
    }
    for (name, value) in vars {
        // SAFETY: as above.
        unsafe { std::env::set_var(name, value) };
    }
    let matches = apply_deprecated_env(Cli::command(), OLD)
        .try_get_matches_from(["demo"])
        .expect("parses");
    Cli::from_arg_matches(&matches).expect("fills the struct")
}

#[test]
fn either_spelling_gives_the_same_config_and_the_prefixed_one_wins() {
    let canonical = parse_with(&[
        ("DEMO_OLD_NAMES_URL", "http://a"),
        ("DEMO_OLD_NAMES_KEEP", "7"),
    ]);
    assert_eq!(
        canonical,
        Cli {
            url: "http://a".into(),
            keep: 7
        }
    );
    let old = parse_with(&[("OLD_NAMES_URL", "http://a"), ("OLD_NAMES_KEEP", "7")]);
    assert_eq!(old, canonical, "the old spellings mean the same");
    let both = parse_with(&[
        ("OLD_NAMES_URL", "http://old"),
        ("DEMO_OLD_NAMES_URL", "http://a"),
        ("OLD_NAMES_KEEP", "9"),
        ("DEMO_OLD_NAMES_KEEP", "7"),
    ]);
    assert_eq!(both, canonical, "the prefixed names win");
    assert_eq!(
        parse_with(&[]),
        Cli {
            url: "default".into(),
            keep: 1
        }
    );
}

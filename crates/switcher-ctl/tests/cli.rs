//! The real `switcher-ctl run` binary failing early: bad configuration values exit 2 with the
//! key named, and a wrong interface fails before anything is mounted, created or attached.
//! Plus the bpffs guard of the loader: a mount it made is undone unless kept.
//! The mount tests need root (CAP_SYS_ADMIN); without it they say so and check what they can.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::TempDir;
use switcher_ctl::config::DEPRECATED_ENV;
use switcher_ctl::loader::ensure_bpffs;

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The mount table of this process (the binary runs in the same mount namespace). Tests
/// compare only the mounts under their own temp dir (`mounts_under`): other tests, and other
/// processes on the machine, mount and unmount elsewhere meanwhile.
fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo")
}

/// Mount points under `dir` (field 5 of mountinfo).
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().to_string();
    mountinfo()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| *m == dir || m.starts_with(&format!("{dir}/")))
        .map(str::to_string)
        .collect()
}

/// `switcher-ctl run` with a pin root and admin socket inside `dir`, an admin port of 0, no
/// inherited switcher variables (nor their seed or deprecated names), and `env` on top.
fn run_binary(dir: &Path, pin_root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switcher-ctl"));
    for (key, _) in std::env::vars() {
        if key.starts_with("SWITCHER_") || DEPRECATED_ENV.iter().any(|d| d.old == key) {
            cmd.env_remove(key);
        }
    }
    cmd.arg("run")
        .arg("--pin-root")
        .arg(pin_root)
        .arg("--admin")
        .arg("127.0.0.1:0")
        .arg("--admin-socket")
        .arg(dir.join("admin.sock"))
        .args(args)
        .envs(env.iter().copied());
    cmd.output().expect("run switcher-ctl")
}

#[test]
fn out_of_range_values_exit_2_before_touching_anything() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "SWITCHER_CHECK_INTERVAL_SECONDS",
            "1e20",
            "SWITCHER_CHECK_INTERVAL_SECONDS must be a number of seconds from 0.001 to 86400, got 100000000000000000000",
        ),
        (
            "SWITCHER_CHECK_INTERVAL_SECONDS",
            "1e-10",
            "SWITCHER_CHECK_INTERVAL_SECONDS must be a number of seconds from 0.001 to 86400, got 0.0000000001",
        ),
        (
            "SWITCHER_PROBE_TIMEOUT_SECONDS",
            "1e20",
            "SWITCHER_PROBE_TIMEOUT_SECONDS must be a number of seconds from 0.001 to 86400, got 100000000000000000000",
        ),
        // The name before the rename still works, with a warning.
        (
            "PROBE_TIMEOUT_SECONDS",
            "1e20",
            "SWITCHER_PROBE_TIMEOUT_SECONDS must be a number of seconds from 0.001 to 86400, got 100000000000000000000",
        ),
        (
            "SWITCHER_SEGMENT_AGE_THRESHOLD_SECONDS",
            "NaN",
            "SWITCHER_SEGMENT_AGE_THRESHOLD_SECONDS must be a number of seconds from 0.001 to 86400, got NaN",
        ),
        (
            "SWITCHER_ADMIN_MAX_CONNECTIONS",
            "0",
            "SWITCHER_ADMIN_MAX_CONNECTIONS must be from 1 to 4096, got 0",
        ),
    ];
    for (key, value, message) in cases {
        let dir = TempDir::new("cli-config");
        let pin_root = dir.path().join("bpf/pins");
        let out = run_binary(dir.path(), &pin_root, &["--iface", "lo"], &[(key, value)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}={value}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid configuration: {message}")),
            "{key}={value}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        if *key == "PROBE_TIMEOUT_SECONDS" {
            assert!(
                stderr.contains(
                    "PROBE_TIMEOUT_SECONDS is deprecated; set SWITCHER_PROBE_TIMEOUT_SECONDS"
                ),
                "{stderr}"
            );
        }
        // Nothing made: no pin root (so nothing pinned or attached), no socket, no mount.
        assert!(
            !dir.path().join("bpf").exists(),
            "{key}={value} created the pin root"
        );
        assert!(!dir.path().join("admin.sock").exists());
        assert_eq!(
            mounts_under(dir.path()),
            Vec::<String>::new(),
            "{key}={value} mounted something"
        );
    }
}

/// The seed switcher's six names are a second spelling of the `SWITCHER_` ones (README,
/// "Configuration"): either spelling of a bad value gives the same error, naming the canonical
/// key, with a line at info level (not a deprecation warning) when the seed name was read; when
/// both are set, the prefixed one wins and the seed one is reported as ignored.
#[test]
fn seed_names_mean_the_same_and_the_prefixed_ones_win() {
    // Two base URLs that are the same once joined with the playlist path, so that an error
    // shows which playlist path was read.
    let same = [
        ("SWITCHER_PRIMARY_BASE_URL", "http://127.0.0.1:1"),
        ("SWITCHER_BACKUP_BASE_URL", "http://127.0.0.1:1"),
    ];
    /// The seed's name, a bad value, another bad value, the variables every run gets, and
    /// the error the first bad value gives.
    type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            "PRIMARY_BASE_URL",
            "ftp://a",
            "ftp://b",
            &[],
            "SWITCHER_PRIMARY_BASE_URL: \"ftp://a/hls/demo/index.m3u8\" is not an http:// URL",
        ),
        (
            "BACKUP_BASE_URL",
            "ftp://a",
            "ftp://b",
            &[],
            "SWITCHER_BACKUP_BASE_URL: \"ftp://a/hls/demo/index.m3u8\" is not an http:// URL",
        ),
        (
            "PLAYLIST_PATH",
            "/a.m3u8",
            "/b.m3u8",
            &same,
            "primary and backup base URLs are the same (http://127.0.0.1:1/a.m3u8)",
        ),
        (
            "CHECK_INTERVAL_SECONDS",
            "1e20",
            "NaN",
            &[],
            "SWITCHER_CHECK_INTERVAL_SECONDS must be a number of seconds from 0.001 to 86400, got 100000000000000000000",
        ),
        (
            "SEGMENT_AGE_THRESHOLD_SECONDS",
            "1e20",
            "NaN",
            &[],
            "SWITCHER_SEGMENT_AGE_THRESHOLD_SECONDS must be a number of seconds from 0.001 to 86400, got 100000000000000000000",
        ),
        (
            "REQUIRED_WINDOWS",
            "0",
            "100001",
            &[],
            "SWITCHER_REQUIRED_WINDOWS must be from 1 to 100000, got 0",
        ),
    ];
    for (seed, bad, other, base, message) in cases {
        let canonical = format!("SWITCHER_{seed}");
        let runs: [&[(&str, &str)]; 3] = [
            &[(&canonical, bad)],
            &[(seed, bad)],
            &[(&canonical, bad), (seed, other)],
        ];
        for vars in runs {
            let dir = TempDir::new("cli-seed");
            let pin_root = dir.path().join("bpf/pins");
            let mut env = base.to_vec();
            env.extend_from_slice(vars);
            let out = run_binary(dir.path(), &pin_root, &["--iface", "lo"], &env);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{vars:?}: {stderr}");
            assert!(
                stderr.contains(&format!("invalid configuration: {message}")),
                "{vars:?}: {stderr}"
            );
            assert!(!stderr.contains("deprecated"), "{vars:?}: {stderr}");
            let read_as = format!("{seed} (the seed's name) read as {canonical}");
            let ignored = format!("{seed} is ignored because {canonical} is set");
            let only_seed = vars.len() == 1 && vars[0].0 == *seed;
            assert_eq!(stderr.contains(&read_as), only_seed, "{vars:?}: {stderr}");
            if only_seed {
                let line = stderr.lines().find(|l| l.contains(&read_as)).expect("line");
                assert!(line.contains("INFO"), "at info level: {line}");
            }
            assert_eq!(
                stderr.contains(&ignored),
                vars.len() == 2,
                "{vars:?}: {stderr}"
            );
            assert!(
                !dir.path().join("bpf").exists(),
                "{vars:?} created the pin root"
            );
        }
    }
}

#[test]
fn bad_origin_lists_exit_2_before_touching_anything() {
    let seventeen: Vec<String> = (1..=17)
        .map(|i| format!("o{i}=http://127.0.0.1:{}", 8080 + i))
        .collect();
    let seventeen = seventeen.join(" ");
    /// Flags, environment, and what the error says.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &[
                "--origin",
                "a=http://127.0.0.1:8081",
                "--origin",
                "a=http://127.0.0.1:8082",
            ],
            &[],
            "invalid configuration: two origins have the same name \"a\"",
        ),
        (
            &[],
            &[("SWITCHER_ORIGINS", &seventeen)],
            "invalid configuration: SWITCHER_ORIGINS: 17 origins given, at most 16 are supported",
        ),
        (
            &["--origin", "a=http://127.0.0.1:8081,weight=20000"],
            &[],
            "invalid configuration: SWITCHER_ORIGINS must be from 0 to 10000, got 20000",
        ),
        // A weight that is not a number is clap's usage error, exit 2 as well.
        (
            &["--origin", "a=http://127.0.0.1:8081,weight=heavy"],
            &[],
            "weight \"heavy\" of origin \"a\" is not a whole number",
        ),
        (
            &["--policy", "random"],
            &[],
            "invalid value 'random' for '--policy <POLICY>'",
        ),
    ];
    for (args, env, message) in cases {
        let dir = TempDir::new("cli-origins");
        let pin_root = dir.path().join("bpf/pins");
        let mut all = vec!["--iface", "lo"];
        all.extend_from_slice(args);
        let out = run_binary(dir.path(), &pin_root, &all, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?} {env:?}: {stderr}");
        assert!(
            !dir.path().join("bpf").exists(),
            "{args:?} created the pin root"
        );
        assert!(!dir.path().join("admin.sock").exists());
    }
}

#[test]
fn unknown_interface_fails_before_mounting_anything() {
    let dir = TempDir::new("cli-iface");
    // A directory with contents where the old code mounted a bpffs (the pin root's parent).
    let parent = dir.path().join("some/dir");
    std::fs::create_dir_all(&parent).expect("mkdir");
    std::fs::write(parent.join("keep.txt"), "still here").expect("write");
    let pin_root = parent.join("pins");
    let out = run_binary(dir.path(), &pin_root, &["--iface", "nonexist0"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no interface named \"nonexist0\""),
        "{stderr}"
    );
    assert_eq!(
        mounts_under(dir.path()),
        Vec::<String>::new(),
        "the failed run mounted something"
    );
    assert_eq!(
        std::fs::read_to_string(parent.join("keep.txt")).expect("still visible"),
        "still here"
    );
    assert!(!pin_root.exists(), "the pin root was created");
    assert!(
        !dir.path().join("admin.sock").exists(),
        "the admin socket outlived the run"
    );
}

#[test]
fn bpffs_goes_on_the_pin_root_only_and_is_undone_unless_kept() {
    let dir = TempDir::new("cli-bpffs");
    let pin_root = dir.path().join("a/b/pins");
    if !is_root() {
        eprintln!(
            "not root: mounting needs CAP_SYS_ADMIN; checking only that the failure leaves nothing"
        );
        assert!(ensure_bpffs(&pin_root).is_err());
        assert!(!dir.path().join("a").exists());
        return;
    }
    assert!(mounts_under(dir.path()).is_empty());
    let guard = ensure_bpffs(&pin_root).expect("mount on the pin root");
    assert!(guard.mounted());
    assert_eq!(
        mounts_under(dir.path()),
        vec![pin_root.to_string_lossy().to_string()],
        "mounted on the pin root itself, nowhere else"
    );
    assert!(pin_root.join("maps").is_dir());
    drop(guard);
    assert!(
        mounts_under(dir.path()).is_empty(),
        "dropping the guard unmounts"
    );
    assert!(
        !dir.path().join("a").exists(),
        "and removes what it created"
    );

    // A non-empty directory not on a bpffs is never mounted over.
    let full = dir.path().join("full");
    std::fs::create_dir_all(&full).expect("mkdir");
    std::fs::write(full.join("data"), "x").expect("write");
    let err = ensure_bpffs(&full).expect_err("refuses to hide contents");
    assert!(format!("{err:#}").contains("not empty"), "{err:#}");
    assert!(mounts_under(dir.path()).is_empty());

    // Kept: stays mounted; a second call finds the bpffs and mounts nothing more.
    let kept = dir.path().join("kept");
    ensure_bpffs(&kept).expect("mount").keep();
    let unmount = Unmount(kept.clone());
    let again = ensure_bpffs(&kept.join("inner")).expect("on a bpffs already");
    assert!(!again.mounted());
    again.keep();
    assert_eq!(
        mounts_under(dir.path()),
        vec![kept.to_string_lossy().to_string()]
    );
    drop(unmount);
    assert!(mounts_under(dir.path()).is_empty());
}

/// Unmounts a test's mount when dropped, also when the test fails.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

//! The deployment files against their sources, and the units against systemd itself:
//!
//! * `cargo xtask codegen --check`: `scripts/edge.env.example`, the units' generated blocks
//!   and drop-ins, `hls-edge.target`, prometheus.yml's targets and the README's table are
//!   what the layout and the binaries' flags give. Generation refuses a unit variable that is
//!   not a flag of its binary, a variable read by two binaries and a layout value the binary
//!   does not accept, so those hold by construction once the check passes.
//! * `systemd-analyze verify` on every unit and instance (with its drop-ins): syntax, known
//!   keys and values, executables present. It works offline on unit files (systemd 252,
//!   Debian 12), without systemd as PID 1.
//! * `systemd-analyze security --offline=true`: systemd's own reading of each unit's
//!   privileges: the switcher keeps exactly the capabilities it needs, no unit can gain
//!   CAP_SYS_ADMIN, every other service runs as a user without capabilities.
//!
//! The binaries come from `$CARGO_TARGET_DIR/debug` or `target/debug` (`cargo xtask test`
//! builds them first). No root needed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use xtask::codegen;
use xtask::layout::{self, INSTALL_DIR, Program};
use xtask::workspace;

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("hls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

#[test]
fn generated_files_are_up_to_date() {
    let ws = workspace();
    let bins = codegen::debug_bin_dir(&ws);
    codegen::run(&ws, &bins, true).unwrap_or_else(|e| panic!("{e:#}"));

    // And the check notices drift: a copy of the files with one unit line changed.
    let tmp = TempDir::new("codegen-drift");
    for dir in ["scripts", "monitoring"] {
        copy_dir(&ws.join(dir), &tmp.0.join(dir));
    }
    std::fs::copy(ws.join("README.md"), tmp.0.join("README.md")).expect("copy README");
    let unit = tmp.0.join("scripts/systemd/hls-origin@.service");
    let text = std::fs::read_to_string(&unit).expect("origin unit");
    let edited = text.replace(
        "Environment=ORIGIN_ROOT=/var/lib/hls-edge/%i",
        "Environment=ORIGIN_ROOT=/srv/elsewhere",
    );
    assert_ne!(edited, text, "the origin unit sets ORIGIN_ROOT");
    std::fs::write(&unit, edited).expect("write");
    let err = codegen::run(&tmp.0, &bins, true).expect_err("drift must fail the check");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("hls-origin@.service")
            && msg.contains("-Environment=ORIGIN_ROOT=/srv/elsewhere"),
        "{msg}"
    );
}

/// Every unit name to verify: plain units, and each instance of a template (its drop-ins are
/// read with it).
fn unit_names() -> Vec<String> {
    let mut names: Vec<String> = layout::services().into_iter().map(|s| s.unit).collect();
    names.push(layout::EDGE_TARGET.into());
    names
}

/// `systemd-analyze verify` of `units` in `dir`: the lines about them (anything it reports
/// about a unit in `dir` is a problem; it exits 0 on many of them).
fn verify(dir: &Path, units: &[String]) -> String {
    let mut problems = String::new();
    for name in units {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no", "--generators=no"])
            .arg(dir.join(name))
            .output()
            .expect("systemd-analyze (Debian package systemd; scripts/setup installs it)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ours: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(dir.to_string_lossy().as_ref()))
            .collect();
        if !out.status.success() || !ours.is_empty() {
            problems.push_str(&format!("{name} ({}):\n{text}\n", out.status));
        }
    }
    problems
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let ws = workspace();
    let tmp = TempDir::new("systemd-verify");
    let dir = tmp.0.join("units");
    copy_dir(&ws.join("scripts/systemd"), &dir);
    // verify checks that every Exec command exists: point the units at this build's binaries
    // (and, on a build machine without ffmpeg, the publisher at /bin/true).
    let bins = codegen::debug_bin_dir(&ws)
        .canonicalize()
        .expect("target/debug (build the binaries first)");
    for e in std::fs::read_dir(&dir).expect("units").flatten() {
        if e.path().is_file() {
            let mut text = std::fs::read_to_string(e.path()).expect("unit");
            text = text.replace(&format!("{INSTALL_DIR}/"), &format!("{}/", bins.display()));
            if !Path::new("/usr/bin/ffmpeg").exists() {
                text = text.replace("/usr/bin/ffmpeg", "/bin/true");
            }
            std::fs::write(e.path(), text).expect("write unit");
        }
    }
    let units = unit_names();
    let problems = verify(&dir, &units);
    assert!(problems.is_empty(), "{problems}");

    // The check catches a bad value in an instance's drop-in.
    let drop_in = dir.join("hls-origin@backup.service.d/instance.conf");
    let mut text = std::fs::read_to_string(&drop_in).expect("drop-in");
    text.push_str("Restart=sometimes\n");
    std::fs::write(&drop_in, text).expect("write");
    let problems = verify(&dir, &["hls-origin@backup.service".to_string()]);
    assert!(
        problems.contains("instance.conf") && problems.contains("sometimes"),
        "not caught: {problems:?}"
    );
}

/// `systemd-analyze security --offline=true` of one unit: each check's name and whether the
/// unit passes it.
fn security(dir: &Path, unit: &str) -> BTreeMap<String, bool> {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--json=short"])
        .arg(dir.join(unit))
        .output()
        .expect("systemd-analyze security");
    assert!(
        out.status.success(),
        "{unit}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checks: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("security JSON");
    checks
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c["set"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

#[test]
fn units_grant_only_the_capabilities_they_need() {
    let ws = workspace();
    let tmp = TempDir::new("systemd-security");
    copy_dir(&ws.join("scripts/systemd"), &tmp.0);
    // Capability checks the switcher fails on purpose (see hls-switcher.service); systemd 252
    // has no check of its own for CAP_PERFMON.
    let switcher_caps = [
        "CapabilityBoundingSet=~CAP_BPF",
        "CapabilityBoundingSet=~CAP_NET_ADMIN",
    ];
    let mut checked = 0;
    for s in layout::services() {
        let result = security(&tmp.0, &s.unit);
        let cap_checks: Vec<(&String, &bool)> = result
            .iter()
            .filter(|(k, _)| k.starts_with("CapabilityBoundingSet=~"))
            .collect();
        assert!(cap_checks.len() > 20, "{}: {result:?}", s.unit);
        assert_eq!(
            result.get("CapabilityBoundingSet=~CAP_SYS_ADMIN"),
            Some(&true),
            "{}: CAP_SYS_ADMIN is grantable",
            s.unit
        );
        assert_eq!(result.get("NoNewPrivileges="), Some(&true), "{}", s.unit);
        let failed: Vec<&str> = cap_checks
            .iter()
            .filter(|(_, ok)| !**ok)
            .map(|(k, _)| k.as_str())
            .collect();
        let privileged = matches!(
            s.program,
            Program::Binary {
                name: "switcher-ctl",
                ..
            }
        );
        if privileged {
            assert_eq!(failed, switcher_caps, "{}", s.unit);
        } else {
            assert_eq!(failed, Vec::<&str>::new(), "{}: capabilities", s.unit);
            assert_eq!(
                result.get("User=/DynamicUser="),
                Some(&true),
                "{}: runs as root",
                s.unit
            );
        }
        checked += 1;
    }
    assert_eq!(checked, layout::services().len());
}

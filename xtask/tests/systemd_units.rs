//! Checks of the systemd units in `scripts/systemd/` and of `scripts/edge.env.example`:
//!
//! * every unit parses: a strict parser of our own (sections, known keys, value syntax) always,
//!   and `systemd-analyze verify` as well where it works on this machine;
//! * every flag and subcommand an `Exec*=` line passes exists in that binary's `--help`;
//! * every variable in `edge.env.example` is read by some binary (found in the crates' sources),
//!   every variable of every binary is documented there, no variable is read by two binaries,
//!   and the per-instance values (ports, directories) differ between the instances and are not
//!   set in the shared file;
//! * the switcher has exactly CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (no CAP_SYS_ADMIN), every
//!   other service runs as `hlsedge` with no capabilities.
//!
//! The binaries come from `SYSTEMD_TEST_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`, else
//! `<workspace>/target/debug` (`cargo xtask test` builds them first). No root needed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail, ensure};

/// The service binaries the units start from /usr/local/bin.
const OUR_BINS: [&str; 4] = ["ingest", "packager", "origin", "switcher-ctl"];
/// Where the units expect them.
const INSTALL_DIR: &str = "/usr/local/bin/";
/// Template instances the edge runs.
const INSTANCES: [&str; 2] = ["primary", "backup"];
/// Capabilities of `switcher-ctl run` (see hls-switcher.service for why each is needed).
const SWITCHER_CAPS: [&str; 3] = ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"];
/// Capabilities of `switcher-ctl detach`.
const DETACH_CAPS: [&str; 2] = ["CAP_BPF", "CAP_NET_ADMIN"];
/// Every file the directory must contain (besides README.md).
const UNIT_FILES: [&str; 11] = [
    "hls-ingest.service",
    "hls-packager@.service",
    "hls-origin@.service",
    "hls-switcher.service",
    "hls-switcher-detach.service",
    "hls-publisher-testsrc.service",
    "hls-edge.target",
    "hls-packager@primary.service.d/instance.conf",
    "hls-packager@backup.service.d/instance.conf",
    "hls-origin@primary.service.d/instance.conf",
    "hls-origin@backup.service.d/instance.conf",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

fn units_dir() -> PathBuf {
    workspace().join("scripts/systemd")
}

fn env_example() -> PathBuf {
    workspace().join("scripts/edge.env.example")
}

fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SYSTEMD_TEST_BIN_DIR") {
        return PathBuf::from(d);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return workspace().join(t).join("debug");
    }
    workspace().join("target/debug")
}

// ---------------------------------------------------------------------------------------------
// A strict unit-file parser
// ---------------------------------------------------------------------------------------------

/// One `Key=value` line.
#[derive(Debug, Clone)]
struct Entry {
    section: String,
    key: String,
    value: String,
    line: usize,
}

/// A parsed unit file or drop-in.
#[derive(Debug, Clone)]
struct UnitFile {
    /// Path relative to scripts/systemd (e.g. `hls-origin@.service`).
    name: String,
    entries: Vec<Entry>,
}

impl UnitFile {
    /// Every value of `key` in `section`, in file order.
    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|e| e.section == section && e.key == key)
            .map(|e| e.value.as_str())
            .collect()
    }

    /// The last value of `key` in `section` (what systemd uses for single-valued keys).
    fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.all(section, key).last().copied()
    }

    /// A list-valued key: whitespace-separated words of every assignment; an empty
    /// assignment resets the list, as in systemd.
    fn list(&self, section: &str, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        for v in self.all(section, key) {
            if v.trim().is_empty() {
                out.clear();
            } else {
                out.extend(v.split_whitespace().map(str::to_string));
            }
        }
        out
    }
}

/// Keys that may be given more than once (lists, or several commands).
const MULTI_KEYS: &[&str] = &[
    "After",
    "Before",
    "Wants",
    "Requires",
    "PartOf",
    "Conflicts",
    "WantedBy",
    "Environment",
    "EnvironmentFile",
    "ExecStartPre",
    "ExecStartPost",
    "ExecStopPost",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "SystemCallFilter",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "StateDirectory",
    "RestrictAddressFamilies",
    "Documentation",
];

/// Keys of type boolean.
const BOOL_KEYS: &[&str] = &[
    "DefaultDependencies",
    "PrivateMounts",
    "PrivateUsers",
    "NoNewPrivileges",
    "DynamicUser",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectHostname",
    "RestrictNamespaces",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "RemoveIPC",
    "RemainAfterExit",
];

/// Keys holding a time span.
const TIME_KEYS: &[&str] = &[
    "RestartSec",
    "TimeoutStopSec",
    "TimeoutStartSec",
    "StartLimitIntervalSec",
];

/// Keys holding shell-less command lines.
const EXEC_KEYS: &[&str] = &[
    "ExecStartPre",
    "ExecStart",
    "ExecStartPost",
    "ExecStop",
    "ExecStopPost",
];

/// The keys each section may hold: what these units use plus close relatives. Anything else is
/// a typo or a key systemd would ignore with only a warning.
fn known_keys(section: &str) -> &'static [&'static str] {
    match section {
        "Unit" => &[
            "Description",
            "Documentation",
            "After",
            "Before",
            "Wants",
            "Requires",
            "PartOf",
            "Conflicts",
            "DefaultDependencies",
            "StartLimitIntervalSec",
            "StartLimitBurst",
            "ConditionPathExists",
        ],
        "Service" => &[
            "Type",
            "ExecStartPre",
            "ExecStart",
            "ExecStartPost",
            "ExecStop",
            "ExecStopPost",
            "Restart",
            "RestartSec",
            "TimeoutStopSec",
            "TimeoutStartSec",
            "RemainAfterExit",
            "Environment",
            "EnvironmentFile",
            "User",
            "Group",
            "DynamicUser",
            "CapabilityBoundingSet",
            "AmbientCapabilities",
            "NoNewPrivileges",
            "ProtectSystem",
            "ProtectHome",
            "PrivateTmp",
            "PrivateDevices",
            "ProtectKernelTunables",
            "ProtectKernelModules",
            "ProtectKernelLogs",
            "ProtectControlGroups",
            "ProtectClock",
            "ProtectHostname",
            "ProtectProc",
            "ProcSubset",
            "RestrictNamespaces",
            "RestrictRealtime",
            "RestrictSUIDSGID",
            "LockPersonality",
            "MemoryDenyWriteExecute",
            "RemoveIPC",
            "PrivateMounts",
            "PrivateUsers",
            "IPAddressDeny",
            "IPAddressAllow",
            "UMask",
            "RestrictAddressFamilies",
            "SystemCallArchitectures",
            "SystemCallFilter",
            "SystemCallErrorNumber",
            "ReadWritePaths",
            "ReadOnlyPaths",
            "StateDirectory",
            "StateDirectoryMode",
            "RuntimeDirectory",
            "RuntimeDirectoryMode",
            "LimitNOFILE",
            "LimitMEMLOCK",
            "KillSignal",
        ],
        "Install" => &["WantedBy", "Alias"],
        _ => &[],
    }
}

/// Sections allowed per file kind.
fn allowed_sections(name: &str) -> &'static [&'static str] {
    if name.ends_with(".target") {
        &["Unit", "Install"]
    } else {
        &["Unit", "Service", "Install"]
    }
}

/// Parses `text` strictly. Every problem is reported, not only the first.
fn parse_unit(name: &str, text: &str) -> Result<UnitFile> {
    let mut problems = Vec::new();
    let mut entries: Vec<Entry> = Vec::new();
    let mut section: Option<String> = None;
    let mut seen_sections = BTreeSet::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let start = i + 1;
        let raw = lines[i];
        i += 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if trimmed.starts_with('[') {
            if !trimmed.ends_with(']') {
                problems.push(format!(
                    "{name}:{start}: malformed section header {trimmed:?}"
                ));
                continue;
            }
            let s = &trimmed[1..trimmed.len() - 1];
            if !allowed_sections(name).contains(&s) {
                problems.push(format!(
                    "{name}:{start}: section [{s}] not allowed in this file"
                ));
            }
            if !seen_sections.insert(s.to_string()) {
                problems.push(format!("{name}:{start}: section [{s}] appears twice"));
            }
            section = Some(s.to_string());
            continue;
        }
        // Backslash continuation: the logical line goes on; comment lines inside are skipped.
        let mut logical = trimmed.to_string();
        while logical.ends_with('\\') {
            logical.pop();
            logical.push(' ');
            loop {
                if i >= lines.len() {
                    problems.push(format!("{name}:{start}: continuation at end of file"));
                    break;
                }
                let next = lines[i].trim();
                i += 1;
                if next.starts_with('#') || next.starts_with(';') {
                    continue;
                }
                logical.push_str(next);
                break;
            }
        }
        let Some(sec) = &section else {
            problems.push(format!("{name}:{start}: assignment before any section"));
            continue;
        };
        let Some((key, value)) = logical.split_once('=') else {
            problems.push(format!(
                "{name}:{start}: not a section, comment or Key=value: {logical:?}"
            ));
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
            problems.push(format!("{name}:{start}: bad key {key:?}"));
            continue;
        }
        if !known_keys(sec).contains(&key) {
            problems.push(format!("{name}:{start}: unknown key {key:?} in [{sec}]"));
        }
        if !MULTI_KEYS.contains(&key) && entries.iter().any(|e| &e.section == sec && e.key == key) {
            problems.push(format!("{name}:{start}: {key}= set twice in [{sec}]"));
        }
        if let Err(e) = check_value(key, value) {
            problems.push(format!("{name}:{start}: {key}={value}: {e}"));
        }
        entries.push(Entry {
            section: sec.clone(),
            key: key.into(),
            value: value.into(),
            line: start,
        });
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(UnitFile {
        name: name.into(),
        entries,
    })
}

/// Whether `s` is a systemd time span (`1s`, `500ms`, `2min`, `20`, `0`).
fn is_timespan(s: &str) -> bool {
    if s == "infinity" {
        return true;
    }
    let mut rest = s.trim();
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .count();
        if digits == 0 {
            return false;
        }
        rest = rest[digits..].trim_start();
        let unit: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        if !["", "us", "ms", "s", "sec", "min", "m", "h", "hr", "d"].contains(&unit.as_str()) {
            return false;
        }
        rest = rest[unit.len()..].trim_start();
    }
    true
}

/// Specifiers used in these units; `%%` is a literal percent sign.
fn check_specifiers(value: &str) -> Result<()> {
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('i' | 'I' | 'n' | 'N' | 'p' | 'P' | '%') => {}
                other => bail!(
                    "unknown specifier %{}",
                    other.map(String::from).unwrap_or_default()
                ),
            }
        }
    }
    Ok(())
}

fn is_env_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Value syntax per key.
fn check_value(key: &str, value: &str) -> Result<()> {
    check_specifiers(value)?;
    let empty_ok = ["CapabilityBoundingSet", "AmbientCapabilities"].contains(&key);
    if value.is_empty() {
        ensure!(empty_ok, "empty value");
        return Ok(());
    }
    if BOOL_KEYS.contains(&key) {
        ensure!(
            ["yes", "no", "true", "false", "1", "0", "on", "off"].contains(&value),
            "not a boolean"
        );
    }
    if TIME_KEYS.contains(&key) {
        ensure!(is_timespan(value), "not a time span");
    }
    if EXEC_KEYS.contains(&key) {
        let words = split_words(value)?;
        let prog = words.first().context("no command")?;
        let prog = prog.trim_start_matches(['-', '@', ':', '+', '!', '|']);
        ensure!(prog.starts_with('/'), "command must be an absolute path");
    }
    match key {
        "Type" => ensure!(
            [
                "simple", "exec", "forking", "oneshot", "notify", "dbus", "idle"
            ]
            .contains(&value),
            "unknown type"
        ),
        "Restart" => ensure!(
            [
                "no",
                "always",
                "on-success",
                "on-failure",
                "on-abnormal",
                "on-abort",
                "on-watchdog"
            ]
            .contains(&value),
            "unknown restart policy"
        ),
        "ProtectSystem" => ensure!(
            ["yes", "no", "full", "strict"].contains(&value),
            "bad value"
        ),
        "ProtectProc" => ensure!(
            ["noaccess", "invisible", "ptraceable", "default"].contains(&value),
            "bad value"
        ),
        "ProcSubset" => ensure!(["all", "pid"].contains(&value), "bad value"),
        "UMask" | "StateDirectoryMode" | "RuntimeDirectoryMode" => {
            ensure!(
                value.len() == 4 && value.chars().all(|c| ('0'..='7').contains(&c)),
                "not an octal mode"
            )
        }
        "CapabilityBoundingSet" | "AmbientCapabilities" => {
            for cap in value.split_whitespace() {
                let cap = cap.trim_start_matches('~');
                ensure!(
                    cap.starts_with("CAP_")
                        && cap[4..].chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                    "{cap:?} is not a capability name"
                );
            }
        }
        "RestrictAddressFamilies" => {
            for f in value.split_whitespace() {
                ensure!(
                    f.trim_start_matches('~').starts_with("AF_"),
                    "{f:?} is not an address family"
                );
            }
        }
        "Environment" => {
            for assignment in split_words(value)? {
                let (name, _) = assignment.split_once('=').context("assignment without =")?;
                ensure!(is_env_name(name), "{name:?} is not a variable name");
            }
        }
        "EnvironmentFile" | "ReadWritePaths" | "ReadOnlyPaths" => {
            ensure!(
                value.trim_start_matches('-').starts_with('/'),
                "must be an absolute path"
            );
        }
        "StateDirectory" | "RuntimeDirectory" => {
            for d in value.split_whitespace() {
                ensure!(
                    !d.starts_with('/') && !d.contains(".."),
                    "{d:?} must be relative"
                );
            }
        }
        "LimitNOFILE" | "LimitMEMLOCK" => {
            ensure!(
                value == "infinity" || value.parse::<u64>().is_ok(),
                "not a number or infinity"
            )
        }
        "WantedBy" | "After" | "Before" | "Wants" | "Requires" | "PartOf" | "Conflicts" => {
            for u in value.split_whitespace() {
                ensure!(
                    [".service", ".target", ".mount", ".socket"]
                        .iter()
                        .any(|s| u.ends_with(s)),
                    "{u:?} is not a unit name"
                );
            }
        }
        _ => {}
    }
    Ok(())
}

/// Splits a command line or `Environment=` value into words the way systemd does for the
/// cases used here: whitespace separates, single and double quotes group, `\` escapes.
fn split_words(s: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), '\\') | (None, '\\') => {
                cur.push(chars.next().context("trailing backslash")?);
                in_word = true;
            }
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    ensure!(quote.is_none(), "unterminated quote");
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Every unit file and drop-in, parsed once.
fn units() -> &'static BTreeMap<String, UnitFile> {
    static UNITS: OnceLock<BTreeMap<String, UnitFile>> = OnceLock::new();
    UNITS.get_or_init(|| load_units().unwrap_or_else(|e| panic!("{e:#}")))
}

fn load_units() -> Result<BTreeMap<String, UnitFile>> {
    let dir = units_dir();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() {
            ensure!(name.ends_with(".service.d"), "unexpected directory {name}");
            for sub in std::fs::read_dir(entry.path())? {
                let sub = sub?.file_name().to_string_lossy().into_owned();
                ensure!(sub.ends_with(".conf"), "unexpected file {name}/{sub}");
                names.push(format!("{name}/{sub}"));
            }
        } else if name.ends_with(".service") || name.ends_with(".target") {
            names.push(name);
        } else {
            ensure!(
                name == "README.md",
                "unexpected file {name} in scripts/systemd"
            );
        }
    }
    let mut problems = Vec::new();
    let mut out = BTreeMap::new();
    for name in names {
        let text =
            std::fs::read_to_string(dir.join(&name)).with_context(|| format!("reading {name}"))?;
        match parse_unit(&name, &text) {
            Ok(u) => {
                out.insert(name, u);
            }
            Err(e) => problems.push(format!("{e}")),
        }
    }
    ensure!(
        problems.is_empty(),
        "unit files do not parse:\n{}",
        problems.join("\n")
    );
    Ok(out)
}

fn unit(name: &str) -> &'static UnitFile {
    units()
        .get(name)
        .unwrap_or_else(|| panic!("scripts/systemd/{name} is missing"))
}

/// Service units (templates included), not drop-ins.
fn services() -> impl Iterator<Item = &'static UnitFile> {
    units().values().filter(|u| u.name.ends_with(".service"))
}

/// The effective `Environment=` of a unit instance: the template (or unit) with `%i`
/// replaced, then its drop-ins in name order.
fn instance_environment(template: &str, instance: &str) -> Result<BTreeMap<String, String>> {
    let base = unit(template);
    let instance_name = template.replace("@.", &format!("@{instance}."));
    let mut files = vec![base];
    files.extend(
        units()
            .values()
            .filter(|u| u.name.starts_with(&format!("{instance_name}.d/"))),
    );
    let mut env = BTreeMap::new();
    for f in files {
        for v in f.all("Service", "Environment") {
            for w in split_words(&v.replace("%i", instance))? {
                let (k, v) = w.split_once('=').context("Environment= without =")?;
                env.insert(k.to_string(), v.to_string());
            }
        }
    }
    Ok(env)
}

// ---------------------------------------------------------------------------------------------
// The binaries and their --help
// ---------------------------------------------------------------------------------------------

fn bin_path(bin: &str) -> PathBuf {
    let p = bin_dir().join(bin);
    assert!(
        p.is_file(),
        "{} not found: build the binaries first (`cargo xtask test` does; or \
         `cargo build --workspace --bins`), or point SYSTEMD_TEST_BIN_DIR at the directory holding \
         ingest, packager, origin and switcher-ctl",
        p.display()
    );
    p
}

/// `<bin> [args] --help`, memoized.
fn help(bin: &str, args: &[&str]) -> String {
    static CACHE: OnceLock<std::sync::Mutex<BTreeMap<String, String>>> = OnceLock::new();
    let key = format!("{bin} {}", args.join(" "));
    let cache = CACHE.get_or_init(Default::default);
    if let Some(h) = cache.lock().unwrap().get(&key) {
        return h.clone();
    }
    let out = Command::new(bin_path(bin))
        .args(args)
        .arg("--help")
        // The help must not depend on the environment the test runs in.
        .env_clear()
        .output()
        .unwrap_or_else(|e| panic!("running {key} --help: {e}"));
    assert!(
        out.status.success(),
        "{key} --help failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    cache.lock().unwrap().insert(key, text.clone());
    text
}

/// Subcommands listed under "Commands:" in a clap help text.
fn subcommands(help_text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut inside = false;
    for line in help_text.lines() {
        if line.starts_with("Commands:") {
            inside = true;
            continue;
        }
        if inside {
            if !line.starts_with("  ") {
                break;
            }
            if let Some(w) = line.split_whitespace().next() {
                out.insert(w.to_string());
            }
        }
    }
    out
}

/// Whether `flag` (`--name` or `-x`) is an option in a clap help text.
fn help_has_flag(help_text: &str, flag: &str) -> bool {
    help_text.lines().any(|line| {
        line.trim_start()
            .split([' ', ','])
            .filter(|w| !w.is_empty())
            .take(3)
            .any(|w| w == flag || w.split_once('=').is_some_and(|(f, _)| f == flag))
    })
}

/// `[env: NAME=...]` names in a clap help text.
fn help_env_names(help_text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = help_text;
    while let Some(i) = rest.find("[env: ") {
        rest = &rest[i + 6..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.insert(name);
    }
    out
}

/// Every help text of a binary that lists options: the top level and, for switcher-ctl, each
/// subcommand.
fn all_helps(bin: &str) -> Vec<(String, String)> {
    let top = help(bin, &[]);
    let subs: Vec<String> = subcommands(&top)
        .into_iter()
        .filter(|s| s != "help")
        .collect();
    let mut out = vec![(bin.to_string(), top)];
    for s in subs {
        out.push((format!("{bin} {s}"), help(bin, &[s.as_str()])));
    }
    out
}

/// Whether `opt` appears as an option token anywhere in ffmpeg's `-h full`.
fn ffmpeg_has_option(help_text: &str, opt: &str) -> bool {
    let base = opt.split(':').next().unwrap_or(opt);
    let mut candidates = vec![base.to_string()];
    if let Some(rest) = base.strip_prefix("-no") {
        // Boolean options are listed without their `no` prefix (-nostdin is -stdin).
        candidates.push(format!("-{rest}"));
    }
    candidates.iter().any(|c| {
        help_text.match_indices(c.as_str()).any(|(i, _)| {
            let before = help_text[..i].chars().next_back();
            let after = help_text[i + c.len()..].chars().next();
            before.is_none_or(|b| b.is_whitespace() || b == '[')
                && after.is_none_or(|a| a.is_whitespace() || a == ']')
        })
    })
}

// ---------------------------------------------------------------------------------------------
// The env example
// ---------------------------------------------------------------------------------------------

/// What `edge.env.example` says about each variable.
#[derive(Debug, Default)]
struct EnvExample {
    /// Uncommented `NAME=value` lines (these change the configuration).
    active: BTreeMap<String, String>,
    /// Commented `#NAME=default` lines, name -> line numbers.
    documented: BTreeMap<String, Vec<usize>>,
    /// Indented `#   NAME=value` lines: per-instance values the units set.
    per_instance: BTreeSet<String>,
}

fn env_example_parsed() -> Result<EnvExample> {
    let text =
        std::fs::read_to_string(env_example()).context("reading scripts/edge.env.example")?;
    let mut ex = EnvExample::default();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let indented = c.starts_with("   ");
            // `#NAME=default` documents a variable; `#   NAME=value` (indented) a per-instance
            // value the units set; anything else is prose.
            if let Some((name, _)) = c.trim_start().split_once('=')
                && is_env_name(name)
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                if indented {
                    ex.per_instance.insert(name.into());
                } else if !c.starts_with(' ') {
                    ex.documented.entry(name.into()).or_default().push(n);
                }
            }
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .with_context(|| format!("edge.env.example:{n}: not NAME=value: {line:?}"))?;
        ensure!(is_env_name(name), "edge.env.example:{n}: bad name {name:?}");
        ex.active.insert(name.into(), value.into());
    }
    Ok(ex)
}

/// Every `.rs` file under crates/*/src.
fn crate_sources() -> &'static Vec<(PathBuf, String)> {
    static SOURCES: OnceLock<Vec<(PathBuf, String)>> = OnceLock::new();
    SOURCES.get_or_init(|| {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
            for e in
                std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            {
                let p = e.expect("dir entry").path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).expect("reading source");
                    out.push((p, text));
                }
            }
        }
        let mut out = Vec::new();
        for c in std::fs::read_dir(workspace().join("crates")).expect("crates/") {
            let src = c.expect("entry").path().join("src");
            if src.is_dir() {
                walk(&src, &mut out);
            }
        }
        out
    })
}

/// `env = "NAME"` attributes in the sources of the service binaries (not ingest-loadgen, a
/// benchmark tool), by crate.
fn source_env_attrs() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let crates = workspace().join("crates");
    for (path, text) in crate_sources() {
        let rel = path.strip_prefix(&crates).unwrap_or(path);
        let krate = rel
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        if !OUR_BINS.contains(&krate.as_str()) || path.ends_with("bin/ingest-loadgen.rs") {
            continue;
        }
        let mut rest = text.as_str();
        while let Some(i) = rest.find("env = \"") {
            rest = &rest[i + 7..];
            let name: String = rest.chars().take_while(|c| *c != '"').collect();
            out.entry(krate.clone()).or_default().insert(name);
        }
    }
    out
}

/// Whether some crate source reads `name`: a string literal `"NAME"`, or RUST_LOG through
/// tracing-subscriber's `EnvFilter::try_from_default_env` (its default variable).
fn read_by_sources(name: &str) -> bool {
    let literal = format!("\"{name}\"");
    crate_sources().iter().any(|(_, text)| {
        text.contains(&literal)
            || (name == "RUST_LOG" && text.contains("EnvFilter::try_from_default_env"))
    })
}

/// Variables a unit itself consumes: `${NAME}` in an Exec line, with a default in the same
/// unit's `Environment=` (the test publisher's PUBLISHER_*).
fn read_by_units(name: &str) -> bool {
    let reference = format!("${{{name}}}");
    services().any(|u| {
        let used = EXEC_KEYS
            .iter()
            .any(|k| u.all("Service", k).iter().any(|v| v.contains(&reference)));
        let defaulted = u.all("Service", "Environment").iter().any(|v| {
            split_words(v)
                .unwrap_or_default()
                .iter()
                .any(|w| w.starts_with(&format!("{name}=")))
        });
        used && defaulted
    })
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn every_unit_file_is_present_and_parses_strictly() {
    let all = units();
    for f in UNIT_FILES {
        assert!(all.contains_key(f), "scripts/systemd/{f} is missing");
    }
    for u in services() {
        assert!(
            u.get("Unit", "Description").is_some(),
            "{}: no Description=",
            u.name
        );
        assert!(
            u.get("Service", "ExecStart").is_some(),
            "{}: no ExecStart=",
            u.name
        );
    }
    // The parser itself refuses what systemd would only warn about.
    for (bad, why) in [
        ("[Service]\nExecStrat=/bin/true\n", "unknown key"),
        ("ExecStart=/bin/true\n", "before any section"),
        ("[Service]\nRestart=sometimes\n", "unknown restart"),
        ("[Service]\nNoNewPrivileges=maybe\n", "boolean"),
        ("[Service]\nExecStart=true\n", "absolute"),
        ("[Service]\nUser=a\nUser=b\n", "twice"),
        ("[Service]\nEnvironment=A=%q\n", "specifier"),
        ("[Service]\nExecStart=/bin/echo \"x\n", "quote"),
        ("[Service]\nCapabilityBoundingSet=cap_bpf\n", "capability"),
    ] {
        let err = parse_unit("probe.service", bad).expect_err(bad);
        assert!(
            format!("{err:#}").contains(why),
            "{bad:?}: expected {why:?}, got {err:#}"
        );
    }
}

/// Whether `systemd-analyze verify` works here: it must accept a trivial good unit and reject
/// a bad one (in containers without systemd it may be missing or unable to run).
fn systemd_analyze_usable(tmp: &Path) -> Option<String> {
    let dir = tmp.join("probe");
    std::fs::create_dir_all(&dir).ok()?;
    std::fs::write(
        dir.join("hlsprobe-good.service"),
        "[Unit]\nDescription=probe\n[Service]\nExecStart=/bin/true\n",
    )
    .ok()?;
    std::fs::write(
        dir.join("hlsprobe-bad.service"),
        "[Unit]\nDescription=probe\n[Service]\nExecStart=/nonexistent/x\n",
    )
    .ok()?;
    let run = |name: &str| {
        Command::new("systemd-analyze")
            .args(["verify", "--man=no", "--generators=no"])
            .arg(dir.join(name))
            .output()
            .ok()
    };
    let good = run("hlsprobe-good.service")?;
    let bad = run("hlsprobe-bad.service")?;
    if good.status.success() && good.stderr.is_empty() && !bad.status.success() {
        Some(
            String::from_utf8_lossy(
                &Command::new("systemd-analyze")
                    .arg("--version")
                    .output()
                    .ok()?
                    .stdout,
            )
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        )
    } else {
        None
    }
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let tmp = std::env::temp_dir().join(format!("hls-systemd-units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let result = verify_all(&tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    result.unwrap_or_else(|e| panic!("{e:#}"));
}

fn verify_all(tmp: &Path) -> Result<()> {
    // The strict parser has run on every file (units()); systemd's own check on top, where
    // it works.
    let _ = units();
    let Some(version) = systemd_analyze_usable(tmp) else {
        eprintln!(
            "note: systemd-analyze verify is not usable here; relying on the strict parser only"
        );
        return Ok(());
    };
    eprintln!("verifying with {version}");
    // Copies of the units with the binaries where this build put them: verify checks that
    // every Exec* command exists and is executable.
    let dir = tmp.join("units");
    let bins = bin_dir().canonicalize().unwrap_or_else(|_| bin_dir());
    for b in OUR_BINS {
        bin_path(b);
    }
    for u in units().values() {
        let mut text = std::fs::read_to_string(units_dir().join(&u.name))?;
        text = text.replace(INSTALL_DIR, &format!("{}/", bins.display()));
        // ffmpeg is optional on a build machine; its flags are checked separately when present.
        if !Path::new("/usr/bin/ffmpeg").exists() {
            text = text.replace("/usr/bin/ffmpeg", "/bin/true");
        }
        let dest = dir.join(&u.name);
        std::fs::create_dir_all(dest.parent().unwrap())?;
        std::fs::write(&dest, text)?;
    }
    let mut to_verify: Vec<String> = Vec::new();
    for u in units().values() {
        if u.name.contains('/') {
            continue; // drop-ins are verified with their instance
        }
        if u.name.contains("@.") {
            for i in INSTANCES {
                to_verify.push(u.name.replace("@.", &format!("@{i}.")));
            }
        } else {
            to_verify.push(u.name.clone());
        }
    }
    let mut problems = String::new();
    for name in &to_verify {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no", "--generators=no"])
            .arg(dir.join(name))
            .output()
            .context("running systemd-analyze verify")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Any line about our units (unknown keys, bad values, missing commands) is a failure;
        // lines about the host's own units are only printed.
        let ours: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(dir.to_string_lossy().as_ref()) || l.contains("hls-"))
            .collect();
        if !out.status.success() || !ours.is_empty() {
            let _ = writeln!(
                problems,
                "{name}: systemd-analyze verify ({}):\n{text}",
                out.status
            );
        } else if !text.trim().is_empty() {
            eprintln!("note: {name}: {text}");
        }
    }
    ensure!(problems.is_empty(), "{problems}");
    eprintln!("systemd-analyze verify: {} units clean", to_verify.len());
    Ok(())
}

#[test]
fn exec_flags_exist_in_the_binaries_help() {
    let ffmpeg_help = Command::new("ffmpeg")
        .args(["-hide_banner", "-h", "full"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let mut problems = Vec::new();
    let mut checked = 0;
    for u in services() {
        for key in EXEC_KEYS {
            for line in u.all("Service", key) {
                let words = split_words(line).expect("parsed before");
                let prog = words[0].trim_start_matches(['-', '@', ':', '+', '!', '|']);
                let name = Path::new(prog)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if OUR_BINS.contains(&name.as_str()) {
                    if !prog.starts_with(INSTALL_DIR) {
                        problems.push(format!(
                            "{}: {key}: {prog} is not under {INSTALL_DIR}",
                            u.name
                        ));
                    }
                    let mut args = &words[1..];
                    let mut help_args: Vec<&str> = Vec::new();
                    let top = help(&name, &[]);
                    let subs = subcommands(&top);
                    if !subs.is_empty() {
                        match args.first() {
                            Some(s) if subs.contains(s) => {
                                help_args.push(s);
                                args = &args[1..];
                            }
                            other => problems.push(format!(
                                "{}: {key}: {name} needs a subcommand ({subs:?}), got {other:?}",
                                u.name
                            )),
                        }
                    }
                    let text = help(&name, &help_args);
                    for a in args.iter().filter(|a| a.starts_with('-')) {
                        let flag = a.split_once('=').map_or(a.as_str(), |(f, _)| f);
                        checked += 1;
                        if !help_has_flag(&text, flag) {
                            let command: Vec<&str> = [name.as_str()]
                                .into_iter()
                                .chain(help_args.iter().copied())
                                .collect();
                            problems.push(format!(
                                "{}: {key}: `{}` has no {flag}",
                                u.name,
                                command.join(" ")
                            ));
                        }
                    }
                } else if name == "ffmpeg" {
                    let Some(h) = &ffmpeg_help else {
                        eprintln!("note: ffmpeg not installed; {} flags not checked", u.name);
                        continue;
                    };
                    for a in words[1..]
                        .iter()
                        .filter(|a| a.starts_with('-') && a.len() > 1)
                    {
                        checked += 1;
                        if !ffmpeg_has_option(h, a) {
                            problems.push(format!("{}: ffmpeg has no option {a}", u.name));
                        }
                    }
                } else if !Path::new(prog).exists() {
                    problems.push(format!("{}: {key}: {prog} does not exist", u.name));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    eprintln!("{checked} flags checked against --help");
    // And the check catches a flag that does not exist.
    assert!(!help_has_flag(&help("origin", &[]), "--no-such-flag"));
    assert!(help_has_flag(&help("origin", &[]), "--root"));
}

#[test]
fn env_example_documents_every_variable_and_only_real_ones() {
    let ex = env_example_parsed().unwrap_or_else(|e| panic!("{e:#}"));
    let mut problems = Vec::new();
    // Each name once.
    for (name, lines) in &ex.documented {
        if lines.len() > 1 {
            problems.push(format!("{name} is documented on lines {lines:?}"));
        }
    }
    let mut mentioned: BTreeSet<String> = ex.documented.keys().cloned().collect();
    mentioned.extend(ex.per_instance.iter().cloned());
    mentioned.extend(ex.active.keys().cloned());
    // Every name is read by a binary (or, for the publisher, by its unit).
    for name in &mentioned {
        if !read_by_sources(name) && !read_by_units(name) {
            problems.push(format!(
                "{name} is in edge.env.example but no binary reads it (not in crates/*/src)"
            ));
        }
    }
    // Every variable of every binary is there: from --help ...
    let mut by_binary: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for bin in OUR_BINS {
        for (what, text) in all_helps(bin) {
            for name in help_env_names(&text) {
                if !mentioned.contains(&name) {
                    problems.push(format!(
                        "{name} ({what} --help) is missing from edge.env.example"
                    ));
                }
                by_binary.entry(name).or_default().insert(bin.to_string());
            }
        }
    }
    // ... and from the sources' `env = "..."` attributes.
    for (krate, names) in source_env_attrs() {
        for name in names {
            if !mentioned.contains(&name) {
                problems.push(format!(
                    "{name} (crates/{krate}) is missing from edge.env.example"
                ));
            }
        }
    }
    // One shared file: no name may be read by two different binaries.
    for (name, bins) in &by_binary {
        if bins.len() > 1 {
            problems.push(format!(
                "{name} is read by {bins:?}: they would clash in the shared edge.env"
            ));
        }
    }
    assert!(
        by_binary.len() >= 40,
        "expected the flags of four binaries, found {by_binary:?}"
    );
    // The shipped example changes nothing.
    if !ex.active.is_empty() {
        problems.push(format!(
            "edge.env.example sets {:?}; every line should be commented out",
            ex.active.keys()
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn per_instance_values_differ_and_stay_out_of_the_shared_file() {
    let ex = env_example_parsed().unwrap_or_else(|e| panic!("{e:#}"));
    let mut env = BTreeMap::new();
    for template in ["hls-packager@.service", "hls-origin@.service"] {
        for i in INSTANCES {
            env.insert(
                (template, i),
                instance_environment(template, i).unwrap_or_else(|e| panic!("{e:#}")),
            );
        }
    }
    let get = |t: &'static str, i: &'static str, k: &str| -> String {
        env[&(t, i)]
            .get(k)
            .cloned()
            .unwrap_or_else(|| panic!("{t} instance {i}: {k} not set by the unit"))
    };
    let expect = [
        (
            "hls-packager@.service",
            "PACKAGER_OUT",
            ["/var/lib/hls-edge/primary", "/var/lib/hls-edge/backup"],
        ),
        (
            "hls-packager@.service",
            "PACKAGER_ADMIN_ADDR",
            ["127.0.0.1:9183", "127.0.0.1:9184"],
        ),
        (
            "hls-origin@.service",
            "ORIGIN_ROOT",
            ["/var/lib/hls-edge/primary", "/var/lib/hls-edge/backup"],
        ),
        (
            "hls-origin@.service",
            "ORIGIN_LISTEN",
            ["0.0.0.0:8081", "0.0.0.0:8082"],
        ),
    ];
    for (t, k, values) in expect {
        for (i, v) in INSTANCES.iter().zip(values) {
            assert_eq!(get(t, i, k), v, "{t} instance {i}: {k}");
        }
    }
    // Each origin serves its own packager's output.
    for i in INSTANCES {
        assert_eq!(
            get("hls-packager@.service", i, "PACKAGER_OUT"),
            get("hls-origin@.service", i, "ORIGIN_ROOT")
        );
    }
    // Whatever differs between instances is per-instance: documented as such, never set in
    // the shared file (EnvironmentFile= would override the units' Environment= for both).
    for template in ["hls-packager@.service", "hls-origin@.service"] {
        let (a, b) = (&env[&(template, "primary")], &env[&(template, "backup")]);
        for (k, v) in a {
            if b.get(k) != Some(v) {
                assert!(
                    ex.per_instance.contains(k),
                    "{k} differs per instance but edge.env.example does not say so"
                );
                assert!(
                    !ex.documented.contains_key(k),
                    "{k} is per instance; edge.env.example offers it for the shared file"
                );
                assert!(
                    !ex.active.contains_key(k),
                    "{k} is per instance and must not be set in edge.env"
                );
            }
        }
        // Per-instance override files are read after the shared one.
        let files = unit(template).all("Service", "EnvironmentFile");
        let kind = template
            .trim_start_matches("hls-")
            .split('@')
            .next()
            .unwrap();
        assert_eq!(
            files,
            [
                "-/etc/hls-edge/edge.env".to_string(),
                format!("-/etc/hls-edge/{kind}-%i.env")
            ],
            "{template}: EnvironmentFile= order"
        );
    }
    // The origins the switcher probes by default are the ones the units start.
    let run = help("switcher-ctl", &["run"]);
    assert!(run.contains("http://127.0.0.1:8081") && run.contains("http://127.0.0.1:8082"));
    // Packager output is writable, in the unit's own state directory.
    let p = unit("hls-packager@.service");
    assert!(
        p.list("Service", "StateDirectory")
            .contains(&"hls-edge/%i".to_string())
    );
}

#[test]
fn switcher_has_only_the_capabilities_it_needs() {
    let caps = |u: &UnitFile, key: &str| -> BTreeSet<String> {
        u.list("Service", key).into_iter().collect()
    };
    let set = |c: &[&str]| -> BTreeSet<String> { c.iter().map(|s| s.to_string()).collect() };

    let s = unit("hls-switcher.service");
    assert_eq!(
        s.get("Service", "User"),
        Some("root"),
        "see the unit: pins on a 0700 root bpffs"
    );
    assert_eq!(caps(s, "CapabilityBoundingSet"), set(&SWITCHER_CAPS));
    assert!(caps(s, "AmbientCapabilities").is_subset(&set(&SWITCHER_CAPS)));
    assert_eq!(s.get("Service", "NoNewPrivileges"), Some("yes"));
    assert_eq!(s.get("Service", "ProtectSystem"), Some("strict"));
    assert!(
        s.list("Service", "ReadWritePaths")
            .contains(&"/sys/fs/bpf".to_string())
    );
    // ProtectKernelTunables= remounts /sys/fs/bpf read-only; ReadWritePaths= cannot undo it.
    assert_ne!(s.get("Service", "ProtectKernelTunables"), Some("yes"));
    assert!(
        s.list("Service", "SystemCallFilter")
            .contains(&"bpf".to_string()),
        "bpf(2) is not in @system-service"
    );
    assert!(
        s.list("Service", "RestrictAddressFamilies")
            .contains(&"AF_NETLINK".to_string())
    );
    assert_eq!(
        s.get("Service", "ExecStart"),
        Some("/usr/local/bin/switcher-ctl run")
    );
    // A restart must not detach: no stop command may touch the data plane.
    for key in ["ExecStop", "ExecStopPost"] {
        assert!(
            s.all("Service", key).is_empty(),
            "hls-switcher.service must not have {key}="
        );
    }
    // The only privileged step is mounting bpffs, outside the sandbox, with a fixed command.
    for pre in s.all("Service", "ExecStartPre") {
        assert!(
            pre.starts_with("+/bin/sh -c 'mountpoint -q /sys/fs/bpf || mount -t bpf"),
            "{pre}"
        );
    }

    let d = unit("hls-switcher-detach.service");
    assert_eq!(d.get("Service", "User"), Some("root"));
    assert_eq!(caps(d, "CapabilityBoundingSet"), set(&DETACH_CAPS));
    assert!(caps(d, "AmbientCapabilities").is_subset(&set(&DETACH_CAPS)));
    assert_eq!(d.get("Service", "Type"), Some("oneshot"));
    assert_eq!(
        d.get("Service", "ExecStart"),
        Some("/usr/local/bin/switcher-ctl detach")
    );
    assert!(
        d.list("Unit", "Conflicts")
            .contains(&"hls-switcher.service".to_string())
    );
    assert!(
        d.all("Install", "WantedBy").is_empty(),
        "detaching must never start at boot"
    );

    for u in services() {
        let all: Vec<String> = ["CapabilityBoundingSet", "AmbientCapabilities"]
            .iter()
            .flat_map(|k| u.list("Service", k))
            .collect();
        assert!(
            !all.iter().any(|c| c.contains("SYS_ADMIN")),
            "{}: CAP_SYS_ADMIN",
            u.name
        );
        assert!(
            !all.iter().any(|c| c.starts_with('~')),
            "{}: inverted capability lists grant everything else",
            u.name
        );
    }
}

#[test]
fn other_services_are_unprivileged_and_hardened() {
    let unprivileged: Vec<&UnitFile> = services()
        .filter(|u| !u.name.starts_with("hls-switcher"))
        .collect();
    assert_eq!(
        unprivileged.len(),
        4,
        "ingest, packager@, origin@, publisher"
    );
    for u in unprivileged {
        let n = &u.name;
        let is = |k: &str, v: &str| assert_eq!(u.get("Service", k), Some(v), "{n}: {k}=");
        is("User", "hlsedge");
        is("Group", "hlsedge");
        is("DynamicUser", "no");
        is("NoNewPrivileges", "yes");
        is("ProtectSystem", "strict");
        is("ProtectHome", "yes");
        is("PrivateTmp", "yes");
        is("Restart", "always");
        // Explicitly empty: no capability at all, not just "none configured".
        assert_eq!(
            u.all("Service", "CapabilityBoundingSet"),
            [""],
            "{n}: CapabilityBoundingSet= must be empty"
        );
        assert!(
            u.list("Service", "AmbientCapabilities").is_empty(),
            "{n}: AmbientCapabilities="
        );
        let families: BTreeSet<String> = u
            .list("Service", "RestrictAddressFamilies")
            .into_iter()
            .collect();
        // IP always; AF_UNIX only where a service needs it (NSS for host names).
        assert!(
            families.contains("AF_INET") && families.contains("AF_INET6"),
            "{n}: {families:?}"
        );
        assert!(
            families.is_subset(&["AF_INET", "AF_INET6", "AF_UNIX"].map(String::from).into()),
            "{n}: {families:?}"
        );
        assert!(
            u.list("Service", "SystemCallFilter")
                .contains(&"@system-service".to_string()),
            "{n}"
        );
        assert!(
            !u.list("Service", "SystemCallFilter")
                .contains(&"bpf".to_string()),
            "{n}"
        );
    }
    // openat2 (the origin's containment) must stay allowed.
    let origin = unit("hls-origin@.service");
    let filter = origin.list("Service", "SystemCallFilter");
    assert!(
        filter.contains(&"openat2".to_string()) || filter.contains(&"@system-service".to_string())
    );
    assert!(!filter.contains(&"~openat2".to_string()));
    assert_eq!(
        origin.get("Service", "SystemCallErrorNumber"),
        Some("EPERM"),
        "origin falls back on EPERM"
    );
    // Packager writes only its own directory.
    let p = unit("hls-packager@.service");
    assert!(
        p.list("Service", "StateDirectory")
            .contains(&"hls-edge".to_string())
    );
}

#[test]
fn every_service_reads_the_shared_env_file_and_restarts_quickly() {
    for u in services() {
        let n = &u.name;
        let files = u.all("Service", "EnvironmentFile");
        assert_eq!(
            files.first().copied(),
            Some("-/etc/hls-edge/edge.env"),
            "{n}: shared env file first"
        );
        assert_eq!(files.len(), 2, "{n}: the shared file and the service's own");
        if u.get("Service", "Type") == Some("oneshot") {
            continue;
        }
        assert_eq!(u.get("Service", "Restart"), Some("always"), "{n}");
        let sec = u.get("Service", "RestartSec").expect("RestartSec");
        let secs: f64 = sec
            .trim_end_matches('s')
            .parse()
            .expect("RestartSec in seconds");
        assert!(secs > 0.0 && secs <= 5.0, "{n}: RestartSec={sec}");
        assert_eq!(
            u.get("Unit", "StartLimitIntervalSec"),
            Some("0"),
            "{n}: never give up restarting"
        );
        assert!(
            u.list("Unit", "PartOf")
                .contains(&"hls-edge.target".to_string()),
            "{n}: PartOf="
        );
        assert!(
            u.list("Install", "WantedBy")
                .contains(&"hls-edge.target".to_string()),
            "{n}: WantedBy="
        );
    }
    let target = unit("hls-edge.target");
    let wants: BTreeSet<String> = target.list("Unit", "Wants").into_iter().collect();
    for w in [
        "hls-ingest.service",
        "hls-packager@primary.service",
        "hls-packager@backup.service",
        "hls-origin@primary.service",
        "hls-origin@backup.service",
        "hls-switcher.service",
    ] {
        assert!(wants.contains(w), "hls-edge.target does not want {w}");
    }
    assert!(!wants.contains("hls-switcher-detach.service"));
    assert!(
        target
            .list("Install", "WantedBy")
            .contains(&"multi-user.target".to_string())
    );
}

#[test]
fn entries_keep_their_line_numbers() {
    // Problems point at lines; make sure the numbering survives continuations.
    let u = parse_unit(
        "x.service",
        "[Unit]\nDescription=x\n[Service]\nExecStart=/bin/echo a \\\n  b\nUser=u\n",
    )
    .expect("parses");
    let lines: Vec<(String, usize)> = u.entries.iter().map(|e| (e.key.clone(), e.line)).collect();
    assert_eq!(
        lines,
        [
            ("Description".into(), 2),
            ("ExecStart".into(), 4),
            ("User".into(), 6)
        ]
    );
    assert_eq!(u.get("Service", "ExecStart"), Some("/bin/echo a  b"));
}

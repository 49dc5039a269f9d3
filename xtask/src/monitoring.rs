//! Checks of `monitoring/` (Prometheus config, alert rules, Grafana dashboard), for
//! `cargo xtask test`:
//! * [`check`]: `promtool check config`, `promtool check rules` and `promtool test rules`
//!   (Debian's `prometheus` package ships promtool).
//! * [`metric_names_used`]: every metric name the dashboards and the rules query, so an
//!   end-to-end test can compare it with a live scrape ([`check_exported`] does both).
//!
//! std + anyhow only: the PromQL, JSON and YAML handled here are our own files, so small
//! scanners suffice where a full parser would add dependencies.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Every scrape target of `monitoring/prometheus.yml` (`cargo xtask codegen` writes them
/// there from the layout).
pub use crate::layout::scrape_targets;

/// Series Prometheus makes itself rather than scraping; [`metric_names_used`] leaves them
/// out because no target exports them.
const SYNTHETIC: &[&str] = &[
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "ALERTS",
    "ALERTS_FOR_STATE",
];

/// Timeout of each connect/read of a scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

fn monitoring_dir(workspace: &Path) -> PathBuf {
    workspace.join("monitoring")
}

/// Files in `dir` whose name ends with one of `exts`, sorted.
fn files(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if path.is_file() && exts.iter().any(|e| name.ends_with(e)) {
            out.push(path);
        }
    }
    out.sort();
    if out.is_empty() {
        bail!("no {exts:?} files in {}", dir.display());
    }
    Ok(out)
}

fn promtool(workspace: &Path, args: &[&str], files: &[PathBuf]) -> Result<()> {
    let out = Command::new("promtool")
        .args(args)
        .args(files)
        .current_dir(workspace)
        .output()
        .context("running promtool (install Debian's `prometheus` package: apt-get install -y prometheus)")?;
    if !out.status.success() {
        bail!(
            "promtool {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `promtool check config` on `monitoring/prometheus.yml`, `promtool check rules` on
/// `monitoring/rules/*.yml`, `promtool test rules` on `monitoring/tests/*.yml`.
pub fn check(workspace: &Path) -> Result<()> {
    let dir = monitoring_dir(workspace);
    promtool(
        workspace,
        &["check", "config"],
        &[dir.join("prometheus.yml")],
    )?;
    promtool(
        workspace,
        &["check", "rules"],
        &files(&dir.join("rules"), &[".yml", ".yaml"])?,
    )?;
    promtool(
        workspace,
        &["test", "rules"],
        &files(&dir.join("tests"), &[".yml", ".yaml"])?,
    )?;
    Ok(())
}

/// Every metric name queried by the Grafana dashboards (`monitoring/grafana/dashboards/*.json`,
/// each `"expr"`) and the rule files (`monitoring/rules/*.yml`, each `expr:`), without the
/// series Prometheus synthesizes (`up` and the like). Histogram series appear as queried
/// (`..._bucket`, `..._sum`, `..._count`).
pub fn metric_names_used(workspace: &Path) -> Result<BTreeSet<String>> {
    let dir = monitoring_dir(workspace);
    let mut exprs = Vec::new();
    for path in files(&dir.join("grafana/dashboards"), &[".json"])? {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        exprs.extend(json_exprs(&text).with_context(|| format!("{}", path.display()))?);
    }
    for path in files(&dir.join("rules"), &[".yml", ".yaml"])? {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        exprs.extend(yaml_exprs(&text));
    }
    if exprs.is_empty() {
        bail!("no expressions found under {}", dir.display());
    }
    let mut names = BTreeSet::new();
    for e in &exprs {
        names.extend(promql_metric_names(e));
    }
    names.retain(|n| !SYNTHETIC.contains(&n.as_str()));
    Ok(names)
}

/// Scrapes every target (`host:port`, path `/metrics`) and fails, naming them, when a metric
/// that the dashboards or rules use is exported by none of them, or a target cannot be
/// scraped.
pub fn check_exported(workspace: &Path, targets: &[&str]) -> Result<()> {
    let used = metric_names_used(workspace)?;
    let mut exported = BTreeSet::new();
    for target in targets {
        let text = scrape(target).with_context(|| format!("scraping http://{target}/metrics"))?;
        exported.extend(exported_metric_names(&text));
    }
    let missing: Vec<&String> = used.difference(&exported).collect();
    if !missing.is_empty() {
        bail!("metrics used by monitoring/ but exported by none of {targets:?}: {missing:?}");
    }
    Ok(())
}

/// GET `http://<target>/metrics`; the body.
pub fn scrape(target: &str) -> Result<String> {
    let addr = target.to_socket_addrs()?.next().context("no address")?;
    let mut s = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT)?;
    s.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
    // HTTP/1.0 with close: the body ends at EOF (a server may still chunk; handled below).
    // One write: a minimal server that answers after the request line and closes would
    // otherwise reset the connection under a second write.
    let request = format!(
        "GET /metrics HTTP/1.0\r\nHost: {target}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // Such a server may also reset the connection after its response, unread
            // request bytes still queued; what arrived before the reset is the response.
            Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e.into()),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of HTTP head")?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        bail!("HTTP status {status}");
    }
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    Ok(if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    })
}

fn dechunk(mut body: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("truncated chunk size")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or_default().trim(), 16)
            .context("chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("truncated chunk")?);
        body = rest
            .get(size..)
            .and_then(|r| r.strip_prefix("\r\n"))
            .context("chunk without CRLF")?;
    }
}

/// Metric names in a Prometheus text exposition: every sample's name, plus the families
/// declared by `# TYPE` (a labelled family with no children yet still counts as exported;
/// a histogram or summary declares its `_bucket`/`_sum`/`_count` series too).
pub fn exported_metric_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                names.insert(name.to_string());
                let suffixes: &[&str] = match kind {
                    "histogram" => &["_bucket", "_sum", "_count"],
                    "summary" => &["_sum", "_count"],
                    _ => &[],
                };
                names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
            }
        } else if !line.is_empty() && !line.starts_with('#') {
            let end = line
                .find(|c: char| c == '{' || c.is_whitespace())
                .unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// PromQL keywords that look like identifiers.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
    "start",
    "end",
];
/// Keywords followed by a parenthesized label list (not an expression).
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Index just past the delimiter that closes the one at `open` (`{}`, `[]`, `()`), skipping
/// string literals inside.
fn skip_group(chars: &[char], open: usize) -> usize {
    let (o, c) = (
        chars[open],
        match chars[open] {
            '{' => '}',
            '[' => ']',
            _ => ')',
        },
    );
    let mut depth = 0;
    let mut i = open;
    while i < chars.len() {
        match chars[i] {
            q @ ('"' | '\'' | '`') => i = skip_string(chars, i, q) - 1,
            x if x == o => depth += 1,
            x if x == c => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    chars.len()
}

/// Index just past the string literal opened by `quote` at `start`.
fn skip_string(chars: &[char], start: usize, quote: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() {
        if chars[i] == '\\' && quote != '`' {
            i += 2;
            continue;
        }
        if chars[i] == quote {
            return i + 1;
        }
        i += 1;
    }
    chars.len()
}

/// Metric names in one PromQL expression: identifiers that are not functions, aggregations,
/// keywords, label names (inside `{}` or a `by (...)` list), durations, numbers or Grafana
/// `$variables`.
pub fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i, c);
        } else if c == '{' || c == '[' {
            i = skip_group(&chars, i);
        } else if c == '$' {
            i += 1;
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == '{' || chars[i] == '}') {
                i += 1;
            }
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations (1e3, 0x1f, 5m, 1h30m).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let call = j < chars.len() && chars[j] == '(';
            // `sum by (l) (x)`: an aggregation whose grouping comes first.
            let next_word: String = chars[j..].iter().take_while(|c| is_ident(**c)).collect();
            let grouped = matches!(next_word.to_ascii_lowercase().as_str(), "by" | "without");
            if call && LABEL_LIST_KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                i = skip_group(&chars, j);
            } else if !call && !grouped && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The value of every `"expr"` key in a JSON document.
fn json_exprs(json: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let key = "\"expr\"";
    let mut from = 0;
    while let Some(pos) = json[from..].find(key) {
        let at = from + pos;
        from = at + key.len();
        // `\"expr\"` inside another string is not a key.
        if json[..at].ends_with('\\') {
            continue;
        }
        let rest = json[from..].trim_start();
        let Some(rest) = rest.strip_prefix(':') else {
            continue;
        };
        let rest = rest.trim_start();
        let Some(rest) = rest.strip_prefix('"') else {
            bail!("\"expr\" is not a string")
        };
        let mut value = String::new();
        let mut chars = rest.chars();
        loop {
            match chars.next().context("unterminated \"expr\" string")? {
                '"' => break,
                '\\' => match chars.next().context("unterminated escape")? {
                    'n' => value.push('\n'),
                    't' => value.push('\t'),
                    'r' => value.push('\r'),
                    'b' | 'f' => value.push(' '),
                    'u' => {
                        let hex: String = chars.by_ref().take(4).collect();
                        let code = u32::from_str_radix(&hex, 16).context("\\u escape")?;
                        value.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                    }
                    other => value.push(other),
                },
                other => value.push(other),
            }
        }
        out.push(value);
    }
    Ok(out)
}

/// The value of every `expr:` key in a YAML rule file: plain, single- or double-quoted
/// scalars on the key's line, or a `|`/`>` block scalar on the lines indented below it.
fn yaml_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start().trim_start_matches("- ");
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let block: Vec<&str> = lines[n + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect();
            out.push(block.join("\n"));
        } else if let Some(v) = value.strip_prefix('"') {
            out.push(
                v.rsplit_once('"')
                    .map_or(v, |(v, _)| v)
                    .replace("\\\"", "\"")
                    .replace("\\\\", "\\"),
            );
        } else if let Some(v) = value.strip_prefix('\'') {
            out.push(v.rsplit_once('\'').map_or(v, |(v, _)| v).replace("''", "'"));
        } else {
            // A plain scalar ends at a comment.
            out.push(value.split(" #").next().unwrap_or(value).to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn promql_names_skip_functions_labels_keywords_and_durations() {
        assert_eq!(
            promql_metric_names("segment_age_seconds > 6"),
            set(&["segment_age_seconds"])
        );
        assert_eq!(
            promql_metric_names(
                "histogram_quantile(0.99, sum by (origin, le) (rate(probe_duration_seconds_bucket{origin=\"primary\"}[1m])))"
            ),
            set(&["probe_duration_seconds_bucket"])
        );
        assert_eq!(
            promql_metric_names(
                "sum(rate(a_total[5m] offset 1h)) without (instance) / on (job) group_left (x) b unless c > bool 1e3"
            ),
            set(&["a_total", "b", "c"])
        );
        assert_eq!(
            promql_metric_names(
                "rate(origin_requests_total{status=~\"5..\", class!='seg{ment}'}[$__rate_interval]) * 8"
            ),
            set(&["origin_requests_total"])
        );
        assert_eq!(
            promql_metric_names("up == 0 and ON(job) vector(1)"),
            set(&["up"])
        );
        assert_eq!(
            promql_metric_names("label_replace(x, \"dst\", \"$1\", \"src\", \"(.*)\")"),
            set(&["x"])
        );
    }

    #[test]
    fn json_and_yaml_exprs_are_extracted() {
        let json = r#"{"targets": [{"expr": "rate(a_total[1m])", "legendFormat": "{{x}}"},
            {"description": "see \"expr\": not a key", "expr" : "b{l=\"v\"}\n + c"}]}"#;
        assert_eq!(
            json_exprs(json).expect("parses"),
            vec![
                "rate(a_total[1m])".to_string(),
                "b{l=\"v\"}\n + c".to_string()
            ]
        );
        let yaml = "groups:\n  - rules:\n    - alert: A\n      expr: a > 1 # comment\n    - alert: B\n      expr: |\n        sum(b)\n          > 2\n      for: 5s\n    - expr: 'c == ''x'''\n    - expr: \"d\"\n";
        assert_eq!(
            yaml_exprs(yaml),
            vec!["a > 1", "sum(b)\n> 2", "c == 'x'", "d"]
        );
    }

    #[test]
    fn exposition_names_include_declared_families_and_histogram_series() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{origin=\"primary\"} 1\n\
                    # TYPE h histogram\nh_bucket{le=\"+Inf\"} 0\n# TYPE empty_total counter\nplain 3\n";
        assert_eq!(
            exported_metric_names(text),
            set(&[
                "a_total",
                "empty_total",
                "h",
                "h_bucket",
                "h_count",
                "h_sum",
                "plain"
            ])
        );
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk("4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\n\r\n").expect("valid"),
            "abcdefg"
        );
        assert!(dechunk("9\r\nab").is_err());
    }

    #[test]
    fn repository_monitoring_uses_the_seed_and_issue_metrics() {
        let used = metric_names_used(&workspace()).expect("monitoring/ readable");
        for name in [
            // The seed's panels.
            "switcher_active_origin",
            "segment_age_seconds",
            "failovers_total",
            "origin_http_5xx_total",
            // Data plane, probes, origins, ingest, packagers.
            "dataplane_bytes_total",
            "dataplane_flows",
            "dataplane_drops_total",
            "switcher_both_bad",
            "probe_duration_seconds_bucket",
            "origin_requests_total",
            "origin_request_duration_seconds_bucket",
            "ingest_received_bytes_total",
            "packager_live_lag_seconds",
            // N origins, balance and draining.
            "switcher_origin_weight",
            "switcher_origin_in_rotation",
            "switcher_origin_drained",
            "switcher_lookup_table_rebuilds_total",
            "origin_healthy",
        ] {
            assert!(
                used.contains(name),
                "{name} not used by monitoring/: {used:?}"
            );
        }
        assert!(!used.contains("up"), "synthetic series are left out");
        assert!(
            !used
                .iter()
                .any(|n| n == "le" || n == "origin" || n == "sum" || n == "rate"),
            "{used:?}"
        );
    }

    #[test]
    fn prometheus_config_scrapes_every_target() {
        let config = std::fs::read_to_string(workspace().join("monitoring/prometheus.yml"))
            .expect("prometheus.yml");
        for t in scrape_targets() {
            assert!(
                config.contains(&format!("job_name: {}", t.job)),
                "no job {}",
                t.job
            );
            assert!(
                config.contains(&format!("\"{}\"", t.addr)),
                "no target {}",
                t.addr
            );
        }
    }

    /// Runs promtool; fails (does not skip) when it is missing.
    #[test]
    fn promtool_checks_pass() {
        check(&workspace()).expect("promtool check config / check rules / test rules");
    }
}

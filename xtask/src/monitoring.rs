//! Checks of `monitoring/` (Prometheus config, alert rules, Grafana dashboard), for
//! `cargo xtask test`:
//! * [`check`]: `promtool check config`, `promtool check rules` and `promtool test rules`
//!   (Debian's `prometheus` package ships promtool).
//! * [`metric_names_used`]: every metric name the dashboards and the rules query, so an
//!   end-to-end test can compare it with a live scrape ([`check_exported`] does both).
//!
//! The dashboards are read with serde_json, the rules with serde_yaml, the expressions with
//! promql-parser (the PromQL grammar of GreptimeDB, a Prometheus-compatible database).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use promql_parser::parser::Expr;
use promql_parser::util::{ExprVisitor, walk_expr};

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
        let doc: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
        exprs.extend(json_exprs(&doc));
    }
    for path in files(&dir.join("rules"), &[".yml", ".yaml"])? {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        exprs.extend(yaml_exprs(&doc));
    }
    if exprs.is_empty() {
        bail!("no expressions found under {}", dir.display());
    }
    let mut names = BTreeSet::new();
    for e in &exprs {
        names.extend(promql_metric_names(e).with_context(|| format!("PromQL {e:?}"))?);
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
    let url = format!("http://{target}/metrics");
    let response = test_kit::http::get_within(&url, SCRAPE_TIMEOUT)?;
    if response.status != 200 {
        bail!("HTTP status {}", response.status);
    }
    Ok(response.text())
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

/// Grafana's interval variables, which stand where PromQL has a duration; replaced by one
/// before parsing (any other `$variable` outside a string is an error).
const GRAFANA_DURATIONS: &[&str] = &[
    "${__rate_interval}",
    "$__rate_interval",
    "${__interval}",
    "$__interval",
    "${__range}",
    "$__range",
];

/// Collects selector names while promql-parser walks an expression.
struct SelectorNames(BTreeSet<String>);

impl ExprVisitor for SelectorNames {
    type Error = Infallible;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Infallible> {
        let selector = match expr {
            Expr::VectorSelector(vs) => vs,
            Expr::MatrixSelector(ms) => &ms.vs,
            _ => return Ok(true),
        };
        // `{__name__="x"}` names its metric with a matcher instead.
        let by_matcher = selector
            .matchers
            .matchers
            .iter()
            .filter(|m| m.name == "__name__")
            .map(|m| m.value.clone());
        self.0
            .extend(selector.name.clone().into_iter().chain(by_matcher));
        Ok(true)
    }
}

/// Metric names in one PromQL expression: the name of every vector and range selector.
pub fn promql_metric_names(expr: &str) -> Result<BTreeSet<String>> {
    let mut expr = expr.to_string();
    for var in GRAFANA_DURATIONS {
        expr = expr.replace(var, "5m");
    }
    let ast = promql_parser::parser::parse(&expr).map_err(|e| anyhow!("{e}"))?;
    let mut names = SelectorNames(BTreeSet::new());
    let Ok(_) = walk_expr(&mut names, &ast);
    Ok(names.0)
}

/// The value of every string `"expr"` key in a JSON document (a Grafana dashboard).
fn json_exprs(doc: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![doc];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match value.as_str() {
                        Some(expr) if key == "expr" => out.push(expr.to_string()),
                        _ => stack.push(value),
                    }
                }
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    out
}

/// The value of every string `expr:` key in a YAML document (a rule file).
fn yaml_exprs(doc: &serde_yaml::Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![doc];
    while let Some(v) = stack.pop() {
        match v {
            serde_yaml::Value::Mapping(map) => {
                for (key, value) in map {
                    match value.as_str() {
                        Some(expr) if key.as_str() == Some("expr") => out.push(expr.to_string()),
                        _ => stack.push(value),
                    }
                }
            }
            serde_yaml::Value::Sequence(items) => stack.extend(items),
            _ => {}
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

    use crate::workspace;

    fn names(expr: &str) -> BTreeSet<String> {
        promql_metric_names(expr).expect("valid PromQL")
    }

    #[test]
    fn promql_names_skip_functions_labels_keywords_and_durations() {
        assert_eq!(
            names("segment_age_seconds > 6"),
            set(&["segment_age_seconds"])
        );
        assert_eq!(
            names(
                "histogram_quantile(0.99, sum by (origin, le) (rate(probe_duration_seconds_bucket{origin=\"primary\"}[1m])))"
            ),
            set(&["probe_duration_seconds_bucket"])
        );
        assert_eq!(
            names(
                "sum(rate(a_total[5m] offset 1h)) without (instance) / on (job) group_left (x) b unless c > bool 1e3"
            ),
            set(&["a_total", "b", "c"])
        );
        assert_eq!(
            names(
                "rate(origin_requests_total{status=~\"5..\", class!='seg{ment}'}[$__rate_interval]) * 8"
            ),
            set(&["origin_requests_total"])
        );
        assert_eq!(names("up == 0 and ON(job) vector(1)"), set(&["up"]));
        assert_eq!(
            names("label_replace(x, \"dst\", \"$1\", \"src\", \"(.*)\")"),
            set(&["x"])
        );
        assert_eq!(names("{__name__=\"by_matcher\"}"), set(&["by_matcher"]));
        assert!(
            promql_metric_names("rate(x[").is_err(),
            "invalid PromQL is an error"
        );
    }

    #[test]
    fn json_and_yaml_exprs_are_extracted() {
        let json = r#"{"targets": [{"expr": "rate(a_total[1m])", "legendFormat": "{{x}}"},
            {"description": "see \"expr\": not a key", "expr" : "b{l=\"v\"}\n + c"}]}"#;
        let mut exprs = json_exprs(&serde_json::from_str(json).expect("JSON"));
        exprs.sort();
        assert_eq!(
            exprs,
            vec![
                "b{l=\"v\"}\n + c".to_string(),
                "rate(a_total[1m])".to_string()
            ]
        );
        let yaml = "groups:\n  - rules:\n    - alert: A\n      expr: a > 1 # comment\n    - alert: B\n      expr: |\n        sum(b)\n          > 2\n      for: 5s\n    - expr: 'c == ''x'''\n    - expr: \"d\"\n";
        let mut exprs = yaml_exprs(&serde_yaml::from_str(yaml).expect("YAML"));
        exprs.sort();
        assert_eq!(exprs, vec!["a > 1", "c == 'x'", "d", "sum(b)\n  > 2\n"]);
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

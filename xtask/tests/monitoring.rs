//! Monitoring configuration, checked by Prometheus' own tool: `promtool check config`,
//! `promtool check rules`, and `promtool test rules` unit tests that fire and clear every alert
//! on synthetic series (monitoring/tests/alerts_test.yml). The live "every used metric is
//! exported" check runs in the end-to-end test against a real stack.

#[test]
fn promtool_checks_config_rules_and_alert_tests() {
    let ws = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    xtask::monitoring::check(&ws).expect("promtool checks pass");
}

#[test]
fn dashboard_and_rules_use_the_contract_metric_names() {
    let ws = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let used = xtask::monitoring::metric_names_used(&ws).expect("parse dashboard and rules");
    for name in [
        "switcher_active_origin",
        "segment_age_seconds",
        "origin_http_5xx_total",
        "failovers_total",
        "switchbacks_total",
    ] {
        assert!(
            used.contains(name),
            "the seed's metric {name} is on the dashboard or in the rules: {used:?}"
        );
    }
}

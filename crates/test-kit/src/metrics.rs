//! Reading a Prometheus text exposition (what every service's `/metrics` answers) in tests.

/// The value of the sample `series` (a metric name, with its labels exactly as exposed, e.g.
/// `requests_total{code="200"}`): the first line that is not a comment and starts with
/// `series` followed by a space. `None` when there is no such line or its value is no number.
pub fn value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// [`value`], panicking with the exposition when the sample is missing.
pub fn expect(exposition: &str, series: &str) -> f64 {
    value(exposition, series).unwrap_or_else(|| panic!("no sample {series} in\n{exposition}"))
}

//! The status page at the admin server's `/`: one self-contained HTML file
//! (`assets/status.html`, embedded with `include_str!`), the JSON it polls (`/api/state`), and
//! hls.js for its player (`/assets/hls.min.js`, read from `--assets-dir`; hls.js comes from
//! npm, installed by `npm ci --prefix web`, and is not committed).
//!
//! The server renders the current state into the page so it reads without JavaScript (and
//! with `curl`); the page's script then re-renders the same elements every second.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::config::Config;
use crate::control::{AgeSample, Status};

/// The page, with `{{SLOT}}` placeholders filled by [`render`].
const TEMPLATE: &str = include_str!("../assets/status.html");
/// The one file served under `/assets/`: the player's HLS library.
pub const HLS_JS: &str = "hls.min.js";

/// What the page needs besides the controller's state.
#[derive(Clone, Debug)]
pub struct PageConfig {
    /// Directory holding [`HLS_JS`].
    pub assets_dir: PathBuf,
    /// HLS URL the player plays.
    pub player_url: String,
    /// The failover age threshold, drawn on the plot.
    pub age_threshold_seconds: f64,
}

impl PageConfig {
    /// From the service's configuration.
    pub fn from_config(config: &Config) -> Self {
        PageConfig {
            assets_dir: config.assets_dir.clone(),
            player_url: config.player_url(),
            age_threshold_seconds: config.segment_age_threshold_seconds,
        }
    }
}

impl Default for PageConfig {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

/// `/api/state`: everything the page shows, in one poll.
#[derive(Clone, Debug, Serialize)]
pub struct PageState {
    /// The same document as `/healthz`.
    pub status: Status,
    /// Segment ages, one sample a second, oldest first.
    pub age_history: Vec<AgeSample>,
    /// The failover age threshold.
    pub age_threshold_seconds: f64,
    /// HLS URL the player plays.
    pub player_url: String,
    /// Server time, milliseconds since the Unix epoch: the plot's right edge, so a browser
    /// with a skewed clock still plots the last minutes.
    pub now_ms: u64,
}

impl PageState {
    /// Assembles the state at `now`.
    pub fn new(
        status: Status,
        age_history: Vec<AgeSample>,
        page: &PageConfig,
        now: SystemTime,
    ) -> Self {
        PageState {
            status,
            age_history,
            age_threshold_seconds: page.age_threshold_seconds,
            player_url: page.player_url.clone(),
            now_ms: now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }
}

/// Escapes text for HTML element content and double-quoted attributes.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn or_dash(v: Option<String>) -> String {
    v.map_or_else(|| "-".to_string(), |v| escape(&v))
}

/// One colour per origin, in origin order: the first two are the primary's and the backup's.
/// The page's script has the same list (`PALETTE` in `assets/status.html`).
pub const PALETTE: [&str; 16] = [
    "#2563eb", "#ea580c", "#15803d", "#9333ea", "#0891b2", "#ca8a04", "#db2777", "#4b5563",
    "#1e3a8a", "#9a3412", "#166534", "#581c87", "#155e75", "#854d0e", "#9d174d", "#111827",
];

/// What the page says about an origin's new flows (the script's `rotationState`).
fn rotation_state(o: &crate::control::OriginStatus) -> &'static str {
    match (o.drained, o.in_rotation, o.draining) {
        (true, _, true) => "drained (draining)",
        (true, _, false) => "drained",
        (false, true, _) => "in rotation",
        (false, false, true) => "out (draining)",
        (false, false, false) => "out",
    }
}

/// The page with `status` rendered in; the script keeps it current afterwards.
pub fn render(s: &Status, page: &PageConfig) -> String {
    let active = escape(&s.active);
    // `<b>` without attributes: `Active origin: <b>primary</b>` is what scripts grep for.
    let summary = format!(
        "Active origin: <b>{active}</b>, mode: <span id=\"mode\">{}{}</span>",
        s.mode,
        s.manual_origin
            .as_deref()
            .map_or_else(String::new, |o| format!(" (pinned to {})", escape(o))),
    );
    let mut rows = String::new();
    let mut legend = String::new();
    for (i, o) in s.origins.iter().enumerate() {
        let name = escape(&o.name);
        let color = PALETTE[i % PALETTE.len()];
        let flows = s
            .flows
            .as_ref()
            .and_then(|f| f.get(&o.name))
            .map(ToString::to_string);
        let state = if o.healthy { "healthy" } else { "unhealthy" };
        rows.push_str(&format!(
            "<tr id=\"origin-{name}\"><td><span class=\"swatch\" style=\"background:{color}\"></span>{name}{}</td>\
             <td class=\"health {state}\">{state}</td><td class=\"rotation\">{}</td><td class=\"weight\">{}</td><td class=\"age\">{} s</td>\
             <td class=\"msn\">{}</td><td class=\"status\">{}</td><td class=\"latency\">{} ms</td><td class=\"flows\">{}</td>\
             <td class=\"err\">{}</td></tr>\n",
            if s.active == o.name { " (active)" } else { "" },
            rotation_state(o),
            o.weight,
            or_dash(o.age_seconds.map(|a| format!("{a:.2}"))),
            or_dash(o.msn.map(|m| m.to_string())),
            or_dash(o.status.map(|c| c.to_string())),
            or_dash(o.latency_ms.map(|l| format!("{l:.1}"))),
            or_dash(flows),
            o.last_error.as_deref().map(escape).unwrap_or_default(),
        ));
        legend.push_str(&format!(
            "<span style=\"margin-right:16px\"><span class=\"swatch\" style=\"background:{color}\"></span>{name}</span>"
        ));
    }
    let mut decisions = String::new();
    for d in s.decisions.iter().rev() {
        let at: chrono::DateTime<chrono::Utc> = d.at.into();
        decisions.push_str(&format!(
            "<li class=\"decision\"><span class=\"time\">{}</span> <b>{}</b> <span class=\"reason\">{}</span> ({} &rarr; {}): {}</li>\n",
            at.format("%H:%M:%S%.3f"),
            // The JSON spelling, as the page's script renders it.
            serde_json::to_value(d.action).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            d.reason.label(),
            escape(&d.from_name),
            escape(&d.to_name),
            escape(&d.detail)
        ));
    }
    if decisions.is_empty() {
        decisions.push_str("<li class=\"none\">no flips or alarms yet</li>");
    }
    TEMPLATE
        .replace("{{ACTIVE}}", &active)
        .replace("{{SUMMARY}}", &summary)
        .replace(
            "{{BOTH_BAD_HIDDEN}}",
            if s.both_bad { "" } else { "hidden" },
        )
        .replace("{{ORIGIN_ROWS}}", &rows)
        .replace("{{LEGEND}}", &legend)
        .replace("{{DECISIONS}}", &decisions)
        .replace("{{PLAYER_URL}}", &escape(&page.player_url))
        .replace("{{AGE_THRESHOLD}}", &page.age_threshold_seconds.to_string())
}

/// A file served under `/assets/`.
#[derive(Debug, PartialEq, Eq)]
pub enum Asset {
    /// The file's bytes.
    Found(Vec<u8>),
    /// Not served: the text says why and what to do.
    Missing(String),
}

/// Reads `/assets/<name>`; only [`HLS_JS`] is served, from `dir`.
pub async fn asset(dir: &Path, name: &str) -> Asset {
    if name != HLS_JS {
        return Asset::Missing(format!(
            "no asset {name:?}; only /assets/{HLS_JS} is served\n"
        ));
    }
    let path = dir.join(HLS_JS);
    match tokio::fs::read(&path).await {
        Ok(bytes) => Asset::Found(bytes),
        Err(e) => Asset::Missing(format!(
            "hls.js not found at {} ({e}): run `npm ci --prefix web` in the repository, or point \
             --assets-dir / SWITCHER_ASSETS_DIR at hls.js's dist directory\n",
            path.display()
        )),
    }
}

/// Logs once at start whether the player will find hls.js, so a missing `npm ci` shows in
/// the log rather than only as a blank player.
pub fn check_assets(page: &PageConfig) {
    let path = page.assets_dir.join(HLS_JS);
    if path.is_file() {
        tracing::debug!(path = %path.display(), "status page player: hls.js found");
    } else {
        tracing::warn!(
            path = %path.display(),
            "status page player: hls.js not found (run `npm ci --prefix web` or set --assets-dir); the page works without video"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_has_only_slots_render_fills() {
        let mut t = TEMPLATE.to_string();
        for slot in [
            "{{ACTIVE}}",
            "{{SUMMARY}}",
            "{{BOTH_BAD_HIDDEN}}",
            "{{ORIGIN_ROWS}}",
            "{{LEGEND}}",
            "{{DECISIONS}}",
            "{{PLAYER_URL}}",
            "{{AGE_THRESHOLD}}",
        ] {
            assert!(t.contains(slot), "template lost {slot}");
            t = t.replace(slot, "");
        }
        assert!(!t.contains("{{"), "a slot render does not fill");
    }

    #[tokio::test]
    async fn only_hls_js_is_served_and_a_missing_one_says_what_to_do() {
        let dir = std::env::temp_dir().join(format!("switcher-assets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        match asset(&dir, HLS_JS).await {
            Asset::Missing(m) => assert!(m.contains("npm ci --prefix web"), "{m}"),
            Asset::Found(_) => panic!("served a file that does not exist"),
        }
        std::fs::write(dir.join(HLS_JS), b"/* hls */").expect("write");
        assert_eq!(
            asset(&dir, HLS_JS).await,
            Asset::Found(b"/* hls */".to_vec())
        );
        assert!(matches!(asset(&dir, "../secret").await, Asset::Missing(_)));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}

//! Headless Chromium driven through the DevTools protocol, for tests that check a page in a
//! real browser (the status page, its hls.js player).

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::process::Killed;

/// Upper bound for each wait on the browser.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Headless Chromium on `url` with remote debugging on a free port; returns the process and
/// the DevTools port it printed.
pub fn start_chromium(url: &str, profile: &Path) -> (Killed, u16) {
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--autoplay-policy=no-user-gesture-required",
            "--window-size=1280,900",
            "--hide-scrollbars",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().expect("chromium stderr");
    let child = Killed(child);
    // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/<id>" is the readiness signal.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && let Some(rest) = line.split("DevTools listening on ws://127.0.0.1:").nth(1)
            {
                let port = rest.split('/').next().and_then(|p| p.parse::<u16>().ok());
                let _ = tx.send(port);
                sent = true;
            }
        }
    });
    let port = rx
        .recv_timeout(DEADLINE)
        .expect("chromium printed no DevTools port")
        .expect("chromium's DevTools line has a port");
    (child, port)
}

/// GET on the DevTools HTTP endpoint: its JSON.
pub fn devtools_get(port: u16, path: &str) -> Value {
    let response = crate::http::get_within(&format!("http://127.0.0.1:{port}{path}"), DEADLINE)
        .unwrap_or_else(|e| panic!("devtools {path}: {e}"));
    response
        .json()
        .unwrap_or_else(|e| panic!("devtools {path}: {e}: {}", response.text()))
}

/// A DevTools protocol session on the page.
pub struct Cdp {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Cdp {
    /// Attaches to the page target of the browser whose DevTools listen on `port`.
    pub fn attach(port: u16) -> Self {
        let targets = devtools_get(port, "/json/list");
        let ws_url = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("no page target in {targets}"))
            .to_string();
        let (ws, _) =
            tungstenite::connect(ws_url.as_str()).expect("connect to the page's DevTools socket");
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            // A browser that stops answering fails the test instead of hanging it.
            s.set_read_timeout(Some(DEADLINE)).expect("read timeout");
        }
        Cdp { ws, next_id: 1 }
    }

    /// Calls DevTools method `method`; its result (panics on a protocol error).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(tungstenite::Message::text(msg))
            .expect("send devtools command");
        loop {
            let msg = self.ws.read().expect("read devtools message");
            let Ok(text) = msg.to_text() else { continue };
            let v: Value = serde_json::from_str(text).expect("devtools JSON");
            // Events (no id) and other replies are skipped.
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page: its JSON value, or the exception.
    pub fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        match r.get("exceptionDetails") {
            Some(e) => Err(e["exception"]["description"].clone()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    /// Evaluates a JavaScript expression in the page; returns its JSON value.
    pub fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    /// Re-evaluates `expression` until `pred` holds; returns the value that satisfied it.
    pub fn wait_for(
        &mut self,
        what: &str,
        expression: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        let found = crate::wait::try_poll_until(DEADLINE, || {
            // An exception (the page still loading) counts as "not yet".
            match self.try_eval(expression) {
                Ok(v) if pred(&v) => Some(v),
                Ok(v) | Err(v) => {
                    last = v;
                    None
                }
            }
        });
        found.unwrap_or_else(|| {
            let player = self.try_eval("document.getElementById('player-state').textContent");
            let conn = self.try_eval("document.getElementById('conn').textContent");
            panic!("{what}: not after {DEADLINE:?}; last value {last}; player: {player:?}; page: {conn:?}")
        })
    }

    /// Waits until the `<video>` element `id` plays and has advanced by `seconds`; its
    /// `currentTime` when it started and when it had advanced.
    pub fn wait_video_advances(&mut self, id: &str, seconds: f64) -> (f64, f64) {
        let current = format!("document.getElementById('{id}').currentTime");
        let t0 = self
            .wait_for("video starts", &current, |v| v.as_f64() > Some(0.0))
            .as_f64()
            .expect("currentTime is a number");
        let t1 = self
            .wait_for(&format!("video advances {seconds} s"), &current, |v| {
                v.as_f64().is_some_and(|t| t >= t0 + seconds)
            })
            .as_f64()
            .expect("currentTime is a number");
        (t0, t1)
    }
}

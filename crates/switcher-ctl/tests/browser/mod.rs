//! Headless Chromium driven through the DevTools protocol, for tests that check a page in a
//! real browser (the status page, its hls.js player). Shared by switcher-ctl's status page test
//! and the end-to-end test (included there with `#[path]`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Upper bound for each wait on the browser.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A child process stopped and reaped when the test ends, passed or not.
pub struct Killed(pub Child);

/// How long a child gets to exit on SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

impl Drop for Killed {
    fn drop(&mut self) {
        // SIGTERM first: Chromium then stops and reaps its own helper processes, which a
        // SIGKILL would leave behind.
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let start = Instant::now();
        while start.elapsed() < TERM_GRACE {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

/// GET on the DevTools HTTP endpoint (it keeps connections open, so the body is read by
/// its Content-Length, not to EOF).
pub fn devtools_get(port: u16, path: &str) -> Value {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect devtools");
    s.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    write!(&s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").expect("devtools request");
    let mut r = BufReader::new(s);
    let mut length = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("devtools response head");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().expect("content length");
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).expect("devtools response body");
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("devtools {path}: {e}: {}", String::from_utf8_lossy(&body)))
}

/// A DevTools protocol session on the page.
pub struct Cdp {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Cdp {
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
        let start = Instant::now();
        loop {
            // An exception (the page still loading) counts as "not yet".
            let v = match self.try_eval(expression) {
                Ok(v) if pred(&v) => return v,
                Ok(v) | Err(v) => v,
            };
            if start.elapsed() > DEADLINE {
                let player = self.try_eval("document.getElementById('player-state').textContent");
                let conn = self.try_eval("document.getElementById('conn').textContent");
                panic!(
                    "{what}: not after {DEADLINE:?}; last value {v}; player: {player:?}; page: {conn:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

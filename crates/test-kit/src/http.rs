//! A blocking HTTP/1.1 client for tests, benchmarks and xtask: ureq, one fresh connection per
//! request (no pool: a kept connection would hide what a fresh client sees, and a test in a
//! namespace must not reuse a socket made elsewhere). Any status is an answer, not an error;
//! chunked bodies are decoded; the body is bounded.

use std::time::Duration;

/// Default bound on a whole request (connect, send, read the body).
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest body read (an HLS segment of the tests is far smaller).
pub const MAX_BODY: u64 = 64 << 20;

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The body (decoded from chunked transfer coding when the server used it).
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// Why a request got no response.
pub type Error = ureq::Error;

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .build()
        .into()
}

/// `method url` with `body` (empty: none), within `timeout`.
pub fn request(method: &str, url: &str, body: &[u8], timeout: Duration) -> Result<Response, Error> {
    let agent = agent(timeout);
    let mut response = match method {
        "GET" => agent.get(url).call()?,
        "HEAD" => agent.head(url).call()?,
        "DELETE" => agent.delete(url).call()?,
        "POST" => agent.post(url).send(body)?,
        "PUT" => agent.put(url).send(body)?,
        other => {
            return Err(ureq::Error::BadUri(format!(
                "method {other} is not supported by the test client"
            )));
        }
    };
    let status = response.status().as_u16();
    let body = if method == "HEAD" {
        Vec::new()
    } else {
        response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()?
    };
    Ok(Response { status, body })
}

/// GET `url` within [`TIMEOUT`].
pub fn get(url: &str) -> Result<Response, Error> {
    request("GET", url, &[], TIMEOUT)
}

/// GET `url` within `timeout`.
pub fn get_within(url: &str, timeout: Duration) -> Result<Response, Error> {
    request("GET", url, &[], timeout)
}

/// GET `http://{addr}{path}` from inside network namespace `ns` (here when `None`).
pub fn get_in(
    ns: Option<&str>,
    addr: &str,
    path: &str,
    timeout: Duration,
) -> Result<Response, Error> {
    let url = format!("http://{addr}{path}");
    crate::netns::run_in(ns, move || get_within(&url, timeout))
}

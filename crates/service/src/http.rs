//! Response helpers for routers, and the router of services whose admin endpoint only
//! exports metrics.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};

use crate::server::Router;

/// Content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Request header with which a client asks an hls-edge origin to answer from its own files as
/// they are: never with a copy filled from a peer origin (the origin's `peer` module), and
/// without waiting for a segment that is not there. The edge's prober sends it, since it
/// judges the origin's own files; an origin sends it when it asks a peer, so that a fill never
/// chains or loops, and costs the peer no wait (the asking origin waited already). Any value
/// counts.
pub const LOCAL_ONLY_HEADER: &str = "x-hls-edge-local-only";

/// A response with `status`, a `Content-Type` and `body`.
pub fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body)
}

/// The admin router of a service that exports metrics and nothing else:
/// - `GET /metrics`: `render()` in the Prometheus text format, rendered at scrape time;
/// - `GET /healthz`: `{"status":"ok"}` (the process is up and serving);
/// - `HEAD` of either: the same headers, no body (hyper drops it);
/// - any other path: 404; any other method: 405 with `Allow: GET, HEAD`.
///
/// The query string selects nothing.
pub fn metrics_router(render: impl Fn() -> String + Send + Sync + 'static) -> impl Router {
    move |request: Request<Incoming>| {
        let answer = match (request.method(), request.uri().path()) {
            (&Method::GET | &Method::HEAD, "/metrics") => {
                response(StatusCode::OK, PROMETHEUS_CONTENT_TYPE, render())
            }
            (&Method::GET | &Method::HEAD, "/healthz") => {
                response(StatusCode::OK, "application/json", "{\"status\":\"ok\"}")
            }
            (&Method::GET | &Method::HEAD, _) => text(StatusCode::NOT_FOUND, "not found\n"),
            _ => {
                let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
                r.headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
                r
            }
        };
        std::future::ready(answer)
    }
}

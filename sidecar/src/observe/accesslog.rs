//! The access log: one JSON object per request on stdout, apart from the diagnostic logs on
//! stderr, so log shippers can parse it without guessing.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

/// One access log line.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// Unix time in milliseconds.
    pub ts_ms: u128,
    /// Listener name.
    pub listener: &'a str,
    /// Client address.
    pub client: SocketAddr,
    /// Request method.
    pub method: &'a str,
    /// Host or authority.
    pub host: &'a str,
    /// Request path (no query, which may hold secrets).
    pub path: &'a str,
    /// `HTTP/1.1`, `HTTP/2.0`…
    pub version: String,
    /// Response status.
    pub status: u16,
    /// Route name, if one matched.
    pub route: Option<&'a str>,
    /// The matched rule's name, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'a str>,
    /// Who the route's authentication let in: the API key's entry name, the basic user or the
    /// token's `sub` (never a credential).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    /// Backend name, if the request was forwarded.
    pub backend: Option<&'a str>,
    /// The request ID (`x-request-id`, the client's or a new one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    /// The W3C trace id (`traceparent`), the same at every hop of one request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
    /// Attempts made (1 + retries).
    pub attempts: u32,
    /// The proxy's error reason, if the proxy answered itself.
    pub error: Option<&'a str>,
    /// Time to response headers, in milliseconds.
    pub duration_ms: f64,
}

/// Writes one entry.
pub fn write(entry: &Entry<'_>) {
    if let Ok(line) = serde_json::to_string(entry) {
        let mut out = std::io::stdout().lock();
        // A closed stdout must not take the proxy down.
        let _ = writeln!(out, "{line}");
    }
}

/// Milliseconds as a float with microsecond precision.
pub fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

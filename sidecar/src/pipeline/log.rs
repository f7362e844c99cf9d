//! What the access log and metrics learn about a request, for both request paths.

use std::sync::Arc;

use http::header::HOST;
use http::{HeaderMap, Version};
use tokio::time::Instant;

use super::ConnInfo;
use crate::observe::accesslog;
use crate::policy::ids::{RequestIds, X_REQUEST_ID};
use crate::shared::Shared;

/// What the access log and metrics learn while a request is handled.
#[derive(Default)]
pub(crate) struct Outcome {
    pub(crate) route: Option<Arc<str>>,
    /// The matched rule's name (none when unnamed).
    pub(crate) rule: Option<Arc<str>>,
    pub(crate) backend: Option<Arc<str>>,
    pub(crate) attempts: u32,
    pub(crate) error: Option<&'static str>,
    /// The request ID and trace id it was stamped with.
    pub(crate) ids: Option<RequestIds>,
    /// Who the rule's authentication let in.
    pub(crate) principal: Option<crate::policy::authn::Principal>,
    /// The rule's authentication refused the request.
    pub(crate) unauthenticated: bool,
    /// The rule's rate-limit store failed, and what was done about it.
    pub(crate) store_failure: Option<crate::policy::stages::StoreFailure>,
}

impl Outcome {
    /// Puts the request's ID on an answer the proxy made itself, so a client that reports an
    /// error can name the request (Envoy does the same).
    pub(crate) fn mark(&self, resp: &mut http::Response<crate::error::Body>) {
        if let Some(ids) = &self.ids {
            resp.headers_mut()
                .insert(X_REQUEST_ID.clone(), ids.request_id_value());
        }
    }
}

/// A request's facts for the access log and metrics, taken before the request is consumed.
pub(crate) struct RequestLog {
    start: Instant,
    method: http::Method,
    version: Version,
    host: String,
    path: String,
}

impl RequestLog {
    /// Starts timing a request. Host and path are copied only when access logs are on (`raw`:
    /// the fields of a request without a header map, and the bytes they are in).
    pub(crate) fn new(
        shared: &Shared,
        parts_method: &http::Method,
        version: Version,
        uri: &http::Uri,
        headers: &HeaderMap,
        raw: Option<(&crate::wire::raw::Fields, &[u8])>,
    ) -> Self {
        let (host, path) = if shared.access_log {
            let host = match (uri.authority(), raw) {
                (None, Some((fields, buf))) => fields.host(buf),
                _ => request_host(uri, headers),
            };
            (host.to_owned(), uri.path().to_owned())
        } else {
            Default::default()
        };
        Self {
            start: Instant::now(),
            method: parts_method.clone(),
            version,
            host,
            path,
        }
    }

    /// Counts the answered request in the metrics and writes its access log line.
    pub(crate) fn finish(self, shared: &Shared, conn: &ConnInfo, status: u16, out: &Outcome) {
        let elapsed = self.start.elapsed();
        shared.metrics.request(
            out.route.as_ref(),
            out.rule.as_ref(),
            out.backend.as_ref(),
            status,
            elapsed,
        );
        if let Some(route) = &out.route
            && (out.principal.is_some() || out.unauthenticated)
        {
            let who = out.principal.as_ref().map(|p| (p.method, &p.client));
            shared.metrics.authentication(route, who);
        }
        if let (Some(route), Some(failure)) = (&out.route, out.store_failure) {
            let let_in = failure == crate::policy::stages::StoreFailure::LetIn;
            shared
                .metrics
                .rate_limit_store_error(route, out.rule.as_ref(), let_in);
        }
        if shared.access_log {
            accesslog::write(&accesslog::Entry {
                ts_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis()),
                listener: &conn.listener,
                client: conn.client,
                method: self.method.as_str(),
                host: &self.host,
                path: &self.path,
                version: format!("{:?}", self.version),
                status,
                route: out.route.as_deref(),
                rule: out.rule.as_deref(),
                user: out.principal.as_ref().map(|p| &*p.client),
                request_id: out.ids.as_ref().and_then(|i| i.request_id()),
                trace_id: out.ids.as_ref().map(|i| i.trace_id()),
                backend: out.backend.as_deref(),
                attempts: out.attempts,
                error: out.error,
                duration_ms: accesslog::millis(elapsed),
            });
        }
    }
}

/// The host a request is for: its URI's authority (HTTP/2, absolute-form), else `Host`.
pub(crate) fn request_host<'a>(uri: &'a http::Uri, headers: &'a http::HeaderMap) -> &'a str {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("")
}

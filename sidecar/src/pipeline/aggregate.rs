//! Aggregation: a rule that answers one GET with the JSON objects of several backends merged
//! into one, instead of forwarding it to one backend.
//!
//! ```text
//!                ┌─► backend 1 (path, timeout) ─► {"a":1,"b":2} ─┐
//! GET /summary ──┼─► backend 2 ─────────────────► {"b":3}       ─┼─► {"a":1,"b":3,"orders":{…}}
//!                └─► backend 3, key "orders" ───► {…}           ─┘
//! ```
//!
//! Each backend is asked through the proxy's usual upstream machinery (endpoint picking,
//! connection limits, pools, endpoint health), all at once, each within the rule's timeout to
//! the end of its body. Objects merge in the rule's order: a backend without a key has its
//! fields put at the top level (a later backend's field replaces an earlier one's), one with a
//! key is put under it. A backend that fails — no endpoint, no connection, timeout, a status
//! other than 2xx, a body over [`MAX_AGGREGATE_BODY`] or not a JSON object — is left out: the
//! answer says so with [`INCOMPLETE`] and names the failed ones in [`FAILED`]; when every
//! backend fails the answer is 502 `aggregate_failed`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;
use portico_proxy_api::{Aggregate, AggregateBackend};
use serde_json::{Map, Value};

use super::Outcome;
use super::attempts::Attempts;
use crate::config::snapshot::Snapshot;
use crate::error::{Body, ProxyError, empty, full};
use crate::forward::backend::BackendState;
use crate::policy::compress;
use crate::policy::cors;
use crate::route::router::RouteHit;
use crate::shared::Shared;

/// The largest body read from one backend (1 MiB); a longer one fails that backend. The whole
/// answer is built in memory, so this bounds it at 8 MiB per request.
pub const MAX_AGGREGATE_BODY: usize = 1 << 20;

/// `x-portico-aggregate: incomplete` marks an answer some backends are missing from.
pub const INCOMPLETE: &str = "x-portico-aggregate";

/// `x-portico-aggregate-failed: orders, 2` names the backends left out: by key, or by position
/// in the rule's list (from 1) for a backend without one. Service names are not given: the
/// client may be outside the cluster.
pub const FAILED: &str = "x-portico-aggregate-failed";

/// Request headers not sent to aggregated backends: the request's body is not sent, nor is an
/// upgrade asked for, the proxy must read each answer whole and uncompressed, and a 304 or a
/// range has nothing to merge.
const NOT_SENT: [HeaderName; 11] = [
    header::CONNECTION,
    header::UPGRADE,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::EXPECT,
    header::ACCEPT_ENCODING,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::RANGE,
];

/// A request an aggregate rule answers: its rule, and the backends as the snapshot has them
/// (`None`: unknown to the snapshot, which fails that backend only).
pub(crate) struct Aggregated<'a> {
    /// The route and rule that matched.
    pub(crate) hit: RouteHit<'a>,
    /// The rule's aggregate.
    spec: &'a Aggregate,
    /// Each of the aggregate's backends, in its order.
    backends: Vec<Option<Arc<BackendState>>>,
    /// The request's allowed CORS origin, marked on the answer.
    pub(crate) cors_origin: Option<HeaderValue>,
}

impl<'a> Aggregated<'a> {
    /// The plan for a request that `hit`'s aggregate answers. Only GET and HEAD are
    /// aggregated (a HEAD asks the backends with GET, so its headers are a GET's).
    pub(crate) fn new(
        snap: &'a Snapshot,
        hit: RouteHit<'a>,
        spec: &'a Aggregate,
        method: &Method,
        cors_origin: Option<HeaderValue>,
    ) -> Result<Self, ProxyError> {
        if method != Method::GET && method != Method::HEAD {
            return Err(ProxyError::MethodNotAllowed("GET, HEAD"));
        }
        let backends = spec
            .backends
            .iter()
            .map(|b| snap.backends.get(b.backend.as_str()).cloned())
            .collect();
        Ok(Self {
            hit,
            spec,
            backends,
            cors_origin,
        })
    }

    /// Asks every backend at once with the request's headers (`parts`: hop-by-hop headers gone,
    /// `X-Forwarded-*`, request ID and trace context set) and answers with the merged objects,
    /// the rule's response stages and compression applied.
    pub(crate) async fn respond(
        &self,
        shared: &Arc<Shared>,
        parts: &Parts,
        client: SocketAddr,
        out: &mut Outcome,
    ) -> Result<Response<Body>, ProxyError> {
        let mut headers = parts.headers.clone();
        for name in &NOT_SENT {
            headers.remove(name);
        }
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let timeout = self.spec.timeout.get();
        let asks = self
            .spec
            .backends
            .iter()
            .zip(&self.backends)
            .map(|(b, state)| ask(shared, state.as_ref(), b, parts, &headers, client, timeout));
        let bodies = futures_util::future::join_all(asks).await;
        // Every backend asked is one upstream request: the access log's `attempts`.
        out.attempts = u32::try_from(bodies.len()).unwrap_or(u32::MAX);
        let merged = merge(self.spec.backends.iter().zip(bodies));
        if merged.failed.len() == self.spec.backends.len() {
            return Err(ProxyError::AggregateFailed);
        }
        let json = Value::Object(merged.object).to_string();
        let mut resp = Response::new(full(json.clone()));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(json.len()));
        if !merged.failed.is_empty() {
            out.error = Some("aggregate_incomplete");
            h.insert(INCOMPLETE, HeaderValue::from_static("incomplete"));
            if let Ok(v) = HeaderValue::from_str(&merged.failed.join(", ")) {
                h.insert(FAILED, v);
            }
        }
        let stages = &self.hit.rule.stages;
        stages.on_response(resp.headers_mut());
        if let Some(c) = &stages.cors {
            cors::mark(c, self.cors_origin.as_ref(), resp.headers_mut());
        }
        if let Some(c) = &stages.compression
            && let Some(encoding) = compress::negotiate(&parts.headers, c)
        {
            resp = compress::apply(resp, encoding, c, parts.method == Method::HEAD);
        }
        if parts.method == Method::HEAD {
            // A GET's headers (its `content-length` included), no body: HTTP/2 refuses data
            // on an answer to HEAD.
            *resp.body_mut() = empty();
        }
        Ok(resp)
    }
}

/// Why one backend is left out (logged; the client sees only which one).
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Proxy(#[from] ProxyError),
    #[error("backend is not in the config")]
    Unknown,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("status {0}")]
    Status(StatusCode),
    #[error("body unreadable or over {MAX_AGGREGATE_BODY} bytes: {0}")]
    Body(String),
    #[error("body is not a JSON object")]
    NotAnObject,
}

/// Asks one backend: a GET of its path (else the request's) with the request's query, within
/// `timeout` to the end of its body. Its JSON object, or why there is none.
async fn ask(
    shared: &Arc<Shared>,
    state: Option<&Arc<BackendState>>,
    spec: &AggregateBackend,
    parts: &Parts,
    headers: &HeaderMap,
    client: SocketAddr,
    timeout: Duration,
) -> Result<Map<String, Value>, Failure> {
    let state = state.ok_or(Failure::Unknown)?;
    let sub = sub_request(parts, headers, spec.path.as_deref())?;
    let attempts = Attempts {
        shared,
        backend: state,
        parts: &sub,
        client,
        upgrade: false,
        // Also the head's limit, so a backend that does not answer counts against its endpoint.
        per_try: Some(timeout),
    };
    let exchange = async {
        let resp = attempts.once(empty(), None).await?;
        if !resp.status().is_success() {
            return Err(Failure::Status(resp.status()));
        }
        object(&read_capped(resp.into_body()).await?)
    };
    let result = bounded(timeout, exchange).await;
    if let Err(e) = &result {
        tracing::debug!(backend = %spec.backend, error = %e, "aggregated backend left out");
    }
    result
}

/// A body's bytes, up to [`MAX_AGGREGATE_BODY`]; a longer or broken body fails. (Read frame by
/// frame rather than with `http_body_util::Limited`, whose error conversion makes the request's
/// future not provably `Send`.)
async fn read_capped(mut body: Body) -> Result<Bytes, Failure> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Failure::Body(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_AGGREGATE_BODY {
                return Err(Failure::Body("too long".into()));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// `exchange`, failed with [`Failure::Timeout`] unless it ends within `timeout`.
async fn bounded<T>(
    timeout: Duration,
    exchange: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(Failure::Timeout(timeout)))
}

/// The request sent to one backend: GET, its path (or the request's) with the request's query.
fn sub_request(parts: &Parts, headers: &HeaderMap, path: Option<&str>) -> Result<Parts, Failure> {
    let uri = match (path, parts.uri.query()) {
        (None, _) => parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
        (Some(p), None) => p.to_owned(),
        (Some(p), Some(q)) => format!("{p}?{q}"),
    };
    let (mut sub, ()) = http::Request::get(uri)
        .version(parts.version)
        .body(())
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?
        .into_parts();
    sub.headers = headers.clone();
    Ok(sub)
}

/// A body as a JSON object.
fn object(body: &Bytes) -> Result<Map<String, Value>, Failure> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Failure::NotAnObject),
    }
}

/// The merged answer and the backends left out of it.
#[derive(Debug, Default)]
struct Merged {
    object: Map<String, Value>,
    /// Keys, or positions from 1 for backends without a key.
    failed: Vec<String>,
}

/// Merges the backends' objects in the rule's order (see the module doc).
fn merge<'b>(
    results: impl Iterator<Item = (&'b AggregateBackend, Result<Map<String, Value>, Failure>)>,
) -> Merged {
    let mut merged = Merged::default();
    for (i, (spec, result)) in results.enumerate() {
        match (result, &spec.key) {
            (Ok(object), None) => merged.object.extend(object),
            (Ok(object), Some(key)) => {
                merged.object.insert(key.clone(), Value::Object(object));
            }
            (Err(_), key) => merged
                .failed
                .push(key.clone().unwrap_or_else(|| (i + 1).to_string())),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn backend(key: Option<&str>) -> AggregateBackend {
        AggregateBackend {
            backend: "b".into(),
            path: None,
            key: key.map(str::to_owned),
        }
    }

    fn obj(v: Value) -> Result<Map<String, Value>, Failure> {
        match v {
            Value::Object(m) => Ok(m),
            _ => Err(Failure::NotAnObject),
        }
    }

    #[test]
    fn top_level_fields_merge_and_a_later_backend_overrides_an_earlier_one() {
        let specs = [backend(None), backend(None)];
        let merged = merge(specs.iter().zip([
            obj(json!({"a": 1, "b": {"x": 1}})),
            obj(json!({"b": {"y": 2}, "c": 3})),
        ]));
        assert_eq!(
            Value::Object(merged.object),
            json!({"a": 1, "b": {"y": 2}, "c": 3}),
            "the later backend's field replaces the earlier one's, whole"
        );
        assert!(merged.failed.is_empty());
    }

    #[test]
    fn keyed_backends_nest_under_their_keys_beside_top_level_fields() {
        let specs = [
            backend(Some("user")),
            backend(None),
            backend(Some("orders")),
        ];
        let merged = merge(specs.iter().zip([
            obj(json!({"id": 7})),
            obj(json!({"version": "v2"})),
            obj(json!({"count": 2})),
        ]));
        assert_eq!(
            Value::Object(merged.object),
            json!({"user": {"id": 7}, "version": "v2", "orders": {"count": 2}})
        );
    }

    #[test]
    fn failed_backends_are_left_out_and_named_by_key_or_position() {
        let specs = [backend(None), backend(Some("orders")), backend(None)];
        let merged = merge(specs.iter().zip([
            Err(Failure::Timeout(Duration::from_secs(1))),
            Err(Failure::Status(StatusCode::BAD_GATEWAY)),
            obj(json!({"ok": true})),
        ]));
        assert_eq!(Value::Object(merged.object), json!({"ok": true}));
        assert_eq!(merged.failed, ["1", "orders"]);
    }

    #[test]
    fn only_a_json_object_body_is_merged() {
        assert!(object(&Bytes::from_static(br#"{"a": [1, 2]}"#)).is_ok());
        for body in [&b"[1, 2]"[..], b"\"text\"", b"", b"{\"a\": ", b"<html>"] {
            assert!(
                matches!(object(&Bytes::from_static(body)), Err(Failure::NotAnObject)),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_backend_gets_its_path_with_the_request_s_query_and_a_get() {
        let (parts, ()) = http::Request::head("/summary?user=7")
            .body(())
            .expect("request")
            .into_parts();
        let headers = HeaderMap::new();
        let own = sub_request(&parts, &headers, None).expect("sub-request");
        assert_eq!(own.uri, "/summary?user=7");
        assert_eq!(own.method, Method::GET);
        let other = sub_request(&parts, &headers, Some("/v1/users")).expect("sub-request");
        assert_eq!(other.uri, "/v1/users?user=7");
        let (bare, ()) = http::Request::get("/s")
            .body(())
            .expect("request")
            .into_parts();
        let plain = sub_request(&bare, &headers, Some("/v1/users")).expect("sub-request");
        assert_eq!(plain.uri, "/v1/users");
    }

    /// The per-backend timeout covers the body too: a backend that sends its head and then
    /// stalls is cut at the timeout (paused clock: no real waiting).
    #[tokio::test(start_paused = true)]
    async fn the_timeout_bounds_the_whole_exchange_body_included() {
        let timeout = Duration::from_millis(300);
        let stalled = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, Failure>(Map::new())
        };
        let start = tokio::time::Instant::now();
        let result = bounded(timeout, stalled).await;
        assert!(matches!(result, Err(Failure::Timeout(t)) if t == timeout));
        assert_eq!(start.elapsed(), timeout);
        let quick = async {
            tokio::time::sleep(Duration::from_millis(299)).await;
            object(&Bytes::from_static(b"{}"))
        };
        assert!(bounded(timeout, quick).await.is_ok());
    }
}

//! The admin server, on its own port so it is never exposed with the data plane:
//! `/live`, `/ready`, `/metrics` (Prometheus text), `/config` (the config in force, JSON) and
//! `/identity` (the workload identity, its certificate chain and expiry, the trust anchors, the
//! issuer epoch it is from and the one the operator announced last; JSON) and, for a sidecar,
//! `/subscriptions` (its backends on demand, see [`crate::mesh::demand`]; JSON).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::error::{Body, full};
use crate::shared::Shared;

/// Serves admin requests until `stop` turns true.
pub async fn serve(shared: Arc<Shared>, sock: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            () = async { drop(stop.wait_for(|s| *s).await) } => return,
            r = sock.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&shared, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn answer(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" if shared.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/metrics" => {
            if let Some(c) = shared.identity.as_ref().and_then(|s| s.current()) {
                let left = c.seconds_left(std::time::SystemTime::now());
                shared.metrics.set_identity_expiry(left);
            }
            let mut r = text(StatusCode::OK, shared.metrics.encode());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/config" => {
            let cfg = shared.snapshot.load().full_config();
            json(serde_json::to_string_pretty(&cfg).unwrap_or_default())
        }
        "/identity" => {
            let now = std::time::SystemTime::now();
            let body = match shared.identity.as_ref().and_then(|s| s.current()) {
                Some(c) => serde_json::json!({
                    "identity": c.identity,
                    "notAfter": c.not_after.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                    "secondsLeft": c.seconds_left(now),
                    "certificate": c.chain_pem,
                    "trustAnchors": c.trust_anchors_pem,
                    "issuerEpoch": c.issuer_epoch,
                    "announcedEpoch": shared.identity.as_ref().and_then(|s| s.announced()).as_deref(),
                }),
                None => serde_json::json!({"identity": null}),
            };
            json(format!("{body:#}\n"))
        }
        "/subscriptions" => match &shared.demand {
            Some(demand) => json(format!("{:#}\n", demand.report(std::time::Instant::now()))),
            None => text(
                StatusCode::NOT_FOUND,
                "this proxy receives every backend (not a sidecar)\n",
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// A 200 with JSON text `body`.
fn json(body: String) -> Response<Body> {
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r
}

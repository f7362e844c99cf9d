//! The admin endpoint (plain HTTP): `/live`, `/ready` (every watch has listed once) and
//! `/metrics` (Prometheus text format).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::watch::Readiness;

/// Serves the admin endpoint on `listener` forever.
pub async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let readiness = readiness.clone();
        let metrics = metrics.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let (status, body, content_type) = match req.uri().path() {
                    "/live" => (StatusCode::OK, "live\n".to_owned(), "text/plain"),
                    "/ready" if readiness.is_ready() => {
                        (StatusCode::OK, "ready\n".to_owned(), "text/plain")
                    }
                    "/ready" => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: watches still listing\n".to_owned(),
                        "text/plain",
                    ),
                    "/metrics" => (
                        StatusCode::OK,
                        metrics.encode(),
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                    _ => (
                        StatusCode::NOT_FOUND,
                        "not found\n".to_owned(),
                        "text/plain",
                    ),
                };
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                *resp.status_mut() = status;
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static(content_type),
                );
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

//! Mirroring: a copy of a request goes to another backend, and is forgotten.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http::request::Parts;
use http_body_util::BodyExt;

use super::attempts::upstream_request;
use crate::error::full;
use crate::forward::backend::BackendState;
use crate::forward::balance::PickContext;
use crate::shared::Shared;

/// Sends a copy of a request to another backend and forgets it: never awaited by the main
/// request, errors only logged.
pub(crate) fn mirror(
    shared: &Arc<Shared>,
    backend: Arc<BackendState>,
    parts: &Parts,
    body: Bytes,
    client: SocketAddr,
) {
    let shared = shared.clone();
    let mut parts_copy = {
        let mut r = Request::new(());
        *r.method_mut() = parts.method.clone();
        *r.uri_mut() = parts.uri.clone();
        *r.version_mut() = parts.version;
        *r.headers_mut() = parts.headers.clone();
        r.into_parts().0
    };
    tokio::spawn(async move {
        let Ok(_permit) = backend.limiter.acquire().await else {
            return;
        };
        let ctx = PickContext {
            headers: &parts_copy.headers,
            client_ip: client.ip(),
        };
        let Ok(ep) = backend.pick(&ctx) else {
            return;
        };
        let upstream = backend.clients.select(parts_copy.version, false);
        let headers = std::mem::take(&mut parts_copy.headers);
        let version = upstream.version();
        let Ok(req) = upstream_request(&parts_copy, headers, &ep.authority, version, full(body))
        else {
            return;
        };
        match upstream.send(&shared.dest(ep), req).await {
            Ok((resp, _lease)) => {
                let _ = resp.into_body().collect().await;
            }
            Err(e) => tracing::debug!(backend = %backend.name, error = %e, "mirror failed"),
        }
    });
}

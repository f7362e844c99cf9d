//! Opaque TCP proxying: bytes flow unchanged between the client and one endpoint of the
//! listener's backend (Redis, Postgres, AMQP...). The backend's balancer, outlier detection and
//! connection limit apply; a failed connect tries up to two other endpoints.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;
use tokio::net::TcpStream;

use crate::forward::backend::{BackendState, InFlight};
use crate::forward::balance::PickContext;
use crate::forward::connect::connect;
use crate::mesh::mtls::MeshProtocol;
use crate::shared::Shared;

const CONNECT_TRIES: usize = 3;

/// Forwards one client connection until either side closes; to a meshed endpoint over mTLS.
pub async fn forward(
    shared: &Shared,
    backend: Arc<BackendState>,
    mut client: TcpStream,
    peer: SocketAddr,
) {
    let Ok(_permit) = backend.limiter.try_acquire_now() else {
        tracing::debug!(backend = %backend.name, "TCP connection refused: limit reached");
        return;
    };
    let headers = HeaderMap::new();
    let ctx = PickContext {
        headers: &headers,
        client_ip: peer.ip(),
    };
    for _ in 0..CONNECT_TRIES {
        let Ok(ep) = backend.pick(&ctx) else {
            tracing::debug!(backend = %backend.name, "TCP connection refused: no healthy endpoint");
            return;
        };
        let timeout = backend.clients.connect_timeout();
        match connect(&shared.dest(ep), timeout, MeshProtocol::Opaque).await {
            Ok(mut upstream) => {
                backend.record(ep, None, true);
                let _in_flight = InFlight::new(ep);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                return;
            }
            Err(e) => {
                tracing::debug!(endpoint = %ep.addr, error = %e, "TCP connect failed");
                backend.record(ep, None, false);
            }
        }
    }
}

/// Time allowed to connect to an original destination or to the application.
const PASSTHROUGH_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Copies bytes both ways between `client` and `dst` until either side closes.
pub(crate) async fn passthrough<S>(mut client: S, dst: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(
        PASSTHROUGH_CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(dst),
    )
    .await
    {
        Ok(Ok(mut upstream)) => {
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        Ok(Err(e)) => tracing::debug!(destination = %dst, error = %e, "connect failed"),
        Err(_) => tracing::debug!(destination = %dst, "connect timed out"),
    }
}

/// Copies bytes both ways between `client` and a meshed pod, over mTLS as opaque TCP.
pub(crate) async fn mesh_passthrough(
    mut client: tokio::net::TcpStream,
    dest: crate::forward::connect::Dest,
) {
    let connected = crate::forward::connect::connect(
        &dest,
        PASSTHROUGH_CONNECT_TIMEOUT,
        crate::mesh::mtls::MeshProtocol::Opaque,
    )
    .await;
    match connected {
        Ok(mut upstream) => {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        Err(e) => tracing::debug!(destination = %dest.addr, error = %e, "mesh connect failed"),
    }
}

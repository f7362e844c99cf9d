//! Opaque TCP proxying: bytes flow unchanged between the client and one endpoint of the
//! listener's backend (Redis, Postgres, AMQP...). The backend's balancer, outlier detection and
//! connection limit apply; a failed connect tries up to two other endpoints.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;
use tokio::net::TcpStream;

use crate::Shared;
use crate::backend::{BackendState, InFlight};
use crate::balance::PickContext;
use crate::connect::connect;
use crate::mtls::MeshProtocol;

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

//! The config server: streams each proxy its config over HTTPS (HTTP/2, or HTTP/1.1 chunked).
//!
//! ```text
//!  GET /v1/gateways/{namespace}/{name}/config      a gateway proxy: its Gateway's config
//!  GET /v1/mesh/config                            a sidecar: the mesh-wide config
//!  Authorization: Bearer <projected ServiceAccount token, audience "portico">
//!
//!  200, content-type application/x-ndjson, one JSON message per line, never-ending:
//!    {"routeTable":{"generation":7,"listeners":[…],"routes":[…]}}
//!    {"backendSet":{"generation":7,"backends":[…]}}
//!    {"backendSet":{"generation":9,"backends":[…]}}     ← only what changed, as it changes
//! ```
//!
//! The first two lines are the full state; each later line replaces one half (the
//! `sidecar/api` [`RouteTable`] or [`BackendSet`]) wholesale. A client joins them with
//! `ProxyConfig::from_parts`. On reconnect the client gets the full state again, so it never
//! needs to remember anything but the last good config.
//!
//! A change is sent as soon as it is seen; after each send the stream waits `debounce` before
//! looking again, so a burst of endpoint changes becomes one message per window while a lone
//! change is never delayed. Refusals: no token 401, bad token or wrong audience 401, a valid
//! identity that is not the Gateway's proxy 403 (see [`crate::auth`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
pub use portico_proxy_api::ConfigMessage;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::auth;
use crate::index::{Key, Subscription, mesh_key};
use crate::metrics::Metrics;
use crate::watch::{Readiness, SharedIndex};

/// Everything a connection handler needs.
#[derive(Clone)]
pub struct ConfigServer {
    /// For TokenReviews.
    pub client: kube::Client,
    /// Where configs come from.
    pub index: SharedIndex,
    /// Streams are only served once the index is complete.
    pub readiness: Readiness,
    /// Figures.
    pub metrics: Arc<Metrics>,
    /// Quiet time after each send during which further changes are coalesced.
    pub debounce: Duration,
}

/// A TLS acceptor for `cert`/`key` (PEM files), offering h2 and http/1.1.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading a private key from {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the config-server certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts TLS connections on `listener` and serves each with `builder`, calling `handle` for
/// every request, until the future is dropped. Connections live in a `JoinSet` owned by this
/// future, so dropping it (the operator stopping) ends every connection too. The config server
/// and the admission webhooks share it; `what` names the server in logs.
pub(crate) async fn serve_tls<H, Fut, B>(
    listener: TcpListener,
    tls: TlsAcceptor,
    what: &'static str,
    builder: auto::Builder<TokioExecutor>,
    handle: H,
) -> Infallible
where
    H: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "{what} accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let tls = tls.clone();
        let handle = handle.clone();
        let builder = builder.clone();
        connections.spawn(async move {
            let stream = match tls.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "{what} TLS handshake failed");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let response = handle(req, peer);
                async move { Ok::<_, Infallible>(response.await) }
            });
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "{what} connection ended");
            }
        });
    }
}

impl ConfigServer {
    /// Accepts connections on `listener` forever. Connections live in a `JoinSet` owned by this
    /// future, so dropping it (the operator stopping) ends every stream too.
    pub async fn serve(self, listener: TcpListener, tls: TlsAcceptor) -> anyhow::Result<()> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20));
        let this = Arc::new(self);
        match serve_tls(listener, tls, "config", builder, move |req, peer| {
            let this = this.clone();
            async move { this.handle(req, peer).await }
        })
        .await {}
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let path: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
        let target = match path.as_slice() {
            ["v1", "gateways", ns, name, "config"] if req.method() == http::Method::GET => {
                Key::new(*ns, *name)
            }
            ["v1", "mesh", "config"] if req.method() == http::Method::GET => mesh_key(),
            _ => return text(StatusCode::NOT_FOUND, "no such endpoint\n"),
        };
        let token = match auth::bearer(req.headers().get(header::AUTHORIZATION)) {
            Ok(t) => t,
            Err(e) => return self.refuse(&e, &target, peer),
        };
        let authorized = if target == mesh_key() {
            auth::authorize_mesh(&self.client, token).await
        } else {
            auth::authorize_gateway(&self.client, token, &target).await
        };
        if let Err(e) = authorized {
            return self.refuse(&e, &target, peer);
        }
        // A proxy that connects while the operator starts waits a little for a complete index
        // rather than receiving a partial config.
        let ready = tokio::time::timeout(Duration::from_secs(10), self.readiness.wait()).await;
        if ready.is_err() {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the operator is still listing\n",
            );
        }
        let sub = self
            .index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .subscribe(&target);
        let gateway = target;
        tracing::info!(%peer, %gateway, "proxy connected");
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(pump(sub, tx, self.debounce, self.metrics.clone(), gateway));
        let mut resp = Response::new(ChannelBody { rx }.boxed());
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-ndjson"),
        );
        resp
    }

    fn refuse(
        &self,
        e: &auth::AuthError,
        gateway: &Key,
        peer: SocketAddr,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        tracing::info!(%peer, %gateway, error = %e, "config request refused");
        self.metrics
            .config_auth_failures
            .get_or_create(&[("reason", e.reason())])
            .inc();
        let mut resp = text(e.status(), &format!("{e}\n"));
        if e.status() == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"portico\""),
            );
        }
        resp
    }
}

fn text(status: StatusCode, body: &str) -> Response<BoxBody<Bytes, Infallible>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())).boxed());
    *resp.status_mut() = status;
    resp
}

/// Sends the full state, then each change, until the client goes away.
async fn pump(
    mut sub: Subscription,
    tx: mpsc::Sender<Bytes>,
    debounce: Duration,
    metrics: Arc<Metrics>,
    gateway: Key,
) {
    metrics.config_streams.inc();
    let mut sent_routes = None;
    let mut sent_backends = None;
    loop {
        let routes = sub.routes.borrow_and_update().clone();
        if sent_routes != Some(routes.generation) {
            sent_routes = Some(routes.generation);
            let line = Bytes::from(ConfigMessage::RouteTable((*routes).clone()).to_line());
            if tx.send(line).await.is_err() {
                break;
            }
            metrics
                .config_messages
                .get_or_create(&[("message", "routeTable")])
                .inc();
        }
        let backends = sub.backends.borrow_and_update().clone();
        if sent_backends != Some(backends.generation) {
            sent_backends = Some(backends.generation);
            let line = Bytes::from(ConfigMessage::BackendSet((*backends).clone()).to_line());
            if tx.send(line).await.is_err() {
                break;
            }
            metrics
                .config_messages
                .get_or_create(&[("message", "backendSet")])
                .inc();
        }
        tokio::select! {
            _ = tokio::time::sleep(debounce) => {}
            _ = tx.closed() => break,
        }
        tokio::select! {
            r = sub.routes.changed() => if r.is_err() { break },
            r = sub.backends.changed() => if r.is_err() { break },
            _ = tx.closed() => break,
        }
    }
    tracing::info!(%gateway, "proxy disconnected");
    metrics.config_streams.dec();
}

/// A response body fed by a channel: each item is one data frame.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Index, Object};
    use portico_proxy_api::BackendSet;
    use serde_json::json;

    fn slice(ips: &[String]) -> Object {
        let endpoints: Vec<_> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
        Object::EndpointSlice(
            serde_json::from_value(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"namespace": "shop", "name": "orders-a",
                             "labels": {"kubernetes.io/service-name": "orders"}},
                "addressType": "IPv4", "ports": [{"port": 8080}], "endpoints": endpoints
            }))
            .unwrap(),
        )
    }

    fn shop() -> Index {
        let mut index = Index::new();
        index.apply(Object::Gateway(
            serde_json::from_value(json!({
                "apiVersion": "portico.dev/v1alpha1", "kind": "Gateway",
                "metadata": {"namespace": "shop", "name": "gw"},
                "spec": {"listeners": [{"name": "web", "port": 8080, "protocol": "HTTP"}]}
            }))
            .unwrap(),
        ));
        index.apply(Object::Service(
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"namespace": "shop", "name": "orders"},
                "spec": {"ports": [{"port": 80}]}
            }))
            .unwrap(),
        ));
        index.apply(Object::Route(
            serde_json::from_value(json!({
                "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
                "metadata": {"namespace": "shop", "name": "orders"},
                "spec": {"parentRefs": [{"name": "gw"}],
                         "rules": [{"backendRefs": [{"name": "orders", "port": 80}]}]}
            }))
            .unwrap(),
        ));
        index
    }

    async fn next(rx: &mut mpsc::Receiver<Bytes>) -> ConfigMessage {
        let line = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("a message in time")
            .expect("stream open");
        serde_json::from_slice(&line).unwrap()
    }

    fn endpoints(msg: &ConfigMessage) -> usize {
        match msg {
            ConfigMessage::BackendSet(b) => b.backends[0].endpoints.len(),
            other => panic!("expected a BackendSet, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_lone_change_goes_out_at_once_and_a_burst_is_coalesced() {
        let mut index = shop();
        let key = Key::new("shop", "gw");
        let sub = index.subscribe(&key);
        let (tx, mut rx) = mpsc::channel(4);
        let debounce = Duration::from_millis(100);
        tokio::spawn(pump(sub, tx, debounce, Arc::new(Metrics::new()), key));
        assert!(matches!(next(&mut rx).await, ConfigMessage::RouteTable(_)));
        assert_eq!(endpoints(&next(&mut rx).await), 0);

        // After a quiet period, one change is sent without waiting for the debounce.
        tokio::time::sleep(debounce + Duration::from_millis(20)).await;
        let sent = tokio::time::Instant::now();
        index.apply(slice(&["198.18.64.1".to_owned()]));
        assert_eq!(endpoints(&next(&mut rx).await), 1);
        assert!(sent.elapsed() < debounce / 2, "took {:?}", sent.elapsed());

        // A burst of 100 changes arrives as at most two messages, the last with the final state.
        tokio::time::sleep(debounce + Duration::from_millis(20)).await;
        for n in 1..=100 {
            let ips: Vec<String> = (0..n).map(|i| format!("198.18.65.{i}")).collect();
            index.apply(slice(&ips));
        }
        let mut messages = vec![next(&mut rx).await];
        while let Ok(Some(line)) = tokio::time::timeout(3 * debounce, rx.recv()).await {
            messages.push(serde_json::from_slice(&line).unwrap());
        }
        assert!(messages.len() <= 2, "{} messages", messages.len());
        assert_eq!(endpoints(messages.last().unwrap()), 100);
    }

    #[test]
    fn messages_are_one_json_line_each_and_read_back() {
        let msg = ConfigMessage::BackendSet(BackendSet {
            generation: 3,
            backends: Vec::new(),
        });
        let line = msg.to_line();
        assert_eq!(
            &line[..],
            b"{\"backendSet\":{\"generation\":3,\"backends\":[]}}\n"
        );
        let back: ConfigMessage = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, msg);
    }

    /// 50 Gateways, each with 20 Routes to its own Services plus one to a Service they all
    /// share (1,000 Services, about 10,000 endpoints): one change to the shared Service's
    /// endpoints reaches all 50 streams. Prints the time; fails above a generous bound.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_change_reaches_fifty_proxies_at_scale() {
        use crate::index::Kind;
        let obj = |v: serde_json::Value| -> serde_json::Value { v };
        let mut index = Index::new();
        let mut services = Vec::new();
        let mut slices = Vec::new();
        let mut routes = Vec::new();
        let mut gateways = Vec::new();
        let svc = |name: &str| {
            Object::Service(
                serde_json::from_value(obj(json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"namespace": "scale", "name": name},
                    "spec": {"ports": [{"port": 80}]}})))
                .unwrap(),
            )
        };
        let slc = |name: &str, svc: &str, ips: Vec<String>| {
            let eps: Vec<_> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
            Object::EndpointSlice(
                serde_json::from_value(json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"namespace": "scale", "name": name,
                                 "labels": {"kubernetes.io/service-name": svc}},
                    "addressType": "IPv4", "ports": [{"port": 8080}], "endpoints": eps}))
                .unwrap(),
            )
        };
        services.push(svc("shared"));
        slices.push(slc(
            "shared-a",
            "shared",
            (0..10).map(|i| format!("198.18.1.{i}")).collect(),
        ));
        for g in 0..50 {
            gateways.push(Object::Gateway(
                serde_json::from_value(json!({
                    "apiVersion": "portico.dev/v1alpha1", "kind": "Gateway",
                    "metadata": {"namespace": "scale", "name": format!("gw-{g}")},
                    "spec": {"listeners": [{"name": "web", "port": 8080, "protocol": "HTTP"}]}}))
                .unwrap(),
            ));
            let mut refs = vec![json!({"name": "shared", "port": 80})];
            for r in 0..20 {
                let name = format!("svc-{g}-{r}");
                services.push(svc(&name));
                slices.push(slc(
                    &format!("{name}-a"),
                    &name,
                    (0..10)
                        .map(|e| format!("198.18.{}.{}", 10 + g, r * 10 + e))
                        .collect(),
                ));
                refs.push(json!({"name": name, "port": 80}));
            }
            routes.push(Object::Route(
                serde_json::from_value(json!({
                    "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
                    "metadata": {"namespace": "scale", "name": format!("r-{g}")},
                    "spec": {"parentRefs": [{"name": format!("gw-{g}")}],
                             "rules": refs.iter().enumerate().map(|(i, b)| json!({
                                 "matches": [{"path": {"type": "PathPrefix", "value": format!("/{i}")}}],
                                 "backendRefs": [b]})).collect::<Vec<_>>()}}))
                .unwrap(),
            ));
        }
        index.reset(Kind::Service, None, services);
        index.reset(Kind::EndpointSlice, None, slices);
        index.reset(Kind::Gateway, None, gateways);
        index.reset(Kind::Route, None, routes);
        let metrics = Arc::new(Metrics::new());
        let mut streams = Vec::new();
        for g in 0..50 {
            let key = Key::new("scale", format!("gw-{g}"));
            let sub = index.subscribe(&key);
            let (tx, mut rx) = mpsc::channel(4);
            tokio::spawn(pump(
                sub,
                tx,
                Duration::from_millis(20),
                metrics.clone(),
                key,
            ));
            next(&mut rx).await;
            let full = next(&mut rx).await;
            assert_eq!(endpoints(&full), 10, "the shared backend comes first");
            streams.push(rx);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        index.apply(slc(
            "shared-a",
            "shared",
            (0..11).map(|i| format!("198.18.1.{i}")).collect(),
        ));
        let applied = started.elapsed();
        for rx in &mut streams {
            assert_eq!(endpoints(&next(rx).await), 11);
        }
        let all = started.elapsed();
        eprintln!(
            "one shared EndpointSlice change, 50 proxies x 21 backends (~10,500 endpoints): \
             index {applied:?}, all 50 streams have it after {all:?}"
        );
        assert!(all < Duration::from_secs(1), "{all:?}");
    }
}

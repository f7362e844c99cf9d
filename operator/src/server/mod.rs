//! The config server: streams each proxy its config over HTTPS (HTTP/2, or HTTP/1.1 chunked).
//!
//! ```text
//!  GET /v1/gateways/{namespace}/{name}/config      a gateway proxy: its Gateway's config
//!  GET /v1/mesh/config                            a sidecar: the mesh-wide config
//!  GET /v1/mesh/pods/{namespace}/{name}/config    a sidecar, for its own pod: the mesh-wide
//!                                                 config plus the pod's inbound policy
//!  POST /v1/identity/certificate                  any proxy: a workload certificate for its
//!                                                 ServiceAccount (see [`crate::identity`])
//!  POST /v1/streams/{id}/backends                 an on-demand sidecar stream: subscribe to or
//!                                                 drop backends, or subscribe to the backends
//!                                                 of pods dialled directly (the id is the
//!                                                 stream's `portico-stream` response header)
//!  Authorization: Bearer <projected ServiceAccount token, audience "portico">
//!
//!  200, content-type application/x-ndjson, one JSON message per line, never-ending:
//!    {"routeTable":{"generation":7,"listeners":[…],"routes":[…]}}
//!    {"backendSet":{"generation":7,"backends":[…]}}
//!    {"inboundPolicy":{"ports":[…]}}                   ← pod streams only, even when empty
//!    {"backendSet":{"generation":9,"backends":[…]}}     ← only what changed, as it changes
//! ```
//!
//! The first lines are the full state; each later line replaces one part (the `sidecar/api`
//! [`RouteTable`](portico_proxy_api::RouteTable), [`BackendSet`](portico_proxy_api::BackendSet)
//! or [`InboundPolicy`](portico_proxy_api::InboundPolicy)) wholesale. A client joins them with
//! `ProxyConfig::from_parts`. On reconnect the client gets the full state again, so it never
//! needs to remember anything but the last good config.
//!
//! A proxy that sends `portico-config-features: backend-updates` gets, after the first whole
//! BackendSet, `{"backendUpdate":{…}}` lines with only the backends that changed (the operator
//! answers with the same header; see `portico_proxy_api::stream` for how versions one apart
//! work together). The update between two sets is computed and encoded once and shared by every
//! stream that moves between the same two sets.
//!
//! A change is sent as soon as it is seen; after each send the stream is quiet for `debounce`
//! (or 50 µs per open stream when that is longer) before looking again, so a burst of endpoint
//! changes becomes one message per window while a lone change is never delayed. Quiet times end
//! on a clock every stream shares, so streams look again together and share one update line.
//!
//! Refusals (see [`crate::auth`]): no token 401, bad token or wrong audience 401, a valid
//! identity that may not read the config 403, a pod the operator has not seen within a few
//! seconds 404. An open stream's token is checked again every `--token-recheck-interval` and
//! when it expires; the stream ends (the proxy reconnects with its fresh token) once it no
//! longer passes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
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

mod interest;
mod stream;

use stream::ChannelBody;

use crate::auth;
use crate::identity::source::IssuerSource;
use crate::identity::{IdentityError, MAX_CSR_BYTES};
use crate::index::{Key, PodInfo};
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
    /// How often an open stream's token is checked again.
    pub token_recheck: Duration,
    /// Lines shared by the streams that send the same value.
    lines: Arc<stream::SharedLines>,
    /// The subscriptions of on-demand streams, by stream id.
    on_demand: Arc<std::sync::Mutex<HashMap<String, OnDemand>>>,
    /// Which on-demand streams use which backends (see [`interest`]), and whether the task
    /// that wakes them follows the mesh-wide sets yet.
    interest: Arc<interest::Interest>,
    interest_follows: Arc<std::sync::OnceLock<()>>,
    /// Numbers the on-demand streams for [`interest`].
    stream_keys: Arc<std::sync::atomic::AtomicU64>,
    /// Signs workload certificates; `None`: this operator issues no identities (404).
    issuer: Option<Arc<IssuerSource>>,
}

impl ConfigServer {
    /// A config server over `index`.
    pub fn new(
        client: kube::Client,
        index: SharedIndex,
        readiness: Readiness,
        metrics: Arc<Metrics>,
        debounce: Duration,
        token_recheck: Duration,
    ) -> Self {
        Self {
            client,
            index,
            readiness,
            metrics,
            debounce,
            token_recheck,
            lines: Arc::default(),
            on_demand: Arc::default(),
            interest: Arc::default(),
            interest_follows: Arc::default(),
            stream_keys: Arc::default(),
            issuer: None,
        }
    }

    /// Issues workload certificates with `issuer` (none when `None`).
    pub fn with_issuer(mut self, issuer: Option<Arc<IssuerSource>>) -> Self {
        self.issuer = issuer;
        self
    }
}

/// An on-demand stream's subscriptions, and the backends it filters them from (where addresses
/// are looked up).
#[derive(Clone)]
struct OnDemand {
    wanted: tokio::sync::watch::Sender<stream::Wanted>,
    backends: tokio::sync::watch::Receiver<Arc<crate::index::Backends>>,
    /// The stream's key in [`ConfigServer::interest`], and what wakes it.
    key: u64,
    poke: Arc<tokio::sync::Notify>,
}

/// How long a sidecar's request waits for its pod to appear in the index before a 404.
const POD_WAIT: Duration = Duration::from_secs(5);

/// The config a request asks for.
#[derive(Clone, Debug)]
enum Target {
    /// A Gateway's proxies.
    Gateway(Key),
    /// The mesh-wide config, for any sidecar.
    Mesh,
    /// A sidecar's own stream: the mesh-wide config and its pod's inbound policy.
    Pod(Key),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Gateway(k) => write!(f, "gateway {k}"),
            Target::Mesh => f.write_str("mesh"),
            Target::Pod(k) => write!(f, "pod {k}"),
        }
    }
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
        if req.uri().path() == portico_proxy_api::CERTIFICATE_PATH {
            return self.certificate(req, peer).await;
        }
        let path: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
        if let ["v1", "streams", id, "backends"] = path.as_slice() {
            let id = (*id).to_owned();
            return self.subscribe(req, &id).await;
        }
        let target = match path.as_slice() {
            ["v1", "gateways", ns, name, "config"] if req.method() == http::Method::GET => {
                Target::Gateway(Key::new(*ns, *name))
            }
            ["v1", "mesh", "config"] if req.method() == http::Method::GET => Target::Mesh,
            ["v1", "mesh", "pods", ns, name, "config"] if req.method() == http::Method::GET => {
                Target::Pod(Key::new(*ns, *name))
            }
            _ => return text(StatusCode::NOT_FOUND, "no such endpoint\n"),
        };
        let token = match auth::bearer(req.headers().get(header::AUTHORIZATION)) {
            Ok(t) => t.to_owned(),
            Err(e) => return self.refuse(&e, &target, peer),
        };
        if let Err(e) = self.authorize(&target, &token, POD_WAIT).await {
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
        let (sub, inbound) = {
            let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            match &target {
                Target::Gateway(key) => (index.subscribe(key), None),
                Target::Mesh => (index.subscribe_mesh(), None),
                Target::Pod(key) => (index.subscribe_mesh(), Some(index.subscribe_pod(key))),
            }
        };
        // Backend updates, and backends on demand, for a proxy that reads them (see
        // `portico_proxy_api::stream`); on demand only for sidecars.
        let features: Vec<&str> =
            header_list(req.headers(), portico_proxy_api::FEATURES_HEADER).collect();
        let updates = features.contains(&portico_proxy_api::BACKEND_UPDATES);
        let on_demand = updates
            && features.contains(&portico_proxy_api::ON_DEMAND)
            && !matches!(target, Target::Gateway(_));
        let wanted = on_demand.then(|| {
            let names: Vec<String> =
                header_list(req.headers(), portico_proxy_api::SUBSCRIBE_HEADER)
                    .map(str::to_owned)
                    .collect();
            self.interest_follows.get_or_init(|| {
                tokio::spawn(interest::follow(
                    sub.backends.clone(),
                    self.interest.clone(),
                ));
            });
            let id = format!("{:032x}", rand::random::<u128>());
            let (tx, rx) = tokio::sync::watch::channel(stream::Wanted::default());
            let entry = OnDemand {
                wanted: tx,
                backends: sub.backends.clone(),
                key: self
                    .stream_keys
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                poke: Arc::new(tokio::sync::Notify::new()),
            };
            self.interest
                .resubscribe(entry.key, &entry.poke, &entry.wanted, names, &[]);
            let demand = stream::OnDemandRx {
                wanted: rx,
                poke: entry.poke.clone(),
            };
            self.on_demand
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone(), entry);
            (id, demand)
        });
        tracing::info!(%peer, %target, updates, on_demand, "proxy connected");
        let (tx, rx) = mpsc::channel(4);
        let stream_id = wanted.as_ref().map(|(id, _)| id.clone());
        let pump = stream::pump(
            sub,
            inbound,
            self.issuer.as_ref().map(|s| s.subscribe()),
            wanted.map(|(_, rx)| rx),
            tx,
            updates,
            self.debounce,
            self.metrics.clone(),
            self.lines.clone(),
            target.to_string(),
        );
        let this = self.clone();
        let id = stream_id.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = pump => {}
                e = this.recheck(&target, &token) => {
                    tracing::info!(%peer, %target, error = %e, "ending a config stream: its token no longer passes");
                    this.metrics
                        .config_streams_revoked
                        .get_or_create(&[("reason", e.reason())])
                        .inc();
                }
            }
            if let Some(id) = id {
                let gone = this
                    .on_demand
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                if let Some(stream) = gone {
                    this.interest
                        .forget(stream.key, stream.wanted.borrow().iter());
                }
            }
        });
        let mut resp = Response::new(ChannelBody { rx }.boxed());
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-ndjson"),
        );
        if updates {
            resp.headers_mut().insert(
                portico_proxy_api::FEATURES_HEADER,
                http::HeaderValue::from_static(if on_demand {
                    "backend-updates, on-demand"
                } else {
                    portico_proxy_api::BACKEND_UPDATES
                }),
            );
        }
        if let Some(id) = stream_id.and_then(|id| http::HeaderValue::from_str(&id).ok()) {
            resp.headers_mut()
                .insert(portico_proxy_api::STREAM_HEADER, id);
        }
        resp
    }

    /// Whether `token` may read `target`. For a pod, waits up to `pod_wait` for the Pod watch to
    /// see the pod: a sidecar starts right after its pod is created, possibly before the event.
    async fn authorize(
        &self,
        target: &Target,
        token: &str,
        pod_wait: Duration,
    ) -> Result<(), auth::AuthError> {
        match target {
            Target::Gateway(key) => auth::authorize_gateway(&self.client, token, key)
                .await
                .map(drop),
            Target::Mesh => auth::authorize_mesh(&self.client, token).await.map(drop),
            Target::Pod(key) => {
                let identity = auth::authenticate(&self.client, token).await?;
                let pod = self
                    .wait_for_pod(key, pod_wait)
                    .await
                    .ok_or_else(|| auth::AuthError::PodNotFound(key.to_string()))?;
                auth::check_pod(&identity, &pod)
            }
        }
    }

    /// Pod `key`'s record, once the index is complete and has it, waiting up to `within`.
    async fn wait_for_pod(&self, key: &Key, within: Duration) -> Option<Arc<PodInfo>> {
        if !within.is_zero() {
            // An operator that is still listing has not seen the pod yet either.
            let _ = tokio::time::timeout(Duration::from_secs(10), self.readiness.wait()).await;
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.readiness.is_ready() {
                let pod = self
                    .index
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pod(key);
                if pod.is_some() {
                    return pod;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Checks `token` again every `token_recheck` (and once it expires, when it says when);
    /// returns why it no longer passes. A TokenReview that fails (API server unreachable) keeps
    /// the stream: proxies ride out a control-plane outage on their last good config.
    async fn recheck(&self, target: &Target, token: &str) -> auth::AuthError {
        loop {
            let mut wait = self.token_recheck;
            if let Some(left) = auth::token_expiry(token) {
                // Just past `exp`, and never a busy loop on an expired token.
                wait = wait.min(left + Duration::from_secs(1));
            }
            tokio::time::sleep(wait).await;
            match self.authorize(target, token, Duration::ZERO).await {
                Ok(()) => {}
                Err(auth::AuthError::Review(e)) => {
                    tracing::warn!(%target, error = %e, "cannot re-check a stream's token now; trying again later");
                }
                Err(e) => return e,
            }
        }
    }

    fn refuse(
        &self,
        e: &auth::AuthError,
        target: &Target,
        peer: SocketAddr,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        tracing::info!(%peer, %target, error = %e, "config request refused");
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

impl ConfigServer {
    /// `POST /v1/streams/{id}/backends`: changes the subscriptions of on-demand stream `id`.
    /// The id is the credential: a random 128-bit value that only the proxy holding the stream
    /// (over TLS, after its token passed) has seen; an unknown one is 404.
    async fn subscribe(
        &self,
        req: Request<Incoming>,
        id: &str,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        if req.method() != http::Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "POST a subscription\n");
        }
        let Some(stream) = self
            .on_demand
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
        else {
            return text(StatusCode::NOT_FOUND, "no such stream\n");
        };
        let change = match json_body::<portico_proxy_api::Subscription>(
            req.into_body(),
            256 * 1024,
            "a subscription",
        )
        .await
        {
            Ok(c) => c,
            Err(why) => return text(StatusCode::BAD_REQUEST, &why),
        };
        // The addresses' backends in the set the stream filters now: a pod dialled directly is
        // an endpoint of the Services it backs.
        let found: Vec<String> = {
            let backends = stream.backends.borrow();
            let mut found: Vec<String> = change
                .addresses
                .iter()
                .flat_map(|a| backends.meshed_at(a).iter().cloned())
                .collect();
            found.sort();
            found.dedup();
            found
        };
        self.interest.resubscribe(
            stream.key,
            &stream.poke,
            &stream.wanted,
            change.subscribe.into_iter().chain(found.iter().cloned()),
            &change.unsubscribe,
        );
        json(&portico_proxy_api::Subscribed { found })
    }

    /// `POST /v1/identity/certificate`: a certificate for the token's ServiceAccount.
    async fn certificate(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let Some(issuer) = self.issuer.as_ref().map(|s| s.current()) else {
            return text(
                StatusCode::NOT_FOUND,
                "this operator issues no workload identities\n",
            );
        };
        if req.method() != http::Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "POST a CSR\n");
        }
        let count = |result: &'static str| {
            self.metrics
                .identity_certificates
                .get_or_create(&[("result", result)])
                .inc();
        };
        let token = match auth::bearer(req.headers().get(header::AUTHORIZATION)) {
            Ok(t) => t.to_owned(),
            Err(e) => {
                count("unauthenticated");
                return text(e.status(), &format!("{e}\n"));
            }
        };
        let user = match auth::authenticate(&self.client, &token).await {
            Ok(identity) => identity.user,
            Err(e) => {
                count("unauthenticated");
                tracing::info!(%peer, error = %e, "certificate request refused");
                return text(e.status(), &format!("{e}\n"));
            }
        };
        // Only ServiceAccounts have workload identities.
        let Some((ns, sa)) = user
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        else {
            count("forbidden");
            return text(
                StatusCode::FORBIDDEN,
                &format!("{user} is not a ServiceAccount\n"),
            );
        };
        let request = match json_body::<portico_proxy_api::CertificateRequest>(
            req.into_body(),
            MAX_CSR_BYTES * 2,
            "a certificate request",
        )
        .await
        {
            Ok(r) => r,
            Err(why) => {
                count("bad_request");
                return text(StatusCode::BAD_REQUEST, &why);
            }
        };
        match issuer.issue(&request.csr, ns, sa, std::time::SystemTime::now()) {
            Ok(issued) => {
                count("issued");
                tracing::info!(%peer, identity = %issued.identity, not_after = issued.not_after, "workload certificate issued");
                json(&issued)
            }
            Err(e @ IdentityError::Signing(_)) => {
                count("error");
                tracing::warn!(%peer, error = %e, "signing a workload certificate failed");
                text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n"))
            }
            Err(e) => {
                count("refused");
                tracing::info!(%peer, %user, error = %e, "certificate request refused");
                text(StatusCode::BAD_REQUEST, &format!("{e}\n"))
            }
        }
    }
}

/// The comma-separated items of every `name` header, trimmed, empty ones left out.
fn header_list<'a>(headers: &'a http::HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// A JSON body of at most `limit` bytes as a `T`, or the text of the 400 that says why not
/// (`what` names what was expected).
async fn json_body<T: serde::de::DeserializeOwned>(
    body: Incoming,
    limit: usize,
    what: &str,
) -> Result<T, String> {
    let bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| format!("reading the request: {e}\n"))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| format!("not {what}: {e}\n"))
}

/// A 200 with `value` as JSON.
fn json(value: &impl serde::Serialize) -> Response<BoxBody<Bytes, Infallible>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn text(status: StatusCode, body: &str) -> Response<BoxBody<Bytes, Infallible>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())).boxed());
    *resp.status_mut() = status;
    resp
}

//! Config from the operator: the proxy's side of the config stream.
//!
//! ```text
//!  GET https://<operator>/v1/gateways/<ns>/<name>/config    `portico-proxy gateway` (or --gateway)
//!  GET https://<operator>/v1/mesh/pods/<ns>/<pod>/config    `portico-proxy sidecar`, for its own pod
//!  GET https://<operator>/v1/mesh/config                    the older mesh-wide stream
//!  (HTTP/2, the server verified with the CA from --ca-file or PORTICO_CONTROL_PLANE_CA)
//!  Authorization: Bearer <--token-file, re-read on every connect (projected tokens rotate)>
//!
//!  ← {"routeTable":{…}}\n {"backendSet":{…}}\n      full state first
//!  ← {"inboundPolicy":{…}}\n                        (pod streams only: part of the full state)
//!  ← {"identity":{"issuerEpoch":…}}\n               when the operator issues identities
//!  ← {"backendSet":{…}}\n …                          then each changed part, replacing the old one
//! ```
//!
//! An `identity` line is not config: it is handed to the identity store
//! ([`identity::Store::announce`](crate::identity::Store::announce)), which renews the
//! workload certificate early when the operator's issuer changed.
//!
//! The parts are joined with `ProxyConfig::from_parts` (plus the inbound policy) and applied
//! through
//! [`Proxy::apply`], which refuses a bad config and keeps serving the last good one. When the
//! stream breaks (operator restarted, network gone, HTTP/2 keep-alive timeout) the proxy keeps
//! serving and reconnects with exponential backoff and full jitter (a random wait in
//! `[0, min(10 s, 100 ms · 2ⁿ)]`, so a fleet of proxies does not reconnect in lockstep). Each
//! reconnect starts with a full state, so a change made while the operator was away is applied.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portico_proxy_api::{
    BackendSet, ConfigMessage, IdentityAnnouncement, InboundPolicy, ProxyConfig, RouteTable,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::Proxy;

/// Where the config comes from and how the proxy proves who it is.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    /// The config server, `https://host:port`.
    pub url: http::Uri,
    /// Which config to follow.
    pub stream: Stream,
    /// File holding the ServiceAccount token (audience `portico`).
    pub token_file: PathBuf,
    /// CA certificate(s) that sign the config server's certificate (PEM text).
    pub ca_pem: Vec<u8>,
    /// The workload identity to ask the operator for (`spiffe://…`); `None`: none.
    pub identity: Option<String>,
    /// Listeners the proxy adds to every config it receives (sidecar mode: its INBOUND and
    /// OUTBOUND listeners, which come from its own flags, not from the operator).
    pub extra_listeners: Vec<portico_proxy_api::Listener>,
}

/// Which of the config server's streams a proxy follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stream {
    /// A gateway proxy: the config of one Gateway, `namespace/name`.
    Gateway(String),
    /// A sidecar: the config of its own pod (mesh routes and endpoints plus the pod's inbound
    /// policy). The operator checks that the token is bound to this very pod.
    Pod {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        name: String,
    },
    /// The mesh-wide config without an inbound policy (what sidecars followed before the
    /// per-pod stream existed).
    Mesh,
}

impl Stream {
    /// The request path on the config server.
    pub fn path(&self) -> String {
        match self {
            Self::Gateway(gateway) => format!("/v1/gateways/{gateway}/config"),
            Self::Pod { namespace, name } => format!("/v1/mesh/pods/{namespace}/{name}/config"),
            Self::Mesh => "/v1/mesh/config".to_owned(),
        }
    }

    /// Whether the full state includes an inbound policy. A sidecar must not serve before it
    /// has one: until then every caller would be let in.
    fn has_inbound(&self) -> bool {
        matches!(self, Self::Pod { .. })
    }
}

/// Why a connection to the config server failed or ended.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The URL has no host, or is not `https`.
    #[error("control-plane URL {0:?} must be https://host[:port]")]
    Url(String),
    /// The CA is not one or more PEM certificates.
    #[error("the control-plane CA is not a PEM certificate")]
    Ca,
    /// Reading the token file failed.
    #[error("reading {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// TCP or TLS failed.
    #[error("connecting to {0}: {1}")]
    Connect(String, std::io::Error),
    /// HTTP/2 failed.
    #[error("config stream: {0}")]
    Http(#[from] hyper::Error),
    /// The operator refused the request (401/403 for credentials, 503 while starting).
    #[error("config server answered {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The answer's body.
        body: String,
    },
    /// A line was not a config message.
    #[error("undecodable config message: {0}")]
    Decode(#[from] serde_json::Error),
    /// The stream ended.
    #[error("the config stream ended")]
    Ended,
}

/// An open config stream and the latest halves received on it.
pub struct Session {
    body: Incoming,
    buf: Vec<u8>,
    routes: Option<RouteTable>,
    backends: Option<BackendSet>,
    /// Pod streams only; `None` until the operator sends one (other streams start with an empty
    /// policy).
    inbound: Option<InboundPolicy>,
    /// The operator's last identity announcement on this stream.
    identity: Option<IdentityAnnouncement>,
    // Keeps the HTTP/2 connection open while the body is read.
    _send: hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
}

/// What a config stream delivers.
#[derive(Debug)]
enum Update {
    /// A whole config to apply.
    Config(ProxyConfig),
    /// The operator's identity issuer.
    Identity(IdentityAnnouncement),
}

/// Reads a whole file (the token is re-read on every connect: projected tokens rotate).
pub fn read(path: &PathBuf) -> Result<Vec<u8>, ControlError> {
    std::fs::read(path).map_err(|e| ControlError::File {
        path: path.clone(),
        message: e.to_string(),
    })
}

/// The config server's host (without IPv6 brackets) and port.
fn host_port(cp: &ControlPlane) -> Result<(String, u16), ControlError> {
    let url = cp.url.to_string();
    if cp.url.scheme_str() != Some("https") {
        return Err(ControlError::Url(url));
    }
    let host = cp
        .url
        .host()
        .ok_or_else(|| ControlError::Url(url.clone()))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, cp.url.port_u16().unwrap_or(443)))
}

/// An HTTP/2 connection to the config server (TLS verified with the control plane's CA) and
/// the current token, for one request or stream with bodies of type `B`.
pub(crate) async fn connect<B>(
    cp: &ControlPlane,
) -> Result<(hyper::client::conn::http2::SendRequest<B>, String), ControlError>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let url = cp.url.to_string();
    let (host, port) = host_port(cp)?;
    let token = String::from_utf8_lossy(&read(&cp.token_file)?)
        .trim()
        .to_owned();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&cp.ca_pem) {
        if cert.ok().and_then(|c| roots.add(c).ok()).is_none() {
            return Err(ControlError::Ca);
        }
    }
    if roots.is_empty() {
        return Err(ControlError::Ca);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ControlError::Connect(url.clone(), std::io::Error::other(e)))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(host.clone())
        .map_err(|_| ControlError::Url(url.clone()))?
        .to_owned();
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
    };
    let stream = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| ControlError::Connect(url.clone(), std::io::ErrorKind::TimedOut.into()))?
        .map_err(|e| ControlError::Connect(url.clone(), e))?;
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "config connection closed");
        }
    });
    Ok((send, token))
}

impl Session {
    /// Connects and sends the config request; the full state is read by [`Session::next`].
    pub async fn open(cp: &ControlPlane) -> Result<Self, ControlError> {
        let (mut send, token) = connect::<Empty<Bytes>>(cp).await?;
        let url = cp.url.to_string();
        let (host, port) = host_port(cp)?;
        let path = cp.stream.path();
        let req = http::Request::get(format!("https://{host}:{port}{path}"))
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Empty::new())
            .map_err(|_| ControlError::Url(url.clone()))?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.into_body().collect().await?.to_bytes();
            return Err(ControlError::Refused {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).trim().to_owned(),
            });
        }
        Ok(Self {
            body: resp.into_body(),
            buf: Vec::new(),
            routes: None,
            backends: None,
            inbound: (!cp.stream.has_inbound()).then(InboundPolicy::default),
            identity: None,
            _send: send,
        })
    }

    /// The next update: a config to apply (the first once the full state has arrived — both
    /// halves, and for a pod its inbound policy — then one per message), or an identity
    /// announcement.
    async fn next(&mut self) -> Result<Update, ControlError> {
        loop {
            while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match ConfigMessage::from_line(&line)? {
                    ConfigMessage::RouteTable(r) => self.routes = Some(r),
                    ConfigMessage::BackendSet(b) => self.backends = Some(b),
                    ConfigMessage::InboundPolicy(p) => self.inbound = Some(p),
                    ConfigMessage::Identity(a) => {
                        self.identity = Some(a.clone());
                        return Ok(Update::Identity(a));
                    }
                }
                if let (Some(r), Some(b), Some(i)) = (&self.routes, &self.backends, &self.inbound) {
                    let mut config = ProxyConfig::from_parts(r.clone(), b.clone());
                    config.inbound = i.clone();
                    return Ok(Update::Config(config));
                }
            }
            match self.body.frame().await {
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                None => return Err(ControlError::Ended),
            }
        }
    }
}

/// Exponential backoff with full jitter.
struct Backoff {
    attempt: u32,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    fn next(&mut self) -> Duration {
        let cap = Self::BASE
            .saturating_mul(1 << self.attempt.min(16))
            .min(Self::MAX);
        self.attempt += 1;
        cap.mul_f64(rand::random::<f64>())
    }
}

/// The config to apply: what the operator sent plus the proxy's own listeners.
fn with_extras(mut config: ProxyConfig, cp: &ControlPlane) -> ProxyConfig {
    config.listeners.extend(cp.extra_listeners.iter().cloned());
    config
}

/// Connects (retrying with backoff) until a full config arrives; returns it and the session.
/// An identity announcement that came before it is kept in the session for [`follow`].
pub async fn first_config(cp: &ControlPlane) -> (ProxyConfig, Session) {
    let mut backoff = Backoff { attempt: 0 };
    loop {
        match Session::open(cp).await {
            Ok(mut session) => loop {
                match session.next().await {
                    Ok(Update::Config(config)) => return (with_extras(config, cp), session),
                    Ok(Update::Identity(_)) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "config stream broke before the first config");
                        break;
                    }
                }
            },
            Err(e) => tracing::warn!(error = %e, "cannot reach the control plane"),
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// Applies every config from `session`, and from new sessions after it breaks, forever. While
/// the operator is away the proxy serves its last good config.
pub async fn follow(proxy: Proxy, cp: ControlPlane, mut session: Session) {
    let mut backoff = Backoff { attempt: 0 };
    let announce = |a: &IdentityAnnouncement| {
        if let Some(store) = proxy.identity() {
            store.announce(&a.issuer_epoch);
        }
    };
    if let Some(a) = &session.identity {
        announce(a);
    }
    loop {
        loop {
            match session.next().await {
                Ok(Update::Identity(a)) => announce(&a),
                Ok(Update::Config(config)) => {
                    backoff.attempt = 0;
                    let config = with_extras(config, &cp);
                    let generation = config.generation;
                    match proxy.apply(config).await {
                        Ok(()) => {
                            tracing::info!(generation, "config from the control plane applied")
                        }
                        Err(e) => tracing::error!(
                            generation,
                            error = %e,
                            "config from the control plane refused; the previous config keeps serving"
                        ),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "config stream lost; serving the last good config");
                    break;
                }
            }
        }
        loop {
            tokio::time::sleep(backoff.next()).await;
            match Session::open(&cp).await {
                Ok(s) => {
                    tracing::info!("reconnected to the control plane");
                    session = s;
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "cannot reach the control plane"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff { attempt: 0 };
        for n in 0..30 {
            let d = b.next();
            let cap = Backoff::BASE
                .saturating_mul(1 << n.min(16))
                .min(Backoff::MAX);
            assert!(d <= cap, "attempt {n}: {d:?} > {cap:?}");
        }
        let waits: Vec<Duration> = (0..20).map(|_| b.next()).collect();
        assert!(waits.iter().any(|w| *w != waits[0]), "jittered");
    }
}

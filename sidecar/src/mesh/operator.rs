//! The proxy's authenticated HTTPS link to the operator: where it is, how the proxy proves
//! who it is (a ServiceAccount token), and one HTTP/2 connection per request or stream. The
//! config stream ([`crate::app::control`]) and certificate requests ([`super::identity`]) both
//! go through [`connect`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

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
    /// A sidecar's backends on demand (see [`super::demand`]); `None`: every backend.
    pub demand: Option<Arc<super::demand::Demand>>,
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
    pub(crate) fn has_inbound(&self) -> bool {
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
    /// A message that cannot come where it came (a backend update before any backend set).
    #[error("config stream out of order: {0}")]
    OutOfOrder(&'static str),
}

/// Reads a whole file (the token is re-read on every connect: projected tokens rotate).
pub fn read(path: &PathBuf) -> Result<Vec<u8>, ControlError> {
    std::fs::read(path).map_err(|e| ControlError::File {
        path: path.clone(),
        message: e.to_string(),
    })
}

/// The config server's host (without IPv6 brackets) and port.
pub(crate) fn host_port(cp: &ControlPlane) -> Result<(String, u16), ControlError> {
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

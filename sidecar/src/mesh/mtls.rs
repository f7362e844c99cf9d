//! Mesh mTLS: how two proxies with workload certificates ([`crate::mesh::identity`]) talk.
//!
//! ```text
//!  client proxy                                              server proxy (INBOUND)
//!  endpoint has identity I ─► TLS, SNI = name of I,   ─►  ClientHello offers portico.mesh/*?
//!                             ALPN portico.mesh/h1|h2|tcp   yes: terminate; the client's cert
//!  server cert must chain to the trust anchors              must chain to the trust anchors;
//!  and carry exactly I (URI SAN)                            its URI SAN is the caller's identity
//!                                                           no: plaintext (or app TLS) as before
//! ```
//!
//! The protocol travels in ALPN, so the INBOUND side needs no detection after the handshake.
//! The server name is the identity in DNS form (`<sa>.<ns>.serviceaccount.identity.<trust
//! domain>`, as Linkerd names identities): a SPIFFE URI is not a valid SNI, and the client's
//! verifier reads the identity it expects back from the name it connected with, so one client
//! config serves every peer.
//!
//! The configs are built once per certificate (at each renewal), and hold the trust anchors
//! that came with it: during a rotation the operator sends the old and the new root, and both
//! are trusted.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio::net::TcpStream;

/// What a mesh connection carries, negotiated by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MeshProtocol {
    /// HTTP/1.1 requests.
    Http1,
    /// HTTP/2 (and gRPC).
    Http2,
    /// Opaque TCP bytes.
    Opaque,
}

impl MeshProtocol {
    const ALL: [Self; 3] = [Self::Http1, Self::Http2, Self::Opaque];

    /// The ALPN protocol ID.
    pub fn alpn(self) -> &'static [u8] {
        match self {
            Self::Http1 => b"portico.mesh/h1",
            Self::Http2 => b"portico.mesh/h2",
            Self::Opaque => b"portico.mesh/tcp",
        }
    }

    fn from_alpn(alpn: &[u8]) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.alpn() == alpn)
    }

    /// A label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Opaque => "opaque",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The TLS configs of one workload certificate.
#[derive(Debug)]
pub struct MeshTls {
    /// Client configs, one per protocol (the ALPN differs).
    clients: [Arc<ClientConfig>; 3],
    /// The INBOUND side: requires a client certificate that chains to the trust anchors.
    server: Arc<ServerConfig>,
}

/// Why the TLS configs of a certificate could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MeshTlsError {
    /// rustls refused the key, certificate or roots.
    #[error("mesh TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// A trust anchor is not a usable root certificate.
    #[error("mesh TLS: trust anchor: {0}")]
    Anchor(webpki::Error),
    /// The client verifier could not be built.
    #[error("mesh TLS: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

impl MeshTls {
    /// Configs for `key` (the workload certificate and its key) trusting `anchors`.
    pub fn new(
        key: Arc<CertifiedKey>,
        anchors: &[CertificateDer<'static>],
    ) -> Result<Self, MeshTlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots: Vec<TrustAnchor<'static>> = anchors
            .iter()
            .map(|a| {
                webpki::anchor_from_trusted_cert(a)
                    .map(|t| t.to_owned())
                    .map_err(MeshTlsError::Anchor)
            })
            .collect::<Result<_, _>>()?;
        let verifier = Arc::new(PeerVerifier {
            roots: roots.clone(),
            provider: provider.clone(),
        });
        let resolver = Arc::new(rustls::sign::SingleCertAndKey::from(key));
        let client = |p: MeshProtocol| -> Result<Arc<ClientConfig>, MeshTlsError> {
            let mut c = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_client_cert_resolver(resolver.clone());
            c.alpn_protocols = vec![p.alpn().to_vec()];
            // Session resumption would skip the server's certificate on later connections; a
            // mesh handshake is cheap enough (ECDSA P-256) to always run in full.
            c.resumption = rustls::client::Resumption::disabled();
            Ok(Arc::new(c))
        };
        let clients = [
            client(MeshProtocol::Http1)?,
            client(MeshProtocol::Http2)?,
            client(MeshProtocol::Opaque)?,
        ];
        let store = RootCertStore { roots };
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone())
                .build()?;
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_cert_resolver(resolver);
        server.alpn_protocols = MeshProtocol::ALL.map(|p| p.alpn().to_vec()).to_vec();
        // No tickets: they would make an idle pooled client connection readable, and the pools
        // take a readable idle connection for a closed one.
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(Self {
            clients,
            server: Arc::new(server),
        })
    }

    /// Connects over `tcp` to the proxy of a peer with identity `identity`, for `protocol`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        identity: &str,
        protocol: MeshProtocol,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = server_name(identity).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{identity:?} is not a mesh identity"),
            )
        })?;
        let connector = tokio_rustls::TlsConnector::from(self.clients[protocol.index()].clone());
        connector.connect(name, tcp).await
    }

    /// Terminates a mesh connection whose ClientHello [`peek_hello`] found; returns it with the
    /// protocol negotiated and the caller's identity.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<Accepted> {
        let stream = tokio_rustls::TlsAcceptor::from(self.server.clone())
            .accept(tcp)
            .await?;
        let (_, conn) = stream.get_ref();
        let protocol = conn
            .alpn_protocol()
            .and_then(MeshProtocol::from_alpn)
            .ok_or_else(|| io::Error::other("no mesh protocol negotiated"))?;
        let peer = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| peer_identity(c))
            .ok_or_else(|| io::Error::other("the client certificate carries no SPIFFE ID"))?;
        Ok(Accepted {
            stream: Box::new(stream),
            protocol,
            peer: Arc::from(peer),
        })
    }
}

/// A terminated mesh connection.
#[derive(Debug)]
pub struct Accepted {
    /// The decrypted stream.
    pub stream: Box<tokio_rustls::server::TlsStream<TcpStream>>,
    /// What it carries.
    pub protocol: MeshProtocol,
    /// The caller's verified identity.
    pub peer: Arc<str>,
}

/// The server name a client proxy sends for identity
/// `spiffe://<td>/ns/<ns>/sa/<sa>`: `<sa>.<ns>.serviceaccount.identity.<td>`.
pub fn server_name(identity: &str) -> Option<ServerName<'static>> {
    let (td, ns, sa) = split(identity)?;
    ServerName::try_from(format!("{sa}.{ns}.serviceaccount.identity.{td}")).ok()
}

/// The identity a [`server_name`] stands for.
fn identity_of(name: &ServerName<'_>) -> Option<String> {
    let ServerName::DnsName(dns) = name else {
        return None;
    };
    let mut parts = dns.as_ref().splitn(5, '.');
    let (sa, ns) = (parts.next()?, parts.next()?);
    if parts.next()? != "serviceaccount" || parts.next()? != "identity" {
        return None;
    }
    let td = parts.next()?;
    Some(portico_proxy_api::spiffe_id(td, ns, sa))
}

fn split(identity: &str) -> Option<(&str, &str, &str)> {
    let rest = identity.strip_prefix("spiffe://")?;
    let (td, rest) = rest.split_once("/ns/")?;
    let (ns, sa) = rest.split_once("/sa/")?;
    (!sa.contains('/')).then_some((td, ns, sa))
}

/// The SPIFFE ID in a certificate's URI subject alternative name.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
            Some((*u).to_owned())
        }
        _ => None,
    })
}

/// Checks a server's certificate: it chains to the trust anchors, and it carries the identity
/// the connection was made for (read back from the server name).
#[derive(Debug)]
struct PeerVerifier {
    roots: Vec<TrustAnchor<'static>>,
    provider: Arc<CryptoProvider>,
}

fn invalid(why: impl std::fmt::Display) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        io::Error::other(why.to_string()),
    ))))
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let expected = identity_of(server_name).ok_or_else(|| invalid("not a mesh server name"))?;
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(invalid)?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(invalid)?;
        match peer_identity(end_entity) {
            Some(got) if got == expected => Ok(ServerCertVerified::assertion()),
            got => Err(invalid(format!(
                "the peer is {}, expected {expected}",
                got.as_deref().unwrap_or("no identity")
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What the first bytes of an INBOUND connection are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hello {
    /// A TLS ClientHello offering a mesh protocol: a meshed proxy is calling.
    Mesh,
    /// Anything else (plaintext, the application's own TLS, or nothing within the timeout).
    Other,
}

/// Looks at the client's first bytes without consuming them: whether they are a ClientHello
/// offering a mesh ALPN protocol. A client that sends nothing within `timeout` (a
/// server-speaks-first protocol) is [`Hello::Other`].
pub async fn peek_hello(tcp: &TcpStream, timeout: Duration) -> Hello {
    tokio::time::timeout(timeout, peek(tcp))
        .await
        .unwrap_or(Hello::Other)
}

async fn peek(tcp: &TcpStream) -> Hello {
    // The record header first: plaintext is told apart by its first byte, and a TLS record's
    // length sizes the buffer (a ClientHello fits one record of at most 16 KiB; mesh ones are
    // ~300 bytes), so a plaintext connection costs no big buffer.
    let mut head = [0u8; 5];
    if !peek_at_least(tcp, &mut head, 1).await || head[0] != 0x16 {
        return Hello::Other;
    }
    if !peek_at_least(tcp, &mut head, 5).await {
        return Hello::Other;
    }
    let len = usize::from(u16::from_be_bytes([head[3], head[4]])).min(16 * 1024);
    let mut buf = vec![0u8; 5 + len];
    if !peek_at_least(tcp, &mut buf, 5 + len).await {
        return Hello::Other;
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut slice = &buf[..];
    if acceptor.read_tls(&mut slice).is_err() {
        return Hello::Other;
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let mesh = accepted
                .client_hello()
                .alpn()
                .into_iter()
                .flatten()
                .any(|p| MeshProtocol::from_alpn(p).is_some());
            if mesh { Hello::Mesh } else { Hello::Other }
        }
        // A ClientHello over several records, or not a ClientHello: not a mesh client's.
        _ => Hello::Other,
    }
}

/// Peeks until `buf` holds at least `want` bytes; false if the client closed first.
async fn peek_at_least(tcp: &TcpStream, buf: &mut [u8], want: usize) -> bool {
    let mut seen = 0;
    loop {
        let n = match tcp.peek(buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if n >= want {
            return true;
        }
        // Peeking returns at once while bytes wait unread: wait for more than we saw.
        if n == seen {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        seen = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_round_trip_to_identities() {
        let id = "spiffe://cluster.local/ns/shop/sa/web";
        let name = server_name(id).unwrap();
        assert_eq!(
            name.to_str(),
            "web.shop.serviceaccount.identity.cluster.local"
        );
        assert_eq!(identity_of(&name).as_deref(), Some(id));
        assert!(server_name("spiffe://td/ns/a/b").is_none());
        assert!(server_name("https://x").is_none());
    }
}

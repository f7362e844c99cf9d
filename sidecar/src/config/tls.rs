//! TLS for HTTPS listeners: rustls with the ring provider, ALPN `h2` then `http/1.1`.

use std::sync::Arc;

use portico_proxy_api::{Pem, Tls, TlsVersion};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a listener's certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("reading {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error (in the message, not a `source()`, so it is not reported twice).
        error: std::io::Error,
    },
    /// The PEM text holds no usable certificate or key.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the certificate/key pair.
    #[error("{0}")]
    Rustls(rustls::Error),
}

// By hand rather than `#[from]`, which would also make it the `source()` while the message
// already shows it.
impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        Self::Rustls(e)
    }
}

fn read(pem: &Pem) -> Result<Vec<u8>, TlsError> {
    match pem {
        Pem::Inline { inline } => Ok(inline.clone().into_bytes()),
        Pem::File { file } => std::fs::read(file).map_err(|error| TlsError::Read {
            path: file.clone(),
            error,
        }),
    }
}

/// One certificate chain and key, ready for rustls.
fn certified(
    cert: &Pem,
    key: &Pem,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("certificate: no CERTIFICATE block".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem(format!("key: {e}")))?;
    Ok(Arc::new(CertifiedKey::from_der(certs, key, provider)?))
}

/// Serves the first certificate valid for the client's SNI name, else the first one.
#[derive(Debug)]
struct BySni {
    certs: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let [only] = self.certs.as_slice() {
            return Some(only.clone());
        }
        let name = hello
            .server_name()
            .and_then(|n| ServerName::try_from(n).ok());
        let valid_for = |ck: &&Arc<CertifiedKey>| {
            let (Some(name), Some(leaf)) = (&name, ck.cert.first()) else {
                return false;
            };
            webpki::EndEntityCert::try_from(leaf)
                .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
        };
        self.certs
            .iter()
            .find(valid_for)
            .or(self.certs.first())
            .cloned()
    }
}

/// Builds the server config of one listener. Files are read now, on every config apply, so a
/// renewed certificate is picked up by touching the config.
pub fn server_config(tls: &Tls) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut certs = vec![certified(&tls.cert, &tls.key, &provider)?];
    for more in &tls.sni {
        certs.push(certified(&more.cert, &more.key, &provider)?);
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::V1_2 => rustls::DEFAULT_VERSIONS,
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth();
    let mut cfg = builder.with_cert_resolver(Arc::new(BySni { certs }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

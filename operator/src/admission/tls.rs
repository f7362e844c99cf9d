//! The webhook server's certificate, re-read when its files change.
//!
//! The certificate lives in a mounted Secret that cert-manager (or a `helm upgrade`) may rotate
//! while the operator runs; the kubelet swaps the files in place. Serving the old certificate
//! until a restart would break every admission call the moment the apiserver's `caBundle` moves
//! on, so each handshake checks the files' modification times (a `stat`, cheap next to a TLS
//! handshake) and loads the new pair when they changed. A pair that fails to load (a half-written
//! update) is logged and the previous one kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use super::AdmissionError;

/// A TLS acceptor for `cert`/`key` (PEM files), offering h2 and http/1.1 (the apiserver speaks
/// either). Fails when the files cannot be loaded now; later changes are picked up per handshake.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, AdmissionError> {
    let resolver = ReloadingCert::new(cert, key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The current certificate and key, and the files' modification times they were read at.
#[derive(Debug)]
struct Loaded {
    stamps: (Option<SystemTime>, Option<SystemTime>),
    key: Arc<CertifiedKey>,
}

/// Resolves every handshake to the certificate in the files, reloading them when they change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    loaded: Mutex<Loaded>,
}

impl ReloadingCert {
    /// Loads `cert` and `key` now.
    pub fn new(cert: &Path, key: &Path) -> Result<Self, AdmissionError> {
        let stamps = stamps(cert, key);
        let loaded = Loaded {
            stamps,
            key: Arc::new(load(cert, key)?),
        };
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            loaded: Mutex::new(loaded),
        })
    }

    /// The pair to serve: the files' current contents if they changed and load, else the last
    /// good pair.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let now = stamps(&self.cert, &self.key);
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if now != loaded.stamps {
            // Remember the stamps either way: a broken pair is reported once, not per handshake.
            loaded.stamps = now;
            match load(&self.cert, &self.key) {
                Ok(key) => {
                    tracing::info!(cert = %self.cert.display(), "webhook certificate reloaded");
                    loaded.key = Arc::new(key);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook certificate not reloaded; serving the previous one");
                }
            }
        }
        loaded.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn stamps(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (modified(cert), modified(key))
}

fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, AdmissionError> {
    let file_error = |path: &Path, e: &dyn std::fmt::Display| AdmissionError::TlsFile {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, &e))?;
    if certs.is_empty() {
        return Err(file_error(cert, &"no certificate in the file"));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, &e))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&private_key)?;
    let certified = CertifiedKey::new(certs, signing_key);
    // A rotation writes two files; between the two writes they do not match.
    certified.keys_match()?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("a cert");
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, ck.cert.pem()).expect("write");
        std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write");
        (cert, key)
    }

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("portico-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn a_rotated_pair_is_served_and_a_broken_one_is_not() {
        let dir = dir("rotate");
        let (cert, key) = write_pair(&dir, "one.example");
        let resolver = ReloadingCert::new(&cert, &key).expect("loads");
        let first = resolver.current().cert[0].clone();
        assert_eq!(
            resolver.current().cert[0],
            first,
            "unchanged files, same pair"
        );

        // Modification times have a coarse granularity on some file systems.
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_pair(&dir, "two.example");
        let second = resolver.current().cert[0].clone();
        assert_ne!(second, first, "the new pair is served");

        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&key, "garbage").expect("write");
        assert_eq!(
            resolver.current().cert[0],
            second,
            "the last good pair is kept"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_missing_file_fails_the_start() {
        let dir = dir("missing");
        let err = tls_acceptor(&dir.join("nope.crt"), &dir.join("nope.key"))
            .err()
            .expect("an error");
        assert!(err.to_string().contains("nope.crt"), "{err}");
    }
}

//! Key sets fetched from an issuer's `jwks_uri`.
//!
//! The proxy fetches, not the operator: a token signed with a key the proxy has not seen must
//! trigger a refresh where the token arrived, and each replica keeps working on its last good
//! set while the issuer is unreachable, whatever the operator's state. One fetcher runs per
//! address, shared by every rule that names it and kept across configs (a registry of weak
//! references: the fetcher stops once no rule uses the address).
//!
//! A fetcher refreshes every [`REFRESH`], sooner when a token names an unknown `kid` (at most
//! once per [`MIN_REFETCH`], so random `kid`s cannot make it hammer the issuer), retries failures
//! after [`RETRY`], and never replaces a good set with a failed fetch. Server certificates are
//! checked against the system's roots (`SSL_CERT_FILE`, else
//! `/etc/ssl/certs/ca-certificates.crt`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::jwt::KeySet;

/// How often a key set is fetched again.
pub const REFRESH: Duration = Duration::from_secs(300);
/// The least time between two fetches (an unknown `kid` asks for one).
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// How soon a failed fetch is tried again.
pub const RETRY: Duration = Duration::from_secs(5);
/// The largest key set document read.
const MAX_BYTES: usize = 1 << 20;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The key set at one address, as last fetched.
#[derive(Debug)]
pub struct RemoteKeys {
    uri: String,
    keys: ArcSwapOption<KeySet>,
    wake: Notify,
}

impl RemoteKeys {
    /// The last good key set; `None` until a fetch has succeeded.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// Asks for a fetch soon (a token named a key the set does not have).
    pub fn refresh(&self) {
        self.wake.notify_one();
    }

    /// The address fetched.
    pub fn uri(&self) -> &str {
        &self.uri
    }
}

fn registry() -> &'static Mutex<HashMap<String, Weak<RemoteKeys>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Weak<RemoteKeys>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// The shared key set of `uri`, starting its fetcher if none runs (and a runtime is there to
/// run it: compiling a config outside one, as unit tests do, fetches nothing).
pub fn remote(uri: &str) -> Arc<RemoteKeys> {
    let mut map = registry().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(live) = map.get(uri).and_then(Weak::upgrade) {
        return live;
    }
    map.retain(|_, w| w.strong_count() > 0);
    let keys = Arc::new(RemoteKeys {
        uri: uri.to_owned(),
        keys: ArcSwapOption::empty(),
        wake: Notify::new(),
    });
    map.insert(uri.to_owned(), Arc::downgrade(&keys));
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(fetch_loop(Arc::downgrade(&keys)));
    }
    keys
}

async fn fetch_loop(keys: Weak<RemoteKeys>) {
    let Some(uri) = keys.upgrade().map(|k| k.uri.clone()) else {
        return;
    };
    loop {
        let fetched_at = Instant::now();
        let wait = match fetch(&uri).await {
            Ok(set) => {
                tracing::info!(%uri, keys = set.len(), "fetched JWKS");
                let Some(k) = keys.upgrade() else { return };
                k.keys.store(Some(Arc::new(set)));
                REFRESH
            }
            Err(error) => {
                // The last good set (if any) stays in use.
                tracing::warn!(%uri, %error, "JWKS fetch failed; keeping the last good key set");
                RETRY
            }
        };
        let Some(k) = keys.upgrade() else { return };
        let woken = tokio::select! {
            () = k.wake.notified() => true,
            () = tokio::time::sleep(wait) => false,
        };
        drop(k);
        if woken {
            tokio::time::sleep_until(fetched_at + MIN_REFETCH).await;
        }
        if keys.strong_count() == 0 {
            return;
        }
    }
}

/// Fetches and parses the key set at `uri` (an `https://` address).
pub async fn fetch(uri: &str) -> Result<KeySet, String> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_once(uri))
        .await
        .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
}

async fn fetch_once(uri: &str) -> Result<KeySet, String> {
    let parsed: http::Uri = uri.parse().map_err(|e| format!("bad address: {e}"))?;
    let host = parsed.host().ok_or("address without a host")?.to_owned();
    let port = parsed.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|e| format!("bad server name: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(client_config()?)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| format!("http: {e}"))?;
    tokio::spawn(conn);
    let path = parsed.path_and_query().map_or("/", |p| p.as_str());
    let req = http::Request::get(path)
        .header(
            http::header::HOST,
            parsed.authority().map_or("", |a| a.as_str()),
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("http: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_BYTES)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    let text = std::str::from_utf8(&body).map_err(|_| "body is not UTF-8")?;
    KeySet::parse(text)
}

static ROOTS_FILE: OnceLock<std::path::PathBuf> = OnceLock::new();

/// Trusts the roots in `file` instead of the system's, for JWKS fetches of this process (a
/// proxy run in-process by tests; the binary reads `SSL_CERT_FILE`). Only the first call counts,
/// and only before the first fetch.
pub fn use_roots_file(file: std::path::PathBuf) {
    let _ = ROOTS_FILE.set(file);
}

/// A TLS client config trusting the system's roots, built once.
fn client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            let file = ROOTS_FILE.get().cloned().unwrap_or_else(|| {
                std::env::var("SSL_CERT_FILE")
                    .unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".into())
                    .into()
            });
            let file = file.display().to_string();
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(&file)
                .map_err(|e| format!("reading trusted roots from {file}: {e}"))?
                .flatten()
            {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(format!("no trusted roots in {file}"));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::jwt::JwtValidator;
    use crate::policy::jwt::testing::{Signer, now};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An HTTPS server on loopback answering every request with the current `doc` (503 when
    /// `None`), counting requests.
    async fn jwks_server(
        doc: Arc<Mutex<Option<String>>>,
        hits: Arc<AtomicUsize>,
    ) -> (std::net::SocketAddr, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = std::env::temp_dir().join(format!("portico-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let roots = dir.join("roots.pem");
        std::fs::write(&roots, cert.pem()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, doc, hits) = (acceptor.clone(), doc.clone(), hits.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |_req| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let body = doc.lock().unwrap().clone();
                        async move {
                            let mut resp = http::Response::new(http_body_util::Full::new(
                                Bytes::from(body.clone().unwrap_or_default()),
                            ));
                            if body.is_none() {
                                *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        (addr, roots)
    }

    #[tokio::test]
    async fn a_fetched_key_set_is_used_refreshed_on_an_unknown_kid_and_kept_when_the_issuer_fails()
    {
        let (k1, k2) = (Signer::new("k1"), Signer::new("k2"));
        let doc = Arc::new(Mutex::new(Some(k1.jwks())));
        let hits = Arc::new(AtomicUsize::new(0));
        let (addr, roots) = jwks_server(doc.clone(), hits.clone()).await;
        use_roots_file(roots);
        let uri = format!("https://localhost:{}/jwks.json", addr.port());
        let remote = remote(&uri);
        assert!(
            Arc::ptr_eq(&remote, &super::remote(&uri)),
            "one fetcher per address"
        );
        let v = JwtValidator::new("https://issuer", &[]);
        let claims = serde_json::json!({"iss": "https://issuer", "exp": now() + 600});
        let deadline = Instant::now() + Duration::from_secs(5);
        while remote.current().is_none() {
            assert!(Instant::now() < deadline, "no key set fetched");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            v.validate(&k1.sign(claims.clone()), &remote.current().unwrap())
                .is_ok()
        );

        // The issuer rotates to k2: a k2 token's unknown kid asks for a fetch, which comes
        // MIN_REFETCH after the last one.
        *doc.lock().unwrap() = Some(k2.jwks());
        let token = k2.sign(claims.clone());
        assert_eq!(
            v.validate(&token, &remote.current().unwrap()),
            Err(crate::policy::jwt::JwtError::UnknownKey)
        );
        remote.refresh();
        let deadline = Instant::now() + MIN_REFETCH + Duration::from_secs(5);
        while !remote.current().unwrap().has_kid("k2") {
            assert!(Instant::now() < deadline, "no refresh after an unknown kid");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(v.validate(&token, &remote.current().unwrap()).is_ok());

        // The issuer fails: the next fetch does not take the good set away.
        *doc.lock().unwrap() = None;
        let before = hits.load(Ordering::SeqCst);
        remote.refresh();
        let deadline = Instant::now() + MIN_REFETCH + Duration::from_secs(5);
        while hits.load(Ordering::SeqCst) == before {
            assert!(Instant::now() < deadline, "no fetch");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            remote.current().unwrap().has_kid("k2"),
            "the last good set is kept"
        );
    }
}

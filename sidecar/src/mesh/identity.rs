//! The proxy's workload identity: a key made here that never leaves the process, and a
//! certificate for it from the operator (see `portico_proxy_api::CertificateRequest`).
//!
//! [`obtain`] runs before the proxy starts: the proxy is not ready until it has its first
//! certificate, or until the operator said it issues none (404: identities are off, the proxy
//! runs without one). [`renew`] then asks for a new certificate for the same key at about 70% of
//! the current one's life (±5% jitter, so a fleet started together spreads its renewals), and
//! retries with backoff when the operator cannot be reached; the old certificate serves until a
//! new one arrives.
//!
//! It also renews early when the operator announces a new issuer epoch on the config stream
//! (`portico_proxy_api::IdentityAnnouncement`, passed in with [`Store::announce`]): the issuer or
//! the trust anchors changed, and the renewed certificate brings the new chain and anchors. The
//! renewal waits a random part of [`ROTATION_SPREAD`] first, so a whole mesh does not ask in the
//! same second, and repeats (each time in a window twice as long, up to 5 minutes) while the
//! certificate it gets is from another epoch than the announced one: operator replicas read a
//! changed issuer seconds apart.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use portico_proxy_api::{CERTIFICATE_PATH, CertificateRequest, CertificateResponse};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::watch;

use crate::mesh::mtls::{MeshTls, MeshTlsError};
use crate::mesh::operator::{self, ControlError, ControlPlane};
use crate::observe::metrics::Handshakes;

/// Who the proxy is, once the operator signed it.
#[derive(Debug)]
pub struct Certified {
    /// `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    pub identity: String,
    /// The certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The same chain as PEM (for the admin page: public, no key).
    pub chain_pem: String,
    /// The roots peers' certificates must chain to.
    pub trust_anchors: Vec<CertificateDer<'static>>,
    /// The same roots as PEM (for the admin page).
    pub trust_anchors_pem: String,
    /// When the certificate expires.
    pub not_after: SystemTime,
    /// The operator's issuer epoch the certificate was issued in.
    pub issuer_epoch: String,
    /// The certificate chain with this proxy's key, for TLS.
    pub key: Arc<rustls::sign::CertifiedKey>,
}

impl Certified {
    /// Seconds until the certificate expires (negative once expired).
    pub fn seconds_left(&self, now: SystemTime) -> i64 {
        match self.not_after.duration_since(now) {
            Ok(left) => left.as_secs() as i64,
            Err(past) => -(past.duration().as_secs() as i64),
        }
    }
}

/// How long at most a proxy waits, after the operator announced a new issuer epoch, before it
/// renews its certificate (a random part of it, spreading a mesh's requests over this window).
pub const ROTATION_SPREAD: Duration = Duration::from_secs(10);

/// The current certificate and the mesh TLS configs made of it, shared with the admin
/// server, the upstream connections and the INBOUND listener.
#[derive(Debug, Default)]
pub struct Store {
    current: ArcSwapOption<Certified>,
    tls: ArcSwapOption<MeshTls>,
    /// The issuer epoch the operator last announced.
    announced: watch::Sender<Option<Arc<str>>>,
    /// Mesh mTLS handshakes, counted in the proxy's metrics.
    pub handshakes: Handshakes,
}

impl Store {
    /// The certificate in force, if any.
    pub fn current(&self) -> Option<Arc<Certified>> {
        self.current.load_full()
    }

    /// The mesh TLS configs of the certificate in force.
    pub fn tls(&self) -> Option<Arc<MeshTls>> {
        self.tls.load_full()
    }

    /// Puts `certified` in force, unless its TLS configs cannot be built (then the previous
    /// certificate stays, and so do connections made with it).
    pub fn set(&self, certified: Certified) -> Result<(), MeshTlsError> {
        let tls = MeshTls::new(certified.key.clone(), &certified.trust_anchors)?;
        self.tls.store(Some(Arc::new(tls)));
        self.current.store(Some(Arc::new(certified)));
        Ok(())
    }

    /// The operator's current issuer epoch, from the config stream: when it is not the epoch
    /// of the certificate in force, [`renew`] renews early.
    pub fn announce(&self, epoch: &str) {
        self.announced.send_if_modified(|e| {
            if e.as_deref() == Some(epoch) {
                return false;
            }
            *e = Some(Arc::from(epoch));
            true
        });
    }

    /// The epoch last announced, if any.
    pub fn announced(&self) -> Option<Arc<str>> {
        self.announced.borrow().clone()
    }
}

/// Why a certificate could not be had.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reaching the operator failed, or it refused.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Making the key or the CSR failed.
    #[error("making the certificate request: {0}")]
    Csr(#[from] rcgen::Error),
    /// The answer was not a usable certificate.
    #[error("the operator's answer is not a usable certificate: {0}")]
    Answer(String),
}

/// A key and the identity it asks for.
pub struct Requester {
    key: KeyPair,
    identity: String,
}

impl std::fmt::Debug for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requester")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Requester {
    /// A fresh ECDSA P-256 key for `identity`.
    pub fn new(identity: String) -> Result<Self, IdentityError> {
        Ok(Self {
            key: KeyPair::generate()?,
            identity,
        })
    }

    /// A CSR asking for exactly the identity, nothing else.
    fn csr(&self) -> Result<String, IdentityError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(self.identity.clone().try_into()?)];
        Ok(params.serialize_request(&self.key)?.pem()?)
    }

    /// Asks the operator once. `Ok(None)`: it issues no identities (404).
    pub async fn request(&self, cp: &ControlPlane) -> Result<Option<Certified>, IdentityError> {
        let body = serde_json::to_vec(&CertificateRequest { csr: self.csr()? })
            .map_err(|e| IdentityError::Answer(e.to_string()))?;
        let (mut send, token) = operator::connect::<Full<Bytes>>(cp).await?;
        let url = format!(
            "{}{}",
            cp.url.to_string().trim_end_matches('/'),
            CERTIFICATE_PATH
        );
        let req = http::Request::post(&url)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| ControlError::Url(url.clone()))?;
        let resp = send.send_request(req).await.map_err(ControlError::from)?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(ControlError::from)?
            .to_bytes();
        if status == http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(ControlError::Refused {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).trim().to_owned(),
            }
            .into());
        }
        let answer: CertificateResponse =
            serde_json::from_slice(&body).map_err(|e| IdentityError::Answer(e.to_string()))?;
        self.accept(answer).map(Some)
    }

    /// Checks the operator's answer: the identity asked for, certificates that parse.
    fn accept(&self, answer: CertificateResponse) -> Result<Certified, IdentityError> {
        if answer.identity != self.identity {
            return Err(IdentityError::Answer(format!(
                "issued for {}, asked for {}",
                answer.identity, self.identity
            )));
        }
        let parse = |pem: &str, what: &str| {
            let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| IdentityError::Answer(format!("{what}: {e}")))?;
            if certs.is_empty() {
                return Err(IdentityError::Answer(format!("{what}: no certificate")));
            }
            Ok(certs)
        };
        let chain = parse(&answer.certificate, "certificate")?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key.serialize_der().into());
        let provider = rustls::crypto::ring::default_provider();
        let key = rustls::sign::CertifiedKey::from_der(chain.clone(), key, &provider)
            .map_err(|e| IdentityError::Answer(format!("certificate and key: {e}")))?;
        Ok(Certified {
            identity: answer.identity,
            key: Arc::new(key),
            chain,
            chain_pem: answer.certificate,
            trust_anchors: parse(&answer.trust_anchors, "trust anchors")?,
            trust_anchors_pem: answer.trust_anchors,
            issuer_epoch: answer.issuer_epoch,
            not_after: UNIX_EPOCH + Duration::from_secs(answer.not_after),
        })
    }
}

/// A static workload certificate from files (standalone proxies, e.g. outside Kubernetes or in
/// benchmarks): the certificate chain (PEM, leaf first; its URI SAN is the identity), its key
/// (PEM, PKCS#8, SEC1 or PKCS#1) and the trust anchors (PEM). Nothing renews it.
pub fn from_files(
    cert: &std::path::Path,
    key: &std::path::Path,
    anchors: &std::path::Path,
) -> Result<Certified, IdentityError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| IdentityError::Answer(format!("{}: {e}", p.display())))
    };
    let chain_pem = String::from_utf8(read(cert)?)
        .map_err(|_| IdentityError::Answer(format!("{}: not PEM text", cert.display())))?;
    let anchors_pem = String::from_utf8(read(anchors)?)
        .map_err(|_| IdentityError::Answer(format!("{}: not PEM text", anchors.display())))?;
    let parse = |pem: &str, what: &std::path::Path| {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| IdentityError::Answer(format!("{}: {e}", what.display())))?;
        if certs.is_empty() {
            return Err(IdentityError::Answer(format!(
                "{}: no certificate",
                what.display()
            )));
        }
        Ok(certs)
    };
    let chain = parse(&chain_pem, cert)?;
    let trust_anchors = parse(&anchors_pem, anchors)?;
    let identity = crate::mesh::mtls::peer_identity(&chain[0]).ok_or_else(|| {
        IdentityError::Answer(format!(
            "{}: the certificate has no spiffe:// URI SAN",
            cert.display()
        ))
    })?;
    let not_after = x509_parser::parse_x509_certificate(&chain[0])
        .map(|(_, c)| {
            UNIX_EPOCH + Duration::from_secs(c.validity().not_after.timestamp().max(0) as u64)
        })
        .map_err(|e| IdentityError::Answer(format!("{}: {e}", cert.display())))?;
    let private = rustls::pki_types::PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| IdentityError::Answer(format!("{}: {e}", key.display())))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified_key = rustls::sign::CertifiedKey::from_der(chain.clone(), private, &provider)
        .map_err(|e| IdentityError::Answer(format!("certificate and key: {e}")))?;
    Ok(Certified {
        identity,
        chain,
        chain_pem,
        trust_anchors,
        trust_anchors_pem: anchors_pem,
        not_after,
        issuer_epoch: String::new(),
        key: Arc::new(certified_key),
    })
}

/// How long to wait before renewing a certificate valid until `not_after`: about 70% of what is
/// left from `now`, ±5%.
pub fn renew_after(not_after: SystemTime, now: SystemTime) -> Duration {
    let left = not_after.duration_since(now).unwrap_or_default();
    let jitter = 0.65 + rand::random::<f64>() * 0.10;
    left.mul_f64(jitter)
}

/// Gets the first certificate, retrying with backoff until the operator answers. `None` when
/// the operator issues no identities.
pub async fn obtain(cp: &ControlPlane, requester: &Requester) -> Option<Certified> {
    let mut failures = 0u32;
    loop {
        match requester.request(cp).await {
            Ok(certified) => return certified,
            Err(e) => {
                failures += 1;
                if matches!(e, IdentityError::Control(ControlError::Connect(..))) {
                    tracing::warn!(error = %e, "cannot reach the control plane for a workload certificate");
                } else {
                    tracing::warn!(error = %e, identity = %requester.identity, "no workload certificate yet");
                }
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    }
}

/// Renews the certificate in `store` for ever (until the task is dropped): at about 70% of its
/// life, or soon after the operator announces an issuer epoch the certificate is not from.
pub async fn renew(cp: ControlPlane, requester: Requester, store: Arc<Store>) {
    let mut failures = 0u32;
    let mut announced = store.announced.subscribe();
    // The epoch early renewals are heading for and how many were made for it: the answer may
    // come from an operator replica that has not read the new issuer yet (replicas see a
    // changed Secret seconds apart), so early renewals repeat, each after a longer wait.
    let mut early: Option<(Arc<str>, u32)> = None;
    loop {
        let wait = match store.current() {
            Some(c) if failures == 0 => renew_after(c.not_after, SystemTime::now()),
            _ => backoff(failures),
        };
        let rotated = tokio::select! {
            () = tokio::time::sleep(wait) => None,
            epoch = stale_epoch(&store, &mut announced) => Some(epoch),
        };
        if let Some(epoch) = rotated {
            let attempt = match &early {
                Some((e, n)) if *e == epoch => n + 1,
                _ => 0,
            };
            let window = ROTATION_SPREAD
                .saturating_mul(1 << attempt.min(5))
                .min(Duration::from_secs(300));
            let spread = window.mul_f64(rand::random::<f64>());
            tracing::info!(
                %epoch,
                attempt,
                in_ms = spread.as_millis() as u64,
                "the operator's identity issuer changed; renewing the workload certificate"
            );
            early = Some((epoch, attempt));
            tokio::time::sleep(spread).await;
        }
        match requester.request(&cp).await {
            Ok(Some(certified)) => {
                let identity = certified.identity.clone();
                let epoch = certified.issuer_epoch.clone();
                match store.set(certified) {
                    Ok(()) => {
                        tracing::info!(%identity, %epoch, "workload certificate renewed");
                        failures = 0;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the renewed certificate is not usable");
                        failures = failures.saturating_add(1);
                    }
                }
            }
            Ok(None) => {
                tracing::warn!(
                    "the operator stopped issuing identities; keeping the current certificate"
                );
                failures = failures.saturating_add(1);
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the workload certificate failed");
                failures = failures.saturating_add(1);
            }
        }
    }
}

/// Resolves with the announced epoch while the certificate in force is from another one (at
/// once, or when an announcement makes it so); never when announcements end.
async fn stale_epoch(store: &Store, announced: &mut watch::Receiver<Option<Arc<str>>>) -> Arc<str> {
    loop {
        let wanted = announced.borrow_and_update().clone();
        if let (Some(wanted), Some(current)) = (wanted, store.current())
            && *current.issuer_epoch != *wanted
        {
            return wanted;
        }
        if announced.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Exponential backoff with full jitter: a random wait in `[0, min(30 s, 250 ms · 2ⁿ)]`.
fn backoff(failures: u32) -> Duration {
    let cap = Duration::from_millis(250)
        .saturating_mul(1 << failures.min(7))
        .min(Duration::from_secs(30));
    cap.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_about_70_percent_of_the_life_left() {
        let now = SystemTime::now();
        let day = Duration::from_secs(24 * 3600);
        for _ in 0..100 {
            let wait = renew_after(now + day, now);
            assert!(
                wait >= day.mul_f64(0.65) && wait <= day.mul_f64(0.75),
                "{wait:?}"
            );
        }
        assert_eq!(renew_after(now, now + day), Duration::ZERO);
    }

    /// A self-signed certificate for `identity` from issuer epoch `epoch`.
    fn certified(identity: &str, epoch: &str) -> Certified {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(identity.try_into().unwrap())];
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().clone();
        let provider = rustls::crypto::ring::default_provider();
        let pkcs8 = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let certified_key =
            rustls::sign::CertifiedKey::from_der(vec![der.clone()], pkcs8, &provider).unwrap();
        Certified {
            identity: identity.into(),
            chain: vec![der.clone()],
            chain_pem: cert.pem(),
            trust_anchors: vec![der],
            trust_anchors_pem: cert.pem(),
            not_after: SystemTime::now() + Duration::from_secs(3600),
            issuer_epoch: epoch.into(),
            key: Arc::new(certified_key),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_announced_epoch_the_certificate_is_not_from_wakes_the_renewal() {
        let store = Store::default();
        store
            .set(certified("spiffe://cluster.local/ns/shop/sa/web", "one"))
            .unwrap();
        let mut announced = store.announced.subscribe();
        async fn stale(
            store: &Store,
            announced: &mut watch::Receiver<Option<Arc<str>>>,
        ) -> Result<Arc<str>, tokio::time::error::Elapsed> {
            let soon = Duration::from_secs(1);
            tokio::time::timeout(soon, stale_epoch(store, announced)).await
        }
        // Nothing announced, or the certificate's own epoch: nothing to do.
        assert!(stale(&store, &mut announced).await.is_err());
        store.announce("one");
        assert!(stale(&store, &mut announced).await.is_err());
        // Another epoch: renew, and again while the certificate is still from the old one.
        store.announce("two");
        assert_eq!(&*stale(&store, &mut announced).await.unwrap(), "two");
        assert_eq!(&*stale(&store, &mut announced).await.unwrap(), "two");
        // A certificate from the announced epoch: nothing more to do.
        store
            .set(certified("spiffe://cluster.local/ns/shop/sa/web", "two"))
            .unwrap();
        assert!(stale(&store, &mut announced).await.is_err());
        store.announce("three");
        assert_eq!(&*stale(&store, &mut announced).await.unwrap(), "three");
        assert_eq!(store.announced().as_deref(), Some("three"));
    }

    #[test]
    fn the_csr_asks_for_the_identity_only() {
        let id = "spiffe://cluster.local/ns/shop/sa/web";
        let requester = Requester::new(id.into()).unwrap();
        let pem = requester.csr().unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        // An answer for another identity is refused.
        let other = CertificateResponse {
            identity: "spiffe://cluster.local/ns/shop/sa/admin".into(),
            certificate: String::new(),
            trust_anchors: String::new(),
            issuer_epoch: String::new(),
            not_after: 0,
        };
        assert!(matches!(
            requester.accept(other),
            Err(IdentityError::Answer(_))
        ));
    }
}

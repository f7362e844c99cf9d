//! The issuer in force, re-read from its files while the operator runs.
//!
//! In a cluster the files are a mounted Secret: the kubelet replaces all three at once (an
//! atomic symlink swap) some seconds after the Secret changes — after a user's rotation step, or
//! after cert-manager renewed the issuer. Every [`RELOAD_INTERVAL`] the files are read; when
//! their bytes changed and stayed the same on a second read (so a read that straddled a swap is
//! not taken), a new [`Issuer`] is built. A set that does not make an issuer (a key for another
//! certificate, no anchors) is logged and counted, and the previous issuer keeps signing.
//!
//! A new issuer changes the [epoch](Issuer::epoch) announced on every config stream; proxies
//! then renew, which hands them the new certificate chain and trust anchors. A rotation of the
//! trust anchor is therefore three edits of the Secret, each waited out:
//!
//! ```text
//!  1. ca.crt = old root + new root      every proxy renews: trusts both, still signed by the old
//!  2. tls.crt/tls.key = issuer under    every proxy renews: signed by the new issuer; peers not
//!     the new root                      yet renewed are still trusted (the old root is too)
//!  3. ca.crt = new root                 every proxy renews: the old root is trusted no more
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::Issuer;
use crate::metrics::Metrics;

/// How often the issuer's files are read for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// The bytes of the three files (the anchors empty when there is no anchors file).
pub type FileBytes = [Vec<u8>; 3];

/// The files an issuer is read from.
#[derive(Clone, Debug)]
pub struct IssuerFiles {
    /// The issuer's certificate (PEM).
    pub cert: PathBuf,
    /// Its PKCS#8 key (PEM).
    pub key: PathBuf,
    /// The trust anchors (PEM); `None`: the issuer's certificate.
    pub trust_anchors: Option<PathBuf>,
    /// The trust domain of the identities.
    pub trust_domain: String,
    /// The lifetime of workload certificates.
    pub lifetime: Duration,
}

impl IssuerFiles {
    /// The three files' bytes.
    fn read(&self) -> std::io::Result<FileBytes> {
        let anchors = match &self.trust_anchors {
            Some(p) => std::fs::read(p)?,
            None => Vec::new(),
        };
        Ok([
            std::fs::read(&self.cert)?,
            std::fs::read(&self.key)?,
            anchors,
        ])
    }

    /// An issuer from bytes read by [`IssuerFiles::read`].
    fn issuer(&self, [cert, key, anchors]: &FileBytes) -> anyhow::Result<Issuer> {
        fn text<'a>(b: &'a [u8], what: &str) -> anyhow::Result<&'a str> {
            std::str::from_utf8(b).map_err(|_| anyhow::anyhow!("the issuer's {what} is not text"))
        }
        let anchors = match &self.trust_anchors {
            Some(_) => Some(text(anchors, "trust anchors")?),
            None => None,
        };
        Issuer::new(
            text(cert, "certificate")?,
            text(key, "key")?,
            anchors,
            &self.trust_domain,
            self.lifetime,
        )
    }

    /// The issuer the files hold now, and the bytes it was made from (for
    /// [`IssuerSource::follow`]).
    pub fn load(&self) -> anyhow::Result<(Issuer, FileBytes)> {
        let bytes = self
            .read()
            .map_err(|e| anyhow::anyhow!("reading the identity issuer's files: {e}"))?;
        Ok((self.issuer(&bytes)?, bytes))
    }
}

/// The issuer in force and the epoch announced to proxies.
#[derive(Debug)]
pub struct IssuerSource {
    current: ArcSwap<Issuer>,
    epoch: watch::Sender<Arc<str>>,
}

impl IssuerSource {
    /// A source whose issuer is `issuer` until [`IssuerSource::replace`]d.
    pub fn new(issuer: Issuer) -> Self {
        let epoch = watch::Sender::new(Arc::from(issuer.epoch()));
        Self {
            current: ArcSwap::from_pointee(issuer),
            epoch,
        }
    }

    /// The issuer that signs now.
    pub fn current(&self) -> Arc<Issuer> {
        self.current.load_full()
    }

    /// The current epoch, and each new one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<str>> {
        self.epoch.subscribe()
    }

    /// Puts `issuer` in force and announces its epoch (when it differs).
    pub fn replace(&self, issuer: Issuer) {
        let epoch: Arc<str> = Arc::from(issuer.epoch());
        self.current.store(Arc::new(issuer));
        self.epoch.send_if_modified(|e| {
            let changed = **e != *epoch;
            *e = epoch;
            changed
        });
    }

    /// Re-reads `files` every `interval` for ever, replacing the issuer when they no longer
    /// hold the bytes `loaded` and make a valid one.
    pub async fn follow(
        self: Arc<Self>,
        files: IssuerFiles,
        mut loaded: FileBytes,
        interval: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<()> {
        // The bytes of the last refused set, so a bad Secret is reported once, not every tick.
        let mut refused: Option<FileBytes> = None;
        let count = |result: &'static str| {
            metrics
                .identity_issuer_reloads
                .get_or_create(&[("result", result)])
                .inc();
        };
        loop {
            tokio::time::sleep(interval).await;
            let Ok(first) = files.read() else { continue };
            if loaded == first || refused.as_ref() == Some(&first) {
                continue;
            }
            // A read that straddled the kubelet's swap would mix old and new files: take the
            // change only when a second read agrees.
            tokio::time::sleep(Duration::from_millis(200)).await;
            match files.read() {
                Ok(second) if second == first => {}
                _ => continue,
            }
            match files.issuer(&first) {
                Ok(issuer) => {
                    tracing::info!(
                        epoch = issuer.epoch(),
                        previous = self.current().epoch(),
                        "identity issuer reloaded; proxies will renew their certificates"
                    );
                    self.replace(issuer);
                    count("reloaded");
                    loaded = first;
                    refused = None;
                }
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        epoch = self.current().epoch(),
                        "the identity issuer's files changed but make no valid issuer; the previous issuer keeps signing"
                    );
                    count("refused");
                    refused = Some(first);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    /// A self-signed CA: its certificate and key (PEM).
    fn ca() -> (String, String) {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let key_pem = key.serialize_pem();
        (
            CertifiedIssuer::self_signed(params, key).unwrap().pem(),
            key_pem,
        )
    }

    fn csr() -> String {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://cluster.local/ns/shop/sa/web".try_into().unwrap(),
        )];
        let key = KeyPair::generate().unwrap();
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
        for _ in 0..200 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn a_changed_issuer_is_taken_and_announced_and_a_bad_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = IssuerFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            trust_anchors: Some(dir.path().join("ca.crt")),
            trust_domain: "cluster.local".into(),
            lifetime: Duration::from_secs(3600),
        };
        let write = |cert: &str, key: &str, anchors: &str| {
            std::fs::write(&files.cert, cert).unwrap();
            std::fs::write(&files.key, key).unwrap();
            std::fs::write(files.trust_anchors.as_ref().unwrap(), anchors).unwrap();
        };
        let (old_cert, old_key) = ca();
        let (new_cert, new_key) = ca();
        write(&old_cert, &old_key, &old_cert);
        let (issuer, loaded) = files.load().unwrap();
        let source = Arc::new(IssuerSource::new(issuer));
        let metrics = Arc::new(Metrics::new());
        let mut epochs = source.subscribe();
        let first = epochs.borrow_and_update().clone();
        let task = tokio::spawn(source.clone().follow(
            files.clone(),
            loaded,
            Duration::from_millis(20),
            metrics.clone(),
        ));
        let issue = |s: &IssuerSource| {
            s.current()
                .issue(&csr(), "shop", "web", std::time::SystemTime::now())
                .unwrap()
        };

        // Step 1 of a rotation: both roots trusted, still signed by the old issuer.
        write(&old_cert, &old_key, &format!("{old_cert}{new_cert}"));
        epochs.changed().await.unwrap();
        let both = epochs.borrow_and_update().clone();
        assert_ne!(both, first);
        let issued = issue(&source);
        assert_eq!(issued.issuer_epoch, *both);
        assert!(issued.trust_anchors.contains(new_cert.trim()));

        // A key that is not the certificate's: refused, the previous issuer keeps signing.
        write(&new_cert, &old_key, &format!("{old_cert}{new_cert}"));
        wait_for("the refusal", || {
            metrics
                .encode()
                .contains("portico_operator_identity_issuer_reloads_total{result=\"refused\"} 1")
        })
        .await;
        assert_eq!(source.current().epoch(), &*both);

        // Step 2: the new issuer signs.
        write(&new_cert, &new_key, &format!("{old_cert}{new_cert}"));
        epochs.changed().await.unwrap();
        let signed_by_new = epochs.borrow_and_update().clone();
        assert_ne!(signed_by_new, both);
        let leaf = issue(&source).certificate;
        assert!(
            super::super::tests::chains_to(&new_cert, &leaf),
            "signed by the new issuer"
        );
        assert!(!super::super::tests::chains_to(&old_cert, &leaf));
        assert!(
            metrics
                .encode()
                .contains("portico_operator_identity_issuer_reloads_total{result=\"reloaded\"} 2")
        );
        task.abort();
    }
}

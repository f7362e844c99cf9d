//! Workload identities: the operator is the mesh's certificate authority.
//!
//! A proxy generates its key, sends a CSR with its ServiceAccount token
//! (`POST /v1/identity/certificate`, see [`portico_proxy_api::CertificateRequest`]); the config
//! server checks the token with a TokenReview, and [`Issuer::issue`] signs a certificate for
//! exactly that ServiceAccount: `spiffe://<trust-domain>/ns/<ns>/sa/<sa>` as the only subject
//! alternative name. The certificate is built from validated values, never copied from the CSR:
//! the CSR contributes its public key (after its signature is checked) and nothing else, and it
//! is refused when it asks for anything but that one identity (another URI, DNS names, IPs, a CA
//! bit), so a mistake in what the proxy asks for is seen, not silently corrected.
//!
//! Certificates live `lifetime` (24 h by default), start [`CLOCK_SKEW`] in the past (a peer whose
//! clock is slightly behind still accepts a fresh certificate), carry a random 128-bit serial,
//! and are good for TLS server and client authentication.
//!
//! The issuer (certificate and key, PEM; the key PKCS#8) and the trust anchors come from files —
//! in a cluster a Secret the chart generates or the user supplies (e.g. from cert-manager). The
//! trust anchors may hold several roots: during a rotation, the old and the new. The files are
//! re-read while the operator runs ([`source`]): a changed issuer or set of anchors takes effect
//! without a restart, and proxies renew their certificates when told (see [`Issuer::epoch`]).

pub mod source;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use portico_proxy_api::{CertificateResponse, spiffe_id};
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject as _;

/// How far in the past a certificate's validity starts.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// The largest CSR accepted (a P-256 CSR is about 400 bytes of PEM).
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Why a CSR was refused (400), or the signing failed (500).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// Not a PEM CSR, a bad signature, or an extension the issuer does not accept.
    #[error("the CSR is not acceptable: {0}")]
    BadCsr(String),
    /// The CSR asks for another identity, several, or more than an identity.
    #[error("the CSR must ask for exactly {expected} and nothing else; it asks for {asked}")]
    WrongIdentity {
        /// The identity of the token.
        expected: String,
        /// What the CSR asks for.
        asked: String,
    },
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// The mesh's issuer: signs workload certificates for one trust domain.
pub struct Issuer {
    issuer: rcgen::Issuer<'static, KeyPair>,
    /// The issuer's certificate (PEM), sent after the leaf unless it is itself a trust anchor.
    issuer_pem: String,
    trust_anchors_pem: String,
    trust_domain: String,
    lifetime: Duration,
    epoch: String,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Issuer")
            .field("trust_domain", &self.trust_domain)
            .field("lifetime", &self.lifetime)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// An issuer from PEM text: its certificate, its PKCS#8 key, and the trust anchors (the
    /// issuer's certificate itself when `None`: a self-signed root).
    pub fn new(
        cert_pem: &str,
        key_pem: &str,
        trust_anchors_pem: Option<&str>,
        trust_domain: &str,
        lifetime: Duration,
    ) -> anyhow::Result<Self> {
        use rcgen::PublicKeyData as _;
        let key = KeyPair::from_pem(key_pem)
            .context("the identity issuer's key must be a PKCS#8 PEM key (\"PRIVATE KEY\")")?;
        // rcgen trusts that the key belongs to the certificate; a mismatch (e.g. a Secret read
        // halfway through an update) would sign certificates nobody can verify, so check it.
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .context("the identity issuer's certificate is not a PEM certificate")?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .context("the identity issuer's certificate does not parse")?;
        anyhow::ensure!(
            cert.tbs_certificate.subject_pki.raw == key.subject_public_key_info().as_slice(),
            "the identity issuer's key does not belong to its certificate"
        );
        anyhow::ensure!(
            cert.is_ca(),
            "the identity issuer's certificate is not a CA certificate"
        );
        let issuer = rcgen::Issuer::from_ca_cert_pem(cert_pem, key)
            .context("the identity issuer's certificate is not a PEM certificate for its key")?;
        if trust_domain.is_empty() || trust_domain.contains(['/', ':']) {
            anyhow::bail!("trust domain {trust_domain:?} must be a DNS-like name");
        }
        let anchors = trust_anchors_pem.unwrap_or(cert_pem).trim().to_owned();
        let parsed = rustls::pki_types::CertificateDer::pem_slice_iter(anchors.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("the identity trust anchors are not PEM certificates")?;
        anyhow::ensure!(
            !parsed.is_empty(),
            "the identity trust anchors hold no certificate"
        );
        let issuer_pem = cert_pem.trim().to_owned();
        Ok(Self {
            issuer,
            epoch: epoch(&issuer_pem, &anchors),
            issuer_pem,
            trust_anchors_pem: anchors,
            trust_domain: trust_domain.to_owned(),
            lifetime,
        })
    }

    /// The trust domain of the identities this issuer signs.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Names this issuer and its trust anchors: the same text on every operator replica that
    /// read the same files, another text when either changed. Certificates carry the epoch they
    /// were issued in, and the config stream announces the current one, so a proxy whose
    /// certificate is from an older epoch renews it at once instead of at 70% of its life.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Signs a certificate for ServiceAccount `ns/sa` with the public key of `csr_pem`, valid
    /// from `now` minus [`CLOCK_SKEW`] for the issuer's lifetime.
    pub fn issue(
        &self,
        csr_pem: &str,
        ns: &str,
        sa: &str,
        now: SystemTime,
    ) -> Result<CertificateResponse, IdentityError> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(IdentityError::BadCsr(format!(
                "larger than {MAX_CSR_BYTES} bytes"
            )));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| IdentityError::BadCsr(e.to_string()))?;
        let expected = spiffe_id(&self.trust_domain, ns, sa);
        let asked = &csr.params.subject_alt_names;
        let only_expected =
            matches!(asked.as_slice(), [SanType::URI(uri)] if uri.as_str() == expected);
        let is_ca = !matches!(csr.params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa);
        if !only_expected || is_ca {
            let mut names: Vec<String> = asked.iter().map(|n| format!("{n:?}")).collect();
            if is_ca {
                names.push("a CA certificate".into());
            }
            return Err(IdentityError::WrongIdentity {
                expected,
                asked: if names.is_empty() {
                    "no identity".into()
                } else {
                    names.join(", ")
                },
            });
        }

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = expected
            .clone()
            .try_into()
            .map_err(|e: rcgen::Error| IdentityError::Signing(e.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let mut serial: [u8; 16] = rand::random();
        // A positive INTEGER: the top bit clear.
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let not_before = now.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH);
        let not_after = now + self.lifetime;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| IdentityError::Signing(e.to_string()))?;
        let mut certificate = cert.pem();
        if !self.trust_anchors_pem.contains(&self.issuer_pem) {
            certificate.push_str(&self.issuer_pem);
            certificate.push('\n');
        }
        Ok(CertificateResponse {
            identity: expected,
            certificate,
            trust_anchors: self.trust_anchors_pem.clone(),
            issuer_epoch: self.epoch.clone(),
            not_after: not_after
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
        })
    }
}

/// The first 16 bytes of SHA-256 over the issuer's certificate and the trust anchors, in hex.
fn epoch(issuer_pem: &str, anchors_pem: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(issuer_pem.as_bytes());
    ctx.update(b"\n--\n");
    ctx.update(anchors_pem.as_bytes());
    ctx.finish().as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Command-line settings of the identity issuer.
#[derive(clap::Args, Clone, Debug)]
pub struct IdentityArgs {
    /// Certificate (PEM) that signs workload certificates; without it no identities are issued
    /// and proxies run without one.
    #[arg(
        long,
        env = "PORTICO_IDENTITY_ISSUER_CERT",
        requires = "identity_issuer_key"
    )]
    pub identity_issuer_cert: Option<std::path::PathBuf>,
    /// The issuer's private key (PKCS#8 PEM).
    #[arg(
        long,
        env = "PORTICO_IDENTITY_ISSUER_KEY",
        requires = "identity_issuer_cert"
    )]
    pub identity_issuer_key: Option<std::path::PathBuf>,
    /// The roots (PEM) peers' certificates must chain to; default: the issuer's certificate.
    #[arg(long, env = "PORTICO_IDENTITY_TRUST_ANCHORS")]
    pub identity_trust_anchors: Option<std::path::PathBuf>,
    /// The trust domain of every identity: `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    #[arg(long, env = "PORTICO_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// How long a workload certificate is valid (proxies renew at about 70% of it).
    #[arg(long, env = "PORTICO_IDENTITY_LIFETIME", default_value = "24h")]
    pub identity_lifetime: portico_proxy_api::Duration,
}

impl Default for IdentityArgs {
    /// No issuer: no identities.
    fn default() -> Self {
        Self {
            identity_issuer_cert: None,
            identity_issuer_key: None,
            identity_trust_anchors: None,
            trust_domain: "cluster.local".into(),
            identity_lifetime: portico_proxy_api::Duration(Duration::from_secs(24 * 3600)),
        }
    }
}

impl IdentityArgs {
    /// The issuer's files these settings name, if any.
    pub fn files(&self) -> anyhow::Result<Option<source::IssuerFiles>> {
        let (Some(cert), Some(key)) = (&self.identity_issuer_cert, &self.identity_issuer_key)
        else {
            return Ok(None);
        };
        let lifetime = self.identity_lifetime.get();
        anyhow::ensure!(
            lifetime >= Duration::from_secs(60),
            "--identity-lifetime must be at least 1m"
        );
        Ok(Some(source::IssuerFiles {
            cert: cert.clone(),
            key: key.clone(),
            trust_anchors: self.identity_trust_anchors.clone(),
            trust_domain: self.trust_domain.clone(),
            lifetime,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertifiedIssuer};

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn issuer() -> Issuer {
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let key_pem = key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(ca, key).unwrap();
        Issuer::new(&ca.pem(), &key_pem, None, "cluster.local", DAY).unwrap()
    }

    fn csr(sans: Vec<SanType>, is_ca: IsCa) -> String {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.is_ca = is_ca;
        let key = KeyPair::generate().unwrap();
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.to_owned().try_into().unwrap())
    }

    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

    #[test]
    fn issues_exactly_the_identity_asked_for() {
        let now = SystemTime::now();
        let issued = issuer()
            .issue(&csr(vec![uri(WEB)], IsCa::NoCa), "shop", "web", now)
            .unwrap();
        assert_eq!(issued.identity, WEB);
        let pem = issued.certificate;
        let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = der.parse_x509().unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", sans.value.general_names),
            format!("[URI({WEB:?})]")
        );
        assert!(!cert.is_ca());
        let start = cert.validity().not_before.timestamp();
        let end = cert.validity().not_after.timestamp();
        let now_s = now.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        assert_eq!(start, now_s - CLOCK_SKEW.as_secs() as i64);
        assert_eq!(end, now_s + DAY.as_secs() as i64);
        assert_eq!(issued.not_after, end as u64);
        // Two certificates never share a serial.
        let again = issuer()
            .issue(&csr(vec![uri(WEB)], IsCa::NoCa), "shop", "web", now)
            .unwrap();
        let (_, der2) = x509_parser::pem::parse_x509_pem(again.certificate.as_bytes()).unwrap();
        assert_ne!(cert.raw_serial(), der2.parse_x509().unwrap().raw_serial());
    }

    /// The chart's issuer: an Ed25519 CA (Helm's `genCAWithKey` with `genPrivateKey
    /// "ed25519"`, PKCS#8). A certificate it issues verifies as a TLS client certificate against
    /// the trust anchors it hands out.
    #[test]
    fn an_ed25519_issuer_signs_certificates_that_verify_against_its_anchor() {
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let key_pem = key.serialize_pem();
        assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let ca = CertifiedIssuer::self_signed(ca, key).unwrap();
        let issuer = Issuer::new(&ca.pem(), &key_pem, None, "cluster.local", DAY).unwrap();
        let issued = issuer
            .issue(
                &csr(vec![uri(WEB)], IsCa::NoCa),
                "shop",
                "web",
                SystemTime::now(),
            )
            .unwrap();
        assert!(
            chains_to(&issued.trust_anchors, &issued.certificate),
            "the issued certificate chains to the trust anchor"
        );
    }

    /// Whether `certificate` (PEM chain, leaf first) verifies as a client certificate against
    /// the roots in `anchors` (PEM).
    pub(super) fn chains_to(anchors: &str, certificate: &str) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(anchors.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let chain: Vec<_> =
            rustls::pki_types::CertificateDer::pem_slice_iter(certificate.as_bytes())
                .map(Result::unwrap)
                .collect();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider,
        )
        .build()
        .unwrap();
        verifier
            .verify_client_cert(&chain[0], &chain[1..], rustls::pki_types::UnixTime::now())
            .is_ok()
    }

    #[test]
    fn refuses_any_other_request() {
        let issuer = issuer();
        let now = SystemTime::now();
        let cases = [
            (
                "another ServiceAccount",
                vec![uri("spiffe://cluster.local/ns/shop/sa/admin")],
                IsCa::NoCa,
            ),
            (
                "another trust domain",
                vec![uri("spiffe://evil.example/ns/shop/sa/web")],
                IsCa::NoCa,
            ),
            ("no identity", vec![], IsCa::NoCa),
            (
                "an extra DNS name",
                vec![uri(WEB), SanType::DnsName("web".try_into().unwrap())],
                IsCa::NoCa,
            ),
            (
                "a CA bit",
                vec![uri(WEB)],
                IsCa::Ca(BasicConstraints::Unconstrained),
            ),
        ];
        for (what, sans, is_ca) in cases {
            let err = issuer
                .issue(&csr(sans, is_ca), "shop", "web", now)
                .unwrap_err();
            assert!(
                matches!(err, IdentityError::WrongIdentity { .. }),
                "{what}: {err:?}"
            );
        }
        for garbage in ["", "not a csr", &"x".repeat(MAX_CSR_BYTES + 1)] {
            assert!(matches!(
                issuer.issue(garbage, "shop", "web", now),
                Err(IdentityError::BadCsr(_))
            ));
        }
    }

    #[test]
    fn refuses_a_csr_whose_signature_does_not_match() {
        use base64::Engine as _;
        use rustls::pki_types::pem::PemObject;
        let pem = csr(vec![uri(WEB)], IsCa::NoCa);
        let mut der =
            rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec();
        // The last byte is inside the signature.
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n"
        );
        let err = issuer()
            .issue(&tampered, "shop", "web", SystemTime::now())
            .unwrap_err();
        assert!(matches!(err, IdentityError::BadCsr(_)), "{err:?}");
    }
}

//! The TLS material of HTTPS listeners, read from their certificate Secrets and sent inline so
//! proxies need no Secret access. A Secret in another namespace than the Gateway's is read only
//! when a ReferenceGrant there permits it (see the `grants` module): otherwise any Gateway owner
//! could serve, and hand its proxies, another namespace's private key.

use k8s_openapi::api::core::v1::Secret;
use portico_api::common::SecretObjectReference;
use portico_api::gateway::{Listener, TlsVersion};
use portico_proxy_api as contract;

use super::grants::{REF_NOT_PERMITTED, Reference, SECRET};
use super::{Index, Key};

/// Why a listener's certificates cannot be used: the `ResolvedRefs` reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct CertificateProblem {
    /// `InvalidCertificateRef` or `RefNotPermitted`.
    pub reason: &'static str,
    /// Names the listener or Secret and what is wrong with it.
    pub message: String,
}

impl CertificateProblem {
    fn invalid(message: String) -> Self {
        Self {
            reason: "InvalidCertificateRef",
            message,
        }
    }
}

impl Index {
    /// The TLS material of an HTTPS listener: the first certificate Secret is served by
    /// default, the others when the client's SNI names one of their names.
    pub(super) fn listener_tls(
        &self,
        gw_ns: &str,
        gw_name: &str,
        l: &Listener,
    ) -> Result<contract::Tls, CertificateProblem> {
        let refs = l
            .tls
            .as_ref()
            .map(|t| t.certificate_refs.as_slice())
            .unwrap_or_default();
        let Some((first, more)) = refs.split_first() else {
            return Err(CertificateProblem::invalid(format!(
                "listener {} has no certificateRefs",
                l.name
            )));
        };
        let pair = |r: &SecretObjectReference| {
            let key = Key::new(r.namespace.as_deref().unwrap_or(gw_ns), &r.name);
            let reference = Reference {
                from: self.gateway_kind(&Key::new(gw_ns, gw_name)),
                from_namespace: gw_ns,
                to_kind: SECRET,
                to: &key,
            };
            if !self.permitted(&reference) {
                return Err(CertificateProblem {
                    reason: REF_NOT_PERMITTED,
                    message: reference.refusal(),
                });
            }
            let Some(secret) = self.secrets.get(&key) else {
                return Err(CertificateProblem::invalid(format!(
                    "Secret {key} not found (or not of type kubernetes.io/tls)"
                )));
            };
            match &**secret {
                Ok(pair) => Ok(pair.clone()),
                Err(why) => Err(CertificateProblem::invalid(format!("Secret {key}{why}"))),
            }
        };
        let default = pair(first)?;
        Ok(contract::Tls {
            cert: default.cert,
            key: default.key,
            min_version: match l.tls.as_ref().and_then(|t| t.min_version) {
                Some(TlsVersion::V1_3) => contract::TlsVersion::V1_3,
                Some(TlsVersion::V1_2) | None => contract::TlsVersion::V1_2,
            },
            sni: more.iter().map(pair).collect::<Result<_, _>>()?,
        })
    }
}

/// A `kubernetes.io/tls` Secret as listeners use it: its chain and key, read and checked once
/// when the Secret arrives (not at each recomputation), or why they cannot be served (the end
/// of a message that starts with the Secret's name).
pub(super) type TlsPair = Result<contract::CertificateKey, String>;

/// Reads and checks a `kubernetes.io/tls` Secret. The proxies would refuse the whole config
/// for one unusable pair (and keep serving the previous one): the listener is refused instead.
pub(super) fn tls_pair(secret: &Secret) -> TlsPair {
    let text = |k: &str| {
        secret
            .data
            .as_ref()?
            .get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|s| !s.is_empty())
    };
    let (Some(cert), Some(key)) = (text("tls.crt"), text("tls.key")) else {
        return Err(" lacks tls.crt or tls.key".to_owned());
    };
    usable_pair(&cert, &key).map_err(|why| format!(": {why}"))?;
    Ok(contract::CertificateKey {
        cert: contract::Pem::Inline { inline: cert },
        key: contract::Pem::Inline { inline: key },
    })
}

/// Whether a PEM certificate chain and key are what a proxy can serve: at least one
/// certificate, a private key of a kind rustls signs with, and the key belonging to the first
/// certificate (the checks the proxy makes when it loads them).
fn usable_pair(cert_pem: &str, key_pem: &str) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.crt is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("tls.crt has no CERTIFICATE block".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("tls.key holds no private key: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(certs, key, &provider)
        .map(drop)
        .map_err(|e| format!("tls.key does not fit tls.crt: {e}"))
}

/// A `kubernetes.io/tls` Secret (JSON) holding a fresh self-signed certificate for
/// `example.com` and its key, for tests; and the certificate's PEM.
#[cfg(test)]
pub(super) fn test_secret(namespace: &str, name: &str) -> (serde_json::Value, String) {
    use base64::Engine as _;
    let c = rcgen::generate_simple_self_signed(vec!["example.com".to_owned()]).expect("rcgen");
    let (cert, key) = (c.cert.pem(), c.signing_key.serialize_pem());
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"namespace": namespace, "name": name},
        "data": {"tls.crt": b64(&cert), "tls.key": b64(&key)}
    });
    (secret, cert)
}

#[cfg(test)]
mod tests {
    use super::usable_pair;

    #[test]
    fn only_a_certificate_with_its_own_key_is_usable() {
        let a = rcgen::generate_simple_self_signed(vec!["a.example".to_owned()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.example".to_owned()]).unwrap();
        let (cert, key) = (a.cert.pem(), a.signing_key.serialize_pem());
        assert_eq!(usable_pair(&cert, &key), Ok(()));
        let hello = "Hello world\n";
        assert!(
            usable_pair(hello, hello)
                .unwrap_err()
                .contains("no CERTIFICATE")
        );
        assert!(
            usable_pair(&cert, hello)
                .unwrap_err()
                .contains("no private key")
        );
        let other = b.signing_key.serialize_pem();
        assert!(
            usable_pair(&cert, &other)
                .unwrap_err()
                .contains("does not fit")
        );
    }
}

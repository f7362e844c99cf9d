//! The TLS material of HTTPS listeners, read from their certificate Secrets and sent inline so
//! proxies need no Secret access. A Secret in another namespace than the Gateway's is read only
//! when a ReferenceGrant there permits it (see the `grants` module): otherwise any Gateway owner
//! could serve, and hand its proxies, another namespace's private key.

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
            let data = secret.data.clone().unwrap_or_default();
            let text = |k: &str| {
                data.get(k)
                    .and_then(|b| String::from_utf8(b.0.clone()).ok())
                    .filter(|s| !s.is_empty())
            };
            match (text("tls.crt"), text("tls.key")) {
                (Some(cert), Some(key_pem)) => Ok(contract::CertificateKey {
                    cert: contract::Pem::Inline { inline: cert },
                    key: contract::Pem::Inline { inline: key_pem },
                }),
                _ => Err(CertificateProblem::invalid(format!(
                    "Secret {key} lacks tls.crt or tls.key"
                ))),
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

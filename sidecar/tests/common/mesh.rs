//! A test mesh: a root CA that issues workload certificates the way the operator does
//! (SPIFFE URI SAN only, server and client auth), and proxies that hold them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portico_proxy::identity::{Certified, Store};
use portico_proxy::{Options, Proxy};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A trust anchor and its key.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub root: CertificateDer<'static>,
    pub root_pem: String,
}

impl TestCa {
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self {
            root: cert.der().clone(),
            root_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `identity` (a SPIFFE ID) in force in a new store, trusting `anchors`
    /// (this CA's root when empty).
    pub fn store(&self, identity: &str, anchors: &[&TestCa]) -> Arc<Store> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(identity.try_into().unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let chain = vec![cert.der().clone()];
        let chain_pem = cert.pem();
        let provider = rustls::crypto::ring::default_provider();
        let certified_key = rustls::sign::CertifiedKey::from_der(
            chain.clone(),
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            &provider,
        )
        .unwrap();
        let anchors: Vec<&TestCa> = if anchors.is_empty() {
            vec![self]
        } else {
            anchors.to_vec()
        };
        let store = Arc::new(Store::default());
        store
            .set(Certified {
                identity: identity.to_owned(),
                chain,
                chain_pem,
                trust_anchors: anchors.iter().map(|a| a.root.clone()).collect(),
                trust_anchors_pem: anchors.iter().map(|a| a.root_pem.as_str()).collect(),
                not_after: SystemTime::now() + Duration::from_secs(3600),
                issuer_epoch: String::new(),
                key: Arc::new(certified_key),
            })
            .unwrap();
        store
    }
}

/// A proxy with workload certificate `store`.
pub async fn start_as(yaml: &str, store: Arc<Store>) -> Proxy {
    let opts = Options {
        admin_addr: Some("127.0.0.1:0".parse().unwrap()),
        access_log: false,
        identity: Some(store),
        cache_max_bytes: None,
        demand: None,
    };
    Proxy::start(super::config(yaml), opts)
        .await
        .expect("proxy starts")
}

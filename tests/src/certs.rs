//! Fresh certificates for a test control plane: one CA, the apiserver's serving certificate,
//! an admin client certificate (`O=system:masters`) and the service-account signing key.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Paths of the PEM files written by [`generate`].
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The CA certificate every component trusts.
    pub ca_cert: PathBuf,
    /// The CA key (kept so the operator's webhook certificates can be signed by it in tests).
    pub ca_key: PathBuf,
    /// kube-apiserver's serving certificate.
    pub apiserver_cert: PathBuf,
    /// kube-apiserver's serving key.
    pub apiserver_key: PathBuf,
    /// Admin client certificate, in group `system:masters`.
    pub admin_cert: PathBuf,
    /// Admin client key.
    pub admin_key: PathBuf,
    /// Private key that signs service-account tokens.
    pub sa_key: PathBuf,
    /// Its public key, for token verification.
    pub sa_pub: PathBuf,
}

/// Writes a fresh CA, serving, client and service-account keys into `dir`.
///
/// `apiserver_sans` lists the DNS names and IP addresses the apiserver is reached by.
pub fn generate(dir: &Path, apiserver_sans: &[&str]) -> anyhow::Result<CertFiles> {
    std::fs::create_dir_all(dir)?;
    let files = CertFiles {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        apiserver_cert: dir.join("apiserver.crt"),
        apiserver_key: dir.join("apiserver.key"),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
    };

    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params()?, ca_key)?;
    write(&files.ca_cert, &ca.pem())?;
    write(&files.ca_key, &ca_key_pem)?;

    let sans: Vec<String> = apiserver_sans.iter().map(|s| s.to_string()).collect();
    let mut serving = CertificateParams::new(sans)?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_key = KeyPair::generate()?;
    write(
        &files.apiserver_cert,
        &serving.signed_by(&serving_key, &ca)?.pem(),
    )?;
    write(&files.apiserver_key, &serving_key.serialize_pem())?;

    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin
        .distinguished_name
        .push(DnType::CommonName, "portico-admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_key = KeyPair::generate()?;
    write(&files.admin_cert, &admin.signed_by(&admin_key, &ca)?.pem())?;
    write(&files.admin_key, &admin_key.serialize_pem())?;

    let sa = KeyPair::generate()?;
    write(&files.sa_key, &sa.serialize_pem())?;
    write(&files.sa_pub, &sa.public_key_pem())?;
    Ok(files)
}

/// The CA's parameters: the issuer name and key are what chain verification compares, so the
/// CA can be rebuilt from them and its key file (rcgen reads PEM certificates only with its
/// x509-parser feature).
fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "portico-test-ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(ca_params)
}

impl CertFiles {
    /// Writes a serving certificate for `127.0.0.1` named `common_name`, signed by the control
    /// plane's CA (so the apiserver trusts it, e.g. for webhooks), as `tls.crt` and `tls.key`
    /// in `dir`; returns their paths.
    pub fn loopback_serving_cert(
        &self,
        dir: &Path,
        common_name: &str,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let ca_key = KeyPair::from_pem(&std::fs::read_to_string(&self.ca_key)?)?;
        let issuer = Issuer::new(ca_params()?, ca_key);
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
        write(&cert_file, &cert.pem())?;
        write(&key_file, &key.serialize_pem())?;
        Ok((cert_file, key_file))
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

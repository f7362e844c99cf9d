//! Workload certificates: what a proxy sends the operator to get one, and what comes back.
//!
//! ```text
//!  POST /v1/identity/certificate        (the config server, same TLS and token as the streams)
//!  Authorization: Bearer <projected ServiceAccount token, audience "portico">
//!  {"csr": "-----BEGIN CERTIFICATE REQUEST-----…"}
//!
//!  200 {"identity": "spiffe://cluster.local/ns/shop/sa/web", "certificate": "<PEM>",
//!       "trustAnchors": "<PEM>", "issuerEpoch": "5f0c…", "notAfter": 1767312000}
//!  400 the CSR is malformed or asks for anything but the token's identity
//!  401/403 the token; 404 the operator issues no identities
//! ```
//!
//! The key stays in the proxy: only its public half travels, inside the CSR.

use serde::{Deserialize, Serialize};

/// The path of the certificate endpoint on the config server.
pub const CERTIFICATE_PATH: &str = "/v1/identity/certificate";

/// A proxy's request for a workload certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateRequest {
    /// A PKCS#10 certificate signing request (PEM) whose only subject alternative name is the
    /// URI of the identity asked for.
    pub csr: String,
}

/// A workload certificate issued by the operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateResponse {
    /// The identity the certificate carries: `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    pub identity: String,
    /// The certificate (PEM), then the issuer's certificate when it is not a trust anchor.
    pub certificate: String,
    /// The certificates (PEM) that peers' certificates must chain to: during a rotation, the
    /// old and the new root.
    pub trust_anchors: String,
    /// The issuer epoch the certificate belongs to (see [`IdentityAnnouncement`]).
    #[serde(default)]
    pub issuer_epoch: String,
    /// When the certificate expires (Unix seconds).
    pub not_after: u64,
}

/// What the config stream says about identities (sent on connect and whenever it changes, to
/// every stream of an operator that issues identities).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityAnnouncement {
    /// The operator's current issuer epoch: a name for its issuer certificate and trust
    /// anchors. A proxy whose certificate was issued in another epoch renews it now (after a
    /// random wait of a few seconds, so a fleet spreads its requests): that is how a new issuer
    /// or a new set of trust anchors reaches every proxy without waiting for renewals.
    pub issuer_epoch: String,
}

/// The name of the ServiceAccount (and Service and Deployment) of Gateway `gateway`'s proxies,
/// in the Gateway's namespace: the operator makes them, a gateway proxy asks for its identity.
/// `portico-gateway-<gateway>`, or, when that is no Service name (over 63 characters, or a
/// Gateway name with dots), its first characters and a hash of the whole ([`label_safe`]).
pub fn gateway_proxy_name(gateway: &str) -> String {
    label_safe(&format!("portico-gateway-{gateway}"))
}

/// `name` when it is a DNS label (at most 63 lower-case letters, digits and `-`, starting
/// with a letter and ending with a letter or digit, as Service names and label values must
/// be); otherwise its label-safe first characters, `-`, and 8 hex digits of an FNV-1a hash of
/// the whole name, so long names that differ only at their end stay apart.
pub fn label_safe(name: &str) -> String {
    const MAX: usize = 63;
    let is_label = name.len() <= MAX
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if is_label {
        return name.to_owned();
    }
    let mut hash: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let mut head: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(MAX - 9)
        .collect();
    while head.ends_with('-') {
        head.pop();
    }
    if !head.starts_with(|c: char| c.is_ascii_lowercase()) {
        head.insert(0, 'x');
        head.truncate(MAX - 9);
    }
    format!("{head}-{hash:08x}")
}

/// The SPIFFE ID of ServiceAccount `sa` in namespace `ns`.
pub fn spiffe_id(trust_domain: &str, ns: &str, sa: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}")
}

/// Whether `pattern` is an identity pattern of an inbound authorization: `*`, a SPIFFE ID, or
/// a SPIFFE ID whose ServiceAccount is `*`.
pub fn identity_pattern_ok(pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let Some(rest) = pattern.strip_prefix("spiffe://") else {
        return false;
    };
    let stem = rest.strip_suffix("/sa/*").map_or(rest, |s| s);
    !stem.is_empty() && !stem.contains('*')
}

/// Whether `identity` (a verified SPIFFE ID) matches `pattern` (see [`identity_pattern_ok`]).
pub fn identity_matches(pattern: &str, identity: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => identity
            .strip_prefix(prefix)
            .is_some_and(|sa| !sa.is_empty() && !sa.contains('/')),
        None => pattern == identity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_s_proxy_name_is_a_dns_label_however_long_the_gateway_s_name() {
        assert_eq!(gateway_proxy_name("edge"), "portico-gateway-edge");
        let long = "http-listener-isolation-with-hostname-intersection";
        let name = gateway_proxy_name(long);
        assert!(name.len() <= 63, "{name}");
        assert!(name.starts_with("portico-gateway-http-listener-isolation-with-host"));
        assert_ne!(name, gateway_proxy_name(&format!("{long}-2")));
        assert_eq!(name, gateway_proxy_name(long), "stable");
        let dotted = gateway_proxy_name("api.example.com");
        assert!(
            dotted.starts_with("portico-gateway-api-example-com-") && dotted.len() == 40,
            "{dotted}"
        );
        assert_eq!(
            label_safe("9lives"),
            format!("x9lives-{:08x}", {
                let mut h: u32 = 0x811c_9dc5;
                for b in b"9lives" {
                    h ^= u32::from(*b);
                    h = h.wrapping_mul(0x0100_0193);
                }
                h
            })
        );
    }
}

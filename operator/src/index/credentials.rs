//! The credentials of authentication policies (a Route rule's, or a Gateway's default), read
//! from Secrets and sent inline so proxies need no Secret access.
//!
//! ```text
//!  authentication.jwt.jwksSecretRef ──► Secret data[key | "jwks"]    → contract Jwt.jwks
//!  authentication.jwt.jwksUri        ──────────────────────────────► fetched by the proxies
//!  authentication.apiKey.secretRef   ──► Secret data (every entry, or data[key]) → ApiKeys
//!  authentication.basic.secretRef    ──► Secret data[key | "auth"]: htpasswd lines → BasicAuth
//! ```
//!
//! Only Secrets labelled `portico.dev/credential` are watched (the operator does not hold every
//! Secret of the cluster). A Secret that is missing, unlabelled, not permitted by a
//! ReferenceGrant, or unusable leaves its method without credentials, so every request gets
//! `401` (never forwarded), and the object's `ResolvedRefs` condition names the Secret.

use kube::ResourceExt;
use portico_api::common::{Authentication, SecretObjectReference};
use portico_proxy_api as contract;

use super::grants::{GroupKind, Reference, SECRET};
use super::{Index, Key};

/// The label a Secret needs for the operator to read it as a credential.
pub const CREDENTIAL_LABEL: &str = "portico.dev/credential";

/// The header an API key travels in when the policy names none.
const DEFAULT_API_KEY_HEADER: &str = "x-api-key";
/// The realm of basic challenges when the policy names none.
const DEFAULT_REALM: &str = "portico";

impl Index {
    /// The contract authentication of `a`, set on an object of kind `from` in namespace `ns`,
    /// and what could not be resolved (empty when all is well).
    pub(super) fn authentication(
        &self,
        from: GroupKind,
        ns: &str,
        a: &Authentication,
    ) -> (contract::Authentication, Vec<String>) {
        let mut problems = Vec::new();
        let jwt = a.jwt.as_ref().map(|j| contract::Jwt {
            issuer: j.issuer.clone(),
            audiences: j.audiences.clone(),
            jwks: j.jwks_secret_ref.as_ref().map(|r| {
                self.secret_value(from, ns, r, "jwks", &mut problems)
                    .unwrap_or_default()
            }),
            jwks_uri: j.jwks_uri.clone(),
            from_header: j.from_header.clone(),
            claims_to_headers: j
                .claims_to_headers
                .iter()
                .map(|c| contract::ClaimToHeader {
                    claim: c.claim.clone(),
                    header: c.header.to_ascii_lowercase(),
                })
                .collect(),
        });
        let api_key = a.api_key.as_ref().map(|k| contract::ApiKeys {
            header: k
                .header
                .as_deref()
                .unwrap_or(DEFAULT_API_KEY_HEADER)
                .to_ascii_lowercase(),
            keys: self.api_keys(from, ns, &k.secret_ref, &mut problems),
        });
        let basic = a.basic.as_ref().map(|b| contract::BasicAuth {
            realm: b.realm.clone().unwrap_or_else(|| DEFAULT_REALM.into()),
            users: self
                .secret_value(from, ns, &b.secret_ref, "auth", &mut problems)
                .map(|file| htpasswd(&file, &b.secret_ref, &mut problems))
                .unwrap_or_default(),
        });
        (
            contract::Authentication {
                jwt,
                api_key,
                basic,
            },
            problems,
        )
    }

    /// The labelled Secret `r` names, if it may be read from `ns`; else a problem is noted.
    fn credential_secret(
        &self,
        from: GroupKind,
        ns: &str,
        r: &SecretObjectReference,
        problems: &mut Vec<String>,
    ) -> Option<&k8s_openapi::api::core::v1::Secret> {
        let key = Key::new(r.namespace.as_deref().unwrap_or(ns), &r.name);
        let reference = Reference {
            from,
            from_namespace: ns,
            to_kind: SECRET,
            to: &key,
        };
        if !self.permitted(&reference) {
            problems.push(reference.refusal());
            return None;
        }
        let found = self.credentials.get(&key);
        if found.is_none() {
            problems.push(format!(
                "Secret {key} not found (credential Secrets need the label {CREDENTIAL_LABEL})"
            ));
        }
        found.map(|s| &**s)
    }

    /// The text of one entry of a credential Secret: `r.key`, else `default_key`.
    fn secret_value(
        &self,
        from: GroupKind,
        ns: &str,
        r: &SecretObjectReference,
        default_key: &str,
        problems: &mut Vec<String>,
    ) -> Option<String> {
        let secret = self.credential_secret(from, ns, r, problems)?;
        let entry = r.key.as_deref().unwrap_or(default_key);
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(entry))
            .and_then(|v| String::from_utf8(v.0.clone()).ok());
        if value.is_none() {
            problems.push(format!(
                "Secret {}/{} has no UTF-8 entry {entry:?}",
                secret.namespace().unwrap_or_default(),
                secret.name_any()
            ));
        }
        value
    }

    /// The API keys of a Secret: one per entry (the entry's name is the client), or only `r.key`.
    fn api_keys(
        &self,
        from: GroupKind,
        ns: &str,
        r: &SecretObjectReference,
        problems: &mut Vec<String>,
    ) -> Vec<contract::ApiKey> {
        let Some(secret) = self.credential_secret(from, ns, r, problems) else {
            return Vec::new();
        };
        let keys: Vec<contract::ApiKey> = secret
            .data
            .iter()
            .flatten()
            .filter(|(name, _)| r.key.as_ref().is_none_or(|k| k == *name))
            .filter_map(|(name, v)| {
                let key = String::from_utf8(v.0.clone()).ok()?.trim().to_owned();
                (!key.is_empty()).then(|| contract::ApiKey {
                    client: name.clone(),
                    key,
                })
            })
            .collect();
        if keys.is_empty() {
            problems.push(format!(
                "Secret {}/{} holds no API key",
                secret.namespace().unwrap_or_default(),
                secret.name_any()
            ));
        }
        keys
    }
}

/// The users of an htpasswd file. Only bcrypt hashes (`htpasswd -B`) are taken: the others
/// (MD5-crypt, SHA-1, crypt) are weak, and a line with one is reported rather than served.
fn htpasswd(
    file: &str,
    r: &SecretObjectReference,
    problems: &mut Vec<String>,
) -> Vec<contract::BasicUser> {
    let mut users = Vec::new();
    for (i, line) in file.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((user, hash))
                if !user.is_empty()
                    && ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) =>
            {
                users.push(contract::BasicUser {
                    user: user.to_owned(),
                    hash: hash.to_owned(),
                });
            }
            _ => problems.push(format!(
                "Secret {}: line {} is not user:bcrypt-hash (use htpasswd -B)",
                r.name,
                i + 1
            )),
        }
    }
    users
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htpasswd_takes_bcrypt_lines_and_reports_the_others() {
        let r = SecretObjectReference {
            name: "users".into(),
            ..Default::default()
        };
        let mut problems = Vec::new();
        let file = "# comment\nbob:$2y$05$abcdefghijklmnopqrstuu5Cq8eYvJvhNtH0QLyKdh2Mbq/6i3aa\n\
                    alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n\n";
        let users = htpasswd(file, &r, &mut problems);
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].user, "bob");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("line 3"), "{problems:?}");
    }
}

//! A rule's authentication: JWTs, API keys and HTTP basic credentials, checked before anything
//! else of the rule runs. A request passes with any one configured method; otherwise it is
//! answered `401` with a `www-authenticate` challenge per method (RFC 6750 for bearer tokens,
//! naming the error) and never forwarded. Missing and wrong credentials both get `401`: a
//! `403` would tell a prober that a key exists in some form.
//!
//! Credentials are never logged. The client a request is attributed to (the API key's entry
//! name, the basic user, the token's `sub`) goes to the access log and metrics instead.
//!
//! - **API keys** are kept as SHA-256 digests mapped to their client, so the lookup compares
//!   digests, and how long it takes says nothing about any key. The key header is removed
//!   before the request goes upstream.
//! - **Basic** passwords are checked against bcrypt hashes. bcrypt is slow on purpose (tens of
//!   milliseconds per check), so a verified user/password pair is remembered (as a digest) for
//!   [`VERIFIED_FOR`]; a wrong password costs a bcrypt check each time, as in nginx.
//! - **JWT** claims listed in `claims_to_headers` are copied to request headers; a client's own
//!   headers of those names are removed first, passing or not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use portico_proxy_api::{ApiKeys, Authentication, BasicAuth, Jwt};
use tokio::time::Instant;

use super::jwks::RemoteKeys;
use super::jwt::{JwtError, JwtValidator, KeySet};
use crate::error::{Body, ERROR_HEADER, full};

/// How long a verified basic user/password pair skips bcrypt.
pub const VERIFIED_FOR: Duration = Duration::from_secs(300);
/// Verified basic pairs remembered at most per rule.
const MAX_VERIFIED: usize = 1024;

/// The `realm` of bearer and API-key challenges.
const REALM: &str = "portico";

/// A rule's compiled authentication.
#[derive(Debug)]
pub struct Authenticator {
    jwt: Option<JwtCheck>,
    api_key: Option<ApiKeyCheck>,
    basic: Option<BasicCheck>,
}

/// The key set of a rule: fixed (from a Secret) or fetched (see [`super::jwks`]).
#[derive(Clone, Debug)]
pub enum Keys {
    /// Read by the operator from a Secret.
    Fixed(Arc<KeySet>),
    /// Fetched from the issuer's `jwks_uri` and refreshed.
    Remote(Arc<RemoteKeys>),
}

#[derive(Debug)]
struct JwtCheck {
    validator: JwtValidator,
    keys: Keys,
    from_header: Option<HeaderName>,
    claims: Vec<(String, HeaderName)>,
}

#[derive(Debug)]
struct ApiKeyCheck {
    header: HeaderName,
    by_digest: HashMap<[u8; 32], Arc<str>>,
}

#[derive(Debug)]
struct BasicCheck {
    realm: String,
    users: HashMap<String, String>,
    /// Digests of verified `user:password:hash`, with when they were verified.
    verified: Mutex<HashMap<[u8; 32], Instant>>,
}

/// Who a request was authenticated as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// `jwt`, `api_key` or `basic`.
    pub method: &'static str,
    /// The client: the API key's name, the basic user, or the token's `sub` (empty without).
    pub client: Arc<str>,
}

/// Why a request was refused, per method tried ([`Authenticator::answer`] makes the 401).
#[derive(Debug, Default)]
pub struct Failures {
    jwt: Option<String>,
    api_key: Option<&'static str>,
    basic: Option<&'static str>,
}

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        // Length-prefixed, so `ab`+`c` and `a`+`bc` differ.
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl Authenticator {
    /// Compiles `a` (validated: header names parse). A JWKS from a Secret that does not parse
    /// leaves an empty key set, which refuses every token.
    pub fn compile(a: &Authentication) -> Self {
        Self {
            jwt: a.jwt.as_ref().map(compile_jwt),
            api_key: a.api_key.as_ref().map(compile_api_keys),
            basic: a.basic.as_ref().map(|b: &BasicAuth| BasicCheck {
                realm: b.realm.clone(),
                users: b
                    .users
                    .iter()
                    .map(|u| (u.user.clone(), u.hash.clone()))
                    .collect(),
                verified: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Checks the request's credentials. On success the request's headers are made ready for
    /// upstream (key header gone, claims copied); on failure, [`Authenticator::answer`] makes
    /// the `401`.
    pub fn check(&self, headers: &mut HeaderMap) -> Result<Principal, Failures> {
        let mut failures = Failures::default();
        let mut passed = None;
        if let Some(k) = &self.api_key {
            // Never forwarded, valid or not.
            if let Some(v) = headers.remove(&k.header) {
                match k.by_digest.get(&digest(&[v.as_bytes()])) {
                    Some(client) => {
                        passed = Some(Principal {
                            method: "api_key",
                            client: client.clone(),
                        });
                    }
                    None => failures.api_key = Some("invalid key"),
                }
            }
        }
        if let Some(j) = &self.jwt {
            for (_, header) in &j.claims {
                headers.remove(header);
            }
            if passed.is_none()
                && let Some(token) = j.token(headers)
            {
                match j.validate(&token) {
                    Ok(claims) => {
                        for (claim, header) in &j.claims {
                            if let Some(v) = claims.get(claim)
                                && let Ok(v) = HeaderValue::from_str(&super::jwt::claim_text(v))
                            {
                                headers.insert(header.clone(), v);
                            }
                        }
                        let sub = claims
                            .get("sub")
                            .and_then(|s| s.as_str())
                            .unwrap_or_default();
                        passed = Some(Principal {
                            method: "jwt",
                            client: sub.into(),
                        });
                    }
                    Err(e) => failures.jwt = Some(e.to_string()),
                }
            }
        }
        if passed.is_none()
            && let Some(b) = &self.basic
            && let Some((user, password)) = basic_credentials(headers)
        {
            if b.verify(&user, &password) {
                passed = Some(Principal {
                    method: "basic",
                    client: user.into(),
                });
            } else {
                failures.basic = Some("invalid user or password");
            }
        }
        passed.ok_or(failures)
    }

    /// The `401` with one challenge per method; the failed method's says why.
    pub fn answer(&self, f: &Failures) -> Response<Body> {
        let mut resp = Response::new(full("authentication required\n"));
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        let h = resp.headers_mut();
        h.insert(ERROR_HEADER, HeaderValue::from_static("unauthenticated"));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self.jwt.is_some() {
            let c = match &f.jwt {
                Some(why) => format!(
                    "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{why}\""
                ),
                None => format!("Bearer realm=\"{REALM}\""),
            };
            if let Ok(v) = HeaderValue::from_str(&c) {
                h.append(WWW_AUTHENTICATE, v);
            }
        }
        if let Some(k) = &self.api_key {
            let mut c = format!("ApiKey realm=\"{REALM}\", header=\"{}\"", k.header);
            if let Some(why) = f.api_key {
                c.push_str(&format!(", error=\"{why}\""));
            }
            if let Ok(v) = HeaderValue::from_str(&c) {
                h.append(WWW_AUTHENTICATE, v);
            }
        }
        if let Some(b) = &self.basic {
            let c = format!(
                "Basic realm=\"{}\", charset=\"UTF-8\"",
                b.realm.replace('"', "")
            );
            if let Ok(v) = HeaderValue::from_str(&c) {
                h.append(WWW_AUTHENTICATE, v);
            }
        }
        resp
    }
}

fn compile_jwt(j: &Jwt) -> JwtCheck {
    let keys = match (&j.jwks, &j.jwks_uri) {
        (_, Some(uri)) => Keys::Remote(super::jwks::remote(uri)),
        (Some(doc), None) => Keys::Fixed(Arc::new(KeySet::parse(doc).unwrap_or_else(|e| {
            tracing::warn!(issuer = %j.issuer, error = %e, "unusable JWKS: every token is refused");
            KeySet::default()
        }))),
        (None, None) => Keys::Fixed(Arc::default()),
    };
    JwtCheck {
        validator: JwtValidator::new(&j.issuer, &j.audiences),
        keys,
        from_header: j
            .from_header
            .as_deref()
            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
        claims: j
            .claims_to_headers
            .iter()
            .filter_map(|c| {
                Some((
                    c.claim.clone(),
                    HeaderName::from_bytes(c.header.as_bytes()).ok()?,
                ))
            })
            .collect(),
    }
}

fn compile_api_keys(k: &ApiKeys) -> ApiKeyCheck {
    ApiKeyCheck {
        header: HeaderName::from_bytes(k.header.as_bytes())
            .unwrap_or(HeaderName::from_static("x-api-key")),
        by_digest: k
            .keys
            .iter()
            .map(|e| (digest(&[e.key.as_bytes()]), e.client.as_str().into()))
            .collect(),
    }
}

impl JwtCheck {
    /// The token: the bare value of `from_header`, or `authorization: Bearer <token>`.
    fn token(&self, headers: &HeaderMap) -> Option<String> {
        match &self.from_header {
            Some(h) => headers.get(h)?.to_str().ok().map(|s| s.trim().to_owned()),
            None => {
                let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_owned())
            }
        }
    }

    fn validate(
        &self,
        token: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, JwtError> {
        match &self.keys {
            Keys::Fixed(set) => self.validator.validate(token, set),
            Keys::Remote(remote) => {
                let Some(set) = remote.current() else {
                    remote.refresh();
                    return Err(JwtError::UnknownKey);
                };
                let result = self.validator.validate(token, &set);
                if result == Err(JwtError::UnknownKey) {
                    // The issuer may have rotated its keys: fetch again (rate limited there).
                    remote.refresh();
                }
                result
            }
        }
    }
}

/// The user and password of `authorization: Basic …`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

impl BasicCheck {
    fn verify(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user) else {
            // Unknown users cost what known ones do, so timing does not tell them apart.
            let _ = bcrypt::verify(password, dummy_hash());
            return false;
        };
        let key = digest(&[user.as_bytes(), password.as_bytes(), hash.as_bytes()]);
        let now = Instant::now();
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if verified
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < VERIFIED_FOR)
        {
            return true;
        }
        drop(verified);
        if !bcrypt::verify(password, hash).unwrap_or(false) {
            return false;
        }
        verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if verified.len() >= MAX_VERIFIED {
            verified.retain(|_, at| now.duration_since(*at) < VERIFIED_FOR);
            if verified.len() >= MAX_VERIFIED {
                verified.clear();
            }
        }
        verified.insert(key, now);
        true
    }
}

/// A bcrypt hash (cost 10, `htpasswd -B`'s default) of a random password, made once.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        let salt: [u8; 16] = rand::random();
        bcrypt::hash_with_salt(rand::random::<u64>().to_string(), 10, salt)
            .map(|h| h.format_for_version(bcrypt::Version::TwoB))
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::jwt::testing::{Signer, now};
    use portico_proxy_api::{ApiKey, BasicUser, ClaimToHeader};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    fn api_keys() -> ApiKeys {
        ApiKeys {
            header: "x-api-key".into(),
            keys: vec![ApiKey {
                client: "team-a".into(),
                key: "s3cr3t-a".into(),
            }],
        }
    }

    #[test]
    fn an_api_key_names_its_client_and_is_not_forwarded() {
        let auth = Authenticator::compile(&Authentication {
            api_key: Some(api_keys()),
            ..Authentication::default()
        });
        let mut h = headers(&[("x-api-key", "s3cr3t-a")]);
        let who = auth.check(&mut h).unwrap();
        assert_eq!((who.method, &*who.client), ("api_key", "team-a"));
        assert!(h.get("x-api-key").is_none(), "the key is not forwarded");

        for bad in [headers(&[("x-api-key", "wrong")]), headers(&[])] {
            let mut bad = bad;
            let resp = auth.answer(&auth.check(&mut bad).unwrap_err());
            assert_eq!(resp.status(), 401);
            let challenge = resp.headers()[WWW_AUTHENTICATE].to_str().unwrap();
            assert!(challenge.starts_with("ApiKey realm="), "{challenge}");
        }
    }

    #[test]
    fn jwt_or_api_key_either_passes_and_claims_replace_client_headers() {
        let signer = Signer::new("k1");
        let auth = Authenticator::compile(&Authentication {
            jwt: Some(Jwt {
                issuer: "https://issuer".into(),
                jwks: Some(signer.jwks()),
                claims_to_headers: vec![ClaimToHeader {
                    claim: "sub".into(),
                    header: "x-user".into(),
                }],
                ..Jwt::default()
            }),
            api_key: Some(api_keys()),
            ..Authentication::default()
        });
        let token = signer.sign(serde_json::json!({"iss": "https://issuer", "sub": "alice",
                                                   "exp": now() + 60}));
        let mut h = headers(&[
            ("authorization", &format!("Bearer {token}")),
            ("x-user", "root"),
        ]);
        let who = auth.check(&mut h).unwrap();
        assert_eq!((who.method, &*who.client), ("jwt", "alice"));
        assert_eq!(h["x-user"], "alice", "the client's x-user is replaced");

        let mut h = headers(&[("x-api-key", "s3cr3t-a"), ("x-user", "root")]);
        assert_eq!(auth.check(&mut h).unwrap().method, "api_key");
        assert!(
            h.get("x-user").is_none(),
            "a forged claim header is removed"
        );

        let expired =
            signer.sign(serde_json::json!({"iss": "https://issuer", "exp": now() - 3600}));
        let mut h = headers(&[("authorization", &format!("Bearer {expired}"))]);
        let resp = auth.answer(&auth.check(&mut h).unwrap_err());
        let challenges: Vec<_> = resp.headers().get_all(WWW_AUTHENTICATE).iter().collect();
        assert_eq!(challenges.len(), 2, "one challenge per method");
        assert!(
            challenges[0]
                .to_str()
                .unwrap()
                .contains("error=\"invalid_token\", error_description=\"token expired\""),
            "{challenges:?}"
        );
        assert!(
            !format!("{challenges:?}").contains(&expired),
            "the token is not repeated"
        );
    }

    #[test]
    fn from_header_reads_the_bare_token_from_that_header_only() {
        let signer = Signer::new("k1");
        let auth = Authenticator::compile(&Authentication {
            jwt: Some(Jwt {
                issuer: "https://issuer".into(),
                jwks: Some(signer.jwks()),
                from_header: Some("x-token".into()),
                ..Jwt::default()
            }),
            ..Authentication::default()
        });
        let token = signer.sign(serde_json::json!({"iss": "https://issuer", "exp": now() + 60}));
        assert!(auth.check(&mut headers(&[("x-token", &token)])).is_ok());
        let bearer = format!("Bearer {token}");
        let failed = auth.check(&mut headers(&[("authorization", &bearer)]));
        assert!(failed.is_err(), "the bearer header is not read");
    }

    #[test]
    fn basic_credentials_check_bcrypt_hashes_and_remember_a_good_pair() {
        let hash = bcrypt::hash_with_salt("hunter2", 4, [7; 16])
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        let auth = Authenticator::compile(&Authentication {
            basic: Some(BasicAuth {
                realm: "shop".into(),
                users: vec![BasicUser {
                    user: "bob".into(),
                    hash,
                }],
            }),
            ..Authentication::default()
        });
        let basic = |user: &str, pw: &str| {
            let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
            headers(&[("authorization", &format!("Basic {enc}"))])
        };
        assert_eq!(
            &*auth.check(&mut basic("bob", "hunter2")).unwrap().client,
            "bob"
        );
        assert_eq!(
            auth.basic.as_ref().unwrap().verified.lock().unwrap().len(),
            1
        );
        assert!(
            auth.check(&mut basic("bob", "hunter2")).is_ok(),
            "remembered"
        );
        for (u, p) in [("bob", "wrong"), ("eve", "hunter2")] {
            let resp = auth.answer(&auth.check(&mut basic(u, p)).unwrap_err());
            assert_eq!(resp.status(), 401);
            assert_eq!(
                resp.headers()[WWW_AUTHENTICATE],
                "Basic realm=\"shop\", charset=\"UTF-8\""
            );
        }
    }
}

//! JWT validation: a token's signature against a JSON Web Key Set, then its `iss`, `aud`, `exp`
//! and `nbf` claims. Decoding and signature checks are the `jsonwebtoken` crate's (on `ring`);
//! this module decides which keys and algorithms a token may use.
//!
//! Only asymmetric algorithms are accepted: RS256/384/512, ES256/384 and EdDSA. A key set's
//! symmetric (`oct`) keys are ignored, so a public key can never be used as an HMAC secret, and
//! `alg: none` does not even decode. Each key allows only the algorithms of its type (and its
//! `alg`, when it names one). Times are checked with [`LEEWAY_SECS`] of leeway for clock skew.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

/// Seconds of clock skew tolerated on `exp` and `nbf` (as Envoy's default of 60 s, halved:
/// pods share the cluster's clocks).
pub const LEEWAY_SECS: u64 = 30;

/// The usable keys of one JSON Web Key Set.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

struct Key {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|k| k.kid.as_deref()).collect();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`); keys that do not parse, symmetric keys and
    /// keys of unsupported curves are left out (an issuer may publish keys for other uses).
    pub fn parse(jwks: &str) -> Result<Self, String> {
        let doc: Value = serde_json::from_str(jwks).map_err(|e| format!("not JSON: {e}"))?;
        let list = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("no \"keys\" array")?;
        let keys = list
            .iter()
            .filter_map(|v| serde_json::from_value::<Jwk>(v.clone()).ok())
            .filter_map(|jwk| {
                let algorithms = allowed(&jwk);
                if algorithms.is_empty() {
                    return None;
                }
                Some(Key {
                    kid: jwk.common.key_id.clone(),
                    key: DecodingKey::from_jwk(&jwk).ok()?,
                    algorithms,
                })
            })
            .collect();
        Ok(Self { keys })
    }

    /// How many keys are usable.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is usable.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether the set has a key with this id.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// The algorithms a key may verify: those of its type, narrowed to its `alg` if it names one.
fn allowed(jwk: &Jwk) -> Vec<Algorithm> {
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => &[],
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        // `oct` keys are HMAC secrets: never accepted from a key set.
        _ => &[],
    };
    let named = jwk
        .common
        .key_algorithm
        .and_then(|a| serde_json::to_value(a).ok())
        .and_then(|v| v.as_str().map(str::to_owned));
    by_type
        .iter()
        .copied()
        .filter(|a| named.as_deref().is_none_or(|n| format!("{a:?}") == n))
        .collect()
}

/// Why a token was refused: the `error_description` of the `www-authenticate` challenge. It
/// never repeats the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts with a JSON header, or an algorithm not in the list.
    #[error("malformed token")]
    Malformed,
    /// The header's `alg` is not one the key allows (including `none` and HMAC).
    #[error("algorithm not allowed")]
    Algorithm,
    /// No key of the set has the token's `kid` (or the set is empty).
    #[error("unknown signing key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("invalid signature")]
    Signature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    Issuer,
    /// `aud` names none of the accepted audiences.
    #[error("wrong audience")]
    Audience,
    /// A required claim (`exp`, `iss`, or `aud` when audiences are set) is missing.
    #[error("missing claim")]
    MissingClaim,
}

/// The checks of one rule's JWTs, apart from the keys (which may change under it).
#[derive(Debug)]
pub struct JwtValidator {
    issuer: String,
    audiences: Vec<String>,
}

impl JwtValidator {
    /// Checks against `issuer` and, if not empty, `audiences`.
    pub fn new(issuer: &str, audiences: &[String]) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audiences: audiences.to_vec(),
        }
    }

    /// The token's claims when it verifies with a key of `keys` and its claims pass.
    pub fn validate(&self, token: &str, keys: &KeySet) -> Result<Map<String, Value>, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        let candidates: Vec<&Key> = match &header.kid {
            Some(kid) => keys
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            // Without a `kid`, any key of the set may have signed it (small sets only have one).
            None => keys.keys.iter().collect(),
        };
        if candidates.is_empty() {
            return Err(JwtError::UnknownKey);
        }
        let mut last = JwtError::Algorithm;
        for key in candidates {
            if !key.algorithms.contains(&header.alg) {
                continue;
            }
            match jsonwebtoken::decode::<Map<String, Value>>(
                token,
                &key.key,
                &self.validation(header.alg),
            ) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => JwtError::Signature,
                        ErrorKind::ExpiredSignature => JwtError::Expired,
                        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
                        ErrorKind::InvalidIssuer => JwtError::Issuer,
                        ErrorKind::InvalidAudience => JwtError::Audience,
                        ErrorKind::MissingRequiredClaim(_) => JwtError::MissingClaim,
                        ErrorKind::InvalidAlgorithm => JwtError::Algorithm,
                        _ => JwtError::Malformed,
                    };
                    // Claims failed on a verified signature: no other key can do better.
                    if last != JwtError::Signature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        let mut required = vec!["exp", "iss"];
        if self.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audiences);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        v
    }
}

/// A claim's value as a header value: strings as they are, other values as JSON.
pub fn claim_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Test keys and tokens, for this module's tests and those of the modules that use it.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use ring::rand::SystemRandom;
    use ring::signature::{self, KeyPair};

    /// A test signer: an ECDSA P-256 key pair with its JWK.
    pub(crate) struct Signer {
        pair: signature::EcdsaKeyPair,
        pub(crate) kid: String,
    }

    impl Signer {
        pub(crate) fn new(kid: &str) -> Self {
            let rng = SystemRandom::new();
            let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
            let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
            Self {
                pair: signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap(),
                kid: kid.into(),
            }
        }

        pub(crate) fn jwk(&self) -> Value {
            let point = self.pair.public_key().as_ref();
            serde_json::json!({
                "kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig",
                "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65]),
            })
        }

        pub(crate) fn jwks(&self) -> String {
            serde_json::json!({"keys": [self.jwk()]}).to_string()
        }

        pub(crate) fn token(&self, header: Value, claims: Value) -> String {
            let signing_input = format!(
                "{}.{}",
                B64.encode(header.to_string()),
                B64.encode(claims.to_string())
            );
            let sig = self
                .pair
                .sign(&SystemRandom::new(), signing_input.as_bytes())
                .unwrap();
            format!("{signing_input}.{}", B64.encode(sig.as_ref()))
        }

        pub(crate) fn sign(&self, claims: Value) -> String {
            self.token(
                serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}),
                claims,
            )
        }
    }

    pub(crate) fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{Signer, now};
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    fn claims(extra: Value) -> Value {
        let mut c = serde_json::json!({"iss": "https://issuer", "aud": "api", "sub": "alice",
                                       "exp": now() + 600});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    }

    #[test]
    fn a_good_token_passes_and_each_refusal_says_why() {
        let signer = Signer::new("k1");
        let keys = KeySet::parse(&signer.jwks()).unwrap();
        let v = JwtValidator::new("https://issuer", &["api".into()]);
        let claims_ok = v
            .validate(&signer.sign(claims(serde_json::json!({}))), &keys)
            .unwrap();
        assert_eq!(claims_ok["sub"], "alice");

        let cases = [
            (serde_json::json!({"exp": now() - 3600}), JwtError::Expired),
            (
                serde_json::json!({"nbf": now() + 3600}),
                JwtError::NotYetValid,
            ),
            (serde_json::json!({"aud": "other"}), JwtError::Audience),
            (serde_json::json!({"iss": "https://evil"}), JwtError::Issuer),
        ];
        for (extra, want) in cases {
            let token = signer.sign(claims(extra.clone()));
            assert_eq!(v.validate(&token, &keys), Err(want), "{extra}");
        }
        // Within the leeway, an expired token still passes.
        let just = signer.sign(claims(serde_json::json!({"exp": now() - LEEWAY_SECS / 2})));
        assert!(v.validate(&just, &keys).is_ok());
    }

    #[test]
    fn wrong_keys_tampering_none_and_hmac_are_refused() {
        let signer = Signer::new("k1");
        let keys = KeySet::parse(&signer.jwks()).unwrap();
        let v = JwtValidator::new("https://issuer", &[]);
        let good = signer.sign(claims(serde_json::json!({})));

        // Another key with the same kid: the signature does not verify.
        let impostor = Signer::new("k1");
        let forged = impostor.sign(claims(serde_json::json!({})));
        assert_eq!(v.validate(&forged, &keys), Err(JwtError::Signature));

        // An unknown kid.
        let other = Signer::new("k2").sign(claims(serde_json::json!({})));
        assert_eq!(v.validate(&other, &keys), Err(JwtError::UnknownKey));

        // A changed payload under the original signature.
        let mut parts: Vec<&str> = good.split('.').collect();
        let tampered_claims = B64.encode(claims(serde_json::json!({"sub": "root"})).to_string());
        parts[1] = &tampered_claims;
        assert_eq!(
            v.validate(&parts.join("."), &keys),
            Err(JwtError::Signature)
        );

        // `alg: none` with no signature.
        let none = format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            B64.encode(claims(serde_json::json!({})).to_string())
        );
        assert_eq!(v.validate(&none, &keys), Err(JwtError::Malformed));

        // HS256 "signed" with the public key's bytes as the secret.
        let hmac_input = format!(
            "{}.{}",
            B64.encode(r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#),
            B64.encode(claims(serde_json::json!({})).to_string())
        );
        let secret =
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, signer.jwk().to_string().as_bytes());
        let tag = ring::hmac::sign(&secret, hmac_input.as_bytes());
        let hmac = format!("{hmac_input}.{}", B64.encode(tag.as_ref()));
        assert_eq!(v.validate(&hmac, &keys), Err(JwtError::Algorithm));

        // A key set that offers an `oct` key is read without it.
        let with_oct = serde_json::json!({"keys": [
            {"kty": "oct", "k": B64.encode("secret"), "kid": "h"}, signer.jwk()]});
        assert_eq!(KeySet::parse(&with_oct.to_string()).unwrap().len(), 1);
        assert!(KeySet::parse("{}").is_err());
    }
}

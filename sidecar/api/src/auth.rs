//! Authentication of a route rule's requests: JWTs, API keys and HTTP basic credentials. The
//! operator resolves the Secrets a Route names and sends their contents here, over the
//! authenticated TLS config stream, so proxies need no Secret access.

use serde::{Deserialize, Serialize};

/// What a request must present before it is routed. With several methods, a request passes
/// with any one of them; without a valid credential it is answered `401` and never forwarded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authentication {
    /// A JSON Web Token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Jwt>,
    /// An API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeys>,
    /// HTTP basic credentials checked against bcrypt hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
}

/// JWT validation: the signature against a JSON Web Key Set, then `iss`, `aud`, `exp`, `nbf`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Jwt {
    /// The required `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values; empty accepts any audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// The key set (a JWKS document), when the operator read it from a Secret. An empty or
    /// unusable set refuses every token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// An `https://` address the proxy fetches the key set from (and refreshes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The header carrying the bare token; `authorization: Bearer <token>` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_header: Option<String>,
    /// Claims copied into request headers (a client's own such headers are removed first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims_to_headers: Vec<ClaimToHeader>,
}

/// One claim copied to one request header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    /// The claim's name, e.g. `sub`.
    pub claim: String,
    /// The header's name, e.g. `x-user-id`.
    pub header: String,
}

/// API keys: the value of `header` must equal one of `keys`. The header is not forwarded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeys {
    /// The header carrying the key.
    pub header: String,
    /// The accepted keys; empty refuses every request.
    #[serde(default)]
    pub keys: Vec<ApiKey>,
}

/// One accepted API key and whose it is.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKey {
    /// The client the key identifies (the Secret entry's name): what access logs and metrics
    /// show, never the key.
    pub client: String,
    /// The key.
    pub key: String,
}

impl std::fmt::Debug for ApiKey {
    // A config dump or a failed assertion must not print a credential.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("client", &self.client)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// HTTP basic authentication (RFC 7617) against bcrypt hashes, as `htpasswd -B` writes them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BasicAuth {
    /// The realm named in the `www-authenticate` challenge.
    pub realm: String,
    /// The accepted users; empty refuses every request.
    #[serde(default)]
    pub users: Vec<BasicUser>,
}

/// One user of [`BasicAuth`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BasicUser {
    /// The user name.
    pub user: String,
    /// The password's bcrypt hash (`$2y$…`, `$2b$…` or `$2a$…`).
    pub hash: String,
}

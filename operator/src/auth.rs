//! Who may read which config: proxies present a projected ServiceAccount token with audience
//! `portico`; the operator checks it with a TokenReview and matches the identity to the config
//! asked for.
//!
//! The rule for gateway proxies: the config of Gateway `ns/name` is served only to the
//! ServiceAccount `portico-gateway-<name>` in namespace `ns` — the account the operator creates
//! for that Gateway's proxy Deployment. Any other valid identity gets 403.
//!
//! The rule for sidecars: the mesh-wide config (Services, their Routes and endpoints — what
//! kube-proxy gives every node) is served to any ServiceAccount; users that are not
//! ServiceAccounts get 403.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use crate::index::{Key, proxy_name};

/// The audience proxy tokens must carry.
pub const AUDIENCE: &str = "portico";

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer` header (401).
    #[error("no bearer token")]
    NoToken,
    /// The token is invalid, expired, or not for audience `portico` (401).
    #[error("token not accepted: {0}")]
    Unauthenticated(String),
    /// A valid identity that may not read this config (403).
    #[error("{user} may not read the config of Gateway {gateway}")]
    Forbidden {
        /// The authenticated user name.
        user: String,
        /// The Gateway asked for.
        gateway: String,
    },
    /// The TokenReview itself failed (503).
    #[error("token review failed: {0}")]
    Review(String),
}

impl AuthError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> http::StatusCode {
        match self {
            AuthError::NoToken | AuthError::Unauthenticated(_) => http::StatusCode::UNAUTHORIZED,
            AuthError::Forbidden { .. } => http::StatusCode::FORBIDDEN,
            AuthError::Review(_) => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `reason` label in metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::NoToken => "no_token",
            AuthError::Unauthenticated(_) => "unauthenticated",
            AuthError::Forbidden { .. } => "forbidden",
            AuthError::Review(_) => "review_failed",
        }
    }
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&http::HeaderValue>) -> Result<&str, AuthError> {
    header
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::NoToken)
}

/// The user name of the proxies of Gateway `gateway`.
pub fn gateway_proxy_user(gateway: &Key) -> String {
    format!(
        "system:serviceaccount:{}:{}",
        gateway.namespace,
        proxy_name(&gateway.name)
    )
}

/// Checks `token` with a TokenReview (audience `portico`) and that its identity may read the
/// config of `gateway`. Returns the user name.
pub async fn authorize_gateway(
    client: &kube::Client,
    token: &str,
    gateway: &Key,
) -> Result<String, AuthError> {
    let user = review(client, token).await?;
    if user != gateway_proxy_user(gateway) {
        return Err(AuthError::Forbidden {
            user,
            gateway: gateway.to_string(),
        });
    }
    Ok(user)
}

/// Checks `token` with a TokenReview (audience `portico`) and that it belongs to a
/// ServiceAccount (a sidecar). Returns the user name.
pub async fn authorize_mesh(client: &kube::Client, token: &str) -> Result<String, AuthError> {
    let user = review(client, token).await?;
    if !user.starts_with("system:serviceaccount:") {
        return Err(AuthError::Forbidden {
            user,
            gateway: "(mesh)".to_owned(),
        });
    }
    Ok(user)
}

/// A TokenReview with audience `portico`; the authenticated user name.
async fn review(client: &kube::Client, token: &str) -> Result<String, AuthError> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            audiences: Some(vec![AUDIENCE.to_owned()]),
            token: token.to_owned(),
        },
        ..Default::default()
    };
    let review = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| AuthError::Review(e.to_string()))?;
    let status = review.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(AuthError::Unauthenticated(
            status.error.unwrap_or_else(|| "not authenticated".into()),
        ));
    }
    // An audience-unaware authenticator could accept a token meant for someone else.
    if !status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a == AUDIENCE))
    {
        return Err(AuthError::Unauthenticated(format!(
            "token is not for audience {AUDIENCE:?}"
        )));
    }
    Ok(status.user.and_then(|u| u.username).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_non_empty_bearer_token_is_taken() {
        let h = |s: &str| http::HeaderValue::from_str(s).unwrap();
        assert_eq!(bearer(Some(&h("Bearer abc"))), Ok("abc"));
        assert_eq!(bearer(Some(&h("Basic abc"))), Err(AuthError::NoToken));
        assert_eq!(bearer(Some(&h("Bearer "))), Err(AuthError::NoToken));
        assert_eq!(bearer(None), Err(AuthError::NoToken));
    }

    #[test]
    fn a_gateway_is_served_to_its_proxy_service_account() {
        assert_eq!(
            gateway_proxy_user(&Key::new("shop", "edge")),
            "system:serviceaccount:shop:portico-gateway-edge"
        );
    }
}

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
//! ServiceAccounts get 403. The config of pod `ns/name` (the mesh-wide config plus the pod's
//! inbound policy) is served only to the pod's own ServiceAccount (`spec.serviceAccountName`
//! in `ns`); a token bound to a pod (kubelet's projected tokens are) must be bound to that very
//! pod (name and uid), so one pod cannot read another's policy with a token of the same account.
//!
//! A token is checked at connect and again while the stream is open (see
//! [`token_expiry`] and the config server): a stream outlives neither its token nor its
//! ServiceAccount.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use crate::index::{Key, PodInfo, proxy_name};

/// The `user.extra` key with the name of the pod a token is bound to.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// The `user.extra` key with the uid of the pod a token is bound to.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

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
    #[error("{user} may not read the config of {target}")]
    Forbidden {
        /// The authenticated user name.
        user: String,
        /// The config asked for (`Gateway ns/name`, `pod ns/name`, `the mesh`).
        target: String,
    },
    /// The pod asked for is not known (404): not created, or not seen by the operator yet.
    #[error("pod {0} not found")]
    PodNotFound(String),
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
            AuthError::PodNotFound(_) => http::StatusCode::NOT_FOUND,
            AuthError::Review(_) => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `reason` label in metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::NoToken => "no_token",
            AuthError::Unauthenticated(_) => "unauthenticated",
            AuthError::Forbidden { .. } => "forbidden",
            AuthError::PodNotFound(_) => "pod_not_found",
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
    let user = authenticate(client, token).await?.user;
    if user != gateway_proxy_user(gateway) {
        return Err(AuthError::Forbidden {
            user,
            target: format!("Gateway {gateway}"),
        });
    }
    Ok(user)
}

/// Checks `token` with a TokenReview (audience `portico`) and that it belongs to a
/// ServiceAccount (a sidecar). Returns the user name.
pub async fn authorize_mesh(client: &kube::Client, token: &str) -> Result<String, AuthError> {
    let user = authenticate(client, token).await?.user;
    if !user.starts_with("system:serviceaccount:") {
        return Err(AuthError::Forbidden {
            user,
            target: "the mesh".to_owned(),
        });
    }
    Ok(user)
}

/// Who a token belongs to, as the TokenReview says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The user name (`system:serviceaccount:<namespace>:<name>` for a ServiceAccount).
    pub user: String,
    /// The pod the token is bound to, if it is bound to one.
    pub pod_name: Option<String>,
    /// That pod's uid.
    pub pod_uid: Option<String>,
}

/// Whether `identity` may read the config of pod `pod` (see the module docs).
pub fn check_pod(identity: &Identity, pod: &PodInfo) -> Result<(), AuthError> {
    let forbidden = || AuthError::Forbidden {
        user: identity.user.clone(),
        target: format!("pod {}", pod.key),
    };
    let own_account = format!(
        "system:serviceaccount:{}:{}",
        pod.key.namespace, pod.service_account
    );
    if identity.user != own_account {
        return Err(forbidden());
    }
    if identity
        .pod_name
        .as_deref()
        .is_some_and(|n| n != pod.key.name)
        || identity
            .pod_uid
            .as_deref()
            .is_some_and(|u| !pod.uid.is_empty() && u != pod.uid)
    {
        return Err(forbidden());
    }
    Ok(())
}

/// Checks `token` with a TokenReview (audience `portico`); the identity it proves.
pub async fn authenticate(client: &kube::Client, token: &str) -> Result<Identity, AuthError> {
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
    let user = status.user.unwrap_or_default();
    let mut extra = user.extra.unwrap_or_default();
    let mut first = |key: &str| extra.remove(key).and_then(|v| v.into_iter().next());
    Ok(Identity {
        pod_name: first(EXTRA_POD_NAME),
        pod_uid: first(EXTRA_POD_UID),
        user: user.username.unwrap_or_default(),
    })
}

/// How long until `token` expires, read from its `exp` claim without checking the signature
/// (the TokenReview is the authority; this only says when to ask it again). `None` when the
/// token is not a JWT with an `exp`; `Some(ZERO)` when it has expired.
pub fn token_expiry(token: &str) -> Option<Duration> {
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<u64>,
    }
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<Claims>(&json).ok()?.exp?;
    let exp = UNIX_EPOCH + Duration::from_secs(exp);
    Some(
        exp.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
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

    fn pod() -> PodInfo {
        PodInfo {
            key: Key::new("shop", "orders-0"),
            uid: "u-1".into(),
            service_account: "orders".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_s_config_is_served_to_its_own_account_and_a_token_bound_to_it() {
        let own = Identity {
            user: "system:serviceaccount:shop:orders".into(),
            pod_name: Some("orders-0".into()),
            pod_uid: Some("u-1".into()),
        };
        assert_eq!(check_pod(&own, &pod()), Ok(()));
        let unbound = Identity {
            pod_name: None,
            pod_uid: None,
            ..own.clone()
        };
        assert_eq!(check_pod(&unbound, &pod()), Ok(()));
        let refused = |id: Identity| check_pod(&id, &pod()).unwrap_err().status();
        let forbidden = http::StatusCode::FORBIDDEN;
        let other_pod = Identity {
            pod_name: Some("orders-1".into()),
            ..own.clone()
        };
        assert_eq!(refused(other_pod), forbidden);
        let recreated_pod = Identity {
            pod_uid: Some("u-0".into()),
            ..own.clone()
        };
        assert_eq!(refused(recreated_pod), forbidden);
        let other_account = Identity {
            user: "system:serviceaccount:shop:web".into(),
            ..own.clone()
        };
        assert_eq!(refused(other_account), forbidden);
        let other_namespace = Identity {
            user: "system:serviceaccount:pay:orders".into(),
            ..own
        };
        assert_eq!(refused(other_namespace), forbidden);
    }

    #[test]
    fn the_expiry_is_read_from_the_jwt_payload() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let jwt = |claims: String| format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(&claims));
        let left = token_expiry(&jwt(format!(r#"{{"exp":{},"sub":"x"}}"#, now + 600))).unwrap();
        assert!(left > Duration::from_secs(590) && left <= Duration::from_secs(600));
        assert_eq!(
            token_expiry(&jwt(format!(r#"{{"exp":{}}}"#, now - 5))),
            Some(Duration::ZERO)
        );
        assert_eq!(token_expiry(&jwt(r#"{"sub":"x"}"#.into())), None);
        assert_eq!(token_expiry("not-a-token"), None);
        assert_eq!(token_expiry("a.!!!.c"), None);
    }

    #[test]
    fn a_gateway_is_served_to_its_proxy_service_account() {
        assert_eq!(
            gateway_proxy_user(&Key::new("shop", "edge")),
            "system:serviceaccount:shop:portico-gateway-edge"
        );
    }
}

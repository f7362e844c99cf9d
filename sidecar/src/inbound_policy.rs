//! Inbound policy: what the INBOUND listener lets through to the pod's own ports
//! ([`portico_proxy_api::InboundPolicy`], compiled per port).
//!
//! ```text
//!  connection or HTTP request to port P from source S
//!    P has no policy ─────────────────────────────► let in
//!    S in deny, or not in allow and default Deny ─► refused: 403 / connection closed
//!    P's bucket for the key (S, a header, all) empty ► refused: 429 + retry-after / closed
//!    else ────────────────────────────────────────► let in
//! ```
//!
//! HTTP requests are checked one by one against the policy in force when each arrives, so a
//! policy change applies to the next request of a keep-alive connection without closing it.
//! An opaque TCP connection is checked once, when it opens, and counts as one request.
//! Rate-limit buckets survive config swaps that leave their port's limit unchanged (endpoint
//! churn must not hand every client a fresh burst).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use portico_proxy_api::{
    InboundAction, InboundAuthorization, InboundPolicy, InboundRateLimit, RateLimitKey,
};

use crate::error::ProxyError;
use crate::ratelimit::{Key, RateLimiter};

/// The compiled policies of all guarded ports.
#[derive(Debug, Default)]
pub struct InboundPolicies {
    ports: HashMap<u16, Arc<PortPolicy>>,
}

/// One guarded port.
#[derive(Debug)]
pub struct PortPolicy {
    /// The port, as a metrics label.
    pub port: Arc<str>,
    /// `namespace/name` of the policy, as a metrics label and in refusals.
    pub policy: Arc<str>,
    authorization: Option<Authorization>,
    rate_limit: Option<(InboundRateLimit, Arc<RateLimiter>)>,
}

#[derive(Debug)]
struct Authorization {
    allow: HashSet<IpAddr>,
    deny: HashSet<IpAddr>,
    default: InboundAction,
}

/// Why a caller was turned away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The source address is not allowed.
    #[error("inbound policy {policy:?} does not allow {client} on port {port}")]
    Unauthorized {
        /// The policy.
        policy: Arc<str>,
        /// The port.
        port: Arc<str>,
        /// The caller.
        client: IpAddr,
    },
    /// The port's rate limit is spent for this caller.
    #[error("inbound policy {policy:?}: rate limit of port {port} exceeded")]
    RateLimited {
        /// The policy.
        policy: Arc<str>,
        /// The port.
        port: Arc<str>,
        /// When a request would be let in again.
        retry_after: Duration,
    },
}

impl Refusal {
    /// The `reason` label in metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unauthorized { .. } => "authorization",
            Self::RateLimited { .. } => "rate_limit",
        }
    }
}

impl From<Refusal> for ProxyError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Unauthorized { .. } => Self::Forbidden(r.to_string()),
            Refusal::RateLimited { retry_after, .. } => Self::RateLimited {
                message: r.to_string(),
                retry_after,
            },
        }
    }
}

impl InboundPolicies {
    /// Compiles `policy` (already validated), keeping the buckets of `old` ports whose rate
    /// limit did not change.
    pub fn new(policy: &InboundPolicy, old: &InboundPolicies) -> Self {
        let ports = policy
            .ports
            .iter()
            .map(|p| {
                let kept = old
                    .ports
                    .get(&p.port)
                    .and_then(|o| o.rate_limit.as_ref())
                    .filter(|(cfg, _)| Some(cfg) == p.rate_limit.as_ref())
                    .map(|(_, limiter)| limiter.clone());
                let rate_limit = p.rate_limit.as_ref().map(|rl| {
                    let limiter = kept.unwrap_or_else(|| {
                        Arc::new(RateLimiter::new(rl.requests, rl.period.get(), rl.burst))
                    });
                    (rl.clone(), limiter)
                });
                let compiled = PortPolicy {
                    port: p.port.to_string().into(),
                    policy: p.policy.as_str().into(),
                    authorization: p.authorization.as_ref().map(Authorization::new),
                    rate_limit,
                };
                (p.port, Arc::new(compiled))
            })
            .collect();
        Self { ports }
    }

    /// The policy of `port`, if it is guarded.
    pub fn port(&self, port: u16) -> Option<&Arc<PortPolicy>> {
        self.ports.get(&port)
    }
}

impl Authorization {
    fn new(a: &InboundAuthorization) -> Self {
        Self {
            allow: a.allow.iter().map(|ip| ip.to_canonical()).collect(),
            deny: a.deny.iter().map(|ip| ip.to_canonical()).collect(),
            default: a.default,
        }
    }

    fn allows(&self, client: IpAddr) -> bool {
        if self.allow.contains(&client) {
            true
        } else if self.deny.contains(&client) {
            false
        } else {
            self.default == InboundAction::Allow
        }
    }
}

impl PortPolicy {
    /// Checks one request (`headers` of an HTTP request; `None` for a new opaque connection)
    /// from `client`. Authorization comes first, so refused callers spend no tokens.
    pub fn check(&self, client: IpAddr, headers: Option<&HeaderMap>) -> Result<(), Refusal> {
        // A dual-stack listener reports IPv4 callers as ::ffff:a.b.c.d.
        let client = client.to_canonical();
        if let Some(a) = &self.authorization
            && !a.allows(client)
        {
            return Err(Refusal::Unauthorized {
                policy: self.policy.clone(),
                port: self.port.clone(),
                client,
            });
        }
        if let Some((cfg, limiter)) = &self.rate_limit {
            let key = match &cfg.key {
                RateLimitKey::ClientIp => Key::Ip(client),
                RateLimitKey::Global => Key::Global,
                RateLimitKey::Header { name } => Key::Value(
                    headers
                        .and_then(|h| h.get(name.as_str()))
                        .map(|v| v.as_bytes()),
                ),
            };
            limiter.check(key).map_err(|limited| Refusal::RateLimited {
                policy: self.policy.clone(),
                port: self.port.clone(),
                retry_after: limited.0,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str, old: &InboundPolicies) -> InboundPolicies {
        InboundPolicies::new(&serde_yaml::from_str(yaml).expect("policy"), old)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn allow_wins_then_deny_then_the_default() {
        let p = compile(
            r#"ports:
  - { port: 80, policy: shop/a, authorization: { allow: [10.0.0.1], deny: [10.0.0.2] } }
  - { port: 81, policy: shop/b, authorization: { deny: [10.0.0.2], default: Allow } }
  - { port: 82, policy: shop/c }"#,
            &InboundPolicies::default(),
        );
        let p80 = p.port(80).expect("guarded");
        assert_eq!(p80.check(ip("10.0.0.1"), None), Ok(()));
        assert!(p80.check(ip("::ffff:10.0.0.1"), None).is_ok(), "v4-mapped");
        let e = p80.check(ip("10.0.0.2"), None).expect_err("denied");
        assert_eq!(e.reason(), "authorization");
        assert!(e.to_string().contains("shop/a"), "{e}");
        assert!(p80.check(ip("10.0.0.3"), None).is_err(), "default Deny");
        let p81 = p.port(81).expect("guarded");
        assert!(p81.check(ip("10.0.0.2"), None).is_err());
        assert_eq!(p81.check(ip("10.0.0.3"), None), Ok(()), "default Allow");
        assert_eq!(
            p.port(82).expect("guarded").check(ip("1.2.3.4"), None),
            Ok(())
        );
        assert!(p.port(83).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_survive_a_swap_that_keeps_the_limit_and_reset_when_it_changes() {
        let limited =
            "ports: [{ port: 80, policy: p, rateLimit: { requests: 1, period: 1m, burst: 1 } }]";
        let first = compile(limited, &InboundPolicies::default());
        let client = ip("10.0.0.1");
        assert_eq!(first.port(80).expect("p").check(client, None), Ok(()));
        let same = compile(limited, &first);
        let e = same
            .port(80)
            .expect("p")
            .check(client, None)
            .expect_err("spent");
        assert_eq!(e.reason(), "rate_limit");
        assert!(
            matches!(e, Refusal::RateLimited { retry_after, .. } if retry_after == Duration::from_secs(60))
        );
        let changed = compile(&limited.replace("burst: 1", "burst: 2"), &same);
        assert_eq!(changed.port(80).expect("p").check(client, None), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn refused_callers_spend_no_tokens_and_header_keys_split_buckets() {
        let p = compile(
            r#"ports: [{ port: 80, policy: p, authorization: { allow: [10.0.0.1] },
                rateLimit: { requests: 1, period: 1m, burst: 1, key: { type: Header, name: x-user } } }]"#,
            &InboundPolicies::default(),
        );
        let p = p.port(80).expect("p");
        let mut alice = HeaderMap::new();
        alice.insert("x-user", "alice".parse().expect("value"));
        let mut bob = HeaderMap::new();
        bob.insert("x-user", "bob".parse().expect("value"));
        assert!(p.check(ip("10.0.0.9"), Some(&alice)).is_err());
        assert_eq!(p.check(ip("10.0.0.1"), Some(&alice)), Ok(()));
        assert!(p.check(ip("10.0.0.1"), Some(&alice)).is_err());
        assert_eq!(p.check(ip("10.0.0.1"), Some(&bob)), Ok(()));
    }
}

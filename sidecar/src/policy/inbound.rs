//! Inbound policy: what the INBOUND listener lets through to the pod's own ports
//! ([`portico_proxy_api::InboundPolicy`], compiled per port).
//!
//! ```text
//!  connection or HTTP request to port P from caller C (a verified mesh identity, or none)
//!    C has no identity, GET of a probe path ─────► let in (the kubelet)
//!    C has no identity and P is Strict ──────────► refused
//!    P has no policy ────────────────────────────► let in
//!    P's authorization does not match C ─────────► refused: 403 / connection closed
//!    P's bucket for the key (C's address, a header, all) empty ► 429 + retry-after / closed
//!    else ───────────────────────────────────────► let in
//! ```
//!
//! A caller's identity is the SPIFFE ID in its client certificate, verified by the mesh mTLS
//! handshake ([`crate::mesh::mtls`]); an address proves nothing. HTTP requests are checked one by one
//! against the policy in force when each arrives, so a policy change applies to the next
//! request of a keep-alive connection without closing it. An opaque TCP connection is checked
//! once, when it opens, and counts as one request. Rate-limit buckets survive config swaps that
//! leave their port's limit unchanged (endpoint churn must not hand every client a fresh
//! burst).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use portico_proxy_api::{
    InboundAuthorization, InboundPolicy, MtlsMode, RateLimit, RateLimitKey, identity_matches,
};

use crate::error::ProxyError;
use crate::policy::ratelimit::{Key, RateLimiter};

/// The compiled policies of all guarded ports.
#[derive(Debug, Default)]
pub struct InboundPolicies {
    ports: HashMap<u16, Arc<PortPolicy>>,
    /// The pod's mode for ports without one of their own.
    strict: bool,
    /// `(port, path)` of the kubelet's HTTP probes.
    probes: HashSet<(u16, String)>,
}

/// One guarded port.
#[derive(Debug)]
pub struct PortPolicy {
    /// The port, as a metrics label.
    pub port: Arc<str>,
    /// `namespace/name` of the policy, as a metrics label and in refusals.
    pub policy: Arc<str>,
    mtls: Option<MtlsMode>,
    authorization: Option<InboundAuthorization>,
    rate_limit: Option<(RateLimit, Arc<RateLimiter>)>,
}

/// Who is calling: its address, and its verified mesh identity if it has one.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// The source address (rate-limit key only: it proves nothing).
    pub ip: IpAddr,
    /// The SPIFFE ID of its client certificate.
    pub identity: Option<&'a str>,
}

impl Caller<'_> {
    /// The caller as logs and metrics show it.
    pub fn label(&self) -> &str {
        self.identity.unwrap_or("unauthenticated")
    }
}

/// Why a caller was turned away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The port takes mTLS callers only, and this one has no mesh identity.
    #[error("port {port} requires mTLS: the caller has no mesh identity")]
    Unauthenticated {
        /// The port.
        port: Arc<str>,
    },
    /// The caller's identity is not allowed.
    #[error("inbound policy {policy:?} does not allow {client} on port {port}")]
    Unauthorized {
        /// The policy.
        policy: Arc<str>,
        /// The port.
        port: Arc<str>,
        /// The caller's identity, or `unauthenticated`.
        client: String,
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
            Self::Unauthenticated { .. } => "mtls_required",
            Self::Unauthorized { .. } => "authorization",
            Self::RateLimited { .. } => "rate_limit",
        }
    }
}

impl From<Refusal> for ProxyError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Unauthenticated { .. } | Refusal::Unauthorized { .. } => {
                Self::Forbidden(r.to_string())
            }
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
                    mtls: p.mtls,
                    authorization: p.authorization.clone(),
                    rate_limit,
                };
                (p.port, Arc::new(compiled))
            })
            .collect();
        Self {
            ports,
            strict: policy.mtls == MtlsMode::Strict,
            probes: policy
                .probes
                .iter()
                .map(|p| (p.port, p.path.clone()))
                .collect(),
        }
    }

    /// The policy of `port`, if it is guarded.
    pub fn port(&self, port: u16) -> Option<&Arc<PortPolicy>> {
        self.ports.get(&port)
    }

    /// Whether `port` refuses plaintext callers.
    pub fn strict(&self, port: u16) -> bool {
        match self.ports.get(&port).and_then(|p| p.mtls) {
            Some(mode) => mode == MtlsMode::Strict,
            None => self.strict,
        }
    }

    /// Whether the kubelet probes some path of `port` over HTTP.
    pub fn probed(&self, port: u16) -> bool {
        self.probes.iter().any(|(p, _)| *p == port)
    }

    /// Checks one request (`request`: its method, path and headers; `None` for a new opaque
    /// connection) from `caller` to `port`: mTLS first, then the port's policy.
    pub fn check(
        &self,
        port: u16,
        caller: &Caller<'_>,
        request: Option<(&http::Method, &str, &HeaderMap)>,
    ) -> Result<Option<&Arc<PortPolicy>>, Refusal> {
        let policy = self.ports.get(&port);
        if caller.identity.is_none() {
            let probe = request.is_some_and(|(method, path, _)| {
                method == http::Method::GET && self.probes.contains(&(port, path.to_owned()))
            });
            if probe {
                // The kubelet has no mesh identity and answers to no policy: its probe paths
                // pass (as Linkerd's default probe authorization), or no guarded pod could
                // ever become ready.
                return Ok(None);
            }
        }
        if caller.identity.is_none() && self.strict(port) {
            return Err(Refusal::Unauthenticated {
                port: policy.map_or_else(|| port.to_string().into(), |p| p.port.clone()),
            });
        }
        if let Some(p) = policy {
            p.check(caller, request.map(|(_, _, h)| h))?;
        }
        Ok(policy)
    }
}

impl PortPolicy {
    /// Whether the port's authorization lets `caller` in (true without an authorization).
    pub fn authorizes(&self, caller: &Caller<'_>) -> bool {
        let Some(a) = &self.authorization else {
            return true;
        };
        match caller.identity {
            None => a.unauthenticated,
            Some(id) => a.identities.iter().any(|p| identity_matches(p, id)),
        }
    }

    /// Whether the port has an authorization (its decisions are counted by identity).
    pub fn has_authorization(&self) -> bool {
        self.authorization.is_some()
    }

    /// Checks one request (`headers` of an HTTP request; `None` for a new opaque connection)
    /// from `caller`. Authorization comes first, so refused callers spend no tokens.
    pub fn check(&self, caller: &Caller<'_>, headers: Option<&HeaderMap>) -> Result<(), Refusal> {
        if !self.authorizes(caller) {
            return Err(Refusal::Unauthorized {
                policy: self.policy.clone(),
                port: self.port.clone(),
                client: caller.label().to_owned(),
            });
        }
        if let Some((cfg, limiter)) = &self.rate_limit {
            let key = match &cfg.key {
                // A dual-stack listener reports IPv4 callers as ::ffff:a.b.c.d.
                RateLimitKey::ClientIp => Key::Ip(caller.ip.to_canonical()),
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

    fn anon(s: &str) -> Caller<'_> {
        Caller {
            ip: ip(s),
            identity: None,
        }
    }

    fn as_id(id: &str) -> Caller<'_> {
        Caller {
            ip: ip("10.0.0.1"),
            identity: Some(id),
        }
    }

    const WEB: &str = "spiffe://td/ns/shop/sa/web";
    const ADMIN: &str = "spiffe://td/ns/shop/sa/admin";
    const OPS: &str = "spiffe://td/ns/ops/sa/bot";

    #[test]
    fn callers_are_matched_by_identity_never_by_address() {
        let p = compile(
            r#"ports:
  - { port: 80, policy: shop/a, authorization: { identities: ["spiffe://td/ns/shop/sa/web"] } }
  - { port: 81, policy: shop/b, authorization: { identities: ["spiffe://td/ns/ops/sa/*"], unauthenticated: true } }
  - { port: 82, policy: shop/c, authorization: { identities: ["*"] } }
  - { port: 83, policy: shop/d }"#,
            &InboundPolicies::default(),
        );
        let p80 = p.port(80).expect("guarded");
        assert_eq!(p80.check(&as_id(WEB), None), Ok(()));
        let e = p80
            .check(&as_id(ADMIN), None)
            .expect_err("another identity");
        assert_eq!(e.reason(), "authorization");
        assert!(
            e.to_string().contains("shop/a") && e.to_string().contains(ADMIN),
            "{e}"
        );
        assert!(p80.check(&anon("10.0.0.1"), None).is_err(), "no identity");
        let p81 = p.port(81).expect("guarded");
        assert_eq!(p81.check(&as_id(OPS), None), Ok(()), "namespace pattern");
        assert!(p81.check(&as_id(WEB), None).is_err());
        assert_eq!(p81.check(&anon("1.2.3.4"), None), Ok(()), "unauthenticated");
        let p82 = p.port(82).expect("guarded");
        assert_eq!(p82.check(&as_id(OPS), None), Ok(()), "any identity");
        assert!(p82.check(&anon("1.2.3.4"), None).is_err());
        let p83 = p.port(83).expect("guarded");
        assert_eq!(p83.check(&anon("1.2.3.4"), None), Ok(()));
        assert!(p.port(84).is_none());
    }

    #[test]
    fn strict_ports_refuse_plaintext_except_probes() {
        let p = compile(
            r#"mtls: Strict
probes: [{ port: 8080, path: /healthz }]
ports:
  - { port: 9090, policy: shop/open, mtls: Permissive }"#,
            &InboundPolicies::default(),
        );
        let get = http::Method::GET;
        let h = HeaderMap::new();
        let e = p
            .check(8080, &anon("10.0.0.1"), Some((&get, "/", &h)))
            .expect_err("plaintext");
        assert_eq!(e.reason(), "mtls_required");
        assert!(
            p.check(8080, &anon("10.0.0.1"), Some((&get, "/healthz", &h)))
                .is_ok()
        );
        assert!(
            p.check(
                8080,
                &anon("10.0.0.1"),
                Some((&http::Method::POST, "/healthz", &h))
            )
            .is_err()
        );
        assert!(p.check(8080, &anon("10.0.0.1"), None).is_err(), "opaque");
        assert!(p.check(8080, &as_id(WEB), None).is_ok(), "mTLS");
        assert!(
            p.check(9090, &anon("10.0.0.1"), None).is_ok(),
            "port override"
        );
        assert!(p.probed(8080) && !p.probed(9090));
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_survive_a_swap_that_keeps_the_limit_and_reset_when_it_changes() {
        let limited =
            "ports: [{ port: 80, policy: p, rateLimit: { requests: 1, period: 1m, burst: 1 } }]";
        let first = compile(limited, &InboundPolicies::default());
        let client = anon("10.0.0.1");
        assert_eq!(first.port(80).expect("p").check(&client, None), Ok(()));
        let same = compile(limited, &first);
        let e = same
            .port(80)
            .expect("p")
            .check(&client, None)
            .expect_err("spent");
        assert_eq!(e.reason(), "rate_limit");
        assert!(
            matches!(e, Refusal::RateLimited { retry_after, .. } if retry_after == Duration::from_secs(60))
        );
        let changed = compile(&limited.replace("burst: 1", "burst: 2"), &same);
        assert_eq!(changed.port(80).expect("p").check(&client, None), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn refused_callers_spend_no_tokens_and_header_keys_split_buckets() {
        let p = compile(
            r#"ports: [{ port: 80, policy: p, authorization: { identities: ["spiffe://td/ns/shop/sa/web"] },
                rateLimit: { requests: 1, period: 1m, burst: 1, key: { type: Header, name: x-user } } }]"#,
            &InboundPolicies::default(),
        );
        let p = p.port(80).expect("p");
        let mut alice = HeaderMap::new();
        alice.insert("x-user", "alice".parse().expect("value"));
        let mut bob = HeaderMap::new();
        bob.insert("x-user", "bob".parse().expect("value"));
        assert!(p.check(&as_id(ADMIN), Some(&alice)).is_err());
        assert_eq!(p.check(&as_id(WEB), Some(&alice)), Ok(()));
        assert!(p.check(&as_id(WEB), Some(&alice)).is_err());
        assert_eq!(p.check(&as_id(WEB), Some(&bob)), Ok(()));
    }
}

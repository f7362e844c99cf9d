//! Translation of Portico's CRDs into the proxy contract: Gateway listeners → contract
//! [`Listener`]s, Route rules → contract [`RouteRule`]s, ServicePolicy → backend policy.
//!
//! Pure functions: they read CRD values and return contract values, so they are tested without
//! any index around them.

use portico_api::gateway::{Listener as GwListener, ListenerProtocol};
use portico_api::policy::{LoadBalancerType, ServicePolicySpec, ServiceProtocol};
use portico_api::route::{
    self as api, PathMatchType, PathModifierType, RedirectScheme, RouteFilterType, ValueMatchType,
};
use portico_proxy_api as contract;

use super::ServicePort;

/// The contract name of the backend that stands for port `port` of Service `namespace/name`:
/// `namespace/name:port`. The same word is the `backend` label in proxy metrics.
pub fn backend_name(namespace: &str, service: &str, port: i32) -> String {
    format!("{namespace}/{service}:{port}")
}

/// The contract listener for a Gateway listener. Proxies bind every address (`0.0.0.0:port`);
/// HTTPS listeners carry their certificate inline (`tls`), so proxies need no Secret access.
pub fn listener(l: &GwListener, tls: Option<contract::Tls>) -> contract::Listener {
    contract::Listener {
        name: l.name.clone(),
        address: format!("0.0.0.0:{}", l.port),
        protocol: match l.protocol {
            ListenerProtocol::HTTP => contract::Protocol::Http,
            ListenerProtocol::HTTPS => contract::Protocol::Https,
            ListenerProtocol::TCP => contract::Protocol::Tcp,
        },
        tls,
        backend: None,
        backends: Vec::new(),
    }
}

/// A method (or CORS `*`) as it is written.
fn method(m: &impl serde::Serialize) -> String {
    serde_json::to_value(m)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn value_match(kind: ValueMatchType, name: &str, value: &str) -> contract::ValueMatch {
    contract::ValueMatch {
        name: name.to_owned(),
        value: value.to_owned(),
        kind: match kind {
            ValueMatchType::Exact => contract::MatchKind::Exact,
            ValueMatchType::RegularExpression => contract::MatchKind::RegularExpression,
        },
    }
}

fn route_match(m: &api::RouteMatch) -> contract::RouteMatch {
    contract::RouteMatch {
        path: m.path.as_ref().map(|p| match p.type_ {
            PathMatchType::Exact => contract::PathMatch::Exact(p.value.clone()),
            PathMatchType::PathPrefix => contract::PathMatch::PathPrefix(p.value.clone()),
            PathMatchType::RegularExpression => {
                contract::PathMatch::RegularExpression(p.value.clone())
            }
        }),
        method: m.method.as_ref().map(method),
        headers: m
            .headers
            .iter()
            .map(|h| value_match(h.type_, &h.name, &h.value))
            .collect(),
        query: m
            .query_params
            .iter()
            .map(|q| value_match(q.type_, &q.name, &q.value))
            .collect(),
    }
}

fn header_modifier(m: &api::HeaderModifier) -> contract::HeaderModifier {
    let headers = |hs: &[api::HttpHeader]| {
        hs.iter()
            .map(|h| contract::Header {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect()
    };
    contract::HeaderModifier {
        set: headers(&m.set),
        add: headers(&m.add),
        remove: m.remove.clone(),
    }
}

fn path_rewrite(p: &api::PathModifier) -> Option<contract::PathRewrite> {
    match p.type_ {
        PathModifierType::ReplaceFullPath => p
            .replace_full_path
            .clone()
            .map(contract::PathRewrite::ReplaceFullPath),
        PathModifierType::ReplacePrefixMatch => p
            .replace_prefix_match
            .clone()
            .map(contract::PathRewrite::ReplacePrefixMatch),
    }
}

fn filter(route_ns: &str, f: &api::RouteFilter) -> Option<contract::Filter> {
    Some(match f.type_ {
        RouteFilterType::RequestHeaderModifier => contract::Filter::RequestHeaderModifier(
            header_modifier(f.request_header_modifier.as_ref()?),
        ),
        RouteFilterType::ResponseHeaderModifier => contract::Filter::ResponseHeaderModifier(
            header_modifier(f.response_header_modifier.as_ref()?),
        ),
        RouteFilterType::URLRewrite => {
            let u = f.url_rewrite.as_ref()?;
            contract::Filter::UrlRewrite(contract::UrlRewrite {
                hostname: u.hostname.as_ref().map(|h| h.0.clone()),
                path: u.path.as_ref().and_then(path_rewrite),
            })
        }
        RouteFilterType::RequestRedirect => {
            let r = f.request_redirect.as_ref()?;
            contract::Filter::RequestRedirect(contract::Redirect {
                scheme: r.scheme.map(|s| match s {
                    RedirectScheme::Http => "http".to_owned(),
                    RedirectScheme::Https => "https".to_owned(),
                }),
                hostname: r.hostname.as_ref().map(|h| h.0.clone()),
                port: r.port.and_then(|p| u16::try_from(p).ok()),
                path: r.path.as_ref().and_then(path_rewrite),
                status_code: r.status_code.and_then(|c| u16::try_from(c).ok()),
            })
        }
        RouteFilterType::RequestMirror => {
            let m = f.request_mirror.as_ref()?;
            let b = &m.backend_ref;
            contract::Filter::RequestMirror(contract::Mirror {
                backend: backend_name(b.namespace.as_deref().unwrap_or(route_ns), &b.name, b.port),
                percent: m
                    .percent
                    .map_or(100, |p| u32::try_from(p.clamp(0, 100)).unwrap_or(100)),
            })
        }
        RouteFilterType::DirectResponse => {
            contract::Filter::DirectResponse(direct_response(f.direct_response.as_ref()?))
        }
    })
}

/// A fixed answer (a `DirectResponse` filter's, a fallback's), its content type as a header.
fn direct_response(d: &api::DirectResponse) -> contract::DirectResponse {
    contract::DirectResponse {
        status: u16::try_from(d.status_code).unwrap_or(500),
        body: d.body.clone().unwrap_or_default(),
        headers: d
            .content_type
            .iter()
            .map(|ct| contract::Header {
                name: "content-type".to_owned(),
                value: ct.clone(),
            })
            .collect(),
    }
}

/// A rule's response cache: header names lower-cased (the proxy compares them as such), the
/// body limit 1 MiB when absent.
fn cache(c: &api::Cache) -> contract::Cache {
    contract::Cache {
        ttl: duration(&c.ttl).unwrap_or_default(),
        max_body_bytes: c
            .max_body_bytes
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(1 << 20),
        vary_headers: c
            .vary_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    }
}

/// A rule's fallback: 502, 503 and 504 when `onStatus` is empty.
fn fallback(f: &api::Fallback) -> contract::Fallback {
    let on_status = f
        .on_status
        .iter()
        .filter_map(|c| u16::try_from(c.0).ok())
        .collect::<Vec<_>>();
    contract::Fallback {
        on_status: if on_status.is_empty() {
            vec![502, 503, 504]
        } else {
            on_status
        },
        stale_for: f.stale_for.as_ref().and_then(duration),
        direct_response: f.direct_response.as_ref().map(direct_response),
    }
}

fn duration(d: &portico_api::Duration) -> Option<contract::Duration> {
    d.to_std().map(contract::Duration)
}

/// Like [`duration`], with `0s` meaning "not set" (as in the Gateway API: a zero timeout
/// disables it).
fn nonzero_duration(d: &portico_api::Duration) -> Option<contract::Duration> {
    duration(d).filter(|d| !d.get().is_zero())
}

fn retry(r: &api::Retry) -> contract::RetryPolicy {
    let mut on: Vec<contract::RetryOn> = Vec::new();
    let mut grpc = Vec::new();
    for o in &r.retry_on {
        match o {
            api::RetryOn::FiveXx => on.push(contract::RetryOn::FiveXx),
            api::RetryOn::GatewayError => on.push(contract::RetryOn::GatewayError),
            api::RetryOn::ConnectFailure => on.push(contract::RetryOn::ConnectFailure),
            api::RetryOn::Reset => on.push(contract::RetryOn::Reset),
            // Exactly the listed codes, 4xx included.
            api::RetryOn::RetriableStatusCodes => {
                on.push(contract::RetryOn::RetriableStatusCodes);
            }
            api::RetryOn::GrpcCancelled => grpc.push(1),
            api::RetryOn::GrpcDeadlineExceeded => grpc.push(4),
            api::RetryOn::GrpcResourceExhausted => grpc.push(8),
            api::RetryOn::GrpcUnavailable => grpc.push(14),
        }
    }
    if !grpc.is_empty() {
        on.push(contract::RetryOn::RetriableGrpc);
    }
    if r.retry_on.is_empty() {
        on = vec![
            contract::RetryOn::ConnectFailure,
            contract::RetryOn::Reset,
            contract::RetryOn::GatewayError,
        ];
    }
    on.dedup();
    let mut policy = contract::RetryPolicy {
        attempts: r
            .attempts
            .map_or(2, |a| u32::try_from(a).unwrap_or_default()),
        retry_on: on,
        grpc_status_codes: grpc,
        status_codes: r
            .codes
            .iter()
            .filter_map(|c| u16::try_from(c.0).ok())
            .collect(),
        backoff: contract::Backoff::default(),
        methods: ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]
            .map(str::to_owned)
            .to_vec(),
        budget: contract::RetryBudget::default(),
    };
    if let Some(b) = r.backoff.as_ref().and_then(duration) {
        policy.backoff.base = b;
    }
    if let Some(b) = r.max_backoff.as_ref().and_then(duration) {
        policy.backoff.max = b;
    }
    if policy.backoff.base > policy.backoff.max {
        policy.backoff.max = policy.backoff.base;
    }
    if r.non_idempotent == Some(true) {
        policy.methods.extend(["POST", "PATCH"].map(str::to_owned));
    }
    policy
}

/// The request timeout of a Route rule that sets none: the time to the response's head (a
/// streamed body is not cut), nginx's `proxy_read_timeout` default.
pub const DEFAULT_REQUEST_TIMEOUT: contract::Duration = contract::Duration::from_secs(60);

/// The contract rule for a Route rule. Backend refs become `namespace/service:port` names.
pub fn rule(route_ns: &str, r: &api::RouteRule) -> contract::RouteRule {
    contract::RouteRule {
        name: r.name.clone(),
        matches: r.matches.iter().map(route_match).collect(),
        filters: r
            .filters
            .iter()
            .filter_map(|f| filter(route_ns, f))
            .collect(),
        backends: r
            .backend_refs
            .iter()
            .map(|b| contract::BackendRef {
                backend: backend_name(b.namespace.as_deref().unwrap_or(route_ns), &b.name, b.port),
                weight: b.weight.map_or(1, |w| u32::try_from(w).unwrap_or_default()),
            })
            .collect(),
        // `0s` disables a timeout (as in the Gateway API): no timeout, not an immediate one.
        timeouts: contract::Timeouts {
            // A rule without its own timeouts gets `DEFAULT_REQUEST_TIMEOUT`, so an upstream
            // that never answers cannot hold a client (and the proxy's state) forever; `0s`
            // turns it off, and a rule with only a per-try timeout is bounded by that.
            request: match r
                .timeouts
                .as_ref()
                .map(|t| (&t.request, &t.backend_request))
            {
                Some((Some(d), _)) => nonzero_duration(d),
                Some((None, Some(_))) => None,
                None | Some((None, None)) => Some(DEFAULT_REQUEST_TIMEOUT),
            },
            per_try: r
                .timeouts
                .as_ref()
                .and_then(|t| t.backend_request.as_ref())
                .and_then(nonzero_duration),
        },
        retry: r
            .retry
            .as_ref()
            .filter(|r| r.attempts != Some(0))
            .map(retry),
        max_request_body_bytes: r.max_request_body_bytes.and_then(|n| u64::try_from(n).ok()),
        compression: r.compression.as_ref().map(compression),
        cors: r.cors.as_ref().map(cors),
        rate_limit: r.rate_limit.as_ref().and_then(super::inbound::rate_limit),
        // Filled in when the rule is served: its credentials come from Secrets (see the
        // `credentials` module).
        authentication: None,
        aggregate: r.aggregate.as_ref().map(|a| aggregate(route_ns, a)),
        cache: r.cache.as_ref().map(cache),
        fallback: r.fallback.as_ref().map(fallback),
    }
}

/// The time each backend of an aggregate rule may take when the rule sets none.
pub const DEFAULT_AGGREGATE_TIMEOUT: contract::Duration = contract::Duration::from_secs(5);

/// A rule's aggregate: its backends by their `namespace/service:port` names, like backend refs.
fn aggregate(route_ns: &str, a: &api::Aggregate) -> contract::Aggregate {
    contract::Aggregate {
        backends: a
            .backends
            .iter()
            .map(|b| contract::AggregateBackend {
                backend: backend_name(b.namespace.as_deref().unwrap_or(route_ns), &b.name, b.port),
                path: b.path.clone(),
                key: b.key.clone(),
            })
            .collect(),
        timeout: a
            .timeout
            .as_ref()
            .and_then(nonzero_duration)
            .unwrap_or(DEFAULT_AGGREGATE_TIMEOUT),
    }
}

/// A rule's CORS policy (also a Gateway's default for its Routes' rules).
pub(crate) fn cors(c: &portico_api::common::Cors) -> contract::Cors {
    contract::Cors {
        allow_origins: c.allow_origins.clone(),
        allow_methods: c.allow_methods.iter().map(method).collect(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age: c.max_age.as_ref().and_then(duration),
        allow_credentials: c.allow_credentials.unwrap_or(false),
    }
}

/// A rule's compression: the encodings in the rule's order (all three by default).
fn compression(c: &api::RouteCompression) -> contract::Compression {
    use api::CompressionEncoding as E;
    let encodings = match &c.encodings {
        Some(list) => list
            .iter()
            .map(|e| match e {
                E::Zstd => contract::Encoding::Zstd,
                E::Br => contract::Encoding::Br,
                E::Gzip => contract::Encoding::Gzip,
            })
            .collect(),
        None => vec![
            contract::Encoding::Zstd,
            contract::Encoding::Br,
            contract::Encoding::Gzip,
        ],
    };
    contract::Compression {
        encodings,
        min_bytes: c
            .min_bytes
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(1024),
    }
}

/// Every Service port a Route rule sends to: its backend refs, its aggregate's backends, then
/// its mirrors.
pub fn rule_backend_refs<'a>(
    route_ns: &'a str,
    r: &'a api::RouteRule,
) -> impl Iterator<Item = ServicePort> + 'a {
    let refs = r.backend_refs.iter().map(move |b| {
        ServicePort::new(b.namespace.as_deref().unwrap_or(route_ns), &b.name, b.port)
    });
    let aggregated = r.aggregate.iter().flat_map(|a| &a.backends).map(move |b| {
        ServicePort::new(b.namespace.as_deref().unwrap_or(route_ns), &b.name, b.port)
    });
    let mirrors = r.filters.iter().filter_map(move |f| {
        let b = &f.request_mirror.as_ref()?.backend_ref;
        Some(ServicePort::new(
            b.namespace.as_deref().unwrap_or(route_ns),
            &b.name,
            b.port,
        ))
    });
    refs.chain(aggregated).chain(mirrors)
}

/// Applies a ServicePolicy to a contract backend: protocol, load balancer, outlier detection,
/// connection limits and connect timeout.
pub fn apply_policy(b: &mut contract::Backend, p: &ServicePolicySpec) {
    if let Some(proto) = p.protocol {
        b.protocol = match proto {
            ServiceProtocol::HTTP1 | ServiceProtocol::Opaque => contract::UpstreamProtocol::Http1,
            ServiceProtocol::HTTP2 | ServiceProtocol::GRPC => contract::UpstreamProtocol::Http2,
        };
    }
    if let Some(lb) = &p.load_balancer {
        b.load_balancer = match lb.type_ {
            LoadBalancerType::PeakEWMA => contract::LoadBalancer::P2cEwma,
            LoadBalancerType::RoundRobin => contract::LoadBalancer::RoundRobin,
            LoadBalancerType::ConsistentHash => {
                let ch = lb.consistent_hash.clone().unwrap_or_default();
                let hash_on = if let Some(name) = ch.header {
                    contract::HashOn::Header { name }
                } else if let Some(name) = ch.cookie {
                    contract::HashOn::Cookie { name }
                } else {
                    contract::HashOn::ClientIp
                };
                contract::LoadBalancer::ConsistentHash { hash_on }
            }
        };
    }
    if let Some(od) = &p.outlier_detection {
        let base = od
            .base_ejection_time
            .as_ref()
            .and_then(duration)
            .unwrap_or(contract::Duration::from_secs(30));
        let max = od
            .max_ejection_time
            .as_ref()
            .and_then(duration)
            .unwrap_or(contract::Duration::from_secs(300))
            .max(base);
        b.outlier_detection = Some(contract::OutlierDetection {
            consecutive_failures: od
                .consecutive_failures
                .map_or(5, |n| u32::try_from(n).unwrap_or(1).max(1)),
            base_ejection_time: base,
            max_ejection_time: max,
            max_ejected_percent: od
                .max_ejection_percent
                .map_or(50, |n| u32::try_from(n).unwrap_or_default().min(100)),
        });
    }
    if let Some(c) = &p.connection {
        b.limits.max_connections = c
            .max_connections
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0);
        b.limits.max_pending_requests = c.max_pending_requests.and_then(|n| u32::try_from(n).ok());
        b.connect_timeout = c.connect_timeout.as_ref().and_then(duration);
        b.idle_timeout = c.idle_timeout.as_ref().and_then(duration);
    }
    if let Some(hc) = &p.health_check {
        let interval = hc
            .interval
            .as_ref()
            .and_then(nonzero_duration)
            .unwrap_or(contract::Duration::from_secs(10));
        let timeout = hc
            .timeout
            .as_ref()
            .and_then(nonzero_duration)
            .unwrap_or(contract::Duration::from_secs(1));
        // Admission keeps the timeout under the interval; a check that could outlast its
        // interval is cut to half of it rather than refused by every proxy.
        let timeout = if timeout.get() < interval.get() {
            timeout
        } else {
            contract::Duration(interval.get() / 2)
        };
        b.health_check = Some(contract::HealthCheck {
            path: hc.path.clone(),
            port: hc
                .port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0),
            interval,
            timeout,
            healthy_threshold: hc
                .healthy_threshold
                .map_or(1, |n| u32::try_from(n).unwrap_or(1).max(1)),
            unhealthy_threshold: hc
                .unhealthy_threshold
                .map_or(3, |n| u32::try_from(n).unwrap_or(1).max(1)),
        });
    }
    if let Some(rb) = &p.retry_budget {
        let default = contract::RetryBudget::default();
        b.retry_budget = Some(contract::RetryBudget {
            ratio: rb
                .percent
                .map_or(default.ratio, |p| f64::from(p.clamp(0, 100)) / 100.0),
            min_per_second: rb
                .min_retries_per_second
                .map_or(default.min_per_second, |n| u32::try_from(n).unwrap_or(0)),
            window: rb
                .ttl
                .as_ref()
                .and_then(nonzero_duration)
                .unwrap_or(default.window),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policys_idle_timeout_and_retry_budget_reach_its_backend() {
        let p: ServicePolicySpec = serde_json::from_value(serde_json::json!({
            "targetRef": {"group": "", "kind": "Service", "name": "orders"},
            "connection": {"idleTimeout": "5s"},
            "retryBudget": {"percent": 50, "minRetriesPerSecond": 3, "ttl": "30s"}
        }))
        .unwrap();
        let mut b = crate::index::empty_backend("shop/orders:80".into());
        apply_policy(&mut b, &p);
        assert_eq!(b.idle_timeout, Some(contract::Duration::from_secs(5)));
        assert_eq!(
            b.retry_budget,
            Some(contract::RetryBudget {
                ratio: 0.5,
                min_per_second: 3,
                window: contract::Duration::from_secs(30),
            })
        );
    }

    #[test]
    fn retry_codes_travel_as_written_and_zero_timeouts_disable() {
        let r: api::RouteRule = serde_json::from_value(serde_json::json!({
            "backendRefs": [{"name": "orders", "port": 80}],
            "timeouts": {"request": "0s", "backendRequest": "0s"},
            "retry": {"attempts": 2, "retryOn": ["RetriableStatusCodes"], "codes": [409, 503]}
        }))
        .unwrap();
        let c = rule("shop", &r);
        assert_eq!(
            c.timeouts.request, None,
            "0s is no timeout, not an immediate one"
        );
        assert_eq!(c.timeouts.per_try, None);
        let retry = c.retry.unwrap();
        assert_eq!(
            retry.retry_on,
            vec![contract::RetryOn::RetriableStatusCodes]
        );
        assert_eq!(retry.status_codes, vec![409, 503]);
    }

    #[test]
    fn an_aggregate_names_its_backends_like_backend_refs_with_a_5s_default_timeout() {
        let r: api::RouteRule = serde_json::from_value(serde_json::json!({
            "aggregate": {"backends": [
                {"name": "users", "port": 8080, "path": "/v1/users", "key": "user"},
                {"name": "pay", "namespace": "billing", "port": 80}
            ]}
        }))
        .unwrap();
        let c = rule("shop", &r);
        assert!(c.backends.is_empty());
        let agg = c.aggregate.expect("aggregate");
        assert_eq!(agg.timeout, DEFAULT_AGGREGATE_TIMEOUT);
        assert_eq!(
            agg.backends,
            vec![
                contract::AggregateBackend {
                    backend: "shop/users:8080".into(),
                    path: Some("/v1/users".into()),
                    key: Some("user".into()),
                },
                contract::AggregateBackend {
                    backend: "billing/pay:80".into(),
                    path: None,
                    key: None,
                },
            ]
        );
        let refs: Vec<_> = rule_backend_refs("shop", &r).collect();
        assert_eq!(
            refs,
            vec![
                ServicePort::new("shop", "users", 8080),
                ServicePort::new("billing", "pay", 80)
            ]
        );
    }

    #[test]
    fn a_rule_without_a_request_timeout_gets_the_default() {
        let r: api::RouteRule = serde_json::from_value(serde_json::json!({
            "backendRefs": [{"name": "orders", "port": 80}]
        }))
        .unwrap();
        let c = rule("shop", &r);
        assert_eq!(c.timeouts.request, Some(DEFAULT_REQUEST_TIMEOUT));
        assert_eq!(c.timeouts.per_try, None, "no per-try timeout by default");
        let r: api::RouteRule = serde_json::from_value(serde_json::json!({
            "backendRefs": [{"name": "orders", "port": 80}],
            "timeouts": {"backendRequest": "90s"}
        }))
        .unwrap();
        let c = rule("shop", &r);
        assert_eq!(
            c.timeouts.request, None,
            "each attempt is bounded by its own timeout"
        );
        assert_eq!(c.timeouts.per_try, Some(contract::Duration::from_secs(90)));
    }

    #[test]
    fn route_rules_translate_matches_filters_and_backends() {
        let r: api::RouteRule = serde_json::from_value(serde_json::json!({
            "matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET",
                         "headers": [{"name": "x-env", "value": "prod"}]}],
            "filters": [{"type": "RequestMirror",
                         "requestMirror": {"backendRef": {"name": "shadow", "port": 80}}}],
            "backendRefs": [{"name": "orders", "port": 8080, "weight": 3},
                            {"name": "pay", "namespace": "billing", "port": 80}],
            "timeouts": {"request": "10s"},
            "retry": {"attempts": 3, "retryOn": ["5xx", "GrpcUnavailable"]}
        }))
        .unwrap();
        let c = rule("shop", &r);
        assert_eq!(
            c.matches[0].path,
            Some(contract::PathMatch::PathPrefix("/api".into()))
        );
        assert_eq!(c.matches[0].method.as_deref(), Some("GET"));
        assert_eq!(c.backends[0].backend, "shop/orders:8080");
        assert_eq!(c.backends[0].weight, 3);
        assert_eq!(c.backends[1].backend, "billing/pay:80");
        assert_eq!(c.backends[1].weight, 1);
        assert_eq!(
            c.filters,
            vec![contract::Filter::RequestMirror(contract::Mirror {
                backend: "shop/shadow:80".into(),
                percent: 100,
            })]
        );
        assert_eq!(c.timeouts.request, Some(contract::Duration::from_secs(10)));
        let retry = c.retry.unwrap();
        assert_eq!(retry.attempts, 3);
        assert_eq!(retry.grpc_status_codes, vec![14]);
        let refs: Vec<_> = rule_backend_refs("shop", &r).collect();
        assert_eq!(
            refs,
            vec![
                ServicePort::new("shop", "orders", 8080),
                ServicePort::new("billing", "pay", 80),
                ServicePort::new("shop", "shadow", 80)
            ]
        );
    }
}

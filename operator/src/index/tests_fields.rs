//! Each CRD field reaches the proxy contract (or the object the operator writes) with the value
//! written: the operator half of the proof that no field is without effect (docs/fields.md
//! pairs each with a proxy or end-to-end test for the behaviour).

use serde_json::{Value, json};

use super::*;

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("valid test object")
}

fn rule(v: Value) -> contract::RouteRule {
    translate::rule("shop", &from(v))
}

#[test]
fn every_match_field_reaches_the_contract() {
    let r = rule(json!({
        "matches": [{"path": {"type": "RegularExpression", "value": "/v[0-9]+/.*"},
                     "method": "DELETE",
                     "headers": [{"type": "RegularExpression", "name": "x-env", "value": "pr.*"}],
                     "queryParams": [{"name": "debug", "value": "1"}]},
                    {"path": {"type": "Exact", "value": "/health"}}],
        "backendRefs": [{"name": "orders", "port": 80}]
    }));
    let m = &r.matches[0];
    assert_eq!(
        m.path,
        Some(contract::PathMatch::RegularExpression("/v[0-9]+/.*".into()))
    );
    assert_eq!(m.method.as_deref(), Some("DELETE"));
    assert_eq!(
        (
            m.headers[0].name.as_str(),
            m.headers[0].value.as_str(),
            m.headers[0].kind
        ),
        ("x-env", "pr.*", contract::MatchKind::RegularExpression)
    );
    assert_eq!(
        (
            m.query[0].name.as_str(),
            m.query[0].value.as_str(),
            m.query[0].kind
        ),
        ("debug", "1", contract::MatchKind::Exact)
    );
    assert_eq!(
        r.matches[1].path,
        Some(contract::PathMatch::Exact("/health".into()))
    );
}

#[test]
fn every_filter_field_reaches_the_contract() {
    let r = rule(json!({
        "filters": [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                "set": [{"name": "x-a", "value": "1"}], "add": [{"name": "x-b", "value": "2"}],
                "remove": ["x-c"]}},
            {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                "set": [{"name": "x-d", "value": "3"}], "add": [{"name": "x-e", "value": "4"}],
                "remove": ["server"]}},
            {"type": "URLRewrite", "urlRewrite": {"hostname": "internal.example.com",
                "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}},
            {"type": "RequestMirror", "requestMirror": {
                "backendRef": {"kind": "Service", "name": "shadow", "namespace": "qa", "port": 8080},
                "percent": 25}}
        ],
        "backendRefs": [{"name": "orders", "port": 80}]
    }));
    let header = |n: &str, v: &str| contract::Header {
        name: n.into(),
        value: v.into(),
    };
    assert_eq!(
        r.filters,
        vec![
            contract::Filter::RequestHeaderModifier(contract::HeaderModifier {
                set: vec![header("x-a", "1")],
                add: vec![header("x-b", "2")],
                remove: vec!["x-c".into()],
            }),
            contract::Filter::ResponseHeaderModifier(contract::HeaderModifier {
                set: vec![header("x-d", "3")],
                add: vec![header("x-e", "4")],
                remove: vec!["server".into()],
            }),
            contract::Filter::UrlRewrite(contract::UrlRewrite {
                hostname: Some("internal.example.com".into()),
                path: Some(contract::PathRewrite::ReplacePrefixMatch("/v2".into())),
            }),
            contract::Filter::RequestMirror(contract::Mirror {
                backend: "qa/shadow:8080".into(),
                percent: 25,
            }),
        ]
    );
    let redirect = rule(
        json!({"filters": [{"type": "RequestRedirect", "requestRedirect": {
        "scheme": "https", "hostname": "www.example.com", "port": 8443, "statusCode": 301,
        "path": {"type": "ReplaceFullPath", "replaceFullPath": "/moved"}}}]}),
    );
    assert_eq!(
        redirect.filters,
        vec![contract::Filter::RequestRedirect(contract::Redirect {
            scheme: Some("https".into()),
            hostname: Some("www.example.com".into()),
            port: Some(8443),
            path: Some(contract::PathRewrite::ReplaceFullPath("/moved".into())),
            status_code: Some(301),
        })]
    );
    let direct = rule(
        json!({"filters": [{"type": "DirectResponse", "directResponse": {
        "statusCode": 418, "body": "{\"tea\":1}", "contentType": "application/json"}}]}),
    );
    assert_eq!(
        direct.filters,
        vec![contract::Filter::DirectResponse(contract::DirectResponse {
            status: 418,
            body: "{\"tea\":1}".into(),
            headers: vec![header("content-type", "application/json")],
        })]
    );
}

#[test]
fn every_retry_field_reaches_the_contract() {
    let r = rule(json!({
        "backendRefs": [{"kind": "Service", "name": "orders", "namespace": "shop", "port": 80}],
        "retry": {"attempts": 4, "retryOn": ["ConnectFailure", "GrpcCancelled"],
                  "backoff": "50ms", "maxBackoff": "2s", "nonIdempotent": true}
    }));
    let retry = r.retry.expect("a retry policy");
    assert_eq!(retry.attempts, 4);
    assert_eq!(
        retry.retry_on,
        [
            contract::RetryOn::ConnectFailure,
            contract::RetryOn::RetriableGrpc
        ]
    );
    assert_eq!(retry.grpc_status_codes, [1]);
    assert_eq!(retry.backoff.base, contract::Duration::from_millis(50));
    assert_eq!(retry.backoff.max, contract::Duration::from_secs(2));
    assert!(retry.methods.iter().any(|m| m == "POST"));
    assert!(retry.methods.iter().any(|m| m == "PATCH"));
    let plain = rule(json!({"backendRefs": [{"name": "orders", "port": 80}],
                            "retry": {"attempts": 1}}))
    .retry
    .expect("a retry policy");
    assert!(
        !plain.methods.iter().any(|m| m == "POST"),
        "POST only when asked"
    );
    let none = rule(json!({"backendRefs": [{"name": "orders", "port": 80}],
                           "retry": {"attempts": 0}}));
    assert_eq!(none.retry, None, "attempts 0 turns retries off");
}

#[test]
fn every_cache_and_fallback_field_reaches_the_contract() {
    let r = rule(json!({
        "backendRefs": [{"name": "orders", "port": 80}],
        "cache": {"ttl": "30s", "maxBodyBytes": 4096, "varyHeaders": ["Accept-Language"]},
        "fallback": {"onStatus": [500, 503], "staleFor": "5m",
                     "directResponse": {"statusCode": 503, "body": "later",
                                        "contentType": "application/json"}}
    }));
    let cache = r.cache.expect("a cache");
    assert_eq!(cache.ttl, contract::Duration::from_secs(30));
    assert_eq!(cache.max_body_bytes, 4096);
    assert_eq!(cache.vary_headers, ["accept-language"], "lower-cased");
    let fallback = r.fallback.expect("a fallback");
    assert_eq!(fallback.on_status, [500, 503]);
    assert_eq!(fallback.stale_for, Some(contract::Duration::from_secs(300)));
    let direct = fallback.direct_response.expect("a direct response");
    assert_eq!((direct.status, direct.body.as_str()), (503, "later"));
    assert_eq!(direct.headers[0].value, "application/json");

    let defaults = rule(json!({
        "backendRefs": [{"name": "orders", "port": 80}],
        "cache": {"ttl": "1m"},
        "fallback": {"staleFor": "1m"}
    }));
    assert_eq!(defaults.cache.expect("a cache").max_body_bytes, 1 << 20);
    assert_eq!(
        defaults.fallback.expect("a fallback").on_status,
        [502, 503, 504]
    );
}

fn policy_backend(spec: Value) -> contract::Backend {
    let mut spec = spec;
    spec["targetRef"] = json!({"group": "", "kind": "Service", "name": "orders"});
    let p: portico_api::policy::ServicePolicySpec = from(spec);
    let mut b = empty_backend("shop/orders:80".into());
    translate::apply_policy(&mut b, &p);
    b
}

#[test]
fn every_service_policy_backend_field_reaches_the_contract() {
    let b = policy_backend(json!({
        "protocol": "GRPC",
        "loadBalancer": {"type": "ConsistentHash", "consistentHash": {"cookie": "session"}},
        "outlierDetection": {"consecutiveFailures": 3, "baseEjectionTime": "10s",
                             "maxEjectionTime": "1m", "maxEjectionPercent": 20},
        "connection": {"maxConnections": 7, "maxPendingRequests": 9, "connectTimeout": "3s",
                       "idleTimeout": "20s"}
    }));
    assert_eq!(b.protocol, contract::UpstreamProtocol::Http2);
    assert_eq!(
        b.load_balancer,
        contract::LoadBalancer::ConsistentHash {
            hash_on: contract::HashOn::Cookie {
                name: "session".into()
            }
        }
    );
    assert_eq!(
        b.outlier_detection,
        Some(contract::OutlierDetection {
            consecutive_failures: 3,
            base_ejection_time: contract::Duration::from_secs(10),
            max_ejection_time: contract::Duration::from_secs(60),
            max_ejected_percent: 20,
        })
    );
    assert_eq!(b.limits.max_connections, Some(7));
    assert_eq!(b.limits.max_pending_requests, Some(9));
    assert_eq!(b.connect_timeout, Some(contract::Duration::from_secs(3)));
    assert_eq!(b.idle_timeout, Some(contract::Duration::from_secs(20)));

    let hash = |input: Value| {
        policy_backend(json!({"loadBalancer": {"type": "ConsistentHash", "consistentHash": input}}))
            .load_balancer
    };
    assert_eq!(
        hash(json!({"header": "x-user"})),
        contract::LoadBalancer::ConsistentHash {
            hash_on: contract::HashOn::Header {
                name: "x-user".into()
            }
        }
    );
    assert_eq!(
        hash(json!({"sourceIP": true})),
        contract::LoadBalancer::ConsistentHash {
            hash_on: contract::HashOn::ClientIp
        }
    );
    let lb = |t: &str| policy_backend(json!({"loadBalancer": {"type": t}})).load_balancer;
    assert_eq!(lb("RoundRobin"), contract::LoadBalancer::RoundRobin);
    assert_eq!(lb("PeakEWMA"), contract::LoadBalancer::P2cEwma);
    let proto = |p: &str| policy_backend(json!({"protocol": p})).protocol;
    assert_eq!(proto("HTTP1"), contract::UpstreamProtocol::Http1);
    assert_eq!(proto("HTTP2"), contract::UpstreamProtocol::Http2);
}

#[test]
fn an_opaque_service_policy_makes_sidecars_skip_protocol_detection() {
    let mut index = Index::new();
    index.apply(Object::Service(from(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "shop", "name": "db"},
        "spec": {"ports": [{"port": 5432}], "clusterIP": "198.19.0.20"}
    }))));
    let sub = index.subscribe_mesh();
    let opaque = |sub: &Subscription| sub.routes.borrow().services[0].opaque;
    assert!(!opaque(&sub));
    index.apply(Object::ServicePolicy(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "ServicePolicy",
        "metadata": {"namespace": "shop", "name": "db"},
        "spec": {"targetRef": {"name": "db"}, "protocol": "Opaque"}
    }))));
    assert!(opaque(&sub));
}

#[test]
fn a_rate_limit_s_unit_burst_and_key_reach_the_contract() {
    let rl = |v: Value| inbound::rate_limit(&from(v)).expect("a rate limit");
    let minute = rl(json!({"requests": 60, "unit": "Minute", "burst": 90, "key": "Global"}));
    assert_eq!(
        (minute.requests, minute.period, minute.burst, minute.key),
        (
            60,
            contract::Duration::from_secs(60),
            90,
            contract::RateLimitKey::Global
        )
    );
    let hour = rl(json!({"requests": 5, "unit": "Hour"}));
    assert_eq!(
        (hour.period, hour.burst, hour.key),
        (
            contract::Duration::from_secs(3600),
            5,
            contract::RateLimitKey::ClientIp
        )
    );
}

/// Gateway shop/gw with `listeners`, Route shop/r for `hostnames` to shop/orders:80.
fn attach(listeners: Value, hostnames: Value) -> (Index, Subscription) {
    let mut index = Index::new();
    index.apply(Object::Gateway(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Gateway",
        "metadata": {"namespace": "shop", "name": "gw"},
        "spec": {"listeners": listeners}
    }))));
    index.apply(Object::Route(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
        "metadata": {"namespace": "shop", "name": "r"},
        "spec": {"parentRefs": [{"name": "gw"}], "hostnames": hostnames,
                 "rules": [{"backendRefs": [{"name": "orders", "port": 80}]}]}
    }))));
    let sub = index.subscribe(&Key::new("shop", "gw"));
    (index, sub)
}

#[test]
fn a_listener_hostname_narrows_the_routes_it_takes_and_their_hostnames() {
    let listener = json!([{"name": "api", "port": 8080, "protocol": "HTTP",
                           "hostname": "*.example.com"}]);
    let (_i, sub) = attach(
        listener.clone(),
        json!(["api.example.com", "api.example.org"]),
    );
    let routes = sub.routes.borrow().clone();
    assert_eq!(routes.routes[0].hostnames, ["api.example.com"]);
    assert_eq!(routes.routes[0].listeners, ["api"]);
    // A Route without hostnames takes the listener's.
    let (_i, sub) = attach(listener.clone(), json!([]));
    assert_eq!(sub.routes.borrow().routes[0].hostnames, ["*.example.com"]);
    // No hostname in common: not attached, and the status says why.
    let (index, sub) = attach(listener, json!(["example.org"]));
    assert!(sub.routes.borrow().routes.is_empty());
    let status = index.statuses().borrow().routes[&Key::new("shop", "r")].clone();
    assert_eq!(
        status.parents[0].conditions[0].reason,
        "NoMatchingListenerHostname"
    );
}

#[test]
fn a_listener_s_name_port_and_protocol_reach_the_contract() {
    let (_i, sub) = attach(
        json!([{"name": "public", "port": 9090, "protocol": "HTTP"},
               {"name": "db", "port": 5432, "protocol": "TCP"}]),
        json!([]),
    );
    let routes = sub.routes.borrow().clone();
    let listeners: Vec<(&str, &str, contract::Protocol)> = routes
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.address.as_str(), l.protocol))
        .collect();
    assert_eq!(
        listeners,
        [
            ("public", "0.0.0.0:9090", contract::Protocol::Http),
            ("db", "0.0.0.0:5432", contract::Protocol::Tcp)
        ]
    );
    assert_eq!(routes.routes[0].listeners, ["public"]);
}

#[test]
fn allowed_routes_from_all_takes_routes_from_any_namespace() {
    let mut index = Index::new();
    index.apply(Object::Gateway(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Gateway",
        "metadata": {"namespace": "infra", "name": "gw"},
        "spec": {"listeners": [{"name": "web", "port": 8080, "protocol": "HTTP",
                                "allowedRoutes": {"from": "All"}}]}
    }))));
    index.apply(Object::Route(from(json!({
        "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
        "metadata": {"namespace": "shop", "name": "r"},
        "spec": {"parentRefs": [{"name": "gw", "namespace": "infra"}],
                 "rules": [{"backendRefs": [{"name": "orders", "port": 80}]}]}
    }))));
    let sub = index.subscribe(&Key::new("infra", "gw"));
    assert_eq!(sub.routes.borrow().routes[0].name, "shop/r");
}

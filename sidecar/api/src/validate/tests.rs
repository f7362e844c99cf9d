use crate::*;

const GOOD: &str = r#"
apiVersion: portico.dev/proxy/v1
generation: 3
listeners:
  - { name: web, address: "0.0.0.0:8080", protocol: HTTP }
  - { name: redis, address: "0.0.0.0:6379", protocol: TCP, backend: redis }
routes:
  - name: api
    hostnames: [api.example.com, "*.example.com"]
    rules:
      - matches:
          - path: { type: PathPrefix, value: /v1 }
            method: GET
            headers: [{ name: x-user, value: "^[a-z]+$", type: RegularExpression }]
            query: [{ name: debug, value: "1" }]
        filters:
          - { type: RequestHeaderModifier, set: [{ name: x-env, value: prod }], remove: [x-debug] }
          - { type: UrlRewrite, path: { type: ReplacePrefixMatch, value: /api/v1 } }
          - { type: RequestMirror, backend: shadow }
        backends: [{ backend: pay, weight: 90 }, { backend: shadow, weight: 10 }]
        timeouts: { request: 3s, perTry: 500ms }
        retry:
          attempts: 2
          retryOn: [5xx, connect-failure, retriable-grpc]
          grpcStatusCodes: [14]
          backoff: { base: 10ms, max: 100ms }
      - matches: [{ path: { type: Exact, value: /old } }]
        filters:
          - { type: RequestRedirect, scheme: https, port: 8443, statusCode: 301 }
      - filters:
          - { type: DirectResponse, status: 404, body: "nothing here" }
backends:
  - name: pay
    protocol: http2
    endpoints:
      - { address: "10.0.0.1:80", zone: a }
      - { address: "10.0.0.2:80", ready: false, weight: 2 }
    loadBalancer: { type: ConsistentHash, hashOn: { type: Header, name: x-user } }
    outlierDetection: { consecutiveFailures: 5, baseEjectionTime: 30s }
    limits: { maxConnections: 100, maxPendingRequests: 10 }
  - name: shadow
    endpoints: [{ address: "10.0.1.1:80" }]
  - name: redis
    endpoints: [{ address: "10.0.2.1:6379" }]
"#;

fn good() -> ProxyConfig {
    serde_yaml::from_str(GOOD).expect("the example parses")
}

fn err(cfg: &ProxyConfig) -> String {
    cfg.validate()
        .expect_err("config should be refused")
        .to_string()
}

#[test]
fn a_complete_config_parses_and_validates() {
    let cfg = good();
    cfg.validate().unwrap();
    assert_eq!(cfg.generation, 3);
    assert_eq!(
        cfg.routes[0].rules[0].timeouts.per_try,
        Some(Duration::from_millis(500))
    );
    assert_eq!(
        cfg.backends[0].load_balancer,
        LoadBalancer::ConsistentHash {
            hash_on: HashOn::Header {
                name: "x-user".into()
            }
        }
    );
    assert!(!cfg.backends[0].endpoints[1].ready);
    assert_eq!(cfg.backends[1].protocol, UpstreamProtocol::Http1);
}

#[test]
fn config_round_trips_through_json() {
    let cfg = good();
    let json = serde_json::to_string(&cfg).unwrap();
    let back: ProxyConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(cfg, back);
}

#[test]
fn routes_and_backends_split_and_join() {
    let cfg = good();
    let (routes, backends) = cfg.clone().into_parts();
    assert!(routes.listeners.len() == 2 && backends.backends.len() == 3);
    assert_eq!(ProxyConfig::from_parts(routes, backends), cfg);
}

#[test]
fn undefined_backend_is_named_with_route_and_rule() {
    let mut cfg = good();
    cfg.routes[0].rules[1].backends = vec![BackendRef {
        backend: "nope".into(),
        weight: 1,
    }];
    assert_eq!(
        err(&cfg),
        r#"route "api" rule 2: backend "nope" is not defined"#
    );
}

#[test]
fn duplicate_names_are_refused() {
    let mut cfg = good();
    cfg.backends[1].name = "pay".into();
    assert_eq!(err(&cfg), r#"backend "pay": name is used twice"#);
    let mut cfg = good();
    let again = cfg.routes[0].clone();
    cfg.routes.push(again);
    assert_eq!(err(&cfg), r#"route "api": name is used twice"#);
    let mut cfg = good();
    cfg.listeners[1].name = "web".into();
    assert_eq!(err(&cfg), r#"listener "web": name is used twice"#);
}

#[test]
fn bad_regex_is_refused_with_its_match() {
    let mut cfg = good();
    cfg.routes[0].rules[0].matches[0].headers[0].value = "([a-z".into();
    let e = err(&cfg);
    assert!(
        e.starts_with(r#"route "api" rule 1 match 1: regex "([a-z" does not compile"#),
        "{e}"
    );
}

#[test]
fn all_zero_weights_are_refused() {
    let mut cfg = good();
    for b in &mut cfg.routes[0].rules[0].backends {
        b.weight = 0;
    }
    assert_eq!(
        err(&cfg),
        r#"route "api" rule 1: every backend has weight 0"#
    );
}

#[test]
fn bad_addresses_and_ports_are_refused() {
    let mut cfg = good();
    cfg.listeners[0].address = "localhost:80".into();
    assert_eq!(
        err(&cfg),
        r#"listener "web": address "localhost:80" is not IP:PORT"#
    );
    let mut cfg = good();
    cfg.backends[2].endpoints[0].address = "10.0.0.9:0".into();
    assert_eq!(
        err(&cfg),
        r#"backend "redis" endpoint 1: port 0 is not a valid endpoint port"#
    );
    let mut cfg = good();
    cfg.listeners[1].address = "0.0.0.0:8080".into();
    assert_eq!(
        err(&cfg),
        r#"listener "redis": address 0.0.0.0:8080 is used by another listener"#
    );
}

#[test]
fn listener_protocol_rules_are_enforced() {
    let mut cfg = good();
    cfg.listeners[0].protocol = Protocol::Https;
    assert_eq!(err(&cfg), r#"listener "web": protocol HTTPS needs tls"#);
    let mut cfg = good();
    cfg.listeners[1].backend = Some("missing".into());
    assert_eq!(
        err(&cfg),
        r#"listener "redis": backend "missing" is not defined"#
    );
    let mut cfg = good();
    cfg.routes[0].listeners = vec!["redis".into()];
    assert_eq!(
        err(&cfg),
        r#"route "api": listener "redis" is TCP and cannot carry routes"#
    );
    // Weighted backends instead of one: defined ones only, not both, TCP only.
    let weighted = |name: &str| BackendRef {
        backend: name.into(),
        weight: 1,
    };
    let mut cfg = good();
    cfg.listeners[1].backend = None;
    cfg.listeners[1].backends = vec![weighted("pay"), weighted("shadow")];
    cfg.validate().expect("weighted TCP backends");
    cfg.listeners[1].backends.push(weighted("missing"));
    assert_eq!(
        err(&cfg),
        r#"listener "redis": backend "missing" is not defined"#
    );
    let mut cfg = good();
    cfg.listeners[1].backends = vec![weighted("pay")];
    assert_eq!(
        err(&cfg),
        r#"listener "redis": give backend or backends, not both"#
    );
    let mut cfg = good();
    cfg.listeners[0].backends = vec![weighted("pay")];
    assert_eq!(
        err(&cfg),
        r#"listener "web": backends is only allowed with protocol TCP; use routes"#
    );
}

#[test]
fn rule_without_backends_needs_a_filter_that_answers() {
    let mut cfg = good();
    cfg.routes[0].rules[2].filters.clear();
    assert_eq!(
        err(&cfg),
        r#"route "api" rule 3: has no backends and no redirect or direct response"#
    );
}

#[test]
fn prefix_rewrite_needs_a_prefix_match() {
    let mut cfg = good();
    cfg.routes[0].rules[0].matches[0].path = Some(PathMatch::Exact("/v1".into()));
    let e = err(&cfg);
    assert!(
        e.starts_with(r#"route "api" rule 1 filter 2: ReplacePrefixMatch"#),
        "{e}"
    );
}

#[test]
fn bad_hostnames_and_statuses_are_refused() {
    let mut cfg = good();
    cfg.routes[0].hostnames.push("foo.*.com".into());
    assert!(err(&cfg).contains(r#"hostname "foo.*.com""#));
    let mut cfg = good();
    cfg.routes[0].rules[1].filters[0] = Filter::RequestRedirect(Redirect {
        status_code: Some(200),
        ..Default::default()
    });
    assert_eq!(
        err(&cfg),
        r#"route "api" rule 2 filter 1: status 200 is not a redirect status"#
    );
}

#[test]
fn wrong_api_version_is_refused() {
    let mut cfg = good();
    cfg.api_version = "portico.dev/proxy/v0".into();
    assert!(err(&cfg).starts_with("config: apiVersion"));
}

#[test]
fn unknown_fields_are_refused_when_parsing() {
    let e = serde_yaml::from_str::<ProxyConfig>("listeners: []\nroutez: []\n").unwrap_err();
    assert!(e.to_string().contains("routez"), "{e}");
}

#[test]
fn outlier_and_retry_bounds_are_checked() {
    let mut cfg = good();
    cfg.backends[0]
        .outlier_detection
        .as_mut()
        .unwrap()
        .max_ejected_percent = 150;
    assert_eq!(
        err(&cfg),
        r#"backend "pay" outlierDetection: maxEjectedPercent must be 0–100"#
    );
    let mut cfg = good();
    cfg.routes[0].rules[0]
        .retry
        .as_mut()
        .unwrap()
        .grpc_status_codes = vec![99];
    assert_eq!(
        err(&cfg),
        r#"route "api" rule 1 retry: 99 is not a gRPC status code"#
    );
}

#[test]
fn an_aggregate_rule_validates_and_its_bad_shapes_are_refused() {
    let mut cfg = good();
    let agg: RouteRule = serde_yaml::from_str(
        r#"
aggregate:
  backends:
    - { backend: pay, path: /users }
    - { backend: shadow, key: orders }
"#,
    )
    .expect("parses");
    assert_eq!(
        agg.aggregate.as_ref().map(|a| a.timeout),
        Some(Duration::from_secs(5)),
        "the timeout defaults to 5s"
    );
    cfg.routes[0].rules.push(agg);
    cfg.validate()
        .expect("an aggregate rule without backends is valid");
    let refused = |edit: &dyn Fn(&mut RouteRule)| {
        let mut cfg = cfg.clone();
        edit(cfg.routes[0].rules.last_mut().expect("rule"));
        err(&cfg)
    };
    assert_eq!(
        refused(&|r| r.backends = vec![BackendRef {
            backend: "pay".into(),
            weight: 1
        }]),
        r#"route "api" rule 4: has both backends and an aggregate"#
    );
    assert_eq!(
        refused(
            &|r| r.aggregate.as_mut().expect("aggregate").backends[0].key = Some("orders".into())
        ),
        r#"route "api" rule 4 aggregate backend 2: key "orders" is used twice"#
    );
    assert_eq!(
        refused(&|r| r.aggregate.as_mut().expect("aggregate").backends[1].backend = "gone".into()),
        r#"route "api" rule 4 aggregate backend 2: backend "gone" is not defined"#
    );
    assert_eq!(
        refused(
            &|r| r.aggregate.as_mut().expect("aggregate").backends[0].path = Some("/u?x=1".into())
        ),
        r#"route "api" rule 4 aggregate backend 1: path "/u?x=1" is not an absolute path without query"#
    );
    assert_eq!(
        refused(&|r| r.aggregate.as_mut().expect("aggregate").backends.clear()),
        r#"route "api" rule 4 aggregate: has 0 backends, not 1–8"#
    );
    assert_eq!(
        refused(&|r| r.filters = vec![Filter::RequestMirror(Mirror {
            backend: "pay".into(),
            percent: 100
        })]),
        r#"route "api" rule 4: has an aggregate and a request mirror"#
    );
}

#[test]
fn cache_and_fallback_parse_with_defaults_and_bad_values_are_refused() {
    let rule: RouteRule = serde_yaml::from_str(
        "backends: [{ backend: pay }]\n\
         cache: { ttl: 30s }\n\
         fallback: { staleFor: 1m }\n",
    )
    .expect("parses");
    let cache = rule.cache.as_ref().expect("cache");
    assert_eq!(cache.max_body_bytes, 1 << 20, "1 MiB by default");
    assert_eq!(
        rule.fallback.as_ref().expect("fallback").on_status,
        [502, 503, 504]
    );

    let mut cfg = good();
    cfg.routes[0].rules[0].cache = Some(Cache {
        vary_headers: vec!["bad header".into()],
        ..cache.clone()
    });
    assert_eq!(
        err(&cfg),
        r#"route "api" rule 1 cache: header name "bad header" is not a valid token"#
    );
    let mut cfg = good();
    cfg.routes[0].rules[0].fallback = Some(Fallback {
        on_status: vec![404],
        ..rule.fallback.clone().expect("fallback")
    });
    assert_eq!(
        err(&cfg),
        r#"route "api" rule 1 fallback: 404 is not a 5xx status"#
    );
    let mut cfg = good();
    cfg.routes[0].rules[2].fallback = rule.fallback.clone();
    assert_eq!(
        err(&cfg),
        r#"route "api" rule 3 fallback: has no backends whose failures it masks"#
    );
    let mut cfg = good();
    cfg.routes[0].rules[0].fallback = Some(Fallback {
        stale_for: None,
        ..rule.fallback.clone().expect("fallback")
    });
    assert_eq!(
        err(&cfg),
        r#"route "api" rule 1 fallback: sets neither staleFor nor directResponse"#
    );
}

#[test]
fn a_rule_limit_kept_in_a_store_needs_an_address_a_prefix_and_a_short_timeout() {
    let with_store = |store: &str| {
        let mut cfg = good();
        let yaml = format!("{{ requests: 5, period: 1s, burst: 5, store: {store} }}");
        cfg.routes[0].rules[0].rate_limit = Some(serde_yaml::from_str(&yaml).expect(&yaml));
        cfg
    };
    let ok = with_store("{ address: 'redis.cache:6379', prefix: p, timeout: 50ms }");
    ok.validate()
        .expect("a store with address, prefix and timeout");
    let store = ok.routes[0].rules[0]
        .rate_limit
        .as_ref()
        .unwrap()
        .store
        .as_ref();
    assert!(!store.unwrap().fail_open, "fails closed unless it says");
    with_store("{ address: '[fd00::5]:6379', prefix: p, timeout: 10s, failOpen: true }")
        .validate()
        .expect("an IPv6 address");
    for (store, want) in [
        (
            "{ address: redis, prefix: p, timeout: 50ms }",
            "is not host:port",
        ),
        (
            "{ address: 'redis:0', prefix: p, timeout: 50ms }",
            "is not host:port",
        ),
        (
            "{ address: ':6379', prefix: p, timeout: 50ms }",
            "is not host:port",
        ),
        (
            "{ address: 'redis:6379', prefix: '', timeout: 50ms }",
            "prefix must be",
        ),
        (
            "{ address: 'redis:6379', prefix: p, timeout: 0s }",
            "timeout must be",
        ),
        (
            "{ address: 'redis:6379', prefix: p, timeout: 11s }",
            "timeout must be",
        ),
    ] {
        let e = err(&with_store(store));
        assert!(
            e.contains("rateLimit store") && e.contains(want),
            "{store}: {e}"
        );
    }
}

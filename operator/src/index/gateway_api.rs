//! The Gateway API's kinds, translated into Portico's own model on arrival, so every data-plane
//! feature serves both and one code path attaches, routes and reports.
//!
//! ```text
//!  GatewayClass (controllerName portico.dev/gateway-controller) ─┐
//!  gateway.networking.k8s.io Gateway ──gateway()──► portico Gateway  (supported listeners)
//!  HTTPRoute ──http_route()──► portico Route ─┐
//!  GRPCRoute ──grpc_route()──► portico Route ─┴─► RouteEntry (origin: HTTPRoute / GRPCRoute)
//! ```
//!
//! The shapes are the Gateway API's in both, so most of a rule is carried over as it is; what
//! Portico's model cannot express (a filter type, a backend kind, a field of an experimental
//! channel) is kept as a problem that the route's status reports (`Accepted=False`,
//! `UnsupportedValue`), and such a route is not served. A Gateway API Gateway and a Portico
//! Gateway share one name space (their proxies are named after them): when both exist with one
//! name, Portico's is served and the other reports the conflict.

use std::collections::BTreeMap;

use kube::ResourceExt;
use kube::api::ObjectMeta;
use portico_api::gateway::{Listener, ListenerProtocol, ListenerTls};
use portico_api::gateway_api::{
    ApiGateway, ApiListener, ApiParentRef, GatewayClass, GrpcRoute, HttpBackendRef, HttpRoute,
    HttpRouteFilter, RouteGroupKind,
};
use portico_api::grant::GATEWAY_API_GROUP;
use portico_api::route::{ParentKind, ParentReference};
use portico_api::{Gateway, GatewaySpec, Route, RouteSpec};
use serde_json::{Value, json};

use portico_api::RoutePolicy;
use portico_api::gateway::GatewayDefaults;
use portico_api::route_policy::TargetKind;

use super::grants::GroupKind;

/// The Gateway API's Gateway, as grants and parent refs name it.
pub(super) const API_GATEWAY: GroupKind = GroupKind {
    group: GATEWAY_API_GROUP,
    kind: "Gateway",
};
/// The Gateway API's HTTPRoute.
pub(super) const HTTPROUTE: GroupKind = GroupKind {
    group: GATEWAY_API_GROUP,
    kind: "HTTPRoute",
};
/// The Gateway API's GRPCRoute.
pub(super) const GRPCROUTE: GroupKind = GroupKind {
    group: GATEWAY_API_GROUP,
    kind: "GRPCRoute",
};

/// Portico's RoutePolicy, as grants name the referrer of a credential Secret it names.
pub(super) const ROUTE_POLICY: GroupKind = GroupKind {
    group: portico_api::GROUP,
    kind: "RoutePolicy",
};

/// A Gateway API route as watched, kept so it can be translated again when the RoutePolicies
/// attached to it change.
#[derive(Clone, Debug)]
pub(crate) enum ApiSource {
    /// An HTTPRoute.
    Http(Box<HttpRoute>),
    /// A GRPCRoute.
    Grpc(Box<GrpcRoute>),
}

impl ApiSource {
    /// The route's kind, as policies target it.
    pub(super) fn target_kind(&self) -> TargetKind {
        match self {
            Self::Http(_) => TargetKind::HTTPRoute,
            Self::Grpc(_) => TargetKind::GRPCRoute,
        }
    }

    /// The route's kind, as grants and keys name it.
    pub(super) fn kind(&self) -> GroupKind {
        match self {
            Self::Http(_) => HTTPROUTE,
            Self::Grpc(_) => GRPCROUTE,
        }
    }

    /// Translates the route, with the policies `policy` finds for each target (rule names
    /// first, then the whole route) filled into its rules.
    pub(super) fn translate<'a>(
        &self,
        policy: impl Fn(Option<&str>) -> Option<&'a RoutePolicy>,
    ) -> ApiRoute {
        let mut t = match self {
            Self::Http(r) => http_route(r),
            Self::Grpc(r) => grpc_route(r),
        };
        let whole = policy(None);
        for rule in &mut t.route.spec.rules {
            let own = rule.name.as_deref().and_then(|n| policy(Some(n)));
            let pick =
                |f: fn(&RoutePolicy) -> bool| own.filter(|p| f(p)).or(whole.filter(|p| f(p)));
            if let Some(p) = pick(|p| p.spec.authentication.is_some()) {
                rule.authentication.clone_from(&p.spec.authentication);
            }
            if let Some(p) = pick(|p| p.spec.rate_limit.is_some()) {
                rule.rate_limit.clone_from(&p.spec.rate_limit);
            }
            // The route's own CORS filter is more specific than a policy attached to it.
            if let Some(p) = pick(|p| p.spec.cors.is_some()).filter(|_| rule.cors.is_none()) {
                rule.cors.clone_from(&p.spec.cors);
            }
            if let Some(p) = pick(|p| p.spec.cache.is_some()) {
                rule.cache.clone_from(&p.spec.cache);
            }
            if let Some(p) = pick(|p| p.spec.fallback.is_some()) {
                rule.fallback.clone_from(&p.spec.fallback);
            }
        }
        t
    }
}

/// The defaults a RoutePolicy targeting a whole Gateway gives every rule on it.
pub(super) fn gateway_defaults(p: &RoutePolicy) -> GatewayDefaults {
    GatewayDefaults {
        authentication: p.spec.authentication.clone(),
        rate_limit: p.spec.rate_limit.clone(),
        cors: p.spec.cors.clone(),
    }
}

/// The Gateway API features Portico supports, as `GatewayClass.status.supportedFeatures` names
/// them (sorted, as the spec asks).
pub const SUPPORTED_FEATURES: &[&str] = &[
    "GRPCRoute",
    "GRPCRouteNamedRouteRule",
    "Gateway",
    "GatewayAddressEmpty",
    "GatewayHTTPListenerIsolation",
    "GatewayPort8080",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteBackendTimeout",
    "HTTPRouteCORS",
    "HTTPRouteDestinationPortMatching",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRouteNamedRouteRule",
    "HTTPRouteParentRefPort",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteSchemeRedirect",
    "ReferenceGrant",
];

/// Whether `class` names Portico's controller.
pub(super) fn is_ours(class: &GatewayClass) -> bool {
    class.spec.controller_name == portico_api::gateway_api::CONTROLLER_NAME
}

/// The index key of a Gateway API route: its namespace, and its name behind the kind
/// (`httproute:name`), so an HTTPRoute, a GRPCRoute and a Portico Route of one name are three
/// routes. Kubernetes names never hold `:`, so no Portico Route's key can look like this.
pub fn route_key(kind: GroupKind, namespace: &str, name: &str) -> super::Key {
    super::Key::new(
        namespace,
        format!("{}:{name}", kind.kind.to_ascii_lowercase()),
    )
}

/// The kind and real key of a route index key made by [`route_key`]; `None` for Portico's own.
pub fn split_route_key(key: &super::Key) -> Option<(GroupKind, super::Key)> {
    let (kind, name) = key.name.split_once(':')?;
    let kind = match kind {
        "httproute" => HTTPROUTE,
        "grpcroute" => GRPCROUTE,
        _ => return None,
    };
    Some((kind, super::Key::new(&key.namespace, name)))
}

/// Why a listener of a Gateway API Gateway is not served: its `Accepted` reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ListenerProblem {
    /// `UnsupportedProtocol`, …
    pub reason: &'static str,
    /// Says what is unsupported.
    pub message: String,
}

/// A Gateway API Gateway as the index keeps it: the object, and its translation.
#[derive(Debug)]
pub(crate) struct ApiGatewayEntry {
    /// The object as watched (its status is the current one).
    pub api: ApiGateway,
    /// The Portico Gateway its supported listeners make.
    pub translated: Gateway,
    /// The listeners left out, by name.
    pub refused: BTreeMap<String, ListenerProblem>,
    /// Listeners whose `allowedRoutes.kinds` name kinds Portico does not serve, by name: their
    /// `ResolvedRefs` is `InvalidRouteKinds`.
    pub invalid_kinds: BTreeMap<String, String>,
}

impl ApiGatewayEntry {
    /// Translates `api`.
    pub(super) fn new(api: ApiGateway) -> Self {
        let mut refused = BTreeMap::new();
        let mut invalid_kinds = BTreeMap::new();
        let mut listeners = Vec::new();
        for l in &api.spec.listeners {
            let bad_kinds: Vec<String> = l
                .allowed_routes
                .iter()
                .flat_map(|a| &a.kinds)
                .filter(|k| route_kind(k).is_none())
                .map(|k| k.kind.clone())
                .collect();
            if !bad_kinds.is_empty() {
                invalid_kinds.insert(
                    l.name.clone(),
                    format!("route kinds not served: {}", bad_kinds.join(", ")),
                );
            }
            match listener(l).and_then(|t| no_conflict(&listeners, t)) {
                Ok(t) => listeners.push(t),
                Err(p) => {
                    refused.insert(l.name.clone(), p);
                }
            }
        }
        let translated = Gateway {
            metadata: ObjectMeta {
                name: api.metadata.name.clone(),
                namespace: api.metadata.namespace.clone(),
                uid: api.metadata.uid.clone(),
                generation: api.metadata.generation,
                labels: api.metadata.labels.clone(),
                ..ObjectMeta::default()
            },
            spec: GatewaySpec {
                listeners,
                ..GatewaySpec::default()
            },
            status: None,
        };
        Self {
            api,
            translated,
            refused,
            invalid_kinds,
        }
    }

    /// The API listener called `name`.
    pub(super) fn listener(&self, name: &str) -> Option<&ApiListener> {
        self.api.spec.listeners.iter().find(|l| l.name == name)
    }
}

/// The `Conflicted` reasons: a listener that has one is refused, and says so.
pub(super) const CONFLICTS: [&str; 2] = ["ProtocolConflict", "HostnameConflict"];

/// `l`, unless an earlier served listener on its port speaks another protocol
/// (`ProtocolConflict`) or takes the same hostname (`HostnameConflict`). The earlier one keeps
/// the port, so adding a conflicting listener never takes a working one down.
fn no_conflict(earlier: &[Listener], l: Listener) -> Result<Listener, ListenerProblem> {
    for e in earlier.iter().filter(|e| e.port == l.port) {
        if e.protocol != l.protocol {
            return Err(ListenerProblem {
                reason: CONFLICTS[0],
                message: format!(
                    "port {} is listener {}'s, with protocol {:?}",
                    l.port, e.name, e.protocol
                ),
            });
        }
        if e.hostname == l.hostname {
            return Err(ListenerProblem {
                reason: CONFLICTS[1],
                message: format!(
                    "listener {} already takes {} on port {}",
                    e.name,
                    l.hostname.as_deref().unwrap_or("every hostname"),
                    l.port
                ),
            });
        }
    }
    Ok(l)
}

/// The route kind a listener's `allowedRoutes.kinds` entry names, if Portico serves it.
fn route_kind(k: &RouteGroupKind) -> Option<GroupKind> {
    if k.group.as_deref().unwrap_or(GATEWAY_API_GROUP) != GATEWAY_API_GROUP {
        return None;
    }
    match k.kind.as_str() {
        "HTTPRoute" => Some(HTTPROUTE),
        "GRPCRoute" => Some(GRPCROUTE),
        _ => None,
    }
}

/// The route kinds a listener takes: its `allowedRoutes.kinds` that Portico serves, or both
/// HTTP kinds when it names none.
pub(super) fn listener_kinds(l: &ApiListener) -> Vec<GroupKind> {
    let named: Vec<RouteGroupKind> = l
        .allowed_routes
        .iter()
        .flat_map(|a| a.kinds.clone())
        .collect();
    if named.is_empty() {
        return vec![HTTPROUTE, GRPCROUTE];
    }
    named.iter().filter_map(route_kind).collect()
}

/// One listener in Portico's model, or why it cannot be served.
fn listener(l: &ApiListener) -> Result<Listener, ListenerProblem> {
    let unsupported = |what: String| ListenerProblem {
        reason: "UnsupportedProtocol",
        message: what,
    };
    let protocol = match l.protocol.as_str() {
        "HTTP" => ListenerProtocol::HTTP,
        "HTTPS" => ListenerProtocol::HTTPS,
        other => {
            return Err(unsupported(format!(
                "protocol {other} is not served (HTTP and HTTPS are)"
            )));
        }
    };
    let tls = match (&l.tls, protocol) {
        (Some(tls), ListenerProtocol::HTTPS) => {
            if tls.mode.as_deref().unwrap_or("Terminate") != "Terminate" {
                return Err(unsupported(
                    "TLS mode Passthrough is not served on HTTPS listeners".to_owned(),
                ));
            }
            // A ref to anything but a core Secret cannot be a certificate: the listener keeps
            // no refs, so it reports `InvalidCertificateRef` and is not served.
            let all_secrets = tls.certificate_refs.iter().all(|r| {
                r.group.as_deref().unwrap_or("").is_empty()
                    && r.kind.as_deref().unwrap_or("Secret") == "Secret"
            });
            let refs: Vec<Value> = tls
                .certificate_refs
                .iter()
                .filter(|_| all_secrets)
                .map(|r| json!({"name": r.name, "namespace": r.namespace}))
                .collect();
            Some(
                serde_json::from_value::<ListenerTls>(json!({ "certificateRefs": refs })).map_err(
                    |e| ListenerProblem {
                        reason: "Invalid",
                        message: format!("tls: {e}"),
                    },
                )?,
            )
        }
        (None, ListenerProtocol::HTTPS) => {
            return Err(ListenerProblem {
                reason: "Invalid",
                message: "an HTTPS listener needs tls.certificateRefs".to_owned(),
            });
        }
        _ => None,
    };
    Ok(Listener {
        name: l.name.clone(),
        port: l.port,
        protocol,
        hostname: l.hostname.clone(),
        tls,
        // Namespaces and kinds are checked against the API listener itself (selectors with
        // expressions, kinds), in the `attach` module.
        allowed_routes: None,
    })
}

/// A Gateway API route translated into Portico's Route.
pub(crate) struct ApiRoute {
    /// The translation (metadata, spec); the real name, not the index key.
    pub route: Route,
    /// The parent refs as written, one per entry of `route.spec.parent_refs`.
    pub parents: Vec<ApiParentRef>,
    /// What Portico's model cannot express; the route is then not served.
    pub unsupported: Vec<String>,
    /// Backend refs of kinds Portico cannot send to (the rule answers 500), by message.
    pub invalid_kinds: Vec<String>,
    /// The status on the object.
    pub status: Option<portico_api::gateway_api::ApiRouteStatus>,
}

fn meta(m: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        generation: m.generation,
        // The tie-break between routes of equal precedence (the `routes` module).
        creation_timestamp: m.creation_timestamp.clone(),
        ..ObjectMeta::default()
    }
}

/// Parent refs Portico can follow (a Gateway API Gateway, or a core Service for the mesh), and
/// the refs as written.
fn parents(refs: &[ApiParentRef]) -> (Vec<ParentReference>, Vec<ApiParentRef>) {
    let mut out = Vec::new();
    let mut written = Vec::new();
    for p in refs {
        let group = p.group.as_deref().unwrap_or(GATEWAY_API_GROUP);
        let kind = p.kind.as_deref().unwrap_or("Gateway");
        let kind = match (group, kind) {
            (GATEWAY_API_GROUP, "Gateway") => ParentKind::Gateway,
            ("", "Service") => ParentKind::Service,
            // Another kind of parent is another controller's business.
            _ => continue,
        };
        out.push(ParentReference {
            kind,
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            section_name: p.section_name.clone(),
            port: p.port,
        });
        written.push(p.clone());
    }
    (out, written)
}

/// The JSON of one backend ref in Portico's shape, or why it names a kind Portico cannot use.
fn backend_ref(b: &HttpBackendRef, unsupported: &mut Vec<String>) -> Result<Value, String> {
    let group = b.backend.group.as_deref().unwrap_or("");
    let kind = b.backend.kind.as_deref().unwrap_or("Service");
    if !group.is_empty() || kind != "Service" {
        return Err(format!(
            "backendRef {}: kind {}{kind} is not supported (Service is)",
            b.backend.name,
            if group.is_empty() {
                String::new()
            } else {
                format!("{group}/")
            }
        ));
    }
    if !b.filters.is_empty() {
        unsupported.push(format!(
            "backendRef {}: filters on a backend ref are not supported",
            b.backend.name
        ));
    }
    Ok(json!({
        "name": b.backend.name,
        "namespace": b.backend.namespace,
        "port": b.backend.port.unwrap_or(0),
        "weight": b.weight.unwrap_or(1),
    }))
}

/// The JSON of one filter in Portico's shape; Portico's filters are the Gateway API's (plus
/// `DirectResponse`), so the known ones carry over.
fn filter(f: &HttpRouteFilter, unsupported: &mut Vec<String>) -> Option<Value> {
    let mut v = serde_json::to_value(HttpRouteFilter {
        other: BTreeMap::new(),
        ..f.clone()
    })
    .ok()?;
    match f.type_.as_str() {
        "RequestHeaderModifier" | "ResponseHeaderModifier" | "URLRewrite" | "RequestRedirect" => {
            Some(v)
        }
        // A rule's CORS policy, not a filter in Portico's model: see `rule_cors`.
        "CORS" => None,
        "RequestMirror" => {
            let m = f.request_mirror.as_ref()?;
            let group = m.backend_ref.group.as_deref().unwrap_or("");
            let kind = m.backend_ref.kind.as_deref().unwrap_or("Service");
            if !group.is_empty() || kind != "Service" {
                unsupported.push(format!("RequestMirror to kind {kind} is not supported"));
                return None;
            }
            let percent = match (&m.percent, &m.fraction) {
                (Some(p), _) => Some(*p),
                (None, Some(f)) => {
                    let d = f.denominator.unwrap_or(100).max(1);
                    Some(((i64::from(f.numerator) * 100) / i64::from(d)) as i32)
                }
                (None, None) => None,
            };
            v["requestMirror"] = json!({
                "backendRef": {"name": m.backend_ref.name, "namespace": m.backend_ref.namespace,
                               "port": m.backend_ref.port.unwrap_or(0)},
                "percent": percent,
            });
            Some(v)
        }
        other => {
            unsupported.push(format!("filter type {other} is not supported"));
            None
        }
    }
}

/// The backend refs and filters of one rule; a rule whose refs all name kinds Portico cannot
/// use answers 500 (as the Gateway API asks), its invalid refs reported.
fn rule_common(
    filters: &[HttpRouteFilter],
    refs: &[HttpBackendRef],
    unsupported: &mut Vec<String>,
    invalid_kinds: &mut Vec<String>,
) -> (Vec<Value>, Vec<Value>) {
    let mut fs: Vec<Value> = filters
        .iter()
        .filter_map(|f| filter(f, unsupported))
        .collect();
    let mut bs = Vec::new();
    let mut invalid = false;
    for b in refs {
        match backend_ref(b, unsupported) {
            Ok(v) => bs.push(v),
            Err(e) => {
                invalid = true;
                invalid_kinds.push(e);
            }
        }
    }
    let answers = filters
        .iter()
        .any(|f| f.type_ == "RequestRedirect" || f.type_ == "DirectResponse");
    if bs.is_empty() && !invalid && !answers {
        // A rule that forwards nowhere answers 500, as the Gateway API asks (not 404: the
        // request matched).
        fs.push(json!({"type": "DirectResponse",
                       "directResponse": {"statusCode": 500, "body": "no backend\n",
                                          "contentType": "text/plain"}}));
        return (fs, bs);
    }
    if invalid {
        // Sending the valid share on would still fail the invalid share's requests; the Gateway
        // API asks for 500 for those, and a rule cannot answer part of its traffic itself, so
        // the whole rule answers 500 (the same choice as for a refused cross-namespace ref).
        bs.clear();
        fs = vec![json!({"type": "DirectResponse",
                         "directResponse": {"statusCode": 500,
                                            "body": "backend reference of an unsupported kind\n",
                                            "contentType": "text/plain"}})];
    }
    (fs, bs)
}

/// The rule's CORS policy in Portico's shape, from its `CORS` filter (the CRD allows one).
/// The API's `maxAge` defaults to 5 seconds.
fn rule_cors(filters: &[HttpRouteFilter], unsupported: &mut Vec<String>) -> Value {
    let Some(c) = filters
        .iter()
        .find(|f| f.type_ == "CORS")
        .and_then(|f| f.cors.as_ref())
    else {
        return Value::Null;
    };
    other_fields(&c.other, unsupported);
    json!({
        "allowOrigins": c.allow_origins,
        "allowMethods": c.allow_methods,
        "allowHeaders": c.allow_headers,
        "exposeHeaders": c.expose_headers,
        "maxAge": format!("{}s", c.max_age.unwrap_or(5)),
        "allowCredentials": c.allow_credentials,
    })
}

fn other_fields(other: &BTreeMap<String, Value>, unsupported: &mut Vec<String>) {
    for k in other.keys() {
        unsupported.push(format!("field {k} is not supported"));
    }
}

/// One rule of an HTTPRoute or GRPCRoute, its matches already in Portico's shape.
struct RuleIn<'a> {
    name: &'a Option<String>,
    other: &'a BTreeMap<String, Value>,
    filters: &'a [HttpRouteFilter],
    backends: &'a [HttpBackendRef],
    matches: Vec<Value>,
    timeouts: Value,
}

/// The translation of a Gateway API route of either kind: its parent refs, hostnames and
/// rules carried into Portico's Route, what cannot be expressed collected on the way.
fn api_route<'a>(
    m: &ObjectMeta,
    parent_refs: &[ApiParentRef],
    hostnames: &[String],
    status: Option<portico_api::gateway_api::ApiRouteStatus>,
    rules_in: impl Iterator<Item = RuleIn<'a>>,
) -> ApiRoute {
    let mut unsupported = Vec::new();
    let mut invalid_kinds = Vec::new();
    let (parent_refs, written) = parents(parent_refs);
    let mut rules = Vec::new();
    for rule in rules_in {
        other_fields(rule.other, &mut unsupported);
        let (filters, backends) = rule_common(
            rule.filters,
            rule.backends,
            &mut unsupported,
            &mut invalid_kinds,
        );
        rules.push(json!({
            "name": rule.name,
            "matches": rule.matches,
            "filters": filters,
            "backendRefs": backends,
            "timeouts": rule.timeouts,
            "cors": rule_cors(rule.filters, &mut unsupported),
        }));
    }
    let spec = json!({"parentRefs": [], "hostnames": hostnames, "rules": rules});
    let mut spec: RouteSpec = match serde_json::from_value(spec) {
        Ok(s) => s,
        Err(e) => {
            unsupported.push(e.to_string());
            RouteSpec::default()
        }
    };
    spec.parent_refs = parent_refs;
    ApiRoute {
        route: Route {
            metadata: meta(m),
            spec,
            status: None,
        },
        parents: written,
        unsupported,
        invalid_kinds,
        status,
    }
}

/// Translates an HTTPRoute.
pub(crate) fn http_route(r: &HttpRoute) -> ApiRoute {
    let rules = r.spec.rules.iter().map(|rule| RuleIn {
        name: &rule.name,
        other: &rule.other,
        filters: &rule.filters,
        backends: &rule.backend_refs,
        matches: rule
            .matches
            .iter()
            .map(|m| serde_json::to_value(m).unwrap_or_default())
            .collect(),
        timeouts: serde_json::to_value(&rule.timeouts).unwrap_or_default(),
    });
    api_route(
        &r.metadata,
        &r.spec.parent_refs,
        &r.spec.hostnames,
        r.status.clone(),
        rules,
    )
}

/// Translates a GRPCRoute: a method match is a match on the request path
/// (`/<service>/<method>`), header matches carry over.
pub(crate) fn grpc_route(r: &GrpcRoute) -> ApiRoute {
    let rules = r.spec.rules.iter().map(|rule| RuleIn {
        name: &rule.name,
        other: &rule.other,
        filters: &rule.filters,
        backends: &rule.backend_refs,
        matches: rule
            .matches
            .iter()
            .map(|m| {
                let mut out = json!({"headers": m.headers});
                if let Some(method) = &m.method {
                    out["path"] = grpc_path(
                        method.type_.as_deref().unwrap_or("Exact"),
                        method.service.as_deref(),
                        method.method.as_deref(),
                    );
                }
                out
            })
            .collect(),
        timeouts: Value::Null,
    });
    api_route(
        &r.metadata,
        &r.spec.parent_refs,
        &r.spec.hostnames,
        r.status.clone(),
        rules,
    )
}

/// The path match of a gRPC method match.
fn grpc_path(type_: &str, service: Option<&str>, method: Option<&str>) -> Value {
    let exact = type_ != "RegularExpression";
    match (exact, service, method) {
        (true, Some(s), Some(m)) => json!({"type": "Exact", "value": format!("/{s}/{m}")}),
        (true, Some(s), None) => json!({"type": "PathPrefix", "value": format!("/{s}")}),
        (true, None, Some(m)) => json!({"type": "RegularExpression",
                                        "value": format!("/[^/]+/{}", regex_escape(m))}),
        (false, s, m) => json!({"type": "RegularExpression",
                                "value": format!("/{}/{}", s.unwrap_or("[^/]+"), m.unwrap_or("[^/]+"))}),
        (true, None, None) => json!({"type": "PathPrefix", "value": "/"}),
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The class name of a Gateway API Gateway.
pub(super) fn class_of(gw: &ApiGateway) -> &str {
    &gw.spec.gateway_class_name
}

/// The name of a GatewayClass.
pub(super) fn class_name(c: &GatewayClass) -> String {
    c.name_any()
}

#[cfg(test)]
mod tests {
    use portico_proxy_api as contract;
    use serde_json::json;

    use super::*;

    fn http(spec: Value) -> HttpRoute {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"namespace": "shop", "name": "web", "generation": 3},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn an_httproute_keeps_matches_filters_backends_and_timeouts() {
        let r = http(json!({
            "parentRefs": [{"name": "gw", "sectionName": "http"},
                           {"group": "example.com", "kind": "Other", "name": "x"}],
            "hostnames": ["shop.example.com"],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                             "headers": [{"name": "x-v", "value": "2"}],
                             "queryParams": [{"type": "RegularExpression", "name": "q", "value": "^a"}],
                             "method": "POST"}],
                "filters": [{"type": "RequestHeaderModifier",
                             "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}]}},
                            {"type": "RequestMirror",
                             "requestMirror": {"backendRef": {"name": "shadow", "port": 80},
                                               "fraction": {"numerator": 1, "denominator": 4}}}],
                "backendRefs": [{"name": "api", "port": 8080, "weight": 3}, {"name": "api2", "port": 80}],
                "timeouts": {"request": "10s", "backendRequest": "2s"}
            }]
        }));
        let t = http_route(&r);
        assert!(t.unsupported.is_empty(), "{:?}", t.unsupported);
        assert_eq!(t.parents.len(), 1, "the foreign parent is not ours");
        let spec = &t.route.spec;
        assert_eq!(spec.parent_refs[0].section_name.as_deref(), Some("http"));
        let rule = &spec.rules[0];
        assert_eq!(rule.backend_refs[0].weight, Some(3));
        assert_eq!(rule.backend_refs[1].weight, Some(1));
        assert_eq!(rule.matches[0].query_params[0].value, "^a");
        assert_eq!(
            rule.filters[1].request_mirror.as_ref().unwrap().percent,
            Some(25)
        );
        assert_eq!(
            rule.timeouts
                .as_ref()
                .unwrap()
                .backend_request
                .as_ref()
                .unwrap()
                .0,
            "2s"
        );
        assert_eq!(t.route.metadata.generation, Some(3));
    }

    #[test]
    fn a_cors_filter_becomes_the_rule_s_cors_policy_with_the_api_s_default_max_age() {
        let r = http(json!({
            "parentRefs": [{"name": "gw"}],
            "rules": [{"filters": [{"type": "CORS", "cors": {
                           "allowOrigins": ["*"], "allowMethods": ["*"], "allowHeaders": ["*"],
                           "allowCredentials": true}}],
                       "backendRefs": [{"name": "api", "port": 80}]},
                      {"filters": [{"type": "CORS", "cors": {
                           "allowOrigins": ["https://*.bar.com"], "allowMethods": ["GET"],
                           "exposeHeaders": ["x-a"], "maxAge": 3600}}],
                       "backendRefs": [{"name": "api", "port": 80}]}]
        }));
        let t = http_route(&r);
        assert!(t.unsupported.is_empty(), "{:?}", t.unsupported);
        let served: Vec<contract::Cors> = t
            .route
            .spec
            .rules
            .iter()
            .map(|rule| super::super::translate::cors(rule.cors.as_ref().expect("cors")))
            .collect();
        assert_eq!(served[0].allow_methods, ["*"]);
        assert_eq!(served[0].allow_headers, ["*"]);
        assert!(served[0].allow_credentials);
        assert_eq!(served[0].max_age, Some(contract::Duration::from_secs(5)));
        assert_eq!(served[1].allow_origins, ["https://*.bar.com"]);
        assert_eq!(served[1].expose_headers, ["x-a"]);
        assert_eq!(served[1].max_age, Some(contract::Duration::from_secs(3600)));
        assert!(!served[1].allow_credentials);
        assert!(t.route.spec.rules.iter().all(|r| r.filters.is_empty()));
    }

    #[test]
    fn what_portico_cannot_express_is_reported_and_an_unknown_backend_kind_answers_500() {
        let r = http(json!({
            "parentRefs": [{"name": "gw"}],
            "rules": [{"filters": [{"type": "ExtensionRef"}],
                       "sessionPersistence": {"type": "Cookie"},
                       "backendRefs": [{"name": "api", "port": 80}]},
                      {"backendRefs": [{"group": "example.com", "kind": "Bucket", "name": "b"}]}]
        }));
        let t = http_route(&r);
        assert!(
            t.unsupported.iter().any(|u| u.contains("ExtensionRef"))
                && t.unsupported
                    .iter()
                    .any(|u| u.contains("sessionPersistence")),
            "{:?}",
            t.unsupported
        );
        assert_eq!(t.invalid_kinds.len(), 1);
        let second = &t.route.spec.rules[1];
        assert!(second.backend_refs.is_empty());
        assert_eq!(
            second.filters[0]
                .direct_response
                .as_ref()
                .unwrap()
                .status_code,
            500
        );
    }

    #[test]
    fn a_grpc_method_match_is_a_path_match() {
        assert_eq!(
            grpc_path("Exact", Some("echo.Echo"), Some("Ping")),
            json!({"type": "Exact", "value": "/echo.Echo/Ping"})
        );
        assert_eq!(
            grpc_path("Exact", Some("echo.Echo"), None),
            json!({"type": "PathPrefix", "value": "/echo.Echo"})
        );
        assert_eq!(
            grpc_path("Exact", None, Some("Ping")),
            json!({"type": "RegularExpression", "value": "/[^/]+/Ping"})
        );
    }

    #[test]
    fn listeners_of_other_protocols_are_refused_by_name() {
        let gw: ApiGateway = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"namespace": "shop", "name": "gw"},
            "spec": {"gatewayClassName": "portico", "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP"},
                {"name": "udp", "port": 53, "protocol": "UDP"},
                {"name": "kinds", "port": 8080, "protocol": "HTTP",
                 "allowedRoutes": {"kinds": [{"kind": "TCPRoute"}]}}]}
        }))
        .unwrap();
        let e = ApiGatewayEntry::new(gw);
        assert_eq!(e.translated.spec.listeners.len(), 2);
        assert_eq!(e.refused["udp"].reason, "UnsupportedProtocol");
        assert!(e.invalid_kinds["kinds"].contains("TCPRoute"));
        assert!(listener_kinds(e.listener("kinds").unwrap()).is_empty());
        assert_eq!(listener_kinds(e.listener("http").unwrap()).len(), 2);
    }
}

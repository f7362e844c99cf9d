//! Whole-config validation. Rules are numbered from 1 in messages (`route "api" rule 2`) because
//! people count that way when they read a YAML list.

use std::collections::HashSet;
use std::net::SocketAddr;

use crate::{
    API_VERSION, Aggregate, Authentication, Backend, Filter, HashOn, Header, HeaderModifier,
    InboundPolicy, Listener, MatchKind, PathMatch, PathRewrite, Protocol, ProxyConfig, RateLimit,
    RateLimitKey, RateLimitStore, Route, RouteRule, ValueMatch,
};

/// Why a config was refused: the element at fault and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{element}: {message}")]
pub struct ValidationError {
    /// The bad element, e.g. `route "api" rule 2`.
    pub element: String,
    /// What is wrong with it.
    pub message: String,
}

fn fail<T>(element: impl Into<String>, message: impl Into<String>) -> Result<T, ValidationError> {
    Err(ValidationError {
        element: element.into(),
        message: message.into(),
    })
}

type Result<T, E = ValidationError> = std::result::Result<T, E>;

impl ProxyConfig {
    /// Checks the config as a whole; the first problem found is returned.
    pub fn validate(&self) -> Result<()> {
        if self.api_version != API_VERSION {
            return fail(
                "config",
                format!("apiVersion {:?} is not {API_VERSION:?}", self.api_version),
            );
        }
        let mut backend_names = HashSet::new();
        for b in &self.backends {
            if !backend_names.insert(b.name.as_str()) {
                return fail(format!("backend {:?}", b.name), "name is used twice");
            }
            check_backend(b)?;
        }
        let mut listener_names = HashSet::new();
        let mut addresses = HashSet::new();
        for l in &self.listeners {
            if !listener_names.insert(l.name.as_str()) {
                return fail(format!("listener {:?}", l.name), "name is used twice");
            }
            let addr = check_listener(l, &backend_names)?;
            if addr.port() != 0 && !addresses.insert(addr) {
                return fail(
                    format!("listener {:?}", l.name),
                    format!("address {addr} is used by another listener"),
                );
            }
        }
        let mut route_names = HashSet::new();
        for r in &self.routes {
            if !route_names.insert(r.name.as_str()) {
                return fail(format!("route {:?}", r.name), "name is used twice");
            }
            check_route(r, self, &backend_names)?;
        }
        check_services(self, &backend_names, &route_names)?;
        check_inbound(&self.inbound)?;
        Ok(())
    }
}

impl crate::BackendUpdate {
    /// Checks each backend of the update as [`ProxyConfig::validate`] would, and that no name
    /// comes twice (replaced twice, or replaced and removed).
    pub fn validate(&self) -> Result<()> {
        let mut names = HashSet::new();
        for b in &self.backends {
            if !names.insert(b.name.as_str()) {
                return fail(format!("backend {:?}", b.name), "name is used twice");
            }
            check_backend(b)?;
        }
        if let Some(both) = self.removed.iter().find(|n| names.contains(n.as_str())) {
            return fail(format!("backend {both:?}"), "is both updated and removed");
        }
        Ok(())
    }
}

/// Inbound policy: one entry per port, and rate limits that can let a request through.
fn check_inbound(policy: &InboundPolicy) -> Result<()> {
    let mut ports = HashSet::new();
    for p in &policy.ports {
        let el = format!("inbound port {}", p.port);
        if p.port == 0 {
            return fail(el, "port 0 is not a valid pod port");
        }
        if !ports.insert(p.port) {
            return fail(el, "has two policies");
        }
        if let Some(a) = &p.authorization
            && let Some(bad) = a.identities.iter().find(|i| !crate::identity_pattern_ok(i))
        {
            return fail(
                el,
                format!("{bad:?} is not `*`, a SPIFFE ID, or one ending in `/sa/*`"),
            );
        }
        if let Some(rl) = &p.rate_limit {
            check_rate_limit(&format!("{el} rateLimit"), rl)?;
            if rl.store.is_some() {
                return fail(format!("{el} rateLimit"), "a port's limit has no store");
            }
        }
    }
    Ok(())
}

fn check_rate_limit(el: &str, rl: &RateLimit) -> Result<()> {
    if rl.requests == 0 {
        return fail(el, "requests must be at least 1");
    }
    if rl.period.get().is_zero() {
        return fail(el, "period must be longer than 0");
    }
    if rl.burst < rl.requests {
        return fail(el, "burst must be at least requests");
    }
    if let RateLimitKey::Header { name } = &rl.key {
        check_header_name(el, name)?;
    }
    if let Some(store) = &rl.store {
        check_store(&format!("{el} store"), store)?;
    }
    Ok(())
}

/// A store's address is `host:port` with a port that is a number, and it answers in time.
fn check_store(el: &str, store: &RateLimitStore) -> Result<()> {
    let port_ok = store
        .address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        return fail(el, format!("address {:?} is not host:port", store.address));
    }
    // The operator's prefixes name a Gateway, a Route and a rule: at most about 710 bytes.
    if store.prefix.is_empty() || store.prefix.len() > 1024 {
        return fail(el, "prefix must be 1 to 1024 bytes");
    }
    if store.timeout.get().is_zero() || store.timeout.get() > std::time::Duration::from_secs(10) {
        return fail(el, "timeout must be longer than 0 and at most 10s");
    }
    Ok(())
}

/// Services are how the OUTBOUND listener recognises a destination, so one virtual address must
/// name one service, and everything a service refers to must exist.
fn check_services(
    cfg: &ProxyConfig,
    backends: &HashSet<&str>,
    routes: &HashSet<&str>,
) -> Result<()> {
    let mut names = HashSet::new();
    let mut vips = HashSet::new();
    for s in &cfg.services {
        let el = format!("service {:?}", s.name);
        check_name(&el, &s.name)?;
        if !names.insert(s.name.as_str()) {
            return fail(el, "name is used twice");
        }
        if s.addresses.is_empty() {
            return fail(el, "has no addresses");
        }
        for a in &s.addresses {
            let Ok(addr) = a.parse::<SocketAddr>() else {
                return fail(el, format!("address {a:?} is not IP:PORT"));
            };
            if addr.port() == 0 {
                return fail(el, format!("address {a:?} has port 0"));
            }
            if !vips.insert(addr) {
                return fail(el, format!("address {addr} belongs to another service too"));
            }
        }
        if !backends.contains(s.backend.as_str()) {
            return fail(el, format!("backend {:?} is not defined", s.backend));
        }
        for r in &s.routes {
            if !routes.contains(r.as_str()) {
                return fail(el, format!("route {r:?} is not defined"));
            }
        }
    }
    Ok(())
}

fn check_name(element: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return fail(element, "name is empty");
    }
    Ok(())
}

/// Checks one listener and returns its address.
fn check_listener(l: &Listener, backends: &HashSet<&str>) -> Result<SocketAddr> {
    let el = format!("listener {:?}", l.name);
    check_name(&el, &l.name)?;
    let Ok(addr) = l.address.parse::<SocketAddr>() else {
        return fail(&el, format!("address {:?} is not IP:PORT", l.address));
    };
    if !l.backends.is_empty() {
        if l.protocol != Protocol::Tcp {
            return fail(
                &el,
                "backends is only allowed with protocol TCP; use routes",
            );
        }
        if l.backend.is_some() {
            return fail(&el, "give backend or backends, not both");
        }
        if let Some(r) = l
            .backends
            .iter()
            .find(|r| !backends.contains(r.backend.as_str()))
        {
            return fail(&el, format!("backend {:?} is not defined", r.backend));
        }
    }
    match (l.protocol, &l.tls, &l.backend) {
        (Protocol::Https, None, _) => fail(&el, "protocol HTTPS needs tls"),
        (Protocol::Http | Protocol::Tcp | Protocol::Outbound | Protocol::Inbound, Some(_), _) => {
            fail(&el, "tls is only allowed with protocol HTTPS")
        }
        (Protocol::Outbound | Protocol::Inbound, _, Some(_)) => fail(
            &el,
            "backend is not allowed on OUTBOUND/INBOUND listeners; use services",
        ),
        (Protocol::Tcp, _, None) if l.backends.is_empty() => {
            fail(&el, "protocol TCP needs a backend")
        }
        (Protocol::Tcp, _, Some(b)) if !backends.contains(b.as_str()) => {
            fail(&el, format!("backend {b:?} is not defined"))
        }
        (Protocol::Http | Protocol::Https, _, Some(_)) => {
            fail(&el, "backend is only allowed with protocol TCP; use routes")
        }
        _ => Ok(addr),
    }
}

fn check_backend(b: &Backend) -> Result<()> {
    let el = format!("backend {:?}", b.name);
    check_name(&el, &b.name)?;
    if let Some(rb) = &b.retry_budget
        && !(0.0..=1.0).contains(&rb.ratio)
    {
        return fail(&el, "retry budget ratio must be 0.0–1.0");
    }
    let mut seen = HashSet::new();
    for (i, e) in b.endpoints.iter().enumerate() {
        let eel = format!("{el} endpoint {}", i + 1);
        let Ok(addr) = e.address.parse::<SocketAddr>() else {
            return fail(eel, format!("address {:?} is not IP:PORT", e.address));
        };
        if addr.port() == 0 {
            return fail(eel, "port 0 is not a valid endpoint port");
        }
        if !seen.insert(addr) {
            return fail(eel, format!("address {addr} is listed twice"));
        }
        if e.weight == 0 {
            return fail(eel, "weight must be at least 1");
        }
        if let Some(id) = &e.identity
            && (!id.starts_with("spiffe://") || id.contains('*'))
        {
            return fail(eel, format!("identity {id:?} is not a SPIFFE ID"));
        }
    }
    if let crate::LoadBalancer::ConsistentHash {
        hash_on: HashOn::Header { name: h } | HashOn::Cookie { name: h },
    } = &b.load_balancer
    {
        check_header_name(&format!("{el} loadBalancer"), h)?;
    }
    if let Some(od) = &b.outlier_detection {
        let oel = format!("{el} outlierDetection");
        if od.consecutive_failures == 0 {
            return fail(oel, "consecutiveFailures must be at least 1");
        }
        if od.max_ejected_percent > 100 {
            return fail(oel, "maxEjectedPercent must be 0–100");
        }
        if od.base_ejection_time > od.max_ejection_time {
            return fail(oel, "baseEjectionTime is longer than maxEjectionTime");
        }
    }
    if b.limits.max_connections == Some(0) {
        return fail(format!("{el} limits"), "maxConnections must be at least 1");
    }
    if let Some(hc) = &b.health_check {
        let hel = format!("{el} healthCheck");
        if !hc.path.starts_with('/') || hc.path.bytes().any(|c| c <= b' ' || c == 0x7f) {
            return fail(hel, format!("path {:?} is not an absolute path", hc.path));
        }
        if hc.port == Some(0) {
            return fail(hel, "port 0 is not a valid port");
        }
        if hc.healthy_threshold == 0 || hc.unhealthy_threshold == 0 {
            return fail(hel, "thresholds must be at least 1");
        }
        if hc.interval.get().is_zero() || hc.timeout.get().is_zero() {
            return fail(hel, "interval and timeout must be longer than 0s");
        }
        if hc.timeout.get() >= hc.interval.get() {
            return fail(hel, "timeout must be shorter than interval");
        }
    }
    Ok(())
}

fn check_route(r: &Route, cfg: &ProxyConfig, backends: &HashSet<&str>) -> Result<()> {
    let el = format!("route {:?}", r.name);
    check_name(&el, &r.name)?;
    for l in &r.listeners {
        match cfg.listeners.iter().find(|x| &x.name == l) {
            None => return fail(&el, format!("listener {l:?} is not defined")),
            Some(x) if x.protocol == Protocol::Tcp => {
                return fail(
                    &el,
                    format!("listener {l:?} is TCP and cannot carry routes"),
                );
            }
            Some(x) if matches!(x.protocol, Protocol::Outbound | Protocol::Inbound) => {
                return fail(
                    &el,
                    format!("listener {l:?} is a sidecar listener; attach the route to a service"),
                );
            }
            Some(_) => {}
        }
    }
    for h in &r.hostnames {
        check_hostname(&el, h)?;
    }
    if r.rules.is_empty() {
        return fail(&el, "has no rules");
    }
    for (i, rule) in r.rules.iter().enumerate() {
        check_rule(&format!("{el} rule {}", i + 1), rule, backends)?;
    }
    Ok(())
}

fn check_hostname(el: &str, h: &str) -> Result<()> {
    let bare = h.strip_prefix("*.").unwrap_or(h);
    let ok = !bare.is_empty()
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        });
    if !ok {
        return fail(
            el,
            format!("hostname {h:?} is not a DNS name or a *.wildcard"),
        );
    }
    Ok(())
}

fn check_rule(el: &str, rule: &RouteRule, backends: &HashSet<&str>) -> Result<()> {
    let mut has_prefix_match = !rule.matches.is_empty();
    for (i, m) in rule.matches.iter().enumerate() {
        let mel = format!("{el} match {}", i + 1);
        match &m.path {
            Some(PathMatch::Exact(p) | PathMatch::PathPrefix(p)) if !p.starts_with('/') => {
                return fail(mel, format!("path {p:?} does not start with /"));
            }
            Some(PathMatch::RegularExpression(re)) => check_regex(&mel, re)?,
            _ => {}
        }
        if !matches!(m.path, Some(PathMatch::PathPrefix(_))) {
            has_prefix_match = false;
        }
        if let Some(method) = &m.method
            && http_token(method).is_err()
        {
            return fail(mel, format!("method {method:?} is not a valid token"));
        }
        for h in &m.headers {
            check_header_name(&mel, &h.name)?;
            check_value_match(&mel, h)?;
        }
        for q in &m.query {
            check_value_match(&mel, q)?;
        }
    }
    let mut answers_itself = false;
    for (i, f) in rule.filters.iter().enumerate() {
        let fel = format!("{el} filter {}", i + 1);
        match f {
            Filter::RequestHeaderModifier(m) | Filter::ResponseHeaderModifier(m) => {
                check_modifier(&fel, m)?
            }
            Filter::UrlRewrite(u) => {
                if let Some(h) = &u.hostname {
                    check_hostname(&fel, h)?;
                }
                check_path_rewrite(&fel, u.path.as_ref(), has_prefix_match)?;
            }
            Filter::RequestRedirect(r) => {
                answers_itself = true;
                if let Some(s) = &r.scheme
                    && s != "http"
                    && s != "https"
                {
                    return fail(fel, format!("scheme {s:?} is not http or https"));
                }
                if let Some(h) = &r.hostname {
                    check_hostname(&fel, h)?;
                }
                if let Some(code) = r.status_code
                    && ![301, 302, 303, 307, 308].contains(&code)
                {
                    return fail(fel, format!("status {code} is not a redirect status"));
                }
                check_path_rewrite(&fel, r.path.as_ref(), has_prefix_match)?;
            }
            Filter::DirectResponse(d) => {
                answers_itself = true;
                if !(200..=599).contains(&d.status) {
                    return fail(fel, format!("status {} is not 200–599", d.status));
                }
                check_headers(&fel, &d.headers)?;
            }
            Filter::RequestMirror(m) => {
                if !backends.contains(m.backend.as_str()) {
                    return fail(fel, format!("backend {:?} is not defined", m.backend));
                }
                if m.percent > 100 {
                    return fail(fel, format!("mirror percent {} is above 100", m.percent));
                }
            }
        }
    }
    for b in &rule.backends {
        if !backends.contains(b.backend.as_str()) {
            return fail(el, format!("backend {:?} is not defined", b.backend));
        }
    }
    if let Some(agg) = &rule.aggregate {
        check_aggregate(&format!("{el} aggregate"), agg, backends)?;
        if !rule.backends.is_empty() {
            return fail(el, "has both backends and an aggregate");
        }
        if answers_itself {
            return fail(el, "has an aggregate and a redirect or direct response");
        }
        if rule
            .filters
            .iter()
            .any(|f| matches!(f, Filter::RequestMirror(_)))
        {
            return fail(el, "has an aggregate and a request mirror");
        }
        if rule.retry.is_some() {
            return fail(el, "has an aggregate and a retry policy");
        }
    } else if !answers_itself {
        if rule.backends.is_empty() {
            return fail(el, "has no backends and no redirect or direct response");
        }
        if rule.backends.iter().all(|b| b.weight == 0) {
            return fail(el, "every backend has weight 0");
        }
    }
    if let Some(rl) = &rule.rate_limit {
        check_rate_limit(&format!("{el} rateLimit"), rl)?;
    }
    if let Some(a) = &rule.authentication {
        check_authentication(&format!("{el} authentication"), a)?;
    }
    if let Some(c) = &rule.cache {
        let cel = format!("{el} cache");
        if c.max_body_bytes == 0 {
            return fail(cel, "maxBodyBytes must be at least 1");
        }
        for h in &c.vary_headers {
            check_header_name(&cel, h)?;
        }
    }
    if let Some(f) = &rule.fallback {
        let fel = format!("{el} fallback");
        if rule.backends.is_empty() {
            return fail(fel, "has no backends whose failures it masks");
        }
        if let Some(c) = f.on_status.iter().find(|c| !(500..=599).contains(*c)) {
            return fail(fel, format!("{c} is not a 5xx status"));
        }
        if f.stale_for.is_none() && f.direct_response.is_none() {
            return fail(fel, "sets neither staleFor nor directResponse");
        }
        if let Some(d) = &f.direct_response {
            if !(200..=599).contains(&d.status) {
                return fail(fel, format!("status {} is not 200–599", d.status));
            }
            check_headers(&fel, &d.headers)?;
        }
    }
    if let Some(retry) = &rule.retry {
        let rel = format!("{el} retry");
        if retry.attempts > 10 {
            return fail(rel, "attempts must be at most 10");
        }
        if retry.backoff.base > retry.backoff.max {
            return fail(rel, "backoff base is longer than backoff max");
        }
        if !(0.0..=1.0).contains(&retry.budget.ratio) {
            return fail(rel, "budget ratio must be 0.0–1.0");
        }
        if let Some(c) = retry.grpc_status_codes.iter().find(|c| **c > 16) {
            return fail(rel, format!("{c} is not a gRPC status code"));
        }
        if let Some(c) = retry
            .status_codes
            .iter()
            .find(|c| !(400..=599).contains(*c))
        {
            return fail(rel, format!("{c} is not a 4xx or 5xx status"));
        }
        for m in &retry.methods {
            if http_token(m).is_err() {
                return fail(rel, format!("method {m:?} is not a valid token"));
            }
        }
    }
    Ok(())
}

fn check_authentication(el: &str, a: &Authentication) -> Result<()> {
    if a.jwt.is_none() && a.api_key.is_none() && a.basic.is_none() {
        return fail(el, "names no method (jwt, apiKey or basic)");
    }
    if let Some(j) = &a.jwt {
        if j.issuer.is_empty() {
            return fail(el, "jwt issuer is empty");
        }
        match (&j.jwks, &j.jwks_uri) {
            (Some(_), Some(_)) | (None, None) => {
                return fail(el, "jwt needs exactly one of jwks and jwksUri");
            }
            (None, Some(uri)) if !uri.starts_with("https://") => {
                return fail(el, format!("jwksUri {uri:?} is not an https:// address"));
            }
            _ => {}
        }
        if let Some(h) = &j.from_header {
            check_header_name(el, h)?;
        }
        for c in &j.claims_to_headers {
            check_header_name(el, &c.header)?;
        }
    }
    if let Some(k) = &a.api_key {
        check_header_name(el, &k.header)?;
    }
    Ok(())
}

/// The most backends one aggregate rule asks: each request costs that many upstream requests.
pub const MAX_AGGREGATE_BACKENDS: usize = 8;

fn check_aggregate(el: &str, agg: &Aggregate, backends: &HashSet<&str>) -> Result<()> {
    if agg.backends.is_empty() || agg.backends.len() > MAX_AGGREGATE_BACKENDS {
        return fail(
            el,
            format!(
                "has {} backends, not 1–{MAX_AGGREGATE_BACKENDS}",
                agg.backends.len()
            ),
        );
    }
    if agg.timeout.get().is_zero() {
        return fail(el, "timeout must be longer than 0s");
    }
    let mut keys = HashSet::new();
    for (i, b) in agg.backends.iter().enumerate() {
        let bel = format!("{el} backend {}", i + 1);
        if !backends.contains(b.backend.as_str()) {
            return fail(bel, format!("backend {:?} is not defined", b.backend));
        }
        if let Some(p) = &b.path {
            let ok = p.starts_with('/')
                && !p.contains(['?', '#'])
                && p.bytes().all(|c| c.is_ascii_graphic());
            if !ok {
                return fail(
                    bel,
                    format!("path {p:?} is not an absolute path without query"),
                );
            }
        }
        if let Some(k) = &b.key
            && !keys.insert(k.as_str())
        {
            return fail(bel, format!("key {k:?} is used twice"));
        }
    }
    Ok(())
}

fn check_path_rewrite(el: &str, p: Option<&PathRewrite>, has_prefix_match: bool) -> Result<()> {
    match p {
        Some(PathRewrite::ReplaceFullPath(p) | PathRewrite::ReplacePrefixMatch(p))
            if !p.starts_with('/') =>
        {
            fail(el, format!("path {p:?} does not start with /"))
        }
        Some(PathRewrite::ReplacePrefixMatch(_)) if !has_prefix_match => fail(
            el,
            "ReplacePrefixMatch needs every match of the rule to have a PathPrefix path",
        ),
        _ => Ok(()),
    }
}

fn check_modifier(el: &str, m: &HeaderModifier) -> Result<()> {
    check_headers(el, &m.set)?;
    check_headers(el, &m.add)?;
    for name in &m.remove {
        check_header_name(el, name)?;
    }
    Ok(())
}

fn check_headers(el: &str, headers: &[Header]) -> Result<()> {
    for h in headers {
        check_header_name(el, &h.name)?;
        if h.value.bytes().any(|c| c == b'\r' || c == b'\n' || c == 0) {
            return fail(
                el,
                format!("header {:?} value has a control character", h.name),
            );
        }
    }
    Ok(())
}

fn check_value_match(el: &str, m: &ValueMatch) -> Result<()> {
    if m.name.is_empty() {
        return fail(el, "a header or query match has an empty name");
    }
    if m.kind == MatchKind::RegularExpression {
        check_regex(el, &m.value)?;
    }
    Ok(())
}

fn check_regex(el: &str, re: &str) -> Result<()> {
    if let Err(e) = regex::Regex::new(re) {
        return fail(el, format!("regex {re:?} does not compile: {e}"));
    }
    Ok(())
}

fn check_header_name(el: &str, name: &str) -> Result<()> {
    if http_token(name).is_err() {
        return fail(el, format!("header name {name:?} is not a valid token"));
    }
    Ok(())
}

/// RFC 9110 §5.6.2 token.
fn http_token(s: &str) -> std::result::Result<(), ()> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
    if ok { Ok(()) } else { Err(()) }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod mesh_tests;

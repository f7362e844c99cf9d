//! Route selection.
//!
//! Precedence follows the Gateway API. Among all rules of all routes attached to the listener,
//! the request goes to the candidate that is best on the first criterion that differs:
//!
//! 1. host: exact hostname > longer wildcard > shorter wildcard > route without hostnames;
//! 2. path: exact > longest prefix > regular expression (a match without a path counts as `/`);
//! 3. a method match;
//! 4. more header matches;
//! 5. more query parameter matches;
//! 6. earlier route, then earlier rule, in the config.

use std::sync::Arc;

use http::request::Parts;
use portico_proxy_api::{MatchKind, PathMatch, ProxyConfig, Route, RouteRule, ValueMatch};
use regex::Regex;

use crate::policy::cache::Scope;
use crate::policy::retry::RetryBudget;
use crate::policy::stages::Stages;

/// All routes of a config, compiled for matching.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<CompiledRoute>,
    /// Some rule matches on a request header.
    reads_headers: bool,
}

#[derive(Debug)]
struct CompiledRoute {
    name: Arc<str>,
    listeners: Vec<String>,
    hosts: Vec<HostMatch>,
    /// Hosts a more specific listener on the same port takes (listener isolation).
    excluded: Vec<HostMatch>,
    rules: Vec<CompiledRule>,
}

#[derive(Debug)]
enum HostMatch {
    Exact(String),
    /// The suffix including its leading dot: `*.example.com` → `.example.com`.
    Wildcard(String),
}

/// One rule with its matches compiled; the rest of the rule is read from the config.
#[derive(Debug)]
pub struct CompiledRule {
    /// The rule as configured.
    pub rule: RouteRule,
    /// Its name, for metrics labels (empty when the rule has none).
    pub name: Arc<str>,
    /// The retry budget shared by all requests of this rule.
    pub budget: Option<RetryBudget>,
    /// The rule's policies, in order.
    pub stages: Stages,
    /// Its part of the response cache: its route, position and cache settings.
    pub cache_scope: Scope,
    matches: Vec<CompiledMatch>,
}

#[derive(Debug)]
struct CompiledMatch {
    path: Path,
    method: Option<http::Method>,
    headers: Vec<(http::HeaderName, Value)>,
    query: Vec<(String, Value)>,
}

#[derive(Debug)]
enum Path {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum Value {
    Exact(String),
    Regex(Regex),
}

impl Value {
    fn compile(m: &ValueMatch) -> Result<Self, regex::Error> {
        Ok(match m.kind {
            MatchKind::Exact => Self::Exact(m.value.clone()),
            MatchKind::RegularExpression => Self::Regex(anchored(&m.value)?),
        })
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            Self::Exact(e) => e == v,
            Self::Regex(r) => r.is_match(v),
        }
    }
}

/// Regex matches are whole-value matches, as in the Gateway API.
fn anchored(re: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{re})$"))
}

impl CompiledRule {
    /// The rule's name, when it has one (for access logs and metrics).
    pub fn named(&self) -> Option<Arc<str>> {
        (!self.name.is_empty()).then(|| self.name.clone())
    }
}

/// The outcome of routing one request.
#[derive(Debug, Clone, Copy)]
pub struct RouteHit<'a> {
    /// Route name, for metrics and logs.
    pub route: &'a Arc<str>,
    /// The chosen rule.
    pub rule: &'a CompiledRule,
    /// The prefix that matched, for `ReplacePrefixMatch` rewrites.
    pub matched_prefix: Option<&'a str>,
}

/// Ordering key: bigger is more specific (see the module doc).
type Rank = (
    (u8, usize),
    (u8, usize),
    bool,
    usize,
    usize,
    std::cmp::Reverse<(usize, usize)>,
);

impl Router {
    /// Compiles the routes of `cfg` (already validated, so regexes compile).
    pub fn new(cfg: &ProxyConfig) -> Result<Self, regex::Error> {
        let routes = cfg
            .routes
            .iter()
            .map(compile_route)
            .collect::<Result<Vec<CompiledRoute>, _>>()?;
        let reads_headers = routes
            .iter()
            .flat_map(|r| &r.rules)
            .flat_map(|rule| &rule.matches)
            .any(|m| !m.headers.is_empty());
        Ok(Self {
            routes,
            reads_headers,
        })
    }

    /// Whether routing looks at a request's headers (some rule matches on one): then a request
    /// needs its header map before it is routed.
    pub fn reads_headers(&self) -> bool {
        self.reads_headers
    }

    /// Takes over the rate-limit buckets of `old`'s rules that are unchanged: the same route
    /// name, rule position and limit (see [`Stages::keep_buckets`]).
    pub fn keep_buckets(&mut self, old: &Router) {
        let by_name: std::collections::HashMap<&str, &CompiledRoute> =
            old.routes.iter().map(|r| (&*r.name, r)).collect();
        for route in &mut self.routes {
            let Some(prev) = by_name.get(&*route.name) else {
                continue;
            };
            for (rule, old_rule) in route.rules.iter_mut().zip(&prev.rules) {
                rule.stages.keep_buckets(&old_rule.stages);
            }
        }
    }

    /// The best rule for a request arriving on `listener`, if any.
    pub fn route<'a>(&'a self, listener: &str, host: &str, req: &Parts) -> Option<RouteHit<'a>> {
        let host = strip_port(host);
        let host: std::borrow::Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            host.to_ascii_lowercase().into()
        } else {
            host.into()
        };
        let path = req.uri.path();
        let query: Vec<(&str, &str)> = req
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .collect();
        let mut best: Option<(Rank, RouteHit<'a>)> = None;
        for (ri, route) in self.routes.iter().enumerate() {
            if !route.listeners.is_empty() && !route.listeners.iter().any(|l| l == listener) {
                continue;
            }
            if !route.excluded.is_empty() && host_rank(&route.excluded, &host).is_some() {
                continue;
            }
            let Some(host_rank) = host_rank(&route.hosts, &host) else {
                continue;
            };
            for (ki, rule) in route.rules.iter().enumerate() {
                for m in &rule.matches {
                    let Some((path_rank, prefix)) = m.path_rank(path) else {
                        continue;
                    };
                    if !m.rest_matches(req, &query) {
                        continue;
                    }
                    let rank = (
                        host_rank,
                        path_rank,
                        m.method.is_some(),
                        m.headers.len(),
                        m.query.len(),
                        std::cmp::Reverse((ri, ki)),
                    );
                    if best.as_ref().is_none_or(|(b, _)| rank > *b) {
                        let hit = RouteHit {
                            route: &route.name,
                            rule,
                            matched_prefix: prefix,
                        };
                        best = Some((rank, hit));
                    }
                }
            }
        }
        best.map(|(_, hit)| hit)
    }
}

fn host_matches(names: &[String]) -> Vec<HostMatch> {
    names
        .iter()
        .map(|h| match h.strip_prefix('*') {
            Some(suffix) => HostMatch::Wildcard(suffix.to_ascii_lowercase()),
            None => HostMatch::Exact(h.to_ascii_lowercase()),
        })
        .collect()
}

fn compile_route(r: &Route) -> Result<CompiledRoute, regex::Error> {
    let hosts = host_matches(&r.hostnames);
    let excluded = host_matches(&r.excluded_hostnames);
    let rules = r
        .rules
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            let mut matches = rule
                .matches
                .iter()
                .map(|m| {
                    Ok(CompiledMatch {
                        path: match &m.path {
                            None => Path::Prefix("/".into()),
                            Some(PathMatch::Exact(p)) => Path::Exact(p.clone()),
                            Some(PathMatch::PathPrefix(p)) => Path::Prefix(p.clone()),
                            Some(PathMatch::RegularExpression(re)) => Path::Regex(anchored(re)?),
                        },
                        method: m.method.as_deref().and_then(|s| s.parse().ok()),
                        headers: m
                            .headers
                            .iter()
                            .filter_map(|h| {
                                let name = http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
                                Some(Value::compile(h).map(|v| (name, v)))
                            })
                            .collect::<Result<_, _>>()?,
                        query: m
                            .query
                            .iter()
                            .map(|q| Value::compile(q).map(|v| (q.name.clone(), v)))
                            .collect::<Result<_, _>>()?,
                    })
                })
                .collect::<Result<Vec<_>, regex::Error>>()?;
            if matches.is_empty() {
                matches.push(CompiledMatch {
                    path: Path::Prefix("/".into()),
                    method: None,
                    headers: Vec::new(),
                    query: Vec::new(),
                });
            }
            Ok(CompiledRule {
                rule: rule.clone(),
                name: rule.name.as_deref().unwrap_or("").into(),
                budget: rule.retry.as_ref().map(RetryBudget::new),
                stages: Stages::compile(rule),
                cache_scope: Scope::new(
                    &r.name,
                    index,
                    rule.cache.as_ref(),
                    rule.fallback.as_ref(),
                ),
                matches,
            })
        })
        .collect::<Result<_, regex::Error>>()?;
    Ok(CompiledRoute {
        name: r.name.as_str().into(),
        listeners: r.listeners.clone(),
        hosts,
        excluded,
        rules,
    })
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

fn host_rank(hosts: &[HostMatch], host: &str) -> Option<(u8, usize)> {
    if hosts.is_empty() {
        return Some((0, 0));
    }
    hosts
        .iter()
        .filter_map(|h| match h {
            HostMatch::Exact(e) if e == host => Some((2, e.len())),
            HostMatch::Wildcard(suffix) if host.len() > suffix.len() && host.ends_with(suffix) => {
                Some((1, suffix.len()))
            }
            _ => None,
        })
        .max()
}

impl CompiledMatch {
    fn path_rank<'a>(&'a self, path: &str) -> Option<((u8, usize), Option<&'a str>)> {
        match &self.path {
            Path::Exact(p) => (p == path).then_some(((3, p.len()), None)),
            Path::Prefix(p) => prefix_matches(p, path).then_some(((2, p.len()), Some(p.as_str()))),
            Path::Regex(r) => r.is_match(path).then_some(((1, 0), None)),
        }
    }

    fn rest_matches(&self, req: &Parts, query: &[(&str, &str)]) -> bool {
        if self.method.as_ref().is_some_and(|m| m != req.method) {
            return false;
        }
        let headers_ok = self.headers.iter().all(|(name, v)| {
            req.headers
                .get_all(name)
                .iter()
                .filter_map(|h| h.to_str().ok())
                .any(|h| v.matches(h))
        });
        headers_ok
            && self
                .query
                .iter()
                .all(|(name, v)| query.iter().any(|(k, val)| k == name && v.matches(val)))
    }
}

/// Segment-wise prefix: `/api` matches `/api`, `/api/` and `/api/x`, never `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = if prefix.len() > 1 {
        prefix.trim_end_matches('/')
    } else {
        prefix
    };
    path.starts_with(prefix)
        && (prefix == "/" || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(yaml: &str) -> Router {
        let cfg: ProxyConfig = serde_yaml::from_str(yaml).unwrap();
        Router::new(&cfg).unwrap()
    }

    fn pick(r: &Router, host: &str, method: &str, uri: &str, headers: &[(&str, &str)]) -> String {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (parts, ()) = b.body(()).unwrap().into_parts();
        match r.route("web", host, &parts) {
            Some(hit) => {
                let i = hit.rule.rule.backends[0].backend.clone();
                format!("{}/{i}", hit.route)
            }
            None => "none".into(),
        }
    }

    const ROUTES: &str = r#"
routes:
  - name: any
    rules:
      - backends: [{ backend: catchall }]
      - matches: [{ path: { type: PathPrefix, value: /api } }]
        backends: [{ backend: api }]
      - matches: [{ path: { type: PathPrefix, value: /api/v2 } }]
        backends: [{ backend: api-v2 }]
      - matches: [{ path: { type: Exact, value: /api/v2/health } }]
        backends: [{ backend: health }]
      - matches: [{ path: { type: RegularExpression, value: "/api/v[0-9]+/users/[0-9]+" } }]
        backends: [{ backend: regex }]
      - matches:
          - path: { type: PathPrefix, value: /api }
            headers: [{ name: x-canary, value: "yes" }]
        backends: [{ backend: canary }]
      - matches:
          - path: { type: PathPrefix, value: /api }
            query: [{ name: debug, value: "1" }]
        backends: [{ backend: debug }]
      - matches: [{ path: { type: PathPrefix, value: /api }, method: POST }]
        backends: [{ backend: post }]
  - name: shop
    hostnames: [shop.example.com]
    rules: [{ backends: [{ backend: shop }] }]
  - name: wild
    hostnames: ["*.example.com"]
    rules: [{ backends: [{ backend: wild }] }]
  - name: deeper
    hostnames: ["*.eu.example.com"]
    rules: [{ backends: [{ backend: deeper }] }]
"#;

    #[test]
    fn exact_path_beats_prefix_and_longest_prefix_wins() {
        let r = router(ROUTES);
        assert_eq!(pick(&r, "h", "GET", "/api/v2/health", &[]), "any/health");
        assert_eq!(pick(&r, "h", "GET", "/api/v2/x", &[]), "any/api-v2");
        assert_eq!(pick(&r, "h", "GET", "/api/x", &[]), "any/api");
        assert_eq!(pick(&r, "h", "GET", "/apix", &[]), "any/catchall");
    }

    #[test]
    fn prefix_beats_regex() {
        let r = router(ROUTES);
        // /api/v3/users/7 matches the /api prefix and the regex: the prefix wins.
        assert_eq!(pick(&r, "h", "GET", "/api/v3/users/7", &[]), "any/api");
    }

    #[test]
    fn method_then_headers_then_query_break_ties() {
        let r = router(ROUTES);
        assert_eq!(
            pick(&r, "h", "GET", "/api/a", &[("x-canary", "yes")]),
            "any/canary"
        );
        assert_eq!(pick(&r, "h", "GET", "/api/a?debug=1", &[]), "any/debug");
        assert_eq!(
            pick(&r, "h", "GET", "/api/a?debug=1", &[("x-canary", "yes")]),
            "any/canary"
        );
        // The Gateway API ranks a method match above any number of header or query matches.
        assert_eq!(pick(&r, "h", "POST", "/api/a?debug=1", &[]), "any/post");
        assert_eq!(pick(&r, "h", "POST", "/api/a", &[]), "any/post");
        assert_eq!(
            pick(&r, "h", "POST", "/api/a?debug=1", &[("x-canary", "yes")]),
            "any/post"
        );
    }

    #[test]
    fn exact_host_beats_wildcard_and_longer_wildcard_wins() {
        let r = router(ROUTES);
        assert_eq!(
            pick(&r, "shop.example.com:8080", "GET", "/", &[]),
            "shop/shop"
        );
        assert_eq!(pick(&r, "a.example.com", "GET", "/", &[]), "wild/wild");
        assert_eq!(pick(&r, "a.b.example.com", "GET", "/", &[]), "wild/wild");
        assert_eq!(
            pick(&r, "x.eu.example.com", "GET", "/", &[]),
            "deeper/deeper"
        );
        assert_eq!(pick(&r, "example.com", "GET", "/", &[]), "any/catchall");
        assert_eq!(pick(&r, "SHOP.example.com", "GET", "/", &[]), "shop/shop");
    }

    #[test]
    fn routes_only_serve_their_listeners() {
        let r = router(
            "routes: [{ name: a, listeners: [other], rules: [{ backends: [{ backend: b }] }] }]",
        );
        assert_eq!(pick(&r, "h", "GET", "/", &[]), "none");
    }

    #[test]
    fn a_route_never_serves_the_hosts_a_more_specific_listener_takes() {
        let r = router(
            r#"
routes:
  - name: any
    excludedHostnames: ["*.example.com"]
    rules: [{ backends: [{ backend: any }] }]
  - name: wild
    hostnames: ["*.example.com"]
    excludedHostnames: ["*.foo.example.com", "abc.foo.example.com"]
    rules: [{ matches: [{ path: { type: PathPrefix, value: /wild } }], backends: [{ backend: wild }] }]
"#,
        );
        assert_eq!(
            pick(&r, "bar.example.com", "GET", "/wild", &[]),
            "wild/wild"
        );
        assert_eq!(pick(&r, "bar.example.com", "GET", "/other", &[]), "none");
        assert_eq!(pick(&r, "x.foo.example.com", "GET", "/wild", &[]), "none");
        assert_eq!(pick(&r, "ABC.foo.example.com", "GET", "/wild", &[]), "none");
        assert_eq!(pick(&r, "example.org", "GET", "/", &[]), "any/any");
    }
}

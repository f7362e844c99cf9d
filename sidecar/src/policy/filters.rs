//! Route filters: header edits, URL rewrites, redirects and direct responses. Mirroring lives
//! in `proxy.rs` because it sends traffic.

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode, Uri};
use portico_proxy_api::{DirectResponse, HeaderModifier, PathRewrite, Redirect, UrlRewrite};

use crate::error::{Body, full};

/// Applies remove, then set, then add. Names and values were validated with the config; a value
/// that still fails to convert is skipped rather than failing the request.
pub fn modify_headers(m: &HeaderModifier, headers: &mut HeaderMap) {
    for name in &m.remove {
        headers.remove(name.as_str());
    }
    for h in &m.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(&h.name),
            HeaderValue::try_from(&h.value),
        ) {
            headers.insert(n, v);
        }
    }
    for h in &m.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(&h.name),
            HeaderValue::try_from(&h.value),
        ) {
            headers.append(n, v);
        }
    }
}

/// The new path for a rewrite or redirect. `ReplacePrefixMatch` swaps the matched prefix and
/// keeps the rest, joining with exactly one `/`.
pub fn rewrite_path(rw: &PathRewrite, path: &str, matched_prefix: Option<&str>) -> String {
    match rw {
        PathRewrite::ReplaceFullPath(p) => p.clone(),
        PathRewrite::ReplacePrefixMatch(repl) => {
            let prefix = matched_prefix.unwrap_or("/");
            let prefix = if prefix.len() > 1 {
                prefix.trim_end_matches('/')
            } else {
                ""
            };
            let rest = path.get(prefix.len()..).unwrap_or("");
            match (repl.ends_with('/'), rest.starts_with('/')) {
                (true, true) => format!("{}{rest}", &repl[..repl.len() - 1]),
                (false, false) if !rest.is_empty() => format!("{repl}/{rest}"),
                _ if rest.is_empty() && repl.is_empty() => "/".into(),
                _ => format!("{repl}{rest}"),
            }
        }
    }
}

/// Rewrites host and path of a request about to be forwarded; returns the new host, if any.
pub fn rewrite_url(rw: &UrlRewrite, uri: &mut Uri, matched_prefix: Option<&str>) -> Option<String> {
    if let Some(p) = &rw.path {
        let new_path = rewrite_path(p, uri.path(), matched_prefix);
        let pq = match uri.query() {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        };
        let mut parts = uri.clone().into_parts();
        if let Ok(pq) = pq.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(u) = Uri::from_parts(parts) {
                *uri = u;
            }
        }
    }
    rw.hostname.clone()
}

/// Builds a redirect to the request's URL with the configured parts replaced.
pub fn redirect(
    r: &Redirect,
    scheme: &str,
    host: &str,
    uri: &Uri,
    matched_prefix: Option<&str>,
) -> Response<Body> {
    let (req_host, req_port) = split_host_port(host);
    let scheme = r.scheme.as_deref().unwrap_or(scheme);
    let hostname = r.hostname.as_deref().unwrap_or(req_host);
    // A scheme change without an explicit port drops the request's port: it belonged to the old
    // scheme (the Gateway API does the same).
    let port = r.port.or(if r.scheme.is_some() { None } else { req_port });
    let port = port.filter(|p| !matches!((scheme, p), ("http", 80) | ("https", 443)));
    let path = match &r.path {
        Some(p) => rewrite_path(p, uri.path(), matched_prefix),
        None => uri.path().to_owned(),
    };
    let mut location = format!("{scheme}://{hostname}");
    if let Some(p) = port {
        location.push_str(&format!(":{p}"));
    }
    location.push_str(&path);
    if let Some(q) = uri.query() {
        location.push('?');
        location.push_str(q);
    }
    let status = StatusCode::from_u16(r.status_code.unwrap_or(302)).unwrap_or(StatusCode::FOUND);
    let mut resp = Response::new(full(""));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::try_from(location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp
}

fn split_host_port(host: &str) -> (&str, Option<u16>) {
    let colon = if host.starts_with('[') {
        host.find("]:").map(|i| i + 1)
    } else {
        host.rfind(':')
    };
    match colon.and_then(|i| Some((&host[..i], host[i + 1..].parse().ok()?))) {
        Some((h, p)) => (h, Some(p)),
        None => (host, None),
    }
}

/// A fixed response.
pub fn direct(d: &DirectResponse) -> Response<Body> {
    let mut resp = Response::new(full(d.body.clone()));
    *resp.status_mut() = StatusCode::from_u16(d.status).unwrap_or(StatusCode::OK);
    for h in &d.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(&h.name),
            HeaderValue::try_from(&h.value),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_replacement_keeps_the_rest_with_one_slash() {
        let r = |repl: &str, path: &str, prefix: &str| {
            rewrite_path(
                &PathRewrite::ReplacePrefixMatch(repl.into()),
                path,
                Some(prefix),
            )
        };
        assert_eq!(r("/v2", "/api/users", "/api"), "/v2/users");
        assert_eq!(r("/", "/api/users", "/api"), "/users");
        assert_eq!(r("/", "/api", "/api"), "/");
        assert_eq!(r("/v2/", "/api/users", "/api/"), "/v2/users");
        assert_eq!(r("/new", "/x", "/"), "/new/x");
    }

    #[test]
    fn redirect_replaces_scheme_and_drops_default_port() {
        let uri: Uri = "/a/b?x=1".parse().unwrap();
        let r = Redirect {
            scheme: Some("https".into()),
            status_code: Some(301),
            ..Default::default()
        };
        let resp = redirect(&r, "http", "shop.example.com:8080", &uri, None);
        assert_eq!(resp.status(), 301);
        assert_eq!(
            resp.headers()["location"],
            "https://shop.example.com/a/b?x=1"
        );
    }

    #[test]
    fn headers_are_removed_set_and_added() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("old"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        let m: HeaderModifier = serde_yaml::from_str(
            "{ set: [{name: x-a, value: new}], add: [{name: x-a, value: more}], remove: [x-gone] }",
        )
        .unwrap();
        modify_headers(&m, &mut h);
        let all: Vec<_> = h.get_all("x-a").iter().collect();
        assert_eq!(all, ["new", "more"]);
        assert!(h.get("x-gone").is_none());
    }
}

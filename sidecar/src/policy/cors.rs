//! CORS (the Fetch standard's CORS protocol), answered by the proxy.
//!
//! ```text
//!  OPTIONS + Origin + Access-Control-Request-Method   a preflight: answered here, 204
//!     origin and method (and requested headers) allowed ─► Access-Control-Allow-* , Max-Age
//!     else                                              ─► no allow headers (the browser refuses)
//!  any other request with an allowed Origin            forwarded; the response gets
//!                                                      Access-Control-Allow-Origin, Expose-Headers,
//!                                                      Allow-Credentials
//!  every answer of a CORS rule                         Vary: Origin
//! ```

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use portico_proxy_api::Cors;

use crate::error::{Body, empty};

/// Whether `origin` is one `cors` allows.
pub fn allowed_origin(cors: &Cors, origin: &str) -> bool {
    cors.allow_origins.iter().any(|pattern| {
        if pattern == "*" || pattern.eq_ignore_ascii_case(origin) {
            return true;
        }
        // `https://*.example.com`: the scheme, then any subdomain (at least one label).
        match pattern.split_once("://*.") {
            Some((scheme, suffix)) => origin
                .strip_prefix(scheme)
                .and_then(|o| o.strip_prefix("://"))
                .is_some_and(|host| {
                    host.len() > suffix.len() + 1
                        && host
                            .to_ascii_lowercase()
                            .ends_with(&format!(".{}", suffix.to_ascii_lowercase()))
                }),
            None => false,
        }
    })
}

/// The preflight's answer, when the request is one (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`).
pub fn preflight(cors: &Cors, method: &Method, headers: &HeaderMap) -> Option<Response<Body>> {
    if method != Method::OPTIONS {
        return None;
    }
    let origin = headers.get(ORIGIN)?;
    let requested = headers.get(ACCESS_CONTROL_REQUEST_METHOD)?;
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.append(VARY, HeaderValue::from_static("origin"));
    let origin_ok = origin.to_str().is_ok_and(|o| allowed_origin(cors, o));
    let method_ok = requested.to_str().is_ok_and(|m| {
        cors.allow_methods
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(m))
    });
    let headers_ok = headers
        .get(ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .all(|n| {
                    cors.allow_headers
                        .iter()
                        .any(|a| a == "*" || a.eq_ignore_ascii_case(n))
                })
        });
    if !(origin_ok && method_ok && headers_ok) {
        return Some(resp);
    }
    h.insert(
        ACCESS_CONTROL_ALLOW_ORIGIN,
        allow_origin_value(cors, origin),
    );
    // A browser reads `*` literally in a credentialed answer (the Fetch standard), so a
    // wildcard then names what the preflight asked for.
    let any = |list: &[String]| list.iter().any(|a| a == "*");
    let methods = match (any(&cors.allow_methods), cors.allow_credentials) {
        (true, true) => Some(requested.clone()),
        (true, false) => Some(HeaderValue::from_static("*")),
        (false, _) => HeaderValue::from_str(&cors.allow_methods.join(", ")).ok(),
    };
    if let Some(v) = methods {
        h.insert(ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    let allow_headers = match (any(&cors.allow_headers), cors.allow_credentials) {
        (true, true) => headers.get(ACCESS_CONTROL_REQUEST_HEADERS).cloned(),
        (true, false) => Some(HeaderValue::from_static("*")),
        (false, _) if cors.allow_headers.is_empty() => None,
        (false, _) => HeaderValue::from_str(&cors.allow_headers.join(", ")).ok(),
    };
    if let Some(v) = allow_headers {
        h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    // Expose-Headers belongs on the actual response; the Gateway API asks for it on the
    // preflight's too, and browsers ignore it there.
    if !cors.expose_headers.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cors.expose_headers.join(", "))
    {
        h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
    if let Some(age) = cors.max_age {
        h.insert(
            ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(age.get().as_secs()),
        );
    }
    if cors.allow_credentials {
        h.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    Some(resp)
}

/// The request's origin, when the rule allows it (its response is marked in [`mark`]).
pub fn origin_to_mark(cors: &Cors, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(ORIGIN)?;
    origin
        .to_str()
        .is_ok_and(|o| allowed_origin(cors, o))
        .then(|| origin.clone())
}

/// Marks a response to an allowed cross-origin request; `Vary: Origin` on every answer of the
/// rule, so caches keep the per-origin answers apart.
pub fn mark(cors: &Cors, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
    headers.append(VARY, HeaderValue::from_static("origin"));
    let Some(origin) = origin else {
        return;
    };
    headers.insert(
        ACCESS_CONTROL_ALLOW_ORIGIN,
        allow_origin_value(cors, origin),
    );
    if !cors.expose_headers.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cors.expose_headers.join(", "))
    {
        headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
    if cors.allow_credentials {
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

/// `*` for a rule that allows any origin without credentials, else the origin itself (a
/// credentialed answer must name it).
fn allow_origin_value(cors: &Cors, origin: &HeaderValue) -> HeaderValue {
    if cors.allow_origins.iter().any(|o| o == "*") && !cors.allow_credentials {
        HeaderValue::from_static("*")
    } else {
        origin.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors {
            allow_origins: vec![
                "https://shop.example.com".into(),
                "https://*.example.org".into(),
            ],
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["content-type".into()],
            expose_headers: vec!["x-total".into()],
            max_age: Some(portico_proxy_api::Duration::from_secs(600)),
            allow_credentials: true,
        }
    }

    #[test]
    fn exact_and_subdomain_wildcard_origins() {
        let c = cors();
        assert!(allowed_origin(&c, "https://shop.example.com"));
        assert!(allowed_origin(&c, "https://a.example.org"));
        assert!(allowed_origin(&c, "https://a.b.example.org"));
        assert!(
            !allowed_origin(&c, "https://example.org"),
            "at least one label"
        );
        assert!(
            !allowed_origin(&c, "http://a.example.org"),
            "the scheme counts"
        );
        assert!(!allowed_origin(&c, "https://evil-example.org"));
        assert!(!allowed_origin(&c, "https://shop.example.com.evil.net"));
    }

    fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_preflight_gets_allow_headers_only_when_everything_asked_is_allowed() {
        let c = cors();
        let ok = preflight(
            &c,
            &Method::OPTIONS,
            &request(&[
                ("origin", "https://a.example.org"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "Content-Type"),
            ]),
        )
        .expect("a preflight");
        assert_eq!(ok.status(), 204);
        let h = ok.headers();
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.example.org");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
        assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(h[ACCESS_CONTROL_EXPOSE_HEADERS], "x-total");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[VARY], "origin");
        for refused in [
            request(&[
                ("origin", "https://evil.net"),
                ("access-control-request-method", "GET"),
            ]),
            request(&[
                ("origin", "https://shop.example.com"),
                ("access-control-request-method", "DELETE"),
            ]),
            request(&[
                ("origin", "https://shop.example.com"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-secret"),
            ]),
        ] {
            let resp = preflight(&c, &Method::OPTIONS, &refused).expect("answered");
            assert_eq!(resp.status(), 204);
            assert!(
                !resp.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN),
                "{refused:?}"
            );
        }
        assert!(
            preflight(
                &c,
                &Method::GET,
                &request(&[("origin", "https://a.example.org")])
            )
            .is_none()
        );
        assert!(
            preflight(
                &c,
                &Method::OPTIONS,
                &request(&[("origin", "https://a.example.org")])
            )
            .is_none(),
            "an OPTIONS without Access-Control-Request-Method is an ordinary request"
        );
    }

    #[test]
    fn an_allowed_origin_is_marked_on_the_response_and_star_without_credentials() {
        let c = cors();
        let mut h = HeaderMap::new();
        let origin = origin_to_mark(&c, &request(&[("origin", "https://shop.example.com")]));
        mark(&c, origin.as_ref(), &mut h);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://shop.example.com");
        assert_eq!(h[ACCESS_CONTROL_EXPOSE_HEADERS], "x-total");
        assert_eq!(h[VARY], "origin");
        let mut h = HeaderMap::new();
        let origin = origin_to_mark(&c, &request(&[("origin", "https://evil.net")]));
        mark(&c, origin.as_ref(), &mut h);
        assert!(!h.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        let any = Cors {
            allow_origins: vec!["*".into()],
            ..Cors::default()
        };
        let mut h = HeaderMap::new();
        let origin = origin_to_mark(&any, &request(&[("origin", "https://x.io")]));
        mark(&any, origin.as_ref(), &mut h);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }

    #[test]
    fn wildcards_answer_star_or_echo_what_a_credentialed_preflight_asked_for() {
        let mut any = Cors {
            allow_origins: vec!["*".into()],
            allow_methods: vec!["*".into()],
            allow_headers: vec!["*".into()],
            ..Cors::default()
        };
        let asked = request(&[
            ("origin", "https://other.foo.com"),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "x-header-1, x-header-2"),
        ]);
        let open = preflight(&any, &Method::OPTIONS, &asked).expect("a preflight");
        let h = open.headers();
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "*");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_HEADERS], "*");
        assert!(!h.contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS));
        any.allow_credentials = true;
        let credentialed = preflight(&any, &Method::OPTIONS, &asked).expect("a preflight");
        let h = credentialed.headers();
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://other.foo.com");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "PUT");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_HEADERS], "x-header-1, x-header-2");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    }
}

//! HTTP rules a proxy must apply on every hop, in one place.

use http::HeaderMap;
use http::header::{self, Entry, HeaderName, HeaderValue};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1): a proxy removes
/// them, plus every header named in `Connection`, before forwarding. `TE: trailers` is the one
/// exception we keep, because gRPC over HTTP/2 requires it end to end.
/// (Pre-parsed names: this runs twice per request.)
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Is this an HTTP/1.1 protocol upgrade request (RFC 9110 §7.8), e.g. a WebSocket handshake?
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1). When `keep_upgrade` is set (an upgrade is being
/// passed through), `Connection: upgrade` and `Upgrade` are kept, since the next hop must see
/// them to agree to the switch.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most requests carry none of these: one pass over the names (comparisons of standard
    // names are an integer compare) instead of a hash lookup per hop-by-hop name.
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let upgrade = if keep_upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(up) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, up);
    }
}

/// Adds `X-Forwarded-For` (appending the client address, `client_ip`, to any existing list)
/// and `X-Forwarded-Proto` (only when absent: an outer proxy that terminated TLS knows better).
/// Without a previous list nothing is allocated: the value is shared with the connection.
pub fn add_forwarded(headers: &mut HeaderMap, client_ip: &HeaderValue, scheme: &'static str) {
    // Entries: one lookup per header, on every request.
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Occupied(mut e) => {
            let v = forwarded_for(Some(e.get().as_bytes()), client_ip);
            e.insert(v);
        }
        Entry::Vacant(e) => {
            e.insert(client_ip.clone());
        }
    }
    headers
        .entry(X_FORWARDED_PROTO)
        .or_insert(HeaderValue::from_static(scheme));
}

/// `X-Forwarded-For` for a request that came with `prev` (its first value) from `client_ip`:
/// the list with the address appended, or the address alone (an unreadable list is replaced).
pub fn forwarded_for(prev: Option<&[u8]>, client_ip: &HeaderValue) -> HeaderValue {
    // Readable: what `HeaderValue::to_str` accepts.
    let readable = |v: &[u8]| v.iter().all(|&b| b == b'\t' || (b' '..0x7f).contains(&b));
    match prev {
        Some(prev) if readable(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + client_ip.len());
            v.extend_from_slice(prev);
            v.extend_from_slice(b", ");
            v.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or_else(|_| client_ip.clone())
        }
        _ => client_ip.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_listed_and_standard_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-kept"], "1");
    }

    #[test]
    fn upgrade_headers_survive_when_upgrading() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarded_for_is_the_client_alone_without_a_list() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        add_forwarded(&mut h, &HeaderValue::from_static("10.0.0.1"), "http");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(
            h["x-forwarded-proto"], "https",
            "an outer proxy's value is kept"
        );
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        add_forwarded(&mut h, &HeaderValue::from_static("10.0.0.1"), "http");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}

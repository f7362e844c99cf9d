//! A request's identity across hops: `x-request-id` and W3C trace context (`traceparent`,
//! `tracestate`), stamped on every request a proxy forwards, before routing, on both request
//! paths and at every hop (gateway, sidecar outbound, sidecar inbound).
//!
//! ```text
//!  x-request-id  kept when the client sent a usable one, else a new UUID v4
//!  traceparent   valid: same trace id and flags, a new parent id (this hop's span)
//!                absent or invalid: a new trace id and span id, flags 00; tracestate dropped
//! ```
//!
//! The request ID goes upstream, into the access log, and onto the answers the proxy makes
//! itself (errors); the trace id goes into the access log, so one request can be followed
//! through every proxy it crossed. The proxy exports no spans: it keeps the chain intact for
//! the applications' tracers (W3C Trace Context §3, a "vendor" that only propagates).

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use rand::Rng;

use crate::wire::raw::{TRACEPARENT_LEN, UUID_LEN};

/// The request ID header (Envoy's and nginx's name for it).
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A client's request ID longer than this is replaced (it is logged and forwarded).
const MAX_REQUEST_ID: usize = 200;

/// What [`stamp`] gave a request.
#[derive(Clone, Debug)]
pub struct RequestIds {
    request_id: RequestId,
    /// The trace id, 32 lowercase hex digits.
    pub trace_id: [u8; 32],
}

/// A request ID: the client's, or one the proxy made (kept as its digits: a request forwarded
/// from its parsed fields never needs it as a header value).
#[derive(Clone, Debug)]
enum RequestId {
    Kept(HeaderValue),
    Made([u8; UUID_LEN]),
}

impl RequestIds {
    /// The trace id as text.
    pub fn trace_id(&self) -> &str {
        // Always hex digits: ASCII.
        std::str::from_utf8(&self.trace_id).unwrap_or_default()
    }

    /// The request ID as forwarded, as text (`None`: the client's is not visible ASCII).
    pub fn request_id(&self) -> Option<&str> {
        match &self.request_id {
            RequestId::Kept(v) => v.to_str().ok(),
            RequestId::Made(id) => std::str::from_utf8(id).ok(),
        }
    }

    /// The request ID as a header value (for the proxy's own answers).
    pub fn request_id_value(&self) -> HeaderValue {
        match &self.request_id {
            RequestId::Kept(v) => v.clone(),
            RequestId::Made(id) => value(id),
        }
    }
}

/// Sets the request ID and this hop's trace context on a request's headers: what
/// [`stamp_raw`] decides from the client's fields, applied to the map ([`Stamped::apply`]).
pub fn stamp(headers: &mut HeaderMap) -> RequestIds {
    let stamped = stamp_raw(
        headers.get(&X_REQUEST_ID).cloned(),
        headers.get(&TRACEPARENT).map(HeaderValue::as_bytes),
    );
    stamped.apply(headers);
    stamped.ids
}

/// What [`stamp_raw`] decided for a request whose header map was not built
/// ([`crate::wire::raw`]).
#[derive(Clone, Debug)]
pub struct Stamped {
    /// The IDs, as [`stamp`] returns them.
    pub ids: RequestIds,
    /// This hop's `traceparent`.
    pub traceparent: [u8; TRACEPARENT_LEN],
    /// The trace was restarted: the client's `tracestate` goes.
    pub restarted: bool,
}

impl Stamped {
    /// A new request ID, replacing the client's; `None` keeps the client's.
    pub fn new_request_id(&self) -> Option<&[u8; UUID_LEN]> {
        match &self.ids.request_id {
            RequestId::Made(id) => Some(id),
            RequestId::Kept(_) => None,
        }
    }

    /// Sets these IDs on the request's header map (the one they were drawn from, or one built
    /// after all, which then carries the IDs the request was already known by). A new value
    /// replaces every field of its name; a restarted trace drops the client's `tracestate`,
    /// whose vendor state belongs to the old trace.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Some(id) = self.new_request_id() {
            headers.insert(&X_REQUEST_ID, value(id));
        }
        headers.insert(&TRACEPARENT, value(&self.traceparent));
        if self.restarted {
            headers.remove(&TRACESTATE);
        }
    }
}

/// The request ID and this hop's trace context for a request that came with these
/// `x-request-id` and `traceparent` values (the first of each): plain bytes, written straight
/// into the upstream head of a request whose header map was not built, or set on a map by
/// [`Stamped::apply`].
pub fn stamp_raw(client_id: Option<HeaderValue>, client_traceparent: Option<&[u8]>) -> Stamped {
    // One handle on the thread's generator for the three draws: this runs for every request.
    let mut rng = rand::rng();
    let request_id = match client_id {
        Some(id) if usable_request_id(&id) => RequestId::Kept(id),
        _ => RequestId::Made(uuid(rng.random())),
    };
    let span = hex::<16>(u128::from(rng.random::<u64>().max(1)));
    let ((trace_id, flags), restarted) = match client_traceparent.and_then(parse_traceparent) {
        Some(kept) => (kept, false),
        None => ((hex::<32>(rng.random::<u128>().max(1)), *b"00"), true),
    };
    Stamped {
        ids: RequestIds {
            request_id,
            trace_id,
        },
        traceparent: traceparent(&trace_id, &span, &flags),
        restarted,
    }
}

/// A version 00 `traceparent`.
fn traceparent(trace_id: &[u8; 32], span: &[u8; 16], flags: &[u8; 2]) -> [u8; TRACEPARENT_LEN] {
    let mut v = [0u8; TRACEPARENT_LEN];
    v[..3].copy_from_slice(b"00-");
    v[3..35].copy_from_slice(trace_id);
    v[35] = b'-';
    v[36..52].copy_from_slice(span);
    v[52] = b'-';
    v[53..].copy_from_slice(flags);
    v
}

/// A value the proxy made (hex digits and dashes), cut from the thread's slab.
fn value(made: &[u8]) -> HeaderValue {
    HeaderValue::from_maybe_shared(slab_copy(made)).unwrap_or(HeaderValue::from_static("unknown"))
}

/// The size of each slab the new IDs are copied into: about ten requests' worth (what a
/// value kept longer than its request holds on to).
const SLAB: usize = 1024;

thread_local! {
    /// What is left of this thread's current slab.
    static IDS: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// `src` as shared bytes cut from the thread's slab: a reference count, not an allocation, per
/// request (one allocation per [`SLAB`] bytes). A slab is freed when the last value cut from it
/// is dropped.
fn slab_copy(src: &[u8]) -> Bytes {
    IDS.with_borrow_mut(|slab| {
        if slab.capacity() - slab.len() < src.len() {
            *slab = BytesMut::with_capacity(SLAB);
        }
        slab.extend_from_slice(src);
        slab.split().freeze()
    })
}

fn usable_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(|c| c.is_ascii_graphic())
}

/// A UUID v4 from 128 random bits, as Envoy generates them.
fn uuid(mut bits: u128) -> [u8; UUID_LEN] {
    // Version 4, variant 10xx (RFC 9562 §5.4).
    bits = (bits & !(0xf << 76)) | (0x4 << 76);
    bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    let h = hex::<32>(bits);
    // 8-4-4-4-12 digits.
    let mut s = [b'-'; UUID_LEN];
    s[..8].copy_from_slice(&h[..8]);
    s[9..13].copy_from_slice(&h[8..12]);
    s[14..18].copy_from_slice(&h[12..16]);
    s[19..23].copy_from_slice(&h[16..20]);
    s[24..].copy_from_slice(&h[20..]);
    s
}

/// The trace id and flags of a valid `traceparent` (W3C Trace Context §3.2): version 00 is
/// exactly `00-<32 hex>-<16 hex>-<2 hex>`, later versions may append fields; all-zero ids and
/// version ff are invalid; hex is lowercase.
fn parse_traceparent(b: &[u8]) -> Option<([u8; 32], [u8; 2])> {
    let lower_hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let (version, trace, parent, flags) = (&b[..2], &b[3..35], &b[36..52], &b[53..55]);
    if !lower_hex(version) || version == b"ff" || (version == b"00" && b.len() != 55) {
        return None;
    }
    if b.len() > 55 && b[55] != b'-' {
        return None;
    }
    let zero = |s: &[u8]| s.iter().all(|c| *c == b'0');
    if !lower_hex(trace) || !lower_hex(parent) || !lower_hex(flags) || zero(trace) || zero(parent) {
        return None;
    }
    Some((trace.try_into().ok()?, flags.try_into().ok()?))
}

/// The low `N * 4` bits of `n` as `N` lowercase hex digits (`N` even).
fn hex<const N: usize>(n: u128) -> [u8; N] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let bytes = n.to_be_bytes();
    let mut out = [b'0'; N];
    // Two digits per byte, from the last N / 2 bytes.
    for (pair, b) in out.chunks_exact_mut(2).zip(&bytes[16 - N / 2..]) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traceparent(h: &HeaderMap) -> String {
        h[&TRACEPARENT].to_str().unwrap().to_owned()
    }

    #[test]
    fn a_valid_traceparent_keeps_its_trace_and_flags_and_gets_a_new_parent_per_hop() {
        let mut h = HeaderMap::new();
        let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert(&TRACEPARENT, HeaderValue::from_static(sent));
        h.insert(&TRACESTATE, HeaderValue::from_static("vendor=1"));
        let ids = stamp(&mut h);
        assert_eq!(ids.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let first = traceparent(&h);
        assert!(
            first.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{first}"
        );
        assert!(first.ends_with("-01"), "flags kept: {first}");
        assert_ne!(&first[36..52], "00f067aa0ba902b7", "a new parent id");
        assert_eq!(
            h[&TRACESTATE], "vendor=1",
            "tracestate passes with a valid parent"
        );
        // The next hop: same trace, another new parent.
        stamp(&mut h);
        let second = traceparent(&h);
        assert_eq!(&second[..35], &first[..35]);
        assert_ne!(&second[36..52], &first[36..52]);
    }

    #[test]
    fn an_absent_or_invalid_traceparent_starts_a_new_trace_and_drops_tracestate() {
        for bad in [
            None,
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"), // uppercase
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), // zero trace
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"), // zero parent
            Some("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), // version ff
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"), // 00 with more
            Some("garbage"),
        ] {
            let mut h = HeaderMap::new();
            if let Some(b) = bad {
                h.insert(&TRACEPARENT, HeaderValue::from_static(b));
            }
            h.insert(&TRACESTATE, HeaderValue::from_static("vendor=1"));
            let ids = stamp(&mut h);
            let tp = traceparent(&h);
            assert_eq!(tp.len(), 55, "{tp}");
            assert!(tp.starts_with("00-") && tp.ends_with("-00"), "{tp}");
            assert_eq!(&tp[3..35], ids.trace_id());
            assert!(
                parse_traceparent(h[&TRACEPARENT].as_bytes()).is_some(),
                "{tp} is valid"
            );
            assert!(!h.contains_key(&TRACESTATE), "{bad:?}: tracestate dropped");
        }
        // A later version with extra fields is valid.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert!(parse_traceparent(later.as_bytes()).is_some());
    }

    #[test]
    fn hex_writes_the_low_digits_in_order() {
        assert_eq!(hex::<4>(0x1234_abcd), *b"abcd");
        assert_eq!(hex::<16>(u128::from(u64::MAX) + 1), *b"0000000000000000");
        assert_eq!(hex::<32>(u128::MAX), [b'f'; 32]);
        assert_eq!(&hex::<32>(0x0102)[28..], b"0102");
    }

    #[test]
    fn a_request_id_is_kept_when_usable_else_a_uuid_v4() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(stamp(&mut h).request_id(), Some("abc-123"));
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static(""));
        let ids = stamp(&mut h);
        let s = ids.request_id().unwrap();
        assert_eq!(s.len(), 36);
        let dashes: Vec<usize> = s.match_indices('-').map(|(i, _)| i).collect();
        assert_eq!(dashes, [8, 13, 18, 23], "8-4-4-4-12: {s}");
        assert!(s.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit()), "{s}");
        assert_eq!(&s[14..15], "4", "version 4: {s}");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "variant: {s}");
        assert_eq!(h[&X_REQUEST_ID], s);
        assert_ne!(stamp(&mut HeaderMap::new()).request_id(), Some(s), "random");
    }

    #[test]
    fn ids_made_without_a_map_follow_the_same_rules_and_land_in_a_map_built_later() {
        let sent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let kept = stamp_raw(Some(HeaderValue::from_static("abc")), Some(sent));
        assert_eq!(kept.ids.request_id(), Some("abc"));
        assert!(kept.new_request_id().is_none() && !kept.restarted);
        assert_eq!(&kept.traceparent[..36], &sent[..36], "same trace");
        assert_ne!(&kept.traceparent[36..52], &sent[36..52], "a new parent");
        let made = stamp_raw(Some(HeaderValue::from_static("a b")), Some(b"garbage"));
        assert!(made.restarted);
        let id = made.new_request_id().expect("an unusable ID is replaced");
        assert_eq!(made.ids.request_id().map(str::as_bytes), Some(&id[..]));
        assert_eq!(made.ids.request_id_value(), &id[..]);
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("a b"));
        h.insert(&TRACESTATE, HeaderValue::from_static("v=1"));
        made.apply(&mut h);
        assert_eq!(h[&X_REQUEST_ID], &id[..]);
        assert_eq!(h[&TRACEPARENT], &made.traceparent[..]);
        assert_eq!(&made.traceparent[3..35], &made.ids.trace_id[..]);
        assert!(
            h.get(&TRACESTATE).is_none(),
            "a restarted trace drops tracestate"
        );
    }
}

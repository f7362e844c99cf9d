//! A request head kept as the fields it was parsed into, without a header map: for the common
//! request (HTTP/1.1, a few fields, none hop-by-hop but `Connection: keep-alive` or `close`)
//! whose rule only forwards it. Building, editing, writing and dropping a header map was the
//! largest share of the fast path's own work per request (about 4,700 of 26,000 instructions,
//! `bench/instructions.sh`); such a request is written upstream from its own bytes instead,
//! with the fields the proxy sets on every request ([`Stamp`]) in place of the client's.
//!
//! Anything that reads or edits headers (a route matching on them, request stages, hashing on
//! a header, the sidecar's inbound policy) builds the map first ([`Fields::header_map`]), and
//! then the request goes the usual way.

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue};

use super::fields::{Known, Lines, range_of, request_line, write_field};

/// Requests with more fields than this get a header map at once.
pub const MAX_FIELDS: usize = 16;
/// Bytes of a UUID as text (a request ID the proxy makes).
pub const UUID_LEN: usize = 36;
/// Bytes of a version 00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

/// One field: where its name and value are in the read buffer, and what its name is. Offsets
/// are 16 bits (a head whose fields reach past 64 KiB gets a header map): a head is moved a few
/// times on its way, and every byte of it is copied each time.
#[derive(Clone, Copy, Debug)]
struct Field {
    name: (u16, u16),
    value: (u16, u16),
    kind: Known,
}

impl Field {
    const EMPTY: Self = Self {
        name: (0, 0),
        value: (0, 0),
        kind: Known::Other,
    };
}

/// A request head's fields, as parsed (offsets into the buffer the head was read into).
#[derive(Clone, Debug)]
pub struct Fields {
    len: u8,
    list: [Field; MAX_FIELDS],
}

/// The byte range `r` as a `usize` range.
fn span((start, end): (u16, u16)) -> std::ops::Range<usize> {
    usize::from(start)..usize::from(end)
}

impl Fields {
    /// The fields of a request head parsed from `buf` (names and values are slices of it), if
    /// the request can go upstream without a header map: `plain` (the caller's check: HTTP/1.1,
    /// and `Connection` lists nothing but `keep-alive` and `close`), at most [`MAX_FIELDS`]
    /// fields within the first 64 KiB of `buf`, and none that is hop-by-hop (RFC 9110 §7.6.1)
    /// but `Connection`, an `Expect`, or a field `Connection` names.
    pub(super) fn of(
        buf: &[u8],
        fields: &[httparse::Header<'_>],
        kinds: &[Known],
        plain: bool,
    ) -> Option<Self> {
        if !plain || fields.len() > MAX_FIELDS {
            return None;
        }
        let offsets = |part: &[u8]| {
            let r = range_of(buf, part);
            Some((u16::try_from(r.start).ok()?, u16::try_from(r.end).ok()?))
        };
        let mut list = [Field::EMPTY; MAX_FIELDS];
        for ((slot, f), &kind) in list.iter_mut().zip(fields).zip(kinds) {
            match kind {
                Known::HopByHop | Known::TransferEncoding | Known::Expect => return None,
                // `Connection: close` names it (`keep-alive` is hop-by-hop anyway).
                Known::Other if f.name.eq_ignore_ascii_case("close") => return None,
                _ => {}
            }
            // An empty value may point anywhere: keep it as an empty range.
            let value = if f.value.is_empty() {
                (0, 0)
            } else {
                offsets(f.value)?
            };
            *slot = Field {
                name: offsets(f.name.as_bytes())?,
                value,
                kind,
            };
        }
        Some(Self {
            // At most MAX_FIELDS.
            len: fields.len() as u8,
            list,
        })
    }

    fn iter(&self) -> impl ExactSizeIterator<Item = &Field> {
        self.list[..usize::from(self.len)].iter()
    }

    /// Where the first value of the field of this kind is in the buffer.
    fn value_of(&self, kind: Known) -> Option<std::ops::Range<usize>> {
        self.iter().find(|f| f.kind == kind).map(|f| span(f.value))
    }

    /// The first value of the field of this kind, as a slice of `buf`.
    fn first<'b>(&self, buf: &'b [u8], kind: Known) -> Option<&'b [u8]> {
        self.value_of(kind).map(|r| &buf[r])
    }

    /// The value of `Host` (the parser checked there is one, and that it is valid).
    pub fn host<'b>(&self, buf: &'b [u8]) -> &'b str {
        self.first(buf, Known::Host)
            .and_then(|h| std::str::from_utf8(h).ok())
            .unwrap_or("")
    }

    /// The client's `x-request-id`, if it sent one (shares `buf`).
    pub fn request_id(&self, buf: &Bytes) -> Option<HeaderValue> {
        let value = self.value_of(Known::XRequestId)?;
        HeaderValue::from_maybe_shared(buf.slice(value)).ok()
    }

    /// The client's `traceparent`, if it sent one.
    pub fn traceparent<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        self.first(buf, Known::Traceparent)
    }

    /// The client's `x-forwarded-for`, if it sent one.
    pub fn forwarded_for<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        self.first(buf, Known::XForwardedFor)
    }

    /// The header map of these fields (values share `buf`), for a request that needs one after
    /// all; the error says what is invalid (the parser let nothing through that is).
    pub fn header_map(&self, buf: &Bytes) -> Result<HeaderMap, &'static str> {
        let fields = self.iter().map(|f| (&buf[span(f.name)], span(f.value)));
        super::fields::header_map(buf, fields)
    }

    /// Serializes the request head to send upstream: the request line in origin form, the
    /// client's fields as they came (`buf` holds them) but for `Connection` and those `stamp`
    /// replaces, then the fields of `stamp`. The body's framing is the client's
    /// `Content-Length`, which passes (a chunked request has a header map).
    pub fn write_request(&self, out: &mut Vec<u8>, buf: &[u8], parts: &Parts, stamp: &Stamp) {
        request_line(out, parts);
        let mut lines = Lines::new(buf);
        let mut proto = false;
        for f in self.iter() {
            let replaced = match f.kind {
                Known::Connection | Known::Traceparent | Known::XForwardedFor => true,
                Known::XRequestId => stamp.request_id.is_some(),
                Known::Tracestate => stamp.drop_tracestate,
                Known::XForwardedProto => {
                    proto = true;
                    false
                }
                _ => false,
            };
            if replaced {
                lines.skip(out);
            } else {
                lines.keep(out, &buf[span(f.name)], &buf[span(f.value)]);
            }
        }
        lines.skip(out);
        if let Some(id) = &stamp.request_id {
            write_field(out, b"x-request-id", id);
        }
        write_field(out, b"traceparent", &stamp.traceparent);
        write_field(out, b"x-forwarded-for", stamp.forwarded_for.as_bytes());
        if !proto {
            write_field(out, b"x-forwarded-proto", stamp.scheme.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The fields the proxy sets on a request written from its [`Fields`], as
/// [`crate::policy::ids::stamp`] and [`crate::wire::headers::add_forwarded`] set them in a
/// header map.
#[derive(Clone, Debug)]
pub struct Stamp {
    /// A new `x-request-id`, replacing the client's; `None` keeps the client's.
    pub request_id: Option<[u8; UUID_LEN]>,
    /// This hop's `traceparent`.
    pub traceparent: [u8; TRACEPARENT_LEN],
    /// The trace was restarted: the client's `tracestate` is dropped.
    pub drop_tracestate: bool,
    /// `x-forwarded-for`: the client's list with the client's address appended.
    pub forwarded_for: HeaderValue,
    /// `x-forwarded-proto` when the client sent none.
    pub scheme: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::{RequestHead, parse_request};

    fn head(s: &str) -> (Bytes, RequestHead) {
        let buf = Bytes::copy_from_slice(s.as_bytes());
        let head = parse_request(&buf).unwrap().unwrap();
        (buf, head)
    }

    const ID: &[u8; UUID_LEN] = b"11111111-2222-4333-8444-555555555555";
    const TP: &[u8; TRACEPARENT_LEN] = b"00-0123456789abcdef0123456789abcdef-0123456789abcdef-00";

    fn stamp(request_id: Option<&[u8; UUID_LEN]>, drop_tracestate: bool) -> Stamp {
        Stamp {
            request_id: request_id.copied(),
            traceparent: *TP,
            drop_tracestate,
            forwarded_for: HeaderValue::from_static("10.0.0.1, 127.0.0.1"),
            scheme: "http",
        }
    }

    #[test]
    fn only_heads_that_need_no_map_keep_their_fields() {
        let many: String = (0..=MAX_FIELDS).map(|i| format!("x-{i}: v\r\n")).collect();
        for (req, kept) in [
            ("GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n", true),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
                true,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n",
                true,
            ),
            ("GET / HTTP/1.0\r\nHost: a\r\n\r\n", false),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-hop\r\nx-hop: 1\r\n\r\n",
                false,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nclose: 1\r\n\r\n",
                false,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
                false,
            ),
            ("GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n", false),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nKeep-Alive: timeout=5\r\n\r\n",
                false,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nProxy-Authorization: x\r\n\r\n",
                false,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\ncontent-length: 1\r\n\r\n",
                false,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\n\r\n",
                false,
            ),
            (&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n"), false),
        ] {
            let (_, h) = head(req);
            assert_eq!(h.raw.is_some(), kept, "{req:?}");
            assert_eq!(
                h.parts.headers.is_empty(),
                kept,
                "a map exactly when no fields: {req:?}"
            );
        }
    }

    #[test]
    fn the_upstream_head_is_the_clients_fields_as_they_came_then_the_proxys() {
        let (buf, h) = head(
            "GET /a?b=1 HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\nConnection: keep-alive\r\n\
             X-Request-Id: bad id\r\ntraceparent: x\r\ntracestate: v=1\r\nX-Forwarded-For: 10.0.0.1\r\n\
             X-Spaced:   v  \r\nX-Empty:\r\nAccept: */*\r\n\r\n",
        );
        let fields = h.raw.unwrap();
        assert_eq!(fields.host(&buf), "a");
        assert_eq!(fields.request_id(&buf).unwrap(), "bad id");
        assert_eq!(fields.traceparent(&buf), Some(&b"x"[..]));
        assert_eq!(fields.forwarded_for(&buf), Some(&b"10.0.0.1"[..]));
        let mut out = Vec::new();
        fields.write_request(&mut out, &buf, &h.parts, &stamp(Some(ID), true));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /a?b=1 HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\nX-Spaced: v\r\nX-Empty: \r\n\
             Accept: */*\r\nx-request-id: 11111111-2222-4333-8444-555555555555\r\n\
             traceparent: 00-0123456789abcdef0123456789abcdef-0123456789abcdef-00\r\n\
             x-forwarded-for: 10.0.0.1, 127.0.0.1\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }

    #[test]
    fn a_kept_request_id_tracestate_and_forwarded_proto_pass_as_they_came() {
        let (buf, h) = head(
            "POST http://a/p HTTP/1.1\r\nHost: a\r\nx-request-id: abc\r\ntracestate: v=1\r\n\
             x-forwarded-proto: https\r\ncontent-length: 2\r\n\r\nhi",
        );
        let fields = h.raw.unwrap();
        let mut out = Vec::new();
        fields.write_request(&mut out, &buf, &h.parts, &stamp(None, false));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p HTTP/1.1\r\nHost: a\r\nx-request-id: abc\r\ntracestate: v=1\r\n\
             x-forwarded-proto: https\r\ncontent-length: 2\r\n\
             traceparent: 00-0123456789abcdef0123456789abcdef-0123456789abcdef-00\r\n\
             x-forwarded-for: 10.0.0.1, 127.0.0.1\r\n\r\n"
        );
    }

    #[test]
    fn the_map_built_later_holds_every_field() {
        let (buf, h) = head("GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\nX-B:\r\n\r\n");
        let map = h.raw.unwrap().header_map(&buf).unwrap();
        let a: Vec<_> = map.get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "2"]);
        assert_eq!(map["host"], "a");
        assert_eq!(map["x-b"], "");
    }
}

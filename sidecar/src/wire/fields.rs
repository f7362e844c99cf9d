//! The fields of a head as the fast path sees them: what a field's name is ([`Known`], found
//! once per field), and the copying of fields from one head into another ([`Lines`]). Shared by
//! the codec and by requests forwarded from their parsed fields ([`super::raw`]).

use std::ops::Range;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue};

/// The byte range of `part` inside `whole` (`part` is a subslice httparse returned).
pub(crate) fn range_of(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// The fields whose names the framing and hop-by-hop rules look for; the rest are `Other`.
/// Each field of a head is classified once ([`known`]), so the rules compare small integers
/// instead of each name with each of a dozen strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Known {
    Other,
    Connection,
    TransferEncoding,
    ContentLength,
    Date,
    /// `te`, `upgrade`, `keep-alive`, `proxy-connection`, `proxy-authenticate`,
    /// `proxy-authorization`: hop-by-hop fields with no other meaning here.
    HopByHop,
    Host,
    Expect,
    /// The fields the proxy sets on every request it forwards ([`crate::policy::ids`],
    /// [`crate::wire::headers::add_forwarded`]).
    XRequestId,
    Traceparent,
    Tracestate,
    XForwardedFor,
    XForwardedProto,
}

impl Known {
    /// Headers that describe one connection (RFC 9110 §7.6.1), dropped when relaying a head
    /// as it is. `transfer-encoding` is written again for chunked bodies, which pass through.
    pub(crate) fn hop_by_hop(self) -> bool {
        matches!(
            self,
            Self::Connection | Self::TransferEncoding | Self::HopByHop
        )
    }
}

/// What a field's name is, case-insensitively (by its length and first letter first: most
/// names match none, and then no name is compared).
pub(crate) fn known(name: &str) -> Known {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    let first = name.as_bytes().first().map_or(0, u8::to_ascii_lowercase);
    match (name.len(), first) {
        (2, b't') if is("te") => Known::HopByHop,
        (4, b'd') if is("date") => Known::Date,
        (4, b'h') if is("host") => Known::Host,
        (6, b'e') if is("expect") => Known::Expect,
        (7, b'u') if is("upgrade") => Known::HopByHop,
        (10, b'c') if is("connection") => Known::Connection,
        (10, b'k') if is("keep-alive") => Known::HopByHop,
        (10, b't') if is("tracestate") => Known::Tracestate,
        (11, b't') if is("traceparent") => Known::Traceparent,
        (12, b'x') if is("x-request-id") => Known::XRequestId,
        (14, b'c') if is("content-length") => Known::ContentLength,
        (15, b'x') if is("x-forwarded-for") => Known::XForwardedFor,
        (16, b'p') if is("proxy-connection") => Known::HopByHop,
        (17, b't') if is("transfer-encoding") => Known::TransferEncoding,
        (17, b'x') if is("x-forwarded-proto") => Known::XForwardedProto,
        (18, b'p') if is("proxy-authenticate") => Known::HopByHop,
        (19, b'p') if is("proxy-authorization") => Known::HopByHop,
        _ => Known::Other,
    }
}

/// Copies a head's fields into another head: lines that came as `name: value\r\n` are copied as
/// they are, a run of neighbours in one copy (not four per field); a field spaced otherwise is
/// written out in that form.
pub(crate) struct Lines<'h> {
    head: &'h [u8],
    run: Option<Range<usize>>,
}

impl<'h> Lines<'h> {
    /// Copies fields of `head`.
    pub(crate) fn new(head: &'h [u8]) -> Self {
        Self { head, run: None }
    }

    /// Copies a field, its name and value being slices of the head.
    pub(crate) fn keep(&mut self, out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        let head = self.head;
        // An empty value may point anywhere: it is written out.
        let line = (!value.is_empty())
            .then(|| (range_of(head, name), range_of(head, value)))
            .filter(|(name, value)| {
                value.start == name.end + 2
                    && head.get(name.end..value.start) == Some(b": ".as_slice())
                    && head.get(value.end..value.end + 2) == Some(b"\r\n".as_slice())
            })
            .map(|(name, value)| name.start..value.end + 2);
        let Some(line) = line else {
            self.skip(out);
            write_field(out, name, value);
            return;
        };
        match &mut self.run {
            Some(r) if r.end == line.start => r.end = line.end,
            _ => {
                self.skip(out);
                self.run = Some(line);
            }
        }
    }

    /// Leaves a field out (and writes the run before it). Call once after the last field too.
    pub(crate) fn skip(&mut self, out: &mut Vec<u8>) {
        if let Some(r) = self.run.take() {
            out.extend_from_slice(&self.head[r]);
        }
    }
}

/// Appends a field as `name: value\r\n`.
pub(crate) fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends an HTTP/1.1 request line in origin form (`/` for an empty target).
pub(crate) fn request_line(out: &mut Vec<u8>, parts: &Parts) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// A request's header map from its fields, each a name and the range of its value in `buf`
/// (the values share `buf`), with room for what the proxy adds (request ID, trace context,
/// `x-forwarded-*`) without growing. The error says what is invalid.
pub(crate) fn header_map<'n>(
    buf: &Bytes,
    fields: impl ExactSizeIterator<Item = (&'n [u8], Range<usize>)>,
) -> Result<HeaderMap, &'static str> {
    let mut map = super::buffers::header_map(fields.len() + 4);
    for (name, value) in fields {
        let name = HeaderName::from_bytes(name).map_err(|_| "invalid header name")?;
        let value =
            HeaderValue::from_maybe_shared(buf.slice(value)).map_err(|_| "invalid header value")?;
        map.append(name, value);
    }
    Ok(map)
}

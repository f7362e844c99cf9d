//! HTTP/1.1 wire format for the fast path: request and response heads parsed with `httparse`
//! straight into `http` types (header values are slices of the read buffer, not copies), message
//! framing (RFC 9112 §6), a scanner that finds the end of a chunked body without decoding it,
//! and head serialization.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode, Uri, Version};

use super::fields::{Known, Lines, known, range_of, request_line, write_field};

/// Most header fields accepted in one head (hyper's default too).
pub const MAX_HEADERS: usize = 100;

/// Longest head accepted; a longer request head gets 431, a longer response head is a bad
/// upstream response.
pub const MAX_HEAD: usize = 64 * 1024;

/// Why a head could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1 syntax.
    #[error("malformed HTTP/1 head: {0}")]
    Syntax(&'static str),
    /// More than [`MAX_HEADERS`] fields or [`MAX_HEAD`] bytes.
    #[error("head too large")]
    TooLarge,
    /// Conflicting or unusable `Content-Length` / `Transfer-Encoding` (a request smuggling
    /// vector, RFC 9112 §6.3).
    #[error("bad message framing: {0}")]
    Framing(&'static str),
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

impl Framing {
    /// The bytes of a request body the fast path reads whole before forwarding: a
    /// content-length body; nothing for the others (chunked requests go to hyper).
    pub fn body_len(self) -> usize {
        match self {
            Self::Length(n) => usize::try_from(n).unwrap_or(usize::MAX),
            _ => 0,
        }
    }
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, URI, version and headers (values share the read buffer). The headers are empty
    /// when `raw` has the fields.
    pub parts: Parts,
    /// The fields as parsed, for a request that can go upstream without a header map
    /// ([`super::raw`]); then `parts.headers` is empty until [`RequestHead::headers`] builds it.
    pub raw: Option<super::raw::Fields>,
    /// Bytes the head took.
    pub len: usize,
    /// How the body is delimited.
    pub framing: Framing,
    /// The client asked to close the connection after this exchange.
    pub close: bool,
}

impl RequestHead {
    /// Builds the header map of a head whose fields were kept as parsed (`buf`: the bytes the
    /// head was parsed from); after this the request goes the usual way.
    pub fn headers(&mut self, buf: &Bytes) -> Result<(), HeadError> {
        if let Some(raw) = self.raw.take() {
            self.parts.headers = raw.header_map(buf).map_err(HeadError::Syntax)?;
        }
        Ok(())
    }
}

/// A parsed response head; the head the client gets was written by [`parse_response`].
#[derive(Debug)]
pub struct ResponseHead {
    /// Status code.
    pub status: StatusCode,
    /// Bytes the head took.
    pub len: usize,
    /// How the body is delimited.
    pub framing: Framing,
    /// The upstream keeps the connection open after this response (HTTP/1.1, no `close`).
    pub reusable: bool,
    /// The client connection must close after this response (asked for, or the body ends
    /// with the upstream connection).
    pub close: bool,
}

fn syntax(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooLarge,
        httparse::Error::HeaderName => HeadError::Syntax("invalid header name"),
        httparse::Error::HeaderValue => HeadError::Syntax("invalid header value"),
        httparse::Error::NewLine => HeadError::Syntax("invalid line ending"),
        httparse::Error::Status => HeadError::Syntax("invalid status"),
        httparse::Error::Token => HeadError::Syntax("invalid token"),
        httparse::Error::Version => HeadError::Syntax("invalid version"),
    }
}

/// Builds a header map from parsed fields; values are slices of `buf`.
fn header_map(buf: &Bytes, fields: &[httparse::Header<'_>]) -> Result<HeaderMap, HeadError> {
    let fields = fields
        .iter()
        .map(|f| (f.name.as_bytes(), range_of(buf, f.value)));
    super::fields::header_map(buf, fields).map_err(HeadError::Syntax)
}

/// The body framing a message's headers declare (RFC 9112 §6.3). A message with both
/// `Transfer-Encoding` and `Content-Length`, several different lengths, or a transfer coding
/// that does not end in `chunked` is refused: proxies that disagree on where a message ends are
/// how requests get smuggled. (`kinds`: the fields' [`Known`] names.)
fn framing_of(
    fields: &[httparse::Header<'_>],
    kinds: &[Known],
    request: bool,
) -> Result<Framing, HeadError> {
    // The values of the fields named `n`.
    let named = |n: Known| {
        kinds
            .iter()
            .zip(fields)
            .filter(move |(k, _)| **k == n)
            .map(|(_, f)| f.value)
    };
    if let Some(last) = named(Known::TransferEncoding).next_back() {
        if named(Known::ContentLength).next().is_some() {
            return Err(HeadError::Framing(
                "both transfer-encoding and content-length",
            ));
        }
        let coding = last.rsplit(|&b| b == b',').next().map(<[u8]>::trim_ascii);
        return match coding {
            Some(t) if t.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
            _ if request => Err(HeadError::Framing("transfer coding is not chunked")),
            _ => Ok(Framing::Close),
        };
    }
    let mut length: Option<u64> = None;
    for v in named(Known::ContentLength) {
        for part in v.split(|&b| b == b',') {
            let n = parse_length(part.trim_ascii())
                .ok_or(HeadError::Framing("invalid content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::Framing("conflicting content-length values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None if request => Framing::Empty,
        None => Framing::Close,
    })
}

/// The comma-separated elements of the `Connection` fields, trimmed (`kinds`: the fields'
/// [`Known`] names).
fn connection_tokens<'a>(
    fields: &'a [httparse::Header<'a>],
    kinds: &'a [Known],
) -> impl Iterator<Item = &'a [u8]> {
    kinds
        .iter()
        .zip(fields)
        .filter(|(k, _)| **k == Known::Connection)
        .flat_map(|(_, f)| f.value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

/// Each field's [`Known`] name, in a stack array (a head has at most [`MAX_HEADERS`]).
fn classify(fields: &[httparse::Header<'_>]) -> [Known; MAX_HEADERS] {
    let mut kinds = [Known::Other; MAX_HEADERS];
    for (k, f) in kinds.iter_mut().zip(fields) {
        *k = known(f.name);
    }
    kinds
}

fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The length of a complete head, `None` if more bytes are needed, or why it is refused.
fn complete(parsed: httparse::Result<usize>, buffered: usize) -> Result<Option<usize>, HeadError> {
    match parsed.map_err(syntax)? {
        httparse::Status::Complete(n) => Ok(Some(n)),
        httparse::Status::Partial if buffered >= MAX_HEAD => Err(HeadError::TooLarge),
        httparse::Status::Partial => Ok(None),
    }
}

/// Parses a request head at the start of `buf`; `Ok(None)` means more bytes are needed.
pub fn parse_request(buf: &Bytes) -> Result<Option<RequestHead>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let Some(len) = complete(req.parse(buf), buf.len())? else {
        return Ok(None);
    };
    let method = req.method.ok_or(HeadError::Syntax("no method"))?;
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Syntax("invalid method"))?;
    let path = req.path.ok_or(HeadError::Syntax("no target"))?;
    let uri = Uri::from_maybe_shared(buf.slice(range_of(buf, path.as_bytes())))
        .map_err(|_| HeadError::Syntax("invalid request target"))?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // The target's form (RFC 9112 §3.2): origin-form ("/path"), absolute-form
    // ("http://host/path"), "*" for OPTIONS, authority-form for CONNECT. Anything else would
    // reach routing as a path that cannot match.
    let target_ok = path.starts_with('/')
        || (uri.scheme().is_some() && uri.authority().is_some())
        || (path == "*" && method == Method::OPTIONS)
        || method == Method::CONNECT;
    if !target_ok {
        return Err(HeadError::Syntax("invalid request target"));
    }
    let fields = &*req.headers;
    let kinds = classify(fields);
    let kinds = &kinds[..fields.len()];
    let framing = framing_of(fields, kinds, true)?;
    // Host (RFC 9112 §3.2): one in every HTTP/1.1 request, with a valid value; proxies that
    // pick different ones of several would route one request two ways.
    let mut hosts = kinds
        .iter()
        .zip(fields)
        .filter(|(k, _)| **k == Known::Host)
        .map(|(_, f)| f.value);
    match (hosts.next(), hosts.next()) {
        (None, _) if version == Version::HTTP_11 => return Err(HeadError::Syntax("no host")),
        (Some(_), Some(_)) => return Err(HeadError::Syntax("more than one host")),
        (Some(h), None) if !valid_host(buf, h) => {
            return Err(HeadError::Syntax("invalid host"));
        }
        _ => {}
    }
    let connection = || connection_tokens(fields, kinds);
    let close = if version == Version::HTTP_10 {
        !connection().any(|t| t.eq_ignore_ascii_case(b"keep-alive"))
    } else {
        connection().any(|t| t.eq_ignore_ascii_case(b"close"))
    };
    // Kept as fields, without a map, only if the `Connection` fields name no other field.
    let plain = version == Version::HTTP_11
        && connection().all(|t| {
            t.is_empty()
                || t.eq_ignore_ascii_case(b"keep-alive")
                || t.eq_ignore_ascii_case(b"close")
        });
    let raw = super::raw::Fields::of(buf, fields, kinds, plain);
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    if raw.is_none() {
        parts.headers = header_map(buf, fields)?;
    }
    Ok(Some(RequestHead {
        parts,
        raw,
        len,
        framing,
        close,
    }))
}

/// A `Host` value: `host[:port]` (RFC 9110 §7.2), or empty when the target has no authority.
/// `v`, a value parsed from `buf`, is checked as a slice of `buf` (no copy; an empty value may
/// point elsewhere, and is valid).
fn valid_host(buf: &Bytes, v: &[u8]) -> bool {
    v.is_empty()
        || (!v.contains(&b'@')
            && http::uri::Authority::from_maybe_shared(buf.slice(range_of(buf, v))).is_ok())
}

/// Parses a response head at the start of `buf` (`Ok(None)`: more bytes are needed) and, unless
/// it is an interim (1xx) response, appends to `out` the head the client gets: hop-by-hop
/// headers removed, `edit` applied, `Date` added when missing, `connection: close` when `close`
/// or when the body is delimited by the connection's end. `head_request` says the response
/// answers a HEAD request (then it has no body).
///
/// Without `edit` the fields are copied as they are, without building a header map: the
/// common case costs one pass over the head.
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    edit: Option<&(dyn Fn(&mut HeaderMap) + Sync)>,
    close: bool,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let Some(len) = complete(resp.parse(buf), buf.len())? else {
        return Ok(None);
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(HeadError::Syntax("invalid status"))?;
    let fields = &*resp.headers;
    let kinds = classify(fields);
    let kinds = &kinds[..fields.len()];
    let connection = || connection_tokens(fields, kinds);
    let reusable = match resp.version {
        Some(0) => connection().any(|t| t.eq_ignore_ascii_case(b"keep-alive")),
        _ => !connection().any(|t| t.eq_ignore_ascii_case(b"close")),
    };
    // RFC 9112 §6.3: these never have a body, whatever the headers say.
    let framing = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else {
        framing_of(fields, kinds, false)?
    };
    let close = close || framing == Framing::Close;
    let head = ResponseHead {
        status,
        len,
        framing,
        reusable,
        close,
    };
    if status.is_informational() {
        return Ok(Some(head));
    }
    match edit {
        None => write_fields_as_they_are(out, status, buf, fields, kinds, framing, close),
        Some(edit) => {
            let mut headers = HeaderMap::with_capacity(fields.len());
            for f in fields {
                let name = HeaderName::from_bytes(f.name.as_bytes())
                    .map_err(|_| HeadError::Syntax("invalid header name"))?;
                let value = HeaderValue::from_bytes(f.value)
                    .map_err(|_| HeadError::Syntax("invalid header value"))?;
                headers.append(name, value);
            }
            edit(&mut headers);
            if let Framing::Length(n) = framing {
                // A response filter must not make the framing disagree with the body.
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            add_date(&mut headers);
            write_response(out, status, &headers, framing == Framing::Chunked, close);
        }
    }
    Ok(Some(head))
}

/// The client-facing head from parsed fields (`kinds`: their [`Known`] names, `head`: the bytes
/// they were parsed from), copied except for hop-by-hop ones and those the `Connection` header
/// names.
fn write_fields_as_they_are(
    out: &mut Vec<u8>,
    status: StatusCode,
    head: &[u8],
    fields: &[httparse::Header<'_>],
    kinds: &[Known],
    framing: Framing,
    close: bool,
) {
    write_status_line(out, status);
    let connection = || connection_tokens(fields, kinds);
    // `Connection` usually lists only `keep-alive` (hop-by-hop anyway) or `close`: then only a
    // field named `close` can be one it names; other tokens are looked for in every name.
    let names_others = connection().any(|t| {
        !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
    });
    let listed = |name: &str| {
        (names_others || name.eq_ignore_ascii_case("close"))
            && connection().any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
    };
    let mut date = false;
    let mut lines = Lines::new(head);
    for (f, kind) in fields.iter().zip(kinds) {
        if kind.hop_by_hop() || listed(f.name) {
            lines.skip(out);
            continue;
        }
        date |= *kind == Known::Date;
        lines.keep(out, f.name.as_bytes(), f.value);
    }
    lines.skip(out);
    if !date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date::now().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    end_head(out, framing == Framing::Chunked, close);
}

/// Appends `name: value\r\n` for every field.
fn write_fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

/// Serializes an HTTP/1.1 request head: origin-form target, the given headers, and
/// `transfer-encoding: chunked` when the body is chunked (the hop-by-hop rules removed the
/// client's).
pub fn write_request(out: &mut Vec<u8>, parts: &Parts, framing: Framing) {
    request_line(out, parts);
    write_fields(out, &parts.headers);
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn write_status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn end_head(out: &mut Vec<u8>, chunked: bool, close: bool) {
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Serializes an HTTP/1.1 response head with the canonical reason phrase. `chunked` adds
/// `transfer-encoding: chunked`, `close` adds `connection: close`.
pub fn write_response(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    chunked: bool,
    close: bool,
) {
    write_status_line(out, status);
    write_fields(out, headers);
    end_head(out, chunked, close);
}

/// Adds `Date` when the response has none (RFC 9110 §6.6.1: a proxy forwarding a response
/// without one adds it).
pub fn add_date(headers: &mut HeaderMap) {
    if !headers.contains_key(header::DATE) {
        headers.insert(header::DATE, date::now());
    }
}

/// The current time as an HTTP date, formatted once a second per thread.
pub mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    use http::HeaderValue;

    thread_local! {
        static CACHED: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }

    /// The current time as an HTTP date.
    pub fn now() -> HeaderValue {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with_borrow_mut(|(at, value)| {
            if *at != secs {
                *at = secs;
                *value = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                    .unwrap_or(HeaderValue::from_static(""));
            }
            value.clone()
        })
    }
}

/// Where a chunked body's scanner is (RFC 9112 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size; `digits` seen so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// In a chunk extension, until CR.
    Extension {
        size: u64,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    /// Inside chunk data.
    Data(u64),
    /// After chunk data, expecting CR then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    TrailerLf,
    /// After the final CR.
    EndLf,
}

/// Finds the end of a chunked body in a byte stream without decoding it: the proxy passes the
/// chunks through as they are and only needs to know where the message ends.
#[derive(Clone, Debug)]
pub struct ChunkScanner {
    state: Chunk,
    /// Bytes of the current size line's extension or trailer line, bounded.
    line: usize,
}

impl Default for ChunkScanner {
    fn default() -> Self {
        Self {
            state: Chunk::Size { size: 0, digits: 0 },
            line: 0,
        }
    }
}

/// A chunk extension or trailer line longer than this ends the exchange (hyper bounds them too).
const MAX_CHUNK_LINE: usize = 16 * 1024;

impl ChunkScanner {
    /// Consumes `bytes`. Returns `Ok(Some(n))` when the body ends after the first `n` bytes,
    /// `Ok(None)` when all of them belong to the body and more are needed.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, HeadError> {
        let bad = |why| Err(HeadError::Framing(why));
        let mut i = 0;
        while i < bytes.len() {
            if let Chunk::Data(left) = self.state {
                let take = left.min((bytes.len() - i) as u64);
                i += take as usize;
                self.state = if take == left {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left - take)
                };
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = match self.state {
                Chunk::Size { size, digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if digits >= 15 {
                            return bad("chunk size too large");
                        }
                        let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                        Chunk::Size {
                            size: size * 16 + d,
                            digits: digits + 1,
                        }
                    }
                    _ if digits == 0 => return bad("chunk size expected"),
                    b'\r' => Chunk::SizeLf { size },
                    b';' | b' ' | b'\t' => {
                        self.line = 0;
                        Chunk::Extension { size }
                    }
                    _ => return bad("invalid chunk size"),
                },
                Chunk::Extension { size } => match b {
                    b'\r' => Chunk::SizeLf { size },
                    b'\n' => return bad("bare LF in chunk extension"),
                    _ => {
                        self.line += 1;
                        if self.line > MAX_CHUNK_LINE {
                            return bad("chunk extension too long");
                        }
                        Chunk::Extension { size }
                    }
                },
                Chunk::SizeLf { size } => match b {
                    b'\n' if size == 0 => Chunk::TrailerStart,
                    b'\n' => Chunk::Data(size),
                    _ => return bad("CRLF expected after chunk size"),
                },
                Chunk::Data(_) => unreachable!("handled above"),
                Chunk::DataCr => match b {
                    b'\r' => Chunk::DataLf,
                    _ => return bad("CRLF expected after chunk data"),
                },
                Chunk::DataLf => match b {
                    b'\n' => Chunk::Size { size: 0, digits: 0 },
                    _ => return bad("CRLF expected after chunk data"),
                },
                Chunk::TrailerStart => match b {
                    b'\r' => Chunk::EndLf,
                    b'\n' => return bad("bare LF in trailer"),
                    _ => {
                        self.line = 1;
                        Chunk::Trailer
                    }
                },
                Chunk::Trailer => match b {
                    b'\r' => Chunk::TrailerLf,
                    b'\n' => return bad("bare LF in trailer"),
                    _ => {
                        self.line += 1;
                        if self.line > MAX_CHUNK_LINE {
                            return bad("trailer line too long");
                        }
                        Chunk::Trailer
                    }
                },
                Chunk::TrailerLf => match b {
                    b'\n' => Chunk::TrailerStart,
                    _ => return bad("CRLF expected after trailer"),
                },
                Chunk::EndLf => match b {
                    b'\n' => {
                        *self = Self::default();
                        return Ok(Some(i));
                    }
                    _ => return bad("CRLF expected at end of chunked body"),
                },
            };
        }
        Ok(None)
    }
}

/// Tracks how much of a body is still to come.
#[derive(Clone, Debug)]
pub enum BodyLeft {
    /// This many bytes.
    Length(u64),
    /// Chunks until the last one.
    Chunked(ChunkScanner),
    /// Everything until the connection closes.
    Close,
}

impl BodyLeft {
    /// The tracker for a body with this framing; `None` for no body.
    pub fn new(framing: Framing) -> Option<Self> {
        match framing {
            Framing::Empty => None,
            Framing::Length(n) => Some(Self::Length(n)),
            Framing::Chunked => Some(Self::Chunked(ChunkScanner::default())),
            Framing::Close => Some(Self::Close),
        }
    }

    /// Consumes bytes that arrived: returns how many of them belong to the body and whether the
    /// body is now complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(usize, bool), HeadError> {
        match self {
            Self::Length(left) => {
                let take = (*left).min(bytes.len() as u64);
                *left -= take;
                Ok((take as usize, *left == 0))
            }
            Self::Chunked(scanner) => Ok(match scanner.feed(bytes)? {
                Some(n) => (n, true),
                None => (bytes.len(), false),
            }),
            Self::Close => Ok((bytes.len(), false)),
        }
    }
}

/// What a client is told about a response head over the limits (both request paths).
pub(crate) fn response_head_too_large() -> String {
    format!(
        "its head is larger than the proxy accepts (at most {} header fields)",
        MAX_HEADERS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request(&Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn a_request_head_becomes_parts_sharing_the_buffer() {
        let buf = Bytes::from_static(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Y: z\r\n\r\nrest");
        let mut head = parse_request(&buf).unwrap().unwrap();
        assert_eq!(head.parts.method, Method::GET);
        assert_eq!(head.parts.uri, "/a?b=1");
        assert!(
            head.parts.headers.is_empty(),
            "no header map until one is needed"
        );
        assert_eq!(head.raw.as_ref().unwrap().host(&buf), "x");
        head.headers(&buf).unwrap();
        assert!(head.raw.is_none());
        assert_eq!(head.parts.headers["host"], "x");
        assert_eq!(head.parts.headers["x-y"], "z");
        assert_eq!(
            head.len,
            "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Y: z\r\n\r\n".len()
        );
        assert_eq!(head.framing, Framing::Empty);
        assert!(!head.close);
    }

    #[test]
    fn partial_heads_wait_and_huge_ones_are_refused() {
        assert!(req("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let huge = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(MAX_HEAD));
        assert_eq!(req(&huge).unwrap_err(), HeadError::TooLarge);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
        assert_eq!(
            req(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err(),
            HeadError::TooLarge
        );
    }

    #[test]
    fn malformed_heads_are_syntax_errors() {
        for bad in [
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
            "G\0T / HTTP/1.1\r\n\r\n",
            "GET / HTTP/9.9\r\n\r\n",
            // The target's form, and Host (RFC 9112 §3.2).
            "GET t01 HTTP/1.1\r\nhost: x\r\n\r\n",
            "GET * HTTP/1.1\r\nhost: x\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a b\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: user@a\r\n\r\n",
        ] {
            assert!(matches!(req(bad), Err(HeadError::Syntax(_))), "{bad:?}");
        }
        for good in [
            "OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n",
            "GET http://x/a HTTP/1.1\r\nhost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: [::1]:8080\r\n\r\n",
            "GET / HTTP/1.1\r\nhost:\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
        ] {
            assert!(
                matches!(req(good), Ok(Some(_))),
                "{good:?}: {:?}",
                req(good).err()
            );
        }
    }

    #[test]
    fn framing_follows_rfc_9112_and_refuses_ambiguity() {
        let f = |h: &str| {
            req(&format!("POST / HTTP/1.1\r\nhost: x\r\n{h}\r\n")).map(|r| r.unwrap().framing)
        };
        assert_eq!(f("content-length: 5\r\n"), Ok(Framing::Length(5)));
        assert_eq!(f("content-length: 5, 5\r\n"), Ok(Framing::Length(5)));
        assert_eq!(
            f("transfer-encoding: gzip, chunked\r\n"),
            Ok(Framing::Chunked)
        );
        for bad in [
            "content-length: 5\r\ncontent-length: 6\r\n",
            "content-length: -1\r\n",
            "content-length: 5\r\ntransfer-encoding: chunked\r\n",
            "transfer-encoding: gzip\r\n",
        ] {
            assert!(matches!(f(bad), Err(HeadError::Framing(_))), "{bad:?}");
        }
    }

    #[test]
    fn connection_close_and_http_1_0_keep_alive() {
        assert!(
            req("GET / HTTP/1.1\r\nhost: x\r\nConnection: Close\r\n\r\n")
                .unwrap()
                .unwrap()
                .close
        );
        assert!(req("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().close);
        assert!(
            !req("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .unwrap()
                .close
        );
    }

    fn resp(s: &str, head: bool, close: bool) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let h = parse_response(s.as_bytes(), head, None, close, &mut out)
            .unwrap()
            .unwrap();
        (h, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_framing_by_status_and_method() {
        let r = |s: &str, head: bool| resp(s, head, false).0.framing;
        assert_eq!(
            r("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", false),
            Framing::Length(3)
        );
        assert_eq!(
            r("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", true),
            Framing::Empty
        );
        assert_eq!(r("HTTP/1.1 204 No Content\r\n\r\n", false), Framing::Empty);
        assert_eq!(
            r(
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                false
            ),
            Framing::Empty
        );
        assert_eq!(r("HTTP/1.1 200 OK\r\n\r\n", false), Framing::Close);
        assert_eq!(
            r(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                false
            ),
            Framing::Chunked
        );
    }

    #[test]
    fn a_relayed_response_head_loses_its_hop_by_hop_fields() {
        let (h, out) = resp(
            "HTTP/1.1 200 OK\r\nDate: d\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nTransfer-Encoding: chunked\r\nX-End: 2\r\n\r\n",
            false,
            true,
        );
        assert!(h.reusable && h.close);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nDate: d\r\nX-End: 2\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        let (h, out) = resp("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false, false);
        assert!(!h.reusable, "HTTP/1.0 without keep-alive closes");
        assert!(out.contains("date: "), "a Date is added: {out}");
        let (h, out) = resp("HTTP/1.1 103 Early Hints\r\nlink: x\r\n\r\n", false, false);
        assert!(h.status.is_informational() && out.is_empty());
    }

    #[test]
    fn relayed_fields_come_out_as_name_colon_space_value_crlf_however_they_came() {
        let (_, out) = resp(
            "HTTP/1.1 200 OK\r\nServer:nginx\r\nDate: d\r\nX-A:  b \t\r\nX-B: c\r\nX-Empty:\r\nX-C: d\r\nconnection: close\r\nX-D: e\r\ncontent-length: 0\r\n\r\n",
            false,
            false,
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: d\r\nX-A: b\r\nX-B: c\r\nX-Empty: \r\nX-C: d\r\nX-D: e\r\ncontent-length: 0\r\n\r\n"
        );
        // `Connection: close` names a field `close` too (RFC 9110 §7.6.1).
        let (_, out) = resp(
            "HTTP/1.1 200 OK\r\nDate: d\r\nConnection: close\r\nClose: x\r\nX-A: b\r\n\r\n",
            false,
            false,
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nDate: d\r\nX-A: b\r\nconnection: close\r\n\r\n"
        );
        // Bare line feeds (which httparse accepts) become CRLF.
        let (_, out) = resp(
            "HTTP/1.1 200 OK\nDate: d\nX-A: b\ncontent-length: 0\n\n",
            false,
            false,
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nDate: d\r\nX-A: b\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn an_edited_response_head_keeps_its_framing() {
        let mut out = Vec::new();
        let edit = |h: &mut HeaderMap| {
            h.remove(header::CONTENT_LENGTH);
            h.insert("x-added", HeaderValue::from_static("1"));
        };
        let h = parse_response(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc",
            false,
            Some(&edit),
            false,
            &mut out,
        )
        .unwrap()
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(h.framing, Framing::Length(3));
        assert!(
            out.contains("content-length: 3\r\n") && out.contains("x-added: 1\r\n"),
            "{out}"
        );
    }

    #[test]
    fn the_chunk_scanner_finds_the_end_in_any_split() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let mut s = ChunkScanner::default();
            let first = s.feed(&body[..split]).unwrap();
            let found = match first {
                Some(n) => n,
                None => split + s.feed(&body[split..]).unwrap().expect("ends"),
            };
            assert_eq!(found, end, "split at {split}");
        }
    }

    #[test]
    fn the_chunk_scanner_refuses_bad_framing() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello",
            b"ffffffffffffffff0\r\n",
        ] {
            assert!(ChunkScanner::default().feed(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn heads_serialize_as_http_1_1() {
        let buf = Bytes::from_static(b"PUT /x?y HTTP/1.1\r\nhost: h\r\n\r\n");
        let mut head = parse_request(&buf).unwrap().unwrap();
        head.headers(&buf).unwrap();
        let mut out = Vec::new();
        write_request(&mut out, &head.parts, Framing::Chunked);
        assert_eq!(
            out,
            b"PUT /x?y HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let mut out = Vec::new();
        write_response(
            &mut out,
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            false,
            true,
        );
        assert_eq!(out, b"HTTP/1.1 404 Not Found\r\nconnection: close\r\n\r\n");
    }
}

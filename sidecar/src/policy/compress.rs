//! Response compression, the first response stage that needs the body: zstd, brotli or gzip,
//! chosen by the client's `accept-encoding` among a rule's encodings.
//!
//! ```text
//!  accept-encoding ─► highest q among the rule's encodings (ties: the rule's order)
//!  response ─► 2xx (not 204/206), not HEAD, no content-encoding, no `no-transform`,
//!              compressible type (text/*, json, javascript, xml, svg), content-length ≥ minBytes
//!           ─► content-encoding set, content-length dropped, `vary: accept-encoding`,
//!              a strong ETag made weak (the bytes differ from the origin's)
//!           └► else: as it came
//! ```
//!
//! The body is compressed as it streams; what the encoder holds is flushed whenever the
//! upstream has nothing more to give at the moment, so a slow stream (server-sent events) is
//! not held back, and a fast one is compressed in large blocks.

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, VARY,
};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use portico_proxy_api::{Compression, Encoding};

use crate::error::{Body, BoxError};

/// The encoding to answer a request with, if the client accepts one of `offered`.
pub fn negotiate(request: &HeaderMap, offered: &Compression) -> Option<Encoding> {
    let accept = request.get(ACCEPT_ENCODING)?.to_str().ok()?;
    let q_of = |token: &str| -> Option<f32> {
        let mut star = None;
        for item in accept.split(',') {
            let mut parts = item.split(';');
            let name = parts.next()?.trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if name.eq_ignore_ascii_case(token) {
                return Some(q);
            }
            if name == "*" {
                star = Some(q);
            }
        }
        star
    };
    let mut best: Option<(Encoding, f32)> = None;
    for enc in &offered.encodings {
        if let Some(q) = q_of(enc.token()).filter(|q| *q > 0.0)
            && best.is_none_or(|(_, b)| q > b)
        {
            best = Some((*enc, q));
        }
    }
    best.map(|(e, _)| e)
}

/// Compresses `resp` with `encoding` when it is worth it and allowed (see the module doc);
/// else returns it as it is.
pub fn apply(
    mut resp: Response<Body>,
    encoding: Encoding,
    cfg: &Compression,
    head_request: bool,
) -> Response<Body> {
    if !eligible(&resp, cfg, head_request) {
        return resp;
    }
    // Made before the headers change: a response is labelled only with an encoder that exists.
    let Ok(encoder) = Encoder::new(encoding) else {
        return resp;
    };
    let h = resp.headers_mut();
    h.remove(CONTENT_LENGTH);
    h.insert(CONTENT_ENCODING, HeaderValue::from_static(encoding.token()));
    h.append(VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(tag) = h.get(ETAG)
        && !tag.as_bytes().starts_with(b"W/")
        && let Ok(weak) = HeaderValue::from_bytes(&[b"W/", tag.as_bytes()].concat())
    {
        h.insert(ETAG, weak);
    }
    let (parts, body) = resp.into_parts();
    let body = Compressed {
        inner: body,
        encoder: Some(encoder),
        written: false,
        trailers: None,
    };
    Response::from_parts(parts, body.boxed_unsync())
}

fn eligible(resp: &Response<Body>, cfg: &Compression, head_request: bool) -> bool {
    let h = resp.headers();
    let status = resp.status();
    let text = |name| h.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    status.is_success()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::PARTIAL_CONTENT
        && !head_request
        && text(CONTENT_ENCODING).is_none_or(|e| e.eq_ignore_ascii_case("identity"))
        && !text(CACHE_CONTROL).is_some_and(|c| c.to_ascii_lowercase().contains("no-transform"))
        && text(CONTENT_TYPE).is_some_and(compressible)
        && text(CONTENT_LENGTH)
            .and_then(|n| n.parse::<u64>().ok())
            .is_none_or(|n| n >= cfg.min_bytes)
}

/// Types that compress well; already-compressed media (images, video, archives) do not.
fn compressible(content_type: &str) -> bool {
    let t = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    t.starts_with("text/")
        || t.ends_with("+json")
        || t.ends_with("+xml")
        || matches!(
            t.as_str(),
            "application/json"
                | "application/javascript"
                | "application/xml"
                | "application/wasm"
                | "image/svg+xml"
        )
}

/// One encoder writing into its own buffer, taken as it fills.
enum Encoder {
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
}

impl Encoder {
    /// An encoder for `encoding`; only zstd's C library can fail (to allocate).
    fn new(encoding: Encoding) -> std::io::Result<Self> {
        Ok(match encoding {
            // Level 3 is zstd's default: faster than gzip at a better ratio.
            Encoding::Zstd => Self::Zstd(zstd::stream::write::Encoder::new(Vec::new(), 3)?),
            // Quality 4 of 11: brotli's high qualities are for precompressed assets, too slow
            // for a proxy on the request path.
            Encoding::Br => Self::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                4,
                22,
            ))),
            Encoding::Gzip => Self::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(5),
            )),
        })
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Zstd(e) => e.write_all(data),
            Self::Br(e) => e.write_all(data),
            Self::Gzip(e) => e.write_all(data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Zstd(e) => e.flush(),
            Self::Br(e) => e.flush(),
            Self::Gzip(e) => e.flush(),
        }
    }

    /// The compressed bytes produced so far.
    fn take(&mut self) -> Bytes {
        let out = match self {
            Self::Zstd(e) => e.get_mut(),
            Self::Br(e) => e.get_mut(),
            Self::Gzip(e) => e.get_mut(),
        };
        Bytes::from(std::mem::take(out))
    }

    /// Ends the stream: the last compressed bytes.
    fn finish(self) -> std::io::Result<Bytes> {
        let out = match self {
            Self::Zstd(e) => e.finish()?,
            Self::Br(e) => e.into_inner(),
            Self::Gzip(e) => e.finish()?,
        };
        Ok(Bytes::from(out))
    }
}

/// A body compressed as it streams.
struct Compressed {
    inner: Body,
    /// `None` once the stream is finished.
    encoder: Option<Encoder>,
    /// Bytes went into the encoder since its last flush.
    written: bool,
    /// Trailers seen at the end of the inner body, sent after the last compressed bytes.
    trailers: Option<HeaderMap>,
}

impl HttpBody for Compressed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        encoder.write(&data)?;
                        this.written |= !data.is_empty();
                        let out = encoder.take();
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.trailers = Some(t);
                        }
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    let last = this.encoder.take().map(Encoder::finish).transpose()?;
                    match last {
                        Some(bytes) if !bytes.is_empty() => {
                            return Poll::Ready(Some(Ok(Frame::data(bytes))));
                        }
                        _ => continue,
                    }
                }
                Poll::Pending => {
                    // Nothing more for now: what the encoder holds goes out, so a slow stream
                    // is not held back until the encoder's block fills.
                    if !this.written {
                        return Poll::Pending;
                    }
                    this.written = false;
                    encoder.flush()?;
                    let out = encoder.take();
                    if out.is_empty() {
                        return Poll::Pending;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::error::full;

    fn cfg(encodings: &[Encoding]) -> Compression {
        Compression {
            encodings: encodings.to_vec(),
            min_bytes: 1024,
        }
    }

    fn accept(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn the_clients_q_values_decide_and_the_rules_order_breaks_ties() {
        use Encoding::*;
        let all = cfg(&[Zstd, Br, Gzip]);
        assert_eq!(
            negotiate(&accept("gzip, deflate, br, zstd"), &all),
            Some(Zstd)
        );
        assert_eq!(negotiate(&accept("gzip, br"), &all), Some(Br));
        assert_eq!(negotiate(&accept("gzip;q=1.0, br;q=0.5"), &all), Some(Gzip));
        assert_eq!(negotiate(&accept("br;q=0, gzip"), &all), Some(Gzip));
        assert_eq!(negotiate(&accept("identity"), &all), None);
        assert_eq!(negotiate(&accept("*"), &all), Some(Zstd));
        assert_eq!(negotiate(&accept("br, *;q=0"), &cfg(&[Gzip])), None);
        assert_eq!(negotiate(&HeaderMap::new(), &all), None);
        assert_eq!(negotiate(&accept("zstd, br"), &cfg(&[Gzip, Br])), Some(Br));
    }

    fn json_response(len: usize, extra: &[(&'static str, &'static str)]) -> Response<Body> {
        let body = format!("{{\"items\":\"{}\"}}", "abc".repeat(len / 3));
        let mut r = Response::new(full(body.clone()));
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        for (k, v) in extra {
            h.insert(*k, HeaderValue::from_static(v));
        }
        r
    }

    async fn decoded(resp: Response<Body>, encoding: Encoding) -> Vec<u8> {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let mut out = Vec::new();
        match encoding {
            Encoding::Gzip => {
                flate2::read::GzDecoder::new(&bytes[..])
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Encoding::Br => {
                brotli::Decompressor::new(&bytes[..], 4096)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Encoding::Zstd => out = zstd::stream::decode_all(&bytes[..]).unwrap(),
        }
        out
    }

    #[tokio::test]
    async fn each_encoding_round_trips_and_the_headers_say_so() {
        for enc in [Encoding::Zstd, Encoding::Br, Encoding::Gzip] {
            let original = json_response(16 * 1024, &[("etag", "\"v1\"")]);
            let want = original.body().size_hint().exact().unwrap();
            let resp = apply(original, enc, &cfg(&[enc]), false);
            let h = resp.headers();
            assert_eq!(h[CONTENT_ENCODING], enc.token());
            assert!(!h.contains_key(CONTENT_LENGTH));
            assert_eq!(h[VARY], "accept-encoding");
            assert_eq!(h[ETAG], "W/\"v1\"");
            let plain = decoded(resp, enc).await;
            assert_eq!(plain.len() as u64, want, "{enc:?}");
            assert!(plain.starts_with(b"{\"items\":\"abcabc"));
        }
    }

    #[tokio::test]
    async fn small_encoded_binary_head_and_no_transform_responses_pass_as_they_are() {
        let c = cfg(&[Encoding::Gzip]);
        let cases = [
            (json_response(100, &[]), false, "under minBytes"),
            (
                json_response(4096, &[("content-encoding", "br")]),
                false,
                "already encoded",
            ),
            (
                json_response(4096, &[("content-type", "image/png")]),
                false,
                "not compressible",
            ),
            (
                json_response(4096, &[("cache-control", "public, no-transform")]),
                false,
                "no-transform",
            ),
            (json_response(4096, &[]), true, "HEAD"),
        ];
        for (resp, head, why) in cases {
            let resp = apply(resp, Encoding::Gzip, &c, head);
            assert_ne!(
                resp.headers().get(CONTENT_ENCODING).map(|v| v.as_bytes()),
                Some(&b"gzip"[..]),
                "{why}"
            );
        }
        let mut not_ok = json_response(4096, &[]);
        *not_ok.status_mut() = StatusCode::NOT_FOUND;
        assert!(
            !apply(not_ok, Encoding::Gzip, &c, false)
                .headers()
                .contains_key(CONTENT_ENCODING)
        );
    }
}

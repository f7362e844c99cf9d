//! The HTTP/1.1 fast path: Portico's own HTTP/1.1 server and client for the common request,
//! handled on the client connection's task from the first byte of the request to the last byte
//! of the response.
//!
//! ```text
//! client ─► read head+body ─► plan (routing, stages) ─► pooled upstream socket ─► write request
//!                                    │                   (attempts: retries,          │
//!            hyper serves the rest ◄─┘                    mirrors)  read head ◄───────┘
//!            of the connection (upgrade, chunked or big body,         │
//!            HTTP/1.0, HTTP/2 upstream, a body stage)                 └► response stages ─► write head
//!                                                                        + body bytes as they come
//! ```
//!
//! An `Expect: 100-continue` request of declared length stays here: the upstream decides whether
//! the body is wanted ([`Gate`]).
//!
//! Why: with hyper on both sides, every request crosses from the client connection's task to
//! the upstream connection's task and back, through channels and wake-ups, and each connection
//! keeps an 8 KiB read and an 8 KiB write buffer for as long as it is open. Here a request
//! costs two reads and two writes on one task, the read buffer exists only while a request is
//! in progress (an idle client connection holds no buffer), and idle upstream connections are
//! bare sockets in [`TcpPool`] with no task of their own.
//!
//! Routing, filters, load balancing, limits, outlier detection, timeouts, metrics and the
//! access log are the same code as on the hyper path ([`crate::pipeline::plan`]); the fast path only
//! replaces the wire handling. It serves HTTP listeners, HTTPS listeners when TLS did not agree
//! on HTTP/2 ([`ClientStream::Tls`]) and the sidecar's OUTBOUND ([`Site::Routed`]), and the
//! sidecar's INBOUND ([`Site::Inbound`]: the port's inbound policy instead of routing, the pod's
//! application as the one upstream; the policy check is [`crate::pipeline::inbound::admit`], shared with
//! hyper's INBOUND path).
//!
//! Anything the fast path does not handle is handed to hyper with the bytes read so far
//! ([`Rewind`]), and hyper serves that connection from then on, so every feature keeps working
//! on every connection. Response bodies pass through as they are (chunks are not
//! re-encoded; the scanner only finds their end), interim 1xx responses are dropped, and a
//! stale pooled connection (closed by the upstream while idle) is replaced once, for requests
//! that are safe to send again.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{Body, ProxyError};
use crate::forward::backend::InFlight;
use crate::forward::balance::PickContext;
use crate::forward::connect::{Dest, Stream};
use crate::forward::pool::TcpPool;
use crate::pipeline::attempts::{self, AttemptPolicy};
use crate::pipeline::{self, ConnInfo, Forward, Outcome, Plan, RawHead, RequestLog};
use crate::pipeline::{Site, inbound};
use crate::shared::Shared;
use crate::wire::codec::{self, BodyLeft, Framing, HeadError, RequestHead, ResponseHead};
use crate::wire::rewind::Rewind;
use crate::wire::{ClientStream, buffers, raw};

/// A request head must arrive within this time of its first byte (hyper's default too).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A new client connection must send the first byte of a request within this time, or it is
/// closed: connections that never send anything would otherwise hold a file descriptor for
/// ever (nginx's `client_header_timeout` is 60 s as well). Later requests on a kept-alive
/// connection may come whenever the client likes.
pub(crate) const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
/// Request bodies up to this size are read whole before the request goes upstream (so a stale
/// pooled connection can be replaced); bigger and chunked bodies stream through hyper (or,
/// behind an `Expect` gate, through the fast path, once).
const MAX_BODY: u64 = pipeline::MAX_REPLAY_BODY as u64;

/// Serves an HTTP/1 client connection whose first bytes have arrived.
pub async fn serve(shared: Arc<Shared>, site: Site, mut stream: ClientStream) {
    // One wait for the shutdown for the connection's life: a new one per request would take
    // the lock of the channel's waiter list, shared by every connection, to register and again
    // to leave. Polled second, so a request that arrives does not touch it.
    let closing = shut(shared.shutdown.subscribe());
    tokio::pin!(closing);
    let mut buf = BytesMut::new();
    let mut first = true;
    // A refusal or a hand-off leaves the loop and is awaited out here: no await in the loop
    // happens while a request head (600 bytes) may be alive, so none is kept in the
    // connection's future, which every idle connection holds.
    let exit = loop {
        if buf.is_empty() {
            buffers::put(std::mem::take(&mut buf));
            // Only the first request has a deadline: a timer per keep-alive wait would cost
            // every request on the fast path.
            let wait = async {
                if first {
                    tokio::time::timeout(FIRST_BYTE_TIMEOUT, first_bytes(&mut stream))
                        .await
                        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
                } else {
                    first_bytes(&mut stream).await
                }
            };
            tokio::select! {
                biased;
                r = wait => match r {
                    Ok(b) => buf = b,
                    Err(e) => {
                        if e.kind() == io::ErrorKind::TimedOut {
                            tracing::debug!(client = %site.client(), "no request within {FIRST_BYTE_TIMEOUT:?}; closed");
                        }
                        return;
                    }
                },
                () = &mut closing => return,
            }
        }
        let opening = std::mem::replace(&mut first, false);
        let (head, data) = match read_request(&mut stream, &mut buf).await {
            Ok(Next::Request { head, data }) => (head, data),
            Ok(Next::HandOff(data)) => break Exit::HandOff(data),
            Ok(Next::Closed) => return,
            Err(refusal) => break Exit::Refused { refusal, opening },
        };
        // Boxed: a request's state (routing, the upstream exchange, the relay) is about 3 KiB,
        // and inline it would be part of every connection's task, idle ones included. One
        // allocation per request (the allocator hands back the last one's) halves an idle
        // connection's memory: 2.5 KB instead of 4.9 in `make bench`.
        let flow = match &site {
            Site::Routed(info) => Box::pin(request(&shared, info, &mut stream, head, data)).await,
            Site::Inbound(conn) => Box::pin(to_app(&shared, conn, &mut stream, head, data)).await,
        };
        match flow {
            Flow::Next(rest) => buf = rest,
            Flow::Close => {
                // TLS: a close_notify after what is still buffered, so a close-delimited body
                // reads as complete; plain TCP: the FIN a drop would send anyway.
                let _ = stream.shutdown().await;
                return;
            }
            Flow::HandOff(data) => break Exit::HandOff(data),
        }
        if *shared.shutdown.borrow() {
            return;
        }
    };
    match exit {
        Exit::HandOff(data) => hand_off(shared, site, stream, data).await,
        // The request cannot be read to its end, so the connection cannot go on.
        Exit::Refused { refusal, opening } => {
            if opening && refusal.not_http1() {
                // The peer does not speak HTTP/1 at all (an HTTP/2 client with a broken
                // preface, another protocol): it gets no HTTP/1 answer, only the close
                // (RFC 9113 §3.4: an invalid preface is a connection error).
                tracing::debug!(client = %site.client(), error = %refusal, "not HTTP/1; closed");
                return;
            }
            let status = refusal.status();
            tracing::debug!(client = %site.client(), error = %refusal, "bad request");
            let resp = ProxyError::BadRequest(refusal.to_string()).into_response();
            let resp = with_status(resp, status);
            let _ = Box::pin(answer(&mut stream, resp, false, true)).await;
        }
    }
}

/// How a connection's fast path ends, other than by a close.
enum Exit {
    /// hyper serves the rest, starting with these bytes.
    HandOff(Bytes),
    /// A request could not be read (`opening`: it was the connection's first).
    Refused { refusal: Unreadable, opening: bool },
}

/// Waits for the first bytes of the next request and returns a buffer to read it into. An idle
/// connection holds no buffer while it waits, only its socket (and, with TLS, the TLS state).
/// The head's timeout starts after this.
async fn first_bytes(stream: &mut ClientStream) -> io::Result<BytesMut> {
    match stream {
        ClientStream::Plain(s) => s.readable().await?,
        ClientStream::Tls(s) => {
            let (tcp, tls) = s.get_mut();
            tls_readable(tcp, tls).await?;
            let mut buf = buffers::take();
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            return Ok(buf);
        }
    }
    Ok(buffers::take())
}

/// Waits until a TLS connection has plaintext to read (or the peer closed it). Socket
/// readiness alone would not do: the TLS state may already hold records read with the last
/// request, and a readiness left over from that read may show nothing new. So the records are
/// moved from the socket into the TLS state here, without a buffer of ours, until one decrypts.
async fn tls_readable(tcp: &TcpStream, tls: &mut rustls::ServerConnection) -> io::Result<()> {
    loop {
        let state = tls.process_new_packets().map_err(io::Error::other)?;
        if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() {
            return Ok(());
        }
        tcp.readable().await?;
        match tls.read_tls(&mut TryRead(tcp)) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            // A would-block cleared a stale readiness; wait again.
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// A non-blocking `Read` over a tokio socket, for rustls to pull records with.
struct TryRead<'a>(&'a TcpStream);

impl io::Read for TryRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

/// Completes when the proxy shuts down.
async fn shut(mut shutdown: watch::Receiver<bool>) {
    drop(shutdown.wait_for(|s| *s).await);
}

/// hyper serves the rest of the connection, starting with `data`, the bytes read so far.
/// Boxed: hyper's connection state is big, and most connections never get here.
async fn hand_off(shared: Arc<Shared>, site: Site, stream: ClientStream, data: Bytes) {
    let io = Rewind::new(data, stream);
    Box::pin(super::hyper::serve_http1(shared, site, io)).await;
}

/// What reading the next request produced.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per request and taken apart at once; boxing would cost an allocation"
)]
enum Next {
    /// A whole request: its head, and `data` holding the head, the body, and any bytes after.
    Request { head: RequestHead, data: Bytes },
    /// A request the fast path leaves to hyper; these are the bytes read so far.
    HandOff(Bytes),
    /// The client closed the connection (between requests, or in the middle of one).
    Closed,
}

/// A request that could not be read.
#[derive(Debug, thiserror::Error)]
enum Unreadable {
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error("request head not received within {0:?}")]
    Timeout(Duration),
}

impl Unreadable {
    /// The first line is no HTTP/1 request line: its version is not `HTTP/1.x`.
    fn not_http1(&self) -> bool {
        matches!(self, Self::Head(HeadError::Syntax("invalid version")))
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Head(HeadError::TooLarge) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Head(_) => StatusCode::BAD_REQUEST,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

/// Whether the fast path leaves this request to hyper: protocol switches need interim
/// responses, HTTP/1.0 its own keep-alive rules, and chunked or big bodies streaming; so does an
/// `Expect` the fast path does not take ([`expect_continue`]).
fn for_hyper(head: &RequestHead) -> bool {
    let h = &head.parts.headers;
    head.parts.version != Version::HTTP_11
        || head.parts.method == Method::CONNECT
        || h.contains_key(header::UPGRADE)
        || (h.contains_key(header::EXPECT) && !expect_continue(head))
        || match head.framing {
            Framing::Empty => false,
            // Behind an `Expect` gate a big body streams through once (see `Gate`).
            Framing::Length(n) => n > MAX_BODY && !expect_continue(head),
            Framing::Chunked | Framing::Close => true,
        }
}

/// Whether the request asks to hear `100 Continue` before it sends its body (of declared
/// length), which the fast path leaves to the upstream to decide: the request is taken as soon
/// as its head is in, and [`Gate`] asks the client for the body only when the upstream says to
/// continue.
fn expect_continue(head: &RequestHead) -> bool {
    head.parts.version == Version::HTTP_11
        && head
            .parts
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
        && matches!(head.framing, Framing::Length(n) if n > 0)
}

/// Reads until `buf` holds a whole request (head and body), or the request goes to hyper. A
/// request that expects `100 Continue` is returned once its head is in.
async fn read_request(stream: &mut ClientStream, buf: &mut BytesMut) -> Result<Next, Unreadable> {
    // Set at the first read that has to wait: the whole request is usually there at once (its
    // first bytes were seen), and then no clock is read and no timer armed.
    let mut deadline = None;
    loop {
        if !buf.is_empty() {
            let data = std::mem::take(buf).freeze();
            if let Some(head) = codec::parse_request(&data)? {
                if for_hyper(&head) {
                    return Ok(Next::HandOff(data));
                }
                if data.len() >= head.len + head.framing.body_len() || expect_continue(&head) {
                    return Ok(Next::Request { head, data });
                }
            }
            // Not all there yet: take the bytes back (no copy: nothing else holds them) and
            // read more. The head is parsed again when they arrive; this is the rare case.
            *buf = data
                .try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(buffers::SIZE.max(buf.len()));
        }
        let read = match stream.read_buf(buf).now_or_never() {
            Some(read) => read,
            None => {
                let deadline =
                    *deadline.get_or_insert_with(|| Instant::now() + HEADER_READ_TIMEOUT);
                tokio::time::timeout_at(deadline, stream.read_buf(buf))
                    .await
                    .map_err(|_| Unreadable::Timeout(HEADER_READ_TIMEOUT))?
            }
        };
        match read {
            Ok(0) | Err(_) => return Ok(Next::Closed),
            Ok(_) => {}
        }
    }
}

/// How the connection goes on after a request.
enum Flow {
    /// Read the next request; these bytes of it already arrived.
    Next(BytesMut),
    /// Close the connection.
    Close,
    /// hyper serves the rest, starting with these bytes.
    HandOff(Bytes),
}

/// What answering a request needs to know about it and its connection.
struct Ctx<'a> {
    shared: &'a Arc<Shared>,
    info: &'a ConnInfo,
    head_request: bool,
    /// Close the connection after the response.
    close: bool,
}

/// Handles one whole request read by [`read_request`].
async fn request(
    shared: &Arc<Shared>,
    info: &ConnInfo,
    client: &mut ClientStream,
    head: RequestHead,
    mut data: Bytes,
) -> Flow {
    let RequestHead {
        mut parts,
        raw,
        len,
        framing,
        close,
    } = head;
    let end = len + framing.body_len();
    // An `Expect: 100-continue` request whose body has not come: answered without asking for
    // it, the connection cannot carry another request (the body may still arrive).
    let complete = data.len() >= end;
    let mut ctx = Ctx {
        shared,
        info,
        head_request: parts.method == Method::HEAD,
        close,
    };
    let log = RequestLog::new(
        shared,
        &parts.method,
        parts.version,
        &parts.uri,
        &parts.headers,
        raw.as_ref().map(|f| (f, &data[..])),
    );
    let mut out = Outcome::default();
    let snap = shared.snapshot.load_full();
    let raw_head = raw.as_ref().map(|fields| RawHead { fields, buf: &data });
    let planned = pipeline::plan(&snap, info, &mut parts, raw_head, false, true, &mut out).await;
    let result = match planned {
        // Decided before the rule's stages ran: hyper's path runs them, once.
        Ok(Plan::HandOff) => return Flow::HandOff(data),
        Ok(Plan::Forward(fwd)) => match fwd.backend.clients.fast_h1() {
            Some(pool) => {
                let pool = pool.clone();
                let request = (&mut data, len, end);
                let raw = raw.as_ref();
                forward(&mut ctx, client, &fwd, pool, &parts, raw, request, log, out).await
            }
            // `plan` hands off a rule with a backend the fast path does not speak; a backend
            // missing from the snapshot fails in `plan` before this.
            None => {
                ctx.close |= !complete;
                fail(&ctx, client, ProxyError::NoRoute, log, out).await
            }
        },
        // Answered from memory like the proxy's own answers: the merged body is built whole.
        Ok(Plan::Aggregate(agg)) => {
            ctx.close |= !complete;
            match agg.respond(shared, &parts, info.client, &mut out).await {
                Ok(resp) => {
                    log.finish(shared, info, resp.status().as_u16(), &out);
                    answer(client, resp, ctx.head_request, ctx.close).await
                }
                Err(e) => fail(&ctx, client, e, log, out).await,
            }
        }
        Ok(Plan::Answer(resp)) => {
            ctx.close |= !complete;
            log.finish(shared, info, resp.status().as_u16(), &out);
            answer(client, resp, ctx.head_request, ctx.close).await
        }
        Err(e) => {
            ctx.close |= !complete;
            fail(&ctx, client, e, log, out).await
        }
    };
    // Emptied before the read buffer is recycled: its values are slices of it.
    buffers::put_header_map(parts.headers);
    next_request(result.is_ok() && !ctx.close, data, end)
}

/// How the connection goes on once the request in `data[..end]` has been answered.
fn next_request(keep_alive: bool, data: Bytes, end: usize) -> Flow {
    if !keep_alive {
        return Flow::Close;
    }
    // The next request's first bytes, if the client pipelined them.
    let mut next = BytesMut::new();
    if data.len() > end {
        next = buffers::take();
        next.extend_from_slice(&data[end..]);
    }
    buffers::recycle(data);
    Flow::Next(next)
}

/// Handles one whole request for the pod's application (sidecar INBOUND): the port's inbound
/// policy decides, then the request goes to the application as it came, its headers prepared
/// by [`inbound::Conn::to_app`] (as on hyper's INBOUND path).
async fn to_app(
    shared: &Arc<Shared>,
    conn: &inbound::Conn,
    client: &mut ClientStream,
    mut head: RequestHead,
    mut data: Bytes,
) -> Flow {
    // The inbound policy and the application's headers work on the header map.
    if let Err(e) = head.headers(&data) {
        let resp = ProxyError::BadRequest(e.to_string()).into_response();
        let _ = answer(client, resp, false, true).await;
        return Flow::Close;
    }
    let (len, end) = (head.len, head.len + head.framing.body_len());
    // `Expect: 100-continue`: the application decides (see `Gate`); answered without the body,
    // the connection closes.
    let complete = data.len() >= end;
    let mut close = head.close || !complete;
    let mut parts = head.parts;
    let head_request = parts.method == Method::HEAD;
    let start = Instant::now();
    let pool = match inbound::admit(
        shared,
        conn,
        &parts.method,
        parts.uri.path(),
        &parts.headers,
    ) {
        Ok(clients) => match clients.fast_h1() {
            Some(pool) => pool.clone(),
            None => return Flow::HandOff(data),
        },
        Err(refused) => {
            let refused = refused.into_response();
            conn.record(shared, refused.status().as_u16(), start.elapsed());
            let result = answer(client, refused, head_request, close).await;
            return next_request(result.is_ok() && !close, data, end);
        }
    };
    conn.to_app(&mut parts.headers, false);
    let gate = Gate::unless_whole(client, &data, len, end);
    let upstream = {
        let exchange = Exchange {
            shared,
            target: Target::App(conn.app),
            pool,
            parts: &parts,
            raw: None,
            body: if complete {
                data.slice(len..end)
            } else {
                Bytes::new()
            },
            gate: gate.as_ref(),
            client: conn.client,
            head_request,
            close: head.close || *shared.shutdown.borrow(),
            per_try: None,
        };
        exchange.head().await
    };
    match gate.map(|g| g.into_inner().outcome()) {
        Some(GateOutcome::Read(whole)) => {
            data = whole;
            close = head.close;
        }
        Some(GateOutcome::Streamed) => close = head.close,
        Some(GateOutcome::Unread) | None => {}
    }
    let result = match upstream {
        Ok(upstream) => {
            conn.record(shared, upstream.head.status.as_u16(), start.elapsed());
            close |= upstream.head.close;
            relay(client, upstream).await
        }
        Err(e) => {
            tracing::debug!(error = %e, app = %conn.app, "inbound request failed");
            let resp = e.into_response();
            conn.record(shared, resp.status().as_u16(), start.elapsed());
            answer(client, resp, head_request, close).await
        }
    };
    // Emptied before the read buffer is recycled: its values are slices of it.
    buffers::put_header_map(parts.headers);
    next_request(result.is_ok() && !close, data, end)
}

/// Sends the request upstream and relays the response.
#[expect(
    clippy::too_many_arguments,
    reason = "the request in its parts, as the caller holds them"
)]
async fn forward(
    ctx: &mut Ctx<'_>,
    client: &mut ClientStream,
    fwd: &Forward<'_>,
    pool: TcpPool,
    parts: &Parts,
    fields: Option<&raw::Fields>,
    (data, len, end): (&mut Bytes, usize, usize),
    log: RequestLog,
    mut out: Outcome,
) -> io::Result<()> {
    let policy = AttemptPolicy::new(fwd, &parts.method, false);
    let complete = data.len() >= end;
    let body = if complete {
        let body = data.slice(len..end);
        fwd.send_mirrors(ctx.shared, parts, &body, ctx.info.client);
        body
    } else {
        // `Expect: 100-continue`: the upstream decides whether the body is wanted.
        Bytes::new()
    };
    let gate = Gate::unless_whole(client, data, len, end);
    let upstream = {
        let exchange = Exchange {
            shared: ctx.shared,
            target: Target::Backend(fwd),
            pool,
            parts,
            raw: fwd
                .raw
                .as_ref()
                .zip(fields)
                .map(|(stamp, fields)| RawRequest {
                    fields,
                    stamp,
                    buf: data,
                }),
            body,
            gate: gate.as_ref(),
            client: ctx.info.client,
            head_request: ctx.head_request,
            // A proxy shutting down finishes this exchange and closes.
            close: ctx.close || *ctx.shared.shutdown.borrow(),
            per_try: policy.per_try(),
        };
        // The whole request is in memory (or, behind the gate, will be once read): any attempt
        // can be made again; a big body behind a gate streams through once.
        let replayable = complete || end - len <= pipeline::MAX_REPLAY_BODY;
        policy
            .run(
                ctx.shared,
                fwd,
                &mut out,
                replayable,
                || exchange.head(),
                |u: &Upstream| attempts::response_failure(u.head.status, &HeaderMap::new()),
            )
            .await
    };
    match gate.map(|g| g.into_inner().outcome()) {
        Some(GateOutcome::Read(whole)) => *data = whole,
        Some(GateOutcome::Unread) => ctx.close = true,
        Some(GateOutcome::Streamed) | None => {}
    }
    let upstream = match upstream {
        Ok(u) => u,
        Err(e) => return fail(ctx, client, e, log, out).await,
    };
    log.finish(ctx.shared, ctx.info, upstream.head.status.as_u16(), &out);
    ctx.close |= upstream.head.close;
    relay(client, upstream).await
}

/// Answers with the error's response, logged and counted. The request was read whole, so the
/// connection can carry the next one.
async fn fail(
    ctx: &Ctx<'_>,
    client: &mut ClientStream,
    e: ProxyError,
    log: RequestLog,
    mut out: Outcome,
) -> io::Result<()> {
    out.error = Some(e.reason());
    tracing::debug!(error = %e, listener = %ctx.info.listener, "request failed");
    let mut resp = e.into_response();
    out.mark(&mut resp);
    log.finish(ctx.shared, ctx.info, resp.status().as_u16(), &out);
    answer(client, resp, ctx.head_request, ctx.close).await
}

fn with_status(mut resp: Response<Body>, status: StatusCode) -> Response<Body> {
    *resp.status_mut() = status;
    resp
}

/// Writes a response the proxy made itself (error, redirect, direct response): its body is in
/// memory, so it goes out with a `content-length` in one write.
async fn answer(
    client: &mut ClientStream,
    resp: Response<Body>,
    head_request: bool,
    close: bool,
) -> io::Result<()> {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut headers = parts.headers;
    // An answer to HEAD may come without its body but with the length a GET would get.
    if !(head_request && headers.contains_key(header::CONTENT_LENGTH)) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    codec::add_date(&mut headers);
    let mut wire = Vec::with_capacity(256 + body.len());
    codec::write_response(&mut wire, parts.status, &headers, false, close);
    if !head_request {
        wire.extend_from_slice(&body);
    }
    client.write_all(&wire).await?;
    client.flush().await
}

/// Writes `head` then `body` (one system call when the socket takes both at once).
async fn write_both<S>(stream: &mut S, mut head: &[u8], mut body: &[u8]) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    while !head.is_empty() {
        let n = stream
            .write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(body)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[n - from_head..];
    }
    stream.write_all(body).await
}

/// Where a request goes.
#[derive(Clone, Copy)]
enum Target<'a> {
    /// A routed request: its backend picks the endpoint, and its rule's timeouts and response
    /// filters apply.
    Backend(&'a Forward<'a>),
    /// The pod's own application (sidecar INBOUND): one address, nothing to pick or filter.
    App(SocketAddr),
}

/// A request written upstream from its parsed fields ([`crate::wire::raw`]).
#[derive(Clone, Copy)]
struct RawRequest<'a> {
    fields: &'a raw::Fields,
    stamp: &'a raw::Stamp,
    /// The bytes the fields were parsed from.
    buf: &'a [u8],
}

/// One request's trip upstream.
struct Exchange<'a, 'c> {
    shared: &'a Shared,
    target: Target<'a>,
    pool: TcpPool,
    parts: &'a Parts,
    /// Set when the request has no header map: `parts.headers` is empty.
    raw: Option<RawRequest<'a>>,
    body: Bytes,
    /// `Expect: 100-continue`: the body is behind the gate until the upstream asks for it.
    gate: Option<&'a tokio::sync::Mutex<Gate<'c>>>,
    client: SocketAddr,
    head_request: bool,
    /// The client connection closes after this exchange.
    close: bool,
    /// The time one attempt may take to the response head.
    per_try: Option<Duration>,
}

/// The client's side of `Expect: 100-continue` (RFC 9110 §10.1.1): the request's head went
/// upstream with its `Expect`; the client is told to continue, and its body read, only when the
/// upstream says `100 Continue` (or stays silent for [`EXPECT_WAIT`], as clients do). A final
/// answer first goes to the client without the body ever being asked for.
struct Gate<'c> {
    client: &'c mut ClientStream,
    /// The request's bytes so far: its head, then what came of its body.
    data: BytesMut,
    len: usize,
    end: usize,
    /// The body, once read.
    body: Option<Bytes>,
    /// A body too big to keep (over 64 KiB) was copied straight through, once.
    streamed: bool,
}

/// How long an upstream may stay silent after an `Expect: 100-continue` head before the body
/// is sent anyway (an upstream that ignores `Expect` waits for the body).
const EXPECT_WAIT: Duration = Duration::from_secs(1);

/// What became of a request's body behind its gate.
enum GateOutcome {
    /// Read: the request's bytes, head, body and anything the client sent after.
    Read(Bytes),
    /// Copied through to the upstream: the connection is at the next request.
    Streamed,
    /// Never asked for: the client may still send it, so the connection closes.
    Unread,
}

impl<'c> Gate<'c> {
    /// A gate for a request whose body has not all come (`Expect: 100-continue`), or `None`.
    fn unless_whole(
        client: &'c mut ClientStream,
        data: &Bytes,
        len: usize,
        end: usize,
    ) -> Option<tokio::sync::Mutex<Self>> {
        (data.len() < end).then(|| {
            tokio::sync::Mutex::new(Self {
                client,
                data: BytesMut::from(&data[..]),
                len,
                end,
                body: None,
                streamed: false,
            })
        })
    }

    /// What became of the body.
    fn outcome(self) -> GateOutcome {
        match (self.body, self.streamed) {
            (Some(_), _) => GateOutcome::Read(self.data.freeze()),
            (None, true) => GateOutcome::Streamed,
            (None, false) => GateOutcome::Unread,
        }
    }

    /// Whether the body is kept to be sent again (up to 64 KiB) or streams through once.
    fn keeps_body(&self) -> bool {
        self.end - self.len <= pipeline::MAX_REPLAY_BODY
    }

    /// Tells the client to continue.
    async fn say_continue(&mut self) -> Result<(), TryError> {
        let client_err = |_| TryError::Client("the client went away".to_owned());
        self.client
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(client_err)?;
        self.client.flush().await.map_err(client_err)
    }

    /// Tells the client to continue and copies its body to `conn` as it comes, without
    /// keeping it (a body too big to keep). Each read must come within the head timeout.
    async fn stream_to(&mut self, conn: &mut Stream) -> Result<(), TryError> {
        if self.streamed {
            return Err(TryError::Failed(
                "a streamed request body cannot be sent twice".to_owned(),
            ));
        }
        self.streamed = true;
        self.say_continue().await?;
        let upstream_err =
            |e: io::Error| TryError::Failed(format!("sending the request body: {e}"));
        let early = self.data.len().min(self.end);
        conn.write_all(&self.data[self.len..early])
            .await
            .map_err(upstream_err)?;
        let mut left = (self.end - early) as u64;
        let mut chunk = buffers::take();
        while left > 0 {
            chunk.clear();
            let want = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(buffers::SIZE);
            chunk.reserve(want);
            let read = tokio::time::timeout(
                HEADER_READ_TIMEOUT,
                (&mut *self.client).take(want as u64).read_buf(&mut chunk),
            )
            .await;
            match read {
                Ok(Ok(0) | Err(_)) => {
                    return Err(TryError::Client(
                        "the client closed before sending its body".to_owned(),
                    ));
                }
                Err(_) => {
                    return Err(TryError::Client(
                        "the request body stopped coming".to_owned(),
                    ));
                }
                Ok(Ok(n)) => left -= n as u64,
            }
            conn.write_all(&chunk).await.map_err(upstream_err)?;
        }
        buffers::put(chunk);
        Ok(())
    }

    /// Tells the client to continue and reads its body, once; later calls return it.
    async fn open(&mut self) -> Result<Bytes, TryError> {
        if let Some(body) = &self.body {
            return Ok(body.clone());
        }
        let client_err = |why: &str| TryError::Client(why.to_owned());
        self.say_continue().await?;
        let deadline = Instant::now() + HEADER_READ_TIMEOUT;
        while self.data.len() < self.end {
            self.data.reserve(self.end - self.data.len());
            match tokio::time::timeout_at(deadline, self.client.read_buf(&mut self.data)).await {
                Ok(Ok(0) | Err(_)) => {
                    return Err(client_err("the client closed before sending its body"));
                }
                Err(_) => return Err(client_err("the request body did not come in time")),
                Ok(Ok(_)) => {}
            }
        }
        let body = Bytes::copy_from_slice(&self.data[self.len..self.end]);
        self.body = Some(body.clone());
        Ok(body)
    }
}

/// An upstream response whose head has arrived.
struct Upstream {
    conn: Stream,
    addr: SocketAddr,
    pool: TcpPool,
    head: ResponseHead,
    /// The response bytes read so far: the head, then the first body bytes.
    buf: BytesMut,
    /// The head the client gets.
    wire: buffers::Head,
    /// Held until the body is relayed: the backend's limiter slot, the endpoint's load.
    _guards: Option<(Option<tokio::sync::OwnedSemaphorePermit>, InFlight)>,
}

/// Why one try on one connection failed.
enum TryError {
    /// The connection broke before any byte of the response: on a pooled connection, the
    /// upstream probably closed it while idle.
    Broken { written: bool },
    /// The connection broke in the middle of the response head.
    Failed(String),
    /// The response head arrived but cannot be relayed (what was wrong).
    BadResponse(String),
    /// The client did not send the body it announced (`Expect: 100-continue`).
    Client(String),
}

thread_local! {
    /// Requests on this thread's event loop between sending upstream and their response head.
    static AWAITING: Cell<usize> = const { Cell::new(0) };
}

/// Counts a request as waiting for its upstream for as long as it is held ([`relay`] asks
/// whether others are).
struct Awaiting;

impl Awaiting {
    fn enter() -> Self {
        AWAITING.with(|n| n.set(n.get() + 1));
        Self
    }

    /// Whether some request on this thread is waiting for its upstream's answer.
    fn others() -> bool {
        AWAITING.with(Cell::get) > 0
    }
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        // With several workers a task may end on another thread than it began: that thread's
        // count stays at zero, and the first one's stays raised, which only means it yields
        // as it would without the count.
        AWAITING.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

impl Exchange<'_, '_> {
    /// Sends the request and reads the response head.
    async fn head(&self) -> Result<Upstream, ProxyError> {
        let _awaiting = Awaiting::enter();
        let (dest, picked, guards) = match self.target {
            Target::Backend(fwd) => {
                let ctx = PickContext {
                    headers: &self.parts.headers,
                    client_ip: self.client.ip(),
                };
                let (permit, ep) = fwd.backend.admit(&ctx).await?;
                // The endpoint's load counts from now: balancing sees requests in flight.
                let guards = (permit, InFlight::new(ep));
                (self.shared.dest(ep), Some((&fwd.backend, ep)), Some(guards))
            }
            Target::App(addr) => (Dest::plain(addr), None, None),
        };
        let addr = dest.addr;
        let mut request = buffers::Head::take();
        let framing = match self.body.len() {
            0 => Framing::Empty,
            n => Framing::Length(n as u64),
        };
        match self.raw {
            Some(r) => r
                .fields
                .write_request(&mut request, r.buf, self.parts, r.stamp),
            None => codec::write_request(&mut request, self.parts, framing),
        }

        let start = Instant::now();
        let metrics = &self.shared.metrics;
        let report = |rtt: Option<Duration>, ok: bool| {
            if let Some((backend, ep)) = picked {
                backend.report(metrics, ep, rtt, ok);
            }
        };
        let fail = |e: ProxyError| {
            // A client that did not send its body is nothing to hold against the endpoint.
            if !matches!(e, ProxyError::BadRequest(_)) {
                report(None, false);
            }
            e
        };
        let exchange = async {
            let mut pooled = self.pool.checkout(addr);
            loop {
                let reused = pooled.is_some();
                let mut conn = match pooled.take() {
                    Some(c) => c,
                    None => self.pool.connect(&dest).await.map_err(|e| {
                        tracing::debug!(endpoint = %addr, error = %e, "upstream connect failed");
                        if let Some((_, ep)) = picked {
                            ep.stats.mark_refused(Instant::now());
                        }
                        ProxyError::Connect(addr)
                    })?,
                };
                match self.try_once(&mut conn, &request).await {
                    Ok(got) => return Ok((conn, got)),
                    // A request that never reached the upstream, or that is safe to repeat, gets
                    // one fresh connection instead of the stale one.
                    Err(TryError::Broken { written })
                        if reused && (!written || idempotent(&self.parts.method)) => {}
                    Err(TryError::Broken { .. }) => {
                        tracing::debug!(endpoint = %addr, "upstream closed the connection");
                        return Err(ProxyError::Reset(addr));
                    }
                    Err(TryError::Failed(why)) => {
                        tracing::debug!(endpoint = %addr, error = %why, "upstream request failed");
                        return Err(ProxyError::Reset(addr));
                    }
                    Err(TryError::BadResponse(why)) => {
                        tracing::debug!(endpoint = %addr, error = %why, "unusable upstream response");
                        return Err(ProxyError::BadResponse(addr, why));
                    }
                    Err(TryError::Client(why)) => return Err(ProxyError::BadRequest(why)),
                }
            }
        };
        let exchanged = match self.per_try {
            Some(t) => tokio::time::timeout(t, exchange)
                .await
                .unwrap_or(Err(ProxyError::Timeout(t))),
            None => exchange.await,
        };
        let (conn, (head, buf, wire)) = exchanged.map_err(fail)?;
        report(Some(start.elapsed()), !head.status.is_server_error());
        Ok(Upstream {
            conn,
            addr,
            pool: self.pool.clone(),
            head,
            buf,
            wire,
            _guards: guards,
        })
    }

    /// Writes the request on `conn` and reads the final response head (interim 1xx responses
    /// are dropped, but a `100 Continue` opens the [`Gate`] of a request that waits for it).
    /// Returns the head, the bytes read (head and first body bytes), and the head for the
    /// client.
    async fn try_once(
        &self,
        conn: &mut Stream,
        request: &[u8],
    ) -> Result<(ResponseHead, BytesMut, buffers::Head), TryError> {
        // Behind a gate that is still closed only the head goes now; a body already read (an
        // attempt after the first) goes with it.
        let mut gate = match self.gate {
            Some(g) => Some(g.lock().await),
            None => None,
        };
        if gate.as_ref().is_some_and(|g| g.streamed) {
            // The body went through once and was not kept.
            return Err(TryError::Failed(
                "a streamed request body cannot be sent twice".to_owned(),
            ));
        }
        let mut waiting = gate.as_ref().is_some_and(|g| g.body.is_none());
        let body = match &gate {
            Some(g) => g.body.clone().unwrap_or_default(),
            None => self.body.clone(),
        };
        if write_both(conn, request, &body).await.is_err() {
            return Err(TryError::Broken { written: false });
        }
        let edit = |h: &mut HeaderMap| {
            if let Target::Backend(fwd) = self.target {
                fwd.response_headers(h, false);
            }
        };
        let edit: Option<&(dyn Fn(&mut HeaderMap) + Sync)> = match self.target {
            Target::Backend(fwd) if fwd.edits_responses() => Some(&edit),
            _ => None,
        };
        let mut buf = buffers::take();
        let mut wire = buffers::Head::take();
        let mut seen = false;
        loop {
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(buffers::SIZE.max(buf.len()));
            }
            let read = if waiting {
                match tokio::time::timeout(EXPECT_WAIT, conn.read_buf(&mut buf)).await {
                    Ok(r) => r,
                    // A silent upstream may not know `Expect`: the body goes anyway.
                    Err(_) => {
                        waiting = false;
                        send_body(gate.as_deref_mut(), conn).await?;
                        continue;
                    }
                }
            } else {
                conn.read_buf(&mut buf).await
            };
            match read {
                Ok(0) | Err(_) if !seen => return Err(TryError::Broken { written: true }),
                Ok(0) => return Err(TryError::Failed("closed in the response head".into())),
                Err(e) => return Err(TryError::Failed(e.to_string())),
                Ok(_) => seen = true,
            }
            loop {
                // Answered before the body was asked for: the client connection closes after.
                let close = self.close || waiting;
                let parsed = codec::parse_response(&buf, self.head_request, edit, close, &mut wire);
                match parsed {
                    Err(HeadError::TooLarge) => {
                        return Err(TryError::BadResponse(codec::response_head_too_large()));
                    }
                    Err(e) => return Err(TryError::BadResponse(e.to_string())),
                    Ok(None) => break,
                    Ok(Some(head)) if head.status == StatusCode::SWITCHING_PROTOCOLS => {
                        return Err(TryError::BadResponse(
                            "101 without an upgrade request".into(),
                        ));
                    }
                    Ok(Some(head)) if head.status.is_informational() => {
                        if waiting && head.status == StatusCode::CONTINUE {
                            waiting = false;
                            send_body(gate.as_deref_mut(), conn).await?;
                        }
                        let _ = buf.split_to(head.len);
                        wire.clear();
                        if buf.is_empty() {
                            break;
                        }
                    }
                    Ok(Some(mut head)) => {
                        if waiting {
                            // Answered without the body: the upstream connection is left in
                            // the middle of a request, and is not reused.
                            head.reusable = false;
                        }
                        return Ok((head, buf, wire));
                    }
                }
            }
        }
    }
}

/// Opens the gate (the client is told to continue and its body read) and sends the body
/// upstream.
async fn send_body(gate: Option<&mut Gate<'_>>, conn: &mut Stream) -> Result<(), TryError> {
    let Some(gate) = gate else {
        return Ok(());
    };
    if !gate.keeps_body() {
        return gate.stream_to(conn).await;
    }
    let body = gate.open().await?;
    conn.write_all(&body)
        .await
        .map_err(|e| TryError::Failed(format!("sending the request body: {e}")))
}

/// Methods a proxy may send again when it cannot know whether the first copy was processed
/// (RFC 9110 §9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Writes the response head and copies the body from upstream to the client as it arrives.
/// The upstream connection goes back to the pool only after a whole, well-delimited response.
async fn relay(client: &mut ClientStream, upstream: Upstream) -> io::Result<()> {
    let Upstream {
        mut conn,
        addr,
        pool,
        head,
        mut buf,
        wire,
        _guards,
    } = upstream;
    // Let the other connections whose responses arrived in this turn of the event loop read
    // them first, so the responses go out together: a client woken by the first one finds the
    // rest ready instead of going back to sleep between them. On a busy machine this is what
    // limits throughput (in `make bench` the generator and the upstream share a core, and every
    // wake-up is a context switch there: in an A/B of 8 repetitions, 0.35 switches per request
    // instead of 0.48 and a median of 21.0k req/s instead of 18.5k). When idle it costs one
    // extra non-blocking poll of the event loop and a pass of the scheduler, so it is skipped
    // when no other request on this thread is waiting for its upstream: then no other response
    // can be ready (at 2,000 req/s that is most requests).
    if Awaiting::others() {
        tokio::task::yield_now().await;
    }
    let body = &buf[head.len..];
    let Some(mut left) = BodyLeft::new(head.framing) else {
        client.write_all(&wire).await?;
        client.flush().await?;
        if body.is_empty() && head.reusable {
            pool.give_back(addr, conn);
        }
        buffers::put(buf);
        return Ok(());
    };
    let bad = |e: HeadError| io::Error::new(io::ErrorKind::InvalidData, e);
    let (n, mut done) = left.feed(body).map_err(bad)?;
    let mut extra = n < body.len();
    write_both(client, &wire, &body[..n]).await?;
    drop(wire);
    while !done {
        buf.clear();
        if conn.read_buf(&mut buf).await? == 0 {
            if head.framing == Framing::Close {
                return Ok(());
            }
            // Truncated: the client must see the connection end, not a short body that looks
            // whole.
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let (n, end) = left.feed(&buf).map_err(bad)?;
        done = end;
        extra = n < buf.len();
        client.write_all(&buf[..n]).await?;
    }
    // TLS holds what it could not send yet; a plain socket has nothing to flush.
    client.flush().await?;
    if !extra && head.reusable {
        pool.give_back(addr, conn);
    }
    buffers::put(buf);
    Ok(())
}

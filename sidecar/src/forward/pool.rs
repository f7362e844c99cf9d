//! The HTTP/1.1 upstream connection pools: idle keep-alive connections per endpoint, lent to one
//! request at a time. [`H1Pool`] keeps hyper client connections (for the requests hyper serves);
//! [`TcpPool`] keeps bare sockets for the fast path ([`crate::serve::h1`]), which speaks HTTP/1.1 on
//! them itself. Both share the idle lists ([`IdleLists`]).
//!
//! ```text
//! checkout(addr) ─► newest idle connection that is ready ─┬─► send ─► response ─► Lease
//!                   (closed ones dropped, expired closed) └─► none: connect, handshake    │
//!       ▲                                                                                  │
//!       └──────────── Lease dropped (response body sent or abandoned) ◄───────────────────┘
//! ```
//!
//! Why not hyper-util's pooling client for HTTP/1.1: on the hot path it builds a pool key and an
//! absolute URI per request, races the checkout against a lazy connect, and spawns a task per
//! request to wait for the connection to become idle again. Here a request costs one short lock
//! to take a connection and one to give it back; a task is spawned per *connection* only.
//!
//! A connection is given back when its response body is dropped. If the body was not read to
//! the end, hyper closes that connection, and the next checkout discards it (`is_closed`).
//! A connection that is not yet ready (the upstream connection task has not caught up) is
//! skipped, not waited for. Idle connections past the idle timeout are closed when a checkout or
//! give-back meets them (a give-back sweeps every endpoint's list at most once a second), and at
//! most `max_idle` are kept per endpoint (the oldest go). Without any traffic nothing is swept;
//! the upstream's own keep-alive timeout closes those connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use crate::error::{Body, BoxError};
use crate::forward::connect::{Dest, Reusable, Stream, UpstreamError, connect};
use crate::mesh::mtls::MeshProtocol;

impl Reusable for SendRequest<Body> {
    fn ready(&self) -> Option<bool> {
        (!self.is_closed()).then(|| self.is_ready())
    }
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

/// How often a give-back also sweeps the other endpoints' idle lists for expired and closed
/// connections (endpoints that get no requests, e.g. removed from the config, are otherwise
/// never looked at).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Lists<C> {
    /// Idle connections per endpoint, oldest first. FNV: endpoint addresses come from the
    /// config, and every request looks one up twice (checkout and give-back).
    by_addr: HashMap<SocketAddr, Vec<Idle<C>>, fnv::FnvBuildHasher>,
    /// When all lists were last swept.
    swept: Option<Instant>,
}

/// Idle connections per endpoint, newest reused first, with an idle timeout and a cap per
/// endpoint.
pub(crate) struct IdleLists<C> {
    lists: Mutex<Lists<C>>,
    idle_timeout: Duration,
    max_idle: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves at worst a stale idle list.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<C: Reusable> IdleLists<C> {
    fn new(idle_timeout: Duration, max_idle: usize) -> Self {
        Self {
            lists: Mutex::new(Lists {
                by_addr: HashMap::default(),
                swept: None,
            }),
            idle_timeout,
            max_idle,
        }
    }

    /// The newest ready idle connection to `addr`, dropping closed and expired ones it meets.
    fn checkout(&self, addr: SocketAddr) -> Option<C> {
        let mut idle = lock(&self.lists);
        let list = idle.by_addr.get_mut(&addr)?;
        let now = Instant::now();
        // Newest first: it is the most likely to be alive and warm. Usually the first one taken
        // is ready; one that is still finishing its previous response is put back.
        let mut busy = Vec::new();
        let mut found = None;
        while let Some(c) = list.pop() {
            if now.duration_since(c.since) >= self.idle_timeout {
                continue;
            }
            match c.conn.ready() {
                None => continue,
                Some(true) => {
                    found = Some(c.conn);
                    break;
                }
                Some(false) => busy.push(c),
            }
        }
        list.extend(busy.into_iter().rev());
        found
    }

    fn give_back(&self, addr: SocketAddr, conn: C) {
        if conn.ready().is_none() {
            return;
        }
        let mut idle = lock(&self.lists);
        let now = Instant::now();
        let list = idle.by_addr.entry(addr).or_default();
        // The oldest are at the front: drop expired ones and any beyond `max_idle` (the oldest
        // is the most likely to be closed by the upstream soon).
        let expired = list
            .iter()
            .take_while(|c| now.duration_since(c.since) >= self.idle_timeout)
            .count();
        let excess = (list.len() + 1).saturating_sub(self.max_idle);
        list.drain(..expired.max(excess).min(list.len()));
        list.push(Idle { conn, since: now });
        if idle
            .swept
            .is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY)
        {
            idle.swept = Some(now);
            idle.by_addr.retain(|_, list| {
                list.retain(|c| {
                    c.conn.ready().is_some() && now.duration_since(c.since) < self.idle_timeout
                });
                !list.is_empty()
            });
        }
    }
}

/// Pooled HTTP/1.1 connections to the endpoints of one backend. Cheap to clone; clones share
/// the pool.
#[derive(Clone)]
pub struct H1Pool {
    inner: Arc<Inner>,
}

struct Inner {
    idle: IdleLists<SendRequest<Body>>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for H1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool")
            .field("connect_timeout", &self.inner.connect_timeout)
            .finish_non_exhaustive()
    }
}

/// A pooled connection lent to one request; goes back to the pool when dropped.
pub struct Lease {
    tx: Option<SendRequest<Body>>,
    addr: SocketAddr,
    pool: Arc<Inner>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("addr", &self.addr).finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.pool.idle.give_back(self.addr, tx);
        }
    }
}

impl H1Pool {
    /// An empty pool.
    pub fn new(connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                idle: IdleLists::new(idle_timeout, max_idle),
                connect_timeout,
            }),
        }
    }

    /// Sends `req` (origin-form URI, `Host` already set) to `addr` on an idle connection, or a
    /// new one. A request that an idle connection refused before writing anything (it was
    /// closing) is sent again on another connection, as hyper-util's client does.
    pub async fn send(
        &self,
        dest: &Dest,
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        let addr = dest.addr;
        while let Some(mut tx) = self.inner.idle.checkout(addr) {
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lease(addr, tx))),
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(request_error(addr, e.into_error())),
                },
            }
        }
        let mut tx = self.connect(dest).await?;
        match tx.send_request(req).await {
            Ok(resp) => Ok((resp, self.lease(addr, tx))),
            Err(e) => Err(request_error(addr, e)),
        }
    }

    fn lease(&self, addr: SocketAddr, tx: SendRequest<Body>) -> Lease {
        Lease {
            tx: Some(tx),
            addr,
            pool: self.inner.clone(),
        }
    }

    async fn connect(&self, dest: &Dest) -> Result<SendRequest<Body>, UpstreamError> {
        let addr = dest.addr;
        let stream = connect(dest, self.inner.connect_timeout, MeshProtocol::Http1).await?;
        let connect_error = |source: BoxError| UpstreamError::Connect { addr, source };
        let (tx, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_error(e.into()))?;
        tokio::spawn(async move {
            // Upgrades (WebSocket) take the connection over after a 101.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(endpoint = %addr, error = %e, "upstream connection ended");
            }
        });
        Ok(tx)
    }
}

/// Idle keep-alive TCP connections to the endpoints of one backend, for the HTTP/1.1 fast path
/// ([`crate::serve::h1`]), which speaks HTTP on them itself: no task per connection, and an idle
/// connection costs only its socket. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct TcpPool {
    inner: Arc<TcpInner>,
}

struct TcpInner {
    idle: IdleLists<Stream>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for TcpPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpPool")
            .field("connect_timeout", &self.inner.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl TcpPool {
    /// An empty pool.
    pub fn new(connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> Self {
        Self {
            inner: Arc::new(TcpInner {
                idle: IdleLists::new(idle_timeout, max_idle),
                connect_timeout,
            }),
        }
    }

    /// An idle connection to `addr` that looks alive, if there is one.
    pub fn checkout(&self, addr: SocketAddr) -> Option<Stream> {
        self.inner.idle.checkout(addr)
    }

    /// Keeps `stream`, which has just finished a whole exchange, for the next request.
    pub fn give_back(&self, addr: SocketAddr, stream: Stream) {
        self.inner.idle.give_back(addr, stream);
    }

    /// A new connection to `dest`.
    pub async fn connect(&self, dest: &Dest) -> Result<Stream, UpstreamError> {
        connect(dest, self.inner.connect_timeout, MeshProtocol::Http1).await
    }
}

/// HTTP/2 connections to the endpoints of one backend: one multiplexed connection per
/// endpoint, shared by all requests to it, replaced when it closes and dropped after
/// `idle_timeout` without a request. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct H2Pool {
    inner: Arc<H2Inner>,
}

struct H2Inner {
    conns: Mutex<HashMap<SocketAddr, (http2::SendRequest<Body>, Instant)>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl std::fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool")
            .field("connect_timeout", &self.inner.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl H2Pool {
    /// An empty pool.
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(H2Inner {
                conns: Mutex::new(HashMap::new()),
                connect_timeout,
                idle_timeout,
            }),
        }
    }

    /// Sends `req` (absolute URI) to `dest` on its connection, opening one if there is none.
    pub async fn send(
        &self,
        dest: &Dest,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let addr = dest.addr;
        let live = {
            let mut conns = lock(&self.inner.conns);
            let now = Instant::now();
            let live = match conns.get_mut(&addr) {
                Some((tx, used))
                    if !tx.is_closed() && now.duration_since(*used) < self.inner.idle_timeout =>
                {
                    *used = now;
                    Some(tx.clone())
                }
                _ => None,
            };
            if live.is_none() {
                conns.remove(&addr);
            }
            live
        };
        let mut tx = match live {
            Some(tx) => tx,
            None => {
                let tx = self.connect(dest).await?;
                // Two requests may have connected at once; the later one's connection serves
                // its own request and the pool keeps it.
                lock(&self.inner.conns).insert(addr, (tx.clone(), Instant::now()));
                tx
            }
        };
        tx.ready().await.map_err(|e| request_error(addr, e))?;
        tx.send_request(req)
            .await
            .map_err(|e| request_error(addr, e))
    }

    async fn connect(&self, dest: &Dest) -> Result<http2::SendRequest<Body>, UpstreamError> {
        let addr = dest.addr;
        let stream = connect(dest, self.inner.connect_timeout, MeshProtocol::Http2).await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect {
                addr,
                source: e.into(),
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(endpoint = %addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        Ok(tx)
    }
}

fn request_error(addr: SocketAddr, e: hyper::Error) -> UpstreamError {
    UpstreamError::Request {
        addr,
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;
    use crate::error::full;

    /// An HTTP/1.1 upstream answering "ok"; counts the connections it accepted. With `close`,
    /// it closes each connection after one response.
    async fn upstream(close: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let sock = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = sock.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let svc = service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(full("ok")))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .keep_alive(!close)
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        (addr, accepted)
    }

    async fn get(pool: &H1Pool, addr: SocketAddr) -> String {
        let req = Request::builder()
            .uri("/")
            .header("host", "up")
            .body(full(""))
            .unwrap();
        let (resp, lease) = pool.send(&Dest::plain(addr), req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        drop(lease);
        // Let the connection task see the end of the exchange, as the next request would.
        tokio::task::yield_now().await;
        String::from_utf8(body.to_vec()).unwrap()
    }

    fn pool() -> H1Pool {
        H1Pool::new(Duration::from_secs(1), Duration::from_secs(90), 8)
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (addr, accepted) = upstream(false).await;
        let pool = pool();
        for _ in 0..3 {
            assert_eq!(get(&pool, addr).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced() {
        let (addr, accepted) = upstream(true).await;
        let pool = pool();
        for _ in 0..3 {
            assert_eq!(get(&pool, addr).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_past_the_timeout_are_dropped_even_without_requests_to_them() {
        let (a, a_accepted) = upstream(false).await;
        let (b, _) = upstream(false).await;
        let pool = H1Pool::new(Duration::from_secs(1), Duration::from_secs(10), 8);
        get(&pool, a).await;
        tokio::time::advance(Duration::from_secs(11)).await;
        // Traffic to another endpoint sweeps `a`'s expired connection away.
        get(&pool, b).await;
        assert!(!lock(&pool.inner.idle.lists).by_addr.contains_key(&a));
        get(&pool, a).await;
        assert_eq!(a_accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn refused_connections_are_connect_errors() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let req = Request::builder().uri("/").body(full("")).unwrap();
        let err = pool().send(&Dest::plain(addr), req).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
    }
}

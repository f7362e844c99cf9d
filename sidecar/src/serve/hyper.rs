//! hyper serves what the fast HTTP/1 path does not: HTTP/2 (h2c by preface, TLS by ALPN), and
//! HTTP/1 connections from the request the fast path hands over (upgrades, `Expect`, streamed
//! bodies, HTTP/1.0). Each request goes to the same pipeline as on the fast path
//! ([`pipeline::handle`] for routed requests, [`pipeline::inbound::handle`] for the pod's
//! application). A shutdown asks each connection to finish its requests and close.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::error::Body;
use crate::pipeline::{self, Site};
use crate::shared::Shared;

/// Serves HTTP/1.1 with hyper (upgrades included) until the client closes or a shutdown asks the
/// connection to finish: for what the fast path ([`super::h1`]) hands over.
pub(crate) async fn serve_http1<I>(shared: Arc<Shared>, site: Site, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = SiteService::new(&shared, site);
    let mut builder = hyper::server::conn::http1::Builder::new();
    // A client may shut its sending side once the request is out (RFC 9112 §9.6); it still
    // gets its answer, as on the fast path.
    builder.timer(TokioTimer::new()).half_close(true);
    let conn = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    until_shutdown(shared.shutdown.subscribe(), conn, |c| c.graceful_shutdown()).await;
}

/// Serves HTTP/1.1 (with upgrades) or HTTP/2, detected from the first bytes, until the client
/// closes or a shutdown asks the connection to finish gracefully.
pub(crate) async fn serve_auto<I>(shared: Arc<Shared>, site: Site, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = SiteService::new(&shared, site);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Answers a client that shut its sending side after the request (see `serve_http1`).
    builder.http1().timer(TokioTimer::new()).half_close(true);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    until_shutdown(shared.shutdown.subscribe(), conn, |c| c.graceful_shutdown()).await;
}

/// Serves HTTP/2 only (the preface seen, or negotiated by ALPN) until the client closes or a
/// shutdown asks the connection to finish.
pub(crate) async fn serve_h2<I>(shared: Arc<Shared>, site: Site, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = SiteService::new(&shared, site);
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    until_shutdown(shared.shutdown.subscribe(), conn, |c| c.graceful_shutdown()).await;
}

/// Answers a connection's requests through the pipeline of its site.
#[derive(Clone)]
struct SiteService {
    shared: Arc<Shared>,
    site: Arc<Site>,
}

impl SiteService {
    fn new(shared: &Arc<Shared>, site: Site) -> Self {
        Self {
            shared: shared.clone(),
            site: Arc::new(site),
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for SiteService {
    type Response = Response<Body>;
    type Error = Infallible;
    // Boxed so an idle keep-alive connection does not carry room for a whole request's state
    // machine; it is allocated per request instead.
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let shared = self.shared.clone();
        match &*self.site {
            Site::Routed(info) => Box::pin(pipeline::handle(shared, info.clone(), req)),
            Site::Inbound(conn) => Box::pin(pipeline::inbound::handle(shared, conn.clone(), req)),
        }
    }
}

/// Drives `conn` until it ends, or until `shutdown` turns true: then it is asked to finish its
/// requests and close.
async fn until_shutdown<C, E>(
    mut shutdown: watch::Receiver<bool>,
    conn: C,
    graceful: impl FnOnce(Pin<&mut C>),
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        () = async { drop(shutdown.wait_for(|s| *s).await) } => {
            graceful(conn.as_mut());
            let _ = conn.await;
        }
    }
}

//! Listeners: bind, accept, and serve each connection by the protocol its listener has in the
//! current snapshot (HTTP/1.1 + h2c, TLS with ALPN, or opaque TCP). Connections are counted so
//! a shutdown can wait for them to finish.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portico_proxy_api::{Protocol, ProxyConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::hyper::{serve_auto, serve_h2};
use crate::config::snapshot::ApplyError;
use crate::pipeline::{ConnInfo, Site};
use crate::shared::Shared;
use crate::wire::ClientStream;

/// A TLS handshake that takes longer than this is abandoned.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One bound listener.
#[derive(Debug)]
struct Bound {
    configured: String,
    local: SocketAddr,
    /// Shared with the accept loop, so a listener renamed, or two listeners swapping addresses,
    /// take over the bound socket instead of binding its address again (which would fail).
    sock: Arc<TcpListener>,
    stop: watch::Sender<bool>,
}

/// The listeners currently accepting.
#[derive(Debug, Default)]
pub struct Listeners {
    bound: HashMap<String, Bound>,
}

/// Sockets bound (or taken over from running listeners) for a new config but not yet
/// accepting under their new names.
#[derive(Debug)]
pub struct Pending {
    new: Vec<(String, String, Arc<TcpListener>)>,
}

impl Listeners {
    /// Binds the sockets `cfg` needs that are not bound yet; a listener whose address another
    /// running listener has (renamed, or addresses swapped) takes that socket over. Nothing
    /// changes for running listeners, so if this fails the old config keeps serving untouched.
    pub async fn prepare(&self, cfg: &ProxyConfig) -> Result<Pending, ApplyError> {
        let mut new: Vec<(String, String, Arc<TcpListener>)> = Vec::new();
        for l in &cfg.listeners {
            if self
                .bound
                .get(&l.name)
                .is_some_and(|b| b.configured == l.address)
            {
                continue;
            }
            // Port 0 asks for any free port: each such listener binds its own.
            let fixed = l.address.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0);
            let running = self.bound.values().find(|b| {
                fixed
                    && b.configured == l.address
                    && !new.iter().any(|(_, _, s)| Arc::ptr_eq(s, &b.sock))
            });
            let sock = match running {
                Some(b) => b.sock.clone(),
                None => Arc::new(TcpListener::bind(&l.address).await.map_err(|error| {
                    ApplyError::Bind {
                        listener: l.name.clone(),
                        address: l.address.clone(),
                        error,
                    }
                })?),
            };
            new.push((l.name.clone(), l.address.clone(), sock));
        }
        Ok(Pending { new })
    }

    /// Starts accepting on the prepared sockets and stops listeners that `cfg` no longer has
    /// (their open connections continue). Call after the new snapshot is in force.
    pub fn commit(&mut self, shared: &Arc<Shared>, pending: Pending, cfg: &ProxyConfig) {
        // A socket taken over stops accepting under its old name first, so no connection is
        // accepted for a listener the new config no longer has.
        for (_, _, sock) in &pending.new {
            for b in self.bound.values() {
                if Arc::ptr_eq(&b.sock, sock) {
                    b.stop.send_replace(true);
                }
            }
        }
        for (name, configured, sock) in pending.new {
            let Ok(local) = sock.local_addr() else {
                continue;
            };
            let (stop, stopped) = watch::channel(false);
            tokio::spawn(accept_loop(
                shared.clone(),
                name.as_str().into(),
                sock.clone(),
                stopped,
            ));
            if let Some(old) = self.bound.insert(
                name,
                Bound {
                    configured,
                    local,
                    sock,
                    stop,
                },
            ) {
                old.stop.send_replace(true);
            }
        }
        self.bound.retain(|name, b| {
            let keep = cfg.listeners.iter().any(|l| &l.name == name);
            if !keep {
                b.stop.send_replace(true);
            }
            keep
        });
    }

    /// Bound addresses by listener name.
    pub fn addresses(&self) -> HashMap<String, SocketAddr> {
        self.bound
            .iter()
            .map(|(n, b)| (n.clone(), b.local))
            .collect()
    }

    /// Stops accepting everywhere.
    pub fn stop_all(&mut self) {
        for b in self.bound.values() {
            b.stop.send_replace(true);
        }
        self.bound.clear();
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    name: Arc<str>,
    sock: Arc<TcpListener>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            // The stop first: a socket handed over to a new listener must not accept once more
            // under the old name.
            biased;
            () = async { drop(stop.wait_for(|s| *s).await) } => break,
            accepted = sock.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(connection(shared.clone(), name.clone(), stream, peer));
                }
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Counts an open connection for drain and metrics while alive.
struct ConnGuard {
    shared: Arc<Shared>,
    listener: Arc<str>,
}

impl ConnGuard {
    fn new(shared: &Arc<Shared>, listener: &Arc<str>) -> Self {
        shared.active.send_modify(|n| *n += 1);
        shared.metrics.connections(listener, 1);
        Self {
            shared: shared.clone(),
            listener: listener.clone(),
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.active.send_modify(|n| *n -= 1);
        self.shared.metrics.connections(&self.listener, -1);
    }
}

/// Serves one accepted connection by its listener's protocol. Each protocol's future is boxed:
/// a task is as big as its future, and unboxed every plain HTTP connection would carry room for
/// the largest branch (a TLS session, a sidecar's protocol detection).
async fn connection(shared: Arc<Shared>, listener: Arc<str>, stream: TcpStream, peer: SocketAddr) {
    let _guard = ConnGuard::new(&shared, &listener);
    let _ = stream.set_nodelay(true);
    let snap = shared.snapshot.load_full();
    let Some(l) = snap.config.listeners.iter().find(|l| *l.name == *listener) else {
        return;
    };
    let info = |scheme| ConnInfo::new(listener.clone(), peer, scheme, None);
    match l.protocol {
        Protocol::Tcp => {
            // A weighted choice per connection, or the one backend.
            let backend = if l.backends.is_empty() {
                l.backend
                    .as_ref()
                    .and_then(|b| snap.backends.get(b.as_str()))
                    .cloned()
            } else {
                crate::pipeline::pick_backend(&snap, &l.backends).ok()
            };
            let Some(backend) = backend else {
                return;
            };
            drop(snap);
            Box::pin(super::tcp::forward(&shared, backend, stream, peer)).await;
        }
        Protocol::Http => {
            drop(snap);
            Box::pin(serve_plain_http(shared.clone(), info("http"), stream)).await;
        }
        Protocol::Outbound => {
            drop(snap);
            Box::pin(super::intercept::outbound(
                shared.clone(),
                listener.clone(),
                stream,
                peer,
            ))
            .await;
        }
        Protocol::Inbound => {
            drop(snap);
            Box::pin(super::intercept::inbound(
                shared.clone(),
                listener.clone(),
                stream,
                peer,
            ))
            .await;
        }
        Protocol::Https => {
            let Some(cfg) = snap.tls.get(&*listener).cloned() else {
                return;
            };
            drop(snap);
            Box::pin(serve_https(shared.clone(), info("https"), cfg, stream)).await;
        }
    }
}

async fn serve_https(
    shared: Arc<Shared>,
    info: ConnInfo,
    cfg: Arc<rustls::ServerConfig>,
    stream: TcpStream,
) {
    let peer = info.client;
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    // The handshake and hyper's HTTP/2 connection are boxed: inline, their state would size
    // the task of every HTTP/1.1 connection for as long as it is open.
    let handshake = Box::pin(acceptor.accept(stream));
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
        // HTTP/2 over TLS is negotiated by ALPN (RFC 9113 §3.2), and then only HTTP/2 is
        // spoken: a client that sends anything but the preface gets a connection error
        // (h2spec 3.5), not an HTTP/1.1 answer. Anything else is HTTP/1.x.
        Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
            Box::pin(serve_h2(shared, Site::Routed(info), tls)).await;
        }
        Ok(Ok(tls)) => {
            super::h1::serve(shared, Site::Routed(info), ClientStream::Tls(Box::new(tls))).await;
        }
        Ok(Err(e)) => tracing::debug!(client = %peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(client = %peer, "TLS handshake timed out"),
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4): a client that starts with it speaks h2c.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves a plain-TCP HTTP connection. Waits for the client's first bytes before setting up any
/// HTTP state (a connection that never sends costs only its task), then serves HTTP/1.1 or h2c
/// directly by the preface, without hyper-util's detection layer on every read. First bytes
/// that are only the start of the preface fall back to that layer ([`serve_auto`]).
async fn serve_plain_http(shared: Arc<Shared>, info: ConnInfo, stream: TcpStream) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut first = [0u8; H2_PREFACE.len()];
    let n = tokio::select! {
        r = tokio::time::timeout(super::h1::FIRST_BYTE_TIMEOUT, stream.peek(&mut first)) => match r {
            Ok(Ok(n)) if n > 0 => n,
            // Closed, failed, or silent for too long (see `FIRST_BYTE_TIMEOUT`).
            _ => return,
        },
        () = async { drop(shutdown.wait_for(|s| *s).await) } => return,
    };
    if first[..n] != H2_PREFACE[..n] {
        drop(shutdown);
        super::h1::serve(shared, Site::Routed(info), stream.into()).await;
    } else if n == H2_PREFACE.len() {
        drop(shutdown);
        // Boxed, like the detection fallback below: inline, hyper's connection state would
        // size every HTTP/1.1 connection's task, idle ones included.
        Box::pin(serve_h2(shared, Site::Routed(info), stream)).await;
    } else {
        drop(shutdown);
        Box::pin(serve_auto(shared, Site::Routed(info), stream)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open HTTP/1.1 connection is a task holding the state of its future, idle or not, so
    /// what only some connections need (hyper's HTTP/2 connection, its HTTP/1 fallback, a
    /// request in progress) is boxed. Inline, hyper's HTTP/2 state made this 4.2 KiB (debug
    /// build; release is smaller).
    #[tokio::test]
    async fn an_http1_connection_task_is_small() {
        let shared = Arc::new(Shared::new(false, None, 1 << 20, None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = TcpStream::connect(addr).await.unwrap();
        let info = ConnInfo::new("web".into(), addr, "http", None);
        let task = serve_plain_http(shared, info, stream);
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= 2048,
            "an HTTP/1.1 connection's future takes {size} bytes"
        );
    }
}

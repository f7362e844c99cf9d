//! Config from the operator: the proxy's side of the config stream.
//!
//! ```text
//!  GET https://<operator>/v1/gateways/<ns>/<name>/config    `portico-proxy gateway` (or --gateway)
//!  GET https://<operator>/v1/mesh/pods/<ns>/<pod>/config    `portico-proxy sidecar`, for its own pod
//!  GET https://<operator>/v1/mesh/config                    the older mesh-wide stream
//!  (HTTP/2, the server verified with the CA from --ca-file or PORTICO_CONTROL_PLANE_CA)
//!  Authorization: Bearer <--token-file, re-read on every connect (projected tokens rotate)>
//!
//!  ← {"routeTable":{…}}\n {"backendSet":{…}}\n      full state first
//!  ← {"inboundPolicy":{…}}\n                        (pod streams only: part of the full state)
//!  ← {"identity":{"issuerEpoch":…}}\n               when the operator issues identities
//!  ← {"backendSet":{…}}\n …                          then each changed part, replacing the old one
//!  ← {"backendUpdate":{…}}\n                         or only the backends that changed (asked for
//!                                                     with `portico-config-features`)
//! ```
//!
//! A backend update goes to [`Proxy::apply_backends`], which rebuilds those backends alone;
//! after a refused config the stream's whole config is applied again instead, so an update is
//! never applied to a config other than the one it follows.
//!
//! An `identity` line is not config: it is handed to the identity store
//! ([`identity::Store::announce`](crate::mesh::identity::Store::announce)), which renews the
//! workload certificate early when the operator's issuer changed.
//!
//! The parts are joined with `ProxyConfig::from_parts` (plus the inbound policy) and applied
//! through
//! [`Proxy::apply`], which refuses a bad config and keeps serving the last good one. When the
//! stream breaks (operator restarted, network gone, HTTP/2 keep-alive timeout) the proxy keeps
//! serving and reconnects with exponential backoff and full jitter (a random wait in
//! `[0, min(10 s, 100 ms · 2ⁿ)]`, so a fleet of proxies does not reconnect in lockstep). Each
//! reconnect starts with a full state, so a change made while the operator was away is applied.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use portico_proxy_api::{
    BACKEND_UPDATES, Backend, BackendSet, BackendUpdate, ConfigMessage, FEATURES_HEADER,
    IdentityAnnouncement, InboundPolicy, ON_DEMAND, ProxyConfig, RouteTable, STREAM_HEADER,
    SUBSCRIBE_HEADER, Subscribed, Subscription,
};

use crate::mesh::demand::{Ask, Demand};
use crate::mesh::operator::{self, ControlError, ControlPlane};
use crate::runtime::Proxy;

/// An open config stream and the latest halves received on it.
pub struct Session {
    body: Incoming,
    buf: Vec<u8>,
    routes: Option<RouteTable>,
    backends: Option<BackendSet>,
    /// Pod streams only; `None` until the operator sends one (other streams start with an empty
    /// policy).
    inbound: Option<InboundPolicy>,
    /// The operator's last identity announcement on this stream.
    identity: Option<IdentityAnnouncement>,
    /// A whole config was handed out on this stream: later backend updates can go alone.
    whole_sent: bool,
    /// The last route table names backends not received yet: it waits for them.
    held: bool,
    /// The operator sends backends on demand on this stream: the proxy's subscriptions, and
    /// the task that sends them.
    on_demand: Option<(Arc<Demand>, tokio::task::JoinHandle<()>)>,
    // Keeps the HTTP/2 connection open while the body is read.
    _send: SendRequest<Full<Bytes>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop_asking();
    }
}

/// What a config stream delivers.
#[derive(Debug)]
enum Update {
    /// A whole config to apply.
    Config(ProxyConfig),
    /// Backends that changed, to apply to the config in force; `pending` are backends this
    /// proxy unsubscribed from, placeholders again (on demand).
    Backends {
        update: BackendUpdate,
        pending: Vec<String>,
    },
    /// The operator's identity issuer.
    Identity(IdentityAnnouncement),
}

impl Session {
    /// Connects and sends the config request; the full state is read by [`Session::next`].
    pub async fn open(cp: &ControlPlane) -> Result<Self, ControlError> {
        let (mut send, token) = operator::connect::<Full<Bytes>>(cp).await?;
        let url = cp.url.to_string();
        let (host, port) = operator::host_port(cp)?;
        let path = cp.stream.path();
        let mut req = http::Request::get(format!("https://{host}:{port}{path}"))
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        let demand = cp.demand.as_ref().filter(|_| cp.stream.has_inbound());
        req = match demand {
            Some(d) => req
                .header(FEATURES_HEADER, format!("{BACKEND_UPDATES}, {ON_DEMAND}"))
                .header(SUBSCRIBE_HEADER, d.subscriptions().join(",")),
            None => req.header(FEATURES_HEADER, BACKEND_UPDATES),
        };
        let req = req
            .body(Full::default())
            .map_err(|_| ControlError::Url(url.clone()))?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.into_body().collect().await?.to_bytes();
            return Err(ControlError::Refused {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).trim().to_owned(),
            });
        }
        // On demand only when the operator says so (an older one sends every backend).
        let answered = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let id = answered(STREAM_HEADER).filter(|_| {
            answered(FEATURES_HEADER).is_some_and(|f| f.split(',').any(|f| f.trim() == ON_DEMAND))
        });
        let on_demand = match (demand, id) {
            (Some(d), Some(id)) => {
                let uri = format!("https://{host}:{port}/v1/streams/{id}/backends");
                let asker = tokio::spawn(ask_operator(d.clone(), send.clone(), uri));
                Some((d.clone(), asker))
            }
            _ => None,
        };
        Ok(Self {
            body: resp.into_body(),
            buf: Vec::new(),
            routes: None,
            backends: None,
            inbound: (!cp.stream.has_inbound()).then(InboundPolicy::default),
            identity: None,
            whole_sent: false,
            held: false,
            on_demand,
            _send: send,
        })
    }

    /// The next update: a config to apply (the first once the full state has arrived — both
    /// halves, and for a pod its inbound policy — then one per message), or an identity
    /// announcement.
    async fn next(&mut self) -> Result<Update, ControlError> {
        loop {
            while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match ConfigMessage::from_line(&line)? {
                    ConfigMessage::RouteTable(r) => {
                        // A table that starts using a Service comes just before the backends
                        // that have it: applied with them, not refused in between. (On demand
                        // the table names backends never sent: placeholders stand in.)
                        self.held = self.on_demand.is_none()
                            && self
                                .backends
                                .as_ref()
                                .is_some_and(|b| needs_more_backends(&r, b));
                        self.routes = Some(r);
                    }
                    ConfigMessage::BackendSet(b) => {
                        self.held = false;
                        self.backends = Some(b);
                    }
                    ConfigMessage::BackendUpdate(u) => {
                        let set = self
                            .backends
                            .as_mut()
                            .ok_or(ControlError::OutOfOrder("a backend update before any set"))?;
                        set.apply(&u);
                        if self.whole_sent && !self.held {
                            return Ok(self.to_apply(u));
                        }
                        self.held = self
                            .routes
                            .as_ref()
                            .is_some_and(|r| needs_more_backends(r, set));
                    }
                    ConfigMessage::InboundPolicy(p) => self.inbound = Some(p),
                    ConfigMessage::Identity(a) => {
                        self.identity = Some(a.clone());
                        return Ok(Update::Identity(a));
                    }
                }
                if self.held {
                    continue;
                }
                if let Some(config) = self.config() {
                    self.whole_sent = true;
                    return Ok(Update::Config(config));
                }
            }
            match self.body.frame().await {
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                None => return Err(ControlError::Ended),
            }
        }
    }
}

impl Session {
    /// The whole config this stream has delivered so far, once it has every part. On demand,
    /// each backend the route table names that was not sent is an empty placeholder.
    fn config(&self) -> Option<ProxyConfig> {
        let (Some(r), Some(b), Some(i)) = (&self.routes, &self.backends, &self.inbound) else {
            return None;
        };
        let mut backends = b.clone();
        if self.on_demand.is_some() {
            let placeholders = missing_backends(r, b).into_iter().map(str::to_owned);
            backends.backends.extend(placeholders.map(Backend::named));
        }
        let mut config = ProxyConfig::from_parts(r.clone(), backends);
        config.inbound = i.clone();
        Some(config)
    }

    /// Stops the task that sends subscriptions on this stream (its end marks the demand
    /// disconnected).
    fn stop_asking(&self) {
        if let Some((_, asker)) = &self.on_demand {
            asker.abort();
        }
    }

    /// The subscriptions of this stream, when the operator sends backends on demand on it.
    fn demand(&self) -> Option<&Arc<Demand>> {
        self.on_demand.as_ref().map(|(d, _)| d)
    }

    /// The backends this stream sent (placeholders aside).
    fn sent_backends(&self) -> impl Iterator<Item = Arc<str>> + '_ {
        self.backends
            .iter()
            .flat_map(|b| &b.backends)
            .map(|b| Arc::from(b.name.as_str()))
    }

    /// `update` as the proxy applies it: on demand, a backend the proxy unsubscribed from that
    /// the route table still names becomes a placeholder again instead of being removed.
    fn to_apply(&self, mut update: BackendUpdate) -> Update {
        let mut pending = Vec::new();
        if let (Some(_), Some(r)) = (&self.on_demand, &self.routes) {
            let named = referenced(r);
            let (keep, gone): (Vec<String>, Vec<String>) = update
                .removed
                .into_iter()
                .partition(|n| named.contains(n.as_str()));
            update.removed = gone;
            update
                .backends
                .extend(keep.iter().map(|n| Backend::named(n.clone())));
            pending = keep;
        }
        Update::Backends { update, pending }
    }
}

/// What each Service of `services` needs (see [`crate::mesh::demand`]).
fn needs_of(
    services: &crate::route::services::ServiceTable,
) -> impl Fn(&str) -> Option<Arc<[Arc<str>]>> + '_ {
    |name| services.get(name).map(|s| s.needs.clone())
}

/// Sends the proxy's subscription changes (see [`crate::mesh::demand`]) to the operator at
/// `uri` on the stream's own HTTP/2 connection, in order, for as long as the stream lasts.
async fn ask_operator(demand: Arc<Demand>, mut send: SendRequest<Full<Bytes>>, uri: String) {
    let mut asks = demand.asks_rx.lock().await;
    // Declared after the lock, so dropped before it: the next stream's task finds the demand
    // disconnected when it takes over.
    struct Disconnect<'a>(&'a Demand);
    impl Drop for Disconnect<'_> {
        fn drop(&mut self) {
            self.0.connected(false);
        }
    }
    demand.connected(true);
    let _disconnect = Disconnect(&demand);
    while let Some(ask) = asks.recv().await {
        let (body, answer) = match ask {
            Ask::Subscribe(subscribe) => (
                Subscription {
                    subscribe,
                    ..Default::default()
                },
                None,
            ),
            Ask::Unsubscribe(unsubscribe) => (
                Subscription {
                    unsubscribe,
                    ..Default::default()
                },
                None,
            ),
            Ask::Resolve(addr, answer) => (
                Subscription {
                    addresses: vec![addr.to_string()],
                    ..Default::default()
                },
                Some(answer),
            ),
        };
        let Ok(req) = http::Request::post(&uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(
                serde_json::to_vec(&body).unwrap_or_default(),
            )))
        else {
            return;
        };
        let result = async {
            let resp = send.send_request(req).await?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, bytes))
        };
        match result.await {
            Ok((status, bytes)) if status.is_success() => {
                if let Some(answer) = answer {
                    // 204 from an operator that knows no addresses: none found.
                    let found = serde_json::from_slice::<Subscribed>(&bytes)
                        .map(|s| s.found)
                        .unwrap_or_default();
                    let _ = answer.send(found);
                }
            }
            Ok((status, bytes)) => tracing::warn!(
                status = status.as_u16(),
                body = %String::from_utf8_lossy(&bytes).trim(),
                "the operator refused a subscription"
            ),
            Err(e) => tracing::warn!(error = %e, "sending a subscription failed"),
        }
    }
}

/// Whether `routes` names a backend that `backends` lacks.
fn needs_more_backends(routes: &RouteTable, backends: &BackendSet) -> bool {
    !missing_backends(routes, backends).is_empty()
}

/// The backends `routes` names that `backends` lacks, sorted, each once.
fn missing_backends<'a>(routes: &'a RouteTable, backends: &BackendSet) -> Vec<&'a str> {
    let have: HashSet<&str> = backends.backends.iter().map(|b| b.name.as_str()).collect();
    let mut missing: Vec<&str> = referenced(routes)
        .into_iter()
        .filter(|n| !have.contains(n))
        .collect();
    missing.sort_unstable();
    missing
}

/// Every backend `routes` names (rules, mirrors, aggregates, listeners, services).
fn referenced(routes: &RouteTable) -> HashSet<&str> {
    portico_proxy_api::backend_refs(&routes.listeners, &routes.routes, &routes.services).collect()
}

/// Exponential backoff with full jitter.
struct Backoff {
    attempt: u32,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    fn next(&mut self) -> Duration {
        let cap = Self::BASE
            .saturating_mul(1 << self.attempt.min(16))
            .min(Self::MAX);
        self.attempt += 1;
        cap.mul_f64(rand::random::<f64>())
    }
}

/// The config to apply: what the operator sent plus the proxy's own listeners.
fn with_extras(mut config: ProxyConfig, cp: &ControlPlane) -> ProxyConfig {
    config.listeners.extend(cp.extra_listeners.iter().cloned());
    config
}

/// Connects (retrying with backoff) until a full config arrives; returns it and the session.
/// An identity announcement that came before it is kept in the session for [`follow`].
pub async fn first_config(cp: &ControlPlane) -> (ProxyConfig, Session) {
    let mut backoff = Backoff { attempt: 0 };
    loop {
        match Session::open(cp).await {
            Ok(mut session) => loop {
                match session.next().await {
                    Ok(Update::Config(config)) => return (with_extras(config, cp), session),
                    // Only after a whole config: not before the first.
                    Ok(Update::Identity(_) | Update::Backends { .. }) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "config stream broke before the first config");
                        break;
                    }
                }
            },
            Err(e) => tracing::warn!(error = %e, "cannot reach the control plane"),
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// Applies every config from `session`, and from new sessions after it breaks, forever. While
/// the operator is away the proxy serves its last good config.
pub async fn follow(proxy: Proxy, cp: ControlPlane, mut session: Session) {
    let mut backoff = Backoff { attempt: 0 };
    let announce = |a: &IdentityAnnouncement| {
        if let Some(store) = proxy.identity() {
            store.announce(&a.issuer_epoch);
        }
    };
    if let Some(a) = &session.identity {
        announce(a);
    }
    // The first config was applied by `Proxy::start`.
    if let Some(d) = session.demand() {
        d.applied_whole(session.sent_backends(), needs_of(&proxy.services()));
    }
    // Whether the proxy runs exactly what this stream delivered: only then does a backend
    // update apply to it alone; otherwise the stream's whole config is applied again.
    let mut in_step = true;
    let mut sweep = tokio::time::interval(Duration::from_secs(60));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        loop {
            let next = tokio::select! {
                next = session.next() => next,
                _ = sweep.tick() => {
                    if let Some(d) = &cp.demand {
                        d.sweep(std::time::Instant::now());
                    }
                    continue;
                }
            };
            let next = match next {
                Ok(Update::Backends { .. }) if !in_step => session
                    .config()
                    .map(Update::Config)
                    .ok_or(ControlError::OutOfOrder(
                        "a backend update without a whole config",
                    )),
                other => other,
            };
            match next {
                Ok(Update::Identity(a)) => announce(&a),
                Ok(Update::Backends { update, pending }) => {
                    let generation = update.generation;
                    let changed = update.backends.len() + update.removed.len();
                    let arrived: Vec<String> = update
                        .backends
                        .iter()
                        .map(|b| b.name.clone())
                        .filter(|n| !pending.contains(n))
                        .collect();
                    match proxy.apply_backends(update).await {
                        Ok(()) => {
                            if let Some(d) = session.demand() {
                                d.applied_update(
                                    arrived.iter().map(String::as_str),
                                    pending.iter().map(String::as_str),
                                );
                            }
                            tracing::debug!(generation, changed, "backend update applied")
                        }
                        Err(e) => {
                            in_step = false;
                            tracing::error!(
                                generation,
                                error = %e,
                                "backend update refused; the previous backends keep serving"
                            );
                        }
                    }
                }
                Ok(Update::Config(config)) => {
                    backoff.attempt = 0;
                    let config = with_extras(config, &cp);
                    let generation = config.generation;
                    match proxy.apply(config).await {
                        Ok(()) => {
                            in_step = true;
                            if let Some(d) = session.demand() {
                                d.applied_whole(
                                    session.sent_backends(),
                                    needs_of(&proxy.services()),
                                );
                            }
                            tracing::info!(generation, "config from the control plane applied")
                        }
                        Err(e) => {
                            in_step = false;
                            tracing::error!(
                                generation,
                                error = %e,
                                "config from the control plane refused; the previous config keeps serving"
                            )
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "config stream lost; serving the last good config");
                    // Nothing is asked of a stream that is gone; connections stop waiting.
                    session.stop_asking();
                    break;
                }
            }
        }
        loop {
            tokio::time::sleep(backoff.next()).await;
            match Session::open(&cp).await {
                Ok(s) => {
                    tracing::info!("reconnected to the control plane");
                    session = s;
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "cannot reach the control plane"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_table_naming_a_backend_not_sent_yet_waits_for_it() {
        let routes: RouteTable = serde_yaml::from_str(
            r#"
routes:
  - name: r
    rules:
      - backends: [{ backend: a }]
        filters: [{ type: RequestMirror, backend: shadow }]
"#,
        )
        .unwrap();
        let set = |names: &[&str]| BackendSet {
            backends: names
                .iter()
                .map(|n| serde_yaml::from_str(&format!("{{ name: {n} }}")).unwrap())
                .collect(),
            ..BackendSet::default()
        };
        assert!(
            needs_more_backends(&routes, &set(&["a"])),
            "the mirror's is missing"
        );
        assert!(needs_more_backends(&routes, &set(&[])));
        assert!(!needs_more_backends(&routes, &set(&["a", "shadow", "old"])));
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff { attempt: 0 };
        for n in 0..30 {
            let d = b.next();
            let cap = Backoff::BASE
                .saturating_mul(1 << n.min(16))
                .min(Backoff::MAX);
            assert!(d <= cap, "attempt {n}: {d:?} > {cap:?}");
        }
        let waits: Vec<Duration> = (0..20).map(|_| b.next()).collect();
        assert!(waits.iter().any(|w| *w != waits[0]), "jittered");
    }
}

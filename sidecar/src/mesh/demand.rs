//! Backends on demand: a sidecar's stream carries the mesh's route table (every Service's
//! virtual addresses, so any of them is recognised) but the backends (endpoints) only of the
//! Services its application uses.
//!
//! ```text
//!  app connects to a Service's address ─► its backends here? ── yes ─► served at once
//!                                         └─ no ─► POST /v1/streams/{id}/backends {"subscribe":[…]}
//!                                                  wait (≤ 5 s) until the stream brought them
//!                                                  and they are applied ─► served
//!  app connects to a pod's address ─────► asked before (≤ 10 s ago)? ─► as found then
//!                                         └─ no ─► POST {"addresses":["10.1.2.3:8080"]} ─► the
//!                                                  backends with a meshed endpoint there are
//!                                                  subscribed; their identity dials it over mTLS
//!  every minute: Services idle for 5 minutes (no open connection) are unsubscribed
//! ```
//!
//! So the first connection to a Service pays one round trip to the operator plus its next
//! message (tens of milliseconds) and no request fails for it: the connection is held, not
//! refused. Until the backends come, the proxy's config has an empty placeholder for each
//! backend the route table names, so the table stays valid; a placeholder is never served while
//! its backends are on their way, unless the wait times out (the operator is away), when the
//! connection gets what an empty Service gets. A Service's needs are its own backend and every
//! backend its attached routes use (splits, mirrors, aggregates), re-read whenever the routes
//! change, so a route that starts sending to a new backend subscribes to it.
//!
//! The subscriptions are the proxy's: a reconnect (to this or another operator replica) sends
//! them in the `portico-subscribe` header, and the operator starts from there.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

/// How long a connection waits for the backends it needs before it goes on without them.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a Service (or a directly dialled pod) is kept subscribed after its last use.
pub const IDLE: Duration = Duration::from_secs(300);
/// How long "no meshed pod there" is remembered for an address dialled directly.
pub const UNMESHED_FOR: Duration = Duration::from_secs(10);
/// How long a connection waits for the operator to look an address up.
const RESOLVE_WAIT: Duration = Duration::from_secs(2);

/// What the proxy asks the operator, in order (read by the task that holds the stream).
#[derive(Debug)]
pub enum Ask {
    /// Backend names to receive from now on.
    Subscribe(Vec<String>),
    /// Backend names no longer used.
    Unsubscribe(Vec<String>),
    /// An address dialled directly: the names of the backends found for it.
    Resolve(SocketAddr, oneshot::Sender<Vec<String>>),
}

/// The sidecar's subscriptions: which backends it has, which it waits for, and what uses them.
#[derive(Debug)]
pub struct Demand {
    state: Mutex<State>,
    /// Bumped each time backends were applied (or stopped being).
    arrived: watch::Sender<u64>,
    asks: mpsc::UnboundedSender<Ask>,
    /// The receiving end, held by the task that talks to the operator on the current stream.
    pub(crate) asks_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Ask>>,
}

#[derive(Debug, Default)]
struct State {
    /// An on-demand stream is open: asks reach the operator.
    connected: bool,
    /// Backends applied with their real endpoints (not placeholders).
    have: HashSet<Arc<str>>,
    /// Backends subscribed that have not arrived yet.
    asked: HashSet<Arc<str>>,
    /// Services in use, by name.
    services: HashMap<Arc<str>, Use>,
    /// Pods dialled directly, by address.
    addresses: HashMap<SocketAddr, Resolved>,
}

#[derive(Debug)]
struct Use {
    /// Connections open to the Service.
    open: usize,
    last: Instant,
    /// The backends it needs under the routes in force.
    needs: Arc<[Arc<str>]>,
}

#[derive(Debug)]
struct Resolved {
    /// The backends with a meshed endpoint at the address; empty: none.
    names: Vec<Arc<str>>,
    /// When the operator answered.
    at: Instant,
    last: Instant,
}

impl Default for Demand {
    fn default() -> Self {
        let (asks, rx) = mpsc::unbounded_channel();
        Self {
            state: Mutex::default(),
            arrived: watch::channel(0).0,
            asks,
            asks_rx: tokio::sync::Mutex::new(rx),
        }
    }
}

/// An address lookup: answered before, or asked of the operator now.
enum Lookup {
    Known(Vec<Arc<str>>),
    Asked(oneshot::Receiver<Vec<String>>),
}

/// A Service in use by one connection: dropping it ends the use.
#[derive(Debug)]
pub struct InUse {
    demand: Arc<Demand>,
    service: Arc<str>,
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut state = self.demand.lock();
        if let Some(u) = state.services.get_mut(&self.service) {
            u.open = u.open.saturating_sub(1);
            u.last = Instant::now();
        }
    }
}

impl Demand {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks `service` in use for as long as the returned guard lives and subscribes to the
    /// backends it `needs` (under the routes in force) that are not here; whether any is
    /// missing (then [`Demand::wait_for`] them, as a connection does).
    pub fn enter(self: &Arc<Self>, service: &Arc<str>, needs: &Arc<[Arc<str>]>) -> (InUse, bool) {
        let guard = InUse {
            demand: self.clone(),
            service: service.clone(),
        };
        let mut state = self.lock();
        let now = Instant::now();
        let u = state
            .services
            .entry(service.clone())
            .or_insert_with(|| Use {
                open: 0,
                last: now,
                needs: needs.clone(),
            });
        u.open += 1;
        u.last = now;
        u.needs = needs.clone();
        let missing = state.ask_for(needs, &self.asks);
        (guard, missing)
    }

    /// For an address dialled directly that no backend the proxy has names: asks the operator
    /// which backends have a meshed endpoint there (remembering "none" for [`UNMESHED_FOR`]),
    /// and waits until those have arrived. Returns whether any were found.
    pub async fn resolve(&self, addr: SocketAddr) -> bool {
        let asked = {
            let mut state = self.lock();
            let now = Instant::now();
            let connected = state.connected;
            match state.addresses.get_mut(&addr) {
                Some(r) if !r.names.is_empty() || now.duration_since(r.at) < UNMESHED_FOR => {
                    r.last = now;
                    let names = r.names.clone();
                    state.ask_for(&names, &self.asks);
                    Lookup::Known(names)
                }
                _ if !connected => return false,
                _ => {
                    let (tx, rx) = oneshot::channel();
                    if self.asks.send(Ask::Resolve(addr, tx)).is_err() {
                        return false;
                    }
                    Lookup::Asked(rx)
                }
            }
        };
        let names = match asked {
            Lookup::Known(names) => names,
            Lookup::Asked(rx) => {
                let Ok(Ok(found)) = tokio::time::timeout(RESOLVE_WAIT, rx).await else {
                    return false;
                };
                let names: Vec<Arc<str>> = found.iter().map(|n| Arc::from(n.as_str())).collect();
                let mut state = self.lock();
                let now = Instant::now();
                // The operator subscribed the stream to them already.
                for n in &names {
                    if !state.have.contains(n) {
                        state.asked.insert(n.clone());
                    }
                }
                state.addresses.insert(
                    addr,
                    Resolved {
                        names: names.clone(),
                        at: now,
                        last: now,
                    },
                );
                names
            }
        };
        if names.is_empty() {
            return false;
        }
        self.wait_for(&names).await;
        true
    }

    /// Waits (at most [`WAIT`]) until every one of `names` has arrived, while a stream is open.
    pub async fn wait_for(&self, names: &[Arc<str>]) {
        let mut arrived = self.arrived.subscribe();
        let all_here = async {
            loop {
                {
                    let state = self.lock();
                    if !state.connected || names.iter().all(|n| state.have.contains(n)) {
                        return;
                    }
                }
                if arrived.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(WAIT, all_here).await.is_err() {
            tracing::warn!(
                backends = ?names,
                "backends asked for did not arrive in time; serving without them"
            );
        }
    }

    /// Every backend the proxy has or waits for: what a new stream starts subscribed to.
    pub fn subscriptions(&self) -> Vec<String> {
        let state = self.lock();
        let mut names: Vec<String> = state
            .have
            .iter()
            .chain(&state.asked)
            .map(|n| n.to_string())
            .collect();
        names.sort();
        names
    }

    /// The subscriptions as the admin server's `/subscriptions` shows them: whether an
    /// on-demand stream is open, the backends here and those asked for, the Services in use
    /// (open connections, seconds since the last) and the pods dialled directly.
    pub fn report(&self, now: Instant) -> serde_json::Value {
        let state = self.lock();
        fn sorted(set: &HashSet<Arc<str>>) -> Vec<&str> {
            let mut v: Vec<&str> = set.iter().map(|n| &**n).collect();
            v.sort_unstable();
            v
        }
        let services: serde_json::Map<String, serde_json::Value> = state
            .services
            .iter()
            .map(|(name, u)| {
                let idle = now.saturating_duration_since(u.last).as_secs();
                let needs: Vec<&str> = u.needs.iter().map(|n| &**n).collect();
                let value =
                    serde_json::json!({"open": u.open, "idleSeconds": idle, "needs": needs});
                (name.to_string(), value)
            })
            .collect();
        let addresses: serde_json::Map<String, serde_json::Value> = state
            .addresses
            .iter()
            .map(|(addr, r)| {
                let names: Vec<&str> = r.names.iter().map(|n| &**n).collect();
                (addr.to_string(), serde_json::json!(names))
            })
            .collect();
        serde_json::json!({
            "connected": state.connected,
            "backends": sorted(&state.have),
            "waitingFor": sorted(&state.asked),
            "services": services,
            "addresses": addresses,
        })
    }

    /// An on-demand stream opened (`true`) or ended (`false`). While none is open nothing is
    /// asked and nobody waits; a new stream starts with [`Demand::subscriptions`].
    pub fn connected(&self, connected: bool) {
        self.lock().connected = connected;
        self.arrived.send_modify(|n| *n += 1);
    }

    /// A whole config was applied: `real` are the backends it had with their endpoints (the
    /// others being placeholders). `needs_of` gives what each of its Services needs: the needs
    /// of those in use are read again, and what they need now is subscribed.
    pub fn applied_whole(
        &self,
        real: impl IntoIterator<Item = Arc<str>>,
        needs_of: impl Fn(&str) -> Option<Arc<[Arc<str>]>>,
    ) {
        {
            let mut state = self.lock();
            state.have = real.into_iter().collect();
            let State { have, asked, .. } = &mut *state;
            asked.retain(|n| !have.contains(n));
            let mut needed: Vec<Arc<str>> = Vec::new();
            for (name, u) in &mut state.services {
                if let Some(needs) = needs_of(name) {
                    needed.extend(needs.iter().cloned());
                    u.needs = needs;
                }
            }
            needed.sort();
            needed.dedup();
            state.ask_for(&needed, &self.asks);
        }
        self.arrived.send_modify(|n| *n += 1);
    }

    /// A backend update was applied: `real` arrived with their endpoints, `gone` are
    /// placeholders again (unsubscribed).
    pub fn applied_update<'a>(
        &self,
        real: impl IntoIterator<Item = &'a str>,
        gone: impl IntoIterator<Item = &'a str>,
    ) {
        {
            let mut state = self.lock();
            for n in real {
                state.asked.remove(n);
                state.have.insert(n.into());
            }
            for n in gone {
                state.have.remove(n);
            }
        }
        self.arrived.send_modify(|n| *n += 1);
    }

    /// Forgets Services and addresses unused since `now - IDLE` (a Service with a connection
    /// open is in use) and asks the operator to stop sending backends nothing uses any more.
    pub fn sweep(&self, now: Instant) {
        let mut state = self.lock();
        let idle = |last: Instant| now.saturating_duration_since(last) >= IDLE;
        state.services.retain(|_, u| u.open > 0 || !idle(u.last));
        state
            .addresses
            .retain(|_, r| !idle(r.last) && (!r.names.is_empty() || !idle(r.at)));
        let used: HashSet<&Arc<str>> = state
            .services
            .values()
            .flat_map(|u| u.needs.iter())
            .chain(state.addresses.values().flat_map(|r| &r.names))
            .collect();
        let unused: Vec<String> = state
            .have
            .iter()
            .chain(&state.asked)
            .filter(|n| !used.contains(n))
            .map(|n| n.to_string())
            .collect();
        if unused.is_empty() {
            return;
        }
        for n in &unused {
            state.asked.remove(n.as_str());
        }
        tracing::debug!(backends = ?unused, "unsubscribing backends no longer used");
        if state.connected {
            let _ = self.asks.send(Ask::Unsubscribe(unused));
        } else {
            // Not sent; the next stream starts without them (they leave `have` on its first
            // config).
            for n in &unused {
                state.have.remove(n.as_str());
            }
        }
    }
}

impl State {
    /// Subscribes to those of `names` neither here nor asked for; whether any of `names` is
    /// still missing (and a stream is open to bring it).
    fn ask_for(&mut self, names: &[Arc<str>], asks: &mpsc::UnboundedSender<Ask>) -> bool {
        let mut new = Vec::new();
        let mut missing = false;
        for n in names {
            if self.have.contains(n) {
                continue;
            }
            missing = true;
            if self.asked.insert(n.clone()) {
                new.push(n.to_string());
            }
        }
        if !new.is_empty() && self.connected {
            let _ = asks.send(Ask::Subscribe(new));
        }
        missing && self.connected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::services::{ServiceRoutes, ServiceTable};

    impl Demand {
        /// What a connection to `s` does: enter, and wait if anything is missing.
        async fn use_routes(self: &Arc<Self>, s: &ServiceRoutes) -> (InUse, bool) {
            let (in_use, missing) = self.enter(&s.name, &s.needs);
            if missing {
                self.wait_for(&s.needs).await;
            }
            (in_use, missing)
        }
    }

    fn needs_in(t: &ServiceTable) -> impl Fn(&str) -> Option<Arc<[Arc<str>]>> + '_ {
        |name| t.get(name).map(|s| s.needs.clone())
    }

    fn names(list: &[&str]) -> Arc<[Arc<str>]> {
        list.iter().map(|n| Arc::from(*n)).collect()
    }

    fn table() -> ServiceTable {
        let cfg: portico_proxy_api::ProxyConfig = serde_yaml::from_str(
            r#"
routes:
  - name: orders-split
    rules: [{ backends: [{ backend: "shop/orders-v2:80" }], filters: [{ type: RequestMirror, backend: "shop/shadow:80" }] }]
services:
  - { name: shop/orders, addresses: ["198.19.0.10:80"], backend: "shop/orders:80", routes: [orders-split] }
  - { name: shop/payments, addresses: ["198.19.0.11:80"], backend: "shop/payments:80" }
backends: [{ name: "shop/orders:80" }, { name: "shop/orders-v2:80" }, { name: "shop/shadow:80" }, { name: "shop/payments:80" }]
"#,
        )
        .expect("parses");
        ServiceTable::new(&cfg, &ServiceTable::default()).expect("compiles")
    }

    fn asked(rx: &mut mpsc::UnboundedReceiver<Ask>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(ask) = rx.try_recv() {
            match ask {
                Ask::Subscribe(n) => out.extend(n.into_iter().map(|n| format!("+{n}"))),
                Ask::Unsubscribe(n) => out.extend(n.into_iter().map(|n| format!("-{n}"))),
                Ask::Resolve(a, _) => out.push(format!("?{a}")),
            }
        }
        out
    }

    #[test]
    fn a_service_needs_its_backend_and_every_backend_its_routes_use() {
        let t = table();
        let orders = t.get("shop/orders").expect("orders");
        assert_eq!(
            *orders.needs,
            *names(&["shop/orders-v2:80", "shop/orders:80", "shop/shadow:80"])
        );
    }

    fn orders(t: &ServiceTable) -> Arc<ServiceRoutes> {
        t.get("shop/orders").expect("orders").clone()
    }

    const ORDERS_NEEDS: [&str; 3] = ["shop/orders-v2:80", "shop/orders:80", "shop/shadow:80"];

    #[tokio::test(start_paused = true)]
    async fn a_first_connection_subscribes_and_waits_until_the_backends_arrive() {
        let demand = Arc::new(Demand::default());
        demand.connected(true);
        let t = table();
        let first = tokio::spawn({
            let (demand, orders) = (demand.clone(), orders(&t));
            async move { demand.use_routes(&orders).await }
        });
        let mut rx = demand.asks_rx.lock().await;
        match rx.recv().await {
            Some(Ask::Subscribe(n)) => assert_eq!(n, ORDERS_NEEDS),
            other => panic!("expected a subscription, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!first.is_finished(), "held until the backends are here");
        demand.applied_update(["shop/orders:80", "shop/orders-v2:80"], []);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!first.is_finished(), "one is still missing");
        demand.applied_update(["shop/shadow:80"], []);
        let (_first, waited) = first.await.expect("joined");
        assert!(waited);
        // The next connection finds them and asks for nothing.
        let (_second, waited) = demand.use_routes(&orders(&t)).await;
        assert!(!waited);
        assert!(asked(&mut rx).is_empty());
        assert_eq!(demand.subscriptions(), ORDERS_NEEDS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_goes_on_without_backends_that_do_not_come_in_time() {
        let demand = Arc::new(Demand::default());
        demand.connected(true);
        let start = tokio::time::Instant::now();
        let (_in_use, waited) = demand.use_routes(&orders(&table())).await;
        assert!(waited);
        assert_eq!(start.elapsed(), WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_stream_nothing_waits_and_the_next_stream_starts_subscribed() {
        let demand = Arc::new(Demand::default());
        let (_in_use, waited) = demand.use_routes(&orders(&table())).await;
        assert!(!waited, "no stream to bring them: no wait");
        assert!(
            asked(&mut *demand.asks_rx.lock().await).is_empty(),
            "nothing sent"
        );
        assert_eq!(
            demand.subscriptions(),
            ORDERS_NEEDS,
            "sent on the next connect"
        );
        assert!(!demand.resolve("10.1.0.5:8080".parse().expect("addr")).await);
    }

    #[tokio::test(start_paused = true)]
    async fn unused_backends_are_dropped_after_the_idle_time_but_not_while_a_connection_is_open() {
        let demand = Arc::new(Demand::default());
        demand.connected(true);
        let t = table();
        demand.applied_whole(ORDERS_NEEDS.map(Arc::from), needs_in(&t));
        let (in_use, waited) = demand.use_routes(&orders(&t)).await;
        assert!(!waited);
        let mut rx = demand.asks_rx.lock().await;
        let later = Instant::now() + IDLE * 2;
        demand.sweep(later);
        assert!(asked(&mut rx).is_empty(), "a connection is open");
        drop(in_use);
        demand.sweep(Instant::now() + IDLE / 2);
        assert!(asked(&mut rx).is_empty(), "not idle long enough");
        demand.sweep(later);
        let mut gone = asked(&mut rx);
        gone.sort();
        assert_eq!(gone, ORDERS_NEEDS.map(|n| format!("-{n}")));
        // They stay until the stream takes them away.
        assert_eq!(demand.subscriptions(), ORDERS_NEEDS);
        demand.applied_update([], ORDERS_NEEDS);
        assert!(demand.subscriptions().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn new_routes_of_a_service_in_use_subscribe_to_what_they_send_to() {
        let demand = Arc::new(Demand::default());
        demand.connected(true);
        let payments = table().get("shop/payments").expect("payments").clone();
        demand.applied_whole([Arc::from("shop/payments:80")], needs_in(&table()));
        let (_in_use, waited) = demand.use_routes(&payments).await;
        assert!(!waited);
        let cfg: portico_proxy_api::ProxyConfig = serde_yaml::from_str(
            r#"
routes:
  - name: payments-v2
    rules: [{ backends: [{ backend: "shop/payments-v2:80" }] }]
services:
  - { name: shop/payments, addresses: ["198.19.0.11:80"], backend: "shop/payments:80", routes: [payments-v2] }
backends: [{ name: "shop/payments:80" }, { name: "shop/payments-v2:80" }]
"#,
        )
        .expect("parses");
        let routed = ServiceTable::new(&cfg, &ServiceTable::default()).expect("compiles");
        demand.applied_whole([Arc::from("shop/payments:80")], needs_in(&routed));
        assert_eq!(
            asked(&mut *demand.asks_rx.lock().await),
            ["+shop/payments-v2:80"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_dialled_directly_is_looked_up_once_and_its_backends_awaited() {
        let demand = Arc::new(Demand::default());
        demand.connected(true);
        let pod: SocketAddr = "10.1.0.5:8080".parse().expect("addr");
        let external: SocketAddr = "192.0.2.1:443".parse().expect("addr");
        let operator = tokio::spawn({
            let demand = demand.clone();
            async move {
                let mut rx = demand.asks_rx.lock().await;
                for _ in 0..2 {
                    match rx.recv().await {
                        Some(Ask::Resolve(a, answer)) if a == pod => {
                            let _ = answer.send(vec!["shop/orders:80".into()]);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            demand.applied_update(["shop/orders:80"], []);
                        }
                        Some(Ask::Resolve(_, answer)) => {
                            let _ = answer.send(Vec::new());
                        }
                        other => panic!("expected a lookup, got {other:?}"),
                    }
                }
                asked(&mut rx)
            }
        });
        assert!(demand.resolve(pod).await, "found, and arrived");
        assert!(!demand.resolve(external).await, "no meshed pod there");
        // Both answers are remembered: no more lookups.
        assert!(demand.resolve(pod).await);
        assert!(!demand.resolve(external).await);
        assert!(operator.await.expect("joined").is_empty());
        assert_eq!(demand.subscriptions(), ["shop/orders:80"]);
    }
}

//! One config stream: the full state, then each change, one JSON line per message.

use std::any::Any;
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use portico_proxy_api::{BackendUpdate, IdentityAnnouncement, InboundPolicy, RouteTable};
use tokio::sync::{Notify, mpsc, watch};

use crate::index::{Backends, Subscription};
use crate::metrics::Metrics;

/// Stream lines by the published value they encode, so that a value every sidecar receives (the
/// mesh-wide BackendSet: about 1 MB at 10,000 endpoints) is serialized once per change, not
/// once per stream. Entries hold a `Weak` to their value: the allocation (and so the address
/// used as key) cannot be reused while the entry exists, and entries whose value is gone are
/// dropped on the next insert.
#[derive(Default)]
pub(crate) struct LineCache {
    lines: Mutex<HashMap<usize, CachedLine>>,
}

/// A cached line and the value it encodes.
type CachedLine = (Weak<dyn Any + Send + Sync>, Bytes);

impl LineCache {
    /// The line for `value`, made by `make` unless another stream already made it.
    fn line<T: Send + Sync + 'static>(
        &self,
        value: &Arc<T>,
        make: impl FnOnce(&T) -> Line<'_>,
    ) -> Bytes {
        let key = Arc::as_ptr(value) as *const () as usize;
        {
            let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((weak, line)) = lines.get(&key)
                && weak.strong_count() > 0
            {
                return line.clone();
            }
        }
        // Serialized outside the lock: two streams may both make it once, never block on it.
        let line = make(value).to_bytes();
        let weak: Weak<dyn Any + Send + Sync> = Arc::downgrade(value) as Weak<_>;
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.retain(|_, (w, _)| w.strong_count() > 0);
        lines.insert(key, (weak, line.clone()));
        line
    }
}

/// `backendUpdate` lines by the pair of sets they lead from and to: the streams that had the
/// same set and now get the same next one (nearly all of them, after one change) share one
/// diff and one encoding. Entries hold `Weak`s to both sets, as in [`LineCache`].
#[derive(Default)]
pub(crate) struct UpdateCache {
    lines: Mutex<HashMap<(usize, usize), CachedUpdate>>,
}

/// A cached update line (`None`: a whole set is the better message) and the sets it joins.
type CachedUpdate = (Weak<Backends>, Weak<Backends>, Option<Bytes>);

impl UpdateCache {
    /// The `backendUpdate` line from `from` to `to`, or `None` when most backends changed and
    /// the whole set is sent instead.
    fn line(&self, from: &Arc<Backends>, to: &Arc<Backends>) -> Option<Bytes> {
        let key = (Arc::as_ptr(from) as usize, Arc::as_ptr(to) as usize);
        {
            let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((a, b, line)) = lines.get(&key)
                && a.strong_count() > 0
                && b.strong_count() > 0
            {
                return line.clone();
            }
        }
        let line = from.update_to(to).and_then(|update| {
            // An update that carries most of the set saves nothing over the set itself.
            (update.backends.len() * 2 <= to.backends.len().max(1))
                .then(|| Line::BackendUpdate(&update).to_bytes())
        });
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.retain(|_, (a, b, _)| a.strong_count() > 0 && b.strong_count() > 0);
        lines.insert(
            key,
            (Arc::downgrade(from), Arc::downgrade(to), line.clone()),
        );
        line
    }
}

/// One line of the stream, borrowing what it encodes: the same JSON as
/// [`ConfigMessage`](portico_proxy_api::ConfigMessage) without cloning the config first.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum Line<'a> {
    RouteTable(&'a RouteTable),
    BackendSet(&'a Backends),
    BackendUpdate(&'a BackendUpdate),
    InboundPolicy(&'a InboundPolicy),
    Identity(IdentityAnnouncement),
}

impl Line<'_> {
    /// The JSON line, newline included.
    fn to_bytes(&self) -> Bytes {
        // Serializing these types cannot fail: every map key is a string.
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

/// Counts an open stream in `portico_operator_config_streams` and logs its end, however the
/// stream ends (client gone, or the stream dropped because its token no longer passes).
struct StreamGuard {
    metrics: Arc<Metrics>,
    target: String,
}

impl StreamGuard {
    fn new(metrics: Arc<Metrics>, target: String) -> Self {
        metrics.config_streams.inc();
        Self { metrics, target }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        tracing::info!(target = %self.target, "proxy disconnected");
        self.metrics.config_streams.dec();
    }
}

/// The backend names an on-demand stream is subscribed to.
pub(crate) type Wanted = Arc<std::collections::BTreeSet<String>>;

/// An on-demand stream's side of its subscriptions.
pub(crate) struct OnDemandRx {
    /// The backend names it sends.
    pub(crate) wanted: watch::Receiver<Wanted>,
    /// Notified when a backend it uses changed (see [`super::interest`]): what wakes it for
    /// backends, instead of every published set.
    pub(crate) poke: Arc<Notify>,
}

/// The lines shared by every stream: whole values, and backend updates.
#[derive(Default)]
pub(crate) struct SharedLines {
    /// Whole RouteTables and BackendSets.
    pub(crate) values: LineCache,
    /// Backend updates between two BackendSets.
    pub(crate) updates: UpdateCache,
}

/// Sends the full state, then each change, until the client goes away. `inbound` is the pod's
/// inbound policy for a sidecar's own stream: always sent once on connect (empty or not), so
/// the proxy knows it has it. `issuer` is the identity issuer's epoch when the operator issues
/// identities: sent after the full state, and again when it changes. With `updates` (the proxy
/// asked for them), backends after the first set go as `backendUpdate`s of what changed.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn pump(
    mut sub: Subscription,
    mut inbound: Option<watch::Receiver<Arc<InboundPolicy>>>,
    mut issuer: Option<watch::Receiver<Arc<str>>>,
    mut demand: Option<OnDemandRx>,
    tx: mpsc::Sender<Bytes>,
    updates: bool,
    debounce: Duration,
    metrics: Arc<Metrics>,
    lines: Arc<SharedLines>,
    target: String,
) {
    let _guard = StreamGuard::new(metrics.clone(), target);
    let poke = demand.as_ref().map(|d| d.poke.clone());
    let mut sent_routes = None;
    // The last set the proxy has (whole or through updates).
    let mut sent_backends: Option<Arc<Backends>> = None;
    let mut sent_inbound = false;
    let mut inbound_changed_seen = false;
    let mut sent_epoch: Option<Arc<str>> = None;
    let count = |label: &'static str, line: &Bytes| {
        metrics
            .config_messages
            .get_or_create(&[("message", label)])
            .inc();
        metrics
            .config_bytes
            .get_or_create(&[("message", label)])
            .inc_by(line.len() as u64);
    };
    loop {
        let routes = sub.routes.borrow_and_update().clone();
        if sent_routes != Some(routes.generation) {
            sent_routes = Some(routes.generation);
            let line = lines.values.line(&routes, |r| Line::RouteTable(r));
            count("routeTable", &line);
            if tx.send(line).await.is_err() {
                break;
            }
        }
        // On demand: only the subscribed backends, and only when one of them changed. The
        // published set is not held past this (an on-demand stream may sleep long, and a set
        // kept by each sleeping stream would keep every old set alive).
        let published = sub.backends.borrow_and_update().clone();
        let (backends, changed) = match &mut demand {
            Some(d) => {
                let names = d.wanted.borrow_and_update().clone();
                let mine = Arc::new(published.only(names.iter()));
                let changed = sent_backends
                    .as_ref()
                    .is_none_or(|s| !s.same_backends(&mine));
                (mine, changed)
            }
            None => {
                let changed = sent_backends
                    .as_ref()
                    .is_none_or(|s| s.generation != published.generation);
                (published.clone(), changed)
            }
        };
        drop(published);
        if changed {
            let update = match &sent_backends {
                // A stream's own subset: its own update (small, and sent only to it).
                Some(from) if demand.is_some() => from
                    .update_to(&backends)
                    .map(|u| Line::BackendUpdate(&u).to_bytes()),
                Some(from) if updates => lines.updates.line(from, &backends),
                _ => None,
            };
            let line = match update {
                Some(line) => {
                    count("backendUpdate", &line);
                    line
                }
                None => {
                    // A stream's own subset is nobody else's: encoded for it, not cached.
                    let line = if demand.is_some() {
                        Line::BackendSet(&backends).to_bytes()
                    } else {
                        lines.values.line(&backends, |b| Line::BackendSet(b))
                    };
                    count("backendSet", &line);
                    line
                }
            };
            sent_backends = Some(backends);
            if tx.send(line).await.is_err() {
                break;
            }
        }
        if let Some(rx) = &mut inbound
            && (!sent_inbound || inbound_changed_seen || rx.has_changed().unwrap_or(false))
        {
            sent_inbound = true;
            inbound_changed_seen = false;
            let policy = rx.borrow_and_update().clone();
            let line = Line::InboundPolicy(&policy).to_bytes();
            count("inboundPolicy", &line);
            if tx.send(line).await.is_err() {
                break;
            }
        }
        if let Some(rx) = &mut issuer {
            let epoch = rx.borrow_and_update().clone();
            if sent_epoch.as_ref() != Some(&epoch) {
                let line = Line::Identity(IdentityAnnouncement {
                    issuer_epoch: epoch.to_string(),
                })
                .to_bytes();
                count("identity", &line);
                sent_epoch = Some(epoch);
                if tx.send(line).await.is_err() {
                    break;
                }
            }
        }
        let quiet = quiet_time(debounce, metrics.config_streams.get());
        tokio::select! {
            _ = tokio::time::sleep_until(next_tick(tokio::time::Instant::now(), quiet)) => {}
            _ = tx.closed() => break,
        }
        tokio::select! {
            r = sub.routes.changed() => if r.is_err() { break },
            // Compared with what was sent at the top of the loop.
            r = next_change(issuer.as_mut()) => if r.is_err() { break },
            // An on-demand stream is woken only by changes to its own backends.
            r = sub.backends.changed(), if poke.is_none() => if r.is_err() { break },
            r = next_change(demand.as_mut().map(|d| &mut d.wanted)) => if r.is_err() { break },
            () = poked(poke.as_deref()) => {}
            // `changed` marks the value seen: remember that it is still to be sent.
            r = next_change(inbound.as_mut()) => if r.is_err() { break } else { inbound_changed_seen = true },
            _ = tx.closed() => break,
        }
    }
}

/// How long a stream waits after a send before it looks for changes again: `debounce`, or
/// 50 µs per open stream when that is longer (50 ms at 1,000 streams). Every message costs the
/// operator about 10 µs per stream (framing, encryption, a wake-up); under churn the longer
/// quiet time folds more changes into each message, so the fan-out's CPU stays bounded and the
/// index is not starved by it. A lone change still goes out at once.
fn quiet_time(debounce: Duration, streams: i64) -> Duration {
    let per_stream = Duration::from_micros(50) * u32::try_from(streams.max(0)).unwrap_or(u32::MAX);
    debounce.max(per_stream)
}

/// `poke`'s next notification; never, without one.
async fn poked(poke: Option<&Notify>) {
    match poke {
        Some(p) => p.notified().await,
        None => std::future::pending().await,
    }
}

/// `rx`'s next change; never, for a stream without that channel.
async fn next_change<T>(
    rx: Option<&mut watch::Receiver<T>>,
) -> Result<(), watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

/// The end of the quiet time that starts at `now`: the next multiple of `quiet` on a clock that
/// every stream of this process shares, so streams that sent at different moments look again
/// at the same moment, find the same latest set, and share one update line (its diff and its
/// encoding) instead of each making its own from a different last set.
fn next_tick(now: tokio::time::Instant, quiet: Duration) -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    let quiet_ns = quiet.as_nanos().max(1);
    let since = now.saturating_duration_since(epoch).as_nanos();
    let ticks = since / quiet_ns + 1;
    let at = u64::try_from(ticks * quiet_ns).unwrap_or(u64::MAX);
    epoch + Duration::from_nanos(at)
}

/// A response body fed by a channel: each item is one data frame.
pub(crate) struct ChannelBody {
    pub(crate) rx: mpsc::Receiver<Bytes>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Index, Key, Object};
    use portico_proxy_api::BackendSet;
    use portico_proxy_api::ConfigMessage;
    use serde_json::json;

    fn slice(ips: &[String]) -> Object {
        let endpoints: Vec<_> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
        Object::EndpointSlice(
            serde_json::from_value(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"namespace": "shop", "name": "orders-a",
                             "labels": {"kubernetes.io/service-name": "orders"}},
                "addressType": "IPv4", "ports": [{"port": 8080}], "endpoints": endpoints
            }))
            .unwrap(),
        )
    }

    fn shop() -> Index {
        let mut index = Index::new();
        index.apply(Object::Gateway(
            serde_json::from_value(json!({
                "apiVersion": "portico.dev/v1alpha1", "kind": "Gateway",
                "metadata": {"namespace": "shop", "name": "gw"},
                "spec": {"listeners": [{"name": "web", "port": 8080, "protocol": "HTTP"}]}
            }))
            .unwrap(),
        ));
        index.apply(Object::Service(
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"namespace": "shop", "name": "orders"},
                "spec": {"ports": [{"port": 80}]}
            }))
            .unwrap(),
        ));
        index.apply(Object::Route(
            serde_json::from_value(json!({
                "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
                "metadata": {"namespace": "shop", "name": "orders"},
                "spec": {"parentRefs": [{"name": "gw"}],
                         "rules": [{"backendRefs": [{"name": "orders", "port": 80}]}]}
            }))
            .unwrap(),
        ));
        index
    }

    /// [`shop`] with cluster IPs on `orders` and a second Service `payments`: two Services in
    /// the mesh-wide config.
    fn meshed_shop() -> Index {
        let mut index = shop();
        for (name, ip) in [("orders", "198.19.0.1"), ("payments", "198.19.0.2")] {
            index.apply(Object::Service(
                serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"namespace": "shop", "name": name},
                    "spec": {"clusterIP": ip, "ports": [{"port": 80}]}
                }))
                .unwrap(),
            ));
        }
        index
    }

    async fn next(rx: &mut mpsc::Receiver<Bytes>) -> ConfigMessage {
        let line = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("a message in time")
            .expect("stream open");
        serde_json::from_slice(&line).unwrap()
    }

    fn endpoints(msg: &ConfigMessage) -> usize {
        match msg {
            ConfigMessage::BackendSet(b) => b.backends[0].endpoints.len(),
            other => panic!("expected a BackendSet, got {other:?}"),
        }
    }

    // Paused time: waiting for the debounce would move the clock by 100 ms, so "at once" is
    // checked exactly and does not depend on how busy the machine is.
    #[tokio::test(start_paused = true)]
    async fn a_lone_change_goes_out_at_once_and_a_burst_is_coalesced() {
        let mut index = shop();
        let key = Key::new("shop", "gw");
        let sub = index.subscribe(&key);
        let (tx, mut rx) = mpsc::channel(4);
        let debounce = Duration::from_millis(100);
        tokio::spawn(pump(
            sub,
            None,
            None,
            None,
            tx,
            false,
            debounce,
            Arc::new(Metrics::new()),
            Arc::default(),
            key.to_string(),
        ));
        assert!(matches!(next(&mut rx).await, ConfigMessage::RouteTable(_)));
        assert_eq!(endpoints(&next(&mut rx).await), 0);

        // After a quiet period, one change is sent without waiting for the debounce.
        tokio::time::sleep(debounce + Duration::from_millis(20)).await;
        let sent = tokio::time::Instant::now();
        index.apply(slice(&["198.18.64.1".to_owned()]));
        assert_eq!(endpoints(&next(&mut rx).await), 1);
        assert!(sent.elapsed() < debounce / 2, "took {:?}", sent.elapsed());

        // A burst of 100 changes arrives as at most two messages, the last with the final state.
        tokio::time::sleep(debounce + Duration::from_millis(20)).await;
        for n in 1..=100 {
            let ips: Vec<String> = (0..n).map(|i| format!("198.18.65.{i}")).collect();
            index.apply(slice(&ips));
        }
        let mut messages = vec![next(&mut rx).await];
        while let Ok(Some(line)) = tokio::time::timeout(3 * debounce, rx.recv()).await {
            messages.push(serde_json::from_slice(&line).unwrap());
        }
        assert!(messages.len() <= 2, "{} messages", messages.len());
        assert_eq!(endpoints(messages.last().unwrap()), 100);
    }

    #[test]
    fn quiet_times_end_together_on_one_clock() {
        let quiet = Duration::from_millis(50);
        let now = tokio::time::Instant::now();
        let a = next_tick(now, quiet);
        let b = next_tick(now + Duration::from_millis(20), quiet);
        assert!(a > now && a - now <= quiet);
        // Two streams that sent 20 ms apart look again at the same moment (or one tick apart
        // when a tick fell between them).
        assert!(a == b || b - a == quiet, "{a:?} {b:?}");
        assert_eq!(next_tick(a, quiet), a + quiet);
    }

    #[test]
    fn the_quiet_time_grows_with_the_streams_served() {
        let debounce = Duration::from_millis(20);
        assert_eq!(quiet_time(debounce, 0), debounce);
        assert_eq!(quiet_time(debounce, 100), debounce);
        assert_eq!(quiet_time(debounce, 1000), Duration::from_millis(50));
        assert_eq!(quiet_time(debounce, -1), debounce);
    }

    #[tokio::test]
    async fn after_the_first_set_a_stream_that_asked_gets_only_the_changed_backend() {
        let mut index = meshed_shop();
        let lines = Arc::new(SharedLines::default());
        let metrics = Arc::new(Metrics::new());
        let mut streams = Vec::new();
        for updates in [true, true, false] {
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(pump(
                index.subscribe_mesh(),
                None,
                None,
                None,
                tx,
                updates,
                Duration::from_millis(10),
                metrics.clone(),
                lines.clone(),
                "mesh".into(),
            ));
            streams.push(rx);
        }
        for rx in &mut streams {
            assert!(matches!(next(rx).await, ConfigMessage::RouteTable(_)));
            match next(rx).await {
                ConfigMessage::BackendSet(b) => assert_eq!(b.backends.len(), 2),
                other => panic!("expected the whole set first, got {other:?}"),
            }
        }
        index.apply(slice(&["198.18.64.1".to_owned()]));
        let mut sent = Vec::new();
        for rx in &mut streams {
            let line = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                .await
                .unwrap()
                .unwrap();
            sent.push(line);
        }
        match ConfigMessage::from_line(&sent[0]).unwrap() {
            ConfigMessage::BackendUpdate(u) => {
                assert_eq!(u.backends.len(), 1);
                assert_eq!(u.backends[0].name, "shop/orders:80");
                assert_eq!(u.backends[0].endpoints.len(), 1);
                assert!(u.removed.is_empty());
            }
            other => panic!("expected an update, got {other:?}"),
        }
        // Both streams that asked share one encoded line; the one that did not gets the set.
        assert_eq!(sent[0].as_ptr(), sent[1].as_ptr(), "one encoding for both");
        assert!(matches!(
            ConfigMessage::from_line(&sent[2]).unwrap(),
            ConfigMessage::BackendSet(b) if b.backends.len() == 2
        ));
        let text = metrics.encode();
        assert!(
            text.contains(r#"portico_operator_config_messages_total{message="backendUpdate"} 2"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_on_demand_stream_gets_only_its_subscribed_backends_and_their_changes() {
        let mut index = meshed_shop();
        let payments_slice = |ip: &str| {
            Object::EndpointSlice(
                serde_json::from_value(json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"namespace": "shop", "name": "payments-a",
                                 "labels": {"kubernetes.io/service-name": "payments"}},
                    "addressType": "IPv4", "ports": [{"port": 8080}],
                    "endpoints": [{"addresses": [ip]}]
                }))
                .unwrap(),
            )
        };
        // Woken as the config server wakes it: through the streams' interest in backends.
        let interest = Arc::new(super::super::interest::Interest::default());
        tokio::spawn(super::super::interest::follow(
            index.subscribe_mesh().backends,
            interest.clone(),
        ));
        let poke = Arc::new(Notify::new());
        let (subscribe, wanted) = watch::channel::<Wanted>(Wanted::default());
        interest.resubscribe(0, &poke, &subscribe, ["shop/orders:80".into()], &[]);
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(pump(
            index.subscribe_mesh(),
            None,
            None,
            Some(OnDemandRx {
                wanted,
                poke: poke.clone(),
            }),
            tx,
            true,
            Duration::from_millis(10),
            Arc::new(Metrics::new()),
            Arc::default(),
            "pod".into(),
        ));
        assert!(
            matches!(next(&mut rx).await, ConfigMessage::RouteTable(r) if r.services.len() == 2)
        );
        match next(&mut rx).await {
            ConfigMessage::BackendSet(b) => {
                let names: Vec<&str> = b.backends.iter().map(|b| b.name.as_str()).collect();
                assert_eq!(names, ["shop/orders:80"]);
            }
            other => panic!("expected the subscribed set, got {other:?}"),
        }
        // A change to a Service the stream did not subscribe to sends nothing.
        index.apply(payments_slice("198.18.64.9"));
        let quiet = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await;
        assert!(quiet.is_err(), "sent {quiet:?}");
        // One to a subscribed Service sends that backend.
        index.apply(slice(&["198.18.64.1".to_owned()]));
        match next(&mut rx).await {
            ConfigMessage::BackendUpdate(u) => {
                assert_eq!(u.backends.len(), 1);
                assert_eq!(u.backends[0].name, "shop/orders:80");
            }
            other => panic!("expected an update, got {other:?}"),
        }
        // Subscribing adds the backend as it is now.
        interest.resubscribe(0, &poke, &subscribe, ["shop/payments:80".into()], &[]);
        match next(&mut rx).await {
            ConfigMessage::BackendUpdate(u) => {
                assert_eq!(u.backends.len(), 1);
                assert_eq!(u.backends[0].name, "shop/payments:80");
                assert_eq!(u.backends[0].endpoints[0].address, "198.18.64.9:8080");
            }
            other => panic!("expected the new backend, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_pod_stream_sends_its_inbound_policy_even_empty_then_each_change() {
        let mut index = shop();
        let pod = |name: &str, sa: &str, ip: &str| {
            let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"namespace": "shop", "name": name},
                "spec": {"serviceAccountName": sa, "containers": [{"name": "app"}]},
                "status": {"phase": "Running", "podIP": ip}
            }))
            .unwrap();
            Object::Pod(crate::index::PodInfo::of(&pod))
        };
        index.apply(pod("orders-0", "orders", "198.18.64.1"));
        let key = Key::new("shop", "orders-0");
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(pump(
            index.subscribe_mesh(),
            Some(index.subscribe_pod(&key)),
            None,
            None,
            tx,
            false,
            Duration::from_millis(10),
            Arc::new(Metrics::new()),
            Arc::default(),
            key.to_string(),
        ));
        assert!(matches!(next(&mut rx).await, ConfigMessage::RouteTable(_)));
        assert!(matches!(next(&mut rx).await, ConfigMessage::BackendSet(_)));
        assert_eq!(
            next(&mut rx).await,
            ConfigMessage::InboundPolicy(InboundPolicy::default())
        );
        index.apply(slice(&["198.18.64.1".to_owned()]));
        index.apply(Object::ServicePolicy(
            serde_json::from_value(json!({
                "apiVersion": "portico.dev/v1alpha1", "kind": "ServicePolicy",
                "metadata": {"namespace": "shop", "name": "limit"},
                "spec": {"targetRef": {"name": "orders"},
                         "rateLimit": {"requests": 10, "unit": "Second"}}
            }))
            .unwrap(),
        ));
        loop {
            match next(&mut rx).await {
                ConfigMessage::InboundPolicy(p) => {
                    assert_eq!(p.ports.len(), 1);
                    assert_eq!(p.ports[0].port, 8080);
                    assert_eq!(p.ports[0].policy, "shop/limit");
                    break;
                }
                ConfigMessage::BackendSet(_) | ConfigMessage::RouteTable(_) => {}
                other => panic!("expected only config parts, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn the_issuer_epoch_follows_the_full_state_and_each_change() {
        let mut index = shop();
        let key = Key::new("shop", "gw");
        let (epoch, epochs) = watch::channel::<Arc<str>>(Arc::from("one"));
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(pump(
            index.subscribe(&key),
            None,
            Some(epochs),
            None,
            tx,
            false,
            Duration::from_millis(10),
            Arc::new(Metrics::new()),
            Arc::default(),
            key.to_string(),
        ));
        let announced = |e: &str| {
            ConfigMessage::Identity(IdentityAnnouncement {
                issuer_epoch: e.into(),
            })
        };
        assert!(matches!(next(&mut rx).await, ConfigMessage::RouteTable(_)));
        assert!(matches!(next(&mut rx).await, ConfigMessage::BackendSet(_)));
        assert_eq!(next(&mut rx).await, announced("one"));
        // A config change alone does not repeat the announcement.
        index.apply(slice(&["198.18.64.1".to_owned()]));
        assert_eq!(endpoints(&next(&mut rx).await), 1);
        epoch.send_replace(Arc::from("two"));
        assert_eq!(next(&mut rx).await, announced("two"));
        // The same epoch again (an unchanged reload) sends nothing.
        epoch.send_replace(Arc::from("two"));
        index.apply(slice(&[]));
        assert_eq!(endpoints(&next(&mut rx).await), 0);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_err()
        );
    }

    #[test]
    fn messages_are_one_json_line_each_and_read_back() {
        let backend: portico_proxy_api::Backend =
            serde_json::from_value(json!({"name": "a", "endpoints": [{"address": "10.0.0.1:80"}]}))
                .unwrap();
        let msg = ConfigMessage::BackendSet(BackendSet {
            generation: 3,
            backends: vec![backend.clone()],
        });
        let line = msg.to_line();
        let ours = Backends {
            generation: 3,
            backends: vec![Arc::new(backend)],
            ..Default::default()
        };
        assert_eq!(
            Line::BackendSet(&ours).to_bytes(),
            line,
            "Line encodes as ConfigMessage"
        );
        assert!(
            line.starts_with(b"{\"backendSet\":{\"generation\":3,\"backends\":[{\"name\":\"a\"")
        );
        let back: ConfigMessage = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, msg);
    }

    /// 50 Gateways, each with 20 Routes to its own Services plus one to a Service they all
    /// share (1,000 Services, about 10,000 endpoints): one change to the shared Service's
    /// endpoints reaches all 50 streams. Prints the time; fails above a generous bound.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_change_reaches_fifty_proxies_at_scale() {
        use crate::index::Kind;
        let obj = |v: serde_json::Value| -> serde_json::Value { v };
        let mut index = Index::new();
        let mut services = Vec::new();
        let mut slices = Vec::new();
        let mut routes = Vec::new();
        let mut gateways = Vec::new();
        let svc = |name: &str| {
            Object::Service(
                serde_json::from_value(obj(json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"namespace": "scale", "name": name},
                    "spec": {"ports": [{"port": 80}]}})))
                .unwrap(),
            )
        };
        let slc = |name: &str, svc: &str, ips: Vec<String>| {
            let eps: Vec<_> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
            Object::EndpointSlice(
                serde_json::from_value(json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"namespace": "scale", "name": name,
                                 "labels": {"kubernetes.io/service-name": svc}},
                    "addressType": "IPv4", "ports": [{"port": 8080}], "endpoints": eps}))
                .unwrap(),
            )
        };
        services.push(svc("shared"));
        slices.push(slc(
            "shared-a",
            "shared",
            (0..10).map(|i| format!("198.18.1.{i}")).collect(),
        ));
        for g in 0..50 {
            gateways.push(Object::Gateway(
                serde_json::from_value(json!({
                    "apiVersion": "portico.dev/v1alpha1", "kind": "Gateway",
                    "metadata": {"namespace": "scale", "name": format!("gw-{g}")},
                    "spec": {"listeners": [{"name": "web", "port": 8080, "protocol": "HTTP"}]}}))
                .unwrap(),
            ));
            let mut refs = vec![json!({"name": "shared", "port": 80})];
            for r in 0..20 {
                let name = format!("svc-{g}-{r}");
                services.push(svc(&name));
                slices.push(slc(
                    &format!("{name}-a"),
                    &name,
                    (0..10)
                        .map(|e| format!("198.18.{}.{}", 10 + g, r * 10 + e))
                        .collect(),
                ));
                refs.push(json!({"name": name, "port": 80}));
            }
            routes.push(Object::Route(
                serde_json::from_value(json!({
                    "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
                    "metadata": {"namespace": "scale", "name": format!("r-{g}")},
                    "spec": {"parentRefs": [{"name": format!("gw-{g}")}],
                             "rules": refs.iter().enumerate().map(|(i, b)| json!({
                                 "matches": [{"path": {"type": "PathPrefix", "value": format!("/{i}")}}],
                                 "backendRefs": [b]})).collect::<Vec<_>>()}}))
                .unwrap(),
            ));
        }
        index.reset(Kind::Service, None, services);
        index.reset(Kind::EndpointSlice, None, slices);
        index.reset(Kind::Gateway, None, gateways);
        index.reset(Kind::Route, None, routes);
        let metrics = Arc::new(Metrics::new());
        let lines: Arc<SharedLines> = Arc::default();
        let mut streams = Vec::new();
        for g in 0..50 {
            let key = Key::new("scale", format!("gw-{g}"));
            let sub = index.subscribe(&key);
            let (tx, mut rx) = mpsc::channel(4);
            tokio::spawn(pump(
                sub,
                None,
                None,
                None,
                tx,
                false,
                Duration::from_millis(20),
                metrics.clone(),
                lines.clone(),
                key.to_string(),
            ));
            next(&mut rx).await;
            let full = next(&mut rx).await;
            assert_eq!(endpoints(&full), 10, "the shared backend comes first");
            streams.push(rx);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        index.apply(slc(
            "shared-a",
            "shared",
            (0..11).map(|i| format!("198.18.1.{i}")).collect(),
        ));
        let applied = started.elapsed();
        for rx in &mut streams {
            assert_eq!(endpoints(&next(rx).await), 11);
        }
        let all = started.elapsed();
        eprintln!(
            "one shared EndpointSlice change, 50 proxies x 21 backends (~10,500 endpoints): \
             index {applied:?}, all 50 streams have it after {all:?}"
        );
        assert!(all < Duration::from_secs(1), "{all:?}");
    }
}

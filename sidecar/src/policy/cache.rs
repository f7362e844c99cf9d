//! The response cache: one store per proxy, shared by every rule that caches (`cache`) or keeps
//! last good answers for its fallback (`fallback.staleFor`).
//!
//! ```text
//!  GET/HEAD, no Authorization, no request no-store ─► key: rule scope + host + path?query + varyHeaders values
//!    fresh entry ─────────────────────────────► hit (Age, x-portico-cache: hit)
//!    someone already asking upstream ─────────► wait for their answer and share it (coalescing)
//!    else ─► upstream ─► storable? (status, Cache-Control, Vary, Set-Cookie, body ≤ maxBodyBytes)
//!                          └► stored: fresh for min(ttl, s-maxage | max-age), then kept staleFor more
//! ```
//!
//! The store is an LRU under a byte cap (`--cache-max-bytes`): entries are counted by body,
//! headers and key, and the least recently used go first. Entries are keyed by a [`Scope`]
//! made of the route's name, the rule's position and its cache settings, so a rule whose cache
//! or stale window changes never serves what the old settings stored (those entries are no
//! longer reachable and age out of the LRU).
//!
//! Lookups and inserts take one short `std` mutex; nothing holds it across an await.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    AGE, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, HeaderName, SET_COOKIE, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use portico_proxy_api::{Cache, Fallback};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{Body, empty, full};
use crate::observe::metrics::CacheMetrics;

/// The header that says whether an answer of a caching rule came from the cache: `hit` (a
/// stored answer, or one shared with a concurrent identical request), `miss` (asked upstream),
/// `bypass` (a request the cache may not answer: not GET/HEAD, `Authorization`, or the client's
/// `Cache-Control: no-cache`/`no-store`).
pub const CACHE_HEADER: &str = "x-portico-cache";

/// The default `--cache-max-bytes`: 64 MiB.
pub const DEFAULT_MAX_BYTES: usize = 64 << 20;

/// The largest body a rule without `cache` keeps for its fallback (`cache.maxBodyBytes`'s
/// default): 1 MiB.
pub const DEFAULT_BODY_BYTES: u64 = 1 << 20;

/// Statuses stored: those RFC 9111 §4.2.2 lets a cache store without explicit freshness, less
/// 405/414/501 (answers about the request, not the resource), and 204.
const STORABLE: [u16; 8] = [200, 203, 204, 300, 301, 308, 404, 410];

/// A rule's own part of the store: its route, its position and its cache settings, hashed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Scope(u64);

impl Scope {
    /// The scope of rule `index` of route `route` with these settings.
    pub fn new(
        route: &str,
        index: usize,
        cache: Option<&Cache>,
        fallback: Option<&Fallback>,
    ) -> Self {
        let mut h = DefaultHasher::new();
        route.hash(&mut h);
        index.hash(&mut h);
        // The contract types are not `Hash`; their JSON is the same for the same settings.
        serde_json::to_string(&cache)
            .unwrap_or_default()
            .hash(&mut h);
        fallback.map(|f| f.stale_for).hash(&mut h);
        Self(h.finish())
    }
}

/// What the store does for one request, decided from the rule and the request's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Use {
    /// The request neither reads nor writes the store.
    Bypass,
    /// The answer may be stored (and used as a stale fallback), but no stored answer is served
    /// fresh: the client asked for `no-cache`, or the rule only keeps answers for its fallback.
    StoreOnly,
    /// A fresh stored answer is served; a miss is asked upstream once and stored.
    Full,
}

/// What the store does for a request with this method and these headers, on a rule that
/// caches (`caches`) or only keeps stale answers.
pub fn request_use(method: &Method, headers: &HeaderMap, caches: bool) -> Use {
    if (method != Method::GET && method != Method::HEAD) || headers.contains_key(AUTHORIZATION) {
        return Use::Bypass;
    }
    let cc = directives(headers, CACHE_CONTROL);
    if cc.iter().any(|d| d == "no-store") {
        return Use::Bypass;
    }
    if !caches || cc.iter().any(|d| d == "no-cache" || d == "max-age=0") {
        return Use::StoreOnly;
    }
    Use::Full
}

/// A request's key within a scope: host, path and query, and the values of the vary headers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    scope: Scope,
    text: String,
}

impl Key {
    /// The key of a request for `host` and `target` (path and query) with these headers.
    pub fn new(
        scope: Scope,
        host: &str,
        target: &str,
        headers: &HeaderMap,
        vary: &[String],
    ) -> Self {
        let mut text = String::with_capacity(host.len() + target.len() + 2);
        text.push_str(&host.to_ascii_lowercase());
        text.push('\n');
        text.push_str(target);
        for name in vary {
            text.push('\n');
            // Header values cannot hold a newline, so the parts cannot run into each other.
            for v in headers.get_all(name.as_str()) {
                text.push_str(&String::from_utf8_lossy(v.as_bytes()));
                text.push(',');
            }
        }
        Self { scope, text }
    }
}

/// A stored answer.
#[derive(Debug)]
pub struct Entry {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored: Instant,
    fresh_for: Duration,
    stale_for: Duration,
    size: usize,
    /// Labels for the eviction counter.
    route: Arc<str>,
    rule: Arc<str>,
}

impl Entry {
    /// An answer stored at `now`, fresh for `fresh_for` and servable as a fallback for
    /// `stale_for` after that; `route` and `rule` label its metrics.
    pub fn new(
        status: StatusCode,
        mut headers: HeaderMap,
        body: Bytes,
        now: Instant,
        (fresh_for, stale_for): (Duration, Duration),
        (route, rule): (&Arc<str>, &Arc<str>),
    ) -> Self {
        // Served from memory: the length is known, the upstream's age is replaced by ours.
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        headers.remove(AGE);
        let size = body.len()
            + headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 32)
                .sum::<usize>()
            + 256;
        Self {
            status,
            headers,
            body,
            stored: now,
            fresh_for,
            stale_for,
            size,
            route: route.clone(),
            rule: rule.clone(),
        }
    }

    fn fresh(&self, now: Instant) -> bool {
        now < self.stored + self.fresh_for
    }

    fn usable_stale(&self, now: Instant) -> bool {
        now < self.stored + self.fresh_for + self.stale_for
    }

    /// The answer for a request at `now` (no body for HEAD), with `Age` (whole seconds since
    /// it was stored, RFC 9111 §5.1).
    pub fn response(&self, now: Instant, head: bool) -> Response<Body> {
        let mut resp = Response::new(if head {
            empty()
        } else {
            full(self.body.clone())
        });
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        let age = now.saturating_duration_since(self.stored).as_secs();
        resp.headers_mut().insert(AGE, HeaderValue::from(age));
        resp
    }
}

/// How long an answer with these headers stays fresh under a rule's `ttl`: the `ttl`, or less
/// when `Cache-Control` says so (`s-maxage` for shared caches first, else `max-age`).
pub fn freshness(headers: &HeaderMap, ttl: Duration) -> Duration {
    let cc = directives(headers, CACHE_CONTROL);
    let secs = |name: &str| {
        cc.iter().find_map(|d| {
            d.strip_prefix(name)?
                .strip_prefix('=')?
                .trim_matches('"')
                .parse()
                .ok()
        })
    };
    match secs("s-maxage").or_else(|| secs("max-age")) {
        Some(s) => ttl.min(Duration::from_secs(s)),
        None => ttl,
    }
}

/// Whether an upstream answer may be stored: a storable status ([`STORABLE`]); no
/// `Cache-Control` `no-store`, `private` or `no-cache` (each one says a shared cache must not
/// serve it as is); no `Set-Cookie` (one client's cookie); and a `Vary` naming only headers the
/// key holds (`vary`), since the answer may differ by any other.
pub fn storable(status: StatusCode, headers: &HeaderMap, vary: &[String]) -> bool {
    if !STORABLE.contains(&status.as_u16()) || headers.contains_key(SET_COOKIE) {
        return false;
    }
    let cc = directives(headers, CACHE_CONTROL);
    if cc
        .iter()
        .any(|d| d == "no-store" || d == "private" || d == "no-cache" || d.starts_with("private="))
    {
        return false;
    }
    directives(headers, VARY)
        .iter()
        .all(|v| vary.iter().any(|k| k.eq_ignore_ascii_case(v)))
}

/// The comma-separated directives of a header, lower case, trimmed.
fn directives(headers: &HeaderMap, name: HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .collect()
}

/// An answer shared with the requests that waited for it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The answer.
    pub entry: Arc<Entry>,
    /// It is a stale answer served because the backend failed.
    pub stale: bool,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// A fresh stored answer.
    Fresh(Arc<Entry>),
    /// An identical request is being asked upstream: wait for its answer
    /// ([`Waiter::answer`]).
    Wait(Waiter),
    /// This request asks upstream; identical requests wait for what it shares.
    Lead(Leader<'a>),
    /// Nothing stored and this request may not lead (a HEAD: its answer has no body to store).
    Miss,
}

/// A request waiting for an identical one's answer.
#[derive(Debug)]
pub struct Waiter(watch::Receiver<Option<Answer>>);

impl Waiter {
    /// The answer the leading request shared, or `None` when it had none to share (not
    /// storable, failed, or the request was dropped): then this request asks upstream itself.
    pub async fn answer(mut self) -> Option<Answer> {
        self.0.wait_for(Option::is_some).await.ok()?.clone()
    }
}

/// The request that asks upstream for a key; dropping it lets the waiters go on their own.
#[derive(Debug)]
pub struct Leader<'a> {
    store: &'a Store,
    key: Key,
}

impl Leader<'_> {
    /// Hands `answer` to the requests waiting for this one.
    pub fn share(&self, answer: Answer) {
        let inner = self.store.lock();
        if let Some(tx) = inner.pending.get(&self.key) {
            tx.send_replace(Some(answer));
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        // The sender goes with the entry: waiters still without an answer wake up with none.
        self.store.lock().pending.remove(&self.key);
    }
}

/// The proxy's response cache (see the module doc).
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    max_bytes: usize,
    metrics: CacheMetrics,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Key, (Arc<Entry>, u64)>,
    /// Use order: the tick of each entry's last use → its key; the first is the least recent.
    order: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
    /// Requests being asked upstream, with the channel their waiters listen on.
    pending: HashMap<Key, watch::Sender<Option<Answer>>>,
}

impl Inner {
    fn touch(&mut self, key: &Key) {
        self.tick += 1;
        let tick = self.tick;
        if let Some((_, t)) = self.entries.get_mut(key) {
            self.order.remove(t);
            *t = tick;
            self.order.insert(tick, key.clone());
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Arc<Entry>> {
        let (entry, tick) = self.entries.remove(key)?;
        self.order.remove(&tick);
        self.bytes -= entry.size;
        Some(entry)
    }
}

impl Store {
    /// An empty store holding at most `max_bytes` of answers, counting in `metrics`.
    pub fn new(max_bytes: usize, metrics: CacheMetrics) -> Self {
        Self {
            inner: Mutex::default(),
            max_bytes,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent maps (no await, no partial update
        // that matters): keep serving.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The fresh answer for `key` at `now`, else what to do: wait for an identical request,
    /// or lead (when `may_lead`).
    pub fn lookup(&self, key: &Key, now: Instant, may_lead: bool) -> Lookup<'_> {
        let mut inner = self.lock();
        if let Some((entry, _)) = inner.entries.get(key) {
            if entry.fresh(now) {
                let entry = entry.clone();
                inner.touch(key);
                return Lookup::Fresh(entry);
            }
            if !entry.usable_stale(now) {
                inner.remove(key);
            }
        }
        if let Some(tx) = inner.pending.get(key) {
            return Lookup::Wait(Waiter(tx.subscribe()));
        }
        if !may_lead {
            return Lookup::Miss;
        }
        inner.pending.insert(key.clone(), watch::channel(None).0);
        Lookup::Lead(Leader {
            store: self,
            key: key.clone(),
        })
    }

    /// The answer for `key` if it may still be served as a fallback at `now` (fresh, or stale
    /// within its rule's `staleFor`).
    pub fn stale(&self, key: &Key, now: Instant) -> Option<Arc<Entry>> {
        let mut inner = self.lock();
        let entry = inner.entries.get(key)?.0.clone();
        if entry.usable_stale(now) {
            inner.touch(key);
            Some(entry)
        } else {
            inner.remove(key);
            None
        }
    }

    /// Stores `entry` under `key`, evicting the least recently used entries over the cap. An
    /// entry larger than the whole cap is not stored.
    pub fn insert(&self, key: Key, entry: Arc<Entry>) {
        if entry.size > self.max_bytes {
            return;
        }
        self.metrics.store(&entry.route, &entry.rule);
        let mut inner = self.lock();
        inner.remove(&key);
        inner.tick += 1;
        let tick = inner.tick;
        inner.bytes += entry.size;
        inner.order.insert(tick, key.clone());
        inner.entries.insert(key, (entry, tick));
        while inner.bytes > self.max_bytes {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            if let Some((e, _)) = inner.entries.remove(&oldest) {
                inner.bytes -= e.size;
                self.metrics.eviction(&e.route, &e.rule);
            }
        }
        self.metrics.set_bytes(inner.bytes);
    }

    /// The bytes the stored answers take, as counted against the cap.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    fn entry(body: &'static str, now: Instant, fresh: u64, stale: u64) -> Arc<Entry> {
        let label: Arc<str> = Arc::from("r");
        Arc::new(Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(body.as_bytes()),
            now,
            (Duration::from_secs(fresh), Duration::from_secs(stale)),
            (&label, &label),
        ))
    }

    fn key(path: &str) -> Key {
        Key::new(Scope::default(), "h", path, &HeaderMap::new(), &[])
    }

    #[test]
    fn cache_control_shortens_the_ttl_and_never_lengthens_it() {
        let ttl = Duration::from_secs(60);
        assert_eq!(freshness(&HeaderMap::new(), ttl), ttl);
        let short = headers(&[("cache-control", "public, max-age=10")]);
        assert_eq!(freshness(&short, ttl), Duration::from_secs(10));
        let long = headers(&[("cache-control", "max-age=600")]);
        assert_eq!(freshness(&long, ttl), ttl);
        let shared = headers(&[("cache-control", "max-age=600, s-maxage=5")]);
        assert_eq!(
            freshness(&shared, ttl),
            Duration::from_secs(5),
            "s-maxage first"
        );
    }

    #[test]
    fn no_store_private_no_cache_cookies_and_foreign_vary_are_not_stored() {
        let ok = StatusCode::OK;
        assert!(storable(ok, &HeaderMap::new(), &[]));
        for cc in ["no-store", "private", "no-cache", "public, private"] {
            let h = headers(&[("cache-control", cc)]);
            let h = {
                let mut h = h;
                h.insert(CACHE_CONTROL, HeaderValue::from_str(cc).unwrap());
                h
            };
            assert!(!storable(ok, &h, &[]), "{cc}");
        }
        assert!(!storable(ok, &headers(&[("set-cookie", "a=1")]), &[]));
        let vary = headers(&[("vary", "Accept-Language")]);
        assert!(!storable(ok, &vary, &[]));
        assert!(storable(ok, &vary, &["accept-language".into()]));
        assert!(!storable(
            StatusCode::INTERNAL_SERVER_ERROR,
            &HeaderMap::new(),
            &[]
        ));
        assert!(!storable(
            StatusCode::PARTIAL_CONTENT,
            &HeaderMap::new(),
            &[]
        ));
        assert!(storable(StatusCode::NOT_FOUND, &HeaderMap::new(), &[]));
    }

    #[test]
    fn authorization_and_no_store_requests_bypass_and_no_cache_only_stores() {
        let get = Method::GET;
        assert_eq!(request_use(&get, &HeaderMap::new(), true), Use::Full);
        assert_eq!(
            request_use(&Method::HEAD, &HeaderMap::new(), true),
            Use::Full
        );
        assert_eq!(
            request_use(&Method::POST, &HeaderMap::new(), true),
            Use::Bypass
        );
        let auth = headers(&[("authorization", "Bearer x")]);
        assert_eq!(request_use(&get, &auth, true), Use::Bypass);
        let no_store = headers(&[("cache-control", "no-store")]);
        assert_eq!(request_use(&get, &no_store, true), Use::Bypass);
        let no_cache = headers(&[("cache-control", "no-cache")]);
        assert_eq!(request_use(&get, &no_cache, true), Use::StoreOnly);
        assert_eq!(
            request_use(&get, &HeaderMap::new(), false),
            Use::StoreOnly,
            "a fallback-only rule keeps answers but serves none fresh"
        );
    }

    #[test]
    fn the_key_holds_host_target_and_vary_values_but_not_the_method() {
        let vary = ["accept-language".to_owned()];
        let en = headers(&[("accept-language", "en")]);
        let fr = headers(&[("accept-language", "fr")]);
        let s = Scope::default();
        assert_eq!(
            Key::new(s, "H", "/a?x=1", &en, &vary),
            Key::new(s, "h", "/a?x=1", &en, &vary)
        );
        assert_ne!(
            Key::new(s, "h", "/a?x=1", &en, &vary),
            Key::new(s, "h", "/a?x=2", &en, &vary)
        );
        assert_ne!(
            Key::new(s, "h", "/a", &en, &vary),
            Key::new(s, "h", "/a", &fr, &vary)
        );
        assert_eq!(
            Key::new(s, "h", "/a", &en, &[]),
            Key::new(s, "h", "/a", &fr, &[])
        );
        let other = Scope::new("route", 0, None, None);
        assert_ne!(
            Key::new(other, "h", "/a", &en, &[]),
            Key::new(s, "h", "/a", &en, &[])
        );
    }

    #[test]
    fn a_change_of_cache_settings_changes_the_rule_s_scope() {
        let c = |secs| Cache {
            ttl: portico_proxy_api::Duration::from_secs(secs),
            max_body_bytes: 1024,
            vary_headers: Vec::new(),
        };
        assert_eq!(
            Scope::new("r", 0, Some(&c(10)), None),
            Scope::new("r", 0, Some(&c(10)), None)
        );
        assert_ne!(
            Scope::new("r", 0, Some(&c(10)), None),
            Scope::new("r", 0, Some(&c(20)), None)
        );
        assert_ne!(
            Scope::new("r", 0, Some(&c(10)), None),
            Scope::new("r", 1, Some(&c(10)), None)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_is_fresh_for_its_ttl_then_stale_for_its_window_with_its_age() {
        let store = Store::new(1 << 20, CacheMetrics::default());
        let start = Instant::now();
        store.insert(key("/a"), entry("hello", start, 10, 30));
        tokio::time::advance(Duration::from_secs(4)).await;
        let Lookup::Fresh(e) = store.lookup(&key("/a"), Instant::now(), true) else {
            panic!("fresh for 10 s");
        };
        let resp = e.response(Instant::now(), false);
        assert_eq!(resp.headers()[AGE], "4");
        assert_eq!(resp.headers()[CONTENT_LENGTH], "5");
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(
            matches!(
                store.lookup(&key("/a"), Instant::now(), true),
                Lookup::Lead(_)
            ),
            "expired: asked upstream"
        );
        let stale = store
            .stale(&key("/a"), Instant::now())
            .expect("within staleFor");
        assert_eq!(stale.response(Instant::now(), true).headers()[AGE], "11");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(
            store.stale(&key("/a"), Instant::now()).is_none(),
            "past staleFor"
        );
        assert_eq!(store.bytes(), 0, "a dead entry is dropped when found");
    }

    #[tokio::test(start_paused = true)]
    async fn identical_misses_wait_for_one_leader_and_share_its_answer() {
        let store = Store::new(1 << 20, CacheMetrics::default());
        let now = Instant::now();
        let Lookup::Lead(leader) = store.lookup(&key("/a"), now, true) else {
            panic!("the first miss leads");
        };
        let waiters: Vec<_> = (0..5)
            .map(|_| match store.lookup(&key("/a"), now, true) {
                Lookup::Wait(w) => tokio::spawn(w.answer()),
                other => panic!("later misses wait: {other:?}"),
            })
            .collect();
        leader.share(Answer {
            entry: entry("one answer", now, 10, 0),
            stale: false,
        });
        drop(leader);
        for w in waiters {
            let shared = w.await.unwrap().expect("the leader's answer");
            assert_eq!(shared.entry.body, "one answer");
        }
        // A leader with nothing to share releases its waiters to ask for themselves.
        let Lookup::Lead(leader) = store.lookup(&key("/b"), now, true) else {
            panic!("leads");
        };
        let Lookup::Wait(w) = store.lookup(&key("/b"), now, true) else {
            panic!("waits");
        };
        drop(leader);
        assert!(w.answer().await.is_none());
        assert!(matches!(store.lookup(&key("/b"), now, false), Lookup::Miss));
    }

    #[tokio::test(start_paused = true)]
    async fn the_least_recently_used_entries_go_when_the_cap_is_reached() {
        let now = Instant::now();
        let size = entry("x", now, 10, 0).size;
        let metrics = CacheMetrics::default();
        let store = Store::new(size * 3, metrics.clone());
        for p in ["/1", "/2", "/3"] {
            store.insert(key(p), entry("x", now, 10, 0));
        }
        // /1 used: /2 is now the least recently used.
        assert!(matches!(
            store.lookup(&key("/1"), now, true),
            Lookup::Fresh(_)
        ));
        store.insert(key("/4"), entry("x", now, 10, 0));
        assert!(store.stale(&key("/2"), now).is_none(), "evicted");
        for p in ["/1", "/3", "/4"] {
            assert!(store.stale(&key(p), now).is_some(), "{p} kept");
        }
        assert_eq!(store.bytes(), size * 3);
        assert_eq!(metrics.evictions(), 1);
        let big = Store::new(10, CacheMetrics::default());
        big.insert(key("/big"), entry("too big for the cap", now, 10, 0));
        assert_eq!(big.bytes(), 0, "larger than the cap: not stored");
    }
}

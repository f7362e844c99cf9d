//! A config compiled for serving. Requests load the current snapshot once (an `ArcSwap`) and
//! use it to the end, so a swap never changes the rules under a request in flight.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use portico_proxy_api::{BackendUpdate, Protocol, ProxyConfig, ValidationError};
use rustls::ServerConfig;

use crate::config::tls::{self, TlsError};
use crate::forward::backend::BackendState;
use crate::route::router::Router;

/// Why a config was not applied. The running config keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The config is invalid.
    #[error("invalid config: {0}")]
    Invalid(ValidationError),
    /// A listener's certificate or key is unusable.
    #[error("listener {listener:?}: tls: {error}")]
    Tls {
        /// Listener name.
        listener: String,
        /// What failed.
        error: TlsError,
    },
    /// A listener's address could not be bound.
    #[error("listener {listener:?}: cannot bind {address}: {error}")]
    Bind {
        /// Listener name.
        listener: String,
        /// The address.
        address: String,
        /// The OS error (shown in the message, so not also a `source()`: anyhow's "Caused by"
        /// would list it twice).
        error: std::io::Error,
    },
    /// Compiling the config failed unexpectedly (the compiling thread panicked).
    #[error("compiling the config failed: {0}")]
    Compile(String),
}

// Errors in this module show their cause in the message and do not also return it from
// `source()`: anyhow (the binary's error report) would otherwise print every cause twice.
impl From<ValidationError> for ApplyError {
    fn from(e: ValidationError) -> Self {
        Self::Invalid(e)
    }
}

/// Everything a request needs, compiled from one config.
///
/// The parts that change rarely (routes, services, TLS, inbound policy) sit behind `Arc`s, so a
/// [`BackendUpdate`] makes a new snapshot that shares them and rebuilds only the backends it
/// names ([`Snapshot::with_update`]).
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The config as given, without its backends: each is kept with its state in
    /// [`Snapshot::backends`] (see [`Snapshot::full_config`]).
    pub config: Arc<ProxyConfig>,
    /// The generation in force (the config's, or a later update's).
    pub generation: u64,
    /// Routes compiled for matching.
    pub router: Arc<Router>,
    /// Backends by name.
    pub backends: BackendMap,
    /// TLS server configs by listener name.
    pub tls: Arc<HashMap<String, Arc<ServerConfig>>>,
    /// Sidecar mode: services by virtual address, for the OUTBOUND listener.
    pub services: Arc<crate::route::services::ServiceTable>,
    /// Sidecar mode: the policies of the pod's ports, for the INBOUND listener.
    pub inbound: Arc<crate::policy::inbound::InboundPolicies>,
    /// Sidecar mode: connection pools to the application, shared by every snapshot (created
    /// on first use).
    pub app_clients: Arc<std::sync::OnceLock<crate::forward::upstream::Clients>>,
    /// The backends that listeners, routes and services name: an update may not remove them.
    referenced: Arc<HashSet<String>>,
}

impl Snapshot {
    /// Validates and compiles `config`, carrying backend state over from `old`.
    pub fn build(mut config: ProxyConfig, old: &Snapshot) -> Result<Self, ApplyError> {
        config.validate()?;
        let mut router = Router::new(&config).map_err(|e| ValidationError {
            element: "routes".into(),
            message: e.to_string(),
        })?;
        router.keep_buckets(&old.router);
        let services =
            crate::route::services::ServiceTable::new(&config, &old.services).map_err(|e| {
                ValidationError {
                    element: "services".into(),
                    message: e.to_string(),
                }
            })?;
        let mut tls = HashMap::new();
        for l in &config.listeners {
            if let (Protocol::Https, Some(t)) = (l.protocol, &l.tls) {
                let sc = tls::server_config(t).map_err(|error| ApplyError::Tls {
                    listener: l.name.clone(),
                    error,
                })?;
                tls.insert(l.name.clone(), sc);
            }
        }
        let inbound = crate::policy::inbound::InboundPolicies::new(&config.inbound, &old.inbound);
        let referenced = referenced(&config);
        let mut backends = BackendMap::default();
        for b in std::mem::take(&mut config.backends) {
            let prev = old.backends.get(b.name.as_str()).map(|s| &**s);
            backends.insert(Arc::new(BackendState::new(b, prev)));
        }
        Ok(Self {
            inbound: Arc::new(inbound),
            app_clients: old.app_clients.clone(),
            generation: config.generation,
            config: Arc::new(config),
            router: Arc::new(router),
            backends,
            tls: Arc::new(tls),
            services: Arc::new(services),
            referenced: Arc::new(referenced),
        })
    }

    /// This snapshot with `update` applied: the named backends rebuilt (carrying their
    /// endpoints' state over), removed ones gone, everything else shared. Refused, leaving this
    /// one in force, when a backend is invalid or a removed one is still named by a route,
    /// listener or service.
    pub fn with_update(&self, update: BackendUpdate) -> Result<Self, ApplyError> {
        update.validate()?;
        if let Some(name) = update.removed.iter().find(|n| self.referenced.contains(*n)) {
            return Err(ApplyError::Invalid(ValidationError {
                element: format!("backend {name:?}"),
                message: "is removed but still referenced".into(),
            }));
        }
        let mut backends = self.backends.clone();
        for name in &update.removed {
            backends.remove(name);
        }
        for b in update.backends {
            let prev = self.backends.get(b.name.as_str()).map(|s| &**s);
            backends.insert(Arc::new(BackendState::new(b, prev)));
        }
        Ok(Self {
            config: self.config.clone(),
            generation: update.generation.max(self.generation),
            router: self.router.clone(),
            backends,
            tls: self.tls.clone(),
            services: self.services.clone(),
            inbound: self.inbound.clone(),
            app_clients: self.app_clients.clone(),
            referenced: self.referenced.clone(),
        })
    }

    /// The config in force as one document: [`Snapshot::config`] with the generation in force
    /// and every backend (by name).
    pub fn full_config(&self) -> ProxyConfig {
        let mut config = (*self.config).clone();
        config.generation = self.generation;
        let mut backends: Vec<&Arc<BackendState>> = self.backends.values().collect();
        backends.sort_by(|a, b| a.name.cmp(&b.name));
        config.backends = backends.iter().map(|b| b.config.clone()).collect();
        config
    }

    /// The identity of the meshed endpoint at `addr`, if a backend has one there (an app that
    /// dials a pod's address rather than a Service's, such as a StatefulSet peer, reaches it
    /// over mTLS too).
    pub fn meshed_identity(&self, addr: std::net::SocketAddr) -> Option<&Arc<str>> {
        self.backends
            .values()
            .flat_map(|b| &b.endpoints)
            .find(|e| e.addr == addr)
            .and_then(|e| e.identity.as_ref())
    }
}

/// The names of the backends a config's listeners, routes and services send to.
fn referenced(config: &ProxyConfig) -> HashSet<String> {
    portico_proxy_api::backend_refs(&config.listeners, &config.routes, &config.services)
        .map(str::to_owned)
        .collect()
}

/// Backends by name, in shards that are shared between snapshots: a snapshot made by an update
/// copies the shard pointers and only the shards it changes, not every entry (a mesh-wide
/// config holds a backend per Service port).
#[derive(Clone, Debug, Default)]
pub struct BackendMap {
    shards: Vec<Arc<Shard>>,
}

/// One shard: FNV, not SipHash, as the names come from the config (nothing to flood) and every
/// request looks its backend up here.
type Shard = HashMap<Arc<str>, Arc<BackendState>, fnv::FnvBuildHasher>;

/// Shards of a [`BackendMap`]: about 16 entries each at 1,000 backends.
const SHARDS: usize = 64;

impl BackendMap {
    fn shard(name: &str) -> usize {
        // FNV-1a: names are short; any spread does.
        let mut h: u32 = 0x811c_9dc5;
        for b in name.bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        h as usize % SHARDS
    }

    /// The backend called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<BackendState>> {
        self.shards.get(Self::shard(name))?.get(name)
    }

    /// Every backend, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &Arc<BackendState>> {
        self.shards.iter().flat_map(|s| s.values())
    }

    /// Adds or replaces a backend (by its name).
    pub fn insert(&mut self, backend: Arc<BackendState>) {
        let shard = Self::shard(&backend.name);
        self.shard_mut(shard).insert(backend.name.clone(), backend);
    }

    /// Removes the backend called `name`.
    pub fn remove(&mut self, name: &str) {
        let shard = Self::shard(name);
        if self.shards.get(shard).is_some_and(|s| s.contains_key(name)) {
            self.shard_mut(shard).remove(name);
        }
    }

    fn shard_mut(&mut self, i: usize) -> &mut Shard {
        if self.shards.is_empty() {
            self.shards = (0..SHARDS).map(|_| Arc::default()).collect();
        }
        Arc::make_mut(&mut self.shards[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str) -> Arc<BackendState> {
        let b = serde_yaml::from_str(&format!("{{ name: {name} }}")).unwrap();
        Arc::new(BackendState::new(b, None))
    }

    #[test]
    fn a_changed_backend_map_shares_every_shard_it_did_not_touch() {
        let mut map = BackendMap::default();
        for i in 0..1000 {
            map.insert(state(&format!("ns/svc-{i}:80")));
        }
        assert_eq!(map.values().count(), 1000);
        let mut next = map.clone();
        next.insert(state("ns/svc-7:80"));
        next.remove("ns/svc-8:80");
        next.remove("not-there");
        assert!(next.get("ns/svc-8:80").is_none() && map.get("ns/svc-8:80").is_some());
        assert!(!Arc::ptr_eq(
            next.get("ns/svc-7:80").unwrap(),
            map.get("ns/svc-7:80").unwrap()
        ));
        let shared = map
            .shards
            .iter()
            .zip(&next.shards)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert!(shared >= SHARDS - 2, "{shared} of {SHARDS} shards shared");
        assert_eq!(next.values().count(), 999);
    }
}

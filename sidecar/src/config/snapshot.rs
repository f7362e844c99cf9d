//! A config compiled for serving. Requests load the current snapshot once (an `ArcSwap`) and
//! use it to the end, so a swap never changes the rules under a request in flight.

use std::collections::HashMap;
use std::sync::Arc;

use portico_proxy_api::{Protocol, ProxyConfig, ValidationError};
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
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The config as given.
    pub config: Arc<ProxyConfig>,
    /// Routes compiled for matching.
    pub router: Router,
    /// Backends by name.
    pub backends: HashMap<String, Arc<BackendState>>,
    /// TLS server configs by listener name.
    pub tls: HashMap<String, Arc<ServerConfig>>,
    /// Sidecar mode: services by virtual address, for the OUTBOUND listener.
    pub services: crate::route::services::ServiceTable,
    /// Sidecar mode: the policies of the pod's ports, for the INBOUND listener.
    pub inbound: crate::policy::inbound::InboundPolicies,
    /// Sidecar mode: connection pools to the application, shared by every snapshot (created
    /// on first use).
    pub app_clients: Arc<std::sync::OnceLock<crate::forward::upstream::Clients>>,
}

impl Snapshot {
    /// Validates and compiles `config`, carrying backend state over from `old`.
    pub fn build(config: ProxyConfig, old: &Snapshot) -> Result<Self, ApplyError> {
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
        let backends = config
            .backends
            .iter()
            .map(|b| {
                let prev = old.backends.get(&b.name).map(|s| &**s);
                (b.name.clone(), Arc::new(BackendState::new(b, prev)))
            })
            .collect();
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
        Ok(Self {
            inbound,
            app_clients: old.app_clients.clone(),
            config: Arc::new(config),
            router,
            backends,
            tls,
            services,
        })
    }
}

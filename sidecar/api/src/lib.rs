//! The operator→proxy contract: versioned serde types shared by the operator and the proxy.
//!
//! A [`ProxyConfig`] is everything one proxy needs. It is written by `portico-operator` (streamed)
//! or by a person (a YAML file for standalone use), checked as a whole with
//! [`ProxyConfig::validate`], and only then applied.
//!
//! ```text
//!  ProxyConfig ─┬─ listeners[]  where traffic comes in (HTTP | HTTPS | TCP)
//!               ├─ routes[]     hostnames → rules (matches, filters, weighted backend refs)
//!               ├─ backends[]   named endpoint sets + how to talk to them (LB, outliers, limits)
//!               ├─ services[]   sidecar mode: ClusterIP:port → routes / backend (see [`Service`])
//!               └─ inbound      sidecar mode: who may call the pod's ports (see [`InboundPolicy`])
//! ```
//!
//! Routes change rarely; endpoints change on every pod restart. The two halves therefore also
//! travel separately: [`RouteTable`] (listeners + routes) and [`BackendSet`] (backends) can be
//! sent apart and joined with [`ProxyConfig::from_parts`].

mod auth;
mod backend;
mod duration;
mod identity;
mod mesh;
mod route;
mod stream;
mod validate;

use serde::{Deserialize, Serialize};

pub use auth::*;
pub use backend::*;
pub use duration::{Duration, ParseDurationError};
pub use identity::*;
pub use mesh::*;
pub use route::*;
pub use stream::{
    BACKEND_UPDATES, ConfigMessage, FEATURES_HEADER, ON_DEMAND, STREAM_HEADER, SUBSCRIBE_HEADER,
    Subscribed, Subscription,
};
pub use validate::ValidationError;

/// The contract version this crate reads and writes. A config with another `apiVersion` is
/// refused, so an old proxy never half-understands a newer operator.
pub const API_VERSION: &str = "portico.dev/proxy/v1";

fn api_version() -> String {
    API_VERSION.to_owned()
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn hundred() -> u32 {
    100
}

fn is_hundred(v: &u32) -> bool {
    *v == 100
}

fn one() -> u32 {
    1
}

/// The whole configuration of one proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// Must be [`API_VERSION`].
    #[serde(default = "api_version")]
    pub api_version: String,
    /// A number that grows with every change; reported as `portico_config_version`.
    #[serde(default)]
    pub generation: u64,
    /// Where traffic comes in.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Routing rules for HTTP and HTTPS listeners.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Named sets of endpoints that routes and TCP listeners send traffic to.
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// Sidecar mode: services the OUTBOUND listener recognises by their virtual addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// Sidecar mode: how the INBOUND and OUTBOUND listeners treat connections.
    #[serde(default, skip_serializing_if = "is_default")]
    pub interception: Interception,
    /// Sidecar mode: who may call this pod's ports, and how often.
    #[serde(default, skip_serializing_if = "is_default")]
    pub inbound: InboundPolicy,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            api_version: api_version(),
            generation: 0,
            listeners: Vec::new(),
            routes: Vec::new(),
            backends: Vec::new(),
            services: Vec::new(),
            interception: Interception::default(),
            inbound: InboundPolicy::default(),
        }
    }
}

/// The low-churn half of a config: listeners and routes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTable {
    /// See [`ProxyConfig::generation`].
    #[serde(default)]
    pub generation: u64,
    /// See [`ProxyConfig::listeners`].
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// See [`ProxyConfig::routes`].
    #[serde(default)]
    pub routes: Vec<Route>,
    /// See [`ProxyConfig::services`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// See [`ProxyConfig::interception`].
    #[serde(default, skip_serializing_if = "is_default")]
    pub interception: Interception,
}

/// The high-churn half of a config: backends and their endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendSet {
    /// See [`ProxyConfig::generation`].
    #[serde(default)]
    pub generation: u64,
    /// See [`ProxyConfig::backends`].
    #[serde(default)]
    pub backends: Vec<Backend>,
}

/// Backends that changed since the previous message of a stream: each backend in `backends`
/// replaces the one of the same name (or is new), each name in `removed` is gone, every other
/// backend stays as it was. A stream sends one only to a proxy that asked for them (see
/// [`stream`](crate::FEATURES_HEADER)), and only after a whole [`BackendSet`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendUpdate {
    /// See [`ProxyConfig::generation`].
    #[serde(default)]
    pub generation: u64,
    /// Backends added or replaced whole (all their endpoints and settings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Backend>,
    /// Names of backends removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

impl BackendSet {
    /// The set with `update` applied: replaced backends keep their place, new ones go last.
    pub fn apply(&mut self, update: &BackendUpdate) {
        self.generation = update.generation;
        self.backends.retain(|b| !update.removed.contains(&b.name));
        for b in &update.backends {
            match self.backends.iter_mut().find(|old| old.name == b.name) {
                Some(old) => *old = b.clone(),
                None => self.backends.push(b.clone()),
            }
        }
    }

    /// What turns `self` into `next`: the backends that differ or are new, and the names that
    /// are gone. `None` when nothing changed.
    pub fn update_to(&self, next: &BackendSet) -> Option<BackendUpdate> {
        let before: std::collections::HashMap<&str, &Backend> =
            self.backends.iter().map(|b| (b.name.as_str(), b)).collect();
        let backends: Vec<Backend> = next
            .backends
            .iter()
            .filter(|b| before.get(b.name.as_str()) != Some(b))
            .cloned()
            .collect();
        let after: std::collections::HashSet<&str> =
            next.backends.iter().map(|b| b.name.as_str()).collect();
        let removed: Vec<String> = self
            .backends
            .iter()
            .filter(|b| !after.contains(b.name.as_str()))
            .map(|b| b.name.clone())
            .collect();
        (!backends.is_empty() || !removed.is_empty()).then_some(BackendUpdate {
            generation: next.generation,
            backends,
            removed,
        })
    }
}

/// The backend names that `listeners`, `routes` and `services` send traffic to (a rule's
/// backends, mirrors and aggregated backends; a TCP listener's; a service's), repeats included.
pub fn backend_refs<'a>(
    listeners: &'a [Listener],
    routes: &'a [Route],
    services: &'a [Service],
) -> impl Iterator<Item = &'a str> {
    let rules = routes.iter().flat_map(|r| &r.rules).flat_map(|rule| {
        let mirrors = rule.filters.iter().filter_map(|f| match f {
            Filter::RequestMirror(m) => Some(m.backend.as_str()),
            _ => None,
        });
        let aggregated = rule
            .aggregate
            .iter()
            .flat_map(|a| a.backends.iter().map(|b| b.backend.as_str()));
        rule.backends
            .iter()
            .map(|b| b.backend.as_str())
            .chain(mirrors)
            .chain(aggregated)
    });
    let listeners = listeners.iter().flat_map(|l| {
        l.backend
            .as_deref()
            .into_iter()
            .chain(l.backends.iter().map(|b| b.backend.as_str()))
    });
    rules
        .chain(listeners)
        .chain(services.iter().map(|s| s.backend.as_str()))
}

impl ProxyConfig {
    /// Joins the two halves (with no inbound policy: set [`Self::inbound`] apart). The
    /// generation is the larger of the two, so a change to either half moves the reported
    /// config version forward.
    pub fn from_parts(routes: RouteTable, backends: BackendSet) -> Self {
        Self {
            api_version: api_version(),
            generation: routes.generation.max(backends.generation),
            listeners: routes.listeners,
            routes: routes.routes,
            backends: backends.backends,
            services: routes.services,
            interception: routes.interception,
            inbound: InboundPolicy::default(),
        }
    }

    /// Splits into the halves that travel separately (dropping [`Self::inbound`], which
    /// travels on its own).
    pub fn into_parts(self) -> (RouteTable, BackendSet) {
        (
            RouteTable {
                generation: self.generation,
                listeners: self.listeners,
                routes: self.routes,
                services: self.services,
                interception: self.interception,
            },
            BackendSet {
                generation: self.generation,
                backends: self.backends,
            },
        )
    }

    /// The backend called `name`, if any.
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }
}

/// A socket the proxy accepts connections on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// Unique among listeners; used in logs, metrics and [`Route::listeners`].
    pub name: String,
    /// `IP:PORT` to bind. Port 0 lets the OS choose (useful in tests).
    pub address: String,
    /// What is spoken on the socket.
    pub protocol: Protocol,
    /// Certificate and key; required for HTTPS, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// For TCP listeners: the backend every connection is forwarded to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// For TCP listeners, instead of `backend`: backends chosen per connection by weight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendRef>,
}

/// The protocol of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// Cleartext HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on the same port.
    Http,
    /// HTTP/1.1 and HTTP/2 over TLS, chosen by ALPN.
    Https,
    /// Opaque bytes, forwarded unchanged to [`Listener::backend`].
    Tcp,
    /// Sidecar mode: connections an application opened, redirected here by iptables; they go
    /// where [`ProxyConfig::services`] says for their original destination, or there untouched.
    Outbound,
    /// Sidecar mode: connections to the pod, redirected here by iptables; they are forwarded
    /// to the application on `127.0.0.1` at their original destination port.
    Inbound,
}

/// A certificate chain and private key for a TLS listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tls {
    /// The certificate chain, leaf first (PEM).
    pub cert: Pem,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Pem,
    /// The lowest TLS version accepted (default 1.2).
    #[serde(default, skip_serializing_if = "is_default")]
    pub min_version: TlsVersion,
    /// More certificates, chosen by the client's SNI: the first certificate (this one, then
    /// these in order) valid for the name is served; without a match, this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<CertificateKey>,
}

/// A certificate chain and its key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateKey {
    /// The certificate chain, leaf first (PEM).
    pub cert: Pem,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Pem,
}

/// A TLS protocol version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 (and 1.3).
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    V1_3,
}

/// PEM text, either in a file (re-read on every config apply, so renewed certs are picked up) or
/// inline (what the operator sends, so the proxy needs no access to Secrets).
/// Written `{ file: /etc/tls/tls.crt }` or `{ inline: "-----BEGIN ..." }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Pem {
    /// Path of a PEM file.
    File {
        /// The path.
        file: String,
    },
    /// The PEM text itself.
    Inline {
        /// The text.
        inline: String,
    },
}

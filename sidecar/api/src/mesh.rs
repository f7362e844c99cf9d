//! Sidecar mode: what a proxy needs to make sense of connections that iptables redirected to it.
//!
//! ```text
//!  app ──connect 198.19.0.10:80──► iptables REDIRECT ──► OUTBOUND listener
//!                                                          │ SO_ORIGINAL_DST = 198.19.0.10:80
//!                                                          ▼
//!                      services[] has 198.19.0.10:80? ── yes ─► that Service's routes (HTTP)
//!                                                      │          or its backend (opaque TCP)
//!                                                      └─ no ──► the original destination, untouched
//! ```
//!
//! A [`Service`] is the mesh's name for a Kubernetes Service: its virtual addresses (ClusterIP
//! and port), the routes attached to it, and the backend that serves it when no route matches.

use serde::{Deserialize, Serialize};

use crate::{Duration, is_default};

/// A service reachable at virtual addresses that the outbound listener recognises.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// Unique among services; the route label in metrics when no route of its own matched.
    pub name: String,
    /// `IP:PORT` pairs the application dials (ClusterIP and service port).
    pub addresses: Vec<String>,
    /// Where connections go when no route matches and for opaque traffic.
    pub backend: String,
    /// HTTP routes attached to the service, by name; empty sends everything to [`Self::backend`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// Skip protocol detection: the service speaks something other than HTTP, possibly
    /// server-first (MySQL, SMTP), so the proxy must not wait for the client's first bytes.
    #[serde(default, skip_serializing_if = "is_default")]
    pub opaque: bool,
}

/// Settings for the INBOUND and OUTBOUND listeners.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Interception {
    /// Service ports never sniffed: connections to them go to the service's backend as opaque
    /// TCP at once (server-speaks-first protocols). Inbound and passed-through connections are
    /// never sniffed anyway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<u16>,
    /// How long to wait for a client's first bytes before treating the connection as opaque
    /// TCP (default 100 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detect_timeout: Option<Duration>,
}

impl Interception {
    /// The detection timeout when none is configured: long enough for a client that writes
    /// right after connecting, short enough that a server-first protocol on an undeclared port
    /// only pays it once per connection.
    pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_millis(100);

    /// The detection timeout in force.
    pub fn detect_timeout(&self) -> Duration {
        self.detect_timeout.unwrap_or(Self::DEFAULT_DETECT_TIMEOUT)
    }
}

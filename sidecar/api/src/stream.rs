//! The config stream: what the operator sends a connected proxy, one JSON object per line.
//!
//! ```text
//!  GET /v1/gateways/{namespace}/{name}/config     a gateway proxy
//!  GET /v1/mesh/pods/{namespace}/{name}/config    a sidecar, for its own pod
//!
//!  {"routeTable":{...}}\n       full state first, then only the parts that changed
//!  {"backendSet":{...}}\n
//!  {"inboundPolicy":{...}}\n    sidecars only
//!  {"identity":{...}}\n         when the operator issues identities
//! ```
//!
//! Each message replaces the previous one of its kind; the proxy joins the latest of each into a
//! [`ProxyConfig`](crate::ProxyConfig), validates it as a whole and only then applies it.

use serde::{Deserialize, Serialize};

use crate::{BackendSet, IdentityAnnouncement, InboundPolicy, RouteTable};

/// One line of the config stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConfigMessage {
    /// Listeners, routes and services, replacing the previous ones.
    RouteTable(RouteTable),
    /// Backends and endpoints, replacing the previous ones.
    BackendSet(BackendSet),
    /// The pod's inbound policy (sidecars only), replacing the previous one.
    InboundPolicy(InboundPolicy),
    /// The operator's identity issuer (not part of the proxy's config: it says when to renew
    /// the workload certificate).
    Identity(IdentityAnnouncement),
}

impl ConfigMessage {
    /// The message as one line of the stream, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        // Serializing these types cannot fail: every map key is a string.
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }

    /// Reads one line (with or without its newline).
    pub fn from_line(line: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InboundAuthorization, InboundPort};

    #[test]
    fn a_message_round_trips_as_one_line() {
        let msg = ConfigMessage::InboundPolicy(InboundPolicy {
            ports: vec![InboundPort {
                port: 8080,
                policy: "shop/orders".into(),
                mtls: None,
                authorization: Some(InboundAuthorization {
                    identities: vec!["spiffe://cluster.local/ns/shop/sa/web".into()],
                    ..Default::default()
                }),
                rate_limit: None,
            }],
            ..Default::default()
        });
        let line = msg.to_line();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        assert!(line.starts_with(br#"{"inboundPolicy":{"ports":[{"port":8080"#));
        assert_eq!(ConfigMessage::from_line(&line).unwrap(), msg);
    }
}

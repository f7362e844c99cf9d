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
//!
//! ## Backend updates
//!
//! A proxy that sends `portico-config-features: backend-updates` with its request gets, after
//! the first whole `backendSet`, only what changed:
//!
//! ```text
//!  {"backendUpdate":{"generation":9,"backends":[{…one backend, whole…}],"removed":["ns/gone:80"]}}
//! ```
//!
//! and applies it to that backend alone. An operator that honours the header says so by
//! answering with the same header and value; one that does not (an older one) ignores it and
//! sends whole sets, which the proxy still reads. An older proxy sends no header and gets whole
//! sets. So a proxy and an operator one version apart work either way round; a whole
//! `backendSet` may still come at any time (when most backends changed at once) and replaces
//! everything, as before.

use serde::{Deserialize, Serialize};

use crate::{BackendSet, BackendUpdate, IdentityAnnouncement, InboundPolicy, RouteTable};

/// The request (and response) header that names the optional stream features a proxy reads
/// (and the operator will send), comma-separated.
pub const FEATURES_HEADER: &str = "portico-config-features";
/// The feature: `backendUpdate` messages after the first whole `backendSet`.
pub const BACKEND_UPDATES: &str = "backend-updates";
/// The feature (sidecar streams, with [`BACKEND_UPDATES`]): backends only for the names the
/// proxy subscribed to, first with [`SUBSCRIBE_HEADER`], later with
/// [`Subscription`](crate::Subscription)s posted to `/v1/streams/{id}/backends`, `id` being
/// the [`STREAM_HEADER`] of the stream's response. The route table stays mesh-wide.
pub const ON_DEMAND: &str = "on-demand";
/// Request header of an on-demand stream: the backend names it starts subscribed to,
/// comma-separated (a proxy that reconnects sends what it had).
pub const SUBSCRIBE_HEADER: &str = "portico-subscribe";
/// Response header of an on-demand stream: its id, a random 128-bit hex string that only the
/// proxy holding the stream knows and that names it in subscription requests.
pub const STREAM_HEADER: &str = "portico-stream";

/// The body of `POST /v1/streams/{id}/backends`: backend names to add to and remove from an
/// on-demand stream's subscriptions, and addresses whose backends to add. Answered `200` with
/// a [`Subscribed`]; the stream then sends what changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subscription {
    /// Backend names to receive from now on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    /// Backend names no longer needed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsubscribe: Vec<String>,
    /// `IP:port`s an application dialled directly (not a Service's address): the backends
    /// with a meshed endpoint there are subscribed too, so the proxy learns the identity to
    /// dial it with over mTLS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

/// The answer to a [`Subscription`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subscribed {
    /// The backends found for [`Subscription::addresses`] (now subscribed); empty when no
    /// meshed endpoint is at any of them.
    #[serde(default)]
    pub found: Vec<String>,
}

/// One line of the config stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConfigMessage {
    /// Listeners, routes and services, replacing the previous ones.
    RouteTable(RouteTable),
    /// Backends and endpoints, replacing the previous ones.
    BackendSet(BackendSet),
    /// Some backends changed: applied to the last set (see the module's "Backend updates").
    BackendUpdate(BackendUpdate),
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

    fn backend(name: &str, addresses: &[&str]) -> crate::Backend {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "endpoints": addresses.iter().map(|a| serde_json::json!({"address": a})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn an_update_carries_only_what_changed_and_applies_back_to_the_same_set() {
        let before = BackendSet {
            generation: 1,
            backends: vec![
                backend("a", &["10.0.0.1:80"]),
                backend("b", &["10.0.0.2:80"]),
                backend("c", &["10.0.0.3:80"]),
            ],
        };
        let after = BackendSet {
            generation: 2,
            backends: vec![
                backend("a", &["10.0.0.1:80"]),
                backend("b", &["10.0.0.2:80", "10.0.0.9:80"]),
                backend("d", &["10.0.0.4:80"]),
            ],
        };
        let update = before.update_to(&after).unwrap();
        let names: Vec<&str> = update.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["b", "d"]);
        assert_eq!(update.removed, ["c"]);
        let line = ConfigMessage::BackendUpdate(update.clone()).to_line();
        assert!(line.starts_with(br#"{"backendUpdate":{"generation":2,"backends":[{"name":"b""#));
        let mut applied = before.clone();
        applied.apply(&update);
        assert_eq!(applied, after);
        assert_eq!(after.update_to(&after), None);
    }
}

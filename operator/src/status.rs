//! The status writer (leader only): turns the index's desired [`Statuses`] into server-side-apply
//! patches of the `status` subresource, with one field manager, and records an Event when a
//! condition changes.
//!
//! A patch is sent only when the desired status differs from the one on the object;
//! `lastTransitionTime` is kept while a condition's status stays the same. Writing updates the
//! object, the watch brings it back, and the index then sees desired == current: no loop.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use portico_api::gateway::{GatewayAddress, GatewayStatus, ListenerStatus};
use portico_api::gateway_api::{
    ApiGateway, ApiGatewayAddress, ApiGatewayStatus, ApiListenerStatus, ApiRouteParentStatus,
    ApiRouteStatus, GatewayClass, GatewayClassStatus, GrpcRoute, HttpRoute, RouteGroupKind,
    SupportedFeature,
};
use portico_api::policy::ServicePolicyStatus;
use portico_api::route::{RouteParentStatus, RouteStatus};
use portico_api::{Gateway, Route, RoutePolicy, RoutePolicyStatus, ServicePolicy};
use serde::Serialize;
use tokio::sync::watch;

use crate::index::{Cond, Key, Statuses};
use crate::metrics::Metrics;

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "portico-operator";

/// The `controllerName` in Route parent statuses.
pub const CONTROLLER_NAME: &str = "portico.dev/operator";

fn condition(c: &Cond, generation: Option<i64>, current: &[Condition]) -> Condition {
    let status = if c.status { "True" } else { "False" };
    let since = current
        .iter()
        .find(|k| k.type_ == c.type_ && k.status == status)
        .map(|k| k.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: c.type_.to_owned(),
        status: status.to_owned(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        observed_generation: generation,
        last_transition_time: since,
    }
}

fn conditions(cs: &[Cond], generation: Option<i64>, current: &[Condition]) -> Vec<Condition> {
    cs.iter()
        .map(|c| condition(c, generation, current))
        .collect()
}

/// The Gateway status to write for `state`.
pub fn gateway_status(state: &crate::index::GatewayState) -> GatewayStatus {
    let current = state.current.clone().unwrap_or_default();
    GatewayStatus {
        conditions: conditions(&state.conditions, state.generation, &current.conditions),
        addresses: state
            .addresses
            .iter()
            .map(|a| GatewayAddress {
                type_: "IPAddress".to_owned(),
                value: a.clone(),
            })
            .collect(),
        listeners: state
            .listeners
            .iter()
            .map(|l| {
                let cur = current
                    .listeners
                    .iter()
                    .find(|c| c.name == l.name)
                    .map(|c| c.conditions.as_slice())
                    .unwrap_or_default();
                ListenerStatus {
                    name: l.name.clone(),
                    attached_routes: l.attached_routes,
                    conditions: conditions(&l.conditions, state.generation, cur),
                }
            })
            .collect(),
    }
}

/// The Route status to write for `state`.
pub fn route_status(state: &crate::index::RouteState) -> RouteStatus {
    let current = state.current.clone().unwrap_or_default();
    RouteStatus {
        parents: state
            .parents
            .iter()
            .map(|p| {
                let cur = current
                    .parents
                    .iter()
                    .find(|c| c.parent_ref == p.parent_ref)
                    .map(|c| c.conditions.as_slice())
                    .unwrap_or_default();
                RouteParentStatus {
                    parent_ref: p.parent_ref.clone(),
                    controller_name: CONTROLLER_NAME.to_owned(),
                    conditions: conditions(&p.conditions, state.generation, cur),
                }
            })
            .collect(),
    }
}

/// The ServicePolicy status to write for `state`.
pub fn policy_status(state: &crate::index::PolicyState) -> ServicePolicyStatus {
    let current = state.current.clone().unwrap_or_default();
    ServicePolicyStatus {
        conditions: conditions(&state.conditions, state.generation, &current.conditions),
    }
}

/// The Gateway API Gateway status to write for `state`.
pub fn api_gateway_status(state: &crate::index::ApiGatewayState) -> ApiGatewayStatus {
    let current = state.current.clone().unwrap_or_default();
    ApiGatewayStatus {
        addresses: state
            .addresses
            .iter()
            .map(|a| ApiGatewayAddress {
                type_: "IPAddress".to_owned(),
                value: a.clone(),
            })
            .collect(),
        conditions: conditions(&state.conditions, state.generation, &current.conditions),
        listeners: state
            .listeners
            .iter()
            .map(|l| {
                let cur = current
                    .listeners
                    .iter()
                    .find(|c| c.name == l.name)
                    .map(|c| c.conditions.as_slice())
                    .unwrap_or_default();
                ApiListenerStatus {
                    name: l.name.clone(),
                    supported_kinds: l
                        .supported_kinds
                        .iter()
                        .map(|k| RouteGroupKind {
                            group: Some(portico_api::grant::GATEWAY_API_GROUP.to_owned()),
                            kind: (*k).to_owned(),
                        })
                        .collect(),
                    attached_routes: l.attached_routes,
                    conditions: conditions(&l.conditions, state.generation, cur),
                }
            })
            .collect(),
    }
}

/// The HTTPRoute or GRPCRoute status to write for `state`: Portico's entries, after the entries
/// of other controllers, which are kept as they are.
pub fn api_route_status(state: &crate::index::ApiRouteState) -> ApiRouteStatus {
    let current = state.current.clone().unwrap_or_default();
    let ours = portico_api::gateway_api::CONTROLLER_NAME;
    let mut parents: Vec<ApiRouteParentStatus> = current
        .parents
        .iter()
        .filter(|p| p.controller_name != ours)
        .cloned()
        .collect();
    parents.extend(state.parents.iter().map(|(parent_ref, conds)| {
        let cur = current
            .parents
            .iter()
            .find(|c| c.controller_name == ours && c.parent_ref == *parent_ref)
            .map(|c| c.conditions.as_slice())
            .unwrap_or_default();
        ApiRouteParentStatus {
            parent_ref: parent_ref.clone(),
            controller_name: ours.to_owned(),
            conditions: conditions(conds, state.generation, cur),
        }
    }));
    ApiRouteStatus { parents }
}

/// The GatewayClass status to write for `state`, with the features Portico supports.
pub fn class_status(state: &crate::index::ClassState) -> GatewayClassStatus {
    let current = state.current.clone().unwrap_or_default();
    GatewayClassStatus {
        conditions: conditions(&state.conditions, state.generation, &current.conditions),
        supported_features: crate::index::gateway_api::SUPPORTED_FEATURES
            .iter()
            .map(|f| SupportedFeature {
                name: (*f).to_owned(),
            })
            .collect(),
    }
}

/// Records a Warning Event with `reason` and `note` on the object `(apiVersion, kind, key)`;
/// a failure to record it is only logged at debug (Events are best effort).
pub(crate) async fn warn(
    recorder: &Recorder,
    (api_version, kind, key): (&str, &str, &Key),
    reason: &str,
    note: String,
) {
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(api_version.to_owned()),
        kind: Some(kind.to_owned()),
        name: Some(key.name.clone()),
        namespace: Some(key.namespace.clone()),
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &reference).await {
        tracing::debug!(error = %e, object = %key, "cannot record an Event");
    }
}

/// Conditions that became false (or changed reason) between `old` and `new`: worth an Event.
fn newly_failing<'a>(old: &[Condition], new: &'a [Condition]) -> Vec<&'a Condition> {
    new.iter()
        .filter(|n| n.status == "False")
        .filter(|n| {
            !old.iter()
                .any(|o| o.type_ == n.type_ && o.status == n.status && o.reason == n.reason)
        })
        .collect()
}

struct Writer {
    client: kube::Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
}

impl Writer {
    async fn patch<K, S>(
        &self,
        key: &Key,
        kind: &'static str,
        status: &S,
    ) -> Result<(), kube::Error>
    where
        K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        S: Serialize,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &key.namespace);
        let body = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        api.patch_status(
            &key.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
        self.metrics
            .status_patches
            .get_or_create(&[("kind", kind)])
            .inc();
        Ok(())
    }

    async fn patch_class(
        &self,
        name: &str,
        status: &GatewayClassStatus,
    ) -> Result<(), kube::Error> {
        let api: Api<GatewayClass> = Api::all(self.client.clone());
        let body = serde_json::json!({
            "apiVersion": GatewayClass::api_version(&()),
            "kind": GatewayClass::kind(&()),
            "status": status,
        });
        api.patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
        self.metrics
            .status_patches
            .get_or_create(&[("kind", "GatewayClass")])
            .inc();
        Ok(())
    }

    /// Writes the status of the Gateway API kinds (and the RoutePolicies attached to them) that
    /// differs.
    async fn write_api(&self, statuses: &Statuses) -> bool {
        let mut ok = true;
        for (key, state) in &statuses.route_policies {
            let current = state.current.clone().unwrap_or_default();
            let desired = RoutePolicyStatus {
                conditions: conditions(&state.conditions, state.generation, &current.conditions),
            };
            if desired == current {
                continue;
            }
            let failing = newly_failing(&current.conditions, &desired.conditions);
            ok &= self
                .write::<RoutePolicy, _>(key, "RoutePolicy", &desired, failing)
                .await;
        }
        for (name, state) in &statuses.classes {
            let desired = class_status(state);
            if state.current.as_ref() == Some(&desired) {
                continue;
            }
            if let Err(e) = self.patch_class(name, &desired).await {
                ok = false;
                tracing::warn!(class = %name, error = %e, "status write failed");
            }
        }
        for (key, state) in &statuses.api_gateways {
            let desired = api_gateway_status(state);
            let current = state.current.clone().unwrap_or_default();
            if desired == current {
                continue;
            }
            let failing = newly_failing(&current.conditions, &desired.conditions);
            ok &= self
                .write::<ApiGateway, _>(key, "Gateway.gateway.networking.k8s.io", &desired, failing)
                .await;
        }
        for ((kind, key), state) in &statuses.api_routes {
            let desired = api_route_status(state);
            if state.current.as_ref() == Some(&desired)
                || (state.current.is_none() && desired.parents.is_empty())
            {
                continue;
            }
            // Route parents' conditions are not told as Events (as before the fold).
            ok &= match *kind {
                "GRPCRoute" => {
                    self.write::<GrpcRoute, _>(key, "GRPCRoute", &desired, Vec::new())
                        .await
                }
                _ => {
                    self.write::<HttpRoute, _>(key, "HTTPRoute", &desired, Vec::new())
                        .await
                }
            };
        }
        ok
    }

    /// Writes `desired` as the status of the `K` at `key` (`label` names the kind in metrics);
    /// once written, each condition in `failing` is told as a Warning Event on the object, and a
    /// failed write is logged. Whether the status was written.
    async fn write<K, S>(
        &self,
        key: &Key,
        label: &'static str,
        desired: &S,
        failing: Vec<&Condition>,
    ) -> bool
    where
        K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        S: Serialize,
    {
        match self.patch::<K, S>(key, label, desired).await {
            Ok(()) => {
                self.event(&K::api_version(&()), &K::kind(&()), key, failing)
                    .await;
                true
            }
            Err(e) => {
                tracing::warn!(kind = label, object = %key, error = %e, "status write failed");
                false
            }
        }
    }

    async fn event(&self, api_version: &str, kind: &str, key: &Key, failing: Vec<&Condition>) {
        for c in failing {
            let note = format!("{}: {}", c.type_, c.message);
            warn(&self.recorder, (api_version, kind, key), &c.reason, note).await;
        }
    }

    /// Writes every status that differs; returns whether all writes succeeded.
    async fn write_all(&self, statuses: &Statuses) -> bool {
        let mut ok = true;
        for (key, state) in &statuses.gateways {
            let desired = gateway_status(state);
            let current = state.current.clone().unwrap_or_default();
            if desired == current {
                continue;
            }
            let failing = newly_failing(&current.conditions, &desired.conditions);
            ok &= self
                .write::<Gateway, _>(key, "Gateway", &desired, failing)
                .await;
        }
        for (key, state) in &statuses.routes {
            let desired = route_status(state);
            let current = state.current.clone().unwrap_or_default();
            if desired == current {
                continue;
            }
            let old: Vec<Condition> = current
                .parents
                .into_iter()
                .flat_map(|p| p.conditions)
                .collect();
            let failing = desired
                .parents
                .iter()
                .flat_map(|p| &p.conditions)
                .filter(|n| newly_failing(&old, std::slice::from_ref(*n)).len() == 1)
                .collect();
            ok &= self
                .write::<Route, _>(key, "Route", &desired, failing)
                .await;
        }
        for (key, state) in &statuses.policies {
            let desired = policy_status(state);
            let current = state.current.clone().unwrap_or_default();
            if desired == current {
                continue;
            }
            let failing = newly_failing(&current.conditions, &desired.conditions);
            ok &= self
                .write::<ServicePolicy, _>(key, "ServicePolicy", &desired, failing)
                .await;
        }
        self.write_api(statuses).await && ok
    }
}

/// Writes statuses while `leader` is true, forever.
pub async fn run(
    client: kube::Client,
    identity: String,
    mut statuses: watch::Receiver<Arc<Statuses>>,
    mut leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let writer = Writer {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.to_owned(),
                instance: Some(identity),
            },
        ),
        client,
        metrics,
    };
    loop {
        leader.wait_for(|l| *l).await?;
        let snapshot = statuses.borrow_and_update().clone();
        let ok = writer.write_all(&snapshot).await;
        let retry = if ok {
            Duration::from_secs(300)
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            r = statuses.changed() => r?,
            r = leader.changed() => r?,
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

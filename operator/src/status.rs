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
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use portico_api::gateway::{GatewayAddress, GatewayStatus, ListenerStatus};
use portico_api::policy::ServicePolicyStatus;
use portico_api::route::{RouteParentStatus, RouteStatus};
use portico_api::{Gateway, Route, ServicePolicy};
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

    async fn event(&self, kind: &str, key: &Key, failing: Vec<&Condition>) {
        for c in failing {
            let reference = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some(format!("{}/{}", portico_api::GROUP, portico_api::VERSION)),
                kind: Some(kind.to_owned()),
                name: Some(key.name.clone()),
                namespace: Some(key.namespace.clone()),
                ..Default::default()
            };
            let event = Event {
                type_: EventType::Warning,
                reason: c.reason.clone(),
                note: Some(format!("{}: {}", c.type_, c.message)),
                action: "Reconcile".to_owned(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, object = %key, "cannot record an Event");
            }
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
            match self.patch::<Gateway, _>(key, "Gateway", &desired).await {
                Ok(()) => {
                    self.event(
                        "Gateway",
                        key,
                        newly_failing(&current.conditions, &desired.conditions),
                    )
                    .await
                }
                Err(e) => {
                    ok = false;
                    tracing::warn!(gateway = %key, error = %e, "status write failed");
                }
            }
        }
        for (key, state) in &statuses.routes {
            let desired = route_status(state);
            let current = state.current.clone().unwrap_or_default();
            if desired == current {
                continue;
            }
            match self.patch::<Route, _>(key, "Route", &desired).await {
                Ok(()) => {
                    let old: Vec<Condition> = current
                        .parents
                        .into_iter()
                        .flat_map(|p| p.conditions)
                        .collect();
                    let new: Vec<&Condition> =
                        desired.parents.iter().flat_map(|p| &p.conditions).collect();
                    let failing = new
                        .into_iter()
                        .filter(|n| newly_failing(&old, std::slice::from_ref(*n)).len() == 1)
                        .collect();
                    self.event("Route", key, failing).await;
                }
                Err(e) => {
                    ok = false;
                    tracing::warn!(route = %key, error = %e, "status write failed");
                }
            }
        }
        for (key, state) in &statuses.policies {
            let desired = policy_status(state);
            let current = state.current.clone().unwrap_or_default();
            if desired == current {
                continue;
            }
            match self
                .patch::<ServicePolicy, _>(key, "ServicePolicy", &desired)
                .await
            {
                Ok(()) => {
                    self.event(
                        "ServicePolicy",
                        key,
                        newly_failing(&current.conditions, &desired.conditions),
                    )
                    .await
                }
                Err(e) => {
                    ok = false;
                    tracing::warn!(policy = %key, error = %e, "status write failed");
                }
            }
        }
        ok
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

//! The status every Gateway, Route and ServicePolicy should carry, as the index sees the world.
//!
//! Computed on each index change, published as one [`Statuses`] value; the status writer (leader
//! only) turns it into server-side-apply patches. Each state also carries the status currently
//! on the object, so the writer patches only what differs.

use std::collections::BTreeMap;

use kube::ResourceExt;
use portico_api::Gateway;
use portico_api::gateway::{GatewayStatus, ListenerProtocol};
use portico_api::policy::ServicePolicyStatus;
use portico_api::route::{ParentKind, ParentReference, RouteStatus};

use portico_api::gateway_api::{
    ApiGatewayStatus, ApiParentRef, ApiRouteStatus, GatewayClassStatus,
};

use super::grants::{GATEWAY, GroupKind, REF_NOT_PERMITTED, Reference, SERVICE};
use super::{Attachment, Index, Key, ServicePort, gateway_api, proxy_name, translate};

/// One desired condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    /// `Accepted`, `Programmed`, `ResolvedRefs`.
    pub type_: &'static str,
    /// True or False.
    pub status: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message that names what is missing.
    pub message: String,
}

impl Cond {
    fn yes(type_: &'static str, reason: &str) -> Self {
        Self {
            type_,
            status: true,
            reason: reason.to_owned(),
            message: String::new(),
        }
    }

    fn no(type_: &'static str, reason: &str, message: String) -> Self {
        Self {
            type_,
            status: false,
            reason: reason.to_owned(),
            message,
        }
    }
}

/// Desired status of one Gateway.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewayState {
    /// `metadata.generation` the status is computed from.
    pub generation: Option<i64>,
    /// `Accepted`, `Programmed`.
    pub conditions: Vec<Cond>,
    /// The proxy Service's cluster IPs.
    pub addresses: Vec<String>,
    /// One per listener, in spec order.
    pub listeners: Vec<ListenerState>,
    /// The status on the object now.
    pub current: Option<GatewayStatus>,
}

/// Desired status of one Gateway listener.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerState {
    /// The listener's name.
    pub name: String,
    /// Routes attached to it (accepted ones only).
    pub attached_routes: i32,
    /// `Accepted`, `ResolvedRefs`, `Programmed`.
    pub conditions: Vec<Cond>,
}

/// One listener of one Gateway, by its index in the spec: what attached Routes are counted by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ListenerRef {
    /// The Gateway.
    gateway: Key,
    /// The listener's index in `spec.listeners`.
    index: usize,
}

/// Desired status of one Route for one parent ref.
#[derive(Clone, Debug, PartialEq)]
pub struct ParentState {
    /// The parent ref, as written in the Route.
    pub parent_ref: ParentReference,
    /// `Accepted`, `ResolvedRefs`.
    pub conditions: Vec<Cond>,
}

/// Desired status of one Route.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteState {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// One entry per parent ref.
    pub parents: Vec<ParentState>,
    /// The status on the object now.
    pub current: Option<RouteStatus>,
}

/// Desired status of one ServicePolicy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyState {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `Accepted`.
    pub conditions: Vec<Cond>,
    /// The status on the object now.
    pub current: Option<ServicePolicyStatus>,
}

/// Desired status of one Gateway API Gateway.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ApiGatewayState {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `Accepted`, `Programmed`.
    pub conditions: Vec<Cond>,
    /// The proxy Service's cluster IPs.
    pub addresses: Vec<String>,
    /// One per listener, in spec order.
    pub listeners: Vec<ApiListenerState>,
    /// The status on the object now.
    pub current: Option<ApiGatewayStatus>,
}

/// Desired status of one Gateway API listener.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiListenerState {
    /// The listener's name.
    pub name: String,
    /// The route kinds it takes.
    pub supported_kinds: Vec<&'static str>,
    /// Routes attached (accepted ones).
    pub attached_routes: i32,
    /// `Accepted`, `ResolvedRefs`, `Programmed`.
    pub conditions: Vec<Cond>,
}

/// Desired status of one HTTPRoute or GRPCRoute: Portico's entries of `status.parents`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ApiRouteState {
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: &'static str,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// One per parent ref that names a Gateway of Portico's (or a Service), as written.
    pub parents: Vec<(ApiParentRef, Vec<Cond>)>,
    /// The status on the object now (other controllers' entries are kept).
    pub current: Option<ApiRouteStatus>,
}

/// Desired status of one GatewayClass naming Portico's controller.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClassState {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `Accepted`, `SupportedVersion`.
    pub conditions: Vec<Cond>,
    /// The status on the object now.
    pub current: Option<GatewayClassStatus>,
}

/// Desired status of one RoutePolicy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoutePolicyState {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `Accepted`, and `ResolvedRefs` when it names credential Secrets.
    pub conditions: Vec<Cond>,
    /// The status on the object now.
    pub current: Option<portico_api::RoutePolicyStatus>,
}

/// Desired status of everything the index holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Statuses {
    /// By Gateway API Gateway.
    pub api_gateways: BTreeMap<Key, ApiGatewayState>,
    /// By HTTPRoute or GRPCRoute (namespace and real name; the kind is in the state).
    pub api_routes: BTreeMap<(&'static str, Key), ApiRouteState>,
    /// By GatewayClass name.
    pub classes: BTreeMap<String, ClassState>,
    /// By RoutePolicy.
    pub route_policies: BTreeMap<Key, RoutePolicyState>,
    /// By Gateway.
    pub gateways: BTreeMap<Key, GatewayState>,
    /// By Route.
    pub routes: BTreeMap<Key, RouteState>,
    /// By ServicePolicy.
    pub policies: BTreeMap<Key, PolicyState>,
}

impl Index {
    /// Why a backend ref of a Route in `route_ns` does not resolve, if it does not, and whether
    /// that is because no ReferenceGrant permits it (then nothing else is said of the Service:
    /// a namespace that did not grant access does not tell what it holds).
    fn backend_problem(
        &self,
        from: GroupKind,
        route_ns: &str,
        sp: &ServicePort,
    ) -> Option<(String, bool)> {
        let key = sp.service_key();
        let reference = Reference {
            from,
            from_namespace: route_ns,
            to_kind: SERVICE,
            to: &key,
        };
        if !self.permitted(&reference) {
            return Some((reference.refusal(), true));
        }
        let port = sp.port;
        if !self.services.contains_key(&key) {
            return Some((format!("Service {key} not found"), false));
        }
        (!self.service_has_port(sp)).then(|| (format!("Service {key} has no port {port}"), false))
    }

    /// Whether the Service of `sp` exists and has its port.
    pub(super) fn service_has_port(&self, sp: &ServicePort) -> bool {
        self.services
            .get(&sp.service_key())
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.ports.as_ref())
            .is_some_and(|ps| ps.iter().any(|p| p.port == sp.port))
    }

    pub(super) fn compute_statuses(&self) -> Statuses {
        let mut out = Statuses::default();
        let mut attached: BTreeMap<ListenerRef, i32> = BTreeMap::new();
        for (rkey, route) in &self.routes {
            // Each problem names its rule (by name, else by position), so a Route with many
            // rules says which one to fix.
            let mut problems: Vec<String> = Vec::new();
            let mut not_permitted = false;
            let mut missing_backend = false;
            for (i, rule) in route.spec.rules.iter().enumerate() {
                let named = |problem: &str| match &rule.name {
                    Some(name) => format!("rule {name:?}: {problem}"),
                    None => format!("rule {}: {problem}", i + 1),
                };
                if let Some(a) = &rule.authentication {
                    for problem in self
                        .authentication(route.credentials_from(), &rkey.namespace, a)
                        .1
                    {
                        not_permitted |= problem.contains("needs a ReferenceGrant");
                        problems.push(named(&problem));
                    }
                }
                for sp in translate::rule_backend_refs(&rkey.namespace, rule) {
                    let Some((problem, refused)) =
                        self.backend_problem(route.origin, &rkey.namespace, &sp)
                    else {
                        continue;
                    };
                    not_permitted |= refused;
                    missing_backend = true;
                    let problem = named(&problem);
                    if !problems.contains(&problem) {
                        problems.push(problem);
                    }
                }
            }
            // One reason for all problems: `RefNotPermitted` when any ref is refused, as that
            // changes what the proxies do most (its rule answers 500); the message lists all.
            let resolved = if problems.is_empty() && route.invalid_kinds.is_empty() {
                Cond::yes("ResolvedRefs", "ResolvedRefs")
            } else if !route.invalid_kinds.is_empty() {
                problems.extend(route.invalid_kinds.iter().cloned());
                Cond::no("ResolvedRefs", "InvalidKind", problems.join("; "))
            } else if not_permitted {
                Cond::no("ResolvedRefs", REF_NOT_PERMITTED, problems.join("; "))
            } else if missing_backend {
                Cond::no("ResolvedRefs", "BackendNotFound", problems.join("; "))
            } else {
                Cond::no("ResolvedRefs", INVALID_CREDENTIALS, problems.join("; "))
            };
            // What the Route's own content says, whatever its parent: a value the contract
            // refuses keeps it from being served.
            let own_content = route
                .problem
                .as_ref()
                .map(|p| Cond::no("Accepted", "UnsupportedValue", p.clone()));
            let own_content = own_content.as_ref();
            let mut parents = Vec::new();
            let mut api_parents = Vec::new();
            for (i, parent) in route.spec.parent_refs.iter().enumerate() {
                let pkey = Key::new(
                    parent.namespace.as_deref().unwrap_or(&rkey.namespace),
                    &parent.name,
                );
                // A Gateway API route's entry for a Gateway that is not Portico's is another
                // controller's to write (or nobody's, when it does not exist).
                if route.is_api()
                    && parent.kind == ParentKind::Gateway
                    && !self.api_gateway_keys.contains(&pkey)
                {
                    continue;
                }
                let accepted = match parent.kind {
                    ParentKind::Service => {
                        if !self.services.contains_key(&pkey) {
                            Cond::no(
                                "Accepted",
                                "NoSuchParent",
                                format!("Service {pkey} not found"),
                            )
                        } else if let Some(cond) = own_content {
                            cond.clone()
                        } else {
                            Cond::yes("Accepted", "Accepted")
                        }
                    }
                    ParentKind::Gateway => match self
                        .gateways
                        .get(&pkey)
                        .filter(|_| route.is_api() == self.api_gateway_keys.contains(&pkey))
                    {
                        None => Cond::no(
                            "Accepted",
                            "NoSuchParent",
                            format!("Gateway {pkey} not found"),
                        ),
                        Some(gw) => match (self.attach(gw, route, parent), own_content) {
                            (Attachment::Rejected { reason, message }, _) => {
                                Cond::no("Accepted", reason, message)
                            }
                            (Attachment::Attached(_), Some(cond)) => cond.clone(),
                            (Attachment::Attached(ls), None) => {
                                for index in ls {
                                    let listener = ListenerRef {
                                        gateway: pkey.clone(),
                                        index,
                                    };
                                    *attached.entry(listener).or_default() += 1;
                                }
                                Cond::yes("Accepted", "Accepted")
                            }
                        },
                    },
                };
                let conditions = vec![accepted, resolved.clone()];
                match route.api_parents.get(i) {
                    Some(written) if route.is_api() => {
                        api_parents.push((written.clone(), conditions));
                    }
                    _ => parents.push(ParentState {
                        parent_ref: parent.clone(),
                        conditions,
                    }),
                }
            }
            if let Some((kind, key)) = gateway_api::split_route_key(rkey) {
                out.api_routes.insert(
                    (kind.kind, key),
                    ApiRouteState {
                        kind: kind.kind,
                        generation: route.metadata.generation,
                        parents: api_parents,
                        current: route.api_status.clone(),
                    },
                );
                continue;
            }
            out.routes.insert(
                rkey.clone(),
                RouteState {
                    generation: route.metadata.generation,
                    parents,
                    current: route.status.clone(),
                },
            );
        }
        for (gkey, gw) in &self.gateways {
            let mut listeners = Vec::new();
            for (i, l) in gw.spec.listeners.iter().enumerate() {
                let mut conds = vec![Cond::yes("Accepted", "Accepted")];
                let refs = match l.protocol {
                    ListenerProtocol::HTTPS => {
                        match self.listener_tls(&gkey.namespace, &gkey.name, l) {
                            Ok(_) => Cond::yes("ResolvedRefs", "ResolvedRefs"),
                            Err(e) => Cond::no("ResolvedRefs", e.reason, e.message),
                        }
                    }
                    _ => Cond::yes("ResolvedRefs", "ResolvedRefs"),
                };
                let programmed = if refs.status {
                    Cond::yes("Programmed", "Programmed")
                } else {
                    Cond::no("Programmed", "Invalid", refs.message.clone())
                };
                conds.push(refs);
                conds.push(programmed);
                let listener = ListenerRef {
                    gateway: gkey.clone(),
                    index: i,
                };
                listeners.push(ListenerState {
                    name: l.name.clone(),
                    attached_routes: attached.get(&listener).copied().unwrap_or(0),
                    conditions: conds,
                });
            }
            let service = self
                .services
                .get(&Key::new(&gkey.namespace, proxy_name(&gkey.name)));
            let addresses: Vec<String> = service
                .and_then(|s| s.spec.as_ref())
                .and_then(|s| {
                    s.cluster_ips
                        .clone()
                        .or_else(|| s.cluster_ip.clone().map(|ip| vec![ip]))
                })
                .unwrap_or_default()
                .into_iter()
                .filter(|ip| !ip.is_empty() && ip != "None")
                .collect();
            let proxies = Key::new(&gkey.namespace, proxy_name(&gkey.name));
            let available = self
                .deployments
                .get(&proxies)
                .and_then(|d| d.status.as_ref())
                .and_then(|s| s.available_replicas)
                .unwrap_or(0);
            let programmed = if addresses.is_empty() {
                Cond::no(
                    "Programmed",
                    "AddressNotAssigned",
                    format!("Service {proxies} has no cluster IP yet"),
                )
            } else if available < 1 {
                Cond::no(
                    "Programmed",
                    "Pending",
                    format!("Deployment {proxies} has no available proxy yet"),
                )
            } else {
                Cond::yes("Programmed", "Programmed")
            };
            if let Some(entry) = self
                .api_gateways
                .get(gkey)
                .filter(|_| self.api_gateway_keys.contains(gkey))
            {
                out.api_gateways.insert(
                    gkey.clone(),
                    api_gateway_state(entry, listeners, addresses, programmed),
                );
                continue;
            }
            out.gateways.insert(
                gkey.clone(),
                GatewayState {
                    generation: gw.metadata.generation,
                    conditions: self.gateway_conditions(gkey, gw, programmed),
                    addresses,
                    listeners,
                    current: gw.status.clone(),
                },
            );
        }
        // Gateway API Gateways of Portico's class that are not served: a Portico Gateway holds
        // the name (and the proxies' names).
        for (gkey, entry) in &self.api_gateways {
            if self.api_gateway_keys.contains(gkey)
                || !self.class_is_ours(gateway_api::class_of(&entry.api))
            {
                continue;
            }
            out.api_gateways.insert(
                gkey.clone(),
                ApiGatewayState {
                    generation: entry.api.metadata.generation,
                    conditions: vec![
                        Cond::no(
                            "Accepted",
                            "Invalid",
                            format!("the Portico Gateway {gkey} has this name"),
                        ),
                        Cond::no(
                            "Programmed",
                            "Invalid",
                            format!("the Portico Gateway {gkey} has this name"),
                        ),
                    ],
                    addresses: Vec::new(),
                    listeners: Vec::new(),
                    current: entry.api.status.clone(),
                },
            );
        }
        for (pkey, policy) in &self.route_policies {
            out.route_policies
                .insert(pkey.clone(), self.route_policy_state(pkey, policy));
        }
        for (name, class) in &self.classes {
            if !gateway_api::is_ours(class) {
                continue;
            }
            let accepted = if class.spec.parameters_ref.is_some() {
                Cond::no(
                    "Accepted",
                    "InvalidParameters",
                    "Portico's GatewayClass takes no parametersRef".to_owned(),
                )
            } else {
                Cond::yes("Accepted", "Accepted")
            };
            out.classes.insert(
                name.clone(),
                ClassState {
                    generation: class.metadata.generation,
                    conditions: vec![accepted, Cond::yes("SupportedVersion", "SupportedVersion")],
                    current: class.status.clone(),
                },
            );
        }
        for (pkey, policy) in &self.policies {
            let target = Key::new(&pkey.namespace, &policy.spec.target_ref.name);
            let accepted = if !self.services.contains_key(&target) {
                Cond::no(
                    "Accepted",
                    "TargetNotFound",
                    format!("Service {target} not found"),
                )
            } else {
                match self.policy_for(&target) {
                    Some(winner) if winner.name_any() != pkey.name => Cond::no(
                        "Accepted",
                        "Conflicted",
                        format!(
                            "ServicePolicy {}/{} already targets Service {target}",
                            pkey.namespace,
                            winner.name_any()
                        ),
                    ),
                    _ => Cond::yes("Accepted", "Accepted"),
                }
            };
            out.policies.insert(
                pkey.clone(),
                PolicyState {
                    generation: policy.metadata.generation,
                    conditions: vec![accepted],
                    current: policy.status.clone(),
                },
            );
        }
        out
    }
}

/// The `ResolvedRefs` reason when an authentication policy's Secret is missing or unusable (its
/// rule then answers `401` to everyone).
pub(super) const INVALID_CREDENTIALS: &str = "InvalidCredentials";

impl Index {
    /// A Gateway's conditions: `Accepted`, `Programmed`, and `ResolvedRefs` when its defaults
    /// name credential Secrets.
    fn gateway_conditions(&self, key: &Key, gw: &Gateway, programmed: Cond) -> Vec<Cond> {
        let mut conds = vec![Cond::yes("Accepted", "Accepted"), programmed];
        if let Some(a) = gw
            .spec
            .defaults
            .as_ref()
            .and_then(|d| d.authentication.as_ref())
        {
            let problems = self.authentication(GATEWAY, &key.namespace, a).1;
            conds.push(if problems.is_empty() {
                Cond::yes("ResolvedRefs", "ResolvedRefs")
            } else if problems
                .iter()
                .any(|p| p.contains("needs a ReferenceGrant"))
            {
                Cond::no("ResolvedRefs", REF_NOT_PERMITTED, problems.join("; "))
            } else {
                Cond::no("ResolvedRefs", INVALID_CREDENTIALS, problems.join("; "))
            });
        }
        conds
    }
}

/// The status of a served Gateway API Gateway: its served listeners' states (computed as for
/// Portico's Gateways) in spec order, with the listeners left out and the kinds each takes.
fn api_gateway_state(
    entry: &gateway_api::ApiGatewayEntry,
    served: Vec<ListenerState>,
    addresses: Vec<String>,
    programmed: Cond,
) -> ApiGatewayState {
    let mut listeners = Vec::new();
    for l in &entry.api.spec.listeners {
        // A listener that is not served takes no kind.
        let kinds: Vec<&'static str> = if entry.refused.contains_key(&l.name) {
            Vec::new()
        } else {
            gateway_api::listener_kinds(l)
                .iter()
                .map(|k| k.kind)
                .collect()
        };
        let state = served.iter().find(|s| s.name == l.name);
        let mut conditions = match (entry.refused.get(&l.name), state) {
            (Some(p), _) => {
                let mut c = vec![
                    Cond::no("Accepted", p.reason, p.message.clone()),
                    Cond::yes("ResolvedRefs", "ResolvedRefs"),
                    Cond::no("Programmed", "Invalid", p.message.clone()),
                ];
                if gateway_api::CONFLICTS.contains(&p.reason) {
                    c.push(Cond {
                        type_: "Conflicted",
                        status: true,
                        reason: p.reason.to_owned(),
                        message: p.message.clone(),
                    });
                }
                c
            }
            (None, Some(s)) => s.conditions.clone(),
            (None, None) => Vec::new(),
        };
        if let Some(message) = entry.invalid_kinds.get(&l.name) {
            for c in &mut conditions {
                if c.type_ == "ResolvedRefs" {
                    *c = Cond::no("ResolvedRefs", "InvalidRouteKinds", message.clone());
                }
            }
        }
        listeners.push(ApiListenerState {
            name: l.name.clone(),
            supported_kinds: kinds,
            attached_routes: state.map_or(0, |s| s.attached_routes),
            conditions,
        });
    }
    let accepted = if entry.refused.is_empty() {
        Cond::yes("Accepted", "Accepted")
    } else if entry.refused.len() == entry.api.spec.listeners.len() {
        Cond::no(
            "Accepted",
            "ListenersNotValid",
            "no listener can be served".to_owned(),
        )
    } else {
        // Some listeners are served: the Gateway is accepted, and says which are not.
        let names: Vec<&str> = entry.refused.keys().map(String::as_str).collect();
        Cond {
            type_: "Accepted",
            status: true,
            reason: "ListenersNotValid".to_owned(),
            message: format!("listeners not served: {}", names.join(", ")),
        }
    };
    ApiGatewayState {
        generation: entry.api.metadata.generation,
        conditions: vec![accepted, programmed],
        addresses,
        listeners,
        current: entry.api.status.clone(),
    }
}

impl Index {
    /// A RoutePolicy's conditions: `Accepted` when each target exists (and the rule its
    /// `sectionName` names) and no older policy holds it; `ResolvedRefs` for its credentials.
    fn route_policy_state(&self, key: &Key, policy: &portico_api::RoutePolicy) -> RoutePolicyState {
        use portico_api::route_policy::TargetKind;
        let mut missing = Vec::new();
        let mut conflicted = Vec::new();
        for t in &policy.spec.target_refs {
            let what = match &t.section_name {
                Some(s) => format!("{:?} {}/{} rule {s}", t.kind, key.namespace, t.name),
                None => format!("{:?} {}/{}", t.kind, key.namespace, t.name),
            };
            let exists = match t.kind {
                TargetKind::Gateway => self
                    .api_gateways
                    .contains_key(&Key::new(&key.namespace, &t.name)),
                TargetKind::HTTPRoute | TargetKind::GRPCRoute => {
                    let kind = if t.kind == TargetKind::HTTPRoute {
                        gateway_api::HTTPROUTE
                    } else {
                        gateway_api::GRPCROUTE
                    };
                    let rkey = gateway_api::route_key(kind, &key.namespace, &t.name);
                    self.routes.get(&rkey).is_some_and(|r| {
                        t.section_name.as_ref().is_none_or(|s| {
                            r.spec
                                .rules
                                .iter()
                                .any(|rule| rule.name.as_ref() == Some(s))
                        })
                    })
                }
            };
            if !exists {
                missing.push(format!("{what} not found"));
                continue;
            }
            let winner =
                self.route_policy_for(&key.namespace, t.kind, &t.name, t.section_name.as_deref());
            if let Some(w) = winner.filter(|w| w.name_any() != key.name) {
                conflicted.push(format!(
                    "RoutePolicy {}/{} already targets {what}",
                    key.namespace,
                    w.name_any()
                ));
            }
        }
        let accepted = if !missing.is_empty() {
            missing.extend(conflicted);
            Cond::no("Accepted", "TargetNotFound", missing.join("; "))
        } else if !conflicted.is_empty() {
            Cond::no("Accepted", "Conflicted", conflicted.join("; "))
        } else {
            Cond::yes("Accepted", "Accepted")
        };
        let mut conditions = vec![accepted];
        if let Some(a) = &policy.spec.authentication {
            let problems = self
                .authentication(gateway_api::ROUTE_POLICY, &key.namespace, a)
                .1;
            conditions.push(if problems.is_empty() {
                Cond::yes("ResolvedRefs", "ResolvedRefs")
            } else if problems
                .iter()
                .any(|p| p.contains("needs a ReferenceGrant"))
            {
                Cond::no("ResolvedRefs", REF_NOT_PERMITTED, problems.join("; "))
            } else {
                Cond::no("ResolvedRefs", INVALID_CREDENTIALS, problems.join("; "))
            });
        }
        RoutePolicyState {
            generation: policy.metadata.generation,
            conditions,
            current: policy.status.clone(),
        }
    }
}

//! Publishing: after each event the outputs are recomputed and a channel is written only when
//! its content changed. An endpoint change recomputes only the backends of the proxies that use
//! the Service ([`Index::refresh_endpoints`]); anything else recomputes every proxy's config,
//! the Gateway specs and the statuses ([`Index::refresh`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use kube::ResourceExt;
use portico_proxy_api::RouteTable;
use tokio::sync::watch;

use super::{Backends, GatewaySpec, GatewaySpecs, Index, Key, Memo, ProxyChannels, Wanted};

impl Index {
    /// Publishes `backends` to `key`'s channel if it differs from what was sent.
    pub(super) fn publish_backends(&mut self, key: &Key, backends: Backends) {
        let generation = self.generation + 1;
        let Some(ch) = self.proxies.get(key) else {
            return;
        };
        let sent = ch.backends.send_if_modified(|cur| {
            if cur.same_backends(&backends) {
                return false;
            }
            *cur = Arc::new(Backends {
                generation,
                ..backends
            });
            true
        });
        if sent {
            self.stats.backend_updates += 1;
            self.generation = generation;
        }
    }

    /// After an EndpointSlice change: only the BackendSets of proxies that use one of the
    /// `services` are recomputed. Routes, statuses and other proxies are untouched.
    pub(super) fn refresh_endpoints(&mut self, services: &BTreeSet<Key>) {
        let affected: Vec<(Key, Wanted)> = self
            .proxies
            .iter()
            .filter(|(_, ch)| {
                ch.wanted
                    .iter()
                    .any(|w| services.iter().any(|s| w.is_of(s)))
            })
            .map(|(k, ch)| (k.clone(), ch.wanted.clone()))
            .collect();
        let mut memo = Memo::new();
        for (key, wanted) in affected {
            // The published set was computed from the same `wanted`, in the same order: only
            // the touched Services' backends are recomputed, the others are taken as they are
            // (the mesh-wide set holds every Service; recomputing all of them per endpoint
            // change cost most of the operator's CPU at 1,000 Services).
            let current = self
                .proxies
                .get(&key)
                .map(|ch| ch.backends.borrow().clone());
            let backends = wanted
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let touched = services.iter().any(|s| w.is_of(s));
                    let kept = current
                        .as_ref()
                        .and_then(|c| c.backends.get(i))
                        .filter(|b| !touched && b.name == w.backend_name());
                    match kept {
                        Some(b) => b.clone(),
                        None => memo
                            .entry(w.clone())
                            .or_insert_with(|| Arc::new(self.backend(w)))
                            .clone(),
                    }
                })
                .collect();
            self.publish_backends(
                &key,
                Backends {
                    generation: 0,
                    backends,
                    ..Default::default()
                },
            );
        }
    }

    /// Recomputes everything: every proxy's config, the Gateway specs and the statuses.
    pub(super) fn refresh(&mut self) {
        let keys: BTreeSet<Key> = self
            .gateways
            .keys()
            .chain(self.proxies.keys())
            .cloned()
            .collect();
        let mut memo = Memo::new();
        let mut by_gateway = self.routes_by_gateway();
        for key in keys {
            let candidates = by_gateway.remove(&key).unwrap_or_default();
            let (routes, wanted) = self.gateway_routes_of(&key, &candidates);
            let backends = self.backend_set_memo(&wanted, &mut memo);
            let generation = self.generation + 1;
            let ch = self
                .proxies
                .entry(key.clone())
                .or_insert_with(|| ProxyChannels {
                    routes: watch::Sender::new(Arc::new(RouteTable::default())),
                    backends: watch::Sender::new(Arc::new(Backends::default())),
                    wanted: Wanted::new(),
                });
            ch.wanted = wanted;
            let sent = ch.routes.send_if_modified(|cur| {
                if cur.listeners == routes.listeners
                    && cur.routes == routes.routes
                    && cur.services == routes.services
                {
                    return false;
                }
                *cur = Arc::new(RouteTable {
                    generation,
                    ..routes
                });
                true
            });
            if sent {
                self.stats.route_updates += 1;
                self.generation = generation;
            }
            self.publish_backends(&key, backends);
            let Some(ch) = self.proxies.get(&key) else {
                continue;
            };
            let gone = !self.gateways.contains_key(&key);
            if gone && ch.routes.receiver_count() == 0 && ch.backends.receiver_count() == 0 {
                self.proxies.remove(&key);
            }
        }
        let specs: GatewaySpecs = self
            .gateways
            .iter()
            .map(|(k, g)| {
                let spec = GatewaySpec {
                    uid: g.uid().unwrap_or_default(),
                    gateway_api: self.api_gateway_keys.contains(k),
                    spec: g.spec.clone(),
                };
                (k.clone(), spec)
            })
            .collect();
        self.gateway_specs.send_if_modified(|cur| {
            if **cur == specs {
                return false;
            }
            *cur = Arc::new(specs);
            true
        });
        let statuses = self.compute_statuses();
        self.statuses.send_if_modified(|cur| {
            if **cur == statuses {
                return false;
            }
            *cur = Arc::new(statuses);
            true
        });
    }
}

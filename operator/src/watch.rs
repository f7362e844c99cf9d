//! The watches that feed the index: one kube-runtime watcher per kind (and per namespace, when
//! the operator is limited to some namespaces), with the default backoff.
//!
//! Objects are watched as `DynamicObject`s and decoded one by one, so a single object that does
//! not decode (a CR stored before a schema change, say) is logged, counted and skipped, never
//! fatal to the watch. A relist (`Init` … `InitDone`) replaces the kind's objects in one
//! `reset`, so objects deleted while the watch was away disappear.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject, TypeMeta};
use kube::core::ApiResource;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use portico_api::gateway_api::{ApiGateway, GatewayClass, GrpcRoute, HttpRoute};
use portico_api::{Gateway, ReferenceGrant, Route, RoutePolicy, ServicePolicy};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::index::{Index, Key, Kind, Object, PodInfo};
use crate::metrics::Metrics;

/// The index, shared between the watches (writers) and the servers (readers). Never held across
/// an await.
pub type SharedIndex = Arc<Mutex<Index>>;

/// Tracks which watches have finished their first list; the operator is ready when all have.
#[derive(Clone, Debug)]
pub struct Readiness {
    pending: watch::Sender<usize>,
}

impl Readiness {
    fn new(watches: usize) -> Self {
        Self {
            pending: watch::Sender::new(watches),
        }
    }

    fn synced(&self) {
        self.pending.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// Whether every watch has listed once.
    pub fn is_ready(&self) -> bool {
        *self.pending.borrow() == 0
    }

    /// Waits until every watch has listed once.
    pub async fn wait(&self) {
        let mut rx = self.pending.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Gateway => ApiResource::erase::<Gateway>(&()),
        Kind::Route => ApiResource::erase::<Route>(&()),
        Kind::ServicePolicy => ApiResource::erase::<ServicePolicy>(&()),
        Kind::Service => ApiResource::erase::<Service>(&()),
        Kind::EndpointSlice => ApiResource::erase::<EndpointSlice>(&()),
        Kind::Secret | Kind::Credential => ApiResource::erase::<Secret>(&()),
        Kind::Namespace => ApiResource::erase::<Namespace>(&()),
        Kind::ReferenceGrant => ApiResource::erase::<ReferenceGrant>(&()),
        Kind::Deployment => ApiResource::erase::<Deployment>(&()),
        Kind::Pod => ApiResource::erase::<Pod>(&()),
        Kind::GatewayClass => ApiResource::erase::<GatewayClass>(&()),
        Kind::ApiGateway => ApiResource::erase::<ApiGateway>(&()),
        Kind::HttpRoute => ApiResource::erase::<HttpRoute>(&()),
        Kind::GrpcRoute => ApiResource::erase::<GrpcRoute>(&()),
        Kind::RoutePolicy => ApiResource::erase::<RoutePolicy>(&()),
    }
}

fn parse<K>(obj: DynamicObject, wrap: fn(K) -> Object) -> Result<Object, String>
where
    K: Resource + serde::de::DeserializeOwned,
{
    obj.try_parse::<K>().map(wrap).map_err(|e| e.to_string())
}

/// Decodes a watched object into the index's typed form.
pub fn decode(kind: Kind, mut obj: DynamicObject) -> Result<Object, String> {
    let ar = api_resource(kind);
    // List items carry no apiVersion/kind; typed decoding wants them.
    obj.types = Some(TypeMeta {
        api_version: ar.api_version.clone(),
        kind: ar.kind.clone(),
    });
    match kind {
        Kind::Gateway => parse(obj, Object::Gateway),
        Kind::Route => parse(obj, Object::Route),
        Kind::ServicePolicy => parse(obj, Object::ServicePolicy),
        Kind::Service => parse(obj, Object::Service),
        Kind::EndpointSlice => parse(obj, Object::EndpointSlice),
        Kind::Secret => parse(obj, Object::Secret),
        Kind::Credential => parse(obj, Object::Credential),
        Kind::Namespace => parse(obj, Object::Namespace),
        Kind::ReferenceGrant => parse(obj, Object::ReferenceGrant),
        Kind::Deployment => parse(obj, |d| Object::Deployment(Box::new(d))),
        // Decoded, reduced to its compact record at once, and the Pod dropped.
        Kind::Pod => parse(obj, |p: Pod| Object::Pod(PodInfo::of(&p))),
        Kind::GatewayClass => parse(obj, Object::GatewayClass),
        Kind::ApiGateway => parse(obj, |g| Object::ApiGateway(Box::new(g))),
        Kind::HttpRoute => parse(obj, |r| Object::HttpRoute(Box::new(r))),
        Kind::GrpcRoute => parse(obj, |r| Object::GrpcRoute(Box::new(r))),
        Kind::RoutePolicy => parse(obj, |p| Object::RoutePolicy(Box::new(p))),
    }
}

fn watcher_config(kind: Kind) -> watcher::Config {
    let config = watcher::Config::default();
    match kind {
        // Only TLS Secrets can be listener certificates; the operator never sees the others.
        Kind::Secret => config.fields("type=kubernetes.io/tls"),
        // Credentials for authentication policies are opted in by label.
        Kind::Credential => config.labels(crate::index::credentials::CREDENTIAL_LABEL),
        Kind::EndpointSlice => config.labels("kubernetes.io/service-name"),
        // Only the gateway proxies the operator runs.
        Kind::Deployment => config.labels("app.kubernetes.io/managed-by=portico-operator"),
        _ => config,
    }
}

/// Whether the API server serves Portico's CRDs and the Gateway API's ReferenceGrant (without
/// it, its watch would never sync and the operator never become ready); `Err` says which one is
/// missing.
pub async fn check_crds(client: &kube::Client) -> anyhow::Result<()> {
    for ar in [
        ApiResource::erase::<Gateway>(&()),
        ApiResource::erase::<Route>(&()),
        ApiResource::erase::<ServicePolicy>(&()),
        ApiResource::erase::<RoutePolicy>(&()),
        ApiResource::erase::<ReferenceGrant>(&()),
        ApiResource::erase::<GatewayClass>(&()),
        ApiResource::erase::<ApiGateway>(&()),
        ApiResource::erase::<HttpRoute>(&()),
        ApiResource::erase::<GrpcRoute>(&()),
    ] {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        match api
            .list_metadata(&kube::api::ListParams::default().limit(1))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => anyhow::bail!(
                "the CustomResourceDefinition {}.{} is not installed; apply crds/ (kubectl apply -f crds/) or install the chart first",
                ar.plural,
                ar.group
            ),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("listing {}", ar.plural))),
        }
    }
    Ok(())
}

/// Starts every watch on `tasks`. `namespaces` limits the namespaced kinds; empty watches all.
pub fn spawn(
    tasks: &mut JoinSet<anyhow::Result<()>>,
    client: &kube::Client,
    namespaces: &[String],
    index: SharedIndex,
    metrics: Arc<Metrics>,
) -> Readiness {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    };
    let mut watches = Vec::new();
    for kind in Kind::ALL {
        // Cluster-scoped kinds are watched once, whatever the namespaces.
        if matches!(kind, Kind::Namespace | Kind::GatewayClass) {
            watches.push((kind, None));
        } else {
            watches.extend(scopes.iter().map(|s| (kind, s.clone())));
        }
    }
    let readiness = Readiness::new(watches.len());
    for (kind, scope) in watches {
        let ar = api_resource(kind);
        let api: Api<DynamicObject> = match &scope {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        tasks.spawn(run_watch(
            api,
            kind,
            scope,
            index.clone(),
            readiness.clone(),
            metrics.clone(),
        ));
    }
    readiness
}

async fn run_watch(
    api: Api<DynamicObject>,
    kind: Kind,
    scope: Option<String>,
    index: SharedIndex,
    readiness: Readiness,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let label = [("kind", kind.plural())];
    let stream = watcher::watcher(api, watcher_config(kind)).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut buffer = Vec::new();
    let mut synced = false;
    let decode_or_skip = |obj: DynamicObject| {
        let key = Key::new(obj.namespace().unwrap_or_default(), obj.name_any());
        match decode(kind, obj) {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!(kind = kind.plural(), object = %key, error = %e, "skipping an object that does not decode");
                metrics.watch_skipped.get_or_create(&label).inc();
                None
            }
        }
    };
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(kind = kind.plural(), error = %e, "watch error; retrying with backoff");
                metrics.watch_errors.get_or_create(&label).inc();
                continue;
            }
        };
        let started = Instant::now();
        let stats = {
            let mut index = index.lock().unwrap_or_else(|p| p.into_inner());
            match event {
                Event::Init => {
                    buffer.clear();
                    None
                }
                Event::InitApply(obj) => {
                    buffer.extend(decode_or_skip(obj));
                    None
                }
                Event::InitDone => {
                    index.reset(kind, scope.as_deref(), std::mem::take(&mut buffer));
                    Some(index.stats())
                }
                Event::Apply(obj) => {
                    if let Some(o) = decode_or_skip(obj) {
                        index.apply(o);
                    }
                    Some(index.stats())
                }
                Event::Delete(obj) => {
                    let key = Key::new(obj.namespace().unwrap_or_default(), obj.name_any());
                    index.delete_key(kind, &key);
                    Some(index.stats())
                }
            }
        };
        if let Some(stats) = stats {
            metrics.watch_events.get_or_create(&label).inc();
            metrics
                .index_update_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.index_objects.set(stats.objects as i64);
            metrics.index_route_updates.set(stats.route_updates as i64);
            metrics
                .index_backend_updates
                .set(stats.backend_updates as i64);
            if !synced {
                synced = true;
                readiness.synced();
                tracing::debug!(kind = kind.plural(), scope = ?scope, "watch synced");
            }
        }
    }
    anyhow::bail!("the {} watch ended", kind.plural())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_object_that_does_not_decode_is_an_error_for_the_watch_to_skip() {
        let bad: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "portico.dev/v1alpha1", "kind": "Gateway",
            "metadata": {"namespace": "shop", "name": "gw"},
            "spec": {"listeners": "not a list"}
        }))
        .unwrap();
        let err = decode(Kind::Gateway, bad).unwrap_err();
        assert!(
            err.contains("listeners") || err.contains("sequence"),
            "{err}"
        );
    }

    #[test]
    fn list_items_without_api_version_and_kind_decode() {
        let item: DynamicObject = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "orders"},
            "spec": {"ports": [{"port": 80}]}
        }))
        .unwrap();
        assert!(matches!(
            decode(Kind::Service, item),
            Ok(Object::Service(_))
        ));
        let item: DynamicObject = serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "gw"},
            "spec": {"listeners": [{"name": "web", "port": 80, "protocol": "HTTP"}]}
        }))
        .unwrap();
        assert!(matches!(
            decode(Kind::Gateway, item),
            Ok(Object::Gateway(_))
        ));
    }

    #[test]
    fn a_reference_grant_list_item_decodes_as_the_gateway_api_kind() {
        assert_eq!(
            api_resource(Kind::ReferenceGrant).api_version,
            "gateway.networking.k8s.io/v1"
        );
        let item: DynamicObject = serde_json::from_value(json!({
            "metadata": {"namespace": "pay", "name": "from-shop"},
            "spec": {"from": [{"group": "portico.dev", "kind": "Route", "namespace": "shop"}],
                     "to": [{"group": "", "kind": "Service"}]}
        }))
        .unwrap();
        let Ok(Object::ReferenceGrant(grant)) = decode(Kind::ReferenceGrant, item) else {
            panic!("a ReferenceGrant decodes");
        };
        assert_eq!(grant.spec.from[0].namespace, "shop");
        assert_eq!(grant.spec.to[0].name, None);
    }

    /// An API server that knows no Portico CRDs: every request gets a 404 Status.
    async fn bare_apiserver() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                          "reason": "NotFound", "code": 404, "message": "404 page not found"});
                        let mut resp = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(body.to_string()),
                        ));
                        *resp.status_mut() = http::StatusCode::NOT_FOUND;
                        resp.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn missing_crds_are_named_in_the_startup_error() {
        let addr = bare_apiserver().await;
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let err = check_crds(&client).await.unwrap_err().to_string();
        assert!(
            err.contains("gateways.portico.dev is not installed") && err.contains("crds/"),
            "{err}"
        );
    }
}

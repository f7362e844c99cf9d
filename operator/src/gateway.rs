//! The gateway reconciler (leader only): for each Gateway, a ServiceAccount, a ConfigMap with the
//! config server's CA, a Service exposing the listeners and a Deployment of `portico-proxy` in
//! gateway mode, all named
//! `portico-gateway-<name>`, owned by the Gateway (deleting it deletes them) and written with
//! server-side apply.
//!
//! The proxy authenticates to the config server with a projected token of its ServiceAccount
//! (audience `portico`, see [`crate::auth`]). The Deployment's pod template carries a hash of the
//! Gateway spec, so a change to the Gateway rolls the proxies.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use portico_api::GatewaySpec;
use portico_api::gateway::GatewayServiceType;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::index::{GatewaySpecs, Key, proxy_name};
use crate::status::FIELD_MANAGER;

/// How the proxies of every Gateway are run.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// The `portico-proxy` image.
    pub image: String,
    /// The config server URL proxies connect to, e.g.
    /// `https://portico-operator.portico-system.svc:8443`.
    pub control_plane_url: String,
    /// The CA certificate(s) (PEM) that verify the config server. The reconciler publishes them
    /// in a ConfigMap next to each Gateway's proxies, mounted as `ca.crt`.
    pub ca_pem: String,
    /// The mesh's trust domain: the identity the proxies ask for.
    pub trust_domain: String,
}

/// Labels of every object the reconciler writes for Gateway `name`.
pub fn labels(name: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "portico-gateway",
        "app.kubernetes.io/managed-by": "portico-operator",
        "portico.dev/gateway": gateway_label(name),
    })
}

/// The `portico.dev/gateway` label value of Gateway `name`'s objects and the selector of its
/// pods: the name itself, or a label-safe form of a name over 63 characters or with dots
/// (unchanged for every name that fits, so existing Deployments' immutable selectors stay).
fn gateway_label(name: &str) -> String {
    portico_proxy_api::label_safe(name)
}

/// A stable hash of the Gateway spec (FNV-1a over its JSON), for the pod template annotation.
fn spec_hash(spec: &GatewaySpec) -> String {
    let bytes = serde_json::to_vec(spec).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The objects for one Gateway (ServiceAccount, ConfigMap, Service, Deployment), as
/// server-side-apply bodies.
pub fn desired(key: &Key, uid: &str, spec: &GatewaySpec, settings: &ProxySettings) -> [Value; 4] {
    let name = proxy_name(&key.name);
    let owner = json!([{
        "apiVersion": format!("{}/{}", portico_api::GROUP, portico_api::VERSION),
        "kind": "Gateway",
        "name": key.name,
        "uid": uid,
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    let metadata = json!({
        "name": name,
        "namespace": key.namespace,
        "labels": labels(&key.name),
        "ownerReferences": owner,
    });
    let service_type = match spec.service_type.unwrap_or_default() {
        GatewayServiceType::ClusterIP => "ClusterIP",
        GatewayServiceType::NodePort => "NodePort",
        GatewayServiceType::LoadBalancer => "LoadBalancer",
    };
    let named = port_names(spec);
    let ports: Vec<Value> = named
        .iter()
        .map(|(port, name)| json!({"name": name, "port": port, "targetPort": port, "protocol": "TCP"}))
        .collect();
    let container_ports: Vec<Value> = named
        .iter()
        .map(|(port, name)| json!({"name": name, "containerPort": port, "protocol": "TCP"}))
        .collect();
    let sa = json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata,
    });
    let ca = json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata,
        "data": {"ca.crt": settings.ca_pem},
    });
    let service = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": metadata,
        "spec": {
            "type": service_type,
            "selector": {"portico.dev/gateway": gateway_label(&key.name)},
            "ports": ports,
        }
    });
    // A gateway logs every request unless its Gateway says not to (Envoy Gateway and nginx
    // log by default too): who called what is the first thing asked of an edge proxy.
    let access_log = spec.access_log.as_ref().is_none_or(|a| a.enabled);
    let gateway = key.to_string();
    let mut args = vec![
        "--control-plane",
        &settings.control_plane_url,
        "--gateway",
        &gateway,
        "--token-file",
        "/var/run/secrets/portico/token",
        "--ca-file",
        "/var/run/secrets/portico/ca.crt",
        "--admin-addr",
        "0.0.0.0:9901",
        "--trust-domain",
        &settings.trust_domain,
    ];
    if access_log {
        args.push("--access-log");
    }
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
        "spec": {
            "replicas": spec.replicas.unwrap_or(1),
            "selector": {"matchLabels": {"portico.dev/gateway": gateway_label(&key.name)}},
            "template": {
                "metadata": {
                    "labels": labels(&key.name),
                    // A gateway proxy is itself the mesh's proxy for its traffic (its identity,
                    // mTLS to meshed backends): in a meshed namespace it must not get a sidecar.
                    "annotations": {
                        "portico.dev/gateway-spec-hash": spec_hash(spec),
                        crate::admission::inject::INJECT: "disabled",
                    },
                },
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": false,
                    "securityContext": pod_security(spec),
                    // The preStop pause below plus the proxy's own drain of in-flight requests.
                    "terminationGracePeriodSeconds": 40,
                    "containers": [{
                        "name": "proxy",
                        "image": settings.image,
                        "args": args,
                        "ports": container_ports,
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 9901}},
                        // A terminating pod leaves the Service's endpoints at once, but
                        // kube-proxies and load balancers take a moment to stop sending it new
                        // connections: keep serving for that moment before SIGTERM starts the
                        // drain (no shell needed: the kubelet sleeps).
                        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
                        "livenessProbe": {"httpGet": {"path": "/live", "port": 9901}},
                        "volumeMounts": [{"name": "portico", "mountPath": "/var/run/secrets/portico", "readOnly": true}],
                        "securityContext": {
                            "runAsNonRoot": true,
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }],
                    "volumes": [{
                        "name": "portico",
                        "projected": {"sources": [
                            {"serviceAccountToken": {"audience": crate::auth::AUDIENCE, "expirationSeconds": 3600, "path": "token"}},
                            {"configMap": {"name": name, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        ]},
                    }],
                },
            },
        }
    });
    [sa, ca, service, deployment]
}

/// One port per distinct listener port (HTTPS listeners chosen by SNI share one), named after
/// its listener when that name is a valid port name (at most 15 lowercase letters, digits and
/// dashes), else `port-<number>`: Gateway API listener names may be longer or hold dots.
fn port_names(spec: &GatewaySpec) -> Vec<(i32, String)> {
    let mut out: Vec<(i32, String)> = Vec::new();
    for l in &spec.listeners {
        if out.iter().any(|(p, _)| *p == l.port) {
            continue;
        }
        let valid = l.name.len() <= 15
            && l.name.chars().any(|c| c.is_ascii_lowercase())
            && l.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.name.starts_with('-')
            && !l.name.ends_with('-')
            && !l.name.contains("--");
        let name = if valid {
            l.name.clone()
        } else {
            format!("port-{}", l.port)
        };
        out.push((l.port, name));
    }
    out
}

/// The pod security context of a Gateway's proxies: listeners below port 1024 (HTTP on 80,
/// HTTPS on 443) are bound by the non-root proxy through the pod's own
/// `net.ipv4.ip_unprivileged_port_start` (a safe, per-pod sysctl), not a capability.
fn pod_security(spec: &GatewaySpec) -> Value {
    let lowest = spec.listeners.iter().map(|l| l.port).min().unwrap_or(1024);
    if lowest < 1024 {
        json!({"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": lowest.to_string()}]})
    } else {
        json!({})
    }
}

async fn apply(client: &kube::Client, key: &Key, objects: [Value; 4]) -> Result<(), kube::Error> {
    let name = proxy_name(&key.name);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let [sa, ca, service, deployment] = objects;
    Api::<ServiceAccount>::namespaced(client.clone(), &key.namespace)
        .patch(&name, &params, &Patch::Apply(&sa))
        .await?;
    Api::<ConfigMap>::namespaced(client.clone(), &key.namespace)
        .patch(&name, &params, &Patch::Apply(&ca))
        .await?;
    Api::<Service>::namespaced(client.clone(), &key.namespace)
        .patch(&name, &params, &Patch::Apply(&service))
        .await?;
    Api::<Deployment>::namespaced(client.clone(), &key.namespace)
        .patch(&name, &params, &Patch::Apply(&deployment))
        .await?;
    Ok(())
}

/// A Warning Event on the Gateway saying why its proxies' objects were refused (the
/// apiserver's words), so `kubectl describe` shows it next to `Programmed=False`.
async fn tell_refusal(recorder: &Recorder, key: &Key, gateway_api: bool, message: &str) {
    let api_version = if gateway_api {
        format!("{}/v1", portico_api::grant::GATEWAY_API_GROUP)
    } else {
        format!("{}/{}", portico_api::GROUP, portico_api::VERSION)
    };
    let note = message.chars().take(1024).collect();
    crate::status::warn(
        recorder,
        (&api_version, "Gateway", key),
        "ProxyObjectsRefused",
        note,
    )
    .await;
}

/// Applies the proxy objects of every Gateway while `leader` is true, whenever a Gateway is
/// added or its spec changes. Removal is left to the garbage collector (owner references).
pub async fn run(
    client: kube::Client,
    settings: ProxySettings,
    mut specs: watch::Receiver<Arc<GatewaySpecs>>,
    mut leader: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut applied: GatewaySpecs = GatewaySpecs::new();
    // The last refusal told each Gateway as an Event (a retry every 2 s would repeat it).
    let mut refused: std::collections::HashMap<Key, String> = Default::default();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: None,
        },
    );
    let mut was_leader = false;
    loop {
        leader.wait_for(|l| *l).await?;
        if !was_leader {
            // A new term: another replica may have written in between; apply everything once.
            applied.clear();
            was_leader = true;
        }
        let snapshot = specs.borrow_and_update().clone();
        let mut ok = true;
        for (key, gateway) in snapshot.iter() {
            if applied.get(key) == Some(gateway) {
                continue;
            }
            let mut objects = desired(key, &gateway.uid, &gateway.spec, &settings);
            if gateway.gateway_api {
                // The owner is the Gateway API's Gateway: an owner reference naming Portico's
                // kind would point at nothing, and the garbage collector would delete the proxies.
                for o in &mut objects {
                    o["metadata"]["ownerReferences"][0]["apiVersion"] =
                        format!("{}/v1", portico_api::grant::GATEWAY_API_GROUP).into();
                }
            }
            match apply(&client, key, objects).await {
                Ok(()) => {
                    tracing::info!(gateway = %key, "gateway proxy objects applied");
                    applied.insert(key.clone(), gateway.clone());
                    refused.remove(key);
                }
                Err(e) => {
                    ok = false;
                    tracing::warn!(gateway = %key, error = %e, "applying gateway proxy objects failed");
                    let message = e.to_string();
                    if refused.get(key) != Some(&message) {
                        tell_refusal(&recorder, key, gateway.gateway_api, &message).await;
                        refused.insert(key.clone(), message);
                    }
                }
            }
        }
        applied.retain(|k, _| snapshot.contains_key(k));
        let retry = if ok {
            Duration::from_secs(600)
        } else {
            Duration::from_secs(2)
        };
        tokio::select! {
            r = specs.changed() => r?,
            r = leader.changed() => {
                r?;
                if !*leader.borrow() {
                    was_leader = false;
                }
            }
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(port: i32) -> GatewaySpec {
        serde_json::from_value(
            json!({"listeners": [{"name": "web", "port": port, "protocol": "HTTP"}]}),
        )
        .unwrap()
    }

    #[test]
    fn proxy_objects_are_owned_by_the_gateway_and_expose_its_listeners() {
        let settings = ProxySettings {
            image: "portico-proxy:test".into(),
            control_plane_url: "https://portico:8443".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----".into(),
            trust_domain: "cluster.local".into(),
        };
        let [sa, ca, svc, deploy] =
            desired(&Key::new("shop", "edge"), "uid-1", &spec(8080), &settings);
        assert_eq!(ca["data"]["ca.crt"], "-----BEGIN CERTIFICATE-----");
        for obj in [&sa, &ca, &svc, &deploy] {
            assert_eq!(obj["metadata"]["name"], "portico-gateway-edge");
            assert_eq!(obj["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        }
        assert_eq!(svc["spec"]["ports"][0]["port"], 8080);
        let pod = &deploy["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "portico-gateway-edge");
        assert_eq!(pod["containers"][0]["image"], "portico-proxy:test");
        // Typed decoding proves the bodies are well-formed Kubernetes objects.
        let _: Deployment = serde_json::from_value(deploy.clone()).unwrap();
        let _: Service = serde_json::from_value(svc).unwrap();
    }

    #[test]
    fn replicas_and_service_type_shape_the_proxy_deployment_and_service() {
        let settings = test_settings();
        let key = Key::new("shop", "edge");
        let [_, _, svc, deploy] = desired(&key, "uid-1", &spec(8080), &settings);
        assert_eq!(deploy["spec"]["replicas"], 1);
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        let mut custom = spec(8080);
        custom.replicas = Some(3);
        custom.service_type = Some(GatewayServiceType::LoadBalancer);
        let [_, _, svc, deploy] = desired(&key, "uid-1", &custom, &settings);
        assert_eq!(deploy["spec"]["replicas"], 3);
        assert_eq!(svc["spec"]["type"], "LoadBalancer");
        custom.service_type = Some(GatewayServiceType::NodePort);
        let [_, _, svc, _] = desired(&key, "uid-1", &custom, &settings);
        assert_eq!(svc["spec"]["type"], "NodePort");
    }

    fn test_settings() -> ProxySettings {
        ProxySettings {
            image: "portico-proxy:test".into(),
            control_plane_url: "https://portico:8443".into(),
            ca_pem: String::new(),
            trust_domain: "cluster.local".into(),
        }
    }

    #[test]
    fn the_access_log_is_on_unless_the_gateway_turns_it_off() {
        let settings = test_settings();
        let key = Key::new("shop", "edge");
        let args = |spec: &GatewaySpec| {
            let [_, _, _, deploy] = desired(&key, "uid-1", spec, &settings);
            deploy["spec"]["template"]["spec"]["containers"][0]["args"].clone()
        };
        let has_flag = |spec: &GatewaySpec| {
            args(spec)
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == "--access-log"))
        };
        let mut s = spec(8080);
        assert!(has_flag(&s), "on by default: {}", args(&s));
        s.access_log = Some(portico_api::gateway::GatewayAccessLog { enabled: true });
        assert!(has_flag(&s));
        s.access_log = Some(portico_api::gateway::GatewayAccessLog { enabled: false });
        assert!(!has_flag(&s), "off: {}", args(&s));
    }

    #[test]
    fn a_spec_change_changes_the_pod_template() {
        assert_ne!(spec_hash(&spec(8080)), spec_hash(&spec(8081)));
        assert_eq!(spec_hash(&spec(8080)), spec_hash(&spec(8080)));
    }
}

//! Sidecar injection: which pods get the proxy, and what the proxy looks like.
//!
//! An injected pod's init containers, in order:
//!
//! ```text
//!  portico-init   (runs to completion: iptables rules that send the pod's traffic to the proxy)
//!  portico-proxy  (restartPolicy: Always, a native sidecar: started, and /ready, before the rest)
//!  ...the pod's own init containers, then its containers
//! ```
//!
//! The proxy is a *native* sidecar so that the app never starts before its proxy is ready (the
//! kubelet waits for the startup probe before starting the next init container) and so that Jobs
//! finish (the kubelet stops native sidecars once the main containers have exited).
//!
//! Everything here is pure: [`inject`] turns a Pod into the injected Pod, [`patch`] turns the
//! pair into the JSONPatch the webhook answers with.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

/// Namespace label and pod annotation that opt pods in (`enabled`) or out (`disabled`).
pub const INJECT: &str = "portico.dev/inject";
/// Annotation set on every injected pod; its presence makes injection a no-op.
pub const INJECTED: &str = "portico.dev/injected";
/// Name of the proxy's (native sidecar) init container.
pub const PROXY_CONTAINER: &str = "portico-proxy";
/// Name of the init container that installs the traffic redirection rules.
pub const INIT_CONTAINER: &str = "portico-init";
/// Name of the projected volume that holds the proxy's ServiceAccount token.
pub const TOKEN_VOLUME: &str = "portico-token";
/// Name of the scratch volume mounted at `/run` in `portico-init`.
pub const INIT_RUN_VOLUME: &str = "portico-init-run";
/// Where the token volume is mounted in the proxy (the token is the file `token` in it).
pub const TOKEN_DIR: &str = "/var/run/secrets/portico";
/// Port the proxy accepts redirected inbound connections on.
pub const INBOUND_PORT: u16 = 4143;
/// Port the proxy accepts redirected outbound connections on.
pub const OUTBOUND_PORT: u16 = 4140;
/// The proxy's admin port (`/ready`, `/live`, `/metrics`); never redirected.
pub const ADMIN_PORT: u16 = 4191;
/// User id the proxy runs as; `portico-init` exempts its traffic from redirection by this id.
pub const PROXY_UID: i64 = 2102;

/// Per-pod annotations that override [`InjectConfig`] values.
pub mod annotations {
    /// CPU request of the proxy, e.g. `100m`.
    pub const CPU_REQUEST: &str = "portico.dev/proxy-cpu-request";
    /// CPU limit of the proxy (none by default: throttling a proxy adds latency to every call).
    pub const CPU_LIMIT: &str = "portico.dev/proxy-cpu-limit";
    /// Memory request of the proxy, e.g. `64Mi`.
    pub const MEMORY_REQUEST: &str = "portico.dev/proxy-memory-request";
    /// Memory limit of the proxy, e.g. `256Mi`.
    pub const MEMORY_LIMIT: &str = "portico.dev/proxy-memory-limit";
    /// Log filter of the proxy, e.g. `debug`.
    pub const LOG_LEVEL: &str = "portico.dev/proxy-log-level";
    /// Inbound ports that bypass the proxy, comma-separated (e.g. a metrics port scraped in the clear).
    pub const SKIP_INBOUND_PORTS: &str = "portico.dev/skip-inbound-ports";
    /// Outbound destination ports that bypass the proxy, comma-separated (e.g. a database).
    pub const SKIP_OUTBOUND_PORTS: &str = "portico.dev/skip-outbound-ports";
    /// Outbound destination CIDRs that bypass the proxy, comma-separated.
    pub const SKIP_OUTBOUND_CIDRS: &str = "portico.dev/skip-outbound-cidrs";
}

/// How injected proxies look; from the operator's flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectConfig {
    /// Image of `portico-proxy` (both the proxy and `portico-init`).
    pub image: String,
    /// Config server URL the proxy connects to.
    pub control_plane_url: String,
    /// CA certificate(s) (PEM) that verify the config server; passed in an environment variable
    /// because an application namespace holds no object of Portico's to mount it from.
    pub ca_pem: String,
    /// Default log filter of the proxy.
    pub log_level: String,
    /// Default CPU request.
    pub cpu_request: String,
    /// Default memory request.
    pub memory_request: String,
    /// Default memory limit.
    pub memory_limit: String,
    /// The mesh's trust domain: the identity the proxy asks for.
    pub trust_domain: String,
}

impl InjectConfig {
    /// Checks the operator-wide defaults. A bad one would make every injected pod invalid, so
    /// the webhook server refuses to start with it rather than break all pod creation.
    pub fn check(&self) -> Result<(), InjectError> {
        let quantities = [
            ("--proxy-cpu-request", &self.cpu_request),
            ("--proxy-memory-request", &self.memory_request),
            ("--proxy-memory-limit", &self.memory_limit),
        ];
        for (flag, value) in quantities {
            if !is_quantity(value) {
                return Err(InjectError::InvalidFlag {
                    flag,
                    value: value.clone(),
                    reason: "is not a resource quantity (e.g. 100m, 64Mi)",
                });
            }
        }
        if self.log_level.trim().is_empty() || self.log_level.contains(char::is_whitespace) {
            return Err(InjectError::InvalidFlag {
                flag: "--proxy-log-level",
                value: self.log_level.clone(),
                reason: "is not a log filter (e.g. info, debug, portico_proxy=trace)",
            });
        }
        Ok(())
    }
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            image: "ghcr.io/portico-dev/portico-proxy:latest".into(),
            control_plane_url: "https://portico-operator.portico-system.svc:8443".into(),
            ca_pem: String::new(),
            log_level: "info".into(),
            cpu_request: "100m".into(),
            memory_request: "64Mi".into(),
            memory_limit: "256Mi".into(),
            trust_domain: "cluster.local".into(),
        }
    }
}

/// Why a pod cannot be injected. The message names the offending field, since the user sees it
/// in `kubectl`'s output.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    /// An annotation has a value that cannot be used.
    #[error("metadata.annotations[{annotation}]: {value:?} {reason}")]
    InvalidAnnotation {
        /// The annotation key.
        annotation: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An operator flag that shapes injected proxies has an unusable value.
    #[error("{flag}: {value:?} {reason}")]
    InvalidFlag {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A container of the pod declares a port the proxy needs.
    #[error(
        "{field}: port {port} is reserved for the portico proxy (inbound {INBOUND_PORT}, \
         outbound {OUTBOUND_PORT}, admin {ADMIN_PORT}); use another port or annotate the pod \
         {INJECT}: disabled"
    )]
    PortConflict {
        /// JSON path of the port, e.g. `spec.containers[0].ports[1].containerPort`.
        field: String,
        /// The port.
        port: i32,
    },
    /// The pod could not be (de)serialized; a bug or a field this build does not know.
    #[error("pod cannot be serialized: {0}")]
    Serialize(String),
}

/// Whether `pod` should get a proxy: its annotation decides when present, else its namespace's
/// label. Already injected pods and host-network pods (whose traffic redirection would capture
/// the node's traffic) never do.
pub fn wants_proxy(pod: &Pod, namespace_labels: &BTreeMap<String, String>) -> bool {
    if is_injected(pod) {
        return false;
    }
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return false;
    }
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INJECT));
    match annotation.map(String::as_str) {
        Some("enabled") => true,
        Some("disabled") => false,
        _ => namespace_labels.get(INJECT).map(String::as_str) == Some("enabled"),
    }
}

/// Whether deciding about `pod` needs its namespace's labels: not when its own annotation
/// decides, or when it is already injected (which saves the webhook an apiserver call).
pub fn needs_namespace_labels(pod: &Pod) -> bool {
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INJECT))
        .map(String::as_str);
    !is_injected(pod) && !matches!(annotation, Some("enabled" | "disabled"))
}

/// Whether `pod` already carries the proxy (so a re-invocation of the webhook, or a pod spec
/// copied from an injected pod, does not get a second one).
pub fn is_injected(pod: &Pod) -> bool {
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(INJECTED));
    let has_container = pod.spec.as_ref().is_some_and(|s| {
        s.containers.iter().any(|c| c.name == PROXY_CONTAINER)
            || s.init_containers
                .iter()
                .flatten()
                .any(|c| c.name == PROXY_CONTAINER)
    });
    annotated || has_container
}

/// Returns the injected pod, or `None` when `pod` should be admitted unchanged.
pub fn inject(
    pod: &Pod,
    namespace_labels: &BTreeMap<String, String>,
    config: &InjectConfig,
) -> Result<Option<Pod>, InjectError> {
    if !wants_proxy(pod, namespace_labels) {
        return Ok(None);
    }
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let settings = Settings::read(annotations, config)?;
    check_ports(pod)?;

    // Edit the JSON form: the containers are written as the JSON a user would, which keeps them
    // readable, and k8s-openapi checks the result when it is parsed back.
    let mut value = serde_json::to_value(pod).map_err(|e| InjectError::Serialize(e.to_string()))?;
    let spec = value
        .as_object_mut()
        .map(|o| o.entry("spec").or_insert_with(|| json!({})));
    let Some(Value::Object(spec)) = spec else {
        return Err(InjectError::Serialize("spec is not an object".into()));
    };
    let init = spec.entry("initContainers").or_insert_with(|| json!([]));
    if let Value::Array(init) = init {
        init.insert(0, proxy_container(config, &settings));
        init.insert(0, init_container(config, &settings));
    }
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    if let Value::Array(volumes) = volumes {
        volumes.push(token_volume());
        volumes.push(init_run_volume());
    }
    let mut injected: Pod =
        serde_json::from_value(value).map_err(|e| InjectError::Serialize(e.to_string()))?;
    injected
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(INJECTED.into(), "true".into());
    Ok(Some(injected))
}

/// Refuses pods whose containers declare one of the proxy's ports: the proxy would fail to bind
/// (or the app would), and the pod would crash-loop far from the cause.
fn check_ports(pod: &Pod) -> Result<(), InjectError> {
    let Some(spec) = &pod.spec else {
        return Ok(());
    };
    let lists = [
        ("containers", Some(&spec.containers)),
        ("initContainers", spec.init_containers.as_ref()),
    ];
    for (list, containers) in lists {
        for (c, container) in containers.into_iter().flatten().enumerate() {
            for (p, port) in container.ports.iter().flatten().enumerate() {
                let taken = [INBOUND_PORT, OUTBOUND_PORT, ADMIN_PORT]
                    .iter()
                    .any(|reserved| i32::from(*reserved) == port.container_port);
                if taken {
                    return Err(InjectError::PortConflict {
                        field: format!("spec.{list}[{c}].ports[{p}].containerPort"),
                        port: port.container_port,
                    });
                }
            }
        }
    }
    Ok(())
}

/// The JSONPatch that turns `original` into `injected`.
pub fn patch(original: &Pod, injected: &Pod) -> Result<json_patch::Patch, InjectError> {
    let from = serde_json::to_value(original).map_err(|e| InjectError::Serialize(e.to_string()))?;
    let to = serde_json::to_value(injected).map_err(|e| InjectError::Serialize(e.to_string()))?;
    Ok(json_patch::diff(&from, &to))
}

/// The values of one injection after the pod's annotations are applied.
#[derive(Debug)]
struct Settings {
    cpu_request: String,
    cpu_limit: Option<String>,
    memory_request: String,
    memory_limit: String,
    log_level: String,
    skip_inbound_ports: Vec<u16>,
    skip_outbound_ports: Vec<u16>,
    skip_outbound_cidrs: Vec<String>,
}

impl Settings {
    fn read(
        annotations: &BTreeMap<String, String>,
        config: &InjectConfig,
    ) -> Result<Self, InjectError> {
        let quantity = |key: &'static str, default: &str| -> Result<String, InjectError> {
            match annotations.get(key) {
                None => Ok(default.to_owned()),
                Some(v) if is_quantity(v) => Ok(v.clone()),
                Some(v) => Err(InjectError::InvalidAnnotation {
                    annotation: key,
                    value: v.clone(),
                    reason: "is not a resource quantity (e.g. 100m, 64Mi)",
                }),
            }
        };
        let cpu_limit = match annotations.get(annotations::CPU_LIMIT) {
            None => None,
            Some(_) => Some(quantity(annotations::CPU_LIMIT, "")?),
        };
        let log_level = match annotations.get(annotations::LOG_LEVEL) {
            Some(v) if v.trim().is_empty() || v.contains(char::is_whitespace) => {
                return Err(InjectError::InvalidAnnotation {
                    annotation: annotations::LOG_LEVEL,
                    value: v.clone(),
                    reason: "is not a log filter (e.g. info, debug, portico_proxy=trace)",
                });
            }
            Some(v) => v.clone(),
            None => config.log_level.clone(),
        };
        Ok(Self {
            cpu_request: quantity(annotations::CPU_REQUEST, &config.cpu_request)?,
            cpu_limit,
            memory_request: quantity(annotations::MEMORY_REQUEST, &config.memory_request)?,
            memory_limit: quantity(annotations::MEMORY_LIMIT, &config.memory_limit)?,
            log_level,
            skip_inbound_ports: ports(annotations, annotations::SKIP_INBOUND_PORTS)?,
            skip_outbound_ports: ports(annotations, annotations::SKIP_OUTBOUND_PORTS)?,
            skip_outbound_cidrs: cidrs(annotations, annotations::SKIP_OUTBOUND_CIDRS)?,
        })
    }
}

/// Splits a comma-separated annotation, ignoring blanks (`"80, 443,"` is fine).
fn list<'a>(annotations: &'a BTreeMap<String, String>, key: &str) -> Vec<&'a str> {
    annotations
        .get(key)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn ports(
    annotations: &BTreeMap<String, String>,
    key: &'static str,
) -> Result<Vec<u16>, InjectError> {
    list(annotations, key)
        .into_iter()
        .map(|p| match p.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(InjectError::InvalidAnnotation {
                annotation: key,
                value: annotations[key].clone(),
                reason: "is not a comma-separated list of ports (1-65535)",
            }),
        })
        .collect()
}

fn cidrs(
    annotations: &BTreeMap<String, String>,
    key: &'static str,
) -> Result<Vec<String>, InjectError> {
    list(annotations, key)
        .into_iter()
        .map(|c| {
            if is_cidr(c) {
                Ok(c.to_owned())
            } else {
                Err(InjectError::InvalidAnnotation {
                    annotation: key,
                    value: annotations[key].clone(),
                    reason: "is not a comma-separated list of CIDRs (e.g. 10.0.0.0/8)",
                })
            }
        })
        .collect()
}

fn is_cidr(s: &str) -> bool {
    let Some((addr, len)) = s.split_once('/') else {
        return false;
    };
    let Ok(len) = len.parse::<u8>() else {
        return false;
    };
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => len <= 32,
        Ok(std::net::IpAddr::V6(_)) => len <= 128,
        Err(_) => false,
    }
}

/// A Kubernetes resource quantity: a decimal number and an optional suffix. Checked here so a
/// typo names the annotation, rather than the apiserver naming a field of an injected container
/// the user never wrote.
fn is_quantity(s: &str) -> bool {
    const SUFFIXES: [&str; 14] = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let number_ok = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.parse::<f64>().is_ok();
    number_ok && SUFFIXES.contains(&suffix)
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

fn proxy_container(config: &InjectConfig, settings: &Settings) -> Value {
    let mut resources = json!({
        "requests": {"cpu": settings.cpu_request, "memory": settings.memory_request},
        "limits": {"memory": settings.memory_limit},
    });
    if let Some(cpu) = &settings.cpu_limit {
        resources["limits"]["cpu"] = json!(cpu);
    }
    json!({
        "name": PROXY_CONTAINER,
        "image": config.image,
        "restartPolicy": "Always",
        "args": [
            "sidecar",
            "--control-plane", config.control_plane_url,
            "--token-file", format!("{TOKEN_DIR}/token"),
            "--inbound-addr", format!("0.0.0.0:{INBOUND_PORT}"),
            "--outbound-addr", format!("127.0.0.1:{OUTBOUND_PORT}"),
            "--admin-addr", format!("0.0.0.0:{ADMIN_PORT}"),
            "--log-level", settings.log_level,
        ],
        "env": [
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("POD_IP", "status.podIP"),
            field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
            {"name": "PORTICO_CONTROL_PLANE_CA", "value": config.ca_pem},
            {"name": "PORTICO_TRUST_DOMAIN", "value": config.trust_domain},
            {"name": "PORTICO_LOG", "value": settings.log_level},
        ],
        "ports": [
            {"name": "portico-inbound", "containerPort": INBOUND_PORT, "protocol": "TCP"},
            {"name": "portico-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        // The kubelet starts the pod's next container only once this probe passed: the app
        // never sends a request through a proxy that has no config yet.
        "startupProbe": {
            "httpGet": {"path": "/ready", "port": ADMIN_PORT},
            "periodSeconds": 1,
            "failureThreshold": 120,
        },
        "readinessProbe": {"httpGet": {"path": "/ready", "port": ADMIN_PORT}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/live", "port": ADMIN_PORT}, "periodSeconds": 10},
        "resources": resources,
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}],
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": PROXY_UID,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
        },
    })
}

fn init_container(config: &InjectConfig, settings: &Settings) -> Value {
    // `portico-proxy init` never redirects the admin port (the kubelet's probes must reach the
    // proxy itself); the skip flags add the pod's own exceptions, and are left out when empty.
    let mut args: Vec<String> = [
        "init",
        "--inbound-port",
        &INBOUND_PORT.to_string(),
        "--outbound-port",
        &OUTBOUND_PORT.to_string(),
        "--proxy-uid",
        &PROXY_UID.to_string(),
        "--admin-port",
        &ADMIN_PORT.to_string(),
    ]
    .map(String::from)
    .into();
    let skips = [
        ("--skip-inbound-ports", join(&settings.skip_inbound_ports)),
        ("--skip-outbound-ports", join(&settings.skip_outbound_ports)),
        ("--skip-outbound-cidrs", join(&settings.skip_outbound_cidrs)),
    ];
    for (flag, value) in skips {
        if !value.is_empty() {
            args.extend([flag.to_owned(), value]);
        }
    }
    json!({
        "name": INIT_CONTAINER,
        "image": config.image,
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"memory": "64Mi"},
        },
        // iptables needs root and NET_ADMIN/NET_RAW, nothing else; the rules outlive the
        // container, so this privilege ends when it exits.
        "securityContext": {
            "runAsNonRoot": false,
            "runAsUser": 0,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
        "volumeMounts": [{"name": INIT_RUN_VOLUME, "mountPath": "/run"}],
    })
}

fn token_volume() -> Value {
    json!({
        "name": TOKEN_VOLUME,
        "projected": {
            // The pod's containers run as different users (root for portico-init, 2102 for the
            // proxy, the app's own), so the kubelet cannot hand the token to one owner: make it
            // readable. Only the proxy mounts the volume, so no other container sees it.
            "defaultMode": 0o444,
            "sources": [{"serviceAccountToken": {
                "audience": crate::auth::AUDIENCE,
                "expirationSeconds": 3600,
                "path": "token",
            }}],
        },
    })
}

/// A scratch `/run` for `portico-init`: iptables takes its lock file there, and the container's
/// root file system is read-only.
fn init_run_volume() -> Value {
    json!({"name": INIT_RUN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}})
}

#[cfg(test)]
mod tests;

//! The admission webhooks, served over HTTPS by every operator replica (the apiserver calls
//! whichever replica its Service picks; nothing here needs the Lease).
//!
//! ```text
//!  POST /inject    mutating, Pods CREATE          → JSONPatch adding the sidecar ([`inject`])
//!  POST /validate  validating, portico.dev CRs    → allowed, or denied naming the field
//!                  CREATE/UPDATE                    ([`validate`])
//! ```
//!
//! Both speak `admission.k8s.io/v1` AdmissionReview. Which objects reach them is decided by the
//! chart's webhook configurations; the decisions that need the object or the cluster (opt-in by
//! pod annotation, the namespace's label, Secret types) are made here.
//!
//! Failure modes are deliberate. The injector admits a pod it cannot read unchanged, with a
//! warning, because blocking every pod of a cluster on a Portico bug is worse than one unmeshed
//! pod; `--inject-fail-closed` reverses that for clusters where an unmeshed pod is the bigger
//! risk. The validator never rejects because it could not look something up: a missing Secret is
//! a status condition, not an admission error.

pub mod inject;
mod tls;
pub mod validate;

pub use tls::{ReloadingCert, tls_acceptor};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::Api;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::response::Status;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use inject::{InjectConfig, InjectError};
use validate::FieldError;

/// Largest AdmissionReview accepted: the apiserver's own object limit is 3 MiB, and a review
/// carries the object (and on UPDATE the old object) once each.
const MAX_REVIEW_BYTES: usize = 8 << 20;

/// How long a lookup (Namespace, Secret) may take: the chart gives the webhooks 5 s, and the
/// answer (a warning rather than a timeout) must arrive before that.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// The webhook flags of the operator (flattened into its `Args`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct AdmissionArgs {
    /// Webhook server address (HTTPS): `/inject` and `/validate`.
    // `Default` (embedding the operator, e.g. in tests) leaves the webhook server off; the
    // command line always has an address.
    #[arg(long, env = "PORTICO_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    pub webhook_addr: Option<SocketAddr>,
    /// Webhook server certificate chain (PEM); default: `--config-tls-cert`.
    #[arg(long, env = "PORTICO_WEBHOOK_TLS_CERT")]
    pub webhook_tls_cert: Option<PathBuf>,
    /// Webhook server private key (PEM); default: `--config-tls-key`.
    #[arg(long, env = "PORTICO_WEBHOOK_TLS_KEY")]
    pub webhook_tls_key: Option<PathBuf>,
    /// Log filter of injected proxies (pod annotation `portico.dev/proxy-log-level` overrides).
    #[arg(long, env = "PORTICO_PROXY_LOG_LEVEL", default_value = "info")]
    pub proxy_log_level: String,
    /// CPU request of injected proxies (annotation `portico.dev/proxy-cpu-request` overrides).
    #[arg(long, env = "PORTICO_PROXY_CPU_REQUEST", default_value = "100m")]
    pub proxy_cpu_request: String,
    /// Memory request of injected proxies (annotation `portico.dev/proxy-memory-request`
    /// overrides).
    #[arg(long, env = "PORTICO_PROXY_MEMORY_REQUEST", default_value = "64Mi")]
    pub proxy_memory_request: String,
    /// Memory limit of injected proxies (annotation `portico.dev/proxy-memory-limit` overrides).
    #[arg(long, env = "PORTICO_PROXY_MEMORY_LIMIT", default_value = "256Mi")]
    pub proxy_memory_limit: String,
    /// Deny pods the injector cannot process instead of admitting them without a proxy.
    #[arg(long, env = "PORTICO_INJECT_FAIL_CLOSED")]
    pub inject_fail_closed: bool,
}

/// Why the webhook server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// The certificate or key file could not be read or parsed.
    #[error("webhook TLS: reading {path}: {message}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The certificate and key do not make a usable TLS configuration.
    #[error("webhook TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The listening socket failed.
    #[error("webhook server: {0}")]
    Io(#[from] std::io::Error),
    /// The injection settings are unusable.
    #[error("sidecar injection: {0}")]
    Inject(#[from] InjectError),
}

/// What the webhooks need to decide.
#[derive(Clone)]
pub struct Webhooks {
    /// For Namespace labels and Secret types.
    pub client: kube::Client,
    /// The proxy that gets injected.
    pub inject: InjectConfig,
    /// Deny pods that cannot be processed rather than admit them unchanged.
    pub fail_closed: bool,
}

impl Webhooks {
    /// Accepts connections on `listener` until the future is dropped (which also ends every
    /// connection: they live in a `JoinSet` owned by this future). Fails at once when the
    /// injection settings are unusable; afterwards a bad connection is logged and dropped.
    pub async fn serve(
        self,
        listener: TcpListener,
        tls: TlsAcceptor,
    ) -> Result<(), AdmissionError> {
        self.inject.check()?;
        let this = Arc::new(self);
        let builder = auto::Builder::new(TokioExecutor::new());
        match crate::server::serve_tls(listener, tls, "webhook", builder, move |req, _peer| {
            let this = this.clone();
            async move { this.handle(req).await }
        })
        .await {}
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        if req.method() != Method::POST || !matches!(path.as_str(), "/inject" | "/validate") {
            return reply(
                StatusCode::NOT_FOUND,
                Bytes::from_static(b"no such webhook\n"),
            );
        }
        let body = match Limited::new(req.into_body(), MAX_REVIEW_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    Bytes::from(format!("reading the request: {e}\n")),
                );
            }
        };
        let response = match parse_review(&body) {
            // Without a uid the apiserver cannot use any answer; a 400 makes it apply the
            // webhook's failurePolicy, which is the right call for a request nobody can read.
            Err(reason) => {
                let response = AdmissionResponse::invalid(reason);
                return reply(StatusCode::BAD_REQUEST, to_json(&response.into_review()));
            }
            Ok(request) if path == "/inject" => self.mutate(&request).await,
            Ok(request) => self.validate(&request).await,
        };
        reply(StatusCode::OK, to_json(&response.into_review()))
    }

    /// The injector's answer for one request.
    pub async fn mutate(&self, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let response = AdmissionResponse::from(request);
        // A running pod's containers cannot change: only new pods are injected, whatever
        // operations a webhook configuration forwards.
        if request.operation != Operation::Create {
            return response;
        }
        let Some(object) = &request.object else {
            return response;
        };
        let pod: Pod = match serde_json::to_value(object).and_then(serde_json::from_value) {
            Ok(pod) => pod,
            Err(e) => {
                return self.cannot_process(
                    request,
                    response,
                    &format!("pod cannot be decoded: {e}"),
                );
            }
        };
        let namespace = request
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_default();
        let name = pod
            .metadata
            .name
            .clone()
            .or_else(|| pod.metadata.generate_name.clone())
            .unwrap_or_default();
        let labels = if !inject::needs_namespace_labels(&pod) {
            Ok(BTreeMap::new())
        } else {
            self.namespace_labels(&namespace).await
        };
        let labels = match labels {
            Ok(labels) => labels,
            Err(e) => {
                return self.cannot_process(
                    request,
                    response,
                    &format!("reading the labels of namespace {namespace:?}: {e}"),
                );
            }
        };
        match inject::inject(&pod, &labels, &self.inject) {
            Ok(None) => response,
            Ok(Some(injected)) => {
                let patched = inject::patch(&pod, &injected)
                    .map_err(|e| e.to_string())
                    .and_then(|p| response.clone().with_patch(p).map_err(|e| e.to_string()));
                match patched {
                    Ok(patched) => {
                        tracing::info!(pod = %format!("{namespace}/{name}"), "injecting the proxy");
                        patched
                    }
                    Err(e) => self.cannot_process(request, response, &e),
                }
            }
            Err(e @ (InjectError::InvalidAnnotation { .. } | InjectError::PortConflict { .. })) => {
                tracing::info!(pod = %format!("{namespace}/{name}"), error = %e, "pod denied");
                deny(response, &format!("portico sidecar injection: {e}"))
            }
            Err(e) => self.cannot_process(request, response, &e.to_string()),
        }
    }

    /// A pod the injector cannot process: admitted unchanged with a warning, or denied when
    /// failing closed.
    fn cannot_process(
        &self,
        request: &AdmissionRequest<DynamicObject>,
        mut response: AdmissionResponse,
        reason: &str,
    ) -> AdmissionResponse {
        let pod = format!(
            "{}/{}",
            request.namespace.as_deref().unwrap_or_default(),
            request.name
        );
        tracing::warn!(%pod, %reason, fail_closed = self.fail_closed, "sidecar injection failed");
        if self.fail_closed {
            deny(
                response,
                &format!("portico sidecar injection failed (--inject-fail-closed): {reason}"),
            )
        } else {
            response.warnings = Some(vec![format!(
                "portico: pod admitted without a sidecar: {reason}"
            )]);
            response
        }
    }

    async fn namespace_labels(&self, namespace: &str) -> Result<BTreeMap<String, String>, String> {
        let api = Api::<Namespace>::all(self.client.clone());
        match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_metadata_opt(namespace)).await {
            Err(_) => Err("timed out".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(ns)) => Ok(ns.and_then(|ns| ns.metadata.labels).unwrap_or_default()),
        }
    }

    /// The validator's answer for one request.
    pub async fn validate(&self, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let response = AdmissionResponse::from(request);
        let Some(object) = &request.object else {
            return response;
        };
        let namespace = request.namespace.clone().unwrap_or_default();
        let spec = object.data.get("spec").cloned().unwrap_or_default();
        let kind = request.kind.kind.as_str();
        let decoded = match kind {
            "Route" => serde_json::from_value::<portico_api::RouteSpec>(spec).map(|spec| {
                (
                    validate::route_errors(&spec),
                    validate::route_secret_refs(&spec, &namespace),
                )
            }),
            "Gateway" => serde_json::from_value::<portico_api::GatewaySpec>(spec)
                .map(|spec| (Vec::new(), validate::secret_refs(&spec, &namespace))),
            "ServicePolicy" => serde_json::from_value::<portico_api::ServicePolicySpec>(spec)
                .map(|_| (Vec::new(), Vec::new())),
            _ => return response,
        };
        let (mut errors, refs) = match decoded {
            Ok(x) => x,
            Err(e) => {
                // The schema already passed; a spec this build cannot read is a version skew
                // between CRDs and operator, not the user's mistake.
                let mut response = response;
                response.warnings = Some(vec![format!(
                    "portico: {} not validated: spec cannot be decoded: {e}",
                    request.kind.kind
                )]);
                return response;
            }
        };
        let mut warnings = Vec::new();
        for reference in &refs {
            match self.secret_type(reference).await {
                Ok(Some(actual)) => {
                    errors.extend(validate::check_secret_type(reference, actual.as_deref()))
                }
                Ok(None) => {}
                Err(e) => warnings.push(format!(
                    "portico: {}: Secret {}/{} not checked: {e}",
                    reference.field, reference.namespace, reference.name
                )),
            }
        }
        let mut response = response;
        if !warnings.is_empty() {
            response.warnings = Some(warnings);
        }
        if errors.is_empty() {
            return response;
        }
        let message = errors
            .iter()
            .map(FieldError::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        tracing::info!(
            kind = %request.kind.kind,
            object = %format!("{namespace}/{}", request.name),
            %message,
            "denied"
        );
        deny(response, &message)
    }

    /// The referenced Secret's type: `Ok(None)` when it does not exist, `Ok(Some(None))` when it
    /// has no type.
    async fn secret_type(
        &self,
        reference: &validate::SecretRef,
    ) -> Result<Option<Option<String>>, String> {
        let api = Api::<Secret>::namespaced(self.client.clone(), &reference.namespace);
        match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(&reference.name)).await {
            Err(_) => Err("timed out".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(secret)) => Ok(secret.map(|s| s.type_)),
        }
    }
}

/// Decodes an AdmissionReview, or says why not.
fn parse_review(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, String> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    review
        .try_into()
        .map_err(|_| "the AdmissionReview has no request".to_owned())
}

/// Denies with `message`, as the apiserver's own validation does (422 Invalid), so clients show
/// it like any other validation error.
fn deny(response: AdmissionResponse, message: &str) -> AdmissionResponse {
    let mut response = response.deny(message);
    response.result = Status::failure(message, "Invalid").with_code(422);
    response
}

fn to_json(review: &AdmissionReview<DynamicObject>) -> Bytes {
    Bytes::from(serde_json::to_vec(review).unwrap_or_default())
}

fn reply(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn review(object: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop", "operation": "CREATE", "userInfo": {},
                "object": object,
            }
        }))
        .expect("json")
    }

    /// Webhooks whose apiserver refuses every connection: lookups fail fast.
    fn webhooks(fail_closed: bool) -> Webhooks {
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("a url"));
        Webhooks {
            client: kube::Client::try_from(config).expect("a client"),
            inject: InjectConfig::default(),
            fail_closed,
        }
    }

    fn pod_review(annotations: serde_json::Value, containers: serde_json::Value) -> Vec<u8> {
        review(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "annotations": annotations},
            "spec": {"containers": containers},
        }))
    }

    #[tokio::test]
    async fn undecodable_pods_are_admitted_with_a_warning_or_denied_when_failing_closed() {
        let body = pod_review(json!({}), json!("not a list"));
        let request = parse_review(&body).expect("a request");
        let open = webhooks(false).mutate(&request).await;
        assert!(open.allowed);
        assert!(open.patch.is_none());
        let warnings = open.warnings.expect("a warning");
        assert!(
            warnings[0].contains("pod cannot be decoded"),
            "{warnings:?}"
        );
        let closed = webhooks(true).mutate(&request).await;
        assert!(!closed.allowed);
        assert!(
            closed.result.message.contains("--inject-fail-closed"),
            "{}",
            closed.result.message
        );
    }

    #[tokio::test]
    async fn an_unreadable_namespace_admits_unchanged_with_a_warning() {
        let body = pod_review(json!({}), json!([{"name": "app", "image": "app"}]));
        let request = parse_review(&body).expect("a request");
        let response = webhooks(false).mutate(&request).await;
        assert!(response.allowed && response.patch.is_none());
        assert!(response.warnings.is_some());
    }

    #[tokio::test]
    async fn an_annotated_pod_is_patched_without_asking_the_apiserver() {
        let body = pod_review(
            json!({"portico.dev/inject": "enabled"}),
            json!([{"name": "app", "image": "app"}]),
        );
        let request = parse_review(&body).expect("a request");
        let response = webhooks(true).mutate(&request).await;
        assert!(response.allowed);
        let patch: serde_json::Value =
            serde_json::from_slice(response.patch.as_ref().expect("a patch")).expect("json");
        assert!(patch.to_string().contains("portico-proxy"), "{patch}");
        let json = serde_json::to_value(response_review(response)).expect("json");
        assert_eq!(json["response"]["patchType"], json!("JSONPatch"));
    }

    #[tokio::test]
    async fn a_bad_annotation_is_denied_naming_it() {
        let body = pod_review(
            json!({"portico.dev/inject": "enabled", "portico.dev/skip-outbound-ports": "db"}),
            json!([{"name": "app", "image": "app"}]),
        );
        let request = parse_review(&body).expect("a request");
        let response = webhooks(false).mutate(&request).await;
        assert!(!response.allowed);
        assert!(
            response
                .result
                .message
                .contains("metadata.annotations[portico.dev/skip-outbound-ports]"),
            "{}",
            response.result.message
        );
    }

    fn response_review(response: AdmissionResponse) -> AdmissionReview<DynamicObject> {
        response.into_review()
    }

    #[test]
    fn reviews_parse_and_garbage_does_not() {
        let request = parse_review(&review(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "image": "a"}]}
        })))
        .expect("a request");
        assert_eq!(request.uid, "u1");
        let reason =
            parse_review(br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#)
                .expect_err("no request");
        assert!(reason.contains("no request"), "{reason}");
        assert!(parse_review(b"nonsense").is_err());
    }

    #[test]
    fn denials_are_422_invalid_with_the_message() {
        let request = parse_review(&review(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}}),
        ))
        .expect("a request");
        let response = deny(AdmissionResponse::from(&request), "spec.x: bad");
        let json = serde_json::to_value(response.into_review()).expect("json");
        assert_eq!(json["response"]["allowed"], json!(false));
        assert_eq!(json["response"]["uid"], json!("u1"));
        assert_eq!(json["response"]["status"]["code"], json!(422));
        assert_eq!(json["response"]["status"]["message"], json!("spec.x: bad"));
    }
}

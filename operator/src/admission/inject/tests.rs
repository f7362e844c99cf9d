//! Unit tests of [`super`]: which pods are injected, and what they get.

use super::*;
use k8s_openapi::api::core::v1::Container;

fn mk_pod(annotations: &[(&str, &str)]) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "web", "namespace": "shop",
            "annotations": annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        },
        "spec": {
            "serviceAccountName": "web",
            "initContainers": [{"name": "migrate", "image": "migrate:1"}],
            "containers": [{"name": "app", "image": "app:1"}],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }
    }))
    .expect("a valid pod")
}

fn labels(inject: Option<&str>) -> BTreeMap<String, String> {
    inject
        .map(|v| BTreeMap::from([(INJECT.to_owned(), v.to_owned())]))
        .unwrap_or_default()
}

fn init_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .map(|c| c.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

fn proxy(pod: &Pod) -> Container {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == PROXY_CONTAINER))
        .cloned()
        .expect("a proxy container")
}

fn env(c: &Container, name: &str) -> Option<String> {
    c.env.iter().flatten().find(|e| e.name == name).map(|e| {
        e.value.clone().unwrap_or_else(|| {
            e.value_from
                .as_ref()
                .and_then(|f| f.field_ref.as_ref())
                .map(|f| format!("field:{}", f.field_path))
                .unwrap_or_default()
        })
    })
}

#[test]
fn opt_in_and_opt_out_table() {
    // (case, namespace label, pod annotations, injected?)
    type Case<'a> = (&'a str, Option<&'a str>, &'a [(&'a str, &'a str)], bool);
    let cases: &[Case<'_>] = &[
        ("namespace label enabled", Some("enabled"), &[], true),
        ("no label, no annotation", None, &[], false),
        ("namespace label disabled", Some("disabled"), &[], false),
        (
            "annotation enabled without label",
            None,
            &[(INJECT, "enabled")],
            true,
        ),
        (
            "annotation disabled opts out of a labelled namespace",
            Some("enabled"),
            &[(INJECT, "disabled")],
            false,
        ),
        (
            "already annotated injected",
            Some("enabled"),
            &[(INJECTED, "true")],
            false,
        ),
    ];
    let config = InjectConfig::default();
    for (name, label, annotations, want) in cases {
        let pod = mk_pod(annotations);
        let got = inject(&pod, &labels(*label), &config).expect(name);
        assert_eq!(got.is_some(), *want, "{name}");
    }
}

#[test]
fn host_network_pods_are_not_injected() {
    let mut pod = mk_pod(&[(INJECT, "enabled")]);
    pod.spec.as_mut().expect("spec").host_network = Some(true);
    assert_eq!(
        inject(&pod, &labels(None), &InjectConfig::default()),
        Ok(None)
    );
}

#[test]
fn injected_pod_has_native_sidecar_first_after_init() {
    let pod = mk_pod(&[]);
    let injected = inject(&pod, &labels(Some("enabled")), &InjectConfig::default())
        .expect("inject")
        .expect("injected");
    assert_eq!(
        init_names(&injected),
        [INIT_CONTAINER, PROXY_CONTAINER, "migrate"]
    );
    let proxy = proxy(&injected);
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    let probe = proxy.startup_probe.clone().expect("startup probe");
    let get = probe.http_get.expect("httpGet");
    assert_eq!(get.path.as_deref(), Some("/ready"));
    assert_eq!(
        get.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(4191)
    );
    let sc = proxy.security_context.clone().expect("securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(2102));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_owned()])
    );
    assert_eq!(
        env(&proxy, "SERVICE_ACCOUNT").as_deref(),
        Some("field:spec.serviceAccountName")
    );
    assert_eq!(env(&proxy, "POD_IP").as_deref(), Some("field:status.podIP"));
    let mount = &proxy.volume_mounts.clone().expect("mounts")[0];
    assert_eq!(
        (
            mount.name.as_str(),
            mount.mount_path.as_str(),
            mount.read_only
        ),
        (TOKEN_VOLUME, TOKEN_DIR, Some(true))
    );
    let spec = injected.spec.as_ref().expect("spec");
    let volumes = spec.volumes.as_ref().expect("volumes");
    let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["data", TOKEN_VOLUME, INIT_RUN_VOLUME]);
    assert_eq!(
        volumes[1].projected.as_ref().and_then(|p| p.default_mode),
        Some(0o444)
    );
    let token = volumes[1]
        .projected
        .as_ref()
        .expect("projected")
        .sources
        .as_ref()
        .expect("sources")[0]
        .service_account_token
        .as_ref()
        .expect("token");
    assert_eq!(
        (token.audience.as_deref(), token.expiration_seconds),
        (Some("portico"), Some(3600))
    );
    let init = &spec.init_containers.as_ref().expect("init")[0];
    let caps = init
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .expect("capabilities");
    assert_eq!(
        caps.add,
        Some(vec!["NET_ADMIN".to_owned(), "NET_RAW".to_owned()])
    );
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(
        injected
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(INJECTED))
            .map(String::as_str),
        Some("true")
    );
}

#[test]
fn injecting_twice_is_a_no_op() {
    let config = InjectConfig::default();
    let once = inject(&mk_pod(&[]), &labels(Some("enabled")), &config)
        .expect("inject")
        .expect("injected");
    assert_eq!(inject(&once, &labels(Some("enabled")), &config), Ok(None));
    // A copy of an injected pod's spec without the annotation still has the proxy.
    let mut copy = once.clone();
    copy.metadata.annotations = None;
    assert_eq!(inject(&copy, &labels(Some("enabled")), &config), Ok(None));
}

#[test]
fn annotations_override_resources_log_level_and_skips() {
    let pod = mk_pod(&[
        (annotations::CPU_REQUEST, "250m"),
        (annotations::MEMORY_LIMIT, "1Gi"),
        (annotations::CPU_LIMIT, "2"),
        (annotations::LOG_LEVEL, "debug"),
        (annotations::SKIP_INBOUND_PORTS, "9090, 9091"),
        (annotations::SKIP_OUTBOUND_PORTS, "5432"),
        (annotations::SKIP_OUTBOUND_CIDRS, "10.0.0.0/8,fd00::/8"),
    ]);
    let injected = inject(&pod, &labels(Some("enabled")), &InjectConfig::default())
        .expect("inject")
        .expect("injected");
    let proxy = proxy(&injected);
    let resources =
        serde_json::to_value(proxy.resources.clone().expect("resources")).expect("json");
    assert_eq!(
        resources,
        json!({"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}})
    );
    assert_eq!(env(&proxy, "PORTICO_LOG").as_deref(), Some("debug"));
    let args = injected
        .spec
        .as_ref()
        .expect("spec")
        .init_containers
        .as_ref()
        .expect("init")[0]
        .args
        .clone()
        .expect("args")
        .join(" ");
    assert!(args.contains("--admin-port 4191"), "{args}");
    assert!(args.contains("--skip-inbound-ports 9090,9091"), "{args}");
    assert!(args.contains("--skip-outbound-ports 5432"), "{args}");
    assert!(
        args.contains("--skip-outbound-cidrs 10.0.0.0/8,fd00::/8"),
        "{args}"
    );
}

#[test]
fn init_leaves_out_empty_skip_flags() {
    let injected = inject(
        &mk_pod(&[]),
        &labels(Some("enabled")),
        &InjectConfig::default(),
    )
    .expect("inject")
    .expect("injected");
    let args = injected
        .spec
        .as_ref()
        .expect("spec")
        .init_containers
        .as_ref()
        .expect("init")[0]
        .args
        .clone()
        .expect("args");
    assert_eq!(
        args.join(" "),
        "init --inbound-port 4143 --outbound-port 4140 --proxy-uid 2102 --admin-port 4191"
    );
}

#[test]
fn bad_annotations_are_named_in_the_error() {
    let cases = [
        (annotations::SKIP_INBOUND_PORTS, "80,http"),
        (annotations::SKIP_OUTBOUND_PORTS, "70000"),
        (annotations::SKIP_OUTBOUND_CIDRS, "10.0.0.0"),
        (annotations::MEMORY_LIMIT, "lots"),
        (annotations::LOG_LEVEL, " "),
    ];
    for (key, value) in cases {
        let err = inject(
            &mk_pod(&[(key, value)]),
            &labels(Some("enabled")),
            &InjectConfig::default(),
        )
        .expect_err(key);
        assert!(
            err.to_string()
                .starts_with(&format!("metadata.annotations[{key}]")),
            "{err}"
        );
    }
}

#[test]
fn a_container_port_taken_by_the_proxy_is_refused() {
    let mut pod = mk_pod(&[]);
    pod.spec.as_mut().expect("spec").containers[0].ports = Some(vec![
        serde_json::from_value(json!({"containerPort": 8080})).expect("port"),
        serde_json::from_value(json!({"containerPort": 4191})).expect("port"),
    ]);
    let err =
        inject(&pod, &labels(Some("enabled")), &InjectConfig::default()).expect_err("a conflict");
    assert!(
        err.to_string()
            .starts_with("spec.containers[0].ports[1].containerPort: port 4191 is reserved"),
        "{err}"
    );
}

#[test]
fn bad_flags_are_refused_before_any_pod_sees_them() {
    assert_eq!(InjectConfig::default().check(), Ok(()));
    let bad = InjectConfig {
        memory_limit: "256MB".into(),
        ..InjectConfig::default()
    };
    let err = bad.check().expect_err("a bad quantity");
    assert!(err.to_string().starts_with("--proxy-memory-limit"), "{err}");
}

#[test]
fn quantities() {
    for ok in ["100m", "1", "0.5", "64Mi", "1Gi", "2k"] {
        assert!(is_quantity(ok), "{ok}");
    }
    for bad in ["", "m", "1.2.3", "64MB", "-1", "lots"] {
        assert!(!is_quantity(bad), "{bad}");
    }
}

#[test]
fn patch_turns_the_pod_into_the_injected_pod() {
    for pod in [
        mk_pod(&[]),
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"},
            "spec": {"containers": [{"name": "app", "image": "app:1"}]}
        }))
        .expect("pod"),
    ] {
        let injected = inject(&pod, &labels(Some("enabled")), &InjectConfig::default())
            .expect("inject")
            .expect("injected");
        let ops = patch(&pod, &injected).expect("patch");
        let mut doc = serde_json::to_value(&pod).expect("json");
        json_patch::patch(&mut doc, &ops).expect("patch applies");
        assert_eq!(doc, serde_json::to_value(&injected).expect("json"));
    }
}

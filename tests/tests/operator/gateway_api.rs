//! The Gateway API's own kinds (GatewayClass, Gateway, HTTPRoute) served like Portico's.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::PostParams;
use portico_api::RoutePolicy;
use portico_api::gateway_api::{ApiGateway, GatewayClass, HttpRoute};

use super::health::Nginx;
use super::*;

fn cond<'a>(conds: &'a [Condition], type_: &str) -> Option<(&'a str, &'a str)> {
    conds
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

/// A GatewayClass naming Portico's controller, a Gateway of that class and HTTPRoutes written
/// as the Gateway API documents them: the class is accepted with its supported features, the
/// Gateway's listeners report attached routes (a UDP listener is refused by name), traffic flows
/// to nginx by host, path and header with the route's header edits, an HTTPRoute naming a
/// backend kind Portico cannot use answers 500 with `ResolvedRefs=False InvalidKind`, one with
/// an `ExtensionRef` filter is not accepted, another controller's status entry is kept, and a
/// Gateway of another class is left alone.
pub(super) async fn gateway_api_kinds(ctx: Ctx) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("portico-gwapi-{}", ctx.namespace));
    let _nginx = Nginx::start(
        dir,
        &[("v1", "198.18.65.131:8080"), ("v2", "198.18.65.132:8080")],
    )
    .await?;
    for (name, ip) in [("app-v1", "198.18.65.131"), ("app-v2", "198.18.65.132")] {
        create::<Service>(&ctx, service(name)).await?;
        create::<EndpointSlice>(&ctx, slice(&format!("{name}-1"), name, &[ip])).await?;
    }
    let classes: Api<GatewayClass> = Api::all(ctx.client.clone());
    let ours = format!("portico-{}", ctx.namespace);
    let theirs = format!("other-{}", ctx.namespace);
    for (name, controller) in [
        (&ours, "portico.dev/gateway-controller"),
        (&theirs, "example.com/other"),
    ] {
        let class: GatewayClass = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": name}, "spec": {"controllerName": controller}
        }))?;
        classes.create(&PostParams::default(), &class).await?;
    }
    let port = free_port()?;
    create::<ApiGateway>(
        &ctx,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw"},
            "spec": {"gatewayClassName": ours, "listeners": [
                {"name": "web", "port": port, "protocol": "HTTP"},
                {"name": "dns", "port": 53, "protocol": "UDP"}]}
        }),
    )
    .await?;
    create::<ApiGateway>(
        &ctx,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "not-ours"},
            "spec": {"gatewayClassName": theirs, "listeners": [
                {"name": "web", "port": 80, "protocol": "HTTP"}]}
        }),
    )
    .await?;
    // From the Gateway API's HTTP routing guide: by host and path, a header match for a canary.
    create::<HttpRoute>(
        &ctx,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "app"},
            "spec": {
                "parentRefs": [{"name": "gw"}],
                "hostnames": ["app.example.com"],
                "rules": [
                    {"matches": [{"headers": [{"name": "env", "value": "canary"}]}],
                     "backendRefs": [{"name": "app-v2", "port": 80}]},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                     "filters": [{"type": "ResponseHeaderModifier",
                                  "responseHeaderModifier": {"add": [{"name": "x-served-by", "value": "portico"}]}}],
                     "backendRefs": [{"name": "app-v1", "port": 80}]}
                ]
            }
        }),
    )
    .await?;
    create::<HttpRoute>(
        &ctx,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "bucket"},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["bucket.example.com"],
                     "rules": [{"backendRefs": [{"group": "example.com", "kind": "Bucket", "name": "b"}]}]}
        }),
    )
    .await?;
    create::<HttpRoute>(
        &ctx,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "ext"},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["ext.example.com"],
                     "rules": [{"filters": [{"type": "ExtensionRef",
                                             "extensionRef": {"group": "example.com", "kind": "Thing", "name": "t"}}],
                                "backendRefs": [{"name": "app-v1", "port": 80}]}]}
        }),
    )
    .await?;
    // Another controller already wrote its entry for its own parent.
    let routes: Api<HttpRoute> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let foreign = json!({"parentRef": {"name": "not-ours"}, "controllerName": "example.com/other",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    routes
        .patch_status(
            "app",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"parents": [foreign]}})),
        )
        .await?;

    let op = start_operator(&ctx, "op-a").await?;
    let proxy = start_proxy(&ctx, &op).await?;

    let get = |host: &'static str, headers: &'static str| {
        let addr = proxy.addr;
        async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.write_all(
                format!("GET /x HTTP/1.1\r\nhost: {host}\r\n{headers}connection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
            let mut text = String::new();
            tcp.read_to_string(&mut text).await?;
            anyhow::Ok(text)
        }
    };
    let plain = eventually("the HTTPRoute served", Duration::from_secs(15), || async {
        let text = get("app.example.com", "").await?;
        Ok(text.starts_with("HTTP/1.1 200").then_some(text))
    })
    .await;
    let plain = match plain {
        Ok(p) => p,
        Err(e) => {
            let r = routes.get("app").await?;
            let g = Api::<ApiGateway>::namespaced(ctx.client.clone(), &ctx.namespace)
                .get("gw")
                .await?;
            anyhow::bail!(
                "{e}: routes {:?}\nroute status {:?}\ngw status {:?}",
                proxy.proxy.config().routes,
                r.status,
                g.status
            );
        }
    };
    ensure!(
        plain.ends_with("v1") && plain.to_ascii_lowercase().contains("x-served-by: portico"),
        "{plain}"
    );
    let canary = get("app.example.com", "env: canary\r\n").await?;
    ensure!(canary.ends_with("v2"), "{canary}");
    let bucket = get("bucket.example.com", "").await?;
    ensure!(bucket.starts_with("HTTP/1.1 500"), "{bucket}");
    let ext = get("ext.example.com", "").await?;
    ensure!(
        ext.starts_with("HTTP/1.1 404"),
        "a route not accepted is not served: {ext}"
    );

    // Status: the class, the Gateway and its listeners, each route's entry.
    let class = eventually(
        "the GatewayClass accepted",
        Duration::from_secs(15),
        || async {
            let c = classes.get(&ours).await?;
            Ok(c.status.filter(|s| {
                cond(&s.conditions, "Accepted") == Some(("True", "Accepted"))
                    && s.supported_features.iter().any(|f| f.name == "HTTPRoute")
            }))
        },
    )
    .await?;
    ensure!(class.supported_features.len() > 5, "{class:?}");
    // The CRD's default status (Accepted Unknown, Pending) stays until its controller writes.
    let other = classes.get(&theirs).await?.status.unwrap_or_default();
    ensure!(
        cond(&other.conditions, "Accepted").is_none_or(|c| c == ("Unknown", "Pending")),
        "another controller's class is left alone: {other:?}"
    );
    let gateways: Api<ApiGateway> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let status = eventually(
        "the Gateway's listener status",
        Duration::from_secs(15),
        || async {
            let g = gateways.get("gw").await?;
            Ok(g.status.filter(|s| {
                s.listeners
                    .iter()
                    .any(|l| l.name == "web" && l.attached_routes == 2)
            }))
        },
    )
    .await?;
    ensure!(
        cond(&status.conditions, "Accepted") == Some(("True", "ListenersNotValid")),
        "{status:?}"
    );
    let web = status.listeners.iter().find(|l| l.name == "web").unwrap();
    ensure!(
        cond(&web.conditions, "Accepted") == Some(("True", "Accepted"))
            && cond(&web.conditions, "ResolvedRefs") == Some(("True", "ResolvedRefs"))
            && web.supported_kinds.iter().any(|k| k.kind == "HTTPRoute"),
        "{web:?}"
    );
    let dns = status.listeners.iter().find(|l| l.name == "dns").unwrap();
    ensure!(
        cond(&dns.conditions, "Accepted") == Some(("False", "UnsupportedProtocol")),
        "{dns:?}"
    );
    let other = gateways.get("not-ours").await?.status.unwrap_or_default();
    ensure!(
        cond(&other.conditions, "Accepted").is_none_or(|c| c == ("Unknown", "Pending")),
        "a Gateway of another class is left alone: {other:?}"
    );
    let route_status = |name: &'static str| {
        let routes = routes.clone();
        async move {
            eventually(
                &format!("HTTPRoute {name}'s status"),
                Duration::from_secs(15),
                || async {
                    let r = routes.get(name).await?;
                    Ok(r.status.filter(|s| {
                        s.parents
                            .iter()
                            .any(|p| p.controller_name == "portico.dev/gateway-controller")
                    }))
                },
            )
            .await
        }
    };
    let app = route_status("app").await?;
    ensure!(
        app.parents.len() == 2,
        "the other controller's entry is kept: {app:?}"
    );
    let mine = app
        .parents
        .iter()
        .find(|p| p.controller_name == "portico.dev/gateway-controller")
        .unwrap();
    ensure!(
        mine.parent_ref.name == "gw"
            && cond(&mine.conditions, "Accepted") == Some(("True", "Accepted"))
            && cond(&mine.conditions, "ResolvedRefs") == Some(("True", "ResolvedRefs"))
            && mine
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(1)),
        "{mine:?}"
    );
    let bucket = route_status("bucket").await?;
    ensure!(
        cond(&bucket.parents[0].conditions, "ResolvedRefs") == Some(("False", "InvalidKind")),
        "{bucket:?}"
    );
    let ext = route_status("ext").await?;
    ensure!(
        cond(&ext.parents[0].conditions, "Accepted") == Some(("False", "UnsupportedValue")),
        "{ext:?}"
    );
    for name in [&ours, &theirs] {
        classes.delete(name, &Default::default()).await?;
    }
    Ok(())
}

/// A GatewayClass naming Portico and a Gateway of it on a free port, named `gw`.
async fn portico_gateway(ctx: &Ctx, class: &str) -> anyhow::Result<()> {
    let classes: Api<GatewayClass> = Api::all(ctx.client.clone());
    let gc: GatewayClass = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": class}, "spec": {"controllerName": "portico.dev/gateway-controller"}
    }))?;
    classes.create(&PostParams::default(), &gc).await?;
    create::<ApiGateway>(
        ctx,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw"},
            "spec": {"gatewayClassName": class, "listeners": [
                {"name": "web", "port": free_port()?, "protocol": "HTTP"}]}
        }),
    )
    .await?;
    Ok(())
}

/// `RoutePolicy` attached to Gateway API objects: a policy on one rule (`sectionName`) asks
/// that rule for an API key and limits it (401, 200, 429); a policy on the whole HTTPRoute gives
/// every rule CORS, a cache and a fallback (allowed origin marked, second answer a cache hit, a
/// dead backend masked by the default answer); a policy on the Gateway gives CORS to another
/// route's rules; a later policy on the same route is `Conflicted` and one naming a missing
/// route `TargetNotFound`.
pub(super) async fn route_policies(ctx: Ctx) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("portico-rtpol-{}", ctx.namespace));
    let _nginx = Nginx::start(dir, &[("v1", "198.18.65.141:8080")]).await?;
    create::<Service>(&ctx, service("app")).await?;
    create::<EndpointSlice>(&ctx, slice("app-1", "app", &["198.18.65.141"])).await?;
    // Nothing listens there: every request to it fails to connect.
    create::<Service>(&ctx, service("down")).await?;
    create::<EndpointSlice>(&ctx, slice("down-1", "down", &["198.18.65.149"])).await?;
    super::auth::credential(&ctx, "api-keys", &[("alice", "key-a")]).await?;
    let class = format!("portico-rtpol-{}", ctx.namespace);
    portico_gateway(&ctx, &class).await?;
    let prefix = |p: &str| json!([{"path": {"type": "PathPrefix", "value": p}}]);
    let app = json!([{"name": "app", "port": 80}]);
    create::<HttpRoute>(
        &ctx,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "shop"},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["shop.example.com"], "rules": [
                {"name": "keys", "matches": prefix("/keys"), "backendRefs": app},
                {"name": "open", "matches": prefix("/open"), "backendRefs": app},
                {"name": "down", "matches": prefix("/down"),
                 "backendRefs": [{"name": "down", "port": 80}]}
            ]}
        }),
    )
    .await?;
    create::<HttpRoute>(
        &ctx,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "other"},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["other.example.com"],
                     "rules": [{"backendRefs": app}]}
        }),
    )
    .await?;
    let policy = |name: &str, targets: Value, spec: Value| {
        let mut spec = spec;
        spec["targetRefs"] = targets;
        json!({"apiVersion": "portico.dev/v1alpha1", "kind": "RoutePolicy",
               "metadata": {"name": name}, "spec": spec})
    };
    let target = |kind: &str, name: &str| json!({"group": "gateway.networking.k8s.io", "kind": kind, "name": name});
    let mut keys_rule = target("HTTPRoute", "shop");
    keys_rule["sectionName"] = json!("keys");
    create::<RoutePolicy>(
        &ctx,
        policy(
            "keys",
            json!([keys_rule]),
            json!({"authentication": {"apiKey": {"secretRef": {"name": "api-keys"}}},
                   "rateLimit": {"requests": 2, "unit": "Minute", "key": "Global"}}),
        ),
    )
    .await?;
    create::<RoutePolicy>(
        &ctx,
        policy(
            "route-wide",
            json!([target("HTTPRoute", "shop")]),
            json!({"cors": {"allowOrigins": ["https://shop.example.com"]},
                   "cache": {"ttl": "1m"},
                   "fallback": {"directResponse": {"statusCode": 200, "body": "fallback",
                                                   "contentType": "text/plain"}}}),
        ),
    )
    .await?;
    create::<RoutePolicy>(
        &ctx,
        policy(
            "gateway-wide",
            json!([target("Gateway", "gw")]),
            json!({"cors": {"allowOrigins": ["https://gw.example.com"]}}),
        ),
    )
    .await?;
    create::<RoutePolicy>(
        &ctx,
        policy(
            "zz-late",
            json!([target("HTTPRoute", "shop")]),
            json!({"cors": {"allowOrigins": ["https://late.example.com"]}}),
        ),
    )
    .await?;
    create::<RoutePolicy>(
        &ctx,
        policy(
            "ghost",
            json!([target("HTTPRoute", "nope")]),
            json!({"cors": {"allowOrigins": ["https://x.example.com"]}}),
        ),
    )
    .await?;

    let op = start_operator(&ctx, "op-a").await?;
    let proxy = start_proxy(&ctx, &op).await?;
    until_rule(&proxy, "the rule policy in the proxy's config", |r| {
        r.authentication.is_some()
    })
    .await?;
    let gw = proxy.addr;
    let get = |host: &'static str, path: &'static str, headers: &'static str| async move {
        let mut tcp = tokio::net::TcpStream::connect(gw).await?;
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n{headers}connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut text = String::new();
        tcp.read_to_string(&mut text).await?;
        anyhow::Ok(text.to_ascii_lowercase())
    };
    let shop = "shop.example.com";
    // Authentication runs first: a refused request does not count against the limit.
    ensure!(get(shop, "/keys", "").await?.starts_with("http/1.1 401"));
    for i in 0..2 {
        let ok = get(shop, "/keys", "x-api-key: key-a\r\n").await?;
        ensure!(
            ok.starts_with("http/1.1 200") && ok.ends_with("v1"),
            "request {i}: {ok}"
        );
    }
    let limited = get(shop, "/keys", "x-api-key: key-a\r\n").await?;
    ensure!(limited.starts_with("http/1.1 429"), "{limited}");
    let open = get(shop, "/open", "origin: https://shop.example.com\r\n").await?;
    ensure!(
        open.starts_with("http/1.1 200")
            && open.contains("access-control-allow-origin: https://shop.example.com")
            && open.contains("x-portico-cache: miss"),
        "the route-wide policy (not the later one): {open}"
    );
    let again = get(shop, "/open", "").await?;
    ensure!(again.contains("x-portico-cache: hit"), "{again}");
    let down = get(shop, "/down", "").await?;
    ensure!(
        down.starts_with("http/1.1 200")
            && down.contains("x-portico-fallback: default")
            && down.ends_with("fallback"),
        "{down}"
    );
    let other = get(
        "other.example.com",
        "/",
        "origin: https://gw.example.com\r\n",
    )
    .await?;
    let uncached = get("other.example.com", "/x", "").await?;
    ensure!(
        other.contains("access-control-allow-origin: https://gw.example.com")
            && !uncached.contains("x-portico-cache"),
        "the Gateway's policy, and no route policy: {other}\n{uncached}"
    );

    let policies: Api<RoutePolicy> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let accepted = |name: &'static str| {
        let policies = policies.clone();
        async move {
            eventually(
                &format!("RoutePolicy {name}'s status"),
                Duration::from_secs(15),
                || async {
                    let p = policies.get(name).await?;
                    Ok(p.status.and_then(|s| {
                        s.conditions
                            .into_iter()
                            .find(|c| c.type_ == "Accepted")
                            .map(|c| (c.status, c.reason))
                    }))
                },
            )
            .await
        }
    };
    for name in ["keys", "route-wide", "gateway-wide"] {
        let got = accepted(name).await?;
        ensure!(got == ("True".into(), "Accepted".into()), "{name}: {got:?}");
    }
    let late = accepted("zz-late").await?;
    ensure!(late == ("False".into(), "Conflicted".into()), "{late:?}");
    let ghost = accepted("ghost").await?;
    ensure!(
        ghost == ("False".into(), "TargetNotFound".into()),
        "{ghost:?}"
    );
    Api::<GatewayClass>::all(ctx.client.clone())
        .delete(&class, &Default::default())
        .await?;
    Ok(())
}

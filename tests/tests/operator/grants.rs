//! Cross-namespace references need a ReferenceGrant in the referred namespace, as in the
//! Gateway API: a Route's backend in another namespace answers 500 until a grant permits it, a
//! Gateway's certificate in another namespace is not served until one does. Each test makes a
//! second namespace (`<test namespace>-other`), runs an operator watching both, and deletes it.

use k8s_openapi::api::core::v1::{Namespace, Secret};
use portico_api::ReferenceGrant;

use super::*;

/// The second namespace (the harness makes and deletes only the test's own).
struct OtherNamespace {
    client: kube::Client,
    name: String,
}

impl OtherNamespace {
    async fn new(ctx: &Ctx) -> anyhow::Result<Self> {
        let name = format!("{}-other", ctx.namespace);
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))?;
        Api::<Namespace>::all(ctx.client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(Self {
            client: ctx.client.clone(),
            name,
        })
    }

    /// Creates `value` (of kind `K`) in this namespace.
    async fn create<K>(&self, value: Value) -> anyhow::Result<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        support::create_in(&self.client, &self.name, value).await
    }

    /// Deletes ReferenceGrant `name` of this namespace.
    async fn delete_grant(&self, name: &str) -> anyhow::Result<()> {
        Api::<ReferenceGrant>::namespaced(self.client.clone(), &self.name)
            .delete(name, &DeleteParams::default())
            .await?;
        Ok(())
    }
}

/// Runs `body` with a second namespace, and deletes that namespace whatever the outcome.
async fn with_other_namespace<F, Fut>(ctx: Ctx, body: F) -> anyhow::Result<()>
where
    F: FnOnce(Ctx, OtherNamespace) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let other = OtherNamespace::new(&ctx).await?;
    let (client, name) = (other.client.clone(), other.name.clone());
    let result = body(ctx, other).await;
    let deleted = Api::<Namespace>::all(client)
        .delete(&name, &DeleteParams::default())
        .await;
    result?;
    deleted.with_context(|| format!("deleting namespace {name}"))?;
    Ok(())
}

/// A ReferenceGrant `name` letting `kind`s of namespace `from_ns` refer to `to` (a JSON `to`
/// entry).
fn grant(name: &str, kind: &str, from_ns: &str, to: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
        "metadata": {"name": name},
        "spec": {"from": [{"group": "portico.dev", "kind": kind, "namespace": from_ns}],
                 "to": [to]}
    })
}

/// Route `shop` (test namespace) has rule "pay" → Service `pay` of the other namespace and
/// rule "orders" → the local Service `orders`: without a grant "pay" answers 500 (its backend is
/// never called) and the Route says `RefNotPermitted`, "orders" keeps working; a grant makes
/// "pay" reach its real backend; deleting the grant refuses it again.
pub(super) async fn a_backend_in_another_namespace_needs_a_grant(ctx: Ctx) -> anyhow::Result<()> {
    with_other_namespace(ctx, backend_needs_a_grant).await
}

async fn backend_needs_a_grant(ctx: Ctx, other: OtherNamespace) -> anyhow::Result<()> {
    let _pay = backend("198.18.66.10:8080".parse()?, "pay").await?;
    let _orders = backend("198.18.66.11:8080".parse()?, "orders").await?;
    other.create::<Service>(service("pay")).await?;
    other
        .create::<EndpointSlice>(slice("pay-1", "pay", &["198.18.66.10"]))
        .await?;
    create::<Service>(&ctx, service("orders")).await?;
    create::<EndpointSlice>(&ctx, slice("orders-1", "orders", &["198.18.66.11"])).await?;
    gateway_on_free_port(&ctx).await?;
    create::<Route>(
        &ctx,
        json!({
            "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
            "metadata": {"name": "shop"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [
                {"name": "pay",
                 "matches": [{"path": {"type": "PathPrefix", "value": "/pay"}}],
                 "backendRefs": [{"name": "pay", "namespace": other.name, "port": 80}]},
                {"name": "orders",
                 "backendRefs": [{"name": "orders", "port": 80}]}
            ]}
        }),
    )
    .await?;
    let op = start_operator_in(
        &ctx,
        "op-a",
        vec![ctx.namespace.clone(), other.name.clone()],
    )
    .await?;
    let proxy = start_proxy(&ctx, &op).await?;
    let refused = || async {
        eventually("500 without a grant", Duration::from_secs(20), || async {
            let (status, body) = http_get(proxy.addr, "shop.example.com", "/pay").await?;
            Ok((status == 500).then_some(body))
        })
        .await
    };
    let body = refused().await?;
    ensure!(body.contains("not permitted"), "the 500 says why: {body:?}");
    ensure!(http_get(proxy.addr, "shop.example.com", "/orders").await? == (200, "orders".into()));
    let wanted = format!(
        "rule \"pay\": Service {0}/pay needs a ReferenceGrant in namespace {0} from portico.dev/Route in {1}",
        other.name, ctx.namespace
    );
    eventually(
        "ResolvedRefs=False/RefNotPermitted naming the grant",
        Duration::from_secs(20),
        || async {
            Ok(route_condition(&ctx, "shop", "ResolvedRefs")
                .await?
                .filter(|c| c.0 == "False" && c.1 == "RefNotPermitted" && c.2 == wanted))
        },
    )
    .await?;
    let accepted = route_condition(&ctx, "shop", "Accepted").await?;
    ensure!(
        accepted.as_ref().is_some_and(|c| c.0 == "True"),
        "the Route stays accepted: {accepted:?}"
    );
    other
        .create::<ReferenceGrant>(grant(
            "shop-routes",
            "Route",
            &ctx.namespace,
            json!({"group": "", "kind": "Service", "name": "pay"}),
        ))
        .await?;
    eventually(
        "the real backend once granted",
        Duration::from_secs(20),
        || async {
            Ok(
                (http_get(proxy.addr, "shop.example.com", "/pay").await? == (200, "pay".into()))
                    .then_some(()),
            )
        },
    )
    .await?;
    eventually("ResolvedRefs=True", Duration::from_secs(20), || async {
        Ok(route_condition(&ctx, "shop", "ResolvedRefs")
            .await?
            .filter(|c| c.0 == "True"))
    })
    .await?;
    other.delete_grant("shop-routes").await?;
    refused().await?;
    Ok(())
}

/// Gateway `gw`'s HTTPS listener `tls` takes its certificate from a Secret of the other
/// namespace: without a grant the listener is not served and says `RefNotPermitted`; with one
/// it serves that certificate; deleting the grant takes it away again.
pub(super) async fn a_certificate_in_another_namespace_needs_a_grant(
    ctx: Ctx,
) -> anyhow::Result<()> {
    with_other_namespace(ctx, certificate_needs_a_grant).await
}

async fn certificate_needs_a_grant(ctx: Ctx, other: OtherNamespace) -> anyhow::Result<()> {
    let _a = backend("198.18.66.20:8080".parse()?, "a").await?;
    let ck = rcgen::generate_simple_self_signed(vec!["shop.example.com".into()])?;
    other
        .create::<Secret>(json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "shop-cert"},
            "stringData": {"tls.crt": ck.cert.pem(), "tls.key": ck.signing_key.serialize_pem()}
        }))
        .await?;
    let (http_port, https_port) = (free_port()?, free_port()?);
    create::<Gateway>(
        &ctx,
        json!({
            "apiVersion": "portico.dev/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "gw"},
            "spec": {"listeners": [
                {"name": "web", "port": http_port, "protocol": "HTTP"},
                {"name": "tls", "port": https_port, "protocol": "HTTPS",
                 "tls": {"certificateRefs": [{"name": "shop-cert", "namespace": other.name}]}}
            ]}
        }),
    )
    .await?;
    create::<Service>(&ctx, service("orders")).await?;
    create::<EndpointSlice>(&ctx, slice("orders-1", "orders", &["198.18.66.20"])).await?;
    create::<Route>(&ctx, route("orders", "gw", "orders", 80)).await?;
    let op = start_operator_in(
        &ctx,
        "op-a",
        vec![ctx.namespace.clone(), other.name.clone()],
    )
    .await?;
    let proxy = start_proxy(&ctx, &op).await?;
    let tls_refs = || async {
        let gw = Api::<Gateway>::namespaced(ctx.client.clone(), &ctx.namespace)
            .get("gw")
            .await?;
        Ok::<_, anyhow::Error>(
            gw.status
                .and_then(|s| s.listeners.into_iter().find(|l| l.name == "tls"))
                .and_then(|l| l.conditions.into_iter().find(|c| c.type_ == "ResolvedRefs"))
                .map(|c| (c.status, c.reason, c.message)),
        )
    };
    let wanted = format!(
        "Secret {0}/shop-cert needs a ReferenceGrant in namespace {0} from portico.dev/Gateway in {1}",
        other.name, ctx.namespace
    );
    let refused = || async {
        eventually(
            "listener tls ResolvedRefs=False/RefNotPermitted",
            Duration::from_secs(20),
            || async {
                Ok(tls_refs()
                    .await?
                    .filter(|c| c.0 == "False" && c.1 == "RefNotPermitted" && c.2 == wanted))
            },
        )
        .await
    };
    refused().await?;
    ensure!(
        proxy.proxy.listener_addr("tls").is_none(),
        "a listener whose certificate is not permitted is not served"
    );
    other
        .create::<ReferenceGrant>(grant(
            "shop-gateways",
            "Gateway",
            &ctx.namespace,
            json!({"group": "", "kind": "Secret"}),
        ))
        .await?;
    let tls_addr = eventually(
        "listener tls served once granted",
        Duration::from_secs(20),
        || async {
            Ok(proxy
                .proxy
                .listener_addr("tls")
                .map(|a| SocketAddr::from(([127, 0, 0, 1], a.port()))))
        },
    )
    .await?;
    let answer = get_tls(tls_addr, "shop.example.com", ck.cert.der(), "/orders").await?;
    ensure!(
        answer == (200, "a".into()),
        "over TLS with the granted certificate: {answer:?}"
    );
    eventually("ResolvedRefs=True", Duration::from_secs(20), || async {
        Ok(tls_refs().await?.filter(|c| c.0 == "True"))
    })
    .await?;
    other.delete_grant("shop-gateways").await?;
    refused().await?;
    eventually(
        "listener tls gone once the grant is",
        Duration::from_secs(20),
        || async { Ok(proxy.proxy.listener_addr("tls").is_none().then_some(())) },
    )
    .await?;
    Ok(())
}

//! Authentication and rate limits on Route rules, through the CRDs: API keys, JWTs and basic
//! credentials from labelled Secrets, checked by a real gateway proxy in front of nginx (which
//! echoes the headers it received), and token buckets answering 429.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair};

use super::health::Nginx;
use super::*;

/// An ES256 signer with its JWKS.
struct Signer {
    pair: signature::EcdsaKeyPair,
    kid: &'static str,
}

impl Signer {
    fn new(kid: &'static str) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng)
            .map_err(|_| anyhow::anyhow!("generating a key"))?;
        let pair = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
            .map_err(|_| anyhow::anyhow!("reading the key"))?;
        Ok(Self { pair, kid })
    }

    fn jwks(&self) -> String {
        let point = self.pair.public_key().as_ref();
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig",
                         "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])}]})
        .to_string()
    }

    fn token_with(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("signing");
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }

    /// A token for `sub` with `extra` claims over good defaults.
    fn token(&self, sub: &str, extra: Value) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut claims = json!({"iss": "https://issuer.example", "aud": "shop", "sub": sub,
                                "exp": now + 600});
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        self.token_with(
            &json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}),
            &claims,
        )
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A credential Secret (labelled so the operator reads it) with `data` as text.
pub(super) async fn credential(ctx: &Ctx, name: &str, data: &[(&str, &str)]) -> anyhow::Result<()> {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(support::base64(v.as_bytes()))))
        .collect();
    create::<k8s_openapi::api::core::v1::Secret>(
        ctx,
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": name, "labels": {"portico.dev/credential": "true"}},
               "type": "Opaque", "data": data}),
    )
    .await?;
    Ok(())
}

/// One request to the gateway: status, the lower-cased head, and the body.
pub(super) async fn request(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String, String)> {
    let mut raw = format!("GET {path} HTTP/1.1\r\nhost: shop.example.com\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("connection: close\r\n\r\n");
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(raw.as_bytes()).await?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).await?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    Ok((status, head.to_ascii_lowercase(), body.to_owned()))
}

/// `Route.spec.rules[].authentication` (`apiKey`, `jwt` with `jwksSecretRef`, `audiences`,
/// `claimsToHeaders`, `basic`) and `rateLimit`: each credential lets a request through to nginx
/// (which never sees the API key or a client-forged claim header), every refusal is a 401 with
/// its challenge (expired, wrong audience, wrong key, `alg: none`, tampered), a Secret change
/// takes effect without a restart, a missing Secret refuses everything and says so in
/// `ResolvedRefs`, and the rate limit answers 429 with `Retry-After` and `RateLimit-*`.
pub(super) async fn authentication_and_rate_limits(ctx: Ctx) -> anyhow::Result<()> {
    let dir = ctx.plane.dir().join(format!("nginx-{}", ctx.namespace));
    let _nginx = Nginx::start_with(
        dir,
        &[("a", "198.18.65.121:8080")],
        "location /echo/ { return 200 \"user=$http_x_user key=$http_x_api_key\"; }",
    )
    .await?;
    gateway_on_free_port(&ctx).await?;
    create::<Service>(&ctx, service("api")).await?;
    create::<EndpointSlice>(&ctx, slice("api-1", "api", &["198.18.65.121"])).await?;

    let signer = Signer::new("k1")?;
    credential(
        &ctx,
        "api-keys",
        &[("team-a", "key-a"), ("team-b", "key-b")],
    )
    .await?;
    credential(&ctx, "issuer", &[("jwks", &signer.jwks())]).await?;
    let hash = bcrypt::hash_with_salt("hunter2", 5, [9; 16])
        .map_err(|e| anyhow::anyhow!("bcrypt: {e:?}"))?
        .format_for_version(bcrypt::Version::TwoY);
    credential(&ctx, "users", &[("auth", &format!("bob:{hash}\n"))]).await?;

    let backend = json!([{"name": "api", "port": 80}]);
    let prefix = |p: &str| json!([{"path": {"type": "PathPrefix", "value": p}}]);
    create::<Route>(
        &ctx,
        json!({
            "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
            "metadata": {"name": "api"},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["shop.example.com"], "rules": [
                {"name": "keys", "matches": prefix("/echo/keys"), "backendRefs": backend,
                 "authentication": {
                    "apiKey": {"secretRef": {"name": "api-keys"}},
                    "jwt": {"issuer": "https://issuer.example", "audiences": ["shop"],
                            "jwksSecretRef": {"name": "issuer"},
                            "claimsToHeaders": [{"claim": "sub", "header": "x-user"}]}}},
                {"name": "basic", "matches": prefix("/echo/basic"), "backendRefs": backend,
                 "authentication": {"basic": {"secretRef": {"name": "users"}, "realm": "shop"}}},
                {"name": "limited", "matches": prefix("/echo/limited"), "backendRefs": backend,
                 "rateLimit": {"requests": 2, "unit": "Minute", "key": "Header", "header": "x-client"}},
                {"name": "missing", "matches": prefix("/echo/missing"), "backendRefs": backend,
                 "authentication": {"apiKey": {"secretRef": {"name": "nope"}}}}
            ]}
        }),
    )
    .await?;
    let op = start_operator(&ctx, "op-a").await?;
    let proxy = start_proxy(&ctx, &op).await?;
    let gw = proxy.addr;
    until_rule(&proxy, "authentication in the proxy's config", |r| {
        r.authentication
            .as_ref()
            .is_some_and(|a| a.api_key.as_ref().is_some_and(|k| !k.keys.is_empty()))
    })
    .await?;

    // API keys: the entry's key passes and is not forwarded; none or a wrong one gets 401.
    let (status, head, _) = request(gw, "/echo/keys", &[]).await?;
    ensure!(status == 401, "no credentials: {status}");
    ensure!(
        head.contains("www-authenticate: bearer realm=\"portico\"")
            && head.contains("www-authenticate: apikey realm=\"portico\", header=\"x-api-key\""),
        "one challenge per method:\n{head}"
    );
    let (status, _, body) = request(gw, "/echo/keys", &[("x-api-key", "key-b")]).await?;
    ensure!(
        (status, body.as_str()) == (200, "user= key="),
        "a good key passes and is not forwarded: {status} {body:?}"
    );
    let (status, head, _) = request(gw, "/echo/keys", &[("x-api-key", "guess")]).await?;
    ensure!(
        status == 401 && head.contains("error=\"invalid key\""),
        "{status}\n{head}"
    );

    // JWTs: the claim replaces the client's own header.
    let bearer = |t: &str| format!("Bearer {t}");
    let good = bearer(&signer.token("alice", json!({})));
    let (status, _, body) = request(
        gw,
        "/echo/keys",
        &[("authorization", &good), ("x-user", "root")],
    )
    .await?;
    ensure!(
        (status, body.as_str()) == (200, "user=alice key="),
        "{status} {body:?}"
    );
    let other = Signer::new("k1")?;
    let none = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(
            json!({"iss": "https://issuer.example", "aud": "shop", "sub": "x", "exp": now() + 60})
                .to_string()
        )
    );
    let mut tampered: Vec<String> = signer
        .token("alice", json!({}))
        .split('.')
        .map(str::to_owned)
        .collect();
    tampered[1] = B64.encode(
        json!({"iss": "https://issuer.example", "aud": "shop", "sub": "root", "exp": now() + 600})
            .to_string(),
    );
    for (what, token, why) in [
        (
            "expired",
            signer.token("alice", json!({"exp": now() - 3600})),
            "token expired",
        ),
        (
            "wrong audience",
            signer.token("alice", json!({"aud": "billing"})),
            "wrong audience",
        ),
        (
            "wrong key",
            other.token("alice", json!({})),
            "invalid signature",
        ),
        ("alg none", none, "malformed token"),
        ("tampered", tampered.join("."), "invalid signature"),
    ] {
        let (status, head, _) =
            request(gw, "/echo/keys", &[("authorization", &bearer(&token))]).await?;
        ensure!(
            status == 401
                && head.contains(&format!(
                    "error=\"invalid_token\", error_description=\"{why}\""
                )),
            "{what}: {status}\n{head}"
        );
        ensure!(
            !head.contains(&token.to_ascii_lowercase()),
            "{what}: the token is echoed"
        );
    }

    // Basic: bcrypt from an htpasswd Secret, with the rule's realm.
    let basic = |u: &str, p: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    };
    let (status, _, _) = request(
        gw,
        "/echo/basic",
        &[("authorization", &basic("bob", "hunter2"))],
    )
    .await?;
    ensure!(status == 200, "bob passes: {status}");
    let (status, head, _) = request(
        gw,
        "/echo/basic",
        &[("authorization", &basic("bob", "nope"))],
    )
    .await?;
    ensure!(
        status == 401 && head.contains("www-authenticate: basic realm=\"shop\""),
        "{status}\n{head}"
    );

    // A Secret change takes effect without a restart.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(ctx.client.clone(), &ctx.namespace);
    secrets
        .patch(
            "api-keys",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"team-c": support::base64(b"key-c")}})),
        )
        .await?;
    eventually("a new key accepted", Duration::from_secs(10), || async {
        let (status, _, _) = request(gw, "/echo/keys", &[("x-api-key", "key-c")]).await?;
        Ok((status == 200).then_some(()))
    })
    .await?;

    // A missing Secret: everything refused, and the status names it.
    let (status, _, _) = request(gw, "/echo/missing", &[("x-api-key", "key-a")]).await?;
    ensure!(
        status == 401,
        "a rule without its Secret answers 401: {status}"
    );
    let routes: Api<Route> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let want = format!("Secret {}/nope not found", ctx.namespace);
    eventually(
        "ResolvedRefs names the Secret",
        Duration::from_secs(20),
        || async {
            let route = routes.get("api").await?;
            let cond = route
                .status
                .and_then(|s| s.parents.into_iter().next())
                .and_then(|p| p.conditions.into_iter().find(|c| c.type_ == "ResolvedRefs"));
            Ok(cond
                .filter(|c| {
                    c.status == "False"
                        && c.reason == "InvalidCredentials"
                        && c.message.contains(&want)
                })
                .map(drop))
        },
    )
    .await?;

    // Rate limit: 2 per minute per x-client value.
    for remaining in ["1", "0"] {
        let (status, head, _) = request(gw, "/echo/limited", &[("x-client", "a")]).await?;
        ensure!(
            status == 200
                && head.contains("ratelimit-limit: 2")
                && head.contains(&format!("ratelimit-remaining: {remaining}")),
            "{status}\n{head}"
        );
    }
    let (status, head, _) = request(gw, "/echo/limited", &[("x-client", "a")]).await?;
    ensure!(
        status == 429
            && head.contains("retry-after: 30")
            && head.contains("ratelimit-remaining: 0")
            && head.contains("ratelimit-reset: 60"),
        "over the limit: {status}\n{head}"
    );
    let (status, _, _) = request(gw, "/echo/limited", &[("x-client", "b")]).await?;
    ensure!(status == 200, "another client has its own bucket: {status}");

    let text = proxy.proxy.metrics_text();
    ensure!(
        support::metric(
            &text,
            "portico_authentications_total",
            &["client=\"team-b\"", "method=\"api_key\"", "result=\"ok\""]
        )
        .is_some(),
        "the API key's client is counted by name:\n{text}"
    );
    ensure!(!text.contains("key-b"), "a key in the metrics");
    Ok(())
}

/// `Route.spec.rules[].authentication.jwt.jwksUri`: the gateway proxy fetches the key set from
/// a real nginx over HTTPS, accepts tokens it signs, fetches again when a token names a key it
/// has not seen (the issuer rotated), and keeps the last good set once the issuer is gone.
pub(super) async fn jwks_uri(ctx: Ctx) -> anyhow::Result<()> {
    let dir = ctx.plane.dir().join(format!("issuer-{}", ctx.namespace));
    std::fs::create_dir_all(&dir)?;
    let (k1, k2) = (Signer::new("k1")?, Signer::new("k2")?);
    std::fs::write(dir.join("jwks.json"), k1.jwks())?;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    std::fs::write(dir.join("cert.pem"), cert.cert.pem())?;
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem())?;
    // The in-process proxy trusts the issuer's certificate (the binary would read SSL_CERT_FILE).
    portico_proxy::policy::jwks::use_roots_file(dir.join("cert.pem"));
    let port = free_port()?;
    let issuer = Nginx::serve(
        dir.clone(),
        &format!(
            "server {{ listen 127.0.0.1:{port} ssl; server_name localhost;\n\
               ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;\n\
               location = /jwks.json {{ root {d}; default_type application/json; }} }}\n",
            d = dir.display()
        ),
        format!("127.0.0.1:{port}").parse()?,
    )
    .await?;

    let _api = backend("198.18.65.131:8080".parse()?, "api").await?;
    gateway_on_free_port(&ctx).await?;
    create::<Service>(&ctx, service("api")).await?;
    create::<EndpointSlice>(&ctx, slice("api-1", "api", &["198.18.65.131"])).await?;
    create::<Route>(
        &ctx,
        json!({
            "apiVersion": "portico.dev/v1alpha1", "kind": "Route",
            "metadata": {"name": "api"},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["shop.example.com"], "rules": [{
                "backendRefs": [{"name": "api", "port": 80}],
                "authentication": {"jwt": {
                    "issuer": "https://issuer.example", "audiences": ["shop"],
                    "jwksUri": format!("https://localhost:{port}/jwks.json")}}}]}
        }),
    )
    .await?;
    let op = start_operator(&ctx, "op-a").await?;
    let proxy = start_proxy(&ctx, &op).await?;
    let gw = proxy.addr;
    let with = |signer: &Signer| format!("Bearer {}", signer.token("alice", json!({})));
    let (t1, t2) = (with(&k1), with(&k2));
    eventually(
        "a token of the fetched key set passes",
        Duration::from_secs(20),
        || async {
            let (status, _, _) = request(gw, "/", &[("authorization", &t1)]).await?;
            Ok((status == 200).then_some(()))
        },
    )
    .await?;
    let (status, head, _) = request(gw, "/", &[("authorization", &t2)]).await?;
    ensure!(
        status == 401 && head.contains("unknown signing key"),
        "a key not published yet: {status}\n{head}"
    );
    // The issuer rotates to k2: the unknown kid makes the proxy fetch again (at most every 10 s).
    std::fs::write(dir.join("jwks.json"), k2.jwks())?;
    eventually(
        "the rotated key accepted",
        Duration::from_secs(30),
        || async {
            let (status, _, _) = request(gw, "/", &[("authorization", &t2)]).await?;
            Ok((status == 200).then_some(()))
        },
    )
    .await?;
    // The issuer goes away: the last good key set stays in use.
    drop(issuer);
    let (status, _, _) = request(gw, "/", &[("authorization", &t1)]).await?;
    ensure!(status == 401, "the rotated-out key is refused: {status}");
    for _ in 0..3 {
        let (status, _, _) = request(gw, "/", &[("authorization", &t2)]).await?;
        ensure!(status == 200, "after the issuer went away: {status}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

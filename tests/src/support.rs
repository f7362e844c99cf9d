//! Small helpers the end-to-end test binaries share: creating objects, running pods and their
//! tokens in a test's namespace, waiting for a condition, plain HTTP servers and clients, base64.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::Ctx;

/// Creates `value` (a whole object as JSON) in the test's namespace and returns what the
/// apiserver stored.
pub async fn create<K>(ctx: &Ctx, value: Value) -> anyhow::Result<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    create_in(&ctx.client, &ctx.namespace, value).await
}

/// [`create`] in `namespace`.
pub async fn create_in<K>(client: &kube::Client, namespace: &str, value: Value) -> anyhow::Result<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value)?;
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    Ok(api.create(&PostParams::default(), &obj).await?)
}

/// Creates ServiceAccount `name` in the test's namespace (no error if it exists).
pub async fn service_account(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}
    }))?;
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates pod `name` (ServiceAccount `sa`, created if missing; label `app: <app>`; container
/// port 8080) on the kwok node through the apiserver (so admission webhooks see it) and waits
/// until it runs; returns the stored pod and its address.
pub async fn running_pod(
    ctx: &Ctx,
    name: &str,
    sa: &str,
    app: &str,
) -> anyhow::Result<(Pod, IpAddr)> {
    service_account(ctx, sa).await?;
    create::<Pod>(
        ctx,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": app}},
            "spec": {
                "nodeName": crate::cluster::NODE_NAME,
                "serviceAccountName": sa,
                "containers": [{"name": "app", "image": "app:1",
                                "ports": [{"containerPort": 8080}]}]
            }
        }),
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    eventually(
        &format!("pod {name} running with an address"),
        Duration::from_secs(30),
        || async {
            let pod = pods.get(name).await?;
            let status = pod.status.clone().unwrap_or_default();
            let ip = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok());
            Ok((status.phase.as_deref() == Some("Running"))
                .then_some(ip)
                .flatten()
                .map(|ip| (pod, ip)))
        },
    )
    .await
}

/// A token of `pod`'s ServiceAccount for audience `portico`, bound to the pod (as kubelet's
/// projected tokens are), from the TokenRequest API.
pub async fn pod_token(ctx: &Ctx, pod: &Pod) -> anyhow::Result<String> {
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .context("pod without ServiceAccount")?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let request: TokenRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": ["portico"], "expirationSeconds": 600,
                 "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": name, "uid": uid}}
    }))?;
    Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ctx.namespace)
        .create_token_request(&sa, &PostParams::default(), &request)
        .await?
        .status
        .context("TokenRequest without status")?
        .token
        .context("TokenRequest without token")
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `within` naming `what`
/// and the last error seen.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let started = Instant::now();
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if started.elapsed() > within {
            bail!("{what}: not within {within:?} (last error: {last_err:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP/1.1 and HTTP/2 server on `addr` answering every request with `name`; stops when the
/// returned task is aborted.
pub async fn backend(
    addr: SocketAddr,
    name: &'static str,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    serve_name(addr, name, false).await
}

/// As [`backend`], but each answer waits until the request's body has been read to its end (as
/// a server that handles uploads does), so a broken request body is the proxy's to refuse
/// before any answer exists (h2spec's malformed-body cases); a body that fails to read gets 400.
pub async fn backend_after_body(
    addr: SocketAddr,
    name: &'static str,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    serve_name(addr, name, true).await
}

async fn serve_name(
    addr: SocketAddr,
    name: &'static str,
    read_body: bool,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding backend {addr}"))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let read = if read_body {
                            req.into_body().collect().await.map(drop)
                        } else {
                            Ok(())
                        };
                        let mut resp =
                            http::Response::new(http_body_util::Full::new(Bytes::from(name)));
                        if read.is_err() {
                            *resp.status_mut() = http::StatusCode::BAD_REQUEST;
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    }))
}

/// `GET path` with `Host: host` over a fresh HTTP/1.1 connection, optionally from a given
/// source address; returns status, the `x-portico-error` header (empty when absent) and the
/// body.
pub async fn http_get_from(
    from: Option<IpAddr>,
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> anyhow::Result<(u16, String, String)> {
    let mut tcp = match from {
        Some(ip) => {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(SocketAddr::new(ip, 0))?;
            sock.connect(addr).await?
        }
        None => tokio::net::TcpStream::connect(addr).await?,
    };
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut text))
        .await
        .context("no answer in 5s")??;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status in {text:?}"))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let error = head
        .lines()
        .find_map(|l| l.strip_prefix("x-portico-error: "))
        .unwrap_or_default()
        .to_owned();
    Ok((status, error, body.to_owned()))
}

/// [`http_get_from`] any source address, without the error header: status and body.
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let (status, _, body) = http_get_from(None, addr, host, path).await?;
    Ok((status, body))
}

/// `GET path` with `Host: host` over a fresh HTTP/1.1 connection, waiting as long as the answer
/// takes (for slow endpoints such as a load loop's report); status and body.
pub async fn http_get_unbounded(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).await?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status in {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    Ok((status, body.to_owned()))
}

/// Runs a Go-built tool (`kubectl`, `helm`) against the test cluster with `stdin` as its input;
/// its stdout, or an error with both outputs.
pub fn tool(
    ctx: &Ctx,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(crate::cluster::component(program)?);
    cmd.arg(format!("--kubeconfig={}", ctx.plane.kubeconfig.display()))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {program}"))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A TLS client config (ring) that trusts only `ca` and offers the ALPN protocol `alpn`.
pub fn tls_client_config(
    ca: &CertificateDer<'static>,
    alpn: &[u8],
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// `GET path` on the operator's config server at `addr` over HTTP/2 + TLS (server name
/// 127.0.0.1, trusting `ca`), with a bearer `token` if given, as a proxy asks for its stream.
/// The returned sender keeps the connection open: hold it while the body is read.
pub async fn config_server_get(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(
    http::Response<hyper::body::Incoming>,
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
)> {
    config_server_get_with(addr, ca, path, token, &[]).await
}

/// [`config_server_get`] with more request headers (e.g. the stream features a proxy asks for).
pub async fn config_server_get_with(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> anyhow::Result<(
    http::Response<hyper::body::Incoming>,
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
)> {
    let mut send = config_server_connect(addr, ca).await?;
    let mut req = http::Request::get(format!("https://127.0.0.1{path}"));
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = send.send_request(req.body(Empty::<Bytes>::new())?).await?;
    Ok((resp, send))
}

/// An HTTP/2 connection over TLS to a config server at `addr` whose certificate `ca` signed.
async fn config_server_connect<B>(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
) -> anyhow::Result<hyper::client::conn::http2::SendRequest<B>>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let config = tls_client_config(ca, b"h2")?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
        .await?;
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// `POST path` with a JSON `body` to a config server: the status and the answer's body.
pub async fn config_server_post(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(u16, String)> {
    let mut send = config_server_connect(addr, ca).await?;
    let req = http::Request::post(format!("https://127.0.0.1{path}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(serde_json::to_vec(
            body,
        )?)))?;
    let resp = send.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The value of the first series of `name` in Prometheus text `text` whose labels contain every
/// one of `labels` (e.g. `result="ok"`).
pub fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Standard base64 with padding (for `caBundle` fields); no crate needed for a few bytes.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_pads_like_rfc_4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}

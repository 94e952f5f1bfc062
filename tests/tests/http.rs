//! The L7 data path: HTTP/1.1 and h2c through a pair of sidecars, routing by
//! HTTPRoute (canary splits, header matches, live changes), latency-aware
//! balancing, one multiplexed mTLS connection per peer, and the mesh's own
//! headers kept out of reach of applications.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weft_e2e::client::{self, pattern};
use weft_e2e::{ControlPlane, Node, Pod, bins, pod_yaml, service_yaml, spiffe};

const APP_VIP: &str = "198.19.0.20";
const V1_VIP: &str = "198.19.0.21";
const V2_VIP: &str = "198.19.0.22";

/// An HTTP server pod of `version`, meshed as service account `app`.
fn app_pod(node: &Node, cp: &ControlPlane, name: &str, version: &str, extra: &[&str]) -> Arc<Pod> {
    let pod = node.pod(name);
    let mut args = vec![
        "http",
        "--listen",
        "0.0.0.0:8080",
        "--service",
        "app",
        "--version",
        version,
        "--pod",
        name,
    ];
    args.extend_from_slice(extra);
    pod.spawn("http", bins::test_app(), &args);
    pod.wait_listening(8080);
    cp.write_manifest(
        &format!("pod-{name}.yaml"),
        &pod_yaml(&pod, "app", &[("app", "app"), ("version", version)], true),
    );
    pod.mesh_with(cp, "app", &[]);
    pod
}

fn versioned_service(name: &str, vip: &str, version: &str) -> String {
    service_yaml(name, vip, "app", &[(80, 8080, "")]).replace(
        "    app: app\n",
        &format!("    app: app\n    version: {version}\n"),
    )
}

fn route(v1_weight: u32, v2_weight: u32) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: app-canary
  namespace: default
spec:
  parentRefs:
  - {{group: "", kind: Service, name: app, port: 80}}
  rules:
  - matches:
    - headers:
      - {{name: x-version, value: v2}}
    backendRefs:
    - {{name: app-v2, port: 80}}
  - backendRefs:
    - {{name: app-v1, port: 80, weight: {v1_weight}}}
    - {{name: app-v2, port: 80, weight: {v2_weight}}}
"#
    )
}

struct Mesh {
    node: Node,
    cp: ControlPlane,
    client: Arc<Pod>,
}

/// Services `app` (both versions), `app-v1`, `app-v2`; pods app-v1-0,
/// app-v1-1, app-v2-0; a meshed client.
fn mesh(test: &str, with_route: Option<(u32, u32)>) -> Mesh {
    let node = Node::new(test);
    let cp = ControlPlane::start(&node, "1h");
    cp.write_manifest(
        "svc-app.yaml",
        &service_yaml("app", APP_VIP, "app", &[(80, 8080, "")]),
    );
    cp.write_manifest(
        "svc-app-v1.yaml",
        &versioned_service("app-v1", V1_VIP, "v1"),
    );
    cp.write_manifest(
        "svc-app-v2.yaml",
        &versioned_service("app-v2", V2_VIP, "v2"),
    );
    if let Some((a, b)) = with_route {
        cp.write_manifest("route.yaml", &route(a, b));
    }
    app_pod(&node, &cp, "app-v1-0", "v1", &[]);
    app_pod(&node, &cp, "app-v1-1", "v1", &[]);
    app_pod(&node, &cp, "app-v2-0", "v2", &[]);
    let client = node.pod("client");
    cp.write_manifest(
        "pod-client.yaml",
        &pod_yaml(&client, "client", &[("app", "client")], true),
    );
    client.mesh_with(&cp, "client", &[]);
    client.wait_endpoints("app.default:80", 3);
    client.wait_endpoints("app-v1.default:80", 2);
    client.wait_endpoints("app-v2.default:80", 1);
    Mesh { node, cp, client }
}

fn app() -> SocketAddr {
    SocketAddr::new(APP_VIP.parse().expect("ip"), 80)
}

/// `n` GETs on one keep-alive connection; counts the `version` answered.
async fn versions(
    n: usize,
    header: Option<(&'static str, &'static str)>,
) -> BTreeMap<String, usize> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let mut req = Request::get(format!("http://{}/", app()));
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        let version = match client
            .request(req.body(Full::default()).expect("request"))
            .await
        {
            Ok(res) if res.status() == 200 => {
                let body = res
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["version"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "unparsable".into())
            }
            Ok(res) => format!("status {}", res.status()),
            Err(e) => format!("error {e}"),
        };
        *out.entry(version).or_insert(0) += 1;
    }
    out
}

#[test]
fn a_canary_route_splits_matches_headers_and_changes_live() {
    let m = mesh("http_canary", Some((90, 10)));
    let counts = m.client.ns.block_on(versions(2000, None));
    let v2 = counts.get("v2").copied().unwrap_or(0);
    assert_eq!(
        counts.values().sum::<usize>(),
        counts.get("v1").copied().unwrap_or(0) + v2,
        "{counts:?}"
    );
    let share = v2 as f64 / 2000.0;
    assert!(
        (0.07..=0.13).contains(&share),
        "v2 got {v2} of 2000: {counts:?}"
    );

    let header = m
        .client
        .ns
        .block_on(versions(100, Some(("x-version", "v2"))));
    assert_eq!(header.get("v2"), Some(&100), "{header:?}");

    // Move everything to v2 and time how long until the first request lands.
    let written = Instant::now();
    m.cp.write_manifest("route.yaml", &route(0, 100));
    let took = m.client.ns.block_on(async move {
        loop {
            let c = versions(20, None).await;
            if c.get("v2") == Some(&20) {
                return written.elapsed();
            }
            assert!(
                written.elapsed() < Duration::from_secs(10),
                "the route change never took effect: {c:?}"
            );
        }
    });
    println!("route change: file written -> requests routed by the new rule in {took:?}");
    let after = m.client.ns.block_on(versions(200, None));
    assert_eq!(after.get("v2"), Some(&200), "{after:?}");
}

#[test]
fn without_a_route_a_service_routes_to_itself() {
    let m = mesh("http_default", None);
    let counts = m.client.ns.block_on(versions(90, None));
    // Every request reached one of the Service's own endpoints (which ones
    // is the latency balancer's business).
    let served = counts.get("v1").copied().unwrap_or(0) + counts.get("v2").copied().unwrap_or(0);
    assert_eq!(served, 90, "{counts:?}");
}

#[test]
fn http1_h2c_and_large_streamed_bodies_pass_intact() {
    let m = mesh("http_protocols", None);
    let dst = app();
    let (h1, h2, headers) = m.client.ns.block_on(async move {
        (
            client::get(dst, "/status/418").await,
            client::http(Method::GET, dst, "/", Bytes::new(), true).await,
            client::get(dst, "/headers").await,
        )
    });
    assert_eq!(h1.expect("h1").status, 418);
    let h2 = h2.expect("h2c");
    assert_eq!(
        (h2.status.as_u16(), h2.json()["service"].as_str()),
        (200, Some("app"))
    );
    let headers = headers.expect("headers").json();
    // The Host the client sent (hyper leaves out the default port).
    assert_eq!(headers["headers"]["host"], APP_VIP, "{headers}");
    // An HTTP/2 app gets `:authority` alone, never a Host that disagrees
    // with it (RFC 9113 8.3.1; nginx answers such a request 400).
    let h2_headers = m
        .client
        .ns
        .block_on(client::http(
            Method::GET,
            dst,
            "/headers",
            Bytes::new(),
            true,
        ))
        .expect("h2c /headers")
        .json();
    assert!(h2_headers["headers"]["host"].is_null(), "{h2_headers}");

    // 50 MiB up and back down, streamed through both sidecars.
    let body = Bytes::from(pattern(50 << 20, 11));
    let expected = body.clone();
    for h2 in [false, true] {
        let body = body.clone();
        let echoed = m
            .client
            .ns
            .block_on(async move { client::http(Method::POST, dst, "/echo", body, h2).await })
            .expect("50 MiB echo");
        assert_eq!(echoed.status, 200);
        assert!(
            echoed.body == expected,
            "50 MiB came back different (h2: {h2})"
        );
    }
}

#[test]
fn a_hundred_http1_connections_share_one_mtls_connection() {
    let m = mesh("http_multiplex", None);
    let v2 = SocketAddr::new(V2_VIP.parse().expect("ip"), 80);
    let statuses = m.client.ns.block_on(async move {
        let mut tasks = Vec::new();
        for _ in 0..100 {
            // Each its own HTTP/1.1 connection, all at once.
            tasks.push(tokio::spawn(async move {
                client::get(v2, "/delay/300")
                    .await
                    .map(|r| r.status.as_u16())
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.map_err(|e| e.to_string()).and_then(|r| r));
        }
        out
    });
    assert!(statuses.iter().all(|s| s == &Ok(200)), "{statuses:?}");
    assert_eq!(
        m.client
            .metric(r#"tcp_open_total{direction="outbound",tls="per_request",peer_identity=""}"#),
        100.0
    );
    let sessions = format!(
        r#"tls_sessions_total{{direction="outbound",peer_identity="{}"}}"#,
        spiffe("app")
    );
    assert_eq!(
        m.client.metric(&sessions),
        1.0,
        "requests did not share one mTLS connection"
    );
    let _ = &m.node;
}

#[test]
fn a_slow_endpoint_gets_less_traffic() {
    let node = Node::new("http_ewma");
    let cp = ControlPlane::start(&node, "1h");
    cp.write_manifest(
        "svc-app.yaml",
        &service_yaml("app", APP_VIP, "app", &[(80, 8080, "")]),
    );
    app_pod(&node, &cp, "fast-0", "v1", &[]);
    app_pod(&node, &cp, "fast-1", "v1", &[]);
    app_pod(&node, &cp, "slow-0", "v2", &["--latency", "50ms"]);
    let client = node.pod("client");
    cp.write_manifest(
        "pod-client.yaml",
        &pod_yaml(&client, "client", &[("app", "client")], true),
    );
    client.mesh_with(&cp, "client", &[]);
    client.wait_endpoints("app.default:80", 3);
    let counts = client.ns.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..4 {
            tasks.push(tokio::spawn(versions(250, None)));
        }
        let mut all = BTreeMap::new();
        for t in tasks {
            for (k, v) in t.await.unwrap_or_default() {
                *all.entry(k).or_insert(0) += v;
            }
        }
        all
    });
    assert_eq!(counts.values().sum::<usize>(), 1000, "{counts:?}");
    let slow = counts.get("v2").copied().unwrap_or(0);
    assert!(
        slow < 150,
        "the slow endpoint got {slow} of 1000: {counts:?}"
    );
}

#[test]
fn the_mesh_identity_header_cannot_be_forged() {
    let m = mesh("http_forgery", None);
    let dst = app();
    let res = m.client.ns.block_on(async move {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let req = Request::get(format!("http://{dst}/headers"))
            .header("weft-client-id", "spiffe://evil.example/ns/x/sa/attacker")
            .header("weft-orig-proto", "HTTP/2")
            .body(Full::default())
            .expect("request");
        let res = client.request(req).await.expect("request through the mesh");
        res.into_body().collect().await.expect("body").to_bytes()
    });
    let v: serde_json::Value = serde_json::from_slice(&res).expect("json");
    assert_eq!(v["headers"]["weft-client-id"], spiffe("client"), "{v}");
    assert!(v["headers"].get("weft-orig-proto").is_none(), "{v}");
}

#[test]
fn websockets_are_tunnelled_through_both_sidecars() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let m = mesh("http_websocket", None);
    let dst = SocketAddr::new(V1_VIP.parse().expect("ip"), 80);
    let echoed = m.client.ns.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(dst).await.expect("connect");
        let (mut ws, res) = tokio_tungstenite::client_async(format!("ws://{dst}/ws"), tcp)
            .await
            .expect("WebSocket handshake through the mesh");
        assert_eq!(res.status(), 101);
        let mut got = Vec::new();
        for i in 0..20 {
            let msg = if i % 2 == 0 {
                Message::text(format!("hello {i}"))
            } else {
                Message::binary(pattern(64 << 10, i as u8))
            };
            ws.send(msg.clone()).await.expect("send");
            let back = ws.next().await.expect("an answer").expect("a frame");
            got.push(back == msg);
        }
        let _ = ws.close(None).await;
        got
    });
    assert_eq!(echoed, vec![true; 20]);
    let sessions = format!(
        r#"tls_sessions_total{{direction="outbound",peer_identity="{}"}}"#,
        spiffe("app")
    );
    assert!(
        m.client.metric(&sessions) >= 1.0,
        "the WebSocket did not travel in mTLS"
    );
}

#[test]
fn grpc_unary_and_streaming_keep_their_status_and_trailers() {
    use weft_e2e::echo::EchoRequest;
    use weft_e2e::echo::echo_client::EchoClient;

    let node = Node::new("http_grpc");
    let cp = ControlPlane::start(&node, "1h");
    // appProtocol: grpc, so the sidecar skips detection.
    cp.write_manifest(
        "svc-grpc.yaml",
        &service_yaml("grpc", APP_VIP, "grpc", &[(9090, 9090, "grpc")]),
    );
    let server = node.pod("grpc-0");
    server.spawn(
        "grpc",
        bins::test_app(),
        &["grpc", "--listen", "0.0.0.0:9090", "--pod", "grpc-0"],
    );
    server.wait_listening(9090);
    cp.write_manifest(
        "pod-grpc.yaml",
        &pod_yaml(&server, "grpc", &[("app", "grpc")], true),
    );
    server.mesh_with(&cp, "grpc", &[]);
    let client = node.pod("client");
    cp.write_manifest(
        "pod-client.yaml",
        &pod_yaml(&client, "client", &[("app", "client")], true),
    );
    client.mesh_with(&cp, "client", &[]);
    client.wait_endpoints("grpc.default:9090", 1);

    let (unary, served_by, stream, chat, failure) = client.ns.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{APP_VIP}:9090"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect through the mesh");
        let mut c = EchoClient::new(channel);
        let req = |m: &str, count| EchoRequest {
            message: m.into(),
            count,
        };
        let unary = c.unary(req("hello", 0)).await.expect("unary");
        let served_by = unary
            .metadata()
            .get("x-served-by")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut s = c
            .server_stream(req("tick", 50))
            .await
            .expect("server stream")
            .into_inner();
        let mut stream = Vec::new();
        while let Some(m) = s.message().await.expect("stream message") {
            stream.push(m.message);
        }
        let outbound = tokio_stream::iter((0..30).map(move |i| req(&format!("chat {i}"), 0)));
        let mut chat_in = c.chat(outbound).await.expect("chat").into_inner();
        let mut chat = Vec::new();
        while let Some(m) = chat_in.message().await.expect("chat message") {
            chat.push(m.message);
        }
        let failure = c
            .fail(req("no such widget", 0))
            .await
            .expect_err("Fail fails");
        (unary.into_inner(), served_by, stream, chat, failure)
    });
    assert_eq!(
        (unary.message.as_str(), unary.pod.as_str()),
        ("hello", "grpc-0")
    );
    assert_eq!(
        served_by.as_deref(),
        Some("grpc-0"),
        "response metadata lost"
    );
    assert_eq!(stream.len(), 50);
    assert_eq!(stream[49], "tick 49");
    assert_eq!(
        chat,
        (0..30).map(|i| format!("chat {i}")).collect::<Vec<_>>()
    );
    // The status travels in the trailers: code and message intact.
    assert_eq!(failure.code(), tonic::Code::NotFound);
    assert_eq!(failure.message(), "no such widget");
    let sessions = format!(
        r#"tls_sessions_total{{direction="outbound",peer_identity="{}"}}"#,
        spiffe("grpc")
    );
    assert_eq!(client.metric(&sessions), 1.0);
    // gRPC statuses, from the trailers (OK) and a trailers-only answer (NOT_FOUND).
    let grpc = |code: &str| {
        client.metric(&format!(
            r#"grpc_response_total{{direction="outbound",service="grpc.default:9090",route="",peer_identity="{}",tls="true",grpc_status="{code}"}}"#,
            spiffe("grpc")
        ))
    };
    assert_eq!(grpc("0"), 3.0, "{}", client.metrics());
    assert_eq!(grpc("5"), 1.0);
}

#[test]
fn route_filters_modify_headers_rewrite_paths_and_redirect() {
    let m = mesh("http_filters", None);
    m.cp.write_manifest(
        "route.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: filters, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: app, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: new.example, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-route, value: api}]
        remove: [x-secret]
    backendRefs: [{name: app-v1, port: 80}]
  - matches: [{path: {type: Exact, value: /headers}}]
    backendRefs: [{name: app-v2, port: 80}]
"#,
    );
    let dst = app();
    let (redirect, rewritten, unmatched) = m.client.ns.block_on(async move {
        // Wait for the route to arrive: a redirect is the first sign.
        let deadline = Instant::now() + Duration::from_secs(10);
        let redirect = loop {
            let r = client::get(dst, "/old/page?q=1").await.expect("GET /old");
            if r.status == 301 || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let req = Request::get(format!("http://{dst}/api/headers"))
            .header("x-secret", "drop me")
            .body(Full::default())
            .expect("request");
        let res = client.request(req).await.expect("GET /api/headers");
        let status = res.status();
        let body = res.into_body().collect().await.expect("body").to_bytes();
        let unmatched = client::get(dst, "/nowhere").await.expect("GET /nowhere");
        (redirect, (status, body), unmatched.status)
    });
    assert_eq!(redirect.status, 301);
    // The query is kept, as Envoy-based meshes do (the spec is silent).
    assert_eq!(
        redirect.headers["location"],
        "http://new.example/new/page?q=1"
    );
    let (status, body) = rewritten;
    assert_eq!(status, 200, "/api/headers was not rewritten to /headers");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["headers"]["x-route"], "api", "{v}");
    assert!(v["headers"].get("x-secret").is_none(), "{v}");
    // No rule matches: Gateway API says 404.
    assert_eq!(unmatched, 404);
}

#[test]
fn idle_peer_connections_are_closed_and_replaced() {
    let node = Node::new("http_idle");
    let cp = ControlPlane::start(&node, "1h");
    cp.write_manifest(
        "svc-app.yaml",
        &service_yaml("app", APP_VIP, "app", &[(80, 8080, "")]),
    );
    app_pod(&node, &cp, "app-0", "v1", &[]);
    let client = node.pod("client");
    cp.write_manifest(
        "pod-client.yaml",
        &pod_yaml(&client, "client", &[("app", "client")], true),
    );
    client.mesh_with(&cp, "client", &["--idle-timeout", "1s"]);
    client.wait_endpoints("app.default:80", 1);
    let sessions = format!(
        r#"tls_sessions_total{{direction="outbound",peer_identity="{}"}}"#,
        spiffe("app")
    );
    let get = || {
        client
            .ns
            .block_on(client::get(app(), "/"))
            .expect("GET")
            .status
            .as_u16()
    };
    assert_eq!((get(), get()), (200, 200));
    assert_eq!(client.metric(&sessions), 1.0);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(get(), 200, "a request after the idle close failed");
    assert_eq!(
        client.metric(&sessions),
        2.0,
        "the idle connection was not replaced"
    );
}

/// Reads from `s` until `needle` has arrived (or the peer closes).
async fn read_until(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, needle: &[u8]) {
    use tokio::io::AsyncReadExt;
    while !buf.windows(needle.len()).any(|w| w == needle) {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
}

#[test]
fn expect_continue_pipelining_and_connect_work_on_raw_http1() {
    use tokio::io::AsyncWriteExt;

    let m = mesh("http_raw", None);
    let dst = app();
    let (continued, pipelined, tunnel) = m.client.ns.block_on(async move {
        // 100-continue: the body goes only after the interim response.
        let mut s = tokio::net::TcpStream::connect(dst).await.expect("connect");
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            .await
            .expect("headers");
        let mut buf = Vec::new();
        read_until(&mut s, &mut buf, b"100 Continue\r\n\r\n").await;
        let got_100 = String::from_utf8_lossy(&buf).contains("100 Continue");
        s.write_all(b"hello").await.expect("body");
        read_until(&mut s, &mut buf, b"hello").await;
        let continued = got_100 && String::from_utf8_lossy(&buf).contains("200 OK") && buf.ends_with(b"hello");

        // Two pipelined requests in one write: two answers, in order.
        let mut s = tokio::net::TcpStream::connect(dst).await.expect("connect");
        s.write_all(b"GET /status/201 HTTP/1.1\r\nHost: app\r\n\r\nGET /status/202 HTTP/1.1\r\nHost: app\r\n\r\n")
            .await
            .expect("pipelined requests");
        let mut buf = Vec::new();
        read_until(&mut s, &mut buf, b"\"status\":202").await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let pipelined = match (text.find("201 Created"), text.find("202 Accepted")) {
            (Some(a), Some(b)) => a < b,
            _ => false,
        };

        // CONNECT: a tunnel through both sidecars to the app.
        let mut s = tokio::net::TcpStream::connect(dst).await.expect("connect");
        s.write_all(b"CONNECT tunnel.example:443 HTTP/1.1\r\nHost: tunnel.example:443\r\n\r\n")
            .await
            .expect("CONNECT");
        let mut buf = Vec::new();
        read_until(&mut s, &mut buf, b"\r\n\r\n").await;
        let accepted = String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200");
        s.write_all(b"through the tunnel").await.expect("tunnel write");
        let mut echo = Vec::new();
        read_until(&mut s, &mut echo, b"through the tunnel").await;
        (continued, pipelined, accepted && echo == b"through the tunnel")
    });
    assert!(continued, "100-continue did not work through the mesh");
    assert!(pipelined, "pipelined requests were not answered in order");
    assert!(tunnel, "CONNECT did not tunnel through the mesh");
}

#[test]
fn request_metrics_on_both_sides_match_what_happened() {
    let node = Node::new("http_metrics");
    let cp = ControlPlane::start(&node, "1h");
    cp.write_manifest(
        "svc-app.yaml",
        &service_yaml("app", APP_VIP, "app", &[(80, 8080, "")]),
    );
    let server = app_pod(&node, &cp, "app-0", "v1", &[]);
    let client = node.pod("client");
    cp.write_manifest(
        "pod-client.yaml",
        &pod_yaml(&client, "client", &[("app", "client")], true),
    );
    client.mesh_with(&cp, "client", &[]);
    client.wait_endpoints("app.default:80", 1);
    client.ns.block_on(async {
        for path in
            std::iter::repeat_n("/status/200", 20).chain(std::iter::repeat_n("/status/503", 5))
        {
            let r = client::get(app(), path).await.expect("request");
            assert!(r.status == 200 || r.status == 503);
        }
    });
    let out = |code: u16, class: &str| {
        format!(
            r#"response_total{{direction="outbound",service="app.default:80",route="",peer_identity="{}",tls="true",status_code="{code}",classification="{class}",grpc_status=""}}"#,
            spiffe("app")
        )
    };
    let inb = |code: u16, class: &str| {
        format!(
            r#"response_total{{direction="inbound",service="8080",route="",peer_identity="{}",tls="true",status_code="{code}",classification="{class}",grpc_status=""}}"#,
            spiffe("client")
        )
    };
    let client_text = client.metrics();
    let server_text = server.metrics();
    let value = |text: &str, series: &str| weft_e2e::metrics::value(text, series).unwrap_or(0.0);
    assert_eq!(
        value(&client_text, &out(200, "success")),
        20.0,
        "{client_text}"
    );
    assert_eq!(value(&client_text, &out(503, "failure")), 5.0);
    assert_eq!(
        value(&server_text, &inb(200, "success")),
        20.0,
        "{server_text}"
    );
    assert_eq!(value(&server_text, &inb(503, "failure")), 5.0);
    let hist = format!(
        r#"response_latency_ms_count{{direction="outbound",service="app.default:80",route="",peer_identity="{}",tls="true"}}"#,
        spiffe("app")
    );
    assert_eq!(value(&client_text, &hist), 25.0);
    let req = format!(
        r#"request_total{{direction="inbound",service="8080",route="",peer_identity="{}",tls="true"}}"#,
        spiffe("client")
    );
    assert_eq!(value(&server_text, &req), 25.0);

    // Body bytes, both ways, on both sides.
    client.ns.block_on(async {
        let r = client::http(
            Method::POST,
            app(),
            "/echo",
            Bytes::from(vec![7u8; 1000]),
            false,
        )
        .await
        .expect("echo");
        assert_eq!(r.body.len(), 1000);
    });
    let client_text = client.metrics();
    let server_text = server.metrics();
    let bytes = |text: &str, name: &str, dir: &str, service: &str, peer: &str| {
        let series = format!(
            r#"{name}{{direction="{dir}",service="{service}",route="",peer_identity="{peer}",tls="true"}}"#
        );
        value(text, &series)
    };
    assert_eq!(
        bytes(
            &client_text,
            "request_bytes_total",
            "outbound",
            "app.default:80",
            &spiffe("app")
        ),
        1000.0,
        "{client_text}"
    );
    assert_eq!(
        bytes(
            &server_text,
            "request_bytes_total",
            "inbound",
            "8080",
            &spiffe("client")
        ),
        1000.0,
        "{server_text}"
    );
    assert!(
        bytes(
            &client_text,
            "response_bytes_total",
            "outbound",
            "app.default:80",
            &spiffe("app")
        ) >= 1000.0
    );
}

#[test]
fn the_access_log_writes_one_json_line_per_request() {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::new("http_access_log");
    let cp = ControlPlane::start(&node, "1h");
    cp.write_manifest(
        "svc-app.yaml",
        &service_yaml("app", APP_VIP, "app", &[(80, 8080, "")]),
    );
    let server = app_pod(&node, &cp, "app-0", "v1", &[]);
    let client = node.pod("client");
    cp.write_manifest(
        "pod-client.yaml",
        &pod_yaml(&client, "client", &[("app", "client")], true),
    );
    // The proxy runs as its own UID: give it a file it may write.
    let log = node.logs().join("access.log");
    std::fs::write(&log, "").expect("create the log");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    client.mesh_with(
        &cp,
        "client",
        &["--access-log", log.to_str().expect("utf-8")],
    );
    client.wait_endpoints("app.default:80", 1);
    client.ns.block_on(async {
        for path in ["/status/200", "/status/404", "/headers"] {
            client::get(app(), path).await.expect("request");
        }
    });
    let mut lines = Vec::new();
    for _ in 0..50 {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        if lines.len() >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(lines.len(), 3, "{lines:?}");
    let entries: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let statuses: Vec<_> = entries.iter().map(|e| e["status"].as_u64()).collect();
    assert_eq!(statuses, vec![Some(200), Some(404), Some(200)]);
    let e = &entries[1];
    assert_eq!(e["direction"], "outbound");
    assert_eq!(e["method"], "GET");
    assert_eq!(e["path"], "/status/404");
    assert_eq!(e["authority"], APP_VIP);
    assert_eq!(e["peer_identity"], spiffe("app"));
    assert_eq!(e["upstream"], server.addr(8080).to_string());
    assert_eq!(e["retries"], 0);
    assert!(e["duration_ms"].as_f64().is_some_and(|d| d > 0.0));
    assert!(e["time"].as_str().is_some_and(|t| t.ends_with('Z')));
}

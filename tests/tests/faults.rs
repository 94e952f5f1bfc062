//! Fault injection (FaultInjection, referred to by an HTTPRoute or
//! GRPCRoute rule's ExtensionRef filter) at the client's sidecar: an abort
//! and a delay hit their share of requests within statistical bounds, a
//! fault can target only requests carrying a header, gRPC callers get the
//! configured gRPC status, and every injected fault is marked (weft-error,
//! metric, access log, span) so nobody mistakes it for a real failure. A
//! rule naming a FaultInjection that does not exist is never skipped: 500.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use weft_e2e::client::Reply;
use weft_e2e::otlp::Collector;
use weft_e2e::{ControlPlane, Node, Pod, pod_yaml};

const WEB: &str = "198.19.0.60";

const MANIFESTS: &str = r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 198.19.0.60
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: grpc, port: 7070, targetPort: 9090}
---
apiVersion: weft.dev/v1alpha1
kind: FaultInjection
metadata: {name: abort10, namespace: default}
spec:
  abort: {httpStatus: 503, percent: 10}
---
apiVersion: weft.dev/v1alpha1
kind: FaultInjection
metadata: {name: delay20, namespace: default}
spec:
  delay: {fixedDelay: 100ms, percent: 20}
---
apiVersion: weft.dev/v1alpha1
kind: FaultInjection
metadata: {name: mine, namespace: default}
spec:
  abort: {httpStatus: 418, percent: 100}
  headers: [{name: x-fault, value: me}]
---
apiVersion: weft.dev/v1alpha1
kind: FaultInjection
metadata: {name: grpc-abort, namespace: default}
spec:
  abort: {grpcStatus: ABORTED, percent: 100}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /abort}}]
    filters: [{type: ExtensionRef, extensionRef: {group: weft.dev, kind: FaultInjection, name: abort10}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /delay}}]
    filters: [{type: ExtensionRef, extensionRef: {group: weft.dev, kind: FaultInjection, name: delay20}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /mine}}]
    filters: [{type: ExtensionRef, extensionRef: {group: weft.dev, kind: FaultInjection, name: mine}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /ghost}}]
    filters: [{type: ExtensionRef, extensionRef: {group: weft.dev, kind: FaultInjection, name: ghost}}]
    backendRefs: [{name: web, port: 80}]
  - backendRefs: [{name: web, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: web-grpc, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 7070}]
  rules:
  - matches: [{method: {service: weft.test.Echo, method: Unary}}]
    filters: [{type: ExtensionRef, extensionRef: {group: weft.dev, kind: FaultInjection, name: grpc-abort}}]
    backendRefs: [{name: web, port: 7070}]
  - backendRefs: [{name: web, port: 7070}]
"#;

/// Fields drop in order: the collector first, while the sidecars that
/// export to it are alive to close their connections (its graceful
/// shutdown waits for them), then the rest.
struct Faults {
    collector: Collector,
    cp: ControlPlane,
    client: Arc<Pod>,
    /// The client sidecar's access log.
    log: std::path::PathBuf,
    _node: Node,
}

fn faults(test: &str) -> Faults {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::new(test);
    let collector_pod = node.pod("collector");
    let collector_addr = collector_pod.addr(4317);
    let collector = Collector::start(&collector_pod.ns, collector_addr);
    let otlp = format!("http://{collector_addr}");
    let cp = ControlPlane::start(&node, "1h");
    cp.write_manifest("mesh.yaml", MANIFESTS);
    let web = node.pod("web-0");
    web.spawn(
        "http",
        weft_e2e::bins::test_app(),
        &[
            "http",
            "--listen",
            "0.0.0.0:8080",
            "--pod",
            "web-0",
            "--echo-requests",
        ],
    );
    web.spawn(
        "grpc",
        weft_e2e::bins::test_app(),
        &["grpc", "--listen", "0.0.0.0:9090", "--pod", "web-0"],
    );
    web.wait_listening(8080);
    web.wait_listening(9090);
    cp.write_manifest(
        "pod-web-0.yaml",
        &pod_yaml(&web, "web", &[("app", "web")], true),
    );
    web.mesh_with(&cp, "web", &[]);
    let client = node.pod("client");
    cp.write_manifest(
        "pod-client.yaml",
        &pod_yaml(&client, "client", &[("app", "client")], true),
    );
    // The proxy runs as its own UID: give it a file it may write.
    let log = node.logs().join("client-access.log");
    std::fs::write(&log, "").expect("create the log");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    client.mesh_with(
        &cp,
        "client",
        &[
            "--access-log",
            log.to_str().expect("utf-8"),
            "--otlp-endpoint",
            &otlp,
        ],
    );
    client.wait_endpoints("web.default:80", 1);
    let f = Faults {
        collector,
        cp,
        client,
        log,
        _node: node,
    };
    // The routes apply: the targeted fault answers 418.
    let deadline = Instant::now() + Duration::from_secs(15);
    while f.get_with("/mine", &[("x-fault", "me")]).status != 418 {
        assert!(Instant::now() < deadline, "the route never applied");
        std::thread::sleep(Duration::from_millis(100));
    }
    f
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn send(client: &HttpClient, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(format!("http://{WEB}{path}"));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(Full::default()).expect("request");
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("answer in time")
        .expect("answer");
    let (parts, body) = res.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

impl Faults {
    fn get_with(&self, path: &str, headers: &[(&'static str, &'static str)]) -> Reply {
        let path = path.to_string();
        let headers = headers.to_vec();
        self.client.ns.block_on(async move {
            let c: HttpClient = Client::builder(TokioExecutor::new()).build_http();
            send(&c, &path, &headers).await
        })
    }

    /// `n` GETs of `path` from `workers` concurrent clients: each answer
    /// and how long it took.
    fn load(&self, path: &str, n: usize, workers: usize) -> Vec<(Reply, Duration)> {
        let path = path.to_string();
        self.client.ns.block_on(async move {
            let each = n / workers;
            let jobs = (0..workers).map(|_| {
                let path = path.clone();
                async move {
                    let c: HttpClient = Client::builder(TokioExecutor::new()).build_http();
                    let mut out = Vec::with_capacity(each);
                    for _ in 0..each {
                        let started = Instant::now();
                        let r = send(&c, &path, &[]).await;
                        out.push((r, started.elapsed()));
                    }
                    out
                }
            });
            futures_util::future::join_all(jobs)
                .await
                .into_iter()
                .flatten()
                .collect()
        })
    }

    fn injected(&self, kind: &str) -> f64 {
        self.client.metric(&format!(
            r#"faults_injected_total{{route="default/web",kind="{kind}"}}"#
        ))
    }

    /// Access-log lines of the client's sidecar with this `fault`, for
    /// paths under `prefix`.
    fn logged(&self, prefix: &str, fault: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| {
                e["fault"] == fault && e["path"].as_str().is_some_and(|p| p.starts_with(prefix))
            })
            .count()
    }
}

fn weft_error(r: &Reply) -> &str {
    r.headers
        .get("weft-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[test]
fn an_abort_hits_its_share_and_says_so() {
    let f = faults("faults_abort");
    let before = f.injected("abort");
    let errors = || {
        f.client
            .metric(r#"http_proxy_errors_total{service="web.default:80",route="default/web",reason="fault-injected"}"#)
    };
    let errors_before = errors();
    let replies = f.load("/abort/x", 2000, 8);
    let mut aborted = 0;
    for (r, _) in &replies {
        match r.status.as_u16() {
            200 => {}
            503 => {
                aborted += 1;
                assert_eq!(
                    weft_error(r),
                    "fault-injected; route=default/web; service=web.default:80"
                );
                assert!(r.text().contains("not a real failure"), "{r:?}");
            }
            _ => panic!("{r:?}"),
        }
    }
    // 10% of 2000: 200 ± 4.5σ (σ = √(2000 · 0.1 · 0.9) ≈ 13.4).
    eprintln!("aborted {aborted} of 2000");
    assert!((140..=260).contains(&aborted), "aborted {aborted}");
    // Counted and logged as injected, not as the app's failures.
    assert_eq!(f.injected("abort") - before, f64::from(aborted));
    assert_eq!(errors() - errors_before, f64::from(aborted));
    weft_e2e::eventually(
        "the access log marks every abort",
        Duration::from_secs(5),
        || f.logged("/abort", "abort") == aborted as usize,
    );
    // A rule naming a FaultInjection that does not exist is never skipped:
    // 500 invalid-route, and the control plane names it.
    let r = f.get_with("/ghost", &[]);
    assert_eq!(r.status, 500);
    assert!(weft_error(&r).starts_with("invalid-route"), "{r:?}");
    let errors = f.cp.admin_json("/errors").to_string();
    assert!(
        errors.contains("FaultInjection default/ghost does not exist"),
        "{errors}"
    );
}

#[test]
fn a_delay_hits_its_share_and_lasts_as_long() {
    let f = faults("faults_delay");
    let replies = f.load("/delay", 400, 4);
    assert!(replies.iter().all(|(r, _)| r.status == 200));
    let slow = replies
        .iter()
        .filter(|(_, took)| *took >= Duration::from_millis(100))
        .count();
    let delayed = f.injected("delay") as usize;
    // 20% of 400: 80 ± 4.5σ (σ = 8).
    eprintln!("delayed {delayed} of 400, {slow} took 100ms or more");
    assert!((44..=116).contains(&delayed), "delayed {delayed}");
    // Every delayed request took the delay; hardly any other one was slow.
    assert!(slow >= delayed, "{slow} slow, {delayed} delayed");
    assert!(slow <= delayed + 3, "{slow} slow, {delayed} delayed");
    weft_e2e::eventually(
        "the access log marks every delay",
        Duration::from_secs(5),
        || f.logged("/delay", "delay") == delayed,
    );
}

#[test]
fn faults_can_target_a_header_and_grpc_callers_get_their_status() {
    use tonic::Code;
    use weft_e2e::echo::EchoRequest;
    use weft_e2e::echo::echo_client::EchoClient;
    use weft_e2e::echo::hello_client::HelloClient;

    let f = faults("faults_targeted");
    // Only the tester's own requests, carrying the header, get the fault.
    for _ in 0..20 {
        assert_eq!(f.get_with("/mine", &[]).status, 200);
        assert_eq!(f.get_with("/mine", &[("x-fault", "other")]).status, 200);
    }
    let r = f.get_with("/mine", &[("x-fault", "me")]);
    assert_eq!(r.status, 418);
    assert!(weft_error(&r).starts_with("fault-injected"), "{r:?}");
    // The client's span says so.
    weft_e2e::eventually("a span marked weft.fault", Duration::from_secs(10), || {
        f.collector.spans().iter().any(|s| {
            s.span.attributes.iter().any(|a| {
                a.key == "weft.fault"
                    && a.value
                        .as_ref()
                        .is_some_and(|v| format!("{:?}", v.value).contains("\"abort\""))
            })
        })
    });
    // gRPC: the configured status, trailers-only; another method passes.
    f.client.wait_endpoints("web.default:7070", 1);
    let (unary, greet) = f.client.ns.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{WEB}:7070"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect through the mesh");
        let req = || EchoRequest {
            message: "x".into(),
            count: 1,
        };
        let mut echo = EchoClient::new(channel.clone());
        let mut hello = HelloClient::new(channel);
        let unary = echo.unary(req()).await.expect_err("aborted");
        let greet = hello.greet(req()).await.map(|r| r.into_inner().pod);
        (unary, greet)
    });
    assert_eq!(unary.code(), Code::Aborted, "{unary:?}");
    assert!(
        unary
            .metadata()
            .get("weft-error")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("fault-injected")),
        "{unary:?}"
    );
    assert_eq!(greet.expect("Hello is not faulted"), "web-0");
    let grpc_aborts = f
        .client
        .metric(r#"faults_injected_total{route="default/web-grpc",kind="abort"}"#);
    assert_eq!(grpc_aborts, 1.0);
}

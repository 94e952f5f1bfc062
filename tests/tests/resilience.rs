//! Resilience end to end: retries with a budget, timeouts, circuit breaking,
//! bulkheads, and `weft-error` reasons, against fault-injecting test apps.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weft_e2e::{ControlPlane, Node, Pod, http_pod, pod_yaml, service_yaml};

const VIP: &str = "198.19.0.30";
const SVC: &str = "app.default:80";

fn vip() -> SocketAddr {
    SocketAddr::new(VIP.parse().expect("ip"), 80)
}

fn route(rule_extra: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: app, namespace: default}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: app, port: 80}}]\n  rules:\n  - backendRefs: [{{name: app, port: 80}}]\n{rule_extra}"
    )
}

fn policy(spec: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: app, namespace: default}}\nspec:\n  targetRef: {{group: \"\", kind: Service, name: app}}\n{spec}"
    )
}

struct Mesh {
    node: Node,
    cp: ControlPlane,
    client: Arc<Pod>,
}

impl Mesh {
    fn new(test: &str) -> Mesh {
        let node = Node::new(test);
        let cp = ControlPlane::start(&node, "1h");
        cp.write_manifest(
            "svc.yaml",
            &service_yaml("app", VIP, "app", &[(80, 8080, "")]),
        );
        let client = node.pod("client");
        cp.write_manifest(
            "pod-client.yaml",
            &pod_yaml(&client, "client", &[("app", "client")], true),
        );
        client.mesh_with(&cp, "client", &[]);
        Mesh { node, cp, client }
    }

    fn app(&self, name: &str, extra: &[&str]) -> Arc<Pod> {
        http_pod(
            &self.node,
            &self.cp,
            name,
            "app",
            &[("app", "app")],
            extra,
            true,
        )
    }

    fn dead(&self, name: &str) -> Arc<Pod> {
        http_pod(
            &self.node,
            &self.cp,
            name,
            "app",
            &[("app", "app")],
            &[],
            false,
        )
    }

    /// Writes a manifest and waits until the client's proxy has applied it.
    fn apply(&self, file: &str, yaml: &str) {
        let before = self.client.metric("discovery_snapshot_version");
        self.cp.write_manifest(file, yaml);
        self.client.wait_config(before);
    }
}

/// `n` requests over `concurrency` keep-alive connections: status counts,
/// and the `weft-error` reasons seen.
async fn load(
    method: Method,
    path: &'static str,
    n: usize,
    concurrency: usize,
) -> (BTreeMap<u16, usize>, BTreeMap<String, usize>) {
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let method = method.clone();
        tasks.push(tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            let mut out = Vec::new();
            for _ in (w..n).step_by(concurrency) {
                let req = Request::builder()
                    .method(method.clone())
                    .uri(format!("http://{}{path}", vip()))
                    .body(Full::new(Bytes::from_static(b"payload")))
                    .expect("request");
                match client.request(req).await {
                    Ok(res) => {
                        let reason = res
                            .headers()
                            .get("weft-error")
                            .and_then(|v| v.to_str().ok())
                            .map(|v| v.split(';').next().unwrap_or_default().to_string());
                        let status = res.status().as_u16();
                        let _ = res.into_body().collect().await;
                        out.push((status, reason));
                    }
                    Err(_) => out.push((0, Some("client-error".into()))),
                }
            }
            out
        }));
    }
    let (mut statuses, mut reasons) = (BTreeMap::new(), BTreeMap::new());
    for t in tasks {
        for (s, r) in t.await.unwrap_or_default() {
            *statuses.entry(s).or_insert(0) += 1;
            if let Some(r) = r {
                *reasons.entry(r).or_insert(0) += 1;
            }
        }
    }
    (statuses, reasons)
}

#[test]
fn retries_make_a_flaky_service_look_healthy() {
    let m = Mesh::new("res_retries");
    m.app("good-0", &[]);
    m.app("flaky-0", &["--fail-rate", "0.3", "--fail-status", "503"]);
    m.dead("dead-0");
    m.client.wait_endpoints(SVC, 3);

    // Without a retry policy, the failures reach the client.
    m.apply("route.yaml", &route(""));
    let (without, _) = m.client.ns.block_on(load(Method::GET, "/", 600, 4));
    let failed = 600 - without.get(&200).copied().unwrap_or(0);
    assert!(
        failed > 6,
        "failures should show without retries: {without:?}"
    );

    m.apply(
        "route.yaml",
        &route("    retry: {attempts: 2, backoff: 5ms, codes: [503]}\n"),
    );
    let (with, reasons) = m.client.ns.block_on(load(Method::GET, "/", 3000, 4));
    let ok = with.get(&200).copied().unwrap_or(0);
    assert!(
        ok as f64 >= 3000.0 * 0.995,
        "{ok} of 3000 succeeded with retries: {with:?} {reasons:?}"
    );
    assert!(
        m.client
            .metric(r#"http_retries_total{service="app.default:80",route="default/app",reason="status",allowed="true"}"#)
            > 0.0
    );
}

#[test]
fn resets_are_retried_for_gets_but_not_for_posts_unless_opted_in() {
    let m = Mesh::new("res_resets");
    let resetter = m.app("reset-0", &["--reset-rate", "1.0"]);
    m.client.wait_endpoints(SVC, 1);
    m.apply(
        "route.yaml",
        &route("    retry: {attempts: 2, backoff: 5ms}\n"),
    );

    let (posts, reasons) = m.client.ns.block_on(load(Method::POST, "/echo", 10, 1));
    assert_eq!(posts.get(&502), Some(&10), "{posts:?}");
    assert_eq!(reasons.get("upstream-reset"), Some(&10), "{reasons:?}");
    assert_eq!(resetter.served(), 10, "a POST was sent twice after a reset");

    let (gets, _) = m.client.ns.block_on(load(Method::GET, "/", 10, 1));
    assert_eq!(gets.get(&502), Some(&10));
    assert_eq!(
        resetter.served(),
        10 + 30,
        "GETs should be tried three times each"
    );

    m.apply("policy.yaml", &policy("  retryOn: {nonIdempotent: true}\n"));
    m.client.ns.block_on(load(Method::POST, "/echo", 10, 1));
    assert_eq!(
        resetter.served(),
        40 + 30,
        "opted-in POSTs should be retried"
    );
}

#[test]
fn the_retry_budget_stops_a_retry_storm() {
    let m = Mesh::new("res_storm");
    let pods: Vec<_> = (0..2)
        .map(|i| {
            m.app(
                &format!("broken-{i}"),
                &["--fail-rate", "1.0", "--fail-status", "503"],
            )
        })
        .collect();
    m.client.wait_endpoints(SVC, 2);
    // No ejection here: this test is about the budget alone.
    m.apply(
        "policy.yaml",
        &policy("  outlierDetection: {consecutiveFailures: 0}\n"),
    );
    m.apply(
        "route.yaml",
        &route("    retry: {attempts: 4, backoff: 1ms, codes: [503]}\n"),
    );
    let started = Instant::now();
    let (statuses, _) = m.client.ns.block_on(load(Method::GET, "/", 1000, 4));
    let secs = started.elapsed().as_secs_f64().ceil() + 10.0;
    assert!(
        statuses.get(&503).copied().unwrap_or(0) >= 995,
        "{statuses:?}"
    );
    let attempts: u64 = pods.iter().map(|p| p.served()).sum();
    // 20% of requests plus 10 per second (over the window, which starts full).
    let cap = 1000.0 * 1.2 + 10.0 * secs;
    assert!(
        (attempts as f64) <= cap,
        "{attempts} attempts for 1000 requests (cap {cap})"
    );
    assert!(attempts > 1000, "no retry at all");
    assert!(
        m.client
            .metric(r#"http_retries_total{service="app.default:80",route="default/app",reason="status",allowed="false"}"#)
            > 0.0
    );
}

#[test]
fn timeouts_answer_504_at_the_deadline_and_per_try_timeouts_find_the_fast_endpoint() {
    let m = Mesh::new("res_timeouts");
    m.app("slow-0", &["--latency", "1s"]);
    let fast = m.app("fast-0", &[]);
    m.client.wait_endpoints(SVC, 2);
    m.apply("route.yaml", &route("    timeouts: {request: 300ms}\n"));
    let got = m.client.ns.block_on(async {
        let start = Instant::now();
        let r = weft_e2e::client::get(vip(), "/delay/2000").await;
        (r, start.elapsed())
    });
    let (res, took) = got;
    let res = res.expect("a response");
    assert_eq!(res.status, 504);
    assert!(
        res.headers["weft-error"]
            .to_str()
            .unwrap_or_default()
            .starts_with("timeout"),
        "{:?}",
        res.headers
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(400),
        "answered after {took:?}"
    );

    // A per-try deadline below the slow endpoint's latency, with retries:
    // every request ends on the fast endpoint, well before the slow one answers.
    m.apply("route.yaml", &route("    timeouts: {request: 2s, backendRequest: 200ms}\n    retry: {attempts: 2, backoff: 1ms}\n"));
    let before = fast.served();
    let (statuses, reasons) = m.client.ns.block_on(async {
        let start = Instant::now();
        let r = load(Method::GET, "/", 20, 2).await;
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "took {:?}",
            start.elapsed()
        );
        r
    });
    assert_eq!(statuses.get(&200), Some(&20), "{statuses:?} {reasons:?}");
    assert_eq!(fast.served() - before, 20);
}

#[test]
fn a_failing_endpoint_is_ejected_but_never_more_than_the_cap() {
    let m = Mesh::new("res_eject");
    let bad = m.app("bad-0", &["--fail-rate", "1.0", "--fail-status", "500"]);
    m.app("good-0", &[]);
    m.app("good-1", &[]);
    m.client.wait_endpoints(SVC, 3);
    m.apply("policy.yaml", &policy("  outlierDetection: {consecutiveFailures: 3, baseEjectionTime: 60s, maxEjectionPercent: 50}\n"));
    m.client.ns.block_on(load(Method::GET, "/", 100, 2));
    let after_ejection = bad.served();
    assert!(
        (3..=6).contains(&after_ejection),
        "the bad endpoint served {after_ejection} before ejection"
    );
    m.client.ns.block_on(load(Method::GET, "/", 200, 2));
    assert_eq!(
        bad.served(),
        after_ejection,
        "an ejected endpoint still got traffic"
    );

    // Two of three failing with a 50% cap: only one can be out at a time.
    let m = Mesh::new("res_eject_cap");
    let a = m.app("bad-a", &["--fail-rate", "1.0", "--fail-status", "500"]);
    let b = m.app("bad-b", &["--fail-rate", "1.0", "--fail-status", "500"]);
    m.app("good-0", &[]);
    m.client.wait_endpoints(SVC, 3);
    m.apply("policy.yaml", &policy("  outlierDetection: {consecutiveFailures: 3, baseEjectionTime: 60s, maxEjectionPercent: 50}\n"));
    m.client.ns.block_on(load(Method::GET, "/", 100, 2));
    // Which endpoints the client's proxy has ejected (its /config says).
    let cfg = m.client.config();
    let ejected: Vec<String> = cfg["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == SVC)
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["ejected"] == true)
        .filter_map(|e| e["pod"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        ejected.len(),
        1,
        "exactly one failing endpoint is out (cap 50% of 3): {cfg}"
    );
    assert!(ejected[0] == a.name || ejected[0] == b.name, "{ejected:?}");
}

#[test]
fn the_bulkhead_fails_fast_beyond_its_cap() {
    let m = Mesh::new("res_bulkhead");
    m.app("slow-0", &[]);
    m.client.wait_endpoints(SVC, 1);
    m.apply(
        "policy.yaml",
        &policy("  limits: {maxConcurrentRequests: 50}\n"),
    );
    let rss = |p: &Pod| -> u64 {
        let pid = p.proxy_pid();
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    };
    let before = rss(&m.client);
    let (statuses, reasons) = m
        .client
        .ns
        .block_on(load(Method::GET, "/delay/1000", 200, 200));
    assert_eq!(statuses.get(&200), Some(&50), "{statuses:?}");
    assert_eq!(statuses.get(&503), Some(&150), "{statuses:?}");
    assert_eq!(reasons.get("overloaded"), Some(&150), "{reasons:?}");
    let after = rss(&m.client);
    assert!(
        after < before + 20 * 1024,
        "proxy RSS grew from {before} KiB to {after} KiB"
    );
}

#[test]
fn every_weft_error_reason_is_produced() {
    let m = Mesh::new("res_reasons");
    m.dead("dead-0");
    m.client.wait_endpoints(SVC, 1);
    // connect-refused: one attempt at a dead endpoint.
    let (_, reasons) = m.client.ns.block_on(load(Method::GET, "/", 1, 1));
    assert_eq!(reasons.get("connect-refused"), Some(&1), "{reasons:?}");
    // retry-budget-exhausted: retries wanted, none allowed.
    m.apply("policy.yaml", &policy("  retryBudget: {ratio: 0, minPerSecond: 0}\n  retry: {attempts: 3}\n  outlierDetection: {consecutiveFailures: 2, baseEjectionTime: 60s, maxEjectionPercent: 100}\n"));
    let (_, reasons) = m.client.ns.block_on(load(Method::GET, "/", 1, 1));
    assert_eq!(
        reasons.get("retry-budget-exhausted"),
        Some(&1),
        "{reasons:?}"
    );
    // circuit-open: the only endpoint is ejected after two failures.
    let (_, reasons) = m.client.ns.block_on(load(Method::GET, "/", 3, 1));
    assert!(reasons.contains_key("circuit-open"), "{reasons:?}");
    // no-endpoints: a Service that selects nothing.
    m.apply(
        "svc-empty.yaml",
        &service_yaml("empty", "198.19.0.31", "nobody", &[(80, 8080, "")]),
    );
    let r = m
        .client
        .ns
        .block_on(weft_e2e::client::get(
            SocketAddr::new("198.19.0.31".parse().expect("ip"), 80),
            "/",
        ))
        .expect("answer");
    assert_eq!(r.status, 503);
    assert!(
        r.headers["weft-error"]
            .to_str()
            .unwrap_or_default()
            .starts_with("no-endpoints; service=empty.default:80"),
        "{:?}",
        r.headers
    );
    // no-route and no-backend.
    m.apply(
        "route.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: app, namespace: default}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: app, port: 80}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /missing}}]\n    backendRefs: [{name: nothing-here, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /none}}]\n  - matches: [{path: {type: PathPrefix, value: /magic}}]\n    filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Magic, name: m}}]\n    backendRefs: [{name: app, port: 80}]\n",
    );
    let (_, reasons) = m.client.ns.block_on(load(Method::GET, "/missing/x", 1, 1));
    assert_eq!(reasons.get("invalid-backend"), Some(&1), "{reasons:?}");
    let (_, reasons) = m.client.ns.block_on(load(Method::GET, "/none", 1, 1));
    assert_eq!(reasons.get("no-backend"), Some(&1), "{reasons:?}");
    let (_, reasons) = m.client.ns.block_on(load(Method::GET, "/magic", 1, 1));
    assert_eq!(reasons.get("invalid-route"), Some(&1), "{reasons:?}");
    let (_, reasons) = m.client.ns.block_on(load(Method::GET, "/elsewhere", 1, 1));
    assert_eq!(reasons.get("no-route"), Some(&1), "{reasons:?}");
    let _ = (&m.node, Duration::ZERO);
}

#[test]
fn connection_and_tls_failures_say_which() {
    use weft_e2e::spiffe;
    let m = Mesh::new("res_conn_reasons");
    // Listed as meshed, but what runs there is not a sidecar:
    // - a plain HTTP server: the client's TLS handshake fails;
    let plain = m.node.pod("plain-0");
    plain.spawn(
        "http",
        weft_e2e::bins::test_app(),
        &["http", "--listen", "0.0.0.0:8080"],
    );
    plain.wait_listening(8080);
    // - a pod that drops connection attempts: the connect times out;
    let black_hole = m.node.pod("hole-0");
    black_hole.exec(
        "iptables",
        &["-I", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "DROP"],
    );
    // - a pod that answers with "host unreachable": the connect fails.
    let unreachable = m.node.pod("unreach-0");
    unreachable.exec(
        "iptables",
        &[
            "-I",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "8080",
            "-j",
            "REJECT",
            "--reject-with",
            "icmp-host-unreachable",
        ],
    );
    // - a sidecar the control plane does not list, whose identity is not
    //   the one the client is told to expect there.
    let impostor = m.node.pod("impostor-0");
    impostor.spawn(
        "http",
        weft_e2e::bins::test_app(),
        &["http", "--listen", "0.0.0.0:8080"],
    );
    impostor.wait_listening(8080);
    impostor.mesh_with(&m.cp, "impostor", &[]);
    let probe = m.node.pod("probe");
    m.cp.write_manifest(
        "pod-probe.yaml",
        &pod_yaml(&probe, "probe", &[("app", "probe")], true),
    );
    let expect_app = format!("{}={}", impostor.ip, spiffe("app"));
    probe.mesh_with(
        &m.cp,
        "probe",
        &["--connect-timeout", "300ms", "--peer-identity", &expect_app],
    );
    for (pod, name) in [
        (&plain, "plain"),
        (&black_hole, "hole"),
        (&unreachable, "unreach"),
    ] {
        let svc = format!("svc-{name}.yaml");
        let vip = match name {
            "plain" => "198.19.0.41",
            "hole" => "198.19.0.42",
            _ => "198.19.0.43",
        };
        m.cp.write_manifest(
            &format!("pod-{name}.yaml"),
            &pod_yaml(pod, name, &[("app", name)], true),
        );
        m.cp.write_manifest(&svc, &service_yaml(name, vip, name, &[(80, 8080, "http")]));
    }
    for name in ["plain", "hole", "unreach"] {
        probe.wait_endpoints(&format!("{name}.default:80"), 1);
    }
    let reason = |dst: SocketAddr| {
        probe
            .ns
            .block_on(weft_e2e::client::get(dst, "/"))
            .ok()
            .and_then(|r| {
                r.headers
                    .get("weft-error")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.split(';').next().unwrap_or_default().to_string())
            })
    };
    let at = |ip: &str| SocketAddr::new(ip.parse().expect("ip"), 80);
    assert_eq!(reason(at("198.19.0.41")).as_deref(), Some("tls-failed"));
    assert_eq!(
        reason(at("198.19.0.42")).as_deref(),
        Some("connect-timeout")
    );
    assert_eq!(reason(at("198.19.0.43")).as_deref(), Some("connect-failed"));
    assert_eq!(
        reason(impostor.addr(8080)).as_deref(),
        Some("tls-identity-mismatch")
    );
}

#[test]
fn connection_limits_refuse_the_connection_beyond_the_cap() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = Mesh::new("res_conn_limit");
    let db = m.node.pod("db-0");
    db.spawn(
        "echo",
        weft_e2e::bins::test_app(),
        &["tcp", "--listen", "0.0.0.0:7000"],
    );
    db.wait_listening(7000);
    m.cp.write_manifest("pod-db.yaml", &pod_yaml(&db, "db", &[("app", "db")], true));
    db.mesh_with(&m.cp, "db", &[]);
    m.cp.write_manifest(
        "svc-db.yaml",
        &service_yaml("db", "198.19.0.50", "db", &[(7000, 7000, "tcp")]),
    );
    m.client.wait_endpoints("db.default:7000", 1);
    m.apply(
        "policy-db.yaml",
        "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: db, namespace: default}\nspec:\n  targetRef: {group: \"\", kind: Service, name: db}\n  limits: {maxConnections: 2}\n",
    );
    let dst = SocketAddr::new("198.19.0.50".parse().expect("ip"), 7000);
    let echoed = m.client.ns.block_on(async move {
        let mut conns = Vec::new();
        let mut echoed = Vec::new();
        for i in 0..3u8 {
            let mut s = tokio::net::TcpStream::connect(dst).await.expect("connect");
            let _ = s.write_all(&[i]).await;
            let mut b = [0u8; 1];
            let ok = matches!(
                tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await,
                Ok(Ok(1))
            );
            echoed.push(ok);
            conns.push(s); // held open
        }
        echoed
    });
    assert_eq!(
        echoed,
        vec![true, true, false],
        "the third connection should be refused"
    );
}

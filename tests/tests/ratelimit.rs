//! Rate limits at the server-side sidecar (TrafficPolicy `rateLimit`): a
//! limit holds under 8 concurrent clients within the token bucket's maths,
//! every refusal is a 429 that says why and when to come back, the metric
//! and the access log agree with what the clients saw, and `Client` and
//! `Route` keys give callers and rules buckets of their own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use weft_e2e::client::Reply;
use weft_e2e::{ControlPlane, Node, Pod, pod_yaml, service_yaml};

const WEB: &str = "198.19.0.50";

struct Limits {
    node: Node,
    cp: ControlPlane,
    web: Arc<Pod>,
    /// The access log of web's sidecar.
    log: std::path::PathBuf,
    /// Meshed callers with ServiceAccounts `alice` and `bob`.
    alice: Arc<Pod>,
    bob: Arc<Pod>,
}

fn limits(test: &str) -> Limits {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::new(test);
    let cp = ControlPlane::start(&node, "1h");
    cp.write_manifest(
        "svc-web.yaml",
        &service_yaml("web", WEB, "web", &[(80, 8080, ""), (7070, 9090, "")]),
    );
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
    // The proxy runs as its own UID: give it a file it may write.
    let log = node.logs().join("web-access.log");
    std::fs::write(&log, "").expect("create the log");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    web.mesh_with(&cp, "web", &["--access-log", log.to_str().expect("utf-8")]);
    let caller = |sa: &str| {
        let pod = node.pod(sa);
        cp.write_manifest(
            &format!("pod-{sa}.yaml"),
            &pod_yaml(&pod, sa, &[("app", sa)], true),
        );
        pod.mesh_with(&cp, sa, &[]);
        pod.wait_endpoints("web.default:80", 1);
        pod
    };
    let (alice, bob) = (caller("alice"), caller("bob"));
    Limits {
        node,
        cp,
        web,
        log,
        alice,
        bob,
    }
}

impl Limits {
    /// Writes a TrafficPolicy `web-limit` with this `rateLimit` and waits
    /// until web's sidecar applies it.
    fn limit(&self, rate_limit: &str, rps: u64) {
        self.cp.write_manifest(
            "tp-web.yaml",
            &format!(
                "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: web-limit, namespace: default}}\nspec:\n  targetRef: {{group: \"\", kind: Service, name: web}}\n  rateLimit: {rate_limit}\n"
            ),
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let cfg = self.web.config();
            let applied = cfg["rate_limits"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|l| l["name"] == "default/web-limit" && l["port"] == 8080 && l["rps"] == rps);
            if applied {
                return;
            }
            assert!(Instant::now() < deadline, "the limit never applied: {cfg}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn decisions(&self, decision: &str) -> f64 {
        self.web.metric(&format!(
            r#"rate_limit_decisions_total{{limit="default/web-limit",decision="{decision}"}}"#
        ))
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(client: &HttpClient, url: &str) -> Reply {
    let req = Request::get(url).body(Full::default()).expect("request");
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

/// `n` GETs in a row from `pod`: how many were admitted (200).
fn admitted(pod: &Pod, url: &str, n: usize) -> usize {
    let url = url.to_string();
    pod.ns.block_on(async move {
        let c = client();
        let mut ok = 0;
        for _ in 0..n {
            let r = get(&c, &url).await;
            match r.status.as_u16() {
                200 => ok += 1,
                429 => {}
                s => panic!("{url}: {s} {r:?}"),
            }
        }
        ok
    })
}

fn header<'r>(r: &'r Reply, name: &str) -> &'r str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[test]
fn a_limit_holds_under_8_concurrent_clients_with_429_and_retry_after() {
    const RPS: f64 = 200.0;
    const BURST: f64 = 20.0;
    const CLIENTS: usize = 8;
    const EACH: usize = 125;
    // Each client every 20ms: 400/s offered, twice the rate, for ~2.5s.
    const PACE: Duration = Duration::from_millis(20);
    let m = limits("ratelimit_8_clients");
    m.limit("{requestsPerSecond: 200, burst: 20}", 200);
    let served_before = m.web.served();
    let url = format!("http://{WEB}/");
    let (replies, elapsed) = m.alice.ns.block_on(async move {
        let started = Instant::now();
        let clients = (0..CLIENTS).map(|i| {
            let url = url.clone();
            async move {
                let c = client();
                // Staggered, so the offered load is even.
                tokio::time::sleep(PACE * i as u32 / CLIENTS as u32).await;
                let mut tick = tokio::time::interval(PACE);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut out = Vec::with_capacity(EACH);
                for _ in 0..EACH {
                    tick.tick().await;
                    out.push(get(&c, &url).await);
                }
                out
            }
        });
        let replies: Vec<Reply> = futures_util::future::join_all(clients)
            .await
            .into_iter()
            .flatten()
            .collect();
        (replies, started.elapsed())
    });
    assert_eq!(replies.len(), CLIENTS * EACH);
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status != 200).collect();
    // Every refusal says why and when to come back.
    for r in &refused {
        assert_eq!(r.status, 429, "{r:?}");
        assert_eq!(
            header(r, "weft-error"),
            "rate-limited; limit=default/web-limit"
        );
        let after: u64 = header(r, "retry-after").parse().expect("whole seconds");
        assert!(after >= 1, "{r:?}");
    }
    // The bucket's maths: its burst, then its rate, over the time measured
    // here (from the first send to the last answer), within 2%.
    let want = BURST + RPS * elapsed.as_secs_f64();
    let got = ok as f64;
    eprintln!(
        "admitted {ok} of {} in {elapsed:?}; burst + rps x T = {want:.1}",
        CLIENTS * EACH
    );
    assert!(
        (got - want).abs() <= want * 0.02,
        "admitted {ok}, expected {want:.1} ± 2% (T = {elapsed:?})"
    );
    // The sidecar's counts are the clients' and the app saw only what was
    // admitted.
    assert_eq!(m.decisions("admitted"), ok as f64);
    assert_eq!(m.decisions("limited"), refused.len() as f64);
    assert_eq!(m.web.served() - served_before, ok as u64);
    // The access log marks each refused request with the limit.
    let marked = || {
        std::fs::read_to_string(&m.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["rate_limit"] == "default/web-limit")
            .inspect(|e| assert_eq!(e["status"], 429, "{e}"))
            .count()
    };
    weft_e2e::eventually(
        "the access log lists every refusal",
        Duration::from_secs(5),
        || marked() == refused.len(),
    );
    drop(m.node);
}

#[test]
fn client_and_route_keys_give_callers_and_rules_buckets_of_their_own() {
    let m = limits("ratelimit_keys");
    let web = format!("http://{WEB}");
    // Per caller: each identity has its own bucket of 5 (1 token a second
    // comes back meanwhile at most).
    m.limit("{requestsPerSecond: 1, burst: 5, key: Client}", 1);
    let a = admitted(&m.alice, &format!("{web}/"), 10);
    let b = admitted(&m.bob, &format!("{web}/"), 10);
    assert!((5..=6).contains(&a), "alice: {a}");
    assert!((5..=6).contains(&b), "bob: {b}");
    // A snapshot that does not change the limit keeps its buckets: alice's
    // stays (nearly) empty, where a new one would admit 5 at once.
    let drained = Instant::now();
    let version = m.web.metric("discovery_snapshot_version");
    m.cp.write_manifest(
        "svc-other.yaml",
        &service_yaml("other", "198.19.0.51", "other", &[(80, 8080, "")]),
    );
    m.web.wait_config(version);
    let again = admitted(&m.alice, &format!("{web}/"), 5);
    let refilled = 1 + drained.elapsed().as_secs() as usize;
    assert!(
        again <= refilled && again < 5,
        "alice got {again} after a snapshot ({refilled} tokens could have come back)"
    );
    // A plaintext caller outside the mesh (permissive mode), calling the
    // pod itself, is known by its address: a bucket of its own too.
    let carol = m.node.pod("carol");
    let c = admitted(&carol, &format!("http://{}/", m.web.addr(8080)), 10);
    assert!((5..=6).contains(&c), "carol: {c}");
    assert_eq!(m.decisions("admitted"), (a + b + again + c) as f64);
    // Per route rule, matched at the server: /a and /b are two rules with a
    // bucket each, whoever calls.
    m.cp.write_manifest(
        "route-web.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web}\nspec:\n  parentRefs: [{kind: Service, name: web, port: 80}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /a}}]\n    backendRefs: [{name: web, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /b}}]\n    backendRefs: [{name: web, port: 80}]\n",
    );
    m.limit("{requestsPerSecond: 2, burst: 3, key: Route}", 2);
    let a1 = admitted(&m.alice, &format!("{web}/a/1"), 3);
    let a2 = admitted(&m.bob, &format!("{web}/a/2"), 3);
    let b = admitted(&m.bob, &format!("{web}/b"), 3);
    assert!((3..=4).contains(&(a1 + a2)), "/a: {a1} + {a2}");
    assert_eq!(b, 3, "/b has a bucket of its own");
}

#[test]
fn grpc_callers_get_resource_exhausted() {
    use tonic::Code;
    use weft_e2e::echo::EchoRequest;
    use weft_e2e::echo::echo_client::EchoClient;

    let m = limits("ratelimit_grpc");
    m.limit("{requestsPerSecond: 1, burst: 2}", 1);
    m.alice.wait_endpoints("web.default:7070", 1);
    let codes = m.alice.ns.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{WEB}:7070"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect through the mesh");
        let mut echo = EchoClient::new(channel);
        let mut out = Vec::new();
        for _ in 0..4 {
            let req = EchoRequest {
                message: "x".into(),
                count: 1,
            };
            out.push(match echo.unary(req).await {
                Ok(_) => (Code::Ok, String::new()),
                Err(s) => (
                    s.code(),
                    s.metadata()
                        .get("weft-error")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                ),
            });
        }
        out
    });
    let limited = (
        Code::ResourceExhausted,
        "rate-limited; limit=default/web-limit".to_string(),
    );
    assert_eq!(
        codes,
        [
            (Code::Ok, String::new()),
            (Code::Ok, String::new()),
            limited.clone(),
            limited
        ]
    );
}

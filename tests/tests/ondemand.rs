//! On-demand discovery: a sidecar starts with its own settings and the
//! table of Service names, and receives a Service's endpoints and routes
//! only once its app uses it (or its pod declares it in
//! `weft.dev/dependencies`); unused for the idle period, it is dropped. In
//! real namespaces with real iptables, as the app would see it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use http::Method;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use weft_e2e::client::{a_records, dns_query};
use weft_e2e::{ControlPlane, Node, Pod, bins, eventually, pod_yaml, service_yaml, spiffe};

const WEB_VIP: &str = "198.19.0.40";
const WEB2_VIP: &str = "198.19.0.41";
const DB_VIP: &str = "198.19.0.42";
/// What the pods' resolv.conf names; port 53 is redirected to the sidecar.
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 250);

fn vip(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

/// An HTTP server pod answering `{"version": version}`, behind `app`.
fn http_pod(node: &Node, cp: &ControlPlane, name: &str, app: &str, version: &str) -> Arc<Pod> {
    let pod = node.pod(name);
    pod.spawn(
        "http",
        bins::test_app(),
        &[
            "http",
            "--listen",
            "0.0.0.0:8080",
            "--service",
            app,
            "--version",
            version,
            "--pod",
            name,
        ],
    );
    pod.wait_listening(8080);
    cp.write_manifest(
        &format!("pod-{name}.yaml"),
        &pod_yaml(&pod, app, &[("app", app)], true),
    );
    pod.mesh_with(cp, app, &[]);
    pod
}

/// A pod manifest declaring `deps` in `weft.dev/dependencies`.
fn with_dependencies(yaml: &str, deps: &str) -> String {
    yaml.replace(
        "    weft.dev/inject: enabled\n",
        &format!("    weft.dev/inject: enabled\n    weft.dev/dependencies: \"{deps}\"\n"),
    )
}

struct Mesh {
    node: Node,
    cp: ControlPlane,
    db: Arc<Pod>,
}

/// Services web (web-0, v1), web-v2 (web-v2-0, v2) and db (db-0, v1), all
/// HTTP on port 80; no clients yet.
fn mesh(test: &str, cp_args: &[&str]) -> Mesh {
    let node = Node::new(test);
    let cp = ControlPlane::start_with(&node, "1h", cp_args);
    for (name, ip) in [("web", WEB_VIP), ("web-v2", WEB2_VIP), ("db", DB_VIP)] {
        cp.write_manifest(
            &format!("svc-{name}.yaml"),
            &service_yaml(name, ip, name, &[(80, 8080, "http")]),
        );
    }
    http_pod(&node, &cp, "web-0", "web", "v1");
    http_pod(&node, &cp, "web-v2-0", "web-v2", "v2");
    let db = http_pod(&node, &cp, "db-0", "db", "v1");
    Mesh { node, cp, db }
}

impl Mesh {
    /// A meshed client pod with the sidecar's DNS; `deps` declared if given.
    fn client(&self, name: &str, deps: Option<&str>, extra: &[&str]) -> Arc<Pod> {
        let pod = self.node.pod(name);
        let yaml = pod_yaml(&pod, name, &[("app", name)], true);
        let yaml = match deps {
            Some(d) => with_dependencies(&yaml, d),
            None => yaml,
        };
        self.cp.write_manifest(&format!("pod-{name}.yaml"), &yaml);
        pod.mesh_with_dns(&self.cp, name, UPSTREAM, extra);
        // Started: the names table is in, and the control plane has read
        // this pod's manifest (and so the servers' ones, written before:
        // otherwise a first call can find a Service with no endpoints yet).
        eventually("the names table arrives", Duration::from_secs(10), || {
            pod.config()["names"]
                .as_array()
                .is_some_and(|n| n.len() == 3)
        });
        eventually(
            "the control plane knows the pod",
            Duration::from_secs(10),
            || {
                self.cp.admin_json("/proxies")["proxies"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|p| p["pod"] == name && p["pod_known"] == true))
            },
        );
        pod
    }
}

/// The Services a proxy holds, by name ("web.default:80").
fn held(pod: &Pod) -> Vec<String> {
    pod.config()["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect()
}

/// One GET from `pod` on a new connection: the version that answered, or
/// what went wrong.
fn version(pod: &Pod, dst: SocketAddr, header: Option<(&str, &str)>) -> String {
    let header = header.map(|(k, v)| (k.to_string(), v.to_string()));
    pod.ns.block_on(async move {
        let mut req = http::Request::builder()
            .method(Method::GET)
            .uri(format!("http://{dst}/"));
        if let Some((k, v)) = &header {
            req = req.header(k, v);
        }
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let res = tokio::time::timeout(
            Duration::from_secs(10),
            client.request(req.body(Default::default()).expect("request")),
        )
        .await;
        match res {
            Ok(Ok(r)) if r.status() == 200 => {
                use http_body_util::BodyExt;
                let body = r.into_body().collect().await.map(|b| b.to_bytes());
                body.ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|v| v["version"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "unparsable".into())
            }
            Ok(Ok(r)) => format!("status {}", r.status()),
            Ok(Err(e)) => format!("error {e}"),
            Err(_) => "timed out".into(),
        }
    })
}

fn proxy_status(cp: &ControlPlane, pod: &str) -> serde_json::Value {
    cp.admin_json("/status")["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["pod"] == pod)
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_pod_calls_a_service_it_never_declared() {
    let m = mesh("od_first", &[]);
    let client = m.client("client", None, &[]);
    assert!(
        held(&client).is_empty(),
        "held before any call: {:?}",
        held(&client)
    );

    // The app resolves the name, then calls it.
    let answer = client
        .ns
        .block_on(dns_query(
            SocketAddr::new(UPSTREAM.into(), 53),
            "web.default.svc.cluster.local.",
            RecordType::A,
        ))
        .expect("a DNS answer");
    assert_eq!(a_records(&answer), [WEB_VIP.parse::<Ipv4Addr>().unwrap()]);
    assert_eq!(version(&client, vip(WEB_VIP, 80), None), "v1");
    assert!(held(&client).contains(&"web.default:80".to_string()));

    // No DNS first: the connection to the VIP subscribes and waits.
    let started = Instant::now();
    assert_eq!(version(&client, vip(DB_VIP, 80), None), "v1");
    let first = started.elapsed();
    let started = Instant::now();
    assert_eq!(version(&client, vip(DB_VIP, 80), None), "v1");
    let second = started.elapsed();
    println!("first request to a new Service: {first:?}; the next one: {second:?}");
    let waited = client.metric("discovery_subscription_wait_seconds_count");
    println!("connections that waited for a subscription: {waited}");
    assert!(
        (1.0..=2.0).contains(&waited),
        "the db connection waits (web was prefetched by DNS, and may have been in already): {waited}"
    );
    // Only what was used.
    let mut now = held(&client);
    now.sort();
    assert_eq!(now, ["db.default:80", "web.default:80"]);
    // Every hop in mTLS: the server's sidecar saw the client's identity.
    let db = &m.db;
    let series = format!(
        r#"tls_sessions_total{{direction="inbound",peer_identity="{}"}}"#,
        spiffe("client")
    );
    assert!(db.metric(&series) >= 1.0);
}

#[test]
fn a_service_unused_for_the_idle_period_is_dropped() {
    let m = mesh("od_idle", &[]);
    let client = m.client("client", None, &["--discovery-idle", "2s"]);
    assert_eq!(version(&client, vip(WEB_VIP, 80), None), "v1");
    assert!(held(&client).contains(&"web.default:80".to_string()));
    eventually(
        "web is dropped once unused",
        Duration::from_secs(10),
        || {
            held(&client).is_empty()
                && client.config()["subscriptions"]
                    .as_array()
                    .is_some_and(|s| s.is_empty())
        },
    );
    // Used again: back.
    assert_eq!(version(&client, vip(WEB_VIP, 80), None), "v1");

    // An open connection keeps it, however quiet.
    let dst = vip(WEB_VIP, 80);
    let open = client
        .ns
        .block_on(async move { TcpStream::connect(dst).await.expect("connect") });
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        held(&client).contains(&"web.default:80".to_string()),
        "dropped while a connection was open"
    );
    drop(open);
    eventually(
        "dropped after the connection closed",
        Duration::from_secs(10),
        || held(&client).is_empty(),
    );
}

fn header_route(service_for_header: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web
  namespace: default
spec:
  parentRefs:
  - {{group: "", kind: Service, name: web, port: 80}}
  rules:
  - matches:
    - headers:
      - {{name: x-canary, value: "yes"}}
    backendRefs:
    - {{name: {service_for_header}, port: 80}}
  - backendRefs:
    - {{name: web, port: 80}}
"#
    )
}

#[test]
fn a_route_change_reaches_a_subscribed_proxy_and_not_an_unsubscribed_one() {
    let m = mesh("od_route", &[]);
    m.cp.write_manifest("route.yaml", &header_route("web"));
    let a = m.client("a", None, &[]);
    let b = m.client("b", None, &[]);
    assert_eq!(
        version(&a, vip(WEB_VIP, 80), Some(("x-canary", "yes"))),
        "v1"
    );
    // b uses db only.
    assert_eq!(version(&b, vip(DB_VIP, 80), None), "v1");
    let sent = |pod: &str| {
        proxy_status(&m.cp, pod)["sent_version"]
            .as_u64()
            .unwrap_or(0)
    };
    let (a_before, b_before) = (sent("a"), sent("b"));

    m.cp.write_manifest("route.yaml", &header_route("web-v2"));
    eventually("a follows the new route", Duration::from_secs(10), || {
        version(&a, vip(WEB_VIP, 80), Some(("x-canary", "yes"))) == "v2"
    });
    // Both run the current version of what they see.
    eventually("a and b are current", Duration::from_secs(10), || {
        let version = m.cp.admin_json("/status")["version"].as_u64();
        ["a", "b"].iter().all(|p| {
            let s = proxy_status(&m.cp, p);
            s["current"] == true && s["synced_version"].as_u64() == version
        })
    });
    assert!(sent("a") > a_before, "a was not sent the change");
    assert_eq!(
        sent("b"),
        b_before,
        "b was sent a change to a Service it never used"
    );
    let held_b = held(&b);
    assert!(
        !held_b.iter().any(|s| s.starts_with("web")),
        "b holds web: {held_b:?}"
    );
    // a got web-v2 with the route that sends to it.
    assert!(held(&a).contains(&"web-v2.default:80".to_string()));
}

#[test]
fn declared_dependencies_are_in_the_first_snapshot() {
    let m = mesh("od_declared", &[]);
    let client = m.client(
        "client",
        Some("db, web.default.svc.cluster.local"),
        &["--discovery-idle", "2s"],
    );
    eventually(
        "the declared Services arrive before any call",
        Duration::from_secs(10),
        || {
            let mut h = held(&client);
            h.sort();
            h == ["db.default:80", "web.default:80"]
        },
    );
    assert_eq!(
        client.metric("discovery_subscription_wait_seconds_count"),
        0.0
    );
    // Declared, they never idle out.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(held(&client).len(), 2);
    assert_eq!(version(&client, vip(DB_VIP, 80), None), "v1");
    assert_eq!(
        client.metric("discovery_subscription_wait_seconds_count"),
        0.0,
        "a declared Service was waited for"
    );

    // A value that names no Service is reported with its field.
    let bad = m.node.pod("bad");
    m.cp.write_manifest(
        "pod-bad.yaml",
        &with_dependencies(
            &pod_yaml(&bad, "bad", &[("app", "bad")], true),
            "db, Not_A_Name",
        ),
    );
    let mut err = serde_json::Value::Null;
    eventually(
        "the bad annotation is reported",
        Duration::from_secs(10),
        || {
            err = m.cp.admin_json("/errors")["errors"][0].clone();
            !err.is_null()
        },
    );
    assert_eq!(
        err["field"], "metadata.annotations.weft.dev/dependencies",
        "{err}"
    );
    assert!(err.to_string().contains("Not_A_Name"), "{err}");
}

#[test]
fn a_route_backend_comes_with_its_service() {
    let m = mesh("od_closure", &[]);
    m.cp.write_manifest(
        "route.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web-split
  namespace: default
spec:
  parentRefs:
  - {group: "", kind: Service, name: web, port: 80}
  rules:
  - backendRefs:
    - {name: web, port: 80, weight: 50}
    - {name: web-v2, port: 80, weight: 50}
"#,
    );
    let client = m.client("client", None, &[]);
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..40 {
        *seen
            .entry(version(&client, vip(WEB_VIP, 80), None))
            .or_insert(0) += 1;
    }
    assert!(
        seen.get("v1").copied().unwrap_or(0) > 5 && seen.get("v2").copied().unwrap_or(0) > 5,
        "both backends answer from the first request on: {seen:?}"
    );
    let mut h = held(&client);
    h.sort();
    assert_eq!(h, ["web-v2.default:80", "web.default:80"]);
}

#[test]
fn a_new_service_during_an_outage_fails_fast_and_a_used_one_keeps_working() {
    let m = mesh("od_outage", &[]);
    let client = m.client("client", None, &["--discovery-wait", "1s"]);
    assert_eq!(version(&client, vip(WEB_VIP, 80), None), "v1");
    m.cp.stop();
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let never_used = version(&client, vip(DB_VIP, 80), None);
    let took = started.elapsed();
    assert!(never_used.starts_with("error"), "{never_used}");
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    assert!(client.metric(r#"discovery_subscribe_failures_total{reason="disconnected"}"#) >= 1.0);
    // What was in use goes on.
    for _ in 0..10 {
        assert_eq!(version(&client, vip(WEB_VIP, 80), None), "v1");
    }
    m.cp.restart();
    eventually(
        "the new Service works once the control plane is back",
        Duration::from_secs(20),
        || version(&client, vip(DB_VIP, 80), None) == "v1",
    );
}

#[test]
fn an_opaque_server_learns_an_unknown_meshed_client_on_its_first_connection() {
    let node = Node::new("od_learn");
    let cp = ControlPlane::start(&node, "1h");
    cp.write_manifest(
        "svc-cache.yaml",
        &service_yaml("cache", DB_VIP, "cache", &[(7000, 7000, "tcp")]),
    );
    let cache = node.pod("cache");
    cache.spawn(
        "banner",
        bins::test_app(),
        &[
            "tcp",
            "--listen",
            "0.0.0.0:7000",
            "--mode",
            "banner",
            "--pod",
            "cache",
        ],
    );
    cache.wait_listening(7000);
    cp.write_manifest(
        "pod-cache.yaml",
        &pod_yaml(&cache, "cache", &[("app", "cache")], true).replace(
            "    weft.dev/inject: enabled\n",
            "    weft.dev/inject: enabled\n    weft.dev/opaque-ports: \"7000\"\n",
        ),
    );
    cache.mesh_with(&cp, "cache", &[]);
    let client = node.pod("client");
    cp.write_manifest(
        "pod-client.yaml",
        &pod_yaml(&client, "client", &[("app", "client")], true),
    );
    client.mesh_with(&cp, "client", &[]);
    eventually(
        "the client knows the names",
        Duration::from_secs(10),
        || {
            client.config()["names"]
                .as_array()
                .is_some_and(|n| n.len() == 1)
        },
    );
    assert!(
        !cache.config()["workloads"]
            .to_string()
            .contains(&client.ip.to_string())
    );
    let dst = vip(DB_VIP, 7000);
    let (line, took) = client.ns.block_on(async move {
        let started = Instant::now();
        let s = TcpStream::connect(dst).await.expect("connect");
        let mut line = String::new();
        BufReader::new(s)
            .read_line(&mut line)
            .await
            .expect("banner");
        (line, started.elapsed())
    });
    assert_eq!(line, "cache\n");
    assert!(took < Duration::from_secs(2), "the banner took {took:?}");
    let series = format!(
        r#"tls_sessions_total{{direction="inbound",peer_identity="{}"}}"#,
        spiffe("client")
    );
    assert_eq!(cache.metric(&series), 1.0, "not mTLS");
    assert!(
        cache.config()["workloads"]
            .to_string()
            .contains(&client.ip.to_string())
    );
}

#[test]
fn a_proxy_that_asks_for_everything_gets_the_whole_mesh() {
    let m = mesh("od_all", &[]);
    let client = m.client("client", None, &["--discovery", "all"]);
    eventually(
        "every Service arrives unasked",
        Duration::from_secs(10),
        || held(&client).len() == 3,
    );
    assert_eq!(proxy_status(&m.cp, "client")["api"], "watch");
    assert_eq!(version(&client, vip(DB_VIP, 80), None), "v1");
}

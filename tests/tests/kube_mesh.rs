//! The whole mesh on a real API server, as a user runs it: `weftctl install
//! --addons jaeger` applied with kubectl; a namespace labelled for
//! injection; Deployments and an HTTPRoute applied with kubectl. The pods
//! come back injected by the webhook, the stand-in for a kubelet runs what
//! their specs say (the init container's `weft-proxy init`, the native
//! sidecar with its projected token and trust bundle, the app), traffic is
//! mTLS and split as the route says, a trace crossing the sidecars lands in a
//! real Jaeger, and the split and a pod's deletion follow `kubectl`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_e2e::kube::{Cluster, NodeStandIn};
use weft_e2e::{Node, Pod, bins, client, eventually, require_root};

const NS: &str = "shop";
const WAIT: Duration = Duration::from_secs(60);

const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {weft.dev/inject: enabled}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: loadgen, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: frontend, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: backend, namespace: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: loadgen, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: loadgen}}
  template:
    metadata: {labels: {app: loadgen}}
    spec:
      serviceAccountName: loadgen
      containers:
      - name: app
        image: weft-test-app:latest
        args: [http, --listen, "0.0.0.0:8080", --service, loadgen, --pod, $(POD_NAME)]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: frontend, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: frontend}}
  template:
    metadata: {labels: {app: frontend}}
    spec:
      serviceAccountName: frontend
      containers:
      - name: app
        image: weft-test-app:latest
        args: [http, --listen, "0.0.0.0:8080", --service, frontend, --pod, $(POD_NAME), --backend, "http://backend/"]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /_stats, port: http}
          periodSeconds: 1
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend-v1, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: backend, version: v1}}
  template:
    metadata: {labels: {app: backend, version: v1}}
    spec:
      serviceAccountName: backend
      containers:
      - name: app
        image: weft-test-app:latest
        args: [http, --listen, "0.0.0.0:8080", --service, backend, --version, v1, --pod, $(POD_NAME)]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /_stats, port: http}
          periodSeconds: 1
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend-v2, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: backend, version: v2}}
  template:
    metadata: {labels: {app: backend, version: v2}}
    spec:
      serviceAccountName: backend
      containers:
      - name: app
        image: weft-test-app:latest
        args: [http, --listen, "0.0.0.0:8080", --service, backend, --version, v2, --pod, $(POD_NAME)]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: frontend, namespace: shop}
spec:
  selector: {app: frontend}
  ports: [{name: http, port: 80, targetPort: http, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: shop}
spec:
  selector: {app: backend}
  ports: [{name: http, port: 80, targetPort: http, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: backend-v1, namespace: shop}
spec:
  selector: {app: backend, version: v1}
  ports: [{name: http, port: 80, targetPort: http, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: backend-v2, namespace: shop}
spec:
  selector: {app: backend, version: v2}
  ports: [{name: http, port: 80, targetPort: http, appProtocol: http}]
"#;

/// The route on `backend`: `v1` percent to backend-v1, the rest to v2, with
/// retries for what a dying pod answers.
fn route(v1: u32) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: backend, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: backend, port: 80}}]
  rules:
  - backendRefs:
    - {{name: backend-v1, port: 80, weight: {v1}}}
    - {{name: backend-v2, port: 80, weight: {v2}}}
    retry: {{attempts: 2, codes: [502, 503, 504]}}
"#,
        v2 = 100 - v1
    )
}

fn json(cluster: &Cluster, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&cluster.kubectl_ok(&all)).expect("kubectl's JSON")
}

/// From inside `from`, `n` requests to the frontend Service by its name's
/// address; which backend version answered each (or why it failed).
fn calls(from: &Pod, frontend: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    from.ns.block_on(async move {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let key = match client::get(frontend, "/").await {
                Ok(r) if r.status.is_success() => r.json()["backend"]["version"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string(),
                Ok(r) => format!("status {}: {}", r.status, r.text()),
                Err(e) => format!("failed: {e}"),
            };
            *seen.entry(key).or_insert(0) += 1;
        }
        seen
    })
}

fn metric(pod: &Pod, series: &str) -> f64 {
    weft_e2e::metrics::value(&pod.metrics(), series).unwrap_or(0.0)
}

struct Mesh {
    kubelet: NodeStandIn,
    cluster: Cluster,
    node: Arc<Node>,
}

#[test]
fn a_whole_mesh_installed_injected_and_traced() {
    require_root();
    let node = Arc::new(Node::new("kube_mesh"));
    let cluster = Cluster::start(&node);
    let kubelet = cluster.stand_in_running(node.clone());
    let m = Mesh {
        kubelet,
        cluster,
        node,
    };
    let _ = &m.node;

    // 1. Install, as a user would.
    let install = Command::new(bins::weftctl())
        .args(["install", "--addons", "jaeger"])
        .output()
        .expect("weftctl install");
    assert!(install.status.success());
    let out = m.cluster.kubectl_with(
        &m.cluster.kubeconfig(),
        &["apply", "--server-side", "-f", "-"],
        Some(&String::from_utf8_lossy(&install.stdout)),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let control = m.kubelet.wait_pods(
        "weft-system",
        "app.kubernetes.io/name=weft-control",
        2,
        WAIT,
    );
    let jaeger = m
        .kubelet
        .wait_pods("weft-system", "app.kubernetes.io/name=jaeger", 1, WAIT)
        .remove(0)
        .1;
    eventually("the webhook's caBundle is set", WAIT, || {
        let w = json(
            &m.cluster,
            &["get", "mutatingwebhookconfiguration", "weft-injector"],
        );
        w["webhooks"][0]["clientConfig"]["caBundle"]
            .as_str()
            .is_some_and(|b| !b.is_empty())
    });

    // 2. The app, and its route.
    m.cluster.apply(APP);
    m.cluster.apply(&route(90));

    // 3. Injected on the API server, running, ready.
    let loadgen = m.kubelet.wait_pods(NS, "app=loadgen", 1, WAIT).remove(0);
    let frontend = m.kubelet.wait_pods(NS, "app=frontend", 1, WAIT).remove(0);
    let v1 = m.kubelet.wait_pods(NS, "app=backend,version=v1", 2, WAIT);
    let v2 = m.kubelet.wait_pods(NS, "app=backend,version=v2", 1, WAIT);
    for (name, _) in [&loadgen, &frontend].into_iter().chain(&v1).chain(&v2) {
        let pod = json(&m.cluster, &["get", "pod", name, "-n", NS]);
        let inits: Vec<&str> = pod["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(inits, ["weft-init", "weft-proxy"], "{name}: {pod}");
        eventually(&format!("{name} is Ready"), WAIT, || {
            let p = json(&m.cluster, &["get", "pod", name, "-n", NS]);
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
    }
    // Certificates came through TokenReview, from the control plane pods.
    let issued: f64 = control
        .iter()
        .map(|(_, p)| {
            p.ns.block_on(client::get(p.addr(9990), "/metrics"))
                .map(|r| {
                    weft_e2e::metrics::value(&r.text(), "identity_certificates_issued_total")
                        .unwrap_or(0.0)
                })
                .unwrap_or(0.0)
        })
        .sum();
    assert!(issued >= 5.0, "{issued} certificates issued");

    // Traffic from the loadgen's app to the frontend Service: mTLS at every
    // hop, 90/10 across the backend versions.
    let vip: SocketAddr = format!(
        "{}:80",
        json(&m.cluster, &["get", "service", "frontend", "-n", NS])["spec"]["clusterIP"]
            .as_str()
            .expect("a ClusterIP")
    )
    .parse()
    .expect("an address");
    let seen = calls(&loadgen.1, vip, 200);
    let (n1, n2) = (
        seen.get("v1").copied().unwrap_or(0),
        seen.get("v2").copied().unwrap_or(0),
    );
    assert_eq!(n1 + n2, 200, "{seen:?}");
    assert!((150..=195).contains(&n1), "a 90/10 split gave {seen:?}");
    eprintln!("200 calls through a 90/10 route: {seen:?}; {issued} certificates issued");
    let backend_id = "spiffe://cluster.local/ns/shop/sa/backend";
    assert!(
        metric(
            &frontend.1,
            &format!(r#"tls_sessions_total{{direction="outbound",peer_identity="{backend_id}"}}"#)
        ) >= 1.0,
        "{}",
        frontend.1.metrics()
    );

    // The dashboard on a cluster reads through one control plane replica
    // (as over `kubectl port-forward`): every meshed pod, grouped by its
    // Deployment, whichever replica its proxy streams from, and the calls
    // just made, from the proxies' metrics read through that replica.
    dashboard_over_the_cluster(&control[0].1, &loadgen.1, vip);

    // 4. A trace crossing the frontend's and a backend's sidecars, in Jaeger.
    let query = jaeger.addr(16686);
    let frontend_id = "spiffe://cluster.local/ns/shop/sa/frontend";
    eventually("a trace across both sidecars in Jaeger", WAIT, || {
        let path = format!("/api/traces?service={backend_id}&limit=50");
        let Ok(r) = jaeger.ns.block_on(client::get(query, &path)) else {
            return false;
        };
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        let found = v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| crosses(t, frontend_id, backend_id));
        if let Some(t) = found {
            eprintln!(
                "Jaeger trace {} crosses the frontend's and a backend's sidecars ({} spans)",
                t["traceID"],
                t["spans"].as_array().map(Vec::len).unwrap_or(0)
            );
        }
        found.is_some()
    });

    // 5. kubectl apply moves the split.
    m.cluster.apply(&route(0));
    eventually("every call goes to v2", WAIT, || {
        calls(&loadgen.1, vip, 10).get("v2") == Some(&10)
    });
    m.cluster.apply(&route(100));
    eventually("every call goes to v1", WAIT, || {
        calls(&loadgen.1, vip, 10).get("v1") == Some(&10)
    });

    // A backend pod is deleted under load: no call fails.
    let victim = v1[0].0.clone();
    let (loadgen_pod, stop) = (
        loadgen.1.clone(),
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut all = BTreeMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (k, n) in calls(&loadgen_pod, vip, 20) {
                    *all.entry(k).or_insert(0) += n;
                }
            }
            all
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    m.cluster
        .kubectl_ok(&["delete", "pod", &victim, "-n", NS, "--wait=false"]);
    let replaced = Instant::now();
    eventually("the ReplicaSet replaces the pod", WAIT, || {
        let pods = m.kubelet.pods(NS, "app=backend,version=v1");
        pods.len() == 2 && pods.iter().all(|(n, _)| *n != victim)
    });
    std::thread::sleep(Duration::from_secs(3).saturating_sub(replaced.elapsed()));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = load.join().expect("the load thread");
    assert_eq!(during.keys().collect::<Vec<_>>(), ["v1"], "{during:?}");
    eprintln!("calls while a backend pod was deleted and replaced: {during:?}");
}

/// `weftctl dashboard` in a control plane pod's namespace, pointed at that
/// replica's admin server; checks its picture.
fn dashboard_over_the_cluster(control: &Pod, loadgen: &Pod, frontend: SocketAddr) {
    let cp = format!("http://{}", control.addr(9990));
    let log = std::env::temp_dir().join(format!("kube_mesh-dashboard-{}.log", std::process::id()));
    let (_dash, addr) = control
        .ns
        .run_in(|| weft_e2e::dashboard::spawn(&cp, &["--interval", "1s"], &log));
    let mut last = serde_json::Value::Null;
    eventually("the dashboard shows the mesh and its calls", WAIT, || {
        // Calls keep the numbers moving while the dashboard reads.
        calls(loadgen, frontend, 5);
        let Ok(r) = control.ns.block_on(client::get(addr, "/api/model")) else {
            return false;
        };
        if r.status != 200 {
            return false;
        }
        last = r.json();
        let nodes: Vec<&str> = last["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["id"].as_str())
            .collect();
        let every = [
            "shop/loadgen",
            "shop/frontend",
            "shop/backend-v1",
            "shop/backend-v2",
        ]
        .iter()
        .all(|w| nodes.contains(w));
        let pods = last["proxies"].as_array().map_or(0, Vec::len);
        let read = last["proxies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["namespace"] == NS && p["unread"] == "")
            .count();
        let called = last["edges"].as_array().into_iter().flatten().any(|e| {
            e["src"] == "shop/loadgen"
                && e["dst"] == "shop/frontend"
                && e["rps"].as_f64().is_some_and(|r| r > 0.0)
                && e["mtls"] == 1.0
        });
        every && pods >= 5 && read >= 5 && called
    });
    let cert = last["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["workload"] == "frontend")
        .and_then(|p| p["cert_expires_in_s"].as_f64());
    assert!(cert.is_some_and(|s| s > 0.0), "{last:#}");
    eprintln!(
        "the dashboard over the cluster: {} nodes, {} proxies",
        last["nodes"].as_array().map_or(0, Vec::len),
        last["proxies"].as_array().map_or(0, Vec::len)
    );
}

/// Whether trace `t` has a span of `child_service` whose parent is a span of
/// `parent_service` (Jaeger's JSON: spans with references, processes).
fn crosses(t: &serde_json::Value, parent_service: &str, child_service: &str) -> bool {
    let service_of = |span: &serde_json::Value| {
        let pid = span["processID"].as_str().unwrap_or_default();
        t["processes"][pid]["serviceName"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let spans = t["spans"].as_array().cloned().unwrap_or_default();
    spans
        .iter()
        .filter(|s| service_of(s) == child_service)
        .any(|child| {
            child["references"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| {
                    r["refType"] == "CHILD_OF"
                        && spans
                            .iter()
                            .any(|p| p["spanID"] == r["spanID"] && service_of(p) == parent_service)
                })
        })
}

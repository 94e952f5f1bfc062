//! The Kubernetes fixture itself: a real etcd, kube-apiserver and
//! kube-controller-manager in a harness pod, and the kubelet stand-in that
//! runs their pods in network namespaces. What is checked here is what a
//! user would see on a real cluster.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use weft_e2e::kube::{Cluster, NODE_NAME};
use weft_e2e::{Node, eventually, require_root};

const NS: &str = "shop";
const WAIT: Duration = Duration::from_secs(30);

const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: app
        image: weft-test-app
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
"#;

/// The `web` Service's endpoints across its EndpointSlices: address → ready.
fn endpoints(cluster: &Cluster) -> BTreeMap<String, bool> {
    cluster.block_on(|client| async move {
        let lp = ListParams::default().labels("kubernetes.io/service-name=web");
        let slices = Api::<EndpointSlice>::namespaced(client, NS)
            .list(&lp)
            .await
            .expect("listing EndpointSlices");
        let mut all = BTreeMap::new();
        for slice in slices.items {
            for e in slice.endpoints {
                let ready = e.conditions.and_then(|c| c.ready).unwrap_or(false);
                for a in e.addresses {
                    all.insert(a, ready);
                }
            }
        }
        all
    })
}

/// Waits until the Service's endpoints are exactly `want`.
fn wait_endpoints(cluster: &Cluster, want: &BTreeMap<String, bool>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = endpoints(cluster);
        if &got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the EndpointSlices of shop/web never became {want:?}; they are {got:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn all_ready(pods: &[(String, Arc<weft_e2e::Pod>)]) -> BTreeMap<String, bool> {
    pods.iter().map(|(_, p)| (p.ip.to_string(), true)).collect()
}

fn json(cluster: &Cluster, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&cluster.kubectl_ok(&all)).expect("kubectl's JSON")
}

#[test]
fn deployments_services_and_tokens_on_a_real_api_server() {
    require_root();
    let node = Arc::new(Node::new("kube_cluster"));
    let started = Instant::now();
    let cluster = Cluster::start(&node);
    eprintln!(
        "Cluster::start took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let kubelet = cluster.stand_in(node.clone());
    assert!(
        cluster
            .server()
            .starts_with(&format!("https://{}:6443", cluster.pod().ip)),
        "the API server is on the kube pod's address"
    );
    let nodes = json(&cluster, &["get", "nodes"]);
    assert_eq!(nodes["items"][0]["metadata"]["name"], NODE_NAME);

    cluster.apply(APP);

    // The real controller manager made a ReplicaSet and two pods; the
    // stand-in runs them in namespaces on the bridge.
    let pods = kubelet.wait_pods(NS, "app=web", 2, WAIT);
    let rs = json(&cluster, &["get", "replicasets", "-n", NS, "-l", "app=web"]);
    let rs = rs["items"].as_array().expect("a ReplicaSet list");
    assert_eq!(rs.len(), 1, "one ReplicaSet: {rs:?}");
    assert_eq!(rs[0]["metadata"]["ownerReferences"][0]["name"], "web");
    let rs_name = rs[0]["metadata"]["name"]
        .as_str()
        .expect("the ReplicaSet's name");
    for (name, pod) in &pods {
        let api = json(&cluster, &["get", "pod", name, "-n", NS]);
        assert_eq!(api["metadata"]["ownerReferences"][0]["name"], rs_name);
        assert_eq!(api["spec"]["nodeName"], NODE_NAME);
        assert_eq!(api["status"]["phase"], "Running");
        let ip: Ipv4Addr = api["status"]["podIP"]
            .as_str()
            .expect("a pod IP")
            .parse()
            .expect("an IPv4 pod IP");
        assert_eq!(ip, pod.ip);
        assert_eq!(ip.octets()[..3], [198, 18, 0], "{ip} is on the test bridge");
    }

    // The real EndpointSlice controller lists exactly those two, ready.
    let mut want = all_ready(&pods);
    wait_endpoints(&cluster, &want);

    // A pod that is not ready is published as such.
    let (first, first_pod) = &pods[0];
    kubelet.set_ready(NS, first, false);
    want.insert(first_pod.ip.to_string(), false);
    wait_endpoints(&cluster, &want);
    kubelet.set_ready(NS, first, true);
    let want = all_ready(&pods);
    wait_endpoints(&cluster, &want);

    // A deleted pod is replaced by the ReplicaSet; the slice follows.
    cluster.kubectl_ok(&["delete", "pod", first, "-n", NS, "--timeout=30s"]);
    let mut replaced = Vec::new();
    eventually("the ReplicaSet replaces the deleted pod", WAIT, || {
        replaced = kubelet.pods(NS, "app=web");
        replaced.len() == 2 && replaced.iter().all(|(n, _)| n != first)
    });
    wait_endpoints(&cluster, &all_ready(&replaced));

    // A token bound to a pod, for the mesh's audience, passes a
    // TokenReview that names the pod.
    let (pod_name, _) = &replaced[0];
    let token = cluster.token(NS, "default", "weft.dev", Some(pod_name), "10m");
    let review: TokenReview = serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": ["weft.dev"]},
    }))
    .expect("a TokenReview");
    let reviewed = cluster.block_on(|client| async move {
        Api::<TokenReview>::all(client)
            .create(&PostParams::default(), &review)
            .await
            .expect("creating a TokenReview")
    });
    let status = reviewed.status.expect("a TokenReview status");
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(status.audiences, Some(vec!["weft.dev".to_string()]));
    let user = status.user.expect("the reviewed user");
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:shop:default")
    );
    let extra = user.extra.unwrap_or_default();
    assert_eq!(
        extra.get("authentication.kubernetes.io/pod-name"),
        Some(&vec![pod_name.clone()]),
        "{extra:?}"
    );

    // The API server comes back after a crash with everything in etcd, and
    // the stand-in's watch picks up again.
    let restarted = Instant::now();
    cluster.restart_apiserver();
    eprintln!(
        "kube-apiserver restart took {:.1}s",
        restarted.elapsed().as_secs_f64()
    );
    let deployment = json(&cluster, &["get", "deployment", "web", "-n", NS]);
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(kubelet.pods(NS, "app=web").len(), 2);
    cluster.kubectl_ok(&["scale", "deployment", "web", "-n", NS, "--replicas=3"]);
    let three = kubelet.wait_pods(NS, "app=web", 3, WAIT);
    wait_endpoints(&cluster, &all_ready(&three));
    // Only the watch may have broken (while the API server was down).
    let errors: Vec<String> = kubelet
        .errors()
        .into_iter()
        .filter(|e| !e.starts_with("watching pods"))
        .collect();
    assert!(errors.is_empty(), "the stand-in failed: {errors:?}");
}

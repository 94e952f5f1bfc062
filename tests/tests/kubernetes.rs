//! The control plane on a real Kubernetes API server: `weft-control --source
//! kubernetes`, running with its own ServiceAccount's least privileges,
//! follows what `kubectl apply` does to Deployments (through the real
//! controller-manager's ReplicaSets and EndpointSlices), Services, HTTPRoutes,
//! GRPCRoutes, ReferenceGrants and TrafficPolicies; real sidecars get certificates through TokenReview
//! and their snapshots follow; the leader writes route and policy status, the
//! CA Secret and trust bundles; an API server restart and a leader's death
//! are ridden out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_e2e::kube::weft::{self, ControlReplica, SYSTEM};
use weft_e2e::kube::{Cluster, NodeStandIn};
use weft_e2e::{Node, Pod, client, eventually, require_root};

const NS: &str = "shop";
const WAIT: Duration = Duration::from_secs(30);

const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {weft.dev/inject: enabled}
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
metadata: {name: frontend, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: frontend}}
  template:
    metadata:
      labels: {app: frontend}
      annotations: {weft.dev/inject: enabled}
    spec:
      serviceAccountName: frontend
      containers:
      - name: app
        image: weft-test-app
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend-v1, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: backend, version: v1}}
  template:
    metadata:
      labels: {app: backend, version: v1}
      annotations: {weft.dev/inject: enabled}
    spec:
      serviceAccountName: backend
      containers:
      - name: app
        image: weft-test-app
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend-v2, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: backend, version: v2}}
  template:
    metadata:
      labels: {app: backend, version: v2}
      annotations: {weft.dev/inject: enabled}
    spec:
      serviceAccountName: backend
      containers:
      - name: app
        image: weft-test-app
        ports: [{name: http, containerPort: 8080}]
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
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: backend, namespace: shop}
spec:
  targetRef: {kind: Service, name: backend}
  outlierDetection: {consecutiveFailures: 3}
"#;

/// A GRPCRoute on shop/echo sending to a Service in another namespace, and
/// an HTTPRoute on the same port (which GRPCRoutes take).
const GRPC: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: other}
spec:
  ports: [{name: grpc, port: 9090, appProtocol: kubernetes.io/h2c}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  ports: [{name: grpc, port: 9090, appProtocol: kubernetes.io/h2c}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 9090}]
  rules:
  - matches: [{method: {service: weft.test.Echo}}]
    backendRefs: [{name: echo-v2, namespace: other, port: 9090}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-http, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 9090}]
  rules:
  - backendRefs: [{name: echo, port: 9090}]
"#;

/// Denies the frontend's ServiceAccount at the backends.
const DENY_FRONTEND: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-frontend, namespace: shop}
spec:
  targetRef: {group: "", kind: Service, name: backend}
  action: DENY
  rules: [{from: [{serviceAccount: {name: frontend}}]}]
"#;

/// An issuer whose key set is in a Secret of shop.
const JWT_FROM_SECRET: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: idp-keys, namespace: shop}
stringData:
  jwks.json: '{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}'
---
apiVersion: weft.dev/v1alpha1
kind: RequestAuthentication
metadata: {name: users, namespace: shop}
spec:
  targetRef: {kind: Service, name: backend}
  jwtRules:
  - issuer: https://idp.test
    jwksSecretRef: {name: idp-keys, key: jwks.json}
"#;

/// What lets shop's GRPCRoutes send to Services in `other`.
const GRANT: &str = r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: shop-grpc, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: GRPCRoute, namespace: shop}]
  to: [{group: "", kind: Service}]
"#;

/// The route on `backend`: `v1` percent to backend-v1, the rest to v2.
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
"#,
        v2 = 100 - v1
    )
}

fn json(cluster: &Cluster, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&cluster.kubectl_ok(&all)).expect("kubectl's JSON")
}

/// A Service's ClusterIP, as the API server allocated it.
fn cluster_ip(cluster: &Cluster, name: &str) -> String {
    json(cluster, &["get", "service", name, "-n", NS])["spec"]["clusterIP"]
        .as_str()
        .expect("a ClusterIP")
        .to_string()
}

/// The endpoints of `service` (`name.ns:port`) in a proxy's applied config.
fn endpoints(pod: &Pod, service: &str) -> Option<Vec<serde_json::Value>> {
    let cfg = pod.config();
    cfg["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == service)
        .and_then(|s| s["endpoints"].as_array().cloned())
}

fn wait_endpoint_count(pod: &Pod, service: &str, n: usize) {
    let deadline = Instant::now() + WAIT;
    let mut used = false;
    loop {
        // On demand: the app's first call brings the Service.
        if !used {
            used = pod.use_service(service);
        }
        let eps = endpoints(pod, service);
        if eps.as_ref().map(Vec::len) == Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{service} never had {n} endpoints in {}'s config: {eps:?}",
            pod.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `n` requests from `from` to `vip:80` and counts who answered
/// (`x-served-by`); failures are counted under "failed".
fn spread(from: &Pod, vip: &str, n: usize) -> BTreeMap<String, usize> {
    let addr: SocketAddr = format!("{vip}:80").parse().expect("a VIP");
    from.ns.block_on(async move {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let who = match client::get(addr, "/").await {
                Ok(r) if r.status.is_success() => r
                    .headers
                    .get("x-served-by")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?")
                    .to_string(),
                Ok(r) => format!("status {}", r.status),
                Err(_) => "failed".to_string(),
            };
            *seen.entry(who).or_insert(0) += 1;
        }
        seen
    })
}

/// The mesh of the tests: the cluster, the control plane, and meshed pods.
struct Mesh {
    // Dropped in this order: the stand-in first, the node last.
    kubelet: NodeStandIn,
    cluster: Cluster,
    node: Arc<Node>,
    pods: BTreeMap<String, Arc<Pod>>,
}

impl Mesh {
    fn start(test: &str) -> Mesh {
        require_root();
        let node = Arc::new(Node::new(test));
        let cluster = Cluster::start(&node);
        let kubelet = cluster.stand_in(node.clone());
        weft::install(&cluster);
        Mesh {
            kubelet,
            cluster,
            node,
            pods: BTreeMap::new(),
        }
    }

    /// Meshes every running pod of `selector` not meshed yet, with `sa`,
    /// against the control plane at `cp`; returns them all.
    fn mesh(&mut self, selector: &str, n: usize, sa: &str, cp: &str) -> Vec<(String, Arc<Pod>)> {
        let pods = self.kubelet.wait_pods(NS, selector, n, WAIT);
        for (name, pod) in &pods {
            if !self.pods.contains_key(name) {
                weft::mesh_pod(&self.cluster, pod, name, NS, sa, cp);
                self.pods.insert(name.clone(), pod.clone());
            }
        }
        pods
    }
}

#[test]
fn the_control_plane_follows_the_cluster() {
    let mut m = Mesh::start("kubernetes_follows");
    let cp = ControlReplica::start(&m.cluster, &m.node, "control-0", &[]);
    let addr = cp.grpc_addr();
    m.cluster.apply(APP);
    m.cluster.apply(&route(100));

    let frontend = m.mesh("app=frontend", 1, "frontend", &addr)[0].1.clone();
    let v1 = m.mesh("app=backend,version=v1", 2, "backend", &addr);
    let v2 = m.mesh("app=backend,version=v2", 1, "backend", &addr);

    // Every sidecar got its certificate through TokenReview, as its pod's
    // ServiceAccount.
    let metrics = cp.metrics();
    assert!(
        weft_e2e::metrics::value(&metrics, "identity_certificates_issued_total").unwrap_or(0.0)
            >= 4.0,
        "{metrics}"
    );

    // The frontend's sidecar knows the backends from the EndpointSlices,
    // with their identities.
    wait_endpoint_count(&frontend, "backend.shop:80", 3);
    wait_endpoint_count(&frontend, "backend-v1.shop:80", 2);
    let eps = endpoints(&frontend, "backend-v1.shop:80").expect("backend-v1 in the config");
    assert_eq!(eps.len(), 2, "{eps:?}");
    for e in &eps {
        assert_eq!(
            e["identity"], "spiffe://cluster.local/ns/shop/sa/backend",
            "{e}"
        );
        let pod = e["pod"].as_str().expect("the endpoint's pod");
        assert!(v1.iter().any(|(n, _)| n == pod), "{pod} is not a v1 pod");
    }

    // The route sends everything to v1, in mTLS.
    let vip = cluster_ip(&m.cluster, "backend");
    let seen = spread(&frontend, &vip, 20);
    assert_eq!(
        seen.iter()
            .filter(|(who, _)| v1.iter().any(|(n, _)| n == *who))
            .map(|(_, c)| c)
            .sum::<usize>(),
        20,
        "{seen:?}"
    );
    let mtls = frontend.metric(
        r#"tls_sessions_total{direction="outbound",peer_identity="spiffe://cluster.local/ns/shop/sa/backend"}"#,
    );
    assert!(
        mtls >= 1.0,
        "no mTLS session to the backends: {}",
        frontend.metrics()
    );

    // The leader wrote the route's and the policy's status.
    eventually("HTTPRoute status from weft", WAIT, || {
        let r = json(&m.cluster, &["get", "httproute", "backend", "-n", NS]);
        let parents = r["status"]["parents"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        parents.iter().any(|p| {
            p["controllerName"] == "weft.dev/control-plane"
                && p["parentRef"]["name"] == "backend"
                && condition(p, "Accepted") == Some(("True".into(), "Accepted".into()))
                && condition(p, "ResolvedRefs") == Some(("True".into(), "ResolvedRefs".into()))
                && p["conditions"][0]["observedGeneration"] == r["metadata"]["generation"]
        })
    });
    eventually("TrafficPolicy status", WAIT, || {
        let p = json(&m.cluster, &["get", "trafficpolicy", "backend", "-n", NS]);
        condition(&p["status"], "Accepted") == Some(("True".into(), "Accepted".into()))
    });

    // An AuthorizationPolicy applied with kubectl is enforced at the
    // backends' sidecars and reported in its status; deleted, it is gone.
    m.cluster.apply(DENY_FRONTEND);
    eventually("the frontend is denied", WAIT, || {
        spread(&frontend, &vip, 3).get("status 403 Forbidden") == Some(&3)
    });
    eventually("AuthorizationPolicy status", WAIT, || {
        let p = json(
            &m.cluster,
            &["get", "authorizationpolicy", "no-frontend", "-n", NS],
        );
        condition(&p["status"], "Accepted") == Some(("True".into(), "Accepted".into()))
            && condition(&p["status"], "ResolvedRefs")
                == Some(("True".into(), "ResolvedRefs".into()))
    });
    m.cluster
        .kubectl_ok(&["delete", "authorizationpolicy", "no-frontend", "-n", NS]);
    eventually("the frontend is let in again", WAIT, || {
        spread(&frontend, &vip, 3)
            .keys()
            .all(|who| !who.starts_with("status"))
    });
    // A key set in a Secret: not readable until the namespace lets the
    // control plane read its policy Secrets (weft-policy-secrets).
    m.cluster.apply(JWT_FROM_SECRET);
    let resolved = || {
        let p = json(
            &m.cluster,
            &["get", "requestauthentication", "users", "-n", NS],
        );
        condition(&p["status"], "ResolvedRefs")
    };
    eventually("the Secret cannot be read", WAIT, || {
        resolved() == Some(("False".into(), "SecretNotFound".into()))
    });
    m.cluster.kubectl_ok(&[
        "create",
        "rolebinding",
        "weft-policy-secrets",
        "-n",
        NS,
        "--clusterrole=weft-policy-secrets",
        "--serviceaccount=weft-system:weft-control",
    ]);
    eventually("the key set resolves", WAIT, || {
        resolved() == Some(("True".into(), "ResolvedRefs".into()))
    });
    eventually("the backends' sidecars have the issuer", WAIT, || {
        v1[0].1.config()["jwt_issuers"][0]["kids"] == serde_json::json!(["k1"])
    });
    m.cluster
        .kubectl_ok(&["delete", "requestauthentication", "users", "-n", NS]);

    // A GRPCRoute gets status too: its backend in another namespace is not
    // permitted until a ReferenceGrant there allows it; an HTTPRoute on the
    // same Service port loses to it (Conflicted).
    m.cluster.apply(GRPC);
    let parent = |kind: &str, name: &str, type_: &str| {
        let r = json(&m.cluster, &["get", kind, name, "-n", NS]);
        r["status"]["parents"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["controllerName"] == "weft.dev/control-plane")
            .and_then(|p| condition(p, type_))
    };
    eventually("the GRPCRoute's backend is not permitted", WAIT, || {
        parent("grpcroute", "echo", "ResolvedRefs")
            == Some(("False".into(), "RefNotPermitted".into()))
            && parent("grpcroute", "echo", "Accepted") == Some(("True".into(), "Accepted".into()))
    });
    eventually(
        "the HTTPRoute on the GRPCRoute's port is conflicted",
        WAIT,
        || {
            parent("httproute", "echo-http", "Accepted")
                == Some(("False".into(), "Conflicted".into()))
        },
    );
    m.cluster.apply(GRANT);
    eventually(
        "the ReferenceGrant resolves the GRPCRoute's backend",
        WAIT,
        || {
            parent("grpcroute", "echo", "ResolvedRefs")
                == Some(("True".into(), "ResolvedRefs".into()))
        },
    );

    // kubectl apply moves the split: now everything goes to v2.
    m.cluster.apply(&route(0));
    let v2_name = v2[0].0.clone();
    eventually("the split moves to v2", WAIT, || {
        spread(&frontend, &vip, 5).get(&v2_name) == Some(&5)
    });

    // A route that Weft cannot serve is refused in its status, naming the
    // field, and listed at /errors; the Service keeps its last good route.
    let bad = route(0).replace(
        "  rules:\n",
        "  rules:\n  - matches: [{path: {type: PathPrefix, value: /bad}}]\n    retry: {attempts: 11}\n    backendRefs: [{name: backend-v1, port: 80}]\n",
    );
    m.cluster.apply(&bad);
    eventually("the bad route's status says why", WAIT, || {
        let r = json(&m.cluster, &["get", "httproute", "backend", "-n", NS]);
        r["status"]["parents"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| {
                condition(p, "Accepted")
                    .is_some_and(|(s, reason)| s == "False" && reason == "UnsupportedValue")
                    && p["conditions"].as_array().into_iter().flatten().any(|c| {
                        c["message"]
                            .as_str()
                            .is_some_and(|msg| msg.contains("retry.attempts"))
                    })
            })
    });
    eventually("/errors lists the bad route", WAIT, || {
        cp.admin_json("/errors")
            .to_string()
            .contains("retry.attempts")
    });
    assert_eq!(
        spread(&frontend, &vip, 5).get(&v2_name),
        Some(&5),
        "the last good route serves"
    );
    m.cluster.apply(&route(0));

    // Scaling follows: a new v1 pod appears in the frontend's config.
    m.cluster.kubectl_ok(&[
        "scale",
        "deployment",
        "backend-v1",
        "-n",
        NS,
        "--replicas=3",
    ]);
    m.mesh("app=backend,version=v1", 3, "backend", &addr);
    wait_endpoint_count(&frontend, "backend-v1.shop:80", 3);

    // A pod that is not ready leaves the endpoints (the EndpointSlice
    // controller says so), and comes back.
    let (first_v1, _) = &v1[0];
    m.kubelet.set_ready(NS, first_v1, false);
    wait_endpoint_count(&frontend, "backend-v1.shop:80", 2);
    m.kubelet.set_ready(NS, first_v1, true);
    wait_endpoint_count(&frontend, "backend-v1.shop:80", 3);

    // The CA lives in its Secret; the control plane reads no other Secret.
    let secret = json(&m.cluster, &["get", "secret", "weft-ca", "-n", SYSTEM]);
    assert_eq!(secret["type"], "kubernetes.io/tls");
    m.cluster.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "other",
        "-n",
        SYSTEM,
        "--from-literal=k=v",
    ]);
    let as_cp = |args: &[&str]| m.cluster.kubectl_with(cp.kubeconfig(), args, None);
    let denied = as_cp(&["get", "secret", "other", "-n", SYSTEM]);
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let allowed = as_cp(&["get", "secret", "weft-ca", "-n", SYSTEM]);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    let listing = as_cp(&["get", "secrets", "-A"]);
    assert!(
        !listing.status.success(),
        "the control plane may list Secrets"
    );

    // The API server goes away: the proxies keep serving their last config,
    // the control plane says its watches fail; when it is back, the control
    // plane relists and catches up.
    m.cluster.stop_apiserver();
    assert_eq!(
        spread(&frontend, &vip, 5).get(&v2_name),
        Some(&5),
        "traffic with the API server down"
    );
    eventually("/errors reports failing watches", WAIT, || {
        cp.admin_json("/errors").to_string().contains("watch ")
    });
    m.cluster.start_apiserver();
    m.cluster.kubectl_ok(&[
        "scale",
        "deployment",
        "backend-v1",
        "-n",
        NS,
        "--replicas=2",
    ]);
    wait_endpoint_count(&frontend, "backend-v1.shop:80", 2);
    eventually("/errors clears", WAIT, || {
        !cp.admin_json("/errors").to_string().contains("watch ")
    });
    let restarts = weft_e2e::metrics::value(
        &cp.metrics(),
        r#"kube_watch_restarts_total{kind="EndpointSlice"}"#,
    )
    .unwrap_or(0.0);
    assert!(
        restarts >= 2.0,
        "the EndpointSlice watch never relisted: {}",
        cp.metrics()
    );

    // Deletes follow too: the Service goes from the frontend's config.
    m.cluster
        .kubectl_ok(&["delete", "service", "backend-v2", "-n", NS]);
    eventually("backend-v2 leaves the config", WAIT, || {
        endpoints(&frontend, "backend-v2.shop:80").is_none()
    });
    eventually("the route's status names the missing backend", WAIT, || {
        let r = json(&m.cluster, &["get", "httproute", "backend", "-n", NS]);
        r["status"]["parents"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| {
                condition(p, "ResolvedRefs")
                    .is_some_and(|(s, reason)| s == "False" && reason == "BackendNotFound")
            })
    });
}

/// The `(status, reason)` of condition `type_` in `obj.conditions`.
fn condition(obj: &serde_json::Value, type_: &str) -> Option<(String, String)> {
    obj["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// A Certify call from inside `pod`, trusting the namespace's bundle.
fn certify(
    cluster: &Cluster,
    pod: &Pod,
    cp: &str,
    token: String,
    uri: &str,
) -> Result<weft_api::v1::CertifyResponse, tonic::Status> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use weft_api::tls::{self as wtls, CertSlot, TrustAnchors};
    use weft_api::v1::CertifyRequest;
    use weft_api::v1::identity_client::IdentityClient;

    let pem = weft::bundle(cluster, NS);
    let anchors = TrustAnchors::new(
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("the bundle's certificates"),
    )
    .expect("trust anchors");
    let cfg = wtls::client_config(
        CertSlot::default(),
        anchors,
        weft::CONTROL_ID
            .parse()
            .expect("the control plane's identity"),
        &[wtls::ALPN_H2],
    )
    .expect("a client config");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().expect("a URI"))];
    let csr_der = params
        .serialize_request(&key)
        .expect("a CSR")
        .der()
        .to_vec();
    let addr = cp.to_string();
    pod.ns.block_on(async move {
        IdentityClient::new(weft_api::grpc::connect_lazy(addr, Arc::new(cfg)))
            .certify(CertifyRequest { token, csr_der })
            .await
            .map(tonic::Response::into_inner)
    })
}

/// A token signed with the cluster's real ServiceAccount key, as the API
/// server would mint it for `sa` bound to `pod`, but expired an hour ago.
fn expired_token(cluster: &Cluster, sa: &str, pod: &str) -> String {
    let sa_obj = json(cluster, &["get", "serviceaccount", sa, "-n", NS]);
    let pod_obj = json(cluster, &["get", "pod", pod, "-n", NS]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let claims = serde_json::json!({
        "iss": weft_e2e::kube::ISSUER,
        "aud": ["weft.dev"],
        "sub": format!("system:serviceaccount:{NS}:{sa}"),
        "iat": now - 7200,
        "nbf": now - 7200,
        "exp": now - 3600,
        "kubernetes.io": {
            "namespace": NS,
            "serviceaccount": {"name": sa, "uid": sa_obj["metadata"]["uid"]},
            "pod": {"name": pod, "uid": pod_obj["metadata"]["uid"]},
        },
    });
    let key = std::fs::read(cluster.sa_key()).expect("the ServiceAccount key");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(&key).expect("an EC key"),
    )
    .expect("signing a token")
}

#[test]
fn certify_checks_kubernetes_tokens() {
    let m = Mesh::start("kubernetes_certify");
    let cp = ControlReplica::start(&m.cluster, &m.node, "control-0", &[]);
    let addr = cp.grpc_addr();
    m.cluster.apply(APP);
    let (front, front_pod) = m.kubelet.wait_pods(NS, "app=frontend", 1, WAIT).remove(0);
    let (back, _) = m
        .kubelet
        .wait_pods(NS, "app=backend,version=v2", 1, WAIT)
        .remove(0);
    let id = |sa: &str| format!("spiffe://cluster.local/ns/{NS}/sa/{sa}");
    let token =
        |sa: &str, audience: &str, pod: Option<&str>| m.cluster.token(NS, sa, audience, pod, "1h");
    let rejected = |reason: &str| {
        weft_e2e::metrics::value(
            &cp.metrics(),
            &format!(r#"identity_certify_rejected_total{{reason="{reason}"}}"#),
        )
        .unwrap_or(0.0)
    };

    // A projected token for weft.dev, bound to the pod: the pod's identity.
    let good = certify(
        &m.cluster,
        &front_pod,
        &addr,
        token("frontend", "weft.dev", Some(&front)),
        &id("frontend"),
    )
    .expect("a good token is accepted");
    assert_eq!(
        weft_api::SpiffeId::from_certificate(&good.leaf_der)[0].to_string(),
        id("frontend")
    );

    let cases: Vec<(&str, String, String, tonic::Code, &str)> = vec![
        (
            "a token for the API server's audience",
            token("frontend", weft_e2e::kube::ISSUER, Some(&front)),
            id("frontend"),
            tonic::Code::Unauthenticated,
            "token_audience",
        ),
        (
            "a token bound to no pod",
            token("frontend", "weft.dev", None),
            id("frontend"),
            tonic::Code::PermissionDenied,
            "token_pod",
        ),
        (
            "another ServiceAccount's identity",
            token("frontend", "weft.dev", Some(&front)),
            id("backend"),
            tonic::Code::PermissionDenied,
            "identity_mismatch",
        ),
        (
            "an expired token",
            expired_token(&m.cluster, "frontend", &front),
            id("frontend"),
            tonic::Code::Unauthenticated,
            "token_expired",
        ),
        (
            "garbage",
            "not-a-token".to_string(),
            id("frontend"),
            tonic::Code::Unauthenticated,
            "token",
        ),
    ];
    for (what, token, uri, code, reason) in cases {
        let before = rejected(reason);
        match certify(&m.cluster, &front_pod, &addr, token, &uri) {
            Ok(_) => panic!("{what} was accepted"),
            Err(s) => {
                assert_eq!(s.code(), code, "{what}: {}", s.message());
                eprintln!("{what}: {:?} {}", s.code(), s.message());
            }
        }
        assert_eq!(
            rejected(reason),
            before + 1.0,
            "{what}: reason {reason} not counted"
        );
    }

    // A token whose pod was deleted proves nothing any more.
    let back_token = token("backend", "weft.dev", Some(&back));
    m.cluster
        .kubectl_ok(&["delete", "pod", &back, "-n", NS, "--timeout=30s"]);
    let before = rejected("token_pod");
    let refused = certify(&m.cluster, &front_pod, &addr, back_token, &id("backend"))
        .expect_err("a deleted pod's token was accepted");
    assert!(
        matches!(
            refused.code(),
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
        ),
        "{refused:?}"
    );
    assert_eq!(rejected("token_pod"), before + 1.0, "{refused:?}");
}

#[test]
fn a_new_leader_takes_over() {
    let mut m = Mesh::start("kubernetes_leader");
    let a = ControlReplica::start(&m.cluster, &m.node, "control-a", &[]);
    let b = ControlReplica::start(&m.cluster, &m.node, "control-b", &[]);
    let holder = |c: &Cluster| {
        json(c, &["get", "lease", "weft-control", "-n", SYSTEM])["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let mut first = String::new();
    eventually("a leader is elected", WAIT, || {
        first = holder(&m.cluster);
        !first.is_empty()
    });
    let (leader, follower) = if first == "control-a" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let leading =
        |r: &ControlReplica| weft_e2e::metrics::value(&r.metrics(), "leader").unwrap_or(0.0);
    assert_eq!((leading(leader), leading(follower)), (1.0, 0.0));

    // One mesh: the frontend's sidecar talks to the follower, a backend's
    // to the leader.
    m.cluster.apply(APP);
    m.cluster.apply(&route(100));
    let frontend = m.mesh("app=frontend", 1, "frontend", &follower.grpc_addr())[0]
        .1
        .clone();
    let v1 = m.mesh("app=backend,version=v1", 2, "backend", &leader.grpc_addr());
    m.mesh("app=backend,version=v2", 1, "backend", &leader.grpc_addr());
    wait_endpoint_count(&frontend, "backend.shop:80", 3);
    let vip = cluster_ip(&m.cluster, "backend");

    // The leader dies. Within 15 s the follower holds the Lease; nobody
    // lost their config meanwhile.
    leader.kill();
    let died = Instant::now();
    eventually(
        "the follower takes the Lease",
        Duration::from_secs(15),
        || holder(&m.cluster) == follower.name && leading(follower) == 1.0,
    );
    eprintln!("failover took {:.1}s", died.elapsed().as_secs_f64());
    let seen = spread(&frontend, &vip, 10);
    assert_eq!(
        seen.iter()
            .filter(|(who, _)| v1.iter().any(|(n, _)| n == *who))
            .map(|(_, c)| c)
            .sum::<usize>(),
        10,
        "{seen:?}"
    );
    let (_, orphan) = &v1[0];
    assert!(
        orphan.config()["names"]
            .as_array()
            .is_some_and(|s| !s.is_empty()),
        "a proxy of the dead replica lost its config"
    );

    // The new leader writes statuses: a new route gets one.
    m.cluster.apply(&route(100).replace(
        "name: backend, namespace: shop}",
        "name: backend-2, namespace: shop}",
    ));
    eventually("the new leader writes the new route's status", WAIT, || {
        let r = json(&m.cluster, &["get", "httproute", "backend-2", "-n", NS]);
        r["status"]["parents"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| {
                p["controllerName"] == "weft.dev/control-plane"
                    && condition(p, "Accepted").is_some_and(|(s, _)| s == "True")
            })
    });
    // And the follower's proxies still get updates: the split moves.
    m.cluster
        .kubectl_ok(&["delete", "httproute", "backend-2", "-n", NS]);
    m.cluster.apply(&route(0));
    let v2 = m.kubelet.pods(NS, "app=backend,version=v2");
    let v2_name = v2[0].0.clone();
    eventually(
        "the split moves through the surviving replica",
        WAIT,
        || spread(&frontend, &vip, 5).get(&v2_name) == Some(&5),
    );
}

/// Not a pass/fail test: measures the time from `kubectl apply` of an
/// HTTPRoute change to every one of 100 real sidecars acknowledging the new
/// snapshot, and prints the figures. Run it by hand:
/// `cargo test -p weft-e2e --test kubernetes -- --ignored --nocapture push_latency`.
#[test]
#[ignore = "a measurement: 100 sidecars, about two minutes"]
fn push_latency_with_100_proxies() {
    const N: usize = 100;
    const CHANGES: usize = 30;
    let m = Mesh::start("kubernetes_latency");
    let cp = ControlReplica::start(&m.cluster, &m.node, "control-0", &[]);
    let addr = cp.grpc_addr();
    m.cluster.apply(APP);
    let fleet = APP
        .split("---")
        .find(|d| d.contains("name: backend-v1, namespace: shop") && d.contains("Deployment"))
        .expect("the backend-v1 Deployment")
        .replace("replicas: 2", &format!("replicas: {N}"));
    m.cluster.apply(&fleet);
    let pods = m
        .kubelet
        .wait_pods(NS, "app=backend,version=v1", N, Duration::from_secs(120));
    let started = Instant::now();
    for (name, pod) in &pods {
        weft::start_sidecar(&m.cluster, pod, name, NS, "backend", &addr);
    }
    eprintln!(
        "{N} sidecars ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let status = || cp.admin_json("/status");
    let all_current = |s: &serde_json::Value| {
        let proxies = s["proxies"].as_array().cloned().unwrap_or_default();
        proxies.iter().filter(|p| p["current"] == true).count() >= N
    };
    eventually("every sidecar runs the current version", WAIT, || {
        all_current(&status())
    });
    let mut took = Vec::new();
    for i in 0..CHANGES {
        let before = status()["version"].as_u64().unwrap_or(0);
        let t0 = Instant::now();
        m.cluster.apply(&route(if i % 2 == 0 { 90 } else { 10 }));
        loop {
            let s = status();
            if s["version"].as_u64().unwrap_or(0) > before && all_current(&s) {
                break;
            }
            assert!(
                t0.elapsed() < WAIT,
                "the change never reached every proxy: {s}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        took.push(t0.elapsed());
        // Let the leader's status write (its own version) settle first.
        std::thread::sleep(Duration::from_millis(500));
        eventually("settled", WAIT, || all_current(&status()));
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| took[((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1];
    eprintln!(
        "kubectl apply of an HTTPRoute change -> all {N} sidecars acknowledged: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {CHANGES} changes (each includes kubectl's own start, about 100 ms)",
        ms(p(0.5)),
        ms(p(0.9)),
        ms(p(0.99)),
        ms(took[took.len() - 1])
    );
}

/// Kills the sidecar of `pod` (the newest one), as a crash or a restart would.
fn kill_sidecar(pod: &Pod) {
    let pid = nix::unistd::Pid::from_raw(pod.proxy_pid() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(200));
}

/// The certificates in a PEM bundle.
fn pem_count(pem: &str) -> usize {
    pem.matches("BEGIN CERTIFICATE").count()
}

#[test]
fn the_root_rotates_with_an_overlap() {
    let mut m = Mesh::start("kubernetes_rotation");
    let cp = ControlReplica::start(&m.cluster, &m.node, "control-0", &[]);
    let addr = cp.grpc_addr();
    m.cluster.apply(APP);
    m.cluster.apply(&route(100));
    let frontend = m.mesh("app=frontend", 1, "frontend", &addr);
    let (front_name, front) = frontend[0].clone();
    let v1 = m.mesh("app=backend,version=v1", 2, "backend", &addr);
    m.mesh("app=backend,version=v2", 1, "backend", &addr);
    wait_endpoint_count(&front, "backend-v1.shop:80", 2);
    let vip = cluster_ip(&m.cluster, "backend-v1");
    let all_v1 = |seen: &BTreeMap<String, usize>| {
        seen.len() == 2 && v1.iter().all(|(n, _)| seen.contains_key(n))
    };
    assert!(all_v1(&spread(&front, &vip, 20)));
    // No call fails, and both v1 pods answer (a just-restarted endpoint may
    // take a few rounds to win the balancer back).
    let both_answer = |front: &Pod| {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = spread(front, &vip, 20);
            assert!(
                seen.keys().all(|k| v1.iter().any(|(n, _)| n == k)),
                "{seen:?}"
            );
            if all_v1(&seen) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "one v1 pod never answered: {seen:?}"
            );
        }
    };

    // A new root, issued beside the old one: the Secret lists both anchors.
    let old_root = weft::bundle(&m.cluster, NS);
    assert_eq!(pem_count(&old_root), 1);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "weft rotated root");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let new_root = params.self_signed(&key).expect("a root").pem();
    let dir = m.cluster.dir().join("rotation");
    std::fs::create_dir_all(&dir).expect("a directory");
    let write_secret = |anchors: &str| {
        std::fs::write(dir.join("tls.crt"), &new_root).expect("tls.crt");
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("tls.key");
        std::fs::write(dir.join("ca.crt"), anchors).expect("ca.crt");
        let f = |n: &str| format!("--from-file={n}={}", dir.join(n).display());
        let yaml = m.cluster.kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "weft-ca",
            "-n",
            SYSTEM,
            "--type",
            "kubernetes.io/tls",
            &f("tls.crt"),
            &f("tls.key"),
            &f("ca.crt"),
            "--dry-run=client",
            "-o",
            "yaml",
        ]);
        m.cluster.apply(&yaml);
    };
    let version = front.metric("discovery_snapshot_version");
    write_secret(&format!("{old_root}{new_root}"));

    // The bundle and every proxy's snapshot carry both anchors.
    eventually(
        "the bundle lists both roots",
        Duration::from_secs(40),
        || pem_count(&weft::bundle(&m.cluster, NS)) == 2,
    );
    front.wait_config(version);

    // A sidecar that restarts gets a certificate from the new root, and the
    // frontend (still on the old root's certificate) talks to it both ways.
    let issued = certify(
        &m.cluster,
        &front,
        &addr,
        m.cluster
            .token(NS, "frontend", "weft.dev", Some(&front_name), "1h"),
        "spiffe://cluster.local/ns/shop/sa/frontend",
    )
    .expect("Certify with the new CA");
    let (_, leaf) = x509_parser::parse_x509_certificate(&issued.leaf_der).expect("a leaf");
    assert!(
        leaf.issuer().to_string().contains("weft rotated root"),
        "issued by {}",
        leaf.issuer()
    );
    assert_eq!(issued.trust_anchors_der.len(), 2);
    let (restarted, restarted_pod) = &v1[0];
    kill_sidecar(restarted_pod);
    weft::start_sidecar(&m.cluster, restarted_pod, restarted, NS, "backend", &addr);
    both_answer(&front);

    // The overlap ends: only the new root. Once the frontend has a new
    // certificate too, traffic flows on the new root alone.
    write_secret(&new_root);
    eventually(
        "the bundle lists the new root alone",
        Duration::from_secs(40),
        || pem_count(&weft::bundle(&m.cluster, NS)) == 1,
    );
    kill_sidecar(&front);
    weft::start_sidecar(&m.cluster, &front, &front_name, NS, "frontend", &addr);
    let (other, other_pod) = &v1[1];
    kill_sidecar(other_pod);
    weft::start_sidecar(&m.cluster, other_pod, other, NS, "backend", &addr);
    both_answer(&front);
    assert!(
        cp.log().contains("signing with the new CA"),
        "the control plane never took the new CA"
    );
}

/// The injector registered by URL on the control plane's pod (the API server
/// reaches it there; `weftctl install` registers it through its Service).
fn webhook_configuration(cp: &ControlReplica) -> String {
    format!(
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {{name: weft-injector}}
webhooks:
- name: inject.weft.dev
  clientConfig: {{url: "https://{ip}:9443/inject"}}
  rules: [{{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [pods]}}]
  namespaceSelector:
    matchExpressions: [{{key: kubernetes.io/metadata.name, operator: NotIn, values: [kube-system, weft-system]}}]
  sideEffects: None
  admissionReviewVersions: [v1]
  failurePolicy: Ignore
  timeoutSeconds: 5
"#,
        ip = cp.pod.ip
    )
}

#[test]
fn the_webhook_injects_pods_on_the_api_server() {
    let m = Mesh::start("kubernetes_webhook");
    let cp = ControlReplica::start(&m.cluster, &m.node, "control-0", &[]);
    m.cluster.apply(&webhook_configuration(&cp));
    // The leader fills in the caBundle.
    eventually("the webhook's caBundle is the mesh CA", WAIT, || {
        let w = json(
            &m.cluster,
            &["get", "mutatingwebhookconfiguration", "weft-injector"],
        );
        w["webhooks"][0]["clientConfig"]["caBundle"]
            .as_str()
            .is_some_and(|b| !b.is_empty())
    });
    let injected = |ns: &str, name: &str| {
        let pod = json(&m.cluster, &["get", "pod", name, "-n", ns]);
        let inits: Vec<String> = pod["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect();
        (inits, pod)
    };

    // A Deployment in a labelled namespace: its pods come back injected.
    m.cluster.apply(APP);
    let pods = m.kubelet.wait_pods(NS, "app=frontend", 1, WAIT);
    let (inits, pod) = injected(NS, &pods[0].0);
    assert_eq!(inits, ["weft-init", "weft-proxy"], "{pod}");
    assert_eq!(pod["spec"]["initContainers"][1]["restartPolicy"], "Always");
    assert_eq!(
        pod["metadata"]["annotations"]["weft.dev/injected"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == "weft-identity")
            .map(|v| v["projected"]["sources"][0]["serviceAccountToken"]["audience"].clone()),
        Some(serde_json::json!("weft.dev"))
    );

    // Elsewhere: the annotation asks for it; disabled and hostNetwork pods
    // are left alone (the latter says why).
    let pod = |name: &str, ns: &str, annotation: Option<&str>, host: bool| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n{}spec:\n  hostNetwork: {host}\n  containers: [{{name: app, image: weft-test-app}}]\n",
            annotation
                .map(|a| format!("  annotations: {{weft.dev/inject: {a}}}\n"))
                .unwrap_or_default()
        )
    };
    m.cluster
        .apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n");
    m.cluster
        .apply(&pod("asks", "plain", Some("enabled"), false));
    m.cluster.apply(&pod("quiet", "plain", None, false));
    m.cluster
        .apply(&pod("declines", NS, Some("disabled"), false));
    m.cluster.apply(&pod("host", NS, None, true));
    assert_eq!(injected("plain", "asks").0, ["weft-init", "weft-proxy"]);
    assert!(injected("plain", "quiet").0.is_empty());
    assert!(injected(NS, "declines").0.is_empty());
    let (inits, host) = injected(NS, "host");
    assert!(inits.is_empty());
    assert!(
        host["metadata"]["annotations"]["weft.dev/inject-skipped"]
            .as_str()
            .is_some_and(|r| r.contains("hostNetwork")),
        "{host}"
    );
    let metrics = cp.metrics();
    for outcome in ["injected", "opted_out", "skipped", "not_wanted"] {
        assert!(
            metrics.contains(&format!(r#"injector_reviews_total{{outcome="{outcome}"}}"#)),
            "{outcome}: {metrics}"
        );
    }

    // weftctl inject makes what the API server accepts, and uninject undoes it.
    let app = m.cluster.dir().join("app.yaml");
    std::fs::write(&app, APP).expect("writing app.yaml");
    let out = std::process::Command::new(weft_e2e::bins::weftctl())
        .args(["inject", "-f"])
        .arg(&app)
        .output()
        .expect("weftctl inject");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("deployment/backend-v1 injected"),
        "{stderr}"
    );
    let injected_yaml = String::from_utf8_lossy(&out.stdout).into_owned();
    let dry = m.cluster.kubectl_with(
        &m.cluster.kubeconfig(),
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&injected_yaml),
    );
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let mut un = std::process::Command::new(weft_e2e::bins::weftctl())
        .args(["uninject", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("weftctl uninject");
    use std::io::Write;
    un.stdin
        .take()
        .expect("stdin")
        .write_all(injected_yaml.as_bytes())
        .expect("writing to weftctl");
    let back = un.wait_with_output().expect("weftctl uninject");
    assert!(back.status.success());
    let parse = |y: &str| -> Vec<serde_json::Value> {
        y.split("\n---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_norway::from_str(d).expect("YAML"))
            .collect()
    };
    assert_eq!(parse(&String::from_utf8_lossy(&back.stdout)), parse(APP));
}

//! The kubelet stand-in running pods for real on a real API server: a
//! Deployment of the test app with a readiness probe, a projected token, a
//! ConfigMap volume, the downward API and a non-root user; Services reached
//! by their DNS names through the kube-proxy stand-in, from a plain pod and
//! from the sidecar's UID in a pod whose `weft-proxy init` redirects
//! everything else; and a real Jaeger (built from its Go module) that takes
//! a span over OTLP/gRPC and shows it in its query API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::core::v1::Pod as ApiPod;
use kube::api::{Api, ListParams, PostParams};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use weft_e2e::kube::{Cluster, NODE_NAME, NodeStandIn};
use weft_e2e::{Node, client, eventually, require_root};

const NS: &str = "demo";
const WAIT: Duration = Duration::from_secs(60);

const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: demo}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config, namespace: demo}
data: {greeting: hello from a ConfigMap}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      serviceAccountName: web
      terminationGracePeriodSeconds: 3
      securityContext: {runAsUser: 1000, runAsGroup: 1000}
      containers:
      - name: app
        image: registry.example/weft-test-app:dev
        command: [/weft-test-app]
        args: [http, --listen, "0.0.0.0:8080", --service, web, --pod, "$(POD_NAME)"]
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        - {name: GREETING, value: "hi $(POD_NAME), $$(NOT_EXPANDED)"}
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /, port: http}
          initialDelaySeconds: 3
          periodSeconds: 1
        volumeMounts:
        - {name: weft-token, mountPath: /var/run/secrets/weft.dev, readOnly: true}
        - {name: config, mountPath: /etc/web}
      volumes:
      - name: weft-token
        projected:
          sources:
          - serviceAccountToken: {audience: weft.dev, expirationSeconds: 600, path: token}
          - downwardAPI:
              items: [{path: pod, fieldRef: {fieldPath: metadata.name}}]
      - name: config
        configMap: {name: web-config}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

/// A plain pod that GETs the Service by its short and its full name.
const CLIENT: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo}
spec:
  restartPolicy: Never
  containers:
  - {name: short, image: weft-test-app, args: [get, "http://web/"]}
  - {name: fqdn, image: weft-test-app, args: [get, "http://web.demo.svc.cluster.local/"]}
"#;

/// A pod whose init container installs Weft's interception: the sidecar's
/// UID is not redirected (and reaches the Service through the node's
/// DNAT); any other UID is sent to the outbound port, where nothing
/// listens here.
const INTERCEPTED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: intercepted, namespace: demo}
spec:
  restartPolicy: Never
  initContainers:
  - {name: weft-init, image: weft-init:dev, command: [/weft-proxy], args: [init]}
  containers:
  - name: as-proxy
    image: weft-test-app
    args: [get, "http://web.demo/"]
    securityContext: {runAsUser: 2420, runAsGroup: 2420}
  - name: as-app
    image: weft-test-app
    args: [get, "http://web.demo/"]
    securityContext: {runAsUser: 1000}
"#;

/// A native sidecar (an init container with `restartPolicy: Always`) that
/// must pass its startup probe before the app starts: the app calls it once
/// and exits, which fails unless the sidecar already listens.
const SIDECAR: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: with-sidecar, namespace: demo}
spec:
  restartPolicy: Never
  initContainers:
  - name: sidecar
    image: weft-test-app
    restartPolicy: Always
    args: [http, --listen, "0.0.0.0:9000", --pod, the-sidecar]
    startupProbe:
      httpGet: {path: /, port: 9000}
      periodSeconds: 1
      failureThreshold: 30
  containers:
  - {name: app, image: weft-test-app, args: [get, "http://127.0.0.1:9000/"]}
"#;

/// Pods the stand-in cannot run: an image not in its table, a volume type
/// it does not make.
const UNKNOWN_IMAGE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: unknown, namespace: demo}
spec:
  containers: [{name: web, image: "nginx:1.27"}]
"#;

const UNKNOWN_VOLUME: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: unknown-volume, namespace: demo}
spec:
  containers: [{name: app, image: weft-test-app, args: [http]}]
  volumes: [{name: host, hostPath: {path: /etc}}]
"#;

const JAEGER: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: jaeger, namespace: demo}
spec:
  replicas: 1
  selector: {matchLabels: {app: jaeger}}
  template:
    metadata: {labels: {app: jaeger}}
    spec:
      containers:
      - name: jaeger
        image: jaegertracing/jaeger:2.13.0
        ports:
        - {name: otlp-grpc, containerPort: 4317}
        - {name: query, containerPort: 16686}
        - {name: health, containerPort: 13133}
        readinessProbe:
          httpGet: {path: /status, port: health}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: jaeger, namespace: demo}
spec:
  selector: {app: jaeger}
  ports:
  - {name: otlp-grpc, port: 4317, targetPort: otlp-grpc}
  - {name: query, port: 16686, targetPort: query}
"#;

fn json(cluster: &Cluster, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&cluster.kubectl_ok(&all)).expect("kubectl's JSON")
}

fn pods(cluster: &Cluster, selector: &str) -> Vec<ApiPod> {
    let selector = selector.to_string();
    cluster.block_on(|client| async move {
        Api::<ApiPod>::namespaced(client, NS)
            .list(&ListParams::default().labels(&selector))
            .await
            .expect("listing pods")
            .items
    })
}

fn condition(pod: &ApiPod, t: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == t && c.status == "True")
}

fn phase(pod: &serde_json::Value) -> String {
    pod["status"]["phase"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A container's terminated exit code, from the API's pod status.
fn exit_code(pod: &serde_json::Value, field: &str, container: &str) -> Option<i64> {
    pod["status"][field]
        .as_array()?
        .iter()
        .find(|c| c["name"] == container)?["state"]["terminated"]["exitCode"]
        .as_i64()
}

/// A file as the container sees it (`/proc/<pid>/root`).
fn read_in(kubelet: &NodeStandIn, pod: &str, container: &str, path: &str) -> String {
    let p = kubelet
        .process(NS, pod, container)
        .unwrap_or_else(|| panic!("no process for {pod}/{container}"));
    let file = format!("/proc/{}/root{path}", p.pid());
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {file}: {e}"))
}

fn cluster_ip(cluster: &Cluster, ns: &str, name: &str) -> String {
    json(cluster, &["get", "service", name, "-n", ns])["spec"]["clusterIP"]
        .as_str()
        .expect("a ClusterIP")
        .to_string()
}

fn assert_no_errors(kubelet: &NodeStandIn) {
    let errors: Vec<String> = kubelet
        .errors()
        .into_iter()
        .filter(|e| !e.starts_with("watching") && !e.starts_with("pod demo/unknown"))
        .collect();
    assert!(errors.is_empty(), "the stand-in failed: {errors:?}");
}

#[test]
fn the_stand_in_runs_pods_for_real() {
    require_root();
    let node = Arc::new(Node::new("kube_stand_in"));
    let started = Instant::now();
    let cluster = Cluster::start(&node);
    let kubelet = cluster.stand_in_running(node.clone());
    eprintln!(
        "cluster and stand-in up in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    cluster.apply(APP);

    // The pod runs, but is Ready only once its readiness probe passed
    // (after its initial delay of 3 s).
    let mut seen_unready_running = false;
    let mut web = None;
    let deadline = Instant::now() + WAIT;
    while web.is_none() {
        assert!(Instant::now() < deadline, "web never became Ready");
        for p in pods(&cluster, "app=web") {
            let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if running && !condition(&p, "Ready") {
                seen_unready_running = true;
            }
            if running && condition(&p, "Ready") {
                web = p.metadata.name.clone();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let web = web.expect("the web pod");
    assert!(
        seen_unready_running,
        "the pod was never seen Running but not yet Ready"
    );
    let ready_at = Instant::now();
    let app = kubelet.process(NS, &web, "app").expect("the app's process");
    assert!(app.is_running(), "{}", app.log());
    let api_pod = json(&cluster, &["get", "pod", &web, "-n", NS]);
    assert_eq!(api_pod["spec"]["nodeName"], NODE_NAME);
    let ip = api_pod["status"]["podIP"]
        .as_str()
        .expect("a pod IP")
        .to_string();
    assert_eq!(api_pod["status"]["containerStatuses"][0]["ready"], true);
    assert!(
        api_pod["status"]["containerStatuses"][0]["state"]["running"].is_object(),
        "{api_pod}"
    );

    // The probes went to the app (its request counter moved).
    let stats = kubelet
        .pods(NS, "app=web")
        .first()
        .expect("a harness pod for web")
        .1
        .ns
        .block_on(client::get(
            format!("{ip}:8080").parse().expect("an address"),
            "/_stats",
        ))
        .expect("the app's /_stats")
        .json();
    assert!(stats["requests"].as_u64() >= Some(1), "{stats}");

    // It runs as the pod's user.
    let status = std::fs::read_to_string(format!("/proc/{}/status", app.pid())).expect("status");
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("a Uid line");
    assert_eq!(
        uid.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["1000"; 4]
    );
    let gid = status
        .lines()
        .find(|l| l.starts_with("Gid:"))
        .expect("a Gid line");
    assert_eq!(
        gid.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["1000"; 4]
    );

    // Its environment: fieldRefs, $(VAR) expansion and the Service links.
    let environ = std::fs::read(format!("/proc/{}/environ", app.pid())).expect("environ");
    let env: BTreeMap<String, String> = environ
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    assert_eq!(env.get("POD_NAME"), Some(&web));
    assert_eq!(env.get("POD_IP"), Some(&ip));
    assert_eq!(
        env.get("GREETING"),
        Some(&format!("hi {web}, $(NOT_EXPANDED)"))
    );
    let kubernetes_ip = cluster_ip(&cluster, "default", "kubernetes");
    assert_eq!(env.get("KUBERNETES_SERVICE_HOST"), Some(&kubernetes_ip));
    assert_eq!(
        env.get("KUBERNETES_SERVICE_PORT").map(String::as_str),
        Some("443")
    );
    let web_ip = cluster_ip(&cluster, NS, "web");
    assert_eq!(env.get("WEB_SERVICE_HOST"), Some(&web_ip));

    // Its volumes at their mount paths, in its own view of the files
    // (/var/run is a symlink to /run: read through the target).
    assert_eq!(
        read_in(&kubelet, &web, "app", "/etc/web/greeting"),
        "hello from a ConfigMap"
    );
    assert_eq!(
        read_in(&kubelet, &web, "app", "/run/secrets/weft.dev/pod"),
        web
    );
    let token = read_in(&kubelet, &web, "app", "/run/secrets/weft.dev/token");
    let sa = "/run/secrets/kubernetes.io/serviceaccount";
    assert_eq!(
        read_in(&kubelet, &web, "app", &format!("{sa}/namespace")),
        NS
    );
    assert_eq!(
        read_in(&kubelet, &web, "app", &format!("{sa}/ca.crt")),
        cluster.ca_pem()
    );
    assert!(read_in(&kubelet, &web, "app", &format!("{sa}/token")).starts_with("ey"));
    // Not on the host: only in the container's mount namespace.
    assert!(!std::path::Path::new("/run/secrets/weft.dev").exists());
    // The hosts file names the Services.
    let hosts = read_in(&kubelet, &web, "app", "/etc/hosts");
    assert!(
        hosts.contains(&format!(
            "{web_ip}\tweb.demo.svc.cluster.local web.demo.svc web.demo web"
        )),
        "{hosts}"
    );

    // The projected token is for weft.dev and bound to the pod.
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
    let user = status.user.expect("the reviewed user");
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:demo:web")
    );
    let extra = user.extra.unwrap_or_default();
    assert_eq!(
        extra.get("authentication.kubernetes.io/pod-name"),
        Some(&vec![web.clone()]),
        "{extra:?}"
    );
    assert_eq!(
        extra.get("authentication.kubernetes.io/pod-uid"),
        Some(&vec![
            api_pod["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        ]),
    );

    // Another pod reaches the Service by its names, through the node's
    // DNAT to the ready endpoint.
    cluster.apply(CLIENT);
    eventually("the client pod succeeds", WAIT, || {
        phase(&json(&cluster, &["get", "pod", "client", "-n", NS])) == "Succeeded"
    });
    for c in ["short", "fqdn"] {
        let log = kubelet.logs(NS, "client", c);
        assert!(log.contains(&format!("\"pod\":\"{web}\"")), "{c}: {log}");
    }

    // With Weft's interception in the pod, the sidecar's UID still reaches
    // the ClusterIP (through the node's DNAT); the app's UID is redirected
    // to the outbound port, where no proxy listens in this test.
    cluster.apply(INTERCEPTED);
    eventually("the intercepted pod ends", WAIT, || {
        phase(&json(&cluster, &["get", "pod", "intercepted", "-n", NS])) == "Failed"
    });
    let p = json(&cluster, &["get", "pod", "intercepted", "-n", NS]);
    assert_eq!(
        exit_code(&p, "initContainerStatuses", "weft-init"),
        Some(0),
        "{p}"
    );
    assert_eq!(
        exit_code(&p, "containerStatuses", "as-proxy"),
        Some(0),
        "{}",
        kubelet.logs(NS, "intercepted", "as-proxy")
    );
    assert_ne!(exit_code(&p, "containerStatuses", "as-app"), Some(0), "{p}");
    assert!(
        kubelet
            .logs(NS, "intercepted", "as-proxy")
            .contains(&format!("\"pod\":\"{web}\"")),
    );
    let refused = kubelet.logs(NS, "intercepted", "as-app");
    assert!(refused.contains("refused"), "{refused}");

    // A native sidecar starts, and passes its startup probe, before the
    // app; when the app is done the pod succeeds and the sidecar stops.
    cluster.apply(SIDECAR);
    eventually("the pod with a sidecar succeeds", WAIT, || {
        phase(&json(&cluster, &["get", "pod", "with-sidecar", "-n", NS])) == "Succeeded"
    });
    let app_log = kubelet.logs(NS, "with-sidecar", "app");
    assert!(app_log.contains("the-sidecar"), "{app_log}");
    let sidecar = kubelet
        .process(NS, "with-sidecar", "sidecar")
        .expect("the sidecar's process");
    assert!(!sidecar.is_running(), "the sidecar outlived its pod");

    // An image that is not in the stand-in's table: the pod does not
    // start, says why, and the test can see it.
    cluster.apply(UNKNOWN_IMAGE);
    eventually("the unknown image is reported", WAIT, || {
        let p = json(&cluster, &["get", "pod", "unknown", "-n", NS]);
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImagePull"
    });
    assert!(
        kubelet
            .errors()
            .iter()
            .any(|e| e.starts_with("pod demo/unknown:") && e.contains("nginx:1.27")),
        "{:?}",
        kubelet.errors()
    );
    // So is a volume type it does not make.
    cluster.apply(UNKNOWN_VOLUME);
    eventually("the unsupported volume is reported", WAIT, || {
        let p = json(&cluster, &["get", "pod", "unknown-volume", "-n", NS]);
        p["status"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("FailedMount: volume host"))
    });
    assert!(
        kubelet
            .errors()
            .iter()
            .any(|e| e.starts_with("pod demo/unknown-volume:")),
        "{:?}",
        kubelet.errors()
    );
    cluster.kubectl_ok(&[
        "delete",
        "pod",
        "unknown",
        "unknown-volume",
        "-n",
        NS,
        "--timeout=30s",
    ]);

    // Jaeger, from its image name, takes a span over OTLP/gRPC at its
    // ClusterIP and shows it in its query API.
    cluster.apply(JAEGER);
    let jaeger_started = Instant::now();
    let jaeger = kubelet.wait_pods(NS, "app=jaeger", 1, WAIT);
    eventually("Jaeger is Ready", WAIT, || {
        pods(&cluster, "app=jaeger")
            .iter()
            .any(|p| condition(p, "Ready"))
    });
    eprintln!(
        "Jaeger Ready {:.1}s after it was applied",
        jaeger_started.elapsed().as_secs_f64()
    );
    // /etc/hosts of a running pod follows new Services, in place.
    let jaeger_ip = cluster_ip(&cluster, NS, "jaeger");
    eventually("web's hosts file names jaeger", WAIT, || {
        read_in(&kubelet, &web, "app", "/etc/hosts").contains(&format!("{jaeger_ip}\tjaeger.demo"))
    });
    let caller = node.pod("otlp-client");
    let trace_id: [u8; 16] = rand::random();
    let span_id: [u8; 8] = rand::random();
    let service = "weft-e2e-stand-in";
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_nanos() as u64;
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(service.into())),
                    }),
                    ..KeyValue::default()
                }],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: trace_id.to_vec(),
                    span_id: span_id.to_vec(),
                    name: "through the kube-proxy stand-in".into(),
                    kind: 2,
                    start_time_unix_nano: now - 5_000_000,
                    end_time_unix_nano: now,
                    ..Span::default()
                }],
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    };
    let endpoint = format!("http://{jaeger_ip}:4317");
    caller.ns.block_on(async move {
        let mut c = TraceServiceClient::connect(endpoint.clone())
            .await
            .unwrap_or_else(|e| panic!("connecting to {endpoint}: {e}"));
        c.export(request).await.expect("exporting a span to Jaeger");
    });
    let hex: String = trace_id.iter().map(|b| format!("{b:02x}")).collect();
    let query: SocketAddr = format!("{jaeger_ip}:16686").parse().expect("an address");
    let path = format!("/api/traces?service={service}");
    let mut last = String::new();
    eventually("the span in Jaeger's query API", WAIT, || {
        last = caller
            .ns
            .block_on(client::get(query, &path))
            .map(|r| r.text())
            .unwrap_or_else(|e| e);
        last.contains(&hex)
    });
    assert!(last.contains("through the kube-proxy stand-in"), "{last}");
    let jaeger_pod = &jaeger[0].0;
    let jaeger_proc = kubelet
        .process(NS, jaeger_pod, "jaeger")
        .expect("Jaeger's process");
    let status = std::fs::read_to_string(format!("/proc/{}/status", jaeger_proc.pid()))
        .expect("Jaeger's status");
    assert!(
        status.contains("Uid:\t10001\t"),
        "Jaeger runs as its image's user: {status}"
    );

    // With several endpoints the node's DNAT spreads connections.
    cluster.kubectl_ok(&["scale", "deployment", "web", "-n", NS, "--replicas=3"]);
    let web_vip: SocketAddr = format!("{web_ip}:80").parse().expect("an address");
    eventually(
        "connections to web's ClusterIP reach all 3 pods",
        WAIT,
        || {
            let seen = caller.ns.block_on(async move {
                let mut seen = std::collections::BTreeSet::new();
                for _ in 0..30 {
                    if let Ok(r) = client::get(web_vip, "/").await {
                        seen.insert(r.json()["pod"].as_str().unwrap_or_default().to_string());
                    }
                }
                seen
            });
            seen.len() == 3
        },
    );

    let table = cluster.kubectl_ok(&["get", "pods", "-n", NS, "-o", "wide"]);
    eprintln!("{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&web) && l.contains("1/1") && l.contains("Running")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("client") && l.contains("Completed")),
        "{table}"
    );

    // Deletion: SIGTERM, the (short) grace period, then the pod is gone
    // and the ReplicaSet's replacement runs.
    let deleted = Instant::now();
    cluster.kubectl_ok(&["delete", "pod", &web, "-n", NS, "--timeout=30s"]);
    eprintln!(
        "deleting {web} took {:.1}s",
        deleted.elapsed().as_secs_f64()
    );
    assert!(!app.is_running(), "the app still runs after its deletion");
    assert!(deleted.elapsed() < Duration::from_secs(20));
    let replaced = kubelet.wait_pods(NS, "app=web", 3, WAIT);
    assert!(replaced.iter().all(|(n, _)| *n != web));
    eprintln!(
        "web was Ready {:.1}s before the checks ended",
        ready_at.elapsed().as_secs_f64()
    );
    assert_no_errors(&kubelet);
    eprintln!(
        "the whole test took {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

//! Weft's CRDs (k8s/crds/, generated from the Rust types) and the Gateway
//! API HTTPRoute CRD on a real API server: both are accepted and
//! Established, every example manifest is stored, and bad objects are
//! refused with the field named. Each bad TrafficPolicy is also refused by
//! the control plane's own validation, on the same field, so a policy is
//! judged alike whether it comes from a cluster or a manifest directory.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use weft_control::discovery::crds::TrafficPolicy;
use weft_e2e::kube::Cluster;
use weft_e2e::{Node, require_root};

const WEFT_CRD: &str = "crd/trafficpolicies.weft.dev";
const FAULT_CRD: &str = "crd/faultinjections.weft.dev";
const HTTPROUTE_CRD: &str = "crd/httproutes.gateway.networking.k8s.io";
const GRPCROUTE_CRD: &str = "crd/grpcroutes.gateway.networking.k8s.io";
const REFERENCEGRANT_CRD: &str = "crd/referencegrants.gateway.networking.k8s.io";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds tests/")
        .to_path_buf()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kubectl apply` of `manifest` (YAML or JSON) must fail, and kubectl's
/// stderr must name `field`.
fn assert_refused(cluster: &Cluster, what: &str, manifest: &str, field: &str) {
    let out = cluster.apply_result(manifest);
    let (stdout, stderr) = text(&out);
    assert!(
        !out.status.success(),
        "the API server stored {what}: {stdout}{stderr}"
    );
    assert!(
        stderr.contains(field),
        "the API server refused {what} but did not name `{field}`: {stderr}"
    );
    eprintln!("refused {what}: {}", stderr.trim());
}

/// A TrafficPolicy for Service `web` with `spec` merged over its target.
fn policy(name: &str, spec: Value) -> Value {
    let mut p = json!({
        "apiVersion": "weft.dev/v1alpha1",
        "kind": "TrafficPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"targetRef": {"group": "", "kind": "Service", "name": "web"}},
    });
    for (k, v) in spec.as_object().expect("a spec object") {
        p["spec"][k] = v.clone();
    }
    p
}

#[test]
fn crds_and_examples_on_a_real_api_server() {
    require_root();
    let started = Instant::now();
    let node = Arc::new(Node::new("kube_crds"));
    let cluster = Cluster::start(&node);
    let repo = repo();
    let path = |p: &str| repo.join(p).to_str().expect("a UTF-8 path").to_string();

    // Server-side apply: the Gateway API CRD is larger than the
    // last-applied annotation kubectl's client-side apply would add.
    let out = cluster.kubectl(&["apply", "--server-side", "-k", &path("k8s/crds")]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "applying k8s/crds: {stderr}{stdout}");
    assert!(
        !stderr.contains("Warning"),
        "the API server warned about Weft's CRDs: {stderr}"
    );
    cluster.kubectl_ok(&["apply", "--server-side", "-k", &path("k8s/gateway-api")]);
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        WEFT_CRD,
        FAULT_CRD,
        HTTPROUTE_CRD,
        GRPCROUTE_CRD,
        REFERENCEGRANT_CRD,
    ]);
    // A schema the API server cannot prune by would be flagged here.
    let conditions: Value = serde_json::from_str(&cluster.kubectl_ok(&[
        "get",
        WEFT_CRD,
        "-o",
        "jsonpath={.status.conditions}",
    ]))
    .expect("the CRD's conditions as JSON");
    for c in conditions.as_array().expect("a list of conditions") {
        assert!(
            c["type"] != "NonStructuralSchema" || c["status"] != "True",
            "{WEFT_CRD} is not structural: {c}"
        );
    }
    eprintln!(
        "CRDs Established after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // Every example is stored. The Pods' ServiceAccounts must exist; they
    // stay Pending (no node runs them), and the `status:` stanzas are
    // ignored on create.
    cluster.apply(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web, namespace: default}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: redis, namespace: default}\n",
    );
    let mut files: Vec<PathBuf> = Vec::new();
    // The policy examples after their mesh (mesh.yaml sorts first there).
    for dir in ["examples/manifests", "examples/policy"] {
        let mut here: Vec<PathBuf> = std::fs::read_dir(repo.join(dir))
            .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
            .map(|e| e.expect("a directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        here.sort_by_key(|p| (p.file_name() != Some("mesh.yaml".as_ref()), p.clone()));
        files.extend(here);
    }
    assert!(!files.is_empty(), "no examples in examples/manifests");
    for file in &files {
        let yaml = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        // The examples' Service VIPs (198.19.0.0/16, the local mesh's) are
        // outside this API server's --service-cluster-ip-range.
        let yaml = yaml.replace("clusterIP: 198.19.", "clusterIP: 10.96.");
        let docs = yaml.lines().filter(|l| l.starts_with("kind:")).count();
        let out = cluster.apply_result(&yaml);
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success(),
            "the API server refused {}: {stderr}{stdout}",
            file.display()
        );
        let out = cluster.kubectl_with(
            &cluster.kubeconfig(),
            &["get", "-f", "-", "-o", "name"],
            Some(&yaml),
        );
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success() && stdout.lines().count() == docs,
            "{} has {docs} objects; the API server holds: {stdout}{stderr}",
            file.display()
        );
    }
    // The stored example policy, API server defaults included, is one the
    // control plane reads (its types refuse unknown fields) and accepts.
    let stored: TrafficPolicy = serde_json::from_str(&cluster.kubectl_ok(&[
        "get",
        "trafficpolicy",
        "web",
        "-n",
        "default",
        "-o",
        "json",
    ]))
    .expect("the stored TrafficPolicy reads as the control plane's type");
    assert_eq!(stored.spec.validate(), Ok(()));
    assert_eq!(
        stored.spec.retry_on.map(|r| r.grpc_codes),
        Some(vec!["UNAVAILABLE".to_string()])
    );
    eprintln!(
        "{} example files stored after {:.1}s",
        files.len(),
        started.elapsed().as_secs_f64()
    );

    // Bad TrafficPolicies: the API server refuses each naming the field,
    // and so does the control plane.
    let bad = [
        (
            "a duration in words",
            json!({"timeouts": {"request": "5 seconds"}}),
            "spec.timeouts.request",
        ),
        (
            "a retry ratio out of range",
            json!({"retryBudget": {"ratio": 20}}),
            "spec.retryBudget.ratio",
        ),
        (
            "an ejection percentage over 100",
            json!({"outlierDetection": {"maxEjectionPercent": 150}}),
            "spec.outlierDetection.maxEjectionPercent",
        ),
        (
            "an unknown gRPC code name",
            json!({"retryOn": {"grpcCodes": ["UNAVAILABLE", "NOT_A_CODE"]}}),
            "spec.retryOn.grpcCodes[1]",
        ),
        (
            "a Deployment target (CEL rule)",
            json!({"targetRef": {"group": "", "kind": "Deployment", "name": "web"}}),
            "spec.targetRef.kind",
        ),
        (
            "a target in another group (CEL rule)",
            json!({"targetRef": {"group": "apps", "kind": "Service", "name": "web"}}),
            "spec.targetRef.group",
        ),
        (
            "backendRequest longer than request (CEL rule)",
            json!({"timeouts": {"request": "1s", "backendRequest": "2s"}}),
            "spec.timeouts.backendRequest",
        ),
        (
            "a retry on status 200",
            json!({"retry": {"codes": [503, 200]}}),
            "spec.retry.codes[1]",
        ),
        (
            "port 0",
            json!({"targetRef": {"group": "", "kind": "Service", "name": "web", "port": 0}}),
            "spec.targetRef.port",
        ),
        (
            "a count beyond u32",
            json!({"retryBudget": {"minPerSecond": 5_000_000_000u64}}),
            "spec.retryBudget.minPerSecond",
        ),
        (
            "a rate limit of 0 per second",
            json!({"rateLimit": {"requestsPerSecond": 0}}),
            "spec.rateLimit.requestsPerSecond",
        ),
        (
            "a rate limit with an empty bucket",
            json!({"rateLimit": {"requestsPerSecond": 10, "burst": 0}}),
            "spec.rateLimit.burst",
        ),
        ("an unknown field", json!({"retries": 3}), "spec.retries"),
    ];
    for (i, (what, spec, field)) in bad.into_iter().enumerate() {
        let p = policy(&format!("bad-{i}"), spec);
        assert_refused(&cluster, what, &p.to_string(), field);
        match serde_json::from_value::<TrafficPolicy>(p) {
            // Not even a TrafficPolicy to the control plane's types.
            Err(_) => {}
            Ok(p) => {
                let got = p.spec.validate();
                assert_eq!(
                    got.as_ref().map_err(|(f, _)| f.as_str()),
                    Err(field),
                    "the control plane judged {what} otherwise: {got:?}"
                );
            }
        }
    }
    let policies = cluster.kubectl_ok(&["get", "trafficpolicies", "-A", "-o", "name"]);
    assert_eq!(
        policies.trim(),
        "trafficpolicy.weft.dev/web",
        "only the example policy is stored"
    );

    // Bad AuthorizationPolicies: refused by the API server (schema and CEL)
    // and by the control plane alike, naming the field.
    let authz = |name: &str, spec: Value| {
        json!({
            "apiVersion": "weft.dev/v1alpha1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        })
    };
    let web = json!({"group": "", "kind": "Service", "name": "web"});
    let bad_authz = [
        (
            "a Deployment target (CEL rule)",
            json!({"targetRef": {"group": "", "kind": "Deployment", "name": "web"}}),
            "spec.targetRef.kind",
        ),
        (
            "a port on a route target (CEL rule)",
            json!({"targetRef": {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r", "port": 80}}),
            "spec.targetRef.port",
        ),
        (
            "two kinds of caller in one source (CEL rule)",
            json!({"targetRef": web, "rules": [{"from": [{"namespace": "a", "authenticated": true}]}]}),
            "spec.rules[0].from[0]",
        ),
        (
            "a lowercase method",
            json!({"targetRef": web, "rules": [{"to": {"methods": ["get"]}}]}),
            "spec.rules[0].to.methods[0]",
        ),
        (
            "a path without /",
            json!({"targetRef": web, "rules": [{"to": {"paths": [{"type": "Exact", "value": "x"}]}}]}),
            "spec.rules[0].to.paths[0].value",
        ),
    ];
    for (i, (what, spec, field)) in bad_authz.into_iter().enumerate() {
        let p = authz(&format!("bad-authz-{i}"), spec);
        assert_refused(&cluster, what, &p.to_string(), field);
        let p: weft_control::discovery::crds::AuthorizationPolicy =
            serde_json::from_value(p).expect("the control plane's type reads it");
        assert_eq!(
            p.spec.validate().as_ref().map_err(|(f, _)| f.as_str()),
            Err(field),
            "the control plane judged {what} otherwise"
        );
    }
    let good = authz(
        "good-authz",
        json!({"targetRef": web, "action": "DENY", "rules": [{"from": [{"namespace": "ops"}], "to": {"methods": ["POST"]}}]}),
    );
    let out = cluster.apply_result(&good.to_string());
    assert!(out.status.success(), "{:?}", text(&out));

    // Bad FaultInjections, likewise.
    let fault = |name: &str, spec: Value| {
        json!({
            "apiVersion": "weft.dev/v1alpha1",
            "kind": "FaultInjection",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        })
    };
    let bad_faults = [
        (
            "neither a delay nor an abort (CEL rule)",
            json!({"headers": [{"name": "x-fault", "value": "me"}]}),
            "spec",
        ),
        (
            "an abort without a status (CEL rule)",
            json!({"abort": {"percent": 10}}),
            "spec.abort",
        ),
        (
            "a percentage over 100",
            json!({"delay": {"fixedDelay": "1s", "percent": 101}}),
            "spec.delay.percent",
        ),
        (
            "a delay in words",
            json!({"delay": {"fixedDelay": "1 second", "percent": 10}}),
            "spec.delay.fixedDelay",
        ),
        (
            "status 100",
            json!({"abort": {"httpStatus": 100, "percent": 10}}),
            "spec.abort.httpStatus",
        ),
        (
            "an unknown gRPC code name",
            json!({"abort": {"grpcStatus": "NOPE", "percent": 10}}),
            "spec.abort.grpcStatus",
        ),
    ];
    for (i, (what, spec, field)) in bad_faults.into_iter().enumerate() {
        let f = fault(&format!("bad-fault-{i}"), spec);
        assert_refused(&cluster, what, &f.to_string(), field);
        let f: weft_control::discovery::crds::FaultInjection =
            serde_json::from_value(f).expect("the control plane's type reads it");
        assert_eq!(
            f.spec.validate().as_ref().map_err(|(f, _)| f.as_str()),
            Err(field),
            "the control plane judged {what} otherwise"
        );
    }
    let good = fault(
        "good-fault",
        json!({"delay": {"fixedDelay": "20ms", "percent": 12.5}, "abort": {"httpStatus": 503, "grpcStatus": "UNAVAILABLE", "percent": 0.1}, "headers": [{"name": "x-fault", "value": "me"}]}),
    );
    let out = cluster.apply_result(&good.to_string());
    assert!(out.status.success(), "{:?}", text(&out));

    // The Gateway API CRD's own validation: a PathPrefix must be a path.
    assert_refused(
        &cluster,
        "an HTTPRoute PathPrefix match not starting with /",
        "apiVersion: gateway.networking.k8s.io/v1\n\
         kind: HTTPRoute\n\
         metadata: {name: bad-path, namespace: default}\n\
         spec:\n  \
           parentRefs: [{group: \"\", kind: Service, name: web, port: 80}]\n  \
           rules:\n  \
           - matches: [{path: {type: PathPrefix, value: api}}]\n    \
             backendRefs: [{name: web, port: 80}]\n",
        "spec.rules[0].matches[0].path",
    );
    eprintln!(
        "kube_crds took {:.1}s in all",
        started.elapsed().as_secs_f64()
    );
}

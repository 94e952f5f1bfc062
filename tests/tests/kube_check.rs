//! `weftctl check` against the real API server: before an install (`--pre`
//! passes for an admin and names what an unprivileged user may not
//! create; the health checks name everything missing), and after
//! `weftctl install` with a control plane running.

use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_e2e::kube::weft::ControlReplica;
use weft_e2e::kube::{Cluster, ISSUER};
use weft_e2e::{Node, bins, require_root};

/// `weftctl check ARGS --kubeconfig KUBECONFIG`, run in the kube pod (the
/// API server is reachable only from the test bridge).
fn check(cluster: &Cluster, kubeconfig: &std::path::Path, args: &[&str]) -> Output {
    cluster
        .pod()
        .ns
        .command(bins::weftctl())
        .arg("check")
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .expect("running weftctl check")
}

/// The exit code and the lines, each checked for the one-line format.
fn lines(out: &Output) -> (i32, Vec<String>) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<String> = stdout.lines().map(str::to_string).collect();
    for l in &lines {
        let pass = l.starts_with("✔ ") && l.contains(": ");
        let fail = l.starts_with("✘ ") && l.contains(": ") && l.contains(" — ");
        assert!(
            pass || fail,
            "not a check line: {l:?}\n{stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (out.status.code().unwrap_or(-1), lines)
}

fn line<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix:?}:\n{}", lines.join("\n")))
}

#[test]
fn weftctl_check_before_an_install() {
    require_root();
    let node = Arc::new(Node::new("kube_check_pre"));
    let cluster = Cluster::start(&node);
    let admin = cluster.kubeconfig();

    // --pre as the admin: everything passes.
    let out = check(&cluster, &admin, &["--pre"]);
    let (code, pre) = lines(&out);
    let text = pre.join("\n");
    eprintln!("weftctl check --pre as the admin:\n{text}");
    assert_eq!(code, 0, "{text}");
    assert!(pre.iter().all(|l| l.starts_with('✔')), "{text}");
    assert_eq!(
        line(&pre, "✔ API server: "),
        format!(
            "✔ API server: {} answers, Kubernetes v1.34.4",
            cluster.server()
        )
    );
    assert!(line(&pre, "✔ native sidecars: ").contains("v1.34.4"));
    for what in [
        "namespaces",
        "customresourcedefinitions.apiextensions.k8s.io",
        "clusterroles.rbac.authorization.k8s.io",
        "clusterrolebindings.rbac.authorization.k8s.io",
        "mutatingwebhookconfigurations.admissionregistration.k8s.io",
        "deployments.apps in weft-system",
        "services in weft-system",
    ] {
        assert_eq!(
            line(&pre, &format!("✔ may create {what}: ")),
            format!("✔ may create {what}: allowed")
        );
    }

    // --pre as a ServiceAccount with no rights: reachable, but every
    // permission fails with the fix, and the exit code is 1.
    let token = cluster.token("default", "default", ISSUER, None, "1h");
    let nobody = cluster.kubeconfig_for_token(&token);
    let (code, pre) = lines(&check(&cluster, &nobody, &["--pre"]));
    let text = pre.join("\n");
    eprintln!("weftctl check --pre as a ServiceAccount without rights:\n{text}");
    assert_eq!(code, 1, "{text}");
    assert!(line(&pre, "✔ API server: ").contains("v1.34.4"), "{text}");
    let l = line(
        &pre,
        "✘ may create clusterroles.rbac.authorization.k8s.io: ",
    );
    assert!(
        l.contains("not allowed — run the install as a cluster administrator"),
        "{l}"
    );
    let refused = pre
        .iter()
        .filter(|l| l.starts_with("✘ may create "))
        .count();
    assert_eq!(refused, 11, "{text}");

    // The health checks before any install: each missing part named, exit 1.
    let (code, health) = lines(&check(&cluster, &admin, &[]));
    let text = health.join("\n");
    eprintln!("weftctl check before the install:\n{text}");
    assert_eq!(code, 1, "{text}");
    assert!(line(&health, "✔ API server: ").contains("v1.34.4"));
    for expected in [
        "✘ CRD trafficpolicies.weft.dev: not installed — install Weft: weftctl install | kubectl apply --server-side -f -",
        "✘ CRD authorizationpolicies.weft.dev: not installed — install Weft",
        "✘ CRD faultinjections.weft.dev: not installed — install Weft",
        "✘ CRD requestauthentications.weft.dev: not installed — install Weft",
        "✘ CRD httproutes.gateway.networking.k8s.io: not installed — install Weft",
        "✘ CRD grpcroutes.gateway.networking.k8s.io: not installed — install Weft",
        "✘ CRD referencegrants.gateway.networking.k8s.io: not installed — install Weft",
        "✘ control plane: Deployment weft-system/weft-control not found — install Weft",
        "✘ control plane Service: Service weft-system/weft-control not found — install Weft",
        "✘ injector webhook: MutatingWebhookConfiguration weft-injector not found: pods are not injected — install Weft",
        "✘ mesh CA: Secret weft-system/weft-ca not found — the control plane's leader creates it",
        "✘ leader: Lease weft-system/weft-control not found — ",
        "✘ proxies: cannot ask the control plane: its Service has no ready endpoints — ",
    ] {
        let name = &expected[..expected.find(": ").expect("a name")];
        assert!(
            line(&health, &format!("{name}: ")).starts_with(expected),
            "expected {expected:?} in:\n{text}"
        );
    }
    // Nothing to compare a caBundle with, nothing to dry-run against.
    assert!(!text.contains("webhook caBundle"), "{text}");
    assert!(!health.iter().any(|l| l.contains(" injection: ")), "{text}");

    // A server that does not answer: one line, exit 1.
    let dead = cluster.dir().join("dead.kubeconfig");
    std::fs::write(
        &dead,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\n\
         users: [{name: u, user: {token: x}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n\
         current-context: c\n",
    )
    .expect("writing a kubeconfig");
    let (code, dead_lines) = lines(&check(&cluster, &dead, &["--pre"]));
    assert_eq!(code, 1);
    assert_eq!(dead_lines.len(), 1, "{dead_lines:?}");
    assert!(
        dead_lines[0].starts_with("✘ API server: cannot reach https://127.0.0.1:1"),
        "{dead_lines:?}"
    );
    // No kubeconfig at all: it cannot run (2), and says why on stderr.
    let out = check(&cluster, &cluster.dir().join("missing.kubeconfig"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reading the kubeconfig"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// After `weftctl install` with a control plane replica running (as
/// tests/tests/kubernetes.rs runs it, in a harness pod of its own with the
/// weft-control ServiceAccount's token). The kubelet stand-in reports the
/// Deployment's pods Ready without running them, so what needs the API
/// server to reach the control plane through its Service (the dry-run
/// injection, `/status` through the service and pod proxies) cannot pass
/// here; every other check must.
#[test]
fn weftctl_check_after_an_install() {
    require_root();
    let node = Arc::new(Node::new("kube_check_installed"));
    let cluster = Cluster::start(&node);
    let _kubelet = cluster.stand_in(node.clone());
    let out = std::process::Command::new(bins::weftctl())
        .arg("install")
        .output()
        .expect("running weftctl install");
    assert!(out.status.success(), "{out:?}");
    let yaml = String::from_utf8(out.stdout).expect("UTF-8");
    let out = cluster.kubectl_with(
        &cluster.kubeconfig(),
        &["apply", "--server-side", "-f", "-"],
        Some(&yaml),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cp = ControlReplica::start(&cluster, &node, "control-0", &[]);

    let must_pass = [
        "✔ API server: ",
        "✔ CRD trafficpolicies.weft.dev: Established, serving v1alpha1",
        "✔ CRD authorizationpolicies.weft.dev: Established, serving v1alpha1",
        "✔ CRD faultinjections.weft.dev: Established, serving v1alpha1",
        "✔ CRD requestauthentications.weft.dev: Established, serving v1alpha1",
        "✔ CRD httproutes.gateway.networking.k8s.io: Established, serving ",
        "✔ CRD grpcroutes.gateway.networking.k8s.io: Established, serving v1, Gateway API v1.5.1",
        "✔ CRD referencegrants.gateway.networking.k8s.io: Established, serving v1, v1beta1, Gateway API v1.5.1",
        "✔ control plane: Deployment weft-system/weft-control: 2/2 replicas available",
        "✔ control plane Service: Service weft-system/weft-control: 2 ready endpoint(s)",
        "✔ injector webhook: weft-injector: inject.weft.dev calls Service weft-system/weft-control port 443 path /inject",
        "✔ webhook caBundle: equals `ca.crt` of Secret weft-system/weft-ca (1 certificate(s))",
        "✔ mesh CA: Secret weft-system/weft-ca: ",
        "✔ leader: Lease weft-system/weft-control held by control-0, renewed ",
    ];
    let deadline = Instant::now() + Duration::from_secs(90);
    let (code, health) = loop {
        let (code, health) = lines(&check(&cluster, &cluster.kubeconfig(), &[]));
        let passing = must_pass
            .iter()
            .all(|p| health.iter().any(|l| l.starts_with(p)));
        if passing || Instant::now() > deadline {
            break (code, health);
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let text = health.join("\n");
    eprintln!("weftctl check after the install:\n{text}");
    for p in must_pass {
        assert!(
            health.iter().any(|l| l.starts_with(p)),
            "no line starts with {p:?}:\n{text}\ncontrol plane log:\n{}",
            cp.log()
        );
    }
    // The mesh CA the leader generated is good for years.
    assert!(
        line(&health, "✔ mesh CA: ").contains("valid until"),
        "{text}"
    );
    // What cannot pass with a stand-in that runs nothing fails, named,
    // and only that.
    let failing: Vec<&String> = health.iter().filter(|l| l.starts_with('✘')).collect();
    for l in &failing {
        assert!(
            l.starts_with("✘ injection: ") || l.starts_with("✘ proxies: "),
            "unexpected failure {l:?} in:\n{text}"
        );
    }
    assert!(
        line(&health, "✘ proxies: ").contains("could not be read through the API server"),
        "{text}"
    );
    assert_eq!(code, 1, "{text}");
}

const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {weft.dev/inject: enabled}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: weft-test-app:latest
        args: [http, --listen, "0.0.0.0:8080", --service, web, --pod, $(POD_NAME)]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

/// The whole install running: the kubelet stand-in runs the control
/// plane's pods from the install's Deployment and an injected app pod, so
/// every check passes, the dry-run injection and each proxy's config
/// (read from each replica through the API server's pod proxy) included.
#[test]
fn weftctl_check_passes_on_a_running_mesh() {
    require_root();
    let node = Arc::new(Node::new("kube_check_running"));
    let cluster = Cluster::start(&node);
    let kubelet = cluster.stand_in_running(node.clone());
    let out = std::process::Command::new(bins::weftctl())
        .arg("install")
        .output()
        .expect("running weftctl install");
    assert!(out.status.success(), "{out:?}");
    let out = cluster.kubectl_with(
        &cluster.kubeconfig(),
        &["apply", "--server-side", "-f", "-"],
        Some(&String::from_utf8_lossy(&out.stdout)),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wait = Duration::from_secs(90);
    kubelet.wait_pods(
        "weft-system",
        "app.kubernetes.io/name=weft-control",
        2,
        wait,
    );
    weft_e2e::eventually("the webhook's caBundle is set", wait, || {
        let out = cluster.kubectl_ok(&[
            "get",
            "mutatingwebhookconfiguration",
            "weft-injector",
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ]);
        !out.trim().is_empty()
    });
    cluster.apply(APP);
    let web = kubelet.wait_pods("shop", "app=web", 1, wait).remove(0).0;

    let deadline = Instant::now() + wait;
    let (code, health) = loop {
        let (code, health) = lines(&check(&cluster, &cluster.kubeconfig(), &[]));
        if code == 0 || Instant::now() > deadline {
            break (code, health);
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let text = health.join("\n");
    eprintln!("weftctl check on a running mesh:\n{text}");
    assert_eq!(code, 0, "{text}");
    assert!(health.iter().all(|l| l.starts_with('✔')), "{text}");
    assert!(
        line(&health, "✔ injection: ").ends_with("came back with the weft-proxy sidecar"),
        "{text}"
    );
    let proxies = line(&health, "✔ proxies: ");
    assert!(
        proxies.starts_with("✔ proxies: 1 proxy(ies) run the current config"),
        "{text}"
    );
    assert!(proxies.contains("asked weft-control-"), "{text}");
    assert_eq!(
        line(&health, "✔ control plane errors: "),
        "✔ control plane errors: none"
    );

    // A sidecar that stops answering falls behind the next version (a new
    // Service is one): the check names it, then passes once it catches up.
    let sidecar = kubelet
        .process("shop", &web, "weft-proxy")
        .expect("the app's sidecar runs");
    sidecar.signal(nix::sys::signal::Signal::SIGSTOP);
    cluster.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web-2, namespace: shop}\n\
         spec:\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n",
    );
    let stale = format!("✘ proxy shop/{web}: stale: behind on weft-control-");
    let deadline = Instant::now() + wait;
    let (code, health) = loop {
        let (code, health) = lines(&check(&cluster, &cluster.kubeconfig(), &[]));
        if health.iter().any(|l| l.starts_with(&stale)) || Instant::now() > deadline {
            break (code, health);
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    sidecar.signal(nix::sys::signal::Signal::SIGCONT);
    let text = health.join("\n");
    eprintln!("weftctl check with a stopped sidecar:\n{text}");
    assert_eq!(code, 1, "{text}");
    let l = line(&health, &stale);
    assert!(
        l.contains("acknowledged version ") && l.contains(" — a push is on its way"),
        "{l}"
    );
    assert!(!text.contains("✔ proxies: "), "{text}");
    weft_e2e::eventually("the sidecar catches up", wait, || {
        check(&cluster, &cluster.kubeconfig(), &[]).status.code() == Some(0)
    });
}

//! `weftctl install` is what `k8s/` says, and the real API server takes it.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use serde::Deserialize;
use weft_e2e::kube::{Cluster, tools};
use weft_e2e::{Node, bins, require_root};

/// Numbers as floats: `4294967295.0` and `4294967295` are one value in YAML.
fn normalize(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) => n.as_f64().map(Value::from).unwrap_or(Value::Number(n)),
        Value::Array(a) => Value::Array(a.into_iter().map(normalize).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, normalize(v))).collect()),
        other => other,
    }
}

/// Objects by `apiVersion kind namespace/name`.
fn objects(yaml: &str) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for doc in serde_norway::Deserializer::from_str(yaml) {
        let v = normalize(serde_json::Value::deserialize(doc).expect("YAML"));
        if v.is_null() {
            continue;
        }
        let key = format!(
            "{} {} {}/{}",
            v["apiVersion"].as_str().unwrap_or_default(),
            v["kind"].as_str().unwrap_or_default(),
            v["metadata"]["namespace"].as_str().unwrap_or_default(),
            v["metadata"]["name"].as_str().unwrap_or_default()
        );
        assert!(out.insert(key.clone(), v).is_none(), "{key} twice");
    }
    out
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running a command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn repo(rel: &str) -> String {
    weft_e2e::kube::weft::repo_path(rel)
}

#[test]
fn weftctl_install_matches_the_kustomize_tree() {
    for (flags, dir) in [
        (vec![], "k8s/base"),
        (vec!["--addons", "jaeger"], "k8s/addons/jaeger"),
    ] {
        let installed = objects(&run(Command::new(bins::weftctl())
            .arg("install")
            .args(&flags)));
        let kustomized = objects(&run(
            Command::new(tools::bin("kubectl")).args(["kustomize", &repo(dir)])
        ));
        let (a, b): (Vec<_>, Vec<_>) = (installed.keys().collect(), kustomized.keys().collect());
        assert_eq!(
            a, b,
            "weftctl install {flags:?} and kubectl kustomize {dir} list other objects"
        );
        for (key, obj) in &installed {
            assert_eq!(
                obj, &kustomized[key],
                "{key} differs between weftctl install {flags:?} and {dir}"
            );
        }
    }
}

#[test]
fn the_api_server_takes_everything_weftctl_install_prints() {
    require_root();
    let node = Arc::new(Node::new("kube_install"));
    let cluster = Cluster::start(&node);
    let _kubelet = cluster.stand_in(node.clone());
    let yaml = run(Command::new(bins::weftctl()).args(["install", "--addons", "jaeger"]));
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
    for key in objects(&yaml).keys() {
        let parts: Vec<&str> = key.split(' ').collect();
        let (kind, nsname) = (parts[1], parts[2]);
        let (ns, name) = nsname.split_once('/').expect("ns/name");
        let mut args = vec!["get", kind, name];
        if !ns.is_empty() {
            args.extend(["-n", ns]);
        }
        cluster.kubectl_ok(&args);
    }
    // The real controllers act on it: the control plane's Deployment makes
    // its two pods.
    weft_e2e::eventually(
        "two weft-control pods",
        std::time::Duration::from_secs(30),
        || {
            let pods = cluster.kubectl_ok(&[
                "get",
                "pods",
                "-n",
                "weft-system",
                "-l",
                "app.kubernetes.io/name=weft-control",
                "-o",
                "name",
            ]);
            pods.lines().count() == 2
        },
    );
}

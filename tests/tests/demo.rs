//! `weftctl demo` end to end: the mesh comes up with a state file that
//! describes it, carries traffic over mTLS while a backend fails, reports it
//! as JSON, and leaves nothing behind, whether `--duration` or Ctrl-C ends it.

use std::path::Path;
use std::process::Command;

use weft_e2e::bins;
use weft_e2e::otlp::Collector;

use weft_e2e::demo::{namespaces, start as demo, wait_state};

/// Nothing the demo made is left: namespaces, files, processes.
fn assert_clean(dir: &Path) {
    assert_eq!(namespaces(), Vec::<String>::new(), "namespaces left behind");
    assert!(
        !dir.join("state/state.json").exists(),
        "state file left behind"
    );
    assert!(!dir.join("mesh").exists(), "work directory left behind");
    let mesh = dir.join("mesh").to_string_lossy().into_owned();
    let left = Command::new("pgrep")
        .args(["-f", &mesh])
        .output()
        .expect("pgrep");
    assert!(
        left.stdout.is_empty(),
        "processes left behind: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

#[test]
fn the_demo_runs_survives_faults_and_cleans_up() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path();
    let state_file = dir.join("state/state.json");

    // Leftovers of a killed run are removed by the next one.
    let _ = Command::new("ip")
        .args(["netns", "add", "wdemo-stale"])
        .status();

    // 1. Until Ctrl-C: the state file describes the live mesh, which answers.
    let mut child = demo(dir, &["--scenario", "basic", "--json"]);
    let state = wait_state(&mut child, &state_file);
    assert!(!namespaces().contains(&"wdemo-stale".to_string()));
    let pods = state["pods"].as_array().expect("pods");
    assert_eq!(pods.len(), 8, "{state:#}");
    for p in pods {
        let sa = p["service"].as_str().expect("service");
        assert_eq!(
            p["identity"],
            format!("spiffe://cluster.local/ns/demo/sa/{sa}"),
            "{p}"
        );
    }
    let names: Vec<&str> = state["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    for want in ["frontend", "backend", "backend-v1", "backend-v2", "db"] {
        assert!(names.contains(&want), "{names:?}");
    }
    assert!(
        Path::new(state["manifests"].as_str().expect("manifests"))
            .join("route-backend.yaml")
            .exists()
    );
    // A tool pokes at a sidecar through the namespaces the state file names.
    let bridge = state["bridge"]["netns"].as_str().expect("bridge netns");
    let admin = pods[1]["admin"].as_str().expect("admin");
    let ready = Command::new("ip")
        .args(["netns", "exec", bridge])
        .arg(bins::test_app())
        .args(["get", &format!("http://{admin}/ready")])
        .output()
        .expect("GET /ready");
    assert!(ready.status.success(), "{ready:?}");
    // From this machine: the control plane's admin server through its relay
    // on 127.0.0.1, as `weftctl status` reads it.
    let control = state["control_plane"]["admin_on_host"]
        .as_str()
        .expect("the control plane's admin on this machine");
    let status = Command::new(bins::weftctl())
        .args([
            "--control-plane",
            &format!("http://{control}"),
            "status",
            "--json",
        ])
        .output()
        .expect("weftctl status");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)
        .unwrap_or_else(|e| panic!("weftctl status --json through the relay: {e}: {status:?}"));
    assert_eq!(
        status["proxies"].as_array().map(Vec::len),
        Some(8),
        "{status:#}"
    );
    assert!(
        state["dashboard"]
            .as_str()
            .is_some_and(|d| d.starts_with("http://127.0.0.1:")),
        "{state:#}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let out = child.wait_with_output().expect("the demo's output");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON summary after Ctrl-C ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(summary["ended_by"], "signal", "{summary:#}");
    assert_clean(dir);

    // 2. Faults for a fixed time: the frontend stays healthy over mTLS, and
    // every sidecar's spans reach a collector on the host.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let otlp = format!("127.0.0.1:{port}");
    let collector = Collector::start_on_host(otlp.parse().expect("address"));
    let child = demo(
        dir,
        &[
            "--scenario",
            "faults",
            "--duration",
            "24s",
            "--json",
            "--otlp-endpoint",
            &otlp,
        ],
    );
    let out = child.wait_with_output().expect("the demo's output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON summary ({e}): {stderr}"));
    assert!(out.status.success(), "{summary:#}\n{stderr}");
    assert_eq!(summary["ended_by"], "duration");
    let client = &summary["client"];
    assert!(
        client["requests"].as_u64().expect("requests") > 500,
        "{summary:#}"
    );
    assert!(
        client["success_rate"].as_f64().expect("success rate") >= 0.99,
        "{summary:#}"
    );
    let row = |service: &str, route: &str| {
        summary["services"]
            .as_array()
            .expect("services")
            .iter()
            .find(|r| r["service"] == service && r["route"] == route)
            .unwrap_or_else(|| panic!("no row {service} {route}: {summary:#}"))
            .clone()
    };
    let backend = row("backend.demo:80", "demo/backend");
    assert_eq!(backend["mtls_share"], 1.0, "{backend}");
    // backend-v1-1 fails 30%: the sidecars retried.
    assert!(
        backend["retries"].as_f64().expect("retries") > 0.0,
        "{backend}"
    );
    // The frontend keeps its db connections (a pool): a few, not one per request.
    let db = row("db.demo:6379", "(tcp)");
    assert!(db["requests"].as_f64().expect("connections") >= 1.0, "{db}");
    assert_eq!(db["mtls_share"], 1.0, "{db}");
    assert!(
        summary["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["what"] == "killed the application of backend-v1-2"),
        "{summary:#}"
    );
    assert_eq!(summary["proxies_up"], 8);
    assert_clean(dir);

    // Traces: one request's spans from the client's sidecar to a backend's.
    let spans = collector.spans();
    let of = |sa: &str| -> std::collections::HashSet<Vec<u8>> {
        let id = format!("spiffe://cluster.local/ns/demo/sa/{sa}");
        spans
            .iter()
            .filter(|s| s.service == id)
            .map(|s| s.span.trace_id.clone())
            .collect()
    };
    let (client, backend) = (of("loadgen"), of("backend"));
    assert!(
        client.intersection(&backend).next().is_some(),
        "no trace spans loadgen and backend ({} spans in all)",
        spans.len()
    );
    assert!(
        spans.iter().any(|s| s.span.name.contains("Certify")),
        "no control-plane span"
    );
}

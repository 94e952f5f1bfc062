//! A benchmark of one real sidecar, not a test: ignored by `scripts/test`,
//! run by `bench/run --sidecar` with release binaries (`WEFT_PROXY_BIN`,
//! `WEFT_CONTROL_BIN`, `WEFT_TEST_APP_BIN`).
//!
//! The control plane's manifests describe a mesh of `WEFT_BENCH_MESH_PODS`
//! meshed pods (default 100) behind one Service per ten: pods that exist only
//! as manifests, the way a large cluster's other pods exist for this one.
//! Five more Services, and 200 "first use" ones, select one real HTTP pod.
//! A real client pod, with its real sidecar, calls the five Services, then
//! each first-use Service once on a new connection and once more; the
//! sidecar's memory (settled: the lowest of 20 s of idle samples; and its
//! high-water mark) and the latencies are printed as one JSON line (and
//! written to `WEFT_BENCH_OUT` when set).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft_e2e::client;
use weft_e2e::{ControlPlane, Node, bins, eventually, pod_yaml, service_yaml};

const USED: usize = 5;
const FIRST_USE: usize = 200;
const CALLS: usize = 200;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// VmRSS and VmHWM of a process, KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentiles(mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    serde_json::json!({
        "n": ms.len(),
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "max_ms": at(1.0),
    })
}

/// Manifests for `pods` pods that only exist as manifests, ten per Service.
fn fake_mesh(pods: usize) -> String {
    let mut y = String::with_capacity(pods * 400);
    for i in 0..pods {
        let _ = write!(
            y,
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: fake-{i}\n  namespace: default\n  \
             labels: {{app: fake-{svc}}}\n  annotations: {{weft.dev/inject: enabled}}\n\
             spec:\n  serviceAccountName: fake-{svc}\n  containers:\n  - name: app\n    image: app:1\n\
             status:\n  podIP: 10.{a}.{b}.{c}\n---\n",
            svc = i / 10,
            a = 60 + i / 65536,
            b = (i / 256) % 256,
            c = i % 256,
        );
    }
    for k in 0..pods.div_ceil(10) {
        let vip = format!("10.97.{}.{}", k / 256, k % 256);
        y.push_str(&service_yaml(
            &format!("fake-{k}"),
            &vip,
            &format!("fake-{k}"),
            &[(80, 8080, "http")],
        ));
        y.push_str("---\n");
    }
    y
}

#[test]
#[ignore = "a benchmark: bench/run --sidecar runs it with release binaries"]
fn sidecar_memory_and_first_use_latency() {
    let mesh_pods = env_usize("WEFT_BENCH_MESH_PODS", 100);
    let node = Node::new("bench_sidecar");
    let cp = ControlPlane::start(&node, "1h");
    cp.write_manifest("fake.yaml", &fake_mesh(mesh_pods));
    let mut services = String::new();
    let vip = |i: usize| format!("198.19.{}.{}", 10 + i / 250, 1 + i % 250);
    for i in 0..USED + FIRST_USE {
        services.push_str(&service_yaml(
            &format!("s-{i}"),
            &vip(i),
            "server",
            &[(80, 8080, "http")],
        ));
        services.push_str("---\n");
    }
    cp.write_manifest("services.yaml", &services);
    let server = node.pod("server");
    server.spawn(
        "http",
        bins::test_app(),
        &[
            "http",
            "--listen",
            "0.0.0.0:8080",
            "--service",
            "server",
            "--pod",
            "server",
        ],
    );
    server.wait_listening(8080);
    cp.write_manifest(
        "pod-server.yaml",
        &pod_yaml(&server, "server", &[("app", "server")], true),
    );
    server.mesh_with(&cp, "server", &[]);
    let client_pod = node.pod("client");
    cp.write_manifest(
        "pod-client.yaml",
        &pod_yaml(&client_pod, "client", &[("app", "client")], true),
    );
    client_pod.mesh_with(&cp, "client", &[]);
    let names = mesh_pods.div_ceil(10) + USED + FIRST_USE;
    eventually("the names table arrives", Duration::from_secs(60), || {
        client_pod.config()["names"].as_array().map(Vec::len) == Some(names)
    });
    let dst = |i: usize| SocketAddr::new(vip(i).parse().expect("ip"), 80);
    std::thread::sleep(Duration::from_secs(2));
    let (rss_start, _) = memory(client_pod.proxy_pid());

    // The app's steady traffic: five Services.
    let failures = client_pod.ns.block_on(async move {
        let mut failed = 0;
        for _ in 0..CALLS {
            for i in 0..USED {
                match client::get(dst(i), "/").await {
                    Ok(r) if r.status == 200 => {}
                    _ => failed += 1,
                }
            }
        }
        failed
    });
    assert_eq!(failures, 0, "calls failed");
    // Idle: jemalloc returns freed pages over its decay time (10 s), and the
    // start's peak (the names table decoded, this harness reading /config)
    // is transient. The settled figure is the lowest of 20 s of samples.
    let mut samples = Vec::new();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_secs(1));
        samples.push(memory(client_pod.proxy_pid()).0);
    }
    let rss = samples.iter().copied().min().unwrap_or(0);
    let (_, hwm) = memory(client_pod.proxy_pid());

    // First use of a Service the sidecar does not hold, then once more.
    let (first, later) = client_pod.ns.block_on(async move {
        let (mut first, mut later) = (Vec::new(), Vec::new());
        for i in USED..USED + FIRST_USE {
            for times in [&mut first, &mut later] {
                let started = Instant::now();
                let r = client::get(dst(i), "/").await.expect("a first-use call");
                assert_eq!(r.status, 200);
                times.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        (first, later)
    });
    let waited = client_pod.metric("discovery_subscription_wait_seconds_count");
    let wait_sum = client_pod.metric("discovery_subscription_wait_seconds_sum");
    let (rss_after, hwm_after) = memory(client_pod.proxy_pid());
    let (cp_rss, cp_hwm) = memory(cp.pid());
    let out = serde_json::json!({
        "mesh_pods": mesh_pods,
        "services": names,
        "used": USED,
        "calls_per_service": CALLS,
        "proxy_rss_kib_at_start": rss_start,
        "proxy_rss_kib": rss,
        "proxy_rss_kib_samples": samples,
        "proxy_hwm_kib": hwm,
        "proxy_rss_kib_after_first_use": rss_after,
        "proxy_hwm_kib_after_first_use": hwm_after,
        "control_rss_kib": cp_rss,
        "control_hwm_kib": cp_hwm,
        "first_request": percentiles(first),
        "later_request": percentiles(later),
        "subscriptions_waited": waited,
        "subscription_wait_mean_ms": if waited > 0.0 { wait_sum / waited * 1000.0 } else { 0.0 },
    });
    println!("BENCH {out}");
    if let Ok(path) = std::env::var("WEFT_BENCH_OUT") {
        std::fs::write(path, out.to_string() + "\n").expect("writing the results");
    }
}

//! The demo seen from outside: a real Prometheus scraping its sidecars
//! through the scrape configuration the demo writes (PromQL agrees with
//! what the demo's client saw, and every query of the Grafana dashboard in
//! k8s/addons evaluates), and `weftctl dashboard` reading that Prometheus.
//! One demo runs at a time on a machine: the tests take turns.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use weft_e2e::demo;
use weft_e2e::prometheus::Prometheus;

static ONE_DEMO: Mutex<()> = Mutex::new(());

fn one_demo() -> std::sync::MutexGuard<'static, ()> {
    ONE_DEMO.lock().unwrap_or_else(|p| p.into_inner())
}

fn model(addr: SocketAddr) -> Option<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let reply = rt
        .block_on(weft_e2e::client::get(addr, "/api/model"))
        .ok()?;
    (reply.status == 200).then(|| reply.json())
}

/// The success rate of the edge from the frontend to `dst`.
fn edge_success(m: &serde_json::Value, dst: &str) -> Option<f64> {
    m["edges"]
        .as_array()?
        .iter()
        .find(|e| e["src"] == "demo/frontend" && e["dst"] == dst)
        .and_then(|e| e["success"].as_f64())
}

/// Every `expr` in a Grafana dashboard, with its variables set to match
/// everything.
fn grafana_exprs(json: &serde_json::Value, out: &mut Vec<String>) {
    match json {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) if !e.is_empty() => out.push(
                        e.replace("$__rate_interval", "1m")
                            .replace("$namespace", ".*")
                            .replace("$service", ".*"),
                    ),
                    _ => grafana_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| grafana_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn prometheus_scrapes_the_demo_and_agrees_with_its_client() {
    let _turn = one_demo();
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path();
    let run = 60;
    let mut child = demo::start(
        dir,
        &[
            "--scenario",
            "faults",
            "--duration",
            &format!("{run}s"),
            "--json",
            "--no-dashboard",
        ],
    );
    let state = demo::wait_state(&mut child, &dir.join("state/state.json"));
    let started = Instant::now();
    let config = state["prometheus_config"]
        .as_str()
        .expect("the state names the scrape configuration");
    let prom = Prometheus::start(Path::new(config));
    // 8 sidecars and the control plane.
    prom.wait_targets_up(9, Duration::from_secs(60));

    // The dashboard, reading that Prometheus (and the control plane through
    // its relay, for the proxies' status).
    let control = format!(
        "http://{}",
        state["control_plane"]["admin_on_host"]
            .as_str()
            .expect("the control plane on this machine")
    );
    let (dash, addr) = weft_e2e::dashboard::spawn(
        &control,
        &[
            "--prometheus",
            &prom.url(),
            "--interval",
            "1s",
            "--window",
            "20s",
        ],
        &dir.join("dashboard.log"),
    );

    // Let the run go on: most of it is then in Prometheus.
    let settle = Duration::from_secs(run - 15);
    std::thread::sleep(settle.saturating_sub(started.elapsed()));

    let client_rate = prom
        .scalar(r#"sum(rate(request_total{namespace="demo",pod="loadgen-0",direction="outbound"}[30s]))"#)
        .expect("the client's requests");
    let by_route = prom.query(
        r#"sum by (route) (rate(request_total{direction="outbound",service="backend.demo:80"}[30s]))"#,
    );
    let success = prom
        .scalar(
            r#"sum(rate(response_total{pod="loadgen-0",direction="outbound",classification="success"}[5m]))
             / sum(rate(response_total{pod="loadgen-0",direction="outbound"}[5m]))"#,
        )
        .expect("the client's success rate");
    let p99 = prom
        .scalar(
            r#"histogram_quantile(0.99, sum by (le) (rate(response_latency_ms_bucket{pod="loadgen-0",direction="outbound"}[5m])))"#,
        )
        .expect("the client's p99");
    let p50 = prom
        .scalar(
            r#"histogram_quantile(0.5, sum by (le) (rate(response_latency_ms_bucket{pod="loadgen-0",direction="outbound"}[5m])))"#,
        )
        .expect("the client's p50");
    // The backend that fails 30% of its requests, as its own sidecar saw it.
    let failing = prom
        .scalar(
            r#"sum(rate(response_total{pod="backend-v1-1",direction="inbound",classification="failure"}[5m]))
             / sum(rate(response_total{pod="backend-v1-1",direction="inbound"}[5m]))"#,
        )
        .expect("backend-v1-1's answers");
    let retried = prom
        .scalar(r#"sum(increase(http_retries_total{service="backend.demo:80",route="demo/backend",allowed="true"}[5m]))"#)
        .unwrap_or(0.0);

    // Every query of the Grafana dashboard evaluates; those of the golden
    // metrics have data.
    let grafana: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/addons/grafana/weft-dashboard.json"),
        )
        .expect("k8s/addons/grafana/weft-dashboard.json"),
    )
    .expect("the Grafana dashboard is JSON");
    let mut exprs = Vec::new();
    grafana_exprs(&grafana, &mut exprs);
    assert!(exprs.len() > 20, "{exprs:?}");
    for e in &exprs {
        let r = prom
            .try_query(e)
            .unwrap_or_else(|err| panic!("the Grafana query {e} fails: {err}"));
        if [
            "request_total",
            "response_total",
            "response_latency_ms_bucket",
        ]
        .iter()
        .any(|m| e.contains(m))
        {
            assert!(!r.is_empty(), "the Grafana query {e} has no data");
        }
    }

    // The dashboard, from Prometheus: the failing backend's edge is the
    // less successful one.
    let deadline = Instant::now() + Duration::from_secs(20);
    let m = loop {
        if let Some(m) = model(addr)
            && edge_success(&m, "demo/backend-v1").is_some()
            && edge_success(&m, "demo/backend-v2").is_some()
        {
            break m;
        }
        assert!(Instant::now() < deadline, "{}", dash.log());
        std::thread::sleep(Duration::from_millis(500));
    };
    let (v1, v2) = (
        edge_success(&m, "demo/backend-v1").unwrap_or(1.0),
        edge_success(&m, "demo/backend-v2").unwrap_or(0.0),
    );
    assert!(
        v1 < v2,
        "frontend→backend-v1 {v1} vs frontend→backend-v2 {v2}: {m:#}"
    );
    assert!(
        m["source"]
            .as_str()
            .is_some_and(|s| s.contains(&prom.url())),
        "{}",
        m["source"]
    );

    let summary = demo::finish(child);
    let client = &summary["client"];
    let seconds = summary["seconds"].as_f64().expect("seconds");
    let requests = client["requests"].as_f64().expect("requests");
    let seen_rate = requests / seconds;
    eprintln!(
        "client: {seen_rate:.1} rps, success {}, p50 {} ms, p99 {} ms; \
         Prometheus: {client_rate:.1} rps, success {success:.4}, p50 {p50:.2} ms, p99 {p99:.2} ms; \
         routes {by_route:?}; backend-v1-1 failing {failing:.3}; retries {retried}",
        client["success_rate"], client["p50_ms"], client["p99_ms"]
    );
    // Request rate: what the client sent.
    assert!(
        (client_rate / seen_rate - 1.0).abs() < 0.15,
        "Prometheus {client_rate} rps vs the client's {seen_rate}"
    );
    // Per route: every frontend request calls the backend once, by its route.
    let route = by_route
        .iter()
        .find(|s| s.0.get("route").and_then(|r| r.as_str()) == Some("demo/backend"))
        .map(|s| s.1)
        .unwrap_or_else(|| panic!("no demo/backend route: {by_route:?}"));
    assert!(
        (route / seen_rate - 1.0).abs() < 0.15,
        "route demo/backend at {route} rps vs the client's {seen_rate}"
    );
    // Success: the client's sidecar counted what the client got.
    let client_success = client["success_rate"].as_f64().expect("success rate");
    assert!(
        (success - client_success).abs() < 0.02,
        "Prometheus {success} vs the client's {client_success}"
    );
    // Latency: within the histogram's resolution of the client's own clock.
    let client_p99 = client["p99_ms"].as_f64().expect("p99");
    assert!(
        p99 > client_p99 / 3.0 && p99 < client_p99 * 3.0 + 5.0,
        "p99: Prometheus {p99} ms vs the client's {client_p99} ms"
    );
    // What the client was spared: backend-v1-1 failed about 30%, retried.
    assert!(
        (0.15..0.45).contains(&failing),
        "backend-v1-1 failed {failing}"
    );
    assert!(retried > 0.0, "no retries in Prometheus");
    drop(dash);
}

/// What the page shows of its graph: each edge's data, and when it was drawn.
const READ_GRAPH: &str = "return {
    updated: document.body.dataset.updated || '',
    edges: [...document.querySelectorAll('#graph g.edge')].map(e => ({
        src: e.dataset.src, dst: e.dataset.dst, success: e.dataset.success,
        rps: e.dataset.rps, label: e.querySelector('text').textContent })),
    services: [...document.querySelectorAll('#services tbody tr[data-service]')].map(r => r.textContent),
    proxies: document.querySelectorAll('#proxies tbody tr').length,
    proxy_rows: [...document.querySelectorAll('#proxies tbody tr')].map(r => r.textContent),
}";

/// The success rate the page shows on the edge from the frontend to `dst`.
fn shown_success(page: &serde_json::Value, dst: &str) -> Option<f64> {
    page["edges"]
        .as_array()?
        .iter()
        .find(|e| e["src"] == "demo/frontend" && e["dst"] == dst)?["success"]
        .as_str()?
        .parse()
        .ok()
}

#[test]
fn the_dashboard_shows_the_faults_scenario_in_a_browser() {
    let _turn = one_demo();
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path();
    let mut child = demo::start(
        dir,
        &["--scenario", "faults", "--duration", "60s", "--json"],
    );
    let state = demo::wait_state(&mut child, &dir.join("state/state.json"));
    let started = Instant::now();
    let url = state["dashboard"]
        .as_str()
        .expect("the demo serves a dashboard")
        .to_string();
    let browser = weft_e2e::Browser::start();
    let (first, second, failing) = browser.block_on(async {
        browser.goto(&url).await.expect("opening the dashboard");
        browser
            .wait_for("#graph g.node", Duration::from_secs(30))
            .await
            .expect("the graph");
        // Until both backends' edges carry a success rate.
        let deadline = Instant::now() + Duration::from_secs(60);
        let first = loop {
            let page = browser.eval(READ_GRAPH).await.expect("reading the page");
            if shown_success(&page, "demo/backend-v1").is_some()
                && shown_success(&page, "demo/backend-v2").is_some()
            {
                break page;
            }
            assert!(Instant::now() < deadline, "no backend edges: {page:#}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        tokio::time::sleep(Duration::from_secs(4)).await;
        let second = browser.eval(READ_GRAPH).await.expect("reading the page");
        // backend-v1-1 fails 30% of its requests: its workload's edge shows
        // it, within the run (outlier detection ejects backend-v1-1 for a
        // while now and then, and a read covers the last 30 s).
        let deadline = started + Duration::from_secs(55);
        let failing = loop {
            let page = browser.eval(READ_GRAPH).await.expect("reading the page");
            if let (Some(v1), Some(v2)) = (
                shown_success(&page, "demo/backend-v1"),
                shown_success(&page, "demo/backend-v2"),
            ) && v1 < v2
                && v1 < 0.995
            {
                break page;
            }
            assert!(
                Instant::now() < deadline,
                "backend-v1's failures never showed: {page:#}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        // The picture after the scenario killed backend-v1-2 (at 30 s), with
        // the sparklines filled in: the screenshot.
        let shot_at = Duration::from_secs(40);
        tokio::time::sleep(shot_at.saturating_sub(started.elapsed())).await;
        let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
        browser.screenshot(&shot).await.expect("a screenshot");
        let png = std::fs::read(&shot).expect("the screenshot");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 20_000,
            "{}",
            shot.display()
        );
        eprintln!("screenshot: {}", shot.display());
        // `WEFT_UPDATE_SCREENSHOT=1` refreshes the README's.
        if std::env::var_os("WEFT_UPDATE_SCREENSHOT").is_some() {
            let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard.png");
            std::fs::write(&docs, &png).expect("writing docs/dashboard.png");
        }
        (first, second, failing)
    });
    eprintln!(
        "the failing backend's edge: backend-v1 {:?} vs backend-v2 {:?}",
        shown_success(&failing, "demo/backend-v1"),
        shown_success(&failing, "demo/backend-v2")
    );
    // The page updated by itself, and its numbers moved.
    assert_ne!(
        first["updated"], second["updated"],
        "the page did not update"
    );
    assert_ne!(
        first["edges"], second["edges"],
        "no number changed between two reads"
    );
    // The tables: the backend's route, and all eight proxies.
    assert!(
        second["services"]
            .as_array()
            .is_some_and(|rows| rows.iter().any(|r| r
                .as_str()
                .is_some_and(|t| t.contains("backend.demo:80") && t.contains("demo/backend")))),
        "{second:#}"
    );
    assert_eq!(second["proxies"], 8, "{second:#}");
    drop(browser);
    let summary = demo::finish(child);
    assert_eq!(summary["ended_by"], "duration", "{summary:#}");
}

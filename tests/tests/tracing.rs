//! Distributed tracing through the mesh: spans from every sidecar reach a
//! real OTLP receiver as one connected trace.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_e2e::otlp::Collector;
use weft_e2e::{ControlPlane, Node, Pod, bins, client, eventually, pod_yaml, service_yaml};

const B_VIP: &str = "198.19.0.60";
const C_VIP: &str = "198.19.0.61";

fn app(node: &Node, cp: &ControlPlane, name: &str, otlp: &str) -> Arc<Pod> {
    let pod = node.pod(name);
    pod.spawn(
        "http",
        bins::test_app(),
        &["http", "--listen", "0.0.0.0:8080", "--pod", name],
    );
    pod.wait_listening(8080);
    cp.write_manifest(
        &format!("pod-{name}.yaml"),
        &pod_yaml(&pod, name, &[("app", name)], true),
    );
    pod.mesh_with(cp, name, &["--otlp-endpoint", otlp]);
    pod
}

#[test]
fn one_trace_follows_a_request_across_services() {
    let node = Node::new("trace_chain");
    let collector_pod = node.pod("collector");
    let collector_addr = collector_pod.addr(4317);
    let collector = Collector::start(&collector_pod.ns, collector_addr);
    let otlp = format!("http://{collector_addr}");
    let cp = ControlPlane::start_with(&node, "1h", &["--otlp-endpoint", &otlp]);
    cp.write_manifest(
        "svc-b.yaml",
        &service_yaml("b", B_VIP, "b", &[(80, 8080, "")]),
    );
    cp.write_manifest(
        "svc-c.yaml",
        &service_yaml("c", C_VIP, "c", &[(80, 8080, "")]),
    );
    // B's calls to C follow a route with a named rule (before any pod, so
    // the first snapshots carry it).
    cp.write_manifest(
        "route-c.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: c, namespace: default}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: c, port: 80}]\n  rules:\n  - name: to-c\n    backendRefs: [{name: c, port: 80}]\n",
    );
    let a = node.pod("a");
    cp.write_manifest("pod-a.yaml", &pod_yaml(&a, "a", &[("app", "a")], true));
    a.mesh_with(&cp, "a", &["--otlp-endpoint", &otlp]);
    let b = app(&node, &cp, "b", &otlp);
    app(&node, &cp, "c", &otlp);
    a.wait_endpoints("b.default:80", 1);
    b.wait_endpoints("c.default:80", 1);

    let path = format!("/forward/{C_VIP}:80/headers");
    let vip_b = SocketAddr::new(B_VIP.parse().expect("ip"), 80);
    let res = a.ns.block_on(client::get(vip_b, &path)).expect("request");
    assert_eq!(res.status, 200, "{}", res.text());
    // App C saw a traceparent: the trace reached it.
    let traceparent = res.json()["headers"]["traceparent"]
        .as_str()
        .map(str::to_string)
        .expect("traceparent at C");
    let trace_hex = traceparent.split('-').nth(1).expect("trace id").to_string();

    // Spans arrive in batches: wait for all four hops.
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans: Vec<_> = collector
            .spans()
            .into_iter()
            .filter(|s| hex(&s.span.trace_id) == trace_hex)
            .collect();
        if spans.len() >= 4 || Instant::now() > deadline {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let find = |service: &str, kind: i32| {
        spans
            .iter()
            .find(|s| s.service.ends_with(&format!("/sa/{service}")) && s.span.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} span from {service}: {spans:#?}"))
            .span
            .clone()
    };
    // Kinds: 2 = server, 3 = client.
    let a_out = find("a", 3);
    let b_in = find("b", 2);
    let b_out = find("b", 3);
    let c_in = find("c", 2);
    assert!(
        a_out.parent_span_id.is_empty(),
        "the first hop starts the trace"
    );
    assert_eq!(b_in.parent_span_id, a_out.span_id);
    assert_eq!(
        b_out.parent_span_id, b_in.span_id,
        "B's app passed the trace on"
    );
    assert_eq!(c_in.parent_span_id, b_out.span_id);
    assert_eq!(
        hex(&c_in.span_id),
        traceparent.split('-').nth(2).expect("span id"),
        "C's app is a child of C's inbound span"
    );
    let attr = |s: &opentelemetry_proto::tonic::trace::v1::Span, key: &str| {
        s.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.clone())
            .map(|v| format!("{:?}", v.value))
    };
    assert!(
        attr(&a_out, "http.response.status_code").is_some_and(|v| v.contains("200")),
        "{a_out:?}"
    );
    assert!(
        attr(&a_out, "weft.peer_identity").is_some_and(|v| v.contains("/sa/b")),
        "{a_out:?}"
    );
    assert!(
        attr(&c_in, "weft.peer_identity").is_some_and(|v| v.contains("/sa/b")),
        "{c_in:?}"
    );
    // The route and its named rule are on the span of the routed hop.
    assert!(
        attr(&b_out, "http.route").is_some_and(|v| v.contains("default/c")),
        "{b_out:?}"
    );
    assert!(
        attr(&b_out, "weft.route.rule").is_some_and(|v| v.contains("to-c")),
        "{b_out:?}"
    );
    assert!(a_out.name.contains("GET"), "{}", a_out.name);

    // The control plane traced its own work: a Certify per proxy, pushes.
    let cp_spans: Vec<_> = collector
        .spans()
        .into_iter()
        .filter(|s| s.service.ends_with("/sa/weft-control"))
        .map(|s| s.span.name)
        .collect();
    assert!(
        cp_spans
            .iter()
            .filter(|n| n.as_str() == "weft.v1.Identity/Certify")
            .count()
            >= 3,
        "{cp_spans:?}"
    );
    assert!(
        cp_spans.iter().any(|n| n == "weft.v1.Discovery/push"),
        "{cp_spans:?}"
    );

    // An incoming sampled-out parent: propagated, but nothing recorded.
    let unsampled_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let res = a.ns.block_on(async {
        let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Full<bytes::Bytes>>();
        let req = http::Request::get(format!("http://{vip_b}{path}"))
            .header(
                "traceparent",
                format!("00-{unsampled_trace}-00f067aa0ba902b7-00"),
            )
            .body(http_body_util::Full::default())
            .expect("request");
        c.request(req).await.map(|r| r.status())
    });
    assert_eq!(res.expect("request").as_u16(), 200);
    std::thread::sleep(Duration::from_secs(7));
    assert!(
        collector
            .spans()
            .iter()
            .all(|s| hex(&s.span.trace_id) != unsampled_trace),
        "a sampled-out trace was recorded"
    );

    let exported = a.metric("trace_spans_exported_total");
    assert!(
        exported >= 1.0,
        "A's sidecar counts {exported} spans exported"
    );

    // The collector gone: requests still succeed, and the lost spans are counted.
    drop(collector);
    for _ in 0..20 {
        let r =
            a.ns.block_on(client::get(vip_b, &path))
                .expect("request without a collector");
        assert_eq!(r.status, 200);
    }
    let failed = r#"trace_spans_dropped_total{reason="export_failed"}"#;
    eventually(
        "A's sidecar counts the spans it could not export",
        Duration::from_secs(20),
        || a.metric(failed) >= 20.0,
    );
    assert_eq!(a.metric("trace_spans_exported_total"), exported);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

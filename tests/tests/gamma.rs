//! Gateway API for mesh (GAMMA), behaviour by behaviour, the way the mesh
//! conformance profile and the spec describe it: HTTPRoute matching and
//! precedence, weights, invalid backends, parentRef ports, filters at rule
//! and backendRef level, redirects, rewrites, mirrors, CORS, timeouts and
//! retries, GRPCRoute, and the scoping of producer and consumer routes
//! between namespaces (GEP-1294).
//!
//! Real sidecars in network namespaces: Services `echo` (both versions),
//! `echo-v1` and `echo-v2` in namespace `gamma`, each version one pod whose
//! app echoes what it received (path, Host, headers) and sets response
//! headers on request (`x-echo-set-header`), with a gRPC server beside it;
//! clients in `gamma` (the producer namespace), `consumer` and `other`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weft_e2e::client::Reply;
use weft_e2e::{ControlPlane, Node, Pod, bins, http_pod_in, namespace_yaml, pod_yaml_in};

const NS: &str = "gamma";
const CONSUMER: &str = "consumer";
const OTHER: &str = "other";

const ECHO: &str = "198.19.0.30";
const ECHO_V1: &str = "198.19.0.31";
const ECHO_V2: &str = "198.19.0.32";

/// A Service in `gamma` selecting `selector`: ports 80 and 8080 (HTTP, to
/// the app's 8080) and 7070 (gRPC, to its 9090).
fn service(name: &str, vip: &str, selector: &[(&str, &str)]) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  clusterIP: {vip}\n  selector:\n"
    );
    for (k, v) in selector {
        y.push_str(&format!("    {k}: {v}\n"));
    }
    y.push_str(
        "  ports:\n  - {name: http, port: 80, targetPort: 8080}\n  - {name: http-alt, port: 8080, targetPort: 8080}\n  - {name: grpc, port: 7070, targetPort: 9090}\n",
    );
    y
}

struct Gamma {
    _node: Node,
    cp: ControlPlane,
    v1: Arc<Pod>,
    v2: Arc<Pod>,
    clients: BTreeMap<&'static str, Arc<Pod>>,
}

/// The Services and their pods, and a meshed client in each of `clients`
/// (namespaces).
fn gamma(test: &str, clients: &[&'static str]) -> Gamma {
    let node = Node::new(test);
    let cp = ControlPlane::start(&node, "1h");
    for ns in [NS, CONSUMER, OTHER] {
        cp.write_manifest(&format!("ns-{ns}.yaml"), &namespace_yaml(ns));
    }
    cp.write_manifest("svc-echo.yaml", &service("echo", ECHO, &[("app", "echo")]));
    cp.write_manifest(
        "svc-echo-v1.yaml",
        &service("echo-v1", ECHO_V1, &[("app", "echo"), ("version", "v1")]),
    );
    cp.write_manifest(
        "svc-echo-v2.yaml",
        &service("echo-v2", ECHO_V2, &[("app", "echo"), ("version", "v2")]),
    );
    let echo = |version: &str| {
        let name = format!("echo-{version}-0");
        let pod = http_pod_in(
            &node,
            &cp,
            NS,
            &name,
            "echo",
            &[("app", "echo"), ("version", version)],
            &["--echo-requests", "--version", version],
            true,
        );
        pod.spawn(
            "grpc",
            bins::test_app(),
            &["grpc", "--listen", "0.0.0.0:9090", "--pod", &name],
        );
        pod.wait_listening(9090);
        pod
    };
    let (v1, v2) = (echo("v1"), echo("v2"));
    let mut out = BTreeMap::new();
    for ns in clients {
        let pod = node.pod(&format!("client-{ns}"));
        cp.write_manifest(
            &format!("pod-client-{ns}.yaml"),
            &pod_yaml_in(ns, &pod, "client", &[("app", "client")], true),
        );
        pod.mesh_with_in(&cp, ns, "client", &[]);
        out.insert(*ns, pod);
    }
    for pod in out.values() {
        pod.wait_endpoints("echo.gamma:80", 2);
        pod.wait_endpoints("echo-v1.gamma:80", 1);
        pod.wait_endpoints("echo-v2.gamma:80", 1);
    }
    Gamma {
        _node: node,
        cp,
        v1,
        v2,
        clients: out,
    }
}

/// One request: method, `http://vip:port/path`, headers.
#[derive(Clone, Debug)]
struct Req {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
}

fn get(vip: &str, port: u16, path: &str) -> Req {
    Req {
        method: Method::GET,
        url: format!("http://{vip}:{port}{path}"),
        headers: Vec::new(),
    }
}

impl Req {
    fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn method(mut self, m: Method) -> Req {
        self.method = m;
        self
    }
}

/// Sends `reqs` in order on one keep-alive client.
async fn send_all(reqs: Vec<Req>) -> Vec<Reply> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut out = Vec::with_capacity(reqs.len());
    for r in reqs {
        let mut b = Request::builder().method(r.method.clone()).uri(&r.url);
        for (k, v) in &r.headers {
            b = b.header(k, v);
        }
        let req = b.body(Full::default()).expect("request");
        let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
            .await
            .unwrap_or_else(|_| panic!("{} {}: timed out", r.method, r.url))
            .unwrap_or_else(|e| panic!("{} {}: {e:?}", r.method, r.url));
        let (parts, body) = res.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        out.push(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        });
    }
    out
}

impl Gamma {
    fn client(&self, ns: &str) -> &Arc<Pod> {
        &self.clients[ns]
    }

    /// Sends one request from the client in `ns`.
    fn call(&self, ns: &str, req: Req) -> Reply {
        self.calls(ns, vec![req]).remove(0)
    }

    fn calls(&self, ns: &str, reqs: Vec<Req>) -> Vec<Reply> {
        self.client(ns).ns.block_on(send_all(reqs))
    }

    /// Sends `req` from `ns` until `ready` holds (a route is applied
    /// asynchronously), failing after 15 s.
    fn until(&self, ns: &str, req: Req, ready: impl Fn(&Reply) -> bool) -> Reply {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = self.call(ns, req.clone());
            if ready(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{} {} from {ns}: still {} {:?} {}",
                req.method,
                req.url,
                r.status,
                r.headers,
                r.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `n` sends of `req` from `ns`: how many each pod served, with
    /// `status N` for answers that were not 200.
    fn spread(&self, ns: &str, req: Req, n: usize) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for r in self.calls(ns, vec![req; n]) {
            let key = if r.status == 200 {
                served_by(&r)
            } else {
                format!("status {}", r.status.as_u16())
            };
            *out.entry(key).or_insert(0) += 1;
        }
        out
    }
}

fn served_by(r: &Reply) -> String {
    r.headers
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string()
}

/// What the echo app saw: (pod, path, Host, headers).
fn seen(r: &Reply) -> (String, String, String, serde_json::Value) {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    (
        v["pod"].as_str().unwrap_or_default().to_string(),
        v["path"].as_str().unwrap_or_default().to_string(),
        v["host"].as_str().unwrap_or_default().to_string(),
        v["headers"].clone(),
    )
}

fn weft_error(r: &Reply) -> String {
    r.headers
        .get("weft-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn share(counts: &BTreeMap<String, usize>, key: &str, n: usize) -> f64 {
    counts.get(key).copied().unwrap_or(0) as f64 / n as f64
}

#[test]
fn http_routes_match_split_and_bind_as_the_spec_says() {
    let g = gamma("gamma_matching", &[NS]);
    g.cp.write_manifest(
        "route-matching.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: matching, namespace: gamma}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /}
    - headers: [{name: version, value: one}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches:
    - path: {type: PathPrefix, value: /v2}
    - headers: [{name: version, value: two}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - matches: [{path: {type: Exact, value: /exact}}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /q}, queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /m}, method: POST}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - matches:
    - path: {type: PathPrefix, value: /hdr}
      headers: [{name: X-Re, type: RegularExpression, value: "v[0-9]+"}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - name: split
    matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs:
    - {name: echo-v1, port: 8080, weight: 70}
    - {name: echo-v2, port: 8080, weight: 30}
    - {name: echo-v3, port: 8080, weight: 0}
  - matches: [{path: {type: PathPrefix, value: /half-missing}}]
    backendRefs: [{name: echo-v1, port: 8080}, {name: missing, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /all-zero}}]
    backendRefs: [{name: echo-v1, port: 8080, weight: 0}]
  - matches: [{path: {type: PathPrefix, value: /no-backends}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: alt-port, namespace: gamma}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 8080}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/re/[0-9]+"}}]
    backendRefs: [{name: echo-v2, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: two-parents, namespace: gamma}
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo-v1, port: 8080}
  - {group: "", kind: Service, name: echo-v2, port: 8080}
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-parents, value: two}]}
    backendRefs: [{name: echo, port: 8080}]
"#,
    );
    // Only the route answers 500 here: it has applied.
    g.until(NS, get(ECHO, 80, "/no-backends"), |r| r.status == 500);

    // Path prefixes by segment, headers, exact paths, query parameters,
    // methods, and the precedence between them.
    let cases: Vec<(Req, &str)> = vec![
        (get(ECHO, 80, "/"), "echo-v1-0"),
        (get(ECHO, 80, "/example"), "echo-v1-0"),
        (get(ECHO, 80, "/").header("version", "one"), "echo-v1-0"),
        (get(ECHO, 80, "/v2"), "echo-v2-0"),
        (get(ECHO, 80, "/v2/example"), "echo-v2-0"),
        (get(ECHO, 80, "/").header("version", "two"), "echo-v2-0"),
        (get(ECHO, 80, "/v2/"), "echo-v2-0"),
        (get(ECHO, 80, "/v2example"), "echo-v1-0"),
        (get(ECHO, 80, "/foo/v2/example"), "echo-v1-0"),
        (get(ECHO, 80, "/exact"), "echo-v2-0"),
        (get(ECHO, 80, "/exact/more"), "echo-v1-0"),
        (get(ECHO, 80, "/q?animal=whale"), "echo-v2-0"),
        (get(ECHO, 80, "/q?color=blue&animal=whale"), "echo-v2-0"),
        (get(ECHO, 80, "/q?animal=dolphin"), "echo-v1-0"),
        (get(ECHO, 80, "/m").method(Method::POST), "echo-v2-0"),
        (get(ECHO, 80, "/m"), "echo-v1-0"),
        // Regexes match the whole value.
        (get(ECHO, 80, "/hdr").header("x-re", "v12"), "echo-v2-0"),
        (get(ECHO, 80, "/hdr").header("x-re", "xv1"), "echo-v1-0"),
        // The route is chosen by the address called, never by Host.
        (get(ECHO, 80, "/").header("host", "echo-v2"), "echo-v1-0"),
    ];
    let reqs: Vec<Req> = cases.iter().map(|(r, _)| r.clone()).collect();
    for ((req, want), got) in cases.iter().zip(g.calls(NS, reqs)) {
        assert_eq!(got.status, 200, "{req:?}: {}", got.text());
        assert_eq!(served_by(&got), *want, "{req:?}");
    }

    // Weights: 70/30; a zero-weight backend (even one that does not exist)
    // never gets a request.
    let n = 400;
    let split = g.spread(NS, get(ECHO, 80, "/split"), n);
    assert_eq!(
        split.keys().cloned().collect::<Vec<_>>(),
        ["echo-v1-0", "echo-v2-0"],
        "{split:?}"
    );
    let v1 = share(&split, "echo-v1-0", n);
    assert!((0.62..=0.78).contains(&v1), "{split:?}");

    // An invalid backend keeps its share: those requests get 500.
    let half = g.spread(NS, get(ECHO, 80, "/half-missing"), 200);
    let failed = half.get("status 500").copied().unwrap_or(0);
    assert!((70..=130).contains(&failed), "{half:?}");
    assert_eq!(failed + half.get("echo-v1-0").copied().unwrap_or(0), 200);
    let r = g.call(NS, get(ECHO, 80, "/half-missing"));
    if r.status == 500 {
        assert!(weft_error(&r).starts_with("invalid-backend"), "{r:?}");
    }
    // The control plane says what is wrong, and the route stays applied.
    let errors = g.cp.admin_json("/errors");
    let found = errors["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| {
            e["object"] == "HTTPRoute gamma/matching"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Service gamma/missing does not exist"))
        })
        .unwrap_or_else(|| panic!("no error for the missing backend: {errors}"));
    assert!(
        found["message"]
            .as_str()
            .is_some_and(|m| m.contains("BackendNotFound")),
        "{found}"
    );
    assert!(
        found["field"]
            .as_str()
            .unwrap_or_default()
            .starts_with("spec.rules["),
        "{found}"
    );
    // Every weight zero, or no backends at all: 500.
    for path in ["/all-zero", "/no-backends"] {
        let r = g.call(NS, get(ECHO, 80, path));
        assert_eq!(r.status, 500, "{path}");
        assert!(weft_error(&r).starts_with("no-backend"), "{path}: {r:?}");
    }

    // parentRef port: the first route binds port 80 only; port 8080 has its
    // own (regex) route, and a request no rule matches there gets 404.
    let r = g.call(NS, get(ECHO, 8080, "/re/12"));
    assert_eq!(served_by(&r), "echo-v2-0");
    assert_eq!(g.call(NS, get(ECHO, 8080, "/re/x")).status, 404);
    assert_eq!(g.call(NS, get(ECHO, 8080, "/v2")).status, 404);
    // One route, two parents: both Services' port 8080 follow it, their
    // port 80 does not.
    for vip in [ECHO_V1, ECHO_V2] {
        let r = g.call(NS, get(vip, 8080, "/"));
        assert_eq!(r.headers["x-parents"], "two", "{vip}");
        assert!(
            g.call(NS, get(vip, 80, "/"))
                .headers
                .get("x-parents")
                .is_none()
        );
    }
    // A Service port without routes, and a pod called directly, are untouched.
    let v1_ip = g.v1.ip.to_string();
    let r = g.call(NS, get(&v1_ip, 8080, "/v2"));
    assert_eq!(seen(&r).0, "echo-v1-0");
    let r = g.call(NS, get(ECHO_V1, 80, "/v2"));
    assert_eq!(seen(&r).0, "echo-v1-0");
}

#[test]
fn filters_change_requests_and_responses_at_rule_and_backend_level() {
    let g = gamma("gamma_filters", &[NS]);
    let headers = r#"{set: [{name: X-Header-Set, value: set-overwrites-values}], add: [{name: X-Header-Add, value: add-appends-values}], remove: [X-Header-Remove]}"#;
    g.cp.write_manifest(
        "route-filters.yaml",
        &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: filters, namespace: gamma}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, port: 80}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /set}}}}]
    filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {headers}}}]
    backendRefs: [{{name: echo-v1, port: 8080}}]
  - matches: [{{path: {{type: PathPrefix, value: /backend}}}}]
    backendRefs:
    - name: echo-v1
      port: 8080
      filters:
      - {{type: RequestHeaderModifier, requestHeaderModifier: {headers}}}
      - {{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: X-Backend, value: v1}}]}}}}
  - matches: [{{path: {{type: PathPrefix, value: /response}}}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{{name: X-Header-Set, value: set}}]
        add: [{{name: X-Header-Add, value: added}}]
        remove: [X-Header-Remove]
    backendRefs: [{{name: echo-v1, port: 8080}}]
  - matches: [{{path: {{type: PathPrefix, value: /prefix/one}}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{hostname: rewritten.example, path: {{type: ReplacePrefixMatch, replacePrefixMatch: /one}}}}}}]
    backendRefs: [{{name: echo-v1, port: 8080}}]
  - matches: [{{path: {{type: PathPrefix, value: /strip-prefix}}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}}}]
    backendRefs: [{{name: echo-v1, port: 8080}}]
  - matches: [{{path: {{type: PathPrefix, value: /full/one}}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: /one}}}}}}]
    backendRefs: [{{name: echo-v1, port: 8080}}]
  - matches: [{{path: {{type: PathPrefix, value: /hostname-redirect}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{hostname: example.org}}}}]
  - matches: [{{path: {{type: PathPrefix, value: /host-and-status}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{hostname: example.org, statusCode: 301}}}}]
  - matches: [{{path: {{type: PathPrefix, value: /see-other}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{statusCode: 303}}}}]
  - matches: [{{path: {{type: PathPrefix, value: /temporary}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{statusCode: 307}}}}]
  - matches: [{{path: {{type: PathPrefix, value: /permanent}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{statusCode: 308}}}}]
  - matches: [{{path: {{type: PathPrefix, value: /original-prefix}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}}}}}]
  - matches: [{{path: {{type: PathPrefix, value: /full}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{path: {{type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}}}}}]
  - matches: [{{path: {{type: PathPrefix, value: /port}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{port: 8083}}}}]
  - matches: [{{path: {{type: PathPrefix, value: /scheme}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{scheme: https}}}}]
  - matches: [{{path: {{type: PathPrefix, value: /cors}}}}]
    filters:
    - type: CORS
      cors:
        allowOrigins: ["https://www.foo.com", "https://*.bar.com"]
        allowMethods: [GET, OPTIONS]
        allowHeaders: [x-header-1]
        exposeHeaders: [x-expose]
        maxAge: 3600
    backendRefs: [{{name: echo-v1, port: 8080}}]
  - matches: [{{path: {{type: PathPrefix, value: /backend-rewrite}}}}]
    backendRefs:
    - name: echo-v1
      port: 8080
      filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /rewritten}}}}}}]
  - matches: [{{path: {{type: PathPrefix, value: /backend-redirect}}}}]
    backendRefs:
    - name: echo-v1
      port: 8080
      filters: [{{type: RequestRedirect, requestRedirect: {{path: {{type: ReplaceFullPath, replaceFullPath: /redirected-full}}}}}}]
  - matches: [{{path: {{type: PathPrefix, value: /backend-cors}}}}]
    backendRefs:
    - name: echo-v1
      port: 8080
      filters: [{{type: CORS, cors: {{allowOrigins: ["*"], allowMethods: [GET]}}}}]
  - matches: [{{path: {{type: PathPrefix, value: /extension}}}}]
    filters: [{{type: ExtensionRef, extensionRef: {{group: example.com, kind: Magic, name: m}}}}]
    backendRefs: [{{name: echo-v1, port: 8080}}]
"#
        ),
    );
    g.until(NS, get(ECHO, 80, "/hostname-redirect"), |r| r.status == 302);

    // Request headers: set overwrites, add appends, remove removes; names
    // match case-insensitively. The same at backendRef level.
    for path in ["/set", "/backend"] {
        let r = g.call(
            NS,
            get(ECHO, 80, path)
                .header("x-header-set", "some-other-value")
                .header("X-Header-Add", "some-other-value")
                .header("x-header-remove", "gone")
                .header("some-other-header", "val"),
        );
        let (pod, _, _, h) = seen(&r);
        assert_eq!(pod, "echo-v1-0");
        assert_eq!(h["x-header-set"], "set-overwrites-values", "{path}: {h}");
        assert_eq!(
            h["x-header-add"], "some-other-value, add-appends-values",
            "{path}: {h}"
        );
        assert!(h.get("x-header-remove").is_none(), "{path}: {h}");
        assert_eq!(h["some-other-header"], "val", "{path}: {h}");
        let backend = r.headers.get("x-backend");
        assert_eq!(backend.is_some(), path == "/backend", "{path}");
    }

    // Response headers.
    let r = g.call(
        NS,
        get(ECHO, 80, "/response").header(
            "x-echo-set-header",
            "X-Header-Set:original,X-Header-Add:original,X-Header-Remove:gone,X-Kept:kept",
        ),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-header-set"], "set");
    let added: Vec<_> = r.headers.get_all("x-header-add").iter().collect();
    assert_eq!(added, ["original", "added"]);
    assert!(r.headers.get("x-header-remove").is_none());
    assert_eq!(r.headers["x-kept"], "kept");

    // Rewrites: the path and Host the backend sees.
    for (path, want_path) in [
        ("/prefix/one/two", "/one/two"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/full/one/two", "/one"),
    ] {
        let (_, got, host, _) = seen(&g.call(NS, get(ECHO, 80, path)));
        assert_eq!(got, want_path, "{path}");
        if path.starts_with("/prefix") {
            assert_eq!(host, "rewritten.example");
        }
    }

    // Redirects: status and Location; what a filter does not set comes from
    // the request (Host name, Service port, path, query).
    let host = "echo";
    for (path, status, location) in [
        (
            "/hostname-redirect/a?q=1",
            302,
            "http://example.org/hostname-redirect/a?q=1",
        ),
        (
            "/host-and-status",
            301,
            "http://example.org/host-and-status",
        ),
        ("/see-other", 303, "http://echo/see-other"),
        ("/temporary", 307, "http://echo/temporary"),
        ("/permanent", 308, "http://echo/permanent"),
        (
            "/original-prefix/lemon",
            302,
            "http://echo/replacement-prefix/lemon",
        ),
        (
            "/full/path/original",
            302,
            "http://echo/full-path-replacement",
        ),
        ("/port", 302, "http://echo:8083/port"),
        ("/scheme", 302, "https://echo/scheme"),
    ] {
        let r = g.call(NS, get(ECHO, 80, path).header("host", host));
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.headers["location"], location, "{path}");
    }

    // CORS: the preflight is answered by the sidecar; an allowed origin's
    // answers carry the CORS headers, another origin's do not.
    let preflight = |origin: &str| {
        get(ECHO, 80, "/cors")
            .method(Method::OPTIONS)
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "x-header-1")
    };
    let before = g.v1.served();
    let r = g.call(NS, preflight("https://app.bar.com"));
    assert_eq!(r.status, 204);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.bar.com"
    );
    assert_eq!(r.headers["access-control-allow-methods"], "GET, OPTIONS");
    assert_eq!(r.headers["access-control-allow-headers"], "x-header-1");
    assert_eq!(r.headers["access-control-max-age"], "3600");
    let r = g.call(NS, preflight("https://evil.example"));
    assert!(r.headers.get("access-control-allow-origin").is_none());
    assert_eq!(g.v1.served(), before, "a preflight reached the app");
    let r = g.call(
        NS,
        get(ECHO, 80, "/cors").header("origin", "https://www.foo.com"),
    );
    assert_eq!(seen(&r).0, "echo-v1-0");
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://www.foo.com"
    );
    assert_eq!(r.headers["access-control-expose-headers"], "x-expose");

    // A backendRef's own rewrite, redirect and CORS.
    let (_, path, _, _) = seen(&g.call(NS, get(ECHO, 80, "/backend-rewrite/x")));
    assert_eq!(path, "/rewritten/x");
    let r = g.call(
        NS,
        get(ECHO, 80, "/backend-redirect/x").header("host", host),
    );
    assert_eq!(r.status, 302);
    assert_eq!(r.headers["location"], "http://echo/redirected-full");
    let r = g.call(
        NS,
        get(ECHO, 80, "/backend-cors")
            .method(Method::OPTIONS)
            .header("origin", "https://any.example")
            .header("access-control-request-method", "GET"),
    );
    assert_eq!(r.status, 204);
    assert_eq!(r.headers["access-control-allow-origin"], "*");

    // A filter Weft cannot apply is never skipped: its requests get 500.
    let r = g.call(NS, get(ECHO, 80, "/extension"));
    assert_eq!(r.status, 500);
    assert!(weft_error(&r).starts_with("invalid-route"), "{r:?}");
}

#[test]
fn mirrors_get_a_copy_and_their_answers_are_dropped() {
    let g = gamma("gamma_mirror", &[NS]);
    g.cp.write_manifest(
        "route-mirror.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mirror, namespace: gamma}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /mirror-all}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: echo-v2, port: 8080}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-mirrored-route, value: "yes"}]}
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /mirror-none}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: echo-v2, port: 8080}, percent: 0}
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /mirror-half}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: echo-v2, port: 8080}, fraction: {numerator: 1, denominator: 2}}
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /mirror-backend}}]
    backendRefs:
    - name: echo-v1
      port: 8080
      filters:
      - type: RequestMirror
        requestMirror: {backendRef: {name: echo-v2, port: 8080}}
"#,
    );
    g.until(NS, get(ECHO, 80, "/mirror-all/0"), |r| {
        r.status == 200 && r.json()["headers"]["x-mirrored-route"] == "yes"
    });
    let mirrored = |prefix: &str| {
        g.v2.seen()
            .iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
            .count()
    };
    weft_e2e::eventually("the first copy", Duration::from_secs(10), || {
        mirrored("/mirror-all") >= 1
    });
    let base = mirrored("/mirror-all");
    // Every request is answered by the primary backend...
    let n = 20;
    let reqs: Vec<Req> = (1..=n)
        .map(|i| get(ECHO, 80, &format!("/mirror-all/{i}")))
        .collect();
    for r in g.calls(NS, reqs) {
        let (pod, _, _, h) = seen(&r);
        assert_eq!(pod, "echo-v1-0");
        assert_eq!(h["x-mirrored-route"], "yes");
    }
    // ...and the mirror gets a copy of each, filters applied.
    weft_e2e::eventually("every copy", Duration::from_secs(10), || {
        mirrored("/mirror-all") == base + n
    });
    let copy =
        g.v2.seen()
            .into_iter()
            .rev()
            .find(|r| r["path"] == "/mirror-all/20")
            .expect("the last copy");
    assert_eq!(copy["headers"]["x-mirrored-route"], "yes", "{copy}");

    // A backendRef's own mirror; percent 0; a half.
    g.calls(
        NS,
        (0..10)
            .map(|i| get(ECHO, 80, &format!("/mirror-backend/{i}")))
            .collect(),
    );
    weft_e2e::eventually("backend-level copies", Duration::from_secs(10), || {
        mirrored("/mirror-backend") == 10
    });
    let n = 200;
    let before = g.v2.served();
    g.calls(
        NS,
        (0..n)
            .map(|i| get(ECHO, 80, &format!("/mirror-none/{i}")))
            .collect(),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(mirrored("/mirror-none"), 0);
    assert_eq!(g.v2.served(), before);
    g.calls(
        NS,
        (0..n)
            .map(|i| get(ECHO, 80, &format!("/mirror-half/{i}")))
            .collect(),
    );
    std::thread::sleep(Duration::from_secs(1));
    let half = g.v2.served() - before;
    assert!((60..=140).contains(&half), "{half} of {n} copied");
}

#[test]
fn consumer_routes_apply_to_their_namespace_and_producer_routes_to_the_rest() {
    let g = gamma("gamma_scoping", &[NS, CONSUMER, OTHER]);
    g.cp.write_manifest(
        "route-scoping.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: producer, namespace: gamma}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-v1}]
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-route, value: producer}]}
    backendRefs: [{name: echo-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: consumer}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-v1, namespace: gamma}]
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-route, value: consumer}]}
    backendRefs: [{name: echo-v1, namespace: gamma, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: takeover, namespace: other}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-v2, namespace: gamma}]
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-route, value: other}]}
    backendRefs: [{name: echo, namespace: gamma, port: 80}]
"#,
    );
    let route_of = |r: &Reply| {
        r.headers
            .get("x-route")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string()
    };
    // A consumer route wins for its own namespace's clients...
    let r = g.until(CONSUMER, get(ECHO_V1, 80, "/"), |r| {
        route_of(r) == "consumer"
    });
    assert_eq!(seen(&r).0, "echo-v1-0");
    // ...and only for them: the producer route applies to everyone else.
    for ns in [NS, OTHER] {
        let r = g.until(ns, get(ECHO_V1, 80, "/"), |r| route_of(r) == "producer");
        assert_eq!(seen(&r).0, "echo-v1-0");
    }
    // A route in `other` on another namespace's Service changes nothing for
    // the rest of the mesh...
    for ns in [NS, CONSUMER] {
        let r = g.call(ns, get(ECHO_V2, 80, "/"));
        assert_eq!(
            (route_of(&r), seen(&r).0),
            ("none".into(), "echo-v2-0".into())
        );
    }
    // ...and its backend, a Service in `gamma` that is not its parent, needs
    // gamma's ReferenceGrant: without one, its requests get 500.
    let r = g.until(OTHER, get(ECHO_V2, 80, "/"), |r| r.status == 500);
    assert!(weft_error(&r).starts_with("invalid-backend"), "{r:?}");
    assert!(r.text().contains("ReferenceGrant"), "{}", r.text());
    g.cp.write_manifest(
        "grant.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-other, namespace: gamma}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: other}]
  to: [{group: "", kind: Service, name: echo}]
"#,
    );
    let r = g.until(OTHER, get(ECHO_V2, 80, "/"), |r| r.status == 200);
    assert_eq!(route_of(&r), "other");
    // Taking the grant back takes the access back.
    g.cp.remove_manifest("grant.yaml");
    g.until(OTHER, get(ECHO_V2, 80, "/"), |r| r.status == 500);
}

#[test]
fn timeouts_and_retries_follow_the_route() {
    let g = gamma("gamma_resilience", &[NS]);
    g.cp.write_manifest(
        "route-resilience.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: resilience, namespace: gamma}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /delay}}]
    timeouts: {request: 500ms}
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /status}}]
    retry: {attempts: 2, codes: [503]}
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /ready}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 302}}]
"#,
    );
    g.until(NS, get(ECHO, 80, "/ready"), |r| r.status == 302);
    let started = Instant::now();
    let r = g.call(NS, get(ECHO, 80, "/delay/3000"));
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(weft_error(&r).starts_with("timeout"), "{r:?}");
    assert!(started.elapsed() < Duration::from_millis(2500));
    // `attempts` counts retries: the first try and two more.
    let before = g.v1.served();
    let r = g.call(NS, get(ECHO, 80, "/status/503"));
    assert_eq!(r.status, 503);
    assert_eq!(g.v1.served() - before, 3);
    // A code not listed is not retried.
    let before = g.v1.served();
    assert_eq!(g.call(NS, get(ECHO, 80, "/status/500")).status, 500);
    assert_eq!(g.v1.served() - before, 1);
}

#[test]
fn grpc_routes_match_services_and_methods_and_split_by_weight() {
    use tonic::Code;
    use weft_e2e::echo::EchoRequest;
    use weft_e2e::echo::echo_client::EchoClient;
    use weft_e2e::echo::hello_client::HelloClient;

    let g = gamma("gamma_grpc", &[NS]);
    g.cp.write_manifest(
        "route-grpc.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: gamma}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 7070}]
  rules:
  - matches:
    - method: {service: weft.test.Echo, method: Unary}
      headers: [{name: x-test-case, value: set}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-header-set, value: set-overwrites-values}]
        add: [{name: x-header-add, value: add-appends-values}]
        remove: [x-header-remove]
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-response, value: grpcroute}]}
    backendRefs: [{name: echo-v1, port: 7070}]
  - matches: [{method: {service: weft.test.Hello}}]
    backendRefs: [{name: echo-v2, port: 7070}]
  - matches: [{method: {service: weft.test.Echo, method: Unary}}]
    backendRefs:
    - {name: echo-v1, port: 7070, weight: 70}
    - {name: echo-v2, port: 7070, weight: 30}
    - {name: echo-v3, port: 7070, weight: 0}
  - matches: [{method: {method: Fail}}]
    backendRefs: [{name: missing, port: 7070}]
---
# An HTTPRoute on the same port loses to the GRPCRoute.
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: loser, namespace: gamma}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 7070}]
  rules:
  - backendRefs: [{name: echo-v2, port: 7070}]
"#,
    );
    let client = g.client(NS).clone();
    let (set, hello, split, fail, unmatched) = client.ns.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{ECHO}:7070"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect through the mesh");
        let mut echo = EchoClient::new(channel.clone());
        let mut hello = HelloClient::new(channel);
        let req = |m: &str| EchoRequest {
            message: m.into(),
            count: 2,
        };
        // Wait for the route: only it makes Fail UNAVAILABLE (the app
        // answers NOT_FOUND).
        let deadline = Instant::now() + Duration::from_secs(15);
        while echo.fail(req("x")).await.expect_err("Fail fails").code() != Code::Unavailable {
            assert!(Instant::now() < deadline, "the GRPCRoute never applied");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut hello_reply = None;
        for _ in 0..20 {
            let r = hello.greet(req("you")).await.expect("greet").into_inner();
            assert_eq!(r.pod, "echo-v2-0", "the Hello service goes to v2");
            hello_reply = Some(r);
        }
        let hello_reply = hello_reply.expect("replies");
        let mut r = tonic::Request::new(req("set"));
        let md = r.metadata_mut();
        md.insert("x-test-case", "set".parse().expect("ascii"));
        md.insert("x-header-set", "original".parse().expect("ascii"));
        md.insert("x-header-add", "original".parse().expect("ascii"));
        md.insert("x-header-remove", "gone".parse().expect("ascii"));
        let set = echo.unary(r).await.expect("unary with x-test-case");
        let mut split = BTreeMap::<String, usize>::new();
        for _ in 0..300 {
            let pod = echo
                .unary(req("split"))
                .await
                .expect("unary")
                .into_inner()
                .pod;
            *split.entry(pod).or_insert(0) += 1;
        }
        let fail = echo.fail(req("x")).await.expect_err("no backend");
        let unmatched = echo
            .server_stream(req("x"))
            .await
            .expect_err("no rule matches ServerStream");
        (set, hello_reply, split, fail, unmatched)
    });
    assert_eq!(hello.message, "hello you");
    assert_eq!(
        set.metadata()
            .get("x-response")
            .map(|v| v.to_str().unwrap()),
        Some("grpcroute"),
        "{set:?}"
    );
    let set = set.into_inner();
    assert_eq!(set.pod, "echo-v1-0");
    assert_eq!(set.headers["x-header-set"], "set-overwrites-values");
    assert_eq!(set.headers["x-header-add"], "original, add-appends-values");
    assert!(!set.headers.contains_key("x-header-remove"));
    // 70/30, the zero-weight backend that does not exist never chosen, and
    // the HTTPRoute on the same port ignored.
    assert_eq!(split.values().sum::<usize>(), 300);
    let v1 = split.get("echo-v1-0").copied().unwrap_or(0) as f64 / 300.0;
    assert!((0.60..=0.80).contains(&v1), "{split:?}");
    // A backend that cannot be used: UNAVAILABLE; no rule: UNIMPLEMENTED.
    assert_eq!(fail.code(), Code::Unavailable, "{fail:?}");
    assert_eq!(unmatched.code(), Code::Unimplemented, "{unmatched:?}");
}

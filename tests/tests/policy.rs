//! Authorization at the server-side sidecar (AuthorizationPolicy): by
//! caller identity, ServiceAccount and namespace, by method, path and
//! header; DENY over ALLOW; an ALLOW policy denying what it does not allow;
//! the namespace default; a policy change applied to the next request of an
//! open connection; end users' JWTs (RequestAuthentication) and API keys.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weft_e2e::client::Reply;
use weft_e2e::{ControlPlane, Node, Pod, http_pod_in, namespace_yaml, pod_yaml_in};

const SHOP: &str = "shop";
const OPS: &str = "ops";
const WEB: &str = "198.19.0.40";
const DB: &str = "198.19.0.41";

fn service(name: &str, vip: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {SHOP}}}\nspec:\n  clusterIP: {vip}\n  selector: {{app: {app}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
    )
}

struct Policy {
    _node: Node,
    cp: ControlPlane,
    /// Clients by (namespace, ServiceAccount).
    clients: BTreeMap<(&'static str, &'static str), Arc<Pod>>,
    web: Arc<Pod>,
    db: Arc<Pod>,
}

fn policy(test: &str) -> Policy {
    policy_on(Node::new(test), &[])
}

/// The fixture on `node`, with more flags for the control plane.
fn policy_on(node: Node, extra: &[&str]) -> Policy {
    let cp = ControlPlane::start_with(&node, "1h", extra);
    cp.write_manifest("ns-ops.yaml", &namespace_yaml(OPS));
    cp.write_manifest("ns-shop.yaml", &namespace_yaml(SHOP));
    cp.write_manifest("svc-web.yaml", &service("web", WEB, "web"));
    cp.write_manifest("svc-db.yaml", &service("db", DB, "db"));
    let server = |name: &str, app: &str| {
        http_pod_in(
            &node,
            &cp,
            SHOP,
            name,
            app,
            &[("app", app)],
            &["--echo-requests"],
            true,
        )
    };
    let web = server("web-0", "web");
    let db = server("db-0", "db");
    let mut clients = BTreeMap::new();
    for (ns, sa) in [(SHOP, "frontend"), (SHOP, "other"), (OPS, "tool")] {
        let pod = node.pod(&format!("{sa}-{ns}"));
        cp.write_manifest(
            &format!("pod-{sa}-{ns}.yaml"),
            &pod_yaml_in(ns, &pod, sa, &[("app", sa)], true),
        );
        pod.mesh_with_in(&cp, ns, sa, &[]);
        pod.wait_endpoints("web.shop:80", 1);
        pod.wait_endpoints("db.shop:80", 1);
        clients.insert((ns, sa), pod);
    }
    Policy {
        _node: node,
        cp,
        clients,
        web,
        db,
    }
}

async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::default())
        .expect("request");
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("answer in time")
        .expect("answer");
    let (parts, body) = res.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

impl Policy {
    fn call(&self, from: (&'static str, &'static str), method: Method, url: &str) -> Reply {
        self.call_with(from, method, url, &[])
    }

    fn call_with(
        &self,
        from: (&'static str, &'static str),
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let url = url.to_string();
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        self.clients[&from].ns.block_on(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            let mut req = Request::builder().method(method).uri(&url);
            for (n, v) in &headers {
                req = req.header(n, v);
            }
            let req = req.body(Full::default()).expect("request");
            let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
                .await
                .expect("answer in time")
                .expect("answer");
            let (parts, body) = res.into_parts();
            Reply {
                status: parts.status,
                headers: parts.headers,
                body: body.collect().await.expect("body").to_bytes(),
            }
        })
    }

    /// A GET with headers until `ready` holds.
    fn until_with(
        &self,
        from: (&'static str, &'static str),
        url: &str,
        headers: &[(&str, &str)],
        ready: impl Fn(&Reply) -> bool,
    ) -> Reply {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.call_with(from, Method::GET, url, headers);
            if ready(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "GET {url} from {from:?}: still {r:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `call` until `ready` holds (a policy applies asynchronously).
    fn until(
        &self,
        from: (&'static str, &'static str),
        method: Method,
        url: &str,
        ready: impl Fn(&Reply) -> bool,
    ) -> Reply {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = self.call(from, method.clone(), url);
            if ready(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{method} {url} from {from:?}: still {r:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn weft_error(r: &Reply) -> String {
    r.headers
        .get("weft-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

const FRONTEND: (&str, &str) = (SHOP, "frontend");
const OTHER: (&str, &str) = (SHOP, "other");
const TOOL: (&str, &str) = (OPS, "tool");

#[test]
fn policies_allow_and_deny_by_identity_and_request() {
    let p = policy("policy_basic");
    let web = format!("http://{WEB}");
    // Before any policy: everyone gets in.
    for from in [FRONTEND, OTHER, TOOL] {
        assert_eq!(p.call(from, Method::GET, &format!("{web}/api")).status, 200);
    }
    p.cp.write_manifest(
        "authz.yaml",
        r#"apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: frontend-reads, namespace: shop}
spec:
  targetRef: {group: "", kind: Service, name: web}
  rules:
  - from: [{serviceAccount: {name: frontend}}]
    to: {methods: [GET], paths: [{type: PathPrefix, value: /api}]}
  - from: [{namespace: ops}]
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  targetRef: {group: "", kind: Service, name: web, port: 80}
  action: DENY
  rules:
  - to: {paths: [{type: PathPrefix, value: /admin}]}
"#,
    );
    let r = p.until(OTHER, Method::GET, &format!("{web}/api"), |r| {
        r.status == 403
    });
    assert_eq!(weft_error(&r), "forbidden; policy=shop/frontend-reads");
    // The allowed caller, method and path.
    let r = p.call(FRONTEND, Method::GET, &format!("{web}/api/items"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/api/items");
    // Another method or path is not allowed.
    assert_eq!(
        p.call(FRONTEND, Method::POST, &format!("{web}/api")).status,
        403
    );
    assert_eq!(
        p.call(FRONTEND, Method::GET, &format!("{web}/apix")).status,
        403
    );
    // A whole namespace allowed.
    assert_eq!(
        p.call(TOOL, Method::POST, &format!("{web}/anything"))
            .status,
        200
    );
    // DENY wins over ALLOW, and dot segments do not get past it.
    for path in ["/admin", "/admin/users", "/api/../admin", "//admin"] {
        let r = p.call(TOOL, Method::GET, &format!("{web}{path}"));
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(weft_error(&r), "forbidden; policy=shop/no-admin", "{path}");
    }
    // Every decision is counted at the server's sidecar.
    let count = |action: &str, policy: &str, reason: &str| {
        p.web.metric(&format!(
            r#"authz_decisions_total{{action="{action}",policy="{policy}",reason="{reason}"}}"#
        ))
    };
    assert!(
        count("deny", "shop/no-admin", "deny-rule") >= 4.0,
        "{}",
        p.web.metrics()
    );
    assert!(count("deny", "shop/frontend-reads", "no-allow-rule") >= 3.0);
    assert!(count("allow", "shop/frontend-reads", "allow-rule") >= 2.0);
    // Another Service of the namespace is untouched.
    assert_eq!(
        p.call(OTHER, Method::GET, &format!("http://{DB}/")).status,
        200
    );
}

#[test]
fn the_namespace_default_and_live_changes() {
    let p = policy("policy_default");
    let db = format!("http://{DB}/");
    assert_eq!(p.call(OTHER, Method::GET, &db).status, 200);
    // Default deny for the namespace, by annotation.
    p.cp.write_manifest(
        "ns-shop.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  annotations: {weft.dev/default-authz: deny}\n",
    );
    let r = p.until(OTHER, Method::GET, &db, |r| r.status == 403);
    assert_eq!(weft_error(&r), "forbidden; policy=default");
    // One caller allowed: on a connection that was open before the policy,
    // the next request follows it.
    p.clients[&FRONTEND].ns.block_on({
        let cp_dir = p.cp.manifests();
        let db = db.clone();
        async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            assert_eq!(send(&client, Method::GET, &db).await.status, 403);
            let tmp = cp_dir.join("../.allow.tmp");
            std::fs::write(
                &tmp,
                "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: frontend, namespace: shop}\nspec:\n  targetRef: {kind: Service, name: db}\n  rules: [{from: [{serviceAccount: {name: frontend}}]}]\n",
            )
            .expect("write");
            std::fs::rename(&tmp, cp_dir.join("allow.yaml")).expect("rename");
            let deadline = Instant::now() + Duration::from_secs(15);
            while send(&client, Method::GET, &db).await.status != 200 {
                assert!(Instant::now() < deadline, "the policy never applied");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    assert_eq!(p.call(OTHER, Method::GET, &db).status, 403);
}

#[test]
fn an_opaque_port_closes_connections_its_policy_denies() {
    use tokio::io::AsyncReadExt;
    let p = policy("policy_tcp");
    p.cp.write_manifest(
        "svc-cache.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: cache, namespace: {SHOP}}}\nspec:\n  clusterIP: 198.19.0.42\n  selector: {{app: cache}}\n  ports: [{{name: tcp, port: 7000, targetPort: 7000, appProtocol: tcp}}]\n"
        ),
    );
    let cache = p._node.pod("cache-0");
    cache.spawn(
        "tcp",
        weft_e2e::bins::test_app(),
        &[
            "tcp",
            "--listen",
            "0.0.0.0:7000",
            "--mode",
            "banner",
            "--pod",
            "cache-0",
        ],
    );
    cache.wait_listening(7000);
    p.cp.write_manifest(
        "pod-cache-0.yaml",
        &pod_yaml_in(SHOP, &cache, "cache", &[("app", "cache")], true),
    );
    cache.mesh_with_in(&p.cp, SHOP, "cache", &[]);
    p.cp.write_manifest(
        "authz-cache.yaml",
        "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: cache-clients, namespace: shop}\nspec:\n  targetRef: {kind: Service, name: cache}\n  rules: [{from: [{serviceAccount: {name: frontend}}]}]\n",
    );
    // What a client reads: the banner, or nothing before the close.
    let banner = |from: (&'static str, &'static str)| -> String {
        p.clients[&from].wait_endpoints("cache.shop:7000", 1);
        p.clients[&from].ns.block_on(async {
            let mut s = tokio::net::TcpStream::connect("198.19.0.42:7000")
                .await
                .expect("connect");
            let mut buf = vec![0u8; 64];
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
                Ok(Err(e)) => format!("error {e}"),
                Err(_) => "timeout".into(),
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !banner(OTHER).is_empty() {
        assert!(Instant::now() < deadline, "the policy never applied");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(banner(FRONTEND), "cache-0\n");
    assert_eq!(banner(TOOL), "");
}

/// Signs end-user tokens as an identity provider would: ES256 with `kid`.
struct Idp {
    key: jsonwebtoken::EncodingKey,
    kid: &'static str,
}

impl Idp {
    fn new(kid: &'static str) -> Idp {
        let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        Idp {
            key: jsonwebtoken::EncodingKey::from_ec_der(&k.serialize_der()),
            kid,
        }
    }

    fn jwk(&self) -> serde_json::Value {
        let mut j =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&self.key, jsonwebtoken::Algorithm::ES256)
                .expect("jwk");
        j.common.key_id = Some(self.kid.into());
        serde_json::to_value(j).expect("json")
    }

    fn token(&self, claims: serde_json::Value) -> String {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some(self.kid.into());
        jsonwebtoken::encode(&h, &claims, &self.key).expect("sign")
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

const ISSUER: &str = "https://idp.test";

fn claims(sub: &str, scope: &str) -> serde_json::Value {
    serde_json::json!({"iss": ISSUER, "aud": "web", "sub": sub, "scope": scope, "exp": now() + 600})
}

#[test]
fn end_user_tokens_and_api_keys() {
    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let p = policy("policy_jwt");
    let idp = Idp::new("k1");
    let jwks = serde_json::json!({"keys": [idp.jwk()]}).to_string();
    let digest: String = {
        use sha2::Digest;
        sha2::Sha256::digest(b"key-of-billing")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    p.cp.write_manifest(
        "authn.yaml",
        &format!(
            r#"apiVersion: weft.dev/v1alpha1
kind: RequestAuthentication
metadata: {{name: users, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: web}}
  jwtRules:
  - issuer: {ISSUER}
    audiences: [web]
    jwks: '{jwks}'
    outputClaimToHeaders: [{{header: x-user, claim: sub}}]
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: readers, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: web}}
  rules:
  - to: {{paths: [{{type: PathPrefix, value: /public}}]}}
  - to: {{paths: [{{type: PathPrefix, value: /orders}}]}}
    when: {{jwt: {{claims: [{{name: scope, values: [orders.read]}}]}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: api-keys, namespace: shop}}
stringData:
  keys: |
    # billing's job
    sha256:{digest}
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: keyed, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: db}}
  rules:
  - when: {{apiKey: {{header: x-api-key, secretRef: {{name: api-keys, key: keys}}}}}}
"#
        ),
    );
    let web = format!("http://{WEB}");
    let orders = format!("{web}/orders");
    let bearer = |t: &str| format!("Bearer {t}");
    // No token: the request passes authentication, and authorization wants one.
    let r = p.until(FRONTEND, Method::GET, &orders, |r| r.status == 403);
    assert_eq!(
        weft_error(&r),
        "forbidden; policy=shop/readers",
        "{:?}",
        r.body
    );
    assert_eq!(
        p.call(FRONTEND, Method::GET, &format!("{web}/public"))
            .status,
        200
    );
    // A good token with the scope: the app gets the claim, never the forged header.
    let good = idp.token(claims("alice", "orders.read orders.write"));
    let r = p.call_with(
        FRONTEND,
        Method::GET,
        &orders,
        &[("authorization", &bearer(&good)), ("x-user", "mallory")],
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["headers"]["x-user"], "alice");
    // A good token without the scope.
    let r = p.call_with(
        FRONTEND,
        Method::GET,
        &orders,
        &[(
            "authorization",
            &bearer(&idp.token(claims("bob", "profile"))),
        )],
    );
    assert_eq!(r.status, 403);
    // Bad tokens are refused, with the reason, even where no rule needs one.
    let mut expired = claims("alice", "orders.read");
    expired["exp"] = serde_json::json!(now() - 3600);
    let mut other_aud = claims("alice", "orders.read");
    other_aud["aud"] = serde_json::json!("billing");
    let none = format!(
        "{}.{}.",
        b64(serde_json::json!({"alg": "none", "kid": "k1"})),
        b64(claims("alice", "orders.read"))
    );
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some("k1".into());
    let confused = jsonwebtoken::encode(
        &hs,
        &claims("alice", "orders.read"),
        &jsonwebtoken::EncodingKey::from_secret(jwks.as_bytes()).expect("key"),
    )
    .expect("sign");
    let stranger = Idp::new("k1").token(claims("alice", "orders.read"));
    for (what, token, reason) in [
        ("expired", idp.token(expired), "expired"),
        ("another audience", idp.token(other_aud), "bad-audience"),
        ("alg none", none, "alg-not-allowed"),
        ("HS256 keyed with the JWKS", confused, "alg-not-allowed"),
        ("another key under k1", stranger, "bad-signature"),
        ("not a JWT", "abc".into(), "malformed"),
    ] {
        for path in ["/orders", "/public"] {
            let r = p.call_with(
                FRONTEND,
                Method::GET,
                &format!("{web}{path}"),
                &[("authorization", &bearer(&token))],
            );
            assert_eq!(r.status, 401, "{what} {path}");
            assert_eq!(
                weft_error(&r),
                format!("unauthenticated; reason={reason}"),
                "{what}"
            );
            assert_eq!(
                r.headers["www-authenticate"],
                "Bearer error=\"invalid_token\""
            );
        }
    }
    assert_eq!(
        p.web
            .metric(r#"jwt_authn_total{result="invalid",reason="alg-not-allowed"}"#),
        4.0
    );
    assert!(
        p.web
            .metric(r#"jwt_authn_total{result="valid",reason="valid"}"#)
            >= 2.0
    );

    // API keys: the right key only; the Secret holds only its digest.
    let db = format!("http://{DB}/");
    let r = p.until(OTHER, Method::GET, &db, |r| r.status == 403);
    assert_eq!(weft_error(&r), "forbidden; policy=shop/keyed");
    let with_key = |k: &str| {
        p.call_with(OTHER, Method::GET, &db, &[("x-api-key", k)])
            .status
    };
    assert_eq!(with_key("key-of-billing"), 200);
    assert_eq!(with_key("key-of-someone"), 403);
    assert_eq!(with_key("sha256:".to_string().as_str()), 403);
}

/// Keys fetched from a `jwksUri` rotate by `kid` with no request refused:
/// the provider publishes k2 next to k1, starts signing with k2, then
/// drops k1; a failed fetch keeps the last good set.
#[test]
fn jwks_fetched_over_https_rotate_by_kid_without_a_gap() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let node = Node::new("policy_jwks");
    let idp_pod = node.pod("idp");
    let (k1, k2) = (Idp::new("k1"), Idp::new("k2"));
    let set = |keys: &[&Idp]| {
        serde_json::json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
    };
    let server = weft_e2e::jwks::JwksServer::start(&idp_pod, 8443, node.logs(), &set(&[&k1]));
    let ca = server.ca_file.display().to_string();
    let p = policy_on(node, &["--jwks-ca-file", &ca]);
    p.cp.write_manifest(
        "authn.yaml",
        &format!(
            r#"apiVersion: weft.dev/v1alpha1
kind: RequestAuthentication
metadata: {{name: users, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: web}}
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: {url}
    refreshInterval: 1s
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: users-only, namespace: shop}}
spec:
  targetRef: {{kind: Service, name: web}}
  rules: [{{when: {{jwt: {{}}}}}}]
"#,
            url = server.url
        ),
    );
    let orders = format!("http://{WEB}/orders");
    let t1 = k1.token(claims("alice", ""));
    let auth = |t: &str| format!("Bearer {t}");
    // Only the new policy refuses a request without a token; then k1's
    // tokens pass once its key set is fetched and pushed.
    p.until(FRONTEND, Method::GET, &orders, |r| r.status == 403);
    p.until_with(FRONTEND, &orders, &[("authorization", &auth(&t1))], |r| {
        r.status == 200
    });
    let kids = || -> Vec<String> {
        p.web.config()["jwt_issuers"][0]["kids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(kids(), ["k1"]);

    // A client calls all along, with the key the provider signs with now.
    let t2 = k2.token(claims("alice", ""));
    let use_k2 = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let caller =
        {
            let (use_k2, stop, sent, failed) =
                (use_k2.clone(), stop.clone(), sent.clone(), failed.clone());
            let (t1, t2, orders) = (t1.clone(), t2.clone(), orders.clone());
            p.clients[&FRONTEND]
                .ns
                .thread("caller", move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    rt.block_on(async move {
                    let client =
                        Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
                    while !stop.load(Ordering::SeqCst) {
                        let t = if use_k2.load(Ordering::SeqCst) { &t2 } else { &t1 };
                        let req = Request::get(&orders)
                            .header("authorization", format!("Bearer {t}"))
                            .body(Full::default())
                            .expect("request");
                        let ok = matches!(
                            tokio::time::timeout(Duration::from_secs(5), client.request(req)).await,
                            Ok(Ok(r)) if r.status() == 200
                        );
                        sent.fetch_add(1, Ordering::SeqCst);
                        if !ok {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
                })
                .expect("caller thread")
        };
    let wait_kids = |want: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while kids() != want {
            assert!(
                Instant::now() < deadline,
                "kids still {:?}, want {want:?}",
                kids()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    server.set(&set(&[&k1, &k2]));
    wait_kids(&["k1", "k2"]);
    use_k2.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(500));
    server.set(&set(&[&k2]));
    wait_kids(&["k2"]);
    // A fetch that fails keeps the last good set.
    let before = server.fetches();
    server.set("not json");
    while server.fetches() < before + 2 {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(kids(), ["k2"]);
    stop.store(true, Ordering::SeqCst);
    caller.join().expect("caller").expect("caller netns");
    let (sent, failed) = (sent.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert!(sent > 20, "only {sent} requests");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests refused during the rotation"
    );
    // k1 is gone.
    let r = p.call_with(
        FRONTEND,
        Method::GET,
        &orders,
        &[("authorization", &auth(&t1))],
    );
    assert_eq!(r.status, 401);
    assert_eq!(weft_error(&r), "unauthenticated; reason=unknown-kid");
}

/// A policy on one HTTPRoute rule: only `frontend` may POST to /orders.
/// It is enforced where the requests land, on the rule's own matches, so
/// calling the pod directly or through a rule that rewrites to the same
/// path gets the same answer; other requests to the Service are untouched.
#[test]
fn a_policy_on_a_route_rule_covers_that_rule_only() {
    let p = policy("policy_route");
    p.cp.write_manifest(
        "route.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - name: writes
    matches: [{method: POST, path: {type: PathPrefix, value: /orders}}]
    backendRefs: [{name: web, port: 80}]
  - name: legacy
    matches: [{path: {type: PathPrefix, value: /v1/orders}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /orders}}
    backendRefs: [{name: web, port: 80}]
  - backendRefs: [{name: web, port: 80}]
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: order-writers, namespace: shop}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: web, sectionName: writes}
  rules: [{from: [{serviceAccount: {name: frontend}}]}]
"#,
    );
    let web = format!("http://{WEB}");
    let r = p.until(OTHER, Method::POST, &format!("{web}/orders"), |r| {
        r.status == 403
    });
    assert_eq!(weft_error(&r), "forbidden; policy=shop/order-writers");
    assert_eq!(
        p.call(FRONTEND, Method::POST, &format!("{web}/orders/7"))
            .status,
        200
    );
    // Outside the rule: another method, another path.
    assert_eq!(
        p.call(OTHER, Method::GET, &format!("{web}/orders")).status,
        200
    );
    assert_eq!(
        p.call(OTHER, Method::POST, &format!("{web}/carts")).status,
        200
    );
    // Around the route: the pod itself, and a rule rewriting to /orders.
    let pod = format!("http://{}", p.web.addr(8080));
    assert_eq!(
        p.call(OTHER, Method::POST, &format!("{pod}/orders")).status,
        403
    );
    assert_eq!(
        p.call(FRONTEND, Method::POST, &format!("{pod}/orders"))
            .status,
        200
    );
    let r = p.call(OTHER, Method::POST, &format!("{web}/v1/orders"));
    assert_eq!(r.status, 403);
    let r = p.call(FRONTEND, Method::POST, &format!("{web}/v1/orders"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/orders");
}

/// A header rule allows by the request's header; an AUDIT policy lets its
/// matches through, and counts them.
#[test]
fn header_rules_and_audit_policies() {
    let p = policy("policy_audit");
    p.cp.write_manifest(
        "authz-db.yaml",
        r#"apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: tenants, namespace: shop}
spec:
  targetRef: {kind: Service, name: db}
  rules: [{to: {headers: [{name: x-tenant, value: acme}]}}]
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: watch-other, namespace: shop}
spec:
  targetRef: {kind: Service, name: db}
  action: AUDIT
  rules: [{from: [{serviceAccount: {name: other}}]}]
"#,
    );
    let db = format!("http://{DB}/");
    let r = p.until(FRONTEND, Method::GET, &db, |r| r.status == 403);
    assert_eq!(weft_error(&r), "forbidden; policy=shop/tenants");
    let tenant = [("x-tenant", "acme")];
    assert_eq!(p.call_with(FRONTEND, Method::GET, &db, &tenant).status, 200);
    assert_eq!(
        p.call_with(FRONTEND, Method::GET, &db, &[("x-tenant", "other")])
            .status,
        403
    );
    // Audited, and allowed (by the header rule, which decides).
    for _ in 0..3 {
        assert_eq!(p.call_with(OTHER, Method::GET, &db, &tenant).status, 200);
    }
    let audited = p.db.metric(
        r#"authz_decisions_total{action="audit",policy="shop/watch-other",reason="audit-rule"}"#,
    );
    assert_eq!(audited, 3.0, "{}", p.db.metrics());
    // An audited request that nothing allows is still denied.
    assert_eq!(p.call(OTHER, Method::GET, &db).status, 403);
}

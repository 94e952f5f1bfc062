//! The mesh tried as an attacker would, in network namespaces: each case
//! asserts the defended behaviour *and* that a parallel stream of good
//! requests from another caller keeps succeeding. The limits themselves are
//! listed in the README's "Limits and defences".

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_e2e::{ControlPlane, Node, Pod, bins, pod_yaml, service_yaml, spiffe};

const APP_VIP: &str = "198.19.0.20";

struct Mesh {
    _node: Node,
    _cp: ControlPlane,
    app: Arc<Pod>,
    client: Arc<Pod>,
    /// A pod outside the mesh: no sidecar, no identity.
    outsider: Arc<Pod>,
}

/// An HTTP app (service account `app`) behind a sidecar with `app_extra`
/// flags, a meshed client whose sidecar gets `client_extra`, and an
/// outsider.
fn mesh(test: &str, client_extra: &[&str], app_extra: &[&str]) -> Mesh {
    let node = Node::new(test);
    let cp = ControlPlane::start(&node, "1h");
    cp.write_manifest(
        "svc-app.yaml",
        &service_yaml("app", APP_VIP, "app", &[(80, 8080, "")]),
    );
    let app = node.pod("app");
    app.spawn(
        "http",
        bins::test_app(),
        &[
            "http",
            "--listen",
            "0.0.0.0:8080",
            "--service",
            "app",
            "--pod",
            "app",
        ],
    );
    app.wait_listening(8080);
    cp.write_manifest(
        "pod-app.yaml",
        &pod_yaml(&app, "app", &[("app", "app")], true),
    );
    app.mesh_with(&cp, "app", app_extra);
    let client = node.pod("client");
    cp.write_manifest(
        "pod-client.yaml",
        &pod_yaml(&client, "client", &[("app", "client")], true),
    );
    client.mesh_with(&cp, "client", client_extra);
    client.wait_endpoints("app.default:80", 1);
    let outsider = node.pod("outsider");
    Mesh {
        _node: node,
        _cp: cp,
        app,
        client,
        outsider,
    }
}

fn vip() -> SocketAddr {
    SocketAddr::new(APP_VIP.parse().expect("ip"), 80)
}

/// Writes `bytes` on a new connection while reading what comes back, until
/// the server closes it or `wait` passes (a server may answer and close
/// before it has read everything).
async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let s = TcpStream::connect(addr).await.expect("connect");
    let (mut r, mut w) = s.into_split();
    let bytes = bytes.to_vec();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&bytes).await;
        w
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(wait, r.read_to_end(&mut got)).await;
    writer.abort();
    String::from_utf8_lossy(&got).into_owned()
}

/// Good requests from another caller, one every `every`, each on the
/// client's keep-alive pool, until stopped; failures are kept.
struct Bystanders {
    ok: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Bystanders {
    fn start(every: Duration) -> Bystanders {
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (o, f, s) = (ok.clone(), failures.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            let mut inflight = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let (client, o, f) = (client.clone(), o.clone(), f.clone());
                inflight.push(tokio::spawn(async move {
                    let started = Instant::now();
                    let res = tokio::time::timeout(
                        Duration::from_secs(5),
                        client.get(format!("http://{}/", vip()).parse().expect("uri")),
                    )
                    .await;
                    match res {
                        Ok(Ok(r)) if r.status() == 200 => {
                            let _ = r.into_body().collect().await;
                            o.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Ok(r)) => f.lock().expect("lock").push(format!(
                            "{} {:?} after {:?}",
                            r.status(),
                            r.headers().get("weft-error"),
                            started.elapsed()
                        )),
                        Ok(Err(e)) => f.lock().expect("lock").push(format!("{e}")),
                        Err(_) => f
                            .lock()
                            .expect("lock")
                            .push("no answer within 5 s".to_string()),
                    }
                }));
                tokio::time::sleep(every).await;
            }
            for t in inflight {
                let _ = t.await;
            }
        });
        Bystanders {
            ok,
            failures,
            stop,
            task,
        }
    }

    /// Stops, and asserts every good request succeeded; returns how many.
    async fn all_succeeded(self, what: &str) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let failures = self.failures.lock().expect("lock").clone();
        let ok = self.ok.load(Ordering::Relaxed);
        assert!(
            failures.is_empty(),
            "{what}: {} of {} bystander requests failed: {:?}",
            failures.len(),
            ok + failures.len() as u64,
            &failures[..failures.len().min(10)]
        );
        assert!(ok > 0, "{what}: no bystander request was made");
        ok
    }
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn plaintext_callers_cannot_forge_the_mesh_headers() {
    weft_e2e::require_root();
    let m = mesh("attack_forge", &[], &[]);
    let app = m.app.addr(8080);
    // In permissive mode a client outside the mesh reaches the app in
    // plaintext, over HTTP/1.1 and h2c alike.
    let (h1, h2) = m.outsider.ns.block_on(async move {
        let forge = |b: http::request::Builder| {
            b.header("weft-client-id", spiffe("admin"))
                .header("weft-orig-proto", "HTTP/2")
                .header("Weft-Error", "forged")
                .body(Full::<Bytes>::default())
                .expect("request")
        };
        let h1 = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let res = h1
            .request(forge(Request::get(format!("http://{app}/headers"))))
            .await
            .expect("HTTP/1.1 from outside the mesh");
        let h1 = res.into_body().collect().await.expect("body").to_bytes();
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<Full<Bytes>>();
        let res = h2
            .request(forge(Request::get(format!("http://{app}/headers"))))
            .await
            .expect("h2c from outside the mesh");
        let h2 = res.into_body().collect().await.expect("body").to_bytes();
        (h1, h2)
    });
    for (proto, body) in [("HTTP/1.1", h1), ("h2c", h2)] {
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let forged: Vec<&String> = v["headers"]
            .as_object()
            .expect("headers")
            .keys()
            .filter(|k| k.starts_with("weft-"))
            .collect();
        assert!(
            forged.is_empty(),
            "{proto}: {forged:?} reached the app: {v}"
        );
    }
    // A meshed caller's identity still arrives.
    let body = m.client.ns.block_on(async move {
        let c = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let res = c
            .get(format!("http://{}/headers", vip()).parse().expect("uri"))
            .await
            .expect("request through the mesh");
        res.into_body().collect().await.expect("body").to_bytes()
    });
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["headers"]["weft-client-id"], spiffe("client"), "{v}");
}

#[test]
fn stalled_uploads_from_one_caller_cannot_starve_the_others() {
    weft_e2e::require_root();
    let m = mesh("attack_stall", &[], &[]);
    let pid = m.client.proxy_pid();
    let before = rss_kib(pid);
    let during = m.client.ns.block_on(async move {
        let bystanders = Bystanders::start(Duration::from_millis(20));
        // 250 uploads whose body never comes: each holds a stream to the peer.
        let mut stalled = Vec::new();
        for _ in 0..250 {
            let mut s = TcpStream::connect(vip()).await.expect("connect");
            s.write_all(
                format!("POST /echo HTTP/1.1\r\nhost: {APP_VIP}\r\ncontent-length: 100000\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("write");
            stalled.push(s);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let n = bystanders.all_succeeded("beside 250 stalled uploads").await;
        assert!(n > 50, "only {n} bystander requests");
        drop(stalled);
        n
    });
    let _ = during;
    // Memory comes back once the stalled uploads are gone (the allocator
    // returns freed pages within seconds).
    let mut after = rss_kib(pid);
    let deadline = Instant::now() + Duration::from_secs(30);
    while after >= before + 4 * 1024 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        after = rss_kib(pid);
    }
    assert!(
        after < before + 4 * 1024,
        "client proxy RSS {before} KiB before, still {after} KiB 30 s after the stalled uploads"
    );
}

#[test]
fn a_bad_request_fails_alone() {
    weft_e2e::require_root();
    let m = mesh("attack_bad_requests", &[], &[]);
    m.client.ns.block_on(async move {
        // 100 good requests in flight on the shared peer connection...
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let good: Vec<_> = (0..100)
            .map(|_| {
                let c = client.clone();
                tokio::spawn(async move {
                    let r = c
                        .get(format!("http://{}/delay/1500", vip()).parse().expect("uri"))
                        .await
                        .map_err(|e| e.to_string())?;
                    let status = r.status();
                    let _ = r.into_body().collect().await;
                    Ok::<_, String>(status)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // ...while bad ones arrive.
        let wait = Duration::from_secs(3);
        // Under the limit: it reaches the app.
        let big = "a".repeat(20 * 1024);
        let got = exchange(
            vip(),
            format!("GET / HTTP/1.1\r\nhost: {APP_VIP}\r\nconnection: close\r\nx-big: {big}\r\n\r\n")
                .as_bytes(),
            wait,
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 200"), "20 KiB header: {}", &got[..got.len().min(200)]);
        for kib in [70, 200, 390] {
            let big = "a".repeat(kib * 1024);
            let got = exchange(
                vip(),
                format!("GET / HTTP/1.1\r\nhost: {APP_VIP}\r\nx-big: {big}\r\n\r\n").as_bytes(),
                wait,
            )
            .await;
            assert!(
                got.starts_with("HTTP/1.1 431"),
                "{kib} KiB header: {}",
                &got[..got.len().min(200)]
            );
        }
        let long = format!("/{}", "a".repeat(20 * 1024));
        let got = exchange(
            vip(),
            format!("GET {long} HTTP/1.1\r\nhost: {APP_VIP}\r\n\r\n").as_bytes(),
            wait,
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 414"), "{}", &got[..got.len().min(200)]);
        let got = exchange(
            vip(),
            format!(
                "POST /delay/1000 HTTP/1.1\r\nhost: {APP_VIP}\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffffff\r\nx\r\n"
            )
            .as_bytes(),
            wait,
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 400"), "chunk-size overflow: {got}");
        assert!(got.contains("weft-error: bad-request"), "{got}");
        let got = exchange(vip(), b"GET / HTTP/1.1\r\nhost: a\r\nbad header\r\n\r\n", wait).await;
        assert!(got.starts_with("HTTP/1.1 400"), "malformed header: {got}");
        for g in good {
            let status = g.await.expect("task").expect("a good request failed");
            assert_eq!(status, 200);
        }
    });
    let defences = |reason: &str| {
        m.client.metric(&format!(
            r#"defences_total{{direction="outbound",reason="{reason}"}}"#
        ))
    };
    assert!(defences("headers_too_large") >= 3.0);
    assert!(defences("uri_too_long") >= 1.0);
    assert!(defences("malformed_request") >= 1.0);
}

#[test]
fn slow_and_idle_clients_are_cut_off() {
    weft_e2e::require_root();
    let limits = [
        "--header-read-timeout",
        "2s",
        "--client-idle-timeout",
        "4s",
        "--body-idle-timeout",
        "2s",
    ];
    let m = mesh(
        "attack_slow",
        &limits,
        &["--max-connections-per-source", "20"],
    );
    m.client.ns.block_on(async move {
        let bystanders = Bystanders::start(Duration::from_millis(50));
        // A head sent a byte a second (after its method, which tells HTTP
        // from other protocols).
        let started = Instant::now();
        let mut s = TcpStream::connect(vip()).await.expect("connect");
        s.write_all(b"GET ").await.expect("write");
        let mut closed = false;
        for b in b"/ HTTP/1.1\r\nhost: a\r\nx-slow: yes\r\n\r\n" {
            if s.write_all(&[*b]).await.is_err() {
                closed = true;
                break;
            }
            let mut buf = [0u8; 64];
            if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await
            {
                closed = true;
                break;
            }
        }
        assert!(closed, "a slowloris head was served");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // A keep-alive connection left idle.
        let started = Instant::now();
        let got = exchange(
            vip(),
            format!("GET / HTTP/1.1\r\nhost: {APP_VIP}\r\n\r\n").as_bytes(),
            Duration::from_secs(10),
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        let idle = started.elapsed();
        assert!(
            idle >= Duration::from_secs(3) && idle < Duration::from_secs(8),
            "an idle connection was closed after {idle:?} (idle timeout 4 s)"
        );
        // A body that stops coming.
        let got = exchange(
            vip(),
            format!(
                "POST /delay/5000 HTTP/1.1\r\nhost: {APP_VIP}\r\ncontent-length: 10\r\n\r\nabc"
            )
            .as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 408"), "{got}");
        assert!(got.contains("weft-error: request-body-timeout"), "{got}");
        bystanders.all_succeeded("beside slow clients").await;
    });
    let defences = |reason: &str| {
        m.client.metric(&format!(
            r#"defences_total{{direction="outbound",reason="{reason}"}}"#
        ))
    };
    assert!(defences("header_read_timeout") >= 1.0);
    assert!(defences("idle_timeout") >= 1.0);
    assert!(defences("body_idle_timeout") >= 1.0);

    // One source outside the mesh holds at most 20 connections to the app;
    // a meshed caller is not affected.
    let app = m.app.addr(8080);
    let refused = m.outsider.ns.block_on(async move {
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..30 {
            let mut s = TcpStream::connect(app).await.expect("connect");
            let _ = s
                .write_all(b"GET /delay/3000 HTTP/1.1\r\nhost: a\r\n\r\n")
                .await;
            held.push(s);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for s in &mut held {
            let mut buf = [0u8; 16];
            // Closed at once: an end of stream, or a reset (the request
            // was never read).
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await
            {
                refused += 1;
            }
        }
        refused
    });
    assert_eq!(refused, 10, "connections past the per-source cap");
    let ok = m.client.ns.block_on(async move {
        let c = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        c.get(format!("http://{}/", vip()).parse().expect("uri"))
            .await
            .map(|r| r.status())
    });
    assert_eq!(ok.expect("a meshed caller"), 200);
    assert!(
        m.app
            .metric(r#"defences_total{direction="inbound",reason="source_connection_cap"}"#)
            >= 10.0
    );
}

/// An HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The GOAWAY error codes in a stream of HTTP/2 frames from a server.
fn goaway_codes(mut b: &[u8]) -> Vec<u32> {
    let mut codes = Vec::new();
    while b.len() >= 9 {
        let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
        if b.len() < 9 + len {
            break;
        }
        if b[3] == 0x7 && len >= 8 {
            codes.push(u32::from_be_bytes([b[13], b[14], b[15], b[16]]));
        }
        b = &b[9 + len..];
    }
    codes
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const ENHANCE_YOUR_CALM: u32 = 0xb;

#[test]
fn control_frame_and_reset_floods_get_enhance_your_calm() {
    weft_e2e::require_root();
    let m = mesh(
        "attack_h2_floods",
        &["--h2-max-resets-per-second", "5"],
        &[],
    );
    m.client.ns.block_on(async move {
        let bystanders = Bystanders::start(Duration::from_millis(20));
        // A PING flood on an h2c connection to the outbound listener.
        let mut flood = PREFACE.to_vec();
        flood.extend(frame(0x4, 0, 0, &[]));
        for i in 0..3000u64 {
            flood.extend(frame(0x6, 0, 0, &i.to_be_bytes()));
        }
        let mut s = TcpStream::connect(vip()).await.expect("connect");
        let _ = s.write_all(&flood).await;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        assert!(
            goaway_codes(&got).contains(&ENHANCE_YOUR_CALM),
            "PING flood: GOAWAY codes {:?}",
            goaway_codes(&got)
        );
        // A steady stream of requests reset at once, under the burst limit
        // but over 5 a second.
        let mut s = TcpStream::connect(vip()).await.expect("connect");
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(0x4, 0, 0, &[]));
        s.write_all(&hello).await.expect("preface");
        // :method GET, :scheme http, :path /, :authority a (literal).
        let block = [0x82, 0x86, 0x84, 0x41, 0x01, b'a'];
        let mut got = Vec::new();
        let mut stream = 1u32;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            let mut burst = frame(0x1, 0x5, stream, &block);
            burst.extend(frame(0x3, 0, stream, &[0, 0, 0, 8]));
            stream += 2;
            if s.write_all(&burst).await.is_err() {
                break;
            }
            let mut buf = vec![0u8; 65536];
            match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut got)).await;
        assert!(
            goaway_codes(&got).contains(&ENHANCE_YOUR_CALM),
            "reset flood over {:?}: GOAWAY codes {:?}",
            started.elapsed(),
            goaway_codes(&got)
        );
        bystanders.all_succeeded("beside HTTP/2 floods").await;
    });
    let defences = |reason: &str| {
        m.client.metric(&format!(
            r#"defences_total{{direction="outbound",reason="{reason}"}}"#
        ))
    };
    assert!(defences("h2_control_flood") >= 1.0);
    assert!(defences("h2_reset_flood") >= 1.0);
}

#[test]
fn cancelled_requests_do_not_close_the_shared_peer_connection() {
    weft_e2e::require_root();
    let m = mesh("attack_cancel", &[], &[]);
    m.client.ns.block_on(async move {
        let bystanders = Bystanders::start(Duration::from_millis(10));
        for _ in 0..5 {
            // 200 requests on one h2c connection, then the client vanishes:
            // its sidecar resets them all on the shared peer connection.
            let mut s = TcpStream::connect(vip()).await.expect("connect");
            let mut burst = PREFACE.to_vec();
            burst.extend(frame(0x4, 0, 0, &[]));
            // :method GET, :scheme http, :path (literal /delay/5000), :authority a.
            let mut block = vec![0x82, 0x86, 0x44, 11];
            block.extend_from_slice(b"/delay/5000");
            block.extend_from_slice(&[0x41, 0x01, b'a']);
            for i in 0..200u32 {
                burst.extend(frame(0x1, 0x5, 2 * i + 1, &block));
            }
            s.write_all(&burst).await.expect("burst");
            drop(s);
            // And 200 HTTP/1.1 callers that give up at once.
            let mut gone = Vec::new();
            for _ in 0..200 {
                let mut c = TcpStream::connect(vip()).await.expect("connect");
                c.write_all(
                    format!("GET /delay/5000 HTTP/1.1\r\nhost: {APP_VIP}\r\n\r\n").as_bytes(),
                )
                .await
                .expect("write");
                gone.push(c);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(gone);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bystanders
            .all_succeeded("beside clients cancelling 200 requests at once")
            .await;
    });
}

#[test]
fn memory_returns_after_load() {
    weft_e2e::require_root();
    let m = mesh("attack_memory", &[], &[]);
    let pid = m.client.proxy_pid();
    let round = || {
        m.client.ns.block_on(async move {
            let mut held = Vec::new();
            for _ in 0..250 {
                let mut s = TcpStream::connect(vip()).await.expect("connect");
                s.write_all(
                    format!("GET /delay/2000 HTTP/1.1\r\nhost: {APP_VIP}\r\n\r\n").as_bytes(),
                )
                .await
                .expect("write");
                held.push(s);
            }
            for mut s in held {
                let mut buf = vec![0u8; 4096];
                let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                    .await
                    .expect("an answer")
                    .expect("read");
                assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            }
        })
    };
    // The lowest RSS over a quiet spell: the allocator gives freed pages
    // back over some seconds.
    let quiet = |secs: u32| {
        let mut low = u64::MAX;
        for _ in 0..secs {
            std::thread::sleep(Duration::from_secs(1));
            low = low.min(rss_kib(pid));
        }
        low
    };
    let idle = quiet(3);
    round();
    let first = quiet(15);
    for _ in 0..3 {
        round();
    }
    let mut last = rss_kib(pid);
    let deadline = Instant::now() + Duration::from_secs(30);
    while (last >= first + 3 * 1024 || last >= idle + 4 * 1024) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        last = rss_kib(pid);
    }
    assert!(
        last < first + 3 * 1024 && last < idle + 4 * 1024,
        "client proxy RSS (KiB): idle {idle}, after one round {first}, 30 s after four {last}"
    );
}

#[test]
fn refused_tls_is_logged_with_the_clients_address() {
    weft_e2e::require_root();
    let m = mesh("attack_tls_log", &[], &[]);
    let app = m.app.addr(8080);
    m.outsider.ns.block_on(async move {
        // A TLS record that is no ClientHello.
        let _ = exchange(
            app,
            &[0x16, 0x03, 0x01, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef],
            Duration::from_secs(2),
        )
        .await;
    });
    weft_e2e::eventually("the refusal counted", Duration::from_secs(5), || {
        m.app
            .metric(r#"tls_errors_total{direction="inbound",reason="other"}"#)
            >= 1.0
    });
    m.app
        .assert_proxy_log_contains(&format!("TLS from {}:", m.outsider.ip));
}

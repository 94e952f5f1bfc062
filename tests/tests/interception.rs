//! Transparent interception end to end: pod A's client reaches pod B's server
//! through A's outbound and B's inbound sidecars, installed by
//! `weft-proxy init` with real iptables in real network namespaces.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_e2e::client::{self, pattern};
use weft_e2e::{Node, Pod, bins, eventually};

const ECHO: u16 = 7000;
const DIGEST: u16 = 7001;
const HTTP: u16 = 8080;

// Sidecars without identities: plaintext, no peer.
const OUT_OPEN: &str = r#"tcp_open_total{direction="outbound",tls="false",peer_identity=""}"#;
const OUT_CLOSE: &str = r#"tcp_close_total{direction="outbound",tls="false",peer_identity=""}"#;
const IN_OPEN: &str = r#"tcp_open_total{direction="inbound",tls="false",peer_identity=""}"#;
const IN_CLOSE: &str = r#"tcp_close_total{direction="inbound",tls="false",peer_identity=""}"#;
const IN_ERRORS: &str = r#"tcp_forward_errors_total{direction="inbound"}"#;

struct Mesh {
    client: Arc<Pod>,
    server: Arc<Pod>,
    client_proxy: Arc<weft_e2e::Process>,
    _node: Node,
}

/// Two meshed pods; the server runs an echo, a digest and an HTTP server.
fn mesh(test: &str) -> Mesh {
    let node = Node::new(test);
    let client = node.pod("client");
    let server = node.pod("server");
    let app = bins::test_app();
    let echo = format!("0.0.0.0:{ECHO}");
    let digest = format!("0.0.0.0:{DIGEST}");
    let http = format!("0.0.0.0:{HTTP}");
    server.spawn("echo", &app, &["tcp", "--listen", &echo, "--mode", "echo"]);
    server.spawn(
        "digest",
        &app,
        &["tcp", "--listen", &digest, "--mode", "digest"],
    );
    server.spawn(
        "http",
        &app,
        &[
            "http",
            "--listen",
            &http,
            "--service",
            "server",
            "--pod",
            "server-0",
        ],
    );
    for port in [ECHO, DIGEST, HTTP] {
        server.wait_listening(port);
    }
    let client_proxy = client.mesh();
    server.mesh();
    Mesh {
        client,
        server,
        client_proxy,
        _node: node,
    }
}

#[test]
fn ten_mib_each_way_arrive_intact_through_both_sidecars() {
    let m = mesh("ten_mib");
    let dst = m.server.addr(ECHO);
    let sent = pattern(10 << 20, 7);
    let expected = sent.clone();
    let got = m.client.ns.block_on(async move {
        let s = TcpStream::connect(dst)
            .await
            .expect("connect through the mesh");
        let (mut r, mut w) = s.into_split();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.expect("write");
            w.shutdown().await.expect("half-close");
        });
        let mut got = Vec::with_capacity(10 << 20);
        r.read_to_end(&mut got).await.expect("read the echo");
        writer.await.expect("writer");
        got
    });
    assert_eq!(got.len(), expected.len(), "echoed length");
    assert!(got == expected, "the echo differs from what was sent");

    // Both hops carried it: one connection each, every byte counted.
    let ten = (10u64 << 20) as f64;
    eventually(
        "both sidecars count the connection closed",
        Duration::from_secs(5),
        || m.client.metric(OUT_CLOSE) == 1.0 && m.server.metric(IN_CLOSE) == 1.0,
    );
    assert_eq!(m.client.metric(OUT_OPEN), 1.0);
    assert_eq!(m.server.metric(IN_OPEN), 1.0);
    for (pod, dir) in [(&m.client, "outbound"), (&m.server, "inbound")] {
        let labels = format!(r#"{{direction="{dir}",tls="false",peer_identity=""}}"#);
        let read = pod.metric(&format!("tcp_read_bytes_total{labels}"));
        let written = pod.metric(&format!("tcp_write_bytes_total{labels}"));
        assert_eq!((read, written), (ten, ten), "{} {dir} bytes", pod.name);
    }
}

#[test]
fn half_close_still_delivers_the_answer() {
    let m = mesh("half_close");
    let dst = m.server.addr(DIGEST);
    let sent = pattern(1 << 20, 3);
    let want = format!(
        "{} {}\n",
        sent.len(),
        Sha256::digest(&sent)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let answer = m.client.ns.block_on(async move {
        let mut s = TcpStream::connect(dst).await.expect("connect");
        s.write_all(&sent).await.expect("write");
        // The server answers only after it sees our EOF.
        s.shutdown().await.expect("shutdown(WR)");
        let mut answer = String::new();
        s.read_to_string(&mut answer)
            .await
            .expect("read the answer");
        answer
    });
    assert_eq!(answer, want);
}

#[test]
fn http_passes_through_both_sidecars() {
    let m = mesh("http");
    let dst = m.server.addr(HTTP);
    let (root, teapot, headers, echo, h2) = m.client.ns.block_on(async move {
        let body = bytes::Bytes::from(pattern(256 << 10, 9));
        (
            client::get(dst, "/").await,
            client::get(dst, "/status/418").await,
            client::get(dst, "/headers").await,
            client::http(http::Method::POST, dst, "/echo", body, false).await,
            client::http(http::Method::GET, dst, "/", bytes::Bytes::new(), true).await,
        )
    });
    let root = root.expect("GET /");
    assert_eq!(root.status, 200);
    assert_eq!(root.json()["service"], "server");
    assert_eq!(root.headers["x-served-by"], "server-0");
    assert_eq!(teapot.expect("GET /status/418").status, 418);
    let headers = headers.expect("GET /headers").json();
    assert_eq!(headers["headers"]["host"], dst.to_string());
    let echo = echo.expect("POST /echo");
    assert_eq!(echo.body.as_ref(), pattern(256 << 10, 9).as_slice());
    let h2 = h2.expect("h2c GET /");
    assert_eq!(
        (h2.status.as_u16(), h2.json()["pod"].as_str()),
        (200, Some("server-0"))
    );
}

#[test]
fn the_proxys_own_traffic_is_not_redirected() {
    let m = mesh("no_loop");
    // A process running as the proxy's UID goes straight out...
    let url = format!("http://{}/", m.server.addr(HTTP));
    let proxy_uid = weft_api::defaults::PROXY_UID;
    let p = m
        .client
        .spawn_as(proxy_uid, "as-proxy-uid", bins::test_app(), &["get", &url]);
    let status = p
        .wait_timeout(Duration::from_secs(10))
        .expect("get finished");
    assert!(status.success(), "GET as the proxy UID failed: {}", p.log());
    assert!(p.log().contains("server-0"));
    // ...so the client's outbound listener never saw it; the server's inbound did.
    assert_eq!(m.client.metric(OUT_OPEN), 0.0);
    eventually(
        "the server's inbound counts it",
        Duration::from_secs(5),
        || m.server.metric(IN_OPEN) == 1.0,
    );
}

#[test]
fn inbound_refuses_a_connection_to_its_own_listener() {
    let m = mesh("inbound_loop");
    let own = m.server.addr(weft_api::defaults::INBOUND_PORT);
    let got = m.client.ns.block_on(async move {
        let mut s = TcpStream::connect(own).await.expect("connect");
        let _ = s.write_all(b"hello").await;
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        got
    });
    assert!(got.is_empty(), "a looping connection carried bytes");
    eventually("the refusal is counted", Duration::from_secs(5), || {
        m.server.metric(IN_ERRORS) == 1.0
    });
    // And the proxy still serves.
    let dst = m.server.addr(HTTP);
    let r = m
        .client
        .ns
        .block_on(client::get(dst, "/"))
        .expect("GET after the loop");
    assert_eq!(r.status, 200);
}

#[test]
fn after_remove_traffic_flows_direct() {
    let m = mesh("remove");
    let dst = m.server.addr(HTTP);
    assert_eq!(
        m.client
            .ns
            .block_on(client::get(dst, "/"))
            .expect("meshed GET")
            .status,
        200
    );
    assert_eq!(m.client.metric(OUT_OPEN), 1.0);

    m.client.init(&["--remove"]);
    let save = m.client.exec("iptables-save", &["-t", "nat"]);
    assert!(!String::from_utf8_lossy(&save.stdout).contains("WEFT"));

    let r = m
        .client
        .ns
        .block_on(client::get(dst, "/"))
        .expect("direct GET");
    assert_eq!(r.status, 200);
    assert_eq!(
        m.client.metric(OUT_OPEN),
        1.0,
        "the removed rules still redirect"
    );
    assert!(m.client_proxy.is_running());
}

#[test]
fn shutdown_drains_open_connections_then_exits_zero() {
    let m = mesh("drain");
    let dst = m.server.addr(ECHO);
    let client = m.client.clone();
    let proxy = m.client_proxy.clone();
    m.client.ns.block_on(async move {
        let mut s = TcpStream::connect(dst).await.expect("connect");
        let mut buf = [0u8; 5];
        s.write_all(b"first").await.expect("write");
        s.read_exact(&mut buf).await.expect("echo");

        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], weft_api::defaults::ADMIN_PORT));
        let r = client::http(
            http::Method::POST,
            admin,
            "/shutdown",
            bytes::Bytes::new(),
            false,
        )
        .await
        .expect("POST /shutdown");
        assert_eq!(r.status, 200);
        let ready = client::get(admin, "/ready").await.expect("GET /ready");
        assert_eq!(ready.status, 503, "a draining proxy must not be ready");

        // New connections are no longer accepted...
        assert!(
            TcpStream::connect(dst).await.is_err(),
            "a draining proxy accepted"
        );
        // ...while the open one goes on.
        s.write_all(b"later").await.expect("write while draining");
        s.read_exact(&mut buf).await.expect("echo while draining");
        assert_eq!(&buf, b"later");
        assert!(proxy.is_running());
    });
    let status = m
        .client_proxy
        .wait_timeout(Duration::from_secs(10))
        .expect("proxy exited");
    assert!(status.success(), "exit status {status:?}");
    drop(client);
}

#[test]
fn sigterm_waits_for_the_drain_deadline_then_exits_zero() {
    let node = Node::new("sigterm");
    let pod = node.pod("solo");
    pod.spawn(
        "echo",
        bins::test_app(),
        &["tcp", "--listen", "127.0.0.1:7000"],
    );
    pod.wait_listening(7000);
    let proxy = pod.start_proxy(&[
        "--outbound-listen",
        "127.0.0.1:5000",
        "--outbound-target",
        "127.0.0.1:7000",
        "--drain-timeout",
        "1s",
    ]);
    let p = proxy.clone();
    let (elapsed, closed) = pod.ns.block_on(async move {
        let mut s = TcpStream::connect("127.0.0.1:5000").await.expect("connect");
        s.write_all(b"x").await.expect("write");
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.expect("echo");
        let start = Instant::now();
        p.signal(nix::sys::signal::Signal::SIGTERM);
        // The idle connection is closed at the deadline, not before.
        let n = s.read(&mut b).await.unwrap_or(0);
        (start.elapsed(), n == 0)
    });
    assert!(closed);
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed after {elapsed:?}"
    );
    let status = proxy
        .wait_timeout(Duration::from_secs(5))
        .expect("proxy exited");
    assert!(status.success(), "exit status {status:?}");
    assert!(proxy.log().contains("drain deadline passed"));
}

#[test]
fn explicit_mode_forwards_to_configured_targets_without_iptables() {
    let node = Node::new("explicit");
    let pod = node.pod("solo");
    pod.spawn(
        "http",
        bins::test_app(),
        &["http", "--listen", "127.0.0.1:8080", "--pod", "explicit-0"],
    );
    pod.wait_listening(8080);
    // outbound :5000 -> inbound :6000 -> app :8080, as a client and server
    // sidecar pair would be wired without interception.
    pod.start_proxy(&[
        "--outbound-listen",
        "127.0.0.1:5000",
        "--outbound-target",
        "127.0.0.1:6000",
        "--inbound-listen",
        "127.0.0.1:6000",
        "--inbound-target",
        "127.0.0.1:8080",
    ]);
    let r = pod
        .ns
        .block_on(client::get("127.0.0.1:5000".parse().expect("addr"), "/"))
        .expect("GET through explicit mode");
    assert_eq!(r.json()["pod"], "explicit-0");
    assert_eq!(pod.metric(OUT_OPEN), 1.0);
    assert_eq!(pod.metric(IN_OPEN), 1.0);
}

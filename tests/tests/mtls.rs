//! Identity and mutual TLS between sidecars, with a real control plane issuing
//! certificates, real iptables, and real rustls on both ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use weft_api::tls::{self as wtls, CertSlot, TrustAnchors};
use weft_e2e::capture::{self, Capture};
use weft_e2e::client::pattern;
use weft_e2e::{ControlPlane, Node, Pod, bins, eventually, spiffe};

const ECHO: u16 = 7000;
const HTTP: u16 = 8080;

struct Mesh {
    node: Node,
    cp: ControlPlane,
    client: Arc<Pod>,
    server: Arc<Pod>,
}

fn start_servers(pod: &Pod) {
    let app = bins::test_app();
    let echo = format!("0.0.0.0:{ECHO}");
    let http = format!("0.0.0.0:{HTTP}");
    pod.spawn("echo", &app, &["tcp", "--listen", &echo]);
    pod.spawn(
        "http",
        &app,
        &["http", "--listen", &http, "--pod", &pod.name],
    );
    pod.wait_listening(ECHO);
    pod.wait_listening(HTTP);
}

/// A control plane, a server pod (sa `server`) and a client pod (sa `client`)
/// that expects the server's identity at the server's address.
fn mesh(test: &str, lifetime: &str, server_args: &[&str], client_peer: &str) -> Mesh {
    let node = Node::new(test);
    let cp = ControlPlane::start(&node, lifetime);
    let server = node.pod("server");
    let client = node.pod("client");
    start_servers(&server);
    server.mesh_with(&cp, "server", server_args);
    let peer = format!("{}={}", server.ip, spiffe(client_peer));
    client.mesh_with(&cp, "client", &["--peer-identity", &peer]);
    Mesh {
        node,
        cp,
        client,
        server,
    }
}

fn metric(pod: &Pod, series: &str) -> f64 {
    pod.metric(series)
}

/// Sends `data` over a fresh connection, half-closes, returns what came back.
async fn echo_once(dst: std::net::SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(dst).await?;
    s.write_all(data).await?;
    s.shutdown().await?;
    let mut got = Vec::new();
    s.read_to_end(&mut got).await?;
    Ok(got)
}

#[test]
fn sidecars_speak_mtls_and_no_plaintext_crosses_the_wire() {
    let m = mesh("mtls_wire", "1h", &[], "server");
    let marker = b"WEFT-SECRET-MARKER-meshed-0123456789";
    let control = b"WEFT-VISIBLE-MARKER-plain-9876543210";
    let pcap = m.node.logs().join("bridge.pcap");
    // Every veth port of the bridge (bridged frames do not pass br0 itself).
    let cap = Capture::start(m.node.bridge(), "any", pcap);

    let mut data = pattern(1 << 20, 5);
    data[1000..1000 + marker.len()].copy_from_slice(marker);
    let sent = data.clone();
    let got = m
        .client
        .ns
        .block_on(echo_once(m.server.addr(ECHO), &sent))
        .expect("echo through the mesh");
    assert!(got == data, "the echo differs ({} bytes back)", got.len());

    // A positive control: the proxy's UID bypasses the mesh, so this request
    // crosses the bridge in plaintext and must show up in the capture.
    let url = format!(
        "http://{}/{}",
        m.server.addr(HTTP),
        String::from_utf8_lossy(control)
    );
    let p = m
        .client
        .spawn_as(2420, "plain-get", bins::test_app(), &["get", &url]);
    p.wait_timeout(Duration::from_secs(10))
        .expect("plain GET finished");

    let bytes = cap.stop();
    assert!(
        capture::contains(&bytes, control),
        "the capture missed the plaintext control"
    );
    assert!(
        !capture::contains(&bytes, marker),
        "application bytes crossed the bridge in plaintext"
    );

    // Both sides know who the other is.
    let out = format!(
        r#"tls_sessions_total{{direction="outbound",peer_identity="{}"}}"#,
        spiffe("server")
    );
    let inb = format!(
        r#"tls_sessions_total{{direction="inbound",peer_identity="{}"}}"#,
        spiffe("client")
    );
    assert_eq!(metric(&m.client, &out), 1.0);
    eventually(
        "the server records the client identity",
        Duration::from_secs(5),
        || metric(&m.server, &inb) == 1.0,
    );
    // The TCP metrics carry the peer and the TLS status, bytes included.
    let tcp = |dir: &str, peer: &str| {
        format!(
            r#"{{direction="{dir}",tls="true",peer_identity="{}"}}"#,
            spiffe(peer)
        )
    };
    let (out, inb) = (tcp("outbound", "server"), tcp("inbound", "client"));
    eventually("both sides count the close", Duration::from_secs(5), || {
        metric(&m.client, &format!("tcp_close_total{out}")) == 1.0
            && metric(&m.server, &format!("tcp_close_total{inb}")) == 1.0
    });
    for (pod, labels) in [(&m.client, &out), (&m.server, &inb)] {
        let read = metric(pod, &format!("tcp_read_bytes_total{labels}"));
        assert!(read >= sent.len() as f64, "{} read {read} bytes", pod.name);
    }
    assert!(
        m.cp.metrics()
            .contains("identity_certificates_issued_total 2")
    );
}

/// A client certificate and key for `uri`, signed by the given CA.
fn leaf(
    uri: &str,
    issuer: &Issuer<'_, KeyPair>,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(uri.try_into().expect("uri"))];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let cert = p.signed_by(&key, issuer).expect("sign");
    (
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

fn mesh_issuer(cp: &ControlPlane) -> Issuer<'static, KeyPair> {
    let cert = std::fs::read_to_string(cp.ca_dir().join("ca.crt")).expect("ca.crt");
    let key =
        KeyPair::from_pem(&std::fs::read_to_string(cp.ca_dir().join("ca.key")).expect("ca.key"))
            .expect("key");
    Issuer::from_ca_cert_pem(&cert, key).expect("issuer")
}

fn other_issuer() -> Issuer<'static, KeyPair> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = p.self_signed(&key).expect("self-signed");
    Issuer::from_ca_cert_der(cert.der(), key).expect("issuer")
}

/// An in-process TLS client from an un-meshed pod: presents `cert` (if any),
/// accepts the server as `spiffe("server")`, and tries an echo.
async fn tls_echo(
    dst: std::net::SocketAddr,
    anchors: Vec<CertificateDer<'static>>,
    cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Vec<u8>, String> {
    let slot = CertSlot::default();
    if let Some((chain, key)) = cert {
        slot.set(chain, key).map_err(|e| e.to_string())?;
    }
    let anchors = TrustAnchors::new(anchors).map_err(|e| e.to_string())?;
    let expected = spiffe("server").parse().map_err(|e| format!("{e}"))?;
    let cfg = wtls::client_config(slot, anchors, expected, &[wtls::ALPN_TCP])
        .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(dst).await.map_err(|e| e.to_string())?;
    let mut tls = TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::IpAddress(dst.ip().into()), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"hello")
        .await
        .map_err(|e| format!("write: {e}"))?;
    tls.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
    let mut got = Vec::new();
    tls.read_to_end(&mut got)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(got)
}

#[test]
fn peers_without_the_right_identity_are_refused() {
    let m = mesh("mtls_refusals", "1h", &[], "server");
    let outsider = m.node.pod("outsider");
    let dst = m.server.addr(ECHO);
    let anchors: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(m.cp.ca_cert())
        .expect("ca.crt")
        .collect::<Result<_, _>>()
        .expect("parse ca.crt");
    let mesh_ca = mesh_issuer(&m.cp);

    // The right mesh certificate works: the control for the refusals below.
    let ok = outsider.ns.block_on(tls_echo(
        dst,
        anchors.clone(),
        Some(leaf(&spiffe("client"), &mesh_ca)),
    ));
    assert_eq!(ok.as_deref(), Ok(&b"hello"[..]));

    let cases = [
        ("no certificate", None, "no_client_certificate"),
        (
            "another CA",
            Some(leaf(&spiffe("client"), &other_issuer())),
            "untrusted_certificate",
        ),
        (
            "a foreign trust domain",
            Some(leaf("spiffe://evil.example/ns/default/sa/client", &mesh_ca)),
            "foreign_identity",
        ),
    ];
    for (what, cert, reason) in cases {
        let res = outsider.ns.block_on(tls_echo(dst, anchors.clone(), cert));
        assert!(
            !matches!(&res, Ok(b) if b.as_slice() == b"hello"),
            "a client with {what} was served: {res:?}"
        );
        let series = format!(r#"tls_errors_total{{direction="inbound",reason="{reason}"}}"#);
        eventually(
            &format!("the server counts {what} as {reason}"),
            Duration::from_secs(5),
            || metric(&m.server, &series) == 1.0,
        );
    }

    // The client side refuses a server that is not who it should be.
    let impostor = m.node.pod("impostor");
    start_servers(&impostor);
    impostor.mesh_with(&m.cp, "impostor", &[]);
    let peer = format!("{}={}", impostor.ip, spiffe("server"));
    let client2 = m.node.pod("client2");
    client2.mesh_with(&m.cp, "client", &["--peer-identity", &peer]);
    let res = client2
        .ns
        .block_on(echo_once(impostor.addr(ECHO), b"secret"));
    assert!(
        !matches!(&res, Ok(b) if b == b"secret"),
        "the impostor was trusted: {res:?}"
    );
    let series = r#"tls_errors_total{direction="outbound",reason="identity_mismatch"}"#;
    eventually(
        "the client counts the mismatch",
        Duration::from_secs(5),
        || metric(&client2, series) == 1.0,
    );
    client2.assert_proxy_log_contains("peer identity mismatch");
}

#[test]
fn strict_mode_refuses_plaintext_and_permissive_serves_it() {
    let m = mesh(
        "mtls_modes",
        "1h",
        &["--inbound-mtls-mode", "strict"],
        "server",
    );
    let outsider = m.node.pod("outsider");
    // Meshed clients still get through a strict server.
    let got = m
        .client
        .ns
        .block_on(echo_once(m.server.addr(ECHO), b"meshed"))
        .expect("meshed echo");
    assert_eq!(got, b"meshed");
    // Plaintext from outside the mesh does not.
    let res = outsider
        .ns
        .block_on(echo_once(m.server.addr(ECHO), b"plain"));
    assert!(
        !matches!(&res, Ok(b) if b == b"plain"),
        "strict mode served plaintext: {res:?}"
    );
    eventually("the refusal is counted", Duration::from_secs(5), || {
        metric(
            &m.server,
            r#"tls_errors_total{direction="inbound",reason="plaintext_refused"}"#,
        ) == 1.0
    });

    // A permissive server (the default) serves the same plaintext client.
    let relaxed = m.node.pod("relaxed");
    start_servers(&relaxed);
    relaxed.mesh_with(&m.cp, "relaxed", &[]);
    let got = outsider
        .ns
        .block_on(echo_once(relaxed.addr(ECHO), b"plain"))
        .expect("permissive echo");
    assert_eq!(got, b"plain");
}

const RENEWED: &str = r#"identity_cert_renewals_total{result="ok"}"#;
const RENEW_FAILED: &str = r#"identity_cert_renewals_total{result="failed"}"#;

/// Drives a long-lived connection and a stream of new ones until `stop`,
/// counting successes and failures.
fn traffic(pod: &Pod, dst: std::net::SocketAddr, run_for: Duration) -> (u64, u64) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (ok2, failed2) = (ok.clone(), failed.clone());
    pod.ns.block_on(async move {
        let deadline = tokio::time::Instant::now() + run_for;
        let (ok3, failed3) = (ok2.clone(), failed2.clone());
        let long = tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(dst).await else {
                failed3.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let mut buf = [0u8; 8];
            let mut i = 0u64;
            while tokio::time::Instant::now() < deadline {
                i += 1;
                let msg = i.to_be_bytes();
                let res = async {
                    s.write_all(&msg).await?;
                    s.read_exact(&mut buf).await?;
                    Ok::<_, std::io::Error>(buf == msg)
                }
                .await;
                match res {
                    Ok(true) => ok3.fetch_add(1, Ordering::Relaxed),
                    _ => {
                        failed3.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        while tokio::time::Instant::now() < deadline {
            match echo_once(dst, b"new connection").await {
                Ok(b) if b == b"new connection" => ok2.fetch_add(1, Ordering::Relaxed),
                _ => failed2.fetch_add(1, Ordering::Relaxed),
            };
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = long.await;
    });
    (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

#[test]
fn certificates_rotate_under_traffic_without_a_failure() {
    let m = mesh("mtls_rotation", "10s", &[], "server");
    let (ok, failed) = traffic(&m.client, m.server.addr(ECHO), Duration::from_secs(40));
    assert_eq!(
        failed, 0,
        "{failed} failures ({ok} successes) while certificates rotated"
    );
    assert!(ok > 500, "too little traffic: {ok}");
    for pod in [&m.client, &m.server] {
        // The first certificate plus at least three renewals.
        let renewed = metric(pod, RENEWED);
        assert!(renewed >= 4.0, "{} renewed only {renewed} times", pod.name);
        assert_eq!(metric(pod, RENEW_FAILED), 0.0);
    }
}

#[test]
fn traffic_survives_a_control_plane_outage_and_renewals_resume() {
    let m = mesh("mtls_outage", "30s", &[], "server");
    m.cp.stop();
    // Keep traffic going until a renewal has failed (at ~70% of 30s).
    let deadline = Instant::now() + Duration::from_secs(28);
    let mut total = (0, 0);
    while metric(&m.client, RENEW_FAILED) == 0.0 {
        assert!(
            Instant::now() < deadline,
            "no renewal was attempted while the control plane was down"
        );
        let (ok, failed) = traffic(&m.client, m.server.addr(ECHO), Duration::from_secs(2));
        total = (total.0 + ok, total.1 + failed);
    }
    assert_eq!(
        total.1, 0,
        "{} failures while the control plane was down",
        total.1
    );
    assert!(total.0 > 50);

    m.cp.restart();
    eventually("renewals resume", Duration::from_secs(10), || {
        metric(&m.client, RENEWED) >= 2.0
    });
    let (ok, failed) = traffic(&m.client, m.server.addr(ECHO), Duration::from_secs(2));
    assert_eq!((failed, ok > 10), (0, true));
}

#[test]
fn certify_refuses_bad_requests_and_issues_nothing() {
    use weft_api::v1::CertifyRequest;
    use weft_api::v1::identity_client::IdentityClient;

    let node = Node::new("certify_bad");
    let cp = ControlPlane::start(&node, "1h");
    let token = cp.token_for("web");
    let anchors = TrustAnchors::new(
        CertificateDer::pem_file_iter(cp.ca_cert())
            .expect("ca.crt")
            .collect::<Result<Vec<_>, _>>()
            .expect("parse"),
    )
    .expect("anchors");
    let cfg = wtls::client_config(
        CertSlot::default(),
        anchors,
        "spiffe://cluster.local/ns/weft-system/sa/weft-control"
            .parse()
            .expect("id"),
        &[wtls::ALPN_H2],
    )
    .expect("config");
    let addr = cp.grpc_addr().to_string();
    let csr = |uri: &str| {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(uri.try_into().expect("uri"))];
        p.serialize_request(&key).expect("csr").der().to_vec()
    };
    let cases = vec![
        (
            "garbage CSR",
            token.clone(),
            b"not a csr".to_vec(),
            tonic::Code::InvalidArgument,
        ),
        (
            "SAN mismatch",
            token.clone(),
            csr(&spiffe("admin")),
            tonic::Code::PermissionDenied,
        ),
        (
            "unknown token",
            "nope".to_string(),
            csr(&spiffe("web")),
            tonic::Code::Unauthenticated,
        ),
        (
            "no token",
            String::new(),
            csr(&spiffe("web")),
            tonic::Code::Unauthenticated,
        ),
    ];
    let channel = || {
        let (addr, cfg) = (addr.clone(), Arc::new(cfg.clone()));
        move || IdentityClient::new(weft_api::grpc::connect_lazy(addr, cfg))
    };
    for (what, token, csr_der, code) in cases {
        let client = channel();
        let res = cp
            .pod
            .ns
            .block_on(async move { client().certify(CertifyRequest { token, csr_der }).await });
        match res {
            Err(status) => {
                assert_eq!(status.code(), code, "{what}: {}", status.message());
                assert!(!status.message().is_empty(), "{what}: empty message");
            }
            Ok(_) => panic!("{what} was accepted"),
        }
    }
    let metrics = cp.metrics();
    assert!(
        metrics.contains(r#"identity_certify_rejected_total{reason="bad_csr"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"identity_certify_rejected_total{reason="identity_mismatch"} 1"#));
    assert!(metrics.contains(r#"identity_certify_rejected_total{reason="token"} 2"#));
    assert!(
        metrics.contains("identity_certificates_issued_total 0"),
        "{metrics}"
    );

    // The refusals changed nothing: a good request is still served.
    let client = channel();
    let good_csr = csr(&spiffe("web"));
    let good = cp
        .pod
        .ns
        .block_on(async move {
            client()
                .certify(CertifyRequest {
                    token,
                    csr_der: good_csr,
                })
                .await
        })
        .expect("a good request is still served")
        .into_inner();
    assert_eq!(
        weft_api::SpiffeId::from_certificate(&good.leaf_der)[0].to_string(),
        spiffe("web")
    );
    assert!(
        cp.metrics()
            .contains("identity_certificates_issued_total 1")
    );
}

/// Writes a fresh leaf for `uri` as `<name>.crt` / `<name>.key` (PEM).
fn write_identity(dir: &std::path::Path, name: &str, uri: &str, ca: &Issuer<'_, KeyPair>) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(uri.try_into().expect("uri"))];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let cert = p.signed_by(&key, ca).expect("sign");
    std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).expect("writing a certificate");
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("writing a key");
}

#[test]
fn identity_from_files_works_without_a_control_plane_and_reloads() {
    let node = Node::new("mtls_files");
    let pod = node.pod("solo");
    let dir = node.logs().join("pki");
    std::fs::create_dir_all(&dir).expect("pki dir");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let root = p.self_signed(&key).expect("root");
    std::fs::write(dir.join("roots.crt"), root.pem()).expect("roots.crt");
    let ca = Issuer::from_ca_cert_der(root.der(), key).expect("issuer");
    write_identity(&dir, "client", &spiffe("client"), &ca);
    write_identity(&dir, "server", &spiffe("server"), &ca);
    let f = |n: &str| dir.join(n).to_str().expect("utf-8").to_string();

    pod.spawn(
        "echo",
        bins::test_app(),
        &["tcp", "--listen", "127.0.0.1:7000"],
    );
    pod.wait_listening(7000);
    // Explicit mode, as the benchmarks run it: client proxy :5000 -> mTLS ->
    // server proxy :6000 -> app :7000.
    let server_id = spiffe("server");
    let server_args = [
        "--no-outbound",
        "--admin-listen",
        "127.0.0.1:4192",
        "--inbound-listen",
        "127.0.0.1:6000",
        "--inbound-target",
        "127.0.0.1:7000",
        "--inbound-mtls-mode",
        "strict",
        "--identity-cert",
        &f("server.crt"),
        "--identity-key",
        &f("server.key"),
        "--trust-anchors",
        &f("roots.crt"),
    ];
    pod.spawn_as(
        2420,
        "server-proxy",
        bins::proxy(),
        &[&["run"][..], &server_args].concat(),
    );
    pod.wait_listening(6000);
    pod.start_proxy(&[
        "--no-inbound",
        "--outbound-listen",
        "127.0.0.1:5000",
        "--outbound-target",
        "127.0.0.1:6000",
        "--outbound-target-identity",
        &server_id,
        "--identity-cert",
        &f("client.crt"),
        "--identity-key",
        &f("client.key"),
        "--trust-anchors",
        &f("roots.crt"),
    ]);
    let dst: std::net::SocketAddr = "127.0.0.1:5000".parse().expect("addr");
    let got = pod
        .ns
        .block_on(echo_once(dst, b"over files"))
        .expect("echo");
    assert_eq!(got, b"over files");
    assert_eq!(pod.metric(RENEWED), 1.0);
    let sessions =
        format!(r#"tls_sessions_total{{direction="outbound",peer_identity="{server_id}"}}"#);
    assert_eq!(pod.metric(&sessions), 1.0);

    // A new certificate on disk is picked up...
    write_identity(&dir, "client", &spiffe("client"), &ca);
    eventually("the new files are loaded", Duration::from_secs(10), || {
        pod.metric(RENEWED) == 2.0
    });
    assert_eq!(
        pod.ns.block_on(echo_once(dst, b"again")).expect("echo"),
        b"again"
    );
    // ...and a broken one is refused while the old identity keeps serving.
    std::fs::write(dir.join("client.crt"), "garbage").expect("write");
    eventually(
        "the broken files are refused",
        Duration::from_secs(10),
        || pod.metric(RENEW_FAILED) == 1.0,
    );
    assert_eq!(
        pod.ns.block_on(echo_once(dst, b"still")).expect("echo"),
        b"still"
    );
}

/// New connections per second through a sidecar pair, each one a full mTLS
/// handshake between the sidecars. A measurement, not a pass/fail test:
/// `cargo test -p weft-e2e --release --test mtls -- --ignored --nocapture new_connection_rate`.
#[test]
#[ignore]
fn new_connection_rate() {
    let run = |m: &Mesh| {
        let dst = m.server.addr(ECHO);
        m.client.ns.block_on(async move {
            let secs = 5;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
            let mut tasks = Vec::new();
            for _ in 0..16 {
                tasks.push(tokio::spawn(async move {
                    let (mut ok, mut failed) = (0u64, 0u64);
                    while tokio::time::Instant::now() < deadline {
                        match echo_once(dst, b"x").await {
                            Ok(b) if b == b"x" => ok += 1,
                            _ => failed += 1,
                        }
                    }
                    (ok, failed)
                }));
            }
            let (mut ok, mut failed) = (0, 0);
            for t in tasks {
                let (o, f) = t.await.unwrap_or((0, 1));
                ok += o;
                failed += f;
            }
            (ok as f64 / secs as f64, failed)
        })
    };
    let tls = mesh("conn_rate_tls", "1h", &[], "server");
    let (rate, failed) = run(&tls);
    println!("mTLS sidecar pair: {rate:.0} new connections/s ({failed} failed)");
    drop(tls);
    let node = Node::new("conn_rate_plain");
    let server = node.pod("server");
    let client = node.pod("client");
    start_servers(&server);
    server.mesh();
    client.mesh();
    let dst = server.addr(ECHO);
    let plain = client.ns.block_on(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut n = 0u64;
        let mut tasks = Vec::new();
        for _ in 0..16 {
            tasks.push(tokio::spawn(async move {
                let mut ok = 0u64;
                while tokio::time::Instant::now() < deadline {
                    if echo_once(dst, b"x").await.is_ok() {
                        ok += 1;
                    }
                }
                ok
            }));
        }
        for t in tasks {
            n += t.await.unwrap_or(0);
        }
        n as f64 / 5.0
    });
    println!("plaintext sidecar pair: {plain:.0} new connections/s");
}

#[test]
fn a_proxy_is_not_ready_until_it_holds_a_certificate() {
    let node = Node::new("mtls_ready");
    let cp = ControlPlane::start(&node, "1h");
    cp.stop();
    let pod = node.pod("web");
    let token = cp.token_for("web");
    let (id, addr, anchors) = (spiffe("web"), cp.grpc_addr().to_string(), cp.ca_cert());
    let proxy = pod.spawn_as(
        2420,
        "proxy",
        bins::proxy(),
        &[
            "run",
            "--identity",
            &id,
            "--control-plane",
            &addr,
            "--identity-token",
            &token,
            "--trust-anchors",
            anchors.to_str().expect("utf-8"),
        ],
    );
    // Listeners are bound, but without a certificate the proxy is not ready.
    eventually("the admin server answers", Duration::from_secs(10), || {
        pod.admin("/live").is_ok()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pod.admin("/ready").expect("/ready").status, 503);
    assert!(pod.metric(RENEW_FAILED) >= 1.0);
    cp.restart();
    pod.wait_ready(&proxy);
    assert_eq!(pod.metric(RENEWED), 1.0);
}

//! HTTP/2 conformance of the sidecar: h2spec (the conformance tester,
//! github.com/summerwind/h2spec v2.2.1, built by `scripts/h2spec-tool`) runs
//! every case it has, the strict ones included (`--strict`: 146 cases of
//! RFC 7540 and RFC 7541), against real `weft-proxy run` processes in
//! explicit mode, in a pod of their own:
//!
//! ```text
//! h2spec -> client sidecar :5000 (outbound listener, h2c prior knowledge)
//!        -> mTLS, ALPN h2 -> server sidecar :6000 (inbound listener, permissive)
//!        -> weft-test-app :8080
//! ```
//!
//! - The **outbound listener** is where an app's plaintext HTTP/2 arrives.
//!   The client sidecar has an identity and its target must present one, so
//!   it serves the h2c connection itself, request by request (a sidecar
//!   without them carries bytes as they are, and h2spec would be testing the
//!   app). h2spec talks to it directly.
//! - The **inbound listener** serves peer sidecars' HTTP/2 inside mTLS, to
//!   a client that presents a workload certificate of the trust domain;
//!   h2spec cannot present a client certificate (with `-t -k` it sends none,
//!   and the sidecar ends the handshake: `certificate required`). So h2spec
//!   talks h2c to a bridge in this test, which carries the bytes unchanged
//!   inside an mTLS connection made as a peer sidecar makes it (the
//!   `client` identity, ALPN `h2`): every frame h2spec writes reaches the
//!   inbound's HTTP/2 server as written, and every frame (and close) from it
//!   comes back. (Behind it the app gets HTTP/1.1: h2spec's requests carry
//!   no `weft-orig-proto`.)
//! - **Plaintext on the inbound listener** (permissive mode, the default:
//!   clients outside the mesh) is served by the sidecar request by request
//!   too when it is HTTP, so h2spec talks h2c to it directly as well.
//!
//! The admin port speaks HTTP/1.1 only, and the DNS server no HTTP.
//!
//! Each listener must pass every case but the known failures listed for it
//! below; a new failure fails the test and names the cases (h2spec's id, as
//! `h2spec --strict http2/3.5/2` reruns one, its description, and what h2spec
//! expected and got), and so does a failure by design that passes again, so
//! the list stays true (a failure to fix may pass: the test says so).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType,
};
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use weft_api::tls::{self as wtls, CertSlot, TrustAnchors};
use weft_e2e::{Node, Pod, bins, spiffe};

const APP: u16 = 8080;
const OUTBOUND: u16 = 5000;
const INBOUND: u16 = 6000;
/// The test's plaintext-to-mTLS bridge in front of the inbound listener.
const BRIDGE: u16 = 6001;
/// The server sidecar's admin port (the client sidecar has the default).
const SERVER_ADMIN: &str = "127.0.0.1:4192";

/// How many cases h2spec v2.2.1 runs with `--strict`: fewer means the report
/// was not read whole (or h2spec changed, and this number with it).
const CASES: usize = 146;

/// The cases a listener fails today, by h2spec id.
struct Known {
    /// Failures by design: each must go on failing (a pass fails the test,
    /// so that this list, and the README, stay true).
    by_design: &'static [&'static str],
    /// Failures to fix: they may start passing (the test then says so).
    todo: &'static [&'static str],
}

const OUTBOUND_KNOWN: Known = Known {
    // "3.5. HTTP/2 Connection Preface, 2: Sends invalid connection preface"
    // wants the connection closed; the outbound port accepts HTTP/1.1 and
    // h2c alike, tells them apart by the first bytes, and reads
    // "INVALID CONNECTION PREFACE" as an HTTP/1.x request line, so it
    // answers `HTTP/1.1 400 Bad Request` (and then closes).
    by_design: &["http2/3.5/2"],
    todo: &[],
};

const INBOUND_MTLS_KNOWN: Known = Known {
    by_design: &[],
    todo: &[],
};

const INBOUND_PLAIN_KNOWN: Known = Known {
    // As on the outbound port: plaintext HTTP/1.1 and h2c share the port.
    by_design: &["http2/3.5/2"],
    todo: &[],
};

/// The h2spec binary: `$WEFT_H2SPEC_BIN` when set (scripts/test sets it),
/// else the `bin/h2spec` of the folder `scripts/h2spec-tool` prints (which
/// builds it the first time, in about 20 seconds), as the Jaeger and
/// Kubernetes binaries are found.
fn h2spec() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = match std::env::var_os("WEFT_H2SPEC_BIN") {
            Some(bin) => PathBuf::from(bin),
            None => from_script().join("bin/h2spec"),
        };
        assert!(
            bin.is_file(),
            "{} is not a file; WEFT_H2SPEC_BIN must name the h2spec binary `scripts/h2spec-tool` \
             builds (run scripts/h2spec-tool, or scripts/test, which sets it)",
            bin.display()
        );
        bin
    })
}

fn from_script() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/h2spec-tool");
    let out = Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "WEFT_H2SPEC_BIN is not set and {} could not run ({e}); run scripts/h2spec-tool \
                 by hand and point WEFT_H2SPEC_BIN at the bin/h2spec in the folder it prints",
                script.display()
            )
        });
    assert!(
        out.status.success(),
        "WEFT_H2SPEC_BIN is not set and {} failed ({}); see its messages above, or run \
         scripts/h2spec-tool by hand and point WEFT_H2SPEC_BIN at the bin/h2spec it builds",
        script.display(),
        out.status
    );
    let folder = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !folder.is_empty(),
        "{} printed no folder on stdout",
        script.display()
    );
    PathBuf::from(folder)
}

/// A workload certificate for `sa`, signed by `ca`, written as `<sa>.crt`
/// and `<sa>.key` in `dir`; returned for the test's own use too.
fn identity(
    dir: &Path,
    sa: &str,
    ca: &Issuer<'_, KeyPair>,
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(spiffe(sa).try_into().expect("uri"))];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let cert = p.signed_by(&key, ca).expect("sign");
    std::fs::write(dir.join(format!("{sa}.crt")), cert.pem()).expect("writing a certificate");
    std::fs::write(dir.join(format!("{sa}.key")), key.serialize_pem()).expect("writing a key");
    let der = PrivatePkcs8KeyDer::from(key.serialize_der());
    (cert.der().clone(), PrivateKeyDer::Pkcs8(der))
}

struct Sidecars {
    pod: Arc<Pod>,
    /// mTLS as the `client` workload to the server sidecar, ALPN h2.
    peer_tls: Arc<ClientConfig>,
    node: Node,
}

/// The app, the server sidecar in front of it (permissive: mTLS from peers,
/// plaintext from outside the mesh) and the client sidecar sending to it,
/// all in one pod, wired in explicit mode.
fn sidecars(test: &str) -> Sidecars {
    let node = Node::new(test);
    let pod = node.pod("solo");
    let dir = node.logs().join("pki");
    std::fs::create_dir_all(&dir).expect("pki dir");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let root = p.self_signed(&key).expect("root");
    std::fs::write(dir.join("roots.crt"), root.pem()).expect("roots.crt");
    let ca = Issuer::from_ca_cert_der(root.der(), key).expect("issuer");
    let client = identity(&dir, "client", &ca);
    identity(&dir, "server", &ca);
    let f = |n: &str| dir.join(n).to_str().expect("utf-8").to_string();

    let app = format!("127.0.0.1:{APP}");
    pod.spawn(
        "http",
        bins::test_app(),
        &["http", "--listen", &app, "--pod", "h2spec-0"],
    );
    pod.wait_listening(APP);
    let inbound = format!("127.0.0.1:{INBOUND}");
    let server_args = [
        "run",
        "--no-outbound",
        "--admin-listen",
        SERVER_ADMIN,
        "--inbound-listen",
        &inbound,
        "--inbound-target",
        &app,
        "--inbound-mtls-mode",
        "permissive",
        "--identity-cert",
        &f("server.crt"),
        "--identity-key",
        &f("server.key"),
        "--trust-anchors",
        &f("roots.crt"),
    ];
    pod.spawn_as(
        weft_api::defaults::PROXY_UID,
        "server-proxy",
        bins::proxy(),
        &server_args,
    );
    pod.wait_listening(INBOUND);
    let outbound = format!("127.0.0.1:{OUTBOUND}");
    pod.start_proxy(&[
        "--no-inbound",
        "--outbound-listen",
        &outbound,
        "--outbound-target",
        &inbound,
        "--outbound-target-identity",
        &spiffe("server"),
        "--identity-cert",
        &f("client.crt"),
        "--identity-key",
        &f("client.key"),
        "--trust-anchors",
        &f("roots.crt"),
    ]);

    let slot = CertSlot::default();
    slot.set(vec![client.0], client.1).expect("client identity");
    let anchors = TrustAnchors::new(vec![root.der().clone()]).expect("anchors");
    let expected = spiffe("server").parse().expect("server id");
    let peer_tls = wtls::client_config(slot, anchors, expected, &[wtls::ALPN_H2]).expect("config");
    Sidecars {
        pod,
        peer_tls: Arc::new(peer_tls),
        node,
    }
}

/// Accepts plaintext connections and carries each, byte for byte, inside an
/// mTLS connection to `to`, as a peer sidecar would connect.
async fn bridge(listener: TcpListener, to: SocketAddr, tls: TlsConnector) {
    while let Ok((mut plain, _)) = listener.accept().await {
        let tls = tls.clone();
        tokio::spawn(async move {
            let _ = plain.set_nodelay(true);
            let tcp = match TcpStream::connect(to).await {
                Ok(tcp) => tcp,
                Err(e) => return eprintln!("bridge: connecting to {to}: {e}"),
            };
            let _ = tcp.set_nodelay(true);
            let mut secure = match tls
                .connect(ServerName::IpAddress(to.ip().into()), tcp)
                .await
            {
                Ok(s) => s,
                Err(e) => return eprintln!("bridge: mTLS handshake with {to}: {e}"),
            };
            // Errors are the ends of connections h2spec or the sidecar cut.
            let _ = tokio::io::copy_bidirectional(&mut plain, &mut secure).await;
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed,
    Skipped,
}

/// One h2spec case as its JUnit report gives it.
#[derive(Debug)]
struct Case {
    /// h2spec's id: group and number, `http2/3.5/2`.
    id: String,
    desc: String,
    outcome: Outcome,
    /// For a failure, what h2spec expected and what it got (or its error).
    detail: String,
}

/// Runs h2spec (every case, strict ones included) against `port` on the
/// pod's loopback, with the bridge in front of the inbound listener when
/// `bridge_tls` is given, and reads its JUnit report.
/// Returns the cases and h2spec's output.
fn run_h2spec(
    s: &Sidecars,
    port: u16,
    bridge_tls: Option<Arc<ClientConfig>>,
) -> (Vec<Case>, String) {
    let report = s.node.logs().join(format!("h2spec-{port}.xml"));
    let mut cmd = s.pod.ns.command(h2spec());
    let port_arg = port.to_string();
    let report_arg = report.to_str().expect("utf-8");
    cmd.args([
        "--strict",
        // Seconds to wait for an answer: no case passing today waits at all,
        // so this only spares a loaded machine false failures.
        "-o",
        "5",
        "-h",
        "127.0.0.1",
        "-p",
        &port_arg,
        "-j",
        report_arg,
    ]);
    let started = Instant::now();
    let out = s.pod.ns.block_on(async move {
        if let Some(tls) = bridge_tls {
            let listener = TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("binding the bridge");
            let to = SocketAddr::from(([127, 0, 0, 1], INBOUND));
            tokio::spawn(bridge(listener, to, TlsConnector::from(tls)));
        }
        tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .output()
            .await
            .expect("running h2spec")
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // Shown when the test fails: h2spec's own account, failures explained.
    eprintln!(
        "----- h2spec on :{port} ({:?}, {}) -----\n{stdout}{}",
        started.elapsed(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let xml = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "h2spec wrote no JUnit report to {} ({e}); it exited {} saying:\n{stdout}",
            report.display(),
            out.status
        )
    });
    (junit_cases(&xml), stdout)
}

/// The cases of an h2spec JUnit report, in order. h2spec numbers the cases of
/// a group from 1 in the order it runs (and reports) them.
fn junit_cases(xml: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut group = String::new();
    let mut seq = 0;
    let mut rest = xml;
    while let Some(at) = rest.find("<testcase ") {
        rest = &rest[at..];
        let head_end = rest.find('>').expect("a whole <testcase> tag");
        let head = &rest[..head_end];
        let body_end = rest.find("</testcase>").unwrap_or(head_end);
        let body = &rest[head_end..body_end];
        let package = attr(head, "package");
        if package != group {
            group = package.clone();
            seq = 0;
        }
        seq += 1;
        let inner = |tag: &str| {
            let open = format!("<{tag}>");
            let start = body.find(&open)? + open.len();
            let end = body[start..].find(&format!("</{tag}>"))? + start;
            Some(unescape(body[start..end].trim()))
        };
        let (outcome, detail) = if let Some(d) = inner("failure").or_else(|| inner("error")) {
            (Outcome::Failed, d)
        } else if body.contains("<skipped") {
            (Outcome::Skipped, String::new())
        } else {
            (Outcome::Passed, String::new())
        };
        cases.push(Case {
            id: format!("{package}/{seq}"),
            desc: attr(head, "classname"),
            outcome,
            detail,
        });
        rest = &rest[head_end..];
    }
    cases
}

fn attr(tag: &str, name: &str) -> String {
    let key = format!(" {name}=\"");
    let start = tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {tag}"))
        + key.len();
    let end = tag[start..].find('"').expect("a closing quote") + start;
    unescape(&tag[start..end])
}

/// XML's entities and character references, as Go's encoder writes them.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let Some(end) = rest.find(';') else { break };
        let entity = &rest[1..end];
        let c = match entity {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .map(|h| u32::from_str_radix(h, 16))
                .or_else(|| entity.strip_prefix('#').map(str::parse))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The counts, for the test's output.
fn summary(listener: &str, cases: &[Case]) -> String {
    let count = |o: Outcome| cases.iter().filter(|c| c.outcome == o).count();
    let skipped: Vec<&str> = cases
        .iter()
        .filter(|c| c.outcome == Outcome::Skipped)
        .map(|c| c.id.as_str())
        .collect();
    format!(
        "h2spec on the {listener} listener: of {} cases, passed {}, failed {}, skipped {} {skipped:?}",
        cases.len(),
        count(Outcome::Passed),
        count(Outcome::Failed),
        skipped.len(),
    )
}

/// An error unless h2spec ran `expected` cases and every one passed or was
/// skipped but the known failures, and every failure by design still fails;
/// else the known failures to fix that pass now, if any.
fn verdict(
    listener: &str,
    cases: &[Case],
    known: &Known,
    expected: usize,
) -> Result<Vec<String>, String> {
    if cases.len() != expected {
        return Err(format!(
            "h2spec reported {} cases on the {listener} listener, not {expected}",
            cases.len()
        ));
    }
    let failed = |id: &str| {
        cases
            .iter()
            .any(|c| c.id == id && c.outcome == Outcome::Failed)
    };
    let new: Vec<String> = cases
        .iter()
        .filter(|c| {
            c.outcome == Outcome::Failed
                && !known.by_design.contains(&c.id.as_str())
                && !known.todo.contains(&c.id.as_str())
        })
        .map(|c| {
            // h2spec writes the expected outcomes a line each, then the one it got.
            let (expected, got) = c.detail.rsplit_once('\n').unwrap_or(("", &c.detail));
            format!(
                "  {} {}\n    expected: {}\n    got: {got}",
                c.id,
                c.desc,
                expected.replace('\n', " or ")
            )
        })
        .collect();
    if !new.is_empty() {
        return Err(format!(
            "the {listener} listener fails {} h2spec case(s) beyond the known ones {:?}:\n{}",
            new.len(),
            [known.by_design, known.todo].concat(),
            new.join("\n")
        ));
    }
    let passing: Vec<&str> = known
        .by_design
        .iter()
        .copied()
        .filter(|id| !failed(id))
        .collect();
    if !passing.is_empty() {
        return Err(format!(
            "h2spec case(s) {passing:?} of the {listener} listener, failures by design, no \
             longer fail: take them off its list (and out of the README)"
        ));
    }
    Ok(known
        .todo
        .iter()
        .filter(|id| !failed(id))
        .map(|id| format!("{id} passes now on the {listener} listener: take it off the TODO list"))
        .collect())
}

fn check(listener: &str, cases: &[Case], known: &Known, stdout: &str) {
    eprintln!("{}", summary(listener, cases));
    match verdict(listener, cases, known, CASES) {
        Ok(notes) => notes.iter().for_each(|n| eprintln!("{n}")),
        Err(e) => {
            // h2spec's own account of its failures names each requirement too.
            let account = stdout
                .split_once("Failures:")
                .map_or("", |(_, f)| f.split("Finished in").next().unwrap_or(f));
            panic!("{e}\n\nh2spec's account of the failures:{account}");
        }
    }
}

#[test]
fn the_outbound_h2c_listener_passes_h2spec() {
    let s = sidecars("h2spec_out");
    let (cases, stdout) = run_h2spec(&s, OUTBOUND, None);
    check("outbound", &cases, &OUTBOUND_KNOWN, &stdout);
    assert!(
        s.pod
            .metric(r#"protocol_detect_total{direction="outbound",protocol="http/2"}"#)
            > 0.0
    );
}

#[test]
fn the_inbound_mtls_listener_passes_h2spec_through_a_peer_bridge() {
    let s = sidecars("h2spec_in");
    let tls = s.peer_tls.clone();
    let (cases, stdout) = run_h2spec(&s, BRIDGE, Some(tls));
    check("inbound (mTLS)", &cases, &INBOUND_MTLS_KNOWN, &stdout);
    // h2spec's connections reached the inbound's HTTP/2 server, as a peer's.
    let admin = SERVER_ADMIN.parse().expect("addr");
    let metrics = s
        .pod
        .ns
        .block_on(weft_e2e::client::get(admin, "/metrics"))
        .expect("the server sidecar's /metrics")
        .text();
    let h2 = r#"protocol_detect_total{direction="inbound",protocol="http/2"}"#;
    let n = weft_e2e::metrics::value(&metrics, h2).unwrap_or(0.0);
    assert!(n >= CASES as f64, "{h2} is {n}");
}

#[test]
fn the_inbound_plaintext_h2c_listener_passes_h2spec() {
    let s = sidecars("h2spec_in_plain");
    let (cases, stdout) = run_h2spec(&s, INBOUND, None);
    check("inbound (plaintext)", &cases, &INBOUND_PLAIN_KNOWN, &stdout);
}

#[test]
fn junit_reports_are_read_with_numbers_and_failures() {
    let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites>
  <testsuite name="3.5. HTTP/2 Connection Preface" package="http2/3.5" id="3.5" tests="2" skipped="0" failures="1" errors="0">
    <testcase package="http2/3.5" classname="Sends client connection preface" time="0.0010"></testcase>
    <testcase package="http2/3.5" classname="Sends invalid connection preface" time="0.0020">
      <error>GOAWAY Frame (Error Code: PROTOCOL_ERROR)
Connection closed
DATA Frame (length:52, flags:0x01, stream_id:1)</error>
    </testcase>
  </testsuite>
  <testsuite name="4.2. Frame Size" package="http2/4.2" id="4.2" tests="1" skipped="1" failures="0" errors="0">
    <testcase package="http2/4.2" classname="Sends a &#34;DATA&#34; frame &amp; more" time="0.0000">
      <skipped></skipped>
    </testcase>
  </testsuite>
</testsuites>"#;
    let cases = junit_cases(xml);
    let got: Vec<(&str, &str, Outcome)> = cases
        .iter()
        .map(|c| (c.id.as_str(), c.desc.as_str(), c.outcome))
        .collect();
    assert_eq!(
        got,
        [
            (
                "http2/3.5/1",
                "Sends client connection preface",
                Outcome::Passed
            ),
            (
                "http2/3.5/2",
                "Sends invalid connection preface",
                Outcome::Failed
            ),
            (
                "http2/4.2/1",
                "Sends a \"DATA\" frame & more",
                Outcome::Skipped
            ),
        ]
    );
    assert_eq!(
        cases[1].detail,
        "GOAWAY Frame (Error Code: PROTOCOL_ERROR)\nConnection closed\n\
         DATA Frame (length:52, flags:0x01, stream_id:1)"
    );
    // A new failure goes red and is named; a failure by design that passes
    // too; a failure to fix may pass, and is said to.
    let known = |by_design, todo| Known { by_design, todo };
    let design = known(&["http2/3.5/2"], &[]);
    assert_eq!(verdict("test", &cases, &design, 3), Ok(vec![]));
    let todo = known(&[], &["http2/3.5/2"]);
    assert_eq!(verdict("test", &cases, &todo, 3), Ok(vec![]));
    let err = verdict("test", &cases, &known(&[], &[]), 3).expect_err("a new failure");
    assert!(
        err.contains(
            "  http2/3.5/2 Sends invalid connection preface\n    expected: GOAWAY Frame (Error \
             Code: PROTOCOL_ERROR) or Connection closed\n    got: DATA Frame (length:52, \
             flags:0x01, stream_id:1)"
        ),
        "{err}"
    );
    let passing = known(&["http2/3.5/2", "http2/3.5/1"], &[]);
    let err = verdict("test", &cases, &passing, 3).expect_err("by design, passing");
    assert!(err.contains("no longer fail"), "{err}");
    let fixed = known(&["http2/3.5/2"], &["http2/3.5/1"]);
    let notes = verdict("test", &cases, &fixed, 3).expect("a fixed one is fine");
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(verdict("test", &cases, &design, CASES).is_err());
}

//! Writes the checked-in seed corpus, `corpus/<target>/`, from real inputs:
//! requests as the e2e tests send them, the example manifests, the snapshots
//! the control plane makes of them, a ClientHello (and the rest of a
//! client's handshake) from rustls with the mesh's client config, DNS
//! queries, CSRs made with rcgen. Run it from `fuzz/`:
//!
//!     cargo +nightly run --features seeds --bin seeds
//!
//! Not a fuzz target: it needs the `seeds` feature, which `cargo fuzz`
//! never turns on.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use prost::Message as _;
use rcgen::{CertificateParams, KeyPair, SanType};
use weft_api::tls as wtls;
use weft_api::v1;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn write(target: &str, name: &str, bytes: impl AsRef<[u8]>) -> Result<()> {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(name), bytes)?;
    Ok(())
}

const GET: &str = "GET /api/v1?user=1 HTTP/1.1\r\nHost: web.default.svc.cluster.local\r\n\
    User-Agent: curl/8\r\nAccept: */*\r\n\r\n";

fn http() -> Result<()> {
    let forged = "GET /headers HTTP/1.1\r\nHost: app\r\n\
        weft-client-id: spiffe://evil.example/ns/x/sa/attacker\r\n\
        weft-orig-proto: HTTP/2\r\nWEFT-Error: timeout\r\n\r\n";
    let hop = "POST /orders HTTP/1.1\r\nHost: app\r\nConnection: keep-alive, x-custom, weft-client-id\r\n\
        x-custom: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers, deflate\r\nProxy-Authorization: Basic eA==\r\n\
        Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nweft-trailer: x\r\n\r\n";
    let websocket = "GET /chat HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
        weft-orig-proto: HTTP/1.1\r\n\r\n";
    let connect = "CONNECT db.shop:5432 HTTP/1.1\r\nHost: db.shop:5432\r\nProxy-Connection: keep-alive\r\n\r\n";
    let pipelined = format!(
        "{GET}PUT /items/7 HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\n\r\nabcd\
         GET / HTTP/1.0\r\n\r\n"
    );
    for (name, req) in [
        ("get", GET),
        ("forged-weft-headers", forged),
        ("hop-by-hop-chunked", hop),
        ("websocket", websocket),
        ("connect", connect),
        ("pipelined", pipelined.as_str()),
    ] {
        write("http1_head", name, req)?;
    }
    for (name, bytes) in [
        ("http1", GET.as_bytes()),
        (
            "h2-preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00".as_slice(),
        ),
        ("redis", b"*1\r\n$4\r\nPING\r\n".as_slice()),
        ("ssh", b"SSH-2.0-OpenSSH_9.6\r\n".as_slice()),
        ("connect", connect.as_bytes()),
        ("lowercase-method", b"get / HTTP/1.1\r\n".as_slice()),
    ] {
        write("detect", name, bytes)?;
    }
    Ok(())
}

/// Every byte the mesh's TLS client sends in a whole handshake with the
/// inbound side's server config: the ClientHello, then its second flight.
fn tls() -> Result<()> {
    use weft_proxy::fuzzing::{inbound_tls_config, throwaway_identity};
    let server_id = throwaway_identity("spiffe://cluster.local/ns/default/sa/server")?;
    let client_id = throwaway_identity("spiffe://cluster.local/ns/default/sa/client")?;
    let server_cfg = Arc::new(inbound_tls_config(&server_id)?);
    let client_cfg = Arc::new(wtls::client_config(
        client_id.cert.clone(),
        server_id.anchors.clone(),
        server_id.id.clone(),
        &[wtls::ALPN_H2],
    )?);
    let ip = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut client = rustls::ClientConnection::new(client_cfg.clone(), ip)?;
    let mut server = rustls::ServerConnection::new(server_cfg)?;
    let mut sent = Vec::new();
    let mut hello = None;
    for _ in 0..8 {
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out)?;
        }
        if hello.is_none() {
            hello = Some(out.clone());
        }
        sent.extend_from_slice(&out);
        server.read_tls(&mut out.as_slice())?;
        // The client's certificate is from another CA: the handshake may
        // fail here, after the client sent all it would.
        if server.process_new_packets().is_err() {
            break;
        }
        let mut back = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut back)?;
        }
        client.read_tls(&mut back.as_slice())?;
        client.process_new_packets()?;
        if !client.is_handshaking() && !client.wants_write() {
            break;
        }
    }
    let hello = hello.ok_or("no ClientHello")?;
    // First byte: the segment size the target reads in.
    write(
        "tls_client_hello",
        "client-hello",
        [&[255u8][..], &hello].concat(),
    )?;
    write(
        "tls_client_hello",
        "client-hello-segments",
        [&[7u8][..], &hello].concat(),
    )?;
    write(
        "tls_client_hello",
        "client-handshake",
        [&[255u8][..], &sent].concat(),
    )?;
    // With SNI, as a client from outside the mesh would send it.
    let plain = rustls::ClientConfig::builder_with_provider(wtls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut c = rustls::ClientConnection::new(Arc::new(plain), "web.default.svc".try_into()?)?;
    let mut out = Vec::new();
    c.write_tls(&mut out)?;
    write(
        "tls_client_hello",
        "client-hello-sni",
        [&[255u8][..], &out].concat(),
    )?;
    write("detect", "tls-client-hello", &out[..out.len().min(64)])?;
    Ok(())
}

fn manifests() -> Result<Vec<weft_control::fuzzing::Sent>> {
    let dir = Path::new("../examples/manifests");
    let read = |f: &str| fs::read_to_string(dir.join(f));
    let (services, pods, routes) = (
        read("services.yaml")?,
        read("pods.yaml")?,
        read("routes.yaml")?,
    );
    // An edit: the routes and policy arrive, a pod is gone.
    let fewer_pods = pods.split("\n---\n").next().unwrap_or_default();
    let before = format!("{services}---\n{pods}");
    let after = format!("{services}---\n{fewer_pods}\n---\n{routes}");
    write("manifest", "edit", format!("{before}\0{after}"))?;
    // A broken edit: the last good Service keeps serving.
    let broken = services.replacen("port: 80", "port: eighty", 1);
    write("manifest", "edit-broken", format!("{services}\0{broken}"))?;
    let (errors, sent) = weft_control::fuzzing::manifest_edit(&before, &after);
    if !errors.is_empty() {
        return Err(format!("the examples have errors: {errors:?}").into());
    }
    Ok(sent)
}

fn snapshots(sent: &[weft_control::fuzzing::Sent]) -> Result<()> {
    let s = sent.first().ok_or("no snapshots")?;
    let mut stream = Vec::new();
    s.before.encode_length_delimited(&mut stream)?;
    s.delta.encode_length_delimited(&mut stream)?;
    write("snapshot_delta", "complete-then-delta", &stream)?;
    let mut one = Vec::new();
    s.after.encode_length_delimited(&mut one)?;
    write("snapshot_delta", "complete", &one)?;
    // A delta whose base the stream does not hold, then a complete one.
    let mut orphan = Vec::new();
    s.delta.encode_length_delimited(&mut orphan)?;
    v1::Snapshot {
        version: 9,
        trust_anchors_der: vec![b"not a certificate".to_vec()],
        opaque_ports: vec![3306, 70000],
        ..s.after.clone()
    }
    .encode_length_delimited(&mut orphan)?;
    write("snapshot_delta", "orphan-delta", &orphan)?;
    Ok(())
}

fn dns() -> Result<()> {
    let query = |name: &str, t: RecordType, edns: bool| -> Result<Vec<u8>> {
        let mut q = Message::query();
        q.metadata.id = 0x5eed;
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name)?, t));
        if edns {
            q.edns = Some(Edns::new());
        }
        Ok(q.to_vec()?)
    };
    for (file, name, t, edns) in [
        ("fqdn-a", "db.shop.svc.cluster.local.", RecordType::A, false),
        ("short-a-edns", "db.", RecordType::A, true),
        ("ns-aaaa", "web.shop.", RecordType::AAAA, false),
        ("svc-mx", "api.default.svc.", RecordType::MX, false),
        ("outside", "example.com.", RecordType::A, true),
    ] {
        write("dns", file, query(name, t, edns)?)?;
    }
    Ok(())
}

fn csrs() -> Result<()> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = |sans: Vec<SanType>| -> Result<rcgen::CertificateSigningRequest> {
        let mut p = CertificateParams::default();
        p.subject_alt_names = sans;
        Ok(p.serialize_request(&key)?)
    };
    let uri = |s: &str| -> Result<SanType> { Ok(SanType::URI(s.try_into()?)) };
    let web = "spiffe://cluster.local/ns/default/sa/web";
    let good = csr(vec![uri(web)?])?;
    write("csr", "der-web", [&[0u8][..], good.der()].concat())?;
    write(
        "csr",
        "pem-web",
        [&[1u8][..], good.pem()?.as_bytes()].concat(),
    )?;
    let other = csr(vec![uri("spiffe://cluster.local/ns/default/sa/admin")?])?;
    write("csr", "der-admin", [&[0u8][..], other.der()].concat())?;
    let two = csr(vec![
        uri(web)?,
        SanType::DnsName("web.default.svc".try_into()?),
    ])?;
    write("csr", "der-web-and-dns", [&[0u8][..], two.der()].concat())?;
    write("csr", "names-web", format!("\x02u{web}"))?;
    write(
        "csr",
        "names-mixed",
        format!("\x02u{web}\nuspiffe://cluster.local/ns/default/sa/admin\ndweb\ni10.0.0.1\neweb@x"),
    )?;
    Ok(())
}

fn main() -> Result<()> {
    http()?;
    tls()?;
    let sent = manifests()?;
    snapshots(&sent)?;
    dns()?;
    csrs()?;
    Ok(())
}

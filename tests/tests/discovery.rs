//! Discovery and push: the control plane's model from a manifest directory,
//! snapshots streamed to every sidecar, Services' virtual IPs balanced in
//! mTLS, and mesh DNS — in real namespaces with real iptables.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use weft_e2e::client::{a_records, dns_query};
use weft_e2e::{ControlPlane, Node, Pod, bins, eventually, pod_yaml, service_yaml, spiffe};

const DB_VIP: &str = "198.19.0.10";
const DB_PORT: u16 = 7000;
/// The db Service port as proxies name it.
const DB: &str = "db.default:7000";
/// What the pods' resolv.conf names; port 53 is redirected to the sidecar.
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 250);

struct Mesh {
    node: Node,
    cp: ControlPlane,
    client: Arc<Pod>,
    dbs: Vec<Arc<Pod>>,
}

/// A banner+echo server pod (server speaks first: its name, then echo).
fn db_pod(node: &Node, cp: &ControlPlane, name: &str) -> Arc<Pod> {
    let pod = node.pod(name);
    let listen = format!("0.0.0.0:{DB_PORT}");
    pod.spawn(
        "banner",
        bins::test_app(),
        &[
            "tcp", "--listen", &listen, "--mode", "banner", "--pod", name,
        ],
    );
    pod.wait_listening(DB_PORT);
    cp.write_manifest(
        &format!("pod-{name}.yaml"),
        &pod_yaml(&pod, "db", &[("app", "db")], true),
    );
    pod.mesh_with(cp, "db", &[]);
    pod
}

/// A control plane, `n` db endpoints behind Service `db` (opaque TCP), and a
/// meshed client with the sidecar's DNS.
fn mesh(test: &str, n: usize) -> Mesh {
    let node = Node::new(test);
    let cp = ControlPlane::start(&node, "1h");
    cp.write_manifest(
        "service-db.yaml",
        &service_yaml("db", DB_VIP, "db", &[(DB_PORT, DB_PORT, "tcp")]),
    );
    let dbs: Vec<_> = (0..n)
        .map(|i| db_pod(&node, &cp, &format!("db-{i}")))
        .collect();
    let client = node.pod("client");
    cp.write_manifest(
        "pod-client.yaml",
        &pod_yaml(&client, "client", &[("app", "client")], true),
    );
    client.mesh_with_dns(&cp, "client", UPSTREAM, &[]);
    // Until the control plane has read the client's manifest, the db
    // sidecars would be told it is not a meshed pod (and take its mTLS for
    // a plaintext client's on their opaque port).
    eventually(
        "the control plane knows the client's pod",
        Duration::from_secs(10),
        || {
            cp.admin_json("/proxies")["proxies"]
                .as_array()
                .is_some_and(|l| {
                    l.iter()
                        .any(|p| p["pod"] == "client" && p["pod_known"] == true)
                })
        },
    );
    let m = Mesh {
        node,
        cp,
        client,
        dbs,
    };
    m.wait_endpoints(n);
    // The db sidecars learn that the client is a meshed pod when its first
    // connection arrives (they ask the control plane about its address).
    m
}

impl Mesh {
    /// Waits until the client's proxy has `n` db endpoints.
    fn wait_endpoints(&self, n: usize) {
        self.client.wait_endpoints(DB, n);
    }
}

/// Opens `count` connections to `dst`; each reads the banner and checks an
/// echo. Returns connections per banner (pod), and failures.
async fn connect_many(dst: SocketAddr, count: usize) -> (BTreeMap<String, usize>, usize) {
    let mut per_pod = BTreeMap::new();
    let mut failed = 0;
    for i in 0..count {
        let one = async {
            let s = TcpStream::connect(dst).await?;
            let mut r = BufReader::new(s);
            let mut banner = String::new();
            r.read_line(&mut banner).await?;
            let msg = format!("ping {i}");
            r.get_mut().write_all(msg.as_bytes()).await?;
            r.get_mut().shutdown().await?;
            let mut back = String::new();
            r.read_to_string(&mut back).await?;
            if back != msg {
                return Err(std::io::Error::other(format!("echo {back:?} != {msg:?}")));
            }
            Ok::<_, std::io::Error>(banner.trim().to_string())
        };
        let res = match tokio::time::timeout(Duration::from_secs(5), one).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::other("timed out")),
        };
        match res {
            Ok(pod) => *per_pod.entry(pod).or_insert(0) += 1,
            Err(_) => failed += 1,
        }
    }
    (per_pod, failed)
}

fn vip() -> SocketAddr {
    SocketAddr::new(DB_VIP.parse().expect("vip"), DB_PORT)
}

#[test]
fn a_service_name_resolves_and_balances_over_three_endpoints_in_mtls() {
    let m = mesh("disc_balance", 3);
    // The app looks the Service up through its resolv.conf nameserver; the
    // sidecar answers.
    let dns = SocketAddr::new(UPSTREAM.into(), 53);
    let answer = m
        .client
        .ns
        .block_on(dns_query(
            dns,
            "db.default.svc.cluster.local.",
            RecordType::A,
        ))
        .expect("DNS answer");
    let ips = a_records(&answer);
    assert_eq!(ips, vec![DB_VIP.parse::<Ipv4Addr>().expect("ip")]);

    let dst = SocketAddr::new(ips[0].into(), DB_PORT);
    let (per_pod, failed) = m.client.ns.block_on(connect_many(dst, 300));
    assert_eq!(failed, 0, "{per_pod:?}");
    assert_eq!(per_pod.len(), 3, "{per_pod:?}");
    for (pod, n) in &per_pod {
        let share = *n as f64 / 300.0;
        assert!(
            (0.25..=0.41).contains(&share),
            "{pod} got {n} of 300: {per_pod:?}"
        );
    }
    // Every hop was mTLS: each server's sidecar saw the client's identity.
    let series = format!(
        r#"tls_sessions_total{{direction="inbound",peer_identity="{}"}}"#,
        spiffe("client")
    );
    for db in &m.dbs {
        let n = db.metric(&series);
        assert_eq!(n as usize, per_pod[&db.name], "{}", db.name);
    }
}

#[test]
fn endpoints_removed_and_added_take_effect_live() {
    let m = mesh("disc_live", 3);
    m.cp.remove_manifest("pod-db-2.yaml");
    m.wait_endpoints(2);
    let (per_pod, failed) = m.client.ns.block_on(connect_many(vip(), 60));
    assert_eq!(failed, 0);
    assert!(
        !per_pod.contains_key("db-2"),
        "a removed endpoint still gets traffic: {per_pod:?}"
    );

    m.cp.write_manifest(
        "pod-db-2.yaml",
        &pod_yaml(&m.dbs[2], "db", &[("app", "db")], true),
    );
    m.wait_endpoints(3);
    let (per_pod, failed) = m.client.ns.block_on(connect_many(vip(), 60));
    assert_eq!(failed, 0);
    assert!(
        per_pod.get("db-2").copied().unwrap_or(0) > 5,
        "the added endpoint gets little: {per_pod:?}"
    );
}

#[test]
fn connections_survive_a_control_plane_outage_and_updates_resume() {
    let m = mesh("disc_outage", 2);
    m.cp.stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut total = 0;
    while Instant::now() < deadline {
        let (per_pod, failed) = m.client.ns.block_on(connect_many(vip(), 20));
        assert_eq!(
            failed, 0,
            "connections failed while the control plane was down"
        );
        total += per_pod.values().sum::<usize>();
    }
    assert!(total > 100, "too little traffic: {total}");

    m.cp.restart();
    let newcomer = db_pod(&m.node, &m.cp, "db-new");
    m.wait_endpoints(3);
    eventually(
        "the new endpoint gets traffic",
        Duration::from_secs(15),
        || {
            let (per_pod, _) = m.client.ns.block_on(connect_many(vip(), 30));
            per_pod.contains_key(&newcomer.name)
        },
    );
}

#[test]
fn a_malformed_manifest_is_reported_and_the_old_config_keeps_serving() {
    let m = mesh("disc_bad", 2);
    // Settled first: the control plane has seen every pod's manifest (the
    // client's too) and the client runs that version.
    eventually("every proxy is current", Duration::from_secs(10), || {
        let status = m.cp.admin_json("/status");
        let list = status["proxies"].as_array().cloned().unwrap_or_default();
        list.len() == 3 && list.iter().all(|p| p["current"] == true)
    });
    let v = m.client.metric("discovery_snapshot_version");
    let good = service_yaml("db", DB_VIP, "db", &[(DB_PORT, DB_PORT, "tcp")]);
    m.cp.write_manifest(
        "service-db.yaml",
        &good.replace(&format!("port: {DB_PORT}\n"), "port: seven-thousand\n"),
    );
    let err = {
        let mut found = serde_json::Value::Null;
        eventually("the error is reported", Duration::from_secs(10), || {
            found = m.cp.admin_json("/errors")["errors"][0].clone();
            !found.is_null()
        });
        found
    };
    assert!(
        err["file"]
            .as_str()
            .unwrap_or_default()
            .ends_with("service-db.yaml"),
        "{err}"
    );
    assert_eq!(err["object"], "Service default/db");
    assert_eq!(err["field"], "spec.ports[0].port");
    assert!(m.cp.metrics().contains("manifest_errors 1"));
    // Traffic goes on with the last good Service.
    let (per_pod, failed) = m.client.ns.block_on(connect_many(vip(), 20));
    assert_eq!((failed, per_pod.values().sum::<usize>()), (0, 20));
    assert_eq!(
        m.client.metric("discovery_snapshot_version"),
        v,
        "an unchanged snapshot was pushed"
    );

    m.cp.write_manifest("service-db.yaml", &good);
    eventually("the error clears", Duration::from_secs(10), || {
        m.cp.admin_json("/errors")["errors"]
            .as_array()
            .is_some_and(|a| a.is_empty())
    });
    assert!(m.cp.metrics().contains("manifest_errors 0"));
}

#[test]
fn the_admin_api_shows_what_each_proxy_was_sent_and_acknowledged() {
    let m = mesh("disc_admin", 2);
    // A change reaches the proxies it concerns, and they acknowledge it;
    // every proxy runs the latest version of what it sees.
    m.cp.write_manifest(
        "service-extra.yaml",
        &service_yaml("extra", "198.19.0.11", "db", &[(80, DB_PORT, "")]),
    );
    m.client.wait_endpoints("extra.default:80", 2);
    eventually(
        "every proxy is current, the client has acknowledged what it was sent",
        Duration::from_secs(10),
        || {
            let p = m.cp.admin_json("/status");
            let v = p["version"].as_u64().unwrap_or(0);
            let list = p["proxies"].as_array().cloned().unwrap_or_default();
            list.len() == 3
                && list.iter().all(|x| {
                    x["connected"] == true
                        && x["current"] == true
                        && x["synced_version"].as_u64() == Some(v)
                        && x["acked_version"] == x["sent_version"]
                        && x["acked_at_unix_ms"].as_u64().unwrap_or(0) > 0
                        && x["ack_error"] == ""
                })
                && list.iter().any(|x| {
                    x["pod"] == "client"
                        && x["api"] == "discover"
                        && x["sent_version"].as_u64() == Some(v)
                })
        },
    );
    let p = m.cp.admin_json("/proxies");
    let client = p["proxies"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["pod"] == "client").cloned());
    assert_eq!(client.expect("client listed")["identity"], spiffe("client"));
}

#[test]
fn dns_answers_mesh_names_and_forwards_the_rest_upstream() {
    let node = Node::new("disc_dns");
    let cp = ControlPlane::start(&node, "1h");
    cp.write_manifest(
        "service-db.yaml",
        &service_yaml("db", DB_VIP, "db", &[(DB_PORT, DB_PORT, "tcp")]),
    );
    // The upstream resolver: a real DNS server in a pod of its own.
    let resolver = node.pod("resolver");
    resolver.spawn(
        "dns",
        bins::test_app(),
        &[
            "dns",
            "--listen",
            "0.0.0.0:53",
            "--record",
            "outside.example=198.18.0.99",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let client = node.pod("client");
    cp.write_manifest(
        "pod-client.yaml",
        &pod_yaml(&client, "client", &[("app", "client")], true),
    );
    client.mesh_with_dns(&cp, "client", resolver.ip, &[]);
    client.wait_endpoints(DB, 0);
    let dns = SocketAddr::new(resolver.ip.into(), 53);
    let vip: Ipv4Addr = DB_VIP.parse().expect("ip");
    for name in [
        "db.default.svc.cluster.local.",
        "db.default.svc.",
        "db.default.",
        "db.",
    ] {
        let a = client
            .ns
            .block_on(dns_query(dns, name, RecordType::A))
            .expect("answer");
        assert_eq!(a_records(&a), vec![vip], "{name}");
    }
    let a = client
        .ns
        .block_on(dns_query(dns, "outside.example.", RecordType::A))
        .expect("answer");
    assert_eq!(
        a_records(&a),
        vec![Ipv4Addr::new(198, 18, 0, 99)],
        "not forwarded upstream"
    );
    let a = client
        .ns
        .block_on(dns_query(dns, "nowhere.example.", RecordType::A))
        .expect("answer");
    assert_eq!(
        a.metadata.response_code,
        hickory_proto::op::ResponseCode::NXDomain
    );
}

#[test]
fn server_speaks_first_protocols_never_wait_for_detection() {
    // A long detection timeout makes any stall obvious.
    let node = Node::new("disc_server_first");
    let cp = ControlPlane::start(&node, "1h");
    cp.write_manifest(
        "service-db.yaml",
        &service_yaml("db", DB_VIP, "db", &[(DB_PORT, DB_PORT, "tcp")]),
    );
    cp.write_manifest(
        "service-redis.yaml",
        &service_yaml("redis", "198.19.0.12", "redis", &[(6379, 6379, "")]),
    );
    let db = node.pod("db-0");
    db.spawn(
        "banner",
        bins::test_app(),
        &[
            "tcp",
            "--listen",
            "0.0.0.0:7000",
            "--mode",
            "banner",
            "--pod",
            "db-0",
        ],
    );
    db.wait_listening(DB_PORT);
    // A second banner on 7001, a port nobody declares opaque.
    db.spawn(
        "banner-7001",
        bins::test_app(),
        &[
            "tcp",
            "--listen",
            "0.0.0.0:7001",
            "--mode",
            "banner",
            "--pod",
            "db-0",
        ],
    );
    db.wait_listening(7001);
    cp.write_manifest("pod-db.yaml", &pod_yaml(&db, "db", &[("app", "db")], true));
    db.mesh_with(&cp, "db", &["--detect-timeout", "5s"]);
    let redis = node.pod("redis");
    redis.spawn(
        "redis-server",
        "redis-server",
        &[
            "--port",
            "6379",
            "--bind",
            "0.0.0.0",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    );
    redis.wait_listening(6379);
    cp.write_manifest(
        "pod-redis.yaml",
        &pod_yaml(&redis, "redis", &[("app", "redis")], true),
    );
    redis.mesh_with(&cp, "redis", &["--detect-timeout", "5s"]);
    let client = node.pod("client");
    cp.write_manifest(
        "pod-client.yaml",
        &pod_yaml(&client, "client", &[("app", "client")], true),
    );
    client.mesh_with(&cp, "client", &[]);
    // A client outside the mesh, on the same node.
    let outsider = node.pod("outsider");
    client.wait_endpoints(DB, 1);
    client.wait_endpoints("redis.default:6379", 1);
    // The servers learn that the client is meshed when its first
    // connection arrives (the waits above made one each).

    let banner = |dst: SocketAddr| async move {
        let start = Instant::now();
        let s = TcpStream::connect(dst).await.map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((line, start.elapsed()))
    };
    // Through the mesh (mTLS between the sidecars).
    let (line, took) = client
        .ns
        .block_on(banner(vip()))
        .expect("banner through the mesh");
    assert_eq!(line, "db-0\n");
    assert!(took < Duration::from_secs(1), "the banner took {took:?}");
    // The control: from outside the mesh, a port nobody declared opaque is
    // held for detection (5s here), which is what opaque ports avoid.
    let (_, took) = outsider
        .ns
        .block_on(banner(db.addr(7001)))
        .expect("banner from outside");
    assert!(
        took >= Duration::from_secs(4),
        "a non-opaque port should wait for detection ({took:?})"
    );
    let (_, took) = outsider
        .ns
        .block_on(banner(db.addr(DB_PORT)))
        .expect("banner from outside, opaque port");
    assert!(
        took < Duration::from_secs(1),
        "an opaque port waited {took:?}"
    );

    // Redis, on its default (opaque) port: through the mesh and from outside.
    let ping = |dst: SocketAddr| async move {
        let start = Instant::now();
        let mut s = TcpStream::connect(dst).await.map_err(|e| e.to_string())?;
        s.write_all(b"PING\r\n").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((buf, start.elapsed()))
    };
    let redis_vip = SocketAddr::new("198.19.0.12".parse().expect("ip"), 6379);
    let series = format!(
        r#"tls_sessions_total{{direction="inbound",peer_identity="{}"}}"#,
        spiffe("client")
    );
    let before = redis.metric(&series);
    let (pong, took) = client
        .ns
        .block_on(ping(redis_vip))
        .expect("redis through the mesh");
    assert_eq!(&pong, b"+PONG\r\n");
    assert!(took < Duration::from_secs(1), "PING took {took:?}");
    assert_eq!(
        redis.metric(&series),
        before + 1.0,
        "redis was not reached in mTLS"
    );
    // An un-meshed client of an opaque port is not held for detection.
    let (line, took) = outsider
        .ns
        .block_on(async move {
            let start = Instant::now();
            let s = TcpStream::connect(redis.addr(6379))
                .await
                .map_err(|e| e.to_string())?;
            let mut s = s;
            s.write_all(b"PING\r\n").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((buf, start.elapsed()))
        })
        .expect("redis from outside");
    assert_eq!(&line, b"+PONG\r\n");
    assert!(
        took < Duration::from_secs(1),
        "an opaque port waited {took:?}"
    );
}

#[test]
fn a_pod_annotation_overrides_the_mesh_wide_mtls_mode() {
    // The mesh default is permissive; one pod asks for strict.
    let node = Node::new("disc_mtls_mode");
    let cp = ControlPlane::start(&node, "1h");
    let outsider = node.pod("outsider");
    let mut pods = Vec::new();
    for (name, strict) in [("strict-0", true), ("relaxed-0", false)] {
        let pod = node.pod(name);
        pod.spawn(
            "echo",
            bins::test_app(),
            &["tcp", "--listen", "0.0.0.0:7000"],
        );
        pod.wait_listening(DB_PORT);
        let mut yaml = pod_yaml(&pod, name, &[("app", name)], true);
        if strict {
            yaml = yaml.replace(
                "    weft.dev/inject: enabled\n",
                "    weft.dev/inject: enabled\n    weft.dev/mtls-mode: strict\n",
            );
        }
        cp.write_manifest(&format!("pod-{name}.yaml"), &yaml);
        pod.mesh_with(&cp, name, &[]);
        let want = if strict { "strict" } else { "permissive" };
        eventually(
            &format!("{name} gets mode {want}"),
            Duration::from_secs(10),
            || pod.config()["mtls_mode"] == want,
        );
        pods.push(pod);
    }
    let echo = |pod: &Pod| {
        let dst = pod.addr(DB_PORT);
        outsider.ns.block_on(async move {
            let mut s = TcpStream::connect(dst).await?;
            s.write_all(b"plain").await?;
            s.shutdown().await?;
            let mut got = Vec::new();
            s.read_to_end(&mut got).await?;
            Ok::<_, std::io::Error>(got)
        })
    };
    let strict = echo(&pods[0]);
    assert!(
        !matches!(&strict, Ok(b) if b == b"plain"),
        "the strict pod served plaintext"
    );
    assert_eq!(echo(&pods[1]).expect("permissive echo"), b"plain");
}

#[test]
fn weftctl_status_shows_who_runs_the_current_config() {
    let node = Node::new("disc_weftctl");
    // A departed proxy is listed as stale for 8 s, then forgotten.
    let cp = ControlPlane::start_with(&node, "1h", &["--stale-proxy-ttl", "8s"]);
    cp.write_manifest(
        "service-db.yaml",
        &service_yaml("db", DB_VIP, "db", &[(DB_PORT, DB_PORT, "tcp")]),
    );
    let mut proxies = Vec::new();
    for name in ["web-0", "web-1"] {
        let pod = node.pod(name);
        cp.write_manifest(
            &format!("pod-{name}.yaml"),
            &pod_yaml(&pod, "web", &[("app", "web")], true),
        );
        proxies.push((pod.clone(), pod.mesh_with(&cp, "web", &[])));
    }
    let status = |json: bool| {
        let admin = format!(
            "http://127.0.0.1:{}",
            weft_api::defaults::CONTROL_ADMIN_PORT
        );
        let mut args = vec!["--control-plane", admin.as_str(), "status"];
        if json {
            args.push("--json");
        }
        let out = cp.pod.exec(bins::weftctl(), &args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // A change reaches both proxies; weftctl says so.
    cp.write_manifest(
        "service-extra.yaml",
        &service_yaml("extra", "198.19.0.11", "web", &[(80, 8080, "")]),
    );
    for (pod, _) in &proxies {
        pod.wait_endpoints("extra.default:80", 2);
    }
    eventually(
        "weftctl reports every proxy current",
        Duration::from_secs(10),
        || status(true).0 == Some(0),
    );
    let (_, json) = status(true);
    let v: serde_json::Value = serde_json::from_str(&json).expect("weftctl --json");
    let list = v["proxies"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 2, "{v}");
    assert!(
        list.iter()
            .all(|p| p["current"] == true && p["acked_version"] == v["version"]),
        "{v}"
    );
    let (code, table) = status(false);
    assert_eq!(code, Some(0));
    assert!(
        table.contains("default/web-0")
            && table.contains("current")
            && table.contains("no manifest errors"),
        "{table}"
    );

    // One proxy stops: it shows as stale, and weftctl exits 1.
    proxies[1].1.signal(nix::sys::signal::Signal::SIGKILL);
    cp.write_manifest(
        "service-extra.yaml",
        &service_yaml("extra", "198.19.0.11", "web", &[(81, 8080, "")]),
    );
    eventually(
        "weftctl reports the stopped proxy",
        Duration::from_secs(10),
        || {
            let (code, table) = status(false);
            code == Some(1)
                && table
                    .lines()
                    .any(|l| l.contains("default/web-1") && l.contains("stale (disconnected)"))
        },
    );
    let (_, table) = status(false);
    assert!(
        table
            .lines()
            .any(|l| l.contains("default/web-0") && l.contains("current")),
        "{table}"
    );
    // The same, as metrics; and the earlier push was timed until it landed everywhere.
    let metrics = cp.metrics();
    let value = |series: &str| weft_e2e::metrics::value(&metrics, series);
    assert_eq!(
        value(r#"proxy_config_current{namespace="default",pod="web-0"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        value(r#"proxy_config_current{namespace="default",pod="web-1"}"#),
        Some(0.0)
    );
    assert!(
        value("push_latency_ms_count").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    // After the TTL the departed proxy is forgotten (pod churn does not
    // grow the control plane), and every proxy left is current again.
    eventually(
        "the departed proxy is forgotten",
        Duration::from_secs(20),
        || {
            let (code, json) = status(true);
            let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            let pods: Vec<String> = v["proxies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["pod"].as_str().map(str::to_string))
                .collect();
            code == Some(0) && pods == ["web-0"]
        },
    );
    assert_eq!(
        weft_e2e::metrics::value(
            &cp.metrics(),
            r#"proxy_config_current{namespace="default",pod="web-1"}"#
        ),
        None
    );
}

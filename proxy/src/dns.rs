//! The sidecar's DNS server: mesh Service names are answered from the
//! snapshot (`NAME.NS.svc.cluster.local`, `NAME.NS.svc`, `NAME.NS`, and
//! `NAME` in the pod's own namespace, all to the Service's virtual IP); every
//! other query is relayed byte for byte to the pod's upstream resolver, so
//! record types, EDNS and DNSSEC bits the mesh knows nothing about pass
//! through untouched.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType, rdata};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::debug;

use crate::discovery::Mesh;

/// Mesh answers are short-lived: endpoints move, virtual IPs rarely do.
const TTL: u32 = 5;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
pub struct DnsServer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    mesh: Option<Mesh>,
    upstream: Option<SocketAddr>,
    namespace: String,
}

/// The first `nameserver` of /etc/resolv.conf, port 53.
pub fn system_upstream() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some("nameserver"))
            .then(|| words.next()?.parse::<IpAddr>().ok())
            .flatten()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

impl DnsServer {
    pub fn new(mesh: Option<Mesh>, upstream: Option<SocketAddr>, namespace: String) -> Self {
        DnsServer {
            inner: Arc::new(Inner {
                mesh,
                upstream,
                namespace,
            }),
        }
    }

    /// Serves UDP and TCP on `addr` in the background.
    pub async fn bind(self, addr: SocketAddr) -> io::Result<()> {
        let udp = Arc::new(UdpSocket::bind(addr).await?);
        let tcp = crate::transport::listen::bind(addr)?;
        let this = self.clone();
        tokio::spawn(async move { this.serve_udp(udp).await });
        tokio::spawn(async move { self.serve_tcp(tcp).await });
        Ok(())
    }

    async fn serve_udp(self, sock: Arc<UdpSocket>) {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = match sock.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "DNS recv");
                    continue;
                }
            };
            let query = buf[..n].to_vec();
            debug!(%from, bytes = n, "DNS query (udp)");
            let (this, sock) = (self.clone(), sock.clone());
            tokio::spawn(async move {
                let reply = match this.answer(&query) {
                    Some(r) => Some(r),
                    None => this.forward_udp(&query).await,
                };
                if let Some(r) = reply {
                    let _ = sock.send_to(&r, from).await;
                }
            });
        }
    }

    async fn serve_tcp(self, listener: TcpListener) {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                // RFC 7766: several length-prefixed queries per connection.
                while let Ok(len) = conn.read_u16().await {
                    let mut query = vec![0u8; usize::from(len)];
                    if conn.read_exact(&mut query).await.is_err() {
                        return;
                    }
                    let reply = match this.answer(&query) {
                        Some(r) => Some(r),
                        None => this.forward_tcp(&query).await,
                    };
                    let Some(r) = reply else { return };
                    let Ok(len) = u16::try_from(r.len()) else {
                        return;
                    };
                    if conn.write_u16(len).await.is_err() || conn.write_all(&r).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    /// The answer for a mesh name, or None to forward the query.
    pub(crate) fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let mesh = self.inner.mesh.as_ref()?.load();
        let req = Message::from_vec(query).ok()?;
        if req.metadata.message_type != MessageType::Query || req.queries.len() != 1 {
            return None;
        }
        let q = req.queries.first()?;
        let name = q.name().to_ascii().to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        let candidates = match name.matches('.').count() {
            0 => vec![format!("{name}.{}.svc", self.inner.namespace)],
            1 => vec![format!("{name}.svc")],
            _ => vec![name.to_string()],
        };
        let vip = candidates.iter().find_map(|c| mesh.resolve(c))?;
        // The app is about to connect: ask for the Service now, so that the
        // connection usually finds it here.
        if let (Some(m), Some(key)) = (self.inner.mesh.as_ref(), mesh.service_key(vip))
            && m.subscriptions.on_demand()
            && !mesh.holds(&crate::discovery::Key::Service(key.clone()))
        {
            m.subscriptions
                .prefetch(crate::discovery::Key::Service(key));
        }
        let mut res = Message::response(req.metadata.id, OpCode::Query);
        res.metadata.authoritative = true;
        res.metadata.recursion_desired = req.metadata.recursion_desired;
        res.metadata.recursion_available = true;
        res.metadata.response_code = ResponseCode::NoError;
        res.add_query(q.clone());
        let rdata = match (q.query_type(), vip) {
            (RecordType::A, IpAddr::V4(v4)) => Some(RData::A(rdata::A(v4))),
            (RecordType::AAAA, IpAddr::V6(v6)) => Some(RData::AAAA(rdata::AAAA(v6))),
            // The name exists; it just has no record of this type.
            _ => None,
        };
        if let Some(rdata) = rdata {
            res.add_answer(Record::from_rdata(q.name().clone(), TTL, rdata));
        }
        debug!(%name, %vip, "DNS: mesh name");
        res.to_vec().ok()
    }

    async fn forward_udp(&self, query: &[u8]) -> Option<Vec<u8>> {
        let upstream = self.inner.upstream?;
        debug!(%upstream, "DNS: forwarding");
        let local: SocketAddr = if upstream.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let sock = UdpSocket::bind(local).await.ok()?;
        sock.connect(upstream).await.ok()?;
        sock.send(query).await.ok()?;
        let mut buf = vec![0u8; 65535];
        let n = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        buf.truncate(n);
        Some(buf)
    }

    async fn forward_tcp(&self, query: &[u8]) -> Option<Vec<u8>> {
        let upstream = self.inner.upstream?;
        let exchange = async {
            let mut s = TcpStream::connect(upstream).await?;
            s.write_u16(u16::try_from(query.len()).map_err(io::Error::other)?)
                .await?;
            s.write_all(query).await?;
            let len = s.read_u16().await?;
            let mut buf = vec![0u8; usize::from(len)];
            s.read_exact(&mut buf).await?;
            Ok::<_, io::Error>(buf)
        };
        tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
            .await
            .ok()?
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::MeshConfig;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use std::str::FromStr;
    use weft_api::v1;

    fn server() -> DnsServer {
        let snap = v1::Snapshot {
            version: 1,
            services: vec![v1::Service {
                name: "db".into(),
                namespace: "shop".into(),
                virtual_ip: "198.19.0.7".into(),
                ports: vec![],
            }],
            ..Default::default()
        };
        let cfg = MeshConfig::from_snapshot(
            &snap,
            "cluster.local",
            "shop",
            &MeshConfig::default(),
            &crate::balance::Registry::default(),
        )
        .unwrap();
        let mesh: Mesh = crate::discovery::MeshState::fixed(cfg);
        DnsServer::new(Some(mesh), None, "shop".into())
    }

    fn ask(s: &DnsServer, name: &str, t: RecordType) -> Option<Message> {
        let mut q = Message::query();
        q.metadata.id = 42;
        q.add_query(Query::query(Name::from_str(name).unwrap(), t));
        s.answer(&q.to_vec().unwrap())
            .map(|r| Message::from_vec(&r).unwrap())
    }

    #[test]
    fn answers_mesh_names_in_every_form() {
        let s = server();
        for name in [
            "db.shop.svc.cluster.local.",
            "db.shop.svc.",
            "db.shop.",
            "db.",
            "DB.Shop.svc.cluster.local.",
        ] {
            let r = ask(&s, name, RecordType::A).unwrap_or_else(|| panic!("{name} not answered"));
            assert_eq!(r.metadata.id, 42);
            let Some(RData::A(a)) = r.answers.first().map(|a| a.data.clone()) else {
                panic!("{name}: no A record")
            };
            assert_eq!(a.0.to_string(), "198.19.0.7");
        }
        // The name exists, but has no IPv6 address: NOERROR, no answers.
        let r = ask(&s, "db.shop.svc.cluster.local.", RecordType::AAAA).unwrap();
        assert!(r.answers.is_empty());
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    }

    #[test]
    fn other_names_are_forwarded() {
        let s = server();
        assert!(ask(&s, "example.com.", RecordType::A).is_none());
        assert!(ask(&s, "db.other.svc.cluster.local.", RecordType::A).is_none());
        assert!(s.answer(b"garbage").is_none());
    }
}

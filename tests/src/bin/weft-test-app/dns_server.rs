use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context;
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType, rdata};
use tokio::net::UdpSocket;

pub async fn serve(listen: SocketAddr, records: &[String]) -> anyhow::Result<()> {
    let mut table = HashMap::new();
    for r in records {
        let (name, ip) = r.split_once('=').context("--record is NAME=IPV4")?;
        let ip: Ipv4Addr = ip.parse().context("--record is NAME=IPV4")?;
        table.insert(name.trim_end_matches('.').to_ascii_lowercase(), ip);
    }
    let sock = UdpSocket::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, records = table.len(), "dns server listening");
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = sock.recv_from(&mut buf).await?;
        let Ok(req) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let Some(q) = req.queries.first().cloned() else {
            continue;
        };
        let mut res = Message::response(req.metadata.id, OpCode::Query);
        res.metadata.recursion_available = true;
        res.add_query(q.clone());
        let name = q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        match table.get(&name) {
            Some(ip) if q.query_type() == RecordType::A => {
                res.add_answer(Record::from_rdata(
                    q.name().clone(),
                    30,
                    RData::A(rdata::A(*ip)),
                ));
            }
            Some(_) => {}
            None => res.metadata.response_code = ResponseCode::NXDomain,
        }
        if let Ok(bytes) = res.to_vec() {
            let _ = sock.send_to(&bytes, from).await;
        }
    }
}

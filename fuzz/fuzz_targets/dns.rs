//! A query packet through the mesh DNS server (`DnsServer::answer`, what its
//! UDP and TCP servers call first): the answer for a mesh name, or nothing
//! (then the query is relayed to the upstream resolver as is). An answer
//! must parse, answer the query it was asked (same id, same question), fit a
//! TCP length prefix, and hold at most the one record of the asked type.
#![no_main]

use std::sync::LazyLock;

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::{RData, RecordType};
use libfuzzer_sys::fuzz_target;
use weft_api::v1;
use weft_proxy::fuzzing::{DnsServer, dns_answer, dns_server};

/// A pod in `shop`, whose mesh has Services there and elsewhere, v4 and v6.
static SERVER: LazyLock<DnsServer> = LazyLock::new(|| {
    let svc = |name: &str, namespace: &str, vip: &str| v1::Service {
        name: name.into(),
        namespace: namespace.into(),
        virtual_ip: vip.into(),
        ports: vec![],
    };
    let snap = v1::Snapshot {
        version: 1,
        services: vec![
            svc("db", "shop", "198.19.0.7"),
            svc("web", "shop", "fd00::19"),
            svc("api", "default", "198.19.0.8"),
        ],
        ..Default::default()
    };
    dns_server(&snap, "shop").expect("the DNS server")
});

fuzz_target!(|data: &[u8]| {
    let Some(reply) = dns_answer(&SERVER, data) else {
        return;
    };
    let query = Message::from_vec(data).expect("an answered query parses");
    let answer = Message::from_vec(&reply).expect("the answer parses");
    assert!(u16::try_from(reply.len()).is_ok(), "too long for TCP");
    assert_eq!(answer.metadata.id, query.metadata.id);
    assert_eq!(answer.metadata.message_type, MessageType::Response);
    assert_eq!(answer.queries, query.queries);
    let q = &query.queries[0];
    assert!(answer.answers.len() <= 1, "{answer:?}");
    for a in &answer.answers {
        assert_eq!(&a.name, q.name());
        match (&a.data, q.query_type()) {
            (RData::A(_), RecordType::A) | (RData::AAAA(_), RecordType::AAAA) => {}
            (d, t) => panic!("a {t} query answered with {d:?}"),
        }
    }
});

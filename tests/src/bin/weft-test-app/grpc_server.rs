use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;

use anyhow::Context;
use futures_util::{Stream, StreamExt};
use tonic::metadata::{KeyAndValueRef, MetadataMap};
use tonic::{Request, Response, Status, Streaming};
use weft_e2e::echo::echo_server::{Echo, EchoServer};
use weft_e2e::echo::hello_server::{Hello, HelloServer};
use weft_e2e::echo::{EchoReply, EchoRequest};

use crate::http_server::{apply_headers, echo_set_headers};

#[derive(Debug, Clone)]
struct Service {
    pod: String,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

impl Service {
    /// A unary answer: `message`, this pod, the request's metadata, and the
    /// response metadata its `x-echo-set-header` asks for.
    fn reply(
        &self,
        req: Request<EchoRequest>,
        message: impl FnOnce(String) -> String,
    ) -> Result<Response<EchoReply>, Status> {
        let headers = metadata_map(req.metadata());
        let set = echo_set_headers(&req.metadata().clone().into_headers());
        let mut res = Response::new(EchoReply {
            message: message(req.into_inner().message),
            pod: self.pod.clone(),
            index: 0,
            headers,
        });
        res.metadata_mut().insert(
            "x-served-by",
            self.pod.parse().map_err(|_| Status::internal("pod name"))?,
        );
        if !set.is_empty() {
            let mut h = std::mem::take(res.metadata_mut()).into_headers();
            apply_headers(&mut h, set);
            *res.metadata_mut() = MetadataMap::from_headers(h);
        }
        Ok(res)
    }
}

/// ASCII metadata by (lowercase) name, the values of a repeated name joined
/// with ", "; binary (`-bin`) metadata is left out.
fn metadata_map(md: &MetadataMap) -> HashMap<String, String> {
    let mut map = HashMap::<String, String>::new();
    for kv in md.iter() {
        let KeyAndValueRef::Ascii(k, v) = kv else {
            continue;
        };
        let Ok(v) = v.to_str() else {
            continue;
        };
        map.entry(k.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(v);
            })
            .or_insert_with(|| v.to_string());
    }
    map
}

#[tonic::async_trait]
impl Echo for Service {
    async fn unary(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.reply(req, |m| m)
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        req: Request<EchoRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let r = req.into_inner();
        let pod = self.pod.clone();
        let s = futures_util::stream::iter(0..r.count).map(move |i| {
            Ok(EchoReply {
                message: format!("{} {i}", r.message),
                pod: pod.clone(),
                index: i,
                headers: HashMap::new(),
            })
        });
        Ok(Response::new(Box::pin(s)))
    }

    type ChatStream = ReplyStream;

    async fn chat(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let pod = self.pod.clone();
        let s = req.into_inner().enumerate().map(move |(i, m)| {
            m.map(|m| EchoReply {
                message: m.message,
                pod: pod.clone(),
                index: i as u32,
                headers: HashMap::new(),
            })
        });
        Ok(Response::new(Box::pin(s)))
    }

    async fn fail(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Err(Status::not_found(req.into_inner().message))
    }
}

#[tonic::async_trait]
impl Hello for Service {
    async fn greet(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.reply(req, |m| format!("hello {m}"))
    }
}

pub async fn serve(listen: SocketAddr, pod: String) -> anyhow::Result<()> {
    tracing::info!(%listen, "grpc server listening");
    let svc = Service { pod };
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(svc.clone()))
        .add_service(HelloServer::new(svc))
        .serve(listen)
        .await
        .context("gRPC server")
}

use std::net::SocketAddr;
use std::pin::Pin;

use anyhow::Context;
use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use weft_e2e::echo::echo_server::{Echo, EchoServer};
use weft_e2e::echo::{EchoReply, EchoRequest};

#[derive(Debug)]
struct Service {
    pod: String,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Service {
    async fn unary(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let mut res = Response::new(EchoReply {
            message: req.into_inner().message,
            pod: self.pod.clone(),
            index: 0,
        });
        res.metadata_mut().insert(
            "x-served-by",
            self.pod.parse().map_err(|_| Status::internal("pod name"))?,
        );
        Ok(res)
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
            })
        });
        Ok(Response::new(Box::pin(s)))
    }

    async fn fail(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Err(Status::not_found(req.into_inner().message))
    }
}

pub async fn serve(listen: SocketAddr, pod: String) -> anyhow::Result<()> {
    tracing::info!(%listen, "grpc server listening");
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(Service { pod }))
        .serve(listen)
        .await
        .context("gRPC server")
}

//! Routes `weft.v1.Discovery` calls: Watch and Discover are served here from
//! shared bytes ([`super::frames`]); everything else goes to the generated
//! server.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{Codec, Streaming};
use tonic::server::NamedService;
use weft_api::v1::discovery_server::DiscoveryServer;
use weft_api::v1::{DiscoverRequest, WatchRequest};

use super::service::DiscoveryService;
use crate::grpc::PeerInfo;

/// Largest request accepted: a first Discover request after a reconnect
/// lists every subscription again.
const MAX_REQUEST: usize = 4 << 20;

#[derive(Clone, Debug)]
pub struct DiscoveryRoutes {
    service: DiscoveryService,
    generated: DiscoveryServer<DiscoveryService>,
}

impl DiscoveryRoutes {
    pub fn new(service: DiscoveryService) -> Self {
        DiscoveryRoutes {
            generated: DiscoveryServer::new(service.clone()),
            service,
        }
    }
}

impl NamedService for DiscoveryRoutes {
    const NAME: &'static str = <DiscoveryServer<DiscoveryService> as NamedService>::NAME;
}

fn decoder<T: prost::Message + Default + Send + 'static>()
-> impl tonic::codec::Decoder<Item = T, Error = Status> {
    tonic_prost::ProstCodec::<T, T>::default().decoder()
}

impl tower::Service<Request<Body>> for DiscoveryRoutes {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let path = req.uri().path();
        let discover = path == "/weft.v1.Discovery/Discover";
        if !discover && path != "/weft.v1.Discovery/Watch" {
            let mut generated = self.generated.clone();
            return Box::pin(async move { tower::Service::call(&mut generated, req).await });
        }
        let service = self.service.clone();
        Box::pin(async move {
            let peer = req.extensions().get::<PeerInfo>().cloned();
            let body = req.into_body();
            let served = if discover {
                let requests = Streaming::new_request(
                    decoder::<DiscoverRequest>(),
                    body,
                    None,
                    Some(MAX_REQUEST),
                );
                service.discover_stream(peer.as_ref(), requests).await
            } else {
                let requests = Streaming::new_request(
                    decoder::<WatchRequest>(),
                    body,
                    None,
                    Some(MAX_REQUEST),
                );
                service.watch_stream(peer.as_ref(), requests).await
            };
            Ok(match served {
                Ok(body) => {
                    let mut res = Response::new(Body::new(body));
                    res.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/grpc"),
                    );
                    res
                }
                // Refused before the stream began: a trailers-only answer.
                Err(status) => status.into_http(),
            })
        })
    }
}

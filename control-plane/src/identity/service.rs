//! `weft.v1.Identity`: Certify and TrustBundle.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tonic::{Request, Response, Status};
use tracing::{info, warn};
use weft_api::v1::identity_server::Identity;
use weft_api::v1::{CertifyRequest, CertifyResponse, TrustBundleRequest, TrustBundleResponse};

use super::ca::{SharedCa, SignError};
use super::tokens::{TokenError, TokenVerifier};
use crate::metrics::{Metrics, Reject};

#[derive(Debug, Clone)]
pub struct IdentityService {
    /// Swapped in place when the CA rotates.
    pub ca: SharedCa,
    pub tokens: Arc<dyn TokenVerifier>,
    pub lifetime: Duration,
    pub metrics: Arc<Metrics>,
    pub tracing: Option<Arc<weft_api::trace::Tracing>>,
}

impl IdentityService {
    fn reject(&self, reason: Reject, status: Status) -> Status {
        self.metrics.certify_rejected(reason);
        warn!(
            reason = reason.as_str(),
            message = status.message(),
            "Certify refused"
        );
        status
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let span = self.tracing.as_ref().map(|t| {
            t.start_span(
                "weft.v1.Identity/Certify".into(),
                opentelemetry::trace::SpanKind::Server,
                vec![opentelemetry::KeyValue::new("rpc.system", "grpc")],
            )
        });
        let res = self.certify_inner(request).await;
        if let Some(s) = &span {
            match &res {
                Ok(_) => s.finish(200, None),
                Err(status) => {
                    s.set(opentelemetry::KeyValue::new(
                        "rpc.grpc.status_code",
                        status.code() as i64,
                    ));
                    s.finish(500, Some(status.message()));
                }
            }
        }
        res
    }

    async fn trust_bundle(
        &self,
        _request: Request<TrustBundleRequest>,
    ) -> Result<Response<TrustBundleResponse>, Status> {
        Ok(Response::new(TrustBundleResponse {
            trust_anchors_der: self.ca.load().roots().iter().map(|c| c.to_vec()).collect(),
        }))
    }
}

impl IdentityService {
    async fn certify_inner(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let req = request.into_inner();
        let proven = match self.tokens.verify(&req.token).await {
            Ok(id) => id,
            Err(e) => {
                let (reason, status) = match &e {
                    TokenError::Unavailable(_) => {
                        (Reject::Internal, Status::unavailable(e.to_string()))
                    }
                    TokenError::Empty | TokenError::Unknown | TokenError::Invalid(_) => {
                        (Reject::Token, Status::unauthenticated(e.to_string()))
                    }
                    TokenError::Expired(_) => {
                        (Reject::TokenExpired, Status::unauthenticated(e.to_string()))
                    }
                    TokenError::WrongAudience { .. } => (
                        Reject::TokenAudience,
                        Status::unauthenticated(e.to_string()),
                    ),
                    TokenError::NotBound
                    | TokenError::PodGone { .. }
                    | TokenError::BoundPodGone(_) => {
                        (Reject::TokenPod, Status::permission_denied(e.to_string()))
                    }
                    TokenError::WrongServiceAccount { .. } => (
                        Reject::TokenServiceAccount,
                        Status::permission_denied(e.to_string()),
                    ),
                };
                return Err(self.reject(reason, status));
            }
        };
        let issued = self
            .ca
            .load()
            .sign(&req.csr_der, &proven, self.lifetime)
            .map_err(|e| match e {
                SignError::BadCsr(_) | SignError::BadSan(_) => {
                    self.reject(Reject::BadCsr, Status::invalid_argument(e.to_string()))
                }
                SignError::IdentityMismatch { .. } => self.reject(
                    Reject::IdentityMismatch,
                    Status::permission_denied(e.to_string()),
                ),
                SignError::Sign(_) => {
                    self.reject(Reject::Internal, Status::internal(e.to_string()))
                }
            })?;
        self.metrics.certify_issued();
        let valid_until_unix_ms = issued
            .not_after
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        info!(identity = %proven, valid_until_unix_ms, "certificate issued");
        Ok(Response::new(CertifyResponse {
            leaf_der: issued.leaf.to_vec(),
            intermediates_der: issued.intermediates.iter().map(|c| c.to_vec()).collect(),
            valid_until_unix_ms,
            trust_anchors_der: self.ca.load().roots().iter().map(|c| c.to_vec()).collect(),
        }))
    }
}

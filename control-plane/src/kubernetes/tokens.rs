//! Proof of identity in a cluster: the proxy's projected ServiceAccount token
//! (audience `weft.dev`), checked by the API server with a TokenReview.
//!
//! Beyond what the review says, the token must be bound to a pod (the
//! kubelet's projected tokens are), and that pod must still exist with the
//! same UID and run as the token's ServiceAccount; the identity issued is
//! `spiffe://<trust domain>/ns/<ns>/sa/<sa>`. Accepted tokens are remembered
//! for a short, bounded time so that a fleet restarting at once costs the API
//! server one review per proxy, not one per retry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use weft_api::SpiffeId;

use crate::identity::tokens::{TokenError, TokenVerifier, VerifyFuture};

/// The audience a proxy's token must be minted for.
pub const AUDIENCE: &str = "weft.dev";
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// At most this many accepted tokens are remembered.
const CACHE_MAX: usize = 10_000;

pub struct TokenReviewer {
    client: Client,
    trust_domain: String,
    /// The source's Pods, when there is one; a Pod missing from it is looked
    /// up directly (the store may lag a just-created pod).
    pods: Option<Store<Pod>>,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], (SpiffeId, Instant)>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("trust_domain", &self.trust_domain)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Who a reviewed token speaks for.
#[derive(Debug, PartialEq, Eq)]
struct Reviewed {
    namespace: String,
    service_account: String,
    pod: Option<(String, String)>,
}

impl TokenReviewer {
    pub fn new(
        client: Client,
        trust_domain: &str,
        pods: Option<Store<Pod>>,
        ttl: Duration,
    ) -> Self {
        TokenReviewer {
            client,
            trust_domain: trust_domain.into(),
            pods,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn review(&self, token: &str) -> Result<Reviewed, TokenError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let done = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| TokenError::Unavailable(format!("TokenReview: {e}")))?;
        let status = done.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let detail = status.error.unwrap_or_else(|| "not authenticated".into());
            return Err(classify(detail));
        }
        if !status.audiences.iter().flatten().any(|a| a == AUDIENCE) {
            return Err(TokenError::WrongAudience {
                expected: AUDIENCE.into(),
                detail: format!(
                    "the review names audiences {:?}",
                    status.audiences.unwrap_or_default()
                ),
            });
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let (namespace, service_account) = parse_username(&username)
            .ok_or_else(|| TokenError::Invalid(format!("`{username}` is not a ServiceAccount")))?;
        let extra = user.extra.unwrap_or_default();
        let first = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
        let pod = first(POD_NAME).zip(first(POD_UID));
        Ok(Reviewed {
            namespace,
            service_account,
            pod,
        })
    }

    /// The pod the token is bound to exists, is that pod (UID), and runs as
    /// the token's ServiceAccount.
    async fn check_pod(&self, r: &Reviewed) -> Result<(), TokenError> {
        let Some((name, uid)) = &r.pod else {
            return Err(TokenError::NotBound);
        };
        let gone = || TokenError::PodGone {
            namespace: r.namespace.clone(),
            pod: name.clone(),
        };
        let cached = self
            .pods
            .as_ref()
            .and_then(|s| s.get(&ObjectRef::new(name).within(&r.namespace)));
        let pod = match cached {
            Some(p) if p.metadata.uid.as_deref() == Some(uid.as_str()) => p,
            _ => {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &r.namespace);
                match api.get_opt(name).await {
                    Ok(Some(p)) => std::sync::Arc::new(p),
                    Ok(None) => return Err(gone()),
                    Err(e) => {
                        return Err(TokenError::Unavailable(format!(
                            "reading pod {}/{name}: {e}",
                            r.namespace
                        )));
                    }
                }
            }
        };
        if pod.metadata.uid.as_deref() != Some(uid.as_str()) {
            return Err(gone());
        }
        let runs_as = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        if runs_as != r.service_account {
            return Err(TokenError::WrongServiceAccount {
                namespace: r.namespace.clone(),
                pod: name.clone(),
                runs_as,
                token_sa: r.service_account.clone(),
            });
        }
        Ok(())
    }

    async fn verify_uncached(&self, token: &str) -> Result<SpiffeId, TokenError> {
        let reviewed = self.review(token).await?;
        self.check_pod(&reviewed).await?;
        SpiffeId::new(
            &self.trust_domain,
            &reviewed.namespace,
            &reviewed.service_account,
        )
        .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    fn remember(&self, key: [u8; 32], id: &SpiffeId) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        let now = Instant::now();
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (id.clone(), now + self.ttl));
    }

    fn recall(&self, key: &[u8; 32]) -> Option<SpiffeId> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(id, _)| id.clone())
    }
}

impl TokenVerifier for TokenReviewer {
    fn verify<'a>(&'a self, token: &'a str) -> VerifyFuture<'a> {
        Box::pin(async move {
            if token.is_empty() {
                return Err(TokenError::Empty);
            }
            let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if let Some(id) = self.recall(&key) {
                return Ok(id);
            }
            let id = self.verify_uncached(token).await?;
            self.remember(key, &id);
            Ok(id)
        })
    }
}

/// `system:serviceaccount:<ns>:<sa>`
fn parse_username(u: &str) -> Option<(String, String)> {
    let rest = u.strip_prefix("system:serviceaccount:")?;
    let (ns, sa) = rest.split_once(':')?;
    (!ns.is_empty() && !sa.is_empty()).then(|| (ns.to_string(), sa.to_string()))
}

/// The API server's reason for refusing a token, as one of ours.
fn classify(detail: String) -> TokenError {
    let lower = detail.to_ascii_lowercase();
    if lower.contains("audience") {
        TokenError::WrongAudience {
            expected: AUDIENCE.into(),
            detail,
        }
    } else if lower.contains("expired") {
        TokenError::Expired(detail)
    } else if lower.contains("invalidated")
        || lower.contains("not found")
        || lower.contains("has been deleted")
        || lower.contains("does not match")
    {
        // A bound object that is gone (or replaced) invalidates its tokens.
        TokenError::BoundPodGone(detail)
    } else {
        TokenError::Invalid(detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_name_service_accounts() {
        assert_eq!(
            parse_username("system:serviceaccount:shop:web"),
            Some(("shop".into(), "web".into()))
        );
        assert_eq!(parse_username("system:node:n1"), None);
        assert_eq!(parse_username("system:serviceaccount:shop:"), None);
    }

    #[test]
    fn refusals_are_told_apart() {
        assert!(matches!(
            classify("[invalid bearer token, token audiences [\"x\"] is invalid for the target audiences [\"weft.dev\"]]".into()),
            TokenError::WrongAudience { .. }
        ));
        assert!(matches!(
            classify("[invalid bearer token, square/go-jose/jwt: validation failed, token is expired (exp)]".into()),
            TokenError::Expired(_)
        ));
        assert!(matches!(
            classify("[invalid bearer token, service account token has been invalidated]".into()),
            TokenError::BoundPodGone(_)
        ));
        assert!(matches!(classify("garbage".into()), TokenError::Invalid(_)));
    }
}

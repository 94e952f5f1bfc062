//! Proof of identity. A proxy presents a token with its CSR; a verifier says
//! which workload identity the token proves.
//!
//! Local mode uses bootstrap tokens from a file; in a cluster a projected
//! ServiceAccount token reviewed by the API server
//! ([`crate::kubernetes::tokens::TokenReviewer`]) stands behind the same trait.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Deserialize;
use weft_api::SpiffeId;

/// Why a token proves nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is empty")]
    Empty,
    #[error("the token is not known")]
    Unknown,
    #[error("the token source is unavailable: {0}")]
    Unavailable(String),
    /// The API server did not accept it (bad signature, unknown issuer...).
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error("the token has expired: {0}")]
    Expired(String),
    #[error("the token is not for audience `{expected}`: {detail}")]
    WrongAudience { expected: String, detail: String },
    #[error("the token's pod is gone: {0}")]
    BoundPodGone(String),
    #[error("the token is not bound to a pod (use a projected ServiceAccount token)")]
    NotBound,
    #[error("the token's pod {namespace}/{pod} no longer exists (or is another pod of that name)")]
    PodGone { namespace: String, pod: String },
    #[error(
        "the token's pod {namespace}/{pod} runs as service account `{runs_as}`, not `{token_sa}`"
    )]
    WrongServiceAccount {
        namespace: String,
        pod: String,
        runs_as: String,
        token_sa: String,
    },
}

pub type VerifyFuture<'a> = Pin<Box<dyn Future<Output = Result<SpiffeId, TokenError>> + Send + 'a>>;

pub trait TokenVerifier: Send + Sync + std::fmt::Debug {
    fn verify<'a>(&'a self, token: &'a str) -> VerifyFuture<'a>;
}

/// `tokens.yaml`:
///
/// ```yaml
/// tokens:
///   - token: 3f9c...          # any string; keep it secret
///     namespace: default
///     serviceAccount: web
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TokenEntry {
    token: String,
    namespace: String,
    service_account: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    #[error("cannot read the tokens file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the tokens file {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Bootstrap tokens from a YAML file, reread when the file changes. A broken
/// edit is logged and the last good set keeps serving.
#[derive(Debug)]
pub struct BootstrapTokens {
    path: PathBuf,
    trust_domain: String,
    state: Mutex<(Option<SystemTime>, HashMap<String, SpiffeId>)>,
}

impl BootstrapTokens {
    pub fn load(path: &Path, trust_domain: &str) -> Result<Self, TokensFileError> {
        let modified = modified(path);
        let tokens = parse(path, trust_domain)?;
        Ok(BootstrapTokens {
            path: path.into(),
            trust_domain: trust_domain.into(),
            state: Mutex::new((modified, tokens)),
        })
    }

    fn lookup(&self, token: &str) -> Result<SpiffeId, TokenError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| TokenError::Unavailable("token table poisoned".into()))?;
        let now = modified(&self.path);
        if now != state.0 {
            match parse(&self.path, &self.trust_domain) {
                Ok(tokens) => {
                    tracing::info!(path = %self.path.display(), count = tokens.len(), "tokens reloaded");
                    *state = (now, tokens);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "keeping the previous tokens");
                    state.0 = now;
                }
            }
        }
        state.1.get(token).cloned().ok_or(TokenError::Unknown)
    }
}

impl TokenVerifier for BootstrapTokens {
    fn verify<'a>(&'a self, token: &'a str) -> VerifyFuture<'a> {
        Box::pin(async move {
            if token.is_empty() {
                return Err(TokenError::Empty);
            }
            self.lookup(token)
        })
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn parse(path: &Path, trust_domain: &str) -> Result<HashMap<String, SpiffeId>, TokensFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokensFileError::Read {
        path: path.into(),
        source,
    })?;
    let invalid = |reason: String| TokensFileError::Invalid {
        path: path.into(),
        reason,
    };
    let file: TokensFile = serde_norway::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let mut out = HashMap::new();
    for (i, e) in file.tokens.into_iter().enumerate() {
        if e.token.is_empty() {
            return Err(invalid(format!("tokens[{i}].token is empty")));
        }
        let id = SpiffeId::new(trust_domain, &e.namespace, &e.service_account)
            .map_err(|err| invalid(format!("tokens[{i}]: {err}")))?;
        if out.insert(e.token, id).is_some() {
            return Err(invalid(format!("tokens[{i}].token appears twice")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn maps_tokens_and_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(
            &path,
            "tokens:\n  - token: abc\n    namespace: default\n    serviceAccount: web\n",
        )
        .unwrap();
        let t = BootstrapTokens::load(&path, "cluster.local").unwrap();
        assert_eq!(
            t.verify("abc").await.unwrap().to_string(),
            "spiffe://cluster.local/ns/default/sa/web"
        );
        assert_eq!(t.verify("nope").await, Err(TokenError::Unknown));
        assert_eq!(t.verify("").await, Err(TokenError::Empty));

        // A broken edit: the old token still works.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, "tokens:\n  - token: abc\n    namespace: Default!\n").unwrap();
        let f = std::fs::File::options().append(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        assert!(t.verify("abc").await.is_ok());
    }

    #[test]
    fn errors_name_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(
            &path,
            "tokens:\n  - token: a\n    namespace: ok\n    serviceAccount: Bad_Name\n",
        )
        .unwrap();
        let e = BootstrapTokens::load(&path, "cluster.local")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokens[0]") && e.contains("Bad_Name"), "{e}");
        std::fs::write(
            &path,
            "tokens:\n  - token: a\n    namespace: ok\n    sa: x\n",
        )
        .unwrap();
        let e = BootstrapTokens::load(&path, "cluster.local")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sa"), "{e}");
    }
}

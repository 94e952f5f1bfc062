//! Before an install: the API server answers, runs a Kubernetes with native
//! sidecars, and lets this user create what an install creates.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};

use super::layout::{INSTALL_PERMISSIONS, NATIVE_SIDECARS};
use super::{Line, api_error, version};

/// What `/version` said, for the checks that follow.
#[derive(Clone, Debug)]
pub struct ServerVersion {
    pub git_version: String,
    /// `(major, minor)`, when it parses.
    pub parsed: Option<(u32, u32)>,
}

/// `API server`: reachable, and which Kubernetes it runs.
pub async fn reachable(client: &Client, server: &str) -> (Line, Option<ServerVersion>) {
    const NAME: &str = "API server";
    match client.apiserver_version().await {
        Ok(info) => {
            let parsed = version::parse(&info.major, &info.minor, &info.git_version);
            let line = Line::pass(
                NAME,
                format!("{server} answers, Kubernetes {}", info.git_version),
            );
            let v = ServerVersion {
                git_version: info.git_version,
                parsed,
            };
            (line, Some(v))
        }
        Err(e) => (
            Line::fail(
                NAME,
                format!("cannot reach {server}: {}", api_error(&e)),
                "check the kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config) and that \
                 `kubectl version` works from here",
            ),
            None,
        ),
    }
}

/// `native sidecars`: 1.29 or newer.
pub fn sidecars(v: &ServerVersion) -> Line {
    const NAME: &str = "native sidecars";
    let (ma, mi) = NATIVE_SIDECARS;
    match v.parsed {
        Some(parsed) if version::native_sidecars(parsed) => Line::pass(
            NAME,
            format!(
                "Kubernetes {} runs the proxy as a native sidecar (restartPolicy: Always)",
                v.git_version
            ),
        ),
        Some(_) => Line::fail(
            NAME,
            format!(
                "Kubernetes {} is older than {ma}.{mi}: native sidecars are off by default \
                 (on 1.28 only with the SidecarContainers feature gate, which cannot be seen \
                 from here)",
                v.git_version
            ),
            format!(
                "upgrade to {ma}.{mi} or newer, or annotate meshed pods \
                 `weft.dev/sidecar: classic` so the proxy runs as an ordinary container"
            ),
        ),
        None => Line::fail(
            NAME,
            format!("cannot read the version `{}`", v.git_version),
            format!(
                "Weft needs Kubernetes {ma}.{mi} or newer for native sidecars; on older \
                 clusters annotate meshed pods `weft.dev/sidecar: classic`"
            ),
        ),
    }
}

/// `may create <resource>`: one SelfSubjectAccessReview per kind an install
/// creates.
pub async fn permissions(client: &Client, namespace: &str) -> Vec<Line> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut lines = Vec::new();
    for (group, resource, namespaced) in INSTALL_PERMISSIONS {
        let what = if group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{group}")
        };
        let name = if namespaced {
            format!("may create {what} in {namespace}")
        } else {
            format!("may create {what}")
        };
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some("create".into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    namespace: namespaced.then(|| namespace.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let fix = format!(
            "run the install as a cluster administrator, or have one grant this user \
             `create` on {what}{}",
            if namespaced {
                format!(" in namespace {namespace}")
            } else {
                String::new()
            }
        );
        let line = match api.create(&PostParams::default(), &review).await {
            Ok(r) => {
                let status = r.status.unwrap_or_default();
                let reason = status
                    .reason
                    .filter(|r| !r.is_empty())
                    .or(status.evaluation_error.filter(|e| !e.is_empty()));
                if status.allowed {
                    Line::pass(name, "allowed")
                } else {
                    let why = reason.map(|r| format!(" ({r})")).unwrap_or_default();
                    Line::fail(name, format!("not allowed{why}"), fix)
                }
            }
            Err(e) => Line::fail(
                name,
                format!("the access review failed: {}", api_error(&e)),
                fix,
            ),
        };
        lines.push(line);
    }
    lines
}

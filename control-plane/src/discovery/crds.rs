//! Weft's own custom resources, for what Gateway API does not cover. They
//! derive their CRD schema (kube + schemars), so the same types serve the
//! local manifests, the Kubernetes source and the generated CRD YAML.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Traffic policy for one Service (or one of its ports): retry budget,
/// circuit breaking, limits and the like. Its policy fields arrive with the
/// resilience work; today it names its target, and the control plane checks it.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    namespaced
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicySpec {
    pub target_ref: PolicyTargetRef,
}

/// The Service a policy applies to (Gateway API's policy attachment shape).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetRef {
    /// The core group, `""`.
    #[serde(default)]
    pub group: String,
    /// `Service`.
    pub kind: String,
    pub name: String,
    /// One port of the Service; all of them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

//! `weftctl install`: everything a cluster needs, as YAML for
//! `kubectl apply --server-side -f -`. The objects are the ones checked in
//! under `k8s/` (a kustomize base and add-ons), embedded here, so that the
//! two never drift apart (a test compares them with `kubectl kustomize`);
//! flags only change what they name.

use serde_json::{Value, json};

const CRDS: &str = concat!(
    include_str!("../../k8s/crds/weft.dev_trafficpolicies.yaml"),
    include_str!("../../k8s/crds/weft.dev_authorizationpolicies.yaml"),
    include_str!("../../k8s/crds/weft.dev_faultinjections.yaml"),
    include_str!("../../k8s/crds/weft.dev_requestauthentications.yaml"),
);
/// The Gateway API CRDs Weft reads, as `k8s/gateway-api` lists them.
const GATEWAY_API: [(&str, &str); 3] = [
    (
        "k8s/gateway-api/httproutes-experimental-v1.5.1.yaml",
        include_str!("../../k8s/gateway-api/httproutes-experimental-v1.5.1.yaml"),
    ),
    (
        "k8s/gateway-api/grpcroutes-experimental-v1.5.1.yaml",
        include_str!("../../k8s/gateway-api/grpcroutes-experimental-v1.5.1.yaml"),
    ),
    (
        "k8s/gateway-api/referencegrants-experimental-v1.5.1.yaml",
        include_str!("../../k8s/gateway-api/referencegrants-experimental-v1.5.1.yaml"),
    ),
];
const NAMESPACE: &str = include_str!("../../k8s/base/namespace.yaml");
const RBAC: &str = include_str!("../../k8s/base/rbac.yaml");
const CONTROL_PLANE: &str = include_str!("../../k8s/base/control-plane.yaml");
const WEBHOOK: &str = include_str!("../../k8s/base/webhook.yaml");
const JAEGER: &str = include_str!("../../k8s/addons/jaeger/jaeger.yaml");
const JAEGER_OTLP: &str = include_str!("../../k8s/addons/jaeger/otlp.yaml");

/// Add-ons `--addons` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Addon {
    /// A Jaeger all-in-one, with the control plane and proxies sending it spans.
    Jaeger,
}

#[derive(Clone, Debug, clap::Args)]
pub struct InstallArgs {
    /// Add-ons to install with the mesh (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub addons: Vec<Addon>,
    /// The control plane's image (default: the one in k8s/base).
    #[arg(long)]
    pub control_image: Option<String>,
    /// The proxy image the injector adds to pods.
    #[arg(long)]
    pub proxy_image: Option<String>,
    /// The init image (iptables) the injector adds to pods.
    #[arg(long)]
    pub init_image: Option<String>,
    /// Control plane replicas (one leads; all serve).
    #[arg(long)]
    pub replicas: Option<u32>,
    /// What the API server does when the injector cannot be reached: Ignore
    /// (pods start without a sidecar) or Fail (pods are refused).
    #[arg(long, value_parser = ["Ignore", "Fail"])]
    pub webhook_failure_policy: Option<String>,
    /// Leave the Gateway API CRDs (HTTPRoute, GRPCRoute, ReferenceGrant) out
    /// (the cluster has them already).
    #[arg(long)]
    pub skip_gateway_api_crds: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("the embedded manifest {file} is not valid YAML: {message}")]
    Embedded { file: &'static str, message: String },
    #[error("writing YAML: {0}")]
    Write(String),
}

fn docs(file: &'static str, text: &str) -> Result<Vec<Value>, InstallError> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).map_err(|e| InstallError::Embedded {
            file,
            message: e.to_string(),
        })?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

fn is(v: &Value, kind: &str, name: &str) -> bool {
    v["kind"] == kind && v["metadata"]["name"] == name
}

/// The containers of the control plane's Deployment.
fn control_container(objects: &mut [Value]) -> Option<&mut Value> {
    objects
        .iter_mut()
        .find(|o| is(o, "Deployment", "weft-control"))?
        .pointer_mut("/spec/template/spec/containers/0")
}

fn add_env(container: &mut Value, name: &str, value: &str) {
    if let Some(env) = container.get_mut("env").and_then(Value::as_array_mut) {
        env.retain(|e| e["name"] != name);
        env.push(json!({"name": name, "value": value}));
    }
}

/// The objects to apply, in order (CRDs first, the webhook last).
pub fn objects(args: &InstallArgs) -> Result<Vec<Value>, InstallError> {
    let mut out = docs("k8s/crds", CRDS)?;
    if !args.skip_gateway_api_crds {
        for (file, text) in GATEWAY_API {
            out.extend(docs(file, text)?);
        }
    }
    out.extend(docs("k8s/base/namespace.yaml", NAMESPACE)?);
    out.extend(docs("k8s/base/rbac.yaml", RBAC)?);
    out.extend(docs("k8s/base/control-plane.yaml", CONTROL_PLANE)?);
    if args.addons.contains(&Addon::Jaeger) {
        out.extend(docs("k8s/addons/jaeger/jaeger.yaml", JAEGER)?);
        // The add-on's patch: its env entries join the control plane's.
        let patch = docs("k8s/addons/jaeger/otlp.yaml", JAEGER_OTLP)?;
        let env: Vec<(String, String)> = patch
            .iter()
            .flat_map(|p| {
                p.pointer("/spec/template/spec/containers/0/env")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_string(),
                    e["value"].as_str()?.to_string(),
                ))
            })
            .collect();
        // Placed first, in order, as kustomize's strategic merge does.
        if let Some(list) = control_container(&mut out)
            .and_then(|c| c.get_mut("env"))
            .and_then(Value::as_array_mut)
        {
            list.retain(|e| !env.iter().any(|(k, _)| e["name"] == k.as_str()));
            for (i, (k, v)) in env.iter().enumerate() {
                list.insert(i, json!({"name": k, "value": v}));
            }
        }
    }
    out.extend(docs("k8s/base/webhook.yaml", WEBHOOK)?);

    if let Some(c) = control_container(&mut out) {
        if let Some(image) = &args.control_image {
            c["image"] = json!(image);
        }
        if let Some(image) = &args.proxy_image {
            add_env(c, "WEFT_PROXY_IMAGE", image);
        }
        if let Some(image) = &args.init_image {
            add_env(c, "WEFT_INIT_IMAGE", image);
        }
    }
    if let Some(n) = args.replicas
        && let Some(d) = out.iter_mut().find(|o| is(o, "Deployment", "weft-control"))
    {
        d["spec"]["replicas"] = json!(n);
    }
    if let Some(policy) = &args.webhook_failure_policy
        && let Some(w) = out
            .iter_mut()
            .find(|o| is(o, "MutatingWebhookConfiguration", "weft-injector"))
    {
        for hook in w["webhooks"].as_array_mut().into_iter().flatten() {
            hook["failurePolicy"] = json!(policy);
        }
    }
    Ok(out)
}

/// [`objects`] as one YAML stream.
pub fn render(args: &InstallArgs) -> Result<String, InstallError> {
    let mut out = String::from(
        "# Weft, rendered by `weftctl install`. Apply with:\n#   weftctl install | kubectl apply --server-side -f -\n",
    );
    for o in objects(args)? {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&o).map_err(|e| InstallError::Write(e.to_string()))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> InstallArgs {
        InstallArgs {
            addons: vec![],
            control_image: None,
            proxy_image: None,
            init_image: None,
            replicas: None,
            webhook_failure_policy: None,
            skip_gateway_api_crds: false,
        }
    }

    #[test]
    fn renders_the_base_and_applies_flags() {
        let base = objects(&args()).unwrap();
        let kinds: Vec<&str> = base.iter().filter_map(|o| o["kind"].as_str()).collect();
        assert_eq!(kinds.first(), Some(&"CustomResourceDefinition"));
        assert_eq!(kinds.last(), Some(&"MutatingWebhookConfiguration"));
        assert!(kinds.contains(&"PodDisruptionBudget"));
        let mut a = args();
        a.addons = vec![Addon::Jaeger];
        a.replicas = Some(3);
        a.proxy_image = Some("reg/weft-proxy:x".into());
        a.webhook_failure_policy = Some("Fail".into());
        a.skip_gateway_api_crds = true;
        let objs = objects(&a).unwrap();
        assert!(objs.iter().any(|o| is(o, "Deployment", "jaeger")));
        for crd in [
            "httproutes.gateway.networking.k8s.io",
            "grpcroutes.gateway.networking.k8s.io",
            "referencegrants.gateway.networking.k8s.io",
        ] {
            assert!(base.iter().any(|o| o["metadata"]["name"] == crd), "{crd}");
            assert!(!objs.iter().any(|o| o["metadata"]["name"] == crd), "{crd}");
        }
        let d = objs
            .iter()
            .find(|o| is(o, "Deployment", "weft-control"))
            .unwrap();
        assert_eq!(d["spec"]["replicas"], 3);
        let env = d
            .pointer("/spec/template/spec/containers/0/env")
            .unwrap()
            .to_string();
        assert!(
            env.contains("WEFT_INJECT_OTLP_ENDPOINT") && env.contains("reg/weft-proxy:x"),
            "{env}"
        );
        let w = objs
            .iter()
            .find(|o| is(o, "MutatingWebhookConfiguration", "weft-injector"))
            .unwrap();
        assert_eq!(w["webhooks"][0]["failurePolicy"], "Fail");
        assert!(render(&a).unwrap().starts_with("# Weft"));
    }
}

//! After an install: the CRDs, the control plane and its Service, the
//! injector's registration and its caBundle, the mesh CA, the leader, and
//! whether the API server's call to the injector works.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use time::OffsetDateTime;

use super::certs::{self, Validity};
use super::layout::{self, CONTROL};
use super::{Line, api_error};
use crate::inject::keys;

/// The fix for anything an install creates that is missing.
const INSTALL: &str = "install Weft: weftctl install | kubectl apply --server-side -f -";

/// `CRD <name>`: exists and is Established.
pub async fn crd(client: &Client, name: &str) -> Line {
    let line_name = format!("CRD {name}");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = match api.get_opt(name).await {
        Ok(Some(c)) => c,
        Ok(None) => return Line::fail(line_name, "not installed", INSTALL),
        Err(e) => {
            return Line::fail(
                line_name,
                format!("cannot read it: {}", api_error(&e)),
                "check this user may get customresourcedefinitions",
            );
        }
    };
    let conditions = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let established = conditions.iter().find(|c| c.type_ == "Established");
    let served: Vec<String> = crd
        .spec
        .versions
        .iter()
        .filter(|v| v.served)
        .map(|v| v.name.clone())
        .collect();
    let bundle = crd
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("gateway.networking.k8s.io/bundle-version"))
        .map(|v| format!(", Gateway API {v}"))
        .unwrap_or_default();
    match established {
        Some(c) if c.status == "True" => Line::pass(
            line_name,
            format!("Established, serving {}{bundle}", served.join(", ")),
        ),
        other => {
            let why = other
                .and_then(|c| c.message.clone())
                .filter(|m| !m.is_empty())
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            Line::fail(
                line_name,
                format!("not Established{why}"),
                format!(
                    "see `kubectl describe crd {name}`; a CRD is Established seconds after it is applied"
                ),
            )
        }
    }
}

/// `control plane`: the Deployment has every replica available.
pub async fn deployment(client: &Client, ns: &str) -> Line {
    const NAME: &str = "control plane";
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d = match api.get_opt(CONTROL).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            return Line::fail(
                NAME,
                format!("Deployment {ns}/{CONTROL} not found"),
                INSTALL,
            );
        }
        Err(e) => {
            return Line::fail(
                NAME,
                format!("cannot read Deployment {ns}/{CONTROL}: {}", api_error(&e)),
                format!("check this user may get deployments in {ns}"),
            );
        }
    };
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = d.status.unwrap_or_default();
    let available = status.available_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    if want == 0 {
        return Line::fail(
            NAME,
            format!("Deployment {ns}/{CONTROL} is scaled to 0"),
            format!("kubectl -n {ns} scale deployment {CONTROL} --replicas=2"),
        );
    }
    if available >= want && updated >= want {
        return Line::pass(
            NAME,
            format!("Deployment {ns}/{CONTROL}: {available}/{want} replicas available"),
        );
    }
    let progressing = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.status != "True" || c.type_ == "Progressing")
        .filter_map(|c| c.message)
        .collect::<Vec<_>>()
        .join("; ");
    let progressing = if progressing.is_empty() {
        String::new()
    } else {
        format!(" ({progressing})")
    };
    Line::fail(
        NAME,
        format!(
            "Deployment {ns}/{CONTROL}: {available}/{want} replicas available, {updated} up to date{progressing}"
        ),
        format!(
            "see `kubectl -n {ns} get pods -l {}={CONTROL}` and `kubectl -n {ns} logs deployment/{CONTROL}`",
            layout::NAME_LABEL
        ),
    )
}

/// `control plane Service`: the Service has its three ports and ready
/// endpoints. Returns the ready endpoints' pod names.
pub async fn service(client: &Client, ns: &str) -> (Line, Vec<String>) {
    const NAME: &str = "control plane Service";
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc = match services.get_opt(CONTROL).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return (
                Line::fail(NAME, format!("Service {ns}/{CONTROL} not found"), INSTALL),
                Vec::new(),
            );
        }
        Err(e) => {
            return (
                Line::fail(
                    NAME,
                    format!("cannot read Service {ns}/{CONTROL}: {}", api_error(&e)),
                    format!("check this user may get services in {ns}"),
                ),
                Vec::new(),
            );
        }
    };
    let ports: Vec<String> = svc
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.name)
        .collect();
    let missing: Vec<&str> = [layout::PORT_GRPC, layout::PORT_WEBHOOK, layout::PORT_ADMIN]
        .into_iter()
        .filter(|p| !ports.iter().any(|q| q == p))
        .collect();
    if !missing.is_empty() {
        return (
            Line::fail(
                NAME,
                format!(
                    "Service {ns}/{CONTROL} has no port named {}",
                    missing.join(", ")
                ),
                format!("reapply it: {INSTALL}"),
            ),
            Vec::new(),
        );
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={CONTROL}"));
    let slices = match slices.list(&lp).await {
        Ok(l) => l.items,
        Err(e) => {
            return (
                Line::fail(
                    NAME,
                    format!("cannot list its EndpointSlices: {}", api_error(&e)),
                    format!("check this user may list endpointslices in {ns}"),
                ),
                Vec::new(),
            );
        }
    };
    let mut ready = BTreeMap::new();
    let mut not_ready = 0;
    for e in slices.iter().flat_map(|s| &s.endpoints) {
        // A missing `ready` means ready (discovery.k8s.io/v1).
        if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
            not_ready += 1;
            continue;
        }
        let who = e
            .target_ref
            .as_ref()
            .filter(|t| t.kind.as_deref() == Some("Pod"))
            .and_then(|t| t.name.clone());
        for a in &e.addresses {
            ready.insert(a.clone(), who.clone());
        }
    }
    let pods: Vec<String> = {
        let mut p: Vec<String> = ready.values().flatten().cloned().collect();
        p.sort();
        p.dedup();
        p
    };
    if ready.is_empty() {
        let line = Line::fail(
            NAME,
            format!("Service {ns}/{CONTROL} has no ready endpoints ({not_ready} not ready)"),
            format!(
                "the control plane's pods are not Ready: see `kubectl -n {ns} get pods -l {}={CONTROL}`",
                layout::NAME_LABEL
            ),
        );
        return (line, pods);
    }
    let names = if pods.is_empty() {
        ready.keys().cloned().collect::<Vec<_>>().join(", ")
    } else {
        pods.join(", ")
    };
    let line = Line::pass(
        NAME,
        format!(
            "Service {ns}/{CONTROL}: {} ready endpoint(s) ({names})",
            ready.len()
        ),
    );
    (line, pods)
}

/// `injector webhook`: registered, calling the control plane's Service.
/// Returns its caBundle.
pub async fn webhook(client: &Client, ns: &str) -> (Line, Option<Vec<u8>>) {
    const NAME: &str = "injector webhook";
    let name = layout::WEBHOOK_CONFIGURATION;
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mwc = match api.get_opt(name).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            return (
                Line::fail(
                    NAME,
                    format!("MutatingWebhookConfiguration {name} not found: pods are not injected"),
                    INSTALL,
                ),
                None,
            );
        }
        Err(e) => {
            return (
                Line::fail(
                    NAME,
                    format!(
                        "cannot read MutatingWebhookConfiguration {name}: {}",
                        api_error(&e)
                    ),
                    "check this user may get mutatingwebhookconfigurations",
                ),
                None,
            );
        }
    };
    let Some(hook) = mwc
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .find(|w| w.name == layout::WEBHOOK)
    else {
        return (
            Line::fail(
                NAME,
                format!("{name} has no webhook named {}", layout::WEBHOOK),
                format!("reapply it: {INSTALL}"),
            ),
            None,
        );
    };
    let bundle = hook.client_config.ca_bundle.clone().map(|b| b.0);
    let want = format!(
        "Service {ns}/{CONTROL} port {} path {}",
        layout::WEBHOOK_SERVICE_PORT,
        layout::WEBHOOK_PATH
    );
    let line = match (&hook.client_config.service, &hook.client_config.url) {
        (Some(s), _) => {
            let port = s.port.unwrap_or(443);
            let path = s.path.clone().unwrap_or_default();
            let got = format!("Service {}/{} port {port} path {path}", s.namespace, s.name);
            if got == want {
                Line::pass(
                    NAME,
                    format!(
                        "{name}: {} calls {want} (failurePolicy {})",
                        layout::WEBHOOK,
                        hook.failure_policy.as_deref().unwrap_or("Fail")
                    ),
                )
            } else {
                Line::fail(
                    NAME,
                    format!("{name}: {} calls {got}, not {want}", layout::WEBHOOK),
                    format!("reapply it: {INSTALL}"),
                )
            }
        }
        (None, Some(url)) => Line::fail(
            NAME,
            format!("{name}: {} calls {url}, not {want}", layout::WEBHOOK),
            format!("reapply it: {INSTALL}"),
        ),
        (None, None) => Line::fail(
            NAME,
            format!("{name}: {} has no clientConfig", layout::WEBHOOK),
            format!("reapply it: {INSTALL}"),
        ),
    };
    (line, bundle)
}

/// The CA Secret's `tls.crt` and trust anchors (`ca.crt`, or the issuer
/// when it has none), read once for two checks.
#[derive(Debug)]
pub enum CaSecret {
    Found {
        issuer: Result<Vec<certs::Cert>, certs::CertError>,
        anchors: Result<Vec<certs::Cert>, certs::CertError>,
        anchors_key: &'static str,
    },
    /// Why there is nothing to compare with, and the fix.
    Missing(String, String),
}

pub async fn ca_secret(client: &Client, ns: &str) -> CaSecret {
    let name = layout::CA_SECRET;
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = match api.get_opt(name).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return CaSecret::Missing(
                format!("Secret {ns}/{name} not found"),
                format!(
                    "the control plane's leader creates it on first start: see \
                     `kubectl -n {ns} logs deployment/{CONTROL}`"
                ),
            );
        }
        Err(e) => {
            return CaSecret::Missing(
                format!("cannot read Secret {ns}/{name}: {}", api_error(&e)),
                format!("check this user may get secrets in {ns}"),
            );
        }
    };
    let data = secret.data.unwrap_or_default();
    let get = |k: &str| data.get(k).map(|b| b.0.clone()).filter(|b| !b.is_empty());
    let issuer = match get(layout::CA_ISSUER_KEY) {
        Some(pem) => certs::parse_bundle(&pem),
        None => Err(certs::CertError::Empty),
    };
    let (anchors, anchors_key) = match get(layout::CA_ANCHORS_KEY) {
        Some(pem) => (certs::parse_bundle(&pem), layout::CA_ANCHORS_KEY),
        // Without ca.crt the issuer is the anchor (as the control plane
        // reads it).
        None => (
            issuer.clone().map(|mut c| {
                c.truncate(1);
                c
            }),
            layout::CA_ISSUER_KEY,
        ),
    };
    CaSecret::Found {
        issuer,
        anchors,
        anchors_key,
    }
}

/// `webhook caBundle`: the certificates the API server trusts for the
/// injector are the mesh's trust anchors.
pub fn ca_bundle(bundle: Option<&[u8]>, secret: &CaSecret, ns: &str) -> Line {
    const NAME: &str = "webhook caBundle";
    let secret_name = layout::CA_SECRET;
    let (anchors, key) = match secret {
        CaSecret::Missing(problem, fix) => {
            return Line::fail(NAME, format!("nothing to compare with: {problem}"), fix);
        }
        CaSecret::Found {
            anchors,
            anchors_key,
            ..
        } => (anchors, *anchors_key),
    };
    let anchors = match anchors {
        Ok(a) => a,
        Err(e) => {
            return Line::fail(
                NAME,
                format!("`{key}` of Secret {ns}/{secret_name}: {e}"),
                "put the trust anchors there as PEM certificates (README: Running on Kubernetes, the CA)",
            );
        }
    };
    let leader_fix = format!(
        "the leader keeps it equal to `{key}` of Secret {ns}/{secret_name} within seconds; if it \
         stays, see `kubectl -n {ns} logs deployment/{CONTROL}` (it needs update on \
         mutatingwebhookconfigurations {})",
        layout::WEBHOOK_CONFIGURATION
    );
    let bundle = match bundle.filter(|b| !b.is_empty()) {
        Some(b) => b,
        None => {
            return Line::fail(
                NAME,
                "empty: the API server cannot call the injector",
                leader_fix,
            );
        }
    };
    let bundle = match certs::parse_bundle(bundle) {
        Ok(b) => b,
        Err(e) => return Line::fail(NAME, format!("not usable: {e}"), leader_fix),
    };
    let diff = certs::compare(&bundle, anchors);
    if diff.same() {
        return Line::pass(
            NAME,
            format!(
                "equals `{key}` of Secret {ns}/{secret_name} ({} certificate(s))",
                diff.common
            ),
        );
    }
    let mut parts = Vec::new();
    if !diff.only_first.is_empty() {
        parts.push(format!("only in caBundle: {}", diff.only_first.join(", ")));
    }
    if !diff.only_second.is_empty() {
        parts.push(format!("only in `{key}`: {}", diff.only_second.join(", ")));
    }
    Line::fail(
        NAME,
        format!(
            "differs from `{key}` of Secret {ns}/{secret_name} ({})",
            parts.join("; ")
        ),
        leader_fix,
    )
}

/// `mesh CA`: the issuer (and its chain) in `tls.crt` is valid now and
/// for the next [`layout::CA_MARGIN_DAYS`].
pub fn ca_validity(secret: &CaSecret, ns: &str, now: OffsetDateTime) -> Line {
    const NAME: &str = "mesh CA";
    let secret_name = layout::CA_SECRET;
    let issuer = match secret {
        CaSecret::Missing(problem, fix) => return Line::fail(NAME, problem.clone(), fix.clone()),
        CaSecret::Found { issuer, .. } => issuer,
    };
    let chain = match issuer {
        Ok(c) => c,
        Err(e) => {
            return Line::fail(
                NAME,
                format!("`tls.crt` of Secret {ns}/{secret_name}: {e}"),
                "put the issuer (and its chain) there as PEM, with its key in tls.key",
            );
        }
    };
    let Some(first) = certs::earliest_end(chain) else {
        return Line::fail(NAME, "no certificate", "put the issuer in tls.crt");
    };
    let rotate = "rotate it: put a new issuer in tls.crt/tls.key and both roots in ca.crt, \
                  then drop the old root once workloads renewed (README: Running on Kubernetes)";
    let date = |t: OffsetDateTime| t.date().to_string();
    match certs::validity(first, now, layout::CA_MARGIN_DAYS) {
        Validity::Valid { days_left } => Line::pass(
            NAME,
            format!(
                "Secret {ns}/{secret_name}: {} valid until {} ({days_left} days)",
                chain[0].describe(),
                date(first.not_after)
            ),
        ),
        Validity::Expiring { days_left } => Line::fail(
            NAME,
            format!(
                "{} in Secret {ns}/{secret_name} expires on {} (in {days_left} days, under {})",
                first.describe(),
                date(first.not_after),
                layout::CA_MARGIN_DAYS
            ),
            rotate,
        ),
        Validity::Expired => Line::fail(
            NAME,
            format!(
                "{} in Secret {ns}/{secret_name} expired on {}: no workload certificate can be issued",
                first.describe(),
                date(first.not_after)
            ),
            rotate,
        ),
        Validity::NotYetValid => Line::fail(
            NAME,
            format!(
                "{} in Secret {ns}/{secret_name} is not valid before {}",
                first.describe(),
                first.not_before
            ),
            "check the clock of this machine and of the one that made the CA",
        ),
    }
}

/// Whether a Lease is held and fresh at `now_us`: `Ok(detail)` or
/// `Err(problem)`.
pub fn lease_state(
    holder: Option<&str>,
    renew_us: Option<i64>,
    duration_s: Option<i32>,
    now_us: i64,
) -> Result<String, String> {
    let holder = holder.filter(|h| !h.is_empty());
    let Some(holder) = holder else {
        return Err("no replica holds it".into());
    };
    let Some(renew) = renew_us else {
        return Err(format!("held by {holder} but never renewed"));
    };
    let age_s = (now_us - renew).max(0) / 1_000_000;
    let duration =
        i64::from(duration_s.unwrap_or(crate::kubernetes::leader::DURATION.as_secs() as i32));
    if now_us - renew > duration * 1_000_000 {
        return Err(format!(
            "held by {holder} but last renewed {age_s}s ago (it lapses after {duration}s)"
        ));
    }
    Ok(format!("held by {holder}, renewed {age_s}s ago"))
}

/// `leader`: the Lease is held and renewed in time.
pub async fn leader(client: &Client, ns: &str) -> Line {
    const NAME: &str = "leader";
    let lease_name = layout::LEASE;
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let fix = format!(
        "the replicas elect a leader within seconds of starting: see `kubectl -n {ns} logs \
         deployment/{CONTROL}` (they need get/update on leases {lease_name})"
    );
    let lease = match api.get_opt(lease_name).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            return Line::fail(NAME, format!("Lease {ns}/{lease_name} not found"), fix);
        }
        Err(e) => {
            return Line::fail(
                NAME,
                format!("cannot read Lease {ns}/{lease_name}: {}", api_error(&e)),
                format!("check this user may get leases in {ns}"),
            );
        }
    };
    let spec = lease.spec.unwrap_or_default();
    let now_us = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
    match lease_state(
        spec.holder_identity.as_deref(),
        spec.renew_time.map(|t| t.0.as_microsecond()),
        spec.lease_duration_seconds,
        now_us as i64,
    ) {
        Ok(detail) => Line::pass(NAME, format!("Lease {ns}/{lease_name} {detail}")),
        Err(problem) => Line::fail(NAME, format!("Lease {ns}/{lease_name}: {problem}"), fix),
    }
}

/// `injection`: a server-side dry run of a pod that asks for injection
/// comes back with the sidecar, so the API server reaches the injector
/// through its Service and trusts its certificate. Nothing is created.
pub async fn injection(client: &Client, ns: &str) -> Line {
    const NAME: &str = "injection";
    let target = layout::DRY_RUN_NAMESPACE;
    let pod = Pod {
        metadata: ObjectMeta {
            generate_name: Some("weftctl-check-".into()),
            annotations: Some(BTreeMap::from([(keys::INJECT.into(), "enabled".into())])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "check".into(),
                image: Some("weftctl-check.invalid/none".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), target);
    let dry_run = PostParams {
        dry_run: true,
        field_manager: None,
    };
    let what = format!(
        "a server-side dry run of a pod annotated {}: enabled in namespace {target}",
        keys::INJECT
    );
    let back = match api.create(&dry_run, &pod).await {
        Ok(p) => p,
        Err(e) => {
            let webhook = matches!(&e, kube::Error::Api(s) if s.message.contains("webhook"));
            let fix = if webhook {
                format!(
                    "the injector failed the call (failurePolicy Fail refuses pods then): check                      the Service endpoints and caBundle above and `kubectl -n {ns} logs                      deployment/{CONTROL}`"
                )
            } else {
                format!(
                    "this check needs create on pods in {target} (a dry run: nothing is created)"
                )
            };
            return Line::fail(NAME, format!("{what} was refused: {}", api_error(&e)), fix);
        }
    };
    let spec = back.spec.unwrap_or_default();
    let names: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| c.name.as_str())
        .collect();
    if names.contains(&crate::inject::pod::PROXY) {
        return Line::pass(
            NAME,
            format!(
                "{what} came back with the {} sidecar",
                crate::inject::pod::PROXY
            ),
        );
    }
    let skipped = back
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(keys::SKIPPED))
        .cloned();
    match skipped {
        Some(why) => Line::fail(
            NAME,
            format!("{what} came back not injected: {why}"),
            "the injector answered but declined: fix what it names",
        ),
        None => Line::fail(
            NAME,
            format!(
                "{what} came back without the sidecar: the API server's call to the injector \
                 failed and failurePolicy Ignore let the pod through untouched"
            ),
            format!(
                "check the Service endpoints and caBundle above; the API server's log names the \
                 error (failed calling webhook {}); `kubectl -n {ns} logs deployment/{CONTROL}`",
                layout::WEBHOOK
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn a_lease_is_fresh_while_renewed_within_its_duration() {
        let now = 1_000 * S;
        assert_eq!(
            lease_state(Some("control-0"), Some(now - 2 * S), Some(10), now),
            Ok("held by control-0, renewed 2s ago".into())
        );
        assert_eq!(
            lease_state(Some("control-0"), Some(now - 10 * S), Some(10), now),
            Ok("held by control-0, renewed 10s ago".into())
        );
        assert_eq!(
            lease_state(Some("control-0"), Some(now - 11 * S), Some(10), now),
            Err("held by control-0 but last renewed 11s ago (it lapses after 10s)".into())
        );
        assert_eq!(
            lease_state(None, Some(now), Some(10), now),
            Err("no replica holds it".into())
        );
        assert_eq!(
            lease_state(Some(""), Some(now), Some(10), now),
            Err("no replica holds it".into())
        );
        assert_eq!(
            lease_state(Some("x"), None, Some(10), now),
            Err("held by x but never renewed".into())
        );
        // No duration: the control plane's own.
        assert!(lease_state(Some("x"), Some(now - 5 * S), None, now).is_ok());
    }

    fn secret_with(issuer: &str, anchors: Option<&str>) -> CaSecret {
        let issuer = certs::parse_bundle(issuer.as_bytes());
        let (anchors, anchors_key) = match anchors {
            Some(a) => (certs::parse_bundle(a.as_bytes()), "ca.crt"),
            None => (issuer.clone(), "tls.crt"),
        };
        CaSecret::Found {
            issuer,
            anchors,
            anchors_key,
        }
    }

    fn ca(days: i64) -> String {
        let (cert, _key) = crate::identity::Ca::generate_pem("cluster.local").unwrap();
        if days == 0 {
            return cert;
        }
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "short root");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let now = OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(days);
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn the_ca_bundle_line() {
        let (old, new) = (ca(0), ca(0));
        let both = format!("{old}{new}");
        let s = secret_with(&new, Some(&both));
        let ns = "weft-system";
        let l = ca_bundle(Some(format!("{new}\n{old}").as_bytes()), &s, ns);
        assert_eq!(
            l.to_string(),
            "✔ webhook caBundle: equals `ca.crt` of Secret weft-system/weft-ca (2 certificate(s))"
        );
        let l = ca_bundle(Some(old.as_bytes()), &s, ns).to_string();
        assert!(
            l.starts_with("✘ webhook caBundle: differs from `ca.crt` of Secret weft-system/weft-ca (only in `ca.crt`: "),
            "{l}"
        );
        assert!(l.contains("— the leader keeps it equal"), "{l}");
        let l = ca_bundle(None, &s, ns).to_string();
        assert!(l.starts_with("✘ webhook caBundle: empty"), "{l}");
        // No ca.crt: the issuer is the anchor.
        let alone = secret_with(&new, None);
        assert!(ca_bundle(Some(new.as_bytes()), &alone, ns).passed());
        let missing =
            CaSecret::Missing("Secret weft-system/weft-ca not found".into(), "wait".into());
        assert_eq!(
            ca_bundle(Some(new.as_bytes()), &missing, ns).to_string(),
            "✘ webhook caBundle: nothing to compare with: Secret weft-system/weft-ca not found — wait"
        );
    }

    #[test]
    fn the_ca_validity_line() {
        let ns = "weft-system";
        let now = OffsetDateTime::now_utc();
        let l = ca_validity(&secret_with(&ca(0), None), ns, now).to_string();
        assert!(
            l.starts_with("✔ mesh CA: Secret weft-system/weft-ca: "),
            "{l}"
        );
        let l = ca_validity(&secret_with(&ca(10), None), ns, now).to_string();
        assert!(l.starts_with("✘ mesh CA: CN=short root (serial "), "{l}");
        assert!(l.contains("(in 9 days, under 30) — rotate it"), "{l}");
        let later = now + time::Duration::days(11);
        let l = ca_validity(&secret_with(&ca(10), None), ns, later).to_string();
        assert!(l.contains("expired on"), "{l}");
    }
}

//! Injecting one pod (or pod template): its metadata and spec as JSON.

use serde_json::{Map, Value, json};
use weft_api::defaults;

use super::Config;
use super::keys;

/// The containers and volumes the injector owns.
pub const PROXY: &str = "weft-proxy";
pub const INIT: &str = "weft-init";
pub const IDENTITY_VOLUME: &str = "weft-identity";
pub const XTABLES_VOLUME: &str = "weft-xtables-lock";
/// Where the proxy finds its token and trust anchors.
pub const IDENTITY_DIR: &str = "/var/run/weft/identity";
/// The prefix of rewritten probe paths on the admin port.
pub const PROBE_PREFIX: &str = "/app-probe/";
const PROBES: [(&str, &str); 3] = [
    ("livenessProbe", "liveness"),
    ("readinessProbe", "readiness"),
    ("startupProbe", "startup"),
];
/// Projected tokens live this long (the kubelet renews them at 80%).
const TOKEN_SECONDS: i64 = 3600;

/// What injection did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    /// It has Weft's sidecar already: unchanged.
    AlreadyInjected,
    /// It asked not to be (`weft.dev/inject: disabled`): unchanged.
    OptedOut,
    /// It cannot be injected: annotated with the reason, otherwise unchanged.
    Skipped(String),
}

fn annotations(meta: &mut Value) -> &mut Map<String, Value> {
    let meta = ensure_object(meta);
    let a = meta
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    ensure_object(a)
}

/// `v` as an object, replacing whatever else it was (`null`, absent).
fn ensure_object(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("made an object just above"),
    }
}

fn annotation<'a>(meta: &'a Value, key: &str) -> Option<&'a str> {
    meta.get("annotations")?.get(key)?.as_str()
}

fn array<'a>(spec: &'a mut Value, key: &str) -> &'a mut Vec<Value> {
    let spec = ensure_object(spec);
    let v = spec.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if !v.is_array() {
        *v = Value::Array(Vec::new());
    }
    match v {
        Value::Array(a) => a,
        _ => unreachable!("made an array just above"),
    }
}

fn names(spec: &Value, key: &str) -> Vec<String> {
    spec.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name")?.as_str().map(str::to_string))
        .collect()
}

fn is_injected(meta: &Value, spec: &Value) -> bool {
    annotation(meta, keys::INJECTED).is_some()
        || names(spec, "containers")
            .iter()
            .chain(names(spec, "initContainers").iter())
            .any(|n| n == PROXY)
}

/// Injects the pod whose `metadata` and `spec` these are. `namespace` is the
/// pod's, when known (the webhook knows it; a file may not say).
pub fn inject(
    meta: &mut Value,
    spec: &mut Value,
    namespace: Option<&str>,
    cfg: &Config,
) -> Outcome {
    if annotation(meta, keys::INJECT) == Some("disabled") {
        return Outcome::OptedOut;
    }
    if is_injected(meta, spec) {
        return Outcome::AlreadyInjected;
    }
    let skip = |meta: &mut Value, reason: String| {
        annotations(meta).insert(keys::SKIPPED.into(), Value::String(reason.clone()));
        Outcome::Skipped(reason)
    };
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return skip(
            meta,
            "hostNetwork: the pod shares its node's network, where a sidecar would intercept the node's own traffic".into(),
        );
    }
    if let Some(ns) = namespace
        && (ns == "kube-system" || ns == cfg.weft_namespace)
    {
        return skip(meta, format!("namespace {ns} is never meshed"));
    }
    if let Some(name) = names(spec, "containers")
        .into_iter()
        .chain(names(spec, "initContainers"))
        .find(|n| n == INIT)
    {
        return skip(meta, format!("a container is already named {name}"));
    }

    let app_containers = names(spec, "containers");
    let probes = rewrite_probes(spec);
    let meta_ro = meta.clone();
    let read = |key: &str| annotation(&meta_ro, key).map(str::to_string);
    let classic = read(keys::SIDECAR).as_deref() == Some("classic");

    let mut proxy = proxy_container(cfg, &read, &probes, classic);
    if classic {
        array(spec, "containers").insert(0, proxy);
    } else {
        if let Some(p) = proxy.as_object_mut() {
            p.insert("restartPolicy".into(), json!("Always"));
        }
        // After weft-init, before every other init container: those then
        // run with the mesh (and its identity) in place.
        let inits = array(spec, "initContainers");
        inits.insert(0, proxy);
    }
    array(spec, "initContainers").insert(0, init_container(cfg, &read));
    let volumes = array(spec, "volumes");
    volumes.push(json!({
        "name": IDENTITY_VOLUME,
        "projected": {
            "sources": [
                {"serviceAccountToken": {"audience": crate::kubernetes::tokens::AUDIENCE, "expirationSeconds": TOKEN_SECONDS, "path": "token"}},
                {"configMap": {"name": crate::kubernetes::ca::BUNDLE, "items": [{"key": crate::kubernetes::ca::BUNDLE_KEY, "path": "ca.crt"}]}},
            ],
        },
    }));
    volumes.push(json!({"name": XTABLES_VOLUME, "emptyDir": {}}));

    let mut added = Vec::new();
    let a = annotations(meta);
    if let Some(first) = app_containers.first()
        && !a.contains_key(keys::DEFAULT_CONTAINER)
    {
        a.insert(keys::DEFAULT_CONTAINER.into(), json!(first));
        added.push(keys::DEFAULT_CONTAINER);
    }
    for (k, v) in [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", defaults::ADMIN_PORT.to_string()),
        ("prometheus.io/path", "/metrics".to_string()),
    ] {
        if !a.contains_key(k) {
            a.insert(k.into(), json!(v));
            added.push(k);
        }
    }
    if !probes.is_empty() {
        a.insert(
            keys::ORIGINAL_PROBES.into(),
            json!(Value::Object(probes.originals.clone()).to_string()),
        );
    }
    a.insert(keys::ADDED.into(), json!(added.join(",")));
    a.insert(keys::INJECTED.into(), json!(cfg.version));
    a.remove(keys::SKIPPED);
    Outcome::Injected
}

/// The app's HTTP probes as they were, and where the proxy forwards each.
#[derive(Debug, Default)]
struct Probes {
    /// container -> probe field -> the original probe.
    originals: Map<String, Value>,
    /// admin path -> where on the pod's loopback (for the proxy).
    forward: Map<String, Value>,
}

impl Probes {
    fn is_empty(&self) -> bool {
        self.forward.is_empty()
    }
}

/// Points each app container's plain-HTTP probes at the admin port.
/// Probes of other kinds (tcpSocket, exec, gRPC, HTTPS) are left as they are.
fn rewrite_probes(spec: &mut Value) -> Probes {
    let mut out = Probes::default();
    for c in array(spec, "containers").iter_mut() {
        let Some(name) = c.get("name").and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        let ports: Vec<(String, i64)> = c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.get("name")?.as_str()?.to_string(),
                    p.get("containerPort")?.as_i64()?,
                ))
            })
            .collect();
        let mut originals = Map::new();
        for (field, kind) in PROBES {
            let Some(get) = c.get(field).and_then(|p| p.get("httpGet")) else {
                continue;
            };
            if get
                .get("scheme")
                .and_then(Value::as_str)
                .is_some_and(|s| s != "HTTP")
            {
                continue;
            }
            let port = match get.get("port") {
                Some(Value::Number(n)) => n.as_i64(),
                Some(Value::String(s)) => ports
                    .iter()
                    .find(|(n, _)| n == s)
                    .map(|(_, p)| *p)
                    .or_else(|| s.parse().ok()),
                _ => None,
            };
            let Some(port) = port.filter(|p| (1..=65535).contains(p)) else {
                continue;
            };
            let path = format!("{PROBE_PREFIX}{name}/{kind}");
            out.forward.insert(
                path.clone(),
                json!({
                    "port": port,
                    "path": get.get("path").and_then(Value::as_str).unwrap_or("/"),
                    "headers": get.get("httpHeaders").cloned().unwrap_or(json!([])),
                }),
            );
            originals.insert(field.into(), get.clone());
            if let Some(g) = c.get_mut(field).and_then(|p| p.get_mut("httpGet")) {
                *g = json!({"port": defaults::ADMIN_PORT, "path": path, "scheme": "HTTP"});
            }
        }
        if !originals.is_empty() {
            out.originals.insert(name, Value::Object(originals));
        }
    }
    out
}

fn resources(read: &dyn Fn(&str) -> Option<String>) -> Value {
    let mut requests = Map::new();
    let mut limits = Map::new();
    requests.insert(
        "cpu".into(),
        json!(read(keys::CPU_REQUEST).unwrap_or_else(|| "50m".into())),
    );
    requests.insert(
        "memory".into(),
        json!(read(keys::MEMORY_REQUEST).unwrap_or_else(|| "32Mi".into())),
    );
    limits.insert(
        "memory".into(),
        json!(read(keys::MEMORY_LIMIT).unwrap_or_else(|| "256Mi".into())),
    );
    if let Some(cpu) = read(keys::CPU_LIMIT) {
        limits.insert("cpu".into(), json!(cpu));
    }
    json!({"requests": requests, "limits": limits})
}

fn env(name: &str, value: impl Into<String>) -> Value {
    json!({"name": name, "value": value.into()})
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

fn proxy_container(
    cfg: &Config,
    read: &dyn Fn(&str) -> Option<String>,
    probes: &Probes,
    classic: bool,
) -> Value {
    let mut env = vec![
        field_env("WEFT_POD_NAME", "metadata.name"),
        field_env("WEFT_POD_NAMESPACE", "metadata.namespace"),
        field_env("WEFT_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field_env("WEFT_POD_IP", "status.podIP"),
        env(
            "WEFT_IDENTITY",
            format!(
                "spiffe://{}/ns/$(WEFT_POD_NAMESPACE)/sa/$(WEFT_SERVICE_ACCOUNT)",
                cfg.trust_domain
            ),
        ),
        env("WEFT_CONTROL_PLANE", cfg.control_plane.clone()),
        env(
            "WEFT_CONTROL_PLANE_IDENTITY",
            cfg.control_plane_identity.clone(),
        ),
        env("WEFT_IDENTITY_TOKEN_FILE", format!("{IDENTITY_DIR}/token")),
        env("WEFT_TRUST_ANCHORS", format!("{IDENTITY_DIR}/ca.crt")),
        env(
            "WEFT_LOG",
            read(keys::LOG_LEVEL).unwrap_or_else(|| cfg.log_level.clone()),
        ),
    ];
    if let Some(otlp) = &cfg.otlp_endpoint {
        env.push(self::env("WEFT_OTLP_ENDPOINT", otlp.clone()));
    }
    if !probes.is_empty() {
        env.push(self::env(
            "WEFT_APP_PROBES",
            Value::Object(probes.forward.clone()).to_string(),
        ));
    }
    let http = |path: &str| json!({"httpGet": {"path": path, "port": defaults::ADMIN_PORT}});
    let mut c = json!({
        "name": PROXY,
        "image": cfg.proxy_image,
        "command": ["/weft-proxy"],
        "args": ["run"],
        "env": env,
        "ports": [{"name": "weft-admin", "containerPort": defaults::ADMIN_PORT}],
        "resources": resources(read),
        "volumeMounts": [{"name": IDENTITY_VOLUME, "mountPath": IDENTITY_DIR, "readOnly": true}],
        "securityContext": {
            "runAsUser": defaults::PROXY_UID,
            "runAsGroup": defaults::PROXY_UID,
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "livenessProbe": http("/live"),
        "readinessProbe": {"httpGet": {"path": "/ready", "port": defaults::ADMIN_PORT}, "periodSeconds": 2},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    // The app starts once the proxy holds a certificate and its first
    // snapshot (native sidecars only: classic containers start together).
    if !classic && let Some(o) = c.as_object_mut() {
        o.insert(
            "startupProbe".into(),
            json!({"httpGet": {"path": "/ready", "port": defaults::ADMIN_PORT}, "periodSeconds": 1, "failureThreshold": 120}),
        );
    }
    if let (Some(p), Some(o)) = (&cfg.image_pull_policy, c.as_object_mut()) {
        o.insert("imagePullPolicy".into(), json!(p));
    }
    c
}

fn init_container(cfg: &Config, read: &dyn Fn(&str) -> Option<String>) -> Value {
    let mut args = vec!["init".to_string()];
    if let Some(p) = read(keys::SKIP_INBOUND).filter(|p| !p.is_empty()) {
        args.extend(["--skip-inbound-ports".into(), p]);
    }
    if let Some(p) = read(keys::SKIP_OUTBOUND).filter(|p| !p.is_empty()) {
        args.extend(["--skip-outbound-ports".into(), p]);
    }
    let mut c = json!({
        "name": INIT,
        "image": cfg.init_image,
        "command": ["/weft-proxy"],
        "args": args,
        "resources": {"requests": {"cpu": "10m", "memory": "10Mi"}, "limits": {"memory": "64Mi"}},
        // iptables-restore takes its lock under /run.
        "volumeMounts": [{"name": XTABLES_VOLUME, "mountPath": "/run"}],
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    if let (Some(p), Some(o)) = (&cfg.image_pull_policy, c.as_object_mut()) {
        o.insert("imagePullPolicy".into(), json!(p));
    }
    c
}

/// Undoes [`inject`]: removes what it added and restores the probes. True
/// when the pod was injected.
pub fn uninject(meta: &mut Value, spec: &mut Value) -> bool {
    if !is_injected(meta, spec) {
        return false;
    }
    for key in ["initContainers", "containers"] {
        array(spec, key).retain(|c| {
            let n = c.get("name").and_then(Value::as_str);
            n != Some(PROXY) && n != Some(INIT)
        });
    }
    array(spec, "volumes").retain(|v| {
        let n = v.get("name").and_then(Value::as_str);
        n != Some(IDENTITY_VOLUME) && n != Some(XTABLES_VOLUME)
    });
    let originals: Map<String, Value> = annotation(meta, keys::ORIGINAL_PROBES)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    for c in array(spec, "containers").iter_mut() {
        let Some(name) = c.get("name").and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        let Some(probes) = originals.get(&name).and_then(Value::as_object) else {
            continue;
        };
        for (field, get) in probes {
            if let Some(g) = c.get_mut(field.as_str()).and_then(|p| p.get_mut("httpGet")) {
                *g = get.clone();
            }
        }
    }
    let added: Vec<String> = annotation(meta, keys::ADDED)
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let a = annotations(meta);
    for k in added {
        a.remove(&k);
    }
    for k in [keys::ADDED, keys::ORIGINAL_PROBES, keys::INJECTED] {
        a.remove(k);
    }
    for key in ["initContainers", "volumes"] {
        if spec
            .get(key)
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
            && let Some(o) = spec.as_object_mut()
        {
            o.remove(key);
        }
    }
    if meta
        .get("annotations")
        .and_then(Value::as_object)
        .is_some_and(Map::is_empty)
        && let Some(o) = meta.as_object_mut()
    {
        o.remove("annotations");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> (Value, Value) {
        (
            json!({"name": "web", "labels": {"app": "web"}}),
            json!({
                "serviceAccountName": "web",
                "containers": [{
                    "name": "app",
                    "image": "web:1",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
                    "readinessProbe": {"tcpSocket": {"port": 8080}},
                    "futureField": {"kept": true},
                }],
            }),
        )
    }

    #[test]
    fn injects_a_native_sidecar_and_its_identity() {
        let (mut meta, mut spec) = pod();
        let cfg = Config::default();
        assert_eq!(
            inject(&mut meta, &mut spec, Some("shop"), &cfg),
            Outcome::Injected
        );
        let inits = spec["initContainers"].as_array().unwrap();
        assert_eq!(inits[0]["name"], INIT);
        assert_eq!(
            inits[0]["securityContext"]["capabilities"]["add"],
            json!(["NET_ADMIN", "NET_RAW"])
        );
        assert_eq!(inits[1]["name"], PROXY);
        assert_eq!(inits[1]["restartPolicy"], "Always");
        assert_eq!(inits[1]["startupProbe"]["httpGet"]["path"], "/ready");
        assert_eq!(inits[1]["securityContext"]["runAsUser"], 2420);
        let vol = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == IDENTITY_VOLUME)
            .unwrap();
        assert_eq!(
            vol["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            "weft.dev"
        );
        // The HTTP probe goes through the admin port; the TCP one is left.
        let app = &spec["containers"][0];
        assert_eq!(app["livenessProbe"]["httpGet"]["port"], 4191);
        assert_eq!(
            app["livenessProbe"]["httpGet"]["path"],
            "/app-probe/app/liveness"
        );
        assert_eq!(app["livenessProbe"]["periodSeconds"], 5);
        assert_eq!(app["readinessProbe"]["tcpSocket"]["port"], 8080);
        assert_eq!(app["futureField"]["kept"], true);
        let env = inits[1]["env"].as_array().unwrap();
        let probes = env.iter().find(|e| e["name"] == "WEFT_APP_PROBES").unwrap();
        let probes: Value = serde_json::from_str(probes["value"].as_str().unwrap()).unwrap();
        assert_eq!(probes["/app-probe/app/liveness"]["port"], 8080);
        assert_eq!(probes["/app-probe/app/liveness"]["path"], "/healthz");
        assert_eq!(meta["annotations"][keys::DEFAULT_CONTAINER], "app");
        assert_eq!(meta["annotations"]["prometheus.io/port"], "4191");
    }

    #[test]
    fn injecting_twice_changes_nothing_and_uninject_restores() {
        let (meta0, spec0) = pod();
        let (mut meta, mut spec) = pod();
        let cfg = Config::default();
        inject(&mut meta, &mut spec, None, &cfg);
        let (m1, s1) = (meta.clone(), spec.clone());
        assert_eq!(
            inject(&mut meta, &mut spec, None, &cfg),
            Outcome::AlreadyInjected
        );
        assert_eq!((&meta, &spec), (&m1, &s1));
        assert!(uninject(&mut meta, &mut spec));
        assert_eq!((meta, spec), (meta0, spec0));
    }

    #[test]
    fn skips_what_cannot_be_injected() {
        let (mut meta, mut spec) = pod();
        spec["hostNetwork"] = json!(true);
        let out = inject(&mut meta, &mut spec, None, &Config::default());
        assert!(matches!(out, Outcome::Skipped(ref r) if r.contains("hostNetwork")));
        assert!(
            meta["annotations"][keys::SKIPPED]
                .as_str()
                .unwrap()
                .contains("hostNetwork")
        );
        assert!(spec.get("initContainers").is_none());

        let (mut meta, mut spec) = pod();
        meta["annotations"] = json!({keys::INJECT: "disabled"});
        assert_eq!(
            inject(&mut meta, &mut spec, None, &Config::default()),
            Outcome::OptedOut
        );
        let (mut meta, mut spec) = pod();
        assert!(matches!(
            inject(
                &mut meta,
                &mut spec,
                Some("kube-system"),
                &Config::default()
            ),
            Outcome::Skipped(_)
        ));
    }

    #[test]
    fn classic_sidecars_and_annotations() {
        let (mut meta, mut spec) = pod();
        meta["annotations"] = json!({
            keys::SIDECAR: "classic",
            keys::SKIP_OUTBOUND: "5432",
            keys::MEMORY_LIMIT: "1Gi",
        });
        inject(&mut meta, &mut spec, None, &Config::default());
        assert_eq!(spec["containers"][0]["name"], PROXY);
        assert!(spec["containers"][0].get("restartPolicy").is_none());
        assert_eq!(
            spec["containers"][0]["resources"]["limits"]["memory"],
            "1Gi"
        );
        assert_eq!(
            spec["initContainers"][0]["args"],
            json!(["init", "--skip-outbound-ports", "5432"])
        );
        assert_eq!(spec["initContainers"].as_array().unwrap().len(), 1);
    }
}

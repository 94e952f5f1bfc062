//! Reading manifests: YAML files (several documents each) of the kinds Weft
//! understands, validated with errors that name the file, the object and the
//! field. A file or object that breaks never replaces good state: the last
//! good version of each object keeps serving until the error is fixed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use gateway_api::experimental::grpcroutes::GrpcRoute;
use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::experimental::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::annotations::validate_annotations;
use super::crds::{AuthorizationPolicy, FaultInjection, RequestAuthentication, TrafficPolicy};
use super::objects::{Kind, Object, ObjectKey};

/// One problem in the manifests, precise enough to fix without searching.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ManifestError {
    /// The manifest file; none for objects read from the Kubernetes API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// `Service default/web`, or `document 2` when the document has no name.
    pub object: String,
    /// A path such as `spec.ports[0].port`; empty when the whole object is at fault.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        f.write_str(&self.object)?;
        if !self.field.is_empty() {
            write!(f, ": field {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, Default)]
struct FileState {
    stamp: Option<(SystemTime, u64)>,
    objects: BTreeMap<ObjectKey, Object>,
    errors: Vec<ManifestError>,
}

/// Every manifest file's objects and errors.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

fn stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

impl Store {
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
        }
    }

    /// Rereads what changed on disk. True when anything did.
    pub fn refresh(&mut self) -> bool {
        let mut paths = Vec::new();
        yaml_files(&self.dir, &mut paths);
        let mut changed = false;
        // Deleted files take their objects with them: a deliberate removal.
        let before = self.files.len();
        self.files.retain(|p, _| paths.contains(p));
        changed |= self.files.len() != before;
        for path in paths {
            let now = stamp(&path);
            let state = self.files.entry(path.clone()).or_default();
            if state.stamp == now && now.is_some() {
                continue;
            }
            changed = true;
            state.stamp = now;
            load_file(&path, state);
        }
        changed
    }

    /// The file `key` is read from (the first, when several define it).
    pub fn file_of(&self, key: &ObjectKey) -> Option<PathBuf> {
        self.files
            .iter()
            .find(|(_, state)| state.objects.contains_key(key))
            .map(|(path, _)| path.clone())
    }

    /// Every object, first file wins on duplicates (the later ones are errors).
    pub fn objects(&self) -> (BTreeMap<ObjectKey, Object>, Vec<ManifestError>) {
        let mut objects = BTreeMap::new();
        let mut errors = Vec::new();
        for (path, state) in &self.files {
            errors.extend(state.errors.iter().cloned());
            for (key, obj) in &state.objects {
                if objects.contains_key(key) {
                    errors.push(ManifestError {
                        file: Some(path.clone()),
                        object: key.to_string(),
                        field: "metadata.name".into(),
                        message: "defined in another file already; this copy is ignored".into(),
                    });
                    continue;
                }
                objects.insert(key.clone(), obj.clone());
            }
        }
        (objects, errors)
    }
}

/// Reloads one file into `state`, keeping the previous good objects where the
/// new text is broken.
fn load_file(path: &Path, state: &mut FileState) {
    match std::fs::read_to_string(path) {
        Ok(text) => load_text(path, &text, state),
        Err(e) => {
            state.errors = vec![ManifestError {
                file: Some(path.to_path_buf()),
                object: "file".into(),
                field: String::new(),
                message: format!("cannot read: {e}"),
            }];
        }
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl Store {
    /// Loads `text` as the content of the file at `path`, as if a refresh
    /// had just read it there (the fuzz targets' way in, without a disk).
    pub(crate) fn load_text(&mut self, path: &Path, text: &str) {
        load_text(
            path,
            text,
            self.files.entry(path.to_path_buf()).or_default(),
        );
    }
}

/// [`load_file`] once the file is read.
fn load_text(path: &Path, text: &str, state: &mut FileState) {
    let previous = std::mem::take(&mut state.objects);
    state.errors.clear();
    let err = |object: String, field: String, message: String| ManifestError {
        file: Some(path.to_path_buf()),
        object,
        field,
        message,
    };
    let mut docs = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(doc) {
            Ok(v) => docs.push((i + 1, v)),
            Err(e) => {
                // A YAML syntax error: nothing in the file can be trusted.
                state.errors.push(err(
                    format!("document {}", i + 1),
                    String::new(),
                    format!("not valid YAML: {e}"),
                ));
                state.objects = previous;
                return;
            }
        }
    }
    for (n, doc) in docs {
        if doc.is_null() {
            continue;
        }
        match parse_object(&doc) {
            Ok(None) => {}
            Ok(Some((key, obj))) => {
                state.objects.insert(key, obj);
            }
            Err((key, field, message)) => {
                let object = key
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| format!("document {n}"));
                state.errors.push(err(object, field, message));
                if let Some(old) = key.and_then(|k| previous.get(&k).map(|o| (k, o.clone()))) {
                    tracing::warn!(object = %old.0, "keeping the last good version");
                    state.objects.insert(old.0, old.1);
                }
            }
        }
    }
    for e in &state.errors {
        tracing::warn!(error = %e, "manifest error");
    }
}

type ParseError = (Option<ObjectKey>, String, String);

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// Parses one document: `Ok(None)` for kinds Weft does not read.
fn parse_object(doc: &Value) -> Result<Option<(ObjectKey, Object)>, ParseError> {
    let api = str_at(doc, &["apiVersion"]).ok_or((None, "apiVersion".into(), "missing".into()))?;
    let kind_s = str_at(doc, &["kind"]).ok_or((None, "kind".into(), "missing".into()))?;
    let Some(kind) = Kind::of(api, kind_s) else {
        tracing::debug!(api, kind = kind_s, "skipping a kind Weft does not read");
        return Ok(None);
    };
    let name = str_at(doc, &["metadata", "name"])
        .filter(|n| !n.is_empty())
        .ok_or((
            None,
            "metadata.name".into(),
            format!("a {kind} needs a name"),
        ))?;
    let namespace = if kind == Kind::Namespace {
        ""
    } else {
        str_at(doc, &["metadata", "namespace"]).unwrap_or("default")
    };
    let key = ObjectKey {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    };
    let fail = |field: String, message: String| (Some(key.clone()), field, message);
    let obj = match kind {
        Kind::Namespace => {
            let n: Namespace = typed(doc).map_err(|(f, m)| fail(f, m))?;
            validate_annotations(n.metadata.annotations.as_ref()).map_err(|(f, m)| fail(f, m))?;
            Object::Namespace(Arc::new(n))
        }
        Kind::EndpointSlice => {
            let es: EndpointSlice = typed(doc).map_err(|(f, m)| fail(f, m))?;
            Object::EndpointSlice(Arc::new(es))
        }
        Kind::Service => {
            let s: Service = typed(doc).map_err(|(f, m)| fail(f, m))?;
            validate_service(&s).map_err(|(f, m)| fail(f, m))?;
            Object::Service(Arc::new(s))
        }
        Kind::Pod => {
            let p: Pod = typed(doc).map_err(|(f, m)| fail(f, m))?;
            validate_pod(&p).map_err(|(f, m)| fail(f, m))?;
            Object::Pod(Arc::new(p))
        }
        Kind::HttpRoute => {
            let r: HttpRoute = typed(doc).map_err(|(f, m)| fail(f, m))?;
            validate_route(&r).map_err(|(f, m)| fail(f, m))?;
            Object::HttpRoute(Arc::new(r))
        }
        Kind::GrpcRoute => {
            let r: GrpcRoute = typed(doc).map_err(|(f, m)| fail(f, m))?;
            validate_route(&super::grpc::to_http(&r)).map_err(|(f, m)| fail(f, m))?;
            Object::GrpcRoute(Arc::new(r))
        }
        Kind::ReferenceGrant => {
            let g: ReferenceGrant = typed(doc).map_err(|(f, m)| fail(f, m))?;
            Object::ReferenceGrant(Arc::new(g))
        }
        Kind::AuthorizationPolicy => {
            let p: AuthorizationPolicy = typed(doc).map_err(|(f, m)| fail(f, m))?;
            validate_authz(&p).map_err(|(f, m)| fail(f, m))?;
            Object::AuthorizationPolicy(Arc::new(p))
        }
        Kind::FaultInjection => {
            let f: FaultInjection = typed(doc).map_err(|(f, m)| fail(f, m))?;
            f.spec.validate().map_err(|(f, m)| fail(f, m))?;
            Object::FaultInjection(Arc::new(f))
        }
        Kind::RequestAuthentication => {
            let p: RequestAuthentication = typed(doc).map_err(|(f, m)| fail(f, m))?;
            p.spec.validate().map_err(|(f, m)| fail(f, m))?;
            Object::RequestAuthentication(Arc::new(p))
        }
        Kind::Secret => {
            let sec: k8s_openapi::api::core::v1::Secret =
                typed(doc).map_err(|(f, m)| fail(f, m))?;
            Object::Secret(Arc::new(secret_data(sec)))
        }
        // Fetched by the control plane, never written in a manifest.
        Kind::Jwks => return Ok(None),
        Kind::TrafficPolicy => {
            let p: TrafficPolicy = typed(doc).map_err(|(f, m)| fail(f, m))?;
            validate_policy(&p).map_err(|(f, m)| fail(f, m))?;
            Object::TrafficPolicy(Arc::new(p))
        }
    };
    Ok(Some((key, obj)))
}

/// Deserializes with the path of the field at fault.
fn typed<T: DeserializeOwned>(doc: &Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        (path, e.into_inner().to_string())
    })
}

pub fn validate_service(s: &Service) -> Result<(), (String, String)> {
    validate_annotations(s.metadata.annotations.as_ref())?;
    let Some(spec) = &s.spec else {
        return Err(("spec".into(), "missing".into()));
    };
    if let Some(ip) = &spec.cluster_ip
        && ip != "None"
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        return Err((
            "spec.clusterIP".into(),
            format!("`{ip}` is not an IP address"),
        ));
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() {
        return Err((
            "spec.ports".into(),
            "a Service needs at least one port".into(),
        ));
    }
    for (i, p) in ports.iter().enumerate() {
        if !(1..=65535).contains(&p.port) {
            return Err((
                format!("spec.ports[{i}].port"),
                format!("{} is not a port (1-65535)", p.port),
            ));
        }
        // UDP and SCTP ports are valid (a DNS Service has them); the mesh
        // passes them by, as a cluster's Services do.
        if let Some(proto) = &p.protocol
            && !matches!(proto.as_str(), "TCP" | "UDP" | "SCTP")
        {
            return Err((
                format!("spec.ports[{i}].protocol"),
                format!("`{proto}` is not a protocol (TCP, UDP or SCTP)"),
            ));
        }
        if let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(t)) =
            p.target_port
            && !(1..=65535).contains(&t)
        {
            return Err((
                format!("spec.ports[{i}].targetPort"),
                format!("{t} is not a port (1-65535)"),
            ));
        }
    }
    Ok(())
}

pub fn validate_pod(p: &Pod) -> Result<(), (String, String)> {
    if let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.as_ref())
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        return Err((
            "status.podIP".into(),
            format!("`{ip}` is not an IP address"),
        ));
    }
    validate_annotations(p.metadata.annotations.as_ref())
}

/// What an AuthorizationPolicy must be: its schema.
pub fn validate_authz(p: &AuthorizationPolicy) -> Result<(), (String, String)> {
    p.spec.validate()
}

/// A Secret's data, `stringData` merged over `data` as the API server
/// does; the rest of the object is dropped.
pub fn secret_data(s: k8s_openapi::api::core::v1::Secret) -> super::objects::SecretData {
    let mut out: std::collections::BTreeMap<String, Vec<u8>> = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in s.string_data.unwrap_or_default() {
        out.insert(k, v.into_bytes());
    }
    super::objects::SecretData(out)
}

/// What a TrafficPolicy must be beyond its schema.
pub fn validate_policy(p: &TrafficPolicy) -> Result<(), (String, String)> {
    // The spec's own checks name the field (targetRef.kind or .group).
    p.spec.validate()
}

/// Whether a generated enum value has this serde name.
fn is<T: serde::Serialize>(v: &T, name: &str) -> bool {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .as_deref()
        == Some(name)
}

pub fn validate_route(r: &HttpRoute) -> Result<(), (String, String)> {
    use super::crds::duration_ms;
    for (i, rule) in r.spec.rules.iter().flatten().enumerate() {
        let check = |field: &str, v: &Option<String>| match v {
            Some(s) => duration_ms(s)
                .map(|_| ())
                .map_err(|e| (format!("spec.rules[{i}].{field}"), e)),
            None => Ok(()),
        };
        if let Some(t) = &rule.timeouts {
            check("timeouts.request", &t.request)?;
            check("timeouts.backendRequest", &t.backend_request)?;
        }
        for (j, m) in rule.matches.iter().flatten().enumerate() {
            let at = format!("spec.rules[{i}].matches[{j}]");
            let regex = |field: String, value: &str| {
                regex::Regex::new(value)
                    .map(|_| ())
                    .map_err(|e| (field, format!("`{value}` is not a regular expression: {e}")))
            };
            if let Some(p) = &m.path
                && let Some(v) = &p.value
            {
                if p.r#type
                    .as_ref()
                    .is_some_and(|t| is(t, "RegularExpression"))
                {
                    regex(format!("{at}.path.value"), v)?;
                } else if !v.starts_with('/') {
                    return Err((
                        format!("{at}.path.value"),
                        format!("`{v}` does not start with /"),
                    ));
                }
            }
            for (k, h) in m.headers.iter().flatten().enumerate() {
                if http::header::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                    return Err((
                        format!("{at}.headers[{k}].name"),
                        format!("`{}` is not an HTTP header name", h.name),
                    ));
                }
                if h.r#type
                    .as_ref()
                    .is_some_and(|t| is(t, "RegularExpression"))
                {
                    regex(format!("{at}.headers[{k}].value"), &h.value)?;
                }
            }
            for (k, q) in m.query_params.iter().flatten().enumerate() {
                if q.r#type
                    .as_ref()
                    .is_some_and(|t| is(t, "RegularExpression"))
                {
                    regex(format!("{at}.queryParams[{k}].value"), &q.value)?;
                }
            }
        }
        let filters = rule
            .filters
            .iter()
            .flatten()
            .map(|f| ("".to_string(), f.clone()));
        let backend_filters = rule
            .backend_refs
            .iter()
            .flatten()
            .enumerate()
            .flat_map(|(j, b)| {
                b.filters
                    .iter()
                    .flatten()
                    .filter_map(|f| serde_json::to_value(f).ok())
                    .filter_map(|v| serde_json::from_value(v).ok())
                    .map(move |f| (format!(".backendRefs[{j}]"), f))
                    .collect::<Vec<_>>()
            });
        let prefix_matched = rule.matches.as_deref().unwrap_or_default().iter().all(|m| {
            m.path
                .as_ref()
                .is_none_or(|p| p.r#type.as_ref().is_none_or(|t| is(t, "PathPrefix")))
        });
        for (k, (owner, f)) in filters.chain(backend_filters).enumerate() {
            let f: gateway_api::experimental::httproutes::HttpRouteRulesFilters = f;
            let at = format!("spec.rules[{i}]{owner}.filters");
            // Both modifiers have the same shape: {set, add: [{name, value}], remove}.
            let modifiers = [
                serde_json::to_value(&f.request_header_modifier),
                serde_json::to_value(&f.response_header_modifier),
            ];
            for m in modifiers.into_iter().flatten() {
                let pairs = |key: &str| -> Vec<(String, String)> {
                    m[key]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|h| {
                            let s = |k: &str| h[k].as_str().unwrap_or_default().to_string();
                            (s("name"), s("value"))
                        })
                        .collect()
                };
                let (set, add) = (pairs("set"), pairs("add"));
                let remove: Vec<String> = m["remove"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect();
                for (name, value) in set.iter().chain(&add) {
                    if http::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                        || http::header::HeaderValue::from_str(value).is_err()
                    {
                        return Err((
                            format!("{at}[{k}]"),
                            format!("`{name}: {value}` is not a valid HTTP header"),
                        ));
                    }
                }
                for name in &remove {
                    if http::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        return Err((
                            format!("{at}[{k}]"),
                            format!("`{name}` is not an HTTP header name"),
                        ));
                    }
                }
            }
            let prefix_path = f
                .request_redirect
                .as_ref()
                .and_then(|r| r.path.as_ref())
                .and_then(|p| p.replace_prefix_match.as_ref())
                .or_else(|| {
                    f.url_rewrite
                        .as_ref()
                        .and_then(|r| r.path.as_ref())
                        .and_then(|p| p.replace_prefix_match.as_ref())
                });
            if prefix_path.is_some() && !prefix_matched {
                return Err((
                    format!("{at}[{k}]"),
                    "ReplacePrefixMatch needs the rule's matches to be PathPrefix matches".into(),
                ));
            }
        }
        if let Some(rt) = &rule.retry {
            check("retry.backoff", &rt.backoff)?;
            if rt.attempts.is_some_and(|a| !(0..=10).contains(&a)) {
                return Err((
                    format!("spec.rules[{i}].retry.attempts"),
                    "attempts are between 0 and 10".into(),
                ));
            }
        }
    }
    let parents = r.spec.parent_refs.as_deref().unwrap_or_default();
    if parents.is_empty() {
        return Err((
            "spec.parentRefs".into(),
            "a mesh route attaches to a Service: parentRefs: [{kind: Service, name: ...}]".into(),
        ));
    }
    for (i, p) in parents.iter().enumerate() {
        if p.kind.as_deref() != Some("Service") {
            return Err((
                format!("spec.parentRefs[{i}].kind"),
                format!(
                    "`{}` is not Service (Weft routes mesh traffic, the GAMMA way)",
                    p.kind.as_deref().unwrap_or("Gateway")
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 198.19.0.1\n  selector: {app: web}\n  ports:\n  - port: 80\n    targetPort: 8080\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web-0\n  labels: {app: web}\nspec:\n  containers: [{name: app, image: x}]\nstatus:\n  podIP: 198.18.0.20\n";

    fn store_with(files: &[(&str, &str)]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let mut s = Store::new(dir.path());
        s.refresh();
        (dir, s)
    }

    #[test]
    fn reads_several_documents_and_skips_other_kinds() {
        let text =
            format!("{GOOD}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: x}}\n");
        let (_d, s) = store_with(&[("a.yaml", &text)]);
        let (objs, errs) = s.objects();
        assert_eq!(objs.len(), 2, "{errs:?}");
        assert!(errs.is_empty());
    }

    #[test]
    fn errors_name_file_object_and_field() {
        let bad = GOOD.replace("port: 80", "port: eighty");
        let (_d, s) = store_with(&[("bad.yaml", &bad)]);
        let (_objs, errs) = s.objects();
        assert_eq!(errs.len(), 1, "{errs:?}");
        let e = &errs[0];
        assert!(e.file.as_ref().unwrap().ends_with("bad.yaml"));
        assert_eq!(e.object, "Service default/web");
        assert_eq!(e.field, "spec.ports[0].port");
        let bad = GOOD.replace("port: 80", "port: 70000");
        let (_d, s) = store_with(&[("bad.yaml", &bad)]);
        assert_eq!(s.objects().1[0].field, "spec.ports[0].port");
    }

    #[test]
    fn a_broken_edit_keeps_the_last_good_object() {
        let (d, mut s) = store_with(&[("a.yaml", GOOD)]);
        assert_eq!(s.objects().0.len(), 2);
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(
            d.path().join("a.yaml"),
            GOOD.replace("clusterIP: 198.19.0.1", "clusterIP: nope!"),
        )
        .unwrap();
        assert!(s.refresh());
        let (objs, errs) = s.objects();
        assert_eq!(objs.len(), 2, "the broken Service was dropped");
        assert_eq!(errs[0].field, "spec.clusterIP");
        let Some(Object::Service(svc)) = objs.values().find(|o| matches!(o, Object::Service(_)))
        else {
            panic!("no service")
        };
        assert_eq!(
            svc.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("198.19.0.1")
        );

        // Broken YAML: the whole file keeps its last good state.
        std::fs::write(d.path().join("a.yaml"), "kind: [unclosed").unwrap();
        assert!(s.refresh());
        let (objs, errs) = s.objects();
        assert_eq!((objs.len(), errs.len()), (2, 1));
        assert!(errs[0].message.contains("not valid YAML"));

        // Fixed: the error clears.
        std::fs::write(d.path().join("a.yaml"), GOOD).unwrap();
        assert!(s.refresh());
        assert!(s.objects().1.is_empty());
    }

    #[test]
    fn traffic_policies_are_read_and_checked() {
        let good = "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p}\nspec:\n  targetRef: {kind: Service, name: web, port: 80}\n";
        let (_d, s) = store_with(&[("p.yaml", good)]);
        let (objs, errs) = s.objects();
        assert_eq!((objs.len(), errs.len()), (1, 0), "{errs:?}");
        let bad = good.replace("port: 80", "prot: 80");
        let (_d, s) = store_with(&[("p.yaml", &bad)]);
        let errs = s.objects().1;
        assert!(errs[0].message.contains("prot"), "{errs:?}");
        assert_eq!(errs[0].object, "TrafficPolicy default/p");
    }

    #[test]
    fn fault_injections_are_read_and_checked() {
        let good = "apiVersion: weft.dev/v1alpha1\nkind: FaultInjection\nmetadata: {name: flaky}\nspec:\n  abort: {httpStatus: 503, percent: 10}\n";
        let bad = "apiVersion: weft.dev/v1alpha1\nkind: FaultInjection\nmetadata: {name: worse}\nspec:\n  delay: {fixedDelay: 1 s, percent: 10}\n";
        let (_d, s) = store_with(&[("a.yaml", good), ("b.yaml", bad)]);
        let (objs, errs) = s.objects();
        assert!(
            objs.keys()
                .any(|k| k.kind == Kind::FaultInjection && k.name == "flaky")
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].object, "FaultInjection default/worse");
        assert_eq!(errs[0].field, "spec.delay.fixedDelay");
    }

    #[test]
    fn routes_must_attach_to_services() {
        let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: web}]\n";
        let (_d, s) = store_with(&[("r.yaml", route)]);
        let (objs, errs) = s.objects();
        assert_eq!(errs.len(), 1, "{objs:?}");
        assert_eq!(errs[0].field, "spec.parentRefs[0].kind", "{errs:?}");
    }

    #[test]
    fn authorization_policies_are_read_and_checked() {
        let good = "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: shop}\nspec:\n  targetRef: {kind: Service, name: web}\n  action: DENY\n  rules: [{from: [{namespace: ops}]}]\n";
        let bad = "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: b, namespace: shop}\nspec:\n  targetRef: {kind: Service, name: web}\n  rules: [{to: {methods: [get]}}]\n";
        // A route target without its group is refused (a Service has none).
        let route = "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: c, namespace: shop}\nspec:\n  targetRef: {kind: HTTPRoute, name: r}\n";
        let ok_route = "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: d, namespace: shop}\nspec:\n  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: r, sectionName: writes}\n";
        let (_d, s) = store_with(&[
            ("a.yaml", good),
            ("b.yaml", bad),
            ("c.yaml", route),
            ("d.yaml", ok_route),
        ]);
        let (objs, errs) = s.objects();
        for name in ["a", "d"] {
            assert!(
                objs.keys()
                    .any(|k| k.kind == Kind::AuthorizationPolicy && k.name == name)
            );
        }
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].object, "AuthorizationPolicy shop/b");
        assert_eq!(errs[0].field, "spec.rules[0].to.methods[0]");
        assert_eq!(errs[1].object, "AuthorizationPolicy shop/c");
        assert_eq!(errs[1].field, "spec.targetRef.kind");
    }
}

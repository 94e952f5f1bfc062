//! `weftctl inject` and `uninject` on YAML: every pod template in a stream of
//! documents (Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs,
//! CronJobs, and Lists of them), with the same code as the webhook. Documents
//! that hold no pod template pass through as they were written, comments and
//! all.

use serde_json::Value;

use super::Config;
use super::pod::{self, Outcome};

/// What happened to one object, for the report on stderr.
#[derive(Debug, PartialEq, Eq)]
pub struct Report {
    /// `deployment/web` (kind in lower case, as kubectl prints it).
    pub object: String,
    pub outcome: Outcome,
}

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("document {doc}: not valid YAML: {message}")]
    Yaml { doc: usize, message: String },
    #[error("document {doc}: cannot write it back as YAML: {message}")]
    Write { doc: usize, message: String },
}

/// Splits a YAML stream at its document markers, keeping each document's text.
fn documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == "---" || bare.starts_with("--- ") {
            docs.push(String::new());
            continue;
        }
        if let Some(last) = docs.last_mut() {
            last.push_str(line);
        }
    }
    docs
}

/// The pod templates in `obj`: `(metadata, spec)` pairs, with the object's
/// name for the report.
fn templates<'a>(obj: &'a mut Value, out: &mut Vec<(String, Option<String>, &'a mut Value)>) {
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    let label = format!("{}/{name}", kind.to_ascii_lowercase());
    match kind.as_str() {
        "Pod" => out.push((label, ns, obj)),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => {
            if let Some(t) = obj.pointer_mut("/spec/template") {
                out.push((label, ns, t));
            }
        }
        "CronJob" => {
            if let Some(t) = obj.pointer_mut("/spec/jobTemplate/spec/template") {
                out.push((label, ns, t));
            }
        }
        k if k == "List" || k.ends_with("List") => {
            if let Some(items) = obj.get_mut("items").and_then(Value::as_array_mut) {
                for item in items {
                    templates(item, out);
                }
            }
        }
        _ => {}
    }
}

/// Splits a pod or template into its metadata and spec.
fn meta_and_spec(t: &mut Value) -> Option<(&mut Value, &mut Value)> {
    let o = t.as_object_mut()?;
    if !o.contains_key("metadata") {
        o.insert("metadata".into(), Value::Object(Default::default()));
    }
    let mut meta = None;
    let mut spec = None;
    for (k, v) in o.iter_mut() {
        match k.as_str() {
            "metadata" => meta = Some(v),
            "spec" => spec = Some(v),
            _ => {}
        }
    }
    Some((meta?, spec?))
}

/// Injects (or, with `remove`, uninjects) every pod template in `text`.
pub fn rewrite(
    text: &str,
    cfg: &Config,
    remove: bool,
) -> Result<(String, Vec<Report>), InjectError> {
    let mut out = String::new();
    let mut reports = Vec::new();
    for (i, doc) in documents(text).into_iter().enumerate() {
        let n = i + 1;
        let mut value: Value = if doc.trim().is_empty() {
            Value::Null
        } else {
            serde_norway::from_str(&doc).map_err(|e| InjectError::Yaml {
                doc: n,
                message: e.to_string(),
            })?
        };
        let mut found = Vec::new();
        templates(&mut value, &mut found);
        let mut changed = false;
        for (object, ns, t) in found {
            let outcome = {
                let Some((meta, spec)) = meta_and_spec(t) else {
                    continue;
                };
                if remove {
                    if pod::uninject(meta, spec) {
                        changed = true;
                        Outcome::Injected
                    } else {
                        Outcome::AlreadyInjected
                    }
                } else {
                    let o = pod::inject(meta, spec, ns.as_deref(), cfg);
                    changed |= matches!(o, Outcome::Injected | Outcome::Skipped(_));
                    o
                }
            };
            // A template that had no metadata gets none back.
            if let Some(o) = t.as_object_mut()
                && o.get("metadata")
                    .and_then(Value::as_object)
                    .is_some_and(|m| m.is_empty())
            {
                o.remove("metadata");
            }
            reports.push(Report { object, outcome });
        }
        if i > 0 {
            out.push_str("---\n");
        }
        if changed {
            let yaml = serde_norway::to_string(&value).map_err(|e| InjectError::Write {
                doc: n,
                message: e.to_string(),
            })?;
            out.push_str(&yaml);
        } else {
            out.push_str(&doc);
        }
    }
    Ok((out, reports))
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "# the shop\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: app\n        image: web:1\n---\napiVersion: v1\nkind: Service   # untouched, comment and all\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n---\napiVersion: batch/v1\nkind: CronJob\nmetadata: {name: nightly}\nspec:\n  schedule: '@daily'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{name: job, image: job:1}]\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: one}\n  spec: {containers: [{name: c, image: x}]}\n";

    #[test]
    fn injects_every_template_and_passes_the_rest_through() {
        let (out, reports) = rewrite(APP, &Config::default(), false).unwrap();
        let objects: Vec<&str> = reports.iter().map(|r| r.object.as_str()).collect();
        assert_eq!(objects, ["deployment/web", "cronjob/nightly", "pod/one"]);
        assert!(reports.iter().all(|r| r.outcome == Outcome::Injected));
        assert!(out.contains("kind: Service   # untouched, comment and all"));
        let docs: Vec<Value> = documents(&out)
            .iter()
            .map(|d| serde_norway::from_str(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 4);
        assert_eq!(
            docs[0]["spec"]["template"]["spec"]["initContainers"][1]["name"],
            "weft-proxy"
        );
        assert_eq!(
            docs[2]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"][1]["restartPolicy"],
            "Always"
        );
        assert_eq!(
            docs[3]["items"][0]["spec"]["initContainers"][0]["name"],
            "weft-init"
        );

        // Again: nothing changes. Uninjected: the original objects.
        let (again, _) = rewrite(&out, &Config::default(), false).unwrap();
        assert_eq!(again, out);
        let (back, _) = rewrite(&out, &Config::default(), true).unwrap();
        let original: Vec<Value> = documents(APP)
            .iter()
            .map(|d| serde_norway::from_str(d).unwrap())
            .collect();
        let restored: Vec<Value> = documents(&back)
            .iter()
            .map(|d| serde_norway::from_str(d).unwrap())
            .collect();
        assert_eq!(original, restored);
    }

    #[test]
    fn bad_yaml_names_the_document() {
        let e = rewrite("a: 1\n---\nkind: [unclosed\n", &Config::default(), false).unwrap_err();
        assert!(e.to_string().starts_with("document 2"), "{e}");
    }
}

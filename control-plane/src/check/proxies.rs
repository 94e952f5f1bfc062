//! Whether every proxy runs the current config: the control plane's admin
//! `/status` (what `weftctl status` shows), read through the API server.
//!
//! Every replica serves Watch and knows only the proxies connected to it,
//! and keeps a proxy that left it as disconnected; so each ready replica is
//! asked through the pod proxy and the answers are merged: a proxy is
//! current when any replica says so. (With no replica to name, the Service
//! proxy answers for one of them.) A disconnected proxy whose pod is gone
//! left the mesh: it is not stale.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use serde_json::Value;

use super::layout::{self, CONTROL};
use super::{Line, api_error};

/// One replica's `/status`.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The replica (pod) asked, or the Service.
    pub from: String,
    pub status: Value,
}

/// A proxy that no replica calls current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stale {
    pub namespace: String,
    pub pod: String,
    pub connected: bool,
    /// Why, as a person reads it.
    pub why: String,
}

/// What the replicas said, merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// Proxies some replica calls current.
    pub current: usize,
    pub stale: Vec<Stale>,
    /// The replicas' config versions.
    pub versions: Vec<u64>,
    /// Manifest and watch errors, each once: `object: field f: message`.
    pub errors: Vec<String>,
}

fn describe_error(e: &Value) -> String {
    let mut s = String::new();
    if let Some(file) = e["file"].as_str().filter(|f| !f.is_empty()) {
        s.push_str(file);
        s.push_str(": ");
    }
    s.push_str(e["object"].as_str().unwrap_or("?"));
    if let Some(field) = e["field"].as_str().filter(|f| !f.is_empty()) {
        s.push_str(": field ");
        s.push_str(field);
    }
    s.push_str(": ");
    s.push_str(e["message"].as_str().unwrap_or_default());
    s
}

pub fn merge(answers: &[Answer]) -> Merged {
    // (namespace, pod) → (current anywhere, the best reason it is not).
    let mut proxies: BTreeMap<(String, String), (bool, Option<Stale>)> = BTreeMap::new();
    let mut merged = Merged::default();
    for a in answers {
        let version = a.status["version"].as_u64().unwrap_or(0);
        merged.versions.push(version);
        for p in a.status["proxies"].as_array().into_iter().flatten() {
            let key = (
                p["namespace"].as_str().unwrap_or_default().to_string(),
                p["pod"].as_str().unwrap_or_default().to_string(),
            );
            let entry = proxies.entry(key.clone()).or_insert((false, None));
            if p["current"] == true {
                entry.0 = true;
                continue;
            }
            let connected = p["connected"] == true;
            let acked = p["acked_version"].as_u64().unwrap_or(0);
            let why = if !connected {
                format!(
                    "disconnected from {} (last acknowledged version {acked})",
                    a.from
                )
            } else if let Some(err) = p["ack_error"].as_str().filter(|e| !e.is_empty()) {
                format!("rejected version {acked} from {}: {err}", a.from)
            } else {
                format!(
                    "behind on {}: acknowledged version {acked}, current {version}",
                    a.from
                )
            };
            let stale = Stale {
                namespace: key.0,
                pod: key.1,
                connected,
                why,
            };
            // A connected replica's view says more than a departed one's.
            let better = match &entry.1 {
                None => true,
                Some(old) => !old.connected && connected,
            };
            if better {
                entry.1 = Some(stale);
            }
        }
        for e in a.status["errors"].as_array().into_iter().flatten() {
            let d = describe_error(e);
            if !merged.errors.contains(&d) {
                merged.errors.push(d);
            }
        }
    }
    for (_, (current, stale)) in proxies {
        if current {
            merged.current += 1;
        } else if let Some(s) = stale {
            merged.stale.push(s);
        }
    }
    merged.versions.sort_unstable();
    merged.versions.dedup();
    merged
}

async fn get(client: &Client, path: &str) -> Result<Value, String> {
    let req = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let text = client.request_text(req).await.map_err(|e| api_error(&e))?;
    serde_json::from_str(&text).map_err(|e| format!("the answer is not JSON: {e}"))
}

/// Asks each of `replicas` (pod names), or the Service when there are none
/// or none answers.
pub async fn fetch(
    client: &Client,
    namespace: &str,
    replicas: &[String],
) -> Result<Vec<Answer>, String> {
    let mut answers = Vec::new();
    let mut failures = Vec::new();
    for pod in replicas {
        match get(client, &layout::status_via_pod(namespace, pod)).await {
            Ok(status) => answers.push(Answer {
                from: pod.clone(),
                status,
            }),
            Err(e) => failures.push(format!("{pod}: {e}")),
        }
    }
    if answers.is_empty() {
        match get(client, &layout::status_via_service(namespace)).await {
            Ok(status) => answers.push(Answer {
                from: format!("Service {namespace}/{CONTROL}"),
                status,
            }),
            Err(e) => {
                failures.push(format!("Service {namespace}/{CONTROL}: {e}"));
                return Err(failures.join("; "));
            }
        }
    }
    Ok(answers)
}

/// Drops disconnected proxies whose pods are gone; returns how many.
pub async fn drop_departed(client: &Client, merged: &mut Merged) -> usize {
    let mut kept = Vec::new();
    let mut departed = 0;
    for s in std::mem::take(&mut merged.stale) {
        if !s.connected {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &s.namespace);
            if let Ok(None) = pods.get_metadata_opt(&s.pod).await {
                departed += 1;
                continue;
            }
        }
        kept.push(s);
    }
    merged.stale = kept;
    departed
}

/// The lines: one for the proxies when all are current, else one per stale
/// proxy; then the control plane's errors, one line each.
pub fn lines(merged: &Merged, answers: &[Answer], departed: usize) -> Vec<Line> {
    let mut out = Vec::new();
    let asked: Vec<&str> = answers.iter().map(|a| a.from.as_str()).collect();
    let versions: Vec<String> = merged.versions.iter().map(u64::to_string).collect();
    let gone = if departed > 0 {
        format!("; {departed} proxy(ies) of deleted pods ignored")
    } else {
        String::new()
    };
    if merged.stale.is_empty() {
        let detail = if merged.current == 0 {
            format!(
                "no proxy connected yet (config version {}; asked {}){gone}",
                versions.join("/"),
                asked.join(", ")
            )
        } else {
            format!(
                "{} proxy(ies) run the current config (version {}; asked {}){gone}",
                merged.current,
                versions.join("/"),
                asked.join(", ")
            )
        };
        out.push(Line::pass("proxies", detail));
    }
    for s in &merged.stale {
        let logs = format!("kubectl -n {} logs {} -c weft-proxy", s.namespace, s.pod);
        let fix = if !s.connected {
            format!(
                "the proxy cannot reach the control plane's gRPC (Service {CONTROL} port \
                 {}): see `{logs}`",
                layout::PORT_GRPC
            )
        } else if s.why.starts_with("rejected") {
            format!("fix what the error names; see `{logs}`")
        } else {
            format!("a push is on its way; if it stays behind, see `{logs}`")
        };
        out.push(Line::fail(
            format!("proxy {}/{}", s.namespace, s.pod),
            format!("stale: {}", s.why),
            fix,
        ));
    }
    if merged.errors.is_empty() {
        out.push(Line::pass("control plane errors", "none"));
    }
    for e in &merged.errors {
        let fix = if e.starts_with("watch ") {
            "the control plane cannot watch this kind: check its RBAC (k8s/base/rbac.yaml) \
             and that the CRD is installed; it keeps the last state meanwhile"
        } else {
            "fix the object named (its last good version keeps serving)"
        };
        out.push(Line::fail("control plane error", e.clone(), fix));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(from: &str, version: u64, proxies: Value, errors: Value) -> Answer {
        Answer {
            from: from.into(),
            status: json!({"version": version, "proxies": proxies, "errors": errors}),
        }
    }

    #[test]
    fn a_proxy_current_on_one_replica_is_current() {
        let a = answer(
            "control-0",
            7,
            json!([
                {"namespace": "shop", "pod": "web-1", "connected": false, "current": false, "acked_version": 3, "ack_error": ""},
                {"namespace": "shop", "pod": "web-2", "connected": true, "current": true, "acked_version": 7, "ack_error": ""},
            ]),
            json!([]),
        );
        let b = answer(
            "control-1",
            9,
            json!([
                {"namespace": "shop", "pod": "web-1", "connected": true, "current": true, "acked_version": 9, "ack_error": ""},
            ]),
            json!([]),
        );
        let m = merge(&[a.clone(), b.clone()]);
        assert_eq!(m.current, 2);
        assert!(m.stale.is_empty());
        assert_eq!(m.versions, [7, 9]);
        let lines = lines(&m, &[a, b], 0);
        assert_eq!(
            lines.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "✔ proxies: 2 proxy(ies) run the current config (version 7/9; asked control-0, control-1)",
                "✔ control plane errors: none",
            ]
        );
    }

    #[test]
    fn stale_proxies_are_named_with_why() {
        let a = answer(
            "control-0",
            7,
            json!([
                {"namespace": "shop", "pod": "gone", "connected": false, "current": false, "acked_version": 3, "ack_error": ""},
                {"namespace": "shop", "pod": "picky", "connected": true, "current": false, "acked_version": 7, "ack_error": "bad route"},
                {"namespace": "shop", "pod": "slow", "connected": true, "current": false, "acked_version": 5, "ack_error": ""},
            ]),
            json!([
                {"object": "HTTPRoute shop/web", "field": "spec.rules[0]", "message": "no backend"},
                {"object": "watch TrafficPolicy", "field": "", "message": "404 (is its CRD installed?)"},
            ]),
        );
        // The other replica repeats an error: it is listed once.
        let b = answer(
            "control-1",
            7,
            json!([]),
            json!([{"object": "HTTPRoute shop/web", "field": "spec.rules[0]", "message": "no backend"}]),
        );
        let m = merge(&[a.clone(), b.clone()]);
        assert_eq!(m.current, 0);
        let text: Vec<String> = lines(&m, &[a, b], 0)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(text.len(), 5, "{text:#?}");
        assert!(text[0].starts_with(
            "✘ proxy shop/gone: stale: disconnected from control-0 (last acknowledged version 3) — the proxy cannot reach"
        ), "{}", text[0]);
        assert!(text[1].starts_with(
            "✘ proxy shop/picky: stale: rejected version 7 from control-0: bad route — fix what the error names; see `kubectl -n shop logs picky -c weft-proxy`"
        ), "{}", text[1]);
        assert!(
            text[2].starts_with(
                "✘ proxy shop/slow: stale: behind on control-0: acknowledged version 5, current 7 —"
            ),
            "{}",
            text[2]
        );
        assert_eq!(
            text[3],
            "✘ control plane error: HTTPRoute shop/web: field spec.rules[0]: no backend — fix the object named (its last good version keeps serving)"
        );
        assert!(text[4].starts_with("✘ control plane error: watch TrafficPolicy: 404"));
    }

    #[test]
    fn a_connected_view_wins_over_a_departed_one() {
        let a = answer(
            "control-0",
            7,
            json!([{"namespace": "n", "pod": "p", "connected": false, "current": false, "acked_version": 1, "ack_error": ""}]),
            json!([]),
        );
        let b = answer(
            "control-1",
            8,
            json!([{"namespace": "n", "pod": "p", "connected": true, "current": false, "acked_version": 6, "ack_error": ""}]),
            json!([]),
        );
        for order in [[a.clone(), b.clone()], [b.clone(), a.clone()]] {
            let m = merge(&order);
            assert_eq!(m.stale.len(), 1);
            assert!(m.stale[0].connected);
            assert!(m.stale[0].why.starts_with("behind on control-1"));
        }
    }

    #[test]
    fn no_proxies_yet_passes() {
        let a = answer("Service weft-system/weft-control", 1, json!([]), json!([]));
        let m = merge(std::slice::from_ref(&a));
        let l = lines(&m, &[a], 2);
        assert_eq!(
            l[0].to_string(),
            "✔ proxies: no proxy connected yet (config version 1; asked Service weft-system/weft-control); 2 proxy(ies) of deleted pods ignored"
        );
    }
}

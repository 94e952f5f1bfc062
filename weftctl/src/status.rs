//! `weftctl status`: what the control plane says of every proxy it serves.

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Prints the status (a table, or JSON); `Ok(false)` when a proxy is stale
/// or a manifest has errors.
pub async fn run(control_plane: &str, json: bool) -> anyhow::Result<bool> {
    let url = format!("{}/status", control_plane.trim_end_matches('/'));
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let res = client
        .get(
            url.parse()
                .with_context(|| format!("`{url}` is not a URL"))?,
        )
        .await
        .with_context(|| format!("cannot reach the control plane at {url}"))?;
    anyhow::ensure!(res.status().is_success(), "{url}: {}", res.status());
    let body = res.into_body().collect().await?.to_bytes();
    let status: serde_json::Value =
        serde_json::from_slice(&body).context("the status is not JSON")?;
    if json {
        println!("{status}");
    } else {
        print!("{}", table(&status));
    }
    Ok(healthy(&status))
}

fn healthy(s: &serde_json::Value) -> bool {
    let proxies_ok = s["proxies"]
        .as_array()
        .is_some_and(|p| p.iter().all(|p| p["current"] == true));
    let no_errors = s["errors"].as_array().is_none_or(|e| e.is_empty());
    proxies_ok && no_errors
}

fn ago(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    if ms == 0 {
        return "never".into();
    }
    let secs = now.saturating_sub(ms) / 1000;
    format!("{secs}s ago")
}

/// The human view.
fn table(s: &serde_json::Value) -> String {
    let mut out = format!("config version {}\n\n", s["version"]);
    out.push_str(&format!(
        "{:<32} {:<56} {:>15} {:>15} {:>10} {}\n",
        "PROXY", "IDENTITY", "SENT", "ACKED", "ACKED AT", "STATE"
    ));
    for p in s["proxies"].as_array().into_iter().flatten() {
        out.push_str(&proxy_line(p));
    }
    out.push_str(&errors(s));
    out
}

fn proxy_line(p: &serde_json::Value) -> String {
    let state = if p["current"] == true {
        "current".to_string()
    } else if p["connected"] != true {
        "stale (disconnected)".to_string()
    } else if p["ack_error"].as_str().is_some_and(|e| !e.is_empty()) {
        format!(
            "stale (rejected: {})",
            p["ack_error"].as_str().unwrap_or_default()
        )
    } else {
        "stale (behind)".to_string()
    };
    format!(
        "{:<32} {:<56} {:>15} {:>15} {:>10} {state}\n",
        format!(
            "{}/{}",
            p["namespace"].as_str().unwrap_or_default(),
            p["pod"].as_str().unwrap_or_default()
        ),
        p["identity"].as_str().unwrap_or_default(),
        p["sent_version"],
        p["acked_version"],
        ago(p["acked_at_unix_ms"].as_u64().unwrap_or(0)),
    )
}

/// The errors outstanding: manifest problems, failing watches, and (in
/// local mode) what a route's status would say, one a line as
/// `file: object: field F: message`, leaving out what is empty.
fn errors(s: &serde_json::Value) -> String {
    let errors = s["errors"].as_array().cloned().unwrap_or_default();
    if errors.is_empty() {
        return "\nno manifest errors\n".into();
    }
    let mut out = format!("\n{} manifest error(s):\n", errors.len());
    for e in errors {
        let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
        let mut line = String::from("  ");
        if !text("file").is_empty() {
            line.push_str(&format!("{}: ", text("file")));
        }
        line.push_str(&text("object"));
        if !text("field").is_empty() {
            line.push_str(&format!(": field {}", text("field")));
        }
        line.push_str(&format!(": {}\n", text("message")));
        out.push_str(&line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_like_the_control_planes() {
        let s = serde_json::json!({"errors": [
            {"file": "/m/routes.yaml", "object": "HTTPRoute shop/web", "field": "spec.rules[0].backendRefs[1]",
             "message": "Service shop/gone does not exist; its share of requests gets 500 (ResolvedRefs: BackendNotFound)"},
            {"object": "watch GRPCRoute", "field": "", "message": "404 (is its CRD installed?)"},
        ]});
        assert_eq!(
            errors(&s),
            "\n2 manifest error(s):\n  /m/routes.yaml: HTTPRoute shop/web: field spec.rules[0].backendRefs[1]: Service shop/gone does not exist; its share of requests gets 500 (ResolvedRefs: BackendNotFound)\n  watch GRPCRoute: 404 (is its CRD installed?)\n"
        );
        assert!(!healthy(&s));
        assert_eq!(
            errors(&serde_json::json!({"errors": []})),
            "\nno manifest errors\n"
        );
    }
}

//! `weftctl`: the operator's command line.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, Parser)]
#[command(name = "weftctl", version, about = "Operate a Weft mesh")]
struct Cli {
    /// The control plane's admin server.
    #[arg(
        long,
        env = "WEFT_CONTROL_ADMIN",
        default_value = "http://127.0.0.1:9990",
        global = true
    )]
    control_plane: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every connected proxy: workload, identity, the config version sent and
    /// acknowledged and when, and whether it runs the current version; then
    /// the manifest errors outstanding. Exits 1 when a proxy is stale or a
    /// manifest has errors.
    Status {
        /// Print the status as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// A whole mesh on this machine, no Kubernetes: a control plane and pods
    /// in network namespaces with real sidecars and strict mTLS, under load,
    /// with a live table of golden metrics. Run as root. Exits 1 when the
    /// client's success rate fell below 99%.
    Demo(weft_control::demo::Args),
    /// Weft's CustomResourceDefinitions, generated from the control plane's
    /// types, as YAML for `kubectl apply -f -` (k8s/crds/ holds the same).
    Crds,
    /// Adds the sidecar to every pod template in YAML (Pods, Deployments,
    /// StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs, Lists), exactly
    /// as the injector webhook would; everything else passes through.
    /// `weftctl inject -f app.yaml | kubectl apply -f -`.
    Inject {
        /// The YAML to read, `-` for standard input.
        #[arg(short = 'f', long = "filename", default_value = "-")]
        file: String,
        #[command(flatten)]
        flags: weft_control::inject::Flags,
        /// The mesh's trust domain.
        #[arg(long, default_value = weft_api::defaults::TRUST_DOMAIN)]
        trust_domain: String,
        /// The control plane's identity, which proxies check.
        #[arg(
            long,
            default_value = "spiffe://cluster.local/ns/weft-system/sa/weft-control"
        )]
        control_plane_identity: String,
    },
    /// Removes what `inject` (or the webhook) added and restores the app's
    /// probes.
    Uninject {
        /// The YAML to read, `-` for standard input.
        #[arg(short = 'f', long = "filename", default_value = "-")]
        file: String,
    },
    /// Everything a cluster needs (CRDs, namespace, RBAC, the control plane,
    /// the injector's registration, and add-ons), as YAML:
    /// `weftctl install | kubectl apply --server-side -f -`. The same objects
    /// as `kubectl kustomize k8s/base` (or `k8s/addons/jaeger`).
    Install(weft_control::install::InstallArgs),
    /// Checks a cluster, one line per check (`✔` or `✘` with the fix):
    /// with `--pre`, that Weft can be installed (API server, version, this
    /// user's permissions); without, that the installed Weft is healthy
    /// (CRDs, control plane, webhook and its caBundle, CA, leader, every
    /// proxy current). Exits 1 when a check fails, 2 when none could run.
    Check(weft_control::check::Args),
}

/// `weftctl inject` / `uninject`: YAML in, YAML out, a line per object on
/// stderr.
fn rewrite(file: &str, cfg: &weft_control::inject::Config, remove: bool) -> anyhow::Result<()> {
    use std::io::Read;
    let text = if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
    };
    let (out, reports) = weft_control::inject::workloads::rewrite(&text, cfg, remove)
        .with_context(|| format!("in {file}"))?;
    emit(&out);
    use weft_control::inject::Outcome;
    for r in reports {
        let what = match (&r.outcome, remove) {
            (Outcome::Injected, false) => "injected".to_string(),
            (Outcome::Injected, true) => "uninjected".to_string(),
            (Outcome::AlreadyInjected, false) => "already injected".to_string(),
            (Outcome::AlreadyInjected, true) => "not injected".to_string(),
            (Outcome::OptedOut, _) => "skipped: weft.dev/inject is disabled".to_string(),
            (Outcome::Skipped(why), _) => format!("skipped: {why}"),
        };
        eprintln!("{} {what}", r.object);
    }
    Ok(())
}

/// Writes to stdout; a reader that went away (`weftctl install | head`) ends
/// the output quietly rather than with a panic.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Crds = cli.command {
        emit(&weft_control::discovery::crds::crds_yaml());
        return ExitCode::SUCCESS;
    }
    if let Command::Install(args) = &cli.command {
        return match weft_control::install::render(args) {
            Ok(yaml) => {
                emit(&yaml);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("weftctl install: {e}");
                ExitCode::from(2)
            }
        };
    }
    let injected = match &cli.command {
        Command::Inject {
            file,
            flags,
            trust_domain,
            control_plane_identity,
        } => Some(rewrite(
            file,
            &flags.config(trust_domain, control_plane_identity, "weft-system"),
            false,
        )),
        Command::Uninject { file } => Some(rewrite(
            file,
            &weft_control::inject::Config::default(),
            true,
        )),
        _ => None,
    };
    if let Some(res) = injected {
        return match res {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weftctl: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::Demo(args) = cli.command {
        return match weft_control::demo::run(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("weftctl demo: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weftctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("weftctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Status { json } => {
            let url = format!("{}/status", cli.control_plane.trim_end_matches('/'));
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
            let healthy = healthy(&status);
            if json {
                println!("{status}");
            } else {
                print!("{}", table(&status));
            }
            Ok(healthy)
        }
        Command::Check(args) => {
            Ok(weft_control::check::run(&args, &mut |line| println!("{line}")).await?)
        }
        // Handled in main: the demo makes runtimes of its own.
        Command::Demo(_) => anyhow::bail!("the demo runs outside this runtime"),
        // Handled in main: printing needs no runtime.
        Command::Crds | Command::Inject { .. } | Command::Uninject { .. } | Command::Install(_) => {
            anyhow::bail!("this command runs outside the runtime")
        }
    }
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
        out.push_str(&format!(
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
        ));
    }
    let errors = s["errors"].as_array().cloned().unwrap_or_default();
    if errors.is_empty() {
        out.push_str("\nno manifest errors\n");
    } else {
        out.push_str(&format!("\n{} manifest error(s):\n", errors.len()));
        for e in errors {
            out.push_str(&format!(
                "  {}: {}: {}: {}\n",
                e["file"].as_str().unwrap_or_default(),
                e["object"].as_str().unwrap_or_default(),
                e["field"].as_str().unwrap_or_default(),
                e["message"].as_str().unwrap_or_default()
            ));
        }
    }
    out
}

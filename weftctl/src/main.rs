//! `weftctl`: the operator's command line.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;

mod status;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
    /// with a live table of golden metrics. Needs root. Exits 1 when the
    /// client's success rate fell below 99%.
    Demo(weft_demo::Args),
    /// A web page of the mesh, live: a graph of workloads and the calls
    /// between them (rate, success, p99, mTLS), per Service and route golden
    /// metrics with sparklines, every proxy's identity, certificate and
    /// config, the answers proxies generated (`weft-error`) and links into
    /// Jaeger. Reads the control plane (`--control-plane`; on a cluster,
    /// `kubectl -n weft-system port-forward deploy/weft-control 9990`) and
    /// the proxies' metrics through it, or from `--prometheus`.
    Dashboard(weft_dashboard::Args),
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
    let Cli {
        control_plane,
        command,
    } = Cli::parse();
    match command {
        Command::Crds => match weft_control::discovery::crds::crds_yaml() {
            Ok(yaml) => {
                emit(&yaml);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("weftctl crds: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Install(args) => match weft_control::install::render(&args) {
            Ok(yaml) => {
                emit(&yaml);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("weftctl install: {e}");
                ExitCode::from(2)
            }
        },
        Command::Inject {
            file,
            flags,
            trust_domain,
            control_plane_identity,
        } => {
            let cfg = flags.config(&trust_domain, &control_plane_identity, "weft-system");
            done(rewrite(&file, &cfg, false).map(|()| true))
        }
        Command::Uninject { file } => {
            done(rewrite(&file, &weft_control::inject::Config::default(), true).map(|()| true))
        }
        // The demo makes runtimes of its own, one per namespace it works in.
        Command::Demo(args) => match weft_demo::run(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            // It names the command itself.
            Err(e @ weft_demo::Error::NotRoot) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("weftctl demo: {e}");
                ExitCode::from(2)
            }
        },
        Command::Status { json } => in_runtime(status::run(&control_plane, json)),
        Command::Dashboard(args) => in_runtime(async move {
            weft_dashboard::run(args, &control_plane).await?;
            Ok(true)
        }),
        Command::Check(args) => in_runtime(async move {
            Ok(weft_control::check::run(&args, &mut |line| println!("{line}")).await?)
        }),
    }
}

/// 0 when all is well, 1 when the answer is "unhealthy", 2 when the command
/// could not do its job.
fn done(res: anyhow::Result<bool>) -> ExitCode {
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("weftctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs a command that talks to a server.
fn in_runtime(fut: impl std::future::Future<Output = anyhow::Result<bool>>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => done(rt.block_on(fut)),
        Err(e) => {
            eprintln!("weftctl: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `weftctl check`: is this cluster ready for Weft (`--pre`), and is the
//! installed Weft healthy? One line per check, `✔ name: detail` or
//! `✘ name: what is wrong — how to fix it`.
//!
//! Before an install: the API server answers and says its version, the
//! version runs native sidecars (1.29+), and this user may create what an
//! install creates (SelfSubjectAccessReviews).
//!
//! After: the CRDs are Established; the control plane's Deployment has
//! every replica available and its Service ready endpoints; the
//! MutatingWebhookConfiguration calls that Service, and its caBundle holds
//! exactly the trust anchors of the CA Secret; a dry-run pod comes back
//! injected; the CA is valid for at least 30 more days; a replica holds
//! the leader Lease; and every proxy runs the current config, with the
//! control plane's errors listed (as `weftctl status` shows them).
//!
//! The names checked live in [`layout`].

pub mod certs;
pub mod installed;
pub mod layout;
pub mod line;
pub mod pre;
pub mod proxies;
pub mod version;

use std::path::PathBuf;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub use line::Line;

/// How long one API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// `weftctl check`'s flags.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Check the cluster before an install: the API server, its version and
    /// this user's permissions.
    #[arg(long)]
    pub pre: bool,
    /// The kubeconfig to use (default: $KUBECONFIG, then ~/.kube/config,
    /// then the pod's ServiceAccount when run in a cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Weft's namespace.
    #[arg(long, default_value = layout::NAMESPACE)]
    pub namespace: String,
}

/// Why the checks could not run at all. Each message carries its cause
/// (no `source()`, so a chain printer does not repeat it).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("reading the kubeconfig {path}: {error}")]
    ReadKubeconfig {
        path: PathBuf,
        error: kube::config::KubeconfigError,
    },
    #[error("loading the kubeconfig: {0}")]
    Kubeconfig(kube::config::KubeconfigError),
    #[error(
        "no cluster to talk to (give --kubeconfig, set KUBECONFIG or write ~/.kube/config): {0}"
    )]
    Infer(kube::config::InferConfigError),
    #[error("making a Kubernetes client: {0}")]
    Client(kube::Error),
}

/// A Kubernetes API error as one short phrase.
pub(crate) fn api_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => {
            let reason = if s.reason.is_empty() {
                String::new()
            } else {
                format!(" {}", s.reason)
            };
            format!("{} ({}{reason})", s.message.trim(), s.code)
        }
        other => {
            // The source chain says what actually failed (refused, DNS, TLS).
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(e) = src {
                let next = e.to_string();
                if !s.contains(&next) {
                    s.push_str(": ");
                    s.push_str(&next);
                }
                src = e.source();
            }
            s
        }
    }
}

/// The client `args` ask for, and the server URL it talks to.
pub async fn client(args: &Args) -> Result<(Client, String), CheckError> {
    weft_api::tls::install_default_provider();
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let mut config = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|error| CheckError::ReadKubeconfig {
                path: path.clone(),
                error,
            })?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(CheckError::Kubeconfig)?
        }
        None if args.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(CheckError::Kubeconfig)?,
        None => Config::infer().await.map_err(CheckError::Infer)?,
    };
    config.read_timeout = Some(REQUEST_TIMEOUT);
    // kube's default retries a 503 up to 15 times with backoff growing to
    // minutes; a proxied request to a replica that does not answer is a
    // result to report, not to wait out.
    config.default_retry = false;
    config.write_timeout = Some(REQUEST_TIMEOUT);
    let server = config.cluster_url.to_string();
    let server = server.trim_end_matches('/').to_string();
    let client = Client::try_from(config).map_err(CheckError::Client)?;
    Ok((client, server))
}

/// Runs the checks `args` select, handing each line to `emit` as it is
/// known; true when every check passed. An error means none could run.
pub async fn run(args: &Args, emit: &mut dyn FnMut(&Line)) -> Result<bool, CheckError> {
    let (client, server) = client(args).await?;
    let mut ok = true;
    let mut out = |line: Line| {
        ok &= line.passed();
        emit(&line);
    };
    let (line, version) = pre::reachable(&client, &server).await;
    out(line);
    let Some(version) = version else {
        // Nothing else can be asked.
        return Ok(false);
    };
    let ns = args.namespace.as_str();
    if args.pre {
        out(pre::sidecars(&version));
        for line in pre::permissions(&client, ns).await {
            out(line);
        }
        return Ok(ok);
    }
    for crd in layout::CRDS {
        out(installed::crd(&client, crd).await);
    }
    out(installed::deployment(&client, ns).await);
    let (line, replicas) = installed::service(&client, ns).await;
    let endpoints = line.passed();
    out(line);
    let (line, bundle) = installed::webhook(&client, ns).await;
    let registered = line.passed();
    out(line);
    let secret = installed::ca_secret(&client, ns).await;
    if registered {
        out(installed::ca_bundle(bundle.as_deref(), &secret, ns));
    }
    out(installed::ca_validity(
        &secret,
        ns,
        time::OffsetDateTime::now_utc(),
    ));
    out(installed::leader(&client, ns).await);
    if registered && endpoints {
        out(installed::injection(&client, ns).await);
    }
    if endpoints {
        match proxies::fetch(&client, ns, &replicas).await {
            Ok(answers) => {
                let mut merged = proxies::merge(&answers);
                let departed = proxies::drop_departed(&client, &mut merged).await;
                for line in proxies::lines(&merged, &answers, departed) {
                    out(line);
                }
            }
            Err(e) => out(Line::fail(
                "proxies",
                format!(
                    "the control plane's /status could not be read through the API server: {e}"
                ),
                format!(
                    "check that this user may get services/proxy and pods/proxy in {ns}, and \
                     that the control plane's admin port ({}) answers",
                    weft_api::defaults::CONTROL_ADMIN_PORT
                ),
            )),
        }
    } else {
        out(Line::fail(
            "proxies",
            "cannot ask the control plane: its Service has no ready endpoints",
            "make the control plane Ready first (see above)",
        ));
    }
    Ok(ok)
}

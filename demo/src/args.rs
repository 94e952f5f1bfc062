//! `weftctl demo`'s flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Steady traffic: 90% of backend requests to v1, 10% to v2.
    Basic,
    /// The route moves backend traffic from v1 to v2 in steps of 20%.
    Canary,
    /// backend-v1-1 fails 30% of its requests and backend-v1-2 dies midway;
    /// retries, timeouts and outlier detection keep the frontend healthy.
    Faults,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Basic => "basic",
            Scenario::Canary => "canary",
            Scenario::Faults => "faults",
        }
    }

    /// The share of backend requests the route sends to v1 at the start.
    pub(crate) fn initial_v1(self) -> u32 {
        match self {
            Scenario::Basic => 90,
            Scenario::Canary => 100,
            Scenario::Faults => 80,
        }
    }

    /// The share of requests `backend-v1-1` fails.
    pub(crate) fn fail_rate(self) -> f64 {
        if self == Scenario::Faults { 0.3 } else { 0.0 }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, value_enum, default_value_t = Scenario::Basic)]
    pub scenario: Scenario,
    /// How long to run (e.g. `30s`); until Ctrl-C when not given.
    #[arg(long, value_parser = weft_api::duration::parse)]
    pub duration: Option<Duration>,
    /// Print a final summary as JSON instead of the live table.
    #[arg(long)]
    pub json: bool,
    /// Export every sidecar's and the control plane's spans to this OTLP/gRPC
    /// collector on the host (e.g. Jaeger on 127.0.0.1:4317).
    #[arg(long, value_parser = parse_otlp)]
    pub otlp_endpoint: Option<SocketAddr>,
    /// Where the running mesh is described (pods, Services, control plane).
    #[arg(long, default_value = "/run/weft-demo/state.json")]
    pub state_file: PathBuf,
    /// Where manifests, the CA and logs live while the demo runs.
    #[arg(long, default_value = "/run/weft-demo/mesh")]
    pub dir: PathBuf,
    /// Requests per second the client sends to the frontend.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub rate: u32,
    /// Where weft-control, weft-proxy and weft-test-app are (default: next
    /// to weftctl).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Where to serve the dashboard (`weftctl dashboard` over this mesh);
    /// port 0 picks a free one. Its address is printed and in the state file.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9900")]
    pub dashboard: SocketAddr,
    /// Serve no dashboard.
    #[arg(long, conflicts_with = "dashboard")]
    pub no_dashboard: bool,
    /// Jaeger's UI, for the dashboard's links to traces (with
    /// `--otlp-endpoint` pointing at that Jaeger).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:16686")]
    pub jaeger_ui: String,
}

/// `127.0.0.1:4317` or `http://127.0.0.1:4317`.
fn parse_otlp(s: &str) -> Result<SocketAddr, String> {
    let bare = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
    bare.parse()
        .map_err(|_| format!("`{s}` is not an address like 127.0.0.1:4317"))
}

//! `weft-proxy`'s command line. Every flag can also be set through the
//! `WEFT_*` environment variable named in `--help`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use weft_api::defaults;

use crate::destination::PeerIdentity;
use crate::ports::PortList;
use crate::tls::MtlsMode;
use weft_api::SpiffeId;
use weft_api::log::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "weft-proxy",
    version,
    about = "The Weft sidecar: transparent interception and proxying for one pod"
)]
pub struct Cli {
    /// Log filter: a level (`info`, `debug`) or per-module directives
    /// (`weft_proxy=debug,info`).
    #[arg(long, env = "WEFT_LOG", default_value = "info", global = true)]
    pub log_level: String,

    /// Log line format.
    #[arg(
        long,
        env = "WEFT_LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install (or remove) the iptables rules that redirect the pod's traffic
    /// through the proxy. Run once per pod, as the init container.
    Init(InitArgs),
    /// Run the proxy.
    Run(Box<RunArgs>),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Ipv6Mode {
    /// Install IPv6 rules when this network namespace has IPv6.
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The proxy's inbound listener port: incoming TCP goes here.
    #[arg(long, env = "WEFT_INBOUND_PORT", default_value_t = defaults::INBOUND_PORT)]
    pub inbound_port: u16,

    /// The proxy's outbound listener port: outgoing TCP goes here.
    #[arg(long, env = "WEFT_OUTBOUND_PORT", default_value_t = defaults::OUTBOUND_PORT)]
    pub outbound_port: u16,

    /// The proxy's admin port; never redirected.
    #[arg(long, env = "WEFT_ADMIN_PORT", default_value_t = defaults::ADMIN_PORT)]
    pub admin_port: u16,

    /// The proxy's DNS port (with --dns).
    #[arg(long, env = "WEFT_DNS_PORT", default_value_t = defaults::DNS_PORT)]
    pub dns_port: u16,

    /// The UID the proxy runs as; its own traffic is never redirected.
    #[arg(long, env = "WEFT_PROXY_UID", default_value_t = defaults::PROXY_UID)]
    pub proxy_uid: u32,

    /// Incoming ports that reach the application directly, e.g. `22,8000-8010`.
    #[arg(long, env = "WEFT_SKIP_INBOUND_PORTS", default_value = "")]
    pub skip_inbound_ports: PortList,

    /// Outgoing destination ports that bypass the proxy, e.g. `5432,9000-9009`.
    #[arg(long, env = "WEFT_SKIP_OUTBOUND_PORTS", default_value = "")]
    pub skip_outbound_ports: PortList,

    /// Also redirect outgoing DNS (UDP and TCP port 53) to the proxy's DNS port.
    #[arg(long, env = "WEFT_DNS")]
    pub dns: bool,

    /// Whether to install ip6tables rules too.
    #[arg(long, env = "WEFT_IPV6", value_enum, default_value_t)]
    pub ipv6: Ipv6Mode,

    /// The iptables command (e.g. `iptables-legacy`); `-restore` is appended
    /// for the restore command.
    #[arg(long, env = "WEFT_IPTABLES", default_value = "iptables")]
    pub iptables: String,

    /// The ip6tables command (e.g. `ip6tables-legacy`).
    #[arg(long, env = "WEFT_IP6TABLES", default_value = "ip6tables")]
    pub ip6tables: String,

    /// Remove every rule and chain `init` added, instead of adding them.
    #[arg(long, conflicts_with = "dry_run")]
    pub remove: bool,

    /// Print the rules and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn default_inbound() -> Vec<SocketAddr> {
    both_families(defaults::INBOUND_PORT, false)
}

fn default_outbound() -> Vec<SocketAddr> {
    both_families(defaults::OUTBOUND_PORT, true)
}

fn default_admin() -> Vec<SocketAddr> {
    both_families(defaults::ADMIN_PORT, false)
}

fn both_families(port: u16, loopback: bool) -> Vec<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    if loopback {
        vec![
            (Ipv4Addr::LOCALHOST, port).into(),
            (Ipv6Addr::LOCALHOST, port).into(),
        ]
    } else {
        vec![
            (Ipv4Addr::UNSPECIFIED, port).into(),
            (Ipv6Addr::UNSPECIFIED, port).into(),
        ]
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Addresses of the inbound listener (redirected incoming TCP). IPv6
    /// addresses are skipped where the pod has no IPv6.
    #[arg(long, env = "WEFT_INBOUND_LISTEN", value_delimiter = ',', default_values_t = default_inbound())]
    pub inbound_listen: Vec<SocketAddr>,

    /// Addresses of the outbound listener (redirected outgoing TCP). iptables
    /// REDIRECT sends locally made connections to loopback.
    #[arg(long, env = "WEFT_OUTBOUND_LISTEN", value_delimiter = ',', default_values_t = default_outbound())]
    pub outbound_listen: Vec<SocketAddr>,

    /// Addresses of the admin server.
    #[arg(long, env = "WEFT_ADMIN_LISTEN", value_delimiter = ',', default_values_t = default_admin())]
    pub admin_listen: Vec<SocketAddr>,

    /// Explicit mode: send every inbound connection here instead of to its
    /// original destination (for hosts without iptables).
    #[arg(long, env = "WEFT_INBOUND_TARGET")]
    pub inbound_target: Option<SocketAddr>,

    /// Explicit mode: send every outbound connection here instead of to its
    /// original destination.
    #[arg(long, env = "WEFT_OUTBOUND_TARGET")]
    pub outbound_target: Option<SocketAddr>,

    /// Do not run the inbound listener (e.g. a client-side proxy in explicit mode).
    #[arg(long, env = "WEFT_NO_INBOUND")]
    pub no_inbound: bool,

    /// Do not run the outbound listener.
    #[arg(long, env = "WEFT_NO_OUTBOUND")]
    pub no_outbound: bool,

    /// How long to wait for a connection to the destination.
    #[arg(long, env = "WEFT_CONNECT_TIMEOUT", default_value = "3s", value_parser = weft_api::duration::parse)]
    pub connect_timeout: Duration,

    /// How long a pooled connection (to a peer sidecar, or to the app) may sit
    /// unused before it is closed; below typical server keep-alives so a
    /// request is rarely sent on a connection the server is closing.
    #[arg(long, env = "WEFT_IDLE_TIMEOUT", default_value = "30s", value_parser = weft_api::duration::parse)]
    pub idle_timeout: Duration,

    /// On SIGTERM or POST /shutdown: how long open connections may go on
    /// before the proxy exits anyway.
    #[arg(long, env = "WEFT_DRAIN_TIMEOUT", default_value = "30s", value_parser = weft_api::duration::parse)]
    pub drain_timeout: Duration,

    /// Worker threads. A sidecar shares its pod's CPU, so one by default.
    #[arg(long, env = "WEFT_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,

    #[command(flatten)]
    pub identity: IdentityArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    /// This pod's name, for discovery (Kubernetes: from the downward API).
    #[arg(long, env = "WEFT_POD_NAME")]
    pub pod_name: Option<String>,

    /// This pod's namespace; defaults to the namespace of --identity.
    #[arg(long, env = "WEFT_POD_NAMESPACE")]
    pub pod_namespace: Option<String>,

    /// What this proxy receives: `on-demand`, the Services its app uses
    /// (subscribed on first use; plus the pod's `weft.dev/dependencies`), or
    /// `all`, the whole mesh as it changes.
    #[arg(long, env = "WEFT_DISCOVERY", default_value = "on-demand", value_parser = ["on-demand", "all"])]
    pub discovery: String,

    /// How long a connection to a Service (or meshed pod) this proxy does not
    /// hold yet waits for it to arrive before it is refused.
    #[arg(long, env = "WEFT_DISCOVERY_WAIT", default_value = "3s", value_parser = weft_api::duration::parse)]
    pub discovery_wait: Duration,

    /// A Service (or pod address) unused for this long, with no connection
    /// open to it, is dropped from this proxy's view.
    #[arg(long, env = "WEFT_DISCOVERY_IDLE", default_value = "5m", value_parser = weft_api::duration::parse)]
    pub discovery_idle: Duration,

    /// Export trace spans over OTLP/gRPC to this collector (e.g. Jaeger's
    /// `http://jaeger:4317`). Off by default.
    #[arg(long, env = "WEFT_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Share of new traces (no sampled parent) to record; a parent's sampled
    /// flag is always followed.
    #[arg(long, env = "WEFT_TRACE_SAMPLE_RATIO", default_value_t = 1.0)]
    pub trace_sample_ratio: f64,

    /// The app's HTTP probes the admin port forwards (JSON, written by the
    /// injector: admin path -> port, path, headers on the pod's loopback).
    #[arg(long, env = "WEFT_APP_PROBES", hide_env_values = true)]
    pub app_probes: Option<String>,

    /// Write an access log, one JSON line per HTTP request, to this file
    /// (`-`: stdout). Off by default.
    #[arg(long, env = "WEFT_ACCESS_LOG")]
    pub access_log: Option<std::path::PathBuf>,

    /// Run the DNS server that answers mesh Service names (pair it with
    /// `weft-proxy init --dns`, which redirects the pod's port 53 to it).
    #[arg(long, env = "WEFT_DNS")]
    pub dns: bool,

    /// Addresses of the DNS server (UDP and TCP).
    #[arg(long, env = "WEFT_DNS_LISTEN", value_delimiter = ',', default_values_t = default_dns())]
    pub dns_listen: Vec<SocketAddr>,

    /// Where to forward DNS queries for other names; default: the first
    /// nameserver in /etc/resolv.conf.
    #[arg(long, env = "WEFT_DNS_UPSTREAM")]
    pub dns_upstream: Option<SocketAddr>,
}

/// Limits and deadlines on the connections the proxy serves (README:
/// "Limits and defences").
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// An HTTP/1 request head must be complete within this long.
    #[arg(long, env = "WEFT_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = weft_api::duration::parse)]
    pub header_read_timeout: Duration,

    /// A client connection with no request in flight is closed after this
    /// long (HTTP/2: GOAWAY).
    #[arg(long, env = "WEFT_CLIENT_IDLE_TIMEOUT", default_value = "60s", value_parser = weft_api::duration::parse)]
    pub client_idle_timeout: Duration,

    /// A request body whose client sends nothing for this long is cut off
    /// (408).
    #[arg(long, env = "WEFT_BODY_IDLE_TIMEOUT", default_value = "30s", value_parser = weft_api::duration::parse)]
    pub body_idle_timeout: Duration,

    /// The largest request header list, in bytes as HTTP/2 counts them
    /// (431 above it).
    #[arg(long, env = "WEFT_MAX_REQUEST_HEADER_BYTES", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(8192..))]
    pub max_request_header_bytes: u32,

    /// The longest request target, path and query (414 above it).
    #[arg(long, env = "WEFT_MAX_REQUEST_URI_BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_request_uri_bytes: u32,

    /// An opaque TCP connection with no byte either way for this long is
    /// closed (as Envoy's TCP proxy does).
    #[arg(long, env = "WEFT_TCP_IDLE_TIMEOUT", default_value = "1h", value_parser = weft_api::duration::parse)]
    pub tcp_idle_timeout: Duration,

    /// HTTP/2 keep-alive PING interval on served connections.
    #[arg(long, env = "WEFT_H2_KEEPALIVE_INTERVAL", default_value = "20s", value_parser = weft_api::duration::parse)]
    pub h2_keepalive_interval: Duration,

    /// How long a keep-alive PING may go unanswered before the connection
    /// is closed.
    #[arg(long, env = "WEFT_H2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = weft_api::duration::parse)]
    pub h2_keepalive_timeout: Duration,

    /// Connections one source address outside the mesh may hold open on the
    /// inbound listener (0: no cap).
    #[arg(long, env = "WEFT_MAX_CONNECTIONS_PER_SOURCE", default_value_t = 1024)]
    pub max_connections_per_source: u32,

    /// HTTP/2 PING and SETTINGS frames a client may send per second.
    #[arg(
        long,
        env = "WEFT_H2_MAX_CONTROL_FRAMES_PER_SECOND",
        default_value_t = 1000
    )]
    pub h2_max_control_frames_per_second: u32,

    /// HTTP/2 stream resets an app or non-meshed client may send per second,
    /// averaged over 10 s (peer sidecars relay cancellations: no cap).
    #[arg(long, env = "WEFT_H2_MAX_RESETS_PER_SECOND", default_value_t = 100)]
    pub h2_max_resets_per_second: u32,
}

impl LimitArgs {
    pub fn server_limits(&self) -> crate::http::server::ServerLimits {
        crate::http::server::ServerLimits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.client_idle_timeout,
            body_idle_timeout: self.body_idle_timeout,
            max_header_bytes: self.max_request_header_bytes as usize,
            max_uri_bytes: self.max_request_uri_bytes as usize,
            keepalive_interval: self.h2_keepalive_interval,
            keepalive_timeout: self.h2_keepalive_timeout,
            frames: crate::http::frames::FrameBudget {
                control_per_sec: self.h2_max_control_frames_per_second,
                resets_per_sec: Some(self.h2_max_resets_per_second),
            },
            ..crate::http::server::ServerLimits::default()
        }
    }
}

fn default_dns() -> Vec<SocketAddr> {
    both_families(defaults::DNS_PORT, true)
}

/// Who this proxy is, and whom it expects to talk to. Without any of these the
/// proxy carries plain TCP, as before a mesh identity exists.
#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// This workload's SPIFFE ID, e.g. spiffe://cluster.local/ns/default/sa/web.
    /// With identity files it defaults to the one in the certificate.
    #[arg(long = "identity", env = "WEFT_IDENTITY")]
    pub id: Option<SpiffeId>,

    /// The control plane's gRPC address (host:port), for certificates.
    #[arg(long, env = "WEFT_CONTROL_PLANE", conflicts_with_all = ["identity_cert", "identity_key"])]
    pub control_plane: Option<String>,

    /// The identity the control plane must present.
    #[arg(
        long,
        env = "WEFT_CONTROL_PLANE_IDENTITY",
        default_value = "spiffe://cluster.local/ns/weft-system/sa/weft-control"
    )]
    pub control_plane_identity: SpiffeId,

    /// Proof of identity for Certify: a file reread at each renewal (a
    /// Kubernetes projected ServiceAccount token)...
    #[arg(
        long,
        env = "WEFT_IDENTITY_TOKEN_FILE",
        conflicts_with = "identity_token"
    )]
    pub identity_token_file: Option<std::path::PathBuf>,

    /// ...or the token itself (a local-mode bootstrap token).
    #[arg(long, env = "WEFT_IDENTITY_TOKEN", hide_env_values = true)]
    pub identity_token: Option<String>,

    /// Trust anchors (PEM): the roots to verify the control plane and peers
    /// with until the control plane sends its bundle.
    #[arg(long, env = "WEFT_TRUST_ANCHORS")]
    pub trust_anchors: Option<std::path::PathBuf>,

    /// Identity from files instead of the control plane: the certificate chain (PEM).
    #[arg(long, env = "WEFT_IDENTITY_CERT", requires = "identity_key")]
    pub identity_cert: Option<std::path::PathBuf>,

    /// The private key for --identity-cert (PEM).
    #[arg(long, env = "WEFT_IDENTITY_KEY", requires = "identity_cert")]
    pub identity_key: Option<std::path::PathBuf>,

    /// Meshed destinations and the identity each must present, as
    /// `IP=SPIFFE_ID` or `IP:PORT=SPIFFE_ID`; connections to them use mTLS.
    #[arg(
        long = "peer-identity",
        env = "WEFT_PEER_IDENTITIES",
        value_delimiter = ','
    )]
    pub peer_identities: Vec<PeerIdentity>,

    /// Explicit mode: the identity --outbound-target must present (mTLS to it).
    #[arg(long, env = "WEFT_OUTBOUND_TARGET_IDENTITY")]
    pub outbound_target_identity: Option<SpiffeId>,

    /// Whether the inbound side also serves plaintext clients.
    #[arg(long, env = "WEFT_INBOUND_MTLS_MODE", value_enum, default_value_t)]
    pub inbound_mtls_mode: MtlsMode,

    /// How long the inbound side waits for a client's first byte to tell TLS
    /// from plaintext (permissive mode).
    #[arg(long, env = "WEFT_DETECT_TIMEOUT", default_value = "1s", value_parser = weft_api::duration::parse)]
    pub detect_timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_follow_the_design() {
        let cli = Cli::try_parse_from(["weft-proxy", "run"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.inbound_listen[0].to_string(), "0.0.0.0:4143");
        assert_eq!(run.outbound_listen[0].to_string(), "127.0.0.1:4140");
        assert_eq!(run.outbound_listen[1].to_string(), "[::1]:4140");
        assert_eq!(run.admin_listen[0].port(), 4191);
        assert_eq!(run.threads, 1);
        // The documented defaults ("Limits and defences").
        let l = run.limits.server_limits();
        let d = crate::http::server::ServerLimits::default();
        assert_eq!(
            (l.header_read_timeout, l.idle_timeout, l.body_idle_timeout),
            (d.header_read_timeout, d.idle_timeout, d.body_idle_timeout)
        );
        assert_eq!(
            (l.max_header_bytes, l.max_uri_bytes, l.frames),
            (d.max_header_bytes, d.max_uri_bytes, d.frames)
        );
        assert_eq!(run.limits.max_connections_per_source, 1024);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = Cli::try_parse_from(["weft-proxy", "init", "--skip-inbound-ports", "22,ssh"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--skip-inbound-ports") && e.contains("`ssh`"),
            "{e}"
        );
        let e = Cli::try_parse_from(["weft-proxy", "run", "--drain-timeout", "soon"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--drain-timeout"), "{e}");
    }
}

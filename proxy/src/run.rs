//! `weft-proxy run`: sets up the identity, binds the listeners, serves until
//! told to stop, drains.

use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};
use weft_api::tls::TrustAnchors;

use crate::admin::{Admin, Readiness};
use crate::cli::{IdentityArgs, RunArgs};
use crate::connect::Connector;
use crate::destination::Destinations;
use crate::discovery::{DiscoveryMetrics, Mesh, MeshConfig, MeshState, Subscriptions, Watcher};
use crate::dns;
use crate::forward::{Carrier, Forwarder, Inbound, Outbound, Side, Target};
use crate::http::access_log::AccessLog;
use crate::http::inbound::HttpInbound;
use crate::http::observe::Observer;
use crate::http::outbound::HttpOutbound;
use crate::http::pool::PeerPool;
use crate::http::server::Server;
use crate::identity::{
    Certifier, ControlPlane, FileIdentity, Identity, TokenSource, read_pem_certs,
};
use crate::shutdown::Shutdown;
use crate::telemetry::{Direction, Metrics};
use crate::tls::{InboundTls, OutboundTls};
use crate::transport::bind_all;
use weft_api::trace::Tracing;

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let identity = start_identity(&args.identity).await?;
    let discovery_metrics = DiscoveryMetrics::default();
    let metrics = Arc::new(Metrics::new(
        identity.as_ref().map(|i| &i.metrics),
        Some(&discovery_metrics),
    ));
    let mesh = start_discovery(&args, identity.as_ref(), discovery_metrics)?;
    if let Some(mesh) = mesh.clone() {
        // Rate-limit buckets that are full again are forgotten, so keys
        // do not pile up (beyond the cap, new callers share one).
        tokio::spawn(async move {
            let mut every = tokio::time::interval(crate::ratelimit::SWEEP_EVERY);
            loop {
                every.tick().await;
                mesh.load().sweep_rate_limits();
            }
        });
    }
    let tracing_export = match &args.otlp_endpoint {
        Some(endpoint) => {
            let service = identity
                .as_ref()
                .map_or_else(|| "weft-proxy".to_string(), |i| i.id.to_string());
            Some(Arc::new(Tracing::start(
                endpoint,
                args.trace_sample_ratio,
                service,
                metrics.spans.clone(),
            )?))
        }
        None => None,
    };
    let access_log = args
        .access_log
        .clone()
        .map(|p| AccessLog::start(p, metrics.access_log_dropped.clone()));
    let shutdown = Shutdown::new();
    let ready = Readiness::default();
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let probes = match &args.app_probes {
        Some(json) => crate::probes::AppProbes::parse(json)?,
        None => Default::default(),
    };
    let admin = Admin {
        metrics: metrics.clone(),
        ready: ready.clone(),
        shutdown: shutdown.clone(),
        cert: identity.as_ref().map(|i| i.cert.clone()),
        mesh: mesh.clone(),
        probes: Arc::new(probes),
    };
    for l in bind_all(&args.admin_listen, "admin")? {
        tokio::spawn(admin.clone().serve(l));
    }

    let listeners = [
        (
            Direction::Inbound,
            args.no_inbound,
            &args.inbound_listen,
            args.inbound_target,
        ),
        (
            Direction::Outbound,
            args.no_outbound,
            &args.outbound_listen,
            args.outbound_target,
        ),
    ];
    for (direction, disabled, addrs, target) in listeners {
        if disabled {
            continue;
        }
        let target = target.map_or(Target::OriginalDst, Target::Fixed);
        let side = match direction {
            Direction::Inbound => inbound_side(
                &args,
                identity.as_ref(),
                &mesh,
                &metrics,
                &access_log,
                &tracing_export,
            )?,
            Direction::Outbound => outbound_side(
                &args,
                identity.as_ref(),
                &mesh,
                &metrics,
                &access_log,
                &tracing_export,
                target,
            ),
        };
        let fwd = Arc::new(Forwarder {
            target,
            side,
            metrics: metrics.tcp.clone(),
            tls_metrics: metrics.tls.clone(),
            shutdown: shutdown.clone(),
        });
        for l in bind_all(addrs, direction.as_str())? {
            info!(
                direction = direction.as_str(),
                addr = ?l.local_addr().ok(),
                target = ?fwd.target,
                "listening"
            );
            tokio::spawn(fwd.clone().serve(l));
        }
    }
    if args.dns {
        let upstream = match args.dns_upstream {
            Some(u) => Some(u),
            None => dns::system_upstream(),
        };
        let namespace = args
            .pod_namespace
            .clone()
            .or_else(|| identity.as_ref().map(|i| i.id.namespace().to_string()))
            .unwrap_or_else(|| "default".into());
        let server = dns::DnsServer::new(mesh.clone(), upstream, namespace);
        for addr in &args.dns_listen {
            match server.clone().bind(*addr).await {
                Ok(()) => info!(%addr, ?upstream, "DNS listening"),
                Err(e) if addr.is_ipv6() => warn!(%addr, error = %e, "DNS: no IPv6 here, skipping"),
                Err(e) => return Err(e).with_context(|| format!("binding DNS to {addr}")),
            }
        }
    }
    ready.set(true);
    info!(identity = ?identity.as_ref().map(|i| i.id.to_string()), "listeners bound");

    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM: draining"),
        _ = sigint.recv() => info!("SIGINT: draining"),
        _ = shutdown.triggered() => info!("draining"),
    }
    ready.set(false);
    shutdown.trigger();
    let flush = tracing_export.clone();
    let drained = shutdown.drain(args.drain_timeout).await;
    if let Some(t) = flush {
        // The exporter blocks; keep it off the runtime thread.
        let _ = tokio::task::spawn_blocking(move || t.flush()).await;
    }
    if drained {
        info!("all connections finished; exiting");
    } else {
        warn!(
            open = shutdown.open_connections(),
            deadline = ?args.drain_timeout,
            "drain deadline passed; closing the connections still open"
        );
    }
    Ok(())
}

/// The inbound listener's side: mTLS and HTTP when the proxy has an
/// identity, bytes as they are otherwise.
fn inbound_side(
    args: &RunArgs,
    identity: Option<&Identity>,
    mesh: &Option<Mesh>,
    metrics: &Metrics,
    access_log: &Option<AccessLog>,
    tracing: &Option<Arc<Tracing>>,
) -> anyhow::Result<Side> {
    let tls = match identity {
        Some(id) => Some((
            Arc::new(InboundTls::new(id, args.identity.detect_timeout)?),
            Arc::new(HttpInbound::new(
                args.idle_timeout,
                metrics.requests.clone(),
                access_log.clone(),
                tracing.clone(),
                Arc::new(Server::new(
                    args.limits.server_limits(),
                    metrics.defences.clone(),
                    Direction::Inbound,
                )),
                crate::authz::Enforcer {
                    mesh: mesh.clone(),
                    metrics: metrics.authz.clone(),
                },
                crate::ratelimit::Limiter {
                    mesh: mesh.clone(),
                    metrics: metrics.rate_limits.clone(),
                },
            )),
        )),
        None => None,
    };
    Ok(Side::Inbound(Inbound::new(
        tls,
        mesh.clone(),
        args.identity.inbound_mtls_mode,
        Connector::new(args.connect_timeout, None, metrics.tls.clone()),
        (
            args.limits.max_connections_per_source,
            args.identity.detect_timeout,
        ),
        Carrier {
            idle: args.limits.tcp_idle_timeout,
            defences: metrics.defences.clone(),
            direction: Direction::Inbound,
        },
        metrics.authz.clone(),
    )))
}

/// The outbound listener's side: where connections go, and HTTP proxying
/// over a shared peer pool when the proxy has an identity.
fn outbound_side(
    args: &RunArgs,
    identity: Option<&Identity>,
    mesh: &Option<Mesh>,
    metrics: &Metrics,
    access_log: &Option<AccessLog>,
    tracing: &Option<Arc<Tracing>>,
    target: Target,
) -> Side {
    let tls = identity.map(|id| Arc::new(OutboundTls::new(id.clone())));
    let connector = Connector::new(args.connect_timeout, tls, metrics.tls.clone());
    let fixed = match target {
        Target::Fixed(addr) => Some((addr, args.identity.outbound_target_identity.clone())),
        Target::OriginalDst => None,
    };
    let destinations =
        Destinations::new(mesh.clone(), args.identity.peer_identities.clone(), fixed);
    let http = identity.map(|_| {
        let pool = Arc::new(PeerPool::new(connector.clone(), args.idle_timeout));
        tokio::spawn(pool.clone().reap_idle());
        Arc::new(HttpOutbound::new(
            mesh.clone(),
            pool,
            args.idle_timeout,
            metrics.http.clone(),
            Observer {
                metrics: metrics.requests.clone(),
                access_log: access_log.clone(),
                tracing: tracing.clone(),
            },
            Arc::new(Server::new(
                args.limits.server_limits(),
                metrics.defences.clone(),
                Direction::Outbound,
            )),
        ))
    });
    Side::Outbound(Outbound::new(
        destinations,
        connector,
        http,
        args.identity.detect_timeout,
        Carrier {
            idle: args.limits.tcp_idle_timeout,
            defences: metrics.defences.clone(),
            direction: Direction::Outbound,
        },
    ))
}

/// Starts watching the control plane for this pod's snapshot, when the proxy
/// has a control plane and knows its pod.
fn start_discovery(
    args: &RunArgs,
    identity: Option<&Identity>,
    metrics: DiscoveryMetrics,
) -> anyhow::Result<Option<Mesh>> {
    let (Some(identity), Some(addr)) = (identity, &args.identity.control_plane) else {
        return Ok(None);
    };
    let Some(pod) = args.pod_name.clone() else {
        warn!("no --pod-name: discovery is off, only --peer-identity destinations are meshed");
        return Ok(None);
    };
    let subscriptions = Subscriptions::new(
        args.discovery == "on-demand",
        args.discovery_wait,
        args.discovery_idle,
        metrics.subscriptions.clone(),
    );
    let mesh: Mesh = MeshState::new(MeshConfig::default(), Arc::new(subscriptions));
    let watcher = Watcher {
        identity: identity.clone(),
        control_plane: ControlPlane {
            addr: addr.clone(),
            identity: args.identity.control_plane_identity.clone(),
        },
        namespace: args
            .pod_namespace
            .clone()
            .unwrap_or_else(|| identity.id.namespace().to_string()),
        pod,
        mesh: mesh.clone(),
        metrics,
        endpoints: Default::default(),
    };
    tokio::spawn(watcher.run());
    Ok(Some(mesh))
}

/// Builds the identity from the flags and starts keeping it fresh: the
/// control plane's Certify (renewals in the background; `/ready` waits for
/// the first certificate), or files (loaded now, watched after).
async fn start_identity(args: &IdentityArgs) -> anyhow::Result<Option<Identity>> {
    let wants_identity = args.control_plane.is_some() || args.identity_cert.is_some();
    if !wants_identity {
        anyhow::ensure!(
            args.peer_identities.is_empty() && args.outbound_target_identity.is_none(),
            "--peer-identity and --outbound-target-identity need an identity of our own: \
             give --control-plane or --identity-cert"
        );
        return Ok(None);
    }
    let anchors_path = args
        .trust_anchors
        .as_ref()
        .context("--trust-anchors is required with --control-plane or --identity-cert")?;
    let anchors = TrustAnchors::new(read_pem_certs(anchors_path)?)
        .with_context(|| format!("trust anchors in {}", anchors_path.display()))?;

    if let (Some(cert), Some(key)) = (&args.identity_cert, &args.identity_key) {
        let files = FileIdentity {
            cert: cert.clone(),
            key: key.clone(),
            anchors: anchors_path.clone(),
        };
        let id = match &args.id {
            Some(id) => id.clone(),
            None => weft_api::SpiffeId::from_certificate(
                read_pem_certs(cert)?
                    .first()
                    .context("empty certificate file")?,
            )
            .into_iter()
            .next()
            .with_context(|| format!("{} names no SPIFFE ID; pass --identity", cert.display()))?,
        };
        let identity = Identity::new(id, anchors);
        files.load(&identity)?;
        tokio::spawn(files.watch(identity.clone()));
        return Ok(Some(identity));
    }

    let addr = args
        .control_plane
        .clone()
        .context("--control-plane is required")?;
    let id = args
        .id
        .clone()
        .context("--identity (this workload's SPIFFE ID) is required with --control-plane")?;
    let token = match (&args.identity_token_file, &args.identity_token) {
        (Some(f), _) => TokenSource::File(f.clone()),
        (None, Some(t)) => TokenSource::Value(t.clone()),
        (None, None) => anyhow::bail!(
            "--identity-token-file or --identity-token is required with --control-plane"
        ),
    };
    let identity = Identity::new(id, anchors);
    let cp = ControlPlane {
        addr,
        identity: args.control_plane_identity.clone(),
    };
    let certifier = Certifier::new(identity.clone(), cp, token)?;
    tokio::spawn(certifier.run());
    Ok(Some(identity))
}

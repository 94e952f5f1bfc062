//! Default ports, user and names, as listed in the design's "Ports and names".
//! Every one of them can be overridden where it is used.

/// The proxy's outbound listener: the app's outgoing TCP is redirected here.
pub const OUTBOUND_PORT: u16 = 4140;
/// The proxy's inbound listener: TCP arriving at any pod port is redirected here.
pub const INBOUND_PORT: u16 = 4143;
/// The proxy's admin server (`/live`, `/ready`, `/metrics`, `/shutdown`).
/// Never redirected, so probes and scrapes reach it directly.
pub const ADMIN_PORT: u16 = 4191;
/// The proxy's DNS listener (UDP and TCP); outgoing port 53 is redirected here.
pub const DNS_PORT: u16 = 4153;
/// The UID the proxy runs as; its own traffic is never redirected.
pub const PROXY_UID: u32 = 2420;

/// The control plane's gRPC port (Certify, Watch), served over TLS.
pub const CONTROL_GRPC_PORT: u16 = 8090;
/// The control plane's injector webhook (HTTPS).
pub const CONTROL_WEBHOOK_PORT: u16 = 9443;
/// The control plane's admin server.
pub const CONTROL_ADMIN_PORT: u16 = 9990;

/// The trust domain of workload identities.
pub const TRUST_DOMAIN: &str = "cluster.local";

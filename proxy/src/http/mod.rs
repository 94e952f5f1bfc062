//! The L7 data path: HTTP/1.1 and HTTP/2 (gRPC too) proxied request by
//! request, routed by HTTPRoute rules, balanced by latency, and carried
//! between sidecars over one multiplexed mTLS HTTP/2 connection per peer.

pub mod routes;

//! Names resolved once and then kept for a while, as a real service's
//! runtime does (the JVM keeps answers for 30 s, Go and glibc setups put a
//! cache in front of DNS): without it each new connection would ask DNS
//! again, and the demo would show the app's lookups as the mesh's latency.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::connect::dns::Name;

/// How long an answer is used before the name is looked up again.
const TTL: Duration = Duration::from_secs(30);

/// Per name: its addresses, and when they were looked up.
type Answers = HashMap<String, (Vec<IpAddr>, Instant)>;

#[derive(Clone, Debug, Default)]
pub struct CachingResolver {
    answers: Arc<Mutex<Answers>>,
}

impl CachingResolver {
    /// The addresses of `host`, from the cache while the answer is fresh.
    pub async fn lookup(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        if let Ok(answers) = self.answers.lock()
            && let Some((ips, at)) = answers.get(host)
            && at.elapsed() < TTL
        {
            return Ok(ips.clone());
        }
        let ips: Vec<IpAddr> = tokio::net::lookup_host((host, 0))
            .await?
            .map(|a| a.ip())
            .collect();
        if let Ok(mut answers) = self.answers.lock() {
            answers.insert(host.to_string(), (ips.clone(), Instant::now()));
        }
        Ok(ips)
    }
}

/// What hyper's connector asks for: the addresses of a name (the connector
/// sets the port).
impl tower::Service<Name> for CachingResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let ips = this.lookup(name.as_str()).await?;
            let addrs: Vec<SocketAddr> = ips.into_iter().map(|ip| (ip, 0).into()).collect();
            Ok(addrs.into_iter())
        })
    }
}

//! Graceful shutdown: stop accepting, let open connections finish until a
//! deadline, then go.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared by the listeners (which stop when triggered) and the connections
/// (which are tracked so the drain can wait for them).
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
    connections: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Begins the shutdown; listeners stop accepting.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    #[cfg(test)]
    pub(crate) fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once the shutdown has begun.
    pub async fn triggered(&self) {
        self.token.cancelled().await
    }

    /// Runs a connection's task; the drain waits for it.
    pub fn spawn_connection<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.connections.spawn(fut);
    }

    /// Connections still open.
    pub fn open_connections(&self) -> usize {
        self.connections.len()
    }

    /// Waits for open connections to finish, at most `deadline`. True when all
    /// finished in time.
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.connections.close();
        tokio::time::timeout(deadline, self.connections.wait())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_connections_up_to_the_deadline() {
        let s = Shutdown::new();
        s.spawn_connection(tokio::time::sleep(Duration::from_secs(2)));
        s.trigger();
        assert!(s.is_triggered());
        assert!(s.drain(Duration::from_secs(5)).await);

        let s = Shutdown::new();
        s.spawn_connection(tokio::time::sleep(Duration::from_secs(60)));
        assert!(!s.drain(Duration::from_secs(5)).await);
        assert_eq!(s.open_connections(), 1);
    }
}

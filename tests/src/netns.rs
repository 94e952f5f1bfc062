//! The harness's namespaces: [`weft_netns::Netns`] (shared with the demo)
//! with failures as panics, since a test stops at its first broken step, and
//! a time limit on [`Netns::block_on`].

use std::future::Future;
use std::process::Output;

/// Names of the namespaces this harness makes: `wft<pid>n<seq>-<role>`, so a
/// later run can tell which ones a dead process left behind.
pub const PREFIX: &str = "wft";

/// How long one [`Netns::block_on`] may run.
pub const BLOCK_ON_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A namespace, removed on drop (panics included).
#[derive(Debug)]
pub struct Netns(weft_netns::Netns);

impl std::ops::Deref for Netns {
    type Target = weft_netns::Netns;

    fn deref(&self) -> &weft_netns::Netns {
        &self.0
    }
}

/// Fails the test with what the system said.
fn ok<T>(r: Result<T, weft_netns::Error>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

impl Netns {
    pub fn create(name: &str) -> Netns {
        Netns(ok(weft_netns::Netns::create(name)))
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> Output {
        ok(self.0.ip(args))
    }

    /// Runs `f` on a thread that has entered this namespace, so every socket
    /// `f` makes belongs to it.
    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        ok(self.0.run_in(f))
    }

    /// Runs a future to completion inside this namespace. A test that hangs
    /// fails after [`BLOCK_ON_LIMIT`] instead of stalling the suite.
    pub fn block_on<F: Future + Send>(&self, fut: F) -> F::Output
    where
        F::Output: Send,
    {
        // The timer is made inside the namespace's runtime: it needs one.
        let limited = ok(self
            .0
            .block_on(async { tokio::time::timeout(BLOCK_ON_LIMIT, fut).await }));
        limited.unwrap_or_else(|_| {
            panic!(
                "still running after {BLOCK_ON_LIMIT:?} in {}",
                self.0.name()
            )
        })
    }

    /// Sets the resolv.conf that processes started with `ip netns exec` see.
    pub fn set_resolv_conf(&self, text: &str) {
        ok(self.0.set_resolv_conf(text))
    }
}

/// Deletes namespaces this harness made in processes that no longer exist,
/// and makes sure this process's go too if a signal ends it (Ctrl-C in
/// `cargo test`): what a drop would have removed.
pub fn remove_stale() {
    for name in weft_netns::remove_stale(PREFIX) {
        eprintln!("weft-e2e: removed stale namespace {name} (its test process is gone)");
    }
    static ON_SIGNAL: std::sync::Once = std::sync::Once::new();
    ON_SIGNAL.call_once(|| {
        let mine = format!("{PREFIX}{}n", std::process::id());
        if let Err(e) = weft_netns::remove_on_signal(mine) {
            eprintln!("weft-e2e: namespaces will outlive a signal: {e}");
        }
    });
}

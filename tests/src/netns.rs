//! One network namespace, named under /run/netns, removed on drop.

use std::fs::File;
use std::future::Future;
use std::process::{Command, Output};

use nix::sched::CloneFlags;

/// Names of the namespaces this harness makes: `wft<pid>n<seq>-<role>`, so a
/// later run can tell which ones a dead process left behind.
pub const PREFIX: &str = "wft";

/// How long one [`Netns::block_on`] may run.
pub const BLOCK_ON_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug)]
pub struct Netns {
    name: String,
}

/// Runs `ip` with `args`, panicking with its stderr when it fails.
pub fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running `ip` (iproute2 must be installed)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Netns {
    pub fn create(name: &str) -> Netns {
        ip(&["netns", "add", name]);
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that will run inside this namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `f` on a thread that has entered this namespace, so every socket
    /// `f` makes belongs to it.
    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
                nix::sched::setns(file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("entering {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Runs a future to completion inside this namespace. A test that hangs
    /// fails after [`BLOCK_ON_LIMIT`] instead of stalling the suite.
    pub fn block_on<F: Future + Send>(&self, fut: F) -> F::Output
    where
        F::Output: Send,
    {
        self.run_in(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime")
                .block_on(async {
                    tokio::time::timeout(BLOCK_ON_LIMIT, fut)
                        .await
                        .unwrap_or_else(|_| {
                            panic!("still running after {BLOCK_ON_LIMIT:?} in {}", self.name)
                        })
                })
        })
    }

    /// Sets the resolv.conf that processes started with `ip netns exec` see
    /// (iproute2 bind-mounts /etc/netns/NAME/* over /etc).
    pub fn set_resolv_conf(&self, text: &str) {
        let dir = format!("/etc/netns/{}", self.name);
        std::fs::create_dir_all(&dir).expect("creating /etc/netns/NAME");
        std::fs::write(format!("{dir}/resolv.conf"), text).expect("writing resolv.conf");
    }

    /// The PIDs of processes inside this namespace.
    pub fn pids(&self) -> Vec<i32> {
        weft_control::demo::netns::pids(&self.name)
    }
}

pub use weft_control::demo::netns::destroy;

impl Drop for Netns {
    fn drop(&mut self) {
        destroy(&self.name);
    }
}

/// Deletes namespaces this harness made in processes that no longer exist.
pub fn remove_stale() {
    for name in weft_control::demo::netns::existing(PREFIX) {
        let name = name.as_str();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('n').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("weft-e2e: removing stale namespace {name} (its test process {pid} is gone)");
            destroy(name);
        }
    }
}

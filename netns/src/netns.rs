//! One network namespace and the ways into it: commands (`ip netns exec`)
//! and threads (`setns`), so a caller's own sockets can live there too.

use std::ffi::OsStr;
use std::fs::File;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::thread::JoinHandle;

use nix::sched::CloneFlags;

use crate::error::{Error, stderr};

/// Runs `ip` with `args`; the error carries its standard error.
pub fn ip(args: &[&str]) -> Result<Output, Error> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(Error::NoIp)?;
    if !out.status.success() {
        return Err(Error::Ip {
            args: args.join(" "),
            stderr: stderr(&out),
        });
    }
    Ok(out)
}

/// A namespace under /run/netns. Dropping it kills what runs inside and
/// deletes it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME`, with the loopback interface up.
    pub fn create(name: &str) -> Result<Netns, Error> {
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<Output, Error> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that will run inside this namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// A command that will run inside this namespace as `uid` (and its
    /// group, with no supplementary groups), as a pod's sidecar runs.
    pub fn command_as(&self, uid: u32, program: impl AsRef<OsStr>) -> Command {
        let mut c = self.command("setpriv");
        c.args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
        ])
        .arg(program.as_ref());
        c
    }

    /// Runs `program` inside this namespace to completion; an error unless
    /// it succeeds, with its standard error.
    pub fn exec(&self, program: impl AsRef<OsStr>, args: &[&str]) -> Result<Output, Error> {
        let program = program.as_ref();
        let command = format!("{} {}", program.to_string_lossy(), args.join(" "));
        let out = self
            .command(program)
            .args(args)
            .output()
            .map_err(Error::io(format!("running {command} in {}", self.name)))?;
        if !out.status.success() {
            return Err(Error::Failed {
                command,
                netns: self.name.clone(),
                stderr: stderr(&out),
            });
        }
        Ok(out)
    }

    /// Sets the resolv.conf that processes started with `ip netns exec` see
    /// (iproute2 bind-mounts /etc/netns/NAME/* over /etc).
    pub fn set_resolv_conf(&self, text: &str) -> Result<(), Error> {
        let dir = format!("/etc/netns/{}", self.name);
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {dir}")))?;
        std::fs::write(format!("{dir}/resolv.conf"), text)
            .map_err(Error::io(format!("writing {dir}/resolv.conf")))
    }

    /// Runs `f` on a thread that has entered this namespace, so every socket
    /// `f` makes belongs to it. A panic in `f` goes on in the caller.
    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, Error> {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&path)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Like [`Netns::run_in`], for work that outlives the caller's borrow
    /// (a load generator, a scraper): the thread is named `name` and the
    /// caller joins it when it likes.
    pub fn thread<R: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<JoinHandle<Result<R, Error>>, Error> {
        let path = self.path();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                enter(&path)?;
                Ok(f())
            })
            .map_err(Error::io("starting a thread"))
    }

    /// Runs a future to completion inside this namespace, on a runtime of
    /// its own.
    pub fn block_on<F: Future + Send>(&self, fut: F) -> Result<F::Output, Error>
    where
        F::Output: Send,
    {
        self.run_in(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(fut))
                .map_err(Error::io("starting a runtime"))
        })?
    }

    /// The PIDs of the processes inside this namespace.
    pub fn pids(&self) -> Vec<i32> {
        crate::pids(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        crate::destroy(&self.name);
    }
}

/// Moves the calling thread into the namespace at `path`.
fn enter(path: &std::path::Path) -> Result<(), Error> {
    let file = File::open(path).map_err(Error::io(format!("opening {}", path.display())))?;
    nix::sched::setns(file, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Enter {
        path: path.display().to_string(),
        source,
    })
}

//! Network namespaces and the processes in them. Every name the demo makes
//! starts with [`PREFIX`], so a later run can find and remove what a killed
//! one left. (The e2e harness shares the clean-up half.)

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use nix::sched::CloneFlags;

pub const PREFIX: &str = "wdemo-";

/// Runs `ip` with `args`; the error carries its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(role: &str) -> anyhow::Result<Netns> {
        let name = format!("{PREFIX}{role}");
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Sets the resolv.conf that processes started in this namespace see
    /// (iproute2 bind-mounts /etc/netns/NAME/* over /etc).
    pub fn set_resolv_conf(&self, text: &str) -> anyhow::Result<()> {
        let dir = format!("/etc/netns/{}", self.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir}"))?;
        std::fs::write(format!("{dir}/resolv.conf"), text)
            .with_context(|| format!("writing {dir}/resolv.conf"))
    }

    /// Starts `program` in this namespace, as `uid` when given, with its
    /// output in `log`.
    pub fn spawn(
        &self,
        uid: Option<u32>,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<Child> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]);
        if let Some(uid) = uid {
            cmd.arg("setpriv").args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
            ]);
        }
        cmd.arg(program).args(args);
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} in {}", program.display(), self.name))
    }

    /// Runs a command in this namespace to completion; the error carries
    /// its output.
    pub fn exec(&self, program: &Path, args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(program)
            .args(args)
            .output()
            .with_context(|| format!("running {} in {}", program.display(), self.name))?;
        if !out.status.success() {
            bail!(
                "{} {} in {}: {}",
                program.display(),
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Runs `f` on a thread inside this namespace, so every socket it makes
    /// belongs here. The thread lives as long as `f` does.
    pub fn thread<R: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<R>>> {
        let path = PathBuf::from(format!("/run/netns/{}", self.name));
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let file =
                    File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                nix::sched::setns(file, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering {}", path.display()))?;
                Ok(f())
            })
            .context("starting a thread")
    }

    /// Runs a future to completion inside this namespace.
    pub fn block_on<F>(&self, fut: F) -> anyhow::Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = self.thread("weftctl-ns", move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(fut))
        })?;
        match handle.join() {
            Ok(r) => Ok(r??),
            Err(_) => bail!("a thread in {} panicked", self.name),
        }
    }
}

/// The PIDs of processes inside the namespace `name`.
pub fn pids(name: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills what runs in the namespace and deletes it; best effort.
pub fn destroy(name: &str) {
    for pid in pids(name) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = Command::new("ip").args(["netns", "del", name]).output();
    let _ = std::fs::remove_dir_all(format!("/etc/netns/{name}"));
}

/// Every namespace whose name starts with `prefix`.
pub fn existing(prefix: &str) -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

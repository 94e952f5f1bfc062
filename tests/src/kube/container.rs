//! Starting one container's process, as a container runtime would, with
//! what this machine has: in the pod's network namespace, in a mount
//! namespace of its own whose root is a private view of the host's `/`
//! (a recursive bind mount under the container's folder), with the pod's
//! volumes, `/etc/hosts` and `/etc/resolv.conf` bind-mounted at their
//! paths, as the container's user and groups (`chroot --userspec`).
//!
//! A mount path whose folder does not exist on the host is made without
//! touching the host: the deepest folder that exists is covered, in the
//! container's view only, by a tmpfs holding bind mounts of everything it
//! held, and the missing folders are made in that tmpfs.
//!
//! What a container runtime also does and this does not: no image
//! filesystem (the host's files are the container's), no cgroups or
//! resource limits, no PID or user namespace, no capability bounding set,
//! seccomp profile or read-only root (`readOnlyRootFilesystem` is not
//! enforced; `readOnly` volume mounts are).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use nix::sched::CloneFlags;

use crate::node::Pod;
use crate::process::Process;

/// One bind mount into the container.
#[derive(Clone, Debug)]
pub struct Mount {
    /// A file or folder on the host.
    pub source: PathBuf,
    /// Where the container sees it.
    pub target: String,
    pub read_only: bool,
}

/// Everything needed to start one container's process.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The name its log and process go by (`app`, `app.1` after a restart).
    pub name: String,
    /// The container's own folder (its root's mount point lives there).
    pub dir: PathBuf,
    pub mounts: Vec<Mount>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
}

/// Starts the container's process in `pod` (tracked and logged by it).
/// Blocks for as long as the mounts take; call it off the async runtime.
pub fn start(pod: &Arc<Pod>, spec: Spec) -> Result<Arc<Process>, String> {
    let netns = format!("/run/netns/{}", pod.ns.name());
    let pod = pod.clone();
    let thread_name = spec.name.clone();
    // A thread of its own: its mount namespace, network namespace and
    // filesystem context change, and die with it.
    std::thread::Builder::new()
        .name(format!("container-{thread_name}"))
        .spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNS)
                .map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
            let own = std::fs::read_link("/proc/thread-self/ns/mnt").map_err(|e| e.to_string())?;
            let main = std::fs::read_link("/proc/self/ns/mnt").map_err(|e| e.to_string())?;
            if own == main {
                return Err(
                    "the container thread is still in the harness's mount namespace; \
                            refusing to mount anything"
                        .to_string(),
                );
            }
            run(&["--make-rprivate", "/"])?;
            let file = File::open(&netns).map_err(|e| format!("opening {netns}: {e}"))?;
            nix::sched::setns(file, CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("entering {netns}: {e}"))?;
            let root = prepare_root(&spec)?;
            let mut cmd = Command::new("/usr/sbin/chroot");
            let mut groups = vec![spec.gid];
            groups.extend(spec.groups.iter().copied().filter(|g| *g != spec.gid));
            let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
            cmd.arg(format!("--userspec={}:{}", spec.uid, spec.gid))
                .arg(format!("--groups={}", groups.join(",")))
                .arg(&root);
            if let Some(dir) = &spec.working_dir {
                cmd.args(["/usr/bin/env", "-C", dir]);
            }
            cmd.arg(&spec.program)
                .args(&spec.args)
                .env_clear()
                .envs(&spec.env);
            let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pod.spawn_command(&spec.name, cmd)
            }));
            started.map_err(|_| format!("starting {} failed (the panic is above)", spec.name))
        })
        .map_err(|e| format!("a thread for container {thread_name}: {e}"))?
        .join()
        .map_err(|_| "the container thread panicked (the message is above)".to_string())?
}

/// Makes the container's root under `spec.dir/rootfs` and mounts
/// everything in it; returns the root's path.
fn prepare_root(spec: &Spec) -> Result<PathBuf, String> {
    let root = spec.dir.join("rootfs");
    std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    run(&["--rbind", "/", path(&root)?])?;
    let mut ours: HashSet<PathBuf> = HashSet::new();
    let mut stages = 0;
    let mut mounts = spec.mounts.clone();
    // Outer paths first, so that nested mounts land inside them.
    mounts.sort_by_key(|m| Path::new(&m.target).components().count());
    for m in &mounts {
        let source_is_dir = m.source.is_dir();
        let (mut at, missing) = resolve(&root, &m.target)?;
        if !missing.is_empty() {
            if !ours.contains(&at) {
                shadow(&at, &spec.dir.join(format!("stage-{stages}")))?;
                stages += 1;
                ours.insert(at.clone());
            }
            for (i, name) in missing.iter().enumerate() {
                at.push(name);
                if i + 1 == missing.len() && !source_is_dir {
                    File::create(&at).map_err(|e| format!("creating {}: {e}", at.display()))?;
                } else {
                    std::fs::create_dir(&at)
                        .map_err(|e| format!("creating {}: {e}", at.display()))?;
                    ours.insert(at.clone());
                }
            }
        }
        run(&["--rbind", path(&m.source)?, path(&at)?])?;
        if m.read_only {
            run(&["-o", "remount,bind,ro", path(&at)?])?;
        }
        if source_is_dir {
            ours.insert(at);
        }
    }
    Ok(root)
}

/// Covers the host folder `dir` (in this mount namespace only) with a
/// tmpfs that holds bind mounts of everything `dir` held, so that new
/// entries can be made in it; `stage` is a scratch mount point.
fn shadow(dir: &Path, stage: &Path) -> Result<(), String> {
    std::fs::create_dir_all(stage).map_err(|e| format!("creating {}: {e}", stage.display()))?;
    run(&["--rbind", path(dir)?, path(stage)?])?;
    let mode = std::os::unix::fs::MetadataExt::mode(
        &std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?,
    ) & 0o7777;
    run(&[
        "-t",
        "tmpfs",
        "-o",
        &format!("mode={mode:o}"),
        "tmpfs",
        path(dir)?,
    ])?;
    let entries =
        std::fs::read_dir(stage).map_err(|e| format!("reading {}: {e}", stage.display()))?;
    for e in entries {
        let e = e.map_err(|e| e.to_string())?;
        let from = e.path();
        let to = dir.join(e.file_name());
        let meta = std::fs::symlink_metadata(&from).map_err(|e| e.to_string())?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&from).map_err(|e| e.to_string())?;
            std::os::unix::fs::symlink(target, &to).map_err(|e| e.to_string())?;
        } else if meta.is_dir() {
            std::fs::create_dir(&to).map_err(|e| format!("creating {}: {e}", to.display()))?;
            run(&["--rbind", path(&from)?, path(&to)?])?;
        } else {
            File::create(&to).map_err(|e| format!("creating {}: {e}", to.display()))?;
            run(&["--bind", path(&from)?, path(&to)?])?;
        }
    }
    let out = Command::new("umount")
        .args(["-n", "-l", path(stage)?])
        .output()
        .map_err(|e| format!("umount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "umount {}: {}",
            stage.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Follows `target` (a path in the container) inside `root` as the
/// container would see it, symlinks included (absolute ones relative to
/// `root`): the deepest existing folder or file, and the names missing
/// below it.
pub fn resolve(root: &Path, target: &str) -> Result<(PathBuf, Vec<String>), String> {
    let names = |p: &Path| -> VecDeque<String> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                Component::ParentDir => Some("..".to_string()),
                _ => None,
            })
            .collect()
    };
    let mut todo = names(Path::new(target));
    let mut at = root.to_path_buf();
    let mut hops = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            if at != root {
                at.pop();
            }
            continue;
        }
        let next = at.join(&name);
        match std::fs::symlink_metadata(&next) {
            Err(_) => {
                todo.push_front(name);
                return Ok((at, todo.into_iter().collect()));
            }
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(format!("too many symlinks under {target}"));
                }
                let link = std::fs::read_link(&next).map_err(|e| e.to_string())?;
                if link.is_absolute() {
                    at = root.to_path_buf();
                }
                for n in names(&link).into_iter().rev() {
                    todo.push_front(n);
                }
            }
            Ok(_) => at = next,
        }
    }
    Ok((at, Vec::new()))
}

/// `mount -n ARGS`, an error with its stderr unless it succeeds.
fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new("mount")
        .arg("-n")
        .args(args)
        .output()
        .map_err(|e| format!("running mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn path(p: &Path) -> Result<&str, String> {
    p.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", p.display()))
}

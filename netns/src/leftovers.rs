//! Removing namespaces by name, for the way out and for what a killed run
//! left. Best effort throughout: it runs while a process ends, when there is
//! nobody left to report to.

use std::process::Command;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The PIDs of the processes inside the namespace `name`.
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

/// Kills what runs in the namespace `name` and deletes it, with its
/// /etc/netns files.
pub fn destroy(name: &str) {
    for pid in pids(name) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    if let Err(e) = Command::new("ip").args(["netns", "del", name]).output() {
        tracing::warn!(netns = name, error = %e, "cannot delete the namespace");
    }
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

/// Removes every namespace whose name starts with `prefix`: for an owner
/// that runs once per machine (the demo), whatever is there is its own.
pub fn remove_all(prefix: &str) {
    for name in existing(prefix) {
        destroy(&name);
    }
}

/// Removes the namespaces named `<prefix><pid>…` whose process no longer
/// exists, for owners that run side by side (test processes) and put their
/// PID in every name; returns the names removed.
pub fn remove_stale(prefix: &str) -> Vec<String> {
    let mut removed = Vec::new();
    for name in existing(prefix) {
        let Some(pid) = owner(prefix, &name) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            destroy(&name);
            removed.push(name);
        }
    }
    removed
}

/// The PID in a name `<prefix><pid>…`.
fn owner(prefix: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_is_the_pid_after_the_prefix() {
        assert_eq!(owner("wft", "wft4242n0-br"), Some(4242));
        assert_eq!(owner("wft", "wft7"), Some(7));
        assert_eq!(owner("wft", "wftx-br"), None);
        assert_eq!(owner("wft", "wdemo-br"), None);
    }
}

//! What the demo needs before it touches anything: root, and the tools the
//! mesh is built with.

use crate::Error;

/// Fails first when not root, so nothing half-made needs undoing; then
/// installs missing tools with apt-get when it is there.
pub fn check() -> Result<(), Error> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot);
    }
    let missing: Vec<(&str, &str)> = [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("setpriv", "util-linux"),
    ]
    .into_iter()
    .filter(|(cmd, _)| !on_path(cmd))
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    if on_path("apt-get") && apt_install(&packages) && missing.iter().all(|(c, _)| on_path(c)) {
        return Ok(());
    }
    Err(Error::MissingTools {
        commands: missing
            .iter()
            .map(|(c, _)| *c)
            .collect::<Vec<_>>()
            .join(", "),
        packages: packages.join(" "),
    })
}

fn apt_install(packages: &[&str]) -> bool {
    eprintln!("weftctl demo: installing {}", packages.join(" "));
    std::process::Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success())
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(cmd).is_file()))
}

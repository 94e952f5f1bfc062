//! Running iptables: applying, checking and removing our rules in the current
//! network namespace.

use std::io::{self, Write};
use std::process::{Command, Output, Stdio};

use super::{Chain, Rules};

/// An address family and the iptables commands that manage it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn command(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    pub fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    /// Whether this network namespace has IPv6 at all (IPv4 always counts).
    pub fn enabled_here(self) -> bool {
        match self {
            Family::V4 => true,
            Family::V6 => std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
                .map(|s| s.trim() == "0")
                .unwrap_or(false),
        }
    }
}

/// Why `init` could not do its work; each names what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "`{command}` was not found: install iptables (Debian/Ubuntu: `apt-get install iptables`) or pass --iptables-path"
    )]
    Missing { command: String },
    #[error(
        "`{command}` was not permitted to change the nat table: `weft-proxy init` needs root or CAP_NET_ADMIN in the pod's network namespace ({detail})"
    )]
    NotPermitted { command: String, detail: String },
    #[error("`{command}` failed: {detail}")]
    Failed { command: String, detail: String },
    #[error("could not run `{command}`: {source}")]
    Io {
        command: String,
        #[source]
        source: io::Error,
    },
}

/// The iptables binaries for one family (`iptables`, `iptables-restore`).
#[derive(Clone, Debug)]
pub struct Iptables {
    family: Family,
    /// `iptables` or `ip6tables`, or a path to either (e.g. the legacy ones).
    command: String,
}

impl Iptables {
    pub fn new(family: Family, command: Option<&str>) -> Self {
        let command = command.unwrap_or(family.command()).to_string();
        Iptables { family, command }
    }

    pub fn family(&self) -> Family {
        self.family
    }

    fn restore_command(&self) -> String {
        format!("{}-restore", self.command)
    }

    /// Installs `rules`: fills our chains atomically, then adds each jump once.
    pub fn apply(&self, rules: &Rules) -> Result<(), InitError> {
        let restore = self.restore_command();
        let out = run(&restore, &["--noflush"], Some(&rules.restore_script()))?;
        check(&restore, out)?;
        for chain in Chain::ALL {
            if !self.jump_exists(chain)? {
                let out = run(
                    &self.command,
                    &["-t", "nat", "-A", chain.hook(), "-j", chain.name()],
                    None,
                )?;
                check(&self.command, out)?;
            }
        }
        Ok(())
    }

    /// Removes every jump to our chains and the chains themselves. Removing what
    /// is not there is not an error.
    pub fn remove(&self) -> Result<(), InitError> {
        for chain in Chain::ALL {
            // No chain, no jump to it: iptables cannot hold a dangling jump.
            if !self.chain_exists(chain)? {
                continue;
            }
            while self.jump_exists(chain)? {
                let out = run(
                    &self.command,
                    &["-t", "nat", "-D", chain.hook(), "-j", chain.name()],
                    None,
                )?;
                check(&self.command, out)?;
            }
        }
        for chain in Chain::ALL {
            if self.chain_exists(chain)? {
                for op in ["-F", "-X"] {
                    let out = run(&self.command, &["-t", "nat", op, chain.name()], None)?;
                    check(&self.command, out)?;
                }
            }
        }
        Ok(())
    }

    fn jump_exists(&self, chain: Chain) -> Result<bool, InitError> {
        let out = run(
            &self.command,
            &["-t", "nat", "-C", chain.hook(), "-j", chain.name()],
            None,
        )?;
        self.exists(out)
    }

    fn chain_exists(&self, chain: Chain) -> Result<bool, InitError> {
        let out = run(&self.command, &["-t", "nat", "-S", chain.name()], None)?;
        self.exists(out)
    }

    /// `-C` and `-S` exit 1 for "no such rule/chain"; anything else is an error.
    fn exists(&self, out: Output) -> Result<bool, InitError> {
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) if !is_permission_error(&out) => Ok(false),
            _ => check(&self.command, out).map(|()| false),
        }
    }
}

fn run(command: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, InitError> {
    let io_err = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            InitError::Missing {
                command: command.to_string(),
            }
        } else {
            InitError::Io {
                command: command.to_string(),
                source,
            }
        }
    };
    let mut child = Command::new(command)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(io_err)?;
    }
    child.wait_with_output().map_err(io_err)
}

fn is_permission_error(out: &Output) -> bool {
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    err.contains("permission denied")
        || err.contains("not permitted")
        || err.contains("must be root")
}

fn check(command: &str, out: Output) -> Result<(), InitError> {
    if out.status.success() {
        return Ok(());
    }
    let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if is_permission_error(&out) {
        Err(InitError::NotPermitted {
            command: command.to_string(),
            detail,
        })
    } else {
        Err(InitError::Failed {
            command: command.to_string(),
            detail,
        })
    }
}

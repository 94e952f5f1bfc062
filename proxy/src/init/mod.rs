//! `weft-proxy init`: the pod's traffic interception, as nat-table rules.
//!
//! Everything lives in two chains of our own, `WEFT_INBOUND` (jumped to from
//! PREROUTING) and `WEFT_OUTPUT` (from OUTPUT), so that installing is "flush our
//! chains and fill them" (idempotent, whatever was there before) and removing is
//! "drop the jumps and the chains" (nothing else in the table is touched).

mod iptables;
mod rules;

pub use iptables::{Family, InitError, Iptables};
pub use rules::{Chain, Rule, Rules};

use crate::ports::PortList;

/// What to intercept. Built from `weft-proxy init`'s flags.
#[derive(Clone, Debug)]
pub struct InitConfig {
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub dns_port: u16,
    pub proxy_uid: u32,
    pub skip_inbound_ports: PortList,
    pub skip_outbound_ports: PortList,
    /// Redirect outgoing DNS (UDP and TCP port 53) to the proxy's DNS port.
    pub dns: bool,
}

impl InitConfig {
    /// The rules for one address family.
    pub fn rules(&self, family: Family) -> Rules {
        rules::build(self, family)
    }
}

/// What `init` was asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Install,
    Remove,
    /// Print the rules, change nothing.
    DryRun,
}

/// Carries out `action` for each family in `tables`, returning what a dry run
/// prints (empty otherwise).
pub fn execute(cfg: &InitConfig, tables: &[Iptables], action: Action) -> Result<String, InitError> {
    let mut printed = String::new();
    for table in tables {
        let rules = cfg.rules(table.family());
        match action {
            Action::DryRun => printed.push_str(&rules.to_string()),
            Action::Install => {
                table.apply(&rules)?;
                tracing::info!(
                    family = table.family().command(),
                    rules = rules.rules.len(),
                    "interception installed"
                );
            }
            Action::Remove => {
                table.remove()?;
                tracing::info!(family = table.family().command(), "interception removed");
            }
        }
    }
    Ok(printed)
}

//! The interception rules, computed without touching the kernel so that
//! `--dry-run` prints exactly what would be installed.

use std::fmt;

use super::{Family, InitConfig};

/// Our two chains in the nat table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chain {
    Inbound,
    Output,
}

impl Chain {
    pub const ALL: [Chain; 2] = [Chain::Inbound, Chain::Output];

    pub fn name(self) -> &'static str {
        match self {
            Chain::Inbound => "WEFT_INBOUND",
            Chain::Output => "WEFT_OUTPUT",
        }
    }

    /// The built-in chain that jumps to this one.
    pub fn hook(self) -> &'static str {
        match self {
            Chain::Inbound => "PREROUTING",
            Chain::Output => "OUTPUT",
        }
    }
}

/// One rule: the arguments after `-A CHAIN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: Chain,
    pub args: Vec<String>,
}

/// All rules for one address family, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub family: Family,
    pub rules: Vec<Rule>,
}

impl Rules {
    /// The rules as `iptables-restore --noflush` input for the nat table. The
    /// chain declarations create our chains when missing and flush them when
    /// present, so applying this twice leaves one copy of every rule.
    pub fn restore_script(&self) -> String {
        let mut s = String::from("*nat\n");
        for chain in Chain::ALL {
            s.push_str(&format!(":{} - [0:0]\n", chain.name()));
        }
        for rule in &self.rules {
            s.push_str(&format!(
                "-A {} {}\n",
                rule.chain.name(),
                rule.args.join(" ")
            ));
        }
        s.push_str("COMMIT\n");
        s
    }
}

impl fmt::Display for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# {} (nat table)", self.family.command())?;
        f.write_str(&self.restore_script())?;
        for chain in Chain::ALL {
            writeln!(f, "-A {} -j {}", chain.hook(), chain.name())?;
        }
        Ok(())
    }
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| p.to_string()).collect()
}

pub(super) fn build(cfg: &InitConfig, family: Family) -> Rules {
    let mut rules = Vec::new();
    let mut push = |chain: Chain, a: Vec<String>| rules.push(Rule { chain, args: a });

    // Inbound: the admin port and the skip list reach the pod directly;
    // every other TCP port goes to the inbound listener.
    let admin = cfg.admin_port.to_string();
    push(
        Chain::Inbound,
        args(&["-p", "tcp", "--dport", &admin, "-j", "RETURN"]),
    );
    for range in &cfg.skip_inbound_ports.0 {
        let r = range.to_string();
        push(
            Chain::Inbound,
            args(&["-p", "tcp", "--dport", &r, "-j", "RETURN"]),
        );
    }
    let inbound = cfg.inbound_port.to_string();
    push(
        Chain::Inbound,
        args(&["-p", "tcp", "-j", "REDIRECT", "--to-ports", &inbound]),
    );

    // Outbound: the proxy's own traffic and loopback are never redirected, which
    // is what keeps the proxy from looping into itself.
    let uid = cfg.proxy_uid.to_string();
    push(
        Chain::Output,
        args(&["-m", "owner", "--uid-owner", &uid, "-j", "RETURN"]),
    );
    push(Chain::Output, args(&["-o", "lo", "-j", "RETURN"]));
    push(
        Chain::Output,
        args(&["-d", family.loopback(), "-j", "RETURN"]),
    );
    if cfg.dns {
        let dns = cfg.dns_port.to_string();
        for proto in ["udp", "tcp"] {
            push(
                Chain::Output,
                args(&[
                    "-p",
                    proto,
                    "--dport",
                    "53",
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    &dns,
                ]),
            );
        }
    }
    for range in &cfg.skip_outbound_ports.0 {
        let r = range.to_string();
        push(
            Chain::Output,
            args(&["-p", "tcp", "--dport", &r, "-j", "RETURN"]),
        );
    }
    let outbound = cfg.outbound_port.to_string();
    push(
        Chain::Output,
        args(&["-p", "tcp", "-j", "REDIRECT", "--to-ports", &outbound]),
    );

    Rules { family, rules }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> InitConfig {
        InitConfig {
            inbound_port: 4143,
            outbound_port: 4140,
            admin_port: 4191,
            dns_port: 4153,
            proxy_uid: 2420,
            skip_inbound_ports: "22".parse().unwrap(),
            skip_outbound_ports: "5432,9000-9009".parse().unwrap(),
            dns: false,
        }
    }

    fn lines(r: &Rules) -> Vec<String> {
        r.rules
            .iter()
            .map(|r| format!("{} {}", r.chain.name(), r.args.join(" ")))
            .collect()
    }

    #[test]
    fn inbound_skips_admin_and_listed_ports_then_redirects() {
        let r = cfg().rules(Family::V4);
        let l = lines(&r);
        assert_eq!(l[0], "WEFT_INBOUND -p tcp --dport 4191 -j RETURN");
        assert_eq!(l[1], "WEFT_INBOUND -p tcp --dport 22 -j RETURN");
        assert_eq!(l[2], "WEFT_INBOUND -p tcp -j REDIRECT --to-ports 4143");
    }

    #[test]
    fn outbound_skips_proxy_uid_loopback_and_listed_ports() {
        let l = lines(&cfg().rules(Family::V4));
        let out: Vec<_> = l.iter().filter(|l| l.starts_with("WEFT_OUTPUT")).collect();
        assert_eq!(out[0], "WEFT_OUTPUT -m owner --uid-owner 2420 -j RETURN");
        assert_eq!(out[1], "WEFT_OUTPUT -o lo -j RETURN");
        assert_eq!(out[2], "WEFT_OUTPUT -d 127.0.0.0/8 -j RETURN");
        assert_eq!(out[3], "WEFT_OUTPUT -p tcp --dport 5432 -j RETURN");
        assert_eq!(out[4], "WEFT_OUTPUT -p tcp --dport 9000:9009 -j RETURN");
        assert_eq!(
            out.last().unwrap().as_str(),
            "WEFT_OUTPUT -p tcp -j REDIRECT --to-ports 4140"
        );
    }

    #[test]
    fn dns_is_redirected_only_when_asked_and_after_the_uid_skip() {
        assert!(
            !lines(&cfg().rules(Family::V4))
                .iter()
                .any(|l| l.contains("53"))
        );
        let mut c = cfg();
        c.dns = true;
        let l = lines(&c.rules(Family::V6));
        let uid = l.iter().position(|l| l.contains("--uid-owner")).unwrap();
        let udp = l
            .iter()
            .position(|l| l == "WEFT_OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 4153")
            .unwrap();
        let tcp = l
            .iter()
            .position(|l| l == "WEFT_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports 4153")
            .unwrap();
        assert!(uid < udp && udp < tcp);
        assert!(l.contains(&"WEFT_OUTPUT -d ::1/128 -j RETURN".to_string()));
    }

    #[test]
    fn restore_script_declares_both_chains() {
        let s = cfg().rules(Family::V4).restore_script();
        assert!(s.starts_with("*nat\n:WEFT_INBOUND - [0:0]\n:WEFT_OUTPUT - [0:0]\n"));
        assert!(s.ends_with("COMMIT\n"));
    }
}

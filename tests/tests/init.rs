//! `weft-proxy init` against real iptables in a fresh network namespace.

use weft_e2e::{Node, Pod, bins};

fn saved(pod: &Pod, cmd: &str) -> String {
    let out = pod.exec(cmd, &["-t", "nat"]);
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn weft_rules(save: &str) -> Vec<&str> {
    save.lines()
        .filter(|l| l.starts_with("-A") && l.contains("WEFT_"))
        .collect()
}

#[test]
fn init_is_idempotent_and_reversible_in_both_families() {
    let node = Node::new("init_idem");
    let pod = node.pod("bare");
    let flags = [
        "--dns",
        "--skip-inbound-ports",
        "22,9000-9009",
        "--skip-outbound-ports",
        "5432",
        "--ipv6",
        "always",
    ];

    let dry = pod.init(&[&flags[..], &["--dry-run"]].concat());
    let dry = String::from_utf8_lossy(&dry.stdout).into_owned();
    // Per family: rules in our chains plus the two jumps.
    let per_family = dry.lines().filter(|l| l.starts_with("-A")).count() / 2;
    assert_eq!(per_family, 13, "dry run:\n{dry}");
    assert!(
        weft_rules(&saved(&pod, "iptables-save")).is_empty(),
        "dry run changed the kernel"
    );

    pod.init(&flags);
    let once = saved(&pod, "iptables-save");
    pod.init(&flags);
    let twice = saved(&pod, "iptables-save");
    assert_eq!(
        weft_rules(&once),
        weft_rules(&twice),
        "a second init changed the rules"
    );
    assert_eq!(weft_rules(&twice).len(), per_family, "{twice}");
    assert_eq!(twice.matches("-A PREROUTING -j WEFT_INBOUND").count(), 1);
    assert_eq!(twice.matches("-A OUTPUT -j WEFT_OUTPUT").count(), 1);
    assert!(twice.contains("--uid-owner 2420 -j RETURN"));
    assert!(twice.contains("--dport 9000:9009 -j RETURN"));
    let v6 = saved(&pod, "ip6tables-save");
    assert_eq!(weft_rules(&v6).len(), per_family, "{v6}");
    assert!(v6.contains("-d ::1/128 -j RETURN"));

    pod.init(&["--remove", "--ipv6", "always"]);
    assert!(!saved(&pod, "iptables-save").contains("WEFT"));
    assert!(!saved(&pod, "ip6tables-save").contains("WEFT"));
    // Removing again is not an error.
    pod.init(&["--remove", "--ipv6", "always"]);
}

#[test]
fn init_errors_say_what_is_wrong() {
    let node = Node::new("init_errors");
    let pod = node.pod("bare");
    let proxy = bins::proxy();

    let out = pod.exec(&proxy, &["init", "--skip-outbound-ports", "5432,postgres"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--skip-outbound-ports") && err.contains("`postgres`"),
        "{err}"
    );

    let out = pod.exec(
        &proxy,
        &[
            "init",
            "--iptables",
            "/nonexistent/iptables",
            "--ipv6",
            "never",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("was not found") && err.contains("apt-get install iptables"),
        "{err}"
    );

    // Not root: the proxy UID has no CAP_NET_ADMIN.
    let out = pod.exec(
        "setpriv",
        &[
            "--reuid=2420",
            "--regid=2420",
            "--clear-groups",
            proxy.to_str().expect("utf-8 path"),
            "init",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("CAP_NET_ADMIN"), "{err}");
    assert!(!saved(&pod, "iptables-save").contains("WEFT"));
}

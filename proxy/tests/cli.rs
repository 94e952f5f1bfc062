//! The `weft-proxy` binary's command line, run as a user would.

use std::process::Command;

fn proxy(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .args(args)
        .output()
        .expect("running weft-proxy")
}

#[test]
fn help_documents_every_flag_with_its_environment_variable() {
    for (sub, flags) in [
        (
            "init",
            &[
                "--skip-inbound-ports",
                "--skip-outbound-ports",
                "--proxy-uid",
                "--dns",
                "--remove",
                "--dry-run",
            ][..],
        ),
        (
            "run",
            &[
                "--inbound-listen",
                "--outbound-target",
                "--drain-timeout",
                "--threads",
            ][..],
        ),
    ] {
        let out = proxy(&[sub, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        for flag in flags {
            assert!(help.contains(flag), "`{sub} --help` lacks {flag}:\n{help}");
        }
        assert!(help.contains("[env: WEFT_"), "{help}");
    }
}

#[test]
fn dry_run_prints_rules_without_root() {
    let out = proxy(&[
        "init",
        "--dry-run",
        "--ipv6",
        "never",
        "--skip-inbound-ports",
        "22",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("-A WEFT_INBOUND -p tcp --dport 22 -j RETURN"),
        "{text}"
    );
    assert!(text.contains("-A WEFT_OUTPUT -m owner --uid-owner 2420 -j RETURN"));
    assert!(text.contains("-A OUTPUT -j WEFT_OUTPUT"));
    assert!(!text.contains("ip6tables"));
}

#[test]
fn a_bad_port_list_names_the_flag_and_the_item() {
    let out = proxy(&["init", "--dry-run", "--skip-inbound-ports", "22,8000-7000"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--skip-inbound-ports") && err.contains("8000-7000"),
        "{err}"
    );
}

//! Namespaces for real (needs root, as the demo and the e2e tests do): made,
//! entered, and gone again, whether dropped or left by a process that died.

use std::process::Command;

use weft_netns::{Netns, existing, remove_stale};

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create network namespaces and need root: run them as root, or with `sudo -E`"
    );
}

#[test]
fn a_namespace_is_entered_and_removed_on_drop() {
    require_root();
    let name = format!("wnt{}n0-a", std::process::id());
    let ns = Netns::create(&name).expect("a namespace");
    // A thread inside sees only the namespace's own loopback.
    let links = ns
        .run_in(|| std::fs::read_to_string("/proc/thread-self/net/dev"))
        .expect("entering")
        .expect("reading /proc/thread-self/net/dev");
    assert_eq!(links.lines().skip(2).count(), 1, "{links}");
    let answer = ns
        .block_on(async { tokio::net::TcpListener::bind("127.0.0.1:0").await.is_ok() })
        .expect("a runtime inside");
    assert!(answer);
    let mut sleeper = ns.command("sleep").arg("600").spawn().expect("sleep");
    // `ip netns exec` enters the namespace, then runs sleep.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while ns.pids().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "sleep never ran inside"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(ns);
    assert!(!existing(&name).contains(&name));
    // What ran inside went with it.
    let status = sleeper.wait().expect("the sleeper's status");
    assert!(!status.success());
}

#[test]
fn stale_namespaces_are_those_of_dead_processes() {
    require_root();
    // A PID that is not running: a child that has been reaped.
    let mut child = Command::new("true").spawn().expect("true");
    let dead = child.id();
    child.wait().expect("reaping");
    let stale = format!("wnt{dead}n0-old");
    let live = format!("wnt{}n1-new", std::process::id());
    let _kept = Netns::create(&live).expect("a live namespace");
    weft_netns::ip(&["netns", "add", &stale]).expect("a stale namespace");
    let removed = remove_stale("wnt");
    assert!(removed.contains(&stale), "{removed:?}");
    assert!(existing("wnt").contains(&live));
}

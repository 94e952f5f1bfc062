//! `weftctl dashboard` as a process, for the tests that read it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::Process;

/// Starts `weftctl --control-plane CONTROL dashboard --port 0 OWN…` (in the
/// calling thread's network namespace) and waits for the address it prints.
pub fn spawn(control: &str, own: &[&str], log: &Path) -> (Process, SocketAddr) {
    let mut cmd = Command::new(crate::bins::weftctl());
    cmd.args(["--control-plane", control, "dashboard", "--port", "0"])
        .args(own);
    let p = Process::spawn("weftctl dashboard", cmd, log.to_path_buf());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = p.log();
        if let Some(addr) = text
            .split("weftctl dashboard: http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
        {
            return (p, addr);
        }
        assert!(
            p.is_running() && Instant::now() < deadline,
            "weftctl dashboard did not say where it serves: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

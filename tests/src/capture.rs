//! Packet captures with tcpdump, inside a namespace the harness made.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::process::Process;

#[derive(Debug)]
pub struct Capture {
    process: Arc<Process>,
    file: PathBuf,
}

impl Capture {
    /// Captures TCP on `iface` in `ns` into `file`, once tcpdump says it listens.
    pub fn start(ns: &Netns, iface: &str, file: PathBuf) -> Capture {
        let mut cmd = ns.command("tcpdump");
        // --immediate-mode: hand packets over at once, not in blocks that a
        // stop could cut off.
        cmd.args(["-i", iface, "--immediate-mode", "-U", "-s", "0", "-n", "-w"])
            .arg(&file)
            .arg("tcp");
        let log = file.with_extension("log");
        let process = Arc::new(Process::spawn("tcpdump", cmd, log));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !process.log().contains("listening on") {
            assert!(process.is_running(), "tcpdump exited: {}", process.log());
            assert!(
                Instant::now() < deadline,
                "tcpdump never started: {}",
                process.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Capture { process, file }
    }

    /// Stops the capture and returns the raw pcap bytes.
    pub fn stop(self) -> Vec<u8> {
        // Give the last packets a moment to be written (-U flushes per packet).
        std::thread::sleep(Duration::from_millis(300));
        self.process.signal(nix::sys::signal::Signal::SIGINT);
        self.process.wait_timeout(Duration::from_secs(5));
        std::fs::read(&self.file).expect("reading the capture")
    }
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

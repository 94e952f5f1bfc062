//! Running `weftctl demo` from a test: the process, its state file, and
//! what it left behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bins;

/// Starts `weftctl demo` with its state and work directory under `dir`
/// (output piped). Its dashboard goes on a free port unless `args` say
/// otherwise.
pub fn start(dir: &Path, args: &[&str]) -> Child {
    crate::require_root();
    let bin_dir = bins::weftctl()
        .parent()
        .map(PathBuf::from)
        .expect("the binaries' directory");
    let mut cmd = Command::new(bins::weftctl());
    cmd.arg("demo").args(args);
    if !args
        .iter()
        .any(|a| a.starts_with("--dashboard") || *a == "--no-dashboard")
    {
        cmd.args(["--dashboard", "127.0.0.1:0"]);
    }
    cmd.arg("--state-file")
        .arg(dir.join("state/state.json"))
        .arg("--dir")
        .arg(dir.join("mesh"))
        .arg("--bin-dir")
        .arg(bin_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting weftctl demo")
}

/// The demo's network namespaces still present.
pub fn namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("wdemo-"))
        .map(str::to_string)
        .collect()
}

/// Waits for the state file, failing with the demo's output if it exits first.
pub fn wait_state(child: &mut Child, file: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(text) = std::fs::read_to_string(file)
            && let Ok(v) = serde_json::from_str(&text)
        {
            return v;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let out = output_now(child);
            panic!("the demo exited ({status}) before writing its state: {out}");
        }
        assert!(Instant::now() < deadline, "no state file after 90s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whatever the demo printed, once it has exited.
pub fn output_now(child: &mut Child) -> String {
    use std::io::Read;
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut out);
    }
    out
}

/// Ends the demo as Ctrl-C would, and returns its JSON summary (it must
/// have been started with `--json`).
pub fn interrupt(child: Child) -> serde_json::Value {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    finish(child)
}

/// Waits for the demo to end, and returns its JSON summary (it must have
/// been started with `--json`).
pub fn finish(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().expect("the demo's output");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

//! Finding the binaries under test: beside the test executable in cargo's
//! target directory (`target/debug/`), or where `WEFT_PROXY_BIN` /
//! `WEFT_TEST_APP_BIN` say.

use std::path::PathBuf;

fn find(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/debug/deps/<test> -> target/debug/<name>
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found; build it first (`cargo build --workspace --bins`, as scripts/test does) or set {env}",
        path.display()
    );
    path
}

pub fn proxy() -> PathBuf {
    find("weft-proxy", "WEFT_PROXY_BIN")
}

pub fn test_app() -> PathBuf {
    find("weft-test-app", "WEFT_TEST_APP_BIN")
}

pub fn control() -> PathBuf {
    find("weft-control", "WEFT_CONTROL_BIN")
}

pub fn weftctl() -> PathBuf {
    find("weftctl", "WEFTCTL_BIN")
}

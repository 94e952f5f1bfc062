//! Finding the Kubernetes binaries (etcd, kube-apiserver,
//! kube-controller-manager, kubectl) that `scripts/kube-tools` builds, and
//! the Jaeger that `scripts/jaeger-tool` builds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The folder that holds the binaries: `$WEFT_KUBE_TOOLS` when set, else the
/// `bin/` of the folder `scripts/kube-tools` prints (which builds them the
/// first time, taking minutes). Panics with a clear message when neither
/// gives a folder with all four binaries.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(find)
}

/// The path of one binary in [`bin_dir`].
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

const BINARIES: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
];

fn find() -> PathBuf {
    let dir = match std::env::var_os("WEFT_KUBE_TOOLS") {
        Some(dir) => PathBuf::from(dir),
        None => from_script(),
    };
    for b in BINARIES {
        assert!(
            dir.join(b).is_file(),
            "{} has no {b}; WEFT_KUBE_TOOLS must name the bin/ folder `scripts/kube-tools` builds",
            dir.display()
        );
    }
    dir
}

fn from_script() -> PathBuf {
    script_folder(
        "kube-tools",
        "WEFT_KUBE_TOOLS",
        &format!("a bin/ folder holding {BINARIES:?}"),
    )
    .join("bin")
}

/// Runs `scripts/<script>` (which builds what is missing) and returns the
/// folder it prints; `env` is the variable that would have spared it, and
/// `what` what that variable names, for the messages.
fn script_folder(script: &str, env: &str, what: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(script);
    let out = Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{env} is not set and {} could not run ({e}); run it by hand or point {env} at \
                 {what}",
                script.display()
            )
        });
    assert!(
        out.status.success(),
        "{env} is not set and {} failed ({}); see its messages above, or point {env} at {what}",
        script.display(),
        out.status
    );
    let folder = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !folder.is_empty(),
        "{} printed no folder on stdout",
        script.display()
    );
    PathBuf::from(folder)
}

/// The Jaeger binary (v2, `cmd/jaeger`, all-in-one with in-memory storage
/// when given no `--config`): `$WEFT_JAEGER_BIN` when set, else the
/// `bin/jaeger` of the folder `scripts/jaeger-tool` prints (which builds it
/// the first time, taking minutes). It listens where `JAEGER_LISTEN_HOST`
/// says (default `localhost`; a pod sets `0.0.0.0`): OTLP/gRPC on 4317,
/// OTLP/HTTP on 4318; the query HTTP API (`/api/traces?service=NAME`) on
/// 16686 on every address. The UI's assets are not built: a placeholder
/// page answers instead, the API does not need them.
pub fn jaeger() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = match std::env::var_os("WEFT_JAEGER_BIN") {
            Some(bin) => PathBuf::from(bin),
            None => script_folder(
                "jaeger-tool",
                "WEFT_JAEGER_BIN",
                "the jaeger binary it builds",
            )
            .join("bin/jaeger"),
        };
        assert!(
            bin.is_file(),
            "{} is not a file; WEFT_JAEGER_BIN must name the jaeger binary `scripts/jaeger-tool` \
             builds",
            bin.display()
        );
        bin
    })
}

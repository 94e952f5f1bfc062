//! Finding the Kubernetes binaries (etcd, kube-apiserver,
//! kube-controller-manager, kubectl) that `scripts/kube-tools` builds.

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
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kube-tools");
    let out = Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "WEFT_KUBE_TOOLS is not set and {} could not run ({e}); build the Kubernetes \
                 binaries with scripts/kube-tools or point WEFT_KUBE_TOOLS at their bin/ folder",
                script.display()
            )
        });
    assert!(
        out.status.success(),
        "WEFT_KUBE_TOOLS is not set and {} failed ({}); see its messages above, or point \
         WEFT_KUBE_TOOLS at a bin/ folder holding {BINARIES:?}",
        script.display(),
        out.status
    );
    let folder = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !folder.is_empty(),
        "{} printed no folder on stdout",
        script.display()
    );
    PathBuf::from(folder).join("bin")
}

use std::path::PathBuf;
use std::time::Duration;

/// Why the demo could not run, or stopped before its end; each says what to
/// do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "weftctl demo needs root (it creates network namespaces and iptables rules): \
         run it as root, or with `sudo -E`"
    )]
    NotRoot,
    #[error("missing {commands}: install the packages {packages}")]
    MissingTools { commands: String, packages: String },
    #[error(
        "{} not found; build every binary first (`cargo build --release --workspace --bins`) or pass --bin-dir",
        .0.display()
    )]
    MissingBinary(PathBuf),
    #[error(transparent)]
    Netns(#[from] weft_netns::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not come up within {limit:?}\n{log}")]
    NotReady {
        what: String,
        limit: Duration,
        /// The end of its log.
        log: String,
    },
    #[error("the mesh has no {0}")]
    Missing(&'static str),
    #[error("interrupted while the mesh was being built")]
    Interrupted,
    #[error("{0} panicked")]
    Panicked(&'static str),
    #[error("the dashboard: {0}")]
    Dashboard(#[from] weft_dashboard::Error),
    #[error("writing the summary: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

use std::process::Output;

/// What went wrong making or using a namespace; each says which command or
/// file, and what the system answered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run `ip` (install iproute2): {0}")]
    NoIp(#[source] std::io::Error),
    #[error("ip {args}: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("{command} in {netns}: {stderr}")]
    Failed {
        command: String,
        netns: String,
        stderr: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("entering {path}: {source}")]
    Enter {
        path: String,
        #[source]
        source: nix::Error,
    },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

/// The trimmed standard error of a finished command.
pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

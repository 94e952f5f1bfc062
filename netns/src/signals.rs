//! The signals that end a run when nobody handles them: Ctrl-C (SIGINT),
//! `kill` (SIGTERM), a closed terminal (SIGHUP) and Ctrl-\ (SIGQUIT). Caught
//! here, they give the run the chance to remove its namespaces.

use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};

use crate::error::Error;

/// Calls `handler` for each SIGINT, SIGTERM, SIGHUP or SIGQUIT from now on,
/// on a thread of its own; the signals no longer end the process by
/// themselves. Returns once the handlers are in place, so a signal right
/// after the call is not missed.
pub fn on_signal(handler: impl Fn(Signal) + Send + 'static) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::io("starting the signal watcher"))?;
    let listen = |kind: SignalKind, name: &str| {
        signal(kind).map_err(Error::io(format!("installing the {name} handler")))
    };
    let (mut int, mut term, mut hup, mut quit) = {
        let _guard = rt.enter();
        (
            listen(SignalKind::interrupt(), "SIGINT")?,
            listen(SignalKind::terminate(), "SIGTERM")?,
            listen(SignalKind::hangup(), "SIGHUP")?,
            listen(SignalKind::quit(), "SIGQUIT")?,
        )
    };
    std::thread::Builder::new()
        .name("weft-netns-signals".into())
        .spawn(move || {
            rt.block_on(async move {
                loop {
                    let sig = tokio::select! {
                        Some(()) = int.recv() => Signal::SIGINT,
                        Some(()) = term.recv() => Signal::SIGTERM,
                        Some(()) = hup.recv() => Signal::SIGHUP,
                        Some(()) = quit.recv() => Signal::SIGQUIT,
                        else => return,
                    };
                    handler(sig);
                }
            });
        })
        .map_err(Error::io("starting the signal watcher"))?;
    Ok(())
}

/// On the first SIGINT, SIGTERM, SIGHUP or SIGQUIT, removes every namespace
/// named `prefix…` (what dropping them would have done) and ends the process
/// as the signal would have (exit status 128 + its number).
pub fn remove_on_signal(prefix: String) -> Result<(), Error> {
    on_signal(move |sig| {
        crate::remove_all(&prefix);
        std::process::exit(128 + sig as i32);
    })
}

//! Ctrl-C and SIGTERM for the demo: taken by a thread with `sigwait`, so
//! the main thread notices between actions and returns normally, and every
//! `Drop` (agents, CA, namespaces) runs.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::bail;
use nix::sys::signal::{SigSet, Signal};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Ends the walk-through early when a signal arrived.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Blocks SIGINT and SIGTERM in every thread (children get a clean mask
/// from `Command`) and waits for them on a dedicated thread.
pub fn catch_signals() -> nix::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    std::thread::spawn(move || {
        if let Ok(signal) = set.wait() {
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("\n{signal} received: stopping after the current action and tearing down...");
        }
    });
    Ok(())
}

pub fn check_interrupt() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!(Interrupted);
    }
    Ok(())
}

/// Whether a signal arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

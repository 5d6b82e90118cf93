//! The agent's composition root: builds the running agent from its
//! configuration and keeps it up until asked to stop.
//!
//! Minimal for now (state only); the capture and proxy work replaces `run`'s
//! body with the full composition.

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{CaptureCommand, RunArgs};
use crate::state::source::FileSource;
use crate::state::{Snapshot, StateStore};

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    tracing::info!(?args, "starting");
    let store = StateStore::new(Snapshot::default());
    let _state = FileSource::new(&args.state.state, args.state.load_options())
        .start(store.clone())
        .await
        .with_context(|| format!("loading state from {}", args.state.state.display()))?;
    let local = store.current().local_enrolled(&args.node).count();
    tracing::info!(node = %args.node, enrolled = local, "ready");

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    Ok(())
}

/// `ambit-agent capture ...`; filled in by the capture engine.
pub fn capture(command: CaptureCommand) -> anyhow::Result<()> {
    let action = match command {
        CaptureCommand::Install(_) => "install",
        CaptureCommand::Uninstall(_) => "uninstall",
        CaptureCommand::Status(_) => "status",
    };
    anyhow::bail!("capture {action}: not implemented yet")
}

//! The `ambit-ca` binary: parse configuration, start the CA, stop on SIGTERM/SIGINT.

use std::io::IsTerminal;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = ambit_ca::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        // Logs go to stderr, as the agent's do; colour codes only for a person
        // at a terminal, never into files or pipes.
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    tracing::info!(config = ?cli, "starting");
    let mut ca = ambit_ca::app::start(&cli).await?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        result = ca.wait() => return result,
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    ca.shutdown().await
}

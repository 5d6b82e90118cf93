//! The `ambit-ca` binary: parse configuration, start the CA, stop on SIGTERM/SIGINT.

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = ambit_ca::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
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

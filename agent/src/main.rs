//! The `ambit-agent` binary: parse the command line, start logging, dispatch,
//! and turn the outcome into an exit status.

use std::io::IsTerminal;
use std::process::ExitCode;

use ambit_agent::app;
use ambit_agent::authz::check;
use ambit_agent::cli::{AuthzCommand, CheckArgs, Cli, Command, LogFormat};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Exit status for bad input: the same as clap's usage errors.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_tracing(&cli.log, cli.log_format) {
        eprintln!("ambit-agent: --log {:?}: {e}", cli.log);
        return ExitCode::from(EXIT_USAGE);
    }
    match cli.command {
        Command::Run(args) => report(run(args)),
        Command::Authz(AuthzCommand::Check(args)) => authz_check(&args),
        Command::Capture(command) => report(app::capture(command)),
    }
}

fn init_tracing(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(filter)?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.try_init().map_err(anyhow::Error::from_boxed)?,
        LogFormat::Json => builder
            .json()
            .try_init()
            .map_err(anyhow::Error::from_boxed)?,
    }
    Ok(())
}

fn run(args: ambit_agent::cli::RunArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(app::run(args))
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            ExitCode::FAILURE
        }
    }
}

/// Prints the decision as one JSON line; 0 allow, 1 deny, 2 bad input.
fn authz_check(args: &CheckArgs) -> ExitCode {
    match check::check(args) {
        Ok(report) => {
            for warning in &report.warnings {
                eprintln!("warning: {warning}");
            }
            println!("{}", report.to_json_line());
            if report.decision.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("ambit-agent authz check: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

//! The `ambit-agent` binary: parse the command line, start logging, dispatch,
//! and turn the outcome into an exit status.

use std::process::ExitCode;

use ambit_agent::app;
use ambit_agent::authz::check;
use ambit_agent::cli::{
    AuthzCommand, CheckArgs, Cli, Command, DescribeCommand, DescribeFlags, LogFormat, OutputFormat,
};
use ambit_agent::describe::{self, Subject, fetch};
use ambit_agent::limits;
use ambit_agent::telemetry::{self, LogHandle};
use clap::Parser;

/// jemalloc rather than glibc's malloc: the data path allocates and frees
/// 16 KiB to 1 MiB buffers (TLS records, HTTP/2 frames) at line rate, and
/// glibc returns them to the kernel and faults them back in on every cycle
/// (see the workspace Cargo.toml for the measurement).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit status for bad input: the same as clap's usage errors.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match cli.log_format {
        LogFormat::Text => telemetry::LogFormat::Text,
        LogFormat::Json => telemetry::LogFormat::Json,
    };
    // The handle lets the admin server change the filter at runtime.
    let logs = match telemetry::init(format, &cli.log) {
        Ok(logs) => logs,
        Err(e) => {
            eprintln!("ambit-agent: --log {:?}: {e}", cli.log);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cli.command {
        Command::Run(args) => report(run(*args, logs)),
        Command::Authz(AuthzCommand::Check(args)) => authz_check(&args),
        Command::Capture(command) => report(app::capture(command)),
        Command::Describe(command) => describe(&command),
        Command::StateServer(args) => report(state_server(args)),
    }
}

/// Prints the description; 0 when answered, 1 when the pod or Service is
/// unknown or the agent could not answer, 2 for a malformed name.
fn describe(command: &DescribeCommand) -> ExitCode {
    let (subject, flags): (Result<Subject, _>, &DescribeFlags) = match command {
        DescribeCommand::Pod { name, flags } => (Subject::pod(name), flags),
        DescribeCommand::Service { name, flags } => (Subject::service(name), flags),
    };
    let subject = match subject {
        Ok(subject) => subject,
        Err(e) => {
            eprintln!("ambit-agent describe: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let answer = match flags.admin {
        Some(addr) => fetch::from_admin(addr, &subject, flags.timeout),
        None => fetch::from_state(
            &flags.state.state,
            flags.state.load_options(),
            &subject,
            &flags.trust_domain,
        ),
    };
    let report = match answer {
        Ok(report) => report,
        Err(e) => {
            eprintln!("ambit-agent describe: {e}");
            return ExitCode::FAILURE;
        }
    };
    match flags.output {
        OutputFormat::Text => print!("{}", describe::render::render(&report)),
        OutputFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("ambit-agent describe: {e}");
                return ExitCode::FAILURE;
            }
        },
    }
    ExitCode::SUCCESS
}

fn run(args: ambit_agent::cli::RunArgs, logs: LogHandle) -> anyhow::Result<()> {
    // Before any thread or socket exists: the budget is set from the result.
    if let Err(error) = limits::raise_nofile() {
        tracing::warn!(%error, "reading the open-file limit");
    }
    limits::keep_spare();
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.worker_threads))
        .enable_all()
        // Workers' log lines wait for a worker with nothing else to do.
        .on_thread_start(telemetry::batch_this_thread)
        .on_thread_park(telemetry::flush)
        .build()?
        .block_on(app::run(args, Some(logs)));
    telemetry::flush();
    result
}

fn state_server(args: ambit_agent::cli::StateServerArgs) -> anyhow::Result<()> {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(app::state_server(args));
    telemetry::flush();
    result
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

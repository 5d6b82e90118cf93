//! ambit-bench: measures throughput, request/response latency and the
//! connection rate between pods on different nodes of a namespace cluster,
//! and prints a Markdown table and a JSON object.
//!
//! Layout:
//! - `scenario`: the client and server pods of one measurement and the
//!   servers started in the server pod.
//! - `measure`: the three measurements, identical for every mode: they see
//!   only a client namespace and server addresses.
//! - `closer`: the connection-rate server (one byte, then the server closes).
//! - `mesh`: the `plain` and `mesh` modes: a running mesh (CA and agents),
//!   direct and through the agents, interleaved over rounds.
//! - `rounds`: per-round records, ratios to direct, medians.
//! - `idle`: agent memory with idle connections held through the mesh, and
//!   the `hold` server process.
//! - `procstat`: the agents' CPU time and memory from `/proc`.
//! - `report`: the `baseline` mode's record, its JSON and Markdown forms.
//! - `http`: the `http` mode: keep-alive HTTP requests direct, through the
//!   agents at L4, and through the destination agent's L7 path.
//! - `scale`: the `scale` mode: the agent's Kubernetes state against a fake
//!   API server serving a generated cluster of up to 150,000 pods (memory,
//!   CPU, policy propagation, API-server bytes and events per agent).

mod closer;
mod http;
mod idle;
mod measure;
mod mesh;
mod procstat;
mod report;
mod rounds;
mod scale;
mod scenario;

/// The agent's allocator: the scale mode's agent children run in this
/// binary, and their resident size should be the agent's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(version, about = "Ambit benchmarks on a network-namespace cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    measure: measure::Settings,
    /// Also write the JSON result to this file.
    #[arg(long, global = true, env = "AMBIT_BENCH_JSON")]
    json: Option<PathBuf>,
    /// Rounds of the `plain` and `mesh` modes; each measures every row once.
    #[arg(long, global = true, env = "AMBIT_BENCH_ROUNDS", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=100))]
    rounds: u16,
    /// Idle connections held through the mesh when the agents' memory is
    /// read (`mesh` mode), ascending; empty to skip.
    #[arg(
        long,
        global = true,
        env = "AMBIT_BENCH_IDLE",
        value_delimiter = ',',
        default_value = "1000,10000"
    )]
    idle: Vec<usize>,
    /// Keep-alive connections sending requests at once in the `http`
    /// mode's loaded phase (its requests per agent CPU-second); its latency
    /// figures come from one connection.
    #[arg(
        long,
        global = true,
        env = "AMBIT_BENCH_HTTP_CONNECTIONS",
        default_value_t = 8
    )]
    http_connections: usize,
    /// An extra argument for both agents' `run` (repeatable), e.g.
    /// `--agent-arg=--worker-threads=1`.
    #[arg(long = "agent-arg", global = true, allow_hyphen_values = true)]
    agent_args: Vec<String>,
    /// An extra `KEY=VALUE` in both agents' environment (repeatable), e.g.
    /// `--agent-env=_RJEM_MALLOC_CONF=dirty_decay_ms:0` to tell the
    /// allocator's retained pages from live memory.
    #[arg(long = "agent-env", global = true, value_parser = parse_env)]
    agent_env: Vec<(String, String)>,
}

/// What carries the traffic between the two pods.
#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No mesh: pod to pod through the cluster's veths, bridge and node
    /// routing. The physical limit every mesh figure is compared with.
    Baseline,
    /// The client pod enrolled, the server outside the mesh: the agent on
    /// the client's node captures the traffic and carries it as plain TCP.
    /// Measured beside the baseline on the same running mesh.
    Plain,
    /// The plain row, then both pods enrolled: through two agents with an
    /// HBONE tunnel between the nodes. Beside the baseline on the same mesh.
    Mesh,
    /// HTTP/1.1 keep-alive requests of 1 KiB: direct, through two agents at
    /// L4, and through them with the destination deciding each request (L7).
    Http,
    /// Internal: hold every accepted connection open (run in the server pod
    /// by the `mesh` mode's idle-connection phase).
    #[command(hide = true)]
    Hold {
        #[arg(long)]
        listen: SocketAddr,
    },
}

/// Every command: the pod-to-pod modes above, and the state-scale ones.
#[derive(Subcommand, Debug, Clone)]
enum Command {
    #[command(flatten)]
    Traffic(Mode),
    /// The agent's Kubernetes state at cluster scale (no namespaces, no
    /// root needed): memory, CPU, policy propagation and API-server traffic
    /// per agent, for generated clusters of each `--pods` size.
    Scale(scale::Settings),
    /// One agent under test of the scale mode (started by it).
    #[command(hide = true)]
    ScaleAgent(scale::ChildArgs),
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline",
            Mode::Plain => "plain",
            Mode::Mesh => "mesh",
            Mode::Http => "http",
            Mode::Hold { .. } => "hold",
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rounds = usize::from(cli.rounds);
    let mode = match cli.command {
        Command::Scale(settings) => return scale::run(&settings, cli.json.as_deref()),
        Command::ScaleAgent(args) => return scale::run_child(args),
        Command::Traffic(mode) => mode,
    };
    match mode {
        Mode::Plain => {
            return mesh::run(
                &cli.measure,
                cli.json.as_deref(),
                &[Mode::Plain],
                rounds,
                &[],
                &cli.agent_args,
                &cli.agent_env,
            );
        }
        Mode::Mesh => {
            return mesh::run(
                &cli.measure,
                cli.json.as_deref(),
                &[Mode::Plain, Mode::Mesh],
                rounds,
                &cli.idle,
                &cli.agent_args,
                &cli.agent_env,
            );
        }
        Mode::Http => {
            let settings = http::Settings {
                seconds: cli.measure.throughput_seconds,
                rounds,
                connections: cli.http_connections,
                agent_args: cli.agent_args,
                agent_env: cli.agent_env,
            };
            return http::run(&settings, cli.json.as_deref());
        }
        Mode::Hold { listen } => return idle::hold(listen),
        Mode::Baseline => {}
    }
    let scenario = scenario::Scenario::baseline().context("setting up the cluster")?;
    eprintln!(
        "mode={} client={} ({}) server={} ({})",
        mode.name(),
        scenario.client.name,
        scenario.client.ip,
        scenario.server.name,
        scenario.server.ip
    );
    let result = measure::run_all(
        &cli.measure,
        &scenario.client.netns,
        &scenario.servers,
        None,
    )?;
    let report = report::Report::new(mode, &cli.measure, &scenario, result);
    println!("{}", report.markdown());
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    if let Some(path) = &cli.json {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    drop(scenario);
    Ok(())
}

/// Parses `KEY=VALUE` for clap.
fn parse_env(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    Ok((key.to_owned(), value.to_owned()))
}

/// Parses a duration in seconds (fractions allowed) for clap.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(0.1..=600.0).contains(&secs) {
        return Err(format!("{secs} s is outside 0.1..=600"));
    }
    Ok(Duration::from_secs_f64(secs))
}

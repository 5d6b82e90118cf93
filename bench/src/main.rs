//! ambit-bench: measures throughput, request/response latency and the
//! connection rate between pods on different nodes of a namespace cluster,
//! and prints a Markdown table and a JSON object.
//!
//! Layout:
//! - `scenario`: the client and server pods of one measurement and the
//!   servers started in the server pod.
//! - `measure`: the three measurements, identical for every mode: they see
//!   only a client namespace and server addresses.
//! - `mesh`: the `plain` and `mesh` modes: a running mesh (CA and agents),
//!   measured through the agents beside the baseline on the same cluster.
//! - `report`: the result record, its JSON form and its Markdown table.
//! - `http`: the `http` mode: keep-alive HTTP requests direct, through the
//!   agents at L4, and through the destination agent's L7 path.
//! - `scale`: the `scale` mode: the agent's Kubernetes state against a fake
//!   API server serving a generated cluster of up to 150,000 pods (memory,
//!   CPU, policy propagation, API-server bytes and events per agent).

mod http;
mod measure;
mod mesh;
mod report;
mod scale;
mod scenario;

/// The agent's allocator: the scale mode's agent children run in this
/// binary, and their resident size should be the agent's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mode = match cli.command {
        Command::Scale(settings) => return scale::run(&settings, cli.json.as_deref()),
        Command::ScaleAgent(args) => return scale::run_child(args),
        Command::Traffic(mode) => mode,
    };
    match mode {
        Mode::Plain => return mesh::run(&cli.measure, cli.json.as_deref(), &[Mode::Plain]),
        Mode::Mesh => {
            return mesh::run(
                &cli.measure,
                cli.json.as_deref(),
                &[Mode::Plain, Mode::Mesh],
            );
        }
        Mode::Http => return http::run(cli.measure.throughput_seconds, cli.json.as_deref()),
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
    let result = measure::run_all(&cli.measure, &scenario)?;
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

/// Parses a duration in seconds (fractions allowed) for clap.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(0.1..=600.0).contains(&secs) {
        return Err(format!("{secs} s is outside 0.1..=600"));
    }
    Ok(Duration::from_secs_f64(secs))
}

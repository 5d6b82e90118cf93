//! The `plain` and `mesh` modes: every measurement direct, through one agent
//! and through two, on one running mesh, interleaved over several rounds.
//!
//! One two-node mesh (CA and an agent per node) holds three pods on node 0
//! and two on node 1:
//! - `plain-client` -> `plain-server`, both in the unenrolled namespace
//!   `outside`: not captured, the physical path under the same conditions
//!   (the `direct` row);
//! - `client` (enrolled namespace `default`) -> `plain-server`: captured by
//!   node 0's agent and carried as plain TCP, since the server is outside
//!   the mesh (the `plain` row);
//! - `client` -> `server`, both enrolled: through an HBONE tunnel between
//!   the two agents (the `mesh` row).
//!
//! Each round measures every row once, in turn, so a change of load on the
//! shared VM hits all rows of a round alike; each figure is also given as a
//! ratio to the direct row of its round, and the summary is the median over
//! rounds (`crate::rounds`). After the rounds, the agents' memory is read
//! with idle connections held open through the mesh (`crate::idle`).

use std::net::SocketAddr;
use std::path::Path;

use ambit_tests::{Mesh, PodSpec};
use anyhow::Context;

use crate::Mode;
use crate::measure::{self, Settings};
use crate::procstat::Agents;
use crate::rounds::{RoundRow, Summary};
use crate::scenario::Servers;
use crate::{idle, rounds};

/// Port of the holding server for the idle-connection figures.
const HOLD_PORT: u16 = 5204;

/// Which pods carry the traffic of a row.
fn pods(mode: Mode) -> (&'static str, &'static str) {
    match mode {
        Mode::Plain => ("client", "plain-server"),
        Mode::Mesh => ("client", "server"),
        // The direct row (`http` and `hold` have their own pods).
        Mode::Baseline | Mode::Http | Mode::Hold { .. } => ("plain-client", "plain-server"),
    }
}

/// Measures the direct row and each of `rows` in every round on one mesh.
pub fn run(
    settings: &Settings,
    json: Option<&Path>,
    rows: &[Mode],
    round_count: usize,
    idle_steps: &[usize],
    agent_args: &[String],
    agent_env: &[(String, String)],
) -> anyhow::Result<()> {
    let pod = |name: &str, namespace: &str, node| {
        PodSpec::new(name)
            .namespace(namespace)
            .service_account(name)
            .label("app", name)
            .node(node)
    };
    let args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let builder = agent_env
        .iter()
        .fold(Mesh::builder(), |b, (k, v)| b.agent_env(k, v));
    let mesh = builder
        .agent_args(0, &args)
        .agent_args(1, &args)
        .nodes(2)
        .namespace("default", true)
        .namespace("outside", false)
        .pod(pod("client", "default", 0))
        .pod(pod("server", "default", 1))
        .pod(pod("plain-client", "outside", 0))
        .pod(pod("plain-server", "outside", 1))
        .build()
        .context("starting the mesh (CA and two agents)")?;
    let agents = Agents::new(vec![mesh.agent(0).pid(), mesh.agent(1).pid()]);
    // Two rows share `plain-server`, so servers are started once per pod.
    let plain_servers = Servers::start(&mesh.pod("plain-server").pod)?;
    let mesh_servers = Servers::start(&mesh.pod("server").pod)?;
    let servers_of = |mode: Mode| match pods(mode).1 {
        "server" => &mesh_servers,
        _ => &plain_servers,
    };

    let all_rows: Vec<Mode> = std::iter::once(Mode::Baseline)
        .chain(rows.iter().copied())
        .collect();
    let mut measured = Vec::new();
    for round in 1..=round_count {
        for &mode in &all_rows {
            let (client, server) = pods(mode);
            eprintln!(
                "round {round}/{round_count}, {}: {client} -> {server}",
                rounds::row_name(mode)
            );
            let netns = &mesh.pod(client).pod.netns;
            let results = measure::run_all(settings, netns, servers_of(mode), Some(&agents))
                .with_context(|| format!("round {round}, {}", rounds::row_name(mode)))?;
            measured.push(RoundRow::new(round, mode, settings, &results));
        }
    }

    let idle = if rows.contains(&Mode::Mesh) && !idle_steps.is_empty() {
        let server = mesh.pod("server");
        let addr = SocketAddr::new(server.pod.ip.into(), HOLD_PORT);
        let _holder = idle::start_holder(&server.pod.netns, addr)?;
        idle::measure(&mesh.pod("client").pod.netns, addr, &agents, idle_steps)?
    } else {
        Vec::new()
    };

    let summary = Summary::new(settings, measured, idle);
    println!("{}", summary.markdown());
    let text = serde_json::to_string_pretty(&summary)?;
    println!("{text}");
    if let Some(path) = json {
        std::fs::write(path, format!("{text}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

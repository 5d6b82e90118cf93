//! The `plain` and `mesh` modes: the three measurements through Ambit
//! agents, beside the no-mesh baseline on the same cluster with the agents
//! running.
//!
//! One two-node mesh (CA and an agent per node) holds three pods on node 0
//! and two on node 1:
//! - `plain-client` -> `plain-server`, both in the unenrolled namespace
//!   `outside`: not captured, the physical path under the same conditions
//!   (the baseline row);
//! - `client` (enrolled namespace `default`) -> `plain-server`: captured by
//!   node 0's agent and carried as plain TCP, since the server is outside
//!   the mesh (the `plain` row);
//! - `client` -> `server`, both enrolled: through an HBONE tunnel between
//!   the two agents (the `mesh` row).
//!
//! Rows are measured one after the other; the report puts each beside the
//! baseline with the ratios.

use std::path::Path;
use std::sync::Arc;

use ambit_tests::{Mesh, PodSpec};
use anyhow::Context;
use serde::Serialize;

use crate::Mode;
use crate::measure::{self, Settings};
use crate::report::Report;
use crate::scenario::Scenario;

/// The baseline and each measured row compared with it.
#[derive(Debug, Serialize)]
struct Comparison {
    baseline: Report,
    rows: Vec<Row>,
}

#[derive(Debug, Serialize)]
struct Row {
    report: Report,
    /// Throughput as a fraction of the baseline's.
    throughput_ratio: f64,
    /// Microseconds added to a round trip.
    added_p50_us: f64,
    added_p99_us: f64,
    /// Connection rate as a fraction of the baseline's.
    connection_rate_ratio: f64,
}

impl Row {
    fn new(report: Report, baseline: &Report) -> Self {
        Self {
            throughput_ratio: round3(report.throughput.gbit_per_s / baseline.throughput.gbit_per_s),
            added_p50_us: round3(report.latency.p50_us - baseline.latency.p50_us),
            added_p99_us: round3(report.latency.p99_us - baseline.latency.p99_us),
            connection_rate_ratio: round3(report.connections.per_s / baseline.connections.per_s),
            report,
        }
    }
}

/// Which pods carry the traffic of `mode`'s row.
fn pods(mode: Mode) -> (&'static str, &'static str) {
    match mode {
        Mode::Baseline => ("plain-client", "plain-server"),
        Mode::Plain => ("client", "plain-server"),
        // The `http` mode has its own pods (`crate::http`).
        Mode::Mesh | Mode::Http => ("client", "server"),
    }
}

/// Measures the baseline, then each of `rows`, on one mesh.
pub fn run(settings: &Settings, json: Option<&Path>, rows: &[Mode]) -> anyhow::Result<()> {
    let pod = |name: &str, namespace: &str, node| {
        PodSpec::new(name)
            .namespace(namespace)
            .service_account(name)
            .label("app", name)
            .node(node)
    };
    let mesh = Arc::new(
        Mesh::builder()
            .nodes(2)
            .namespace("default", true)
            .namespace("outside", false)
            .pod(pod("client", "default", 0))
            .pod(pod("server", "default", 1))
            .pod(pod("plain-client", "outside", 0))
            .pod(pod("plain-server", "outside", 1))
            .build()
            .context("starting the mesh (CA and two agents)")?,
    );

    let measure_row = |mode: Mode| -> anyhow::Result<Report> {
        let (client, server) = pods(mode);
        eprintln!("{}: {client} -> {server}", mode.name());
        let scenario = Scenario::in_mesh(&mesh, client, server)?;
        let results = measure::run_all(settings, &scenario)?;
        Ok(Report::new(mode, settings, &scenario, results))
    };
    let baseline = measure_row(Mode::Baseline)?;
    let rows = rows
        .iter()
        .map(|&mode| Ok(Row::new(measure_row(mode)?, &baseline)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let comparison = Comparison { baseline, rows };

    let base = comparison.baseline.markdown();
    let line = |text: &str, n: usize| text.lines().nth(n).unwrap_or_default().to_owned();
    let mut table = vec![line(&base, 0), line(&base, 1), line(&base, 2)];
    let mut summary = Vec::new();
    for row in &comparison.rows {
        table.push(line(&row.report.markdown(), 2));
        summary.push(format!(
            "{} vs baseline: throughput {:.0}%, latency +{:.1} µs at p50 and +{:.1} µs at p99, \
             new connections/s {:.0}%.",
            row.report.mode,
            row.throughput_ratio * 100.0,
            row.added_p50_us,
            row.added_p99_us,
            row.connection_rate_ratio * 100.0,
        ));
    }
    println!(
        "{}\n\n{}\nAll rows on one cluster with both agents running; the baseline pods are not \
         enrolled.\n{}\n",
        table.join("\n"),
        line(&base, 4),
        summary.join("\n"),
    );
    let text = serde_json::to_string_pretty(&comparison)?;
    println!("{text}");
    if let Some(path) = json {
        std::fs::write(path, format!("{text}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

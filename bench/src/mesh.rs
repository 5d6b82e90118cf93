//! `mesh` mode: the same three measurements through two Ambit agents, and
//! the no-mesh baseline on the same cluster with the agents running.
//!
//! One two-node mesh holds two pairs of pods, client on node 0 and server on
//! node 1: `client`/`server` in the enrolled namespace `default` (their
//! traffic crosses both agents inside an HBONE tunnel) and
//! `plain-client`/`plain-server` in the unenrolled namespace `outside`
//! (their traffic is not captured: the physical path, measured under the
//! same conditions). The baseline pair is measured first, then the mesh
//! pair; the report puts both rows and the ratios side by side.

use std::path::Path;
use std::sync::Arc;

use ambit_tests::{Mesh, PodSpec};
use anyhow::Context;
use serde::Serialize;

use crate::Mode;
use crate::measure::{self, Settings};
use crate::report::Report;
use crate::scenario::Scenario;

/// Both rows and how the mesh compares.
#[derive(Debug, Serialize)]
struct Comparison {
    baseline: Report,
    mesh: Report,
    /// Mesh throughput as a fraction of the baseline's.
    throughput_ratio: f64,
    /// Microseconds the mesh adds to a round trip.
    added_p50_us: f64,
    added_p99_us: f64,
    /// Mesh connection rate as a fraction of the baseline's.
    connection_rate_ratio: f64,
}

pub fn run(settings: &Settings, json: Option<&Path>) -> anyhow::Result<()> {
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

    eprintln!("baseline: plain-client -> plain-server, not enrolled");
    let plain = Scenario::in_mesh(&mesh, "plain-client", "plain-server")?;
    let baseline = Report::new(
        Mode::Baseline,
        settings,
        &plain,
        measure::run_all(settings, &plain)?,
    );
    drop(plain);

    eprintln!("mesh: client -> server, enrolled, through both agents");
    let meshed = Scenario::in_mesh(&mesh, "client", "server")?;
    let through = Report::new(
        Mode::Mesh,
        settings,
        &meshed,
        measure::run_all(settings, &meshed)?,
    );
    drop(meshed);

    let comparison = Comparison {
        throughput_ratio: round3(through.throughput.gbit_per_s / baseline.throughput.gbit_per_s),
        added_p50_us: round3(through.latency.p50_us - baseline.latency.p50_us),
        added_p99_us: round3(through.latency.p99_us - baseline.latency.p99_us),
        connection_rate_ratio: round3(through.connections.per_s / baseline.connections.per_s),
        baseline,
        mesh: through,
    };
    let (base, meshed) = (comparison.baseline.markdown(), comparison.mesh.markdown());
    let line = |text: &str, n: usize| text.lines().nth(n).unwrap_or_default().to_owned();
    println!(
        "{}\n{}\n{}\n{}\n\n{}\nBoth rows on one cluster with both agents running; the baseline pods are \
         not enrolled. Mesh vs baseline: throughput {:.0}%, latency +{:.1} µs at p50 and +{:.1} µs \
         at p99, new connections/s {:.0}%.\n",
        line(&base, 0),
        line(&base, 1),
        line(&base, 2),
        line(&meshed, 2),
        line(&base, 4),
        comparison.throughput_ratio * 100.0,
        comparison.added_p50_us,
        comparison.added_p99_us,
        comparison.connection_rate_ratio * 100.0,
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

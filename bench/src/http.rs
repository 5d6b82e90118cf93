//! The `http` mode: HTTP/1.1 keep-alive requests with a 1 KiB body through
//! two agents on the L4 path and on the L7 path, beside the same requests
//! with no mesh, on one running mesh.
//!
//! Node 0 holds the clients, node 1 the servers (`ambit-testpod http`):
//! - `direct`: `plain-client` -> `plain-web`, both outside the mesh;
//! - `l4`: `client` -> `web-l4`, enrolled, no HTTP rule (bytes copied);
//! - `l7`: `client` -> `web-l7`, enrolled, selected by an ALLOW rule on
//!   `paths` behind a Service port named `http` (each request parsed and
//!   decided by node 1's agent).
//!
//! The rows are interleaved over rounds (a different row first each round),
//! and the L7 path is compared with the L4 path within each round. Each row
//! of a round has two phases on connections opened once and warmed up:
//! - *sequential*: one connection, one request after the other: p50 and p99
//!   latency, the "adds at most 40 µs" figure;
//! - *loaded*: `--http-connections` connections at once, each from its own
//!   thread: requests per second and per CPU-second of node 1's agent
//!   (`/proc/<pid>/stat`), what one agent CPU can carry. One request at a
//!   time measures mostly the cost of waking a sleeping agent per request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use ambit_tests::{Mesh, PodSpec, Process, bin_path};
use anyhow::{Context, bail};
use serde::Serialize;

const PORT: u16 = 8080;
const BODY: usize = 1024;
const WARMUP: usize = 500;

const DOCUMENTS: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web-l7, namespace: default}
spec:
  clusterIP: 10.96.0.30
  selector: {app: web-l7}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-l7, namespace: default}
spec:
  selector: {matchLabels: {app: web-l7}}
  rules: [{to: [{operation: {paths: [\"/*\"]}}]}]
";

/// One keep-alive exchange: a POST with `body`, the answer read in full.
fn exchange(conn: &mut BufReader<TcpStream>, request: &[u8]) -> anyhow::Result<()> {
    conn.get_mut().write_all(request)?;
    let mut length = None;
    let mut line = String::new();
    let mut status_seen = false;
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            bail!("connection closed mid-response");
        }
        if !status_seen {
            if !line.starts_with("HTTP/1.1 200") {
                bail!("unexpected status line {line:?}");
            }
            status_seen = true;
            continue;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = Some(v.trim().parse::<usize>()?);
        }
    }
    let mut body = vec![0; length.context("no content-length")?];
    conn.read_exact(&mut body)?;
    Ok(())
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// How the `http` mode runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long each phase of each row lasts in each round.
    pub seconds: Duration,
    pub rounds: usize,
    /// Keep-alive connections of the loaded phase, each sending requests
    /// one after the other from its own thread.
    pub connections: usize,
    pub agent_args: Vec<String>,
    pub agent_env: Vec<(String, String)>,
}

/// One phase of one row in one round.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub requests: usize,
    pub per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// CPU seconds node 1's agent used during the phase.
    pub agent_cpu_s: f64,
    /// Requests per CPU-second of node 1's agent (`NaN`, left out of the
    /// medians, for `direct`, which no agent carries).
    pub per_agent_cpu_s: f64,
}

/// One row measured in one round: one connection sending requests one
/// after the other (latency), then `connections` at once (capacity).
#[derive(Debug, Clone, Serialize)]
pub struct RoundRow {
    pub round: usize,
    pub row: &'static str,
    pub load_avg_1m: f64,
    pub sequential: Phase,
    pub loaded: Phase,
}

/// The figures of a round that are compared within it.
#[derive(Debug, Clone, Serialize)]
pub struct RoundGaps {
    pub round: usize,
    /// p50 the L4 path adds over direct, one request at a time.
    pub l4_p50_added_us: f64,
    /// p50 the L7 path adds over direct.
    pub l7_p50_added_us: f64,
    /// p50 the L7 path adds over the L4 path: the 40 µs target.
    pub l7_over_l4_p50_us: f64,
    /// L7's requests per agent CPU-second as a share of L4's, loaded.
    pub l7_cpu_efficiency_vs_l4: f64,
}

/// A row's connections, opened once and kept for every round.
struct Target {
    row: &'static str,
    addr: SocketAddr,
    sequential: BufReader<TcpStream>,
    loaded: Vec<BufReader<TcpStream>>,
}

fn request_bytes(server: SocketAddr) -> Vec<u8> {
    let mut request =
        format!("POST /bench HTTP/1.1\r\nHost: {server}\r\nContent-Length: {BODY}\r\n\r\n")
            .into_bytes();
    request.extend(std::iter::repeat_n(b'x', BODY));
    request
}

fn open(
    mesh: &Mesh,
    row: &'static str,
    client: &str,
    server: SocketAddr,
) -> anyhow::Result<BufReader<TcpStream>> {
    let tcp = mesh
        .pod(client)
        .netns()
        .connect(server)?
        .with_context(|| format!("{row}: connecting to {server}"))?;
    tcp.set_nodelay(true)?;
    let mut conn = BufReader::new(tcp);
    let request = request_bytes(server);
    for _ in 0..WARMUP {
        exchange(&mut conn, &request).with_context(|| format!("{row}: warm-up"))?;
    }
    Ok(conn)
}

/// Requests one after the other on `conn` until `until`; the latencies.
fn drive(
    conn: &mut BufReader<TcpStream>,
    request: &[u8],
    until: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::new();
    while Instant::now() < until {
        let t = Instant::now();
        exchange(conn, request)?;
        samples.push(t.elapsed());
    }
    Ok(samples)
}

fn phase(
    agent: u32,
    row: &'static str,
    seconds: Duration,
    work: impl FnOnce(Instant) -> anyhow::Result<Vec<Duration>>,
) -> anyhow::Result<Phase> {
    let cpu_before = crate::procstat::cpu_seconds(agent)?;
    let start = Instant::now();
    let mut samples = work(start + seconds)?;
    let elapsed = start.elapsed().as_secs_f64();
    let agent_cpu_s = crate::procstat::cpu_seconds(agent)? - cpu_before;
    samples.sort_unstable();
    let requests = samples.len();
    Ok(Phase {
        requests,
        per_s: requests as f64 / elapsed,
        p50_us: percentile(&samples, 0.5),
        p99_us: percentile(&samples, 0.99),
        agent_cpu_s,
        per_agent_cpu_s: if row != "direct" && agent_cpu_s > 0.0 {
            requests as f64 / agent_cpu_s
        } else {
            f64::NAN
        },
    })
}

fn measure(
    target: &mut Target,
    agent: u32,
    round: usize,
    seconds: Duration,
) -> anyhow::Result<RoundRow> {
    let row = target.row;
    let request = request_bytes(target.addr);
    let load_avg_1m = crate::rounds::load_avg();
    let sequential = phase(agent, row, seconds, |until| {
        drive(&mut target.sequential, &request, until).with_context(|| format!("{row}: request"))
    })?;
    let loaded = phase(agent, row, seconds, |until| {
        std::thread::scope(|s| {
            let workers: Vec<_> = target
                .loaded
                .iter_mut()
                .map(|conn| s.spawn(|| drive(conn, &request, until)))
                .collect();
            let mut all = Vec::new();
            for worker in workers {
                let samples = worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("{row}: a client thread panicked"))?
                    .with_context(|| format!("{row}: loaded request"))?;
                all.extend(samples);
            }
            Ok(all)
        })
    })?;
    Ok(RoundRow {
        round,
        row,
        load_avg_1m,
        sequential,
        loaded,
    })
}

fn serve(mesh: &Mesh, pod: &str) -> anyhow::Result<Process> {
    let p = mesh.pod(pod);
    let mut cmd = Command::new(bin_path("ambit-testpod")?);
    cmd.args(["http", "--listen", &p.addr(PORT).to_string()]);
    let mut process = p.netns().spawn(&cmd)?;
    process.wait_for_port(p.addr(PORT), Duration::from_secs(10))?;
    Ok(process)
}

/// The whole result, as printed in JSON.
#[derive(Debug, Serialize)]
pub struct HttpReport {
    pub rounds: Vec<RoundRow>,
    pub gaps: Vec<RoundGaps>,
    /// Per row: the median of each figure over rounds (`sequential.*`,
    /// `loaded.*`).
    pub medians: std::collections::BTreeMap<&'static str, std::collections::BTreeMap<String, f64>>,
    pub gap_medians: std::collections::BTreeMap<String, f64>,
}

fn gaps(round: usize, rows: &[RoundRow]) -> Option<RoundGaps> {
    let find = |name| rows.iter().find(|r| r.round == round && r.row == name);
    let (direct, l4, l7) = (find("direct")?, find("l4")?, find("l7")?);
    Some(RoundGaps {
        round,
        l4_p50_added_us: l4.sequential.p50_us - direct.sequential.p50_us,
        l7_p50_added_us: l7.sequential.p50_us - direct.sequential.p50_us,
        l7_over_l4_p50_us: l7.sequential.p50_us - l4.sequential.p50_us,
        l7_cpu_efficiency_vs_l4: l7.loaded.per_agent_cpu_s / l4.loaded.per_agent_cpu_s,
    })
}

/// The medians of a row's phases, keyed `sequential.<figure>` and
/// `loaded.<figure>`.
fn row_medians(rows: &[RoundRow], name: &str) -> std::collections::BTreeMap<String, f64> {
    let mine: Vec<&RoundRow> = rows.iter().filter(|r| r.row == name).collect();
    let mut out = std::collections::BTreeMap::new();
    for (prefix, phases) in [
        (
            "sequential",
            mine.iter().map(|r| &r.sequential).collect::<Vec<_>>(),
        ),
        ("loaded", mine.iter().map(|r| &r.loaded).collect::<Vec<_>>()),
    ] {
        for (k, v) in crate::rounds::medians_of(phases.into_iter()) {
            out.insert(format!("{prefix}.{k}"), v);
        }
    }
    out
}

/// Runs the three rows, interleaved over rounds, and prints a table and JSON.
pub fn run(settings: &Settings, json: Option<&std::path::Path>) -> anyhow::Result<()> {
    let pod = |name: &str, namespace: &str, node| {
        PodSpec::new(name)
            .namespace(namespace)
            .service_account(name)
            .label("app", name)
            .node(node)
    };
    let args: Vec<&str> = settings.agent_args.iter().map(String::as_str).collect();
    let builder = settings
        .agent_env
        .iter()
        .fold(Mesh::builder(), |b, (k, v)| b.agent_env(k, v));
    let mesh = builder
        .nodes(2)
        .agent_args(0, &args)
        .agent_args(1, &args)
        .namespace("default", true)
        .namespace("outside", false)
        .pod(pod("client", "default", 0))
        .pod(pod("plain-client", "outside", 0))
        .pod(pod("web-l4", "default", 1))
        .pod(pod("web-l7", "default", 1))
        .pod(pod("plain-web", "outside", 1))
        .document(DOCUMENTS)
        .build()
        .context("starting the mesh")?;
    let _servers = ["web-l4", "web-l7", "plain-web"]
        .into_iter()
        .map(|p| serve(&mesh, p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut targets = Vec::new();
    for (row, client, server) in [
        ("direct", "plain-client", "plain-web"),
        ("l4", "client", "web-l4"),
        ("l7", "client", "web-l7"),
    ] {
        let addr = mesh.pod(server).addr(PORT);
        let sequential = open(&mesh, row, client, addr)?;
        let loaded = (0..settings.connections)
            .map(|_| open(&mesh, row, client, addr))
            .collect::<anyhow::Result<Vec<_>>>()?;
        targets.push(Target {
            row,
            addr,
            sequential,
            loaded,
        });
    }
    let agent = mesh.agent(1).pid();
    let mut rows = Vec::new();
    for round in 0..settings.rounds {
        // A different row goes first each round, so none always follows
        // the same neighbour.
        for i in 0..targets.len() {
            let target = &mut targets[(i + round) % 3];
            let r = measure(target, agent, round, settings.seconds)?;
            eprintln!(
                "round {round} {}: p50 {:.1} µs, {:.0} req/s loaded, {:.0} per agent CPU-s",
                r.row, r.sequential.p50_us, r.loaded.per_s, r.loaded.per_agent_cpu_s
            );
            rows.push(r);
        }
    }
    let gaps: Vec<RoundGaps> = (0..settings.rounds)
        .filter_map(|r| gaps(r, &rows))
        .collect();
    let report = HttpReport {
        gap_medians: crate::rounds::medians_of(gaps.iter()),
        gaps,
        medians: ["direct", "l4", "l7"]
            .into_iter()
            .map(|name| (name, row_medians(&rows, name)))
            .collect(),
        rounds: rows,
    };
    print_table(&report, settings);
    let out = serde_json::to_string_pretty(&report)?;
    println!("{out}");
    if let Some(path) = json {
        std::fs::write(path, format!("{out}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn print_table(report: &HttpReport, settings: &Settings) {
    println!(
        "Medians over {} rounds; one connection for latency, {} for the loaded figures.\n",
        settings.rounds, settings.connections
    );
    println!(
        "| row | p50 µs | p99 µs | requests/s (one connection) | requests per agent CPU-s (one connection) | requests/s ({} connections) | requests per agent CPU-s ({} connections) |",
        settings.connections, settings.connections
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (row, m) in &report.medians {
        let get = |k: &str| m.get(k).map_or("-".to_owned(), |v| format!("{v:.0}"));
        println!(
            "| {row} | {} | {} | {} | {} | {} | {} |",
            get("sequential.p50_us"),
            get("sequential.p99_us"),
            get("sequential.per_s"),
            get("sequential.per_agent_cpu_s"),
            get("loaded.per_s"),
            get("loaded.per_agent_cpu_s"),
        );
    }
    let g = |k: &str| report.gap_medians.get(k).copied().unwrap_or(f64::NAN);
    println!(
        "\nMedians of per-round gaps: L7 adds {:.1} µs at p50 over L4 (L4 {:.1} over direct, L7 {:.1}); loaded, L7 handles {:.2}x L4's requests per agent CPU-second.",
        g("l7_over_l4_p50_us"),
        g("l4_p50_added_us"),
        g("l7_p50_added_us"),
        g("l7_cpu_efficiency_vs_l4"),
    );
}

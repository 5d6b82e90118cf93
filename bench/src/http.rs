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
//! Each row sends requests one after the other on one connection; it
//! reports requests per second, p50 and p99 latency, and the CPU time node
//! 1's agent spent (`/proc/<pid>/stat`), as requests per agent CPU-second.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
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

#[derive(Debug, Serialize)]
pub struct HttpRow {
    pub row: &'static str,
    pub requests: usize,
    pub per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// CPU seconds node 1's agent used during the row.
    pub agent_cpu_s: f64,
    /// Requests per CPU-second of node 1's agent (`null` for `direct`).
    pub per_agent_cpu_s: Option<f64>,
}

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

fn measure(
    mesh: &Mesh,
    row: &'static str,
    client: &str,
    server: SocketAddr,
    seconds: Duration,
) -> anyhow::Result<HttpRow> {
    let mut request =
        format!("POST /bench HTTP/1.1\r\nHost: {server}\r\nContent-Length: {BODY}\r\n\r\n")
            .into_bytes();
    request.extend(std::iter::repeat_n(b'x', BODY));
    let tcp = mesh
        .pod(client)
        .netns()
        .connect(server)?
        .with_context(|| format!("{row}: connecting to {server}"))?;
    tcp.set_nodelay(true)?;
    let mut conn = BufReader::new(tcp);
    for _ in 0..WARMUP {
        exchange(&mut conn, &request).with_context(|| format!("{row}: warm-up"))?;
    }
    let agent = mesh.agent(1).pid();
    let cpu_before = crate::procstat::cpu_seconds(agent)?;
    let start = Instant::now();
    let mut samples = Vec::new();
    while start.elapsed() < seconds {
        let t = Instant::now();
        exchange(&mut conn, &request).with_context(|| format!("{row}: request"))?;
        samples.push(t.elapsed());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let agent_cpu_s = crate::procstat::cpu_seconds(agent)? - cpu_before;
    samples.sort_unstable();
    let requests = samples.len();
    Ok(HttpRow {
        row,
        requests,
        per_s: requests as f64 / elapsed,
        p50_us: percentile(&samples, 0.5),
        p99_us: percentile(&samples, 0.99),
        agent_cpu_s,
        per_agent_cpu_s: (row != "direct" && agent_cpu_s > 0.0)
            .then(|| requests as f64 / agent_cpu_s),
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

/// Runs the three rows for `seconds` each and prints a table and JSON.
pub fn run(seconds: Duration, json: Option<&std::path::Path>) -> anyhow::Result<()> {
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
            .pod(pod("plain-client", "outside", 0))
            .pod(pod("web-l4", "default", 1))
            .pod(pod("web-l7", "default", 1))
            .pod(pod("plain-web", "outside", 1))
            .document(DOCUMENTS)
            .build()
            .context("starting the mesh")?,
    );
    let _servers = ["web-l4", "web-l7", "plain-web"]
        .into_iter()
        .map(|p| serve(&mesh, p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let at = |p: &str| mesh.pod(p).addr(PORT);
    let rows = vec![
        measure(&mesh, "direct", "plain-client", at("plain-web"), seconds)?,
        measure(&mesh, "l4", "client", at("web-l4"), seconds)?,
        measure(&mesh, "l7", "client", at("web-l7"), seconds)?,
    ];
    println!("| row | requests/s | p50 µs | p99 µs | agent CPU s | requests per agent CPU-s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.2} | {} |",
            r.row,
            r.per_s,
            r.p50_us,
            r.p99_us,
            r.agent_cpu_s,
            r.per_agent_cpu_s
                .map_or("-".to_owned(), |v| format!("{v:.0}"))
        );
    }
    if let (Some(l4), Some(l7)) = (rows.get(1), rows.get(2)) {
        println!("\nL7 adds {:.1} µs at p50 over L4.", l7.p50_us - l4.p50_us);
    }
    let out = serde_json::to_string_pretty(&rows)?;
    println!("{out}");
    if let Some(path) = json {
        std::fs::write(path, format!("{out}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

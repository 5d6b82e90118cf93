//! Agent memory with many idle connections open through the mesh.
//!
//! The client pod opens connections to a holding server in the server pod;
//! each is confirmed end to end (the server's one byte has come back through
//! both agents) before the agents' resident sets are read. The VM's hard
//! open-file limit is 20,000 per process and cannot be raised, so the load is
//! spread over processes: this process holds the client ends, a separate
//! `ambit-bench hold` process in the server pod holds the server ends, and each
//! agent holds one side of every connection plus its few HBONE connections.
//! Every process raises its soft limit to the hard one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use ambit_tests::{Netns, Process};
use anyhow::{Context, bail};
use serde::Serialize;

use crate::procstat::{self, Agents};

/// Threads opening the idle connections.
const OPENERS: usize = 8;
/// Time given to the agents to settle (timers, allocator) before reading RSS.
const SETTLE: Duration = Duration::from_secs(2);

/// The agents' memory with `connections` idle connections open.
#[derive(Debug, Serialize)]
pub struct IdleStep {
    pub connections: usize,
    /// Resident set of each agent (node 0, node 1), MiB.
    pub agent_rss_mib: Vec<f64>,
    /// Open descriptors of each agent.
    pub agent_fds: Vec<usize>,
    /// Seconds taken to open this step's new connections.
    pub open_seconds: f64,
}

/// The `hold` server: answers each connection with one byte and keeps it
/// open until the process is killed.
pub fn hold(listen: SocketAddr) -> anyhow::Result<()> {
    let limit = procstat::raise_nofile()?;
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    eprintln!("holding connections on {listen}, open-file limit {limit}");
    let mut held = Vec::new();
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                if stream.write_all(b"x").is_ok() {
                    held.push(stream);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // Out of descriptors: the client sees its connection fail.
            Err(e) => {
                eprintln!("accept: {e} ({} held)", held.len());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Starts `ambit-bench hold` in `server_netns` on `addr`.
pub fn start_holder(server_netns: &Netns, addr: SocketAddr) -> anyhow::Result<Process> {
    let exe = std::env::current_exe().context("finding this program")?;
    let mut cmd = Command::new(exe);
    cmd.arg("hold").arg("--listen").arg(addr.to_string());
    let mut process = server_netns.spawn(&cmd)?;
    process.wait_for_port(addr, Duration::from_secs(10))?;
    Ok(process)
}

/// Opens connections from `client` to `server` until `steps` (ascending
/// totals) are reached, reading the agents' memory at each step; the
/// connections are closed at the end.
pub fn measure(
    client: &Netns,
    server: SocketAddr,
    agents: &Agents,
    steps: &[usize],
) -> anyhow::Result<Vec<IdleStep>> {
    procstat::raise_nofile()?;
    let mut open: Vec<TcpStream> = Vec::new();
    let mut results = Vec::new();
    for &target in steps {
        let start = Instant::now();
        let wanted = target.saturating_sub(open.len());
        open.extend(open_many(client, server, wanted)?);
        let open_seconds = start.elapsed().as_secs_f64();
        std::thread::sleep(SETTLE);
        let step = IdleStep {
            connections: open.len(),
            agent_rss_mib: agents.rss_mib()?,
            agent_fds: agents
                .pids()
                .iter()
                .map(|&pid| procstat::open_fds(pid))
                .collect::<anyhow::Result<_>>()?,
            open_seconds: crate::report::round2(open_seconds),
        };
        eprintln!("idle: {step:?}");
        results.push(step);
    }
    drop(open);
    Ok(results)
}

/// Opens `n` connections, each confirmed by the server's byte.
fn open_many(client: &Netns, server: SocketAddr, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let per_thread = n.div_ceil(OPENERS);
    let opened = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..OPENERS)
            .map(|i| {
                let count = per_thread.min(n.saturating_sub(i * per_thread));
                scope.spawn(move || client.run(|| open_confirmed(server, count)))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| match t.join() {
                Ok(entered) => entered.context("entering the client pod")?,
                Err(_) => bail!("opener thread panicked"),
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    Ok(opened.into_iter().flatten().collect())
}

fn open_confirmed(server: SocketAddr, count: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(10))
            .with_context(|| format!("connection {} to {server}", streams.len()))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .with_context(|| format!("waiting for {server}'s byte"))?;
        streams.push(stream);
    }
    Ok(streams)
}

//! The measurements: bulk throughput, request/response latency over one
//! persistent connection, and new connections per second. Each is bounded
//! by a duration or a sample count and by socket timeouts, so a run always
//! ends by itself. Sockets are opened inside the client pod's namespace.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ambit_tests::Netns;
use ambit_tests::traffic::{self, Pattern};
use anyhow::{Context, bail, ensure};

use crate::parse_seconds;
use crate::procstat::{Agents, CpuTime};
use crate::scenario::Servers;

/// No single socket operation may take longer than this.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_CHUNK: usize = 256 * 1024;
const WARMUP_ROUNDS: usize = 500;

#[derive(clap::Args, Debug, Clone)]
pub struct Settings {
    /// Seconds of bulk transfer for the throughput figure.
    #[arg(long, global = true, env = "AMBIT_BENCH_THROUGHPUT_SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub throughput_seconds: Duration,
    /// Parallel TCP streams for the throughput figure.
    #[arg(long, global = true, env = "AMBIT_BENCH_STREAMS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub streams: u16,
    /// Round trips timed for the latency figures (after a warm-up).
    #[arg(long, global = true, env = "AMBIT_BENCH_RTT_SAMPLES", default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(100..=10_000_000))]
    pub rtt_samples: u32,
    /// Size of each request and response in the latency test.
    #[arg(long, global = true, env = "AMBIT_BENCH_MESSAGE_BYTES", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub message_bytes: u32,
    /// Seconds of opening connections for the connection-rate figure.
    #[arg(long, global = true, env = "AMBIT_BENCH_CONNECT_SECONDS", default_value = "3", value_parser = parse_seconds)]
    pub connect_seconds: Duration,
    /// Client threads opening connections in parallel. Each waits a round
    /// trip per connection, so it takes several to keep even the direct path
    /// busy (8 reach about 20,000/s on a 2-core VM).
    #[arg(long, global = true, env = "AMBIT_BENCH_CONNECT_WORKERS", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub connect_workers: u16,
}

#[derive(Debug, Clone)]
pub struct Results {
    pub throughput: Throughput,
    pub latency: Latency,
    pub connections: Connections,
    /// The agents' CPU seconds during each measurement (zero without agents).
    pub agent_cpu: PhaseCpu,
}

/// Agents' CPU time (all agents) per measurement.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseCpu {
    pub throughput: CpuTime,
    pub latency: CpuTime,
    pub connections: CpuTime,
}

#[derive(Debug, Clone)]
pub struct Throughput {
    pub bytes: u64,
    pub elapsed: Duration,
}

#[derive(Debug, Clone)]
pub struct Latency {
    /// Sorted round-trip times.
    pub samples: Vec<Duration>,
}

#[derive(Debug, Clone)]
pub struct Connections {
    pub completed: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

/// Runs the three measurements from `netns` against `servers`, charging each
/// with the CPU time `agents` spent meanwhile.
pub fn run_all(
    settings: &Settings,
    netns: &Netns,
    servers: &Servers,
    agents: Option<&Agents>,
) -> anyhow::Result<Results> {
    let cpu = || agents.map_or(Ok(CpuTime::default()), Agents::cpu_time);
    let cpu_start = cpu()?;
    eprintln!(
        "throughput: {:?}, {} stream(s)",
        settings.throughput_seconds, settings.streams
    );
    let throughput = throughput(netns, servers.count, settings)?;
    let cpu_throughput = cpu()?;
    eprintln!(
        "latency: {} round trips of {} bytes",
        settings.rtt_samples, settings.message_bytes
    );
    let latency = latency(netns, servers.echo, settings)?;
    let cpu_latency = cpu()?;
    eprintln!(
        "connection rate: {:?}, {} worker(s)",
        settings.connect_seconds, settings.connect_workers
    );
    let connections = connection_rate(netns, servers.close, settings)?;
    let cpu_connections = cpu()?;
    Ok(Results {
        throughput,
        latency,
        connections,
        agent_cpu: PhaseCpu {
            throughput: cpu_throughput - cpu_start,
            latency: cpu_latency - cpu_throughput,
            connections: cpu_connections - cpu_latency,
        },
    })
}

fn connect(netns: &Netns, addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = netns
        .run(|| TcpStream::connect_timeout(&addr, IO_TIMEOUT))?
        .with_context(|| format!("connecting to {addr} from {}", netns.name()))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Streams write a fixed buffer for the configured time, half-close, and
/// wait for the server's byte count, which must equal what they sent: the
/// elapsed time ends when the last byte has arrived, not when it was queued.
fn throughput(netns: &Netns, addr: SocketAddr, settings: &Settings) -> anyhow::Result<Throughput> {
    let mut buf = vec![0u8; WRITE_CHUNK];
    Pattern::new(1).fill(&mut buf);
    let streams = (0..settings.streams)
        .map(|_| connect(netns, addr))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let start = Instant::now();
    let deadline = start + settings.throughput_seconds;
    let totals = std::thread::scope(|scope| {
        let workers: Vec<_> = streams
            .into_iter()
            .map(|mut stream| {
                let buf = &buf;
                scope.spawn(move || -> anyhow::Result<u64> {
                    let mut sent = 0u64;
                    while Instant::now() < deadline {
                        stream.write_all(buf)?;
                        sent += buf.len() as u64;
                    }
                    stream.shutdown(Shutdown::Write)?;
                    let report = traffic::read_report(stream)?;
                    ensure!(
                        report.bytes == sent,
                        "server counted {} of {sent} bytes",
                        report.bytes
                    );
                    Ok(sent)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| bail!("stream thread panicked")))
            .collect::<anyhow::Result<Vec<u64>>>()
    })?;
    Ok(Throughput {
        bytes: totals.iter().sum(),
        elapsed: start.elapsed(),
    })
}

/// One persistent connection with Nagle off; each sample is one request
/// written and the same number of bytes read back.
fn latency(netns: &Netns, addr: SocketAddr, settings: &Settings) -> anyhow::Result<Latency> {
    let mut stream = connect(netns, addr)?;
    stream.set_nodelay(true)?;
    let mut request = vec![0u8; settings.message_bytes as usize];
    Pattern::new(2).fill(&mut request);
    let mut response = vec![0u8; request.len()];
    let rounds = WARMUP_ROUNDS + settings.rtt_samples as usize;
    let mut samples = Vec::with_capacity(settings.rtt_samples as usize);
    for round in 0..rounds {
        let start = Instant::now();
        stream.write_all(&request)?;
        stream.read_exact(&mut response)?;
        let rtt = start.elapsed();
        ensure!(response == request, "echo returned different bytes");
        if round >= WARMUP_ROUNDS {
            samples.push(rtt);
        }
    }
    samples.sort_unstable();
    Ok(Latency { samples })
}

/// Workers open a connection, read the server's one byte to EOF (the server
/// closes first, so TIME_WAIT lands on the server and the client's ephemeral
/// ports are not exhausted), and repeat until time is up. Blocking sockets on
/// several OS threads: the client must not be what limits the rate.
fn connection_rate(
    netns: &Netns,
    addr: SocketAddr,
    settings: &Settings,
) -> anyhow::Result<Connections> {
    let completed = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let start = Instant::now();
    let deadline = start + settings.connect_seconds;
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..settings.connect_workers)
            .map(|_| {
                scope.spawn(|| {
                    netns.run(|| {
                        let mut answer = [0u8; 16];
                        while Instant::now() < deadline {
                            let done = TcpStream::connect(addr).and_then(|mut s| {
                                s.set_read_timeout(Some(IO_TIMEOUT))?;
                                read_to_eof(&mut s, &mut answer)
                            });
                            match done {
                                Ok(n) if n > 0 => completed.fetch_add(1, Ordering::Relaxed),
                                _ => failed.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                    })
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| match w.join() {
            Ok(entered) => entered.context("entering the client pod"),
            Err(_) => bail!("connect worker panicked"),
        })
    })?;
    let elapsed = start.elapsed();
    let (completed, failed) = (completed.into_inner(), failed.into_inner());
    ensure!(
        completed > 0,
        "no connection to {addr} succeeded ({failed} failed)"
    );
    Ok(Connections {
        completed,
        failed,
        elapsed,
    })
}

/// Reads until EOF into a small fixed buffer (no allocation per
/// connection); returns the byte count.
fn read_to_eof(stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        match stream.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

impl Throughput {
    pub fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e9
    }
}

impl Latency {
    /// Nearest-rank percentile, `q` in `0.0..=1.0`, in microseconds.
    pub fn percentile_us(&self, q: f64) -> f64 {
        let n = self.samples.len();
        if n == 0 {
            return f64::NAN;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        self.samples[rank - 1].as_secs_f64() * 1e6
    }

    pub fn mean_us(&self) -> f64 {
        let total: Duration = self.samples.iter().sum();
        total.as_secs_f64() * 1e6 / self.samples.len().max(1) as f64
    }
}

impl Connections {
    pub fn per_s(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let latency = Latency {
            samples: (1..=100).map(Duration::from_micros).collect(),
        };
        assert_eq!(latency.percentile_us(0.5), 50.0);
        assert_eq!(latency.percentile_us(0.99), 99.0);
        assert_eq!(latency.percentile_us(1.0), 100.0);
        assert!((latency.mean_us() - 50.5).abs() < 1e-9);
    }
}

//! HBONE over loopback: bulk throughput of one tunnel (against plain TCP as the
//! baseline) and the rate of new tunnels, pooled (one stream each) and unpooled
//! (one TLS handshake each). Run with `cargo bench -p ambit-agent --bench hbone`.

// A benchmark's setup failing is a broken run; unwrap freely.
#![allow(clippy::unwrap_used)]

// Shared with the integration tests, which use more of it.
#[allow(dead_code)]
#[path = "../tests/hbone/certs.rs"]
mod certs;
#[path = "../tests/hbone/pod.rs"]
mod pod;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_agent::hbone::client::{ClientSettings, Connection};
use ambit_agent::hbone::{
    ConnectRequest, InboundHandler, InboundRequest, PlainConnector, Pool, PoolSettings, Refusal,
    Server, ServerSettings, TlsConfigs, Transfer, Upstream,
};
use ambit_agent::identity::WorkloadCertificate;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The agent binary's allocator, so the figures are the agent's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Handler(Arc<WorkloadCertificate>);

impl InboundHandler for Handler {
    type Connection = ();

    async fn server_certificate(&self, _: IpAddr) -> Option<Arc<WorkloadCertificate>> {
        Some(self.0.clone())
    }

    async fn handle(&self, request: &InboundRequest) -> Result<Upstream<()>, Refusal> {
        pod::dial(request.target).await
    }

    fn closed(&self, _: (), _: Transfer) {}
}

/// Reads everything, then answers with the byte count (8 bytes, big endian).
async fn sink_pod() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0u64;
                loop {
                    let n = socket.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                socket.write_all(&total.to_be_bytes()).await.unwrap();
            });
        }
    });
    addr
}

/// Echoes every byte back, one request at a time.
async fn echo_pod() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                loop {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => socket.write_all(&buf[..n]).await.unwrap(),
                    }
                }
            });
        }
    });
    addr
}

/// p50 and p99 of 1-byte request/response round trips.
async fn round_trips<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> (Duration, Duration) {
    let mut samples = Vec::with_capacity(10_000);
    let mut byte = [7u8];
    for _ in 0..10_000 {
        let start = Instant::now();
        stream.write_all(&byte).await.unwrap();
        stream.read_exact(&mut byte).await.unwrap();
        samples.push(start.elapsed());
    }
    samples.sort();
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

async fn push<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, bytes: u64) -> Duration {
    let chunk = vec![0x5au8; bytes.min(256 * 1024) as usize];
    let start = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min((bytes - sent) as usize);
        stream.write_all(&chunk[..n]).await.unwrap();
        sent += n as u64;
    }
    stream.shutdown().await.unwrap();
    let mut answer = [0u8; 8];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(u64::from_be_bytes(answer), sent);
    start.elapsed()
}

/// User + system CPU time of this process so far: the cost measure that does
/// not depend on what else the machine is running.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let ca = certs::TestCa::new("cluster.local");
    let server_cert = ca.issue("default", "analyzer");
    let source = ca.issue("default", "sleep");
    let tls = Arc::new(TlsConfigs::new(ca.bundle()).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hbone = listener.local_addr().unwrap();
    let (_drain, watcher) = ambit_agent::drain::channel();
    let server = Server::new(
        tls.clone(),
        Arc::new(Handler(server_cert.clone())),
        ServerSettings::default(),
    );
    tokio::spawn(server.serve(listener, watcher));
    let pod = sink_pod().await;
    let request = ConnectRequest {
        source,
        destination: server_cert.identity.clone(),
        hbone_addr: hbone,
        target: pod,
        client: "127.0.0.1:1".parse().unwrap(),
        service_host: None,
        baggage: None,
    };

    const BULK: u64 = 1024 * 1024 * 1024;
    let cpu = cpu_time();
    let direct = push(TcpStream::connect(pod).await.unwrap(), BULK).await;
    let direct_cpu = cpu_time() - cpu;
    println!(
        "direct TCP:            {:8.0} MiB/s, {:6.0} MiB per CPU-second",
        mib_per_s(BULK, direct),
        mib_per_s(BULK, direct_cpu)
    );
    let connection =
        Connection::connect(&PlainConnector, &tls, &request, &ClientSettings::default())
            .await
            .unwrap();
    let tunnel = connection.open(pod, request.client, None).await.unwrap();
    let cpu = cpu_time();
    let tunnelled = push(tunnel, BULK).await;
    let tunnelled_cpu = cpu_time() - cpu;
    println!(
        "HBONE one tunnel:      {:8.0} MiB/s, {:6.0} MiB per CPU-second ({:.0}% of direct by time)",
        mib_per_s(BULK, tunnelled),
        mib_per_s(BULK, tunnelled_cpu),
        100.0 * direct.as_secs_f64() / tunnelled.as_secs_f64()
    );

    let echo = echo_pod().await;
    let direct_socket = TcpStream::connect(echo).await.unwrap();
    direct_socket.set_nodelay(true).unwrap();
    let (p50, p99) = round_trips(direct_socket).await;
    println!("direct TCP round trip:  p50 {p50:?}, p99 {p99:?}");
    let tunnel = connection.open(echo, request.client, None).await.unwrap();
    let (p50, p99) = round_trips(tunnel).await;
    println!("HBONE round trip:       p50 {p50:?}, p99 {p99:?}");

    // New tunnels: each sends 1 KiB and waits for the pod's answer.
    let pool = Pool::new(PlainConnector, tls.clone(), PoolSettings::default());
    let rate = |n: usize, elapsed: Duration| n as f64 / elapsed.as_secs_f64();
    const SEQUENTIAL: usize = 5_000;
    let (start, cpu) = (Instant::now(), cpu_time());
    for _ in 0..SEQUENTIAL {
        push(pool.connect(request.clone()).await.unwrap(), 1024).await;
    }
    println!(
        "pooled, sequential:    {:8.0} tunnels/s, {:4.0} µs CPU each (both ends and the pod)",
        rate(SEQUENTIAL, start.elapsed()),
        (cpu_time() - cpu).as_secs_f64() * 1e6 / SEQUENTIAL as f64
    );
    const CONCURRENT: usize = 16;
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let (pool, request) = (pool.clone(), request.clone());
            tokio::spawn(async move {
                for _ in 0..SEQUENTIAL / CONCURRENT {
                    push(pool.connect(request.clone()).await.unwrap(), 1024).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let done = SEQUENTIAL / CONCURRENT * CONCURRENT;
    println!(
        "pooled, {CONCURRENT} at a time:  {:8.0} tunnels/s",
        rate(done, start.elapsed())
    );
    const HANDSHAKES: usize = 500;
    let (start, cpu) = (Instant::now(), cpu_time());
    for _ in 0..HANDSHAKES {
        let connection =
            Connection::connect(&PlainConnector, &tls, &request, &ClientSettings::default())
                .await
                .unwrap();
        push(
            connection.open(pod, request.client, None).await.unwrap(),
            1024,
        )
        .await;
        connection.close();
    }
    println!(
        "unpooled (handshake):  {:8.0} tunnels/s, {:4.0} µs CPU each",
        rate(HANDSHAKES, start.elapsed()),
        (cpu_time() - cpu).as_secs_f64() * 1e6 / HANDSHAKES as f64
    );
}

//! The mesh under heavy and hostile load (issue 14), end to end on a
//! namespace cluster with real agents started under real descriptor limits:
//!
//! - many concurrent plain and HBONE connections through agents started
//!   with a soft open-file limit of 1024, every byte checksummed;
//! - an agent whose hard limit is 1024 refuses connections past its budget
//!   within 100 ms while the ones it carries keep flowing and readiness
//!   keeps answering;
//! - a flood of idle, never-authenticating connections to 15008 from one
//!   pod leaves another pod's mesh traffic working, is refused by the
//!   per-source cap and counted, and the agent stays small;
//! - idle HBONE connections are closed after the configured timeout, by the
//!   server and by the client pool;
//! - a connection to a closed port is reset within 100 ms: of an enrolled
//!   pod on another node (HBONE), of a pod outside the mesh (plain path), of
//!   an enrolled pod on the same node, and from outside the mesh (15006).
//!
//! The heavy tests take turns (one lock): on a small machine they would
//! otherwise measure each other. Clients and servers are tokio tasks in the
//! test process, entered into the pods' namespaces.

// Fixture code outside #[test] fns: a failure there is a broken test setup.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambit_tests::mesh::{Mesh, MeshBuilder, MeshPod, PodSpec, READINESS_PORT, Samples, http};
use ambit_tests::require_e2e;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ECHO_PORT: u16 = 7000;
const REFUSED: &str = "ambit_connections_refused_total";
/// A refusal must reach the application this fast.
const FAST: Duration = Duration::from_millis(100);

/// One heavy test at a time.
static HEAVY: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// client, neighbour (node 0) and server (node 1) enrolled; plain (node 1)
/// and attacker (node 0) outside the mesh.
fn layout() -> MeshBuilder {
    Mesh::builder()
        .nodes(2)
        .namespace("default", true)
        .namespace("outside", false)
        .pod(PodSpec::new("client").service_account("client").node(0))
        .pod(PodSpec::new("server").service_account("server").node(1))
        .pod(PodSpec::new("plain").namespace("outside").node(1))
        .pod(PodSpec::new("attacker").namespace("outside").node(0))
        .pod(
            PodSpec::new("neighbour")
                .service_account("neighbour")
                .node(0),
        )
}

/// An echo server in `pod`, on its own runtime (dropping it stops it).
fn echo_server(pod: &MeshPod, port: u16) -> tokio::runtime::Runtime {
    let listener = pod.netns().bind(pod.addr(port)).unwrap().unwrap();
    listener.set_nonblocking(true).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.spawn(async move {
        let listener = TcpListener::from_std(listener).unwrap();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    rt
}

/// Runs `make()`'s future on a runtime whose thread is inside `pod`'s
/// namespace, so every socket it opens is the pod's.
fn in_pod<T, F, Fut>(pod: &MeshPod, make: F) -> T
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
{
    pod.netns()
        .run(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(make())
        })
        .unwrap()
}

/// Bytes for connection `seed`: different for every connection, so a
/// crossed or corrupted stream shows.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `data` and reads the echo back; an error says what the client saw.
async fn echo_round(stream: &mut TcpStream, data: &[u8]) -> Result<(), String> {
    let (mut r, mut w) = stream.split();
    let send = w.write_all(data);
    let mut back = vec![0u8; data.len()];
    let recv = r.read_exact(&mut back);
    let (sent, got) = tokio::join!(send, recv);
    sent.map_err(|e| format!("write: {e}"))?;
    got.map_err(|e| format!("read: {e}"))?;
    if back != data {
        return Err("echo differs from what was sent".into());
    }
    Ok(())
}

/// Connects and waits for the first sign of life or death within `wait`:
/// `Ok` if `data` came back, `Err((what, after))` if the connection failed.
async fn probe(
    to: SocketAddr,
    data: &[u8],
    wait: Duration,
) -> Result<TcpStream, (String, Duration)> {
    let start = Instant::now();
    let mut stream = match tokio::time::timeout(wait, TcpStream::connect(to)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err((format!("connect: {e}"), start.elapsed())),
        Err(_) => return Err(("connect timed out".into(), start.elapsed())),
    };
    match tokio::time::timeout(wait, echo_round(&mut stream, data)).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(e)) => Err((e, start.elapsed())),
        Err(_) => Err(("no answer".into(), start.elapsed())),
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn refused(samples: &Samples, listener: &str, reason: &str) -> f64 {
    samples.sum(REFUSED, &[("listener", listener), ("reason", reason)])
}

fn ready(mesh: &Mesh, node: usize) -> Result<u16, String> {
    let n = mesh.cluster().node(node);
    let addr = SocketAddr::new(n.fabric_ip.into(), READINESS_PORT);
    http::get(&n.netns, addr, "/healthz/ready")
        .map(|r| r.status)
        .map_err(|e| e.to_string())
}

/// Opens `count` connections to `to` (at most `parallel` connecting at
/// once), each echoing its own pattern twice: once while all the others are
/// being opened, once after every one of them is open. Returns the failures.
async fn hold_many(
    to: SocketAddr,
    count: usize,
    parallel: usize,
    seed: u64,
) -> (Vec<String>, Vec<TcpStream>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let gate = gate.clone();
        tasks.spawn(async move {
            let data = pattern(seed + i as u64, 16 * 1024);
            let _permit = gate.acquire().await;
            probe(to, &data, Duration::from_secs(20))
                .await
                .map(|s| (s, data))
                .map_err(|(e, _)| e)
        });
    }
    let (mut failures, mut open) = (Vec::new(), Vec::new());
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            Ok(ok) => open.push(ok),
            Err(e) => failures.push(e),
        }
    }
    // Every connection is open now: all of them carry bytes once more.
    let mut tasks = tokio::task::JoinSet::new();
    for (mut stream, data) in open {
        tasks.spawn(async move {
            let again: Vec<u8> = data.iter().rev().copied().collect();
            echo_round(&mut stream, &again).await.map(|()| stream)
        });
    }
    let mut streams = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            Ok(s) => streams.push(s),
            Err(e) => failures.push(format!("second round: {e}")),
        }
    }
    (failures, streams)
}

#[test]
fn soft_limit_1024_carries_thousands_of_plain_and_hbone_connections() {
    if !require_e2e() {
        return;
    }
    let _turn = turn();
    // Well past the old breaking point (167 plain connections at 1024).
    const EACH: usize = 4000;
    // 65536 as the issue asks, or the highest hard limit this process may
    // give (raising a hard limit needs CAP_SYS_RESOURCE).
    let (_, own_hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let hard = own_hard.min(65536);
    let mesh = layout()
        .agent_nofile(0, 1024, hard)
        .agent_nofile(1, 1024, hard)
        .build()
        .unwrap();
    let _servers = [
        echo_server(mesh.pod("server"), ECHO_PORT),
        echo_server(mesh.pod("plain"), ECHO_PORT),
    ];
    let log = mesh.agent(0).log();
    assert!(
        log.contains("open-file limit") && log.contains(&format!("\"soft\":{hard}")),
        "the agent did not raise its soft limit:\n{log}"
    );
    let (mesh_dst, plain_dst) = (
        mesh.pod("server").addr(ECHO_PORT),
        mesh.pod("plain").addr(ECHO_PORT),
    );
    let agent = mesh.agent(0).pid();
    let started = Instant::now();
    let (failures, held, fds) = in_pod(mesh.pod("client"), || async move {
        let (plain, hbone) = tokio::join!(
            hold_many(plain_dst, EACH, 200, 1),
            hold_many(mesh_dst, EACH, 200, 1_000_000),
        );
        let fds = open_fds(agent);
        let failures: Vec<String> = plain.0.into_iter().chain(hbone.0).collect();
        (failures, plain.1.len() + hbone.1.len(), fds)
    });
    assert!(
        failures.is_empty(),
        "{} of {} connections failed, e.g. {:?}",
        failures.len(),
        2 * EACH,
        &failures[..failures.len().min(5)]
    );
    assert_eq!(held, 2 * EACH);
    // The plain path alone needs two sockets per connection: more than the
    // soft limit the agent was started with.
    assert!(fds > 1024, "agent 0 held only {fds} descriptors");
    eprintln!(
        "{} connections, agent 0 at {fds} descriptors, {:?}",
        2 * EACH,
        started.elapsed()
    );
}

#[test]
fn hard_limit_1024_refuses_past_the_budget_fast_and_keeps_serving() {
    if !require_e2e() {
        return;
    }
    let _turn = turn();
    const TRIES: usize = 700;
    let mesh = layout().agent_nofile(0, 1024, 1024).build().unwrap();
    let _server = echo_server(mesh.pod("plain"), ECHO_PORT);
    let to = mesh.pod("plain").addr(ECHO_PORT);
    let mesh = &mesh;
    let (carried, refusals, at_budget) = in_pod(mesh.pod("client"), || async move {
        let (mut held, mut refusals) = (Vec::new(), Vec::new());
        // One at a time: each refusal is timed on its own. An agent that
        // stalls instead of refusing fails the test, not hangs it.
        let started = Instant::now();
        for i in 0..TRIES {
            if started.elapsed() > Duration::from_secs(20) {
                refusals.push(("gave up: the agent stalls".into(), started.elapsed()));
                break;
            }
            let data = pattern(i as u64, 1024);
            match probe(to, &data, Duration::from_secs(2)).await {
                Ok(stream) => held.push((stream, data)),
                Err(refusal) => refusals.push(refusal),
            }
        }
        // At the budget: readiness and metrics answer...
        let ready = ready(mesh, 0);
        let samples = mesh.metrics(0).map_err(|e| e.to_string());
        // ...and every held connection still carries bytes.
        let mut failures = Vec::new();
        for (stream, data) in &mut held {
            if let Err(e) = echo_round(stream, data).await {
                failures.push(e);
            }
        }
        let carried = held.len();
        drop(held);
        // Closed: the budget is back and new connections work.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = probe(to, b"again", Duration::from_secs(5))
            .await
            .map(|_| ());
        (carried, refusals, (ready, samples, failures, again))
    });
    let (ready, samples, failures, again) = at_budget;
    assert!(
        carried >= 300,
        "only {carried} connections were carried before refusals began"
    );
    assert!(!refusals.is_empty(), "all {TRIES} connections were carried");
    let slowest = refusals.iter().map(|(_, after)| *after).max().unwrap();
    assert!(
        slowest <= FAST,
        "a refusal took {slowest:?}: {:?}",
        refusals.iter().max_by_key(|r| r.1)
    );
    assert_eq!(ready, Ok(200), "readiness at the budget");
    let counted = samples.unwrap().sum(REFUSED, &[("reason", "descriptors")]);
    assert!(
        counted >= refusals.len() as f64,
        "{} refusals seen, {counted} counted",
        refusals.len()
    );
    assert!(
        failures.is_empty(),
        "held connections failed at the budget: {failures:?}"
    );
    assert!(
        again.is_ok(),
        "no new connection after the held ones closed: {again:?}"
    );
    eprintln!(
        "carried {carried} connections, refused {} (slowest {slowest:?})",
        refusals.len()
    );
}

/// The `pct` percentile of `samples`.
fn percentile(samples: &mut [Duration], pct: usize) -> Duration {
    samples.sort();
    samples[(samples.len() * pct / 100).min(samples.len() - 1)]
}

#[test]
fn unauthenticated_flood_on_15008_is_capped_and_others_keep_flowing() {
    if !require_e2e() {
        return;
    }
    let _turn = turn();
    const FLOOD: usize = 15_000;
    const PER_SOURCE: &str = "50";
    const ROUNDS: usize = 300;
    let mesh = layout()
        .agent_args(1, &["--max-pending-handshakes-per-source", PER_SOURCE])
        .build()
        .unwrap();
    let _server = echo_server(mesh.pod("server"), ECHO_PORT);
    let to = mesh.pod("server").addr(ECHO_PORT);
    let hbone = mesh.pod("server").addr(15008);
    // Round trips of new mesh connections from another pod.
    let measure = |rounds: usize| {
        in_pod(mesh.pod("client"), || async move {
            let mut times = Vec::new();
            let mut failures = Vec::new();
            for i in 0..rounds {
                let start = Instant::now();
                match probe(to, &pattern(i as u64, 1024), Duration::from_secs(5)).await {
                    Ok(_) => times.push(start.elapsed()),
                    Err((e, _)) => failures.push(e),
                }
            }
            (times, failures)
        })
    };
    let (mut quiet, failures) = measure(ROUNDS);
    assert!(failures.is_empty(), "quiet: {failures:?}");
    let quiet_p50 = percentile(&mut quiet, 50);
    let quiet = percentile(&mut quiet, 99);

    let stop = Arc::new(AtomicBool::new(false));
    let flooding = Arc::new(AtomicBool::new(false));
    let attacker = mesh.pod("attacker").netns().clone();
    let flood = {
        let (stop, flooding) = (stop.clone(), flooding.clone());
        std::thread::spawn(move || {
            attacker
                .run(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap()
                        .block_on(async {
                            // Idle connections, never a byte: FLOOD of them,
                            // then new ones in place of the oldest while the
                            // other pod measures.
                            let mut held = std::collections::VecDeque::new();
                            let mut opened = 0usize;
                            while !stop.load(Ordering::Relaxed) {
                                let burst = if held.len() < FLOOD { 500 } else { 5 };
                                for _ in 0..burst {
                                    let connect = TcpStream::connect(hbone);
                                    if let Ok(Ok(s)) =
                                        tokio::time::timeout(Duration::from_secs(1), connect).await
                                    {
                                        held.push_back(s);
                                        opened += 1;
                                    }
                                }
                                while held.len() > FLOOD {
                                    held.pop_front();
                                }
                                if held.len() >= FLOOD {
                                    flooding.store(true, Ordering::Relaxed);
                                }
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            opened
                        })
                })
                .unwrap()
        })
    };
    let agent = mesh.agent(1).pid();
    let flooded = wait_for(Duration::from_secs(30), || flooding.load(Ordering::Relaxed));
    assert!(
        flooded.is_some(),
        "the flood never reached {FLOOD} connections"
    );
    let (mut loaded, failures) = measure(ROUNDS);
    let rss = rss_kib(agent);
    stop.store(true, Ordering::Relaxed);
    let opened = flood.join().unwrap();
    assert!(
        opened >= FLOOD,
        "the flood opened only {opened} connections"
    );
    assert!(failures.is_empty(), "under the flood: {failures:?}");
    let loaded_p50 = percentile(&mut loaded, 50);
    let loaded = percentile(&mut loaded, 99);
    eprintln!(
        "round trip p50/p99 quiet {quiet_p50:?}/{quiet:?}, under a flood of {opened}: \
         {loaded_p50:?}/{loaded:?}; agent RSS {rss} KiB"
    );
    // Twice the quiet value, with a floor for a shared machine's scheduling noise.
    assert!(
        loaded <= (quiet * 2).max(quiet + Duration::from_millis(20)),
        "p99 round trip {loaded:?} under the flood, {quiet:?} quiet"
    );
    assert!(rss < 64 * 1024, "agent RSS {rss} KiB under the flood");
    let samples = mesh.metrics(1).unwrap();
    let capped = refused(&samples, "hbone", "pending_per_source");
    assert!(
        capped >= (opened - 200) as f64,
        "only {capped} flood connections counted as refused"
    );
}

/// Established TCP connections in `netns` matching the `ss` filter.
fn established(netns: &ambit_tests::netns::Netns, filter: &str) -> usize {
    let out = netns
        .exec(
            "sh",
            ["-c", &format!("ss -Htn state established '{filter}'")],
        )
        .unwrap_or_default();
    out.lines().filter(|l| !l.trim().is_empty()).count()
}

/// Waits up to `timeout` for `check`; returns how long it took.
fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn idle_tunnels_close_on_both_sides_and_closed_ports_reset_fast() {
    if !require_e2e() {
        return;
    }
    // Node 1 closes idle tunnels after 2 s, as server and as client; node
    // 0 keeps them (defaults), so each side's timeout is seen alone.
    let mesh = layout()
        .agent_args(
            1,
            &[
                "--hbone-idle-timeout",
                "2s",
                "--hbone-pool-idle-timeout",
                "2s",
            ],
        )
        .build()
        .unwrap();
    let _servers = [
        echo_server(mesh.pod("server"), ECHO_PORT),
        echo_server(mesh.pod("client"), ECHO_PORT),
    ];
    let (client, server) = (mesh.pod("client"), mesh.pod("server"));
    let (node0, node1) = (&mesh.cluster().node(0).netns, &mesh.cluster().node(1).netns);

    // Fast refusals first, while no tunnel is pooled: a closed port of an
    // enrolled pod on the other node (HBONE, answered 503), of a pod
    // outside the mesh (plain path), of an enrolled pod on the same node
    // (in process), and of an enrolled pod from outside the mesh (15006).
    for (what, from, to) in [
        ("mesh", client, server.addr(9)),
        ("plain", client, mesh.pod("plain").addr(9)),
        ("same node", client, mesh.pod("neighbour").addr(9)),
        ("into the mesh", mesh.pod("attacker"), server.addr(9)),
    ] {
        let outcome = in_pod(from, || async move {
            probe(to, b"x", Duration::from_secs(15)).await.map(|_| ())
        });
        let (how, after) = outcome.expect_err("a closed port answered");
        eprintln!("{what}: closed port answered after {after:?} ({how})");
        assert!(after <= FAST, "{what}: reset after {after:?} ({how})");
    }
    // Let the tunnel the refusal used expire (node 1's server closes it).
    std::thread::sleep(Duration::from_secs(3));

    // Server side: node 0's pool would keep the tunnel, node 1's server closes it.
    let tunnel_to = |pod: &MeshPod| format!("dst {}:15008", pod.ip());
    let tunnel_at = |pod: &MeshPod| format!("src {}:15008", pod.ip());
    let to = server.addr(ECHO_PORT);
    assert!(in_pod(client, || async move {
        probe(to, b"hello", Duration::from_secs(5)).await.is_ok()
    }));
    assert_eq!(
        established(node0, &tunnel_to(server)),
        1,
        "no pooled tunnel on node 0"
    );
    let start = Instant::now();
    let gone = wait_for(Duration::from_secs(10), || {
        established(node0, &tunnel_to(server)) == 0 && established(node1, &tunnel_at(server)) == 0
    });
    let gone = gone.unwrap_or_else(|| panic!("the idle tunnel to node 1 still open after 10 s"));
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "closed before the timeout: {gone:?}"
    );
    eprintln!("idle tunnel closed {gone:?} after the first look");

    // Client side: node 1's pool closes its idle tunnel to node 0, whose
    // server would keep it.
    let to = client.addr(ECHO_PORT);
    assert!(in_pod(server, || async move {
        probe(to, b"hello", Duration::from_secs(5)).await.is_ok()
    }));
    assert_eq!(
        established(node1, &tunnel_to(client)),
        1,
        "no pooled tunnel on node 1"
    );
    let start = Instant::now();
    let gone = wait_for(Duration::from_secs(10), || {
        established(node1, &tunnel_to(client)) == 0 && established(node0, &tunnel_at(client)) == 0
    });
    let gone = gone.unwrap_or_else(|| panic!("the idle tunnel to node 0 still open after 10 s"));
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "closed before the timeout: {gone:?}"
    );
    eprintln!("idle tunnel closed {gone:?} after the first look");
}

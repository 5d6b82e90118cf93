//! The agent's lifecycle end to end, on a two-node namespace cluster with
//! the real CA, real agents and real iptables: upgrades that hand the
//! listeners over without failing a connection, long-lived connections that
//! outlive their agent, a SIGTERM that closes the capture instead of opening
//! it (checked with tcpdump on the fabric), a kill -9 after which service is
//! back within a second, and a drain deadline that resets rather than closes.
//!
//! Layout: node0 holds `client` and `local` (enrolled) and `outsider`
//! (unenrolled); node1 holds `server` (enrolled) and `plain` (unenrolled).
//! Every pod runs an echo server on 8080.

// Fixture code outside #[test] fns: a failure there is a broken test setup.
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ambit_tests::mesh::probe::{self, Outcome};
use ambit_tests::mesh::{Mesh, MeshPod, PodSpec};
use ambit_tests::require_e2e;
use ambit_tests::traffic::{Server, ServerKind};
use nix::sys::signal::Signal;

const ECHO: u16 = 8080;

struct Cluster {
    // Servers stop before the mesh is torn down.
    servers: Vec<Server>,
    mesh: Mesh,
}

impl Cluster {
    fn start() -> Self {
        let mesh = Mesh::builder()
            .nodes(2)
            .namespace("default", true)
            .namespace("outside", false)
            .pod(PodSpec::new("client").service_account("client").node(0))
            .pod(PodSpec::new("local").service_account("local").node(0))
            .pod(PodSpec::new("outsider").namespace("outside").node(0))
            .pod(PodSpec::new("server").service_account("server").node(1))
            .pod(PodSpec::new("plain").namespace("outside").node(1))
            .build()
            .unwrap_or_else(|e| panic!("starting the mesh: {e}"));
        let servers = ["client", "local", "outsider", "server", "plain"]
            .iter()
            .map(|name| {
                let pod = mesh.pod(name);
                Server::start(pod.netns(), pod.addr(ECHO), ServerKind::Echo).unwrap()
            })
            .collect();
        Self { servers, mesh }
    }

    fn pod(&self, name: &str) -> &MeshPod {
        self.mesh.pod(name)
    }

    fn served(&self, name: &str) -> usize {
        let index = ["client", "local", "outsider", "server", "plain"]
            .iter()
            .position(|n| *n == name)
            .unwrap();
        self.servers[index].served().len()
    }
}

/// A long-lived connection sending a numbered message every 100 ms and
/// checking that each comes back whole and in order.
struct Chatter {
    name: String,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<u64, String>>,
}

const MESSAGE: usize = 64;

impl Chatter {
    fn open(name: &str, from: &MeshPod, to: SocketAddr) -> Self {
        let stream = from
            .netns()
            .connect(to)
            .unwrap()
            .unwrap_or_else(|e| panic!("{name}: connect {to}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let label = name.to_owned();
        let thread =
            std::thread::spawn(move || chat(stream, &flag).map_err(|e| format!("{label}: {e}")));
        Self {
            name: name.to_owned(),
            stop,
            thread,
        }
    }

    /// Ends the conversation cleanly; the number of messages echoed, or
    /// how it broke.
    fn finish(self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(format!("{} panicked", self.name)))
    }
}

fn message(seq: u64) -> [u8; MESSAGE] {
    let mut out = [0u8; MESSAGE];
    for (i, b) in out.iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
    out[..8].copy_from_slice(&seq.to_be_bytes());
    out
}

fn chat(mut stream: TcpStream, stop: &AtomicBool) -> std::io::Result<u64> {
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let sent = message(seq);
        stream.write_all(&sent)?;
        let mut back = [0u8; MESSAGE];
        stream.read_exact(&mut back)?;
        if back != sent {
            return Err(std::io::Error::new(
                ErrorKind::InvalidData,
                format!("message {seq} came back altered"),
            ));
        }
        seq += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    stream.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest)?;
    if !rest.is_empty() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "unexpected bytes",
        ));
    }
    Ok(seq)
}

/// New connections at a steady rate, each echoing a short payload.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    done: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Load {
    /// `per_second` connections a second from `from` to each of `targets`.
    fn start(from: &MeshPod, targets: &[SocketAddr], per_second: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let interval = Duration::from_secs(1) / per_second;
        let threads = targets
            .iter()
            .map(|&to| {
                let (from, stop, done, failures) =
                    (from.clone(), stop.clone(), done.clone(), failures.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    let start = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let payload = probe::payload(&format!("load-{to}-{n}"), 256);
                        match probe::echo(&from, to, &payload) {
                            Outcome::Allowed => {}
                            refused => failures
                                .lock()
                                .unwrap()
                                .push(format!("{to} #{n} at {:?}: {refused:?}", start.elapsed())),
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                        n += 1;
                        // A steady rate, not "as fast as the last one allows".
                        let next = interval * n as u32;
                        if let Some(wait) = next.checked_sub(start.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            threads,
            done,
            failures,
        }
    }

    /// Stops and returns (connections made, failures).
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.done.load(Ordering::Relaxed), failures)
    }
}

#[test]
fn upgrades_of_either_agent_fail_no_connection_and_cut_no_long_lived_one() {
    if !require_e2e() {
        return;
    }
    let mut mesh_owner = Cluster::start();
    let (client, local, server, plain) = (
        mesh_owner.pod("client").clone(),
        mesh_owner.pod("local").clone(),
        mesh_owner.pod("server").clone(),
        mesh_owner.pod("plain").clone(),
    );
    let mut chatters = Vec::new();
    for i in 0..3 {
        chatters.push(Chatter::open(
            &format!("plain#{i}"),
            &client,
            plain.addr(ECHO),
        ));
        chatters.push(Chatter::open(
            &format!("hbone->#{i}"),
            &client,
            server.addr(ECHO),
        ));
        chatters.push(Chatter::open(
            &format!("hbone<-#{i}"),
            &server,
            client.addr(ECHO),
        ));
    }
    chatters.push(Chatter::open("same-node", &client, local.addr(ECHO)));
    // 50 new connections a second through node0's agent, half of them mesh
    // (to node1's agent as well), half plain.
    let load = Load::start(&client, &[server.addr(ECHO), plain.addr(ECHO)], 25);

    let mut took = Vec::new();
    for round in 0..10 {
        let node = round % 2;
        let elapsed = mesh_owner
            .mesh
            .upgrade_agent(node)
            .unwrap_or_else(|e| panic!("upgrade {round} of node{node}: {e}"));
        took.push(elapsed);
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (made, failures) = load.finish();
    eprintln!("handover times: {took:?}; {made} connections during the upgrades");
    assert!(made >= 100, "the load loop made only {made} connections");
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Every long-lived connection is still there, every message intact,
    // although every agent that carried it has been replaced.
    for chatter in chatters {
        let name = chatter.name.clone();
        let echoed = chatter.finish().unwrap_or_else(|e| panic!("{e}"));
        assert!(echoed >= 20, "{name}: only {echoed} messages");
    }
    // With their connections ended, the retired agents exit by themselves.
    for agent in mesh_owner.mesh.retired_agents() {
        let status = agent.wait_exit(Duration::from_secs(10)).unwrap();
        assert!(
            status.is_some_and(|s| s.success()),
            "{} still running or failed: {status:?}",
            agent.label()
        );
    }
}

#[test]
fn plain_connections_move_to_the_new_agent_so_the_old_one_exits_at_once() {
    if !require_e2e() {
        return;
    }
    let mut mesh_owner = Cluster::start();
    let (client, outsider, server, plain) = (
        mesh_owner.pod("client").clone(),
        mesh_owner.pod("outsider").clone(),
        mesh_owner.pod("server").clone(),
        mesh_owner.pod("plain").clone(),
    );
    // Spliced pairs only: outbound through node0's agent (15001), inbound
    // plaintext through node1's (15006).
    let mut chatters = Vec::new();
    for i in 0..3 {
        chatters.push(Chatter::open(
            &format!("outbound#{i}"),
            &client,
            plain.addr(ECHO),
        ));
        chatters.push(Chatter::open(
            &format!("inbound#{i}"),
            &outsider,
            server.addr(ECHO),
        ));
    }
    std::thread::sleep(Duration::from_millis(300));

    for round in 0..6 {
        let node = round % 2;
        mesh_owner
            .mesh
            .upgrade_agent(node)
            .unwrap_or_else(|e| panic!("upgrade {round} of node{node}: {e}"));
        // Nothing left to carry: the replaced agent exits within moments,
        // not when the connections end.
        let retired = mesh_owner.mesh.retired_agents().last_mut().unwrap();
        let status = retired.wait_exit(Duration::from_secs(8)).unwrap();
        assert!(
            status.is_some_and(|s| s.success()),
            "round {round}: the replaced agent on node{node} still runs: {status:?}\n{}",
            retired.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Every message of every connection came back whole and in order,
    // through six processes.
    for chatter in chatters {
        let name = chatter.name.clone();
        let echoed = chatter.finish().unwrap_or_else(|e| panic!("{e}"));
        assert!(echoed >= 20, "{name}: only {echoed} messages");
    }
}

#[test]
fn sigterm_closes_the_capture_on_both_sides_and_nothing_leaves_in_plaintext() {
    if !require_e2e() {
        return;
    }
    let mut c = Cluster::start();
    let (client, server, plain, outsider) = (
        c.pod("client").clone(),
        c.pod("server").clone(),
        c.pod("plain").clone(),
        c.pod("outsider").clone(),
    );
    assert!(probe::echo(&client, server.addr(ECHO), b"warm-up").allowed());

    // The client's agent stops for good: its pods' connections are refused
    // at once, to mesh and non-mesh destinations alike, and nothing of them
    // reaches the fabric.
    c.mesh.signal_agent(0, Signal::SIGTERM);
    c.mesh.wait_log(0, "capture closed").unwrap();
    let wire = c.mesh.capture_fabric().unwrap();
    let before = (c.served("server"), c.served("plain"));
    const MARKER: &str = "AMBIT-MARKER-after-sigterm-3b7c1d";
    for n in 0..50 {
        for to in [server.addr(ECHO), plain.addr(ECHO)] {
            let outcome = probe::echo(&client, to, &probe::payload(&format!("{MARKER}-{n}"), 512));
            let Outcome::Refused { how, after } = outcome else {
                panic!("connection {n} to {to} got through with no agent serving");
            };
            assert!(how.starts_with("connect"), "{to}: {how}");
            assert!(
                after < Duration::from_millis(100),
                "{to}: refused after {after:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let recording = wire.stop().unwrap();
    assert!(
        !recording.contains(MARKER.as_bytes()),
        "plaintext on the fabric"
    );
    let from_client = recording
        .count(&format!("src host {} and not dst port 15008", client.ip()))
        .unwrap();
    assert_eq!(from_client, 0, "{}", recording.summary("tcp").unwrap());
    assert_eq!((c.served("server"), c.served("plain")), before);

    // The server's agent stops too: a client outside the mesh is refused
    // at the server's node, not let through to the enrolled pod.
    c.mesh.signal_agent(1, Signal::SIGTERM);
    c.mesh.wait_log(1, "capture closed").unwrap();
    for _ in 0..10 {
        let outcome = probe::echo(&outsider, server.addr(ECHO), b"let me in");
        let Outcome::Refused { after, .. } = outcome else {
            panic!("an unenrolled pod reached the enrolled server with no agent serving");
        };
        assert!(
            after < Duration::from_millis(100),
            "refused after {after:?}"
        );
    }
    assert_eq!(c.served("server"), before.0);

    // A new agent on each node serves again.
    c.mesh.start_agent(0).unwrap();
    c.mesh.start_agent(1).unwrap();
    assert!(probe::echo(&client, server.addr(ECHO), b"back").allowed());
}

#[test]
fn after_kill_9_a_new_agent_serves_within_a_second() {
    if !require_e2e() {
        return;
    }
    let mut c = Cluster::start();
    let (client, server, plain) = (
        c.pod("client").clone(),
        c.pod("server").clone(),
        c.pod("plain").clone(),
    );
    assert!(probe::echo(&client, server.addr(ECHO), b"warm-up").allowed());
    for round in 0..3 {
        c.mesh.signal_agent(0, Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        c.mesh
            .start_agent_nowait(0)
            .unwrap_or_else(|e| panic!("restart {round}: {e}"));
        // A fresh connection per try: the first that succeeds is service back.
        let mut back = None;
        while started.elapsed() < Duration::from_secs(5) {
            // Short tries: a SYN that met no listener is only retried by the
            // kernel a second later, which would hide when service returned.
            let quick = |to: SocketAddr| {
                client
                    .netns()
                    .run(move || TcpStream::connect_timeout(&to, Duration::from_millis(100)))
                    .is_ok_and(|r| r.is_ok())
            };
            if quick(plain.addr(ECHO))
                && probe::echo(&client, server.addr(ECHO), b"again").allowed()
            {
                back = Some(started.elapsed());
                break;
            }
        }
        let back = back.unwrap_or_else(|| panic!("round {round}: no service within 5 s"));
        eprintln!("round {round}: service back {back:?} after the restart");
        assert!(back < Duration::from_secs(1), "round {round}: {back:?}");
    }
}

#[test]
fn a_connection_cut_at_the_drain_deadline_is_reset_not_closed() {
    if !require_e2e() {
        return;
    }
    let mut c = Cluster::start();
    let (client, server, plain) = (
        c.pod("client").clone(),
        c.pod("server").clone(),
        c.pod("plain").clone(),
    );
    c.mesh
        .upgrade_agent_with(0, &["--drain-timeout-ms", "1500"])
        .unwrap();
    let chatters = [
        Chatter::open("plain", &client, plain.addr(ECHO)),
        Chatter::open("hbone", &client, server.addr(ECHO)),
    ];
    std::thread::sleep(Duration::from_millis(300));
    c.mesh.signal_agent(0, Signal::SIGTERM);
    let started = Instant::now();
    for chatter in chatters {
        let name = chatter.name.clone();
        let thread = chatter.thread;
        let result = thread.join().unwrap();
        let error = result.expect_err("the connection outlived the deadline");
        assert!(
            error.contains("reset") || error.contains("Connection reset"),
            "{name}: ended by {error}, not a reset"
        );
        // Kept through the drain, cut right after the deadline.
        let at = started.elapsed();
        assert!(
            at >= Duration::from_millis(1400),
            "{name}: cut after {at:?}"
        );
        assert!(at < Duration::from_secs(5), "{name}: cut after {at:?}");
    }
}

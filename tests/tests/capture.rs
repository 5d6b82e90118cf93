//! Traffic capture and the plain TCP path on the namespace cluster, with the
//! real `ambit-agent` binary running in a node namespace and real iptables
//! rules: what is captured (and what is not), that bytes and client IPs
//! arrive as without the agent, that enrolment changes in the state file
//! take effect live, and that the rules are installed, repaired and removed
//! cleanly.
//!
//! Layout used by every test: 2 nodes x 2 pods, the agent on node 0.
//! Namespace `mesh` is enrolled (`istio.io/dataplane-mode=ambient`), `plain`
//! is not; which pod sits in which namespace is per test.

// The helpers below are test code as much as the #[test] functions (clippy's
// allow-unwrap-in-tests only sees the latter): a failed setup step should
// fail the test on the spot.
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ambit_tests::traffic::{self, Server, ServerKind};
use ambit_tests::{Cluster, Pod, Process, bin_path, require_e2e};
use serde_json::Value;

const MB: u64 = 1 << 20;

fn addr(pod: &Pod, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(pod.ip), port)
}

fn cluster() -> Cluster {
    Cluster::builder()
        .nodes(2)
        .pods_per_node(2)
        .build()
        .unwrap()
}

/// One pod in the state file: which namespace, and an optional pod label
/// `istio.io/dataplane-mode` value (`none` opts out).
struct PodState<'a> {
    pod: &'a Pod,
    namespace: &'a str,
    mode: Option<&'a str>,
}

fn pod_state<'a>(pod: &'a Pod, namespace: &'a str) -> PodState<'a> {
    PodState {
        pod,
        namespace,
        mode: None,
    }
}

/// Kubernetes-shaped state: namespaces `mesh` (labelled when `mesh_enrolled`)
/// and `plain`, and the given pods, each on `node<i>`.
fn state_yaml(mesh_enrolled: bool, pods: &[PodState<'_>]) -> String {
    let mesh_labels = if mesh_enrolled {
        "\n  labels:\n    istio.io/dataplane-mode: ambient"
    } else {
        ""
    };
    let mut out = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh{mesh_labels}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata:\n  name: plain\n"
    );
    for p in pods {
        let labels = p.mode.map_or_else(String::new, |m| {
            format!("\n  labels:\n    istio.io/dataplane-mode: {m}")
        });
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  \
             uid: uid-{name}{labels}\nspec:\n  nodeName: node{node}\n  serviceAccountName: default\n\
             status:\n  podIP: {ip}\n",
            name = format!("n{}-{}", p.pod.node, p.pod.name),
            ns = p.namespace,
            node = p.pod.node,
            ip = p.pod.ip,
        ));
    }
    out
}

/// Replaces the state file the way tools do: write aside, rename over.
fn write_state(path: &Path, yaml: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Agent {
    process: Process,
    node: ambit_tests::Node,
}

/// Mesh credentials for an agent that never reaches a CA: these tests cover the
/// plain path only, which must work while workload certificates are pending.
fn no_ca_credentials() -> &'static Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ambit-capture-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args([
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=unused root",
            ])
            .arg("-keyout")
            .arg(dir.join("root-key.pem"))
            .arg("-out")
            .arg(dir.join("root-cert.pem"))
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "openssl could not make a test root");
        std::fs::write(dir.join("token"), "unused-bootstrap-token").unwrap();
        dir
    })
}

fn agent_command(node: &ambit_tests::Node, state: &Path, extra: &[&str]) -> Command {
    let creds = no_ca_credentials();
    let mut cmd = Command::new(bin_path("ambit-agent").unwrap());
    cmd.args(["run", "--node", &node.name, "--state"])
        .arg(state)
        .args(["--log", "info", "--log-format", "json"])
        .arg("--trust-bundle")
        .arg(creds.join("root-cert.pem"))
        .arg("--token-file")
        .arg(creds.join("token"))
        .args(["--ca-address", "127.0.0.1:1"])
        .arg("--run-dir")
        .arg(
            std::env::temp_dir()
                .join("ambit-tests")
                .join(format!("{}-run", node.netns.name())),
        )
        .args(extra);
    cmd
}

/// Starts the agent on `node` and waits until its capture rules are in place
/// (it is never "ready": no CA answers, so workload certificates stay pending).
fn start_agent(cluster: &Cluster, node: usize, state: &Path, extra: &[&str]) -> Agent {
    let node = cluster.node(node).clone();
    let process = node
        .netns
        .spawn(&agent_command(&node, state, extra))
        .unwrap();
    let mut agent = Agent { process, node };
    agent.wait_log("capture installed", 1);
    agent
}

impl Agent {
    /// The agent's log events (it runs with `--log-format json`).
    fn events(&self) -> Vec<Value> {
        self.process
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    }

    /// Waits until at least `times` events carry the message `message`.
    fn wait_log(&mut self, message: &str, times: usize) {
        let start = Instant::now();
        loop {
            let seen = self
                .events()
                .iter()
                .filter(|e| e["message"] == message)
                .count();
            if seen >= times {
                return;
            }
            if let Ok(Some(status)) = self.process.try_wait() {
                panic!("agent exited ({status}):\n{}", self.process.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no {message:?} x{times} in agent log:\n{}",
                self.process.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until `n` connections from `client` were logged (the record is
    /// written when the agent closes its side, just after the client's).
    fn wait_access(&self, client: &Pod, n: usize) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let lines = self.access_lines(client);
            if lines.len() >= n || start.elapsed() > Duration::from_secs(5) {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Access-log lines (target `access`, fields flattened) of connections from `client`.
    fn access_lines(&self, client: &Pod) -> Vec<Value> {
        let src = format!("{}:", client.ip);
        self.events()
            .into_iter()
            .filter(|e| e["target"] == "access")
            .filter(|e| e["src.addr"].as_str().is_some_and(|s| s.starts_with(&src)))
            .collect()
    }
}

fn mangle(node: &ambit_tests::Node, save: &str) -> String {
    node.netns.exec(save, ["-t", "mangle"]).unwrap()
}

fn ip_rules(node: &ambit_tests::Node) -> String {
    node.netns.exec("ip", ["-4", "rule", "show"]).unwrap()
}

/// Polls until `check(iptables-save output)` holds.
fn wait_rules(node: &ambit_tests::Node, what: &str, check: impl Fn(&str) -> bool) {
    let start = Instant::now();
    loop {
        let text = mangle(node, "iptables-save");
        if check(&text) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "rules never reached: {what}\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pod_chain(pod: &Pod) -> String {
    format!("AMBIT-POD-{:08x}", u32::from(pod.ip))
}

fn connect(from: &Pod, to: SocketAddr) -> TcpStream {
    let stream = from
        .netns
        .connect(to)
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("{} -> {to}: {e}", from.name));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// The client address `server` (a peer server) reports for a connection from `from`.
fn seen_client(from: &Pod, server: SocketAddr) -> IpAddr {
    traffic::ask_peer(connect(from, server)).unwrap().ip()
}

/// Connects from `client` to the peer server `peer`, which must see the client's own address.
#[track_caller]
fn assert_sees_client(peer: &Server, client: &Pod) {
    assert_eq!(
        seen_client(client, peer.local_addr()),
        IpAddr::V4(client.ip)
    );
}

struct Setup {
    cluster: Cluster,
    _dir: tempfile::TempDir,
    state: PathBuf,
}

/// The usual layout: pod0 of node 0 in the enrolled namespace, pod0 of node 1 outside it.
fn enrolled_client_plain_server() -> Setup {
    setup(|c| client_and_plain_server(c, true))
}

/// Pod 0 of node 0 in namespace `mesh` (enrolled or not), pod 0 of node 1
/// in `plain`.
fn client_and_plain_server(c: &Cluster, mesh_enrolled: bool) -> String {
    state_yaml(
        mesh_enrolled,
        &[
            pod_state(c.pod(0, 0), "mesh"),
            pod_state(c.pod(1, 0), "plain"),
        ],
    )
}

fn setup(state: impl Fn(&Cluster) -> String) -> Setup {
    let cluster = cluster();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.yaml");
    write_state(&path, &state(&cluster));
    Setup {
        cluster,
        _dir: dir,
        state: path,
    }
}

#[test]
fn enrolled_pod_to_remote_non_mesh_pod_is_captured_and_delivered_intact() {
    if !require_e2e() {
        return;
    }
    let s = enrolled_client_plain_server();
    let (client, server) = (s.cluster.pod(0, 0), s.cluster.pod(1, 0));
    let mut agent = start_agent(&s.cluster, 0, &s.state, &[]);
    let rules = mangle(&agent.node, "iptables-save");
    assert!(rules.contains(&pod_chain(client)), "{rules}");

    let sink = Server::start(&server.netns, addr(server, 9000), ServerKind::Sink).unwrap();
    let peer = Server::start(&server.netns, addr(server, 9001), ServerKind::Peer).unwrap();
    let exchange = traffic::send_to_sink(connect(client, sink.local_addr()), 8 * MB, 7).unwrap();
    assert_eq!(exchange.sent.bytes, 8 * MB);
    assert_eq!(exchange.received, exchange.sent);
    assert_sees_client(&peer, client);
    assert_eq!(sink.served()[0].peer.ip(), IpAddr::V4(client.ip));

    agent.wait_log("connection closed", 2);
    let lines = agent.access_lines(client);
    let to_sink = lines
        .iter()
        .find(|l| l["dst.addr"] == sink.local_addr().to_string())
        .unwrap_or_else(|| panic!("no access line for the sink: {lines:?}"));
    // Reported by the client's side, carried as plain TCP; the request bytes
    // are what the agent received from the client (Istio's naming).
    assert_eq!(to_sink["reporter"], "source", "{to_sink}");
    assert_eq!(to_sink["security"], "none", "{to_sink}");
    assert_eq!(to_sink["bytes_received"], 8 * MB, "{to_sink}");
    assert_eq!(to_sink["status"], "closed", "{to_sink}");
    assert_eq!(to_sink["src.workload"], "mesh/n0-pod0", "{to_sink}");
}

#[test]
fn unenrolled_and_opted_out_pods_are_not_captured() {
    if !require_e2e() {
        return;
    }
    let s = setup(|c| {
        state_yaml(
            true,
            &[
                pod_state(c.pod(0, 0), "plain"),
                PodState {
                    pod: c.pod(0, 1),
                    namespace: "mesh",
                    mode: Some("none"),
                },
                pod_state(c.pod(1, 0), "plain"),
            ],
        )
    });
    let server = s.cluster.pod(1, 0);
    let agent = start_agent(&s.cluster, 0, &s.state, &[]);
    let peer = Server::start(&server.netns, addr(server, 9001), ServerKind::Peer).unwrap();
    for client in [s.cluster.pod(0, 0), s.cluster.pod(0, 1)] {
        assert_eq!(
            seen_client(client, peer.local_addr()),
            IpAddr::V4(client.ip)
        );
        assert!(agent.access_lines(client).is_empty(), "{}", client.name);
        let rules = mangle(&agent.node, "iptables-save");
        assert!(!rules.contains(&client.ip.to_string()), "{rules}");
    }
    // The base is installed all the same: capture is on, these pods are out.
    assert!(mangle(&agent.node, "iptables-save").contains("AMBIT-PREROUTING"));
}

#[test]
fn labelling_and_unlabelling_the_namespace_starts_and_stops_capture_live() {
    if !require_e2e() {
        return;
    }
    let pods = client_and_plain_server;
    let s = setup(|c| pods(c, false));
    let (client, server) = (s.cluster.pod(0, 0), s.cluster.pod(1, 0));
    let agent = start_agent(&s.cluster, 0, &s.state, &[]);
    let peer = Server::start(&server.netns, addr(server, 9001), ServerKind::Peer).unwrap();
    let chain = pod_chain(client);

    seen_client(client, peer.local_addr());
    assert!(agent.access_lines(client).is_empty());

    write_state(&s.state, &pods(&s.cluster, true));
    wait_rules(&agent.node, "pod chain added", |t| t.contains(&chain));
    assert_sees_client(&peer, client);
    assert_eq!(agent.wait_access(client, 1).len(), 1);

    write_state(&s.state, &pods(&s.cluster, false));
    wait_rules(&agent.node, "pod chain removed", |t| !t.contains(&chain));
    assert_sees_client(&peer, client);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        agent.access_lines(client).len(),
        1,
        "captured after unlabelling"
    );
}

/// Sends a few messages on `stream` and checks each comes back whole.
fn converse(stream: &mut TcpStream, what: &str) {
    for n in 0..5u8 {
        let message = [n.wrapping_mul(7); 100];
        stream
            .write_all(&message)
            .unwrap_or_else(|e| panic!("{what}: write {n}: {e}"));
        let mut back = [0u8; 100];
        stream
            .read_exact(&mut back)
            .unwrap_or_else(|e| panic!("{what}: read {n}: {e}"));
        assert_eq!(back, message, "{what}: message {n}");
    }
}

#[test]
fn enrolling_and_unenrolling_spare_the_connections_already_open() {
    if !require_e2e() {
        return;
    }
    let pods = client_and_plain_server;
    let s = setup(|c| pods(c, false));
    let (client, server) = (s.cluster.pod(0, 0), s.cluster.pod(1, 0));
    let agent = start_agent(&s.cluster, 0, &s.state, &[]);
    let echo = Server::start(&server.netns, addr(server, 9002), ServerKind::Echo).unwrap();
    let chain = pod_chain(client);

    // Opened before enrolment: direct, and it stays direct.
    let mut early = connect(client, echo.local_addr());
    converse(&mut early, "before enrolment");
    write_state(&s.state, &pods(&s.cluster, true));
    wait_rules(&agent.node, "pod chain added", |t| t.contains(&chain));
    converse(&mut early, "opened before enrolment, after it");

    // Opened while enrolled: captured, and it stays with the agent.
    let mut captured = connect(client, echo.local_addr());
    converse(&mut captured, "captured");
    write_state(&s.state, &pods(&s.cluster, false));
    wait_rules(&agent.node, "pod chain removed", |t| !t.contains(&chain));
    converse(&mut captured, "captured, after unenrolment");
    converse(&mut early, "opened before enrolment, after unenrolment");

    drop((early, captured));
    // Only the connection opened while enrolled went through the agent.
    let lines = agent.wait_access(client, 1);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(agent.access_lines(client).len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], "closed", "{lines:?}");
}

/// What a client observes in each edge case, comparable with and without
/// the agent.
#[derive(Debug, PartialEq, Eq)]
struct EdgeCases {
    /// The server's answer after the client half-closed.
    half_close_answer: Vec<u8>,
    /// The client's half-close reached the server as EOF (it read all of it).
    server_saw_request: Vec<u8>,
    /// The client's read after the server reset.
    server_reset: ErrorKind,
    /// The server's read after the client reset.
    client_reset: ErrorKind,
    /// The connection to a closed port failed quickly, with no data.
    refused_quickly: bool,
}

fn edge_cases(client: &Pod, server: &Pod, port: u16) -> EdgeCases {
    let listener = server.netns.bind(addr(server, port)).unwrap().unwrap();
    // Half-close: read the request to EOF, then answer and close.
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut req = Vec::new();
        s.read_to_end(&mut req).unwrap();
        s.write_all(b"answer after your FIN").unwrap();
        drop(s);
        // Server reset, once the client is surely connected (a reset
        // racing the handshake would fail the client's connect instead).
        let (mut s, _) = listener.accept().unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
        // Client reset: report what the server's read saw.
        let (mut s, _) = listener.accept().unwrap();
        let mut one = [0u8; 4];
        s.read_exact(&mut one).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let client_reset = s
            .read(&mut one)
            .map(|_| ErrorKind::Other)
            .unwrap_or_else(|e| e.kind());
        (req, client_reset)
    });

    let to = addr(server, port);
    let mut c = connect(client, to);
    c.write_all(b"request").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).unwrap();

    let mut c = connect(client, to);
    c.write_all(b"x").unwrap();
    let mut buf = [0u8; 8];
    let server_reset = c
        .read(&mut buf)
        .map(|_| ErrorKind::Other)
        .unwrap_or_else(|e| e.kind());

    let c = connect(client, to);
    (&c).write_all(b"ping").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    let (server_saw_request, client_reset) = handle.join().unwrap();

    // Nothing listens on port+1: without the agent connect() is refused;
    // through it the connection is accepted by the agent and then reset.
    // A blocking connect(), which returns once the handshake is done: the
    // timed connect polls and then reads SO_ERROR, so an agent that resets
    // within a millisecond showed its reset as a failed connect instead.
    let closed = addr(server, port + 1);
    let start = Instant::now();
    let refused = match client.netns.run(|| TcpStream::connect(closed)).unwrap() {
        Err(e) => e.kind() == ErrorKind::ConnectionRefused,
        Ok(mut c) => {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            matches!(c.read(&mut buf), Err(e) if e.kind() == ErrorKind::ConnectionReset)
        }
    };
    EdgeCases {
        half_close_answer: answer,
        server_saw_request,
        server_reset,
        client_reset,
        // Well under the agent's 10 s connect timeout: the refusal was relayed,
        // not waited out (the margin absorbs a heavily loaded CI machine).
        refused_quickly: refused && start.elapsed() < Duration::from_secs(4),
    }
}

#[test]
fn half_close_reset_and_refused_behave_as_without_the_agent() {
    if !require_e2e() {
        return;
    }
    let s = setup(|c| {
        state_yaml(
            true,
            &[
                pod_state(c.pod(0, 0), "mesh"),
                pod_state(c.pod(0, 1), "plain"),
                pod_state(c.pod(1, 0), "plain"),
            ],
        )
    });
    let server = s.cluster.pod(1, 0);
    let mut agent = start_agent(&s.cluster, 0, &s.state, &[]);
    let direct = edge_cases(s.cluster.pod(0, 1), server, 9100);
    let captured = edge_cases(s.cluster.pod(0, 0), server, 9200);
    assert_eq!(direct.half_close_answer, b"answer after your FIN");
    assert_eq!(direct.server_saw_request, b"request");
    assert_eq!(direct.server_reset, ErrorKind::ConnectionReset);
    assert_eq!(direct.client_reset, ErrorKind::ConnectionReset);
    assert!(direct.refused_quickly);
    assert_eq!(captured, direct);
    // They really went through the agent: half-close, reset, reset, refused.
    agent.wait_log("connection closed", 4);
    let lines = agent.access_lines(s.cluster.pod(0, 0));
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(agent.access_lines(s.cluster.pod(0, 1)).is_empty());
    let statuses: Vec<&str> = lines.iter().filter_map(|l| l["status"].as_str()).collect();
    for status in ["closed", "server_failed", "client_failed", "connect_failed"] {
        assert!(statuses.contains(&status), "{status} missing: {lines:?}");
    }
}

fn no_ambit_left(node: &ambit_tests::Node) {
    for save in ["iptables-nft-save", "iptables-legacy-save"] {
        let text = node.netns.exec(save, Vec::<&str>::new()).unwrap();
        assert!(!text.contains("AMBIT"), "{save}:\n{text}");
    }
    let rules = ip_rules(node);
    assert!(!rules.contains("lookup 133"), "{rules}");
}

#[test]
fn uninstall_removes_every_rule_and_sigterm_leaves_the_capture_closed() {
    if !require_e2e() {
        return;
    }
    let s = enrolled_client_plain_server();
    let (client, server) = (s.cluster.pod(0, 0), s.cluster.pod(1, 0));
    let node = s.cluster.node(0);
    // Someone else's rule in the same table, which must survive.
    node.netns
        .exec(
            "iptables",
            [
                "-t",
                "mangle",
                "-A",
                "PREROUTING",
                "-i",
                "eth9",
                "-j",
                "ACCEPT",
            ],
        )
        .unwrap();
    let peer = Server::start(&server.netns, addr(server, 9001), ServerKind::Peer).unwrap();

    // By hand: install, status, uninstall.
    let agent_bin = bin_path("ambit-agent").unwrap();
    let state = s.state.to_str().unwrap();
    let by_hand = |sub: &str| {
        node.netns
            .exec(
                &agent_bin,
                ["capture", sub, "--node", "node0", "--state", state],
            )
            .unwrap_or_else(|e| panic!("capture {sub}: {e}"))
    };
    by_hand("install");
    let status: serde_json::Value = serde_json::from_str(&by_hand("status")).unwrap();
    assert_eq!(status[0]["pods"][0], client.ip.to_string(), "{status}");
    assert_eq!(status[0]["policy_rules"], 1, "{status}");
    assert_eq!(status[0]["guard"], true, "{status}");
    by_hand("uninstall");
    no_ambit_left(node);
    assert!(mangle(node, "iptables-save").contains("-i eth9 -j ACCEPT"));
    // Without rules nothing is captured: the enrolled pod talks directly.
    assert_sees_client(&peer, client);

    // The agent: on SIGTERM the pod's rules stay and the capture closes, so
    // the pod's connections are refused at once instead of going out
    // uncaptured.
    let agent = start_agent(&s.cluster, 0, &s.state, &[]);
    assert_sees_client(&peer, client);
    assert_eq!(agent.wait_access(client, 1).len(), 1);
    let served_before = peer.served().len();
    let status = agent.process.stop(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status}");
    let status: serde_json::Value = serde_json::from_str(&by_hand("status")).unwrap();
    assert_eq!(status[0]["mode"], "closed", "{status}");
    assert_eq!(status[0]["pods"][0], client.ip.to_string(), "{status}");
    for _ in 0..20 {
        let started = Instant::now();
        let result = client.netns.connect(peer.local_addr()).unwrap();
        let error = result.expect_err("connected with no agent serving");
        assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error}");
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        peer.served().len(),
        served_before,
        "a connection got through"
    );
    assert!(mangle(node, "iptables-save").contains("-i eth9 -j ACCEPT"));
    // A new agent serves again.
    let _agent = start_agent(&s.cluster, 0, &s.state, &[]);
    assert_sees_client(&peer, client);
    by_hand("uninstall");
    no_ambit_left(node);
}

#[test]
fn kill_9_then_restart_repairs_without_duplicating_rules() {
    if !require_e2e() {
        return;
    }
    let s = enrolled_client_plain_server();
    let (client, server) = (s.cluster.pod(0, 0), s.cluster.pod(1, 0));
    let peer = Server::start(&server.netns, addr(server, 9001), ServerKind::Peer).unwrap();
    let first = start_agent(&s.cluster, 0, &s.state, &[]);
    let node = first.node.clone();
    let installed = mangle(&node, "iptables-save");
    // Dropping the process kills it with SIGKILL: no cleanup runs.
    drop(first);
    assert!(mangle(&node, "iptables-save").contains("AMBIT-PREROUTING"));

    let second = start_agent(&s.cluster, 0, &s.state, &[]);
    let repaired = mangle(&node, "iptables-save");
    let rules = |t: &str| t.lines().filter(|l| l.starts_with("-A")).count();
    assert_eq!(rules(&repaired), rules(&installed), "{repaired}");
    assert_eq!(repaired.matches("-j AMBIT-PREROUTING").count(), 1);
    assert_eq!(ip_rules(&node).matches("lookup 133").count(), 1);
    assert_sees_client(&peer, client);
    assert_eq!(second.wait_access(client, 1).len(), 1);
}

#[test]
fn malformed_state_edit_keeps_traffic_flowing() {
    if !require_e2e() {
        return;
    }
    let s = enrolled_client_plain_server();
    let (client, server) = (s.cluster.pod(0, 0), s.cluster.pod(1, 0));
    let agent = start_agent(&s.cluster, 0, &s.state, &[]);
    let before = mangle(&agent.node, "iptables-save");
    write_state(&s.state, "kind: Pod\nmetadata: [this is not\n");
    std::thread::sleep(Duration::from_millis(1500));
    let sink = Server::start(&server.netns, addr(server, 9000), ServerKind::Sink).unwrap();
    let exchange = traffic::send_to_sink(connect(client, sink.local_addr()), MB, 3).unwrap();
    assert_eq!(exchange.received, exchange.sent);
    assert_eq!(agent.wait_access(client, 1).len(), 1);
    let rules = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("-A"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(rules(&mangle(&agent.node, "iptables-save")), rules(&before));
}

#[test]
fn legacy_backend_captures_as_well() {
    if !require_e2e() {
        return;
    }
    let s = enrolled_client_plain_server();
    let (client, server) = (s.cluster.pod(0, 0), s.cluster.pod(1, 0));
    let agent = start_agent(&s.cluster, 0, &s.state, &["--iptables-backend", "legacy"]);
    assert!(mangle(&agent.node, "iptables-legacy-save").contains(&pod_chain(client)));
    assert!(!mangle(&agent.node, "iptables-nft-save").contains("AMBIT"));
    let peer = Server::start(&server.netns, addr(server, 9001), ServerKind::Peer).unwrap();
    assert_sees_client(&peer, client);
    assert_eq!(agent.wait_access(client, 1).len(), 1);
    let status = agent.process.stop(Duration::from_secs(10)).unwrap();
    assert!(status.success());
    // Stopped, the agent left its rules, closed, in the legacy tables only.
    let node = s.cluster.node(0);
    assert!(mangle(node, "iptables-legacy-save").contains(&pod_chain(client)));
    assert!(!mangle(node, "iptables-nft-save").contains("AMBIT"));
    let filter = node
        .netns
        .exec("iptables-nft-save", ["-t", "filter"])
        .unwrap();
    assert!(!filter.contains("AMBIT"), "{filter}");
    let agent_bin = bin_path("ambit-agent").unwrap();
    node.netns
        .exec(
            &agent_bin,
            ["capture", "uninstall", "--iptables-backend", "legacy"],
        )
        .unwrap();
    no_ambit_left(node);
}

#[test]
fn inbound_plaintext_to_an_enrolled_pod_is_captured_and_sees_the_real_client() {
    if !require_e2e() {
        return;
    }
    let s = enrolled_client_plain_server();
    // The agent runs on the server's node this time.
    let (server, client) = (s.cluster.pod(0, 0), s.cluster.pod(1, 0));
    let mut agent = start_agent(&s.cluster, 0, &s.state, &[]);
    let peer = Server::start(&server.netns, addr(server, 9001), ServerKind::Peer).unwrap();
    let echo = Server::start(&server.netns, addr(server, 9002), ServerKind::Echo).unwrap();
    assert_sees_client(&peer, client);
    let echoed = traffic::echo_through(connect(client, echo.local_addr()), 4 * MB, 5).unwrap();
    assert_eq!(echoed.received, echoed.sent);
    agent.wait_log("connection closed", 2);
    let lines = agent.access_lines(client);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l["reporter"] == "destination" && l["security"] == "none"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l["bytes_received"] == 4 * MB),
        "{lines:?}"
    );
    assert!(
        lines.iter().all(|l| l["dst.workload"] == "mesh/n0-pod0"),
        "{lines:?}"
    );
}

/// `Tcp: RetransSegs` of the namespace the command runs in.
fn retransmitted_segments(netns: &ambit_tests::netns::Netns) -> u64 {
    let snmp = netns.exec("cat", ["/proc/net/snmp"]).unwrap();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let column = names
        .split_whitespace()
        .position(|n| n == "RetransSegs")
        .unwrap();
    values
        .split_whitespace()
        .nth(column)
        .unwrap()
        .parse()
        .unwrap()
}

/// Regression: a SYN reusing the 4-tuple of one of the agent's TIME_WAIT
/// sockets used to be delivered to that socket, which answered with a bare
/// ACK; the client reset and retransmitted its SYN. With few source ports
/// and a server that closes first, every port comes round again while the
/// agent's side of its last connection is in TIME_WAIT.
#[test]
fn a_syn_reusing_a_time_wait_tuple_is_captured_without_retransmission() {
    if !require_e2e() {
        return;
    }
    let s = enrolled_client_plain_server();
    let (client, server) = (s.cluster.pod(0, 0), s.cluster.pod(1, 0));
    const PORTS: u32 = 200;
    const CONNECTIONS: u32 = 4 * PORTS;
    client
        .netns
        .set_sysctl(
            "net.ipv4.ip_local_port_range",
            &format!("40000 {}", 40000 + PORTS - 1),
        )
        .unwrap();
    let agent = start_agent(&s.cluster, 0, &s.state, &[]);
    // The peer server answers one line and closes first.
    let peer = Server::start(&server.netns, addr(server, 9003), ServerKind::Peer).unwrap();
    let before = retransmitted_segments(&client.netns);
    let started = Instant::now();
    let slowest = client
        .netns
        .run(|| {
            let mut slowest = Duration::ZERO;
            for n in 0..CONNECTIONS {
                let one = Instant::now();
                let mut stream = TcpStream::connect(peer.local_addr())
                    .unwrap_or_else(|e| panic!("connection {n}: {e}"));
                let mut line = String::new();
                stream.read_to_string(&mut line).unwrap();
                assert!(line.starts_with(&client.ip.to_string()), "{line:?}");
                slowest = slowest.max(one.elapsed());
            }
            slowest
        })
        .unwrap();
    let elapsed = started.elapsed();
    let retransmitted = retransmitted_segments(&client.netns) - before;
    assert_eq!(retransmitted, 0, "{retransmitted} segments retransmitted");
    // A retransmitted SYN costs a second; none may have waited that long.
    assert!(slowest < Duration::from_millis(500), "slowest {slowest:?}");
    eprintln!(
        "{CONNECTIONS} connections over {PORTS} source ports in {elapsed:?} ({:.0}/s)",
        f64::from(CONNECTIONS) / elapsed.as_secs_f64()
    );
    assert!(agent.wait_access(client, CONNECTIONS as usize).len() >= CONNECTIONS as usize);
}

/// Host-network services of the pod's own node (the node IP, the pods'
/// gateway address, the agent's own ports) are not captured: they answer an
/// enrolled pod as they answer any other.
#[test]
fn enrolled_pods_reach_their_own_nodes_services() {
    if !require_e2e() {
        return;
    }
    let s = enrolled_client_plain_server();
    let client = s.cluster.pod(0, 0);
    let node = s.cluster.node(0).clone();
    let _agent = start_agent(&s.cluster, 0, &s.state, &[]);
    let host = Server::start(
        &node.netns,
        SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 9100),
        ServerKind::Echo,
    )
    .unwrap();
    for ip in [node.fabric_ip, node.gateway_ip] {
        let to = SocketAddr::new(IpAddr::V4(ip), host.local_addr().port());
        let mut stream = connect(client, to);
        converse(&mut stream, &format!("host service on {to}"));
    }
    // The agent's metrics port, by the node's address.
    let mut stream = connect(client, SocketAddr::new(IpAddr::V4(node.gateway_ip), 15020));
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.trim_end().ends_with("# EOF"), "{answer}");
}

//! ambit-demo: Istio's guestbook scenario, walked through step by step on a
//! namespace cluster with the real CA and one real agent per node.
//!
//! Every step says what it does, does it for real (policies are applied to
//! the state file the agents watch; connections are made from inside pod
//! namespaces) and shows what happened and why: the application's outcome,
//! `ambit-agent authz check` on the same state, and the decision the agent
//! counted. Everything is torn down at the end, and also on Ctrl-C or
//! SIGTERM: signals are taken by a thread with `sigwait`, so the main thread
//! returns normally and every `Drop` runs.

#[path = "ambit-demo/show.rs"]
mod show;
#[path = "ambit-demo/signals.rs"]
mod signals;

use std::io::{BufRead, Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ambit_tests::mesh::guestbook::{
    ALLOW_GUESTBOOK, ALLOW_NOTHING, ECHO_PORT, Guestbook, peer_authentication,
};
use ambit_tests::mesh::probe::{echo, payload};
use anyhow::Context;
use clap::Parser;
use show::{DECISIONS, decisions_added, show_outcome, yes_no};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Walk through Ambit's guestbook scenario on a namespace cluster"
)]
struct Cli {
    /// Seconds to pause after each step, so a reader can follow.
    #[arg(long, env = "AMBIT_DEMO_PAUSE", default_value_t = 1.5)]
    pause: f64,
    /// Wait for Enter after each step instead of pausing.
    #[arg(long, env = "AMBIT_DEMO_INTERACTIVE", default_value_t = false)]
    interactive: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = signals::catch_signals() {
        eprintln!("ambit-demo: cannot take over SIGINT/SIGTERM: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let result = Demo::new(&cli).and_then(|mut demo| demo.run());
    // The mesh is gone by now: `run` owns it and dropped it on the way out.
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) if signals::interrupted() => {
            println!("\nInterrupted: the CA, the agents and every namespace were removed.");
            std::process::ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("\nambit-demo failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

struct Demo {
    pause: Duration,
    enter: Option<mpsc::Receiver<()>>,
    step: usize,
}

impl Demo {
    fn new(cli: &Cli) -> anyhow::Result<Self> {
        let enter = cli.interactive.then(|| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for _ in std::io::stdin().lock().lines() {
                    if tx.send(()).is_err() {
                        break;
                    }
                }
            });
            rx
        });
        Ok(Self {
            pause: Duration::from_secs_f64(cli.pause.clamp(0.0, 60.0)),
            enter,
            step: 0,
        })
    }

    fn run(&mut self) -> anyhow::Result<()> {
        println!(
            "Ambit demo: Istio's guestbook scenario on a cluster built from network namespaces.\n"
        );
        println!("Starting 3 nodes, the CA and one ambit-agent per node...");
        let start = Instant::now();
        let mut gb = Guestbook::start().context("starting the mesh")?;
        println!("Ready in {:.1} s.\n", start.elapsed().as_secs_f64());
        self.topology(&gb);
        self.wait()?;
        self.traffic(&gb)?;
        self.upgrade(&mut gb)?;
        self.certificate(&gb)?;
        self.authorization(&gb)?;
        self.peer_authentication(&gb)?;
        self.metrics(&gb)?;
        println!("\nDone. Tearing down the agents, the CA and every namespace...");
        drop(gb);
        println!("Nothing is left behind.");
        Ok(())
    }

    fn heading(&mut self, title: &str, why: &str) {
        self.step += 1;
        println!("\n=== Step {}: {title} ===", self.step);
        for line in why.lines() {
            println!("  {line}");
        }
        println!();
    }

    /// Pauses between steps (or waits for Enter), watching for a signal.
    fn wait(&self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            signals::check_interrupt()?;
            match &self.enter {
                Some(rx) => match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                },
                None if start.elapsed() >= self.pause => return Ok(()),
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn topology(&self, gb: &Guestbook) {
        let mesh = &gb.mesh;
        println!("Cluster:");
        for node in mesh.cluster().nodes() {
            println!(
                "  {} ({}), agent pid {}",
                node.name,
                node.fabric_ip,
                mesh.agent(node.index).pid()
            );
            for pod in mesh.pods().iter().filter(|p| p.pod.node == node.index) {
                let enrolled = if pod.namespace == "default" {
                    "enrolled (istio.io/dataplane-mode=ambient)"
                } else {
                    "not enrolled"
                };
                println!(
                    "    pod {:<9} {:<11} ns {:<8} sa {:<9} {enrolled}",
                    pod.name(),
                    pod.ip(),
                    pod.namespace,
                    pod.service_account
                );
            }
        }
        println!(
            "  CA at {} (its own namespace on the fabric), root {}",
            mesh.ca_addr(),
            mesh.root_cert_path().display()
        );
        println!(
            "  State file every agent and the CA watch: {}",
            mesh.state_path().display()
        );
        println!(
            "  Servers: analyzer echo :{ECHO_PORT} and sink :9000, guestbook echo :{ECHO_PORT}"
        );
    }

    fn traffic(&mut self, gb: &Guestbook) -> anyhow::Result<()> {
        self.heading(
            "enrolled pods talk across nodes, inside mutual TLS",
            "guestbook (node0) sends a marked message to analyzer (node1). Neither pod knows about\n\
             the mesh: node0's agent captures the connection and carries it to node1's agent in an\n\
             HBONE tunnel (HTTP/2 CONNECT over mTLS to port 15008). tcpdump on the fabric bridge\n\
             shows what actually crossed between the nodes.",
        );
        let (guestbook, analyzer, legacy) =
            (gb.pod("guestbook"), gb.pod("analyzer"), gb.pod("legacy"));
        let wire = gb.mesh.capture_fabric()?;
        let secret = "guestbook-says-hello-7f3a9c";
        let outcome = echo(
            guestbook,
            analyzer.addr(ECHO_PORT),
            &payload(secret, 64 * 1024),
        );
        show_outcome(guestbook, analyzer, &outcome);
        let plain = "legacy-says-hello-in-clear-51d0e2";
        let control = echo(legacy, analyzer.addr(ECHO_PORT), &payload(plain, 4096));
        show_outcome(legacy, analyzer, &control);
        let recording = wire.stop()?;
        let tunnel = format!("tcp and dst host {} and dst port 15008", analyzer.ip());
        println!(
            "  On the wire: {} frames to {}:15008.",
            recording.count(&tunnel)?,
            analyzer.ip()
        );
        for line in recording.summary(&tunnel)?.lines().take(3) {
            println!("    {line}");
        }
        println!(
            "  guestbook's marker {secret:?} on the wire: {}",
            yes_no(recording.contains(secret.as_bytes()))
        );
        println!(
            "  legacy's plaintext marker {plain:?} on the wire: {}",
            yes_no(recording.contains(plain.as_bytes()))
        );
        println!(
            "  (legacy is outside the mesh, so its connection is plaintext; analyzer accepts it: PERMISSIVE is the default.)"
        );
        self.wait()
    }

    fn certificate(&mut self, gb: &Guestbook) -> anyhow::Result<()> {
        self.heading(
            "the certificate analyzer presents",
            "`openssl s_client` from the legacy pod to analyzer's 15008: the agent answers with the\n\
             certificate of the pod whose address was dialled, issued by the CA for analyzer's\n\
             service account (a SPIFFE ID in the URI SAN).",
        );
        let analyzer = gb.pod("analyzer");
        let chain = gb
            .mesh
            .presented_chain(gb.pod("legacy"), analyzer.addr(15008))?;
        for (i, details) in chain.details.iter().enumerate() {
            println!("  certificate {i}:");
            for line in details.lines() {
                println!("    {line}");
            }
        }
        println!("  leaf URI SAN: {}", chain.leaf_uris.join(", "));
        println!(
            "  {} (against the CA root {})",
            chain.verify_result,
            gb.mesh.root_cert_path().display()
        );
        self.wait()
    }

    fn authorization(&mut self, gb: &Guestbook) -> anyhow::Result<()> {
        self.heading(
            "AuthorizationPolicy: nobody reaches analyzer",
            "An ALLOW policy selecting app=analyzer with no rules: no rule can match, so every\n\
             connection to analyzer is refused by analyzer's agent, before the pod sees it.",
        );
        self.apply(gb, ALLOW_NOTHING)?;
        self.connect(gb, "guestbook", "analyzer")?;
        self.connect(gb, "sleep", "analyzer")?;
        self.wait()?;

        self.heading(
            "AuthorizationPolicy: only guestbook reaches analyzer",
            "The same policy with one rule: source principal cluster.local/ns/default/sa/guestbook.\n\
             The principal is the identity the client's agent proved with guestbook's certificate.",
        );
        self.apply(gb, ALLOW_GUESTBOOK)?;
        self.connect(gb, "guestbook", "analyzer")?;
        self.connect(gb, "sleep", "analyzer")?;
        self.connect(gb, "legacy", "analyzer")?;
        self.remove(gb, "analyzer-access")?;
        self.wait()
    }

    fn peer_authentication(&mut self, gb: &Guestbook) -> anyhow::Result<()> {
        self.heading(
            "PeerAuthentication: mesh-wide STRICT",
            "STRICT in istio-system applies to the whole mesh: plaintext from outside is refused,\n\
             mutual TLS from enrolled pods still flows.",
        );
        self.apply(
            gb,
            &peer_authentication("istio-system", "default", None, "STRICT"),
        )?;
        self.connect(gb, "legacy", "analyzer")?;
        self.connect(gb, "guestbook", "analyzer")?;
        self.wait()?;

        self.heading(
            "PeerAuthentication: mesh-wide PERMISSIVE",
            "PERMISSIVE accepts both mTLS and plaintext.",
        );
        self.apply(
            gb,
            &peer_authentication("istio-system", "default", None, "PERMISSIVE"),
        )?;
        self.connect(gb, "legacy", "analyzer")?;
        self.wait()?;

        self.heading(
            "PeerAuthentication: the most specific level wins",
            "Mesh STRICT, namespace default PERMISSIVE, and STRICT for app=analyzer: guestbook takes\n\
             the namespace's PERMISSIVE, analyzer its own STRICT.",
        );
        self.apply(
            gb,
            &peer_authentication("istio-system", "default", None, "STRICT"),
        )?;
        self.apply(
            gb,
            &peer_authentication("default", "default", None, "PERMISSIVE"),
        )?;
        self.apply(
            gb,
            &peer_authentication("default", "analyzer-strict", Some("analyzer"), "STRICT"),
        )?;
        self.connect(gb, "legacy", "guestbook")?;
        self.connect(gb, "legacy", "analyzer")?;
        self.wait()
    }

    fn upgrade(&mut self, gb: &mut Guestbook) -> anyhow::Result<()> {
        self.heading(
            "upgrading both agents under an open connection",
            "A second agent process starts on the node, loads its state and certificates, and takes\n\
             the listening sockets over the node's handover socket; the old one keeps the connections\n\
             it carries until they end. No port is closed at any moment, and nothing open is cut.",
        );
        let (src, dst) = (gb.pod("guestbook").clone(), gb.pod("analyzer").clone());
        let mut stream = src
            .netns()
            .connect(dst.addr(ECHO_PORT))?
            .context("connecting guestbook -> analyzer")?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut exchange = |what: &str| -> anyhow::Result<()> {
            stream.write_all(what.as_bytes())?;
            let mut back = vec![0u8; what.len()];
            stream.read_exact(&mut back)?;
            anyhow::ensure!(back == what.as_bytes(), "the echo came back altered");
            println!("  the open connection echoed {what:?}");
            Ok(())
        };
        exchange("before the upgrades")?;
        for node in [1, 0] {
            let took = gb.mesh.upgrade_agent(node)?;
            println!(
                "  node{node}: the new agent took over {} ms after it started",
                took.as_millis()
            );
            exchange(&format!("after node{node}'s upgrade"))?;
        }
        println!("  A new connection goes through the new agents:");
        self.connect(gb, "guestbook", "analyzer")?;
        self.wait()
    }

    fn metrics(&mut self, gb: &Guestbook) -> anyhow::Result<()> {
        self.heading(
            "what the agents counted",
            "Each agent serves Istio's TCP metrics on :15020/metrics; the same connection is counted by\n\
             the client's agent (reporter=source) and the server's (reporter=destination).",
        );
        for node in 0..gb.mesh.cluster().nodes().len() {
            let samples = gb.mesh.metrics(node)?;
            println!("  node{node}:");
            for sample in samples.matching("istio_tcp_connections_opened_total", &[]) {
                let l = |k: &str| sample.labels.get(k).map_or("?", String::as_str);
                let bytes = |name: &str| {
                    let filter: Vec<(&str, &str)> = sample
                        .labels
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    samples.sum(name, &filter)
                };
                println!(
                    "    {:<11} {:<9} -> {:<9} {:<10} opened {:>2}  bytes in {:>7}  out {:>7}",
                    l("reporter"),
                    l("source_workload"),
                    l("destination_workload"),
                    l("connection_security_policy"),
                    sample.value,
                    bytes("istio_tcp_received_bytes_total"),
                    bytes("istio_tcp_sent_bytes_total")
                );
            }
            for sample in samples.matching(DECISIONS, &[]) {
                let l = |k: &str| sample.labels.get(k).map_or("?", String::as_str);
                println!(
                    "    decision {:<5} {:<32} for {:<9} x{}",
                    l("decision"),
                    l("reason"),
                    l("destination_workload"),
                    sample.value
                );
            }
        }
        self.wait()
    }

    fn apply(&self, gb: &Guestbook, yaml: &str) -> anyhow::Result<()> {
        signals::check_interrupt()?;
        println!("  Applying to the state file:");
        for line in yaml.trim().lines() {
            println!("    | {line}");
        }
        let start = Instant::now();
        gb.mesh.apply(yaml)?;
        println!(
            "  -> every agent loaded it within {} ms.\n",
            start.elapsed().as_millis()
        );
        Ok(())
    }

    fn remove(&self, gb: &Guestbook, name: &str) -> anyhow::Result<()> {
        signals::check_interrupt()?;
        gb.mesh.remove(name)?;
        println!("  Removed {name} from the state file.");
        Ok(())
    }

    /// One connection, judged three ways: the application, `authz check`,
    /// and the decision the destination's agent counted.
    fn connect(&self, gb: &Guestbook, from: &str, to: &str) -> anyhow::Result<()> {
        signals::check_interrupt()?;
        let (src, dst) = (gb.pod(from), gb.pod(to));
        let node = dst.pod.node;
        let before = gb.mesh.metrics(node)?;
        let outcome = echo(
            src,
            dst.addr(ECHO_PORT),
            &payload(&format!("{from}->{to}"), 1024),
        );
        show_outcome(src, dst, &outcome);
        let plaintext = src.namespace != "default";
        let check = gb
            .mesh
            .authz_check(src.ip().into(), dst.addr(ECHO_PORT), plaintext)?;
        println!("      authz check: {}", check.line);
        // The counter lands as the agent finishes the connection.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let after = gb.mesh.metrics(node)?;
            let counted = decisions_added(&before, &after);
            if !counted.is_empty() || Instant::now() > deadline {
                for line in counted {
                    println!("      {}'s agent: {line}", gb.mesh.node(node).name);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

//! A running mesh on a namespace [`Cluster`]: the CA in its own namespace on
//! the fabric, one `ambit-agent run` per node namespace, and the
//! Kubernetes-shaped state file they both read.
//!
//! ```text
//!  fabric bridge ── ca ns 10.240.0.250: ambit-ca :15012 (root in <dir>/ca)
//!        │
//!  node i ns: ambit-agent run --node node<i> (15001/15006/15008 capture,
//!             15020 metrics, 15021 readiness, 127.0.0.1:15000 admin)
//!        │
//!  pod ns:    the test's servers and clients
//! ```
//!
//! Tests change policies with [`Mesh::apply`] and [`Mesh::remove`]: the state
//! file is re-rendered and renamed into place, and the call returns once
//! every agent has loaded it. Process logs go to files (see
//! [`Process::log_path`]) and are printed when a test fails; dropping the mesh
//! stops every process and deletes every namespace it made.
//!
//! - `builder`: placing pods, writing the state, starting and waiting.
//! - `pod`: what a test asks to place and what it gets back.
//! - `state`: the state file's model and rendering.
//! - `guestbook`: Istio's guestbook scenario (layout, servers, policies).
//! - `probe`: allowed or refused, as the application sees it.
//! - `control`: the CA's namespace, and starting the CA and the agents.
//! - `http`: GET from inside a namespace (readiness, metrics, admin).
//! - `prometheus`: parsed `/metrics` samples.
//! - `openssl`: the certificate chain a pod presents, as `openssl s_client` sees it.
//! - `describe`: `ambit-agent describe` against the state file or a node's agent.
//! - `wire`: tcpdump on the fabric bridge.

mod builder;
mod cacerts;
mod control;
pub mod describe;
pub mod guestbook;
pub mod http;
pub mod openssl;
mod pod;
pub mod probe;
pub mod prometheus;
pub mod state;
pub mod wire;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, ClusterError, Node};
use crate::netns::{Netns, NetnsError, Process};
use crate::{BinError, bin_path};
pub use builder::MeshBuilder;
pub use http::Response;
pub use openssl::PresentedChain;
pub use pod::{MeshPod, PodSpec};
pub use prometheus::{Sample, Samples};
use state::State;
pub use wire::{FabricCapture, Recording};

/// Trust domain of every identity in a test mesh.
pub const TRUST_DOMAIN: &str = "cluster.local";
pub const METRICS_PORT: u16 = 15020;
pub const READINESS_PORT: u16 = 15021;
pub const ADMIN_PORT: u16 = 15000;
pub const HBONE_PORT: u16 = 15008;
pub const CA_PORT: u16 = 15012;
/// How long agents get to load a changed state.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
const STATE_RELOADS: &str = "ambit_state_reloads_total";
const STATE_RELOAD_ERRORS: &str = "ambit_state_reload_errors_total";

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Bin(#[from] BinError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state YAML: {0}")]
    Yaml(String),
    #[error("no applied document is called {0:?}")]
    NoSuchDocument(String),
    #[error("pod spec {0}")]
    PodSpec(String),
    #[error("GET {url}: {reason}")]
    Http { url: String, reason: String },
    #[error(transparent)]
    Metrics(#[from] prometheus::ParseError),
    #[error("{what} on {label} within {waited:?}; log tail:\n{log}")]
    Timeout {
        what: String,
        label: String,
        waited: Duration,
        log: String,
    },
    #[error("{label} exited ({status}); log tail:\n{log}")]
    Exited {
        label: String,
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("{label} rejected the new state; log tail:\n{log}")]
    Rejected { label: String, log: String },
    #[error("`ambit-agent authz check` {0}")]
    AuthzCheck(String),
    #[error("`ambit-agent describe` {0}")]
    Describe(String),
}

impl MeshError {
    fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// What `ambit-agent authz check` said about one connection.
#[derive(Clone, Debug)]
pub struct AuthzCheck {
    pub allowed: bool,
    /// The printed decision: `decision`, `policy`, `rule`, `reason`, `mtls_mode`.
    pub decision: serde_json::Value,
    /// The JSON line as printed.
    pub line: String,
    /// Warnings printed on stderr.
    pub warnings: String,
}

impl AuthzCheck {
    pub fn reason(&self) -> &str {
        self.decision["reason"].as_str().unwrap_or_default()
    }
}

/// The running mesh; torn down on drop.
#[derive(Debug)]
pub struct Mesh {
    // Field order is drop order: processes before the namespaces they run in.
    agents: Vec<Process>,
    /// Agents that stopped serving (handed over or terminated) and may still
    /// carry connections.
    retired: Vec<Process>,
    ca: Process,
    ca_netns: Netns,
    pods: Vec<MeshPod>,
    state: Mutex<(State, String)>,
    dir: PathBuf,
    cluster: Cluster,
}

impl Mesh {
    pub fn builder() -> MeshBuilder {
        MeshBuilder::new()
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn node(&self, index: usize) -> &Node {
        self.cluster.node(index)
    }

    /// The pod called `name`; panics if there is none (a test setup error).
    pub fn pod(&self, name: &str) -> &MeshPod {
        self.pods
            .iter()
            .find(|p| p.pod.name == name)
            .unwrap_or_else(|| panic!("no pod {name:?} in this mesh"))
    }

    pub fn pods(&self) -> &[MeshPod] {
        &self.pods
    }

    /// The state file every agent and the CA read.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.yaml")
    }

    /// What the state file holds now.
    pub fn state_text(&self) -> String {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// The CA's root certificate (PEM file).
    pub fn root_cert_path(&self) -> PathBuf {
        control::root_cert_path(&self.dir)
    }

    pub fn root_cert_pem(&self) -> Result<String, MeshError> {
        let path = self.root_cert_path();
        std::fs::read_to_string(&path).map_err(|e| MeshError::io(path, e))
    }

    /// Where the CA listens (reachable from every node namespace).
    pub fn ca_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(control::CA_IP), CA_PORT)
    }

    /// The namespace the CA runs in.
    pub fn ca_netns(&self) -> &Netns {
        &self.ca_netns
    }

    /// The bootstrap token of node `index`, as the CA knows it.
    pub fn token(&self, index: usize) -> Result<String, MeshError> {
        let path = control::token_path(&self.dir, index);
        std::fs::read_to_string(&path).map_err(|e| MeshError::io(path, e))
    }

    /// The agent process of node `index` (its label, pid and log).
    pub fn agent(&self, index: usize) -> &Process {
        &self.agents[index]
    }

    /// The access-log lines node `index`'s agent has written so far, one per
    /// closed connection, with their fields flattened (`src.addr`, `decision`, ...).
    pub fn access_log(&self, index: usize) -> Vec<serde_json::Value> {
        self.agents[index]
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["target"] == "access")
            .collect()
    }

    pub fn ca_process(&self) -> &Process {
        &self.ca
    }

    /// Adds or replaces the documents of `yaml` (policies, usually) in the
    /// state file and returns once every agent has loaded the new state.
    pub fn apply(&self, yaml: &str) -> Result<(), MeshError> {
        self.change(|s| s.apply(yaml).map(drop))
    }

    /// Removes the applied documents called `name` (or `namespace/name`)
    /// and returns once every agent has loaded the new state.
    pub fn remove(&self, name: &str) -> Result<(), MeshError> {
        self.change(|s| s.remove(name).map(drop))
    }

    fn change(
        &self,
        edit: impl FnOnce(&mut State) -> Result<(), MeshError>,
    ) -> Result<(), MeshError> {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = guard.0.clone();
        edit(&mut next)?;
        let text = next.render()?;
        if text == guard.1 {
            guard.0 = next;
            return Ok(());
        }
        let before = (0..self.agents.len())
            .map(|i| self.reload_counts(i))
            .collect::<Result<Vec<_>, _>>()?;
        state::write_atomically(&self.state_path(), &text)?;
        *guard = (next, text);
        for (i, (reloads, errors)) in before.into_iter().enumerate() {
            self.wait_reloaded(i, reloads, errors)?;
        }
        Ok(())
    }

    /// `(state reloads, rejected reloads)` of node `index`'s agent.
    fn reload_counts(&self, index: usize) -> Result<(f64, f64), MeshError> {
        let m = self.metrics(index)?;
        Ok((m.sum(STATE_RELOADS, &[]), m.sum(STATE_RELOAD_ERRORS, &[])))
    }

    fn wait_reloaded(&self, index: usize, reloads: f64, errors: f64) -> Result<(), MeshError> {
        let start = Instant::now();
        loop {
            let (now, now_errors) = self.reload_counts(index)?;
            if now > reloads {
                return Ok(());
            }
            if now_errors > errors {
                return Err(MeshError::Rejected {
                    label: self.agents[index].label().to_owned(),
                    log: tail(&self.agents[index].log(), 30),
                });
            }
            if start.elapsed() > RELOAD_TIMEOUT {
                return Err(MeshError::Timeout {
                    what: format!("no {STATE_RELOADS} increase"),
                    label: self.agents[index].label().to_owned(),
                    waited: start.elapsed(),
                    log: tail(&self.agents[index].log(), 30),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Upgrades node `index`'s agent as a rolling update would: starts a
    /// second agent, which takes the listeners over once it is ready; the
    /// old one keeps what it carries. Returns once the new one serves.
    pub fn upgrade_agent(&mut self, index: usize) -> Result<Duration, MeshError> {
        self.upgrade_agent_with(index, &[])
    }

    /// As [`Self::upgrade_agent`], the new agent with `extra` arguments.
    pub fn upgrade_agent_with(
        &mut self,
        index: usize,
        extra: &[&str],
    ) -> Result<Duration, MeshError> {
        let started = Instant::now();
        self.spawn_agent(index, extra)?;
        self.wait_log(index, "took over the listeners")?;
        Ok(started.elapsed())
    }

    /// Sends `signal` to node `index`'s agent and keeps the process (it
    /// may drain for a long time); a later [`Self::start_agent`] replaces it.
    pub fn signal_agent(&mut self, index: usize, signal: nix::sys::signal::Signal) {
        self.agents[index].signal(signal);
    }

    /// Starts a new agent on node `index` (after a crash or a stop) and
    /// waits until it is ready; the previous process is kept as retired.
    pub fn start_agent(&mut self, index: usize) -> Result<Duration, MeshError> {
        let started = Instant::now();
        self.spawn_agent(index, &[])?;
        self.wait_ready(index)?;
        Ok(started.elapsed())
    }

    /// As [`Self::start_agent`] without waiting for anything.
    pub fn start_agent_nowait(&mut self, index: usize) -> Result<(), MeshError> {
        self.spawn_agent(index, &[])
    }

    fn spawn_agent(&mut self, index: usize, extra: &[&str]) -> Result<(), MeshError> {
        let node = self.cluster.node(index).clone();
        let options = control::AgentOptions {
            args: extra.iter().map(|a| (*a).to_owned()).collect(),
            ..control::AgentOptions::default()
        };
        let cmd = control::agent_command(&node, &self.dir, &options)?;
        let next = node.netns.spawn(&cmd)?;
        let old = std::mem::replace(&mut self.agents[index], next);
        self.retired.push(old);
        Ok(())
    }

    /// The processes that stopped serving, oldest first.
    pub fn retired_agents(&mut self) -> &mut [Process] {
        &mut self.retired
    }

    /// Waits until node `index`'s current agent logged `message`.
    pub fn wait_log(&mut self, index: usize, message: &str) -> Result<(), MeshError> {
        // A prefix of the message is enough.
        let needle = format!("\"message\":\"{message}");
        let start = Instant::now();
        let agent = &mut self.agents[index];
        loop {
            if agent.log().contains(&needle) {
                return Ok(());
            }
            if let Ok(Some(status)) = agent.try_wait() {
                return Err(MeshError::Exited {
                    label: agent.label().to_owned(),
                    status,
                    log: tail(&agent.log(), 40),
                });
            }
            if start.elapsed() > RELOAD_TIMEOUT {
                return Err(MeshError::Timeout {
                    what: format!("no {message:?}"),
                    label: agent.label().to_owned(),
                    waited: start.elapsed(),
                    log: tail(&agent.log(), 40),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Node `index`'s run directory (handover and control sockets).
    pub fn run_dir(&self, index: usize) -> PathBuf {
        control::run_dir(&self.dir, index)
    }

    /// Starts tcpdump on the fabric bridge.
    pub fn capture_fabric(&self) -> Result<FabricCapture, MeshError> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        FabricCapture::start(&self.cluster, self.dir.join(format!("fabric-{n}.pcap")))
    }

    /// The chain `to` presents to `openssl s_client` run in `from`'s
    /// namespace, verified against the CA's root.
    pub fn presented_chain(
        &self,
        from: &MeshPod,
        to: SocketAddr,
    ) -> Result<PresentedChain, MeshError> {
        openssl::s_client(from.netns(), to, &self.root_cert_path())
    }

    /// `openssl verify` of `chain` against the CA's root.
    pub fn verify_chain(&self, chain: &[String]) -> Result<(bool, String), MeshError> {
        openssl::verify(chain, &self.root_cert_path(), &self.dir.join("verify"))
    }

    /// Scrapes node `index`'s agent.
    pub fn metrics(&self, index: usize) -> Result<Samples, MeshError> {
        let node = self.cluster.node(index);
        let addr = SocketAddr::new(IpAddr::V4(node.fabric_ip), METRICS_PORT);
        let response = http::get(&node.netns, addr, "/metrics")?;
        if response.status != 200 {
            return Err(MeshError::Http {
                url: format!("http://{addr}/metrics"),
                reason: format!("status {}: {}", response.status, response.body),
            });
        }
        Ok(Samples::parse(&response.body)?)
    }

    /// `GET path` on node `index`'s admin port (127.0.0.1:15000 in the node).
    pub fn admin(&self, index: usize, path: &str) -> Result<Response, MeshError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
        http::get(&self.cluster.node(index).netns, addr, path)
    }

    /// Runs `ambit-agent authz check` on the current state file.
    pub fn authz_check(
        &self,
        from: IpAddr,
        to: SocketAddr,
        plaintext: bool,
    ) -> Result<AuthzCheck, MeshError> {
        let mut cmd = Command::new(bin_path("ambit-agent")?);
        cmd.args(["authz", "check", "--state"])
            .arg(self.state_path())
            .args(["--from", &from.to_string(), "--to", &to.to_string()])
            .args(["--trust-domain", TRUST_DOMAIN])
            .env_remove("AMBIT_ROOT_NAMESPACE")
            .env_remove("AMBIT_LOG");
        if plaintext {
            cmd.arg("--plaintext");
        }
        let out = cmd
            .output()
            .map_err(|e| MeshError::AuthzCheck(e.to_string()))?;
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let warnings = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let decision: serde_json::Value = serde_json::from_str(&line).map_err(|e| {
            MeshError::AuthzCheck(format!("printed {line:?} ({e}); stderr: {warnings}"))
        })?;
        let allowed = match (out.status.code(), decision["decision"].as_str()) {
            (Some(0), Some("allow")) => true,
            (Some(1), Some("deny")) => false,
            (code, _) => {
                return Err(MeshError::AuthzCheck(format!(
                    "exited {code:?} printing {line:?}; stderr: {warnings}"
                )));
            }
        };
        Ok(AuthzCheck {
            allowed,
            decision,
            line,
            warnings,
        })
    }
}

/// Set to `1` to keep a mesh's files (state, tokens, CA keys) after it is dropped.
pub const KEEP_FILES_ENV: &str = "AMBIT_E2E_KEEP";

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::env::var(KEEP_FILES_ENV).as_deref() == Ok("1") {
            eprintln!("mesh files kept in {}", self.dir.display());
        } else if std::thread::panicking() {
            eprintln!(
                "---- mesh state file {} (kept with the run's files in {}) ----\n{}",
                self.state_path().display(),
                self.dir.display(),
                self.state_text()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

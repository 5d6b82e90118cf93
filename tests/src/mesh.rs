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
//! - `state`: the state file's model and rendering.
//! - `control`: the CA's namespace, and starting the CA and the agents.
//! - `http`: GET from inside a namespace (readiness, metrics, admin).
//! - `prometheus`: parsed `/metrics` samples.
//! - `openssl`: the certificate chain a pod presents, as `openssl s_client` sees it.
//! - `wire`: tcpdump on the fabric bridge.

mod control;
pub mod http;
pub mod openssl;
pub mod prometheus;
pub mod state;
pub mod wire;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, ClusterError, Node, Pod};
use crate::netns::{Netns, NetnsError, Process};
use crate::{BinError, bin_path};
pub use http::Response;
pub use openssl::PresentedChain;
pub use prometheus::{Sample, Samples};
use state::{PodRecord, ServiceRecord, State};
pub use wire::{FabricCapture, Recording};

/// Trust domain of every identity in a test mesh.
pub const TRUST_DOMAIN: &str = "cluster.local";
pub const METRICS_PORT: u16 = 15020;
pub const READINESS_PORT: u16 = 15021;
pub const ADMIN_PORT: u16 = 15000;
pub const HBONE_PORT: u16 = 15008;
pub const CA_PORT: u16 = 15012;
/// How long agents get to become ready, and to load a changed state.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
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
}

impl MeshError {
    fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// A pod to place: where, in which namespace, as which service account.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node: usize,
    pub labels: BTreeMap<String, String>,
}

impl PodSpec {
    /// Pod `name` on node 0 in namespace `default`, service account `default`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            namespace: "default".to_owned(),
            service_account: "default".to_owned(),
            node: 0,
            labels: BTreeMap::new(),
        }
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    pub fn service_account(mut self, service_account: &str) -> Self {
        self.service_account = service_account.to_owned();
        self
    }

    pub fn node(mut self, node: usize) -> Self {
        self.node = node;
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// A placed pod and what the state says about it.
#[derive(Clone, Debug)]
pub struct MeshPod {
    pub pod: Pod,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
}

impl MeshPod {
    pub fn name(&self) -> &str {
        &self.pod.name
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.pod.ip
    }

    pub fn netns(&self) -> &Netns {
        &self.pod.netns
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.pod.ip), port)
    }

    /// `cluster.local/ns/<namespace>/sa/<service account>`, as policies name it.
    pub fn principal(&self) -> String {
        format!(
            "{TRUST_DOMAIN}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }

    /// `spiffe://cluster.local/ns/<namespace>/sa/<service account>`.
    pub fn spiffe_id(&self) -> String {
        format!("spiffe://{}", self.principal())
    }
}

/// Configures a [`Mesh`].
#[derive(Clone, Debug)]
pub struct MeshBuilder {
    nodes: usize,
    namespaces: BTreeMap<String, bool>,
    pods: Vec<PodSpec>,
    services: Vec<ServiceRecord>,
    documents: Vec<String>,
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
    ca: Process,
    ca_netns: Netns,
    pods: Vec<MeshPod>,
    state: Mutex<(State, String)>,
    dir: PathBuf,
    cluster: Cluster,
}

impl Mesh {
    pub fn builder() -> MeshBuilder {
        MeshBuilder {
            nodes: 2,
            namespaces: BTreeMap::from([(state::ROOT_NAMESPACE.to_owned(), false)]),
            pods: Vec::new(),
            services: Vec::new(),
            documents: Vec::new(),
        }
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

impl MeshBuilder {
    pub fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }

    /// Declares a namespace, enrolled (`istio.io/dataplane-mode=ambient`) or not.
    pub fn namespace(mut self, name: &str, enrolled: bool) -> Self {
        self.namespaces.insert(name.to_owned(), enrolled);
        self
    }

    pub fn pod(mut self, spec: PodSpec) -> Self {
        self.pods.push(spec);
        self
    }

    /// A ClusterIP Service `namespace/name` at `vip` selecting `selector`
    /// (`key=value`), with `(port, targetPort)` pairs.
    pub fn service(
        mut self,
        namespace: &str,
        name: &str,
        vip: Ipv4Addr,
        selector: (&str, &str),
        ports: &[(u16, u16)],
    ) -> Self {
        self.services.push(ServiceRecord {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            vip,
            selector: BTreeMap::from([(selector.0.to_owned(), selector.1.to_owned())]),
            ports: ports.to_vec(),
        });
        self
    }

    /// Documents (policies) in force from the start.
    pub fn document(mut self, yaml: &str) -> Self {
        self.documents.push(yaml.to_owned());
        self
    }

    /// Builds the cluster, writes the state, starts the CA and the agents
    /// and waits until every agent is ready.
    pub fn build(self) -> Result<Mesh, MeshError> {
        let mut cluster = Cluster::builder()
            .nodes(self.nodes)
            .pods_per_node(0)
            .build()?;
        let mut state = State {
            namespaces: self.namespaces.clone(),
            services: self.services.clone(),
            ..State::default()
        };
        let mut pods = Vec::new();
        for spec in &self.pods {
            if !self.namespaces.contains_key(&spec.namespace) {
                return Err(MeshError::PodSpec(format!(
                    "{}: namespace {} is not declared",
                    spec.name, spec.namespace
                )));
            }
            let pod = cluster.add_pod(spec.node, &spec.name)?;
            state.pods.push(PodRecord {
                name: spec.name.clone(),
                namespace: spec.namespace.clone(),
                service_account: spec.service_account.clone(),
                node_name: cluster.node(spec.node).name.clone(),
                ip: pod.ip,
                labels: spec.labels.clone(),
            });
            pods.push(MeshPod {
                pod,
                namespace: spec.namespace.clone(),
                service_account: spec.service_account.clone(),
                labels: spec.labels.clone(),
            });
        }
        for yaml in &self.documents {
            state.apply(yaml)?;
        }
        let dir = std::env::temp_dir()
            .join("ambit-tests")
            .join(cluster.netns_prefix().trim_end_matches('-'));
        std::fs::create_dir_all(&dir).map_err(|e| MeshError::io(dir.clone(), e))?;
        let text = state.render()?;
        state::write_atomically(&dir.join("state.yaml"), &text)?;

        let started = control::start(&cluster, &dir)?;
        let mut mesh = Mesh {
            agents: started.agents,
            ca: started.ca,
            ca_netns: started.ca_netns,
            pods,
            state: Mutex::new((state, text)),
            dir,
            cluster,
        };
        for index in 0..mesh.agents.len() {
            mesh.wait_ready(index)?;
        }
        Ok(mesh)
    }
}

impl Mesh {
    /// Waits until node `index`'s agent answers 200 on `/healthz/ready`.
    fn wait_ready(&mut self, index: usize) -> Result<(), MeshError> {
        let node = self.cluster.node(index);
        let addr = SocketAddr::new(IpAddr::V4(node.fabric_ip), READINESS_PORT);
        let agent = &mut self.agents[index];
        let start = Instant::now();
        let mut last;
        loop {
            if let Ok(Some(status)) = agent.try_wait() {
                return Err(MeshError::Exited {
                    label: agent.label().to_owned(),
                    status,
                    log: tail(&agent.log(), 40),
                });
            }
            match http::get(&node.netns, addr, "/healthz/ready") {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => last = format!("{}: {}", r.status, r.body.trim()),
                Err(e) => last = e.to_string(),
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(MeshError::Timeout {
                    what: format!("not ready ({last})"),
                    label: agent.label().to_owned(),
                    waited: start.elapsed(),
                    log: tail(&agent.log(), 40),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

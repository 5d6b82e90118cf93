//! Building a [`Mesh`]: the cluster and its pods, the state file, then the
//! CA and the agents, and the wait until every agent is ready.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cluster::Cluster;

use super::control::AgentOptions;
use super::state::{self, PodRecord, ServiceRecord, State};
use super::{Mesh, MeshError, MeshPod, PodSpec, READINESS_PORT, control, http, tail};

/// How long agents get to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Configures a [`Mesh`].
#[derive(Clone, Debug)]
pub struct MeshBuilder {
    nodes: usize,
    namespaces: BTreeMap<String, bool>,
    pods: Vec<PodSpec>,
    services: Vec<ServiceRecord>,
    documents: Vec<String>,
    agents: Vec<AgentOptions>,
    plugin_ca: bool,
    /// Extra environment for every agent (e.g. `AMBIT_JWKS_REFRESH_SECS`).
    agent_env: Vec<(String, String)>,
}

impl MeshBuilder {
    pub(super) fn new() -> Self {
        Self {
            nodes: 2,
            namespaces: BTreeMap::from([(state::ROOT_NAMESPACE.to_owned(), false)]),
            pods: Vec::new(),
            services: Vec::new(),
            documents: Vec::new(),
            agents: Vec::new(),
            plugin_ca: false,
            agent_env: Vec::new(),
        }
    }

    /// Sets `key=value` in every agent's environment.
    pub fn agent_env(mut self, key: &str, value: &str) -> Self {
        self.agent_env.push((key.to_owned(), value.to_owned()));
        self
    }

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

    /// Extra `run` flags for node `node`'s agent.
    pub fn agent_args(mut self, node: usize, args: &[&str]) -> Self {
        self.agent(node)
            .args
            .extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Starts node `node`'s agent with RLIMIT_NOFILE `soft:hard`.
    pub fn agent_nofile(mut self, node: usize, soft: u64, hard: u64) -> Self {
        self.agent(node).nofile = Some((soft, hard));
        self
    }

    fn agent(&mut self, node: usize) -> &mut AgentOptions {
        if self.agents.len() <= node {
            self.agents.resize(node + 1, AgentOptions::default());
        }
        &mut self.agents[node]
    }

    /// Runs the CA as an intermediate from Istio's `cacerts` layout (a root and
    /// intermediate made with openssl) instead of its self-generated root.
    pub fn plugin_ca(mut self) -> Self {
        self.plugin_ca = true;
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

        let mut agents = self.agents.clone();
        agents.resize(self.nodes.max(agents.len()), AgentOptions::default());
        for options in &mut agents {
            options.env.extend(self.agent_env.iter().cloned());
        }
        let started = control::start(&cluster, &dir, self.plugin_ca, &agents)?;
        let mut mesh = Mesh {
            agents: started.agents,
            retired: Vec::new(),
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
    pub(super) fn wait_ready(&mut self, index: usize) -> Result<(), MeshError> {
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
                // Ready means state synced, certificates loaded and capture
                // rules installed: traffic is tunnelled from here on.
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

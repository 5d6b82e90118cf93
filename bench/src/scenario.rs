//! What a benchmark mode sets up before measuring: a two-node cluster, the
//! servers in a pod on node 1, and (in later modes) what runs on the nodes.
//!
//! The client is a pod on node 0, so every measurement crosses two veths,
//! the fabric bridge and both nodes' forwarding. Adding a mode means
//! starting its node processes in [`Scenario::build`] (e.g. `ambit-agent`
//! via `ambit_tests::bin_path` and `Netns::spawn`) and keeping their
//! [`Process`] handles in `node_processes`; the measurements do not change.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_tests::traffic::{Server, ServerKind};
use ambit_tests::{Cluster, Mesh, Pod, Process};
use anyhow::Context;

use crate::{Mode, plain};

const COUNT_PORT: u16 = 5201;
const ECHO_PORT: u16 = 5202;
const PEER_PORT: u16 = 5203;

/// A cluster ready to be measured; torn down on drop.
pub struct Scenario {
    pub client: Pod,
    pub server: Pod,
    /// Counts bytes (throughput).
    pub count: SocketAddr,
    /// Echoes (request/response latency).
    pub echo: SocketAddr,
    /// Answers one line and closes (connection rate).
    pub peer: SocketAddr,
    // Drop order: servers, node processes, then the cluster (or the mesh).
    _servers: Vec<Server>,
    _node_processes: Vec<Process>,
    _state_files: Vec<plain::StateFile>,
    _cluster: Option<Cluster>,
    _mesh: Option<Arc<Mesh>>,
}

impl Scenario {
    pub fn build(mode: Mode) -> anyhow::Result<Self> {
        let cluster = Cluster::builder().nodes(2).pods_per_node(1).build()?;
        let client = cluster.pod(0, 0).clone();
        let server = cluster.pod(1, 0).clone();
        let (node_processes, state_files) = match mode {
            Mode::Baseline => (Vec::new(), Vec::new()),
            Mode::Plain => {
                let (agent, state) = plain::start(&cluster, &client, &server)?;
                (vec![agent], vec![state])
            }
            Mode::Mesh => anyhow::bail!("mesh mode sets up its own cluster (crate::mesh)"),
        };
        let mut scenario = Self::between(client, server)?;
        scenario._node_processes = node_processes;
        scenario._state_files = state_files;
        scenario._cluster = Some(cluster);
        Ok(scenario)
    }

    /// Measures between two pods of a running mesh (see `crate::mesh`),
    /// which stays up as long as the scenario.
    pub fn in_mesh(mesh: &Arc<Mesh>, client: &str, server: &str) -> anyhow::Result<Self> {
        let mut scenario =
            Self::between(mesh.pod(client).pod.clone(), mesh.pod(server).pod.clone())?;
        scenario._mesh = Some(Arc::clone(mesh));
        Ok(scenario)
    }

    /// Starts the servers in `server`.
    fn between(client: Pod, server: Pod) -> anyhow::Result<Self> {
        let at = |port| SocketAddr::new(IpAddr::V4(server.ip), port);
        let servers = [
            (COUNT_PORT, ServerKind::Count),
            (ECHO_PORT, ServerKind::Echo),
            (PEER_PORT, ServerKind::Peer),
        ]
        .into_iter()
        .map(|(port, kind)| {
            Server::start(&server.netns, at(port), kind)
                .with_context(|| format!("starting the {kind:?} server"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            count: at(COUNT_PORT),
            echo: at(ECHO_PORT),
            peer: at(PEER_PORT),
            client,
            server,
            _servers: servers,
            _node_processes: Vec::new(),
            _state_files: Vec::new(),
            _cluster: None,
            _mesh: None,
        })
    }
}

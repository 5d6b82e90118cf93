//! Where a measurement runs: a client pod on node 0 and a server pod on
//! node 1 running the count, echo and peer servers, so every measurement
//! crosses two veths, the fabric bridge and both nodes' forwarding. The
//! pods come from a bare cluster (the `baseline` mode) or from a running
//! mesh (`crate::mesh`); the measurements see only the client namespace and
//! the server addresses.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_tests::traffic::{Server, ServerKind};
use ambit_tests::{Cluster, Mesh, Pod};
use anyhow::Context;

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
    // Drop order: servers, then the cluster (or the mesh).
    _servers: Vec<Server>,
    _cluster: Option<Cluster>,
    _mesh: Option<Arc<Mesh>>,
}

impl Scenario {
    /// A bare two-node cluster, client on node 0 and server on node 1.
    pub fn baseline() -> anyhow::Result<Self> {
        let cluster = Cluster::builder().nodes(2).pods_per_node(1).build()?;
        let mut scenario = Self::between(cluster.pod(0, 0).clone(), cluster.pod(1, 0).clone())?;
        scenario._cluster = Some(cluster);
        Ok(scenario)
    }

    /// Pods `client` and `server` of a running mesh.
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
            _cluster: None,
            _mesh: None,
        })
    }
}

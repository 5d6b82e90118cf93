//! Where a measurement runs: a client pod on node 0 and a server pod on
//! node 1 running the count, echo and close-first servers, so every measurement
//! crosses two veths, the fabric bridge and both nodes' forwarding. The
//! pods come from a bare cluster (the `baseline` mode) or from a running
//! mesh (`crate::mesh`, which starts [`Servers`] itself because two of its
//! rows share a server pod); the measurements see only the client namespace
//! and the server addresses.

use std::net::{IpAddr, SocketAddr};

use ambit_tests::traffic::{Server, ServerKind};
use ambit_tests::{Cluster, Pod};
use anyhow::Context;

use crate::closer::Closer;

const COUNT_PORT: u16 = 5201;
const ECHO_PORT: u16 = 5202;
const CLOSE_PORT: u16 = 5203;

/// The servers of one server pod; stopped on drop.
pub struct Servers {
    /// Counts bytes (throughput).
    pub count: SocketAddr,
    /// Echoes (request/response latency).
    pub echo: SocketAddr,
    /// Answers one byte and closes (connection rate).
    pub close: SocketAddr,
    _servers: Vec<Server>,
    _closer: Closer,
}

impl Servers {
    /// Starts the servers in `server`.
    pub fn start(server: &Pod) -> anyhow::Result<Self> {
        let at = |port| SocketAddr::new(IpAddr::V4(server.ip), port);
        let servers = [
            (COUNT_PORT, ServerKind::Count),
            (ECHO_PORT, ServerKind::Echo),
        ]
        .into_iter()
        .map(|(port, kind)| {
            Server::start(&server.netns, at(port), kind)
                .with_context(|| format!("starting the {kind:?} server"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
        let closer = Closer::start(&server.netns, at(CLOSE_PORT))
            .context("starting the close-first server")?;
        Ok(Self {
            count: at(COUNT_PORT),
            echo: at(ECHO_PORT),
            close: at(CLOSE_PORT),
            _servers: servers,
            _closer: closer,
        })
    }
}

/// A bare cluster ready to be measured; torn down on drop.
pub struct Scenario {
    pub client: Pod,
    pub server: Pod,
    // Drop order: servers, then the cluster.
    pub servers: Servers,
    _cluster: Cluster,
}

impl Scenario {
    /// A bare two-node cluster, client on node 0 and server on node 1.
    pub fn baseline() -> anyhow::Result<Self> {
        let cluster = Cluster::builder().nodes(2).pods_per_node(1).build()?;
        let client = cluster.pod(0, 0).clone();
        let server = cluster.pod(1, 0).clone();
        Ok(Self {
            servers: Servers::start(&server)?,
            client,
            server,
            _cluster: cluster,
        })
    }
}

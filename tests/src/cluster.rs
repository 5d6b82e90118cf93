//! A multi-node cluster built out of network namespaces, standing in for
//! Kubernetes nodes and pods in end-to-end tests, the demo and benchmarks.
//!
//! # Topology and addressing
//!
//! ```text
//!  fabric ns:  bridge <tag>b ── <tag>f0 ... <tag>f<N-1>        (no addresses)
//!                                 │ veth
//!  node i ns:  eth0 10.240.0.<i+1>/24        ip_forward=1, rp_filter=0
//!              <tag>p<j>  10.244.<i>.1/32 peer 10.244.<i>.<j+2>
//!                                 │ veth
//!  pod ns:     eth0 10.244.<i>.<j+2>/32 peer 10.244.<i>.1, default via 10.244.<i>.1
//! ```
//!
//! - Fabric `10.240.0.0/24`: node `i` is `10.240.0.<i+1>` on its `eth0`,
//!   bridged in the fabric namespace.
//! - Pod CIDR of node `i`: `10.244.<i>.0/24`. The node's gateway address
//!   `10.244.<i>.1` sits on every pod veth as a point-to-point /32, the way
//!   routed CNIs do it, so each pod has exactly one route to its node and the
//!   node a /32 route to each pod. Pod `j` of node `i` is `10.244.<i>.<j+2>`;
//!   pods added by name take the next free `j`.
//! - Node `i` routes `10.244.<k>.0/24 via 10.240.0.<k+1>` for every other
//!   node `k`. Nodes have no default route and pods only the one to their
//!   node: nothing leads out of the cluster, and the root namespace is never
//!   touched (every link is created with `ip -n` inside a cluster namespace).
//!
//! Namespace and interface names come from [`naming`]. Dropping the
//! [`Cluster`] (also while unwinding from a panic) deletes every namespace,
//! which removes every veth and the bridge with it.

pub mod naming;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::netns::{Netns, NetnsError};
use crate::preflight;
use naming::ClusterNames;

const FABRIC_NET: [u8; 3] = [10, 240, 0];
const POD_NET: [u8; 2] = [10, 244];
/// Pod addresses run from `.2` to `.254` of a node's /24.
const MAX_PODS_PER_NODE: usize = 253;
const MAX_NODES: usize = 250;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("this machine cannot build namespace clusters: {0}")]
    Preflight(String),
    #[error("cluster needs 1..={MAX_NODES} nodes, got {0}")]
    NodeCount(usize),
    #[error("node {node} has no room for another pod (at most {MAX_PODS_PER_NODE})")]
    NodeFull { node: usize },
    #[error("no node {0}")]
    NoNode(usize),
    #[error("pod name {0:?} is taken or invalid (use [a-z0-9-], at most 40 bytes)")]
    PodName(String),
    #[error("interface name {0:?} would exceed 15 bytes")]
    IfName(String),
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// Configures and builds a [`Cluster`].
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    nodes: usize,
    pods_per_node: usize,
}

/// A node: a namespace on the fabric, owning a pod CIDR.
#[derive(Clone, Debug)]
pub struct Node {
    pub index: usize,
    /// `node<i>`.
    pub name: String,
    pub netns: Netns,
    pub fabric_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    /// The node's address on every pod veth: the pods' default gateway.
    pub gateway_ip: Ipv4Addr,
}

/// A pod: a namespace joined to its node by a veth.
#[derive(Clone, Debug)]
pub struct Pod {
    /// `pod<j>` for pods made by the builder, else the name given to [`Cluster::add_pod`].
    pub name: String,
    /// Index of the node the pod runs on.
    pub node: usize,
    pub netns: Netns,
    pub ip: Ipv4Addr,
    /// Name of the pod's veth end inside the node namespace.
    pub node_veth: String,
}

/// A running cluster; torn down on drop.
#[derive(Debug)]
pub struct Cluster {
    names: ClusterNames,
    // Field order is drop order: pods, then nodes, then the fabric.
    pods: Vec<Vec<Pod>>,
    nodes: Vec<Node>,
    fabric: Netns,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            nodes: 2,
            pods_per_node: 1,
        }
    }

    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index]
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Pod `j` of node `node`, in creation order (builder pods first).
    pub fn pod(&self, node: usize, j: usize) -> &Pod {
        &self.pods[node][j]
    }

    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.iter().flatten()
    }

    pub fn pod_by_name(&self, name: &str) -> Option<&Pod> {
        self.pods().find(|p| p.name == name)
    }

    /// The namespace holding the bridge.
    pub fn fabric(&self) -> &Netns {
        &self.fabric
    }

    /// Every namespace name of this cluster starts with this prefix.
    pub fn netns_prefix(&self) -> &str {
        self.names.netns_prefix()
    }

    /// Every interface name of this cluster starts with this tag.
    pub fn interface_tag(&self) -> &str {
        self.names.tag()
    }

    /// Adds a pod called `name` on node `node`. Pod names are unique within
    /// the cluster.
    pub fn add_pod(&mut self, node: usize, name: &str) -> Result<Pod, ClusterError> {
        let valid = !name.is_empty()
            && name.len() <= 40
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid || self.pod_by_name(name).is_some() {
            return Err(ClusterError::PodName(name.to_owned()));
        }
        let node_handle = self.nodes.get(node).ok_or(ClusterError::NoNode(node))?;
        let j = self.pods[node].len();
        let pod = create_pod(&self.names, node_handle, j, name)?;
        self.pods[node].push(pod.clone());
        Ok(pod)
    }
}

impl ClusterBuilder {
    pub fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }

    pub fn pods_per_node(mut self, pods: usize) -> Self {
        self.pods_per_node = pods;
        self
    }

    /// Builds the cluster. Fails with [`ClusterError::Preflight`] when the
    /// process lacks the privileges or tools (see [`preflight`]). Whatever
    /// was created before an error is torn down again.
    pub fn build(self) -> Result<Cluster, ClusterError> {
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return Err(ClusterError::NodeCount(self.nodes));
        }
        if self.pods_per_node > MAX_PODS_PER_NODE {
            return Err(ClusterError::NodeFull { node: 0 });
        }
        preflight::check().map_err(ClusterError::Preflight)?;
        naming::remove_stale_once();

        let names = ClusterNames::next();
        let fabric = Netns::create(&names.netns("fabric"))?;
        let bridge = ifname(&names, "b")?;
        fabric.ip(["link", "set", "lo", "up"])?;
        fabric.ip(["link", "add", &bridge, "type", "bridge"])?;
        fabric.ip(["link", "set", &bridge, "up"])?;

        // Partial clusters are torn down by dropping `cluster` on error.
        let mut cluster = Cluster {
            names,
            pods: Vec::new(),
            nodes: Vec::new(),
            fabric,
        };
        for i in 0..self.nodes {
            let node = create_node(&cluster.names, &cluster.fabric, &bridge, i)?;
            cluster.nodes.push(node);
            cluster.pods.push(Vec::new());
        }
        for node in &cluster.nodes {
            for other in cluster.nodes.iter().filter(|o| o.index != node.index) {
                node.netns.ip([
                    "route",
                    "add",
                    &other.pod_cidr.to_string(),
                    "via",
                    &other.fabric_ip.to_string(),
                    "dev",
                    "eth0",
                ])?;
            }
        }
        for i in 0..self.nodes {
            for j in 0..self.pods_per_node {
                let pod = create_pod(&cluster.names, &cluster.nodes[i], j, &format!("pod{j}"))?;
                cluster.pods[i].push(pod);
            }
        }
        Ok(cluster)
    }
}

fn ifname(names: &ClusterNames, suffix: &str) -> Result<String, ClusterError> {
    names
        .ifname(suffix)
        .ok_or_else(|| ClusterError::IfName(format!("{}{suffix}", names.tag())))
}

fn create_node(
    names: &ClusterNames,
    fabric: &Netns,
    bridge: &str,
    i: usize,
) -> Result<Node, ClusterError> {
    let netns = Netns::create(&names.netns(&format!("node{i}")))?;
    netns.ip(["link", "set", "lo", "up"])?;
    // Before any interface exists, so `default` reaches every later one;
    // the effective rp_filter is the maximum of `all` and the interface's.
    netns.set_sysctl("net.ipv4.ip_forward", "1")?;
    netns.set_sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    netns.set_sysctl("net.ipv4.conf.default.rp_filter", "0")?;

    let port = ifname(names, &format!("f{i}"))?;
    fabric.ip([
        "link",
        "add",
        &port,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        netns.name(),
    ])?;
    fabric.ip(["link", "set", &port, "master", bridge, "up"])?;

    let octet = u8::try_from(i + 1).map_err(|_| ClusterError::NodeCount(i + 1))?;
    let fabric_ip = Ipv4Addr::new(FABRIC_NET[0], FABRIC_NET[1], FABRIC_NET[2], octet);
    let node_octet = u8::try_from(i).map_err(|_| ClusterError::NodeCount(i + 1))?;
    let pod_cidr = Ipv4Net::new(Ipv4Addr::new(POD_NET[0], POD_NET[1], node_octet, 0), 24)
        .map_err(|_| ClusterError::NodeCount(i + 1))?;
    netns.ip(["addr", "add", &format!("{fabric_ip}/24"), "dev", "eth0"])?;
    netns.ip(["link", "set", "eth0", "up"])?;
    Ok(Node {
        index: i,
        name: format!("node{i}"),
        netns,
        fabric_ip,
        pod_cidr,
        gateway_ip: Ipv4Addr::new(POD_NET[0], POD_NET[1], node_octet, 1),
    })
}

fn create_pod(
    names: &ClusterNames,
    node: &Node,
    j: usize,
    name: &str,
) -> Result<Pod, ClusterError> {
    if j >= MAX_PODS_PER_NODE {
        return Err(ClusterError::NodeFull { node: node.index });
    }
    let node_veth = ifname(names, &format!("p{j}"))?;
    let netns = Netns::create(&names.netns(&format!("n{}-{name}", node.index)))?;
    let host = u8::try_from(j + 2).map_err(|_| ClusterError::NodeFull { node: node.index })?;
    let [a, b, c, _] = node.gateway_ip.octets();
    let ip = Ipv4Addr::new(a, b, c, host);
    let gateway = node.gateway_ip.to_string();

    netns.ip(["link", "set", "lo", "up"])?;
    node.netns.ip([
        "link",
        "add",
        &node_veth,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        netns.name(),
    ])?;
    node.netns.ip([
        "addr",
        "add",
        &format!("{gateway}/32"),
        "peer",
        &format!("{ip}/32"),
        "dev",
        &node_veth,
    ])?;
    node.netns.ip(["link", "set", &node_veth, "up"])?;
    netns.ip([
        "addr",
        "add",
        &format!("{ip}/32"),
        "peer",
        &format!("{gateway}/32"),
        "dev",
        "eth0",
    ])?;
    netns.ip(["link", "set", "eth0", "up"])?;
    netns.ip(["route", "add", "default", "via", &gateway, "dev", "eth0"])?;
    Ok(Pod {
        name: name.to_owned(),
        node: node.index,
        netns,
        ip,
        node_veth,
    })
}

//! The mesh's control side: the CA's namespace on the fabric, the per-node
//! bootstrap tokens, and starting the CA and one agent per node.
//!
//! The CA gets a namespace of its own, bridged onto the fabric like a node,
//! so agents reach it over the cluster network as they would reach a CA
//! Service, and no agent's capture rules ever see its traffic.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::bin_path;
use crate::cluster::Cluster;
use crate::netns::{Netns, Process};

use super::{ADMIN_PORT, CA_PORT, METRICS_PORT, MeshError, READINESS_PORT, TRUST_DOMAIN};

/// The CA's address on the fabric (nodes use `.1` upwards).
pub const CA_IP: Ipv4Addr = Ipv4Addr::new(10, 240, 0, 250);
/// Lifetime of workload certificates: long enough that no test sees a renewal.
const CERT_TTL: &str = "1h";
const CA_START_TIMEOUT: Duration = Duration::from_secs(20);

/// The processes of a started mesh.
pub struct Started {
    pub ca_netns: Netns,
    pub ca: Process,
    pub agents: Vec<Process>,
}

pub fn root_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca").join("root-cert.pem")
}

pub fn token_path(dir: &Path, node: usize) -> PathBuf {
    dir.join(format!("node{node}.token"))
}

/// Starts the CA, then one agent per node (readiness is the caller's wait).
pub fn start(
    cluster: &Cluster,
    dir: &Path,
    agent_env: &[(String, String)],
) -> Result<Started, MeshError> {
    let ca_netns = ca_namespace(cluster)?;
    let mut tokens = String::new();
    for node in cluster.nodes() {
        let token = format!("{:032x}", rand::random::<u128>());
        let _ = writeln!(tokens, "{}: \"{token}\"", node.name);
        write(&token_path(dir, node.index), &token)?;
    }
    write(&dir.join("tokens.yaml"), &tokens)?;

    let ca_addr = SocketAddr::new(IpAddr::V4(CA_IP), CA_PORT);
    let mut cmd = Command::new(bin_path("ambit-ca")?);
    cmd.arg("--state-dir")
        .arg(dir.join("ca"))
        .args(["--listen", &ca_addr.to_string()])
        .args(["--trust-domain", TRUST_DOMAIN])
        .args(["--cert-ttl", CERT_TTL])
        .arg("--tokens-file")
        .arg(dir.join("tokens.yaml"))
        .arg("--workloads")
        .arg(dir.join("state.yaml"))
        .args(["--workloads-poll", "1s"]);
    let mut ca = ca_netns.spawn(&cmd)?;
    ca.wait_for_port(ca_addr, CA_START_TIMEOUT)?;
    let root = root_cert_path(dir);
    let start = Instant::now();
    while !root.is_file() {
        if start.elapsed() > CA_START_TIMEOUT {
            return Err(MeshError::Timeout {
                what: format!("no {}", root.display()),
                label: ca.label().to_owned(),
                waited: start.elapsed(),
                log: ca.log(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let agent_bin = bin_path("ambit-agent")?;
    let mut agents = Vec::new();
    for node in cluster.nodes() {
        let mut cmd = Command::new(&agent_bin);
        cmd.args(["run", "--node", &node.name])
            .arg("--state")
            .arg(dir.join("state.yaml"))
            .args(["--trust-domain", TRUST_DOMAIN])
            .args(["--ca-address", &ca_addr.to_string()])
            .arg("--trust-bundle")
            .arg(&root)
            .arg("--token-file")
            .arg(token_path(dir, node.index))
            .args(["--cert-ttl", CERT_TTL])
            .args(["--metrics-addr", &format!("0.0.0.0:{METRICS_PORT}")])
            .args(["--readiness-addr", &format!("0.0.0.0:{READINESS_PORT}")])
            .args(["--admin-addr", &format!("127.0.0.1:{ADMIN_PORT}")])
            // JSON, so tests can read the access log's fields.
            .args(["--log-format", "json"])
            .envs(agent_env.iter().map(|(k, v)| (k, v)));
        agents.push(node.netns.spawn(&cmd)?);
    }
    Ok(Started {
        ca_netns,
        ca,
        agents,
    })
}

/// A namespace on the fabric bridge holding [`CA_IP`].
fn ca_namespace(cluster: &Cluster) -> Result<Netns, MeshError> {
    let netns = Netns::create(&format!("{}ca", cluster.netns_prefix()))?;
    let tag = cluster.interface_tag();
    let (bridge, port) = (format!("{tag}b"), format!("{tag}c"));
    netns.ip(["link", "set", "lo", "up"])?;
    let fabric = cluster.fabric();
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
    fabric.ip(["link", "set", &port, "master", &bridge, "up"])?;
    netns.ip(["addr", "add", &format!("{CA_IP}/24"), "dev", "eth0"])?;
    netns.ip(["link", "set", "eth0", "up"])?;
    Ok(netns)
}

fn write(path: &Path, contents: &str) -> Result<(), MeshError> {
    std::fs::write(path, contents).map_err(|e| MeshError::io(path.to_path_buf(), e))
}

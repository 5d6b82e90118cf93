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

/// How one node's agent is started beyond the usual flags.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// Extra `run` flags.
    pub args: Vec<String>,
    /// RLIMIT_NOFILE `(soft, hard)` the agent starts with (through `prlimit`).
    pub nofile: Option<(u64, u64)>,
    /// Extra environment (e.g. `AMBIT_JWKS_REFRESH_SECS`).
    pub env: Vec<(String, String)>,
}

/// The processes of a started mesh.
pub struct Started {
    pub ca_netns: Netns,
    pub ca: Process,
    pub agents: Vec<Process>,
}

/// The root agents trust: the self-generated one in the CA's state directory,
/// or the plug-in root, whose `cacerts` directory is that same directory.
pub fn root_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca").join("root-cert.pem")
}

pub fn token_path(dir: &Path, node: usize) -> PathBuf {
    dir.join(format!("node{node}.token"))
}

/// Starts the CA (self-rooted, or as the intermediate of a plug-in CA), then
/// one agent per node (readiness is the caller's wait); node `i`'s agent
/// gets `options[i]` when there is one.
pub fn start(
    cluster: &Cluster,
    dir: &Path,
    plugin_ca: bool,
    options: &[AgentOptions],
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
    if plugin_ca {
        super::cacerts::write(&dir.join("ca"), TRUST_DOMAIN)?;
        cmd.arg("--state-dir")
            .arg(dir.join("ca-state"))
            .arg("--cacerts-dir")
            .arg(dir.join("ca"));
    } else {
        cmd.arg("--state-dir").arg(dir.join("ca"));
    }
    cmd.args(["--listen", &ca_addr.to_string()])
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

    let mut agents = Vec::new();
    for node in cluster.nodes() {
        let options = options.get(node.index).cloned().unwrap_or_default();
        agents.push(node.netns.spawn(&agent_command(node, dir, &options)?)?);
    }
    Ok(Started {
        ca_netns,
        ca,
        agents,
    })
}

/// `ambit-agent run` for `node`. Every agent of a node shares the node's
/// run directory, as a DaemonSet's pods share a hostPath: that is where a
/// new agent finds the running one to take over from.
pub fn agent_command(
    node: &crate::Node,
    dir: &Path,
    options: &AgentOptions,
) -> Result<Command, MeshError> {
    let ca_addr = SocketAddr::new(IpAddr::V4(CA_IP), CA_PORT);
    let agent_bin = bin_path("ambit-agent")?;
    let mut cmd = match options.nofile {
        // prlimit execs the agent: same pid, the limit set before it starts.
        Some((soft, hard)) => {
            let mut cmd = Command::new("prlimit");
            cmd.arg(format!("--nofile={soft}:{hard}"))
                .arg("--")
                .arg(&agent_bin);
            cmd
        }
        None => Command::new(&agent_bin),
    };
    cmd.args(["run", "--node", &node.name])
        .arg("--state")
        .arg(dir.join("state.yaml"))
        .args(["--trust-domain", TRUST_DOMAIN])
        .args(["--ca-address", &ca_addr.to_string()])
        .arg("--trust-bundle")
        .arg(root_cert_path(dir))
        .arg("--token-file")
        .arg(token_path(dir, node.index))
        .args(["--cert-ttl", CERT_TTL])
        .args(["--metrics-addr", &format!("0.0.0.0:{METRICS_PORT}")])
        .args(["--readiness-addr", &format!("0.0.0.0:{READINESS_PORT}")])
        .args(["--admin-addr", &format!("127.0.0.1:{ADMIN_PORT}")])
        .arg("--run-dir")
        .arg(run_dir(dir, node.index))
        // JSON, so tests can read the access log's fields.
        .args(["--log-format", "json"])
        .args(&options.args)
        .envs(options.env.iter().map(|(k, v)| (k, v)));
    Ok(cmd)
}

/// Node `node`'s run directory (handover and control sockets).
pub fn run_dir(dir: &Path, node: usize) -> PathBuf {
    dir.join(format!("run-node{node}"))
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

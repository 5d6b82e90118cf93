//! The `plain` mode: an `ambit-agent` on the client's node captures the
//! client pod (its namespace is enrolled in the agent's state file) and
//! carries its connections to the server pod, which is outside the mesh, as
//! plain TCP. Against `baseline` it measures what capture plus one proxy hop
//! cost: TPROXY, the agent's accept and dial, and its byte copying.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ambit_tests::{Cluster, Pod, Process, bin_path};
use anyhow::{Context, bail};

/// The state file the agent watches; removed on drop.
pub struct StateFile(PathBuf);

impl Drop for StateFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts the agent on the client's node and waits until its rules are in.
pub fn start(
    cluster: &Cluster,
    client: &Pod,
    server: &Pod,
) -> anyhow::Result<(Process, StateFile)> {
    let node = cluster.node(client.node);
    let path = std::env::temp_dir().join(format!("{}-state.yaml", cluster.netns_prefix()));
    std::fs::write(&path, state_yaml(cluster, client, server))
        .with_context(|| format!("writing {}", path.display()))?;
    let state = StateFile(path);

    let mut cmd = Command::new(bin_path("ambit-agent")?);
    cmd.args(["run", "--node", &node.name, "--state"])
        .arg(&state.0)
        .args(["--log", "info"]);
    let mut agent = node.netns.spawn(&cmd)?;
    let start = Instant::now();
    while !agent.log().contains("ready") {
        if let Some(status) = agent.try_wait()? {
            bail!("ambit-agent exited ({status}):\n{}", agent.log());
        }
        if start.elapsed() > Duration::from_secs(15) {
            bail!("ambit-agent not ready after 15 s:\n{}", agent.log());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok((agent, state))
}

fn state_yaml(cluster: &Cluster, client: &Pod, server: &Pod) -> String {
    let pod = |pod: &Pod, namespace: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  \
             uid: bench-{name}\nspec:\n  nodeName: {node}\n  serviceAccountName: default\n\
             status:\n  podIP: {ip}\n",
            name = pod.name,
            node = cluster.node(pod.node).name,
            ip = pod.ip,
        )
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: bench\n  labels:\n    \
         istio.io/dataplane-mode: ambient\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  \
         name: external\n{}{}",
        pod(client, "bench"),
        pod(server, "external"),
    )
}

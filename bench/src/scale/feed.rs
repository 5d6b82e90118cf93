//! The state server under test (`--feed`): the real `ambit-agent
//! state-server` binary, as a process of its own so its memory and writes
//! are the kernel's figures, watching the fake API server through a
//! kubeconfig. It serves TLS with a throwaway root that the agents trust,
//! and knows each agent's node by a bootstrap token.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ambit_tests::pki::ServingPki;
use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

const SERVER_NAME: &str = "ambit-state.bench";

/// Files the agents need to reach the server.
#[derive(Clone, Debug)]
pub struct FeedAccess {
    pub address: String,
    pub server_name: String,
    pub root: PathBuf,
    /// `<dir>/<node>.token` per agent.
    pub tokens: PathBuf,
}

impl FeedAccess {
    pub fn token_file(&self, node: &str) -> PathBuf {
        self.tokens.join(format!("{node}.token"))
    }
}

pub struct FeedServer {
    child: Child,
    pub access: FeedAccess,
    _dir: tempfile::TempDir,
}

fn token(node: &str) -> String {
    format!("bench-bootstrap-token-{node}")
}

impl FeedServer {
    /// Starts the server for `nodes` and returns once it has synced.
    pub async fn start(
        kubeconfig: &str,
        nodes: &[String],
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = |name: &str| dir.path().join(name);
        let pki = ServingPki::new(SERVER_NAME)?;
        std::fs::write(path("root.pem"), &pki.root_pem)?;
        std::fs::write(path("cert.pem"), &pki.chain_pem)?;
        std::fs::write(path("key.pem"), &pki.key_pem)?;
        std::fs::write(path("kubeconfig"), kubeconfig)?;
        let mut tokens = String::new();
        for node in nodes {
            tokens.push_str(&format!("{node}: {}\n", token(node)));
            std::fs::write(path(&format!("{node}.token")), token(node))?;
        }
        std::fs::write(path("tokens.yaml"), tokens)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let address = format!("127.0.0.1:{port}");
        let exe = ambit_tests::bin_path("ambit-agent")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("state-server")
            .args(["--listen", &address, "--metrics-addr", "127.0.0.1:0"])
            .arg("--serving-cert")
            .arg(path("cert.pem"))
            .arg("--serving-key")
            .arg(path("key.pem"))
            .arg("--tokens-file")
            .arg(path("tokens.yaml"))
            .env("KUBECONFIG", path("kubeconfig"))
            .env("AMBIT_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting ambit-agent state-server")?;
        let Some(stderr) = child.stderr.take() else {
            bail!("the state server has no stderr");
        };
        let mut lines = BufReader::new(stderr).lines();
        let synced = async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("serving agents") {
                    return Ok(());
                }
            }
            bail!("the state server exited before it synced")
        };
        tokio::time::timeout(timeout, synced)
            .await
            .context("waiting for the state server to sync")??;
        // Keep reading, so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let access = FeedAccess {
            address,
            server_name: SERVER_NAME.to_owned(),
            root: path("root.pem"),
            tokens: dir.path().to_path_buf(),
        };
        Ok(Self {
            child,
            access,
            _dir: dir,
        })
    }

    /// The server's resident memory and what it has written (TLS to the
    /// agents, and its log).
    pub fn report(&self) -> Value {
        let pid = self.child.id().unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        json!({
            "rss_kib": field(&status, "VmRSS:"),
            "hwm_kib": field(&status, "VmHWM:"),
            "written_bytes": field(&io, "wchar:"),
        })
    }
}

fn field(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The agent child's fed source, from its flags.
pub fn config(
    address: &str,
    server_name: &str,
    root: &Path,
    token: &Path,
    node: &str,
) -> ambit_agent::state::source::feed::FeedConfig {
    ambit_agent::state::source::feed::FeedConfig {
        address: address.to_owned(),
        server_name: server_name.to_owned(),
        trust_bundle: root.to_path_buf(),
        token_file: token.to_path_buf(),
        node: node.to_owned(),
    }
}

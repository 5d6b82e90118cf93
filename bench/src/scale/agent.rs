//! The agent under test: the agent's own Kubernetes source and snapshot
//! builder, run as a library in a child process (this binary again, in the
//! hidden `scale-agent` mode), so its memory and CPU are measured alone,
//! from the kernel's accounting, as an operator would see them.
//!
//! The child talks to the bench over its standard streams: it prints
//! `SYNCED <ms>` once the first snapshot is published, `SEEN <k>` as soon as
//! a published snapshot denies the probe principal `k` (the decision the
//! data path would take), and `REPORT <json>` when it reads `report` on its
//! input. It exits when its input closes.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ambit_agent::authz::Inbound;
use ambit_agent::state::source::failover::FailoverWatch;
use ambit_agent::state::source::kube::{KubeSource, KubeWatch};
use ambit_agent::state::{LoadOptions, Snapshot, StateStore};
use ambit_ca::SpiffeId;
use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use super::cluster::{PROBE_NAMESPACE, probe_account};

/// The child's command line (hidden `scale-agent` mode).
#[derive(clap::Args, Debug, Clone)]
pub struct ChildArgs {
    /// The fake API server's URL.
    #[arg(long)]
    pub url: String,
    /// The node this agent serves.
    #[arg(long)]
    pub node: String,
    /// The probe's destination: a pod on this node, and a port.
    #[arg(long)]
    pub probe_dst: SocketAddr,
    /// The probe policy's namespace (`<namespace>/probe` decides).
    #[arg(long)]
    pub probe_namespace: String,
    /// Keep every pod in full, as before compact remote pods (for comparison).
    #[arg(long)]
    pub full: bool,
    /// The state feed's address: take everything but this node's pods from it.
    #[arg(long, requires_all = ["feed_server_name", "feed_root", "feed_token"])]
    pub feed: Option<String>,
    #[arg(long)]
    pub feed_server_name: Option<String>,
    #[arg(long)]
    pub feed_root: Option<PathBuf>,
    #[arg(long)]
    pub feed_token: Option<PathBuf>,
}

/// The `scale-agent` mode: runs until its input closes.
pub fn run_child(args: ChildArgs) -> anyhow::Result<()> {
    // The agent's default: two worker threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(child(args))
}

async fn child(args: ChildArgs) -> anyhow::Result<()> {
    let store = StateStore::new(Snapshot::default());
    let client = kube::Client::try_from(kube::Config::new(args.url.parse()?))?;
    let started = Instant::now();
    let mut source = KubeSource::new(client, LoadOptions::default());
    if !args.full {
        source = source.with_node(&args.node);
    }
    let watch = match (
        &args.feed,
        &args.feed_server_name,
        &args.feed_root,
        &args.feed_token,
    ) {
        (Some(address), Some(name), Some(root), Some(token)) => {
            let config = super::feed::config(address, name, root, token, &args.node);
            let fed = source.clone().fed_by(config);
            // Never falling back during a run: what is measured is the feed.
            let watch = FailoverWatch::start(fed, source, store.clone(), Duration::from_secs(3600));
            watch.synced().await;
            Watch::Fed(watch)
        }
        _ => {
            let watch = source.start(store.clone());
            watch.synced().await;
            Watch::Direct(watch)
        }
    };
    println!("SYNCED {}", started.elapsed().as_millis());

    let mut snapshots = store.subscribe();
    let probe = args.clone();
    tokio::spawn(async move {
        let mut next = 1;
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            while denies_probe(&snapshot, &probe, next) {
                println!("SEEN {next}");
                next += 1;
            }
            if snapshots.changed().await.is_err() {
                return;
            }
        }
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim() == "report" {
            let status = store.status();
            let current = store.current();
            let report = json!({
                "rss_kib": proc_status_kib("VmRSS:"),
                "hwm_kib": proc_status_kib("VmHWM:"),
                // Heap and stacks, without the binary's mapped pages.
                "anon_kib": proc_status_kib("RssAnon:"),
                "cpu_ms": cpu_ms(),
                "generation": status.generation,
                "workloads": current.workloads().count(),
                "remote_pods": current.remote_pod_count(),
                "source": match &watch {
                    Watch::Direct(_) => "direct".to_owned(),
                    Watch::Fed(watch) => format!("{:?}", *watch.mode().borrow()),
                },
                "cache_bytes": match &watch {
                    Watch::Direct(watch) => watch.cache_bytes(),
                    Watch::Fed(_) => 0,
                },
            });
            println!("REPORT {report}");
        }
    }
    Ok(())
}

/// The child's source.
enum Watch {
    Direct(KubeWatch),
    Fed(FailoverWatch),
}

/// Whether the snapshot's decision for principal `k` is the probe policy's
/// DENY: what the data path would answer a connection from that peer.
fn denies_probe(snapshot: &Snapshot, args: &ChildArgs, k: u64) -> bool {
    let Ok(peer) = SpiffeId::new("cluster.local", PROBE_NAMESPACE, probe_account(k)) else {
        return false;
    };
    let inbound = Inbound {
        src: IpAddr::from([192, 0, 2, 200]),
        peer: Some(&peer),
        dst: args.probe_dst,
    };
    let deciding = format!("{}/probe", args.probe_namespace);
    snapshot
        .authorize(&inbound)
        .is_ok_and(|d| !d.allowed && d.policy.as_deref() == Some(deciding.as_str()))
}

fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with(field))?.to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// User plus system CPU time of the process so far.
fn cpu_ms() -> u64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0, |u| {
        let ms = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1000 + t.tv_usec() as u64 / 1000;
        ms(u.user_time()) + ms(u.system_time())
    })
}

/// What the child says.
#[derive(Debug)]
pub enum Said {
    Synced(Duration),
    Seen(u64),
    Report(Value),
}

/// The bench's handle on one child agent.
#[derive(Debug)]
pub struct AgentProcess {
    pub node: String,
    child: Child,
    stdin: ChildStdin,
    said: mpsc::UnboundedReceiver<Said>,
}

impl AgentProcess {
    pub fn spawn(args: &ChildArgs) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the bench binary")?;
        let mut command = tokio::process::Command::new(exe);
        command
            .arg("scale-agent")
            .args(["--url", &args.url, "--node", &args.node])
            .args(["--probe-dst", &args.probe_dst.to_string()])
            .args(["--probe-namespace", &args.probe_namespace])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if args.full {
            command.arg("--full");
        }
        if let (Some(feed), Some(name), Some(root), Some(token)) = (
            &args.feed,
            &args.feed_server_name,
            &args.feed_root,
            &args.feed_token,
        ) {
            command
                .args(["--feed", feed, "--feed-server-name", name])
                .arg("--feed-root")
                .arg(root)
                .arg("--feed-token")
                .arg(token);
        }
        let mut child = command.spawn().context("starting the agent child")?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("the agent child has no pipes");
        };
        let (tx, said) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let parsed = match line.split_once(' ') {
                    Some(("SYNCED", ms)) => ms
                        .parse()
                        .ok()
                        .map(|ms| Said::Synced(Duration::from_millis(ms))),
                    Some(("SEEN", k)) => k.parse().ok().map(Said::Seen),
                    Some(("REPORT", json)) => serde_json::from_str(json).ok().map(Said::Report),
                    _ => None,
                };
                if let Some(said) = parsed
                    && tx.send(said).is_err()
                {
                    return;
                }
            }
        });
        Ok(Self {
            node: args.node.clone(),
            child,
            stdin,
            said,
        })
    }

    /// The next thing the child says, within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Said> {
        match tokio::time::timeout(timeout, self.said.recv()).await {
            Ok(Some(said)) => Ok(said),
            Ok(None) => bail!("agent {} exited", self.node),
            Err(_) => bail!("agent {} said nothing for {timeout:?}", self.node),
        }
    }

    pub async fn synced(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        loop {
            if let Said::Synced(took) = self.next(timeout).await? {
                return Ok(took);
            }
        }
    }

    /// Waits until the child has seen probe `k` (or a later one).
    pub async fn seen(&mut self, k: u64, timeout: Duration) -> anyhow::Result<()> {
        loop {
            if let Said::Seen(seen) = self.next(timeout).await?
                && seen >= k
            {
                return Ok(());
            }
        }
    }

    pub async fn report(&mut self) -> anyhow::Result<Value> {
        self.stdin.write_all(b"report\n").await?;
        loop {
            if let Said::Report(report) = self.next(Duration::from_secs(30)).await? {
                return Ok(report);
            }
        }
    }

    pub async fn stop(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

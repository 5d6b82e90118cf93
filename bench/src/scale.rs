//! The `scale` mode: the agent's Kubernetes state at cluster scale.
//!
//! For each size it generates a cluster (`cluster`), loads it into the fake
//! API server of `ambit-tests` (which counts the bytes and watch events it
//! sends), starts one or more agents (`agent`: the agent's own Kubernetes
//! source and snapshot builder in child processes, each playing one node),
//! waits for their first snapshot, then churns the cluster (`churn`) while
//! probing how long a policy edit takes to change the agents' decisions.
//! Many agents are simulated by that many children, each with its own
//! watches, as the API server would see them; a 5,000-node cluster's load
//! is the per-agent figure times 5,000, since every agent's watches carry
//! every change.

mod agent;
mod churn;
mod cluster;
mod feed;
mod table;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use ambit_tests::fake_kube::{FakeKube, Traffic};
use anyhow::Context;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use agent::AgentProcess;
pub use agent::{ChildArgs, run_child};
use cluster::{Population, Shape, probe_policy};
use table::Row;

/// `ambit-bench scale` settings.
#[derive(clap::Args, Debug, Clone)]
pub struct Settings {
    /// Cluster sizes to measure, in pods.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000,150000")]
    pub pods: Vec<usize>,
    /// Nodes; by default one per 30 pods, at most 5,000.
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Agents to run (each a process with its own watches, on its own node).
    #[arg(long, default_value_t = 1)]
    pub agents: usize,
    /// How long the churn phase lasts, in seconds.
    #[arg(long, default_value_t = 30)]
    pub churn_seconds: u64,
    /// Pod replacements per second during churn (six API changes each).
    #[arg(long, default_value_t = 20.0)]
    pub replacements_per_sec: f64,
    /// Pod label edits per second during churn.
    #[arg(long, default_value_t = 5.0)]
    pub relabels_per_sec: f64,
    /// AuthorizationPolicy edits per second during churn (besides the probe).
    #[arg(long, default_value_t = 0.5)]
    pub policy_edits_per_sec: f64,
    /// Keep every pod in full in the agents (the state before compact
    /// remote pods), for comparison.
    #[arg(long)]
    pub full: bool,
    /// Agents take everything but their node's pods from the state feed:
    /// `ambit-agent state-server` (the release binary beside this one) runs
    /// as a process, watching the fake API server once.
    #[arg(long, conflicts_with = "full")]
    pub feed: bool,
}

pub fn run(settings: &Settings, json_path: Option<&std::path::Path>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for &pods in &settings.pods {
        let nodes = settings.nodes.unwrap_or((pods / 30).clamp(1, 5000));
        eprintln!(
            "scale: {pods} pods on {nodes} nodes, {} agent(s)",
            settings.agents
        );
        let row = runtime
            .block_on(measure(settings, pods, nodes))
            .with_context(|| format!("measuring {pods} pods"))?;
        eprintln!("{}", table::markdown(std::slice::from_ref(&row)));
        rows.push(row);
    }
    println!("{}", table::markdown(&rows));
    let json = serde_json::to_string_pretty(&json!({
        "mode": "scale",
        "load_average": load_average(),
        "full": settings.full,
        "feed": settings.feed,
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
    }))?;
    println!("{json}");
    if let Some(path) = json_path {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn measure(settings: &Settings, pods: usize, nodes: usize) -> anyhow::Result<Row> {
    let shape = Shape::new(pods, nodes);
    let population = Population::new(shape.clone());
    let fake = Arc::new(FakeKube::start().await?);
    for object in population.objects() {
        fake.apply(&object)?;
    }
    fake.apply(&probe_policy(&shape, 0, 0))?;
    let target = population.probe_target().clone();
    let probe_dst = SocketAddr::new(target.ip.into(), 8080);
    let probe_namespace = shape.namespace_of(target.deployment);
    let population = Arc::new(Mutex::new(population));
    let before = fake.counts().total_traffic();

    let nodes_of_agents: Vec<String> = (0..settings.agents).map(Shape::agent_node).collect();
    let server = match settings.feed {
        true => Some(
            feed::FeedServer::start(
                &fake.kubeconfig(),
                &nodes_of_agents,
                Duration::from_secs(1800),
            )
            .await?,
        ),
        false => None,
    };
    let server_synced = server.as_ref().map(feed::FeedServer::report);
    let mut agents = Vec::new();
    for node in &nodes_of_agents {
        let access = server.as_ref().map(|s| s.access.clone());
        agents.push(AgentProcess::spawn(&ChildArgs {
            url: fake.url(),
            node: node.clone(),
            probe_dst,
            probe_namespace: probe_namespace.clone(),
            full: settings.full,
            feed: access.as_ref().map(|a| a.address.clone()),
            feed_server_name: access.as_ref().map(|a| a.server_name.clone()),
            feed_root: access.as_ref().map(|a| a.root.clone()),
            feed_token: access.as_ref().map(|a| a.token_file(node)),
        })?);
    }
    let mut sync = Duration::ZERO;
    for agent in &mut agents {
        sync = sync.max(agent.synced(Duration::from_secs(1800)).await?);
    }
    // Let the allocator return the list's transient buffers, as it would in
    // a running agent, before reading the resident size.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let synced = reports(&mut agents).await?;
    let synced_traffic = fake.counts().total_traffic();
    let server_after_sync = server.as_ref().map(feed::FeedServer::report);

    let made = Arc::new(AtomicU64::new(0));
    let churn = tokio::spawn(churn::run(
        fake.clone(),
        population.clone(),
        churn::Rates {
            pod_replacements_per_sec: settings.replacements_per_sec,
            relabels_per_sec: settings.relabels_per_sec,
            policy_edits_per_sec: settings.policy_edits_per_sec,
        },
        made.clone(),
    ));
    let churn_started = Instant::now();
    let churn_for = Duration::from_secs(settings.churn_seconds);
    let mut propagation = Vec::new();
    let mut k = 0;
    while churn_started.elapsed() < churn_for {
        k += 1;
        let applied = Instant::now();
        fake.apply(&probe_policy(&shape, target.deployment, k))?;
        for agent in &mut agents {
            agent.seen(k, Duration::from_secs(30)).await?;
        }
        propagation.push(applied.elapsed());
        tokio::time::sleep_until((applied + Duration::from_secs(1)).into()).await;
    }
    churn.abort();
    let churned_for = churn_started.elapsed();
    let after = reports(&mut agents).await?;
    let after_traffic = fake.counts().total_traffic();
    let server_after = server.as_ref().map(feed::FeedServer::report);
    if let (Some(at_sync), Some(settled), Some(after)) =
        (&server_synced, &server_after_sync, &server_after)
    {
        let written = |r: &Value| r["written_bytes"].as_f64().unwrap_or(0.0);
        let per_agent = settings.agents as f64;
        eprintln!(
            "state server: RSS {} KiB synced, {} KiB after churn (peak {} KiB); wrote {:.1} MiB per agent to sync, {:.1} KiB/s per agent during churn",
            settled["rss_kib"],
            after["rss_kib"],
            after["hwm_kib"],
            (written(settled) - written(at_sync)) / per_agent / 1048576.0,
            (written(after) - written(settled)) / per_agent / churned_for.as_secs_f64() / 1024.0,
        );
    }
    for agent in agents {
        agent.stop().await;
    }

    Ok(Row {
        pods,
        nodes,
        agents: settings.agents,
        sync,
        synced,
        after,
        churn: churned_for,
        api_changes: made.load(std::sync::atomic::Ordering::Relaxed) + k,
        propagation,
        sync_traffic: diff(synced_traffic, before),
        churn_traffic: diff(after_traffic, synced_traffic),
        server: server_after.map(|after| {
            json!({ "at_sync": server_synced, "synced": server_after_sync, "after_churn": after })
        }),
    })
}

async fn reports(agents: &mut [AgentProcess]) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for agent in agents {
        out.push(agent.report().await?);
    }
    Ok(out)
}

fn diff(a: Traffic, b: Traffic) -> Traffic {
    Traffic {
        list_bytes: a.list_bytes - b.list_bytes,
        list_items: a.list_items - b.list_items,
        watch_bytes: a.watch_bytes - b.watch_bytes,
        watch_events: a.watch_events - b.watch_events,
        bookmarks: a.bookmarks - b.bookmarks,
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

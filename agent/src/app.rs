//! The composition root of `ambit-agent run` and of the `capture`
//! subcommands: builds the state source, the socket factory, the listeners
//! and the capture rules from the command line, runs them, and takes them
//! down in order on SIGTERM or Ctrl-C.
//!
//! Start order: state (fail closed until the first load), the mesh
//! (identities, HBONE listener, metrics/readiness/admin servers, see
//! `app::mesh`), the proxy listeners, then rules, so no packet is steered to
//! a port nobody listens on. Readiness waits for the state, the local
//! workloads' certificates and the listeners.
//!
//! Stop order (SIGTERM, Ctrl-C or the admin `/quitquitquit`): pods' rules
//! out (nothing new is captured), then a two-phase drain: listeners stop
//! accepting and HBONE connections get a GOAWAY, open connections have the
//! drain timeout to finish, then the rest are cut; finally the rest of the
//! rules go. Connections in flight keep their return path until the end.

mod credentials;
mod mesh;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::capture::{self, Capture, Family, RuleConfig};
use crate::cli::{CaptureArgs, CaptureCommand, CaptureFlags, RunArgs};
use crate::drain;
use crate::proxy::inbound_plain::InboundPlainProxy;
use crate::proxy::outbound::OutboundProxy;
use crate::readiness::Readiness;
use crate::socket::SocketFactory;
use crate::state::source::kube::{KubeSource, KubeWatch};
use crate::state::source::{FileSource, FileWatch};
use crate::state::{Snapshot, StateStore};
use crate::telemetry::LogHandle;

/// Runs the agent until SIGTERM, Ctrl-C or `/quitquitquit`. `logs`, when
/// given, lets the admin server change the log filter.
pub async fn run(args: RunArgs, logs: Option<LogHandle>) -> anyhow::Result<()> {
    tracing::info!(
        node = %args.node,
        state = %args.state.state.display(),
        capture = ?args.capture,
        connect_timeout_ms = args.connect_timeout_ms,
        drain_timeout_ms = args.drain_timeout_ms,
        mesh = ?args.mesh,
        "starting"
    );
    let readiness = Readiness::new();
    let state_loaded = readiness.block("state");
    let store = StateStore::new(Snapshot::default());
    let _watch = start_state(&args, &store).await?;
    drop(state_loaded);

    let flags = &args.capture;
    let rules = flags.rule_config();
    let families = flags.families();
    let factory = SocketFactory::capturing(
        rules.skip_mark.value,
        Duration::from_millis(args.connect_timeout_ms),
    );
    let any = listen_ip(&families);
    let outbound_listener = factory
        .listen(SocketAddr::new(any, rules.ports.outbound))
        .context("binding the outbound listener")?;
    let inbound_listener = factory
        .listen(SocketAddr::new(any, rules.ports.inbound_plain))
        .context("binding the inbound plaintext listener")?;
    // Not ready until the rules steer the pods' traffic through the agent.
    let capture_installed = readiness.block("capture");
    let shutdown = CancellationToken::new();
    let (drain_trigger, drain_watch) = drain::channel();
    let mesh = mesh::start(
        &args,
        rules.ports.hbone,
        &store,
        factory,
        any,
        &readiness,
        &drain_watch,
        &shutdown,
        logs,
    )
    .await?;
    // Only the servers hold watchers: the drain completes when they are done.
    drop(drain_watch);

    let capture = Arc::new(capture_for(flags)?);
    let pods = capture::captured_ips(&store.current(), &args.node, &families);
    let installed = {
        let (capture, pods) = (capture.clone(), pods.clone());
        tokio::task::spawn_blocking(move || capture.install(&pods)).await?
    }
    .context("installing capture rules")?;
    drop(capture_installed);
    tracing::info!(
        backend = %capture.backend(),
        pods = ?pods,
        repaired_base = installed.base_written,
        outbound = %rules.ports.outbound,
        inbound_plain = %rules.ports.inbound_plain,
        "capture installed"
    );

    let drain = Duration::from_millis(args.drain_timeout_ms);
    let parts = &mesh.mesh;
    let outbound = OutboundProxy::new(
        store.clone(),
        factory,
        parts.observer.clone(),
        Some(parts.forwarder.clone()),
    );
    let inbound = InboundPlainProxy::new(
        store.clone(),
        args.node.clone(),
        factory,
        parts.observer.clone(),
        parts.admission.clone(),
    );
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(outbound.serve(outbound_listener, shutdown.clone(), drain));
    servers.spawn(inbound.serve(inbound_listener, shutdown.clone(), drain));
    let follower = tokio::spawn(capture::follow_state(
        capture.clone(),
        store.subscribe(),
        args.node.clone(),
        families,
        pods,
        shutdown.clone(),
    ));
    {
        let readiness = readiness.clone();
        tokio::spawn(async move {
            readiness.ready().await;
            tracing::info!("ready");
        });
    }

    let reason = tokio::select! {
        reason = wait_for_termination() => reason,
        () = mesh.quit.notified() => "quitquitquit",
    };
    tracing::info!(reason, "shutting down");
    shutdown.cancel();
    let _ = follower.await;
    // No new captures from here on; established ones keep their return path.
    let stop_capturing = {
        let capture = capture.clone();
        tokio::task::spawn_blocking(move || capture.reconcile(&BTreeSet::new())).await?
    };
    if let Err(error) = stop_capturing {
        tracing::warn!(%error, "removing pod rules before drain");
    }
    // Phase one: the proxies stop accepting and give open connections the
    // drain timeout (`serve`), HBONE sends GOAWAY, the HTTP servers finish
    // their requests; phase two cuts whatever is left.
    let drained = tokio::spawn(drain_trigger.drain(drain, Duration::from_secs(1)));
    while servers.join_next().await.is_some() {}
    let mut tasks = mesh.tasks;
    let tracker = mesh.mesh.tracker.clone();
    let finished = tokio::time::timeout(drain, async {
        while tasks.join_next().await.is_some() {}
        // Inbound tunnels outlive the HBONE listener; they are tracked.
        while !tracker.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if finished.is_err() {
        tracing::info!(
            open = tracker.len(),
            "drain timeout passed; cutting the rest"
        );
        tasks.shutdown().await;
    }
    if let Ok(outcome) = drained.await {
        tracing::info!(?outcome, open = mesh.metrics.open_connections(), "drained");
    }
    tokio::task::spawn_blocking(move || capture.uninstall())
        .await?
        .context("removing capture rules")?;
    tracing::info!("capture removed; stopped");
    Ok(())
}

/// Keeps the state source running while held.
#[expect(dead_code, reason = "only held, for what dropping it stops")]
enum StateWatch {
    File(FileWatch),
    Kube(KubeWatch),
}

/// Starts the state source and returns once its first complete snapshot is
/// in `store` (the file read, or the Kubernetes watches listed).
async fn start_state(args: &RunArgs, store: &StateStore) -> anyhow::Result<StateWatch> {
    let options = args.state.load_options();
    if args.kube {
        let watch = KubeSource::infer(options)
            .await
            .context("connecting to the Kubernetes API")?
            .start(store.clone());
        tracing::info!("waiting for the first Kubernetes sync");
        watch.synced().await;
        return Ok(StateWatch::Kube(watch));
    }
    let watch = FileSource::new(&args.state.state, options)
        .start(store.clone())
        .await
        .with_context(|| format!("loading state from {}", args.state.state.display()))?;
    Ok(StateWatch::File(watch))
}

/// `ambit-agent capture install|uninstall|status`.
pub fn capture(command: CaptureCommand) -> anyhow::Result<()> {
    match command {
        CaptureCommand::Install(args) => {
            let capture = capture_for(&args.capture)?;
            let pods = pods_from_state(&args)?;
            let applied = capture.install(&pods).context("installing capture rules")?;
            println!(
                "capture installed ({} backend): {} pods, {} added, {} updated, {} removed",
                capture.backend(),
                pods.len(),
                applied.added.len(),
                applied.updated.len(),
                applied.removed.len()
            );
        }
        CaptureCommand::Uninstall(args) => {
            capture_for(&args.capture)?
                .uninstall()
                .context("removing capture rules")?;
            println!("capture removed");
        }
        CaptureCommand::Status(args) => {
            let status = capture_for(&args.capture)?
                .status()
                .context("reading capture rules")?;
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
    }
    Ok(())
}

fn pods_from_state(args: &CaptureArgs) -> anyhow::Result<BTreeSet<IpAddr>> {
    let snapshot = FileSource::new(&args.state.state, args.state.load_options())
        .load()
        .with_context(|| format!("loading state from {}", args.state.state.display()))?;
    Ok(capture::captured_ips(
        &snapshot,
        &args.node,
        &args.capture.families(),
    ))
}

fn capture_for(flags: &CaptureFlags) -> anyhow::Result<Capture> {
    let backend = flags
        .iptables_backend
        .resolve()
        .context("choosing the iptables backend")?;
    Ok(Capture::new(flags.rule_config(), backend, flags.families()))
}

/// Listen on IPv6 `::` (dual stack) only when IPv6 capture is on.
fn listen_ip(families: &[Family]) -> IpAddr {
    if families.contains(&Family::V6) {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

impl CaptureFlags {
    pub fn rule_config(&self) -> RuleConfig {
        RuleConfig {
            ports: capture::CapturePorts {
                outbound: self.outbound_port,
                inbound_plain: self.inbound_plain_port,
                hbone: self.hbone_port,
            },
            tproxy_mark: self.tproxy_mark,
            skip_mark: self.skip_mark,
            route_table: self.route_table,
            rule_priority: self.rule_priority,
        }
    }

    pub fn families(&self) -> Vec<Family> {
        if self.ipv6 {
            vec![Family::V4, Family::V6]
        } else {
            vec![Family::V4]
        }
    }
}

async fn wait_for_termination() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return "ctrl-c";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "ctrl-c",
    }
}

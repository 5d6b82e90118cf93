//! The composition root of `ambit-agent run` and of the `capture`
//! subcommands: builds the state source, the socket factory, the listeners
//! and the capture rules from the command line, runs them, and takes them
//! down in order on SIGTERM or Ctrl-C.
//!
//! Start order: state (fail closed until the first load), listeners, then
//! rules, so no packet is steered to a port nobody listens on. Stop order:
//! pods' rules out (nothing new is captured), listeners drain, then the rest
//! of the rules; connections in flight keep their return path until the end.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::capture::{self, Capture, Family, RuleConfig};
use crate::cli::{CaptureArgs, CaptureCommand, CaptureFlags, RunArgs};
use crate::proxy::AccessLog;
use crate::proxy::inbound_plain::{AllowAll, InboundPlainProxy};
use crate::proxy::outbound::OutboundProxy;
use crate::socket::SocketFactory;
use crate::state::source::FileSource;
use crate::state::{Snapshot, StateStore};

/// Runs the agent until SIGTERM or Ctrl-C.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    tracing::info!(
        node = %args.node,
        state = %args.state.state.display(),
        capture = ?args.capture,
        connect_timeout_ms = args.connect_timeout_ms,
        drain_timeout_ms = args.drain_timeout_ms,
        "starting"
    );
    let store = StateStore::new(Snapshot::default());
    let _watch = FileSource::new(&args.state.state, args.state.load_options())
        .start(store.clone())
        .await
        .with_context(|| format!("loading state from {}", args.state.state.display()))?;

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

    let capture = Arc::new(capture_for(flags)?);
    let pods = capture::captured_ips(&store.current(), &args.node, &families);
    let installed = {
        let (capture, pods) = (capture.clone(), pods.clone());
        tokio::task::spawn_blocking(move || capture.install(&pods)).await?
    }
    .context("installing capture rules")?;
    tracing::info!(
        backend = %capture.backend(),
        pods = ?pods,
        repaired_base = installed.base_written,
        outbound = %rules.ports.outbound,
        inbound_plain = %rules.ports.inbound_plain,
        "capture installed"
    );

    let shutdown = CancellationToken::new();
    let drain = Duration::from_millis(args.drain_timeout_ms);
    let observer = Arc::new(AccessLog);
    let outbound = OutboundProxy::new(store.clone(), factory, observer.clone(), None);
    let inbound = InboundPlainProxy::new(
        store.clone(),
        args.node.clone(),
        factory,
        observer,
        Arc::new(AllowAll),
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
    tracing::info!("ready");

    let reason = wait_for_termination().await;
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
    while servers.join_next().await.is_some() {}
    tokio::task::spawn_blocking(move || capture.uninstall())
        .await?
        .context("removing capture rules")?;
    tracing::info!("capture removed; stopped");
    Ok(())
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

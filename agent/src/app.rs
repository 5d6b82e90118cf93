//! The composition root of `ambit-agent run` and of the `capture`
//! subcommands: builds the state source, the socket factory, the listeners
//! and the capture rules from the command line, runs them, and takes them
//! down in order when the agent stops serving.
//!
//! Start: if an agent already serves the node (its `handover.sock` answers),
//! this one loads its state and certificates while the other keeps serving,
//! then takes over its listening sockets (`handover`). Otherwise it binds
//! them first, serves readiness (not ready, saying why), admin and metrics at
//! once, and loads.
//! Either way the capture rules are reconciled once the listeners are ours;
//! rules a crashed agent left are adopted, not duplicated.
//!
//! Stop: the agent stops serving when its successor has taken the sockets,
//! or on SIGTERM, Ctrl-C or the control socket's `/quitquitquit`. The
//! capture rules of enrolled pods always stay: after a handover they are the
//! successor's; otherwise they switch to closed, so captured connections are
//! refused until an agent serves again, never let through. Listeners stop
//! accepting, HBONE connections get a GOAWAY, plain-path connections move to
//! the successor if there is one (`proxy::moving`), and every connection the
//! agent still carries may run to its end until the drain deadline, which
//! resets what is left. Only `ambit-agent capture uninstall` removes the rules.

mod credentials;
mod freshness;
mod mesh;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::capture::{self, Capture, Family, RuleConfig};
use crate::cli::{CaptureArgs, CaptureCommand, CaptureFlags, RunArgs, StateServerArgs};
use crate::drain::{self, DrainWatcher};
use crate::handover::connections::{AdoptListener, Adopted};
use crate::handover::{self, Listeners, Predecessor, Role};
use crate::proxy::inbound_plain::InboundPlainProxy;
use crate::proxy::moving::Handoff;
use crate::proxy::outbound::OutboundProxy;
use crate::readiness::Readiness;
use crate::socket::{self, SocketFactory};
use crate::state::source::failover::FailoverWatch;
use crate::state::source::feed::FeedConfig;
use crate::state::source::kube::{KubeSource, KubeWatch};
use crate::state::source::{FileSource, FileWatch};
use crate::state::{LoadOptions, Snapshot, StateStore};
use crate::state_server::StateServer;
use crate::telemetry::LogHandle;
use ambit_ca::authn::Authenticator;
use ambit_ca::authn::bootstrap::FollowedTokens;
use ambit_ca::authn::token_review::TokenReviewAuthenticator;
use ambit_ca::serving::FollowedServingCert;
use tokio::net::TcpListener;

pub use mesh::CONTROL_SOCKET;

/// How the agent gets its listening sockets.
enum Start {
    /// Nobody serves the node: bound at once.
    Fresh(Listeners),
    /// Taken from the running agent once this one is ready.
    TakeOver(Predecessor),
}

/// Why the agent stopped serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// A new agent holds the listeners and the rules.
    HandedOver,
    /// Told to stop (SIGTERM, Ctrl-C, `/quitquitquit`): nobody serves next.
    Terminated(&'static str),
}

/// Runs the agent until it hands over or is told to stop, then drains.
/// `logs`, when given, lets the control socket change the log filter.
pub async fn run(args: RunArgs, logs: Option<LogHandle>) -> anyhow::Result<()> {
    tracing::info!(
        node = %args.node,
        state = %args.state.state.display(),
        capture = ?args.capture,
        connect_timeout_ms = args.connect_timeout_ms,
        drain_timeout_ms = args.drain_timeout_ms,
        run_dir = %args.run_dir.display(),
        mesh = ?args.mesh,
        "starting"
    );
    let readiness = Readiness::new();
    let serving = readiness.block("listeners");
    let capture_installed = readiness.block("capture");
    let state_loaded = readiness.block("state");
    let flags = &args.capture;
    let rules = flags.rule_config();
    let families = flags.families();
    let factory = SocketFactory::capturing(
        rules.skip_mark.value,
        Duration::from_millis(args.connect_timeout_ms),
    );
    let (drain_trigger, drain_watch) = drain::channel();
    let store = StateStore::new(Snapshot::default());
    // Serves admin and metrics on duplicates until the mesh's own servers run.
    let (waiting_trigger, waiting_watch) = drain::channel();
    let start = match Predecessor::find(&args.run_dir, &Role::ALL) {
        Some(predecessor) => {
            tracing::info!(
                run_dir = %args.run_dir.display(),
                "an agent serves this node; taking over once ready"
            );
            Start::TakeOver(predecessor)
        }
        None => {
            let listeners = bind_listeners(&args, &rules, &factory)?;
            // Probes learn why the agent is not ready yet.
            tokio::spawn(crate::admin::serve_readiness(
                listeners.duplicate(Role::Readiness)?,
                readiness.clone(),
                drain_watch.clone(),
            ));
            serve_while_waiting(&listeners, &store, &readiness, &waiting_watch)?;
            Start::Fresh(listeners)
        }
    };
    drop(waiting_watch);

    // Until the first sync, readiness says what the source is stuck on.
    let explain = tokio::spawn(explain_state_wait(store.clone(), readiness.clone()));
    let _watch = start_state(&args, &store).await?;
    explain.abort();
    readiness.explain("state", None);
    drop(state_loaded);
    let shutdown = CancellationToken::new();
    let lifetime = CancellationToken::new();
    let _end_of_life = lifetime.clone().drop_guard();
    let mut mesh = mesh::start(
        &args, &store, factory, &readiness, &shutdown, &lifetime, logs,
    )
    .await?;

    let (adopted, moved_out, moved_in) = adoption();
    let mut listeners = match start {
        Start::Fresh(listeners) => listeners,
        Start::TakeOver(predecessor) => {
            // Bound before the listeners are taken: the predecessor starts
            // moving its plain connections as soon as they are.
            match AdoptListener::bind(&args.run_dir) {
                Ok(listener) => {
                    tokio::spawn(listener.serve(adopted, shutdown.clone()));
                }
                Err(error) => tracing::warn!(
                    %error,
                    "plain connections stay with the previous agent until they end"
                ),
            }
            take_over(
                predecessor,
                &args,
                &rules,
                &factory,
                &readiness,
                &drain_watch,
            )
            .await?
        }
    };
    let handover_copy = listeners
        .try_clone()
        .context("duplicating the listeners for the next agent")?;
    mesh::serve(&mut mesh, &mut listeners, &args.run_dir, &drain_watch)?;
    tokio::spawn(waiting_trigger.drain(Duration::from_secs(5), Duration::from_millis(100)));
    let outbound_listener = listeners.take(Role::Outbound)?;
    let inbound_listener = listeners.take(Role::InboundPlain)?;
    // What is left is the readiness socket, served by its duplicate.
    drop(listeners);
    // Only the servers hold watchers: the drain completes when they are done.
    drop(drain_watch);

    let drain = Duration::from_millis(args.drain_timeout_ms);
    let parts = &mesh.mesh;
    let handoff = Handoff::new(args.run_dir.clone());
    let outbound = OutboundProxy::new(
        store.clone(),
        factory,
        parts.observer.clone(),
        Some(parts.forwarder.clone()),
        handoff.clone(),
    );
    let inbound = InboundPlainProxy::new(
        store.clone(),
        args.node.clone(),
        factory,
        parts.observer.clone(),
        parts.admission.clone(),
        handoff.clone(),
    );
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(outbound.serve(outbound_listener, moved_out, shutdown.clone(), drain));
    servers.spawn(inbound.serve(inbound_listener, moved_in, shutdown.clone(), drain));
    drop(serving);

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
    let follower = tokio::spawn(capture::follow_state(
        capture.clone(),
        store.subscribe(),
        args.node.clone(),
        families,
        pods,
        shutdown.clone(),
    ));
    let handed_over = CancellationToken::new();
    let stop_handover = CancellationToken::new();
    let handover_server = {
        let serve = handover::serve(
            args.run_dir.clone(),
            handover_copy,
            handed_over.clone(),
            stop_handover.clone(),
        );
        tokio::spawn(async move {
            if let Err(error) = serve.await {
                tracing::error!(%error, "no handover socket: a new agent cannot take over from this one");
            }
        })
    };
    {
        let readiness = readiness.clone();
        tokio::spawn(async move {
            readiness.ready().await;
            tracing::info!("ready");
        });
    }

    let mut stop = tokio::select! {
        reason = wait_for_termination() => Stop::Terminated(reason),
        () = mesh.quit.notified() => Stop::Terminated("quitquitquit"),
        () = handed_over.cancelled() => Stop::HandedOver,
    };
    let successor_wait = Duration::from_millis(args.successor_wait_ms);
    if stop != Stop::HandedOver && !successor_wait.is_zero() {
        tracing::info!(
            ?stop,
            wait_ms = args.successor_wait_ms,
            "serving until a successor takes over"
        );
        if tokio::time::timeout(successor_wait, handed_over.cancelled())
            .await
            .is_ok()
        {
            stop = Stop::HandedOver;
        }
    }
    tracing::info!(?stop, "no longer serving");
    if stop == Stop::HandedOver {
        // The successor has the listeners: give it the plain connections too.
        handoff.begin();
    }
    stop_handover.cancel();
    let _ = handover_server.await;
    shutdown.cancel();
    let _ = follower.await;
    if let Stop::Terminated(_) = stop {
        // Nobody takes over: captured connections are refused from now on.
        let closed = {
            let capture = capture.clone();
            tokio::task::spawn_blocking(move || capture.close()).await?
        };
        match closed {
            Ok(_) => tracing::info!(
                "capture closed: new connections of enrolled pods are refused until an agent serves"
            ),
            Err(error) => {
                tracing::error!(%error, "closing the capture; new connections may hang until an agent serves")
            }
        }
    }
    // Phase one: the proxies stop accepting and give open connections the
    // drain timeout (`serve`), HBONE sends GOAWAY, the HTTP servers finish
    // their requests; phase two resets whatever is left.
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
            "drain timeout passed; resetting the rest"
        );
        tasks.shutdown().await;
    }
    if let Ok(outcome) = drained.await {
        tracing::info!(?outcome, open = mesh.metrics.open_connections(), "drained");
    }
    tracing::info!("stopped; capture rules left in place");
    Ok(())
}

/// The channel `adopt.sock` fills, and one receiver per plain listener,
/// which the moved connections are sorted into by the listener that
/// accepted them.
fn adoption() -> (
    mpsc::UnboundedSender<Adopted>,
    mpsc::UnboundedReceiver<Adopted>,
    mpsc::UnboundedReceiver<Adopted>,
) {
    let (all, mut sorting) = mpsc::unbounded_channel::<Adopted>();
    let (outbound, moved_out) = mpsc::unbounded_channel();
    let (inbound, moved_in) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(pair) = sorting.recv().await {
            let to = match pair.connection.listener.as_str() {
                "outbound" => &outbound,
                "inbound_plain" => &inbound,
                other => {
                    tracing::warn!(
                        listener = other,
                        "moved connection of an unknown listener; reset"
                    );
                    socket::reset(pair.client);
                    socket::reset(pair.server);
                    continue;
                }
            };
            // The proxy stopped serving: nobody carries it.
            if let Err(mpsc::error::SendError(pair)) = to.send(pair) {
                socket::reset(pair.client);
                socket::reset(pair.server);
            }
        }
    });
    (all, moved_out, moved_in)
}

/// Waits until this agent is ready but for its listeners, then takes them
/// from `predecessor`. If the predecessor went away meanwhile, binds them.
async fn take_over(
    predecessor: Predecessor,
    args: &RunArgs,
    rules: &RuleConfig,
    factory: &SocketFactory,
    readiness: &Readiness,
    drain: &DrainWatcher,
) -> anyhow::Result<Listeners> {
    let wait = Duration::from_millis(args.handover_timeout_ms);
    tokio::time::timeout(wait, readiness.ready_except(&["listeners", "capture"]))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "not ready within {wait:?} (waiting for {:?}); the running agent keeps serving",
                readiness.pending()
            )
        })?;
    let listeners = match predecessor.take().await {
        Ok(listeners) => {
            tracing::info!(roles = ?listeners.roles().collect::<Vec<_>>(), "took over the listeners");
            listeners
        }
        Err(error) => {
            tracing::warn!(%error, "handover failed; binding the listeners");
            bind_listeners(args, rules, factory)?
        }
    };
    tokio::spawn(crate::admin::serve_readiness(
        listeners.duplicate(Role::Readiness)?,
        readiness.clone(),
        drain.clone(),
    ));
    Ok(listeners)
}

/// Binds every listener of the agent.
fn bind_listeners(
    args: &RunArgs,
    rules: &RuleConfig,
    factory: &SocketFactory,
) -> anyhow::Result<Listeners> {
    let any = listen_ip(&args.capture.families());
    let mut out = Listeners::default();
    for (role, port) in [
        (Role::Outbound, rules.ports.outbound),
        (Role::InboundPlain, rules.ports.inbound_plain),
        (Role::Hbone, rules.ports.hbone),
    ] {
        let addr = SocketAddr::new(any, port);
        let listener = factory
            .listen_std(addr)
            .with_context(|| format!("binding the {role} listener on {addr}"))?;
        out.insert(role, listener);
    }
    let flags = &args.mesh;
    for (role, addr) in [
        (Role::Metrics, flags.metrics_addr),
        (Role::Readiness, flags.readiness_addr),
        (Role::Admin, flags.admin_addr),
    ] {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the {role} listener on {addr}"))?;
        out.insert(role, listener);
    }
    Ok(out)
}

/// Before the first sync, the admin port answers with the state source's
/// status and what readiness waits for (`/config_dump`, the status page),
/// and the metrics port with an empty registry, so an operator or a scrape
/// sees a waiting agent rather than a hanging port.
fn serve_while_waiting(
    listeners: &Listeners,
    store: &StateStore,
    readiness: &Readiness,
    drain: &DrainWatcher,
) -> anyhow::Result<()> {
    let admin = crate::admin::AdminState::new(readiness.clone())
        .with_config("state", Arc::new(mesh::state_json(store.clone())))
        .with_config("readiness", {
            let readiness = readiness.clone();
            Arc::new(move || serde_json::json!({ "waiting_for": readiness.pending_explained() }))
        });
    tokio::spawn(crate::admin::serve_admin(
        listeners.duplicate(Role::Admin)?,
        admin,
        drain.clone(),
    ));
    tokio::spawn(crate::admin::serve_metrics(
        listeners.duplicate(Role::Metrics)?,
        Arc::default(),
        drain.clone(),
    ));
    Ok(())
}

/// Keeps the readiness reason of the `state` task equal to the state
/// source's last error (an API the server does not serve, RBAC, a bad file).
async fn explain_state_wait(store: StateStore, readiness: Readiness) {
    loop {
        let why = store.status().last_error.map(|e| e.message);
        readiness.explain("state", why);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Keeps the state source running while held.
#[expect(dead_code, reason = "only held, for what dropping it stops")]
enum StateWatch {
    File(FileWatch),
    Kube(KubeWatch),
    Fed(FailoverWatch),
}

/// Starts the state source and returns once its first complete snapshot is
/// in `store` (the file read, or the Kubernetes watches listed).
async fn start_state(args: &RunArgs, store: &StateStore) -> anyhow::Result<StateWatch> {
    let options = args.state.load_options();
    if args.kube && !args.state_feed.is_empty() {
        let direct = KubeSource::infer(options)
            .await
            .context("connecting to the Kubernetes API")?
            .with_node(&args.node);
        let feed = FeedConfig {
            address: args.state_feed.clone(),
            server_name: args.state_feed_server_name.clone(),
            trust_bundle: args.mesh.trust_bundle.clone(),
            token_file: args.mesh.token_file.clone(),
            node: args.node.clone(),
        };
        let fed = direct.clone().fed_by(feed);
        let watch =
            FailoverWatch::start(fed, direct, store.clone(), args.state_feed_fallback_after);
        tracing::info!(feed = %args.state_feed, "waiting for the first state from the feed (or the API server)");
        watch.synced().await;
        return Ok(StateWatch::Fed(watch));
    }
    if args.kube {
        store.set_source("kubernetes");
        let watch = KubeSource::infer(options)
            .await
            .context("connecting to the Kubernetes API")?
            .with_node(&args.node)
            .start(store.clone());
        tracing::info!("waiting for the first Kubernetes sync");
        watch.synced().await;
        return Ok(StateWatch::Kube(watch));
    }
    store.set_source("file");
    let watch = FileSource::new(&args.state.state, options)
        .start(store.clone())
        .await
        .with_context(|| format!("loading state from {}", args.state.state.display()))?;
    Ok(StateWatch::File(watch))
}

/// `ambit-agent state-server`: serves the state feed until stopped.
pub async fn state_server(args: StateServerArgs) -> anyhow::Result<()> {
    let serving =
        FollowedServingCert::start(&args.serving_cert, &args.serving_key, args.files_poll, None)
            .await
            .context("loading the serving certificate")?;
    let authn: Arc<dyn Authenticator> = match &args.tokens_file {
        Some(path) => Arc::new(
            FollowedTokens::start(path, args.files_poll, None)
                .await
                .context("loading the tokens file")?,
        ),
        None => {
            // The pod index binding tokens to nodes runs detached, as long
            // as the server.
            let (authn, _pods, _index) = TokenReviewAuthenticator::from_cluster(
                &args.kube_audience,
                args.agent_service_account.clone(),
            )
            .await
            .context("connecting to the Kubernetes API for TokenReview")?;
            Arc::new(authn)
        }
    };
    let options = LoadOptions {
        root_namespace: args.root_namespace.clone(),
    };
    let source = KubeSource::infer(options)
        .await
        .context("connecting to the Kubernetes API")?;
    let tls = Arc::new(serving.cert.server_config()?);
    let mut server = StateServer::start(
        source,
        tls,
        authn,
        Duration::from_millis(args.batch_ms.max(1)),
    );
    let mut registry = prometheus_client::registry::Registry::default();
    server.metrics().register(&mut registry);
    let metrics = TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    // Never drained: the metrics answer until the process ends.
    let (_drain, drain) = drain::channel();
    tokio::spawn(crate::admin::serve_metrics(
        metrics,
        Arc::new(registry),
        drain,
    ));
    tracing::info!(listen = %args.listen, "state server started; listing the cluster");
    tokio::select! {
        () = server.synced() => {}
        signal = wait_for_termination() => {
            tracing::info!(signal, "state server stopping before its first sync");
            return Ok(());
        }
    }
    // Bound only now: until synced the replica is not ready and no agent
    // waits on it.
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    server.serve(listener);
    let signal = wait_for_termination().await;
    tracing::info!(signal, "state server stopping");
    drop(serving);
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
            capture_connmark: self.capture_connmark,
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

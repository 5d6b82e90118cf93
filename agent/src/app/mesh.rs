//! The mesh half of `run`: workload identities from the CA, the mesh data
//! path the proxies plug in, and what the HBONE, metrics and admin servers
//! serve ([`serve`] starts them once `run` holds their listeners).
//!
//! Readiness waits for three things: the state (already loaded when this
//! starts), a certificate for every local enrolled workload, and the
//! listeners being bound. Until then the data path refuses what it cannot
//! serve (no state, no certificate): it fails closed.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use ambit_ca::SpiffeId;
use anyhow::Context;
use futures::FutureExt;
use futures::future::BoxFuture;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::credentials;
use crate::admin::{self, AdminState};
use crate::authz;
use crate::cli::RunArgs;
use crate::describe::serve::LiveDescriber;
use crate::drain::DrainWatcher;
use crate::handover::{Listeners, Role};
use crate::identity::CertificateSource;
use crate::identity::{IdentityManager, WorkloadCertificate};
use crate::limits::pending::PendingLimits;
use crate::mesh::{self, Mesh, MeshConfig};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::socket::SocketFactory;
use crate::state::{Snapshot, StateStore};
use crate::telemetry::LogHandle;

/// What the rest of `run` needs from the mesh.
pub struct Started {
    /// Forwarder, admission and observer for the 15001 and 15006 proxies.
    pub mesh: Mesh,
    pub metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    /// What the admin port and the control socket show.
    pub admin: AdminState,
    /// Woken by the control socket's `/quitquitquit`.
    pub quit: Arc<Notify>,
    pub tasks: JoinSet<()>,
}

/// Starts identities and the mesh data path; serves nothing yet. Tasks
/// that only matter while serving end with `shutdown`, the rest with
/// `lifetime`.
pub async fn start(
    args: &RunArgs,
    store: &StateStore,
    factory: SocketFactory,
    readiness: &Readiness,
    shutdown: &CancellationToken,
    lifetime: &CancellationToken,
    logs: Option<LogHandle>,
) -> anyhow::Result<Started> {
    let credentials = credentials::start(args).await?;
    let identities = credentials.identities.clone();
    let certificates = readiness.block("certificates");

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let l7 = crate::l7::L7::new(
        store.clone(),
        &mut registry,
        crate::l7::jwt::Verifier::new(crate::l7::jwt::JwksSettings {
            timeout: std::time::Duration::from_millis(args.jwks_timeout_ms),
            refresh: std::time::Duration::from_secs(args.jwks_refresh_secs),
            tls: crate::l7::jwt::https_client_config(args.jwks_ca_file.as_deref())
                .context("trust roots for https jwksUri")?,
        }),
        crate::l7::L7Settings {
            sniff_timeout: std::time::Duration::from_millis(args.http_sniff_timeout_ms),
            head_timeout: std::time::Duration::from_millis(args.http_head_timeout_ms),
            ..crate::l7::L7Settings::default()
        },
    );
    let registry = Arc::new(registry);
    let certs: Arc<dyn CertificateSource> = identities.clone();
    let mut config = MeshConfig::new(args.node.clone(), args.trust_domain.clone());
    config.hbone_port = args.capture.hbone_port;
    let load = &args.load;
    let pending = PendingLimits {
        global: load.max_pending_handshakes as usize,
        per_source: load.max_pending_handshakes_per_source as usize,
    };
    config.server.handshake_timeout = load.hbone_handshake_timeout;
    config.server.idle_timeout = load.hbone_idle_timeout;
    config.server.pending = pending;
    config.plaintext_pending = pending;
    config.pool.idle_timeout = load.hbone_pool_idle_timeout;
    config.l7 = Some(l7);
    let mesh = mesh::build(
        &config,
        store.clone(),
        certs.clone(),
        credentials.bundle.current().bundle,
        factory,
        metrics.clone(),
    )
    .context("building the HBONE TLS configuration")?;

    let mut tasks = JoinSet::new();
    tasks.spawn(mesh::follow_identities(
        certs,
        store.subscribe(),
        args.node.clone(),
        args.trust_domain.clone(),
        shutdown.clone(),
    ));
    // Connections the agent still carries while it drains stay subject to
    // policy changes: this follows for the life of the process, not until
    // the agent stops serving.
    tokio::spawn(authz::watch::follow(
        mesh.tracker.clone(),
        store.subscribe(),
        lifetime.clone(),
    ));
    tasks.spawn(export_cert_expiry(
        identities.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(crate::l7::notices::warn_on_load(
        store.subscribe(),
        shutdown.clone(),
    ));
    tasks.spawn(count_state_reloads(
        metrics.clone(),
        store.subscribe(),
        shutdown.clone(),
    ));
    tasks.spawn(super::freshness::follow(
        store.clone(),
        readiness.clone(),
        metrics.clone(),
        args.state_staleness_bound,
        shutdown.clone(),
    ));
    {
        let (identities, store) = (identities.clone(), store.clone());
        let (node, trust_domain) = (args.node.clone(), args.trust_domain.clone());
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = local_certificates_loaded(&identities, &store, &node, &trust_domain) => drop(certificates),
                // Shutting down before the certificates came: stay not ready.
                () = shutdown.cancelled() => std::mem::forget(certificates),
            }
        });
    }

    let quit = Arc::new(Notify::new());
    let mut state = AdminState::new(readiness.clone())
        .with_metrics(metrics.clone())
        .with_quit(quit.clone())
        .with_notices({
            let store = store.clone();
            Arc::new(move || crate::l7::notices::lines(&store.current()))
        });
    if let Some(logs) = logs {
        state = state.with_logging(logs);
    }
    let state =
        config_dump(state, args, store, &identities).with_describe(Arc::new(LiveDescriber {
            store: store.clone(),
            node: args.node.clone(),
            trust_domain: args.trust_domain.clone(),
            metrics: metrics.clone(),
            identities: identities.clone(),
        }));
    let admin = credentials::config_dump(state, &credentials);
    {
        let bundles = credentials.bundle.subscribe();
        let (tls, ca) = (mesh.tls.clone(), Some(credentials.ca.clone()));
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        let bundle_watch = credentials.bundle;
        tasks.spawn(async move {
            // The file is followed as long as its changes are applied.
            let _bundle_watch = bundle_watch;
            mesh::follow_trust_bundle(bundles, tls, ca, metrics, shutdown).await;
        });
    }
    Ok(Started {
        mesh,
        metrics,
        registry,
        admin,
        quit,
        tasks,
    })
}

/// Serves HBONE, metrics and admin on their listeners, and the control
/// socket in `run_dir`.
pub fn serve(
    started: &mut Started,
    listeners: &mut Listeners,
    run_dir: &Path,
    drain: &DrainWatcher,
) -> anyhow::Result<()> {
    let hbone = listeners.take(Role::Hbone)?;
    let metrics = listeners.take(Role::Metrics)?;
    let admin = listeners.take(Role::Admin)?;
    let control = bind_control(run_dir)?;
    tracing::info!(
        hbone = ?hbone.local_addr().ok(),
        metrics = ?metrics.local_addr().ok(),
        admin = ?admin.local_addr().ok(),
        control = %run_dir.join(CONTROL_SOCKET).display(),
        "mesh listeners serving"
    );
    let tasks = &mut started.tasks;
    tasks.spawn(started.mesh.hbone.clone().serve(hbone, drain.clone()));
    tasks.spawn(admin::serve_metrics(
        metrics,
        started.registry.clone(),
        drain.clone(),
    ));
    tasks.spawn(admin::serve_admin(
        admin,
        started.admin.clone(),
        drain.clone(),
    ));
    tasks.spawn(admin::serve_control(
        control,
        started.admin.clone(),
        drain.clone(),
    ));
    Ok(())
}

/// The control socket's name in the run directory.
pub const CONTROL_SOCKET: &str = "control.sock";

/// Binds the control socket, replacing the one of a predecessor (which
/// keeps its own descriptor until it exits); only root may connect.
fn bind_control(run_dir: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = run_dir.join(CONTROL_SOCKET);
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("creating the run directory {}", run_dir.display()))?;
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

/// Returns once every enrolled workload of the node holds a certificate,
/// re-reading the state between attempts (pods come and go meanwhile).
async fn local_certificates_loaded(
    identities: &IdentityManager,
    store: &StateStore,
    node: &str,
    trust_domain: &str,
) {
    loop {
        let ids = mesh::local_identities(&store.current(), node, trust_domain);
        let mut missing = BTreeSet::new();
        for id in &ids {
            if let Err(error) = identities.certificate(id).await {
                tracing::warn!(identity = %id, %error, "waiting for a workload certificate");
                missing.insert(id.clone());
            }
        }
        if missing.is_empty() {
            tracing::info!(identities = ids.len(), "local workload certificates loaded");
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Keeps `ambit_identity_cert_expiry_timestamp_seconds` equal to the
/// certificates held, every few seconds.
async fn export_cert_expiry(
    identities: Arc<IdentityManager>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut exported: BTreeSet<SpiffeId> = BTreeSet::new();
    loop {
        let mut held = BTreeSet::new();
        for status in identities.status() {
            let (Ok(id), Some(not_after)) = (status.identity.parse::<SpiffeId>(), status.not_after)
            else {
                continue;
            };
            metrics
                .agent
                .set_cert_expiry(&id, UNIX_EPOCH + Duration::from_secs(not_after));
            held.insert(id);
        }
        for gone in exported.difference(&held) {
            metrics.agent.remove_cert(gone);
        }
        exported = held;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

async fn count_state_reloads(
    metrics: Arc<Metrics>,
    mut snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
        }
        metrics.agent.state_reloaded();
    }
}

/// The `/config_dump` section `state`: how far the state source got.
pub(super) fn state_json(store: StateStore) -> impl Fn() -> Value + Send + Sync {
    move || {
        let status = store.status();
        json!({
            "generation": status.generation,
            "synced": store.current().is_synced(),
            "source": store.source(),
            "last_error": status.last_error.map(|e| e.message),
            // How long the source may have been missing changes (0: current).
            "staleness_s": store.staleness(std::time::SystemTime::now()).as_secs(),
        })
    }
}

fn config_dump(
    state: AdminState,
    args: &RunArgs,
    store: &StateStore,
    identities: &Arc<IdentityManager>,
) -> AdminState {
    let effective = format!("{args:?}");
    let (s1, s2, s3, s4) = (store.clone(), store.clone(), store.clone(), store.clone());
    let ids = identities.clone();
    state
        .with_config("config", Arc::new(move || Value::String(effective.clone())))
        .with_config("state", Arc::new(state_json(s1)))
        .with_config("workloads", Arc::new(move || workloads_json(&s2.current())))
        .with_config("services", Arc::new(move || services_json(&s3.current())))
        .with_config(
            "policies",
            Arc::new(move || {
                let snapshot = s4.current();
                let errors: Vec<String> = snapshot
                    .policy_errors()
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                json!({
                    "summary": snapshot.policies().summary(),
                    "errors": errors,
                    "needs_http": crate::l7::notices::lines(&snapshot),
                })
            }),
        )
        .with_config(
            "certificates",
            Arc::new(move || serde_json::to_value(ids.status()).unwrap_or(Value::Null)),
        )
}

fn workloads_json(snapshot: &Snapshot) -> Value {
    Value::Array(
        snapshot
            .workloads()
            .map(|w| {
                json!({
                    "uid": w.uid,
                    "name": w.name,
                    "namespace": w.namespace,
                    "service_account": w.service_account,
                    "node": w.node,
                    "ips": w.ips,
                    "labels": w.labels,
                    "enrolled": w.enrolled,
                })
            })
            .collect(),
    )
}

fn services_json(snapshot: &Snapshot) -> Value {
    Value::Array(
        snapshot
            .services()
            .map(|s| {
                let ports: Vec<Value> = s
                    .ports
                    .iter()
                    .map(|p| {
                        json!({
                            "name": p.name,
                            "port": p.port,
                            "ready_endpoints": s.ready_endpoints(p.port).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                json!({
                    "name": s.name,
                    "namespace": s.namespace,
                    "vips": s.vips,
                    "ports": ports,
                })
            })
            .collect(),
    )
}

// === impl CertificateSource ===

impl CertificateSource for IdentityManager {
    fn certificate<'a>(
        &'a self,
        id: &'a SpiffeId,
    ) -> BoxFuture<'a, Option<Arc<WorkloadCertificate>>> {
        async move {
            // The cached one first: the data path must not wait on the CA
            // while a valid certificate is at hand.
            if let Some(cert) = self.current(id) {
                return Some(cert);
            }
            match IdentityManager::certificate(self, id).await {
                Ok(cert) => Some(cert),
                Err(error) => {
                    tracing::warn!(identity = %id, %error, "no certificate");
                    None
                }
            }
        }
        .boxed()
    }

    fn track(&self, ids: BTreeSet<SpiffeId>) {
        IdentityManager::track(self, ids);
    }
}

//! The mesh data path put together: HBONE TLS configs and client pool, the
//! 15008 inbound handler, the outbound forwarder, 15006 admission, connection
//! re-authorization and the metrics of plain connections. `app` builds one
//! [`Mesh`] and hands its parts to the listeners.
//!
//! Certificates reach the data path through [`CertificateSource`], which the
//! identity manager implements; tests give fixed certificates instead.

use std::collections::BTreeSet;
use std::sync::Arc;

use ambit_ca::SpiffeId;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::authz::watch::ConnectionTracker;
use crate::hbone::{self, Pool, PoolSettings, ServerSettings, TlsConfigs};
use crate::identity::CertificateSource;
use crate::identity::{BundleStatus, RotatingCaClient, TrustBundle};
use crate::limits::pending::PendingLimits;
use crate::metrics::{ConnectionOpen, Metrics, Reporter};
use crate::proxy::admission::PlaintextAdmission;
use crate::proxy::inbound_hbone::InboundHbone;
use crate::proxy::inbound_plain::InboundPolicy;
use crate::proxy::mesh_outbound::{MarkedConnector, MeshOutbound};
use crate::proxy::outbound::MeshForwarder;
use crate::proxy::{ConnectionObserver, ConnectionRecord, Direction};
use crate::socket::SocketFactory;
use crate::state::{Snapshot, StateStore};

/// How the mesh data path is set up.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    pub node: String,
    pub trust_domain: String,
    /// The port peers' HBONE servers listen on (15008).
    pub hbone_port: u16,
    pub pool: PoolSettings,
    pub server: ServerSettings,
    /// Caps on 15006 connections not yet connected to their pod.
    pub plaintext_pending: PendingLimits,
    /// The HTTP path for destinations with HTTP rules; `None` keeps every
    /// connection at L4.
    pub l7: Option<Arc<crate::l7::L7>>,
}

impl MeshConfig {
    pub fn new(node: impl Into<String>, trust_domain: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            trust_domain: trust_domain.into(),
            hbone_port: hbone::HBONE_PORT,
            pool: PoolSettings::default(),
            server: ServerSettings::default(),
            plaintext_pending: PendingLimits::default(),
            l7: None,
        }
    }
}

/// The parts of the mesh data path the listeners plug in.
pub struct Mesh {
    /// For the outbound proxy (15001): carries mesh destinations.
    pub forwarder: Arc<dyn MeshForwarder>,
    /// For the plaintext inbound proxy (15006).
    pub admission: Arc<dyn InboundPolicy>,
    /// For both proxies: counts plain outbound connections.
    pub observer: Arc<dyn ConnectionObserver>,
    /// The 15008 server; `serve(listener, shutdown)` it.
    pub hbone: hbone::Server<InboundHbone>,
    pub inbound: Arc<InboundHbone>,
    pub tracker: Arc<ConnectionTracker>,
    pub tls: Arc<TlsConfigs>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("tracker", &self.tracker)
            .finish_non_exhaustive()
    }
}

/// Builds the mesh data path. Must be called inside a Tokio runtime (the
/// client pool starts its idle reaper).
pub fn build(
    config: &MeshConfig,
    state: StateStore,
    certs: Arc<dyn CertificateSource>,
    trust: TrustBundle,
    factory: SocketFactory,
    metrics: Arc<Metrics>,
) -> Result<Mesh, hbone::tls::TlsConfigError> {
    let tls = Arc::new(TlsConfigs::new(trust)?);
    let tracker = ConnectionTracker::new(config.node.clone());
    let inbound = InboundHbone::new(
        state.clone(),
        config.node.clone(),
        config.trust_domain.clone(),
        certs.clone(),
        factory,
        metrics.clone(),
        tracker.clone(),
        config.l7.clone(),
    );
    let pool = Pool::new(MarkedConnector(factory), tls.clone(), config.pool.clone());
    let forwarder = MeshOutbound::new(
        state,
        config.hbone_port,
        config.trust_domain.clone(),
        certs,
        pool,
        metrics.clone(),
        inbound.clone(),
    );
    let admission = PlaintextAdmission::new(
        config.trust_domain.clone(),
        metrics.clone(),
        tracker.clone(),
        config.plaintext_pending,
        config.l7.clone(),
    );
    let hbone = hbone::Server::new(tls.clone(), inbound.clone(), config.server.clone());
    Ok(Mesh {
        forwarder,
        admission,
        observer: Arc::new(PlainMetrics { metrics }),
        hbone,
        inbound,
        tracker,
        tls,
    })
}

/// The identities of the enrolled workloads of `node`.
pub fn local_identities(snapshot: &Snapshot, node: &str, trust_domain: &str) -> BTreeSet<SpiffeId> {
    snapshot
        .local_enrolled(node)
        .filter_map(|w| match w.identity(trust_domain) {
            Ok(id) => Some(id),
            Err(error) => {
                tracing::warn!(workload = %w.qualified_name(), %error, "workload has no valid identity");
                None
            }
        })
        .collect()
}

/// Keeps `certs` tracking the identities of the node's enrolled workloads
/// through every state change, until `shutdown`.
pub async fn follow_identities(
    certs: Arc<dyn CertificateSource>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    node: String,
    trust_domain: String,
    shutdown: CancellationToken,
) {
    let mut tracked = None;
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        if snapshot.is_synced() {
            let ids = local_identities(&snapshot, &node, &trust_domain);
            if tracked.as_ref() != Some(&ids) {
                tracing::info!(identities = ids.len(), "local identities changed");
                certs.track(ids.clone());
                tracked = Some(ids);
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
        }
    }
}

/// Applies the trust bundle in force, then each new one, to the HBONE TLS
/// configs and to the CA client (when given), and keeps the trust bundle
/// metrics current, until `shutdown`. New connections verify peers against
/// the new roots; open ones were verified already and are left alone.
pub async fn follow_trust_bundle(
    mut bundles: watch::Receiver<BundleStatus>,
    tls: Arc<TlsConfigs>,
    ca: Option<Arc<RotatingCaClient>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let (mut generation, mut rejected) = (None, 0);
    loop {
        let status = bundles.borrow_and_update().clone();
        if status.rejected > rejected {
            metrics
                .agent
                .trust_bundle_reload_errors
                .inc_by(status.rejected - rejected);
            rejected = status.rejected;
        }
        if generation != Some(status.generation) {
            apply_trust_bundle(&status, &tls, ca.as_deref(), &metrics);
            let applied = status.generation - generation.unwrap_or(0);
            metrics.agent.trust_bundle_reloads.inc_by(applied);
            generation = Some(status.generation);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = bundles.changed() => if changed.is_err() { return },
        }
    }
}

fn apply_trust_bundle(
    status: &BundleStatus,
    tls: &TlsConfigs,
    ca: Option<&RotatingCaClient>,
    metrics: &Metrics,
) {
    let roots = status.bundle.roots.len();
    // The bundle was validated when read, so these only fail on a rustls or
    // tonic disagreement; the old roots then stay in that one place.
    if let Err(error) = tls.set_trust_bundle(status.bundle.clone()) {
        tracing::error!(%error, generation = status.generation, "HBONE keeps its previous trust bundle");
        return;
    }
    if let Some(ca) = ca
        && let Err(error) = ca.set_trust_bundle(&status.bundle)
    {
        tracing::error!(%error, generation = status.generation, "CA client keeps its previous trust bundle");
    }
    metrics.agent.set_trust_bundle_roots(roots);
    tracing::debug!(
        roots,
        generation = status.generation,
        "trust bundle in force"
    );
}

/// Counts the connections the outbound proxy carried as plain TCP (reporter
/// `source`, security policy `none`). Mesh connections and 15006 ones are
/// counted by the forwarder and the admission policy while they are open;
/// their proxy records only reach the debug log here.
#[derive(Debug)]
struct PlainMetrics {
    metrics: Arc<Metrics>,
}

impl ConnectionObserver for PlainMetrics {
    fn connection_closed(&self, r: &ConnectionRecord) {
        tracing::debug!(
            direction = r.direction.as_str(),
            src = %r.client,
            dst = %r.orig_dst,
            mesh = r.mesh,
            status = r.result.status.as_str(),
            reason = r.result.reason.as_deref().unwrap_or("-"),
            "proxied connection ended"
        );
        let (Direction::Outbound, false, Some(target)) = (r.direction, r.mesh, r.target) else {
            return;
        };
        let record = self.metrics.open_connection(&ConnectionOpen {
            source_workload: r.source.as_deref(),
            destination_workload: r.destination.as_deref(),
            ..ConnectionOpen::new(Reporter::Source, r.client.0, target)
        });
        r.result.account(&record);
    }
}

#[cfg(test)]
mod tests;

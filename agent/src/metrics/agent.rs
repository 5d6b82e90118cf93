//! Ambit's own metrics (`ambit_*`): what an operator of the agent needs beyond
//! Istio's traffic series.

use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

use ambit_ca::SpiffeId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::traffic::Reporter;

/// The outcome of authorizing a connection, as logs and metrics name it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
}

impl From<&ambit_policy::Decision> for Decision {
    fn from(d: &ambit_policy::Decision) -> Self {
        if d.allowed { Self::Allow } else { Self::Deny }
    }
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReporterLabels {
    pub reporter: Reporter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub decision: &'static str,
    pub reason: &'static str,
    pub reporter: Reporter,
    pub destination_workload_namespace: String,
    pub destination_workload: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabels {
    pub identity: String,
}

/// Gauges and counters about the agent itself.
#[derive(Clone, Debug, Default)]
pub struct AgentMetrics {
    pub connections_active: Family<ReporterLabels, Gauge>,
    pub authorization_decisions: Family<DecisionLabels, Counter>,
    pub cert_expiry: Family<IdentityLabels, Gauge>,
    pub state_reloads: Counter,
    pub state_reload_errors: Counter,
    /// Seconds since the state source may have missed changes; 0 while current.
    pub state_staleness: Gauge<f64, AtomicU64>,
    pub trust_bundle_roots: Gauge,
    pub trust_bundle_reloads: Counter,
    pub trust_bundle_reload_errors: Counter,
}

impl AgentMetrics {
    /// Registers the families in `registry`, which is expected to carry the `ambit` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "connections_active",
            "Connections currently open through the agent",
            m.connections_active.clone(),
        );
        registry.register(
            "authorization_decisions",
            "Connections authorized (decision=allow) or refused (decision=deny)",
            m.authorization_decisions.clone(),
        );
        registry.register(
            "identity_cert_expiry_timestamp_seconds",
            "Unix time at which the workload certificate held for an identity expires",
            m.cert_expiry.clone(),
        );
        registry.register(
            "state_reloads",
            "Cluster state snapshots applied",
            m.state_reloads.clone(),
        );
        registry.register(
            "state_reload_errors",
            "Cluster state updates rejected (the last good state was kept)",
            m.state_reload_errors.clone(),
        );
        registry.register(
            "state_staleness_seconds",
            "How old the newest state the source can vouch for is: 0 while its watches \
             follow the API server, else the time since one stopped",
            m.state_staleness.clone(),
        );
        registry.register(
            "trust_bundle_roots",
            "Root certificates in the trust bundle in force",
            m.trust_bundle_roots.clone(),
        );
        registry.register(
            "trust_bundle_reloads",
            "Trust bundle changes applied after start",
            m.trust_bundle_reloads.clone(),
        );
        registry.register(
            "trust_bundle_reload_errors",
            "Trust bundle changes or reads rejected (the last good bundle was kept)",
            m.trust_bundle_reload_errors.clone(),
        );
        // Process-wide (the descriptor limit is), so shared by every registry.
        let limits = crate::limits::globals();
        registry.register(
            "connections_refused",
            "Connections refused before being served: descriptor budget spent, too many \
             pending handshakes (all sources or one), or a handshake past its deadline",
            limits.refused.clone(),
        );
        registry.register(
            "pending_handshakes",
            "Connections accepted that have not finished their handshake",
            limits.pending.clone(),
        );
        registry.register(
            "open_files_limit",
            "The agent's open-file (descriptor) limit after raising it at start",
            limits.limit.clone(),
        );
        m
    }

    /// Records the expiry of the certificate now held for `identity`.
    pub fn set_cert_expiry(&self, identity: &SpiffeId, not_after: SystemTime) {
        let secs = not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.cert_expiry
            .get_or_create(&IdentityLabels {
                identity: identity.to_string(),
            })
            .set(secs);
    }

    /// Forgets an identity no longer held on this node (its pod left).
    pub fn remove_cert(&self, identity: &SpiffeId) {
        self.cert_expiry.remove(&IdentityLabels {
            identity: identity.to_string(),
        });
    }

    /// A new snapshot was applied.
    pub fn state_reloaded(&self) {
        self.state_reloads.inc();
    }

    /// An update was rejected and the last good state kept.
    pub fn state_reload_failed(&self) {
        self.state_reload_errors.inc();
    }

    /// A trust bundle of `roots` roots is in force.
    pub fn set_trust_bundle_roots(&self, roots: usize) {
        self.trust_bundle_roots
            .set(i64::try_from(roots).unwrap_or(i64::MAX));
    }
}

//! The agent's Prometheus metrics: Istio's TCP traffic series under the `istio`
//! prefix, Ambit's own under `ambit`, and the per-connection record that feeds
//! them and writes the access log.
//!
//! Built once at start (`Metrics::new(&mut registry)`), then shared as
//! `Arc<Metrics>` with every connection handler; the registry goes to the
//! `/metrics` server, which encodes it on each scrape.
//!
//! A connection handler opens a record as soon as it knows the two ends, feeds
//! it bytes (or wraps the client stream in [`Counted`]), records the
//! authorization outcome, and lets it drop:
//!
//! ```
//! # use std::sync::Arc;
//! # use prometheus_client::registry::Registry;
//! use ambit_agent::metrics::{ConnectionOpen, Decision, Metrics, Reporter, SecurityPolicy};
//!
//! let mut registry = Registry::default();
//! let metrics = Arc::new(Metrics::new(&mut registry));
//! let record = metrics.open_connection(&ConnectionOpen {
//!     security: SecurityPolicy::MutualTls,
//!     // source/destination workload, identity and service when known
//!     ..ConnectionOpen::new(
//!         Reporter::Destination,
//!         "10.0.1.5:40000".parse().unwrap(),
//!         "10.0.2.7:8080".parse().unwrap(),
//!     )
//! });
//! record.set_decision(Decision::Allow, "allowed by ALLOW rule", Some("default/allow".into()));
//! record.record_received(512); // client to server
//! record.record_sent(2048); // server to client
//! drop(record); // closed counter + one `access` log line
//! assert!(ambit_agent::metrics::encode(&registry).contains("istio_tcp_connections_closed_total{"));
//! ```

mod agent;
mod connection;
pub mod denials;
mod series;
mod traffic;

use std::sync::Arc;

use prometheus_client::registry::Registry;

pub use agent::{AgentMetrics, Decision, DecisionLabels, IdentityLabels, ReporterLabels};
pub use connection::{ByteRecorder, ConnectionRecord, Counted};
pub use denials::{Denial, RecentDenials};
pub use traffic::{
    ConnectionOpen, Reporter, ResponseFlags, SecurityPolicy, TrafficLabels, TrafficMetrics, UNKNOWN,
};

use connection::ActiveConnections;
use series::SeriesCache;

/// OpenMetrics text exposition, the format `encode` writes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Istio's default cluster id, used for `source_cluster`/`destination_cluster`.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// Every metric family the agent records into.
#[derive(Debug)]
pub struct Metrics {
    pub traffic: TrafficMetrics,
    pub agent: AgentMetrics,
    connections: ActiveConnections,
    series: SeriesCache,
    denials: RecentDenials,
    cluster_id: String,
    dns_suffix: String,
}

impl Metrics {
    /// Registers every family in `registry` (cluster id `Kubernetes`, domain `cluster.local`).
    pub fn new(registry: &mut Registry) -> Self {
        Self::with_cluster(registry, DEFAULT_CLUSTER_ID, "cluster.local")
    }

    /// As `new`, naming the cluster (for `*_cluster` labels) and the service DNS suffix
    /// (for `destination_service`, `<name>.<namespace>.svc.<suffix>`).
    pub fn with_cluster(registry: &mut Registry, cluster_id: &str, dns_suffix: &str) -> Self {
        let traffic = TrafficMetrics::register(registry.sub_registry_with_prefix("istio"));
        let agent = AgentMetrics::register(registry.sub_registry_with_prefix("ambit"));
        Self {
            traffic,
            agent,
            connections: ActiveConnections::default(),
            series: SeriesCache::default(),
            denials: RecentDenials::default(),
            cluster_id: cluster_id.to_string(),
            dns_suffix: dns_suffix.to_string(),
        }
    }

    /// Starts counting a connection; keep the record alive for the connection's lifetime.
    pub fn open_connection(self: &Arc<Self>, conn: &ConnectionOpen<'_>) -> ConnectionRecord {
        ConnectionRecord::open(self.clone(), conn)
    }

    /// `<name>.<namespace>.svc.<dns suffix>`: how `destination_service` and
    /// the HBONE `forwarded: host=` name a Service.
    pub fn service_hostname(&self, service: &crate::state::Service) -> String {
        traffic::service_hostname(service, &self.dns_suffix)
    }

    /// The open connections, for `/config_dump`.
    pub fn connections_json(&self) -> serde_json::Value {
        self.connections.to_json()
    }

    /// The refusals last recorded for `workload` (`namespace/name`), newest first.
    pub fn recent_denials(&self, workload: &str) -> Vec<Denial> {
        self.denials.of(workload)
    }

    /// How many connections are open right now.
    pub fn open_connections(&self) -> usize {
        self.connections.len()
    }
}

/// Encodes `registry` as OpenMetrics text (ending in `# EOF`).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail; an error here would be an encoder bug,
    // and a partial scrape is better than a panic in the admin server.
    if let Err(error) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(%error, "metrics encoding failed");
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;

//! The state server's Prometheus metrics: what an operator alerts on is a
//! server whose own watches are stale, agents that left, and a feed whose
//! volume grows.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Every metric is shared by clone with the code that updates it.
#[derive(Clone, Debug, Default)]
pub struct FeedMetrics {
    pub agents: Gauge,
    pub sent_bytes: Counter,
    pub refused: Counter,
    pub full_states: Counter,
    pub resumed: Counter,
    pub revision: Gauge,
    pub addresses: Gauge,
    pub staleness_seconds: Gauge,
}

impl FeedMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let ambit = registry.sub_registry_with_prefix("ambit_state_server");
        ambit.register(
            "agents",
            "Agents connected to the feed",
            self.agents.clone(),
        );
        ambit.register(
            "sent_bytes",
            "Bytes sent to agents (full states, batches, heartbeats)",
            self.sent_bytes.clone(),
        );
        ambit.register(
            "refused",
            "Agents refused: unknown token, a token of another node, no hello",
            self.refused.clone(),
        );
        ambit.register(
            "full_states",
            "Full states sent: to agents connecting afresh, from another server, or after too long away",
            self.full_states.clone(),
        );
        ambit.register(
            "resumed",
            "Agents that reconnected and were sent only the batches they missed",
            self.resumed.clone(),
        );
        ambit.register(
            "revision",
            "Revision of the state fed",
            self.revision.clone(),
        );
        ambit.register(
            "addresses",
            "Remote addresses fed, resolved to identities",
            self.addresses.clone(),
        );
        ambit.register(
            "staleness_seconds",
            "How long the server's own watches may have missed changes (0: current)",
            self.staleness_seconds.clone(),
        );
    }
}

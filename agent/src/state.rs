//! What the agent knows about the cluster: workloads, services, namespaces and
//! policies, as immutable snapshots swapped atomically.
//!
//! Sources (the file watcher, later the Kubernetes watchers) build a complete
//! `Snapshot` and hand it to the `StateStore`; the data path reads the current
//! snapshot and never sees a half-applied change.

mod service;
mod snapshot;
mod workload;

use std::sync::Arc;

use tokio::sync::watch;

pub use service::{Endpoint, Service, ServicePort, ServiceTarget, TargetPort};
pub use snapshot::Snapshot;
pub use workload::Workload;

/// The current snapshot, shared by every task of the agent.
#[derive(Clone, Debug)]
pub struct StateStore {
    tx: Arc<watch::Sender<Arc<Snapshot>>>,
}

impl StateStore {
    /// A store holding `initial` (usually `Snapshot::default()`, not yet synced).
    pub fn new(initial: Snapshot) -> Self {
        let (tx, _) = watch::channel(Arc::new(initial));
        Self { tx: Arc::new(tx) }
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// A receiver that wakes on every replacement: capture, identity and
    /// connection re-authorization follow the state through it.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    pub fn replace(&self, snapshot: Snapshot) {
        self.tx.send_replace(Arc::new(snapshot));
    }
}

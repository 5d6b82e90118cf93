//! What the agent knows about the cluster: workloads, services, namespaces and
//! policies, as immutable snapshots swapped atomically.
//!
//! Sources (the file watcher, later the Kubernetes watchers) build a complete
//! `Snapshot` with a `SnapshotBuilder` and hand it to the `StateStore`; the data
//! path reads the current snapshot and never sees a half-applied change. A
//! source that fails to build one reports it with `StateStore::report_failure`
//! and the previous snapshot stays in force.
//!
//! - `k8s`: decoding the Kubernetes objects the state is made of.
//! - `build`: validation and indexing into a `Snapshot`.
//! - `source`: where snapshots come from (`source::file`, `source::kube`).
//! - `remote`: pods of other nodes in compact form, for a node-scoped source.
//! - `shared_map`: the address map successive snapshots share, shard by shard.

pub mod address_map;
mod build;
mod k8s;
mod labels;
mod remote;
mod service;
pub mod shared_map;
mod snapshot;
pub mod source;
mod workload;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::watch;

pub(crate) use build::describe_object;
pub use build::{
    DATAPLANE_MODE_LABEL, LoadError, LoadOptions, Origin, PolicyIssue, SnapshotBuilder, is_enrolled,
};
pub use k8s::FieldError;
pub use labels::Labels;
pub use service::{EndpointGroup, EndpointPorts, Service, ServicePort, ServiceTarget, TargetPort};
pub use snapshot::Snapshot;
pub use workload::Workload;

/// The current snapshot, shared by every task of the agent.
#[derive(Clone, Debug)]
pub struct StateStore {
    tx: Arc<watch::Sender<Arc<Snapshot>>>,
    status: Arc<Mutex<SourceStatus>>,
    /// Since when the source may have been missing changes (a watch that
    /// cannot reach the API server); None while it follows its input.
    /// Kept apart from `status`: a new snapshot does not make a down watch
    /// current.
    behind_since: Arc<Mutex<Option<SystemTime>>>,
    /// Which source publishes, for `/config_dump`.
    source: Arc<Mutex<&'static str>>,
}

/// How the state source is doing, for the admin page, metrics and readiness.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceStatus {
    /// Generation of the snapshot in force; 0 until the first one is applied.
    pub generation: u64,
    /// When the snapshot in force was applied.
    pub applied_at: Option<SystemTime>,
    /// The latest failed attempt, cleared by the next successful one. While it
    /// is set the agent runs on the last good state.
    pub last_error: Option<SourceFailure>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFailure {
    pub at: SystemTime,
    /// The error, naming file, line and reason.
    pub message: String,
}

impl SourceStatus {
    pub fn is_ok(&self) -> bool {
        self.last_error.is_none()
    }
}

impl StateStore {
    /// A store holding `initial` (usually `Snapshot::default()`, not yet synced).
    pub fn new(initial: Snapshot) -> Self {
        let (tx, _) = watch::channel(Arc::new(initial));
        Self {
            tx: Arc::new(tx),
            status: Arc::default(),
            behind_since: Arc::default(),
            source: Arc::new(Mutex::new("none")),
        }
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Resolves once a snapshot from a complete source state is in force.
    pub async fn synced(&self) {
        // The sender lives as long as the store, so this only ends synced.
        let _ = self.subscribe().wait_for(|s| s.is_synced()).await;
    }

    /// A receiver that wakes on every replacement: capture, identity and
    /// connection re-authorization follow the state through it.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// Publishes `snapshot` as the new state in one step and clears any
    /// reported failure. Returns its generation.
    pub fn replace(&self, mut snapshot: Snapshot) -> u64 {
        // The status lock also orders concurrent replacements, so generations
        // and published snapshots agree.
        let mut status = self.status.lock();
        let generation = status.generation + 1;
        snapshot.set_generation(generation);
        self.tx.send_replace(Arc::new(snapshot));
        *status = SourceStatus {
            generation,
            applied_at: Some(SystemTime::now()),
            last_error: None,
        };
        generation
    }

    /// Records that a source could not produce a new snapshot; the current
    /// one stays in force.
    pub fn report_failure(&self, message: String) {
        self.status.lock().last_error = Some(SourceFailure {
            at: SystemTime::now(),
            message,
        });
    }

    /// Clears a reported failure: the source's input is back to the state
    /// in force.
    pub fn clear_failure(&self) {
        self.status.lock().last_error = None;
    }

    pub fn status(&self) -> SourceStatus {
        self.status.lock().clone()
    }

    /// Records since when the source may have missed changes (None: it is
    /// following its input again).
    pub fn set_behind_since(&self, since: Option<SystemTime>) {
        *self.behind_since.lock() = since;
    }

    /// Names the source that publishes (`file`, `kubernetes`, `state feed`, ...).
    pub fn set_source(&self, source: &'static str) {
        *self.source.lock() = source;
    }

    pub fn source(&self) -> &'static str {
        *self.source.lock()
    }

    /// How old the newest state the source can vouch for is: zero while it
    /// follows its input, else the time since it may have missed changes.
    pub fn staleness(&self, now: SystemTime) -> Duration {
        self.behind_since
            .lock()
            .and_then(|since| now.duration_since(since).ok())
            .unwrap_or_default()
    }
}

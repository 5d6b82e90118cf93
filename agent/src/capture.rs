//! Node-level traffic capture: the iptables TPROXY rules and policy routing
//! that steer the TCP traffic of the node's enrolled pods to the agent's
//! listeners, kept in step with the state.
//!
//! - `rules`: the rule set as data, rendered to iptables-restore text (pure).
//! - `apply`: backend detection, install / reconcile / uninstall / status.
//!
//! Everything that knows capture happens in the node's network namespace is
//! behind this module; the proxy only sees accepted sockets (see `socket`), so
//! an in-pod capture mode can be added here without touching it.

pub mod apply;
pub mod rules;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use apply::{Applied, ApplyError, Backend, BackendChoice, Capture, FamilyStatus};
pub use rules::{CapturePorts, Family, Mark, Mode, RuleConfig};

use crate::state::Snapshot;

/// The addresses to capture on `node`: every IP of every enrolled workload
/// scheduled there, restricted to `families`.
pub fn captured_ips(snapshot: &Snapshot, node: &str, families: &[Family]) -> BTreeSet<IpAddr> {
    snapshot
        .local_enrolled(node)
        .flat_map(|w| w.ips.iter().copied())
        .filter(|ip| families.contains(&Family::of(*ip)))
        .collect()
}

/// Keeps the rules equal to the enrolled local pods of each new snapshot
/// until `shutdown`. A failed reconcile is logged and retried with the next
/// change or after a short delay, so a transient iptables lock does not leave
/// a pod uncaptured for good.
pub async fn follow_state(
    capture: Arc<Capture>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    node: String,
    families: Vec<Family>,
    mut applied: BTreeSet<IpAddr>,
    shutdown: CancellationToken,
) {
    const RETRY: std::time::Duration = std::time::Duration::from_secs(2);
    let mut retry_pending = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RETRY), if retry_pending => {}
        }
        let snapshot = snapshots.borrow_and_update().clone();
        if !snapshot.is_synced() {
            continue;
        }
        let wanted = captured_ips(&snapshot, &node, &families);
        if wanted == applied && !retry_pending {
            continue;
        }
        let task_capture = capture.clone();
        let task_wanted = wanted.clone();
        let result =
            tokio::task::spawn_blocking(move || task_capture.reconcile(&task_wanted)).await;
        match result {
            Ok(Ok(done)) => {
                retry_pending = false;
                applied = wanted;
                if !done.is_noop() {
                    tracing::info!(
                        added = ?done.added,
                        updated = ?done.updated,
                        removed = ?done.removed,
                        repaired_base = done.base_written,
                        pods = applied.len(),
                        "capture reconciled"
                    );
                }
            }
            Ok(Err(error)) => {
                retry_pending = true;
                tracing::warn!(%error, "capture reconcile failed; will retry");
            }
            Err(error) => {
                retry_pending = true;
                tracing::warn!(%error, "capture reconcile task failed; will retry");
            }
        }
    }
}

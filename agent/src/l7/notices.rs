//! Saying loudly where HTTP rules cannot be seen. A rule that needs HTTP
//! (methods, paths, request principals, `request.*` conditions...) is
//! decided per request on HTTP ports only; elsewhere an ALLOW rule never
//! matches and a DENY rule matches on its L4 part alone. Every such rule is
//! logged when a state with it loads, listed on the status page, and named
//! in `authz check` reasons.

use std::collections::BTreeSet;
use std::sync::Arc;

use ambit_policy::HttpOnlyRule;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::state::Snapshot;

/// One line per rule, as the status page lists them.
pub fn lines(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .policies()
        .all_http_only_rules()
        .iter()
        .map(line)
        .collect()
}

fn line(r: &HttpOnlyRule) -> String {
    format!(
        "{r} ({}): decided per request on HTTP ports; on other ports it {}",
        r.action,
        r.at_l4()
    )
}

/// Logs a warning for each rule needing HTTP when it first appears in a
/// loaded state, until `shutdown`.
pub async fn warn_on_load(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    shutdown: CancellationToken,
) {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let mut now = BTreeSet::new();
        for r in snapshot.policies().all_http_only_rules() {
            let key = line(&r);
            if !seen.contains(&key) {
                tracing::warn!(
                    policy = %r.policy,
                    rule = r.rule,
                    action = r.action,
                    fields = %r.fields.join(","),
                    at_l4 = r.at_l4(),
                    "policy rule needs HTTP: decided per request on HTTP ports (Service appProtocol/port name, or sniffed); on ports that are not HTTP it {}",
                    r.at_l4()
                );
            }
            now.insert(key);
        }
        seen = now;
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
    }
}

//! How stale the state in force may be: exported as
//! `ambit_state_staleness_seconds`, and past a bound the agent reports not
//! ready (it keeps enforcing the last state meanwhile), so an agent whose
//! watches cannot reach the API server never serves old state silently.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::state::StateStore;

/// The readiness task held while the state is past the bound.
pub(super) const TASK: &str = "state-fresh";

/// How often staleness is read: the gauge's resolution, and how late past
/// the bound readiness may turn.
const PERIOD: Duration = Duration::from_secs(1);

/// Follows the store's staleness until `shutdown`.
pub(super) async fn follow(
    store: StateStore,
    readiness: Readiness,
    metrics: Arc<Metrics>,
    bound: Duration,
    shutdown: CancellationToken,
) {
    let mut blocker = None;
    loop {
        let staleness = store.staleness(SystemTime::now());
        metrics.agent.state_staleness.set(staleness.as_secs_f64());
        if staleness > bound {
            if blocker.is_none() {
                tracing::warn!(
                    staleness_s = staleness.as_secs(),
                    bound_s = bound.as_secs(),
                    "state source not current past the bound; not ready until it is"
                );
                blocker = Some(readiness.block(TASK));
            }
            readiness.explain(
                TASK,
                Some(format!(
                    "no confirmed state for {}s (bound {}s)",
                    staleness.as_secs(),
                    bound.as_secs()
                )),
            );
        } else if blocker.take().is_some() {
            readiness.explain(TASK, None);
            tracing::info!("state source current again");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PERIOD) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::state::Snapshot;

    #[tokio::test(start_paused = true)]
    async fn not_ready_past_the_bound_and_ready_again_once_current() {
        let store = StateStore::new(Snapshot::default());
        let readiness = Readiness::new();
        let metrics = Arc::new(Metrics::new(&mut Registry::default()));
        let shutdown = CancellationToken::new();
        tokio::spawn(follow(
            store.clone(),
            readiness.clone(),
            metrics.clone(),
            Duration::from_secs(30),
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(readiness.is_ready());

        // A watch went down 20 s ago: stale, within the bound.
        store.set_behind_since(Some(SystemTime::now() - Duration::from_secs(20)));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(readiness.is_ready());
        assert!(metrics.agent.state_staleness.get() >= 20.0);

        // 40 s: past it.
        store.set_behind_since(Some(SystemTime::now() - Duration::from_secs(40)));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(readiness.pending(), vec![TASK.to_owned()]);
        assert!(readiness.pending_explained()[0].contains("bound 30s"));

        store.set_behind_since(None);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(readiness.is_ready());
        assert_eq!(metrics.agent.state_staleness.get(), 0.0);
        shutdown.cancel();
    }
}

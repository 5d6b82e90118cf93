//! Readiness: the agent is ready once every start-up task that registered a
//! blocker (state synced, certificates loaded, listeners bound) has dropped it.
//!
//! Blockers are guards: dropping one is the only way to say a task is done, so
//! a task holds its blocker until the work has really happened (the first full
//! state sync, not the start of the watch).

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

/// Shared readiness state; cheap to clone.
#[derive(Clone, Debug)]
pub struct Readiness {
    /// Pending task name -> how many blockers of that name are alive.
    pending: Arc<watch::Sender<BTreeMap<String, usize>>>,
    /// Why a pending task is still pending, where something knows.
    reasons: Arc<parking_lot::Mutex<BTreeMap<String, String>>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(BTreeMap::new());
        Self {
            pending: Arc::new(tx),
            reasons: Arc::default(),
        }
    }

    /// Registers a task the agent must wait for; the agent is not ready until the
    /// returned blocker is dropped. Register before serving readiness.
    pub fn block(&self, task: impl Into<String>) -> ReadinessBlocker {
        let task = task.into();
        self.pending
            .send_modify(|p| *p.entry(task.clone()).or_default() += 1);
        ReadinessBlocker {
            pending: self.pending.clone(),
            task,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.pending.borrow().is_empty()
    }

    /// The tasks still blocking readiness, sorted.
    pub fn pending(&self) -> Vec<String> {
        self.pending.borrow().keys().cloned().collect()
    }

    /// Says why `task` is still pending (`None`: nothing known).
    pub fn explain(&self, task: &str, why: Option<String>) {
        let mut reasons = self.reasons.lock();
        match why {
            Some(why) => reasons.insert(task.to_owned(), why),
            None => reasons.remove(task),
        };
    }

    /// The pending tasks, each with why where that is known.
    pub fn pending_explained(&self) -> Vec<String> {
        let reasons = self.reasons.lock();
        self.pending()
            .into_iter()
            .map(|task| match reasons.get(&task) {
                Some(why) => format!("{task} ({why})"),
                None => task,
            })
            .collect()
    }

    /// Resolves once every blocker other than those named in `except` is gone.
    pub async fn ready_except(&self, except: &[&str]) {
        let mut rx = self.pending.subscribe();
        let _ = rx
            .wait_for(|p| p.keys().all(|k| except.contains(&k.as_str())))
            .await;
    }

    /// Resolves once every blocker is gone.
    pub async fn ready(&self) {
        let mut rx = self.pending.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(BTreeMap::is_empty).await;
    }
}

/// Keeps the agent not ready while alive.
#[derive(Debug)]
#[must_use = "readiness is reached as soon as the blocker is dropped"]
pub struct ReadinessBlocker {
    pending: Arc<watch::Sender<BTreeMap<String, usize>>>,
    task: String,
}

impl ReadinessBlocker {
    pub fn task(&self) -> &str {
        &self.task
    }
}

impl Drop for ReadinessBlocker {
    fn drop(&mut self) {
        self.pending.send_modify(|p| {
            if let Some(n) = p.get_mut(&self.task) {
                *n -= 1;
                if *n == 0 {
                    p.remove(&self.task);
                }
            }
        });
        tracing::info!(task = %self.task, "readiness task done");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_tasks_carry_their_reasons_while_pending() {
        let r = Readiness::new();
        let state = r.block("state");
        let _certs = r.block("certificates");
        r.explain(
            "state",
            Some("EndpointSlice (discovery.k8s.io/v1) is not served".into()),
        );
        assert_eq!(
            r.pending_explained(),
            [
                "certificates",
                "state (EndpointSlice (discovery.k8s.io/v1) is not served)"
            ]
        );
        drop(state);
        assert_eq!(r.pending_explained(), ["certificates"]);
        r.explain("state", None);
    }

    #[tokio::test]
    async fn ready_only_after_every_blocker_drops() {
        let r = Readiness::new();
        let state = r.block("state");
        let certs = r.block("certificates");
        let certs2 = r.block("certificates");
        assert_eq!(r.pending(), vec!["certificates", "state"]);
        drop(certs);
        assert_eq!(r.pending(), vec!["certificates", "state"]);
        drop(state);
        assert!(!r.is_ready());
        let waiter = tokio::spawn({
            let r = r.clone();
            async move { r.ready().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(certs2);
        waiter.await.unwrap();
        assert!(r.is_ready());
        assert!(r.pending().is_empty());
    }
}

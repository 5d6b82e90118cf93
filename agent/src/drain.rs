//! Two-phase graceful shutdown.
//!
//! Phase one (`Draining`): listeners stop accepting, open connections are asked
//! to finish (HTTP/2 GOAWAY, half-close) and the trigger waits for every watcher
//! to be dropped. Phase two (`Forced`), at the deadline: connections still open
//! are told to abort. Every listener and every in-flight connection holds a
//! `DrainWatcher`; the drain is complete when the last one is dropped.

use std::time::Duration;

use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    Draining,
    Forced,
}

/// Starts the drain; held by the composition root.
#[derive(Debug)]
pub struct DrainTrigger {
    tx: watch::Sender<Phase>,
}

/// Watches for the drain; clone one into every listener and connection task.
#[derive(Clone, Debug)]
pub struct DrainWatcher {
    rx: watch::Receiver<Phase>,
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every watcher was dropped before the deadline.
    Complete,
    /// The deadline passed with `remaining` watchers alive; they were told to abort.
    Forced { remaining: usize },
}

/// A connected trigger and watcher.
pub fn channel() -> (DrainTrigger, DrainWatcher) {
    let (tx, rx) = watch::channel(Phase::Running);
    (DrainTrigger { tx }, DrainWatcher { rx })
}

impl DrainTrigger {
    /// A new watcher, for tasks started after the trigger was created.
    pub fn watcher(&self) -> DrainWatcher {
        DrainWatcher {
            rx: self.tx.subscribe(),
        }
    }

    /// Starts draining and waits up to `deadline` for every watcher to go, then
    /// forces the rest and gives them `abort_grace` to drop.
    pub async fn drain(self, deadline: Duration, abort_grace: Duration) -> DrainOutcome {
        self.tx.send_replace(Phase::Draining);
        tracing::info!(
            watchers = self.tx.receiver_count(),
            deadline_ms = deadline.as_millis() as u64,
            "draining"
        );
        if tokio::time::timeout(deadline, self.tx.closed())
            .await
            .is_ok()
        {
            tracing::info!("drain complete");
            return DrainOutcome::Complete;
        }
        let remaining = self.tx.receiver_count();
        tracing::warn!(remaining, "drain deadline passed, aborting connections");
        self.tx.send_replace(Phase::Forced);
        let _ = tokio::time::timeout(abort_grace, self.tx.closed()).await;
        DrainOutcome::Forced { remaining }
    }
}

impl DrainWatcher {
    pub fn phase(&self) -> Phase {
        *self.rx.borrow()
    }

    pub fn is_draining(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    /// Resolves when draining starts (or the trigger is gone): stop accepting.
    pub async fn draining(&mut self) {
        self.reached(Phase::Draining).await;
    }

    /// Resolves when the deadline has passed (or the trigger is gone): abort now.
    pub async fn forced(&mut self) {
        self.reached(Phase::Forced).await;
    }

    async fn reached(&mut self, phase: Phase) {
        // A dropped trigger means the process is going away: treat as reached.
        let _ = self.rx.wait_for(|p| *p >= phase).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_completes_when_connections_finish() {
        let (trigger, watcher) = channel();
        let mut conn = watcher.clone();
        let task = tokio::spawn(async move {
            conn.draining().await;
            // A connection finishing its last request after the signal.
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(conn);
        });
        drop(watcher);
        let started = tokio::time::Instant::now();
        let outcome = trigger
            .drain(Duration::from_secs(10), Duration::from_secs(1))
            .await;
        assert_eq!(outcome, DrainOutcome::Complete);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn drain_forces_stragglers_at_the_deadline() {
        let (trigger, watcher) = channel();
        let mut conn = watcher.clone();
        let task = tokio::spawn(async move {
            // Ignores the drain signal; only the forced phase ends it.
            conn.forced().await;
            let phase = conn.phase();
            drop(conn);
            phase
        });
        drop(watcher);
        let started = tokio::time::Instant::now();
        let outcome = trigger
            .drain(Duration::from_secs(5), Duration::from_secs(1))
            .await;
        assert_eq!(outcome, DrainOutcome::Forced { remaining: 1 });
        // Deadline reached exactly, then the forced task dropped promptly.
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(task.await.unwrap(), Phase::Forced);
    }

    #[tokio::test]
    async fn dropped_trigger_counts_as_drain() {
        let (trigger, mut watcher) = channel();
        drop(trigger);
        watcher.draining().await;
        watcher.forced().await;
    }
}

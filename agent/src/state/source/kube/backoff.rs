//! Retry delays of a failing watch. kube-runtime's default backoff resets
//! only on an item after the error, and treats a `410 Gone` like a failure:
//! after a CRD was deleted and re-created, the retry delay had grown to about
//! 40 s and the relist that the 410 called for waited that long too, so a new
//! policy reached the agent a minute late. Here the delay goes back to the
//! start after every successful list or watch event, and the caller retries a
//! 410 at once (relisting is the expected answer, not a failure).
//!
//! A resumed watch that works but has nothing to report yields no event (the
//! watcher keeps bookmarks to itself), so a retry that ran for a while before
//! failing again also counts as a success: the next delay starts over.

use std::time::Duration;

use tokio::time::Instant;

/// First delay after a success.
const INITIAL: Duration = Duration::from_millis(500);
/// Longest delay: a recovered API server is followed within this much, while
/// thousands of agents retrying an unavailable one stay a light load.
const MAX: Duration = Duration::from_secs(10);
/// A retry that failed later than this after it started had been working.
const WORKED_FOR: Duration = Duration::from_secs(5);

/// Exponential delays with jitter, reset by success.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    /// When the last retry was due to start.
    retry_at: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: INITIAL,
            retry_at: None,
        }
    }
}

impl Backoff {
    /// A list or watch event arrived: the API server works again.
    pub fn reset(&mut self) {
        self.next = INITIAL;
        self.retry_at = None;
    }

    /// The delay before the next attempt: between half and all of the
    /// current step (jitter, so agents that failed together do not retry
    /// together), doubling the step up to `MAX`.
    pub fn next_delay(&mut self) -> Duration {
        let now = Instant::now();
        if self
            .retry_at
            .is_some_and(|at| now.saturating_duration_since(at) > WORKED_FOR)
        {
            self.reset();
        }
        let step = self.next;
        self.next = (step * 2).min(MAX);
        let half = step / 2;
        let delay = half + half.mul_f64(rand::random::<f64>());
        self.retry_at = Some(now + delay);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_retry_that_worked_for_a_while_starts_over() {
        let mut backoff = Backoff::default();
        let mut delay = Duration::ZERO;
        for _ in 0..5 {
            delay = backoff.next_delay();
        }
        // Failing right after the retry: still backing off.
        tokio::time::advance(delay + Duration::from_millis(100)).await;
        let delay = backoff.next_delay();
        assert!(delay >= MAX / 2, "{delay:?}");
        // The next retry ran for a minute before failing: it had worked.
        tokio::time::advance(delay + Duration::from_secs(60)).await;
        assert!(backoff.next_delay() <= INITIAL);
    }

    #[tokio::test(start_paused = true)]
    async fn grows_to_the_cap_and_resets_on_success() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] <= INITIAL && delays[0] >= INITIAL / 2);
        assert!(delays[3] >= INITIAL * 4, "{delays:?}");
        assert!(delays.iter().all(|d| *d <= MAX), "{delays:?}");
        assert!(delays[7] >= MAX / 2, "{delays:?}");
        backoff.reset();
        assert!(backoff.next_delay() <= INITIAL);
    }
}

//! Retry delays of a failing watch. kube-runtime's default backoff resets
//! only on an item after the error, and treats a `410 Gone` like a failure:
//! after a CRD was deleted and re-created, the retry delay had grown to about
//! 40 s and the relist that the 410 called for waited that long too, so a new
//! policy reached the agent a minute late. Here the delay goes back to the
//! start after every successful list or watch event, and the caller retries a
//! 410 at once (relisting is the expected answer, not a failure).

use std::time::Duration;

/// First delay after a success.
const INITIAL: Duration = Duration::from_millis(500);
/// Longest delay: a recovered API server is followed within this much, while
/// thousands of agents retrying an unavailable one stay a light load.
const MAX: Duration = Duration::from_secs(10);

/// Exponential delays with jitter, reset by success.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: INITIAL }
    }
}

impl Backoff {
    /// A list or watch event arrived: the API server works again.
    pub fn reset(&mut self) {
        self.next = INITIAL;
    }

    /// The delay before the next attempt: between half and all of the
    /// current step (jitter, so agents that failed together do not retry
    /// together), doubling the step up to `MAX`.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(MAX);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets_on_success() {
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

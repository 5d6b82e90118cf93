//! When to ask the CA again: renewal at about half a certificate's remaining
//! life (jittered, so identities issued together do not renew together), and
//! capped exponential backoff after failures.

use std::time::Duration;

/// Backoff policy after failed attempts.
#[derive(Clone, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// Delay before retry number `failures` (1 = first retry): doubling from
    /// `initial`, capped at `max`, with up to 20% subtracted at random.
    pub fn delay(&self, failures: u32, random: f64) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        let capped = exp.min(self.max);
        capped.mul_f64(1.0 - 0.2 * random.clamp(0.0, 1.0))
    }
}

/// Time from receipt until renewal for a certificate with `remaining` life:
/// between 45% and 55% of it, chosen by `random` in [0, 1].
pub fn renew_after(remaining: Duration, random: f64) -> Duration {
    remaining.mul_f64(0.45 + 0.10 * random.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_around_half_life() {
        let day = Duration::from_secs(86_400);
        assert_eq!(renew_after(day, 0.5), day / 2);
        assert!(renew_after(day, 0.0) >= day.mul_f64(0.45));
        assert!(renew_after(day, 1.0) <= day.mul_f64(0.55));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(100));
        assert_eq!(b.delay(2, 0.0), Duration::from_millis(200));
        assert_eq!(b.delay(4, 0.0), Duration::from_millis(800));
        assert_eq!(b.delay(5, 0.0), Duration::from_secs(1));
        assert_eq!(b.delay(500, 0.0), Duration::from_secs(1));
        assert_eq!(b.delay(5, 1.0), Duration::from_millis(800));
    }
}

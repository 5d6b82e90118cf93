//! Churn on the generated cluster while the agents run: pods replaced at a
//! steady rate (each replacement is six API changes: terminating, leaving the
//! slice, deleted, scheduled, running, joining the slice), pod label edits
//! and policy edits, all applied to the fake API server as a cluster's
//! controllers would.

use std::sync::Arc;
use std::time::Duration;

use ambit_tests::fake_kube::{FakeKube, PODS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

use super::cluster::{Change, POLICIES, Population, policy};

/// How fast the cluster changes.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    pub pod_replacements_per_sec: f64,
    pub relabels_per_sec: f64,
    pub policy_edits_per_sec: f64,
}

/// Applies changes until the task is aborted. Returns how many API changes
/// it made through `made`.
pub async fn run(
    fake: Arc<FakeKube>,
    population: Arc<Mutex<Population>>,
    rates: Rates,
    made: Arc<std::sync::atomic::AtomicU64>,
) {
    const TICK: Duration = Duration::from_millis(100);
    let mut rng = StdRng::seed_from_u64(15);
    let mut tick = tokio::time::interval(TICK);
    let per_tick = |rate: f64| rate * TICK.as_secs_f64();
    let (mut replace, mut relabel, mut edit) = (0.0, 0.0, 0.0);
    let mut version = 1;
    loop {
        tick.tick().await;
        replace += per_tick(rates.pod_replacements_per_sec);
        relabel += per_tick(rates.relabels_per_sec);
        edit += per_tick(rates.policy_edits_per_sec);
        let mut changes = Vec::new();
        {
            let mut population = population.lock().await;
            while replace >= 1.0 {
                replace -= 1.0;
                changes.extend(population.replace(rng.random_range(0..usize::MAX)));
            }
            while relabel >= 1.0 {
                relabel -= 1.0;
                version += 1;
                changes.extend(population.relabel(rng.random_range(0..usize::MAX), version));
            }
            while edit >= 1.0 {
                edit -= 1.0;
                version += 1;
                let i = rng.random_range(0..POLICIES);
                changes.push(Change::Apply(policy(&population.shape, i, version)));
            }
        }
        let count = changes.len() as u64;
        for change in changes {
            apply(&fake, change);
        }
        made.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
    }
}

pub fn apply(fake: &FakeKube, change: Change) {
    let result = match change {
        Change::Apply(object) => fake.apply(&object).map(drop),
        Change::DeletePod { namespace, name } => {
            fake.delete(&PODS, &namespace, &name);
            Ok(())
        }
    };
    if let Err(error) = result {
        eprintln!("churn: {error}");
    }
}

//! The last refusals the agent recorded per workload, for `ambit-agent
//! describe` ("why was I refused a moment ago?").
//!
//! Each workload keeps a small ring of its newest refusals and the number of
//! workloads kept is bounded too, so a storm of refused connections costs a
//! fixed amount of memory: a refusal pushes out the oldest one of its
//! workload, and a new workload pushes out the one refused longest ago.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Refusals kept per workload.
pub const PER_WORKLOAD: usize = 16;
/// Workloads kept. Refusals are kept under the node's own pods (the refused
/// destination, or the refused client), and a node runs at most a few
/// hundred (Kubernetes defaults to 110): this bounds the rings to a couple of
/// MiB even when the state names more.
pub const MAX_WORKLOADS: usize = 512;

/// One refused connection, as the agent that refused it (or saw it refused)
/// recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// When it was recorded, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// `inbound`: a connection to the workload was refused; `outbound`: one
    /// the workload opened was refused (by its destination, or here).
    pub direction: String,
    /// The client's address and proven identity (`unknown` for plaintext).
    pub client: SocketAddr,
    pub client_identity: String,
    /// The other end: the destination for outbound refusals, the source
    /// workload for inbound ones (`unknown` when not a workload).
    pub peer_workload: String,
    pub destination: SocketAddr,
    /// The authorization reason (`no ALLOW policy matched`, ...).
    pub reason: String,
    /// The deciding policy, `namespace/name`, when one decided.
    pub policy: Option<String>,
    /// What the proxy saw (a status answered by the peer, an error).
    pub detail: Option<String>,
}

/// Bounded rings of [`Denial`]s keyed by workload (`namespace/name`).
#[derive(Debug)]
pub struct RecentDenials {
    per_workload: usize,
    max_workloads: usize,
    rings: Mutex<HashMap<String, VecDeque<Denial>>>,
}

impl Default for RecentDenials {
    fn default() -> Self {
        Self::with_bounds(PER_WORKLOAD, MAX_WORKLOADS)
    }
}

impl RecentDenials {
    pub fn with_bounds(per_workload: usize, max_workloads: usize) -> Self {
        Self {
            per_workload: per_workload.max(1),
            max_workloads: max_workloads.max(1),
            rings: Mutex::default(),
        }
    }

    /// Keeps `denial` as `workload`'s newest.
    pub fn record(&self, workload: &str, denial: Denial) {
        let mut rings = self.rings.lock();
        if !rings.contains_key(workload) && rings.len() >= self.max_workloads {
            // Refusals are rare next to connections, so a scan here is cheap
            // enough and keeps the common path a single map lookup.
            let stalest = rings
                .iter()
                .min_by_key(|(_, ring)| ring.back().map_or(0, |d| d.at_unix_ms))
                .map(|(name, _)| name.clone());
            if let Some(name) = stalest {
                rings.remove(&name);
            }
        }
        let ring = rings.entry(workload.to_owned()).or_default();
        if ring.len() >= self.per_workload {
            ring.pop_front();
        }
        ring.push_back(denial);
    }

    /// `workload`'s kept refusals, newest first.
    pub fn of(&self, workload: &str) -> Vec<Denial> {
        self.rings
            .lock()
            .get(workload)
            .map(|ring| ring.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(at: u64) -> Denial {
        Denial {
            at_unix_ms: at,
            direction: "inbound".into(),
            client: "10.0.0.1:1000".parse().unwrap(),
            client_identity: "unknown".into(),
            peer_workload: "unknown".into(),
            destination: "10.0.0.2:80".parse().unwrap(),
            reason: "no ALLOW policy matched".into(),
            policy: None,
            detail: None,
        }
    }

    #[test]
    fn each_workload_keeps_its_newest_refusals_first() {
        let log = RecentDenials::with_bounds(3, 10);
        for at in 1..=5 {
            log.record("default/analyzer", denial(at));
        }
        log.record("default/sleep", denial(9));
        let kept: Vec<u64> = log
            .of("default/analyzer")
            .iter()
            .map(|d| d.at_unix_ms)
            .collect();
        assert_eq!(kept, vec![5, 4, 3]);
        assert_eq!(log.of("default/sleep").len(), 1);
        assert!(log.of("default/guestbook").is_empty());
    }

    #[test]
    fn a_new_workload_evicts_the_one_refused_longest_ago() {
        let log = RecentDenials::with_bounds(2, 2);
        log.record("a/old", denial(1));
        log.record("a/recent", denial(5));
        log.record("a/new", denial(7));
        assert!(log.of("a/old").is_empty());
        assert_eq!(log.of("a/recent").len(), 1);
        assert_eq!(log.of("a/new").len(), 1);
    }
}

//! The `istio_tcp_*` series of a (source, destination) pair, resolved once
//! and shared by every connection between them.
//!
//! Building a connection's 23 labels allocates two dozen strings, and each of
//! the four families hashes the whole set to find its counter. Connections
//! between the same two workloads always land on the same series, so the
//! label set and the four counters are kept per pair: a new connection costs
//! one hash of the pair's facts (borrowed, nothing allocated) and one lookup.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;

use super::traffic::{ConnectionOpen, TrafficLabels, TrafficMetrics, UNKNOWN};
use crate::state::Workload;

/// Pairs kept at most; past that the cache starts over (the counters stay
/// in their families, a dropped entry is only resolved again). State changes
/// that relabel workloads leave stale entries behind, and this bounds them.
const MAX_PAIRS: usize = 4096;

/// One resolved label set and its counters.
#[derive(Debug)]
pub(super) struct Series {
    pub labels: TrafficLabels,
    pub opened: Counter,
    /// Taken at the pair's first close, so no closed series shows 0 before.
    closed: OnceLock<Counter>,
    pub received: Counter,
    pub sent: Counter,
    /// `namespace/name` of each end, or `unknown`, for the access log.
    pub source_workload: String,
    pub destination_workload: String,
}

impl Series {
    /// The closed counter of the pair's label set.
    pub fn closed(&self, families: &TrafficMetrics) -> &Counter {
        self.closed.get_or_init(|| {
            families
                .connections_closed
                .get_or_create_owned(&self.labels)
        })
    }
}

#[derive(Debug, Default)]
pub(super) struct SeriesCache {
    hasher: foldhash::fast::RandomState,
    pairs: Mutex<HashMap<u64, Vec<Arc<Series>>>>,
}

impl SeriesCache {
    /// The series of `conn`'s pair, resolved now if it is new.
    pub fn get(
        &self,
        conn: &ConnectionOpen<'_>,
        families: &TrafficMetrics,
        cluster: &str,
        dns_suffix: &str,
    ) -> Arc<Series> {
        let fingerprint = self.fingerprint(conn);
        if let Some(series) = self
            .pairs
            .lock()
            .get(&fingerprint)
            .and_then(|found| found.iter().find(|s| same_pair(&s.labels, conn)))
        {
            return series.clone();
        }
        let labels = TrafficLabels::new(conn, cluster, dns_suffix);
        let series = Arc::new(Series {
            opened: families.connections_opened.get_or_create_owned(&labels),
            closed: OnceLock::new(),
            received: families.received_bytes.get_or_create_owned(&labels),
            sent: families.sent_bytes.get_or_create_owned(&labels),
            source_workload: qualified(conn.source_workload),
            destination_workload: qualified(conn.destination_workload),
            labels,
        });
        let mut pairs = self.pairs.lock();
        if pairs.len() >= MAX_PAIRS {
            pairs.clear();
        }
        pairs.entry(fingerprint).or_default().push(series.clone());
        series
    }

    /// Hashes every fact the labels are made of, without allocating.
    fn fingerprint(&self, conn: &ConnectionOpen<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        conn.reporter.hash(&mut h);
        conn.security.hash(&mut h);
        hash_workload(conn.source_workload, &mut h);
        conn.source_identity.hash(&mut h);
        hash_workload(conn.destination_workload, &mut h);
        conn.destination_identity.hash(&mut h);
        conn.destination_service
            .map(|s| (&s.name, &s.namespace))
            .hash(&mut h);
        h.finish()
    }
}

fn hash_workload(workload: Option<&Workload>, h: &mut impl Hasher) {
    workload.map(|w| (&w.name, &w.namespace, &w.labels)).hash(h);
}

/// Guards against a fingerprint collision: the names of both ends must match
/// (the labels derived from workload labels are covered by the fingerprint).
fn same_pair(labels: &TrafficLabels, conn: &ConnectionOpen<'_>) -> bool {
    fn name(w: Option<&Workload>) -> &str {
        w.map_or(UNKNOWN, |w| w.name.as_str())
    }
    let service = conn
        .destination_service
        .map_or(UNKNOWN, |s| s.name.as_str());
    labels.reporter == conn.reporter
        && labels.connection_security_policy == conn.security
        && labels.source_workload == name(conn.source_workload)
        && labels.destination_workload == name(conn.destination_workload)
        && labels.destination_service_name == service
}

fn qualified(workload: Option<&Workload>) -> String {
    workload.map_or_else(|| UNKNOWN.to_string(), Workload::qualified_name)
}

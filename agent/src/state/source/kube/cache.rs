//! The watched objects, slimmed, by kind; and turning them into a snapshot
//! through the same `SnapshotBuilder` the file source uses.
//!
//! The API server's view is eventually consistent across kinds (a pod can be
//! seen before its namespace, a deleted pod's IP can reappear on a new pod
//! before the old pod's deletion is seen), which a file never is. So the
//! cache resolves those transients before building, rather than letting the
//! builder reject the whole cluster over one of them.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::state::{LoadError, LoadOptions, Origin, Snapshot, SnapshotBuilder};

/// An object's place in its kind: (namespace, name).
pub(super) type ObjectKey = (String, String);

/// One watched kind, as last seen.
#[derive(Debug, Default)]
pub(super) struct KindCache {
    objects: HashMap<ObjectKey, Value>,
    /// Objects of a list in progress: they replace `objects` at its end, so
    /// objects deleted while the watch was down disappear.
    relisting: Option<HashMap<ObjectKey, Value>>,
    synced: bool,
}

impl KindCache {
    pub fn begin_list(&mut self) {
        self.relisting = Some(HashMap::new());
    }

    pub fn listed(&mut self, key: ObjectKey, object: Value) {
        match &mut self.relisting {
            Some(list) => list.insert(key, object),
            None => self.objects.insert(key, object),
        };
    }

    pub fn end_list(&mut self) {
        if let Some(list) = self.relisting.take() {
            self.objects = list;
        }
        self.synced = true;
    }

    pub fn apply(&mut self, key: ObjectKey, object: Value) {
        self.objects.insert(key, object);
    }

    pub fn delete(&mut self, key: &ObjectKey) {
        self.objects.remove(key);
    }

    /// A kind that does not exist in the cluster (a CRD not installed) is
    /// synced and empty.
    pub fn mark_absent(&mut self) {
        self.objects.clear();
        self.relisting = None;
        self.synced = true;
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    fn values(&self) -> impl Iterator<Item = &Value> {
        self.objects.values()
    }
}

/// Every watched kind.
#[derive(Debug, Default)]
pub(super) struct Caches {
    pub namespaces: KindCache,
    pub pods: KindCache,
    pub services: KindCache,
    pub endpoint_slices: KindCache,
    pub authorization_policies: KindCache,
    pub peer_authentications: KindCache,
}

impl Caches {
    pub fn all_synced(&self) -> bool {
        self.kinds().iter().all(|k| k.is_synced())
    }

    fn kinds(&self) -> [&KindCache; 6] {
        [
            &self.namespaces,
            &self.pods,
            &self.services,
            &self.endpoint_slices,
            &self.authorization_policies,
            &self.peer_authentications,
        ]
    }

    /// Builds the snapshot the file source would build from the same objects.
    pub fn build(&self, options: &LoadOptions) -> Result<Snapshot, LoadError> {
        let origin = Origin {
            file: Arc::from(Path::new("kubernetes")),
            line: 0,
        };
        let mut builder = SnapshotBuilder::new(options);
        for object in self.namespaces.values() {
            builder.add_object(origin.clone(), object)?;
        }
        let namespaces: std::collections::HashSet<&str> = self
            .namespaces
            .values()
            .filter_map(|ns| ns["metadata"]["name"].as_str())
            .collect();
        for pod in routable_pods(&self.pods, &namespaces) {
            builder.add_object(origin.clone(), pod)?;
        }
        let rest = [
            &self.services,
            &self.endpoint_slices,
            &self.authorization_policies,
            &self.peer_authentications,
        ];
        for object in rest.into_iter().flat_map(KindCache::values) {
            builder.add_object(origin.clone(), object)?;
        }
        builder.build()
    }
}

/// The pods to build from: those whose namespace has been seen, and for an
/// IP two pods claim (a terminating pod's address already given to a new
/// one), only the pod that is not being deleted, else the newest.
fn routable_pods<'a>(
    pods: &'a KindCache,
    namespaces: &std::collections::HashSet<&str>,
) -> Vec<&'a Value> {
    let mut by_ip: BTreeMap<IpAddr, &'a Value> = BTreeMap::new();
    let mut without_ip = Vec::new();
    for pod in pods.values() {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        if !namespaces.contains(ns) {
            continue;
        }
        let ips = pod_ips(pod);
        let captured = !pod["spec"]["hostNetwork"].as_bool().unwrap_or(false)
            && pod["status"]["phase"]
                .as_str()
                .is_none_or(|p| p == "Running");
        if ips.is_empty() || !captured {
            without_ip.push(pod);
            continue;
        }
        for ip in ips {
            match by_ip.get(&ip) {
                Some(other) if preferred(other, pod) => {
                    tracing::debug!(%ip, "two pods claim one IP; keeping the live one");
                }
                _ => {
                    by_ip.insert(ip, pod);
                }
            }
        }
    }
    // A dual-stack pod appears under each of its IPs; add it once, and only
    // if it kept every one of them.
    let mut seen = std::collections::HashSet::new();
    let mut out = without_ip;
    for pod in by_ip.values() {
        let ptr = std::ptr::from_ref(*pod);
        if seen.insert(ptr)
            && pod_ips(pod)
                .iter()
                .all(|ip| by_ip.get(ip).is_some_and(|p| std::ptr::eq(*p, *pod)))
        {
            out.push(pod);
        }
    }
    out
}

fn pod_ips(pod: &Value) -> Vec<IpAddr> {
    let status = &pod["status"];
    let mut ips: Vec<IpAddr> = status["podIP"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .into_iter()
        .collect();
    for entry in status["podIPs"].as_array().into_iter().flatten() {
        if let Some(ip) = entry["ip"].as_str().and_then(|s| s.parse().ok())
            && !ips.contains(&ip)
        {
            ips.push(ip);
        }
    }
    ips
}

/// Whether `a` should keep an IP `b` also claims.
fn preferred(a: &Value, b: &Value) -> bool {
    let deleting = |p: &Value| !p["metadata"]["deletionTimestamp"].is_null();
    let created = |p: &Value| {
        p["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    match (deleting(a), deleting(b)) {
        (false, true) => true,
        (true, false) => false,
        _ => created(a) >= created(b),
    }
}

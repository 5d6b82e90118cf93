//! The watched objects, slimmed, by kind; and turning them into a snapshot
//! through the same `SnapshotBuilder` the file source uses.
//!
//! The API server's view is eventually consistent across kinds (a pod can be
//! seen before its namespace, a deleted pod's IP can reappear on a new pod
//! before the old pod's deletion is seen), which a file never is. So the
//! cache resolves those transients before building, rather than letting the
//! builder reject the whole cluster over one of them.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::state::{LoadError, LoadOptions, Origin, Snapshot, SnapshotBuilder};

/// An object's place in its kind: (namespace, name).
pub(super) type ObjectKey = (String, String);

/// A slimmed object, kept as compact JSON text: a tree of `serde_json`
/// maps costs several times its text in allocations, and the builder reads
/// each object once per rebuild.
type Stored = Box<str>;

fn store(object: &Value) -> Stored {
    // Serialising a `Value` cannot fail (its keys are strings).
    serde_json::to_string(object)
        .unwrap_or_default()
        .into_boxed_str()
}

/// One watched kind, as last seen.
#[derive(Debug, Default)]
pub(super) struct KindCache {
    objects: HashMap<ObjectKey, Stored>,
    /// Objects of a list in progress: they replace `objects` at its end, so
    /// objects deleted while the watch was down disappear.
    relisting: Option<HashMap<ObjectKey, Stored>>,
    synced: bool,
}

impl KindCache {
    pub fn begin_list(&mut self) {
        self.relisting = Some(HashMap::new());
    }

    pub fn listed(&mut self, key: ObjectKey, object: &Value) {
        let stored = store(object);
        match &mut self.relisting {
            Some(list) => list.insert(key, stored),
            None => self.objects.insert(key, stored),
        };
    }

    pub fn end_list(&mut self) {
        if let Some(list) = self.relisting.take() {
            self.objects = list;
        }
        self.synced = true;
    }

    pub fn apply(&mut self, key: ObjectKey, object: &Value) {
        self.objects.insert(key, store(object));
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

    /// Heap bytes of the stored objects and their keys (not the map itself).
    fn heap_bytes(&self) -> usize {
        self.objects
            .iter()
            .map(|((ns, name), text)| ns.capacity() + name.capacity() + text.len())
            .sum()
    }

    /// Every object, decoded one at a time.
    fn values(&self) -> impl Iterator<Item = Value> + '_ {
        self.objects
            .values()
            .filter_map(|text| serde_json::from_str(text).ok())
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
    pub request_authentications: KindCache,
}

impl Caches {
    pub fn all_synced(&self) -> bool {
        self.kinds().iter().all(|k| k.is_synced())
    }

    /// Bytes the cached objects hold, map overhead included.
    pub fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(ObjectKey, Stored)>() + 1;
        self.kinds()
            .iter()
            .map(|k| k.heap_bytes() + k.objects.capacity() * entry)
            .sum()
    }

    fn kinds(&self) -> [&KindCache; 7] {
        [
            &self.namespaces,
            &self.pods,
            &self.services,
            &self.endpoint_slices,
            &self.authorization_policies,
            &self.peer_authentications,
            &self.request_authentications,
        ]
    }

    /// Builds the snapshot the file source would build from the same objects.
    pub fn build(&self, options: &LoadOptions) -> Result<Snapshot, LoadError> {
        let origin = Origin {
            file: Arc::from(Path::new("kubernetes")),
            line: 0,
        };
        let mut builder = SnapshotBuilder::new(options);
        let mut namespaces = HashSet::new();
        for object in self.namespaces.values() {
            if let Some(name) = object["metadata"]["name"].as_str() {
                namespaces.insert(name.to_owned());
            }
            builder.add_object(origin.clone(), &object)?;
        }
        for text in routable_pods(&self.pods, &namespaces) {
            if let Ok(pod) = serde_json::from_str::<Value>(text) {
                builder.add_object(origin.clone(), &pod)?;
            }
        }
        let rest = [
            &self.services,
            &self.endpoint_slices,
            &self.authorization_policies,
            &self.peer_authentications,
            &self.request_authentications,
        ];
        for object in rest.into_iter().flat_map(KindCache::values) {
            builder.add_object(origin.clone(), &object)?;
        }
        builder.build()
    }
}

/// The facts about a pod that decide whether it is built from.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PodFacts {
    metadata: FactsMeta,
    spec: FactsSpec,
    status: FactsStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct FactsMeta {
    namespace: Option<String>,
    creation_timestamp: Option<String>,
    deletion_timestamp: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct FactsSpec {
    host_network: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct FactsStatus {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pod_ips: Vec<FactsIp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FactsIp {
    ip: String,
}

impl PodFacts {
    fn ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self
            .status
            .pod_ip
            .as_deref()
            .and_then(|s| s.parse().ok())
            .into_iter()
            .collect();
        for entry in &self.status.pod_ips {
            if let Ok(ip) = entry.ip.parse()
                && !ips.contains(&ip)
            {
                ips.push(ip);
            }
        }
        ips
    }

    /// Whether the builder will give this pod its IPs.
    fn captured(&self) -> bool {
        !self.spec.host_network && self.status.phase.as_deref().is_none_or(|p| p == "Running")
    }

    /// Whether this pod should keep an IP `other` also claims.
    fn preferred_over(&self, other: &PodFacts) -> bool {
        let deleting = |p: &PodFacts| p.metadata.deletion_timestamp.is_some();
        match (deleting(self), deleting(other)) {
            (false, true) => true,
            (true, false) => false,
            _ => self.metadata.creation_timestamp >= other.metadata.creation_timestamp,
        }
    }
}

/// The pods to build from: those whose namespace has been seen, and for an
/// IP two pods claim (a terminating pod's address already given to a new
/// one), only the pod that is not being deleted, else the newest.
fn routable_pods<'a>(pods: &'a KindCache, namespaces: &HashSet<String>) -> Vec<&'a str> {
    let facts: Vec<(&str, PodFacts)> = pods
        .objects
        .values()
        .filter_map(|text| Some((&**text, serde_json::from_str::<PodFacts>(text).ok()?)))
        .filter(|(_, f)| namespaces.contains(f.metadata.namespace.as_deref().unwrap_or("default")))
        .collect();
    let mut owner: HashMap<IpAddr, usize> = HashMap::new();
    for (i, (_, pod)) in facts.iter().enumerate() {
        if !pod.captured() {
            continue;
        }
        for ip in pod.ips() {
            match owner.get(&ip) {
                Some(&other) if facts[other].1.preferred_over(pod) => {
                    tracing::debug!(%ip, "two pods claim one IP; keeping the live one");
                }
                _ => {
                    owner.insert(ip, i);
                }
            }
        }
    }
    // A pod that lost any of its IPs (dual stack) is left out whole.
    facts
        .iter()
        .enumerate()
        .filter(|(i, (_, pod))| {
            !pod.captured() || pod.ips().iter().all(|ip| owner.get(ip) == Some(i))
        })
        .map(|(_, (text, _))| *text)
        .collect()
}

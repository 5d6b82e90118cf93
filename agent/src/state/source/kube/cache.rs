//! The watched objects, slimmed, by kind; and turning them into a snapshot
//! through the same `SnapshotBuilder` the file source uses.
//!
//! With a node set, pods scheduled on other nodes are kept in compact form
//! (`RemotePods`, see `state::remote`) from the moment their event arrives;
//! only this node's pods, and pods on no node yet, are kept as objects. A
//! remote pod that does not decode is kept as an object too, so the builder
//! rejects it with the same error either way.
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

use crate::state::k8s;
use crate::state::remote::{Interner, RemotePod, timestamp_key};
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

    /// Removes an object from the list in progress too: a pod that moved to
    /// the compact cache while being listed.
    fn forget(&mut self, key: &ObjectKey) {
        self.objects.remove(key);
        if let Some(list) = &mut self.relisting {
            list.remove(key);
        }
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

type ByNamespace = HashMap<Arc<str>, HashMap<Box<str>, RemotePod>>;

/// Pods of other nodes, compact, by namespace and name.
#[derive(Debug, Default)]
pub(super) struct RemotePods {
    pods: ByNamespace,
    relisting: Option<ByNamespace>,
    interner: Interner,
}

impl RemotePods {
    fn begin_list(&mut self) {
        self.relisting = Some(HashMap::new());
    }

    fn end_list(&mut self) {
        if let Some(list) = self.relisting.take() {
            self.pods = list;
        }
        self.interner.sweep();
    }

    fn put(&mut self, (namespace, name): ObjectKey, pod: RemotePod, listing: bool) {
        let namespace = self.interner.string(&namespace);
        let pods = match (&mut self.relisting, listing) {
            (Some(list), true) => list,
            _ => &mut self.pods,
        };
        pods.entry(namespace)
            .or_default()
            .insert(name.into_boxed_str(), pod);
    }

    fn remove(&mut self, (namespace, name): &ObjectKey) -> bool {
        let Some(in_namespace) = self.pods.get_mut(namespace.as_str()) else {
            return false;
        };
        let removed = in_namespace.remove(name.as_str()).is_some();
        if in_namespace.is_empty() {
            self.pods.remove(namespace.as_str());
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.pods.values().map(HashMap::len).sum()
    }

    /// Every pod with its namespace and name.
    fn iter(&self) -> impl Iterator<Item = (&str, &str, &RemotePod)> {
        self.pods.iter().flat_map(|(namespace, pods)| {
            pods.iter()
                .map(move |(name, pod)| (&**namespace, &**name, pod))
        })
    }

    /// Bytes the compact pods take, map slots and names included (the
    /// shared identities are few and left out).
    fn heap_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Box<str>, RemotePod)>() + 1;
        self.pods
            .values()
            .map(|pods| pods.capacity() * slot + pods.keys().map(|name| name.len()).sum::<usize>())
            .sum()
    }
}

/// Every watched kind.
#[derive(Debug, Default)]
pub(super) struct Caches {
    /// This agent's node; with it, pods elsewhere go to `remote_pods`.
    pub node: Option<String>,
    pub namespaces: KindCache,
    /// Pods kept as objects: this node's, unscheduled ones, or all of them
    /// when no node is set.
    pub pods: KindCache,
    pub remote_pods: RemotePods,
    pub services: KindCache,
    pub endpoint_slices: KindCache,
    pub authorization_policies: KindCache,
    pub peer_authentications: KindCache,
    pub request_authentications: KindCache,
}

impl Caches {
    /// Caches for the agent of `node` (None: every pod in full).
    pub fn for_node(node: Option<String>) -> Self {
        Self {
            node,
            ..Self::default()
        }
    }

    pub fn all_synced(&self) -> bool {
        self.kinds().iter().all(|k| k.is_synced())
    }

    /// Bytes the cached objects hold, map overhead included.
    pub fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(ObjectKey, Stored)>() + 1;
        let objects: usize = self
            .kinds()
            .iter()
            .map(|k| k.heap_bytes() + k.objects.capacity() * entry)
            .sum();
        objects + self.remote_pods.heap_bytes()
    }

    /// A pod list starts: both pod caches are replaced at its end.
    pub fn begin_pod_list(&mut self) {
        self.pods.begin_list();
        self.remote_pods.begin_list();
    }

    pub fn end_pod_list(&mut self) {
        self.pods.end_list();
        self.remote_pods.end_list();
    }

    /// Caches a (slimmed) pod from a list (`listing`) or a watch event, in
    /// compact form when it runs on another node.
    pub fn put_pod(&mut self, key: ObjectKey, pod: &Value, listing: bool) {
        match self.remote_form(pod) {
            Some(remote) => {
                self.pods.forget(&key);
                self.remote_pods.put(key, remote, listing);
            }
            None => {
                self.remote_pods.remove(&key);
                if listing {
                    self.pods.listed(key, pod);
                } else {
                    self.pods.apply(key, pod);
                }
            }
        }
    }

    pub fn delete_pod(&mut self, key: &ObjectKey) {
        if !self.remote_pods.remove(key) {
            self.pods.delete(key);
        }
    }

    /// Pods in either form.
    pub fn pod_count(&self) -> usize {
        self.pods.len() + self.remote_pods.len()
    }

    /// The compact form of `pod` if it is scheduled on a node other than
    /// this agent's and decodes; None keeps it as an object.
    fn remote_form(&mut self, pod: &Value) -> Option<RemotePod> {
        let node = self.node.as_deref()?;
        let scheduled = pod["spec"]["nodeName"].as_str()?;
        if scheduled == node {
            return None;
        }
        let decoded = k8s::pod(pod).ok()?;
        let meta = &pod["metadata"];
        let interner = &mut self.remote_pods.interner;
        let mut remote = interner.remote_pod(&decoded, meta["generateName"].as_str());
        remote.created = meta["creationTimestamp"].as_str().and_then(timestamp_key);
        remote.deleting = !meta["deletionTimestamp"].is_null();
        Some(remote)
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
        let (local, remote) = routable_pods(&self.pods, &self.remote_pods, &namespaces);
        for text in local {
            if let Ok(pod) = serde_json::from_str::<Value>(text) {
                builder.add_object(origin.clone(), &pod)?;
            }
        }
        for pod in remote {
            builder.add_remote_pod(pod.clone());
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
}

/// A pod in either form, with what decides which pod keeps a contested IP.
enum Candidate<'a> {
    Object { text: &'a str, ips: Vec<IpAddr> },
    Remote(&'a RemotePod),
}

struct Claim<'a> {
    pod: Candidate<'a>,
    /// Namespace and name: the last tie-break, so which of two pods keeps
    /// an IP does not depend on the order a map yields them in.
    key: (&'a str, &'a str),
    captured: bool,
    deleting: bool,
    created: Option<u64>,
}

impl Claim<'_> {
    fn ips(&self) -> &[IpAddr] {
        match &self.pod {
            Candidate::Object { ips, .. } => ips,
            Candidate::Remote(pod) => pod.ips.as_ref().map_or(&[], |ips| ips.as_slice()),
        }
    }

    /// Whether this pod should keep an IP `other` also claims.
    fn preferred_over(&self, other: &Claim<'_>) -> bool {
        match (self.deleting, other.deleting) {
            (false, true) => true,
            (true, false) => false,
            _ => (self.created, self.key) >= (other.created, other.key),
        }
    }
}

/// The pods to build from: those whose namespace has been seen, and for an
/// IP two pods claim (a terminating pod's address already given to a new
/// one), only the pod that is not being deleted, else the newest.
fn routable_pods<'a>(
    pods: &'a KindCache,
    remote: &'a RemotePods,
    namespaces: &HashSet<String>,
) -> (Vec<&'a str>, Vec<&'a RemotePod>) {
    let objects = pods.objects.iter().filter_map(|((ns, name), text)| {
        let facts = serde_json::from_str::<PodFacts>(text).ok()?;
        let namespace = facts.metadata.namespace.as_deref().unwrap_or("default");
        namespaces.contains(namespace).then(|| Claim {
            key: (ns.as_str(), name.as_str()),
            captured: facts.captured(),
            deleting: facts.metadata.deletion_timestamp.is_some(),
            created: facts
                .metadata
                .creation_timestamp
                .as_deref()
                .and_then(timestamp_key),
            pod: Candidate::Object {
                text,
                ips: facts.ips(),
            },
        })
    });
    let remote = remote
        .iter()
        .filter(|(namespace, _, _)| namespaces.contains(*namespace))
        .map(|(namespace, name, pod)| Claim {
            key: (namespace, name),
            captured: pod.captured,
            deleting: pod.deleting,
            created: pod.created,
            pod: Candidate::Remote(pod),
        });
    let claims: Vec<Claim<'a>> = objects.chain(remote).collect();
    let mut owner: HashMap<IpAddr, usize> = HashMap::with_capacity(claims.len());
    for (i, pod) in claims.iter().enumerate() {
        if !pod.captured {
            continue;
        }
        for ip in pod.ips() {
            match owner.get(ip) {
                Some(&other) if claims[other].preferred_over(pod) => {
                    tracing::debug!(%ip, "two pods claim one IP; keeping the live one");
                }
                _ => {
                    owner.insert(*ip, i);
                }
            }
        }
    }
    // A pod that lost any of its IPs (dual stack) is left out whole.
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for (i, claim) in claims.iter().enumerate() {
        if claim.captured && !claim.ips().iter().all(|ip| owner.get(ip) == Some(&i)) {
            continue;
        }
        match claim.pod {
            Candidate::Object { text, .. } => local.push(text),
            Candidate::Remote(pod) => remote.push(pod),
        }
    }
    (local, remote)
}

//! Pods on other nodes, kept to what this node's agent needs of them.
//!
//! The agent serves its own node's pods and needs everything about them. Of
//! a pod elsewhere it needs only what its address stands for: the identity
//! (namespace and service account) a peer at that address must prove,
//! whether it is enrolled, and the few labels Istio's metrics name a peer
//! by. At 150,000 pods, holding each remote pod as a full `Workload` (names,
//! label maps, a copy per watch cache and snapshot) would cost the agent
//! hundreds of MiB, so a remote pod is an address plus a shared, interned
//! `RemoteIdentity`, and every remote pod of one identity is published as
//! one shared `Workload` (`RemoteGroups`).
//!
//! What a remote peer loses is its pod name: metrics and logs name it by its
//! workload (the Deployment's name for a Deployment's pods), and the
//! config dump and `describe` list only this node's pods.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use super::Workload;
use super::build::{DATAPLANE_MODE_LABEL, enrolment};
use super::k8s;

/// The labels a remote peer keeps: those Istio's metrics read for the
/// canonical service and revision (see `metrics::traffic`).
const PEER_LABELS: [&str; 6] = [
    "service.istio.io/canonical-name",
    "app.kubernetes.io/name",
    "app",
    "service.istio.io/canonical-revision",
    "app.kubernetes.io/version",
    "version",
];

/// The label the ReplicaSet controller puts on its pods, and in their names.
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// What many remote pods share: every replica of a Deployment has the same.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RemoteIdentity {
    pub namespace: Arc<str>,
    pub service_account: Arc<str>,
    /// The name metrics give the pod's workload.
    pub workload: Arc<str>,
    /// The pod's own `istio.io/dataplane-mode`, if set.
    pub mode: Option<Arc<str>>,
    /// An injected sidecar serves the pod, not the node agent.
    pub has_sidecar: bool,
    pub labels: Box<[(Arc<str>, Arc<str>)]>,
}

/// A pod's addresses; nearly always one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodIps {
    One(IpAddr),
    Many(Box<[IpAddr]>),
}

impl PodIps {
    pub fn new(ips: &[IpAddr]) -> Option<Self> {
        match ips {
            [] => None,
            [one] => Some(Self::One(*one)),
            many => Some(Self::Many(many.into())),
        }
    }

    pub fn as_slice(&self) -> &[IpAddr] {
        match self {
            Self::One(ip) => std::slice::from_ref(ip),
            Self::Many(ips) => ips,
        }
    }
}

/// One pod on another node, as the Kubernetes source caches it.
#[derive(Debug, Clone)]
pub struct RemotePod {
    pub identity: Arc<RemoteIdentity>,
    pub ips: Option<PodIps>,
    /// `metadata.creationTimestamp` as a sortable number (`timestamp_key`).
    pub created: Option<u64>,
    pub deleting: bool,
    /// Running and not on the host network: the pod owns its addresses.
    pub captured: bool,
}

/// `YYYY-MM-DDTHH:MM:SSZ` as the number `YYYYMMDDHHMMSS`, which sorts as
/// the timestamps do, in 8 bytes instead of a string per pod.
pub fn timestamp_key(text: &str) -> Option<u64> {
    let digits: String = text.chars().filter(char::is_ascii_digit).take(14).collect();
    digits.parse().ok()
}

/// Shares the strings and identities of remote pods: 150,000 pods hold a
/// few thousand distinct ones.
#[derive(Debug, Default)]
pub struct Interner {
    strings: HashSet<Arc<str>>,
    identities: HashSet<Arc<RemoteIdentity>>,
}

impl Interner {
    pub fn string(&mut self, text: &str) -> Arc<str> {
        if let Some(found) = self.strings.get(text) {
            return found.clone();
        }
        let shared: Arc<str> = Arc::from(text);
        self.strings.insert(shared.clone());
        shared
    }

    fn identity(&mut self, identity: RemoteIdentity) -> Arc<RemoteIdentity> {
        if let Some(found) = self.identities.get(&identity) {
            return found.clone();
        }
        let shared = Arc::new(identity);
        self.identities.insert(shared.clone());
        shared
    }

    /// Forgets what no cached pod uses any more (after deletions and edits).
    pub fn sweep(&mut self) {
        self.identities.retain(|i| Arc::strong_count(i) > 1);
        self.strings.retain(|s| Arc::strong_count(s) > 1);
    }

    /// The compact form of a decoded pod. `generate_name` is the pod's
    /// `metadata.generateName`, which names its workload.
    pub fn remote_pod(&mut self, pod: &k8s::Pod, generate_name: Option<&str>) -> RemotePod {
        let labels: Box<[(Arc<str>, Arc<str>)]> = PEER_LABELS
            .iter()
            .filter_map(|k| Some((self.string(k), self.string(pod.meta.labels.get(*k)?))))
            .collect();
        let identity = RemoteIdentity {
            namespace: self.string(&pod.meta.namespace),
            service_account: self.string(&pod.service_account),
            workload: self.string(&workload_name(pod, generate_name)),
            mode: pod
                .meta
                .labels
                .get(DATAPLANE_MODE_LABEL)
                .map(|m| self.string(m)),
            has_sidecar: pod.has_sidecar,
            labels,
        };
        RemotePod {
            identity: self.identity(identity),
            ips: PodIps::new(&pod.ips),
            created: None,
            deleting: false,
            captured: !pod.host_network && pod.phase.as_deref().is_none_or(|p| p == "Running"),
        }
    }
}

/// The workload a pod belongs to, as Istio names it: a ReplicaSet's pods
/// (`generateName` `web-7d9f8c6b5-`, label `pod-template-hash=7d9f8c6b5`)
/// by their Deployment (`web`), other generated pods by their generator's
/// name, and anything else by its own name.
fn workload_name(pod: &k8s::Pod, generate_name: Option<&str>) -> String {
    let Some(base) = generate_name.and_then(|g| g.strip_suffix('-')) else {
        return pod.meta.name.clone();
    };
    pod.meta
        .labels
        .get(POD_TEMPLATE_HASH_LABEL)
        .and_then(|hash| base.strip_suffix(hash.as_str())?.strip_suffix('-'))
        .unwrap_or(base)
        .to_owned()
}

/// The shared `Workload` for each (identity, enrolment): what
/// `Snapshot::workload_by_ip` answers for a remote address. Kept across
/// snapshots, so an address that did not change keeps the same `Arc`.
#[derive(Debug, Default)]
pub struct RemoteGroups {
    groups: HashMap<(ByAddress, bool), Arc<Workload>>,
}

/// An identity compared by address: interned, so equal means identical.
#[derive(Debug, Clone)]
struct ByAddress(Arc<RemoteIdentity>);

impl PartialEq for ByAddress {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ByAddress {}

impl Hash for ByAddress {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.0).hash(state);
    }
}

impl RemoteGroups {
    /// Forgets the groups no published address refers to any more.
    pub fn sweep(&mut self) {
        self.groups.retain(|_, w| Arc::strong_count(w) > 1);
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// The workload published for a remote pod of `identity`, whose
    /// namespace carries `namespace_labels`.
    pub fn workload(
        &mut self,
        identity: &Arc<RemoteIdentity>,
        namespace_labels: &BTreeMap<String, String>,
    ) -> Arc<Workload> {
        let enrolled =
            !identity.has_sidecar && enrolment(namespace_labels, identity.mode.as_deref());
        self.groups
            .entry((ByAddress(identity.clone()), enrolled))
            .or_insert_with(|| {
                Arc::new(Workload {
                    // No one pod: the group stands for every replica.
                    uid: String::new(),
                    name: identity.workload.to_string(),
                    namespace: identity.namespace.to_string(),
                    service_account: identity.service_account.to_string(),
                    // Another node: never equal to this agent's node name.
                    node: String::new(),
                    ips: Vec::new(),
                    labels: identity
                        .labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    enrolled,
                })
            })
            .clone()
    }
}

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
//! cache resolves those transients before building (`addresses`), rather
//! than letting the builder reject the whole cluster over one of them.
//!
//! Building is incremental: what an event changed is recorded as it is
//! cached, and a build redoes only that. The address map of remote pods
//! (`addresses`) and the built Services (`services`) are kept between
//! snapshots and shared with them; policies are indexed again only when a
//! policy changed, and a build after policy changes alone reuses every
//! other part of the last snapshot.

use std::net::IpAddr;
use std::sync::Arc;

use ambit_policy::PolicySet;
use serde_json::Value;

use super::addresses::{AddressBook, PodRef};
use super::kind_cache::store;
mod build;
mod feed;
pub(super) use feed::FedAddresses;

pub(super) use super::kind_cache::{KindCache, ObjectKey};
use super::local_pods::{LocalPod, remote_view};
use super::remote_pods::RemotePods;
use super::services::ServiceCatalog;
use crate::state::k8s;
use crate::state::remote::{RemotePod, timestamp_key};
use crate::state::{PolicyIssue, Snapshot};

/// The kinds the source watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
}

/// Which pods are kept in full, as objects.
#[derive(Clone, Debug, Default)]
pub(in crate::state::source) enum PodScope {
    /// Every pod (tools that look at the whole cluster).
    #[default]
    Full,
    /// This node's pods and unscheduled ones; others compact.
    Node(String),
    /// Only unscheduled pods: the state server, which serves every node.
    Compact,
}

/// What changed since the last build.
#[derive(Debug, Default)]
struct Changed {
    /// Namespaces, pods, Services or EndpointSlices.
    structure: bool,
    policies: bool,
}

/// Every watched kind, and what the last build made of them.
#[derive(Debug, Default)]
pub(super) struct Caches {
    /// Pods outside it go to `remote_pods`.
    scope: PodScope,
    /// Fed (`super::fed`): the remote addresses as the state feed resolved
    /// them, instead of this cache's own `addresses` of remote pods.
    fed: Option<FedAddresses>,
    pub namespaces: KindCache,
    /// Pods kept as objects: this node's, unscheduled ones, or all of them
    /// when no node is set.
    pods: KindCache<LocalPod>,
    remote_pods: RemotePods,
    /// Which pod holds each address; the remote pods' address map.
    addresses: AddressBook,
    services: ServiceCatalog,
    pub authorization_policies: KindCache,
    pub peer_authentications: KindCache,
    pub request_authentications: KindCache,
    changed: Changed,
    /// The indexed policies, until a policy changes.
    policies: Option<(Arc<PolicySet>, Vec<PolicyIssue>)>,
    /// The last snapshot built, sharing its parts with the published one.
    last: Option<Snapshot>,
}

impl Caches {
    /// Caches keeping `scope`'s pods in full; `fed`: remote addresses come
    /// from the state feed.
    pub fn new(scope: PodScope, fed: bool) -> Self {
        Self {
            scope,
            fed: fed.then(Default::default),
            ..Self::default()
        }
    }

    /// Caches for the agent of `node` (None: every pod in full).
    #[cfg(test)]
    pub fn for_node(node: Option<String>) -> Self {
        Self::new(node.map_or(PodScope::Full, PodScope::Node), false)
    }

    /// The cache of a kind kept as JSON text.
    fn text_cache(&mut self, kind: Kind) -> Option<&mut KindCache> {
        match kind {
            Kind::Namespace => Some(&mut self.namespaces),
            Kind::AuthorizationPolicy => Some(&mut self.authorization_policies),
            Kind::PeerAuthentication => Some(&mut self.peer_authentications),
            Kind::RequestAuthentication => Some(&mut self.request_authentications),
            Kind::Pod | Kind::Service | Kind::EndpointSlice => None,
        }
    }

    /// Records that objects of `kind` changed.
    fn touched(&mut self, kind: Kind) {
        match kind {
            Kind::AuthorizationPolicy | Kind::PeerAuthentication | Kind::RequestAuthentication => {
                self.changed.policies = true;
            }
            Kind::Namespace => {
                // Namespaces decide which pods are built and their enrolment.
                self.addresses.mark_all_dirty();
                self.changed.structure = true;
            }
            Kind::Pod | Kind::Service | Kind::EndpointSlice => self.changed.structure = true,
        }
    }

    /// A list of `kind` starts: its cache is replaced at its end.
    pub fn begin_list(&mut self, kind: Kind) {
        match kind {
            Kind::Pod => {
                self.pods.begin_list();
                self.remote_pods.begin_list();
            }
            Kind::Service => self.services.services.begin_list(),
            Kind::EndpointSlice => self.services.slices.begin_list(),
            other => {
                if let Some(cache) = self.text_cache(other) {
                    cache.begin_list();
                }
            }
        }
    }

    /// Caches a (slimmed) object from a list (`listing`) or a watch event.
    pub fn put(&mut self, kind: Kind, key: ObjectKey, object: &Value, listing: bool) {
        match kind {
            Kind::Pod => self.put_pod(key, object, listing),
            Kind::Service => {
                let listing = listing && self.services.services.is_listing();
                let decoded = ServiceCatalog::decode_service(object);
                self.services.services.insert(key.clone(), decoded, listing);
                if !listing {
                    self.services.service_changed(key);
                }
            }
            Kind::EndpointSlice => {
                let listing = listing && self.services.slices.is_listing();
                let decoded = ServiceCatalog::decode_slice(object);
                let old = self.services.slices.insert(key.clone(), decoded, listing);
                if !listing {
                    self.services.slice_changed(&key, old.as_ref());
                }
            }
            other => {
                if let Some(cache) = self.text_cache(other) {
                    cache.insert(key, store(object), listing);
                }
            }
        }
        self.touched(kind);
    }

    pub fn end_list(&mut self, kind: Kind) {
        match kind {
            Kind::Pod => self.end_pod_list(),
            Kind::Service => {
                self.services.services.end_list();
                self.services.relisted();
            }
            Kind::EndpointSlice => {
                self.services.slices.end_list();
                self.services.relisted();
            }
            other => {
                if let Some(cache) = self.text_cache(other) {
                    cache.end_list();
                }
            }
        }
        self.touched(kind);
    }

    pub fn delete(&mut self, kind: Kind, key: &ObjectKey) {
        match kind {
            Kind::Pod => self.delete_pod(key),
            Kind::Service => {
                self.services.services.remove(key);
                self.services.service_changed(key.clone());
            }
            Kind::EndpointSlice => {
                let old = self.services.slices.remove(key);
                self.services.slice_changed(key, old.as_ref());
            }
            other => {
                if let Some(cache) = self.text_cache(other) {
                    cache.remove(key);
                }
            }
        }
        self.touched(kind);
    }

    /// A kind that does not exist in the cluster (a CRD not installed) is
    /// synced and empty.
    pub fn mark_absent(&mut self, kind: Kind) {
        match kind {
            Kind::Pod => {
                self.pods.mark_absent();
                self.end_pod_list();
            }
            Kind::Service => {
                self.services.services.mark_absent();
                self.services.relisted();
            }
            Kind::EndpointSlice => {
                self.services.slices.mark_absent();
                self.services.relisted();
            }
            other => {
                if let Some(cache) = self.text_cache(other) {
                    cache.mark_absent();
                }
            }
        }
        self.touched(kind);
    }

    /// Objects cached of `kind` (pods: in either form).
    pub fn len(&self, kind: Kind) -> usize {
        match kind {
            Kind::Namespace => self.namespaces.len(),
            Kind::Pod => self.pods.len() + self.remote_pods.len(),
            Kind::Service => self.services.services.len(),
            Kind::EndpointSlice => self.services.slices.len(),
            Kind::AuthorizationPolicy => self.authorization_policies.len(),
            Kind::PeerAuthentication => self.peer_authentications.len(),
            Kind::RequestAuthentication => self.request_authentications.len(),
        }
    }

    /// Pods held compact.
    pub fn remote_pod_count(&self) -> usize {
        self.remote_pods.len()
    }

    pub fn all_synced(&self) -> bool {
        self.namespaces.is_synced()
            && self.pods.is_synced()
            && self.services.services.is_synced()
            && self.services.slices.is_synced()
            && self.authorization_policies.is_synced()
            && self.peer_authentications.is_synced()
            && self.request_authentications.is_synced()
    }

    /// Bytes the cached objects hold, map overhead included.
    pub fn heap_bytes(&self) -> usize {
        let text: usize = [
            &self.namespaces,
            &self.authorization_policies,
            &self.peer_authentications,
            &self.request_authentications,
        ]
        .iter()
        .map(|k| k.heap_bytes())
        .sum();
        let local: usize = self.pods.iter().map(|(_, p)| p.text.len()).sum();
        text + local + self.remote_pods.heap_bytes() + self.services.heap_bytes()
    }

    // === pods ===

    fn put_pod(&mut self, key: ObjectKey, object: &Value, listing: bool) {
        // Into a list in progress: the book is rebuilt when it ends.
        if listing && self.remote_pods.is_listing() {
            match self.remote_form(object) {
                Some(remote) => {
                    let pod = self.remote_pods.pod_ref(&key);
                    self.remote_pods.put(pod, remote, true);
                }
                None => {
                    self.pods.insert(key, LocalPod::new(object), true);
                }
            }
            return;
        }
        let pod = self.remote_pods.pod_ref(&key);
        self.unclaim(&pod, &key);
        match self.remote_form(object) {
            Some(remote) => {
                self.pods.remove(&key);
                if remote.captured {
                    self.addresses.claim(&pod, remote_view(&remote).ips);
                }
                self.remote_pods.put(pod, remote, false);
            }
            None => {
                self.remote_pods.remove(&key);
                let local = LocalPod::new(object);
                if local.captured {
                    self.addresses.claim(&pod, &local.ips);
                }
                self.pods.insert(key, local, false);
            }
        }
    }

    fn delete_pod(&mut self, key: &ObjectKey) {
        let pod = self.remote_pods.pod_ref(key);
        self.unclaim(&pod, key);
        if self.remote_pods.remove(key).is_none() {
            self.pods.remove(key);
        }
    }

    /// Withdraws the claims of the pod cached under `key`, in either form.
    fn unclaim(&mut self, pod: &PodRef, key: &ObjectKey) {
        let view = match self.remote_pods.get(pod) {
            Some(remote) => remote_view(remote),
            None => match self.pods.get(key) {
                Some(local) => local.view(),
                None => return,
            },
        };
        if view.captured {
            let ips: Vec<IpAddr> = view.ips.to_vec();
            self.addresses.unclaim(pod, &ips);
        }
    }

    fn end_pod_list(&mut self) {
        self.pods.end_list();
        self.remote_pods.end_list();
        // The pods were replaced wholesale: claim anew, straight from the
        // caches (150,000 pods: no copy of their addresses on the side).
        self.addresses
            .clear_claims(self.remote_pods.len() + self.pods.len());
        for (pod, remote) in self.remote_pods.iter() {
            if remote.captured {
                self.addresses.claim(&pod, remote_view(remote).ips);
            }
        }
        for (key, local) in self.pods.iter() {
            if local.captured {
                let pod = (
                    self.remote_pods.interner.string(&key.0),
                    Arc::from(key.1.as_str()),
                );
                self.addresses.claim(&pod, &local.ips);
            }
        }
    }

    /// The compact form of `pod` if it is scheduled on a node other than
    /// this agent's and decodes; None keeps it as an object.
    fn remote_form(&mut self, pod: &Value) -> Option<RemotePod> {
        let scheduled = pod["spec"]["nodeName"].as_str()?;
        match &self.scope {
            PodScope::Full => return None,
            PodScope::Node(node) if node == scheduled => return None,
            PodScope::Node(_) | PodScope::Compact => {}
        }
        let decoded = k8s::pod(pod).ok()?;
        let meta = &pod["metadata"];
        let interner = &mut self.remote_pods.interner;
        let mut remote = interner.remote_pod(&decoded, meta["generateName"].as_str());
        remote.created = meta["creationTimestamp"].as_str().and_then(timestamp_key);
        remote.deleting = !meta["deletionTimestamp"].is_null();
        Some(remote)
    }
}

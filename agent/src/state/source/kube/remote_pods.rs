//! Pods of other nodes, compact (see `state::remote`), by namespace and name.

use std::collections::HashMap;
use std::sync::Arc;

use super::addresses::PodRef;
use super::kind_cache::ObjectKey;
use crate::state::remote::{Interner, RemotePod};

/// Names are `Arc`s: the address book refers to a pod by the same ones.
type ByNamespace = HashMap<Arc<str>, HashMap<Arc<str>, RemotePod>>;

#[derive(Debug, Default)]
pub(super) struct RemotePods {
    pods: ByNamespace,
    relisting: Option<ByNamespace>,
    pub interner: Interner,
}

impl RemotePods {
    pub fn begin_list(&mut self) {
        self.relisting = Some(HashMap::new());
    }

    pub fn is_listing(&self) -> bool {
        self.relisting.is_some()
    }

    /// Ends a list: its pods replace the cached ones.
    pub fn end_list(&mut self) {
        if let Some(list) = self.relisting.take() {
            self.pods = list;
        }
        self.interner.sweep();
    }

    /// The pod's reference as the address book keeps it.
    pub fn pod_ref(&mut self, (namespace, name): &ObjectKey) -> PodRef {
        let namespace = self.interner.string(namespace);
        let name = self
            .pods
            .get(&namespace)
            .and_then(|pods| pods.get_key_value(name.as_str()))
            .map_or_else(|| Arc::from(name.as_str()), |(name, _)| name.clone());
        (namespace, name)
    }

    /// Caches `pod`, in the list in progress if `listing`; returns the pod
    /// it replaced (outside a list).
    pub fn put(
        &mut self,
        (namespace, name): PodRef,
        pod: RemotePod,
        listing: bool,
    ) -> Option<RemotePod> {
        let pods = match (&mut self.relisting, listing) {
            (Some(list), true) => list,
            _ => &mut self.pods,
        };
        pods.entry(namespace).or_default().insert(name, pod)
    }

    pub fn remove(&mut self, (namespace, name): &ObjectKey) -> Option<RemotePod> {
        let in_namespace = self.pods.get_mut(namespace.as_str())?;
        let removed = in_namespace.remove(name.as_str());
        if in_namespace.is_empty() {
            self.pods.remove(namespace.as_str());
        }
        removed
    }

    pub fn get(&self, (namespace, name): &PodRef) -> Option<&RemotePod> {
        self.pods.get(&**namespace)?.get(&**name)
    }

    pub fn len(&self) -> usize {
        self.pods.values().map(HashMap::len).sum()
    }

    /// Every pod with its reference.
    pub fn iter(&self) -> impl Iterator<Item = (PodRef, &RemotePod)> {
        self.pods.iter().flat_map(|(namespace, pods)| {
            pods.iter()
                .map(move |(name, pod)| ((namespace.clone(), name.clone()), pod))
        })
    }

    /// Bytes the compact pods take, map slots and names included (the
    /// shared identities are few and left out).
    pub fn heap_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Arc<str>, RemotePod)>() + 1;
        // An `Arc<str>`'s allocation: two counts and the text.
        let name = |n: &Arc<str>| 2 * std::mem::size_of::<usize>() + n.len();
        self.pods
            .values()
            .map(|pods| pods.capacity() * slot + pods.keys().map(name).sum::<usize>())
            .sum()
    }
}

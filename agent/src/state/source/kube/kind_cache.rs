//! One watched kind's objects as last seen, with the list/relist logic:
//! a list in progress replaces the cached objects only when it ends, so
//! objects deleted while the watch was down disappear then.

use std::collections::HashMap;

use serde_json::Value;

/// An object's place in its kind: (namespace, name).
pub(super) type ObjectKey = (String, String);

/// A slimmed object, kept as compact JSON text: a tree of `serde_json`
/// maps costs several times its text in allocations, and the builder reads
/// each object once per rebuild.
pub(super) type Stored = Box<str>;

pub(super) fn store(object: &Value) -> Stored {
    // Serialising a `Value` cannot fail (its keys are strings).
    serde_json::to_string(object)
        .unwrap_or_default()
        .into_boxed_str()
}

/// One watched kind, as last seen.
#[derive(Debug)]
pub(super) struct KindCache<T = Stored> {
    objects: HashMap<ObjectKey, T>,
    /// Objects of a list in progress: they replace `objects` at its end, so
    /// objects deleted while the watch was down disappear.
    relisting: Option<HashMap<ObjectKey, T>>,
    synced: bool,
}

impl<T> Default for KindCache<T> {
    fn default() -> Self {
        Self {
            objects: HashMap::new(),
            relisting: None,
            synced: false,
        }
    }
}

impl<T> KindCache<T> {
    pub fn begin_list(&mut self) {
        self.relisting = Some(HashMap::new());
    }

    pub fn is_listing(&self) -> bool {
        self.relisting.is_some()
    }

    /// Caches an object: into the list in progress if `listing`, else in
    /// force at once, returning the object it replaced.
    pub fn insert(&mut self, key: ObjectKey, object: T, listing: bool) -> Option<T> {
        match (&mut self.relisting, listing) {
            (Some(list), true) => {
                list.insert(key, object);
                None
            }
            _ => self.objects.insert(key, object),
        }
    }

    pub fn end_list(&mut self) {
        if let Some(list) = self.relisting.take() {
            self.objects = list;
        }
        self.synced = true;
    }

    pub fn remove(&mut self, key: &ObjectKey) -> Option<T> {
        self.objects.remove(key)
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

    pub fn get(&self, key: &ObjectKey) -> Option<&T> {
        self.objects.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &T)> {
        self.objects.iter()
    }
}

impl KindCache<Stored> {
    #[cfg(test)]
    pub fn listed(&mut self, key: ObjectKey, object: &Value) {
        self.insert(key, store(object), true);
    }

    #[cfg(test)]
    pub fn delete(&mut self, key: &ObjectKey) {
        self.objects.remove(key);
    }

    /// Heap bytes of the stored objects and their keys (not the map itself).
    pub fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(ObjectKey, Stored)>() + 1;
        let objects: usize = self
            .objects
            .iter()
            .map(|((ns, name), text)| ns.capacity() + name.capacity() + text.len())
            .sum();
        objects + self.objects.capacity() * entry
    }

    /// Every object, decoded one at a time.
    pub fn values(&self) -> impl Iterator<Item = Value> + '_ {
        self.objects
            .values()
            .filter_map(|text| serde_json::from_str(text).ok())
    }
}

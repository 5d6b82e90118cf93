//! A hash map that successive snapshots share: a clone costs a few hundred
//! reference counts, and a change copies only the shard it lands in.
//!
//! At 150,000 pods the address map is the largest index a snapshot has. A
//! source that publishes a snapshot per burst of events would otherwise copy
//! (or rebuild) all of it for a handful of changed addresses, and hold two
//! copies while the new snapshot replaces the old. Split into shards behind
//! `Arc`s, the map a snapshot holds and the one the source keeps editing are
//! the same memory except for the shards edited since the last publication.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

/// Shards: enough that a burst of a few dozen changes copies a small part
/// of a 150,000-entry map (about 600 entries a shard), few enough that a
/// clone and an empty map stay cheap.
const SHARDS: usize = 256;

/// A map of `K` to `V` whose clones share unchanged shards.
#[derive(Clone, Debug)]
pub struct SharedMap<K, V> {
    shards: Vec<Arc<HashMap<K, V>>>,
    len: usize,
    /// Picks the shard: fixed, so a key lands in the same shard in every
    /// clone (each shard's own map hashes with its random state).
    router: foldhash::fast::FixedState,
}

impl<K, V> Default for SharedMap<K, V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Arc::new(HashMap::new())).collect(),
            len: 0,
            router: foldhash::fast::FixedState::default(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SharedMap<K, V> {
    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        // The low bits of a good hash spread evenly; SHARDS is a power of 2.
        (self.router.hash_one(key) as usize) % SHARDS
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[self.shard(key)].get(key)
    }

    /// Inserts or replaces; copies the shard first if a clone shares it.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let shard = self.shard(&key);
        let old = Arc::make_mut(&mut self.shards[shard]).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shard(key);
        // Look first: a miss must not copy a shared shard.
        if !self.shards[shard].contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(&mut self.shards[shard]).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|shard| shard.iter())
    }

    /// What changed since `older`: each key added or whose value is not
    /// `same` as before, with its value, and each key removed, with None.
    /// Shards the two maps share are skipped, so after a few edits this
    /// costs the edited shards only.
    pub fn diff(&self, older: &Self, same: impl Fn(&V, &V) -> bool) -> Vec<(K, Option<V>)> {
        let mut changes = Vec::new();
        for (new, old) in self.shards.iter().zip(&older.shards) {
            if Arc::ptr_eq(new, old) {
                continue;
            }
            for (key, value) in new.iter() {
                if old.get(key).is_none_or(|o| !same(o, value)) {
                    changes.push((key.clone(), Some(value.clone())));
                }
            }
            for key in old.keys().filter(|k| !new.contains_key(*k)) {
                changes.push((key.clone(), None));
            }
        }
        changes
    }
}

impl<K: Hash + Eq + Clone, V: Clone> FromIterator<(K, V)> for SharedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        let mut map = Self::default();
        for (key, value) in entries {
            map.insert(key, value);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_keeps_its_entries_while_the_original_changes() {
        let mut map: SharedMap<u32, u32> = (0..1000).map(|i| (i, i)).collect();
        let published = map.clone();
        map.insert(7, 70);
        map.remove(&8);
        map.insert(5000, 1);
        assert_eq!(published.get(&7), Some(&7));
        assert_eq!(published.get(&8), Some(&8));
        assert_eq!(published.get(&5000), None);
        assert_eq!(published.len(), 1000);
        assert_eq!(map.get(&7), Some(&70));
        assert_eq!(map.get(&8), None);
        assert_eq!(map.len(), 1000);
        assert_eq!(map.iter().count(), 1000);
    }

    #[test]
    fn a_diff_names_what_was_added_changed_and_removed() {
        let old: SharedMap<u32, u32> = (0..1000).map(|i| (i, i)).collect();
        let mut new = old.clone();
        new.insert(7, 70);
        new.remove(&8);
        new.insert(5000, 1);
        new.insert(9, 9);
        let mut diff = new.diff(&old, |a, b| a == b);
        diff.sort_unstable();
        assert_eq!(diff, vec![(7, Some(70)), (8, None), (5000, Some(1))]);
        assert!(old.diff(&old.clone(), |a, b| a == b).is_empty());
    }

    #[test]
    fn an_edit_copies_only_its_shard() {
        let mut map: SharedMap<u32, u32> = (0..10_000).map(|i| (i, i)).collect();
        let published = map.clone();
        map.insert(1, 2);
        let shared = map
            .shards
            .iter()
            .zip(&published.shards)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(shared, SHARDS - 1);
        // Removing what is not there copies nothing.
        let before = map.clone();
        map.remove(&20_000);
        assert!(
            map.shards
                .iter()
                .zip(&before.shards)
                .all(|(a, b)| Arc::ptr_eq(a, b))
        );
    }
}

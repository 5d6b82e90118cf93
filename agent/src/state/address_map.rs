//! The map of remote addresses: a `SharedMap` per address family.
//!
//! An `IpAddr` is 17 bytes, so an entry with an `Arc` beside it takes 32;
//! an IPv4 address with its `Arc` takes 16. At 150,000 pods that halves the
//! largest table an agent holds (each shard's table falls from jemalloc's
//! 40 KiB size class to its 20 KiB one), and nearly every cluster is IPv4
//! or dual-stack.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::shared_map::SharedMap;

/// Address -> `V`, shared between successive snapshots as `SharedMap` is.
#[derive(Clone, Debug)]
pub struct AddressMap<V> {
    v4: SharedMap<Ipv4Addr, V>,
    v6: SharedMap<Ipv6Addr, V>,
}

impl<V> Default for AddressMap<V> {
    fn default() -> Self {
        Self {
            v4: SharedMap::default(),
            v6: SharedMap::default(),
        }
    }
}

impl<V: Clone> AddressMap<V> {
    pub fn get(&self, ip: &IpAddr) -> Option<&V> {
        match ip {
            IpAddr::V4(ip) => self.v4.get(ip),
            IpAddr::V6(ip) => self.v6.get(ip),
        }
    }

    pub fn insert(&mut self, ip: IpAddr, value: V) -> Option<V> {
        match ip {
            IpAddr::V4(ip) => self.v4.insert(ip, value),
            IpAddr::V6(ip) => self.v6.insert(ip, value),
        }
    }

    pub fn remove(&mut self, ip: &IpAddr) -> Option<V> {
        match ip {
            IpAddr::V4(ip) => self.v4.remove(ip),
            IpAddr::V6(ip) => self.v6.remove(ip),
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, &V)> {
        let v4 = self.v4.iter().map(|(ip, v)| (IpAddr::V4(*ip), v));
        let v6 = self.v6.iter().map(|(ip, v)| (IpAddr::V6(*ip), v));
        v4.chain(v6)
    }

    /// What changed since `older` (see `SharedMap::diff`).
    pub fn diff(&self, older: &Self, same: impl Fn(&V, &V) -> bool) -> Vec<(IpAddr, Option<V>)> {
        let v4 = self.v4.diff(&older.v4, &same);
        let v6 = self.v6.diff(&older.v6, &same);
        v4.into_iter()
            .map(|(ip, v)| (IpAddr::V4(ip), v))
            .chain(v6.into_iter().map(|(ip, v)| (IpAddr::V6(ip), v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_families_are_kept_and_diffed() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut old = AddressMap::default();
        old.insert(ip("10.0.0.1"), 1);
        old.insert(ip("fd00::1"), 2);
        let mut new = old.clone();
        new.insert(ip("10.0.0.2"), 3);
        new.remove(&ip("fd00::1"));
        new.insert(ip("fd00::2"), 4);
        assert_eq!(new.get(&ip("10.0.0.1")), Some(&1));
        assert_eq!(new.get(&ip("fd00::1")), None);
        assert_eq!(old.get(&ip("fd00::1")), Some(&2));
        assert_eq!(new.len(), 3);
        let mut diff = new.diff(&old, |a, b| a == b);
        diff.sort_unstable();
        assert_eq!(
            diff,
            vec![
                (ip("10.0.0.2"), Some(3)),
                (ip("fd00::1"), None),
                (ip("fd00::2"), Some(4)),
            ]
        );
        let mut all: Vec<(IpAddr, u32)> = new.iter().map(|(ip, v)| (ip, *v)).collect();
        all.sort_unstable();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], (ip("10.0.0.1"), 1));
    }
}

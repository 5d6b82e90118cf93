//! A workload's labels, kept as one sorted list.
//!
//! An agent holds a label set per pod of its node and per identity group of
//! the cluster (10,000 at 150,000 pods). A `BTreeMap` allocates a node of
//! over 500 bytes for its first label; a sorted list costs its entries.

use std::collections::BTreeMap;
use std::fmt;

use ambit_policy::LabelSet;
use serde::{Serialize, Serializer};

/// Label key -> value, sorted by key, keys unique.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels(Box<[(String, String)]>);

impl Labels {
    pub fn get(&self, key: &str) -> Option<&String> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .and_then(|i| self.0.get(i))
            .map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        Self(map.into_iter().collect())
    }
}

/// A later pair with the same key wins, as with a map.
impl FromIterator<(String, String)> for Labels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        pairs.into_iter().collect::<BTreeMap<_, _>>().into()
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl LabelSet for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }

    fn for_each_label(&self, f: &mut dyn FnMut(&str, &str)) {
        for (k, v) in self.iter() {
            f(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_as_the_map_it_came_from() {
        let pairs = [("version", "v2"), ("app", "reviews"), ("app", "ratings")];
        let labels: Labels = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(labels.len(), 2, "one value per key");
        assert_eq!(labels.get("app").map(String::as_str), Some("ratings"));
        assert_eq!(labels.label("version"), Some("v2"));
        assert_eq!(labels.get("team"), None);
        let keys: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["app", "version"]);
        assert_eq!(
            serde_json::to_value(&labels).unwrap(),
            serde_json::json!({ "app": "ratings", "version": "v2" })
        );
    }
}

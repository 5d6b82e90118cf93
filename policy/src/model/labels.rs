//! What a selector reads of a workload: its labels, in whatever form the
//! caller keeps them. The agent holds tens of thousands of label sets, so it
//! keeps them as compact sorted lists rather than `BTreeMap`s, whose first
//! node alone is over 500 bytes; tests and tools use `BTreeMap`.

use std::collections::BTreeMap;
use std::fmt;

/// A workload's labels as policy evaluation reads them.
pub trait LabelSet: fmt::Debug {
    /// The value of `key`, if the workload has that label.
    fn label(&self, key: &str) -> Option<&str>;

    /// Calls `f` with every label.
    fn for_each_label(&self, f: &mut dyn FnMut(&str, &str));
}

impl LabelSet for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }

    fn for_each_label(&self, f: &mut dyn FnMut(&str, &str)) {
        for (k, v) in self {
            f(k, v);
        }
    }
}

//! Workload selection by `matchLabels`.

use std::collections::BTreeMap;

use super::LabelSet;

/// A non-empty `matchLabels`: every pair must be present on the workload. An
/// absent or empty selector is represented by `None` at the use site (it selects
/// every workload in scope).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Selector {
    labels: Vec<(Box<str>, Box<str>)>,
}

impl Selector {
    /// `None` for an empty label set, which selects everything.
    pub(crate) fn new(labels: BTreeMap<String, String>) -> Option<Self> {
        if labels.is_empty() {
            return None;
        }
        Some(Self {
            labels: labels
                .into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect(),
        })
    }

    pub(crate) fn matches(&self, labels: &dyn LabelSet) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| labels.label(k) == Some(&**v))
    }

    /// The pair an index files this selector under: any one pair works since all
    /// must match; the first keeps the choice deterministic.
    pub(crate) fn index_label(&self) -> (&str, &str) {
        let (k, v) = &self.labels[0];
        (k, v)
    }

    pub(crate) fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.labels.iter().map(|(k, v)| (&**k, &**v))
    }
}

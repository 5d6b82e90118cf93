//! The fake API server's storage: objects by kind, namespace and name, one
//! global resource-version counter (as etcd's revision), and the event log
//! watches are served from, with compaction so tests can make a resource
//! version "too old".

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;

use super::Kind;

/// One change, as a watch reports it.
#[derive(Clone, Debug)]
pub(super) struct Change {
    pub rv: u64,
    pub kind: &'static Kind,
    pub event: EventType,
    pub object: Arc<Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// Where a watch asked to start.
pub(super) enum Since {
    /// Every event after this version.
    Version(u64),
    /// The version was compacted away: the client must list again (410).
    Gone,
}

type Key = (&'static str, String, String);

#[derive(Debug, Default)]
pub(super) struct Store {
    rv: u64,
    /// Events at or before this version have been compacted away.
    compacted: u64,
    next_uid: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    log: VecDeque<Change>,
}

impl Store {
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Creates or replaces the object, stamping uid, creationTimestamp
    /// (kept across updates) and a new resourceVersion. Returns that version.
    pub fn apply(&mut self, kind: &'static Kind, mut object: Value) -> u64 {
        let (namespace, name) = identity(&object);
        let key = (kind.plural, namespace, name);
        self.rv += 1;
        let previous = self.objects.get(&key).cloned();
        let meta = object
            .as_object_mut()
            .and_then(|o| {
                o.entry("metadata")
                    .or_insert_with(|| Value::Object(Default::default()))
                    .as_object_mut()
            })
            .expect("objects are JSON objects with metadata");
        match &previous {
            Some(prev) => {
                for field in ["uid", "creationTimestamp"] {
                    if let Some(v) = prev["metadata"].get(field) {
                        meta.insert(field.into(), v.clone());
                    }
                }
            }
            None => {
                self.next_uid += 1;
                meta.insert(
                    "uid".into(),
                    Value::String(format!("00000000-0000-4000-8000-{:012x}", self.next_uid)),
                );
                meta.insert(
                    "creationTimestamp".into(),
                    Value::String("2026-01-01T00:00:00Z".into()),
                );
            }
        }
        meta.insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        let object = Arc::new(object);
        self.objects.insert(key, object.clone());
        let event = if previous.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.log.push_back(Change {
            rv: self.rv,
            kind,
            event,
            object,
        });
        self.rv
    }

    /// Removes the object; the DELETED event carries its last state at a new
    /// version, as the API server reports it.
    pub fn delete(&mut self, kind: &'static Kind, namespace: &str, name: &str) -> Option<u64> {
        let key = (kind.plural, namespace.to_owned(), name.to_owned());
        let gone = self.objects.remove(&key)?;
        self.rv += 1;
        let mut object = (*gone).clone();
        object["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        self.log.push_back(Change {
            rv: self.rv,
            kind,
            event: EventType::Deleted,
            object: Arc::new(object),
        });
        Some(self.rv)
    }

    pub fn get(&self, kind: &'static Kind, namespace: &str, name: &str) -> Option<Arc<Value>> {
        let key = (kind.plural, namespace.to_owned(), name.to_owned());
        self.objects.get(&key).cloned()
    }

    /// Every object of `kind`, optionally in one namespace, in key order.
    pub fn list(&self, kind: &'static Kind, namespace: Option<&str>) -> Vec<Arc<Value>> {
        let lo = (kind.plural, String::new(), String::new());
        self.objects
            .range(lo..)
            .take_while(|((plural, _, _), _)| *plural == kind.plural)
            .filter(|((_, ns, _), _)| namespace.is_none_or(|want| want == ns))
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Objects of `kind` after `after` (namespace, name) in key order, for
    /// one page of a paged list: found by range, so paging through a large
    /// kind costs each page its own size, not the kind's.
    pub fn list_after<'a>(
        &'a self,
        kind: &'static Kind,
        after: Option<(String, String)>,
    ) -> impl Iterator<Item = &'a Arc<Value>> + 'a {
        use std::ops::Bound;
        let lo = match after {
            Some((ns, name)) => Bound::Excluded((kind.plural, ns, name)),
            None => Bound::Included((kind.plural, String::new(), String::new())),
        };
        self.objects
            .range((lo, Bound::Unbounded))
            .take_while(|((plural, _, _), _)| *plural == kind.plural)
            .map(|(_, o)| o)
    }

    /// Forgets the event log: a watch from any version before now gets 410.
    pub fn compact(&mut self) {
        self.compacted = self.rv;
        self.log.clear();
    }

    pub fn since(&self, version: u64) -> Since {
        if version < self.compacted {
            Since::Gone
        } else {
            Since::Version(version)
        }
    }

    /// Events of `kind` after `version`, oldest first.
    pub fn changes_after(&self, kind: &'static Kind, version: u64) -> Vec<Change> {
        let start = self.log.partition_point(|c| c.rv <= version);
        self.log
            .range(start..)
            .filter(|c| c.kind.plural == kind.plural)
            .cloned()
            .collect()
    }
}

fn identity(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (text(&meta["namespace"]), text(&meta["name"]))
}

/// A parsed `labelSelector` or `fieldSelector`: every requirement must hold.
#[derive(Clone, Debug, Default)]
pub(super) struct Selector(Vec<Requirement>);

#[derive(Clone, Debug)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Selector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, set)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), parse_set(set)?)
            } else if let Some((k, set)) = part.split_once(" in ") {
                Requirement::In(k.trim().into(), parse_set(set)?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            out.push(req);
        }
        Ok(Self(out))
    }

    /// Whether `lookup` (a label map, or a field getter) satisfies every requirement.
    pub fn matches(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|req| match req {
            Requirement::Equals(k, v) => lookup(k).as_deref() == Some(v),
            Requirement::NotEquals(k, v) => lookup(k).as_deref() != Some(v),
            Requirement::In(k, set) => lookup(k).is_some_and(|x| set.contains(&x)),
            Requirement::NotIn(k, set) => lookup(k).is_none_or(|x| !set.contains(&x)),
            Requirement::Exists(k) => lookup(k).is_some(),
            Requirement::NotExists(k) => lookup(k).is_none(),
        })
    }
}

fn split_top_level(text: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

fn parse_set(set: &str) -> Result<Vec<String>, String> {
    let inner = set
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("bad set {set:?}"))?;
    Ok(inner.split(',').map(|s| s.trim().to_owned()).collect())
}

/// Whether `object` passes a list or watch request's selectors.
pub(super) fn selected(object: &Value, labels: &Selector, fields: &Selector) -> bool {
    let label_map = &object["metadata"]["labels"];
    labels.matches(|k| label_map.get(k).and_then(Value::as_str).map(str::to_owned))
        && fields.matches(|path| {
            let mut v = object;
            for step in path.split('.') {
                v = v.get(step)?;
            }
            v.as_str().map(str::to_owned)
        })
}

//! [`PolicySet`]: the policies of one state snapshot, indexed so a decision only
//! looks at policies that can select its destination.
//!
//! AuthorizationPolicies are filed per namespace (the root namespace's scope is
//! mesh-wide), and inside a scope either under "selects everyone" or under one
//! `key=value` pair of their selector: a workload's own labels find the
//! candidates, and the full selector is checked only on those. PeerAuthentications
//! are resolved per namespace: the winning namespace-wide policy is chosen once at
//! build time, workload policies kept oldest first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use foldhash::HashMap;

use crate::model::{AuthzPolicy, Effect, PeerAuthn, Selector};
use crate::parse::{self, Compiled, PolicyError, PolicyKind};

mod summary;

/// Position of a policy in [`Inner::authz`] (sorted by `namespace/name`): the
/// lowest position wins when several policies would explain a decision.
pub(crate) type PolicyIdx = u32;

/// The indexed set of policies of one state snapshot. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub root_namespace: Box<str>,
    pub authz: Vec<AuthzPolicy>,
    /// Oldest first.
    pub peer: Vec<PeerAuthn>,
    /// The root namespace's policies, kept apart: every decision reads them.
    pub root: NamespaceIndex,
    /// Every other namespace holding policies: one lookup per decision.
    pub namespaces: HashMap<Box<str>, NamespaceIndex>,
    pub errors: Vec<PolicyError>,
}

/// The policies of one namespace.
#[derive(Debug, Default)]
pub(crate) struct NamespaceIndex {
    pub authz: Scope,
    pub peer: PeerScope,
}

/// The AuthorizationPolicies of one namespace that take part in decisions.
#[derive(Debug, Default)]
pub(crate) struct Scope {
    everyone: Vec<PolicyIdx>,
    by_label: HashMap<Box<str>, HashMap<Box<str>, Vec<PolicyIdx>>>,
}

impl Scope {
    fn insert(&mut self, idx: PolicyIdx, selector: Option<&Selector>) {
        match selector {
            None => self.everyone.push(idx),
            Some(s) => {
                let (k, v) = s.index_label();
                self.by_label
                    .entry(k.into())
                    .or_default()
                    .entry(v.into())
                    .or_default()
                    .push(idx);
            }
        }
    }

    /// Calls `f` with every policy whose selector may select a workload with
    /// `labels`; each policy at most once (it is filed under a single pair).
    pub(crate) fn for_each_candidate(
        &self,
        labels: &BTreeMap<String, String>,
        mut f: impl FnMut(PolicyIdx),
    ) {
        self.everyone.iter().copied().for_each(&mut f);
        if self.by_label.is_empty() {
            return;
        }
        for (k, v) in labels {
            if let Some(idxs) = self
                .by_label
                .get(k.as_str())
                .and_then(|m| m.get(v.as_str()))
            {
                idxs.iter().copied().for_each(&mut f);
            }
        }
    }
}

/// PeerAuthentications of one namespace.
#[derive(Debug, Default)]
pub(crate) struct PeerScope {
    /// The oldest policy without a selector (for the root namespace: mesh-wide).
    pub namespace_wide: Option<PolicyIdx>,
    /// Policies with a selector, oldest first.
    pub workload: Vec<PolicyIdx>,
}

/// Collects policies, then indexes them with [`build`](Self::build).
#[derive(Debug)]
pub struct PolicySetBuilder {
    root_namespace: String,
    authz: BTreeMap<Box<str>, AuthzPolicy>,
    peer: BTreeMap<Box<str>, PeerAuthn>,
    errors: BTreeMap<(PolicyKind, String), PolicyError>,
}

impl PolicySet {
    /// A builder whose policies in `root_namespace` (Istio's default:
    /// `istio-system`) apply mesh-wide.
    pub fn builder(root_namespace: &str) -> PolicySetBuilder {
        PolicySetBuilder {
            root_namespace: root_namespace.to_owned(),
            authz: BTreeMap::new(),
            peer: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    /// Number of policies of both kinds, valid or not.
    pub fn len(&self) -> usize {
        self.inner.authz.len() + self.inner.peer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Errors of the invalid policies (each applied fail-closed).
    pub fn errors(&self) -> &[PolicyError] {
        &self.inner.errors
    }

    pub fn root_namespace(&self) -> &str {
        &self.inner.root_namespace
    }
}

impl PolicySetBuilder {
    /// Adds one Kubernetes object (kind AuthorizationPolicy or
    /// PeerAuthentication). An invalid policy is still recorded, fail-closed for
    /// the workloads it selects, and its error returned. A second object with
    /// the same kind and `namespace/name` replaces the first.
    pub fn add(&mut self, obj: &serde_json::Value) -> Result<(), PolicyError> {
        let parsed = parse::parse(obj)?;
        let (kind, id) = match parsed.compiled {
            Compiled::Authz(p) => {
                let id = p.id.to_string();
                self.authz.insert(p.id.clone(), p);
                (PolicyKind::AuthorizationPolicy, id)
            }
            Compiled::Peer(p) => {
                let id = p.id.to_string();
                self.peer.insert(p.id.clone(), p);
                (PolicyKind::PeerAuthentication, id)
            }
        };
        match parsed.error {
            Some(e) => {
                self.errors.insert((kind, id), e.clone());
                Err(e)
            }
            None => {
                self.errors.remove(&(kind, id));
                Ok(())
            }
        }
    }

    pub fn build(self) -> PolicySet {
        let root_namespace: Box<str> = self.root_namespace.into();
        let mut root = NamespaceIndex::default();
        let mut namespaces: HashMap<Box<str>, NamespaceIndex> = HashMap::default();
        let authz: Vec<AuthzPolicy> = self.authz.into_values().collect();
        for (i, p) in authz.iter().enumerate() {
            // AUDIT never changes a decision; waypoint policies are not ours.
            if matches!(p.effect, Effect::Audit | Effect::Waypoint) {
                continue;
            }
            let idx = PolicyIdx::try_from(i).unwrap_or(PolicyIdx::MAX);
            namespace_index(&mut root, &mut namespaces, &root_namespace, &p.namespace)
                .authz
                .insert(idx, p.selector.as_ref());
        }

        let mut peer: Vec<PeerAuthn> = self.peer.into_values().collect();
        peer.sort_by(|a, b| a.age_key().cmp(&b.age_key()));
        for (i, p) in peer.iter().enumerate() {
            if p.ignored_in(&root_namespace) {
                continue;
            }
            let idx = PolicyIdx::try_from(i).unwrap_or(PolicyIdx::MAX);
            let scope =
                &mut namespace_index(&mut root, &mut namespaces, &root_namespace, &p.namespace)
                    .peer;
            match p.selector {
                None => {
                    scope.namespace_wide.get_or_insert(idx);
                }
                Some(_) => scope.workload.push(idx),
            }
        }

        PolicySet {
            inner: Arc::new(Inner {
                root_namespace,
                authz,
                peer,
                root,
                namespaces,
                errors: self.errors.into_values().collect(),
            }),
        }
    }
}

fn namespace_index<'a>(
    root: &'a mut NamespaceIndex,
    namespaces: &'a mut HashMap<Box<str>, NamespaceIndex>,
    root_namespace: &str,
    ns: &str,
) -> &'a mut NamespaceIndex {
    if ns == root_namespace {
        root
    } else {
        namespaces.entry(ns.into()).or_default()
    }
}

impl Inner {
    /// Namespaces that hold at least one policy.
    pub(crate) fn namespaces(&self) -> BTreeSet<&str> {
        self.authz
            .iter()
            .map(|p| &*p.namespace)
            .chain(self.peer.iter().map(|p| &*p.namespace))
            .collect()
    }
}

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

use crate::model::{AuthzPolicy, Effect, LabelSet, MtlsMode, PeerAuthn, RequestAuthn, Selector};
use crate::parse::{self, Compiled, PolicyError, PolicyKind};

mod compiled;
mod summary;

pub(crate) use compiled::{Candidate, Kind, Probe};

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
    /// Sorted by `namespace/name`.
    pub request_authn: Vec<RequestAuthn>,
    /// The root namespace's policies, kept apart: every decision reads them.
    pub root: NamespaceIndex,
    /// Every other namespace holding policies: one lookup per decision.
    pub namespaces: HashMap<Box<str>, NamespaceIndex>,
    pub errors: Vec<PolicyError>,
}

/// The policies of one namespace.
#[derive(Debug)]
pub(crate) struct NamespaceIndex {
    pub authz: Scope,
    pub peer: PeerScope,
    /// The mode (and the PeerAuthentication setting it) before workload
    /// policies: mesh-wide, overridden by this namespace's own.
    pub inherited_mtls: (MtlsMode, Option<PolicyIdx>),
}

impl Default for NamespaceIndex {
    fn default() -> Self {
        Self {
            authz: Scope::default(),
            peer: PeerScope::default(),
            inherited_mtls: (MtlsMode::Permissive, None),
        }
    }
}

/// The AuthorizationPolicies of one namespace that take part in decisions,
/// compiled: those selecting everyone, and the others filed under one selector
/// pair, found by the pair's hash (sorted, so binary search) and then its bytes.
#[derive(Debug, Default)]
pub(crate) struct Scope {
    everyone: Box<[Candidate]>,
    /// Bit `min(len, 63)` set for the length of every indexed key: a workload
    /// label whose key length is not here is skipped without reading its bytes.
    key_lens: u64,
    pair_hashes: Box<[u64]>,
    /// Parallel to `pair_hashes`.
    groups: Box<[LabelGroup]>,
}

/// The candidates filed under one `key=value` pair.
#[derive(Debug)]
struct LabelGroup {
    /// The key's bytes then the value's, in one allocation.
    pair: Box<str>,
    key_len: usize,
    candidates: Box<[Candidate]>,
}

impl LabelGroup {
    fn is(&self, key: &str, value: &str) -> bool {
        self.pair.len() == key.len() + value.len()
            && self.pair.get(..self.key_len) == Some(key)
            && self.pair.get(self.key_len..) == Some(value)
    }
}

impl Scope {
    /// Compiles the policies at `idxs` (positions in `authz`).
    fn new(authz: &[AuthzPolicy], idxs: &[PolicyIdx]) -> Self {
        let mut everyone = Vec::new();
        let mut by_label: BTreeMap<(&str, &str), Vec<Candidate>> = BTreeMap::new();
        for &idx in idxs {
            let Some(p) = authz.get(idx as usize) else {
                continue;
            };
            let filed = p.selector.as_ref().map(Selector::index_label);
            let Some(c) = Candidate::new(idx, p, filed) else {
                continue;
            };
            match filed {
                None => everyone.push(c),
                Some(pair) => by_label.entry(pair).or_default().push(c),
            }
        }
        let mut groups: Vec<(u64, LabelGroup)> = by_label
            .into_iter()
            .map(|((k, v), candidates)| {
                let group = LabelGroup {
                    pair: format!("{k}{v}").into(),
                    key_len: k.len(),
                    candidates: candidates.into(),
                };
                (compiled::hash_pair(k, v), group)
            })
            .collect();
        groups.sort_by_key(|(h, _)| *h);
        let key_lens = groups
            .iter()
            .fold(0, |m, (_, g)| m | key_len_bit(g.key_len));
        let (pair_hashes, groups): (Vec<u64>, Vec<LabelGroup>) = groups.into_iter().unzip();
        Self {
            everyone: everyone.into(),
            key_lens,
            pair_hashes: pair_hashes.into(),
            groups: groups.into(),
        }
    }

    /// Calls `f` with every policy whose selector may select a workload with
    /// `labels`; each policy at most once (it is filed under a single pair).
    /// The pair it is filed under has been checked; [`Candidate::selects`]
    /// checks the rest.
    pub(crate) fn for_each_candidate<'s>(
        &'s self,
        labels: &dyn LabelSet,
        mut f: impl FnMut(&'s Candidate),
    ) {
        self.everyone.iter().for_each(&mut f);
        if self.pair_hashes.is_empty() {
            return;
        }
        labels.for_each_label(&mut |k, v| {
            if self.key_lens & key_len_bit(k.len()) == 0 {
                return;
            }
            let h = compiled::hash_pair(k, v);
            let first = self.pair_hashes.partition_point(|&x| x < h);
            let same = self.pair_hashes[first..].iter().take_while(|&&x| x == h);
            for (_, group) in same.zip(&self.groups[first..]) {
                if group.is(k, v) {
                    group.candidates.iter().for_each(&mut f);
                }
            }
        });
    }
}

fn key_len_bit(len: usize) -> u64 {
    1 << len.min(63)
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
    request: BTreeMap<Box<str>, RequestAuthn>,
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
            request: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    /// Number of policies of all kinds, valid or not.
    pub fn len(&self) -> usize {
        self.inner.authz.len() + self.inner.peer.len() + self.inner.request_authn.len()
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
            Compiled::Request(p) => {
                let id = p.id.to_string();
                self.request.insert(p.id.clone(), p);
                (PolicyKind::RequestAuthentication, id)
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
        let authz: Vec<AuthzPolicy> = self.authz.into_values().collect();
        // Positions per namespace, then each namespace compiled once.
        let mut authz_by_ns: BTreeMap<&str, Vec<PolicyIdx>> = BTreeMap::new();
        for (i, p) in authz.iter().enumerate() {
            // AUDIT never changes a decision; waypoint policies are not ours.
            if matches!(p.effect, Effect::Audit | Effect::Waypoint) {
                continue;
            }
            let idx = PolicyIdx::try_from(i).unwrap_or(PolicyIdx::MAX);
            authz_by_ns.entry(&p.namespace).or_default().push(idx);
        }

        let mut peer: Vec<PeerAuthn> = self.peer.into_values().collect();
        peer.sort_by(|a, b| a.age_key().cmp(&b.age_key()));
        let mut peer_by_ns: BTreeMap<&str, PeerScope> = BTreeMap::new();
        for (i, p) in peer.iter().enumerate() {
            if p.ignored_in(&root_namespace) {
                continue;
            }
            let idx = PolicyIdx::try_from(i).unwrap_or(PolicyIdx::MAX);
            let scope = peer_by_ns.entry(&p.namespace).or_default();
            match p.selector {
                None => {
                    scope.namespace_wide.get_or_insert(idx);
                }
                Some(_) => scope.workload.push(idx),
            }
        }

        let names: BTreeSet<&str> = (authz_by_ns.keys().chain(peer_by_ns.keys()))
            .copied()
            .filter(|ns| *ns != &*root_namespace)
            .collect();
        let mode_of = |(mode, by): (MtlsMode, Option<PolicyIdx>), idx: Option<PolicyIdx>| match idx
            .and_then(|i| Some((i, peer.get(i as usize)?.mode?)))
        {
            Some((i, m)) => (m, Some(i)),
            None => (mode, by),
        };
        let mut index_of = |ns: &str, inherited| {
            let peer = peer_by_ns.remove(ns).unwrap_or_default();
            let idxs = authz_by_ns.remove(ns).unwrap_or_default();
            NamespaceIndex {
                authz: Scope::new(&authz, &idxs),
                inherited_mtls: mode_of(inherited, peer.namespace_wide),
                peer,
            }
        };
        let root = index_of(&root_namespace, (MtlsMode::Permissive, None));
        let namespaces: HashMap<Box<str>, NamespaceIndex> = names
            .into_iter()
            .map(|ns| (ns.into(), index_of(ns, root.inherited_mtls)))
            .collect();
        drop((authz_by_ns, peer_by_ns));

        PolicySet {
            inner: Arc::new(Inner {
                root_namespace,
                authz,
                peer,
                request_authn: self.request.into_values().collect(),
                root,
                namespaces,
                errors: self.errors.into_values().collect(),
            }),
        }
    }
}

impl Inner {
    /// Namespaces that hold at least one policy.
    pub(crate) fn namespaces(&self) -> BTreeSet<&str> {
        self.authz
            .iter()
            .map(|p| &*p.namespace)
            .chain(self.peer.iter().map(|p| &*p.namespace))
            .chain(self.request_authn.iter().map(|p| &*p.namespace))
            .collect()
    }
}

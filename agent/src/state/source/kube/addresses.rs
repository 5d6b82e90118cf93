//! Which pod holds each address, kept up to date event by event.
//!
//! The API server's view is eventually consistent: a terminating pod's
//! address can reappear on a new pod before the old one's deletion is seen.
//! Of the pods (in a namespace that has been seen) claiming one address,
//! the one not being deleted keeps it, else the newest, else the greatest
//! namespace and name; a pod that lost any of its addresses (dual stack) is
//! left out whole. Deciding that over 150,000 pods per snapshot costs more
//! than everything else the agent does with an event, so the claims are
//! indexed by address and only the addresses an event touched, and the pods
//! claiming them, are decided again (`resolve`). The outcome for remote
//! pods is the address map snapshots share (`AddressMap`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::state::Workload;
use crate::state::address_map::AddressMap;
use crate::state::remote::{RemoteGroups, RemotePod};

/// A pod: its namespace (interned) and name.
pub(super) type PodRef = (Arc<str>, Arc<str>);

/// What decides whether a pod keeps its addresses.
#[derive(Clone, Copy, Debug)]
pub(super) struct ClaimView<'a> {
    pub ips: &'a [IpAddr],
    /// Running and not on the host network: it claims its addresses.
    pub captured: bool,
    pub deleting: bool,
    pub created: Option<u64>,
    /// Set for a pod of another node, which this book publishes.
    pub remote: Option<&'a RemotePod>,
}

/// The cached pods and namespaces, as the book reads them.
pub(super) trait Pods {
    /// A pod's current claim, in either form.
    fn view(&self, pod: &PodRef) -> Option<ClaimView<'_>>;
    /// The labels of a namespace that has been seen; None for one not
    /// (yet) seen, whose pods wait.
    fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>>;
}

/// The pods claiming one address; nearly always one.
#[derive(Debug)]
enum Claimants {
    One(PodRef),
    Many(Vec<PodRef>),
}

impl Claimants {
    fn as_slice(&self) -> &[PodRef] {
        match self {
            Self::One(pod) => std::slice::from_ref(pod),
            Self::Many(pods) => pods,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct AddressBook {
    claimants: HashMap<IpAddr, Claimants>,
    /// Addresses whose claims changed since the last `resolve`.
    dirty: HashSet<IpAddr>,
    /// A namespace or a whole pod list changed: decide every address.
    all_dirty: bool,
    /// Remote pods' addresses with their identity group's workload.
    published: AddressMap<Arc<Workload>>,
    /// Published addresses that are not their pod's first one (dual stack):
    /// the published pods are `published.len()` minus these.
    later_ips: HashSet<IpAddr>,
    groups: RemoteGroups,
    /// Groups after the last sweep: sweep again when they have doubled.
    swept_groups: usize,
}

impl AddressBook {
    /// `pod` claims `ips` (a captured pod's addresses).
    pub fn claim(&mut self, pod: &PodRef, ips: &[IpAddr]) {
        for ip in ips {
            self.dirty.insert(*ip);
            match self.claimants.get_mut(ip) {
                None => {
                    self.claimants.insert(*ip, Claimants::One(pod.clone()));
                }
                Some(Claimants::One(other)) if other == pod => {}
                Some(Claimants::One(other)) => {
                    let other = other.clone();
                    self.claimants
                        .insert(*ip, Claimants::Many(vec![other, pod.clone()]));
                }
                Some(Claimants::Many(pods)) => {
                    if !pods.contains(pod) {
                        pods.push(pod.clone());
                    }
                }
            }
        }
    }

    /// `pod` no longer claims `ips`.
    pub fn unclaim(&mut self, pod: &PodRef, ips: &[IpAddr]) {
        for ip in ips {
            self.dirty.insert(*ip);
            let Some(claimants) = self.claimants.get_mut(ip) else {
                continue;
            };
            match claimants {
                Claimants::One(other) if other == pod => {
                    self.claimants.remove(ip);
                }
                Claimants::One(_) => {}
                Claimants::Many(pods) => {
                    pods.retain(|p| p != pod);
                    if let [last] = pods.as_slice() {
                        *claimants = Claimants::One(last.clone());
                    } else if pods.is_empty() {
                        self.claimants.remove(ip);
                    }
                }
            }
        }
    }

    /// Forgets every claim (a pod list replaced the pods); the `pods` pods
    /// are claimed again after, into a table sized for them at once.
    pub fn clear_claims(&mut self, pods: usize) {
        self.claimants = HashMap::with_capacity(pods);
        self.all_dirty = true;
    }

    /// Decide every address again: namespaces (their existence, their
    /// enrolment labels) changed.
    pub fn mark_all_dirty(&mut self) {
        self.all_dirty = true;
    }

    /// The remote pods' addresses, for a snapshot, and how many pods they are.
    pub fn published(&self) -> (AddressMap<Arc<Workload>>, usize) {
        (
            self.published.clone(),
            self.published.len() - self.later_ips.len(),
        )
    }

    /// The pod that keeps `ip`, if any claims it from a namespace that exists.
    fn owner<'a>(&'a self, ip: &IpAddr, pods: &impl Pods) -> Option<&'a PodRef> {
        let claimants = self.claimants.get(ip)?;
        let mut best: Option<(&PodRef, ClaimView<'_>)> = None;
        for pod in claimants.as_slice() {
            let Some(view) = pods.view(pod).filter(|v| v.captured) else {
                continue;
            };
            if pods.namespace_labels(&pod.0).is_none() {
                continue;
            }
            let better = match &best {
                None => true,
                Some((other, other_view)) => preferred((pod, &view), (other, other_view)),
            };
            if better {
                best = Some((pod, view));
            }
        }
        best.map(|(pod, _)| pod)
    }

    /// Whether `pod` is built from: not claiming, or keeping every address.
    pub fn keeps_all(&self, pod: &PodRef, view: &ClaimView<'_>, pods: &impl Pods) -> bool {
        !view.captured || view.ips.iter().all(|ip| self.owner(ip, pods) == Some(pod))
    }

    /// Brings the published addresses up to date with the claims.
    pub fn resolve(&mut self, pods: &impl Pods) {
        let touched: Vec<IpAddr> = if std::mem::take(&mut self.all_dirty) {
            self.dirty.clear();
            // Every address once: a list, not a set (150,000 of them).
            let unclaimed = self
                .published
                .iter()
                .map(|(ip, _)| ip)
                .filter(|ip| !self.claimants.contains_key(ip));
            self.claimants.keys().copied().chain(unclaimed).collect()
        } else {
            // A pod's other addresses too: whether it keeps them all
            // decides whether it is published at all.
            let dirty = std::mem::take(&mut self.dirty);
            let mut touched = dirty.clone();
            for ip in &dirty {
                for pod in self.claimants.get(ip).map_or(&[][..], Claimants::as_slice) {
                    if let Some(view) = pods.view(pod) {
                        touched.extend(view.ips.iter().copied());
                    }
                }
            }
            touched.into_iter().collect()
        };
        for ip in touched {
            let published = self.owner(&ip, pods).and_then(|pod| {
                let view = pods.view(pod)?;
                let remote = view.remote?;
                if !self.keeps_all(pod, &view, pods) {
                    return None;
                }
                let labels = pods.namespace_labels(&pod.0)?;
                Some((
                    remote.identity.clone(),
                    labels,
                    view.ips.first() == Some(&ip),
                ))
            });
            match published {
                Some((identity, labels, first)) => {
                    let workload = self.groups.workload(&identity, labels);
                    let unchanged = self
                        .published
                        .get(&ip)
                        .is_some_and(|w| Arc::ptr_eq(w, &workload));
                    if !unchanged {
                        self.published.insert(ip, workload);
                    }
                    if first {
                        self.later_ips.remove(&ip);
                    } else {
                        self.later_ips.insert(ip);
                    }
                }
                None => {
                    self.published.remove(&ip);
                    self.later_ips.remove(&ip);
                }
            }
        }
        if self.groups.len() > 2 * self.swept_groups + 64 {
            self.groups.sweep();
            self.swept_groups = self.groups.len();
        }
    }
}

/// Whether claim `a` keeps an address over claim `b`: the pod that is not
/// being deleted, else the newest, else the greatest namespace and name, so
/// the outcome does not depend on the order claims were seen in.
fn preferred(a: (&PodRef, &ClaimView<'_>), b: (&PodRef, &ClaimView<'_>)) -> bool {
    match (a.1.deleting, b.1.deleting) {
        (false, true) => true,
        (true, false) => false,
        _ => (a.1.created, &*a.0.0, &*a.0.1) >= (b.1.created, &*b.0.0, &*b.0.1),
    }
}

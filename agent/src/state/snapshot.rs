//! One immutable, indexed view of the cluster.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_policy::PolicySet;

use super::address_map::AddressMap;
use super::{PolicyIssue, Service, ServiceTarget, Workload};

/// Everything the data path looks up, indexed so no lookup scans.
///
/// The indexes sit behind `Arc`s (the address map of remote pods in
/// `SharedMap`s), so a source that changes one part publishes a snapshot
/// sharing every other part with the previous one: a policy edit re-indexes
/// policies only, and two snapshots alive at once cost one copy of what
/// they have in common.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pods: Arc<PodIndex>,
    /// Addresses of pods of other nodes, each with the `Workload` its
    /// identity group shares (see `state::remote`).
    remote_by_ip: AddressMap<Arc<Workload>>,
    /// Pods of other nodes held in compact form.
    remote_pods: usize,
    services: Arc<ServiceIndex>,
    namespaces: Arc<HashMap<String, BTreeMap<String, String>>>,
    policies: Arc<PolicySet>,
    policy_errors: Arc<[PolicyIssue]>,
    /// Set by the `StateStore` when the snapshot is published; 0 before.
    generation: u64,
    /// False until a source has delivered its first complete state.
    synced: bool,
}

/// The pods known in full: every pod, or with a node-scoped source only
/// that node's.
#[derive(Debug, Default)]
struct PodIndex {
    workloads: Vec<Arc<Workload>>,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    /// Enrolled workloads per node: what capture and identity act on.
    enrolled_by_node: HashMap<String, Vec<Arc<Workload>>>,
}

#[derive(Debug, Default)]
struct ServiceIndex {
    services: Vec<Arc<Service>>,
    by_vip: HashMap<IpAddr, Arc<Service>>,
    /// Services per endpoint IP that is not a remote pod's: what a
    /// destination on this node reports a pod under.
    by_endpoint: HashMap<IpAddr, Vec<Arc<Service>>>,
}

impl Snapshot {
    /// Builds the indexes. Callers validate first (duplicate IPs, missing
    /// namespaces, see `SnapshotBuilder`); here a later workload with the same
    /// IP replaces an earlier one.
    pub fn new(
        workloads: Vec<Workload>,
        services: Vec<Service>,
        namespaces: HashMap<String, BTreeMap<String, String>>,
        policies: PolicySet,
    ) -> Self {
        Self::with_remote(
            workloads,
            AddressMap::default(),
            0,
            services.into_iter().map(Arc::new).collect(),
            namespaces,
            Arc::new(policies),
        )
    }

    /// `new`, plus the addresses of `remote_pods` pods of other nodes, each
    /// with its identity group's workload. Services are not indexed by
    /// those addresses: only a destination on this node is reported under
    /// its Service. A pod known in full wins over a remote one.
    pub(super) fn with_remote(
        workloads: Vec<Workload>,
        remote_by_ip: AddressMap<Arc<Workload>>,
        remote_pods: usize,
        services: Vec<Arc<Service>>,
        namespaces: HashMap<String, BTreeMap<String, String>>,
        policies: Arc<PolicySet>,
    ) -> Self {
        let workloads: Vec<Arc<Workload>> = workloads.into_iter().map(Arc::new).collect();
        let mut by_ip = HashMap::with_capacity(workloads.len());
        let mut enrolled_by_node: HashMap<String, Vec<Arc<Workload>>> = HashMap::new();
        for w in &workloads {
            for ip in &w.ips {
                by_ip.insert(*ip, w.clone());
            }
            if w.enrolled {
                enrolled_by_node
                    .entry(w.node.clone())
                    .or_default()
                    .push(w.clone());
            }
        }
        let pods = PodIndex {
            workloads,
            by_ip,
            enrolled_by_node,
        };
        let mut by_vip = HashMap::new();
        let mut by_endpoint: HashMap<IpAddr, Vec<Arc<Service>>> = HashMap::new();
        for s in &services {
            for vip in &s.vips {
                by_vip.insert(*vip, s.clone());
            }
            for (ip, _) in s.endpoints() {
                let remote = !pods.by_ip.contains_key(&ip) && remote_by_ip.get(&ip).is_some();
                if remote {
                    continue;
                }
                let listed = by_endpoint.entry(ip).or_default();
                if !listed.iter().any(|l| Arc::ptr_eq(l, s)) {
                    listed.push(s.clone());
                }
            }
        }
        Self {
            pods: Arc::new(pods),
            remote_by_ip,
            remote_pods,
            services: Arc::new(ServiceIndex {
                services,
                by_vip,
                by_endpoint,
            }),
            namespaces: Arc::new(namespaces),
            policies,
            policy_errors: Arc::new([]),
            generation: 0,
            synced: true,
        }
    }

    /// This snapshot with other policies: everything else is shared, so a
    /// policy edit costs indexing the policies and nothing more.
    pub(super) fn with_policies(&self, policies: Arc<PolicySet>, errors: Vec<PolicyIssue>) -> Self {
        Self {
            policies,
            policy_errors: errors.into(),
            generation: 0,
            synced: true,
            ..self.clone()
        }
    }

    /// How many pods of other nodes the snapshot holds in compact form;
    /// they answer `workload_by_ip` but are not in `workloads`.
    pub fn remote_pod_count(&self) -> usize {
        self.remote_pods
    }

    /// The addresses of pods of other nodes, each with its identity
    /// group's workload (what the state server feeds).
    pub fn remote_addresses(&self) -> &AddressMap<Arc<Workload>> {
        &self.remote_by_ip
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Which publication of the store this is (1 for the first loaded state).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub(super) fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    pub(super) fn set_policy_errors(&mut self, errors: Vec<PolicyIssue>) {
        self.policy_errors = errors.into();
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.pods
            .by_ip
            .get(&ip)
            .or_else(|| self.remote_by_ip.get(&ip))
    }

    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.services.by_vip.get(&ip)
    }

    /// Resolves a service VIP and port to a ready endpoint (round robin).
    pub fn service_target(&self, vip: IpAddr, port: u16) -> Option<ServiceTarget> {
        let svc = self.services.by_vip.get(&vip)?;
        let (ip, target_port) = svc.pick(port)?;
        Some(ServiceTarget {
            addr: SocketAddr::new(ip, target_port),
            workload: self.workload_by_ip(ip).cloned(),
        })
    }

    /// The Services whose endpoints include `ip`, in input order.
    pub fn services_of_endpoint(&self, ip: IpAddr) -> &[Arc<Service>] {
        self.services
            .by_endpoint
            .get(&ip)
            .map_or(&[][..], Vec::as_slice)
    }

    /// The Service a connection to the pod address `dst` counts under on the
    /// destination side, as ztunnel guesses it: the one the client named
    /// (`host`, the hostname it dialled) when that is one of the pod's;
    /// otherwise the first whose endpoints serve `dst`'s port on the pod.
    /// Only the pod's own Services are candidates, so a peer cannot make a
    /// connection count under an unrelated Service.
    pub fn inbound_service(&self, dst: SocketAddr, host: Option<&str>) -> Option<&Arc<Service>> {
        let own = self.services_of_endpoint(dst.ip());
        host.and_then(|h| own.iter().find(|s| s.has_hostname(h)))
            .or_else(|| own.iter().find(|s| s.serves(dst)))
    }

    /// Every workload, once each (a dual-stack pod is indexed under two IPs),
    /// in input order.
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.pods.workloads.iter()
    }

    /// Every service, in input order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.services.iter()
    }

    /// The enrolled workloads scheduled on `node`.
    pub fn local_enrolled<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Arc<Workload>> {
        self.pods
            .enrolled_by_node
            .get(node)
            .map_or(&[][..], Vec::as_slice)
            .iter()
    }

    pub fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(namespace)
    }

    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    /// Policies the engine refused; each is enforced fail-closed.
    pub fn policy_errors(&self) -> &[PolicyIssue] {
        &self.policy_errors
    }
}

//! One immutable, indexed view of the cluster.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_policy::PolicySet;

use super::{PolicyIssue, Service, ServiceTarget, Workload};

/// Everything the data path looks up, indexed so no lookup scans.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The pods known in full: every pod, or with a node-scoped source
    /// only that node's.
    workloads: Vec<Arc<Workload>>,
    /// Full and remote pods: a remote pod's entry is the `Workload` its
    /// identity group shares (see `state::remote`).
    workloads_by_ip: HashMap<IpAddr, Arc<Workload>>,
    /// Pods of other nodes held in compact form.
    remote_pods: usize,
    /// Enrolled workloads per node: what capture and identity act on.
    enrolled_by_node: HashMap<String, Vec<Arc<Workload>>>,
    services: Vec<Arc<Service>>,
    services_by_vip: HashMap<IpAddr, Arc<Service>>,
    /// Services per endpoint IP: what a destination reports a pod under.
    services_by_endpoint: HashMap<IpAddr, Vec<Arc<Service>>>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    policies: PolicySet,
    policy_errors: Vec<PolicyIssue>,
    /// Set by the `StateStore` when the snapshot is published; 0 before.
    generation: u64,
    /// False until a source has delivered its first complete state.
    synced: bool,
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
        Self::with_remote(workloads, Vec::new(), 0, services, namespaces, policies)
    }

    /// `new`, plus the addresses of `remote_pods` pods of other nodes, each
    /// with its identity group's workload. Services are not indexed by
    /// those addresses: only a destination on this node is reported under
    /// its Service.
    pub(super) fn with_remote(
        workloads: Vec<Workload>,
        remote: Vec<(IpAddr, Arc<Workload>)>,
        remote_pods: usize,
        services: Vec<Service>,
        namespaces: HashMap<String, BTreeMap<String, String>>,
        policies: PolicySet,
    ) -> Self {
        let workloads: Vec<Arc<Workload>> = workloads.into_iter().map(Arc::new).collect();
        let mut workloads_by_ip = HashMap::with_capacity(workloads.len() + remote.len());
        workloads_by_ip.extend(remote);
        let mut enrolled_by_node: HashMap<String, Vec<Arc<Workload>>> = HashMap::new();
        for w in &workloads {
            for ip in &w.ips {
                workloads_by_ip.insert(*ip, w.clone());
            }
            if w.enrolled {
                enrolled_by_node
                    .entry(w.node.clone())
                    .or_default()
                    .push(w.clone());
            }
        }
        let services: Vec<Arc<Service>> = services.into_iter().map(Arc::new).collect();
        let mut services_by_vip = HashMap::new();
        let mut services_by_endpoint: HashMap<IpAddr, Vec<Arc<Service>>> = HashMap::new();
        for s in &services {
            for vip in &s.vips {
                services_by_vip.insert(*vip, s.clone());
            }
            for e in &s.endpoints {
                let remote = workloads_by_ip
                    .get(&e.ip)
                    .is_some_and(|w: &Arc<Workload>| w.is_remote());
                if remote {
                    continue;
                }
                let listed = services_by_endpoint.entry(e.ip).or_default();
                if !listed.iter().any(|l| Arc::ptr_eq(l, s)) {
                    listed.push(s.clone());
                }
            }
        }
        Self {
            workloads,
            workloads_by_ip,
            remote_pods,
            enrolled_by_node,
            services,
            services_by_vip,
            services_by_endpoint,
            namespaces,
            policies,
            policy_errors: Vec::new(),
            generation: 0,
            synced: true,
        }
    }

    /// How many pods of other nodes the snapshot holds in compact form;
    /// they answer `workload_by_ip` but are not in `workloads`.
    pub fn remote_pod_count(&self) -> usize {
        self.remote_pods
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
        self.policy_errors = errors;
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads_by_ip.get(&ip)
    }

    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.services_by_vip.get(&ip)
    }

    /// Resolves a service VIP and port to a ready endpoint (round robin).
    pub fn service_target(&self, vip: IpAddr, port: u16) -> Option<ServiceTarget> {
        let svc = self.services_by_vip.get(&vip)?;
        let (ip, target_port) = svc.pick(port)?;
        Some(ServiceTarget {
            addr: SocketAddr::new(ip, target_port),
            workload: self.workloads_by_ip.get(&ip).cloned(),
        })
    }

    /// The Services whose endpoints include `ip`, in input order.
    pub fn services_of_endpoint(&self, ip: IpAddr) -> &[Arc<Service>] {
        self.services_by_endpoint
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
        self.workloads.iter()
    }

    /// Every service, in input order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.iter()
    }

    /// The enrolled workloads scheduled on `node`.
    pub fn local_enrolled<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Arc<Workload>> {
        self.enrolled_by_node
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

//! One immutable, indexed view of the cluster.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_policy::PolicySet;

use super::{Service, ServiceTarget, Workload};

/// Everything the data path looks up, indexed so no lookup scans.
#[derive(Debug, Default)]
pub struct Snapshot {
    workloads_by_ip: HashMap<IpAddr, Arc<Workload>>,
    services_by_vip: HashMap<IpAddr, Arc<Service>>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    policies: PolicySet,
    /// False until a source has delivered its first complete state.
    synced: bool,
}

impl Snapshot {
    /// Builds the indexes. Callers validate first (duplicate IPs, missing
    /// namespaces); here a later workload with the same IP replaces an earlier one.
    pub fn new(
        workloads: Vec<Workload>,
        services: Vec<Service>,
        namespaces: HashMap<String, BTreeMap<String, String>>,
        policies: PolicySet,
    ) -> Self {
        let mut workloads_by_ip = HashMap::new();
        for w in workloads {
            let w = Arc::new(w);
            for ip in &w.ips {
                workloads_by_ip.insert(*ip, w.clone());
            }
        }
        let mut services_by_vip = HashMap::new();
        for s in services {
            let s = Arc::new(s);
            for vip in &s.vips {
                services_by_vip.insert(*vip, s.clone());
            }
        }
        Self {
            workloads_by_ip,
            services_by_vip,
            namespaces,
            policies,
            synced: true,
        }
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads_by_ip.get(&ip)
    }

    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.services_by_vip.get(&ip)
    }

    /// Resolves a service VIP and port to a ready endpoint.
    pub fn service_target(&self, vip: IpAddr, port: u16) -> Option<ServiceTarget> {
        let svc = self.services_by_vip.get(&vip)?;
        let (ip, target_port) = svc.pick(port)?;
        Some(ServiceTarget {
            addr: SocketAddr::new(ip, target_port),
            workload: self.workloads_by_ip.get(&ip).cloned(),
        })
    }

    /// Every workload, once each (a dual-stack pod is indexed under two IPs).
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        let mut seen = std::collections::HashSet::new();
        self.workloads_by_ip
            .values()
            .filter(move |w| seen.insert(Arc::as_ptr(w)))
    }

    /// The enrolled workloads scheduled on `node`.
    pub fn local_enrolled<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Arc<Workload>> {
        self.workloads()
            .filter(move |w| w.enrolled && w.node == node)
    }

    pub fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(namespace)
    }

    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }
}

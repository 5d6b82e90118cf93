//! A workload (a pod) as the data path needs it.

use std::net::IpAddr;

use ambit_ca::{SpiffeId, spiffe::SpiffeIdError};

use super::Labels;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node: String,
    pub ips: Vec<IpAddr>,
    pub labels: Labels,
    /// Namespace labelled `istio.io/dataplane-mode=ambient` and the pod not opted out.
    pub enrolled: bool,
}

impl Workload {
    pub fn identity(&self, trust_domain: &str) -> Result<SpiffeId, SpiffeIdError> {
        SpiffeId::new(trust_domain, &self.namespace, &self.service_account)
    }

    /// Whether this stands for pods of other nodes held in compact form
    /// (`state::remote`): such a group has no node, name or addresses of
    /// one pod. A pod known in full always has its node.
    pub fn is_remote(&self) -> bool {
        self.node.is_empty()
    }

    /// `namespace/name`, the form logs and metrics use.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

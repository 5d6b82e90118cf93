//! A workload (a pod) as the data path needs it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_ca::{SpiffeId, spiffe::SpiffeIdError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node: String,
    pub ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    /// Namespace labelled `istio.io/dataplane-mode=ambient` and the pod not opted out.
    pub enrolled: bool,
}

impl Workload {
    pub fn identity(&self, trust_domain: &str) -> Result<SpiffeId, SpiffeIdError> {
        SpiffeId::new(trust_domain, &self.namespace, &self.service_account)
    }

    /// `namespace/name`, the form logs and metrics use.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

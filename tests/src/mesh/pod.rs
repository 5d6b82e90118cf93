//! Pods of a mesh: what a test asks to place ([`PodSpec`]) and what it gets
//! back ([`MeshPod`]): the cluster pod plus the namespace, service account
//! and labels the state file gives it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::cluster::Pod;
use crate::netns::Netns;

use super::TRUST_DOMAIN;

/// A pod to place: where, in which namespace, as which service account.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node: usize,
    pub labels: BTreeMap<String, String>,
}

impl PodSpec {
    /// Pod `name` on node 0 in namespace `default`, service account `default`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            namespace: "default".to_owned(),
            service_account: "default".to_owned(),
            node: 0,
            labels: BTreeMap::new(),
        }
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    pub fn service_account(mut self, service_account: &str) -> Self {
        self.service_account = service_account.to_owned();
        self
    }

    pub fn node(mut self, node: usize) -> Self {
        self.node = node;
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// A placed pod and what the state says about it.
#[derive(Clone, Debug)]
pub struct MeshPod {
    pub pod: Pod,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
}

impl MeshPod {
    pub fn name(&self) -> &str {
        &self.pod.name
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.pod.ip
    }

    pub fn netns(&self) -> &Netns {
        &self.pod.netns
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.pod.ip), port)
    }

    /// `cluster.local/ns/<namespace>/sa/<service account>`, as policies name it.
    pub fn principal(&self) -> String {
        format!(
            "{TRUST_DOMAIN}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }

    /// `spiffe://cluster.local/ns/<namespace>/sa/<service account>`.
    pub fn spiffe_id(&self) -> String {
        format!("spiffe://{}", self.principal())
    }
}

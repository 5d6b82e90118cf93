//! Pods kept as objects (this node's, unscheduled ones, or all with no node
//! set), with the facts that decide whether they keep their addresses read
//! once when cached; and the view the address book reads pods through.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use super::addresses::{ClaimView, PodRef, Pods};
use super::kind_cache::{KindCache, Stored, store};
use super::remote_pods::RemotePods;
use crate::state::remote::{RemotePod, timestamp_key};

/// A pod as the object cache keeps it.
#[derive(Debug)]
pub(super) struct LocalPod {
    /// The slimmed object, for the builder.
    pub text: Stored,
    pub ips: Box<[IpAddr]>,
    pub captured: bool,
    pub deleting: bool,
    pub created: Option<u64>,
}

impl LocalPod {
    pub fn new(object: &Value) -> Self {
        let text = store(object);
        // A pod whose facts do not decode claims nothing; the builder
        // reports what is wrong with it.
        let facts = serde_json::from_str::<PodFacts>(&text).unwrap_or_default();
        Self {
            ips: facts.ips().into(),
            captured: facts.captured(),
            deleting: facts.metadata.deletion_timestamp.is_some(),
            created: facts
                .metadata
                .creation_timestamp
                .as_deref()
                .and_then(timestamp_key),
            text,
        }
    }

    pub fn view(&self) -> ClaimView<'_> {
        ClaimView {
            ips: &self.ips,
            captured: self.captured,
            deleting: self.deleting,
            created: self.created,
            remote: None,
        }
    }
}

/// A remote pod's claim.
pub(super) fn remote_view(pod: &RemotePod) -> ClaimView<'_> {
    ClaimView {
        ips: pod.ips.as_ref().map_or(&[], |ips| ips.as_slice()),
        captured: pod.captured,
        deleting: pod.deleting,
        created: pod.created,
        remote: Some(pod),
    }
}

/// The cached pods of both forms and the namespaces seen, for the book.
pub(super) struct PodView<'a> {
    pub local: &'a KindCache<LocalPod>,
    pub remote: &'a RemotePods,
    pub namespaces: &'a HashMap<String, BTreeMap<String, String>>,
}

impl Pods for PodView<'_> {
    fn view(&self, pod: &PodRef) -> Option<ClaimView<'_>> {
        if let Some(remote) = self.remote.get(pod) {
            return Some(remote_view(remote));
        }
        let key = (pod.0.to_string(), pod.1.to_string());
        self.local.get(&key).map(LocalPod::view)
    }

    fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        let namespace = if namespace.is_empty() {
            "default"
        } else {
            namespace
        };
        self.namespaces.get(namespace)
    }
}

/// The facts about a pod that decide whether it is built from.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PodFacts {
    metadata: FactsMeta,
    spec: FactsSpec,
    status: FactsStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct FactsMeta {
    namespace: Option<String>,
    creation_timestamp: Option<String>,
    deletion_timestamp: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct FactsSpec {
    host_network: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct FactsStatus {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pod_ips: Vec<FactsIp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FactsIp {
    ip: String,
}

impl PodFacts {
    fn ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self
            .status
            .pod_ip
            .as_deref()
            .and_then(|s| s.parse().ok())
            .into_iter()
            .collect();
        for entry in &self.status.pod_ips {
            if let Ok(ip) = entry.ip.parse()
                && !ips.contains(&ip)
            {
                ips.push(ip);
            }
        }
        ips
    }

    /// Whether the builder will give this pod its IPs.
    fn captured(&self) -> bool {
        !self.spec.host_network && self.status.phase.as_deref().is_none_or(|p| p == "Running")
    }
}

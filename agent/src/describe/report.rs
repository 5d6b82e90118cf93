//! The describe answer as data, built from a state snapshot plus, inside a
//! running agent, what only the agent knows ([`AgentFacts`]: the node it
//! serves, its certificates, the refusals it recorded). Serialized as is for
//! `--output json` and by the admin endpoint; the CLI reads it back to
//! render it.

use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use ambit_policy::Target;
use ambit_policy::describe::WorkloadPolicies;
use serde::{Deserialize, Serialize};

use super::{DescribeError, Subject};
use crate::metrics::Denial;
use crate::state::DATAPLANE_MODE_LABEL;
use crate::state::{Service, Snapshot, Workload};

/// What the agent answering knows beyond the state.
pub trait AgentFacts {
    /// The node this agent serves.
    fn node(&self) -> &str;
    /// Expiry (Unix seconds) of the certificate held for `identity`, if any.
    fn certificate_expiry(&self, identity: &str) -> Option<u64>;
    /// The refusals recorded for `workload` (`namespace/name`), newest first.
    fn refusals(&self, workload: &str) -> Vec<Denial>;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Report {
    Pod(Box<PodReport>),
    Service(ServiceReport),
}

/// Who answered: the state file alone, or the agent of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answerer {
    /// `state file` or `agent`.
    pub source: String,
    /// The agent's node, when an agent answered.
    pub node: Option<String>,
    /// When the answer was made, Unix seconds.
    pub at_unix: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodReport {
    /// `namespace/name`.
    pub pod: String,
    pub node: String,
    pub ips: Vec<IpAddr>,
    pub service_account: String,
    pub capture: Capture,
    /// The SPIFFE ID the pod holds in the mesh (enrolled pods only).
    pub identity: Option<String>,
    /// Only the pod's own agent holds it.
    pub certificate: Option<CertificateView>,
    /// Services whose endpoints include the pod: `name.namespace`.
    pub services: Vec<String>,
    /// The protocol of each port its Services target, as the destination
    /// agent reads it.
    pub ports: Vec<PortProtocol>,
    pub policies: WorkloadPolicies,
    /// The refusals the answering agent recorded; `None` when no agent
    /// answered (the state file knows of none).
    pub refusals: Option<Vec<Denial>>,
    pub answered_by: Answerer,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortProtocol {
    pub port: u16,
    /// `http` (requests decided one by one), `tcp` (never sniffed), or
    /// `undeclared` (sniffed when HTTP rules select the pod).
    pub protocol: String,
    /// The Service port that says so (`default/analyzer:http`).
    pub declared_by: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capture {
    pub enrolled: bool,
    /// Why it is or is not enrolled.
    pub why: String,
    /// Whether the answering agent captures it; `None` without an agent.
    pub by_this_agent: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateView {
    pub not_after_unix: u64,
    /// Negative once expired.
    pub expires_in_seconds: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReport {
    /// `name.namespace`.
    pub service: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePortView>,
    /// Every pod behind the Service, described.
    pub pods: Vec<PodReport>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePortView {
    pub port: u16,
    pub name: Option<String>,
    pub ready_endpoints: Vec<SocketAddr>,
}

/// Describes `subject` from `snapshot`, with `agent`'s facts when an agent answers.
pub fn describe(
    snapshot: &Snapshot,
    subject: &Subject,
    trust_domain: &str,
    agent: Option<&dyn AgentFacts>,
) -> Result<Report, DescribeError> {
    let now = SystemTime::now();
    match subject {
        Subject::Pod { namespace, name } => {
            let pod = snapshot
                .workloads()
                .find(|w| w.namespace == *namespace && w.name == *name)
                .ok_or_else(|| DescribeError::NoSuchPod(format!("{namespace}/{name}")))?;
            Ok(Report::Pod(Box::new(pod_report(
                snapshot,
                pod,
                trust_domain,
                agent,
                now,
            ))))
        }
        Subject::Service { name, namespace } => {
            let svc = snapshot
                .services()
                .find(|s| s.namespace == *namespace && s.name == *name)
                .ok_or_else(|| DescribeError::NoSuchService(format!("{name}.{namespace}")))?;
            Ok(Report::Service(service_report(
                snapshot,
                svc,
                trust_domain,
                agent,
                now,
            )))
        }
    }
}

fn service_report(
    snapshot: &Snapshot,
    svc: &Service,
    trust_domain: &str,
    agent: Option<&dyn AgentFacts>,
    now: SystemTime,
) -> ServiceReport {
    let ports = svc
        .ports
        .iter()
        .map(|p| ServicePortView {
            port: p.port,
            name: p.name.clone(),
            ready_endpoints: svc.ready_endpoints(p.port).collect(),
        })
        .collect();
    let mut pods: Vec<PodReport> = Vec::new();
    for (ip, _) in svc.endpoints() {
        let Some(w) = snapshot.workload_by_ip(ip) else {
            continue;
        };
        let name = w.qualified_name();
        if !pods.iter().any(|p| p.pod == name) {
            pods.push(pod_report(snapshot, w, trust_domain, agent, now));
        }
    }
    ServiceReport {
        service: format!("{}.{}", svc.name, svc.namespace),
        vips: svc.vips.clone(),
        ports,
        pods,
    }
}

fn pod_report(
    snapshot: &Snapshot,
    w: &Workload,
    trust_domain: &str,
    agent: Option<&dyn AgentFacts>,
    now: SystemTime,
) -> PodReport {
    let now_unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let identity = w
        .enrolled
        .then(|| w.identity(trust_domain).ok())
        .flatten()
        .map(|id| id.to_string());
    // The pod's ports as its Services target them: where a port-level mTLS
    // mode would matter.
    let mut services = Vec::new();
    let mut ports = Vec::new();
    for ip in &w.ips {
        for svc in snapshot.services_of_endpoint(*ip) {
            let name = format!("{}.{}", svc.name, svc.namespace);
            if !services.contains(&name) {
                services.push(name);
            }
            for p in &svc.ports {
                ports.extend(
                    svc.ready_endpoints(p.port)
                        .filter(|a| a.ip() == *ip)
                        .map(|a| a.port()),
                );
            }
        }
    }
    let mut protocols: Vec<PortProtocol> = Vec::new();
    for addr in w
        .ips
        .iter()
        .flat_map(|ip| ports.iter().map(|p| SocketAddr::new(*ip, *p)))
    {
        if protocols.iter().any(|p| p.port == addr.port()) {
            continue;
        }
        let (protocol, declared_by) = match crate::l7::declared(snapshot, addr) {
            crate::l7::Declared::Http(by) => ("http", Some(by)),
            crate::l7::Declared::Opaque(by) => ("tcp", Some(by)),
            crate::l7::Declared::Unknown => ("undeclared", None),
        };
        protocols.push(PortProtocol {
            port: addr.port(),
            protocol: protocol.to_owned(),
            declared_by,
        });
    }
    let policies = snapshot.policies().describe(
        &Target {
            namespace: &w.namespace,
            labels: &w.labels,
        },
        &ports,
    );
    let certificate = agent
        .zip(identity.as_deref())
        .and_then(|(a, id)| a.certificate_expiry(id))
        .map(|not_after| CertificateView {
            not_after_unix: not_after,
            expires_in_seconds: i64::try_from(not_after).unwrap_or(i64::MAX)
                - i64::try_from(now_unix).unwrap_or(0),
        });
    PodReport {
        pod: w.qualified_name(),
        node: w.node.clone(),
        ips: w.ips.clone(),
        service_account: w.service_account.clone(),
        capture: Capture {
            enrolled: w.enrolled,
            why: enrolment_reason(snapshot, w),
            by_this_agent: agent.map(|a| w.enrolled && a.node() == w.node),
        },
        identity,
        certificate,
        services,
        ports: protocols,
        policies,
        refusals: agent.map(|a| a.refusals(&w.qualified_name())),
        answered_by: Answerer {
            source: if agent.is_some() {
                "agent"
            } else {
                "state file"
            }
            .to_owned(),
            node: agent.map(|a| a.node().to_owned()),
            at_unix: now_unix,
        },
    }
}

/// Why a pod is or is not enrolled, from the labels that decide it.
fn enrolment_reason(snapshot: &Snapshot, w: &Workload) -> String {
    let ns_mode = snapshot
        .namespace_labels(&w.namespace)
        .and_then(|l| l.get(DATAPLANE_MODE_LABEL));
    let pod_mode = w.labels.get(DATAPLANE_MODE_LABEL);
    match (
        w.enrolled,
        pod_mode.map(String::as_str),
        ns_mode.map(String::as_str),
    ) {
        (true, Some("ambient"), _) => format!("pod labelled {DATAPLANE_MODE_LABEL}=ambient"),
        (true, _, _) => format!(
            "namespace {} labelled {DATAPLANE_MODE_LABEL}=ambient",
            w.namespace
        ),
        (false, Some("none"), _) => format!("pod opts out: {DATAPLANE_MODE_LABEL}=none"),
        (false, _, Some("ambient")) => "pod runs a sidecar".to_owned(),
        (false, _, _) => format!(
            "namespace {} is not labelled {DATAPLANE_MODE_LABEL}=ambient",
            w.namespace
        ),
    }
}

#[cfg(test)]
mod tests;

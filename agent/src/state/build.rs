//! Turning Kubernetes-shaped documents into a validated `Snapshot`.
//!
//! A snapshot is all or nothing: one malformed object, two owners of one IP or a
//! pod in a namespace that does not exist rejects the whole input, so the agent
//! keeps serving the last consistent view instead of a guess. Policies are the
//! exception: the policy engine keeps an invalid one as fail-closed, which is
//! safe, so it is reported in `Snapshot::policy_errors` without rejecting.

use std::collections::{BTreeMap, HashMap, hash_map::Entry};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ambit_policy::k8s::{DocumentProblem, documents};
use ambit_policy::{PolicyError, PolicySet, PolicySetBuilder, is_policy_kind};
use serde_json::Value;

mod endpoints;

use super::address_map::AddressMap;
use super::k8s::{self, FieldError, PortRef};
use super::{Service, ServicePort, Snapshot, TargetPort, Workload};
use endpoints::{selected_endpoints, slice_endpoints};

/// Namespace label that enrols a namespace's pods in the mesh.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
const MODE_AMBIENT: &str = "ambient";
const MODE_NONE: &str = "none";

/// How to read the state; independent of where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Policies in this namespace apply mesh-wide.
    pub root_namespace: String,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            root_namespace: "istio-system".to_owned(),
        }
    }
}

/// Where an object was read: its file and the line its document starts on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    pub file: Arc<Path>,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// Why a state input was rejected. The message always says where.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {reason}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: DocumentProblem,
    },
    #[error("state loading interrupted: the runtime is shutting down")]
    Interrupted,
    #[error("{}: no Kubernetes objects found", path.display())]
    Empty { path: PathBuf },
    #[error("{origin}: {object}: {source}")]
    Invalid {
        origin: Origin,
        object: String,
        source: FieldError,
    },
    #[error("{origin}: {object}: IP {ip} is already used by {owner} ({owner_origin})")]
    DuplicateIp {
        origin: Origin,
        object: String,
        ip: IpAddr,
        owner: String,
        owner_origin: Origin,
    },
    #[error("{origin}: {object}: namespace {namespace:?} has no Namespace object")]
    MissingNamespace {
        origin: Origin,
        object: String,
        namespace: String,
    },
}

/// An AuthorizationPolicy or PeerAuthentication the policy engine refused; it
/// is enforced fail-closed, and reported so an operator can fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyIssue {
    pub origin: Origin,
    /// Names the policy, the field and the problem.
    pub error: PolicyError,
}

impl fmt::Display for PolicyIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.error)
    }
}

/// Accumulates documents from any number of files, then validates and indexes
/// them in `build`.
pub struct SnapshotBuilder {
    namespaces: HashMap<String, BTreeMap<String, String>>,
    pods: Vec<(Origin, k8s::Pod)>,
    /// Addresses of pods on other nodes, already resolved to their
    /// identity group's workload (see `state::remote`), and how many pods
    /// they are.
    remote: AddressMap<Arc<Workload>>,
    remote_pods: usize,
    /// `remote` covers this node's pods too (`set_cluster_addresses`).
    local_over_remote: bool,
    services: Vec<(Origin, k8s::Service)>,
    /// Services a source built (and keeps) itself, from their objects.
    built_services: Vec<(Origin, Arc<Service>)>,
    /// Policies a source indexed itself, with the errors to report.
    indexed_policies: Option<(Arc<PolicySet>, Vec<PolicyIssue>)>,
    slices: Vec<k8s::EndpointSlice>,
    policies: PolicySetBuilder,
    policy_errors: Vec<PolicyIssue>,
    objects: usize,
}

impl SnapshotBuilder {
    pub fn new(options: &LoadOptions) -> Self {
        Self {
            namespaces: HashMap::new(),
            pods: Vec::new(),
            remote: AddressMap::default(),
            local_over_remote: false,
            remote_pods: 0,
            services: Vec::new(),
            built_services: Vec::new(),
            indexed_policies: None,
            slices: Vec::new(),
            policies: PolicySet::builder(&options.root_namespace),
            policy_errors: Vec::new(),
            objects: 0,
        }
    }

    /// Adds every object of one file's text (multi-document YAML or JSON,
    /// `kind: List` included).
    pub fn add_text(&mut self, file: &Path, text: &str) -> Result<(), LoadError> {
        let docs = documents(text).map_err(|e| LoadError::Syntax {
            path: file.to_owned(),
            line: e.line,
            reason: e.reason,
        })?;
        let file: Arc<Path> = Arc::from(file);
        for doc in docs {
            let origin = Origin {
                file: file.clone(),
                line: doc.line,
            };
            self.add_object(origin, &doc.value)?;
        }
        Ok(())
    }

    /// Adds one decoded object. Kinds the agent has no use for are skipped, so
    /// `kubectl get all -o yaml` output loads.
    pub fn add_object(&mut self, origin: Origin, value: &Value) -> Result<(), LoadError> {
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        let api_version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let invalid = |source: FieldError| LoadError::Invalid {
            origin: origin.clone(),
            object: describe_object(kind, value),
            source,
        };
        if kind.is_empty() {
            return Err(invalid(FieldError {
                field: "kind".to_owned(),
                problem: "missing".to_owned(),
            }));
        }
        self.objects += 1;
        if is_policy_kind(api_version, kind) {
            if let Err(error) = self.policies.add(value) {
                self.policy_errors.push(PolicyIssue { origin, error });
            }
            return Ok(());
        }
        match kind {
            "Namespace" => {
                let ns = k8s::namespace(value).map_err(invalid)?;
                self.namespaces.insert(ns.name, ns.labels);
            }
            "Pod" => self
                .pods
                .push((origin.clone(), k8s::pod(value).map_err(invalid)?)),
            "Service" => self
                .services
                .push((origin.clone(), k8s::service(value).map_err(invalid)?)),
            "EndpointSlice" => self
                .slices
                .push(k8s::endpoint_slice(value).map_err(invalid)?),
            _ => tracing::trace!(%origin, kind, "ignoring object kind"),
        }
        Ok(())
    }

    /// Sets the addresses of `pods` pods of other nodes, each with the
    /// workload of its identity group. The source has resolved addresses
    /// among them (no two hold one); they are checked against this node's
    /// pods and the Services' VIPs as any address is.
    pub fn set_remote_addresses(&mut self, by_ip: AddressMap<Arc<Workload>>, pods: usize) {
        self.objects += pods;
        self.remote = by_ip;
        self.remote_pods = pods;
    }

    /// `set_remote_addresses` for addresses resolved over the whole
    /// cluster (the state feed), this node's pods among them: a pod of this
    /// node takes its address over from the remote entry, as the snapshot
    /// looks up pods known in full first.
    pub fn set_cluster_addresses(&mut self, by_ip: AddressMap<Arc<Workload>>, pods: usize) {
        self.set_remote_addresses(by_ip, pods);
        self.local_over_remote = true;
    }

    /// Adds a decoded Service, built with the rest (its endpoints come from
    /// its slices, or the pods its selector picks).
    pub(super) fn add_service(&mut self, origin: Origin, service: k8s::Service) {
        self.objects += 1;
        self.services.push((origin, service));
    }

    /// Adds a Service the source has built from its objects already; its
    /// VIPs are validated as an added Service's are.
    pub fn add_built_service(&mut self, origin: Origin, service: Arc<Service>) {
        self.objects += 1;
        self.built_services.push((origin, service));
    }

    /// Uses policies the source has indexed already instead of any added
    /// policy objects; `errors` are those it still enforces fail-closed.
    pub fn set_indexed_policies(&mut self, policies: Arc<PolicySet>, errors: Vec<PolicyIssue>) {
        self.indexed_policies = Some((policies, errors));
    }

    /// Number of objects seen so far, of any kind.
    pub fn object_count(&self) -> usize {
        self.objects
    }

    /// Validates the whole input and builds the indexed snapshot.
    pub fn build(self) -> Result<Snapshot, LoadError> {
        // Who holds each address, besides the remote pods: those are only
        // looked up, and named when in a conflict.
        let mut owners: HashMap<IpAddr, Owner<'_>> = HashMap::with_capacity(self.pods.len());

        let mut workloads = Vec::new();
        let mut pods_by_ns: HashMap<&str, Vec<&k8s::Pod>> = HashMap::new();
        for (origin, pod) in &self.pods {
            let object = format!("Pod {}/{}", pod.meta.namespace, pod.meta.name);
            let Some(ns_labels) = self.namespaces.get(&pod.meta.namespace) else {
                return Err(LoadError::MissingNamespace {
                    origin: origin.clone(),
                    object,
                    namespace: pod.meta.namespace.clone(),
                });
            };
            // Host-network pods share the node's IP and are never captured;
            // pods that are not running hold no address worth routing to.
            let running = pod.phase.as_deref().is_none_or(|p| p == "Running");
            if pod.host_network || !running || pod.ips.is_empty() {
                continue;
            }
            let node = pod.node.clone().ok_or_else(|| LoadError::Invalid {
                origin: origin.clone(),
                object: object.clone(),
                source: FieldError {
                    field: "spec.nodeName".to_owned(),
                    problem: "missing on a running pod".to_owned(),
                },
            })?;
            for ip in &pod.ips {
                claim(
                    &mut owners,
                    None,
                    *ip,
                    Owner::Object(object.clone(), origin),
                )?;
            }
            pods_by_ns.entry(&pod.meta.namespace).or_default().push(pod);
            workloads.push(Workload {
                uid: pod
                    .meta
                    .uid
                    .clone()
                    .unwrap_or_else(|| format!("{}/{}", pod.meta.namespace, pod.meta.name)),
                name: pod.meta.name.clone(),
                namespace: pod.meta.namespace.clone(),
                service_account: pod.service_account.clone(),
                node,
                ips: pod.ips.clone(),
                // A pod with an injected sidecar is served by it, not by the node agent.
                enrolled: !pod.has_sidecar && is_enrolled(ns_labels, &pod.meta.labels),
                labels: pod.meta.labels.clone().into(),
            });
        }

        // Remote addresses are unique among themselves (the source resolved
        // them); only this node's pods and the VIPs can collide with them.
        for (ip, owner) in owners.iter().filter(|_| !self.local_over_remote) {
            if let Some(remote) = self.remote.get(ip) {
                let (object, origin) = Owner::Remote(remote).describe();
                let (owner, owner_origin) = owner.describe();
                return Err(LoadError::DuplicateIp {
                    origin,
                    object,
                    ip: *ip,
                    owner,
                    owner_origin,
                });
            }
        }

        let mut slices: HashMap<(&str, &str), Vec<&k8s::EndpointSlice>> = HashMap::new();
        for slice in &self.slices {
            if let Some(svc) = &slice.service {
                slices
                    .entry((slice.meta.namespace.as_str(), svc.as_str()))
                    .or_default()
                    .push(slice);
            }
        }

        let mut services = Vec::with_capacity(self.services.len() + self.built_services.len());
        for (origin, svc) in &self.built_services {
            let object = format!("Service {}/{}", svc.namespace, svc.name);
            claim_all(&mut owners, &self.remote, &svc.vips, &object, origin)?;
            services.push(svc.clone());
        }
        for (origin, svc) in &self.services {
            let object = format!("Service {}/{}", svc.meta.namespace, svc.meta.name);
            claim_all(&mut owners, &self.remote, &svc.vips, &object, origin)?;
            let key = (svc.meta.namespace.as_str(), svc.meta.name.as_str());
            let endpoints = match (slices.get(&key), &svc.selector) {
                (Some(slices), _) => slice_endpoints(slices),
                // No slice in the input: select pods the way the EndpointSlice
                // controller would, so hand-written state needs no slices.
                (None, Some(selector)) => selected_endpoints(
                    pods_by_ns.get(key.0).map_or(&[][..], Vec::as_slice),
                    selector,
                    &svc.ports,
                ),
                (None, None) => Vec::new(),
            };
            services.push(Arc::new(Service::new(
                svc.meta.name.clone(),
                svc.meta.namespace.clone(),
                svc.vips.clone(),
                svc.ports.iter().map(service_port).collect(),
                endpoints,
            )));
        }

        let (policies, policy_errors) = match self.indexed_policies {
            Some(indexed) => indexed,
            None => index_policies(self.policies, self.policy_errors),
        };
        let mut snapshot = Snapshot::with_remote(
            workloads,
            self.remote,
            self.remote_pods,
            services,
            self.namespaces,
            policies,
        );
        snapshot.set_policy_errors(policy_errors);
        Ok(snapshot)
    }
}

/// A Service's port as the data path reads it.
pub(super) fn service_port(p: &k8s::ServiceSpecPort) -> ServicePort {
    ServicePort {
        name: p.name.clone(),
        port: p.port,
        app_protocol: p.app_protocol.clone(),
        target: match &p.target {
            PortRef::Number(n) => TargetPort::Number(*n),
            PortRef::Name(n) => TargetPort::Name(n.clone()),
        },
    }
}

/// Builds the policy index; of the errors seen while adding, keeps those the
/// engine still enforces (a later object with the same name replaces an
/// invalid one).
pub(super) fn index_policies(
    policies: PolicySetBuilder,
    mut errors: Vec<PolicyIssue>,
) -> (Arc<PolicySet>, Vec<PolicyIssue>) {
    let policies = policies.build();
    errors.retain(|issue| policies.errors().contains(&issue.error));
    (Arc::new(policies), errors)
}

/// Records `claimant` as the holder of `ip`, or names both if another holds
/// it: an earlier claimant, or a pod of another node in `remote`.
/// Claims each of `ips` for `object`, as [`claim`] does one.
fn claim_all<'a>(
    owners: &mut HashMap<IpAddr, Owner<'a>>,
    remote: &'a AddressMap<Arc<Workload>>,
    ips: &[IpAddr],
    object: &str,
    origin: &'a Origin,
) -> Result<(), LoadError> {
    for ip in ips {
        claim(
            owners,
            Some(remote),
            *ip,
            Owner::Object(object.to_owned(), origin),
        )?;
    }
    Ok(())
}

fn claim<'a>(
    owners: &mut HashMap<IpAddr, Owner<'a>>,
    remote: Option<&'a AddressMap<Arc<Workload>>>,
    ip: IpAddr,
    claimant: Owner<'a>,
) -> Result<(), LoadError> {
    if let Some(pod) = remote.and_then(|r| r.get(&ip)) {
        let (object, origin) = claimant.describe();
        let (owner, owner_origin) = Owner::Remote(pod).describe();
        return Err(LoadError::DuplicateIp {
            origin,
            object,
            ip,
            owner,
            owner_origin,
        });
    }
    match owners.entry(ip) {
        Entry::Vacant(slot) => {
            slot.insert(claimant);
            Ok(())
        }
        Entry::Occupied(slot) => {
            let (object, origin) = claimant.describe();
            let (owner, owner_origin) = slot.get().describe();
            Err(LoadError::DuplicateIp {
                origin,
                object,
                ip,
                owner,
                owner_origin,
            })
        }
    }
}

/// What holds an address while a snapshot is validated.
enum Owner<'a> {
    /// An object of the input: its description and where it was read.
    Object(String, &'a Origin),
    /// A pod of another node: the workload of its identity group.
    Remote(&'a Workload),
}

impl Owner<'_> {
    fn describe(&self) -> (String, Origin) {
        match self {
            Owner::Object(object, origin) => (object.clone(), (*origin).clone()),
            Owner::Remote(group) => (
                format!(
                    "a Pod of {}/{} on another node",
                    group.namespace, group.name
                ),
                Origin {
                    file: Arc::from(Path::new("kubernetes")),
                    line: 0,
                },
            ),
        }
    }
}

/// Istio ambient's rule: a namespace opts its pods in, a pod may opt out with
/// `none`, or opt in by itself with `ambient`.
pub fn is_enrolled(
    namespace_labels: &BTreeMap<String, String>,
    pod_labels: &BTreeMap<String, String>,
) -> bool {
    enrolment(
        namespace_labels,
        pod_labels.get(DATAPLANE_MODE_LABEL).map(String::as_str),
    )
}

/// `is_enrolled` for a pod whose own `istio.io/dataplane-mode` is `pod_mode`.
pub(super) fn enrolment(
    namespace_labels: &BTreeMap<String, String>,
    pod_mode: Option<&str>,
) -> bool {
    match pod_mode {
        Some(MODE_NONE) => false,
        Some(MODE_AMBIENT) => true,
        _ => {
            namespace_labels
                .get(DATAPLANE_MODE_LABEL)
                .map(String::as_str)
                == Some(MODE_AMBIENT)
        }
    }
}

/// How errors name an object: `Kind namespace/name`.
pub(crate) fn describe_object(kind: &str, value: &Value) -> String {
    let meta = value.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str);
    match (kind, ns, name) {
        ("", _, _) => "object".to_owned(),
        (kind, Some(ns), Some(name)) => format!("{kind} {ns}/{name}"),
        (kind, None, Some(name)) => format!("{kind} {name}"),
        (kind, _, None) => kind.to_owned(),
    }
}

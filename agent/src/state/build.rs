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

use super::k8s::{self, FieldError, PortRef};
use super::remote::{RemoteGroups, RemotePod};
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
    /// Pods on other nodes, in compact form (see `state::remote`).
    remote_pods: Vec<RemotePod>,
    services: Vec<(Origin, k8s::Service)>,
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
            remote_pods: Vec::new(),
            services: Vec::new(),
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
            object: describe(kind, value),
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

    /// Adds a pod of another node, already reduced to what the agent needs
    /// of it. It is validated and published as a full pod would be, but
    /// shares one `Workload` with every pod of the same identity.
    pub fn add_remote_pod(&mut self, pod: RemotePod) {
        self.objects += 1;
        self.remote_pods.push(pod);
    }

    /// Number of objects seen so far, of any kind.
    pub fn object_count(&self) -> usize {
        self.objects
    }

    /// Validates the whole input and builds the indexed snapshot.
    pub fn build(self) -> Result<Snapshot, LoadError> {
        // Who holds each address. A remote pod is only named when it is in
        // a conflict: naming 150,000 of them up front would cost a string each.
        let mut owners: HashMap<IpAddr, Owner<'_>> =
            HashMap::with_capacity(self.pods.len() + self.remote_pods.len());

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
                claim(&mut owners, *ip, Owner::Object(object.clone(), origin))?;
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
                labels: pod.meta.labels.clone(),
            });
        }

        let mut groups = RemoteGroups::default();
        let mut remote = Vec::with_capacity(self.remote_pods.len());
        let mut published = 0;
        for pod in &self.remote_pods {
            let identity = &pod.identity;
            let Some(ns_labels) = self.namespaces.get(&*identity.namespace) else {
                let (object, origin) = Owner::Remote(pod).describe();
                return Err(LoadError::MissingNamespace {
                    origin,
                    object,
                    namespace: identity.namespace.to_string(),
                });
            };
            let Some(ips) = pod.ips.as_ref().filter(|_| pod.captured) else {
                continue;
            };
            let workload = groups.workload(identity, ns_labels);
            published += 1;
            for ip in ips.as_slice() {
                claim(&mut owners, *ip, Owner::Remote(pod))?;
                remote.push((*ip, workload.clone()));
            }
        }
        drop(groups);

        let mut slices: HashMap<(&str, &str), Vec<&k8s::EndpointSlice>> = HashMap::new();
        for slice in &self.slices {
            if let Some(svc) = &slice.service {
                slices
                    .entry((slice.meta.namespace.as_str(), svc.as_str()))
                    .or_default()
                    .push(slice);
            }
        }

        let mut services = Vec::new();
        for (origin, svc) in &self.services {
            let object = format!("Service {}/{}", svc.meta.namespace, svc.meta.name);
            for vip in &svc.vips {
                claim(&mut owners, *vip, Owner::Object(object.clone(), origin))?;
            }
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
            services.push(Service::new(
                svc.meta.name.clone(),
                svc.meta.namespace.clone(),
                svc.vips.clone(),
                svc.ports
                    .iter()
                    .map(|p| ServicePort {
                        name: p.name.clone(),
                        port: p.port,
                        app_protocol: p.app_protocol.clone(),
                        target: match &p.target {
                            PortRef::Number(n) => TargetPort::Number(*n),
                            PortRef::Name(n) => TargetPort::Name(n.clone()),
                        },
                    })
                    .collect(),
                endpoints,
            ));
        }

        let policies = self.policies.build();
        // A later object with the same name replaces an invalid one; report
        // only the errors the engine still enforces.
        let mut policy_errors = self.policy_errors;
        policy_errors.retain(|issue| policies.errors().contains(&issue.error));
        let mut snapshot = Snapshot::with_remote(
            workloads,
            remote,
            published,
            services,
            self.namespaces,
            policies,
        );
        snapshot.set_policy_errors(policy_errors);
        Ok(snapshot)
    }
}

/// Records `claimant` as the holder of `ip`, or names both if another holds it.
fn claim<'a>(
    owners: &mut HashMap<IpAddr, Owner<'a>>,
    ip: IpAddr,
    claimant: Owner<'a>,
) -> Result<(), LoadError> {
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
    Remote(&'a RemotePod),
}

impl Owner<'_> {
    fn describe(&self) -> (String, Origin) {
        match self {
            Owner::Object(object, origin) => (object.clone(), (*origin).clone()),
            Owner::Remote(pod) => (
                format!(
                    "a Pod of {}/{} on another node",
                    pod.identity.namespace, pod.identity.workload
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

fn describe(kind: &str, value: &Value) -> String {
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

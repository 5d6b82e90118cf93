//! Decoding the Kubernetes objects the state is built from (Namespace, Pod,
//! Service, EndpointSlice) out of the JSON values the policy crate's document
//! splitter yields.
//!
//! Only the fields the agent uses are read, so `kubectl get -o yaml` output with
//! its managed fields and status noise decodes as well as a hand-written file.
//! Every error names the field it is about, so a user can find it in the file.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::Value;

/// Why an object could not be decoded; the caller adds file, line and object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

impl FieldError {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// `metadata` common to every kind.
#[derive(Debug, Clone)]
pub struct Meta {
    pub name: String,
    pub namespace: String,
    pub uid: Option<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Pod {
    pub meta: Meta,
    pub node: Option<String>,
    pub service_account: String,
    pub host_network: bool,
    /// Istio injected a sidecar (the `sidecar.istio.io/status` annotation).
    pub has_sidecar: bool,
    /// `status.phase`; hand-written state may leave it out.
    pub phase: Option<String>,
    pub ips: Vec<IpAddr>,
    /// Named container ports, for Services whose targetPort is a name.
    pub named_ports: Vec<(String, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone)]
pub struct ServiceSpecPort {
    pub name: Option<String>,
    pub port: u16,
    pub target: PortRef,
    /// `appProtocol`: what decides whether the port is HTTP (see `l7`).
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub meta: Meta,
    pub vips: Vec<IpAddr>,
    /// TCP ports only: the agent carries nothing else.
    pub ports: Vec<ServiceSpecPort>,
    pub selector: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone)]
pub struct SliceEndpoint {
    pub ips: Vec<IpAddr>,
    pub ready: bool,
}

#[derive(Debug, Clone)]
pub struct EndpointSlice {
    pub meta: Meta,
    /// The `kubernetes.io/service-name` label.
    pub service: Option<String>,
    pub endpoints: Vec<SliceEndpoint>,
    pub ports: Vec<(Option<String>, u16)>,
}

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Set by Istio's sidecar injector on pods that carry a sidecar proxy.
const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";

// === field access ===

fn field<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(v, |v, key| v.get(key))
        .filter(|v| !v.is_null())
}

fn opt_str<'a>(v: &'a Value, path: &str) -> Result<Option<&'a str>, FieldError> {
    match field(v, path) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(FieldError::new(
            path,
            format!("expected a string, found {other}"),
        )),
    }
}

fn opt_bool(v: &Value, path: &str) -> Result<Option<bool>, FieldError> {
    match field(v, path) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(FieldError::new(
            path,
            format!("expected true or false, found {other}"),
        )),
    }
}

fn opt_array<'a>(v: &'a Value, path: &str) -> Result<&'a [Value], FieldError> {
    match field(v, path) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(FieldError::new(
            path,
            format!("expected a list, found {other}"),
        )),
    }
}

fn string_map(v: &Value, path: &str) -> Result<BTreeMap<String, String>, FieldError> {
    match field(v, path) {
        None => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, val)| match val {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(FieldError::new(
                    format!("{path}.{k}"),
                    format!("expected a string, found {other} (quote it in YAML)"),
                )),
            })
            .collect(),
        Some(other) => Err(FieldError::new(
            path,
            format!("expected a map, found {other}"),
        )),
    }
}

fn port(v: &Value, path: &str) -> Result<u16, FieldError> {
    v.as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n != 0)
        .ok_or_else(|| FieldError::new(path, format!("{v} is not a port number (1-65535)")))
}

fn ip(v: &Value, path: &str) -> Result<IpAddr, FieldError> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| FieldError::new(path, format!("{v} is not an IP address")))
}

fn push_unique(ips: &mut Vec<IpAddr>, ip: IpAddr) {
    if !ips.contains(&ip) {
        ips.push(ip);
    }
}

// === decoding ===

/// `metadata.name` is required; a missing namespace means `default`, as
/// `kubectl apply` would place the object.
pub fn meta(v: &Value) -> Result<Meta, FieldError> {
    let name = opt_str(v, "metadata.name")?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| FieldError::new("metadata.name", "missing"))?;
    Ok(Meta {
        name: name.to_owned(),
        namespace: opt_str(v, "metadata.namespace")?
            .unwrap_or("default")
            .to_owned(),
        uid: opt_str(v, "metadata.uid")?.map(str::to_owned),
        labels: string_map(v, "metadata.labels")?,
    })
}

pub fn namespace(v: &Value) -> Result<Namespace, FieldError> {
    let meta = meta(v)?;
    Ok(Namespace {
        name: meta.name,
        labels: meta.labels,
    })
}

pub fn pod(v: &Value) -> Result<Pod, FieldError> {
    let meta = meta(v)?;
    let mut ips = Vec::new();
    if let Some(s) = field(v, "status.podIP") {
        push_unique(&mut ips, ip(s, "status.podIP")?);
    }
    for (i, entry) in opt_array(v, "status.podIPs")?.iter().enumerate() {
        let path = format!("status.podIPs[{i}].ip");
        let s = field(entry, "ip").ok_or_else(|| FieldError::new(&path, "missing"))?;
        push_unique(&mut ips, ip(s, &path)?);
    }
    let mut named_ports = Vec::new();
    for (c, container) in opt_array(v, "spec.containers")?.iter().enumerate() {
        for (p, entry) in opt_array(container, "ports")?.iter().enumerate() {
            let path = format!("spec.containers[{c}].ports[{p}]");
            let Some(name) = opt_str(entry, "name").map_err(|e| nest(&path, e))? else {
                continue;
            };
            let number = field(entry, "containerPort")
                .ok_or_else(|| FieldError::new(format!("{path}.containerPort"), "missing"))?;
            named_ports.push((
                name.to_owned(),
                port(number, &format!("{path}.containerPort"))?,
            ));
        }
    }
    Ok(Pod {
        meta,
        node: opt_str(v, "spec.nodeName")?.map(str::to_owned),
        service_account: opt_str(v, "spec.serviceAccountName")?
            .or(opt_str(v, "spec.serviceAccount")?)
            .unwrap_or("default")
            .to_owned(),
        host_network: opt_bool(v, "spec.hostNetwork")?.unwrap_or(false),
        // Annotation keys hold dots, so no dotted path here.
        has_sidecar: v
            .get("metadata")
            .and_then(|m| m.get("annotations"))
            .and_then(|a| a.get(SIDECAR_STATUS_ANNOTATION))
            .is_some(),
        phase: opt_str(v, "status.phase")?.map(str::to_owned),
        ips,
        named_ports,
    })
}

pub fn service(v: &Value) -> Result<Service, FieldError> {
    let meta = meta(v)?;
    let mut vips = Vec::new();
    if opt_str(v, "spec.type")? != Some("ExternalName") {
        let single = field(v, "spec.clusterIP").map(|s| (s, "spec.clusterIP".to_owned()));
        let many = opt_array(v, "spec.clusterIPs")?
            .iter()
            .enumerate()
            .map(|(i, s)| (s, format!("spec.clusterIPs[{i}]")));
        for (s, path) in single.into_iter().chain(many) {
            // Headless services have no VIP; their pods are reached by pod IP.
            if matches!(s.as_str(), Some("None" | "")) {
                continue;
            }
            push_unique(&mut vips, ip(s, &path)?);
        }
    }
    let mut ports = Vec::new();
    for (i, entry) in opt_array(v, "spec.ports")?.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let protocol = opt_str(entry, "protocol").map_err(|e| nest(&path, e))?;
        if protocol.is_some_and(|p| p != "TCP") {
            continue;
        }
        let number = field(entry, "port")
            .ok_or_else(|| FieldError::new(format!("{path}.port"), "missing"))?;
        let number = port(number, &format!("{path}.port"))?;
        let target = match field(entry, "targetPort") {
            None => PortRef::Number(number),
            Some(Value::String(name)) => match name.parse::<u16>() {
                // Kubernetes accepts "8080" (an IntOrString holding digits) as a number.
                Ok(n) if n != 0 => PortRef::Number(n),
                _ if !name.is_empty() => PortRef::Name(name.clone()),
                _ => {
                    return Err(FieldError::new(format!("{path}.targetPort"), "is empty"));
                }
            },
            Some(n) => PortRef::Number(port(n, &format!("{path}.targetPort"))?),
        };
        ports.push(ServiceSpecPort {
            name: opt_str(entry, "name")
                .map_err(|e| nest(&path, e))?
                .map(str::to_owned),
            port: number,
            target,
            app_protocol: opt_str(entry, "appProtocol")
                .map_err(|e| nest(&path, e))?
                .map(str::to_owned),
        });
    }
    let selector = match field(v, "spec.selector") {
        None => None,
        Some(_) => Some(string_map(v, "spec.selector")?),
    };
    Ok(Service {
        meta,
        vips,
        ports,
        selector,
    })
}

pub fn endpoint_slice(v: &Value) -> Result<EndpointSlice, FieldError> {
    let meta = meta(v)?;
    let service = meta.labels.get(SERVICE_NAME_LABEL).cloned();
    // FQDN slices name hosts, not addresses; the agent only routes to IPs.
    let fqdn = opt_str(v, "addressType")? == Some("FQDN");
    let mut endpoints = Vec::new();
    for (i, entry) in opt_array(v, "endpoints")?.iter().enumerate() {
        if fqdn {
            break;
        }
        let path = format!("endpoints[{i}]");
        let ips = opt_array(entry, "addresses")
            .map_err(|e| nest(&path, e))?
            .iter()
            .enumerate()
            .map(|(j, a)| ip(a, &format!("{path}.addresses[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        // An unset `ready` means unknown, which consumers treat as ready.
        let ready = opt_bool(entry, "conditions.ready")
            .map_err(|e| nest(&path, e))?
            .unwrap_or(true);
        endpoints.push(SliceEndpoint { ips, ready });
    }
    let mut ports = Vec::new();
    for (i, entry) in opt_array(v, "ports")?.iter().enumerate() {
        let path = format!("ports[{i}]");
        let protocol = opt_str(entry, "protocol").map_err(|e| nest(&path, e))?;
        if protocol.is_some_and(|p| p != "TCP") {
            continue;
        }
        let Some(number) = field(entry, "port") else {
            continue;
        };
        ports.push((
            opt_str(entry, "name")
                .map_err(|e| nest(&path, e))?
                .map(str::to_owned),
            port(number, &format!("{path}.port"))?,
        ));
    }
    Ok(EndpointSlice {
        meta,
        service,
        endpoints,
        ports,
    })
}

fn nest(prefix: &str, e: FieldError) -> FieldError {
    FieldError::new(format!("{prefix}.{}", e.field), e.problem)
}

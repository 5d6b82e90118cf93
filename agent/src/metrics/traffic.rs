//! Istio's standard TCP metrics (`istio_tcp_*`) and the label set they carry.
//!
//! Label names and value conventions follow Istio so existing dashboards work
//! unchanged: a value the agent does not know is `"unknown"`, `reporter` is
//! `source` on the client-side agent and `destination` on the server-side one,
//! and the byte counters are named from the reporter's point of view of the
//! request: "received" is client-to-server, "sent" is server-to-client.

use std::fmt::Write as _;
use std::net::SocketAddr;

use ambit_ca::SpiffeId;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::state::{Service, Workload};

/// What Istio prints for a label the reporter cannot fill.
pub const UNKNOWN: &str = "unknown";

/// Which end of the connection this agent stands on.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The agent of the client pod (outbound, 15001).
    Source,
    /// The agent of the server pod (inbound, 15008 and 15006).
    Destination,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

/// Whether the connection travelled inside mutual TLS.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SecurityPolicy {
    /// HBONE: both ends proved a SPIFFE identity.
    MutualTls,
    /// Plaintext (15006 inbound, or outbound to a destination outside the mesh).
    None,
}

impl SecurityPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MutualTls => "mutual_tls",
            Self::None => "none",
        }
    }
}

impl EncodeLabelValue for SecurityPolicy {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

/// Istio's `response_flags` values for TCP connections, as ztunnel reports
/// them: `-` for a connection carried, `DENY` for one refused by
/// authorization, `CONNECT` for one whose upstream could not be reached.
/// The flag is known only once the connection was decided, so, as in
/// ztunnel, `connections_opened` and the byte counters carry `-` and only
/// `connections_closed` carries the final flag.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub enum ResponseFlags {
    #[default]
    None,
    /// Refused by an authorization policy (or by a policy change later on).
    Deny,
    /// The destination (pod or peer agent) could not be reached.
    Connect,
}

impl ResponseFlags {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "-",
            Self::Deny => "DENY",
            Self::Connect => "CONNECT",
        }
    }
}

impl EncodeLabelValue for ResponseFlags {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

/// The labels of every `istio_tcp_*` series, resolved once per connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: String,
    pub response_flags: ResponseFlags,
    pub connection_security_policy: SecurityPolicy,
}

/// One end of a connection as the labels describe it.
struct PeerLabels {
    workload: String,
    canonical_service: String,
    canonical_revision: String,
    namespace: String,
    principal: String,
    app: String,
    version: String,
    cluster: String,
}

impl PeerLabels {
    fn new(workload: Option<&Workload>, identity: Option<&SpiffeId>, cluster: &str) -> Self {
        let unknown = || UNKNOWN.to_string();
        let label = |keys: &[&str]| {
            workload.and_then(|w| keys.iter().find_map(|k| w.labels.get(k).cloned()))
        };
        // Istio's canonical service falls back through the well-known labels to
        // the workload name; the revision to "latest".
        let canonical_service = label(&[
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ])
        .or_else(|| workload.map(|w| w.name.clone()));
        let canonical_revision = label(&[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ])
        .or_else(|| workload.map(|_| "latest".to_string()));
        Self {
            workload: workload.map(|w| w.name.clone()).unwrap_or_else(unknown),
            canonical_service: canonical_service.clone().unwrap_or_else(unknown),
            canonical_revision: canonical_revision.clone().unwrap_or_else(unknown),
            namespace: workload
                .map(|w| w.namespace.clone())
                .or_else(|| identity.map(|id| id.namespace().to_string()))
                .unwrap_or_else(unknown),
            principal: identity.map(|id| id.to_string()).unwrap_or_else(unknown),
            app: canonical_service.unwrap_or_else(unknown),
            version: canonical_revision.unwrap_or_else(unknown),
            cluster: workload
                .map(|_| cluster.to_string())
                .unwrap_or_else(unknown),
        }
    }
}

/// Everything known about a connection when it is accepted or opened. Start from
/// [`ConnectionOpen::new`] and fill what the handler knows; the rest is "unknown".
#[derive(Clone, Copy, Debug)]
pub struct ConnectionOpen<'a> {
    pub reporter: Reporter,
    /// The client's address as the agent saw it (the pod IP, or the peer agent's for HBONE).
    pub client_addr: SocketAddr,
    /// The address the client dialled (pod or service VIP, port included).
    pub destination_addr: SocketAddr,
    pub source_workload: Option<&'a Workload>,
    /// The peer's proven identity; `None` for plaintext.
    pub source_identity: Option<&'a SpiffeId>,
    pub destination_workload: Option<&'a Workload>,
    pub destination_identity: Option<&'a SpiffeId>,
    /// The service whose VIP the client dialled, if it dialled one.
    pub destination_service: Option<&'a Service>,
    pub security: SecurityPolicy,
}

impl<'a> ConnectionOpen<'a> {
    /// A plaintext connection between addresses with no known workloads.
    pub fn new(reporter: Reporter, client_addr: SocketAddr, destination_addr: SocketAddr) -> Self {
        Self {
            reporter,
            client_addr,
            destination_addr,
            source_workload: None,
            source_identity: None,
            destination_workload: None,
            destination_identity: None,
            destination_service: None,
            security: SecurityPolicy::None,
        }
    }
}

impl TrafficLabels {
    /// Resolves the label set; `cluster` is the cluster id (Istio's default `Kubernetes`)
    /// and `dns_suffix` the service domain (`cluster.local`).
    pub fn new(ends: &ConnectionOpen<'_>, cluster: &str, dns_suffix: &str) -> Self {
        let src = PeerLabels::new(ends.source_workload, ends.source_identity, cluster);
        let dst = PeerLabels::new(
            ends.destination_workload,
            ends.destination_identity,
            cluster,
        );
        let (service, service_namespace, service_name) = match ends.destination_service {
            Some(svc) => (
                service_hostname(svc, dns_suffix),
                svc.namespace.clone(),
                svc.name.clone(),
            ),
            None => (UNKNOWN.into(), UNKNOWN.into(), UNKNOWN.into()),
        };
        Self {
            reporter: ends.reporter,
            source_workload: src.workload,
            source_canonical_service: src.canonical_service,
            source_canonical_revision: src.canonical_revision,
            source_workload_namespace: src.namespace,
            source_principal: src.principal,
            source_app: src.app,
            source_version: src.version,
            source_cluster: src.cluster,
            destination_service: service,
            destination_service_namespace: service_namespace,
            destination_service_name: service_name,
            destination_workload: dst.workload,
            destination_canonical_service: dst.canonical_service,
            destination_canonical_revision: dst.canonical_revision,
            destination_workload_namespace: dst.namespace,
            destination_principal: dst.principal,
            destination_app: dst.app,
            destination_version: dst.version,
            destination_cluster: dst.cluster,
            request_protocol: "tcp".into(),
            response_flags: ResponseFlags::None,
            connection_security_policy: ends.security,
        }
    }
}

/// `<name>.<namespace>.svc.<dns suffix>`.
pub(super) fn service_hostname(svc: &Service, dns_suffix: &str) -> String {
    let mut fqdn =
        String::with_capacity(svc.name.len() + svc.namespace.len() + 6 + dns_suffix.len());
    let _ = write!(fqdn, "{}.{}.svc.{}", svc.name, svc.namespace, dns_suffix);
    fqdn
}

/// The four `istio_tcp_*` counter families.
#[derive(Clone, Debug, Default)]
pub struct TrafficMetrics {
    pub connections_opened: Family<TrafficLabels, Counter>,
    pub connections_closed: Family<TrafficLabels, Counter>,
    pub sent_bytes: Family<TrafficLabels, Counter>,
    pub received_bytes: Family<TrafficLabels, Counter>,
}

impl TrafficMetrics {
    /// Registers the families in `registry`, which is expected to carry the `istio` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "tcp_connections_opened",
            "Total TCP connections opened",
            m.connections_opened.clone(),
        );
        registry.register(
            "tcp_connections_closed",
            "Total TCP connections closed",
            m.connections_closed.clone(),
        );
        registry.register(
            "tcp_sent_bytes",
            "Bytes sent to the client (server to client) on TCP connections",
            m.sent_bytes.clone(),
        );
        registry.register(
            "tcp_received_bytes",
            "Bytes received from the client (client to server) on TCP connections",
            m.received_bytes.clone(),
        );
        m
    }
}

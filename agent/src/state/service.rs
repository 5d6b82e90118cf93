//! Services: virtual IPs and ports, and the endpoints behind them.
//!
//! Endpoints are held in groups that share their port numbers (one
//! EndpointSlice's, or one selected pod's), ready addresses first, and the
//! group is the same allocation the Kubernetes source keeps for the slice.
//! A service port's ready endpoints are then the ready prefix of each group
//! that resolves the port, so 150,000 endpoints cost one address each
//! rather than an endpoint record plus a socket address per port, and
//! choosing an endpoint on the data path is still an index and an atomic
//! increment.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Workload;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A named container port; the endpoint says which number it is.
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub target: TargetPort,
    /// `appProtocol`, as the Service declares it.
    pub app_protocol: Option<String>,
}

/// Service port name -> target port number, as an EndpointSlice lists them.
pub type EndpointPorts = Arc<[(Option<String>, u16)]>;

/// Endpoints that share their port numbers. Cheap to clone: a slice's group
/// is shared by the source that decoded it and every `Service` built from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointGroup {
    /// Ready addresses first, each part in input order.
    addresses: Arc<[IpAddr]>,
    ready: usize,
    ports: EndpointPorts,
}

impl EndpointGroup {
    pub fn new(addresses: impl IntoIterator<Item = (IpAddr, bool)>, ports: EndpointPorts) -> Self {
        let (ready, unready): (Vec<_>, Vec<_>) =
            addresses.into_iter().partition(|(_, ready)| *ready);
        let count = ready.len();
        let addresses = ready.into_iter().chain(unready).map(|(ip, _)| ip).collect();
        Self {
            addresses,
            ready: count,
            ports,
        }
    }

    /// Every address with its readiness, ready ones first.
    pub fn endpoints(&self) -> impl Iterator<Item = (IpAddr, bool)> + '_ {
        self.addresses
            .iter()
            .enumerate()
            .map(|(i, ip)| (*ip, i < self.ready))
    }

    pub fn ready(&self) -> &[IpAddr] {
        self.addresses.get(..self.ready).unwrap_or_default()
    }

    pub fn ports(&self) -> &[(Option<String>, u16)] {
        &self.ports
    }

    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }

    /// The endpoints' port for a service port: EndpointSlices key their
    /// ports by the service port's name; a numeric targetPort needs no
    /// lookup.
    fn target_port(&self, sp: &ServicePort) -> Option<u16> {
        let listed = self
            .ports
            .iter()
            .find(|(name, _)| *name == sp.name)
            .map(|(_, n)| *n);
        match (&sp.target, listed) {
            (_, Some(n)) => Some(n),
            (TargetPort::Number(n), None) => Some(*n),
            (TargetPort::Name(_), None) => None,
        }
    }
}

/// Where one service port's traffic can go.
#[derive(Debug, Default)]
struct PortTargets {
    /// Each group that resolves the port, with the port it resolves to.
    groups: Box<[(usize, u16)]>,
    /// Ready endpoints over those groups.
    ready: usize,
}

#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    groups: Vec<EndpointGroup>,
    /// Per entry of `ports`.
    targets: Vec<PortTargets>,
    /// Round-robin cursor over ready endpoints.
    next: AtomicUsize,
}

/// Where a connection to a service VIP goes.
#[derive(Clone, Debug)]
pub struct ServiceTarget {
    pub addr: SocketAddr,
    /// The endpoint's workload, when it is a pod the state knows.
    pub workload: Option<Arc<Workload>>,
}

impl Service {
    pub fn new(
        name: String,
        namespace: String,
        vips: Vec<IpAddr>,
        ports: Vec<ServicePort>,
        groups: Vec<EndpointGroup>,
    ) -> Self {
        let targets = ports
            .iter()
            .map(|sp| {
                let resolved: Box<[(usize, u16)]> = groups
                    .iter()
                    .enumerate()
                    .filter_map(|(i, g)| Some((i, g.target_port(sp)?)))
                    .collect();
                let ready = resolved.iter().map(|(i, _)| groups[*i].ready).sum();
                PortTargets {
                    groups: resolved,
                    ready,
                }
            })
            .collect();
        Self {
            name,
            namespace,
            vips,
            ports,
            groups,
            targets,
            next: AtomicUsize::new(0),
        }
    }

    /// Every endpoint address with its readiness.
    pub fn endpoints(&self) -> impl Iterator<Item = (IpAddr, bool)> + '_ {
        self.groups.iter().flat_map(EndpointGroup::endpoints)
    }

    pub fn groups(&self) -> &[EndpointGroup] {
        &self.groups
    }

    fn targets(&self, port: u16) -> Option<&PortTargets> {
        let index = self.ports.iter().position(|p| p.port == port)?;
        self.targets.get(index)
    }

    /// Picks a ready endpoint for `port` (round robin) and resolves the target port.
    pub fn pick(&self, port: u16) -> Option<(IpAddr, u16)> {
        let targets = self.targets(port)?;
        if targets.ready == 0 {
            return None;
        }
        let mut i = self.next.fetch_add(1, Ordering::Relaxed) % targets.ready;
        for &(group, target) in &targets.groups {
            let ready = self.groups.get(group)?.ready();
            match ready.get(i) {
                Some(ip) => return Some((*ip, target)),
                None => i -= ready.len(),
            }
        }
        None
    }

    /// The ready endpoint addresses behind `port`, target port resolved.
    pub fn ready_endpoints(&self, port: u16) -> impl Iterator<Item = SocketAddr> + '_ {
        self.targets(port)
            .into_iter()
            .flat_map(|t| t.groups.iter())
            .flat_map(|&(group, target)| {
                self.groups[group]
                    .ready()
                    .iter()
                    .map(move |ip| SocketAddr::new(*ip, target))
            })
    }

    /// Whether `addr` is a ready endpoint of one of the ports.
    pub fn serves(&self, addr: SocketAddr) -> bool {
        self.targets.iter().any(|t| self.serves_in(t, addr))
    }

    /// Whether `addr` is a ready endpoint of `port`.
    pub fn serves_on(&self, port: u16, addr: SocketAddr) -> bool {
        self.targets(port).is_some_and(|t| self.serves_in(t, addr))
    }

    fn serves_in(&self, targets: &PortTargets, addr: SocketAddr) -> bool {
        targets.groups.iter().any(|&(group, target)| {
            target == addr.port() && self.groups[group].ready().contains(&addr.ip())
        })
    }

    /// Whether `host` names this Service: `<name>.<namespace>.svc.<domain>`,
    /// whatever the cluster domain.
    pub fn has_hostname(&self, host: &str) -> bool {
        host.strip_prefix(self.name.as_str())
            .and_then(|h| h.strip_prefix('.'))
            .and_then(|h| h.strip_prefix(self.namespace.as_str()))
            .and_then(|h| h.strip_prefix(".svc."))
            .is_some_and(|domain| !domain.is_empty())
    }

    /// `namespace/name`, the form logs and metrics use.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

//! Services: virtual IPs and ports, and the endpoints behind them.
//!
//! The ready endpoints of every service port are resolved once, when the
//! snapshot is built, so choosing an endpoint on the data path is an index and
//! an atomic increment.

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub ready: bool,
    /// Service port name -> target port number, as an EndpointSlice lists
    /// them; shared by the endpoints of one slice (150,000 endpoints hold a
    /// few thousand lists).
    pub ports: Arc<[(Option<String>, u16)]>,
}

#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<Endpoint>,
    /// Per entry of `ports`: the ready endpoint addresses, target port resolved.
    ready: Vec<Vec<SocketAddr>>,
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
        endpoints: Vec<Endpoint>,
    ) -> Self {
        let ready = ports
            .iter()
            .map(|sp| {
                endpoints
                    .iter()
                    .filter(|e| e.ready)
                    .filter_map(|e| Some(SocketAddr::new(e.ip, target_port(sp, e)?)))
                    .collect()
            })
            .collect();
        Self {
            name,
            namespace,
            vips,
            ports,
            endpoints,
            ready,
            next: AtomicUsize::new(0),
        }
    }

    /// Picks a ready endpoint for `port` (round robin) and resolves the target port.
    pub fn pick(&self, port: u16) -> Option<(IpAddr, u16)> {
        let index = self.ports.iter().position(|p| p.port == port)?;
        let candidates = self.ready.get(index)?;
        if candidates.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
        candidates.get(i).map(|a| (a.ip(), a.port()))
    }

    /// The ready endpoint addresses behind `port`, target port resolved.
    pub fn ready_endpoints(&self, port: u16) -> &[SocketAddr] {
        self.ports
            .iter()
            .position(|p| p.port == port)
            .and_then(|i| self.ready.get(i))
            .map_or(&[], Vec::as_slice)
    }

    /// Whether `addr` is a ready endpoint of one of the ports.
    pub fn serves(&self, addr: SocketAddr) -> bool {
        self.ready.iter().any(|r| r.contains(&addr))
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

/// The endpoint's port for a service port: EndpointSlices key their ports by
/// the service port's name; a numeric targetPort needs no lookup.
fn target_port(sp: &ServicePort, endpoint: &Endpoint) -> Option<u16> {
    let listed = endpoint
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

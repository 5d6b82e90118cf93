//! Services: virtual IPs and ports, and the endpoints behind them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Workload;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A named container port, resolved through the endpoint's named ports.
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub target: TargetPort,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub ready: bool,
    /// Port name -> port number, from the EndpointSlice.
    pub ports: Vec<(Option<String>, u16)>,
}

#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<Endpoint>,
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
        Self {
            name,
            namespace,
            vips,
            ports,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// Picks a ready endpoint for `port` (round robin) and resolves the target port.
    pub fn pick(&self, port: u16) -> Option<(IpAddr, u16)> {
        let sp = self.ports.iter().find(|p| p.port == port)?;
        let candidates: Vec<(IpAddr, u16)> = self
            .endpoints
            .iter()
            .filter(|e| e.ready)
            .filter_map(|e| {
                let target = match &sp.target {
                    TargetPort::Number(n) => Some(*n),
                    TargetPort::Name(name) => e
                        .ports
                        .iter()
                        .find(|(n, _)| n.as_deref() == Some(name.as_str()))
                        .map(|(_, p)| *p),
                }?;
                Some((e.ip, target))
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
        Some(candidates[i])
    }
}

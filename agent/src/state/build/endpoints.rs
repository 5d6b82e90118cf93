//! The endpoints behind a Service: from its EndpointSlices, or, when the
//! input has none for it, from the running pods its selector picks (what the
//! EndpointSlice controller would have written), so hand-written state can
//! leave slices out.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::state::Endpoint;
use crate::state::k8s::{self, PortRef};

pub(super) fn slice_endpoints(slices: &[&k8s::EndpointSlice]) -> Vec<Endpoint> {
    slices
        .iter()
        .flat_map(|slice| {
            let ports: Arc<[(Option<String>, u16)]> = slice.ports.as_slice().into();
            slice.endpoints.iter().flat_map(move |ep| {
                let ports = ports.clone();
                ep.ips.iter().map(move |ip| Endpoint {
                    ip: *ip,
                    ready: ep.ready,
                    ports: ports.clone(),
                })
            })
        })
        .collect()
}

pub(super) fn selected_endpoints(
    pods: &[&k8s::Pod],
    selector: &BTreeMap<String, String>,
    ports: &[k8s::ServiceSpecPort],
) -> Vec<Endpoint> {
    // An empty selector selects nothing for Services (unlike label queries).
    if selector.is_empty() {
        return Vec::new();
    }
    let selected = pods.iter().filter(|pod| {
        selector
            .iter()
            .all(|(k, v)| pod.meta.labels.get(k) == Some(v))
    });
    selected
        .flat_map(|pod| {
            let ports: Arc<[(Option<String>, u16)]> = ports
                .iter()
                .filter_map(|p| {
                    let number = match &p.target {
                        PortRef::Number(n) => *n,
                        PortRef::Name(name) => pod.named_ports.iter().find(|(n, _)| n == name)?.1,
                    };
                    // Keyed by the Service port's name, as EndpointSlices are.
                    Some((p.name.clone(), number))
                })
                .collect();
            pod.ips.iter().map(move |ip| Endpoint {
                ip: *ip,
                ready: true,
                ports: ports.clone(),
            })
        })
        .collect()
}

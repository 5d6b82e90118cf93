//! The endpoints behind a Service: from its EndpointSlices, or, when the
//! input has none for it, from the running pods its selector picks (what the
//! EndpointSlice controller would have written), so hand-written state can
//! leave slices out.

use std::collections::BTreeMap;

use crate::state::EndpointGroup;
use crate::state::k8s::{self, PortRef};

/// One group per slice.
pub(super) fn slice_endpoints(slices: &[&k8s::EndpointSlice]) -> Vec<EndpointGroup> {
    slices
        .iter()
        .map(|slice| {
            let addresses = slice
                .endpoints
                .iter()
                .flat_map(|ep| ep.ips.iter().map(|ip| (*ip, ep.ready)));
            EndpointGroup::new(addresses, slice.ports.as_slice().into())
        })
        .collect()
}

/// One group per selected pod: a named targetPort can resolve differently
/// on each.
pub(super) fn selected_endpoints(
    pods: &[&k8s::Pod],
    selector: &BTreeMap<String, String>,
    ports: &[k8s::ServiceSpecPort],
) -> Vec<EndpointGroup> {
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
        .map(|pod| {
            let ports = ports
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
            EndpointGroup::new(pod.ips.iter().map(|ip| (*ip, true)), ports)
        })
        .collect()
}

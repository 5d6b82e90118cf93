//! Small Kubernetes objects the state tests apply to the fake API server, in
//! the shape an API server serves them.

use serde_json::{Value, json};

/// A Namespace, enrolled in the mesh or not.
pub fn namespace(name: &str, ambient: bool) -> Value {
    let labels = if ambient {
        json!({ "istio.io/dataplane-mode": "ambient" })
    } else {
        json!({})
    };
    json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name, "labels": labels } })
}

/// A ClusterIP Service with one port, 80, whose target is the pods' `http`
/// port.
pub fn service(ns: &str, name: &str, vip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": ns },
        "spec": {
            "clusterIP": vip, "clusterIPs": [vip],
            "ports": [{ "name": "http", "port": 80, "targetPort": "http", "protocol": "TCP" }],
        },
    })
}

/// The EndpointSlice of `service`: `ips`, each ready, with `http` on 8080.
pub fn endpoint_slice(ns: &str, service: &str, ips: &[&str]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({ "addresses": [ip], "conditions": { "ready": true } }))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-abcde"), "namespace": ns,
            "labels": { "kubernetes.io/service-name": service },
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
    })
}

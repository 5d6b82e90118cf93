//! Compact remote pods decide exactly as full pods do: over generated
//! clusters (namespaces in and out of the mesh, pods on three nodes with
//! opt-outs, sidecars, host networking, terminating pods whose IP was
//! reused, and random ALLOW and DENY policies), the snapshot of a source
//! scoped to one node and the snapshot of an unscoped source answer every
//! address with the same identity and enrolment, and every connection to
//! the node's pods with the same decision.

use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::super::cache::{Caches, Kind};
use crate::authz::AuthzError;
use crate::state::{LoadOptions, Snapshot};

pub(super) const NODES: [&str; 3] = ["node-0", "node-1", "node-2"];
pub(super) const NAMESPACES: [&str; 4] = ["istio-system", "apps", "web", "legacy"];
const ACCOUNTS: [&str; 3] = ["default", "api", "db"];
pub(super) const APPS: [&str; 3] = ["front", "back", "store"];

#[derive(Debug, Clone)]
pub(super) struct GenPod {
    namespace: usize,
    account: usize,
    app: usize,
    version: Option<u8>,
    node: Option<usize>,
    mode: Option<bool>,
    sidecar: bool,
    host_network: bool,
    phase: u8,
    /// Index into a small address pool, so some pods share an address.
    ip: u8,
    deleting: bool,
    created: u8,
    generated: bool,
}

pub(super) fn gen_pod() -> impl Strategy<Value = GenPod> {
    (
        (0..NAMESPACES.len(), 0..ACCOUNTS.len(), 0..APPS.len()),
        (prop::option::of(0..3u8), prop::option::of(0..NODES.len())),
        (prop::option::of(any::<bool>()), prop::bool::weighted(0.1)),
        (prop::bool::weighted(0.1), 0..6u8, 0..24u8),
        (prop::bool::weighted(0.15), 0..3u8, any::<bool>()),
    )
        .prop_map(
            |(
                (namespace, account, app),
                (version, node),
                (mode, sidecar),
                (host_network, phase, ip),
                (deleting, created, generated),
            )| GenPod {
                namespace,
                account,
                app,
                version,
                node,
                mode,
                sidecar,
                host_network,
                phase,
                ip,
                deleting,
                created,
                generated,
            },
        )
}

pub(super) fn pod_ip(i: u8) -> String {
    format!("10.0.0.{}", i + 1)
}

pub(super) fn pod_object(i: usize, p: &GenPod) -> Value {
    let app = APPS[p.app];
    let mut labels = json!({ "app": app, "pod-template-hash": "5d8f" });
    if let Some(v) = p.version {
        labels["version"] = json!(format!("v{v}"));
    }
    if let Some(ambient) = p.mode {
        labels["istio.io/dataplane-mode"] = json!(if ambient { "ambient" } else { "none" });
    }
    let mut metadata = json!({
        "name": format!("{app}-5d8f-{i}"), "namespace": NAMESPACES[p.namespace],
        "uid": format!("uid-{i}"), "labels": labels,
        "creationTimestamp": format!("2026-01-0{}T00:00:00Z", p.created + 1),
    });
    if p.generated {
        metadata["generateName"] = json!(format!("{app}-5d8f-"));
    }
    if p.deleting {
        metadata["deletionTimestamp"] = json!("2026-02-01T00:00:00Z");
    }
    if p.sidecar {
        metadata["annotations"] = json!({ "sidecar.istio.io/status": "{}" });
    }
    let mut spec =
        json!({ "serviceAccountName": ACCOUNTS[p.account], "hostNetwork": p.host_network });
    if let Some(n) = p.node {
        spec["nodeName"] = json!(NODES[n]);
    }
    // The scheduler sets the node before a pod can run.
    let phase = match p.node {
        Some(_) => [
            "Running",
            "Running",
            "Running",
            "Running",
            "Pending",
            "Succeeded",
        ][p.phase as usize],
        None => "Pending",
    };
    let ip = pod_ip(p.ip);
    json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec,
        "status": { "phase": phase, "podIP": ip, "podIPs": [{ "ip": ip }] },
    })
}

#[derive(Debug, Clone)]
pub(super) struct GenPolicy {
    namespace: usize,
    deny: bool,
    selector: Option<usize>,
    principal: Option<(usize, usize)>,
    from_namespace: Option<usize>,
    ip_block: Option<u8>,
    port: Option<bool>,
}

pub(super) fn gen_policy() -> impl Strategy<Value = GenPolicy> {
    (
        (
            0..NAMESPACES.len(),
            any::<bool>(),
            prop::option::of(0..APPS.len()),
        ),
        (
            prop::option::of((0..NAMESPACES.len(), 0..ACCOUNTS.len())),
            prop::option::of(0..NAMESPACES.len()),
        ),
        (prop::option::of(0..24u8), prop::option::of(any::<bool>())),
    )
        .prop_map(
            |((namespace, deny, selector), (principal, from_namespace), (ip_block, port))| {
                GenPolicy {
                    namespace,
                    deny,
                    selector,
                    principal,
                    from_namespace,
                    ip_block,
                    port,
                }
            },
        )
}

pub(super) fn policy_object(i: usize, p: &GenPolicy) -> Value {
    let mut source = json!({});
    if let Some((ns, sa)) = p.principal {
        source["principals"] = json!([format!(
            "cluster.local/ns/{}/sa/{}",
            NAMESPACES[ns], ACCOUNTS[sa]
        )]);
    }
    if let Some(ns) = p.from_namespace {
        source["namespaces"] = json!([NAMESPACES[ns]]);
    }
    if let Some(ip) = p.ip_block {
        source["ipBlocks"] = json!([format!("{}/32", pod_ip(ip))]);
    }
    let mut rule = json!({ "from": [{ "source": source }] });
    if let Some(http) = p.port {
        rule["to"] = json!([{ "operation": { "ports": [if http { "8080" } else { "9090" }] } }]);
    }
    let mut spec = json!({ "action": if p.deny { "DENY" } else { "ALLOW" }, "rules": [rule] });
    if let Some(app) = p.selector {
        spec["selector"] = json!({ "matchLabels": { "app": APPS[app] } });
    }
    json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": { "name": format!("p{i}"), "namespace": NAMESPACES[p.namespace] },
        "spec": spec,
    })
}

pub(super) fn namespace_object(name: &str, ambient: bool) -> Value {
    let labels = if ambient {
        json!({ "istio.io/dataplane-mode": "ambient" })
    } else {
        json!({})
    };
    json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name, "labels": labels } })
}

pub(super) fn key(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (text(&meta["namespace"]), text(&meta["name"]))
}

/// The snapshot a source scoped to `node` (or unscoped) builds from the
/// objects, pods fed in two halves: a list, then watch events.
fn build(node: Option<&str>, namespaces: &[Value], pods: &[Value], policies: &[Value]) -> Snapshot {
    let mut caches = Caches::for_node(node.map(str::to_owned));
    caches.begin_list(Kind::Namespace);
    for ns in namespaces {
        caches.put(Kind::Namespace, key(ns), ns, true);
    }
    caches.end_list(Kind::Namespace);
    let (listed, watched) = pods.split_at(pods.len() / 2);
    caches.begin_list(Kind::Pod);
    for pod in listed {
        caches.put(Kind::Pod, key(pod), pod, true);
    }
    caches.end_list(Kind::Pod);
    for pod in watched {
        caches.put(Kind::Pod, key(pod), pod, false);
    }
    caches.begin_list(Kind::AuthorizationPolicy);
    for policy in policies {
        caches.put(Kind::AuthorizationPolicy, key(policy), policy, true);
    }
    caches.end_list(Kind::AuthorizationPolicy);
    for kind in [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::PeerAuthentication,
        Kind::RequestAuthentication,
    ] {
        caches.end_list(kind);
    }
    caches
        .build(&LoadOptions::default())
        .expect("generated clusters are valid")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn compact_remote_pods_decide_as_full_pods(
        ambient in prop::collection::vec(any::<bool>(), NAMESPACES.len()),
        pods in prop::collection::vec(gen_pod(), 1..40),
        policies in prop::collection::vec(gen_policy(), 0..8),
    ) {
        let namespaces: Vec<Value> = NAMESPACES
            .iter()
            .zip(&ambient)
            .map(|(name, a)| namespace_object(name, *a))
            .collect();
        let pods: Vec<Value> = pods.iter().enumerate().map(|(i, p)| pod_object(i, p)).collect();
        let policies: Vec<Value> = policies.iter().enumerate().map(|(i, p)| policy_object(i, p)).collect();

        let full = build(None, &namespaces, &pods, &policies);
        let compact = build(Some(NODES[0]), &namespaces, &pods, &policies);

        // The same pods are published, most of them compact.
        prop_assert_eq!(
            full.workloads().count(),
            compact.workloads().count() + compact.remote_pod_count()
        );
        prop_assert!(compact.workloads().all(|w| w.node != NODES[1] && w.node != NODES[2]));

        // Every address stands for the same identity and enrolment.
        let outsider: IpAddr = "192.0.2.9".parse().unwrap();
        let addresses: Vec<IpAddr> = (0..24).map(|i| pod_ip(i).parse().unwrap()).chain([outsider]).collect();
        for ip in &addresses {
            let f = full.workload_by_ip(*ip);
            let c = compact.workload_by_ip(*ip);
            prop_assert_eq!(f.is_some(), c.is_some(), "{} known", ip);
            if let (Some(f), Some(c)) = (f, c) {
                prop_assert_eq!(&f.namespace, &c.namespace);
                prop_assert_eq!(&f.service_account, &c.service_account);
                prop_assert_eq!(f.enrolled, c.enrolled, "{} enrolled", ip);
                prop_assert_eq!(f.node == NODES[0], c.node == NODES[0], "{} local", ip);
                if f.node == NODES[0] {
                    prop_assert_eq!(f, c, "this node's pods are kept in full");
                }
            }
        }
        let local = |s: &Snapshot| {
            let mut names: Vec<String> = s.local_enrolled(NODES[0]).map(|w| w.qualified_name()).collect();
            names.sort();
            names
        };
        prop_assert_eq!(local(&full), local(&compact));

        // Every connection to this node's pods is decided alike, from any
        // source, with mTLS or without.
        for dst in addresses.iter().filter(|ip| full.workload_by_ip(**ip).is_some_and(|w| w.node == NODES[0])) {
            for src in &addresses {
                for port in [8080, 9090] {
                    for plaintext in [false, true] {
                        let decide = |s: &Snapshot| -> Result<_, AuthzError> {
                            s.authorize_from_state(*src, SocketAddr::new(*dst, port), plaintext, "cluster.local")
                        };
                        prop_assert_eq!(decide(&full), decide(&compact), "{} -> {}:{}", src, dst, port);
                    }
                }
            }
        }
    }
}

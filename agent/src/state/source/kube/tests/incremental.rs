//! A snapshot maintained event by event decides exactly as one built from
//! scratch: after every event of a random sequence (pods created, changed
//! and deleted, their addresses reused, namespaces enrolled and removed,
//! policies, Services and EndpointSlices edited and deleted), the
//! incrementally built snapshot and a snapshot built by fresh caches from
//! the same objects answer every address, Service and connection alike.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::super::cache::{Caches, Kind};
use super::compact::{
    APPS, GenPod, GenPolicy, NAMESPACES, NODES, gen_pod, gen_policy, key, namespace_object, pod_ip,
    pod_object, policy_object,
};
use crate::authz::AuthzError;
use crate::state::{LoadError, LoadOptions, Origin, Snapshot, SnapshotBuilder};

const SERVICES: usize = 4;
const POD_SLOTS: usize = 12;

#[derive(Debug, Clone)]
pub(super) enum Op {
    Pod(usize, GenPod),
    DeletePod(usize),
    Namespace(usize, bool),
    DeleteNamespace(usize),
    Policy(usize, GenPolicy),
    DeletePolicy(usize),
    Service(usize, bool),
    DeleteService(usize),
    /// Endpoints: pool addresses and readiness.
    Slice(usize, Vec<(u8, bool)>),
    DeleteSlice(usize),
}

pub(super) fn gen_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..POD_SLOTS, gen_pod()).prop_map(|(i, p)| Op::Pod(i, p)),
        2 => (0..POD_SLOTS).prop_map(Op::DeletePod),
        1 => (0..NAMESPACES.len(), any::<bool>()).prop_map(|(i, a)| Op::Namespace(i, a)),
        1 => (0..NAMESPACES.len()).prop_map(Op::DeleteNamespace),
        2 => (0..4usize, gen_policy()).prop_map(|(i, p)| Op::Policy(i, p)),
        1 => (0..4usize).prop_map(Op::DeletePolicy),
        1 => (0..SERVICES, any::<bool>()).prop_map(|(i, s)| Op::Service(i, s)),
        1 => (0..SERVICES).prop_map(Op::DeleteService),
        2 => (0..SERVICES, prop::collection::vec((0..24u8, any::<bool>()), 0..4))
            .prop_map(|(i, e)| Op::Slice(i, e)),
        1 => (0..SERVICES).prop_map(Op::DeleteSlice),
    ]
}

fn service_object(i: usize, selector: bool) -> Value {
    let mut spec = json!({
        "clusterIP": format!("10.96.0.{}", i + 1),
        "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }],
    });
    if selector {
        spec["selector"] = json!({ "app": APPS[i % APPS.len()] });
    }
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": format!("svc-{i}"), "namespace": NAMESPACES[i % NAMESPACES.len()] },
        "spec": spec,
    })
}

fn slice_object(i: usize, endpoints: &[(u8, bool)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, ready)| json!({ "addresses": [pod_ip(*ip)], "conditions": { "ready": ready } }))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("svc-{i}-x1"), "namespace": NAMESPACES[i % NAMESPACES.len()],
            "labels": { "kubernetes.io/service-name": format!("svc-{i}") },
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{ "name": "http", "port": 8080 }],
    })
}

/// The objects in force, as the API server holds them.
pub(super) type Cluster = BTreeMap<(u8, (String, String)), (Kind, Value)>;

fn kind_id(kind: Kind) -> u8 {
    kind as u8
}

/// Applies `op` to the model and returns the event the watch would send.
pub(super) fn event(cluster: &mut Cluster, op: &Op) -> (Kind, (String, String), Option<Value>) {
    let (kind, object) = match op {
        Op::Pod(i, p) => {
            let mut pod = pod_object(*i, p);
            // One name per slot, so a slot's events change one pod.
            pod["metadata"]["name"] = json!(format!("pod-{i}"));
            (Kind::Pod, Ok(pod))
        }
        Op::DeletePod(i) => (Kind::Pod, Err(("apps", format!("pod-{i}")))),
        Op::Namespace(i, ambient) => (
            Kind::Namespace,
            Ok(namespace_object(NAMESPACES[*i], *ambient)),
        ),
        Op::DeleteNamespace(i) => (Kind::Namespace, Err(("", NAMESPACES[*i].to_owned()))),
        Op::Policy(i, p) => (Kind::AuthorizationPolicy, Ok(policy_object(*i, p))),
        Op::DeletePolicy(i) => (Kind::AuthorizationPolicy, Err(("", format!("p{i}")))),
        Op::Service(i, selector) => (Kind::Service, Ok(service_object(*i, *selector))),
        Op::DeleteService(i) => (
            Kind::Service,
            Err((NAMESPACES[i % NAMESPACES.len()], format!("svc-{i}"))),
        ),
        Op::Slice(i, endpoints) => (Kind::EndpointSlice, Ok(slice_object(*i, endpoints))),
        Op::DeleteSlice(i) => (
            Kind::EndpointSlice,
            Err((NAMESPACES[i % NAMESPACES.len()], format!("svc-{i}-x1"))),
        ),
    };
    match object {
        Ok(object) => {
            let k = key(&object);
            cluster.insert((kind_id(kind), k.clone()), (kind, object.clone()));
            (kind, k, Some(object))
        }
        Err((ns, name)) => {
            // A pod or policy is deleted wherever it is.
            let found = cluster
                .keys()
                .find(|(id, (n, m))| {
                    *id == kind_id(kind)
                        && *m == name
                        && (kind == Kind::Pod || kind == Kind::AuthorizationPolicy || n == ns)
                })
                .cloned();
            let k = match found {
                Some(found) => {
                    cluster.remove(&found);
                    found.1
                }
                None => (ns.to_owned(), name),
            };
            (kind, k, None)
        }
    }
}

pub(super) const KINDS: [Kind; 7] = [
    Kind::Namespace,
    Kind::Pod,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::AuthorizationPolicy,
    Kind::PeerAuthentication,
    Kind::RequestAuthentication,
];

/// Caches that list the cluster as it is, once.
pub(super) fn from_scratch(node: Option<&str>, cluster: &Cluster) -> Caches {
    let mut caches = Caches::for_node(node.map(str::to_owned));
    for kind in KINDS {
        caches.begin_list(kind);
        for (_, (k, object)) in cluster.iter().filter(|(_, (k, _))| *k == kind) {
            caches.put(*k, key(object), object, true);
        }
        caches.end_list(kind);
    }
    caches
}

/// The snapshot the file source builds from the same objects: every object
/// through `SnapshotBuilder::add_object`, nothing kept from before. It
/// refuses what the Kubernetes source resolves (an address two pods claim,
/// a pod whose namespace is not there yet), so it is compared when it
/// accepts the cluster.
fn with_the_file_sources_builder(cluster: &Cluster) -> Result<Snapshot, LoadError> {
    let origin = Origin {
        file: std::sync::Arc::from(std::path::Path::new("kubernetes")),
        line: 0,
    };
    let mut builder = SnapshotBuilder::new(&LoadOptions::default());
    for (_, object) in cluster.values() {
        builder.add_object(origin.clone(), object)?;
    }
    builder.build()
}

/// Everything the data path can ask of a snapshot, in a comparable form;
/// the first line is the count of remote pods.
pub(super) fn answers(s: &Snapshot) -> Vec<String> {
    let outsider: IpAddr = "192.0.2.9".parse().unwrap();
    let addresses: Vec<IpAddr> = (0..24)
        .map(|i| pod_ip(i).parse().unwrap())
        .chain((1..=SERVICES).map(|i| format!("10.96.0.{i}").parse().unwrap()))
        .chain([outsider])
        .collect();
    let mut out = vec![format!("remote pods {}", s.remote_pod_count())];
    let mut workloads: Vec<String> = s.workloads().map(|w| format!("{w:?}")).collect();
    workloads.sort();
    out.extend(workloads);
    for node in NODES {
        let mut local: Vec<String> = s.local_enrolled(node).map(|w| w.qualified_name()).collect();
        local.sort();
        out.push(format!("{node}: {local:?}"));
    }
    for ip in &addresses {
        out.push(format!("{ip}: {:?}", s.workload_by_ip(*ip)));
        let mut services: Vec<String> = s
            .services_of_endpoint(*ip)
            .iter()
            .map(|s| s.qualified_name())
            .collect();
        services.sort();
        out.push(format!("{ip} serves {services:?}"));
        if let Some(svc) = s.service_by_vip(*ip) {
            let mut endpoints: Vec<String> = svc
                .groups()
                .iter()
                .flat_map(|g| g.endpoints().map(move |e| format!("{e:?} {:?}", g.ports())))
                .collect();
            endpoints.sort();
            let mut ready: Vec<_> = svc.ready_endpoints(80).collect();
            ready.sort();
            out.push(format!(
                "{ip} is {} {:?} {endpoints:?} {ready:?}",
                svc.qualified_name(),
                svc.ports
            ));
        }
    }
    let mut errors: Vec<String> = s.policy_errors().iter().map(ToString::to_string).collect();
    errors.sort();
    out.extend(errors);
    for dst in &addresses {
        for src in &addresses {
            for port in [8080, 9090] {
                for plaintext in [false, true] {
                    let decision: Result<_, AuthzError> = s.authorize_from_state(
                        *src,
                        SocketAddr::new(*dst, port),
                        plaintext,
                        "cluster.local",
                    );
                    out.push(format!("{src} -> {dst}:{port} {plaintext}: {decision:?}"));
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn incremental_snapshots_decide_as_snapshots_built_from_scratch(
        scoped in any::<bool>(),
        initial in prop::collection::vec(gen_op(), 0..12),
        ops in prop::collection::vec(gen_op(), 1..30),
    ) {
        let node = scoped.then_some(NODES[0]);
        let options = LoadOptions::default();
        let mut cluster = Cluster::new();
        for (i, name) in NAMESPACES.iter().enumerate() {
            event(&mut cluster, &Op::Namespace(i, i % 2 == 0));
            let _ = name;
        }
        for op in &initial {
            event(&mut cluster, op);
        }
        let mut caches = from_scratch(node, &cluster);
        for op in &ops {
            let (kind, k, object) = event(&mut cluster, op);
            match object {
                Some(object) => caches.put(kind, k, &object, false),
                None => caches.delete(kind, &k),
            }
            let incremental = caches.build(&options);
            let scratch = from_scratch(node, &cluster).build(&options);
            match (incremental, scratch) {
                (Ok(incremental), Ok(scratch)) => {
                    let (a, b) = (answers(&incremental), answers(&scratch));
                    for (a, b) in a.iter().zip(&b) {
                        prop_assert_eq!(a, b, "after {:?}", op);
                    }
                    prop_assert_eq!(a.len(), b.len());
                    // Unscoped, every pod is in full, as the file source has them.
                    if let (None, Ok(reference)) = (node, with_the_file_sources_builder(&cluster)) {
                        for (a, b) in a.iter().zip(&answers(&reference)) {
                            prop_assert_eq!(a, b, "against the file source's builder, after {:?}", op);
                        }
                    }
                }
                (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
                (a, b) => prop_assert!(false, "after {:?}: {:?} vs {:?}", op, a.map(|_| ()), b.map(|_| ())),
            }
        }
    }
}

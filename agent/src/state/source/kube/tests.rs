//! The Kubernetes source's state logic, fed events directly: slimming keeps
//! what the builder reads, relists replace the cache, and the transients of
//! an eventually consistent API do not reject the cluster's state.

mod compact;
mod fed;
mod incremental;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};

use super::cache::{Caches, Kind, KindCache};
use super::slim::{self, slim};
use crate::state::{LoadOptions, Origin, SnapshotBuilder};

fn key(ns: &str, name: &str) -> (String, String) {
    (ns.to_owned(), name.to_owned())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A pod as the API server sends it, with the noise the agent never reads.
fn full_pod(ns: &str, name: &str, addr: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "uid": format!("uid-{name}"),
            "labels": { "app": name },
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": { "big": "x".repeat(2000) },
            "managedFields": [{ "manager": "kubelet", "fieldsV1": { "f:status": {} } }],
            "ownerReferences": [{ "kind": "ReplicaSet", "name": "rs" }],
        },
        "spec": {
            "nodeName": "node-a", "serviceAccountName": "sa",
            "containers": [{
                "name": "app", "image": "img", "args": ["--flag"],
                "ports": [{ "name": "http", "containerPort": 8080 }, { "containerPort": 9090 }],
                "resources": { "limits": { "memory": "1Gi" } },
            }],
            "volumes": [{ "name": "v", "emptyDir": {} }],
        },
        "status": {
            "phase": "Running", "podIP": addr, "podIPs": [{ "ip": addr }],
            "conditions": [{ "type": "Ready", "status": "True" }],
            "containerStatuses": [{ "name": "app", "ready": true }],
        },
    })
}

fn namespace(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": name, "labels": { "istio.io/dataplane-mode": "ambient" } },
    })
}

fn slimmed_pod(ns: &str, name: &str, addr: &str) -> Value {
    slim(&full_pod(ns, name, addr), &slim::POD)
}

#[test]
fn slim_pods_keep_exactly_what_the_builder_reads() {
    let full = full_pod("apps", "web", "10.0.0.5");
    let slimmed = slim(&full, &slim::POD);
    assert!(slimmed["metadata"].get("annotations").is_none());
    assert!(slimmed["metadata"].get("managedFields").is_none());
    assert!(slimmed["spec"]["containers"][0].get("image").is_none());
    assert!(slimmed["status"].get("conditions").is_none());
    let size = |v: &Value| serde_json::to_vec(v).unwrap().len();
    assert!(
        size(&slimmed) * 5 < size(&full),
        "{} vs {}",
        size(&slimmed),
        size(&full)
    );

    // The builder makes the same workload out of either.
    let origin = Origin {
        file: Arc::from(Path::new("test")),
        line: 1,
    };
    let build = |pod: &Value| {
        let mut builder = SnapshotBuilder::new(&LoadOptions::default());
        builder
            .add_object(origin.clone(), &namespace("apps"))
            .unwrap();
        builder.add_object(origin.clone(), pod).unwrap();
        let snapshot = builder.build().unwrap();
        (**snapshot.workload_by_ip(ip("10.0.0.5")).unwrap()).clone()
    };
    assert_eq!(build(&full), build(&slimmed));
}

#[test]
fn a_relist_replaces_the_cache_and_forgets_missed_deletions() {
    let mut cache = KindCache::default();
    assert!(!cache.is_synced());
    cache.begin_list();
    cache.listed(key("a", "one"), &json!({}));
    cache.listed(key("a", "two"), &json!({}));
    assert_eq!(cache.len(), 0, "a list in progress is not yet the state");
    cache.end_list();
    assert!(cache.is_synced());
    assert_eq!(cache.len(), 2);

    // After a 410 the watcher lists again: "two" was deleted meanwhile.
    cache.begin_list();
    cache.listed(key("a", "one"), &json!({}));
    assert_eq!(cache.len(), 2, "the old state serves until the list ends");
    cache.end_list();
    assert_eq!(cache.len(), 1);
    cache.delete(&key("a", "one"));
    assert_eq!(cache.len(), 0);
}

/// Caches with one namespace, `pods` listed and every other kind listed
/// empty but PeerAuthentications.
fn caches(pods: &[((&str, &str), Value)]) -> Caches {
    let mut caches = Caches::default();
    caches.begin_list(Kind::Namespace);
    caches.put(Kind::Namespace, key("", "apps"), &namespace("apps"), true);
    caches.end_list(Kind::Namespace);
    caches.begin_list(Kind::Pod);
    for ((ns, name), pod) in pods {
        caches.put(Kind::Pod, key(ns, name), pod, true);
    }
    caches.end_list(Kind::Pod);
    for kind in [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
    ] {
        caches.end_list(kind);
    }
    caches
}

#[test]
fn nothing_builds_as_synced_until_every_kind_listed() {
    let mut caches = caches(&[]);
    assert!(!caches.all_synced(), "PeerAuthentications not listed");
    caches.mark_absent(Kind::PeerAuthentication);
    assert!(caches.all_synced());
}

#[test]
fn a_pod_seen_before_its_namespace_waits_instead_of_failing_the_build() {
    let mut caches = caches(&[
        (("apps", "web"), slimmed_pod("apps", "web", "10.0.0.5")),
        (("late", "early"), slimmed_pod("late", "early", "10.0.0.6")),
    ]);
    caches.end_list(Kind::PeerAuthentication);
    let snapshot = caches.build(&LoadOptions::default()).unwrap();
    assert!(snapshot.workload_by_ip(ip("10.0.0.5")).is_some());
    assert!(snapshot.workload_by_ip(ip("10.0.0.6")).is_none());
}

#[test]
fn a_reused_ip_goes_to_the_pod_that_is_not_terminating() {
    let mut old = slimmed_pod("apps", "old", "10.0.0.5");
    old["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:05:00Z");
    let mut new = slimmed_pod("apps", "new", "10.0.0.5");
    new["metadata"]["creationTimestamp"] = json!("2026-01-01T00:04:00Z");
    for order in [[&old, &new], [&new, &old]] {
        let mut caches = caches(&[
            (("apps", "a"), order[0].clone()),
            (("apps", "b"), order[1].clone()),
        ]);
        caches.end_list(Kind::PeerAuthentication);
        let snapshot = caches.build(&LoadOptions::default()).unwrap();
        assert_eq!(snapshot.workload_by_ip(ip("10.0.0.5")).unwrap().name, "new");
    }
}

#[test]
fn run_kube_selects_this_source() {
    use clap::Parser;

    use crate::cli::{Cli, Command};
    let cli = Cli::try_parse_from(["ambit-agent", "run", "--kube"]).unwrap();
    let Command::Run(args) = cli.command else {
        panic!("run");
    };
    assert!(args.kube);
    let cli = Cli::try_parse_from(["ambit-agent", "run"]).unwrap();
    let Command::Run(args) = cli.command else {
        panic!("run");
    };
    assert!(!args.kube, "the file source stays the default");
}

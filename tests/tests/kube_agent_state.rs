//! The agent's Kubernetes source against the fake API server: what the
//! cluster holds becomes the agent's state, changes follow within moments,
//! watches that drop resume without relisting, and until every kind has been
//! listed the state stays unsynced (the agent is not ready).

// Helpers here are test code too; clippy only sees `#[test]` functions as such.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_agent::state::source::kube::KubeSource;
use ambit_agent::state::{LoadOptions, Snapshot, StateStore};
use ambit_policy::{Connection, Target};
use ambit_tests::fake_kube::objects::{endpoint_slice, namespace, service};
use ambit_tests::fake_kube::{self, FakeKube};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

fn pod(ns: &str, name: &str, ip: &str, node: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "labels": labels,
            "managedFields": [{ "manager": "kubectl", "operation": "Apply" }],
            "annotations": { "kubectl.kubernetes.io/last-applied-configuration": "{...}" },
        },
        "spec": {
            "nodeName": node,
            "serviceAccountName": format!("{name}-sa"),
            "containers": [{
                "name": "app", "image": "example/app:1",
                "ports": [{ "name": "http", "containerPort": 8080 }],
                "env": [{ "name": "A", "value": "B" }],
            }],
        },
        "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }],
            "conditions": [{ "type": "Ready", "status": "True" }],
        },
    })
}

fn deny_port(ns: &str, port: u16, version: &str) -> Value {
    json!({
        "apiVersion": format!("security.istio.io/{version}"), "kind": "AuthorizationPolicy",
        "metadata": { "name": format!("deny-{port}"), "namespace": ns },
        "spec": { "action": "DENY", "rules": [{ "to": [{ "operation": { "ports": [port.to_string()] } }] }] },
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A fake cluster: namespace `apps` enrolled, two pods on two nodes, a
/// service in front of one of them, one DENY policy.
async fn cluster() -> FakeKube {
    let fake = FakeKube::start().await.unwrap();
    fake.apply(&namespace("apps", true)).unwrap();
    fake.apply(&namespace("other", false)).unwrap();
    fake.apply(&pod(
        "apps",
        "web",
        "10.0.1.5",
        "node-a",
        json!({ "app": "web" }),
    ))
    .unwrap();
    fake.apply(&pod(
        "other",
        "db",
        "10.0.2.7",
        "node-b",
        json!({ "app": "db" }),
    ))
    .unwrap();
    fake.apply(&service("apps", "web", "10.96.0.10")).unwrap();
    fake.apply(&endpoint_slice("apps", "web", &["10.0.1.5"]))
        .unwrap();
    fake.apply(&deny_port("apps", 9000, "v1")).unwrap();
    fake
}

fn store() -> StateStore {
    StateStore::new(Snapshot::default())
}

fn source(fake: &FakeKube) -> KubeSource {
    let config = kube::Config::new(fake.url().parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    KubeSource::new(client, LoadOptions::default()).with_settle(Duration::from_millis(10))
}

/// Waits until the published state satisfies `check`.
async fn until(store: &StateStore, what: &str, check: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
    let mut rx = store.subscribe();
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            let snapshot = rx.borrow_and_update().clone();
            if snapshot.is_synced() && check(&snapshot) {
                return snapshot;
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("state never showed: {what}"))
}

fn enrolled(s: &Snapshot, addr: &str) -> Option<bool> {
    s.workload_by_ip(ip(addr)).map(|w| w.enrolled)
}

#[tokio::test]
async fn cluster_objects_become_the_agents_state() {
    let fake = cluster().await;
    let store = store();
    let watch = source(&fake).start(store.clone());
    tokio::time::timeout(WAIT, watch.synced()).await.unwrap();
    let s = store.current();
    assert!(s.is_synced());

    let web = s.workload_by_ip(ip("10.0.1.5")).unwrap();
    assert_eq!(web.name, "web");
    assert_eq!(web.namespace, "apps");
    assert_eq!(web.service_account, "web-sa");
    assert_eq!(web.node, "node-a");
    assert!(web.enrolled);
    assert_eq!(
        web.labels,
        BTreeMap::from([("app".to_owned(), "web".to_owned())]).into()
    );
    assert!(
        web.uid.starts_with("00000000-"),
        "uid from the API server: {}",
        web.uid
    );
    assert_eq!(
        enrolled(&s, "10.0.2.7"),
        Some(false),
        "namespace not labelled"
    );

    let target = s.service_target(ip("10.96.0.10"), 80).unwrap();
    assert_eq!(target.addr, "10.0.1.5:8080".parse().unwrap());
    assert_eq!(target.workload.unwrap().name, "web");

    assert_eq!(s.policies().len(), 1);
    let labels = BTreeMap::new();
    let dst = Target {
        namespace: "apps",
        labels: &labels,
    };
    let conn = |port| Connection {
        src_ip: ip("10.0.2.7"),
        src_principal: Some("cluster.local/ns/other/sa/db-sa"),
        src_namespace: Some("other"),
        dst_ip: ip("10.0.1.5"),
        dst_port: port,
        mtls: true,
    };
    assert!(!s.policies().evaluate(&dst, &conn(9000)).allowed);
    assert!(s.policies().evaluate(&dst, &conn(8080)).allowed);
}

#[tokio::test]
async fn creations_changes_and_deletions_follow() {
    let fake = cluster().await;
    let store = store();
    let _watch = source(&fake).start(store.clone());
    until(&store, "initial state", |s| {
        s.workload_by_ip(ip("10.0.1.5")).is_some()
    })
    .await;

    fake.apply(&pod(
        "apps",
        "api",
        "10.0.1.9",
        "node-b",
        json!({ "app": "api" }),
    ))
    .unwrap();
    let s = until(&store, "new pod", |s| {
        s.workload_by_ip(ip("10.0.1.9")).is_some()
    })
    .await;
    assert_eq!(s.workload_by_ip(ip("10.0.1.9")).unwrap().node, "node-b");

    // The pod moves to a new IP (a restart): the old one is gone.
    fake.apply(&pod(
        "apps",
        "api",
        "10.0.1.10",
        "node-b",
        json!({ "app": "api" }),
    ))
    .unwrap();
    let s = until(&store, "pod's new IP", |s| {
        s.workload_by_ip(ip("10.0.1.10")).is_some()
    })
    .await;
    assert!(s.workload_by_ip(ip("10.0.1.9")).is_none());

    fake.apply(&endpoint_slice("apps", "web", &["10.0.1.10"]))
        .unwrap();
    until(&store, "endpoint change", |s| {
        s.service_target(ip("10.96.0.10"), 80)
            .is_some_and(|t| t.addr.ip() == ip("10.0.1.10"))
    })
    .await;

    fake.apply(&deny_port("apps", 9100, "v1beta1")).unwrap();
    until(&store, "a v1beta1 policy", |s| s.policies().len() == 2).await;
    fake.delete(&fake_kube::AUTHORIZATION_POLICIES, "apps", "deny-9000")
        .unwrap();
    until(&store, "policy deletion", |s| s.policies().len() == 1).await;

    fake.delete(&fake_kube::PODS, "apps", "api").unwrap();
    until(&store, "pod deletion", |s| {
        s.workload_by_ip(ip("10.0.1.10")).is_none()
    })
    .await;
    fake.delete(&fake_kube::SERVICES, "apps", "web").unwrap();
    until(&store, "service deletion", |s| {
        s.service_by_vip(ip("10.96.0.10")).is_none()
    })
    .await;
}

#[tokio::test]
async fn namespace_and_pod_labels_enrol_and_unenrol() {
    let fake = cluster().await;
    let store = store();
    let _watch = source(&fake).start(store.clone());
    until(&store, "web enrolled", |s| {
        enrolled(s, "10.0.1.5") == Some(true)
    })
    .await;

    fake.apply(&namespace("apps", false)).unwrap();
    until(&store, "label removed", |s| {
        enrolled(s, "10.0.1.5") == Some(false)
    })
    .await;
    fake.apply(&namespace("other", true)).unwrap();
    until(&store, "other enrolled", |s| {
        enrolled(s, "10.0.2.7") == Some(true)
    })
    .await;
    fake.apply(&namespace("apps", true)).unwrap();
    until(&store, "label back", |s| {
        enrolled(s, "10.0.1.5") == Some(true)
    })
    .await;

    let opted_out = json!({ "app": "web", "istio.io/dataplane-mode": "none" });
    fake.apply(&pod("apps", "web", "10.0.1.5", "node-a", opted_out))
        .unwrap();
    until(&store, "pod opted out", |s| {
        enrolled(s, "10.0.1.5") == Some(false)
    })
    .await;
}

#[tokio::test]
async fn dropped_watches_resume_without_relisting() {
    let fake = cluster().await;
    let store = store();
    let _watch = source(&fake).start(store.clone());
    until(&store, "initial state", |s| {
        s.workload_by_ip(ip("10.0.1.5")).is_some()
    })
    .await;
    let before = fake.counts();

    for round in 0..3 {
        fake.drop_watches();
        let addr = format!("10.0.3.{round}");
        fake.apply(&pod(
            "apps",
            &format!("p{round}"),
            &addr,
            "node-a",
            json!({}),
        ))
        .unwrap();
        until(&store, "pod after a dropped watch", |s| {
            s.workload_by_ip(ip(&addr)).is_some()
        })
        .await;
    }
    let after = fake.counts();
    assert_eq!(after.lists, before.lists, "no kind listed again");
    assert!(after.watches["pods"] >= before.watches["pods"] + 3);
}

#[tokio::test]
async fn expired_versions_relist_and_catch_up_on_missed_deletions() {
    let fake = cluster().await;
    let store = store();
    let _watch = source(&fake).start(store.clone());
    until(&store, "initial state", |s| {
        s.workload_by_ip(ip("10.0.2.7")).is_some()
    })
    .await;
    let lists = fake.counts().lists["pods"];

    // While the watch is down the pod goes away and the history is compacted:
    // resuming gets 410 and the agent must list again to see the deletion.
    fake.drop_watches();
    fake.delete(&fake_kube::PODS, "other", "db").unwrap();
    fake.compact();
    until(&store, "deletion seen through a relist", |s| {
        s.workload_by_ip(ip("10.0.2.7")).is_none()
    })
    .await;
    assert!(fake.counts().lists["pods"] > lists);
    assert!(store.current().workload_by_ip(ip("10.0.1.5")).is_some());
}

#[tokio::test]
async fn not_synced_until_every_kind_is_listed_and_rbac_errors_say_so() {
    let fake = cluster().await;
    fake.forbid(&fake_kube::PEER_AUTHENTICATIONS);
    let store = store();
    let _watch = source(&fake).start(store.clone());

    // Everything else lists; the state stays unsynced and says why.
    let deadline = tokio::time::Instant::now() + WAIT;
    let message = loop {
        if let Some(failure) = store.status().last_error {
            break failure.message;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no RBAC error reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(message.contains("forbidden"), "{message}");
    assert!(
        message.contains("peerauthentications.security.istio.io"),
        "{message}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!store.current().is_synced());
    assert!(store.current().workload_by_ip(ip("10.0.1.5")).is_none());

    fake.allow(&fake_kube::PEER_AUTHENTICATIONS);
    until(&store, "synced once RBAC allows", |s| {
        s.workload_by_ip(ip("10.0.1.5")).is_some()
    })
    .await;
    assert!(store.status().last_error.is_none());
}

#[tokio::test]
async fn an_api_the_server_does_not_serve_is_named_in_the_status() {
    // A Kubernetes 1.20 API server: no discovery.k8s.io/v1 EndpointSlices.
    let fake = cluster().await;
    fake.unserve(&fake_kube::ENDPOINT_SLICES);
    let store = store();
    let _watch = source(&fake).start(store.clone());

    let deadline = tokio::time::Instant::now() + WAIT;
    let message = loop {
        if let Some(failure) = store.status().last_error {
            break failure.message;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no missing API reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        message.contains("does not serve discovery.k8s.io/v1 EndpointSlice"),
        "{message}"
    );
    assert!(message.contains("1.21"), "{message}");
    assert!(!store.current().is_synced());

    // Served again (the cluster upgraded): the agent syncs and the error clears.
    fake.restore(&fake_kube::ENDPOINT_SLICES);
    until(&store, "synced once EndpointSlices are served", |s| {
        s.workload_by_ip(ip("10.0.1.5")).is_some()
    })
    .await;
    assert!(store.status().last_error.is_none());
}

#[tokio::test]
async fn after_repeated_failures_a_recovered_watch_follows_policies_within_2s() {
    let fake = cluster().await;
    let store = store();
    let _watch = source(&fake).start(store.clone());
    until(&store, "initial state", |s| s.policies().len() == 1).await;

    // The policy watch fails again and again, so its retry delay grows
    // (0.5, 1, 2, then 4 s or so), as it did while a CRD was deleted.
    fake.fail(&fake_kube::AUTHORIZATION_POLICIES);
    fake.drop_watches();
    let broken = |f: &FakeKube| {
        f.counts()
            .broken
            .get("authorizationpolicies")
            .copied()
            .unwrap_or(0)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while broken(&fake) < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watch did not retry"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Meanwhile the kind changed and the server's history moved on, so the
    // agent's resumed watch will get 410 Gone and must list again.
    fake.apply(&deny_port("apps", 9100, "v1")).unwrap();
    fake.compact();

    // The server recovers; the agent's next request is that resumed watch.
    let watches = |f: &FakeKube| {
        f.counts()
            .watches
            .get("authorizationpolicies")
            .copied()
            .unwrap_or(0)
    };
    let before = watches(&fake);
    fake.restore(&fake_kube::AUTHORIZATION_POLICIES);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while watches(&fake) == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watch never came back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The relist the 410 calls for must not wait out the delay the failures
    // built up: a policy created now is in force within 2 s.
    let created = std::time::Instant::now();
    fake.apply(&deny_port("apps", 9200, "v1")).unwrap();
    until(&store, "the new policies", |s| s.policies().len() == 3).await;
    let took = created.elapsed();
    println!("policy reached the agent {took:?} after it was created");
    assert!(
        took < Duration::from_secs(2),
        "policy reached the agent after {took:?}"
    );
}

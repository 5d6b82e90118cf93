//! Memory of the agent's Kubernetes state per 1,000 pods, with every pod in
//! full (an unscoped source) and as an agent keeps them (scoped to its node,
//! other nodes' pods compact).
//!
//! The fake API server runs in this process; the agent's source runs in a
//! child process (this test binary again, in its child role) so its resident
//! memory is measured alone, transient list buffers and allocator slack
//! included, as an operator would see it. Two cluster sizes give the cost per
//! pod without the fixed cost of the process. `ambit-bench scale` measures
//! the same up to 150,000 pods, with churn.

// Helpers here are test code too; clippy only sees `#[test]` functions as such.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ambit_agent::state::source::kube::KubeSource;
use ambit_agent::state::{LoadOptions, Snapshot, StateStore};
use ambit_tests::fake_kube::FakeKube;
use serde_json::{Value, json};

/// Set in the child: the fake server's URL.
const CHILD_ENV: &str = "AMBIT_KUBE_MEMORY_CHILD";
/// Set in the child when its source is scoped to a node.
const NODE_ENV: &str = "AMBIT_KUBE_MEMORY_NODE";
const CHILD_TEST: &str = "child_syncs_and_reports_its_memory";

/// A pod as a Deployment's ReplicaSet creates it, with the fields the API
/// server adds (managed fields, conditions, container statuses).
fn pod(i: usize) -> Value {
    let ns = format!("ns-{}", i % 20);
    let app = format!("app-{}", i % 300);
    let ip = format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{app}-7d9f8c6b5-{i:05}"), "namespace": ns,
            "generateName": format!("{app}-7d9f8c6b5-"),
            "labels": { "app": app, "pod-template-hash": "7d9f8c6b5", "version": "v1" },
            "annotations": { "kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z" },
            "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{app}-7d9f8c6b5"), "uid": "3f1c", "controller": true }],
            "managedFields": [
                { "manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                  "fieldsType": "FieldsV1", "fieldsV1": { "f:metadata": { "f:labels": {} }, "f:spec": {} } },
                { "manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                  "subresource": "status", "fieldsV1": { "f:status": { "f:conditions": {} } } },
            ],
        },
        "spec": {
            "nodeName": format!("node-{}", i % 100),
            "serviceAccountName": app,
            "containers": [{
                "name": "app", "image": format!("registry.example/{app}:1.2.3"),
                "args": ["--port=8080", "--log-level=info"],
                "ports": [{ "name": "http", "containerPort": 8080, "protocol": "TCP" },
                          { "name": "metrics", "containerPort": 9090, "protocol": "TCP" }],
                "env": [{ "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }],
                "resources": { "requests": { "cpu": "100m", "memory": "128Mi" } },
                "readinessProbe": { "httpGet": { "path": "/ready", "port": 8080 } },
                "volumeMounts": [{ "name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount" }],
            }],
            "volumes": [{ "name": "kube-api-access", "projected": { "sources": [{ "serviceAccountToken": { "path": "token" } }] } }],
            "tolerations": [{ "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute" }],
        },
        "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }], "hostIP": "192.0.2.1",
            "conditions": [
                { "type": "Initialized", "status": "True" }, { "type": "Ready", "status": "True" },
                { "type": "ContainersReady", "status": "True" }, { "type": "PodScheduled", "status": "True" },
            ],
            "containerStatuses": [{ "name": "app", "ready": true, "restartCount": 0,
                "image": format!("registry.example/{app}:1.2.3"), "started": true,
                "state": { "running": { "startedAt": "2026-01-01T00:00:00Z" } } }],
        },
    })
}

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The child role: sync from the server at `$AMBIT_KUBE_MEMORY_CHILD`,
/// rebuild once more after a change, print one JSON line. A no-op in a
/// normal test run.
#[tokio::test]
async fn child_syncs_and_reports_its_memory() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let baseline = rss_kib("VmRSS:");
    let store = StateStore::new(Snapshot::default());
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let started = Instant::now();
    let mut source =
        KubeSource::new(client, LoadOptions::default()).with_settle(Duration::from_millis(10));
    if let Ok(node) = std::env::var(NODE_ENV) {
        source = source.with_node(node);
    }
    let watch = source.start(store.clone());
    tokio::time::timeout(Duration::from_secs(120), watch.synced())
        .await
        .unwrap();
    let sync_ms = started.elapsed().as_millis();
    let snapshot = store.current();
    let workloads = snapshot.workloads().count() + snapshot.remote_pod_count();
    let cache_bytes = watch.cache_bytes();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = rss_kib("VmRSS:");
    println!(
        "MEMORY {}",
        json!({ "baseline_kib": baseline, "rss_kib": rss, "hwm_kib": rss_kib("VmHWM:"),
                "workloads": workloads, "sync_ms": sync_ms, "cache_bytes": cache_bytes })
    );
}

async fn measure(pods: usize, node: Option<&str>) -> Value {
    let fake = FakeKube::start().await.unwrap();
    for n in 0..20 {
        let ns = json!({ "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": format!("ns-{n}"), "labels": { "istio.io/dataplane-mode": "ambient" } } });
        fake.apply(&ns).unwrap();
    }
    for i in 0..pods {
        fake.apply(&pod(i)).unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let url = fake.url();
    let mut child = tokio::process::Command::new(exe);
    child
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, url);
    if let Some(node) = node {
        child.env(NODE_ENV, node);
    }
    let output = child.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("MEMORY ").map(|(_, json)| json))
        .unwrap_or_else(|| panic!("child did not report: {stdout}"));
    let report: Value = serde_json::from_str(line).unwrap();
    assert_eq!(report["workloads"], pods, "every pod became a workload");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_memory_per_thousand_pods() {
    let small = measure(1_000, None).await;
    let large = measure(10_000, None).await;
    let num = |r: &Value, f: &str| r[f].as_f64().unwrap();
    let per_1k = |f: &str| (num(&large, f) - num(&small, f)) / 9.0;
    let rss_kib = per_1k("rss_kib");
    let cache_kib = per_1k("cache_bytes") / 1024.0;
    let api_kib = serde_json::to_vec(&pod(1234)).unwrap().len() as f64;
    println!(
        "kube state per 1,000 pods: {rss_kib:.0} KiB RSS (peak {:.0} KiB), of which the watch \
         cache holds {cache_kib:.0} KiB; the same pods as the API sends them: {api_kib:.0} KiB of JSON. \
         1k pods: {small}; 10k pods: {large}",
        per_1k("hwm_kib"),
    );
    // The cache keeps a few fields, not objects: well under the objects'
    // own text. The whole process (snapshot, allocator slack) stays within
    // a small multiple of that text.
    assert!(
        cache_kib > 0.0 && cache_kib < api_kib / 2.0,
        "cache {cache_kib:.0} KiB per 1,000 pods"
    );
    assert!(
        rss_kib < 3.0 * api_kib,
        "{rss_kib:.0} KiB RSS per 1,000 pods"
    );
}

/// Scoped to one of the 100 nodes, the agent keeps 99% of the pods as an
/// address, a shared identity and an enrolment: a fraction of the full cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_state_memory_per_thousand_pods() {
    let small = measure(1_000, Some("node-0")).await;
    let large = measure(10_000, Some("node-0")).await;
    let num = |r: &Value, f: &str| r[f].as_f64().unwrap();
    let per_1k = |f: &str| (num(&large, f) - num(&small, f)) / 9.0;
    let rss_kib = per_1k("rss_kib");
    let cache_kib = per_1k("cache_bytes") / 1024.0;
    println!(
        "compact kube state per 1,000 pods: {rss_kib:.0} KiB RSS (peak {:.0} KiB), of which the \
         watch cache holds {cache_kib:.0} KiB. 1k pods: {small}; 10k pods: {large}",
        per_1k("hwm_kib"),
    );
    // Measured 423 - 706 KiB (160 KiB of it cached pods, the rest two
    // snapshots' address maps and the rebuild's transient claims, which
    // jemalloc keeps for a while, so the figure moves with the machine's
    // load) against 3.9 MiB in full. Issue 15's 64 MiB at 150,000 pods needs
    // about 300: this guards what is reached (under a third of the full
    // cost), not the target.
    assert!(cache_kib < 200.0, "cache {cache_kib:.0} KiB per 1,000 pods");
    assert!(rss_kib < 1_200.0, "{rss_kib:.0} KiB RSS per 1,000 pods");
}

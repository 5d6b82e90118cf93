//! Re-decisions against hand-built snapshots.

use std::path::Path;

use super::*;
use crate::state::{LoadOptions, SnapshotBuilder};

const STATE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: analyzer, namespace: default, labels: {app: analyzer}}
spec: {nodeName: node-b, serviceAccountName: analyzer}
status: {phase: Running, podIP: 10.0.0.2}
"#;

const ALLOW_GUESTBOOK: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-guestbook, namespace: default}
spec:
  selector: {matchLabels: {app: analyzer}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/guestbook"]}}]
"#;

fn snapshot(texts: &[&str]) -> Snapshot {
    let mut builder = SnapshotBuilder::new(&LoadOptions::default());
    for (i, text) in texts.iter().enumerate() {
        builder
            .add_text(Path::new(&format!("{i}.yaml")), text)
            .unwrap();
    }
    builder.build().unwrap()
}

fn conn(sa: &str) -> TrackedConnection {
    TrackedConnection {
        src: "10.0.0.1:4000".parse().unwrap(),
        peer: Some(SpiffeId::new("cluster.local", "default", sa).unwrap()),
        dst: "10.0.0.2:8080".parse().unwrap(),
    }
}

#[test]
fn closes_exactly_the_connections_a_new_policy_denies() {
    let tracker = ConnectionTracker::new("node-b");
    let guestbook = tracker.register(conn("guestbook"));
    let sleep = tracker.register(conn("sleep"));
    assert_eq!(tracker.reauthorize(&snapshot(&[STATE])), 0);
    assert_eq!(tracker.reauthorize(&snapshot(&[STATE, ALLOW_GUESTBOOK])), 1);
    assert!(!guestbook.close_token().is_cancelled());
    assert!(sleep.close_token().is_cancelled());
    assert_eq!(
        tracker.revocation(&snapshot(&[STATE, ALLOW_GUESTBOOK]), &conn("sleep")),
        Some(Revocation::Denied {
            reason: "no ALLOW policy matched",
            policy: None,
        })
    );
    drop(sleep);
    assert_eq!(tracker.len(), 1);
}

#[test]
fn closes_connections_whose_pod_left_the_node_or_the_mesh() {
    let tracker = ConnectionTracker::new("node-b");
    let open = tracker.register(conn("guestbook"));
    let moved = STATE.replace("nodeName: node-b", "nodeName: node-c");
    assert_eq!(
        tracker.revocation(&snapshot(&[&moved]), &conn("guestbook")),
        Some(Revocation::DestinationGone)
    );
    let unenrolled = STATE.replace("labels: {istio.io/dataplane-mode: ambient}", "labels: {}");
    assert_eq!(tracker.reauthorize(&snapshot(&[&unenrolled])), 1);
    assert!(open.close_token().is_cancelled());
}

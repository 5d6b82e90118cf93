//! Reports from a small guestbook-like state, with and without an agent's facts,
//! and their text form.

use std::path::Path;

use super::*;
use crate::describe::render::render;
use crate::state::{LoadOptions, SnapshotBuilder};

const STATE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: v1
kind: Pod
metadata: {name: analyzer, namespace: default, labels: {app: analyzer}}
spec: {nodeName: node1, serviceAccountName: analyzer}
status: {phase: Running, podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy, namespace: outside, labels: {app: legacy}}
spec: {nodeName: node0, serviceAccountName: legacy}
status: {phase: Running, podIP: 10.244.0.3}
---
apiVersion: v1
kind: Service
metadata: {name: analyzer, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: analyzer}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: analyzer-get, namespace: default}
spec:
  selector: {matchLabels: {app: analyzer}}
  rules:
  - to: [{operation: {methods: [GET]}}]
"#;

fn snapshot() -> Snapshot {
    let mut builder = SnapshotBuilder::new(&LoadOptions::default());
    builder.add_text(Path::new("state.yaml"), STATE).unwrap();
    builder.build().unwrap()
}

struct Node1;

impl AgentFacts for Node1 {
    fn node(&self) -> &str {
        "node1"
    }
    fn certificate_expiry(&self, identity: &str) -> Option<u64> {
        (identity == "spiffe://cluster.local/ns/default/sa/analyzer").then_some(u64::MAX / 4)
    }
    fn refusals(&self, workload: &str) -> Vec<Denial> {
        if workload != "default/analyzer" {
            return Vec::new();
        }
        vec![Denial {
            at_unix_ms: 0,
            direction: "inbound".into(),
            client: "10.244.2.4:40000".parse().unwrap(),
            client_identity: "spiffe://cluster.local/ns/default/sa/sleep".into(),
            peer_workload: "default/sleep".into(),
            destination: "10.244.1.2:8080".parse().unwrap(),
            reason: "no ALLOW policy matched".into(),
            policy: None,
            detail: None,
        }]
    }
}

fn pod(report: Report) -> PodReport {
    match report {
        Report::Pod(pod) => *pod,
        Report::Service(_) => panic!("not a pod report"),
    }
}

#[test]
fn a_pod_from_the_state_alone() {
    let s = snapshot();
    let subject = Subject::pod("default/analyzer").unwrap();
    let p = pod(describe(&s, &subject, "cluster.local", None).unwrap());
    assert_eq!(p.node, "node1");
    assert!(p.capture.enrolled);
    assert_eq!(p.capture.by_this_agent, None);
    assert_eq!(
        p.identity.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/analyzer")
    );
    assert_eq!(p.certificate, None);
    assert_eq!(p.refusals, None);
    assert_eq!(p.services, vec!["analyzer.default"]);
    // The Service's target port is where a port-level mode would show.
    assert_eq!(p.policies.mtls.ports.len(), 1);
    assert_eq!(p.policies.mtls.ports[0].port, 8080);
    assert_eq!(p.ports.len(), 1, "{:?}", p.ports);
    assert_eq!(p.ports[0].port, 8080);
    let [policy] = p.policies.authorization.as_slice() else {
        panic!("{:#?}", p.policies.authorization);
    };
    assert_eq!(policy.policy, "default/analyzer-get");
    assert_eq!(
        policy.rules[0].enforcement,
        ambit_policy::describe::Enforcement::NeverMatchesAtL4
    );

    let text = render(&Report::Pod(Box::new(p)));
    for want in [
        "Pod: default/analyzer",
        "Enrolled: yes (namespace default labelled istio.io/dataplane-mode=ambient)",
        "mTLS: PERMISSIVE (mesh default, no PeerAuthentication)",
        "ALLOW default/analyzer-get (workload scope, active)",
        "rule 0: WARNING never matches at L4",
        "Only HTTP requests matching an ALLOW rule below get in; every connection that is not HTTP is refused.",
        "to[0].operation.methods: [GET]  (HTTP only)",
        "Recent refusals: unknown",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn an_agent_adds_capture_certificate_and_refusals() {
    let s = snapshot();
    let subject = Subject::pod("default/analyzer").unwrap();
    let p = pod(describe(&s, &subject, "cluster.local", Some(&Node1)).unwrap());
    assert_eq!(p.capture.by_this_agent, Some(true));
    assert!(
        p.certificate
            .as_ref()
            .is_some_and(|c| c.expires_in_seconds > 0)
    );
    assert_eq!(p.refusals.as_ref().map(Vec::len), Some(1));
    let text = render(&Report::Pod(Box::new(p.clone())));
    assert!(text.contains("this agent captures it"), "{text}");
    assert!(
        text.contains("inbound from default/sleep at 10.244.2.4:40000"),
        "{text}"
    );
    // The JSON form reads back as the same report (the admin endpoint's path).
    let json = serde_json::to_string(&Report::Pod(Box::new(p.clone()))).unwrap();
    assert_eq!(
        serde_json::from_str::<Report>(&json).unwrap(),
        Report::Pod(Box::new(p))
    );

    let legacy = pod(describe(
        &s,
        &Subject::pod("outside/legacy").unwrap(),
        "cluster.local",
        Some(&Node1),
    )
    .unwrap());
    assert!(!legacy.capture.enrolled);
    assert_eq!(legacy.capture.by_this_agent, Some(false));
    assert_eq!(legacy.identity, None);
    assert!(
        legacy.capture.why.contains("not labelled"),
        "{}",
        legacy.capture.why
    );
    let text = render(&Report::Pod(Box::new(legacy)));
    assert!(
        text.contains("Not enrolled: Ambit neither captures it"),
        "{text}"
    );
}

#[test]
fn a_service_lists_its_ports_and_describes_its_pods() {
    let s = snapshot();
    let subject = Subject::service("analyzer.default").unwrap();
    let Report::Service(svc) = describe(&s, &subject, "cluster.local", None).unwrap() else {
        panic!("not a service report");
    };
    assert_eq!(svc.vips, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        svc.ports[0].ready_endpoints,
        vec!["10.244.1.2:8080".parse().unwrap()]
    );
    let pods: Vec<&str> = svc.pods.iter().map(|p| p.pod.as_str()).collect();
    assert_eq!(pods, vec!["default/analyzer"]);
    assert!(render(&Report::Service(svc)).starts_with("Service: analyzer.default\n"));

    for (subject, error) in [
        (
            Subject::pod("default/nobody").unwrap(),
            DescribeError::NoSuchPod("default/nobody".into()),
        ),
        (
            Subject::service("nothing.default").unwrap(),
            DescribeError::NoSuchService("nothing.default".into()),
        ),
    ] {
        assert_eq!(describe(&s, &subject, "cluster.local", None), Err(error));
    }
}

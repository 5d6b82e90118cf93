//! `describe` on a small set of policies: which select a workload, the mTLS
//! mode with its source at each level, and how each rule is enforced.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;

fn policies() -> PolicySet {
    let docs = [
        json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "mesh", "namespace": "istio-system"},
            "spec": {"mtls": {"mode": "STRICT"}}}),
        json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "analyzer-ports", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "analyzer"}},
                     "portLevelMtls": {"9000": {"mode": "PERMISSIVE"}}}}),
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "analyzer-access", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "analyzer"}}, "rules": [
            {"from": [{"source": {"principals": ["cluster.local/ns/default/sa/guestbook"]}}]},
            {"to": [{"operation": {"methods": ["GET"]}}]}
        ]}}),
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "no-admin", "namespace": "istio-system"},
        "spec": {"action": "DENY", "rules": [
            {"to": [{"operation": {"ports": ["9000"], "paths": ["/admin"]}}]}
        ]}}),
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "sleep-only", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "sleep"}}}}),
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "elsewhere", "namespace": "other"},
            "spec": {}}),
    ];
    let mut builder = PolicySet::builder("istio-system");
    for doc in &docs {
        builder.add(doc).unwrap();
    }
    builder.build()
}

fn labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_owned(), app.to_owned())])
}

#[test]
fn analyzer_sees_its_policies_rules_and_port_modes() {
    let set = policies();
    let labels = labels("analyzer");
    let target = Target {
        namespace: "default",
        labels: &labels,
    };
    let d = set.describe(&target, &[8080]);

    assert_eq!(d.mtls.mode, MtlsMode::Strict);
    assert_eq!(d.mtls.set_by.as_deref(), Some("istio-system/mesh"));
    let ports: Vec<(u16, MtlsMode, Option<&str>)> = d
        .mtls
        .ports
        .iter()
        .map(|p| (p.port, p.mode, p.set_by.as_deref()))
        .collect();
    assert_eq!(
        ports,
        vec![
            (8080, MtlsMode::Strict, Some("istio-system/mesh")),
            (9000, MtlsMode::Permissive, Some("default/analyzer-ports")),
        ]
    );

    let names: Vec<&str> = d.authorization.iter().map(|a| a.policy.as_str()).collect();
    assert_eq!(
        names,
        vec!["default/analyzer-access", "istio-system/no-admin"]
    );
    let access = &d.authorization[0];
    assert_eq!(
        (access.action.as_str(), access.scope.as_str()),
        ("ALLOW", "workload")
    );
    let enforcement: Vec<Enforcement> = access.rules.iter().map(|r| r.enforcement).collect();
    assert_eq!(
        enforcement,
        vec![Enforcement::L4, Enforcement::NeverMatchesAtL4]
    );
    assert_eq!(
        access.rules[1].fields.http_only,
        vec!["to[0].operation.methods: [GET]"]
    );
    let deny = &d.authorization[1];
    assert_eq!(
        (deny.action.as_str(), deny.scope.as_str()),
        ("DENY", "mesh")
    );
    assert_eq!(deny.rules[0].enforcement, Enforcement::L4PartOnly);
}

#[test]
fn a_workload_without_own_policies_inherits_and_sees_only_mesh_ones() {
    let set = policies();
    let labels = labels("guestbook");
    let d = set.describe(
        &Target {
            namespace: "default",
            labels: &labels,
        },
        &[],
    );
    assert_eq!(d.mtls.mode, MtlsMode::Strict);
    assert!(d.mtls.ports.is_empty());
    let names: Vec<&str> = d.authorization.iter().map(|a| a.policy.as_str()).collect();
    assert_eq!(names, vec!["istio-system/no-admin"]);

    let empty = PolicySet::builder("istio-system").build();
    let d = empty.describe(
        &Target {
            namespace: "default",
            labels: &labels,
        },
        &[80],
    );
    assert_eq!((d.mtls.mode, d.mtls.set_by), (MtlsMode::Permissive, None));
    assert!(d.authorization.is_empty());
}

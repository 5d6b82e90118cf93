//! Table-driven tests of the decision semantics through the public API: every
//! rule of issue 3, its three example policies, and the explanations.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_policy::{Connection, Decision, MtlsMode, PolicySet, Reason, Target, k8s};

const ROOT: &str = "istio-system";

/// Builds a set from YAML; returns it with the error messages of invalid policies.
fn set_with_errors(yaml: &str) -> (PolicySet, Vec<String>) {
    let mut builder = PolicySet::builder(ROOT);
    let mut errors = Vec::new();
    for doc in k8s::documents(yaml).expect("test YAML parses") {
        if let Err(e) = builder.add(&doc.value) {
            errors.push(e.to_string());
        }
    }
    (builder.build(), errors)
}

fn set(yaml: &str) -> PolicySet {
    let (set, errors) = set_with_errors(yaml);
    assert!(errors.is_empty(), "unexpected policy errors: {errors:?}");
    set
}

/// One connection to decide. `from` is a principal (`td/ns/NS/sa/SA`) or `None`
/// for plaintext.
#[derive(Clone, Copy)]
struct Probe {
    ns: &'static str,
    labels: &'static [(&'static str, &'static str)],
    from: Option<&'static str>,
    src_ip: &'static str,
    dst_ip: &'static str,
    port: u16,
}

const P: Probe = Probe {
    ns: "default",
    labels: &[("app", "analyzer")],
    from: Some("cluster.local/ns/default/sa/guestbook"),
    src_ip: "10.0.0.1",
    dst_ip: "10.0.1.1",
    port: 8080,
};

fn decide(set: &PolicySet, p: Probe) -> Decision {
    let labels: BTreeMap<String, String> = p
        .labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let src_namespace = p.from.and_then(|id| id.split('/').nth(2));
    set.evaluate(
        &Target {
            namespace: p.ns,
            labels: &labels,
        },
        &Connection {
            src_ip: p.src_ip.parse::<IpAddr>().expect("probe source IP"),
            src_principal: p.from,
            src_namespace,
            dst_ip: p.dst_ip.parse::<IpAddr>().expect("probe destination IP"),
            dst_port: p.port,
            mtls: p.from.is_some(),
        },
    )
}

/// Expected outcome: allowed, reason, deciding policy and rule.
type Want = (bool, Reason, Option<&'static str>, Option<usize>);

fn run(set: &PolicySet, cases: &[(&str, Probe, Want)]) {
    for (name, probe, (allowed, reason, policy, rule)) in cases {
        let d = decide(set, *probe);
        assert_eq!(
            (d.allowed, d.reason, d.policy.as_deref(), d.rule),
            (*allowed, *reason, *policy, *rule),
            "case {name:?}: {}",
            d.to_json()
        );
    }
}

use Reason::*;

const ISSUE_EXAMPLES: &str = r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: analyzeraccess, namespace: default}
spec:
  selector: {matchLabels: {app: analyzer}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/guestbook"]}}]
    to: [{operation: {methods: ["POST"]}}]
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: my-namespace}
spec:
  selector: {matchLabels: {app: customers}}
  mtls: {mode: STRICT}
"#;

#[test]
fn issue_examples() {
    let set = set(ISSUE_EXAMPLES);
    assert_eq!(set.len(), 3);
    run(
        &set,
        &[
            // The only rule needs `methods`: an ALLOW rule needing L7 never
            // matches, so the analyzer accepts nothing at L4.
            (
                "analyzer from guestbook",
                P,
                (false, NoAllowPolicyMatched, None, None),
            ),
            (
                "other workload: no ALLOW policy",
                Probe {
                    labels: &[("app", "web")],
                    ..P
                },
                (true, NoAllowPolicies, None, None),
            ),
            (
                "mesh STRICT refuses plaintext",
                Probe {
                    labels: &[("app", "web")],
                    from: None,
                    ..P
                },
                (
                    false,
                    PlaintextRefusedByStrict,
                    Some("istio-system/default"),
                    None,
                ),
            ),
            (
                "workload STRICT in my-namespace",
                Probe {
                    ns: "my-namespace",
                    labels: &[("app", "customers")],
                    from: None,
                    ..P
                },
                (
                    false,
                    PlaintextRefusedByStrict,
                    Some("my-namespace/default"),
                    None,
                ),
            ),
        ],
    );
    let labels = BTreeMap::from([("app".to_string(), "customers".to_string())]);
    let dst = Target {
        namespace: "my-namespace",
        labels: &labels,
    };
    assert_eq!(set.mtls_mode(&dst, 80), MtlsMode::Strict);
}

#[test]
fn allow_nothing_and_allow_all() {
    let set = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: locked}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: open}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-nothing, namespace: open}
spec: {action: DENY}
"#);
    run(
        &set,
        &[
            (
                "spec {} allows nothing",
                Probe { ns: "locked", ..P },
                (false, NoAllowPolicyMatched, None, None),
            ),
            (
                "spec {} refuses plaintext too",
                Probe {
                    ns: "locked",
                    from: None,
                    ..P
                },
                (false, NoAllowPolicyMatched, None, None),
            ),
            (
                "rules [{}] allows mTLS",
                Probe { ns: "open", ..P },
                (true, AllowedByAllowRule, Some("open/allow-all"), Some(0)),
            ),
            (
                "rules [{}] allows plaintext",
                Probe {
                    ns: "open",
                    from: None,
                    ..P
                },
                (true, AllowedByAllowRule, Some("open/allow-all"), Some(0)),
            ),
            (
                "untouched namespace",
                Probe { ns: "other", ..P },
                (true, NoAllowPolicies, None, None),
            ),
        ],
    );
}

#[test]
fn deny_before_allow_and_audit_has_no_effect() {
    let set = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: default}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-evil, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {ports: ["9999"]}}]
  - from: [{source: {namespaces: ["evil"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-everything, namespace: default}
spec: {action: AUDIT, rules: [{}]}
"#);
    run(
        &set,
        &[
            (
                "allowed",
                P,
                (true, AllowedByAllowRule, Some("default/allow-all"), Some(0)),
            ),
            (
                "denied by rule 1 despite ALLOW",
                Probe {
                    from: Some("cluster.local/ns/evil/sa/x"),
                    ..P
                },
                (false, DeniedByDenyRule, Some("default/deny-evil"), Some(1)),
            ),
            (
                "denied by rule 0",
                Probe { port: 9999, ..P },
                (false, DeniedByDenyRule, Some("default/deny-evil"), Some(0)),
            ),
        ],
    );
}

#[test]
fn selectors_and_root_namespace() {
    let set = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny-legacy, namespace: istio-system}
spec:
  selector: {matchLabels: {tier: legacy}}
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny-port, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {ports: ["23"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-only-from-api, namespace: shop}
spec:
  selector: {matchLabels: {app: db, tier: data}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/api"]}}]}]
"#);
    let api = Some("cluster.local/ns/shop/sa/api");
    run(
        &set,
        &[
            (
                "root selector applies in any namespace",
                Probe {
                    ns: "x",
                    labels: &[("tier", "legacy")],
                    ..P
                },
                (
                    false,
                    DeniedByDenyRule,
                    Some("istio-system/mesh-deny-legacy"),
                    Some(0),
                ),
            ),
            (
                "root selector needs the label",
                Probe {
                    ns: "x",
                    labels: &[("tier", "new")],
                    ..P
                },
                (true, NoAllowPolicies, None, None),
            ),
            (
                "root namespace-wide applies everywhere",
                Probe {
                    ns: "y",
                    port: 23,
                    ..P
                },
                (
                    false,
                    DeniedByDenyRule,
                    Some("istio-system/mesh-deny-port"),
                    Some(0),
                ),
            ),
            (
                "full selector matches",
                Probe {
                    ns: "shop",
                    labels: &[("app", "db"), ("tier", "data"), ("v", "1")],
                    from: api,
                    ..P
                },
                (
                    true,
                    AllowedByAllowRule,
                    Some("shop/db-only-from-api"),
                    Some(0),
                ),
            ),
            (
                "wrong caller",
                Probe {
                    ns: "shop",
                    labels: &[("app", "db"), ("tier", "data")],
                    ..P
                },
                (false, NoAllowPolicyMatched, None, None),
            ),
            (
                "partial selector does not select",
                Probe {
                    ns: "shop",
                    labels: &[("app", "db")],
                    ..P
                },
                (true, NoAllowPolicies, None, None),
            ),
            (
                "policy stays in its namespace",
                Probe {
                    ns: "other",
                    labels: &[("app", "db"), ("tier", "data")],
                    ..P
                },
                (true, NoAllowPolicies, None, None),
            ),
        ],
    );
}

#[test]
fn principals_namespaces_and_wildcards() {
    let set = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: callers, namespace: default}
spec:
  rules:
  - from: [{source: {principals: ["cluster.local/ns/prod/*"]}}]
  - from: [{source: {principals: ["*/sa/admin"]}}]
  - from: [{source: {namespaces: ["team-*"], notPrincipals: ["*/sa/intern"]}}]
  - from: [{source: {principals: ["*"]}}]
    to: [{operation: {ports: ["15000"]}}]
  - from: [{source: {serviceAccounts: ["ops/robot"]}}]
"#);
    run(
        &set,
        &[
            (
                "prefix",
                Probe {
                    from: Some("cluster.local/ns/prod/sa/x"),
                    ..P
                },
                (true, AllowedByAllowRule, Some("default/callers"), Some(0)),
            ),
            (
                "prefix is not substring",
                Probe {
                    from: Some("cluster.local/ns/production/sa/x"),
                    ..P
                },
                (false, NoAllowPolicyMatched, None, None),
            ),
            (
                "suffix",
                Probe {
                    from: Some("other.domain/ns/dev/sa/admin"),
                    ..P
                },
                (true, AllowedByAllowRule, Some("default/callers"), Some(1)),
            ),
            (
                "namespace wildcard",
                Probe {
                    from: Some("cluster.local/ns/team-a/sa/dev"),
                    ..P
                },
                (true, AllowedByAllowRule, Some("default/callers"), Some(2)),
            ),
            (
                "notPrincipals excludes",
                Probe {
                    from: Some("cluster.local/ns/team-a/sa/intern"),
                    ..P
                },
                (false, NoAllowPolicyMatched, None, None),
            ),
            (
                "presence needs a peer",
                Probe {
                    from: None,
                    port: 15000,
                    ..P
                },
                (false, NoAllowPolicyMatched, None, None),
            ),
            (
                "presence with any peer",
                Probe {
                    from: Some("x/ns/y/sa/z"),
                    port: 15000,
                    ..P
                },
                (true, AllowedByAllowRule, Some("default/callers"), Some(3)),
            ),
            (
                "serviceAccounts any trust domain",
                Probe {
                    from: Some("td.example/ns/ops/sa/robot"),
                    ..P
                },
                (true, AllowedByAllowRule, Some("default/callers"), Some(4)),
            ),
            (
                "serviceAccounts exact",
                Probe {
                    from: Some("cluster.local/ns/ops/sa/robot2"),
                    ..P
                },
                (false, NoAllowPolicyMatched, None, None),
            ),
        ],
    );
}

#[test]
fn ip_blocks_v4_v6_and_not_forms() {
    let set = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nets, namespace: default}
spec:
  rules:
  - from: [{source: {ipBlocks: ["10.1.0.0/16", "2001:db8::/32"], notIpBlocks: ["10.1.9.0/24"]}}]
  - from: [{source: {remoteIpBlocks: ["192.168.7.7"]}}]
  - from: [{source: {notNamespaces: ["blocked"], notRemoteIpBlocks: ["0.0.0.0/0"]}}]
    to: [{operation: {notPorts: ["22"], ports: ["2222", "22"]}}]
  - to: [{operation: {notPorts: ["80"]}}]
    from: [{source: {ipBlocks: ["fd00::/8"]}}]
"#);
    let v6 = "2001:db8:5::1";
    run(
        &set,
        &[
            (
                "v4 in block",
                Probe {
                    src_ip: "10.1.2.3",
                    ..P
                },
                (true, AllowedByAllowRule, Some("default/nets"), Some(0)),
            ),
            (
                "v4-mapped v6 in block",
                Probe {
                    src_ip: "::ffff:10.1.2.3",
                    ..P
                },
                (true, AllowedByAllowRule, Some("default/nets"), Some(0)),
            ),
            (
                "v4 in notIpBlocks",
                Probe {
                    src_ip: "10.1.9.3",
                    ..P
                },
                (false, NoAllowPolicyMatched, None, None),
            ),
            (
                "v6 in block",
                Probe {
                    src_ip: v6,
                    dst_ip: "2001:db8::2",
                    ..P
                },
                (true, AllowedByAllowRule, Some("default/nets"), Some(0)),
            ),
            (
                "remote block at L4 is the peer",
                Probe {
                    src_ip: "192.168.7.7",
                    ..P
                },
                (true, AllowedByAllowRule, Some("default/nets"), Some(1)),
            ),
            (
                "outside all blocks",
                Probe {
                    src_ip: "172.16.0.1",
                    ..P
                },
                (false, NoAllowPolicyMatched, None, None),
            ),
            (
                "notRemoteIpBlocks 0/0 excludes v4",
                Probe {
                    src_ip: "172.16.0.1",
                    port: 2222,
                    ..P
                },
                (false, NoAllowPolicyMatched, None, None),
            ),
            (
                "v6 not in 0/0 and port listed",
                Probe {
                    src_ip: "fe80::1",
                    port: 2222,
                    ..P
                },
                (true, AllowedByAllowRule, Some("default/nets"), Some(2)),
            ),
            (
                "notPorts wins over ports",
                Probe {
                    src_ip: "fe80::1",
                    port: 22,
                    ..P
                },
                (false, NoAllowPolicyMatched, None, None),
            ),
            (
                "v6 block with notPorts",
                Probe {
                    src_ip: "fd00::9",
                    port: 443,
                    ..P
                },
                (true, AllowedByAllowRule, Some("default/nets"), Some(3)),
            ),
            (
                "v6 block, excluded port",
                Probe {
                    src_ip: "fd00::9",
                    port: 80,
                    ..P
                },
                (false, NoAllowPolicyMatched, None, None),
            ),
        ],
    );
}

#[test]
fn when_conditions_are_anded() {
    let set = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: conditions, namespace: default}
spec:
  rules:
  - when:
    - {key: source.ip, values: ["10.0.0.0/8"]}
    - {key: destination.port, values: ["8080", "8443"]}
    - {key: source.principal, notValues: ["*/sa/blocked"]}
    - {key: destination.ip, values: ["10.0.1.1", "fd00::1"]}
  - when:
    - {key: source.namespace, values: ["ops"]}
    - {key: remote.ip, notValues: ["10.9.9.9"]}
"#);
    run(
        &set,
        &[
            (
                "all hold",
                P,
                (
                    true,
                    AllowedByAllowRule,
                    Some("default/conditions"),
                    Some(0),
                ),
            ),
            (
                "plaintext passes notValues on principal",
                Probe { from: None, ..P },
                (
                    true,
                    AllowedByAllowRule,
                    Some("default/conditions"),
                    Some(0),
                ),
            ),
            (
                "one fails",
                Probe { port: 9090, ..P },
                (false, NoAllowPolicyMatched, None, None),
            ),
            (
                "principal notValues",
                Probe {
                    from: Some("cluster.local/ns/a/sa/blocked"),
                    ..P
                },
                (false, NoAllowPolicyMatched, None, None),
            ),
            (
                "destination ip",
                Probe {
                    dst_ip: "10.0.1.2",
                    ..P
                },
                (false, NoAllowPolicyMatched, None, None),
            ),
            (
                "source namespace",
                Probe {
                    src_ip: "1.1.1.1",
                    from: Some("cluster.local/ns/ops/sa/a"),
                    ..P
                },
                (
                    true,
                    AllowedByAllowRule,
                    Some("default/conditions"),
                    Some(1),
                ),
            ),
            (
                "remote.ip notValues",
                Probe {
                    src_ip: "10.9.9.9",
                    port: 1,
                    from: Some("cluster.local/ns/ops/sa/a"),
                    ..P
                },
                (false, NoAllowPolicyMatched, None, None),
            ),
            (
                "namespace needs a peer",
                Probe {
                    src_ip: "1.1.1.1",
                    from: None,
                    ..P
                },
                (false, NoAllowPolicyMatched, None, None),
            ),
        ],
    );
}

#[test]
fn l7_attributes_at_l4() {
    let set = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-l7, namespace: default}
spec:
  rules:
  - to: [{operation: {paths: ["/admin"], ports: ["8080"]}}]
  - from: [{source: {requestPrincipals: ["*"]}}]
  - when: [{key: "request.headers[x-user]", values: ["alice"]}]
  - from: [{source: {principals: ["cluster.local/ns/default/sa/guestbook"]}}]
    to: [{operation: {ports: ["9090"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-l7, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: ["untrusted"]}}]
    to: [{operation: {methods: ["DELETE"]}}]
  - to: [{operation: {hosts: ["*.internal"], ports: ["7070"]}}]
    when: [{key: "request.auth.claims[group]", values: ["x"]}]
"#);
    run(
        &set,
        &[
            (
                "ALLOW rules needing L7 never match",
                P,
                (false, NoAllowPolicyMatched, None, None),
            ),
            (
                "the L4-only ALLOW rule keeps its index",
                Probe { port: 9090, ..P },
                (true, AllowedByAllowRule, Some("default/allow-l7"), Some(3)),
            ),
            (
                "DENY matches on its L4 part",
                Probe {
                    port: 9090,
                    from: Some("cluster.local/ns/untrusted/sa/x"),
                    ..P
                },
                (false, DeniedByDenyRule, Some("default/deny-l7"), Some(0)),
            ),
            (
                "DENY L4 part: port only",
                Probe { port: 7070, ..P },
                (false, DeniedByDenyRule, Some("default/deny-l7"), Some(1)),
            ),
        ],
    );
    let summary = set.summary();
    let allow = summary["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == "default/allow-l7")
        .unwrap();
    assert_eq!(allow["l7_rules"], serde_json::json!([0, 1, 2]));
    assert_eq!(allow["l4_rules"], 1);
}

#[test]
fn custom_invalid_and_waypoint_policies() {
    let (set, errors) = set_with_errors(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: custom}
spec: {action: CUSTOM, provider: {name: opa}, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: broken}
spec:
  selector: {matchLabels: {app: analyzer}}
  rules: [{from: [{source: {ipBlocks: ["10.0.0/8"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: broken}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: waypoint-only, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: DENY
  rules: [{}]
"#,
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("broken/typo")
            && errors[0].contains("spec.rules[0].from[0].source.ipBlocks[0]")
            && errors[0].contains("10.0.0/8"),
        "{}",
        errors[0]
    );
    run(
        &set,
        &[
            (
                "CUSTOM fails closed",
                Probe { ns: "custom", ..P },
                (false, CustomUnsupported, Some("custom/ext-authz"), None),
            ),
            (
                "invalid policy fails closed despite allow-all",
                Probe { ns: "broken", ..P },
                (false, InvalidPolicy, Some("broken/typo"), None),
            ),
            (
                "invalid policy only for what it selects",
                Probe {
                    ns: "broken",
                    labels: &[("app", "web")],
                    ..P
                },
                (true, AllowedByAllowRule, Some("broken/allow-all"), Some(0)),
            ),
            (
                "targetRefs policy is the waypoint's",
                P,
                (true, NoAllowPolicies, None, None),
            ),
        ],
    );
    assert_eq!(set.errors().len(), 1);
    assert_eq!(set.summary()["errors"].as_array().unwrap().len(), 1);
}

#[test]
fn plaintext_and_peer_authentication() {
    let set = set(r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: legacy}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: finance, namespace: legacy}
spec:
  selector: {matchLabels: {app: finance}}
  mtls: {mode: UNSET}
  portLevelMtls:
    "8080": {mode: STRICT}
    "9000": {mode: UNSET}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: off, namespace: dis}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-internal, namespace: dis}
spec: {rules: [{from: [{source: {ipBlocks: ["10.0.0.0/8"]}}]}]}
"#);
    let plain = Probe { from: None, ..P };
    run(
        &set,
        &[
            (
                "mesh STRICT",
                plain,
                (
                    false,
                    PlaintextRefusedByStrict,
                    Some("istio-system/default"),
                    None,
                ),
            ),
            ("mTLS under STRICT", P, (true, NoAllowPolicies, None, None)),
            (
                "namespace PERMISSIVE overrides mesh",
                Probe {
                    ns: "legacy",
                    ..plain
                },
                (true, NoAllowPolicies, None, None),
            ),
            (
                "workload UNSET inherits namespace",
                Probe {
                    ns: "legacy",
                    labels: &[("app", "finance")],
                    port: 80,
                    ..plain
                },
                (true, NoAllowPolicies, None, None),
            ),
            (
                "port-level STRICT",
                Probe {
                    ns: "legacy",
                    labels: &[("app", "finance")],
                    ..plain
                },
                (
                    false,
                    PlaintextRefusedByStrict,
                    Some("legacy/finance"),
                    None,
                ),
            ),
            (
                "port-level UNSET inherits",
                Probe {
                    ns: "legacy",
                    labels: &[("app", "finance")],
                    port: 9000,
                    ..plain
                },
                (true, NoAllowPolicies, None, None),
            ),
            (
                "DISABLE still authorizes plaintext",
                Probe {
                    ns: "dis",
                    src_ip: "192.168.0.1",
                    ..plain
                },
                (false, NoAllowPolicyMatched, None, None),
            ),
            (
                "DISABLE plaintext allowed by ipBlocks",
                Probe { ns: "dis", ..plain },
                (true, AllowedByAllowRule, Some("dis/only-internal"), Some(0)),
            ),
        ],
    );
    let d = decide(
        &set,
        Probe {
            ns: "legacy",
            labels: &[("app", "finance")],
            port: 9000,
            ..plain
        },
    );
    assert_eq!(d.mtls_mode, MtlsMode::Permissive);
    assert_eq!(
        d.to_json(),
        serde_json::json!({"decision": "allow", "policy": null, "rule": null, "reason": "no ALLOW policies", "mtls_mode": "PERMISSIVE"})
    );
    let d = decide(&set, plain);
    assert_eq!(
        d.to_json(),
        serde_json::json!({"decision": "deny", "policy": "istio-system/default", "rule": null, "reason": "plaintext refused by STRICT", "mtls_mode": "STRICT"})
    );
}

#[test]
fn peer_authentication_oldest_wins_and_defaults() {
    let set = set(r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: b-new, namespace: ns1, creationTimestamp: "2024-05-01T00:00:00Z"}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: z-old, namespace: ns1, creationTimestamp: "2023-01-01T00:00:00Z"}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: b, namespace: ns2}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: ns2}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: w-new, namespace: ns3, creationTimestamp: "2025-01-01T00:00:00Z"}
spec: {selector: {matchLabels: {app: analyzer}}, mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: w-old, namespace: ns3, creationTimestamp: "2020-01-01T00:00:00Z"}
spec: {selector: {matchLabels: {app: analyzer}}, mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: root-selector, namespace: istio-system}
spec: {selector: {matchLabels: {app: analyzer}}, mtls: {mode: STRICT}}
"#);
    let labels = BTreeMap::from([("app".to_string(), "analyzer".to_string())]);
    let mode = |ns| {
        set.mtls_mode(
            &Target {
                namespace: ns,
                labels: &labels,
            },
            80,
        )
    };
    assert_eq!(
        mode("ns1"),
        MtlsMode::Disable,
        "oldest by creationTimestamp"
    );
    assert_eq!(mode("ns2"), MtlsMode::Permissive, "same age: by name");
    assert_eq!(mode("ns3"), MtlsMode::Strict, "oldest workload policy");
    assert_eq!(
        mode("elsewhere"),
        MtlsMode::Permissive,
        "root-namespace selector ignored; default PERMISSIVE"
    );
    assert_eq!(
        mode(ROOT),
        MtlsMode::Permissive,
        "ignored in the root namespace too"
    );
    assert_eq!(
        PolicySet::default().mtls_mode(
            &Target {
                namespace: "x",
                labels: &labels
            },
            1
        ),
        MtlsMode::Permissive
    );
}

#[test]
fn invalid_peer_authentication_is_strict() {
    let (set, errors) = set_with_errors(
        r#"
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: typo, namespace: a}
spec: {mtls: {mode: STRICTT}}
"#,
    );
    assert_eq!(
        errors,
        vec![
            r#"PeerAuthentication a/typo: spec.mtls.mode: unknown mTLS mode "STRICTT" (UNSET, DISABLE, PERMISSIVE or STRICT)"#
        ]
    );
    run(
        &set,
        &[(
            "fails closed",
            Probe {
                ns: "a",
                from: None,
                ..P
            },
            (false, PlaintextRefusedByStrict, Some("a/typo"), None),
        )],
    );
}

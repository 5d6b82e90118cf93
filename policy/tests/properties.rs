//! Property tests over generated policies and connections: evaluation never
//! panics, and adding a DENY rule never turns a deny into an allow.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_policy::{Connection, PolicySet, Target};
use proptest::prelude::*;
use serde_json::{Value, json};

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(items)
}

fn list(items: &'static [&'static str]) -> impl Strategy<Value = Vec<&'static str>> {
    proptest::collection::vec(pick(items), 0..3)
}

const PRINCIPALS: &[&str] = &[
    "cluster.local/ns/a/sa/x",
    "cluster.local/ns/b/*",
    "*/sa/x",
    "*",
    "bad*principal",
];
const NAMESPACES: &[&str] = &["a", "b", "istio-system", "*", "a*"];
const CIDRS: &[&str] = &[
    "10.0.0.0/8",
    "10.1.2.3",
    "::/0",
    "fd00::/8",
    "0.0.0.0/0",
    "10.0.0/8",
];
const PORTS: &[&str] = &["80", "8080", "443", "0", "70000"];
const KEYS: &[&str] = &[
    "source.ip",
    "destination.port",
    "source.namespace",
    "request.headers[x]",
    "source.principal",
];

fn source() -> impl Strategy<Value = Value> {
    (list(PRINCIPALS), list(PRINCIPALS), list(NAMESPACES), list(NAMESPACES), list(CIDRS), list(CIDRS), any::<bool>())
        .prop_map(|(p, np, n, nn, ip, nip, l7)| {
            let mut s = json!({"principals": p, "notPrincipals": np, "namespaces": n, "notNamespaces": nn, "ipBlocks": ip, "notIpBlocks": nip});
            if l7 {
                s["requestPrincipals"] = json!(["*"]);
            }
            json!({"source": s})
        })
}

fn operation() -> impl Strategy<Value = Value> {
    (list(PORTS), list(PORTS), any::<bool>()).prop_map(|(ports, not_ports, l7)| {
        let mut op = json!({"ports": ports, "notPorts": not_ports});
        if l7 {
            op["methods"] = json!(["GET"]);
        }
        json!({"operation": op})
    })
}

fn condition() -> impl Strategy<Value = Value> {
    (
        pick(KEYS),
        list(&["10.0.0.0/8", "8080", "a", "cluster.local/ns/a/sa/x"]),
    )
        .prop_map(|(key, values)| json!({"key": key, "values": values}))
}

fn rule() -> impl Strategy<Value = Value> {
    (
        proptest::collection::vec(source(), 0..3),
        proptest::collection::vec(operation(), 0..2),
        proptest::collection::vec(condition(), 0..2),
    )
        .prop_map(|(from, to, when)| json!({"from": from, "to": to, "when": when}))
}

fn policy(action: &'static str) -> impl Strategy<Value = Value> {
    (
        pick(&["a", "b", "istio-system"]),
        any::<u16>(),
        proptest::option::of(pick(&["x", "y"])),
        proptest::collection::vec(rule(), 0..3),
    )
        .prop_map(move |(ns, id, app, rules)| {
            let mut spec = json!({"action": action, "rules": rules});
            if let Some(app) = app {
                spec["selector"] = json!({"matchLabels": {"app": app}});
            }
            json!({
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": {"name": format!("p{id}"), "namespace": ns},
                "spec": spec,
            })
        })
}

fn any_policy() -> impl Strategy<Value = Value> {
    prop_oneof![4 => policy("ALLOW"), 4 => policy("DENY"), 1 => policy("AUDIT"), 1 => policy("CUSTOM")]
}

fn peer_authn() -> impl Strategy<Value = Value> {
    (
        pick(&["a", "istio-system"]),
        pick(&["STRICT", "PERMISSIVE", "DISABLE", "UNSET"]),
    )
        .prop_map(|(ns, mode)| {
            json!({
                "apiVersion": "security.istio.io/v1beta1",
                "kind": "PeerAuthentication",
                "metadata": {"name": "default", "namespace": ns},
                "spec": {"mtls": {"mode": mode}},
            })
        })
}

#[derive(Debug, Clone)]
struct Probe {
    ns: &'static str,
    app: &'static str,
    principal: Option<&'static str>,
    src_ip: IpAddr,
    port: u16,
}

fn probe() -> impl Strategy<Value = Probe> {
    (
        pick(&["a", "b", "istio-system", "c"]),
        pick(&["x", "y", "z"]),
        proptest::option::of(pick(&[
            "cluster.local/ns/a/sa/x",
            "cluster.local/ns/b/sa/y",
            "td/ns/c/sa/x",
        ])),
        pick(&[
            "10.1.2.3",
            "192.168.0.1",
            "fd00::1",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ]),
        pick(&[80u16, 443, 8080, 9090]),
    )
        .prop_map(|(ns, app, principal, ip, port)| Probe {
            ns,
            app,
            principal,
            src_ip: ip.parse().expect("literal address"),
            port,
        })
}

fn build(policies: &[Value]) -> PolicySet {
    let mut b = PolicySet::builder("istio-system");
    for p in policies {
        // Invalid generated policies are recorded fail-closed; that is part of
        // what is under test.
        let _ = b.add(p);
    }
    b.build()
}

fn allowed(set: &PolicySet, p: &Probe) -> bool {
    let labels = BTreeMap::from([("app".to_string(), p.app.to_string())]);
    let d = set.evaluate(
        &Target {
            namespace: p.ns,
            labels: &labels,
        },
        &Connection {
            src_ip: p.src_ip,
            src_principal: p.principal,
            src_namespace: p.principal.and_then(|id| id.split('/').nth(2)),
            dst_ip: "10.9.9.9".parse().expect("literal address"),
            dst_port: p.port,
            mtls: p.principal.is_some(),
        },
    );
    // The explanation is consistent with the outcome.
    assert_eq!(
        d.to_json()["decision"],
        if d.allowed { "allow" } else { "deny" }
    );
    d.allowed
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn evaluation_never_panics(
        policies in proptest::collection::vec(any_policy(), 0..8),
        peers in proptest::collection::vec(peer_authn(), 0..3),
        probes in proptest::collection::vec(probe(), 1..8),
    ) {
        let all: Vec<Value> = policies.into_iter().chain(peers).collect();
        let set = build(&all);
        let _ = set.summary();
        for p in &probes {
            allowed(&set, p);
        }
    }

    #[test]
    fn adding_a_deny_rule_never_turns_deny_into_allow(
        policies in proptest::collection::vec(any_policy(), 0..8),
        peers in proptest::collection::vec(peer_authn(), 0..2),
        extra in policy("DENY"),
        extra_rule in rule(),
        probes in proptest::collection::vec(probe(), 1..8),
    ) {
        let base: Vec<Value> = policies.into_iter().chain(peers).collect();
        let before = build(&base);

        // A whole new DENY policy.
        // (Named apart so it cannot replace a generated policy.)
        let mut extra = extra;
        extra["metadata"]["name"] = json!("extra-deny");
        let mut with_policy = base.clone();
        with_policy.push(extra);
        let after_policy = build(&with_policy);

        // One more rule on an existing DENY policy (when there is one).
        let mut with_rule = base.clone();
        if let Some(rules) = with_rule
            .iter_mut()
            .find(|p| p["spec"]["action"] == "DENY")
            .and_then(|p| p["spec"]["rules"].as_array_mut())
        {
            rules.push(extra_rule);
        }
        let after_rule = build(&with_rule);

        for p in &probes {
            if !allowed(&before, p) {
                prop_assert!(!allowed(&after_policy, p), "new DENY policy allowed {p:?}");
                prop_assert!(!allowed(&after_rule, p), "new DENY rule allowed {p:?}");
            }
        }
    }
}

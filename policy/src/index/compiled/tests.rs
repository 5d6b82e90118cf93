//! The compiled form against the model's reference matchers (a differential
//! property), and the pieces it is built from: merged CIDR ranges, port sets,
//! and the label index with its selector rest check.

use std::collections::BTreeMap;
use std::net::IpAddr;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::index::Scope;
use crate::parse::{self, Compiled};

fn authz(spec: Value) -> AuthzPolicy {
    let obj = json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "a"},
        "spec": spec,
    });
    match parse::parse(&obj).map(|p| p.compiled) {
        Ok(Compiled::Authz(p)) => p,
        _ => panic!("not an AuthorizationPolicy"),
    }
}

fn ip_set(nets: &[&str]) -> IpSet {
    let nets = nets
        .iter()
        .map(|n| IpMatch::parse_one(n).unwrap())
        .collect();
    IpSet::new(&IpMatch::new(nets))
}

#[test]
fn ip_ranges_merge_and_keep_boundaries() {
    let set = ip_set(&[
        "10.0.0.0/9",
        "10.128.0.0/9",
        "10.1.0.0/16",
        "192.168.1.7",
        "::/0",
    ]);
    // Adjacent and nested networks merge into one range.
    assert_eq!(
        &*set.v4,
        &[(0x0a00_0000, 0x0aff_ffff), (0xc0a8_0107, 0xc0a8_0107)]
    );
    for (ip, want) in [
        ("9.255.255.255", false),
        ("10.0.0.0", true),
        ("10.255.255.255", true),
        ("11.0.0.0", false),
        ("192.168.1.7", true),
        ("192.168.1.8", false),
        ("::ffff:10.2.3.4", true),
        ("2001:db8::1", true),
    ] {
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(set.contains(ip.into()), want, "{ip}");
    }
    // `::/0` is IPv6 only, as in the model: IPv4 peers are not in it.
    assert!(!ip_set(&["::/0"]).contains("10.0.0.1".parse::<IpAddr>().unwrap().into()));
    let top = ip_set(&["255.255.255.255", "255.255.255.254"]);
    assert_eq!(&*top.v4, &[(u32::MAX - 1, u32::MAX)]);
}

#[test]
fn ports_inline_and_sorted() {
    let small = Ports::new(&PortSet::new(vec![8443, 80, 80]));
    assert!(matches!(small, Ports::Inline(2, _)));
    assert!(small.contains(80) && small.contains(8443) && !small.contains(0));
    let many: Vec<u16> = (1..=20).rev().map(|p| p * 100).collect();
    let large = Ports::new(&PortSet::new(many));
    assert!(matches!(large, Ports::Sorted(_)));
    assert!(large.contains(100) && large.contains(2000) && !large.contains(150));
    assert!(Ports::new(&PortSet::default()).is_empty());
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Positions of the policies `scope` offers for `labels` that also pass their
/// selector rest check.
fn selected(scope: &Scope, pairs: &[(&str, &str)]) -> Vec<PolicyIdx> {
    let labels = labels(pairs);
    let mut out = Vec::new();
    scope.for_each_candidate(&labels, |c| {
        if c.selects(&labels) {
            out.push(c.idx);
        }
    });
    out.sort_unstable();
    out
}

#[test]
fn label_index_finds_exactly_the_selected_policies() {
    let allow = |selector: Value| authz(json!({"selector": selector, "rules": [{}]}));
    let policies = vec![
        authz(json!({"rules": [{}]})),
        allow(json!({"matchLabels": {"app": "a"}})),
        allow(json!({"matchLabels": {"app": "a", "tier": "db"}})),
        allow(json!({"matchLabels": {"app": "ab"}})),
        // Same bytes as app=ab once key and value are joined.
        allow(json!({"matchLabels": {"appa": "b"}})),
        authz(json!({"action": "AUDIT", "rules": [{}]})),
    ];
    let scope = Scope::new(&policies, &[0, 1, 2, 3, 4, 5]);
    assert_eq!(selected(&scope, &[]), [0]);
    assert_eq!(selected(&scope, &[("app", "a")]), [0, 1]);
    assert_eq!(selected(&scope, &[("app", "a"), ("tier", "db")]), [0, 1, 2]);
    assert_eq!(selected(&scope, &[("app", "b"), ("tier", "db")]), [0]);
    assert_eq!(selected(&scope, &[("app", "ab")]), [0, 3]);
    assert_eq!(selected(&scope, &[("appa", "b")]), [0, 4]);
    assert_eq!(selected(&scope, &[("ap", "pab")]), [0]);
    // Each policy is offered once even when the workload has all its labels.
    let labels = labels(&[("app", "a"), ("tier", "db")]);
    let mut offered = Vec::new();
    scope.for_each_candidate(&labels, |c| offered.push(c.idx));
    offered.sort_unstable();
    assert_eq!(offered, [0, 1, 2]);
}

#[test]
fn only_unproven_selector_pairs_are_rechecked() {
    let p = authz(json!({"selector": {"matchLabels": {"app": "a", "tier": "db"}}, "rules": [{}]}));
    let c = Candidate::new(0, &p, Some(("app", "a"))).unwrap();
    assert_eq!(c.rest.len(), 1);
    assert!(c.selects(&labels(&[("tier", "db")])));
    assert!(!c.selects(&labels(&[("tier", "web")])));
    let audit = authz(json!({"action": "AUDIT"}));
    assert!(Candidate::new(0, &audit, None).is_none());
}

fn pick(items: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
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
];
const NAMESPACES: &[&str] = &["a", "b", "*", "a*", "*b"];
const CIDRS: &[&str] = &[
    "10.0.0.0/8",
    "10.1.2.3",
    "10.1.2.4/31",
    "::/0",
    "fd00::/8",
    "0.0.0.0/0",
    "::ffff:0:0/96",
];
const PORTS: &[&str] = &["80", "8080", "443", "1", "2", "3", "4", "5", "6", "7"];
const IPS: &[&str] = &[
    "10.1.2.3",
    "10.1.2.4",
    "10.1.2.5",
    "10.1.2.6",
    "::ffff:10.1.2.3",
    "fd00::1",
    "2001:db8::1",
    "192.0.2.1",
];

fn source() -> impl Strategy<Value = Value> {
    let strings = (
        list(PRINCIPALS),
        list(PRINCIPALS),
        list(NAMESPACES),
        list(NAMESPACES),
    );
    let more = (list(CIDRS), list(CIDRS), list(CIDRS), list(&["a/x", "b/y"]));
    (strings, more).prop_map(|((p, np, n, nn), (ip, nip, rip, sa))| {
        json!({"source": {"principals": p, "notPrincipals": np, "namespaces": n,
            "notNamespaces": nn, "ipBlocks": ip, "notIpBlocks": nip, "remoteIpBlocks": rip,
            "serviceAccounts": sa}})
    })
}

fn condition() -> impl Strategy<Value = Value> {
    let keys = &[
        "source.ip",
        "destination.ip",
        "destination.port",
        "source.namespace",
        "source.principal",
    ];
    let values = &[
        "10.0.0.0/8",
        "fd00::/8",
        "8080",
        "a",
        "cluster.local/ns/a/sa/x",
        "*",
    ];
    (pick(keys), list(values), list(values)).prop_filter_map(
        "values of the key's type",
        |(key, values, not_values)| {
            let typed = |v: &&str| match key {
                "destination.port" => v.parse::<u16>().is_ok(),
                "source.ip" | "destination.ip" => v.contains('/'),
                _ => !v.contains('/') || v.starts_with("cluster"),
            };
            let values: Vec<_> = values.into_iter().filter(typed).collect();
            let not_values: Vec<_> = not_values.into_iter().filter(typed).collect();
            (!values.is_empty() || !not_values.is_empty())
                .then(|| json!({"key": key, "values": values, "notValues": not_values}))
        },
    )
}

fn rules() -> impl Strategy<Value = Vec<Value>> {
    let op = (list(PORTS), list(PORTS))
        .prop_map(|(p, np)| json!({"operation": {"ports": p, "notPorts": np}}));
    let rule = (
        proptest::collection::vec(source(), 0..3),
        proptest::collection::vec(op, 0..2),
        proptest::collection::vec(condition(), 0..2),
    )
        .prop_map(|(from, to, when)| json!({"from": from, "to": to, "when": when}));
    proptest::collection::vec(rule, 0..4)
}

fn attributes() -> impl Strategy<
    Value = (
        Option<&'static str>,
        Option<&'static str>,
        &'static str,
        &'static str,
        u16,
    ),
> {
    let principal = proptest::option::of(pick(&[
        "cluster.local/ns/a/sa/x",
        "cluster.local/ns/b/sa/y",
        "td/ns/a/sa/x",
        "other",
    ]));
    let namespace = proptest::option::of(pick(&["a", "b", "ab", "c"]));
    let port = proptest::sample::select(&[80u16, 443, 8080, 1, 7, 9][..]);
    (principal, namespace, pick(IPS), pick(IPS), port)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The compiled rules pick the same first matching rule as the model.
    #[test]
    fn compiled_rules_decide_as_the_model(
        rules in rules(),
        probes in proptest::collection::vec(attributes(), 16),
    ) {
        let p = authz(json!({"action": "DENY", "rules": rules}));
        let Effect::Deny(model) = &p.effect else {
            return Err(TestCaseError::reject("policy did not compile"));
        };
        let c = Candidate::new(0, &p, None).unwrap();
        for (principal, namespace, src, dst, port) in probes {
            let a = Attributes {
                src_ip: src.parse().unwrap(),
                principal,
                namespace,
                dst_ip: dst.parse().unwrap(),
                dst_port: port,
            };
            let want = model.iter().find(|r| r.matches(&a)).map(|r| r.index);
            prop_assert_eq!(c.first_match(&Probe::new(&a)), want, "{:?}", a);
        }
    }
}

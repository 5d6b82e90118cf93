use serde_json::{Value, json};

use super::*;

fn authz(spec: Value) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": spec,
    })
}

#[test]
fn not_a_policy_is_refused_without_record() {
    let err =
        parse(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}})).unwrap_err();
    assert_eq!(err.kind, None);
    assert!(matches!(err.problem, Problem::NotAPolicy { .. }));
    assert!(
        parse(&json!({"apiVersion": "security.istio.io/v2", "kind": "AuthorizationPolicy"}))
            .is_err()
    );
}

#[test]
fn errors_name_policy_and_field() {
    let from = |source: Value| json!({"rules": [{"from": [{"source": source}]}]});
    let cases: Vec<(Value, &str, Problem)> = vec![
        (
            from(json!({"ipBlocks": ["10.0.0.1", "10.0.0/8"]})),
            "spec.rules[0].from[0].source.ipBlocks[1]",
            Problem::BadCidr("10.0.0/8".into()),
        ),
        (
            from(json!({"notRemoteIpBlocks": ["fd00::/129"]})),
            "spec.rules[0].from[0].source.notRemoteIpBlocks[0]",
            Problem::BadCidr("fd00::/129".into()),
        ),
        (
            json!({"rules": [{}, {"to": [{"operation": {"ports": ["http"]}}]}]}),
            "spec.rules[1].to[0].operation.ports[0]",
            Problem::BadPort("http".into()),
        ),
        (
            json!({"rules": [{"to": [{"operation": {"notPorts": [0]}}]}]}),
            "spec.rules[0].to[0].operation.notPorts[0]",
            Problem::BadPort("0".into()),
        ),
        (
            json!({"action": "REJECT"}),
            "spec.action",
            Problem::UnknownAction("REJECT".into()),
        ),
        (
            from(json!({"principals": ["spiffe://cluster.local/ns/a/sa/b"]})),
            "spec.rules[0].from[0].source.principals[0]",
            Problem::MalformedPrincipal("spiffe://cluster.local/ns/a/sa/b".into()),
        ),
        (
            from(json!({"notPrincipals": ["cluster.local/*/sa/b"]})),
            "spec.rules[0].from[0].source.notPrincipals[0]",
            Problem::MalformedPrincipal("cluster.local/*/sa/b".into()),
        ),
        (
            from(json!({"namespaces": [""]})),
            "spec.rules[0].from[0].source.namespaces[0]",
            Problem::MalformedValue(String::new()),
        ),
        (
            from(json!({"serviceAccounts": ["just-a-name"]})),
            "spec.rules[0].from[0].source.serviceAccounts[0]",
            Problem::MalformedServiceAccount("just-a-name".into()),
        ),
        (
            from(json!({"principles": ["a"]})),
            "spec.rules[0].from[0].source.principles",
            Problem::UnknownField,
        ),
        (
            from(json!({})),
            "spec.rules[0].from[0].source",
            Problem::Empty,
        ),
        (
            json!({"rules": [{"from": [{}]}]}),
            "spec.rules[0].from[0].source",
            Problem::Missing,
        ),
        (
            json!({"rules": [{"when": [{"key": "source.ip"}]}]}),
            "spec.rules[0].when[0]",
            Problem::NoConditionValues,
        ),
        (
            json!({"rules": [{"when": [{"key": "source.pod", "values": ["a"]}]}]}),
            "spec.rules[0].when[0].key",
            Problem::UnknownConditionKey("source.pod".into()),
        ),
        (
            json!({"rules": [{"when": [{"key": "destination.ip", "notValues": ["x"]}]}]}),
            "spec.rules[0].when[0].notValues[0]",
            Problem::BadCidr("x".into()),
        ),
        (
            json!({"rules": "all"}),
            "spec.rules",
            Problem::WrongType("a list"),
        ),
        (
            json!({"selector": {"matchLabels": {"app": 3}}}),
            "spec.selector.matchLabels.app",
            Problem::WrongType("a string"),
        ),
    ];
    for (spec, field, problem) in cases {
        let parsed = parse(&authz(spec.clone())).unwrap();
        let err = parsed
            .error
            .unwrap_or_else(|| panic!("no error for {spec}"));
        assert_eq!(
            (err.field.as_str(), &err.problem),
            (field, &problem),
            "{spec}"
        );
        assert_eq!(err.policy, "ns/p");
        assert!(
            err.to_string()
                .starts_with(&format!("AuthorizationPolicy ns/p: {field}: ")),
            "{err}"
        );
        let Compiled::Authz(p) = parsed.compiled else {
            panic!("kind")
        };
        assert!(
            matches!(p.effect, crate::model::Effect::Invalid),
            "{spec} must fail closed"
        );
    }
}

#[test]
fn peer_authentication_errors() {
    let pa = |spec: Value| {
        json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
               "metadata": {"name": "d", "namespace": "ns"}, "spec": spec})
    };
    let cases: Vec<(Value, &str, Problem)> = vec![
        (
            json!({"mtls": {"mode": "strict"}}),
            "spec.mtls.mode",
            Problem::UnknownMode("strict".into()),
        ),
        (
            json!({"portLevelMtls": {"80": {"mode": "DISABLE"}}}),
            "spec.portLevelMtls",
            Problem::PortLevelWithoutSelector,
        ),
        (
            json!({"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {"http": {"mode": "DISABLE"}}}),
            "spec.portLevelMtls.http",
            Problem::BadPort("http".into()),
        ),
    ];
    for (spec, field, problem) in cases {
        let parsed = parse(&pa(spec.clone())).unwrap();
        let err = parsed
            .error
            .unwrap_or_else(|| panic!("no error for {spec}"));
        assert_eq!(
            (err.field.as_str(), &err.problem),
            (field, &problem),
            "{spec}"
        );
        let Compiled::Peer(p) = parsed.compiled else {
            panic!("kind")
        };
        assert!(p.invalid && p.mode == Some(crate::model::MtlsMode::Strict));
    }
}

#[test]
fn missing_name_and_default_namespace() {
    let parsed = parse(&json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {}, "spec": {}})).unwrap();
    let err = parsed.error.unwrap();
    assert_eq!(
        (err.policy.as_str(), err.field.as_str(), err.problem),
        ("default/", "metadata.name", Problem::Missing)
    );
}

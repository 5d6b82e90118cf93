//! Connections decided against a state holding issue 3's examples.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use ambit_ca::SpiffeId;
use ambit_policy::{MtlsMode, Reason};

use crate::authz::{AuthzError, Inbound};
use crate::state::{LoadOptions, Snapshot, SnapshotBuilder};

const STATE: &str = include_str!("../../../tests/fixtures/authz-state.yaml");

fn snapshot() -> Snapshot {
    let mut builder = SnapshotBuilder::new(&LoadOptions::default());
    builder
        .add_text(Path::new("authz-state.yaml"), STATE)
        .unwrap();
    builder.build().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// (from, to, plaintext, allowed, policy, rule, reason, mode)
type Case = (
    &'static str,
    &'static str,
    bool,
    bool,
    Option<&'static str>,
    Option<usize>,
    Reason,
    MtlsMode,
);

#[test]
fn decisions_from_state_identities() {
    let s = snapshot();
    #[rustfmt::skip]
    let cases: &[Case] = &[
        // analyzeraccess needs POST, which L4 cannot see: its ALLOW never matches.
        ("10.10.0.1", "10.10.0.2:8080", false, false, None, None, Reason::NoAllowPolicyMatched, MtlsMode::Strict),
        ("10.10.0.1", "10.10.0.3:9080", false, true, Some("default/reviews-from-guestbook"), Some(1), Reason::AllowedByAllowRule, MtlsMode::Strict),
        ("10.10.0.1", "10.10.0.3:9081", false, false, None, None, Reason::NoAllowPolicyMatched, MtlsMode::Strict),
        // Mesh-wide STRICT: no identity, no entry.
        ("10.10.0.1", "10.10.0.3:9080", true, false, Some("istio-system/default"), None, Reason::PlaintextRefusedByStrict, MtlsMode::Strict),
        ("10.10.2.1", "10.10.0.3:9080", false, false, Some("istio-system/default"), None, Reason::PlaintextRefusedByStrict, MtlsMode::Strict),
        ("192.0.2.7", "10.10.0.3:9080", false, false, Some("istio-system/default"), None, Reason::PlaintextRefusedByStrict, MtlsMode::Strict),
        // Namespace PERMISSIVE overrides the mesh; the workload STRICT overrides that.
        ("10.10.2.1", "10.10.1.3:80", false, true, None, None, Reason::NoAllowPolicies, MtlsMode::Permissive),
        ("10.10.2.1", "10.10.1.1:9090", false, false, Some("my-namespace/default"), None, Reason::PlaintextRefusedByStrict, MtlsMode::Strict),
        ("10.10.0.1", "10.10.1.1:8080", false, false, Some("my-namespace/deny-default"), Some(0), Reason::DeniedByDenyRule, MtlsMode::Strict),
        ("10.10.0.1", "10.10.1.1:9090", false, true, None, None, Reason::NoAllowPolicies, MtlsMode::Strict),
        ("10.10.0.1", "10.10.1.2:80", false, false, Some("my-namespace/broken"), None, Reason::InvalidPolicy, MtlsMode::Permissive),
    ];
    for &(from, to, plaintext, allowed, policy, rule, reason, mode) in cases {
        let d = s
            .authorize_from_state(ip(from), addr(to), plaintext, "cluster.local")
            .unwrap();
        let case = format!("{from} -> {to} plaintext={plaintext}: {d:?}");
        assert_eq!(d.allowed, allowed, "{case}");
        assert_eq!(d.policy.as_deref(), policy, "{case}");
        assert_eq!(d.rule, rule, "{case}");
        assert_eq!(d.reason, reason, "{case}");
        assert_eq!(d.mtls_mode, mode, "{case}");
    }
}

#[test]
fn verified_peer_identity_is_what_counts() {
    let s = snapshot();
    let guestbook = SpiffeId::new("cluster.local", "default", "guestbook").unwrap();
    let productpage = SpiffeId::new("cluster.local", "default", "productpage").unwrap();
    let inbound = |peer, dst| Inbound {
        src: ip("10.10.9.9"),
        peer,
        dst: addr(dst),
    };

    // The source address is not a pod; the certificate alone names the peer.
    let d = s
        .authorize(&inbound(Some(&guestbook), "10.10.0.3:9080"))
        .unwrap();
    assert!(d.allowed);
    assert_eq!(d.rule, Some(1));
    let d = s
        .authorize(&inbound(Some(&productpage), "10.10.0.3:7000"))
        .unwrap();
    assert!(d.allowed);
    assert_eq!(d.rule, Some(0));
    let d = s.authorize(&inbound(None, "10.10.0.3:9080")).unwrap();
    assert_eq!(d.reason, Reason::PlaintextRefusedByStrict);

    // The peer's namespace comes from its identity: default is denied on 8080.
    let d = s
        .authorize(&inbound(Some(&guestbook), "10.10.1.1:8080"))
        .unwrap();
    assert_eq!(d.reason, Reason::DeniedByDenyRule);
}

#[test]
fn trust_domain_shapes_the_principal() {
    let s = snapshot();
    let d = s
        .authorize_from_state(
            ip("10.10.0.1"),
            addr("10.10.0.3:9080"),
            false,
            "example.org",
        )
        .unwrap();
    assert_eq!(d.reason, Reason::NoAllowPolicyMatched);
}

#[test]
fn unknown_destination_is_an_error() {
    let s = snapshot();
    let e = s
        .authorize(&Inbound {
            src: ip("10.10.0.1"),
            peer: None,
            dst: addr("10.10.3.3:80"),
        })
        .unwrap_err();
    assert_eq!(e, AuthzError::UnknownDestination(ip("10.10.3.3")));
    assert_eq!(e.to_string(), "no workload with IP 10.10.3.3 in the state");
}

#[test]
fn invalid_policy_is_reported_with_its_origin() {
    let s = snapshot();
    let errors: Vec<String> = s.policy_errors().iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("authz-state.yaml:")
            && errors[0].contains("my-namespace/broken")
            && errors[0].contains("spec.rules[0].from[0].source.ipBlocks[0]"),
        "{}",
        errors[0]
    );
}

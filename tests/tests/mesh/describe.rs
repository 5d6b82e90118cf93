//! `ambit-agent describe` on the guestbook mesh, with analyzer behind a
//! Service and a policy whose second rule needs HTTP attributes: from the
//! state file, and from analyzer's agent right after it refused sleep, with
//! the refusal, the certificate and the L4 verdict on each rule; the refusal
//! is also counted with Istio's `DENY` response flag by both agents.

use std::net::Ipv4Addr;
use std::time::Duration;

use ambit_tests::mesh::guestbook;
use ambit_tests::require_e2e;

use crate::scenario::{ECHO_PORT, Guestbook, echo, eventually, payload, scrape};

/// Guestbook's principal may connect; rule 1 (GET only) can never be
/// proven at L4, so it lets nobody else in.
const ANALYZER_ACCESS: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: analyzer-access, namespace: default}
spec:
  selector: {matchLabels: {app: analyzer}}
  rules:
  - from:
    - source: {principals: [\"cluster.local/ns/default/sa/guestbook\"]}
  - to:
    - operation: {methods: [GET]}
";

const CLOSED: &str = "istio_tcp_connections_closed_total";

#[test]
fn describe_explains_policies_and_a_refusal_a_moment_ago() {
    if !require_e2e() {
        return;
    }
    let builder = guestbook::builder()
        .service(
            "default",
            "analyzer",
            Ipv4Addr::new(10, 96, 0, 10),
            ("app", "analyzer"),
            &[(80, ECHO_PORT)],
        )
        .document(ANALYZER_ACCESS);
    let gb = Guestbook::start_with(builder).unwrap_or_else(|e| panic!("starting the mesh: {e}"));
    let (analyzer, sleep, guestbook) = (gb.pod("analyzer"), gb.pod("sleep"), gb.pod("guestbook"));
    let mesh = &gb.mesh;

    // From the state file alone: no agent, so no certificate or refusals.
    let described = mesh
        .describe(None, "pod", "default/analyzer", false)
        .unwrap();
    assert_eq!(described.code, Some(0), "{described:?}");
    for want in [
        "Pod: default/analyzer",
        "Node: node1",
        "Enrolled: yes",
        "Identity: spiffe://cluster.local/ns/default/sa/analyzer",
        "Services: analyzer.default",
        "mTLS: PERMISSIVE (mesh default, no PeerAuthentication)",
        "ALLOW default/analyzer-access (workload scope, active)",
        "Only connections matching an ALLOW rule below get in.",
        "rule 0: enforced at L4",
        "rule 1: WARNING never matches at L4: needs HTTP attributes",
        "to[0].operation.methods: [GET]  (HTTP only)",
        "Recent refusals: unknown",
    ] {
        assert!(
            described.stdout.contains(want),
            "missing {want:?}:\n{}",
            described.stdout
        );
    }

    let before = scrape(&gb);
    let data = payload("AMBIT-describe", 512);
    assert!(echo(guestbook, analyzer.addr(ECHO_PORT), &data).allowed());
    let refused = echo(sleep, analyzer.addr(ECHO_PORT), &data);
    assert!(!refused.allowed(), "sleep reached analyzer: {refused:?}");

    // From analyzer's agent: its certificate, and sleep's refusal a moment ago.
    let report = eventually(Duration::from_secs(3), || {
        let described = mesh
            .describe(Some(1), "pod", "default/analyzer", true)
            .map_err(|e| e.to_string())?;
        let report = described.json().map_err(|e| e.to_string())?;
        let refusals = report["refusals"].as_array().cloned().unwrap_or_default();
        match refusals.as_slice() {
            [one] => Ok((report, one.clone())),
            other => Err(format!("refusals {other:?} in {described:?}")),
        }
    });
    let (report, refusal) = report;
    assert_eq!(refusal["direction"], "inbound", "{refusal:#}");
    assert_eq!(refusal["peer_workload"], "default/sleep", "{refusal:#}");
    assert_eq!(refusal["reason"], "no ALLOW policy matched", "{refusal:#}");
    assert_eq!(refusal["client_identity"], sleep.spiffe_id(), "{refusal:#}");
    assert_eq!(
        refusal["destination"],
        analyzer.addr(ECHO_PORT).to_string(),
        "{refusal:#}"
    );
    assert_eq!(report["kind"], "pod");
    assert_eq!(report["capture"]["by_this_agent"], true, "{report:#}");
    assert_eq!(report["answered_by"]["node"], "node1", "{report:#}");
    let expires = report["certificate"]["expires_in_seconds"].as_i64();
    assert!(expires.is_some_and(|s| s > 0), "{report:#}");
    let rules = &report["policies"]["authorization"][0]["rules"];
    assert_eq!(rules[0]["enforcement"], "l4", "{report:#}");
    assert_eq!(rules[1]["enforcement"], "never_matches_at_l4", "{report:#}");

    // The Service, in text, from the same agent: its pod and the refusal.
    let service = mesh
        .describe(Some(1), "service", "analyzer.default", false)
        .unwrap();
    assert_eq!(service.code, Some(0), "{service:?}");
    for want in [
        "Service: analyzer.default",
        "VIPs: 10.96.0.10",
        &format!("Port 80 (tcp-80) -> {}", analyzer.addr(ECHO_PORT)),
        "Pod: default/analyzer",
        "(this agent captures it)",
        "inbound from default/sleep",
        "no ALLOW policy matched",
    ] {
        assert!(
            service.stdout.contains(want),
            "missing {want:?}:\n{}",
            service.stdout
        );
    }
    // Sleep's own agent saw the refusal from its side.
    let sleep_side = mesh
        .describe(Some(2), "pod", "default/sleep", true)
        .unwrap();
    let sleep_side = sleep_side.json().unwrap();
    assert_eq!(
        sleep_side["refusals"][0]["direction"], "outbound",
        "{sleep_side:#}"
    );
    assert_eq!(
        sleep_side["refusals"][0]["peer_workload"], "default/analyzer",
        "{sleep_side:#}"
    );

    // Both agents closed the refused connection with Istio's DENY flag.
    let after = scrape(&gb);
    for (node, reporter) in [(1, "destination"), (2, "source")] {
        let filter = [
            ("reporter", reporter),
            ("source_workload", "sleep"),
            ("response_flags", "DENY"),
        ];
        let counted = after[node].sum(CLOSED, &filter) - before[node].sum(CLOSED, &filter);
        assert_eq!(counted, 1.0, "node{node} {filter:?}");
    }

    // Unknown and malformed names.
    let missing = mesh
        .describe(Some(1), "pod", "default/nobody", false)
        .unwrap();
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert!(
        missing.stderr.contains("no pod default/nobody"),
        "{missing:?}"
    );
    let malformed = mesh.describe(None, "service", "analyzer", false).unwrap();
    assert_eq!(malformed.code, Some(2), "{malformed:?}");
}

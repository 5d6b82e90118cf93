//! Policies applied to the state file of a running mesh: AuthorizationPolicy
//! on analyzer, then PeerAuthentication at mesh, namespace and workload
//! level. Every connection's fate is checked three ways: what the
//! application saw, what `ambit-agent authz check` says about the same state,
//! and what the destination agent counted as its decision and reason.

// `expect` is fixture code outside #[test] fns: a failure there is the test's failure.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ambit_tests::require_e2e;

use ambit_tests::mesh::guestbook::{ALLOW_GUESTBOOK, ALLOW_NOTHING, peer_authentication};

use crate::scenario::{ECHO_PORT, Guestbook, Outcome, PROMPT, echo, eventually, payload};

const DECISIONS: &str = "ambit_authorization_decisions_total";

/// Connects `from` -> `to`:8080 and asserts the outcome is `allowed`, that
/// `authz check` agrees, and that `to`'s agent counted one decision with the
/// same verdict and reason and wrote one access-log line saying so.
#[track_caller]
fn expect(gb: &Guestbook, from: &str, to: &str, allowed: bool) {
    let (src, dst) = (gb.pod(from), gb.pod(to));
    let plaintext = src.namespace == "outside";
    let check = gb
        .mesh
        .authz_check(src.ip().into(), dst.addr(ECHO_PORT), plaintext)
        .unwrap();
    let node = dst.pod.node;
    let before = gb.mesh.metrics(node).unwrap();
    let logged = gb.mesh.access_log(node).len();
    let outcome = echo(
        src,
        dst.addr(ECHO_PORT),
        &payload(&format!("{from}->{to}"), 2048),
    );
    let what = format!("{from} -> {to} ({})", check.line);
    assert_eq!(outcome.allowed(), allowed, "{what}: {outcome:?}");
    assert_eq!(check.allowed, allowed, "authz check disagrees on {what}");
    if let Outcome::Refused { after, .. } = &outcome {
        assert!(*after < PROMPT, "{what}: refusal took {after:?}");
    }
    let verdict = if allowed { "allow" } else { "deny" };
    eventually(Duration::from_secs(3), || {
        let after = gb.mesh.metrics(node).map_err(|e| e.to_string())?;
        let filter = [
            ("decision", verdict),
            ("reason", check.reason()),
            ("destination_workload", to),
        ];
        let counted = after.sum(DECISIONS, &filter) - before.sum(DECISIONS, &filter);
        let all = after.sum(DECISIONS, &[]) - before.sum(DECISIONS, &[]);
        if counted == 1.0 && all == 1.0 {
            let security = if plaintext { "none" } else { "mutual_tls" };
            let expected = [
                ("decision", verdict),
                ("reason", check.reason()),
                ("status", if allowed { "closed" } else { "denied" }),
                ("security", security),
            ];
            access_line(gb, node, logged, &src.ip().to_string(), &expected)
                .map_err(|e| format!("{what}: {e}"))
        } else {
            Err(format!(
                "{what}: node{node} counted {counted} decisions {filter:?} and {all} in all:\n{}",
                after
                    .matching(DECISIONS, &[])
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            ))
        }
    });
}

/// Checks the one access-log line `node`'s agent wrote, after its first
/// `logged` ones, for a connection from `src_ip`.
fn access_line(
    gb: &Guestbook,
    node: usize,
    logged: usize,
    src_ip: &str,
    expected: &[(&str, &str)],
) -> Result<(), String> {
    let from = format!("{src_ip}:");
    let lines: Vec<_> = gb
        .mesh
        .access_log(node)
        .into_iter()
        .skip(logged)
        .filter(|l| {
            l["reporter"] == "destination"
                && l["src.addr"].as_str().is_some_and(|a| a.starts_with(&from))
        })
        .collect();
    let [line] = lines.as_slice() else {
        return Err(format!("not one access line from {src_ip}: {lines:#?}"));
    };
    match expected.iter().find(|(field, want)| line[*field] != *want) {
        Some((field, want)) => Err(format!("{field} is not {want:?} in {line:#}")),
        None => Ok(()),
    }
}

#[test]
fn authorization_policy_on_analyzer() {
    if !require_e2e() {
        return;
    }
    let gb = crate::scenario::start();
    // No policy: everyone in.
    expect(&gb, "guestbook", "analyzer", true);
    expect(&gb, "sleep", "analyzer", true);

    // Selecting analyzer with no rules: nobody matches, everyone is refused.
    gb.mesh.apply(ALLOW_NOTHING).unwrap();
    let served = gb.analyzer_echo().served().len();
    expect(&gb, "guestbook", "analyzer", false);
    expect(&gb, "sleep", "analyzer", false);
    expect(&gb, "legacy", "analyzer", false);
    assert_eq!(
        gb.analyzer_echo().served().len(),
        served,
        "a refused connection reached the pod"
    );
    // Guestbook itself is not selected.
    expect(&gb, "sleep", "guestbook", true);

    // Only guestbook's principal.
    gb.mesh.apply(ALLOW_GUESTBOOK).unwrap();
    expect(&gb, "guestbook", "analyzer", true);
    expect(&gb, "sleep", "analyzer", false);
    // Plaintext has no principal to match.
    expect(&gb, "legacy", "analyzer", false);

    gb.mesh.remove("analyzer-access").unwrap();
    expect(&gb, "sleep", "analyzer", true);
}

#[test]
fn peer_authentication_modes() {
    if !require_e2e() {
        return;
    }
    let gb = crate::scenario::start();
    // Default PERMISSIVE: plaintext from outside the mesh is accepted.
    expect(&gb, "legacy", "analyzer", true);

    gb.mesh
        .apply(&peer_authentication(
            "istio-system",
            "default",
            None,
            "STRICT",
        ))
        .unwrap();
    expect(&gb, "legacy", "analyzer", false);
    expect(&gb, "legacy", "guestbook", false);
    // mTLS is unaffected.
    expect(&gb, "guestbook", "analyzer", true);

    gb.mesh
        .apply(&peer_authentication(
            "istio-system",
            "default",
            None,
            "PERMISSIVE",
        ))
        .unwrap();
    expect(&gb, "legacy", "analyzer", true);

    // Mesh STRICT, namespace PERMISSIVE, analyzer STRICT: the most specific wins.
    gb.mesh
        .apply(&peer_authentication(
            "istio-system",
            "default",
            None,
            "STRICT",
        ))
        .unwrap();
    gb.mesh
        .apply(&peer_authentication(
            "default",
            "default",
            None,
            "PERMISSIVE",
        ))
        .unwrap();
    gb.mesh
        .apply(&peer_authentication(
            "default",
            "analyzer-strict",
            Some("analyzer"),
            "STRICT",
        ))
        .unwrap();
    expect(&gb, "legacy", "guestbook", true);
    expect(&gb, "legacy", "analyzer", false);
    expect(&gb, "sleep", "analyzer", true);

    gb.mesh.remove("analyzer-strict").unwrap();
    expect(&gb, "legacy", "analyzer", true);
}

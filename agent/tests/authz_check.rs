//! `ambit-agent authz check` end to end: the built binary, run on a state file
//! holding issue 3's examples, judged by its stdout, stderr and exit status.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/authz-state.yaml")
}

fn check_with(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ambit-agent"))
        .args(["authz", "check", "--state"])
        .arg(state)
        .args(args)
        // The caller's environment must not leak into the flags under test.
        .env_remove("AMBIT_TRUST_DOMAIN")
        .env_remove("AMBIT_ROOT_NAMESPACE")
        .env_remove("AMBIT_LOG")
        .output()
        .expect("run ambit-agent")
}

fn check(args: &[&str]) -> Output {
    check_with(&fixture(), args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_decision(args: &[&str], code: i32, json: &str) {
    let out = check(args);
    assert_eq!(
        (out.status.code(), stdout(&out)),
        (Some(code), format!("{json}\n")),
        "args {args:?}, stderr: {}",
        stderr(&out)
    );
}

#[test]
fn allowed_by_an_allow_rule_exits_0() {
    assert_decision(
        &["--from", "10.10.0.1", "--to", "10.10.0.3:9080"],
        0,
        r#"{"decision":"allow","policy":"default/reviews-from-guestbook","rule":1,"reason":"allowed by ALLOW rule","mtls_mode":"STRICT"}"#,
    );
}

#[test]
fn l7_only_allow_rule_denies_at_l4_and_exits_1() {
    // Issue 3's analyzeraccess: the guestbook principal matches, but the rule
    // also needs method POST, which L4 cannot see; the reason says so.
    assert_decision(
        &["--from", "10.10.0.1", "--to", "10.10.0.2:8080"],
        1,
        r#"{"decision":"deny","policy":null,"rule":null,"reason":"no ALLOW policy matched; rule 0 of default/analyzeraccess needs HTTP (methods); 10.10.0.2:8080 is not an HTTP port (no Service declares it; the agent sniffs the first bytes)","mtls_mode":"STRICT"}"#,
    );
}

#[test]
fn plaintext_is_refused_by_mesh_wide_strict() {
    assert_decision(
        &[
            "--from",
            "10.10.0.1",
            "--to",
            "10.10.0.3:9080",
            "--plaintext",
        ],
        1,
        r#"{"decision":"deny","policy":"istio-system/default","rule":null,"reason":"plaintext refused by STRICT","mtls_mode":"STRICT"}"#,
    );
    // A pod outside the mesh has no identity either.
    assert_decision(
        &["--from", "10.10.2.1", "--to", "10.10.0.3:9080"],
        1,
        r#"{"decision":"deny","policy":"istio-system/default","rule":null,"reason":"plaintext refused by STRICT","mtls_mode":"STRICT"}"#,
    );
}

#[test]
fn workload_strict_overrides_a_permissive_namespace() {
    assert_decision(
        &["--from", "10.10.2.1", "--to", "10.10.1.3:80"],
        0,
        r#"{"decision":"allow","policy":null,"rule":null,"reason":"no ALLOW policies","mtls_mode":"PERMISSIVE"}"#,
    );
    assert_decision(
        &["--from", "10.10.2.1", "--to", "10.10.1.1:9090"],
        1,
        r#"{"decision":"deny","policy":"my-namespace/default","rule":null,"reason":"plaintext refused by STRICT","mtls_mode":"STRICT"}"#,
    );
}

#[test]
fn deny_rule_on_source_namespace_exits_1() {
    assert_decision(
        &["--from", "10.10.0.1", "--to", "10.10.1.1:8080"],
        1,
        r#"{"decision":"deny","policy":"my-namespace/deny-default","rule":0,"reason":"denied by DENY rule","mtls_mode":"STRICT"}"#,
    );
    assert_decision(
        &["--from", "10.10.0.1", "--to", "10.10.1.1:9090"],
        0,
        r#"{"decision":"allow","policy":null,"rule":null,"reason":"no ALLOW policies","mtls_mode":"STRICT"}"#,
    );
}

#[test]
fn invalid_policy_fails_closed_and_is_reported_on_stderr() {
    let out = check(&["--from", "10.10.0.1", "--to", "10.10.1.2:80"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        "{\"decision\":\"deny\",\"policy\":\"my-namespace/broken\",\"rule\":null,\"reason\":\"invalid policy (fail closed)\",\"mtls_mode\":\"PERMISSIVE\"}\n"
    );
    let err = stderr(&out);
    assert!(
        err.contains("warning: invalid policy, enforced fail-closed: ")
            && err.contains("authz-state.yaml:")
            && err.contains("my-namespace/broken")
            && err.contains("ipBlocks[0]"),
        "{err}"
    );
}

#[test]
fn trust_domain_and_root_namespace_flags_change_the_decision() {
    // Principals in the policies say cluster.local.
    assert_decision(
        &[
            "--from",
            "10.10.0.1",
            "--to",
            "10.10.0.3:9080",
            "--trust-domain",
            "example.org",
        ],
        1,
        r#"{"decision":"deny","policy":null,"rule":null,"reason":"no ALLOW policy matched","mtls_mode":"STRICT"}"#,
    );
    // With another root namespace, istio-system's STRICT is no longer mesh-wide.
    assert_decision(
        &[
            "--from",
            "10.10.2.1",
            "--to",
            "10.10.0.3:9080",
            "--root-namespace",
            "my-namespace",
        ],
        1,
        r#"{"decision":"deny","policy":null,"rule":null,"reason":"no ALLOW policy matched","mtls_mode":"PERMISSIVE"}"#,
    );
}

#[test]
fn flags_come_from_the_environment_too() {
    let out = Command::new(env!("CARGO_BIN_EXE_ambit-agent"))
        .args(["authz", "check"])
        .env("AMBIT_STATE", fixture())
        .env("AMBIT_CHECK_FROM", "10.10.0.1")
        .env("AMBIT_CHECK_TO", "10.10.0.3:9080")
        .env("AMBIT_CHECK_PLAINTEXT", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("plaintext refused by STRICT"));
}

#[track_caller]
fn assert_bad_input(state: &Path, args: &[&str], message: &str) {
    let out = check_with(state, args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "args {args:?}, stderr: {err}");
    assert_eq!(stdout(&out), "", "nothing on stdout for bad input");
    assert!(
        err.contains(message),
        "args {args:?}: {err:?} lacks {message:?}"
    );
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let state = fixture();
    assert_bad_input(
        &state,
        &["--from", "10.10.0.1", "--to", "10.10.9.9:80"],
        "--to 10.10.9.9:80: no workload with IP 10.10.9.9 in the state",
    );
    assert_bad_input(
        &state,
        &["--from", "10.10.0.1", "--to", "10.96.0.30:80"],
        "10.96.0.30 is the VIP of Service default/reviews; policies apply to its pods: 10.10.0.3:9080",
    );
    assert_bad_input(
        &state,
        &["--from", "10.10.0.1", "--to", "10.10.0.3:0"],
        "port 0",
    );
    assert_bad_input(
        &state,
        &["--from", "10.10.0.1", "--to", "10.10.0.3"],
        "--to",
    );
    assert_bad_input(
        &state,
        &["--from", "guestbook", "--to", "10.10.0.3:80"],
        "--from",
    );
    assert_bad_input(&state, &["--to", "10.10.0.3:80"], "--from");

    let missing = Path::new("/nonexistent/ambit-state.yaml");
    assert_bad_input(
        missing,
        &["--from", "10.10.0.1", "--to", "10.10.0.3:80"],
        "cannot load the state: /nonexistent/ambit-state.yaml: No such file",
    );

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("state.yaml");
    std::fs::write(
        &broken,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: b}\n\
         spec: {nodeName: n}\nstatus: {podIP: 10.0.0.1}\n",
    )
    .unwrap();
    assert_bad_input(
        &broken,
        &["--from", "10.10.0.1", "--to", "10.0.0.1:80"],
        &format!(
            "{}:5: Pod b/p: namespace \"b\" has no Namespace object",
            broken.display()
        ),
    );
}

#[test]
fn help_documents_the_exit_status() {
    let out = Command::new(env!("CARGO_BIN_EXE_ambit-agent"))
        .args(["authz", "check", "--help"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    for needle in [
        "--state",
        "--from",
        "--to",
        "--plaintext",
        "[env: AMBIT_STATE=]",
        "exits 0",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}

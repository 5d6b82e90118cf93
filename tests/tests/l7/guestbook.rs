//! Istio's guestbook exercise with HTTP rules, and the loud fallback where
//! the port is not HTTP.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ambit_tests::require_e2e;

use crate::support::{Got, HTTP_PORT, L7Mesh, STRICT_MESH, TCP_PORT, curl, eventually, url};

const ANALYZER_ACCESS: &str = "\
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: analyzeraccess, namespace: default}
spec:
  selector: {matchLabels: {app: analyzer}}
  rules:
  - from: [{source: {principals: [\"cluster.local/ns/default/sa/guestbook\"]}}]
    to: [{operation: {methods: [\"POST\"]}}]
";

const ALLOW_NOTHING: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: default}
spec: {}
";

const ALLOW_GET_HEALTH: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: analyzer-health, namespace: default}
spec:
  selector: {matchLabels: {app: analyzer}}
  rules:
  - to: [{operation: {methods: [\"GET\"], paths: [\"/health\"]}}]
";

#[track_caller]
fn denied(got: &Got) {
    assert_eq!(got.status, 403, "{got:?}");
    assert_eq!(got.body, "RBAC: access denied", "{got:?}");
}

#[test]
fn guestbook_post_allowed_get_and_others_denied() {
    if !require_e2e() {
        return;
    }
    let m = L7Mesh::start();
    let (gb, sleep) = (m.pod("guestbook"), m.pod("sleep"));
    let http = m.analyzer(HTTP_PORT);
    // No policy: the L4 path, HTTP untouched.
    let got = curl(gb, &[&url(http, "/")]);
    assert_eq!(got.status, 200, "{got:?}");

    m.mesh.apply(STRICT_MESH).unwrap();
    m.mesh.apply(ANALYZER_ACCESS).unwrap();
    let post = curl(gb, &["-X", "POST", "-d", "hello", &url(http, "/guest")]);
    assert_eq!(post.status, 200, "{post:?}");
    assert!(
        post.body.starts_with("method=POST path=/guest bytes=5"),
        "{post:?}"
    );
    denied(&curl(gb, &[&url(http, "/guest")]));
    denied(&curl(
        sleep,
        &["-X", "POST", "-d", "x", &url(http, "/guest")],
    ));
    // Through the Service VIP too (port 80 -> 8080).
    let vip = "10.96.0.20:80".parse().unwrap();
    assert_eq!(curl(gb, &["-X", "POST", &url(vip, "/")]).status, 200);

    // A 403 leaves the connection usable: one curl, two requests, one connection.
    let both = curl(
        gb,
        &[
            "-w",
            " connects=%{num_connects}\n",
            &url(http, "/a"),
            &url(http, "/b"),
        ],
    );
    assert!(
        both.body.matches("RBAC: access denied").count() == 2,
        "{both:?}"
    );
    assert!(
        both.body.contains("connects=1") && both.body.contains("connects=0"),
        "{both:?}"
    );

    // The destination agent counted the requests and logged each one.
    let metrics = m.mesh.metrics(1).unwrap();
    let count = |code: &str| {
        metrics.sum(
            "istio_requests_total",
            &[
                ("response_code", code),
                ("destination_workload", "analyzer"),
            ],
        )
    };
    assert!(
        count("200") >= 2.0 && count("403") >= 4.0,
        "200: {}, 403: {}",
        count("200"),
        count("403")
    );
    let log = m.mesh.access_log(1);
    let line = log
        .iter()
        .find(|l| l["method"] == "GET" && l["path"] == "/guest" && l["status"] == 403)
        .unwrap_or_else(|| panic!("no access line for GET /guest in {log:#?}"));
    assert_eq!(line["decision"], "deny");

    // authz check: the connection names the HTTP rule; requests are decided.
    let gb_ip = gb.ip().into();
    let check = m.mesh.authz_check(gb_ip, http, false).unwrap();
    let reason = check.decision["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains("rule 0 of default/analyzeraccess needs HTTP (methods)")
            && reason.contains("is an HTTP port"),
        "{reason}"
    );
    let check_request = |method: &str| {
        let out = std::process::Command::new(ambit_tests::bin_path("ambit-agent").unwrap())
            .args(["authz", "check", "--state"])
            .arg(m.mesh.state_path())
            .args(["--from", &gb.ip().to_string(), "--to", &http.to_string()])
            .args(["--method", method, "--path", "/guest"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, line) = check_request("POST");
    assert_eq!(code, Some(0), "{line}");
    assert!(
        line.contains("\"policy\":\"default/analyzeraccess\",\"rule\":0"),
        "{line}"
    );
    let (code, line) = check_request("GET");
    assert_eq!(code, Some(1), "{line}");

    // allow-nothing: every request refused, 403; then one ALLOW opens one path, live.
    m.mesh.remove("analyzeraccess").unwrap();
    m.mesh.apply(ALLOW_NOTHING).unwrap();
    denied(&curl(gb, &["-X", "POST", &url(http, "/guest")]));
    denied(&curl(gb, &[&url(http, "/health")]));
    m.mesh.apply(ALLOW_GET_HEALTH).unwrap();
    eventually(Duration::from_secs(1), || {
        let got = curl(gb, &[&url(http, "/health")]);
        (got.status == 200).then_some(()).ok_or(format!("{got:?}"))
    });
    denied(&curl(gb, &[&url(http, "/other")]));
}

#[test]
fn http_rule_on_a_port_that_is_not_http_is_refused_loudly() {
    if !require_e2e() {
        return;
    }
    let m = L7Mesh::start();
    let gb = m.pod("guestbook");
    m.mesh.apply(ANALYZER_ACCESS).unwrap();
    let raw = m.analyzer(TCP_PORT);
    // `tcp-raw` declares the port not HTTP: the ALLOW rule needing methods
    // never matches there, and the connection is refused as before.
    let got = curl(gb, &["-X", "POST", &url(raw, "/")]);
    assert_eq!(got.status, 0, "{got:?}");

    let check = m.mesh.authz_check(gb.ip().into(), raw, false).unwrap();
    assert!(!check.allowed);
    let reason = check.decision["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains("rule 0 of default/analyzeraccess needs HTTP (methods)")
            && reason.contains(&format!("{raw} is not an HTTP port")),
        "{reason}"
    );
    let warned = m.mesh.agent(1).log();
    assert!(
        warned.lines().any(|l| l.contains("policy rule needs HTTP")
            && l.contains("default/analyzeraccess")
            && l.contains("methods")),
        "no load warning in the agent log"
    );
    let status = m.mesh.admin(1, "/").unwrap();
    assert!(
        status
            .body
            .contains("rule 0 of default/analyzeraccess needs HTTP (methods)"),
        "{}",
        status.body
    );
    let dump = m.mesh.admin(1, "/config_dump").unwrap();
    assert!(dump.body.contains("needs_http"), "{}", dump.body);
}

//! HTTP-level decisions through the public API: the guestbook exercise,
//! every operation field, request principals, `request.*` conditions, path
//! normalization against rules, and the rules reported as needing HTTP.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_policy::http::{HttpRequest, RequestAuth, normalize_path};
use ambit_policy::{Connection, Decision, PolicySet, Reason, Target, k8s};
use serde_json::json;

const ROOT: &str = "istio-system";

fn set(yaml: &str) -> PolicySet {
    let mut builder = PolicySet::builder(ROOT);
    for doc in k8s::documents(yaml).expect("test YAML parses") {
        builder.add(&doc.value).expect("valid policy");
    }
    builder.build()
}

fn labels() -> BTreeMap<String, String> {
    [("app".to_owned(), "analyzer".to_owned())].into()
}

/// A request from `from` (a principal; `None` for plaintext).
struct Req<'a> {
    from: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    host: &'a str,
    headers: Vec<(String, String)>,
    auth: Option<RequestAuth>,
}

const GUESTBOOK: &str = "cluster.local/ns/default/sa/guestbook";

fn req(method: &'static str, path: &'static str) -> Req<'static> {
    Req {
        from: Some(GUESTBOOK),
        method,
        path,
        host: "analyzer:8080",
        headers: Vec::new(),
        auth: None,
    }
}

fn decide(set: &PolicySet, r: &Req<'_>) -> Decision {
    let labels = labels();
    let path = normalize_path(r.path).expect("test path normalizes");
    set.evaluate_http(
        &Target {
            namespace: "default",
            labels: &labels,
        },
        &Connection {
            src_ip: "10.0.0.1".parse::<IpAddr>().expect("ip"),
            src_principal: r.from,
            src_namespace: r.from.and_then(|id| id.split('/').nth(2)),
            dst_ip: "10.0.1.1".parse::<IpAddr>().expect("ip"),
            dst_port: 8080,
            mtls: r.from.is_some(),
        },
        &HttpRequest {
            method: r.method,
            path: &path,
            host: r.host,
            headers: &r.headers,
            auth: r.auth.as_ref(),
        },
    )
}

fn allowed(set: &PolicySet, r: &Req<'_>) -> bool {
    decide(set, r).allowed
}

const ANALYZER: &str = r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: analyzeraccess, namespace: default}
spec:
  selector: {matchLabels: {app: analyzer}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/guestbook"]}}]
    to: [{operation: {methods: ["POST"]}}]
"#;

#[test]
fn guestbook_exercise() {
    let s = set(ANALYZER);
    let d = decide(&s, &req("POST", "/"));
    assert_eq!(
        (d.allowed, d.reason, d.policy.as_deref(), d.rule),
        (
            true,
            Reason::AllowedByAllowRule,
            Some("default/analyzeraccess"),
            Some(0)
        )
    );
    let d = decide(&s, &req("GET", "/"));
    assert_eq!((d.allowed, d.reason), (false, Reason::NoAllowPolicyMatched));
    let other = Req {
        from: Some("cluster.local/ns/default/sa/other"),
        ..req("POST", "/")
    };
    assert!(!allowed(&s, &other));
    let plaintext = Req {
        from: None,
        ..req("POST", "/")
    };
    assert!(!allowed(&s, &plaintext));
    // At L4 the rule can never match: the connection decision is unchanged.
    let rules = s.http_only_rules(&Target {
        namespace: "default",
        labels: &labels(),
    });
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].to_string(),
        "rule 0 of default/analyzeraccess needs HTTP (methods)"
    );
    assert_eq!(rules[0].at_l4(), "never matches");
}

#[test]
fn allow_nothing_denies_every_request() {
    let s = set("
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: default}
spec: {}
");
    assert!(!allowed(&s, &req("GET", "/")));
    assert!(!s.needs_http(&Target {
        namespace: "default",
        labels: &labels()
    }));
}

#[test]
fn operations_paths_hosts_and_negations() {
    let s = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ops, namespace: default}
spec:
  rules:
  - to: [{operation: {paths: ["/public/*", "/exact", "*.css"], notMethods: ["DELETE"]}}]
  - to: [{operation: {hosts: ["admin.example.com"], notPaths: ["/admin/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*"], notHosts: ["ops.example.com"]}}]
"#);
    let at = |m: &'static str, p: &'static str, host: &'static str| Req { host, ..req(m, p) };
    let h = "web:80";
    assert!(allowed(&s, &at("GET", "/public/a", h)));
    assert!(allowed(&s, &at("GET", "/public/a?x=1", h)));
    assert!(!allowed(&s, &at("DELETE", "/public/a", h)));
    assert!(allowed(&s, &at("GET", "/exact", h)));
    assert!(!allowed(&s, &at("GET", "/exact/", h)));
    assert!(allowed(&s, &at("GET", "/x/site.css", h)));
    assert!(!allowed(&s, &at("GET", "/private", h)));
    // Hosts: case-insensitive, with or without a port.
    assert!(allowed(
        &s,
        &at("GET", "/private", "Admin.Example.com:8080")
    ));
    assert!(!allowed(&s, &at("GET", "/admin/x", "admin.example.com")));
    // The DENY on /admin: normalization closes the bypasses.
    for p in [
        "/admin",
        "/public/../admin",
        "//admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2e/admin/",
        "/./admin",
        "/%61dmin",
    ] {
        let d = decide(&s, &at("GET", p, h));
        assert_eq!(
            (d.allowed, d.policy.as_deref()),
            (false, Some("default/deny-admin")),
            "{p}"
        );
    }
    let d = decide(&s, &at("GET", "/admin", "ops.example.com"));
    assert_ne!(d.policy.as_deref(), Some("default/deny-admin"));
    for bad in ["/public%2F..%2Fadmin", "/a#b", "public"] {
        assert!(normalize_path(bad).is_err(), "{bad}");
    }
}

fn token(iss: &str, sub: &str, extra: serde_json::Value) -> RequestAuth {
    let mut claims = json!({"iss": iss, "sub": sub});
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    RequestAuth::from_claims(claims)
}

#[test]
fn request_principals_and_auth_conditions() {
    let s = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt, namespace: default}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["https://idp/*"], notRequestPrincipals: ["https://idp/mallory"]}}]
    when:
    - {key: "request.auth.claims[groups]", values: ["dev"]}
    - {key: request.auth.audiences, values: ["api"]}
  - from: [{source: {requestPrincipals: ["*"]}}]
    to: [{operation: {methods: ["GET"]}}]
    when:
    - {key: request.auth.presenter, values: ["web"]}
    - {key: "request.headers[x-env]", notValues: ["prod"]}
"#);
    let with = |auth: Option<RequestAuth>, method: &'static str| Req {
        auth,
        ..req(method, "/")
    };
    let dev = json!({"groups": ["ops", "dev"], "aud": "api"});
    assert!(allowed(
        &s,
        &with(Some(token("https://idp", "alice", dev.clone())), "POST")
    ));
    assert!(!allowed(
        &s,
        &with(Some(token("https://idp", "mallory", dev.clone())), "POST")
    ));
    assert!(!allowed(
        &s,
        &with(Some(token("https://other", "alice", dev)), "POST")
    ));
    let no_group = json!({"groups": ["ops"], "aud": "api"});
    assert!(!allowed(
        &s,
        &with(Some(token("https://idp", "alice", no_group)), "POST")
    ));
    // No token: `requestPrincipals: ["*"]` fails.
    assert!(!allowed(&s, &with(None, "GET")));
    let web = json!({"azp": "web"});
    assert!(allowed(
        &s,
        &with(Some(token("x", "y", web.clone())), "GET")
    ));
    let mut prod = with(Some(token("x", "y", web)), "GET");
    prod.headers.push(("X-Env".into(), "prod".into()));
    assert!(!allowed(&s, &prod));
}

#[test]
fn deny_rules_fail_closed_on_what_cannot_be_evaluated() {
    let s = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-sni, namespace: default}
spec:
  action: DENY
  rules:
  - when: [{key: connection.sni, values: ["x"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sni, namespace: other}
spec:
  rules:
  - when: [{key: connection.sni, values: ["x"]}]
"#);
    let d = decide(&s, &req("GET", "/"));
    assert_eq!(
        (d.allowed, d.policy.as_deref()),
        (false, Some("default/deny-sni"))
    );
    let all = s.all_http_only_rules();
    assert_eq!(all.len(), 2);
    assert!(all.iter().any(|r| r.action == "DENY"
        && r.fields == ["connection.sni"]
        && r.at_l4().contains("fail closed")));
}

#[test]
fn deny_with_l4_and_http_parts_needs_both() {
    let s = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-delete, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: ["default"]}}]
    to: [{operation: {methods: ["DELETE"]}}]
"#);
    assert!(!allowed(&s, &req("DELETE", "/")));
    assert!(allowed(&s, &req("GET", "/")));
    let other = Req {
        from: Some("cluster.local/ns/other/sa/x"),
        ..req("DELETE", "/")
    };
    assert!(allowed(&s, &other));
}

#[test]
fn request_authentication_selects_and_parses() {
    let s = set(r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  selector: {matchLabels: {app: analyzer}}
  jwtRules:
  - issuer: https://idp
    audiences: [api]
    jwksUri: http://idp.example/jwks
    fromHeaders: [{name: X-Token, prefix: "Tok "}]
    fromParams: [tok]
    forwardOriginalToken: true
    outputPayloadToHeader: X-Payload
---
apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {name: mesh, namespace: istio-system}
spec:
  jwtRules:
  - issuer: https://mesh
    jwks: '{"keys": []}'
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: elsewhere, namespace: other}
spec:
  jwtRules: [{issuer: https://other}]
"#);
    let l = labels();
    let t = Target {
        namespace: "default",
        labels: &l,
    };
    let p = s.request_authentication(&t);
    assert_eq!(p.policies, ["default/jwt", "istio-system/mesh"]);
    let issuers: Vec<&str> = p.rules.iter().map(|r| r.issuer.as_str()).collect();
    assert_eq!(issuers, ["https://idp", "https://mesh"]);
    let r = p.rules[0];
    assert_eq!(r.headers()[0].name, "x-token");
    assert_eq!(r.headers()[0].prefix, "Tok ");
    assert_eq!(r.params(), ["tok"]);
    assert!(r.forward_original_token);
    assert_eq!(r.output_payload_to_header.as_deref(), Some("x-payload"));
    // Defaults: Authorization: Bearer, and access_token.
    assert_eq!(p.rules[1].headers()[0].name, "authorization");
    assert_eq!(p.rules[1].params(), ["access_token"]);
    assert!(s.needs_http(&t));

    let mut b = PolicySet::builder(ROOT);
    let bad = k8s::documents(
        "
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: bad, namespace: default}
spec:
  jwtRules: [{audiences: [x]}]
",
    )
    .expect("yaml");
    let err = b.add(&bad[0].value).expect_err("issuer is required");
    assert!(err.to_string().contains("jwtRules[0].issuer"), "{err}");
    let s = b.build();
    assert_eq!(s.request_authentication(&t).invalid, ["default/bad"]);
}

//! RequestAuthentication end to end: tokens signed here with a P-256 key
//! whose JWKS an HTTP server outside the mesh publishes for the agent.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ambit_tests::require_e2e;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::support::{HTTP_PORT, L7Mesh, curl, eventually, url};

const ISSUER: &str = "https://idp.test";
const JWKS_PORT: u16 = 8000;

/// A signing key and its public JWK.
struct Key {
    encoding: EncodingKey,
    jwk: Value,
}

fn key(kid: &str) -> Key {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    // Uncompressed point: 0x04 || X || Y.
    let (x, y) = raw[1..].split_at(32);
    Key {
        encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(key: &Key, kid: &str, claims: Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    encode(&header, &claims, &key.encoding).unwrap()
}

fn policies(jwks_uri: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: analyzer-jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: analyzer}}}}
  jwtRules:
  - issuer: {ISSUER}
    audiences: [analyzer]
    jwksUri: {jwks_uri}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: analyzer-users, namespace: default}}
spec:
  selector: {{matchLabels: {{app: analyzer}}}}
  rules:
  - from: [{{source: {{requestPrincipals: [\"{ISSUER}/*\"]}}}}]
    to: [{{operation: {{paths: [\"/api/*\"]}}}}]
  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]
    to: [{{operation: {{paths: [\"/dev/*\"]}}}}]
    when: [{{key: \"request.auth.claims[groups]\", values: [dev]}}]
"
    )
}

#[test]
fn tokens_verified_against_fetched_keys_fail_closed_and_recover() {
    if !require_e2e() {
        return;
    }
    let m = L7Mesh::start();
    let (gb, keys) = (m.pod("guestbook"), m.pod("keys"));
    let http = m.analyzer(HTTP_PORT);
    let signer = key("k1");
    let impostor = key("k1");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("jwks.json"),
        json!({"keys": [signer.jwk]}).to_string(),
    )
    .unwrap();
    let jwks_uri = format!("http://{}/jwks.json", keys.addr(JWKS_PORT));
    m.mesh.apply(&policies(&jwks_uri)).unwrap();

    let claims = |sub: &str, extra: Value| {
        let mut c = json!({"iss": ISSUER, "sub": sub, "aud": "analyzer", "exp": now() + 600});
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        c
    };
    let valid = token(&signer, "k1", claims("alice", json!({})));
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    let get = |path: &str, t: Option<&str>| {
        let h = t.map(bearer).unwrap_or_else(|| "X-No-Token: 1".into());
        curl(gb, &["-H", &h, &url(http, path)])
    };

    // The key server is down: a valid token cannot be verified, it fails.
    let down = get("/api/x", Some(&valid));
    assert_eq!(
        (down.status, down.body.as_str()),
        (401, "Jwt verification fails"),
        "{down:?}"
    );

    let mut server = Command::new("python3");
    server
        .args(["-m", "http.server", "--bind", &keys.ip().to_string()])
        .arg(JWKS_PORT.to_string())
        .current_dir(dir.path());
    let mut jwks_server = Some(keys.netns().spawn(&server).unwrap());
    eventually(Duration::from_secs(15), || {
        let got = get("/api/x", Some(&valid));
        (got.status == 200)
            .then_some(got)
            .ok_or_else(|| "valid token not accepted yet".to_owned())
    });
    let ok = get("/api/x", Some(&valid));
    assert_eq!(ok.status, 200, "{ok:?}");
    // The token is not forwarded to the pod (forwardOriginalToken unset).
    assert!(!ok.body.contains("header authorization="), "{ok:?}");

    let forged = token(&impostor, "k1", claims("alice", json!({})));
    assert_eq!(get("/api/x", Some(&forged)).status, 401, "bad signature");
    let expired = token(&signer, "k1", claims("alice", json!({"exp": now() - 3600})));
    assert_eq!(get("/api/x", Some(&expired)).status, 401, "expired");
    let mut other = claims("alice", json!({}));
    other["iss"] = json!("https://other.test");
    assert_eq!(
        get("/api/x", Some(&token(&signer, "k1", other))).status,
        401,
        "other issuer"
    );
    let wrong_aud = token(&signer, "k1", claims("alice", json!({"aud": "billing"})));
    assert_eq!(get("/api/x", Some(&wrong_aud)).status, 401, "audience");
    let none = get("/api/x", None);
    assert_eq!(
        (none.status, none.body.as_str()),
        (403, "RBAC: access denied"),
        "no token"
    );

    // `when` on a claim.
    let dev = token(
        &signer,
        "k1",
        claims("bob", json!({"groups": ["ops", "dev"]})),
    );
    assert_eq!(get("/dev/x", Some(&dev)).status, 200);
    assert_eq!(get("/dev/x", Some(&valid)).status, 403);

    // authz check answers from the same engine, with --jwt.
    let jwt_file = dir.path().join("dev.jwt");
    std::fs::write(&jwt_file, &dev).unwrap();
    // From node 1, which reaches the key server as its agent does.
    let bin = ambit_tests::bin_path("ambit-agent").unwrap();
    let state = m.mesh.state_path();
    let (from, to) = (gb.ip().to_string(), http.to_string());
    let args = [
        "authz",
        "check",
        "--state",
        &state.to_string_lossy(),
        "--from",
        &from,
        "--to",
        &to,
        "--path",
        "/dev/x",
        "--jwt",
        &jwt_file.to_string_lossy(),
    ];
    let line = m.mesh.cluster().node(1).netns.exec(&bin, args).unwrap();
    assert!(
        line.contains("\"policy\":\"default/analyzer-users\",\"rule\":1"),
        "{line}"
    );
    // The key server goes down mid-run: once the cached keys expire, tokens
    // fail closed; they recover when it is back.
    drop(jwks_server.take());
    eventually(Duration::from_secs(15), || {
        let got = get("/api/x", Some(&valid));
        (got.status == 401)
            .then_some(())
            .ok_or(format!("still {got:?}"))
    });
    jwks_server = Some(keys.netns().spawn(&server).unwrap());
    eventually(Duration::from_secs(15), || {
        let got = get("/api/x", Some(&valid));
        (got.status == 200)
            .then_some(())
            .ok_or(format!("not back: {got:?}"))
    });
    drop(jwks_server);
}

//! Token verification against an inline JWKS: signature, expiry, issuer,
//! audience, where tokens are looked for, and what reaches the pod.

use std::time::{SystemTime, UNIX_EPOCH};

use ambit_policy::{JwtHeader, JwtPolicy, JwtRule};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use super::*;

fn key() -> (EncodingKey, Value) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    let (x, y) = raw[1..].split_at(32);
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "k", "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)});
    (EncodingKey::from_ec_der(&pair.serialize_der()), jwk)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(key: &EncodingKey, claims: Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("k".into());
    encode(&h, &claims, key).unwrap()
}

fn rule(jwk: &Value) -> JwtRule {
    JwtRule {
        issuer: "https://idp".into(),
        audiences: vec!["api".into()],
        jwks: Some(json!({"keys": [jwk]}).to_string()),
        jwks_uri: None,
        from_headers: Vec::new(),
        from_params: Vec::new(),
        from_cookies: Vec::new(),
        forward_original_token: false,
        output_payload_to_header: Some("x-payload".into()),
        output_claim_to_headers: Vec::new(),
    }
}

fn parts(header: Option<(&str, String)>, uri: &str) -> http::request::Parts {
    let mut b = http::Request::get(uri);
    if let Some((k, v)) = header {
        b = b.header(k, v);
    }
    b.body(()).unwrap().into_parts().0
}

#[tokio::test]
async fn verifies_and_fails_closed() {
    let (good, jwk) = key();
    let (other, _) = key();
    let r = rule(&jwk);
    let policy = JwtPolicy {
        rules: vec![&r],
        policies: vec!["default/jwt"],
        invalid: Vec::new(),
    };
    let v = Verifier::default();
    let claims = |extra: Value| {
        let mut c = json!({"iss": "https://idp", "sub": "alice", "aud": "api", "exp": now() + 60});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    let bearer = |t: String| Some(("authorization", format!("Bearer {t}")));

    let mut ok = parts(bearer(sign(&good, claims(json!({})))), "/");
    let auth = v.authenticate(&policy, &mut ok).await.unwrap().unwrap();
    assert_eq!(auth.principal.as_deref(), Some("https://idp/alice"));
    assert!(
        !ok.headers.contains_key("authorization"),
        "token not forwarded"
    );
    assert!(ok.headers.contains_key("x-payload"));

    for (why, token) in [
        ("bad signature", sign(&other, claims(json!({})))),
        ("expired", sign(&good, claims(json!({"exp": now() - 3600})))),
        ("audience", sign(&good, claims(json!({"aud": "other"})))),
        (
            "issuer",
            sign(&good, claims(json!({"iss": "https://evil"}))),
        ),
        ("garbage", "not.a.token".to_owned()),
    ] {
        let mut p = parts(bearer(token), "/");
        assert!(v.authenticate(&policy, &mut p).await.is_err(), "{why}");
    }
    // No token: passes authentication with no principal.
    let mut none = parts(None, "/");
    assert_eq!(v.authenticate(&policy, &mut none).await.unwrap(), None);
    // The default locations include the access_token parameter.
    let t = sign(&good, claims(json!({})));
    let mut q = parts(None, &format!("/x?access_token={t}"));
    assert!(v.authenticate(&policy, &mut q).await.unwrap().is_some());
}

#[tokio::test]
async fn custom_header_and_no_keys_fail_closed() {
    let (good, jwk) = key();
    let mut r = rule(&jwk);
    r.from_headers = vec![JwtHeader {
        name: "x-token".into(),
        prefix: String::new(),
    }];
    r.forward_original_token = true;
    let policy = JwtPolicy {
        rules: vec![&r],
        policies: vec!["default/jwt"],
        invalid: Vec::new(),
    };
    let v = Verifier::default();
    let t = sign(
        &good,
        json!({"iss": "https://idp", "sub": "a", "aud": "api"}),
    );
    let mut p = parts(Some(("x-token", t.clone())), "/");
    assert!(v.authenticate(&policy, &mut p).await.unwrap().is_some());
    assert!(
        p.headers.contains_key("x-token"),
        "forwardOriginalToken keeps it"
    );
    // Only the configured location is read.
    let mut elsewhere = parts(Some(("authorization", format!("Bearer {t}"))), "/");
    assert_eq!(v.authenticate(&policy, &mut elsewhere).await.unwrap(), None);

    // An issuer whose keys cannot be had: its tokens fail, never a default key.
    r.jwks = None;
    r.jwks_uri = Some("http://127.0.0.1:9/jwks".into());
    let policy = JwtPolicy {
        rules: vec![&r],
        policies: vec!["default/jwt"],
        invalid: Vec::new(),
    };
    let mut p = parts(Some(("x-token", t)), "/");
    assert!(v.authenticate(&policy, &mut p).await.is_err());
}

//! JWT request authentication (RequestAuthentication): find a token where
//! the rules say, verify it with its issuer's keys (signature, `exp`/`nbf`
//! with a minute of skew, issuer, audiences), and give the policy engine
//! what it proves. A request without a token passes authentication (rules
//! that need a request principal then fail it); a token that fails is a 401.
//!
//! Once verified, the token is removed from the forwarded request unless
//! `forwardOriginalToken`, and the payload and claims are copied to the
//! headers `outputPayloadToHeader` and `outputClaimToHeaders` name.

use std::time::Duration;

use ambit_policy::http::RequestAuth;
use ambit_policy::{JwtPolicy, JwtRule};
use http::{HeaderName, HeaderValue};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
use serde_json::Value;

use super::jwks::JwksCache;
pub use super::jwks::{JwksSettings, https_client_config};

/// Verifies tokens against the keys of the issuers the policies name.
#[derive(Debug, Default)]
pub struct Verifier {
    cache: JwksCache,
}

/// Where a token was found, so it can be removed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    Header(String),
    Param,
    Cookie,
}

/// Clock skew allowed on `exp` and `nbf`, as Envoy allows.
const LEEWAY: Duration = Duration::from_secs(60);

fn token_in(rule: &JwtRule, parts: &http::request::Parts) -> Option<(String, Found)> {
    for h in rule.headers() {
        for value in parts.headers.get_all(h.name.as_str()) {
            let Ok(v) = value.to_str() else { continue };
            if let Some(t) = v.strip_prefix(h.prefix.as_str()) {
                return Some((t.trim().to_owned(), Found::Header(h.name.clone())));
            }
        }
    }
    let query = parts.uri.query().unwrap_or_default();
    for name in rule.params() {
        for pair in query.split('&') {
            if let Some(t) = pair
                .strip_prefix(name.as_str())
                .and_then(|r| r.strip_prefix('='))
            {
                return Some((t.to_owned(), Found::Param));
            }
        }
    }
    for name in &rule.from_cookies {
        for value in parts.headers.get_all(http::header::COOKIE) {
            let Ok(v) = value.to_str() else { continue };
            for c in v.split(';') {
                if let Some((k, t)) = c.trim().split_once('=')
                    && k == name
                {
                    return Some((t.to_owned(), Found::Cookie));
                }
            }
        }
    }
    None
}

/// The unverified `iss` of a token: only to pick which rule verifies it.
fn issuer_of(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}

impl Verifier {
    pub fn new(settings: JwksSettings) -> Self {
        Self {
            cache: JwksCache::new(settings),
        }
    }

    async fn keys(&self, rule: &JwtRule) -> Result<JwkSet, String> {
        if let Some(doc) = &rule.jwks {
            return JwksCache::inline(doc).map_err(|e| e.to_string());
        }
        match &rule.jwks_uri {
            Some(uri) => self.cache.keys(uri).await.map(|k| (*k).clone()),
            None => Err(format!("issuer {} has no jwks or jwksUri", rule.issuer)),
        }
    }

    /// Checks the signature and claims of `token` under `rule`.
    pub async fn verify(&self, rule: &JwtRule, token: &str) -> Result<Value, String> {
        let header = decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        let keys = self.keys(rule).await?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY.as_secs();
        validation.required_spec_claims.clear();
        validation.set_issuer(&[rule.issuer.as_str()]);
        if rule.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&rule.audiences);
        }
        let usable = |k: &&Jwk| match (&header.kid, &k.common.key_id) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        };
        let mut last = String::from("no key matches the token");
        for jwk in keys.keys.iter().filter(usable) {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            match decode::<Value>(token, &key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    /// `Ok(None)`: no token (authentication passes; rules needing a request
    /// principal will not match). `Err`: a token that fails, or a policy that
    /// could not be read, with why. Edits `parts` for the forwarded request.
    pub async fn authenticate(
        &self,
        policy: &JwtPolicy<'_>,
        parts: &mut http::request::Parts,
    ) -> Result<Option<RequestAuth>, String> {
        if let Some(bad) = policy.invalid.first() {
            return Err(format!("RequestAuthentication {bad} is invalid"));
        }
        let Some((rule, token, found)) = policy
            .rules
            .iter()
            .find_map(|r| token_in(r, parts).map(|(t, f)| (*r, t, f)))
        else {
            return Ok(None);
        };
        // The token's own issuer picks the rule; an issuer no rule names fails.
        let issuer = issuer_of(&token).ok_or("token has no readable issuer")?;
        let rule = if rule.issuer == issuer {
            rule
        } else {
            policy
                .rules
                .iter()
                .copied()
                .find(|r| r.issuer == issuer)
                .ok_or_else(|| format!("issuer {issuer} is not accepted"))?
        };
        let claims = self.verify(rule, &token).await?;
        if !rule.forward_original_token
            && let Found::Header(name) = &found
        {
            parts.headers.remove(name.as_str());
        }
        if let Some(h) = &rule.output_payload_to_header
            && let (Ok(name), Some(payload)) =
                (HeaderName::try_from(h.as_str()), token.split('.').nth(1))
            && let Ok(value) = HeaderValue::from_str(payload)
        {
            parts.headers.insert(name, value);
        }
        for c in &rule.output_claim_to_headers {
            let value = match claims.get(&c.claim) {
                Some(Value::String(s)) => s.clone(),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
                _ => continue,
            };
            if let (Ok(name), Ok(value)) = (
                HeaderName::try_from(c.header.as_str()),
                HeaderValue::from_str(&value),
            ) {
                parts.headers.insert(name, value);
            }
        }
        Ok(Some(RequestAuth::from_claims(claims)))
    }
}

/// For `authz check --jwt`: verifies a token against the rules of `policy`
/// as a request carrying it in `Authorization` would be.
pub async fn check_token(
    verifier: &Verifier,
    policy: &JwtPolicy<'_>,
    token: &str,
) -> Result<Option<RequestAuth>, String> {
    let mut parts = http::Request::new(()).into_parts().0;
    let value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
        .map_err(|e| format!("token: {e}"))?;
    parts.headers.insert(http::header::AUTHORIZATION, value);
    verifier.authenticate(policy, &mut parts).await
}

#[cfg(test)]
mod tests;

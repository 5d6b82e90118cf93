//! RequestAuthentication spec to [`RequestAuthn`].

use serde_json::{Map, Value};

use super::json::{self, FieldError, Path};
use super::{Meta, Problem};
use crate::model::{ClaimToHeader, JwtHeader, JwtRule, RequestAuthn, Selector};

const RULE_FIELDS: &[&str] = &[
    "issuer",
    "audiences",
    "jwksUri",
    "jwks",
    "fromHeaders",
    "fromParams",
    "fromCookies",
    "outputPayloadToHeader",
    "forwardOriginalToken",
    "outputClaimToHeaders",
    "timeout",
];

/// Compiles a RequestAuthentication; a problem leaves it invalid, which
/// refuses the requests of whatever it selects.
pub(super) fn compile(obj: &Value, meta: &Meta, fail: &mut impl FnMut(FieldError)) -> RequestAuthn {
    let path = Path::root().field("spec");
    let mut policy = RequestAuthn {
        id: meta.id.as_str().into(),
        namespace: meta.namespace.as_str().into(),
        selector: None,
        rules: Vec::new(),
        invalid: true,
        waypoint: false,
    };
    let spec = match json::opt_object(obj.get("spec"), &path) {
        Ok(spec) => spec,
        Err(e) => {
            fail(e);
            return policy;
        }
    };
    let empty = Map::new();
    let spec = spec.unwrap_or(&empty);
    let selector_ok = match json::match_labels(spec.get("selector"), &path.field("selector")) {
        Ok(labels) => {
            policy.selector = Selector::new(labels);
            true
        }
        Err(e) => {
            fail(e);
            false
        }
    };
    let bound = |k: &str| spec.get(k).is_some_and(|v| !v.is_null());
    if bound("targetRef") || bound("targetRefs") {
        policy.waypoint = true;
        policy.invalid = false;
        return policy;
    }
    let body = json::known_fields(
        spec,
        &["selector", "jwtRules", "targetRef", "targetRefs"],
        &path,
    )
    .and_then(|()| json::list(spec.get("jwtRules"), &path.field("jwtRules"), rule));
    match body {
        Ok(rules) if selector_ok => {
            policy.rules = rules;
            policy.invalid = false;
        }
        Ok(_) => {}
        Err(e) => fail(e),
    }
    policy
}

fn string_at(map: &Map<String, Value>, field: &str, path: &Path) -> json::Result<Option<String>> {
    Ok(json::opt_str(map.get(field), &path.field(field))?
        .filter(|s| !s.is_empty())
        .map(str::to_owned))
}

fn strings_at(map: &Map<String, Value>, field: &str, path: &Path) -> json::Result<Vec<String>> {
    Ok(json::str_list(map.get(field), &path.field(field))?
        .into_iter()
        .map(str::to_owned)
        .collect())
}

fn rule(v: &Value, path: &Path) -> json::Result<JwtRule> {
    let map = json::object(v, path)?;
    json::known_fields(map, RULE_FIELDS, path)?;
    let issuer = string_at(map, "issuer", path)?
        .ok_or_else(|| path.field("issuer").error(Problem::Missing))?;
    let jwks_uri = string_at(map, "jwksUri", path)?;
    if let Some(uri) = &jwks_uri
        && !(uri.starts_with("http://") || uri.starts_with("https://"))
    {
        return Err(path
            .field("jwksUri")
            .error(Problem::MalformedValue(uri.clone())));
    }
    let from_headers = json::list(
        map.get("fromHeaders"),
        &path.field("fromHeaders"),
        |h, p| {
            let h = json::object(h, p)?;
            json::known_fields(h, &["name", "prefix"], p)?;
            let name =
                string_at(h, "name", p)?.ok_or_else(|| p.field("name").error(Problem::Missing))?;
            Ok(JwtHeader {
                name: name.to_ascii_lowercase(),
                prefix: string_at(h, "prefix", p)?.unwrap_or_default(),
            })
        },
    )?;
    let claims = json::list(
        map.get("outputClaimToHeaders"),
        &path.field("outputClaimToHeaders"),
        |c, p| {
            let c = json::object(c, p)?;
            json::known_fields(c, &["header", "claim"], p)?;
            let need = |f: &str| -> json::Result<String> {
                string_at(c, f, p)?.ok_or_else(|| p.field(f).error(Problem::Missing))
            };
            Ok(ClaimToHeader {
                header: need("header")?.to_ascii_lowercase(),
                claim: need("claim")?,
            })
        },
    )?;
    let forward = match map.get("forwardOriginalToken") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(path
                .field("forwardOriginalToken")
                .error(Problem::WrongType("a boolean")));
        }
    };
    Ok(JwtRule {
        issuer,
        audiences: strings_at(map, "audiences", path)?,
        jwks: string_at(map, "jwks", path)?,
        jwks_uri,
        from_headers,
        from_params: strings_at(map, "fromParams", path)?,
        from_cookies: strings_at(map, "fromCookies", path)?,
        forward_original_token: forward,
        output_payload_to_header: string_at(map, "outputPayloadToHeader", path)?
            .map(|h| h.to_ascii_lowercase()),
        output_claim_to_headers: claims,
    })
}

//! HTTP requests as the policy engine sees them: the attributes an HTTP proxy
//! hands over (method, normalized path, host, headers, the result of JWT
//! authentication), and Istio's default path normalization.
//!
//! Parsing HTTP and verifying tokens is the proxy's job; this module only
//! describes their results, so the engine stays free of I/O.

mod path;

pub use path::{PathError, normalize_path};

use serde_json::Value;

/// Header lookup the proxy provides: the values of one (lower-case) header,
/// joined with `,` as a proxy forwards repeated headers.
pub trait Headers {
    fn joined(&self, name: &str) -> Option<String>;
}

impl Headers for Vec<(String, String)> {
    fn joined(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

/// What a verified JWT says about the request; absent when the request
/// carried no token.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestAuth {
    /// `iss/sub`, as `requestPrincipals` name it.
    pub principal: Option<String>,
    pub audiences: Vec<String>,
    /// The `azp` claim.
    pub presenter: Option<String>,
    /// The token's payload.
    pub claims: Value,
}

impl RequestAuth {
    /// The principal, audiences and presenter Istio derives from a payload.
    pub fn from_claims(claims: Value) -> Self {
        let s = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
        let principal = match (s("iss"), s("sub")) {
            (Some(iss), Some(sub)) => Some(format!("{iss}/{sub}")),
            _ => None,
        };
        let audiences = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        Self {
            principal,
            audiences,
            presenter: s("azp"),
            claims,
        }
    }

    /// The values of a (possibly nested) claim: a string, or each string of a
    /// list; numbers and booleans as text. Empty when absent.
    pub fn claim(&self, path: &[Box<str>]) -> Vec<String> {
        let mut v = &self.claims;
        for key in path {
            match v.get(&**key) {
                Some(next) => v = next,
                None => return Vec::new(),
            }
        }
        match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(list) => list
                .iter()
                .filter_map(|x| match x {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(_) | Value::Bool(_) => Some(x.to_string()),
                    _ => None,
                })
                .collect(),
            Value::Number(_) | Value::Bool(_) => vec![v.to_string()],
            _ => Vec::new(),
        }
    }
}

/// One HTTP request offered to [`PolicySet::evaluate_http`](crate::PolicySet::evaluate_http).
#[derive(Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// The request target after [`normalize_path`], query included.
    pub path: &'a str,
    /// `:authority` or `Host`, as sent.
    pub host: &'a str,
    pub headers: &'a dyn Headers,
    /// `None`: no token was presented (a bad token never gets this far).
    pub auth: Option<&'a RequestAuth>,
}

impl std::fmt::Debug for HttpRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("host", &self.host)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl HttpRequest<'_> {
    /// The path without its query: what `paths` match.
    pub fn path_only(&self) -> &str {
        self.path.split_once('?').map_or(self.path, |(p, _)| p)
    }

    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers.joined(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn auth_from_claims() {
        let a = RequestAuth::from_claims(json!({
            "iss": "https://idp", "sub": "alice", "aud": ["a", "b"], "azp": "web",
            "groups": ["dev", "ops"], "nested": {"role": "admin"}, "n": 3
        }));
        assert_eq!(a.principal.as_deref(), Some("https://idp/alice"));
        assert_eq!(a.audiences, ["a", "b"]);
        assert_eq!(a.presenter.as_deref(), Some("web"));
        assert_eq!(a.claim(&["groups".into()]), ["dev", "ops"]);
        assert_eq!(a.claim(&["nested".into(), "role".into()]), ["admin"]);
        assert_eq!(a.claim(&["n".into()]), ["3"]);
        assert!(a.claim(&["missing".into()]).is_empty());
    }

    #[test]
    fn headers_join_repeats() {
        let h = vec![
            ("X-A".to_owned(), "1".to_owned()),
            ("x-a".to_owned(), "2".to_owned()),
        ];
        assert_eq!(h.joined("x-a").as_deref(), Some("1,2"));
        assert_eq!(h.joined("x-b"), None);
    }
}

//! The HTTP-level parts of an AuthorizationPolicy rule: what only a proxy that
//! reads requests can check (methods, paths, hosts, request principals and the
//! `request.*` conditions), and their match logic against an [`HttpRequest`].
//!
//! These parts ride along on the L4 model ([`super::Source`],
//! [`super::Operation`], [`super::Rule`]): the L4 engine ignores them (an ALLOW
//! rule that has them was already dropped from the L4 form, a DENY rule matches
//! on its L4 part alone), the HTTP evaluation checks both.

use super::matcher::StringMatch;
use crate::http::HttpRequest;

/// `from.source` at HTTP level.
#[derive(Clone, Debug, Default)]
pub(crate) struct HttpSource {
    pub request_principals: Vec<StringMatch>,
    pub not_request_principals: Vec<StringMatch>,
}

/// `to.operation` at HTTP level.
#[derive(Clone, Debug, Default)]
pub(crate) struct HttpOperation {
    pub methods: Vec<StringMatch>,
    pub not_methods: Vec<StringMatch>,
    pub paths: Vec<StringMatch>,
    pub not_paths: Vec<StringMatch>,
    pub hosts: Vec<HostMatch>,
    pub not_hosts: Vec<HostMatch>,
}

/// A `hosts` entry: case-insensitive; an entry without a port also matches
/// the host with any port (`example.com` matches `Example.com:8080`).
#[derive(Clone, Debug)]
pub(crate) struct HostMatch {
    pattern: StringMatch,
    has_port: bool,
}

impl HostMatch {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let lower = s.to_ascii_lowercase();
        let has_port = lower
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            && !lower.ends_with(']');
        Some(Self {
            pattern: StringMatch::parse(&lower)?,
            has_port,
        })
    }

    pub(crate) fn matches(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        if self.pattern.matches(&host) {
            return true;
        }
        !self.has_port && strip_port(&host).is_some_and(|h| self.pattern.matches(h))
    }
}

/// `host:port` to `host` (IPv6 literals keep their brackets).
fn strip_port(host: &str) -> Option<&str> {
    let (h, p) = host.rsplit_once(':')?;
    let numeric = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    (numeric && (!h.contains(':') || h.ends_with(']'))).then_some(h)
}

/// The `when` keys only an HTTP proxy sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HttpKey {
    /// `request.headers[name]`, name lower-cased.
    Header(Box<str>),
    Principal,
    Audiences,
    Presenter,
    /// `request.auth.claims[a][b]`: the path into nested claims.
    Claim(Vec<Box<str>>),
    /// A key this proxy cannot evaluate (`experimental.*`, `connection.sni`,
    /// `request.regex.headers`, ...): an ALLOW rule never matches, a DENY rule
    /// treats it as matching (fail closed).
    Unsupported(Box<str>),
}

impl HttpKey {
    /// `None` when `key` is not an HTTP-level key at all.
    pub(crate) fn parse(key: &str) -> Option<Self> {
        if let Some(rest) = key.strip_prefix("request.headers[") {
            let name = rest.strip_suffix(']').filter(|n| valid_header_name(n));
            return Some(match name {
                Some(n) => Self::Header(n.to_ascii_lowercase().into()),
                None => Self::Unsupported(key.into()),
            });
        }
        if let Some(rest) = key.strip_prefix("request.auth.claims[") {
            return Some(match claim_path(rest) {
                Some(path) => Self::Claim(path),
                None => Self::Unsupported(key.into()),
            });
        }
        Some(match key {
            "request.auth.principal" => Self::Principal,
            "request.auth.audiences" => Self::Audiences,
            "request.auth.presenter" => Self::Presenter,
            k if k.starts_with("request.")
                || k.starts_with("experimental.")
                || k == "connection.sni" =>
            {
                Self::Unsupported(k.into())
            }
            _ => return None,
        })
    }
}

fn valid_header_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `a][b]` (what follows `claims[`) to `["a", "b"]`.
fn claim_path(rest: &str) -> Option<Vec<Box<str>>> {
    let inner = rest.strip_suffix(']')?;
    let parts: Vec<Box<str>> = inner.split("][").map(Into::into).collect();
    parts
        .iter()
        .all(|p| !p.is_empty() && !p.contains(['[', ']']))
        .then_some(parts)
}

/// One HTTP-level `when` entry.
#[derive(Clone, Debug)]
pub(crate) struct HttpCondition {
    pub key: HttpKey,
    pub values: Vec<StringMatch>,
    pub not_values: Vec<StringMatch>,
}

/// Positive list: empty, or some value present matches an entry.
fn want<'v>(set: &[StringMatch], mut values: impl Iterator<Item = &'v str>) -> bool {
    set.is_empty() || values.any(|v| set.iter().any(|m| m.matches(v)))
}

/// Negative list: empty, or no value present matches an entry.
fn refuse<'v>(set: &[StringMatch], mut values: impl Iterator<Item = &'v str>) -> bool {
    set.is_empty() || !values.any(|v| set.iter().any(|m| m.matches(v)))
}

impl HttpSource {
    /// Fields set, by spec name, for warnings.
    pub(crate) fn fields(&self) -> Vec<&'static str> {
        let set = [
            ("requestPrincipals", self.request_principals.is_empty()),
            (
                "notRequestPrincipals",
                self.not_request_principals.is_empty(),
            ),
        ];
        set.into_iter()
            .filter(|(_, e)| !e)
            .map(|(f, _)| f)
            .collect()
    }

    pub(crate) fn matches(&self, req: &HttpRequest<'_>) -> bool {
        let principal = || req.auth.and_then(|a| a.principal.as_deref()).into_iter();
        want(&self.request_principals, principal())
            && refuse(&self.not_request_principals, principal())
    }
}

impl HttpOperation {
    pub(crate) fn is_empty(&self) -> bool {
        self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty()
            && self.hosts.is_empty()
            && self.not_hosts.is_empty()
    }

    /// Fields set, by spec name, for warnings.
    pub(crate) fn fields(&self) -> Vec<&'static str> {
        let set = [
            ("hosts", self.hosts.is_empty()),
            ("notHosts", self.not_hosts.is_empty()),
            ("methods", self.methods.is_empty()),
            ("notMethods", self.not_methods.is_empty()),
            ("paths", self.paths.is_empty()),
            ("notPaths", self.not_paths.is_empty()),
        ];
        set.into_iter()
            .filter(|(_, e)| !e)
            .map(|(f, _)| f)
            .collect()
    }

    pub(crate) fn matches(&self, req: &HttpRequest<'_>) -> bool {
        use std::iter::once;
        let host_in = |set: &[HostMatch]| set.iter().any(|m| m.matches(req.host));
        want(&self.methods, once(req.method))
            && refuse(&self.not_methods, once(req.method))
            && want(&self.paths, once(req.path_only()))
            && refuse(&self.not_paths, once(req.path_only()))
            && (self.hosts.is_empty() || host_in(&self.hosts))
            && !host_in(&self.not_hosts)
    }
}

impl HttpCondition {
    /// `deny`: the rule's action is DENY, where what cannot be evaluated
    /// counts as matching.
    pub(crate) fn matches(&self, req: &HttpRequest<'_>, deny: bool) -> bool {
        let values = match self.values(req) {
            Some(v) => v,
            None => return deny,
        };
        let vals = || values.iter().map(String::as_str);
        let positive = self.values.is_empty() || want(&self.values, vals());
        positive && refuse(&self.not_values, vals())
    }

    /// The attribute's values for this request (empty when absent); `None`
    /// when the key is unsupported.
    fn values(&self, req: &HttpRequest<'_>) -> Option<Vec<String>> {
        let auth = req.auth;
        Some(match &self.key {
            HttpKey::Header(name) => req.header(name).into_iter().collect(),
            HttpKey::Principal => auth.and_then(|a| a.principal.clone()).into_iter().collect(),
            HttpKey::Audiences => auth.map(|a| a.audiences.clone()).unwrap_or_default(),
            HttpKey::Presenter => auth.and_then(|a| a.presenter.clone()).into_iter().collect(),
            HttpKey::Claim(path) => auth.map(|a| a.claim(path)).unwrap_or_default(),
            HttpKey::Unsupported(_) => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_ignore_case_and_optional_port() {
        let m = HostMatch::parse("Example.com").unwrap();
        assert!(m.matches("example.com"));
        assert!(m.matches("EXAMPLE.COM:8080"));
        assert!(!m.matches("example.com.evil"));
        let with_port = HostMatch::parse("example.com:80").unwrap();
        assert!(with_port.matches("example.com:80"));
        assert!(!with_port.matches("example.com"));
        assert!(!with_port.matches("example.com:8080"));
        let wild = HostMatch::parse("*.example.com").unwrap();
        assert!(wild.matches("a.example.com:1"));
        assert!(HostMatch::parse("[::1]").unwrap().matches("[::1]:80"));
    }

    #[test]
    fn condition_keys() {
        assert_eq!(
            HttpKey::parse("request.headers[X-Ver]"),
            Some(HttpKey::Header("x-ver".into()))
        );
        assert_eq!(
            HttpKey::parse("request.auth.claims[groups]"),
            Some(HttpKey::Claim(vec!["groups".into()]))
        );
        assert_eq!(
            HttpKey::parse("request.auth.claims[a][b]"),
            Some(HttpKey::Claim(vec!["a".into(), "b".into()]))
        );
        assert!(matches!(
            HttpKey::parse("request.auth.claims[]"),
            Some(HttpKey::Unsupported(_))
        ));
        assert!(matches!(
            HttpKey::parse("connection.sni"),
            Some(HttpKey::Unsupported(_))
        ));
        assert_eq!(HttpKey::parse("source.ip"), None);
    }
}

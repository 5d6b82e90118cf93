//! Deciding HTTP requests, and saying which rules need HTTP.
//!
//! A request is decided by the same walk as a connection (invalid and CUSTOM
//! policies fail closed, then DENY, then ALLOW), with each rule matched in
//! full: its L4 part against the connection, its HTTP part against the
//! request. Rules this proxy cannot fully evaluate (an unsupported `when`
//! key) never make an ALLOW rule match and always let a DENY rule match.

use crate::http::HttpRequest;
use crate::index::{Candidate, Kind, PolicySet};
use crate::model::{AuthzPolicy, JwtRule};

use super::{Connection, Decision, Target};

/// A rule that needs HTTP to be decided, for warnings and reasons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpOnlyRule {
    /// `namespace/name`.
    pub policy: String,
    pub rule: usize,
    /// `ALLOW` or `DENY`.
    pub action: &'static str,
    /// The spec fields or `when` keys that need HTTP.
    pub fields: Vec<String>,
}

impl HttpOnlyRule {
    /// What happens to the rule where requests cannot be seen.
    pub fn at_l4(&self) -> &'static str {
        if self.action == "DENY" {
            "matches on its L4 part alone (fail closed)"
        } else {
            "never matches"
        }
    }
}

impl std::fmt::Display for HttpOnlyRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rule {} of {} needs HTTP ({})",
            self.rule,
            self.policy,
            self.fields.join(", ")
        )
    }
}

/// The RequestAuthentications that select a workload.
#[derive(Clone, Debug, Default)]
pub struct JwtPolicy<'a> {
    /// Every accepted issuer's rule, from all selecting policies.
    pub rules: Vec<&'a JwtRule>,
    /// `namespace/name` of the selecting policies.
    pub policies: Vec<&'a str>,
    /// Those that could not be read: requests are refused.
    pub invalid: Vec<&'a str>,
}

impl JwtPolicy<'_> {
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

fn needs_http(p: &AuthzPolicy) -> impl Iterator<Item = HttpOnlyRule> + '_ {
    p.l7_rules.iter().map(|n| HttpOnlyRule {
        policy: p.id.to_string(),
        rule: n.rule,
        action: p.action.as_str(),
        fields: n.fields.clone(),
    })
}

impl PolicySet {
    /// Decides one HTTP request arriving on `conn`.
    pub fn evaluate_http(
        &self,
        dst: &Target<'_>,
        conn: &Connection<'_>,
        req: &HttpRequest<'_>,
    ) -> Decision {
        self.evaluate_with(dst, conn, |inner, own, attrs| {
            let first_match = |c: &Candidate| {
                let p = inner.authz.get(c.idx as usize)?;
                let deny = c.kind == Kind::Deny;
                p.http_rules
                    .iter()
                    .find(|r| r.matches_http(attrs, req, deny))
                    .map(|r| r.index)
            };
            inner.decide(own, dst, first_match)
        })
    }

    /// The rules of policies selecting `dst` that need HTTP.
    pub fn http_only_rules(&self, dst: &Target<'_>) -> Vec<HttpOnlyRule> {
        let inner = &*self.inner;
        let mut out = Vec::new();
        let mut visit = |c: &Candidate| {
            if c.selects(dst.labels)
                && let Some(p) = inner.authz.get(c.idx as usize)
            {
                out.extend(needs_http(p));
            }
        };
        inner.root.authz.for_each_candidate(dst.labels, &mut visit);
        if let Some(own) = inner
            .namespace(dst.namespace)
            .filter(|own| !std::ptr::eq(*own, &inner.root))
        {
            own.authz.for_each_candidate(dst.labels, &mut visit);
        }
        out
    }

    /// Every rule of every applied policy that needs HTTP: what the agent
    /// warns about on load and lists on its status page.
    pub fn all_http_only_rules(&self) -> Vec<HttpOnlyRule> {
        self.inner
            .authz
            .iter()
            .filter(|p| !p.http_rules.is_empty())
            .flat_map(needs_http)
            .collect()
    }

    /// The RequestAuthentications selecting `dst`: those of its namespace and
    /// of the root namespace (mesh-wide), by selector.
    pub fn request_authentication(&self, dst: &Target<'_>) -> JwtPolicy<'_> {
        let inner = &*self.inner;
        let mut out = JwtPolicy::default();
        for p in &inner.request_authn {
            let in_scope = *p.namespace == *dst.namespace || p.namespace == inner.root_namespace;
            let selected = p.selector.as_ref().is_none_or(|s| s.matches(dst.labels));
            if p.waypoint || !in_scope || !selected {
                continue;
            }
            out.policies.push(&p.id);
            if p.invalid {
                out.invalid.push(&p.id);
            }
            out.rules.extend(p.rules.iter());
        }
        out
    }

    /// Whether requests to `dst` can be decided differently from its
    /// connections: some selecting rule needs HTTP, or a
    /// RequestAuthentication applies.
    pub fn needs_http(&self, dst: &Target<'_>) -> bool {
        !self.http_only_rules(dst).is_empty() || !self.request_authentication(dst).is_empty()
    }
}

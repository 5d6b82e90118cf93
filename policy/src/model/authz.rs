//! AuthorizationPolicy as an L4 proxy applies it: actions, rules, sources,
//! operations and conditions, with their match logic.
//!
//! The L4 `matches` methods here are the reference semantics: L4 decisions
//! use the compiled form in `index::compiled`, tested against them; HTTP
//! decisions use them directly, with the HTTP parts of `super::http`.
//!
//! L7-only attributes ride along in `http` fields that the L4 form ignores.
//! `parse` leaves an ALLOW rule that needs one out of [`Effect::Allow`] (it
//! could never be proven to match at L4), and a DENY rule keeps only its L4
//! part there (so it matches on that alone: failing closed). The full rules
//! are kept in [`AuthzPolicy::http_rules`] for requests.

use super::Attributes;
use super::Selector;
use super::http::{HttpCondition, HttpOperation, HttpSource};
use super::matcher::any_string;
use super::matcher::{IpMatch, PortSet, StringMatch};
use crate::http::HttpRequest;

/// The `action` of a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Allow,
    Deny,
    Audit,
    Custom,
}

impl Action {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
            Self::Audit => "AUDIT",
            Self::Custom => "CUSTOM",
        }
    }
}

/// What a policy does to the workloads it selects.
#[derive(Clone, Debug)]
pub(crate) enum Effect {
    /// ALLOW with the rules that can match at L4 (possibly none: allows nothing).
    Allow(Vec<Rule>),
    /// DENY with its rules reduced to their L4 part.
    Deny(Vec<Rule>),
    /// AUDIT: never changes a decision.
    Audit,
    /// CUSTOM: delegated to an external authorizer this proxy does not have.
    Custom,
    /// The policy could not be read: every selected connection is refused.
    Invalid,
    /// Bound with `targetRef(s)`: a waypoint's policy, not the node proxy's.
    Waypoint,
}

impl Effect {
    /// Whether and how the node proxy applies the policy, in words.
    pub(crate) fn status(&self) -> &'static str {
        match self {
            Self::Allow(_) | Self::Deny(_) => "active",
            Self::Audit => "audit only (no effect)",
            Self::Custom => "CUSTOM unsupported (fail closed)",
            Self::Invalid => "invalid (fail closed)",
            Self::Waypoint => "targetRef: waypoint policy, not applied",
        }
    }
}

/// One compiled AuthorizationPolicy.
#[derive(Clone, Debug)]
pub(crate) struct AuthzPolicy {
    /// `namespace/name`, as decisions report it.
    pub id: Box<str>,
    pub namespace: Box<str>,
    pub selector: Option<Selector>,
    pub action: Action,
    pub effect: Effect,
    /// Rules that need HTTP attributes, with the fields that do: ALLOW rules
    /// dropped from the L4 form, DENY rules reduced to their L4 part there.
    pub l7_rules: Vec<NeedsHttp>,
    /// Every rule with its HTTP parts, for deciding requests (empty for
    /// effects other than ALLOW and DENY).
    pub http_rules: Vec<Rule>,
    /// Every rule as written, by position (empty when the policy is invalid):
    /// what `describe` shows.
    pub rule_fields: Vec<RuleFields>,
}

/// A rule that needs HTTP, and the spec fields (or `when` keys) that do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NeedsHttp {
    pub rule: usize,
    pub fields: Vec<String>,
}

/// One rule's fields as written, in words: those an L4 proxy checks, and
/// those only an HTTP proxy sees.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleFields {
    pub l4: Vec<String>,
    pub http_only: Vec<String>,
}

/// One rule: `from` entries OR'd, `to` entries OR'd, `when` conditions AND'd;
/// an empty list places no constraint.
#[derive(Clone, Debug, Default)]
pub(crate) struct Rule {
    /// Position in the policy's `rules`, as decisions report it.
    pub index: usize,
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
    /// The `when` entries on HTTP attributes.
    pub http_when: Vec<HttpCondition>,
}

impl Rule {
    /// At L4: the HTTP parts are ignored (the caller chose the rules).
    #[cfg(test)]
    pub(crate) fn matches(&self, a: &Attributes<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(a)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(a)))
            && self.when.iter().all(|c| c.matches(a))
    }

    /// For one request: every part, L4 and HTTP. `deny` says how to read
    /// a condition this proxy cannot evaluate (as matching, for DENY).
    pub(crate) fn matches_http(&self, a: &Attributes<'_>, r: &HttpRequest<'_>, deny: bool) -> bool {
        let source = |s: &Source| s.matches(a) && s.http.matches(r);
        let op = |o: &Operation| o.matches(a) && o.http.matches(r);
        (self.from.is_empty() || self.from.iter().any(source))
            && (self.to.is_empty() || self.to.iter().any(op))
            && self.when.iter().all(|c| c.matches(a))
            && self.http_when.iter().all(|c| c.matches(r, deny))
    }
}

/// `from.source`: every present field must match.
#[derive(Clone, Debug, Default)]
pub(crate) struct Source {
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    /// `serviceAccounts` (`ns/sa`), as principal suffixes `/ns/NS/sa/SA`: any
    /// trust domain.
    pub service_accounts: Vec<StringMatch>,
    pub not_service_accounts: Vec<StringMatch>,
    /// `ipBlocks` and, at L4 where the peer address is the remote address,
    /// `remoteIpBlocks`: both must hold when both are given.
    pub ip_blocks: Vec<IpMatch>,
    pub not_ip_blocks: Vec<IpMatch>,
    pub http: HttpSource,
}

/// Positive list: absent, or the value is present and matches one entry.
fn want(set: &[StringMatch], value: Option<&str>) -> bool {
    set.is_empty() || value.is_some_and(|v| any_string(set, v))
}

/// Negative list: absent, or the value is absent or matches no entry.
fn refuse(set: &[StringMatch], value: Option<&str>) -> bool {
    set.is_empty() || !value.is_some_and(|v| any_string(set, v))
}

impl Source {
    pub(crate) fn matches(&self, a: &Attributes<'_>) -> bool {
        self.ip_blocks.iter().all(|m| m.contains(a.src_ip))
            && !self.not_ip_blocks.iter().any(|m| m.contains(a.src_ip))
            && want(&self.principals, a.principal)
            && refuse(&self.not_principals, a.principal)
            && want(&self.service_accounts, a.principal)
            && refuse(&self.not_service_accounts, a.principal)
            && want(&self.namespaces, a.namespace)
            && refuse(&self.not_namespaces, a.namespace)
    }
}

/// `to.operation`: ports and notPorts at L4, the rest in `http`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Operation {
    pub ports: PortSet,
    pub not_ports: PortSet,
    pub http: HttpOperation,
}

impl Operation {
    pub(crate) fn matches(&self, a: &Attributes<'_>) -> bool {
        (self.ports.is_empty() || self.ports.contains(a.dst_port))
            && !self.not_ports.contains(a.dst_port)
    }
}

/// The `when` keys an L4 proxy can evaluate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConditionKey {
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationIp,
    DestinationPort,
}

impl ConditionKey {
    pub(crate) fn parse(key: &str) -> Option<Self> {
        Some(match key {
            "source.ip" => Self::SourceIp,
            "remote.ip" => Self::RemoteIp,
            "source.namespace" => Self::SourceNamespace,
            "source.principal" => Self::SourcePrincipal,
            "destination.ip" => Self::DestinationIp,
            "destination.port" => Self::DestinationPort,
            _ => return None,
        })
    }
}

/// Typed values of one condition; the type follows the key.
#[derive(Clone, Debug)]
pub(crate) enum ConditionValues {
    Ips(IpMatch),
    Strings(Vec<StringMatch>),
    Ports(PortSet),
}

/// One `when` entry: the attribute must match one of `values` (when given) and
/// none of `not_values` (when given).
#[derive(Clone, Debug)]
pub(crate) struct Condition {
    pub key: ConditionKey,
    pub values: Option<ConditionValues>,
    pub not_values: Option<ConditionValues>,
}

impl Condition {
    fn test(&self, values: &ConditionValues, a: &Attributes<'_>) -> bool {
        match (values, self.key) {
            (ConditionValues::Ips(m), ConditionKey::SourceIp | ConditionKey::RemoteIp) => {
                m.contains(a.src_ip)
            }
            (ConditionValues::Ips(m), ConditionKey::DestinationIp) => m.contains(a.dst_ip),
            (ConditionValues::Strings(m), ConditionKey::SourceNamespace) => {
                a.namespace.is_some_and(|v| any_string(m, v))
            }
            (ConditionValues::Strings(m), ConditionKey::SourcePrincipal) => {
                a.principal.is_some_and(|v| any_string(m, v))
            }
            (ConditionValues::Ports(p), ConditionKey::DestinationPort) => p.contains(a.dst_port),
            // `parse` builds values of the key's type; a mismatch cannot be
            // proven to match.
            _ => false,
        }
    }

    pub(crate) fn matches(&self, a: &Attributes<'_>) -> bool {
        self.values.as_ref().is_none_or(|v| self.test(v, a))
            && self.not_values.as_ref().is_none_or(|v| !self.test(v, a))
    }
}

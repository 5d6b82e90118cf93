//! AuthorizationPolicy as an L4 proxy applies it: actions, rules, sources,
//! operations and conditions, with their match logic.
//!
//! The `matches` methods here are the reference semantics (test builds only):
//! decisions use the compiled form in `index::compiled`, tested against them.
//!
//! L7-only attributes never reach this model. `parse` drops an ALLOW rule that
//! needs one (it could never be proven to match at L4) and strips them from a
//! DENY rule (so it matches on its L4 part alone: failing closed).

#[cfg(test)]
use super::Attributes;
use super::Selector;
#[cfg(test)]
use super::matcher::any_string;
use super::matcher::{IpMatch, PortSet, StringMatch};

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
    /// Indices of ALLOW rules dropped because they need L7 attributes, and of
    /// DENY rules that lost L7 attributes: shown in the summary.
    pub l7_rules: Vec<usize>,
    /// Every rule as written, by position (empty when the policy is invalid):
    /// what `describe` shows.
    pub rule_fields: Vec<RuleFields>,
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
}

#[cfg(test)]
impl Rule {
    pub(crate) fn matches(&self, a: &Attributes<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(a)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(a)))
            && self.when.iter().all(|c| c.matches(a))
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
}

#[cfg(test)]
/// Positive list: absent, or the value is present and matches one entry.
fn want(set: &[StringMatch], value: Option<&str>) -> bool {
    set.is_empty() || value.is_some_and(|v| any_string(set, v))
}

#[cfg(test)]
/// Negative list: absent, or the value is absent or matches no entry.
fn refuse(set: &[StringMatch], value: Option<&str>) -> bool {
    set.is_empty() || !value.is_some_and(|v| any_string(set, v))
}

#[cfg(test)]
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

/// `to.operation` at L4: ports and notPorts.
#[derive(Clone, Debug, Default)]
pub(crate) struct Operation {
    pub ports: PortSet,
    pub not_ports: PortSet,
}

#[cfg(test)]
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

#[cfg(test)]
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

//! The evaluation form of AuthorizationPolicies, compiled once per snapshot so a
//! decision touches few cache lines: each candidate carries its action, the
//! selector pairs the index did not already prove, and its rules inline;
//! principals and namespaces are compared by a hash computed once per decision
//! before any bytes; CIDRs are sorted integer ranges; ports small arrays.
//!
//! The model (`crate::model`) stays the reference semantics and what the
//! summary shows; this form must decide exactly as it does.

use std::hash::BuildHasher;
use std::net::IpAddr;

use foldhash::fast::FixedState;
use ipnet::IpNet;

use super::PolicyIdx;
use crate::model::{
    Attributes, AuthzPolicy, Condition, ConditionKey, ConditionValues, Effect, IpMatch, LabelSet,
    Operation, PortSet, Rule, Source, StringMatch,
};

/// Fixed so that the index built at snapshot time and the hashes taken per
/// decision agree; collisions are harmless because bytes are always compared.
const HASHER: FixedState = FixedState::with_seed(0x616d_6269_745f_706f);

pub(crate) fn hash_str(s: &str) -> u64 {
    HASHER.hash_one(s)
}

pub(crate) fn hash_pair(key: &str, value: &str) -> u64 {
    HASHER.hash_one((key, value))
}

/// An address as the matchers compare it: IPv4-mapped IPv6 is IPv4, as
/// policies name such peers.
#[derive(Clone, Copy, Debug)]
pub(crate) enum IpKey {
    V4(u32),
    V6(u128),
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(a) => Self::V4(a.to_bits()),
            IpAddr::V6(a) => Self::V6(a.to_bits()),
        }
    }
}

/// The connection's attributes with what every matcher needs precomputed.
pub(crate) struct Probe<'a> {
    pub principal: Option<(&'a str, u64)>,
    pub namespace: Option<(&'a str, u64)>,
    pub src_ip: IpKey,
    pub dst_ip: IpKey,
    pub dst_port: u16,
}

impl<'a> Probe<'a> {
    pub(crate) fn new(a: &Attributes<'a>) -> Self {
        Self {
            principal: a.principal.map(|p| (p, hash_str(p))),
            namespace: a.namespace.map(|n| (n, hash_str(n))),
            src_ip: a.src_ip.into(),
            dst_ip: a.dst_ip.into(),
            dst_port: a.dst_port,
        }
    }
}

/// Any-of over string matchers, exact values found by hash first.
#[derive(Debug, Default)]
struct StrSet {
    any: bool,
    exact: Box<[(u64, Box<str>)]>,
    affixes: Box<[StringMatch]>,
}

impl StrSet {
    fn new(set: &[StringMatch]) -> Self {
        let mut exact = Vec::new();
        let mut affixes = Vec::new();
        let mut any = false;
        for m in set {
            match m {
                StringMatch::Any => any = true,
                StringMatch::Exact(v) => exact.push((hash_str(v), v.clone())),
                StringMatch::Prefix(_) | StringMatch::Suffix(_) => affixes.push(m.clone()),
            }
        }
        Self {
            any,
            exact: exact.into(),
            affixes: affixes.into(),
        }
    }

    fn matches(&self, (value, hash): (&str, u64)) -> bool {
        self.any
            || self.exact.iter().any(|(h, v)| *h == hash && **v == *value)
            || self.affixes.iter().any(|m| m.matches(value))
    }
}

/// A set of networks as merged, sorted inclusive ranges per family.
#[derive(Debug, Default)]
pub(crate) struct IpSet {
    v4: Box<[(u32, u32)]>,
    v6: Box<[(u128, u128)]>,
}

fn merged<T: Ord + Copy>(mut ranges: Vec<(T, T)>, next: impl Fn(T) -> Option<T>) -> Box<[(T, T)]> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if next(last.1).is_none_or(|n| lo <= n) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out.into()
}

fn find<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // First range starting above `x`; the one before it is the only candidate.
    let i = ranges.partition_point(|&(lo, _)| lo <= x);
    i > 0 && ranges[i - 1].1 >= x
}

impl IpSet {
    pub(crate) fn new(m: &IpMatch) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in m.nets() {
            match net {
                IpNet::V4(n) => v4.push((n.network().to_bits(), n.broadcast().to_bits())),
                IpNet::V6(n) => v6.push((n.network().to_bits(), n.broadcast().to_bits())),
            }
        }
        Self {
            v4: merged(v4, |x: u32| x.checked_add(1)),
            v6: merged(v6, |x: u128| x.checked_add(1)),
        }
    }

    pub(crate) fn contains(&self, ip: IpKey) -> bool {
        match ip {
            IpKey::V4(x) => find(&self.v4, x),
            IpKey::V6(x) => find(&self.v6, x),
        }
    }
}

/// A small set of ports kept inline (the usual case); larger sets sorted.
#[derive(Debug)]
pub(crate) enum Ports {
    Inline(u8, [u16; 7]),
    Sorted(Box<[u16]>),
}

impl Ports {
    pub(crate) fn new(set: &PortSet) -> Self {
        let mut ports = set.ports().to_vec();
        ports.sort_unstable();
        ports.dedup();
        let mut inline = [0; 7];
        match inline.get_mut(..ports.len()) {
            Some(slot) => {
                slot.copy_from_slice(&ports);
                Self::Inline(ports.len() as u8, inline)
            }
            None => Self::Sorted(ports.into()),
        }
    }

    fn as_slice(&self) -> &[u16] {
        match self {
            Self::Inline(len, ports) => &ports[..usize::from(*len)],
            Self::Sorted(ports) => ports,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    pub(crate) fn contains(&self, port: u16) -> bool {
        match self {
            Self::Inline(..) => self.as_slice().contains(&port),
            Self::Sorted(ports) => ports.binary_search(&port).is_ok(),
        }
    }
}

/// One field of a `from.source`, or the end of that source.
#[derive(Debug)]
enum Check {
    SrcIp { set: IpSet, negate: bool },
    Namespace { set: StrSet, negate: bool },
    Principal { set: StrSet, negate: bool },
    EndSource,
}

impl Check {
    fn holds(&self, p: &Probe<'_>) -> bool {
        // Positive lists need a present, matching value; negative lists refuse
        // only a present, matching one.
        match self {
            Self::SrcIp { set, negate } => set.contains(p.src_ip) != *negate,
            Self::Namespace { set, negate } => {
                p.namespace.is_some_and(|v| set.matches(v)) != *negate
            }
            Self::Principal { set, negate } => {
                p.principal.is_some_and(|v| set.matches(v)) != *negate
            }
            Self::EndSource => true,
        }
    }
}

fn push_source(out: &mut Vec<Check>, s: &Source) {
    for m in &s.ip_blocks {
        out.push(Check::SrcIp {
            set: IpSet::new(m),
            negate: false,
        });
    }
    for m in &s.not_ip_blocks {
        out.push(Check::SrcIp {
            set: IpSet::new(m),
            negate: true,
        });
    }
    let strings = [
        (&s.namespaces, false, false),
        (&s.not_namespaces, true, false),
        (&s.principals, false, true),
        (&s.not_principals, true, true),
        (&s.service_accounts, false, true),
        (&s.not_service_accounts, true, true),
    ];
    for (list, negate, principal) in strings {
        if list.is_empty() {
            continue;
        }
        let set = StrSet::new(list);
        out.push(if principal {
            Check::Principal { set, negate }
        } else {
            Check::Namespace { set, negate }
        });
    }
    out.push(Check::EndSource);
}

/// Whether any source (a run of checks up to its `EndSource`) fully holds;
/// no sources place no constraint.
fn any_source(checks: &[Check], p: &Probe<'_>) -> bool {
    if checks.is_empty() {
        return true;
    }
    let mut ok = true;
    for c in checks {
        match c {
            Check::EndSource if ok => return true,
            Check::EndSource => ok = true,
            _ if ok => ok = c.holds(p),
            _ => {}
        }
    }
    false
}

#[derive(Debug)]
struct Op {
    ports: Ports,
    not_ports: Ports,
}

impl Op {
    fn new(o: &Operation) -> Self {
        Self {
            ports: Ports::new(&o.ports),
            not_ports: Ports::new(&o.not_ports),
        }
    }

    fn matches(&self, port: u16) -> bool {
        (self.ports.is_empty() || self.ports.contains(port)) && !self.not_ports.contains(port)
    }
}

#[derive(Debug)]
enum Values {
    Ips(IpSet),
    Strings(StrSet),
    Ports(Ports),
}

impl Values {
    fn new(v: &ConditionValues) -> Self {
        match v {
            ConditionValues::Ips(m) => Self::Ips(IpSet::new(m)),
            ConditionValues::Strings(s) => Self::Strings(StrSet::new(s)),
            ConditionValues::Ports(p) => Self::Ports(Ports::new(p)),
        }
    }
}

#[derive(Debug)]
struct Cond {
    key: ConditionKey,
    values: Option<Values>,
    not_values: Option<Values>,
}

impl Cond {
    fn new(c: &Condition) -> Self {
        Self {
            key: c.key,
            values: c.values.as_ref().map(Values::new),
            not_values: c.not_values.as_ref().map(Values::new),
        }
    }

    fn test(&self, values: &Values, p: &Probe<'_>) -> bool {
        match (values, self.key) {
            (Values::Ips(m), ConditionKey::SourceIp | ConditionKey::RemoteIp) => {
                m.contains(p.src_ip)
            }
            (Values::Ips(m), ConditionKey::DestinationIp) => m.contains(p.dst_ip),
            (Values::Strings(m), ConditionKey::SourceNamespace) => {
                p.namespace.is_some_and(|v| m.matches(v))
            }
            (Values::Strings(m), ConditionKey::SourcePrincipal) => {
                p.principal.is_some_and(|v| m.matches(v))
            }
            (Values::Ports(m), ConditionKey::DestinationPort) => m.contains(p.dst_port),
            // As in the model: a value of the wrong type cannot be proven to match.
            _ => false,
        }
    }

    fn matches(&self, p: &Probe<'_>) -> bool {
        self.values.as_ref().is_none_or(|v| self.test(v, p))
            && self.not_values.as_ref().is_none_or(|v| !self.test(v, p))
    }
}

#[derive(Debug)]
struct CompiledRule {
    index: usize,
    from: Box<[Check]>,
    to: Box<[Op]>,
    when: Box<[Cond]>,
}

impl CompiledRule {
    fn new(r: &Rule) -> Self {
        let mut from = Vec::new();
        r.from.iter().for_each(|s| push_source(&mut from, s));
        Self {
            index: r.index,
            from: from.into(),
            to: r.to.iter().map(Op::new).collect(),
            when: r.when.iter().map(Cond::new).collect(),
        }
    }

    fn matches(&self, p: &Probe<'_>) -> bool {
        (self.to.is_empty() || self.to.iter().any(|o| o.matches(p.dst_port)))
            && any_source(&self.from, p)
            && self.when.iter().all(|c| c.matches(p))
    }
}

/// What a candidate policy does once it selects the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Invalid,
    Custom,
    Deny,
    Allow,
}

/// One policy as a scope files it.
#[derive(Debug)]
pub(crate) struct Candidate {
    pub idx: PolicyIdx,
    pub kind: Kind,
    /// Selector pairs the index lookup did not already prove.
    rest: Box<[(Box<str>, Box<str>)]>,
    rules: Box<[CompiledRule]>,
}

impl Candidate {
    /// `None` for policies that never take part in decisions (AUDIT, waypoint).
    /// `proven` is the selector pair the candidate is filed under.
    pub(crate) fn new(
        idx: PolicyIdx,
        p: &AuthzPolicy,
        proven: Option<(&str, &str)>,
    ) -> Option<Self> {
        let (kind, rules) = match &p.effect {
            Effect::Allow(r) => (Kind::Allow, &r[..]),
            Effect::Deny(r) => (Kind::Deny, &r[..]),
            Effect::Invalid => (Kind::Invalid, &[][..]),
            Effect::Custom => (Kind::Custom, &[][..]),
            Effect::Audit | Effect::Waypoint => return None,
        };
        let rest = p
            .selector
            .iter()
            .flat_map(|s| s.labels())
            .filter(|&pair| Some(pair) != proven)
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Some(Self {
            idx,
            kind,
            rest,
            rules: rules.iter().map(CompiledRule::new).collect(),
        })
    }

    pub(crate) fn selects(&self, labels: &dyn LabelSet) -> bool {
        self.rest.iter().all(|(k, v)| labels.label(k) == Some(&**v))
    }

    /// Index (in the policy's `rules`) of the first rule matching `p`.
    pub(crate) fn first_match(&self, p: &Probe<'_>) -> Option<usize> {
        self.rules.iter().find(|r| r.matches(p)).map(|r| r.index)
    }
}

#[cfg(test)]
mod tests;

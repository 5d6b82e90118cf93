//! Deciding one connection: PeerAuthentication first for plaintext, then
//! fail-closed policies (invalid, CUSTOM), DENY, and ALLOW, in Istio's order.

use std::net::IpAddr;

use serde_json::{Value, json};

mod http;

pub use http::{HttpOnlyRule, JwtPolicy};

use crate::index::{Candidate, Inner, Kind, NamespaceIndex, PolicyIdx, PolicySet, Probe};
use crate::model::{Attributes, AuthzPolicy, LabelSet, MtlsMode};

/// The destination workload of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub namespace: &'a str,
    pub labels: &'a dyn LabelSet,
}

/// What is known about a connection when it is decided.
#[derive(Clone, Copy, Debug)]
pub struct Connection<'a> {
    pub src_ip: IpAddr,
    /// Peer identity without `spiffe://`, e.g. `cluster.local/ns/default/sa/guestbook`;
    /// `None` for plaintext.
    pub src_principal: Option<&'a str>,
    pub src_namespace: Option<&'a str>,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    /// `false` for plaintext (the 15006 path): PeerAuthentication decides first,
    /// and principal and namespace are ignored even if given.
    pub mtls: bool,
}

/// Why a connection was allowed or denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A DENY policy's rule matched.
    DeniedByDenyRule,
    /// An ALLOW policy's rule matched.
    AllowedByAllowRule,
    /// ALLOW policies select the workload and none of their rules matched.
    NoAllowPolicyMatched,
    /// No ALLOW policy selects the workload and no DENY rule matched.
    NoAllowPolicies,
    /// Plaintext to a port whose PeerAuthentication mode is STRICT.
    PlaintextRefusedByStrict,
    /// A policy selecting the workload could not be read.
    InvalidPolicy,
    /// A CUSTOM policy selects the workload; it needs an external authorizer.
    CustomUnsupported,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeniedByDenyRule => "denied by DENY rule",
            Self::AllowedByAllowRule => "allowed by ALLOW rule",
            Self::NoAllowPolicyMatched => "no ALLOW policy matched",
            Self::NoAllowPolicies => "no ALLOW policies",
            Self::PlaintextRefusedByStrict => "plaintext refused by STRICT",
            Self::InvalidPolicy => "invalid policy (fail closed)",
            Self::CustomUnsupported => "CUSTOM unsupported (fail closed)",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decision and its explanation.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// `namespace/name` of the policy that decided, if one did.
    pub policy: Option<String>,
    /// Index of the deciding rule in that policy's `rules`.
    pub rule: Option<usize>,
    pub reason: Reason,
    /// The destination port's mTLS mode.
    pub mtls_mode: MtlsMode,
}

impl Decision {
    /// `{"decision","policy","rule","reason","mtls_mode"}`, as the dry-run CLI
    /// prints it.
    pub fn to_json(&self) -> Value {
        json!({
            "decision": if self.allowed { "allow" } else { "deny" },
            "policy": self.policy,
            "rule": self.rule,
            "reason": self.reason.as_str(),
            "mtls_mode": self.mtls_mode.as_str(),
        })
    }
}

/// The lowest-positioned policy (and rule) found so far for one outcome.
#[derive(Clone, Copy, Default)]
struct Best {
    found: Option<(PolicyIdx, Option<usize>)>,
}

impl Best {
    fn beats(&self, idx: PolicyIdx) -> bool {
        self.found.is_some_and(|(best, _)| best < idx)
    }

    fn offer(&mut self, idx: PolicyIdx, rule: Option<usize>) {
        if !self.beats(idx) {
            self.found = Some((idx, rule));
        }
    }
}

impl PolicySet {
    /// Decides a connection to `dst`.
    pub fn evaluate(&self, dst: &Target<'_>, conn: &Connection<'_>) -> Decision {
        self.evaluate_with(dst, conn, |inner, own, attrs| {
            let probe = Probe::new(attrs);
            inner.decide(own, dst, |c: &Candidate| c.first_match(&probe))
        })
    }

    /// What every decision shares: the mTLS mode (STRICT refuses plaintext
    /// before any policy), the source attributes a plaintext client cannot
    /// claim, and the answer's shape. `rules` decides the rest.
    pub(crate) fn evaluate_with<'s>(
        &'s self,
        dst: &Target<'_>,
        conn: &Connection<'_>,
        rules: impl FnOnce(&'s Inner, Option<&'s NamespaceIndex>, &Attributes<'_>) -> Outcome<'s>,
    ) -> Decision {
        let inner = &*self.inner;
        let own = inner.namespace(dst.namespace);
        let (mtls_mode, mode_policy) = inner.resolve_mtls(own, dst, conn.dst_port);
        let decide = |allowed, policy: Option<&str>, rule, reason| Decision {
            allowed,
            policy: policy.map(str::to_owned),
            rule,
            reason,
            mtls_mode,
        };
        if !conn.mtls && mtls_mode == MtlsMode::Strict {
            return decide(false, mode_policy, None, Reason::PlaintextRefusedByStrict);
        }
        let attrs = Attributes {
            src_ip: conn.src_ip,
            principal: conn.src_principal.filter(|_| conn.mtls),
            namespace: conn.src_namespace.filter(|_| conn.mtls),
            dst_ip: conn.dst_ip,
            dst_port: conn.dst_port,
        };
        let (allowed, policy, rule, reason) = rules(inner, own, &attrs);
        decide(allowed, policy, rule, reason)
    }

    /// The mTLS mode PeerAuthentication gives `port` of `dst`.
    pub fn mtls_mode(&self, dst: &Target<'_>, port: u16) -> MtlsMode {
        let own = self.inner.namespace(dst.namespace);
        self.inner.resolve_mtls(own, dst, port).0
    }

    /// A JSON view for the admin config dump: every policy with its scope and
    /// status, the namespaces holding policies, and the validity errors.
    pub fn summary(&self) -> Value {
        self.inner.summary()
    }
}

/// An outcome before the mTLS mode is attached: allowed, policy, rule, reason.
pub(crate) type Outcome<'p> = (bool, Option<&'p str>, Option<usize>, Reason);

impl Inner {
    /// Walks the policies that may select `dst` in Istio's order (invalid and
    /// CUSTOM fail closed, then DENY, then ALLOW); `first_match` says which
    /// rule of a DENY or ALLOW candidate matches, if any.
    pub(crate) fn decide<'p>(
        &'p self,
        own: Option<&'p NamespaceIndex>,
        dst: &Target<'_>,
        first_match: impl Fn(&Candidate) -> Option<usize>,
    ) -> Outcome<'p> {
        let mut invalid = Best::default();
        let mut custom = Best::default();
        let mut deny = Best::default();
        let mut allow = Best::default();
        let mut any_allow = false;
        let mut visit = |c: &Candidate| {
            let idx = c.idx;
            if !c.selects(dst.labels) {
                return;
            }
            match c.kind {
                Kind::Invalid => invalid.offer(idx, None),
                Kind::Custom => custom.offer(idx, None),
                Kind::Deny if !deny.beats(idx) => {
                    if let Some(rule) = first_match(c) {
                        deny.offer(idx, Some(rule));
                    }
                }
                Kind::Allow => {
                    any_allow = true;
                    if allow.beats(idx) {
                        return;
                    }
                    if let Some(rule) = first_match(c) {
                        allow.offer(idx, Some(rule));
                    }
                }
                Kind::Deny => {}
            }
        };
        self.root.authz.for_each_candidate(dst.labels, &mut visit);
        if let Some(own) = own.filter(|own| !std::ptr::eq(*own, &self.root)) {
            own.authz.for_each_candidate(dst.labels, &mut visit);
        }

        let named = |best: Best| {
            best.found.map(|(idx, rule)| {
                (
                    self.authz.get(idx as usize).map(|p: &AuthzPolicy| &*p.id),
                    rule,
                )
            })
        };
        let outcomes = [
            (invalid, false, Reason::InvalidPolicy),
            (custom, false, Reason::CustomUnsupported),
            (deny, false, Reason::DeniedByDenyRule),
            (allow, true, Reason::AllowedByAllowRule),
        ];
        for (best, allowed, reason) in outcomes {
            if let Some((policy, rule)) = named(best) {
                return (allowed, policy, rule, reason);
            }
        }
        if any_allow {
            (false, None, None, Reason::NoAllowPolicyMatched)
        } else {
            (true, None, None, Reason::NoAllowPolicies)
        }
    }

    /// The index of the destination's namespace (the root namespace's own when
    /// the destination lives there).
    pub(crate) fn namespace(&self, ns: &str) -> Option<&NamespaceIndex> {
        if ns == &*self.root_namespace {
            // Its workload policies still apply to its own workloads.
            return Some(&self.root);
        }
        self.namespaces.get(ns)
    }

    /// Mesh, then namespace, then workload, then port: each level that sets a
    /// mode overrides the one above; UNSET inherits. Also returns the policy
    /// that set the winning mode.
    pub(crate) fn resolve_mtls(
        &self,
        own: Option<&NamespaceIndex>,
        dst: &Target<'_>,
        port: u16,
    ) -> (MtlsMode, Option<&str>) {
        let (mut mode, mut by) = own.unwrap_or(&self.root).inherited_mtls;
        // Workload policies apply only in their own namespace (`build` drops
        // those in the root namespace, as Istio ignores them).
        let workload = own.and_then(|s| {
            s.peer.workload.iter().find_map(|&i| {
                let p = self.peer.get(i as usize)?;
                let selected = p
                    .selector
                    .as_ref()
                    .is_some_and(|sel| sel.matches(dst.labels));
                selected.then_some((i, p))
            })
        });
        if let Some((i, m)) = workload.and_then(|(i, p)| Some((i, p.mode_for(port)?))) {
            mode = m;
            by = Some(i);
        }
        let by = by.and_then(|i| self.peer.get(i as usize)).map(|p| &*p.id);
        (mode, by)
    }
}

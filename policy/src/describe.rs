//! What applies to one workload, in words: the mTLS mode of its ports and the
//! PeerAuthentication that sets each, and every AuthorizationPolicy that
//! selects it, each rule with whether the node proxy can enforce it at L4.
//! The model `ambit-agent describe` prints; pure, like the rest of the crate.

use serde::{Deserialize, Serialize};

use crate::eval::Target;
use crate::index::PolicySet;
use crate::model::{Action, AuthzPolicy, Effect, MtlsMode, RuleFields};

/// The policies that apply to one workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadPolicies {
    pub mtls: MtlsView,
    /// In the order decisions consult them (`namespace/name`).
    pub authorization: Vec<AuthzView>,
}

/// The effective mTLS mode, workload-wide and per port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MtlsView {
    /// The mode of a port without a port-level setting.
    pub mode: MtlsMode,
    /// The PeerAuthentication (`namespace/name`) that sets it; `None`: the
    /// mesh default (PERMISSIVE), no policy.
    pub set_by: Option<String>,
    /// The ports asked about and those a selecting PeerAuthentication names.
    pub ports: Vec<PortMtls>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMtls {
    pub port: u16,
    pub mode: MtlsMode,
    pub set_by: Option<String>,
}

/// One AuthorizationPolicy selecting the workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzView {
    /// `namespace/name`.
    pub policy: String,
    /// `ALLOW`, `DENY`, `AUDIT` or `CUSTOM`.
    pub action: String,
    /// `mesh`, `namespace` or `workload`.
    pub scope: String,
    /// Whether the node proxy applies it (`active`, `invalid (fail closed)`...).
    pub status: String,
    pub rules: Vec<RuleView>,
}

/// One rule of a policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleView {
    /// Position in the policy's `rules`, as decisions report it.
    pub index: usize,
    pub fields: RuleFields,
    pub enforcement: Enforcement,
}

/// How the destination agent treats a rule: on a TCP connection, and on
/// each request of one it serves as HTTP (declared or sniffed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// Every field is an L4 one: enforced as written.
    L4,
    /// An ALLOW rule needing HTTP fields: decided per request on HTTP
    /// connections; it can never be shown to match a TCP connection, so it
    /// allows none.
    NeverMatchesAtL4,
    /// A DENY rule needing HTTP fields: decided per request on HTTP
    /// connections; a TCP connection is denied on its L4 fields alone (fail
    /// closed), more than written.
    L4PartOnly,
    /// The policy does not decide (AUDIT, CUSTOM, waypoint, invalid).
    NotApplied,
}

impl Enforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::L4 => "enforced at L4",
            Self::NeverMatchesAtL4 => {
                "never matches at L4: needs HTTP attributes, decided per request on HTTP ports"
            }
            Self::L4PartOnly => {
                "needs HTTP attributes: decided per request on HTTP ports, on its L4 fields alone elsewhere"
            }
            Self::NotApplied => "not applied by the node proxy",
        }
    }
}

impl PolicySet {
    /// The policies applying to `dst`, with the mTLS mode of each of `ports`
    /// (the workload's Service target ports, say) and of any port a selecting
    /// PeerAuthentication sets.
    pub fn describe(&self, dst: &Target<'_>, ports: &[u16]) -> WorkloadPolicies {
        let inner = &*self.inner;
        let own = inner.namespace(dst.namespace);
        // Port 0 is no port a PeerAuthentication can name, so this is the
        // workload-wide mode.
        let (mode, set_by) = inner.resolve_mtls(own, dst, 0);
        let mut all_ports: Vec<u16> = ports.to_vec();
        let selecting = own
            .into_iter()
            .flat_map(|o| &o.peer.workload)
            .filter_map(|&i| {
                let p = inner.peer.get(i as usize)?;
                p.selector
                    .as_ref()
                    .is_some_and(|s| s.matches(dst.labels))
                    .then_some(p)
            });
        for p in selecting {
            all_ports.extend(p.port_modes.iter().map(|(port, _)| *port));
        }
        all_ports.sort_unstable();
        all_ports.dedup();
        let ports = all_ports
            .into_iter()
            .map(|port| {
                let (mode, by) = inner.resolve_mtls(own, dst, port);
                PortMtls {
                    port,
                    mode,
                    set_by: by.map(str::to_owned),
                }
            })
            .collect();
        let authorization = inner
            .authz
            .iter()
            .filter(|p| {
                let in_scope =
                    &*p.namespace == dst.namespace || p.namespace == inner.root_namespace;
                in_scope && p.selector.as_ref().is_none_or(|s| s.matches(dst.labels))
            })
            .map(|p| AuthzView {
                policy: p.id.to_string(),
                action: p.action.as_str().to_owned(),
                scope: inner.scope(&p.namespace, p.selector.as_ref()).to_owned(),
                status: p.effect.status().to_owned(),
                rules: rules_of(p),
            })
            .collect();
        WorkloadPolicies {
            mtls: MtlsView {
                mode,
                set_by: set_by.map(str::to_owned),
                ports,
            },
            authorization,
        }
    }
}

fn rules_of(p: &AuthzPolicy) -> Vec<RuleView> {
    let applied = matches!(p.effect, Effect::Allow(_) | Effect::Deny(_));
    p.rule_fields
        .iter()
        .enumerate()
        .map(|(index, fields)| {
            let enforcement = match (applied, fields.http_only.is_empty(), p.action) {
                (false, _, _) => Enforcement::NotApplied,
                (true, true, _) => Enforcement::L4,
                (true, false, Action::Allow) => Enforcement::NeverMatchesAtL4,
                (true, false, _) => Enforcement::L4PartOnly,
            };
            RuleView {
                index,
                fields: fields.clone(),
                enforcement,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;

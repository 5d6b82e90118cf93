//! The admin config dump's view of a [`PolicySet`](super::PolicySet).

use serde_json::{Map, Value, json};

use super::Inner;
use crate::model::{Effect, Selector};

fn selector_json(s: Option<&Selector>) -> Value {
    match s {
        None => Value::Null,
        Some(s) => Value::Object(
            s.labels()
                .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
                .collect::<Map<String, Value>>(),
        ),
    }
}

impl Inner {
    /// `mesh`, `namespace` or `workload`: whom a policy in `ns` applies to.
    pub(crate) fn scope(&self, ns: &str, selector: Option<&Selector>) -> &'static str {
        match (ns == &*self.root_namespace, selector) {
            (true, None) => "mesh",
            (false, None) => "namespace",
            (_, Some(_)) => "workload",
        }
    }

    pub(crate) fn summary(&self) -> Value {
        let scope = |ns: &str, selector: Option<&Selector>| self.scope(ns, selector);
        let mut policies = Vec::with_capacity(self.authz.len() + self.peer.len());
        for p in &self.authz {
            let status = p.effect.status();
            let rules = match &p.effect {
                Effect::Allow(r) | Effect::Deny(r) => Some(r.len()),
                _ => None,
            };
            policies.push(json!({
                "kind": "AuthorizationPolicy",
                "policy": &*p.id,
                "action": p.action.as_str(),
                "scope": scope(&p.namespace, p.selector.as_ref()),
                "selector": selector_json(p.selector.as_ref()),
                "status": status,
                "l4_rules": rules,
                "l7_rules": p.l7_rules.iter().map(|n| n.rule).collect::<Vec<_>>(),
                "http_only_rules": p.l7_rules.iter().map(|n| json!({
                    "rule": n.rule,
                    "fields": n.fields,
                    "at_l4": if p.action.as_str() == "DENY" {
                        "matches on its L4 part alone (fail closed)"
                    } else {
                        "never matches"
                    },
                })).collect::<Vec<_>>(),
            }));
        }
        for p in &self.peer {
            let ports: Map<String, Value> = p
                .port_modes
                .iter()
                .map(|(port, m)| (port.to_string(), json!(m.map_or("UNSET", |m| m.as_str()))))
                .collect();
            policies.push(json!({
                "kind": "PeerAuthentication",
                "policy": &*p.id,
                "scope": scope(&p.namespace, p.selector.as_ref()),
                "selector": selector_json(p.selector.as_ref()),
                "mode": p.mode.map_or("UNSET", |m| m.as_str()),
                "port_level_mtls": ports,
                "status": if p.ignored_in(&self.root_namespace) {
                    "ignored: workload selector in the root namespace"
                } else if p.invalid {
                    "invalid (applied as STRICT)"
                } else {
                    "active"
                },
            }));
        }
        for p in &self.request_authn {
            policies.push(json!({
                "kind": "RequestAuthentication",
                "policy": &*p.id,
                "scope": scope(&p.namespace, p.selector.as_ref()),
                "selector": selector_json(p.selector.as_ref()),
                "issuers": p.rules.iter().map(|r| r.issuer.as_str()).collect::<Vec<_>>(),
                "status": if p.waypoint {
                    "targetRef: waypoint policy, not applied"
                } else if p.invalid {
                    "invalid (requests refused)"
                } else {
                    "active"
                },
            }));
        }
        json!({
            "root_namespace": &*self.root_namespace,
            "policies": policies,
            "namespaces": self.namespaces(),
            "errors": self.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    }
}

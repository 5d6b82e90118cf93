//! One Kubernetes object to a compiled policy. Errors name the policy
//! (`kind namespace/name`) and the field path (`spec.rules[0].from[1].source.ipBlocks[0]`).
//!
//! An invalid policy is not dropped: it is returned as a fail-closed record for
//! the workloads it would select, alongside the error, so a typo can never widen
//! access. Unknown fields are errors for the same reason: a misspelt
//! `principles:` would otherwise leave a source that matches everyone.

mod authz;
mod json;
mod peer_authn;
mod request_authn;
mod rule_fields;

use serde_json::Value;

use crate::model::{AuthzPolicy, PeerAuthn, RequestAuthn};
use json::{FieldError, Path};

/// The policy kinds this crate reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
}

impl PolicyKind {
    /// The kind of a `security.istio.io/v1` or `v1beta1` policy object.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Self> {
        if !matches!(
            api_version,
            "security.istio.io/v1" | "security.istio.io/v1beta1"
        ) {
            return None;
        }
        match kind {
            "AuthorizationPolicy" => Some(Self::AuthorizationPolicy),
            "PeerAuthentication" => Some(Self::PeerAuthentication),
            "RequestAuthentication" => Some(Self::RequestAuthentication),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationPolicy => "AuthorizationPolicy",
            Self::PeerAuthentication => "PeerAuthentication",
            Self::RequestAuthentication => "RequestAuthentication",
        }
    }
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy that could not be read (or an object that is not a policy).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} {policy}: {field}: {problem}", kind.map_or("object", PolicyKind::as_str))]
pub struct PolicyError {
    /// `None` when the object is not a policy at all.
    pub kind: Option<PolicyKind>,
    /// `namespace/name`.
    pub policy: String,
    /// Path of the offending field, e.g. `spec.rules[0].to[0].operation.ports[1]`.
    pub field: String,
    pub problem: Problem,
}

/// What was wrong with a field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error(
        "not a security.istio.io/v1 or v1beta1 AuthorizationPolicy, PeerAuthentication or RequestAuthentication ({api_version} {kind})"
    )]
    NotAPolicy { api_version: String, kind: String },
    #[error("expected {0}")]
    WrongType(&'static str),
    #[error("missing")]
    Missing,
    #[error("unknown field")]
    UnknownField,
    #[error("unknown action {0:?} (ALLOW, DENY, AUDIT or CUSTOM)")]
    UnknownAction(String),
    #[error("unknown mTLS mode {0:?} (UNSET, DISABLE, PERMISSIVE or STRICT)")]
    UnknownMode(String),
    #[error("invalid IP address or CIDR {0:?}")]
    BadCidr(String),
    #[error("invalid port {0:?} (1-65535)")]
    BadPort(String),
    #[error(
        "malformed principal {0:?} (trust-domain/ns/NAMESPACE/sa/ACCOUNT, without spiffe://; `*` only alone or at one end)"
    )]
    MalformedPrincipal(String),
    #[error("malformed value {0:?} (non-empty; `*` only alone or at one end)")]
    MalformedValue(String),
    #[error("malformed service account {0:?} (NAMESPACE/ACCOUNT, no wildcards)")]
    MalformedServiceAccount(String),
    #[error("unknown condition key {0:?}")]
    UnknownConditionKey(String),
    #[error("must set at least one field")]
    Empty,
    #[error("must set values or notValues")]
    NoConditionValues,
    #[error("portLevelMtls needs a workload selector")]
    PortLevelWithoutSelector,
}

/// A compiled policy of either kind.
#[derive(Clone, Debug)]
pub(crate) enum Compiled {
    Authz(AuthzPolicy),
    Peer(PeerAuthn),
    Request(RequestAuthn),
}

/// A compiled policy; `error` is set when it was compiled fail-closed.
#[derive(Clone, Debug)]
pub(crate) struct Parsed {
    pub compiled: Compiled,
    pub error: Option<PolicyError>,
}

/// The namespace assumed for an object without `metadata.namespace`, as
/// `kubectl apply` would with the default context.
const DEFAULT_NAMESPACE: &str = "default";

/// Identity and age of a policy, read before the spec so even a broken spec can
/// be recorded under its name.
pub(crate) struct Meta {
    pub kind: PolicyKind,
    pub namespace: String,
    pub id: String,
    pub created: Option<String>,
}

/// Compiles one object. `Err` only for objects that are not policies (nothing
/// to record); a broken policy comes back compiled fail-closed with its error.
pub(crate) fn parse(obj: &Value) -> Result<Parsed, PolicyError> {
    let meta = read_meta(obj)?;
    let mut error = None;
    let mut fail = |e: FieldError| {
        error.get_or_insert(PolicyError {
            kind: Some(meta.kind),
            policy: meta.id.clone(),
            field: e.field,
            problem: e.problem,
        });
    };
    if let Some(e) = check_metadata(obj) {
        fail(e);
    }
    let compiled = match meta.kind {
        PolicyKind::AuthorizationPolicy => Compiled::Authz(authz::compile(obj, &meta, &mut fail)),
        PolicyKind::PeerAuthentication => {
            Compiled::Peer(peer_authn::compile(obj, &meta, &mut fail))
        }
        PolicyKind::RequestAuthentication => {
            Compiled::Request(request_authn::compile(obj, &meta, &mut fail))
        }
    };
    Ok(Parsed { compiled, error })
}

fn read_meta(obj: &Value) -> Result<Meta, PolicyError> {
    let str_at = |ptr: &str| obj.pointer(ptr).and_then(Value::as_str);
    let api_version = str_at("/apiVersion").unwrap_or_default();
    let kind_name = str_at("/kind").unwrap_or_default();
    let namespace = str_at("/metadata/namespace").filter(|s| !s.is_empty());
    let namespace = namespace.unwrap_or(DEFAULT_NAMESPACE).to_owned();
    let name = str_at("/metadata/name").unwrap_or_default();
    let id = format!("{namespace}/{name}");
    let Some(kind) = PolicyKind::from_type(api_version, kind_name) else {
        return Err(PolicyError {
            kind: None,
            policy: id,
            field: "kind".into(),
            problem: Problem::NotAPolicy {
                api_version: api_version.into(),
                kind: kind_name.into(),
            },
        });
    };
    Ok(Meta {
        kind,
        namespace,
        id,
        created: str_at("/metadata/creationTimestamp").map(str::to_owned),
    })
}

fn check_metadata(obj: &Value) -> Option<FieldError> {
    let path = Path::root().field("metadata");
    let Some(meta) = obj.get("metadata") else {
        return Some(path.error(Problem::Missing));
    };
    let map = match json::object(meta, &path) {
        Ok(map) => map,
        Err(e) => return Some(e),
    };
    for key in ["name", "namespace", "creationTimestamp"] {
        if let Err(e) = json::opt_str(map.get(key), &path.field(key)) {
            return Some(e);
        }
    }
    match map.get("name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => None,
        _ => Some(path.field("name").error(Problem::Missing)),
    }
}

#[cfg(test)]
mod tests;

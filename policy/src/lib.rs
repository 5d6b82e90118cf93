//! ambit-policy: Istio's `security.istio.io` AuthorizationPolicy and
//! PeerAuthentication, read as Kubernetes serves them and decided at L4 the way
//! an ambient node proxy decides them. Pure: no I/O, no async.
//!
//! - [`k8s`] reads Kubernetes-shaped YAML/JSON into objects (shared with the agent
//!   and the CA).
//! - `parse` turns one policy object into the model, or an error naming the
//!   policy and the field.
//! - `model` holds the compiled policies and their L4 matchers.
//! - `index` ([`PolicySet`]) groups policies by namespace and selector labels.
//! - `eval` decides a [`Connection`] to a [`Target`] and says why.
//! - [`describe`] lists what applies to one workload, for `ambit-agent describe`.
#![forbid(unsafe_code)]

pub mod describe;
pub mod k8s;

mod eval;
mod index;
mod model;
mod parse;

pub use eval::{Connection, Decision, Reason, Target};
pub use index::{PolicySet, PolicySetBuilder};
pub use model::{MtlsMode, RuleFields};
pub use parse::{PolicyError, PolicyKind, Problem};

/// The API group whose policies this crate reads.
pub const API_GROUP: &str = "security.istio.io";

/// Whether an object of this apiVersion and kind is a policy this crate reads:
/// `security.istio.io/v1` or `v1beta1` AuthorizationPolicy or PeerAuthentication.
pub fn is_policy_kind(api_version: &str, kind: &str) -> bool {
    PolicyKind::from_type(api_version, kind).is_some()
}

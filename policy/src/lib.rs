//! ambit-policy: Istio's `security.istio.io` AuthorizationPolicy,
//! PeerAuthentication and RequestAuthentication, read as Kubernetes serves
//! them and decided at L4 the way an ambient node proxy decides them, and per
//! HTTP request the way a sidecar does. Pure: no I/O, no async.
//!
//! - [`k8s`] reads Kubernetes-shaped YAML/JSON into objects (shared with the agent
//!   and the CA).
//! - `parse` turns one policy object into the model, or an error naming the
//!   policy and the field.
//! - `model` holds the compiled policies and their L4 matchers.
//! - `index` ([`PolicySet`]) groups policies by namespace and selector labels.
//! - `eval` decides a [`Connection`] to a [`Target`], or one
//!   [`http::HttpRequest`] on it, and says why.
//! - [`http`] describes requests (and normalizes their paths) for `eval`.
//! - [`describe`] lists what applies to one workload, for `ambit-agent describe`.
#![forbid(unsafe_code)]

pub mod describe;
pub mod http;
pub mod k8s;

mod eval;
mod index;
mod model;
mod parse;

pub use eval::{Connection, Decision, HttpOnlyRule, JwtPolicy, Reason, Target};
pub use index::{PolicySet, PolicySetBuilder};
pub use model::{ClaimToHeader, JwtHeader, JwtRule, LabelSet, MtlsMode, RuleFields};
pub use parse::{PolicyError, PolicyKind, Problem};

/// The API group whose policies this crate reads.
pub const API_GROUP: &str = "security.istio.io";

/// Whether an object of this apiVersion and kind is a policy this crate reads:
/// `security.istio.io/v1` or `v1beta1` AuthorizationPolicy, PeerAuthentication
/// or RequestAuthentication.
pub fn is_policy_kind(api_version: &str, kind: &str) -> bool {
    PolicyKind::from_type(api_version, kind).is_some()
}

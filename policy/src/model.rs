//! The compiled policy model: what `parse` produces and `eval` reads. Everything
//! here is already validated and reduced to what an L4 proxy can check; L7-only
//! attributes were resolved at parse time (see [`authz::Rule`]).

mod authz;
mod http;
mod labels;
mod matcher;
mod peer_authn;
mod request_authn;
mod selector;

pub use authz::RuleFields;
pub(crate) use authz::{
    Action, AuthzPolicy, Condition, ConditionKey, ConditionValues, Effect, NeedsHttp, Operation,
    Rule, Source,
};
pub(crate) use http::{HostMatch, HttpCondition, HttpKey, HttpOperation, HttpSource};
pub use labels::LabelSet;
pub(crate) use matcher::{IpMatch, PortSet, StringMatch};
pub use peer_authn::MtlsMode;
pub(crate) use peer_authn::PeerAuthn;
pub(crate) use request_authn::RequestAuthn;
pub use request_authn::{ClaimToHeader, JwtHeader, JwtRule};
pub(crate) use selector::Selector;

/// What a connection offers to the matchers: the source as seen at L4 and the
/// peer identity when there is one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attributes<'a> {
    pub src_ip: std::net::IpAddr,
    pub principal: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub dst_ip: std::net::IpAddr,
    pub dst_port: u16,
}

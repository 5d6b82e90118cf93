//! ambit-policy: Istio's `security.istio.io` AuthorizationPolicy and
//! PeerAuthentication, read as Kubernetes serves them and decided at L4 the way
//! an ambient node proxy decides them. Pure: no I/O, no async.
#![forbid(unsafe_code)]

/// The indexed set of policies of one state snapshot.
// Placeholder until the engine lands: the public surface is fixed by issue 3.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {}

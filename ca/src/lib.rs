//! ambit-ca: the certificate authority that issues SPIFFE workload certificates
//! over Istio's CA gRPC API, and the client the agent uses to ask it.
//!
//! Layout:
//! - `spiffe`: the workload identity type shared with the agent.
#![forbid(unsafe_code)]

pub mod spiffe;

pub use spiffe::SpiffeId;

//! ambit-ca: the certificate authority that issues SPIFFE workload certificates
//! over Istio's CA gRPC API, and the client the agent uses to ask it.
//!
//! Layout:
//! - `spiffe`: the workload identity type shared with the agent.
//! - `keys`: the signing key and chain (self-generated root, or plugged-in `cacerts`).
//! - `signer`: CSR checks and leaf issuance.
//! - `authn`: who is calling (bearer token -> node); `authn::bootstrap` for local mode.
//! - `binding`: which identities run on which node (from the workloads state file).
//! - `serial`: certificate serial numbers, for the root and for leaves.
//! - `api`: the gRPC service; `serving`: its TLS (the serving certificate,
//!   possibly from followed files); `client`: the agent's side of it.
//! - `follow`: input files followed while the CA runs (tokens, serving cert);
//!   `file_events`: the directory watches behind it, shared with the agent.
//! - `metrics`: Prometheus metrics and their HTTP endpoint.
//! - `cli`, `app`: the binary's configuration and composition root.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod authn;
pub mod binding;
pub mod cli;
pub mod client;
pub mod file_events;
pub mod follow;
pub mod keys;
pub mod metrics;
pub mod pods;
pub mod serial;
pub mod serving;
pub mod signer;
pub mod spiffe;

pub use spiffe::SpiffeId;

/// The DNS name clients expect on the CA's serving certificate by default.
pub const DEFAULT_SERVING_NAME: &str = "ambit-ca.istio-system.svc";

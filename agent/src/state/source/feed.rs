//! The state feed as an agent reads it.
//!
//! With direct watches every agent lists and watches every Pod, Service and
//! EndpointSlice of the cluster, so the API server's work grows with the
//! number of nodes times the rate of change, and every agent resolves every
//! pod's addresses itself. `ambit-agent state-server` (`crate::state_server`,
//! a small Deployment) watches the API server once, resolves the cluster as
//! an agent would (each address to the identity a peer there must prove, and
//! its enrolment) and streams the outcome to agents over TLS, authenticated
//! with the token they already present to the CA:
//!
//! - remote addresses as `(address, identity id)` pairs, and each of the few
//!   thousand distinct identities once;
//! - Namespaces, Services, EndpointSlices and Istio's policy kinds as the
//!   slimmed objects the builder reads;
//! - a full state on connect (or, for an agent that reconnects to the same
//!   server process soon enough, only the batches it missed), then a batch
//!   of changes per burst, and a heartbeat every second carrying the
//!   server's own staleness.
//!
//! A fed agent still watches its own node's pods itself (a field selector,
//! so each pod change reaches one agent), holds no other pod, and builds
//! snapshots with the same code as with direct watches
//! (`kube::KubeSource::fed_by`).
//!
//! - `wire`: the frames and their encoding.
//! - `client`: the agent's connection to the server.

pub mod client;
pub mod wire;

pub use client::FeedConfig;

#[cfg(test)]
mod tests;

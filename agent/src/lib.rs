//! ambit-agent: the node agent. It captures the TCP traffic of the node's
//! enrolled pods, holds their workload identities, carries mesh traffic in
//! HBONE mTLS tunnels and enforces L4 authorization.
//!
//! Layout:
//! - `cli`: the command line (`run`, `authz check`, `capture`).
//! - `app`: the composition root behind `run`.
//! - `state`: cluster snapshots (workloads, services, policies) and their sources.
//! - `authz`: L4 authorization of connections against the snapshot's policies.
//! - `identity`: workload keys and certificates, the trust bundle.

pub mod app;
pub mod authz;
pub mod cli;
pub mod identity;
pub mod state;

//! ambit-agent: the node agent. It captures the TCP traffic of the node's
//! enrolled pods, holds their workload identities, carries mesh traffic in
//! HBONE mTLS tunnels and enforces L4 authorization.
//!
//! Layout:
//! - `state`: cluster snapshots (workloads, services, policies) and their sources.
//! - `identity`: workload keys and certificates, the trust bundle.
//! - `hbone`: the mTLS HTTP/2 CONNECT tunnels between agents.

pub mod hbone;
pub mod identity;
pub mod state;

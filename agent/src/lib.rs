//! ambit-agent: the node agent. It captures the TCP traffic of the node's
//! enrolled pods, holds their workload identities, carries mesh traffic in
//! HBONE mTLS tunnels and enforces L4 authorization.
//!
//! Layout:
//! - `state`: cluster snapshots (workloads, services, policies) and their sources.
//! - `identity`: workload keys and certificates, the trust bundle.
//! - `capture`: the iptables TPROXY rules steering enrolled pods' traffic here.
//! - `socket`: the socket factory (marks, transparency, original destination).
//! - `proxy`: the outbound and inbound plaintext listeners and byte copying.

pub mod capture;
pub mod identity;
pub mod proxy;
pub mod socket;
pub mod state;

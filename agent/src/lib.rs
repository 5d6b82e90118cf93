//! ambit-agent: the node agent. It captures the TCP traffic of the node's
//! enrolled pods, holds their workload identities, carries mesh traffic in
//! HBONE mTLS tunnels and enforces L4 and HTTP authorization.
//!
//! Layout:
//! - `cli`: the command line (`run`, `authz check`, `capture`, `describe`, `state-server`).
//! - `app`: the composition root behind `run`.
//! - `state`: cluster snapshots (workloads, services, policies) and their sources.
//! - `state_server`: `ambit-agent state-server`, the state feed's server: one
//!   set of Kubernetes watches, resolved and streamed to every agent.
//! - `authz`: L4 authorization of connections against the snapshot's policies.
//! - `identity`: workload keys and certificates, the trust bundle.
//! - `hbone`: the mTLS HTTP/2 CONNECT tunnels between agents.
//! - `metrics`: Istio's TCP metrics and Ambit's own; the per-connection record.
//! - `admin`: the metrics (15020), readiness (15021) and admin (15000) servers.
//! - `readiness`, `drain`: start-up gating and two-phase shutdown.
//! - `handover`: passing the listening sockets to the agent that replaces this one.
//! - `telemetry`: the tracing subscriber and its runtime-reloadable filter.
//! - `capture`: the iptables TPROXY rules steering enrolled pods' traffic here.
//! - `limits`: the descriptor budget and the bounds on unauthenticated connections.
//! - `socket`: the socket factory (marks, transparency, original destination).
//! - `proxy`: the outbound and inbound plaintext listeners and byte copying.
//! - `l7`: HTTP authorization and JWT on connections to HTTP ports, beside the L4 proxy.
//! - `mesh`: the mesh data path assembled (HBONE both ways, admission, re-authorization).
//! - `describe`: `ambit-agent describe pod|service`: what applies to a workload and why it was refused.

pub mod admin;
pub mod app;
pub mod authz;
pub mod capture;
pub mod cli;
pub mod describe;
pub mod drain;
pub mod handover;
pub mod hbone;
pub mod identity;
pub mod l7;
pub mod limits;
pub mod mesh;
pub mod metrics;
pub mod proxy;
pub mod readiness;
pub mod socket;
pub mod state;
pub mod state_server;
pub mod telemetry;

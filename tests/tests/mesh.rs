//! The mesh end to end, on a namespace cluster with the real CA and one real
//! agent per node: Istio's guestbook scenario (guestbook, analyzer and sleep
//! enrolled on three nodes, legacy outside the mesh).
//!
//! - `traffic`: bytes arrive intact across nodes, only TLS crosses the
//!   fabric, the presented chain verifies and names the pod, and both agents
//!   count exactly the connections and bytes the test made.
//! - `policy`: AuthorizationPolicy and PeerAuthentication applied to the
//!   state file while the mesh runs, each decision checked against
//!   `ambit-agent authz check` and the agent's own decision counter.
//! - `forged`: clients that lie are refused and the agent keeps serving.
//! - `describe`: `ambit-agent describe` from the state file and from a
//!   running agent that has just refused a connection.
//! - `plugin_ca`: Istio's plug-in CA check, `openssl s_client -showcerts`
//!   shows leaf, intermediate and the plugged root.
//!
//! Each test builds its own mesh, so they run in parallel. They need root,
//! iproute2, iptables, tcpdump and openssl, and the `ambit-agent` and
//! `ambit-ca` binaries built beside this test (`cargo build -p ambit-agent
//! -p ambit-ca`, which `cargo test --workspace` does).

#[path = "mesh/describe.rs"]
mod describe;
#[path = "mesh/forged.rs"]
mod forged;
#[path = "mesh/plugin_ca.rs"]
mod plugin_ca;
#[path = "mesh/policy.rs"]
mod policy;
#[path = "mesh/scenario.rs"]
mod scenario;
#[path = "mesh/traffic.rs"]
mod traffic;

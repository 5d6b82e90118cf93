//! L4 authorization of connections to local workloads: adapting what the data
//! path knows about a connection (addresses, the peer's verified identity) to
//! the policy engine, and the `authz check` dry run built on the same code.
//!
//! - `enforce`: `Snapshot::authorize` and `Snapshot::authorize_from_state`.
//! - `check`: the `ambit-agent authz check` command.
//! - `watch`: open connections re-decided, and closed, when the state changes.

pub mod check;
mod check_http;
mod enforce;
pub mod watch;

pub use enforce::{AuthzError, Inbound};

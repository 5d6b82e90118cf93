//! ambit-tests: the harness that builds a multi-node cluster out of network
//! namespaces, used by the end-to-end tests (`tests/*.rs`), the demo and the
//! benchmarks.
//!
//! Layout:
//! - [`netns`]: one namespace: create/delete, run commands and long-lived
//!   processes inside it, open sockets inside it from test code.
//! - [`cluster`]: a fabric, nodes and pods wired from namespaces, with its
//!   addressing plan; names per run, teardown on drop, stale-run cleanup.
//! - [`preflight`]: the privilege check and the explicit `AMBIT_E2E_SKIP=1` opt-out.
//! - [`traffic`]: echo, sink and peer-reporting servers and their clients,
//!   with a chunking-independent checksum. The `ambit-testpod` binary serves
//!   the same protocols from a separate process.
//! - [`mesh`]: a running mesh on a cluster: the CA, one agent per node, the
//!   state file they read, policy changes, metrics and admin scrapes.
//! - [`fake_kube`]: a fake Kubernetes API server on loopback (list, watch,
//!   TokenReview) for the agent's watchers and the CA's authentication.
//! - [`pki`]: a throwaway root and a serving certificate (the state server).
//! - [`bin_path`]: where the workspace's binaries are, for spawning them in
//!   namespaces.

pub mod cluster;
pub mod fake_kube;
pub mod mesh;
pub mod netns;
pub mod pki;
pub mod preflight;
pub mod traffic;

use std::path::PathBuf;

pub use cluster::{Cluster, ClusterBuilder, ClusterError, Node, Pod};
pub use mesh::{Mesh, MeshBuilder, MeshError, MeshPod, PodSpec};
pub use netns::{Netns, NetnsError, Process};
pub use preflight::require_e2e;
pub use traffic::{Exchange, Server, ServerKind, TrafficError, Transfer};

/// Overrides where [`bin_path`] looks for binaries.
pub const BIN_DIR_ENV: &str = "AMBIT_BIN_DIR";

#[derive(Debug, thiserror::Error)]
pub enum BinError {
    #[error("cannot locate the running executable: {0}")]
    CurrentExe(std::io::Error),
    #[error(
        "no binary {name} in {dir} (build it first, e.g. `cargo build -p <crate>`, or set {BIN_DIR_ENV})"
    )]
    Missing { name: String, dir: PathBuf },
}

/// Path of the workspace binary `name` (e.g. `ambit-agent`): in
/// `$AMBIT_BIN_DIR` if set, else in the `target/<profile>` directory the
/// running executable was built into (test binaries live one level below,
/// in `deps/`).
pub fn bin_path(name: &str) -> Result<PathBuf, BinError> {
    let dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().map_err(BinError::CurrentExe)?;
            let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
            if dir.file_name().is_some_and(|n| n == "deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(BinError::Missing {
            name: name.to_owned(),
            dir,
        })
    }
}

//! Where snapshots come from. Each source builds complete snapshots with a
//! `SnapshotBuilder` and publishes them through the `StateStore`.
//!
//! - `file`: a YAML/JSON file or folder, watched for edits (the embedded default).
//! - `kube`: watches of the Kubernetes API, direct or fed (`feed`).
//! - `feed`: the state feed as an agent reads it: frames and connection.
//! - `failover`: a fed source that falls back to direct watches.

pub mod failover;
pub mod feed;
pub mod file;
pub mod kube;

pub use file::{FileSource, FileWatch};

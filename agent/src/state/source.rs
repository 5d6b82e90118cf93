//! Where snapshots come from. Each source builds complete snapshots with a
//! `SnapshotBuilder` and publishes them through the `StateStore`.
//!
//! - `file`: a YAML/JSON file or folder, watched for edits (the embedded default).

pub mod file;
pub mod kube;

pub use file::{FileSource, FileWatch};

//! Node binding: which (namespace, service account) pairs run on which node. The
//! CA signs an identity for a caller only if a workload with that identity is
//! scheduled on the caller's node.
//!
//! `StateFileBinding` reads the Kubernetes-shaped YAML file or folder the agents
//! read (Pods' `metadata.namespace`, `spec.serviceAccountName`, `spec.nodeName`)
//! and reloads it when it changes; a bad edit keeps the last good index. A
//! Kubernetes implementation backed by a pod reflector implements the same trait.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde_json::Value;

use crate::SpiffeId;
use crate::authn::NodeName;

/// Decides whether a node may hold an identity.
pub trait IdentityBinding: Send + Sync + 'static {
    fn may_hold(&self, node: &NodeName, identity: &SpiffeId) -> bool;
}

#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// (namespace, service account) pairs per node.
type Index = HashMap<NodeName, HashSet<(String, String)>>;

/// Node binding read from the workloads state file or folder.
#[derive(Debug)]
pub struct StateFileBinding {
    path: PathBuf,
    index: ArcSwap<Index>,
    /// Only ever locked briefly, never across I/O.
    fingerprint: Mutex<Fingerprint>,
}

impl StateFileBinding {
    /// Reads the state once; fails if it cannot be read or parsed.
    pub fn load(path: &Path) -> Result<Self, BindingError> {
        let fingerprint = fingerprint(path);
        let index = read_index(path)?;
        tracing::info!(path = %path.display(), nodes = index.len(), "loaded node binding");
        Ok(Self {
            path: path.to_path_buf(),
            index: ArcSwap::from_pointee(index),
            fingerprint: Mutex::new(fingerprint),
        })
    }

    /// Re-reads the state if its files changed since the last read. A read that
    /// fails keeps the previous index.
    pub fn reload_if_changed(&self) {
        let now = fingerprint(&self.path);
        {
            let mut last = self.fingerprint.lock().unwrap_or_else(|p| p.into_inner());
            if *last == now {
                return;
            }
            *last = now;
        }
        match read_index(&self.path) {
            Ok(index) => {
                tracing::info!(path = %self.path.display(), nodes = index.len(), "reloaded node binding");
                self.index.store(Arc::new(index));
            }
            Err(error) => {
                tracing::warn!(%error, "keeping the last good node binding");
            }
        }
    }

    /// Polls for changes every `interval` until the returned task is aborted.
    pub fn spawn_reloader(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                this.reload_if_changed();
            }
        })
    }
}

impl IdentityBinding for StateFileBinding {
    fn may_hold(&self, node: &NodeName, identity: &SpiffeId) -> bool {
        self.index.load().get(node).is_some_and(|pairs| {
            pairs.contains(&(
                identity.namespace().to_string(),
                identity.service_account().to_string(),
            ))
        })
    }
}

/// Modification times and sizes of the state's files, to notice edits cheaply.
type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn state_files(path: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml" || ext == "json")
        })
        .collect();
    files.sort();
    Ok(files)
}

fn fingerprint(path: &Path) -> Fingerprint {
    state_files(path)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map_or(0, |m| m.len());
            (p, modified, len)
        })
        .collect()
}

fn read_index(path: &Path) -> Result<Index, BindingError> {
    let invalid = |path: &Path, reason: String| BindingError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let mut index = Index::new();
    for file in state_files(path).map_err(|e| invalid(path, e.to_string()))? {
        let text = std::fs::read_to_string(&file).map_err(|e| invalid(&file, e.to_string()))?;
        let docs =
            ambit_policy::k8s::documents(&text).map_err(|e| invalid(&file, e.to_string()))?;
        for doc in docs {
            index_pod(&doc.value, &mut index);
        }
    }
    Ok(index)
}

fn index_pod(object: &Value, index: &mut Index) {
    let str_at = |path: &[&str]| -> Option<String> {
        path.iter()
            .try_fold(object, |v, key| v.get(*key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    if str_at(&["kind"]).as_deref() != Some("Pod") {
        return;
    }
    let Some(node) = str_at(&["spec", "nodeName"]) else {
        return; // not scheduled yet
    };
    if matches!(
        str_at(&["status", "phase"]).as_deref(),
        Some("Succeeded") | Some("Failed")
    ) {
        return;
    }
    let namespace = str_at(&["metadata", "namespace"]).unwrap_or_else(|| "default".into());
    let service_account = str_at(&["spec", "serviceAccountName"])
        .or_else(|| str_at(&["spec", "serviceAccount"]))
        .unwrap_or_else(|| "default".into());
    index
        .entry(NodeName::new(node))
        .or_default()
        .insert((namespace, service_account));
}

#[cfg(test)]
mod tests;

//! Building a snapshot from the caches: only what changed since the last
//! build is redone (see the parent module), and after policy changes alone
//! the last snapshot's other parts are reused as they are.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use ambit_policy::{PolicySet, is_policy_kind};
use serde_json::Value;

use super::super::addresses::{PodRef, Pods};
use super::super::local_pods::PodView;
use super::{Caches, KindCache};
use crate::state::build::index_policies;
use crate::state::k8s;
use crate::state::{LoadError, LoadOptions, Origin, PolicyIssue, Snapshot, SnapshotBuilder};

impl Caches {
    /// Builds the snapshot the file source would build from the same
    /// objects, redoing only what changed since the last build.
    pub fn build(&mut self, options: &LoadOptions) -> Result<Snapshot, LoadError> {
        let changed = std::mem::take(&mut self.changed);
        let (policies, errors) = match self.policies.take() {
            Some(indexed) if !changed.policies => indexed,
            _ => self.index_policies(options),
        };
        self.policies = Some((policies.clone(), errors.clone()));
        if !changed.structure
            && let Some(last) = &self.last
        {
            let snapshot = last.with_policies(policies, errors);
            self.last = Some(snapshot.clone());
            return Ok(snapshot);
        }
        let built = self.build_all(options, policies, errors);
        self.last = built.as_ref().ok().cloned();
        built
    }

    fn index_policies(&self, options: &LoadOptions) -> (Arc<PolicySet>, Vec<PolicyIssue>) {
        let mut builder = PolicySet::builder(&options.root_namespace);
        let mut errors = Vec::new();
        let kinds = [
            &self.authorization_policies,
            &self.peer_authentications,
            &self.request_authentications,
        ];
        for object in kinds.into_iter().flat_map(KindCache::values) {
            let kind = object["kind"].as_str().unwrap_or("");
            let api_version = object["apiVersion"].as_str().unwrap_or("");
            if !is_policy_kind(api_version, kind) {
                continue;
            }
            if let Err(error) = builder.add(&object) {
                errors.push(PolicyIssue {
                    origin: kubernetes(),
                    error,
                });
            }
        }
        index_policies(builder, errors)
    }

    fn build_all(
        &mut self,
        options: &LoadOptions,
        policies: Arc<PolicySet>,
        policy_errors: Vec<PolicyIssue>,
    ) -> Result<Snapshot, LoadError> {
        let origin = kubernetes();
        let mut builder = SnapshotBuilder::new(options);
        let mut namespaces = HashMap::new();
        for object in self.namespaces.values() {
            if let Ok(ns) = k8s::namespace(&object) {
                namespaces.insert(ns.name, ns.labels);
            }
            builder.add_object(origin.clone(), &object)?;
        }
        let view = PodView {
            local: &self.pods,
            remote: &self.remote_pods,
            namespaces: &namespaces,
        };
        self.addresses.resolve(&view);
        for (key, pod) in self.pods.iter() {
            let pod_ref: PodRef = (Arc::from(key.0.as_str()), Arc::from(key.1.as_str()));
            if view.namespace_labels(&key.0).is_none()
                || !self.addresses.keeps_all(&pod_ref, &pod.view(), &view)
            {
                continue;
            }
            if let Ok(object) = serde_json::from_str::<Value>(&pod.text) {
                builder.add_object(origin.clone(), &object)?;
            }
        }
        match &self.fed {
            Some(fed) => {
                let (remote, count) = fed.published();
                builder.set_cluster_addresses(remote, count);
            }
            None => {
                let (remote, count) = self.addresses.published();
                builder.set_remote_addresses(remote, count);
            }
        }
        self.services.add_to(&mut builder, &origin)?;
        builder.set_indexed_policies(policies, policy_errors);
        builder.build()
    }
}

/// Where objects from the API server are said to come from.
fn kubernetes() -> Origin {
    Origin {
        file: Arc::from(Path::new("kubernetes")),
        line: 0,
    }
}

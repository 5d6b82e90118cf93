//! Which workloads run on which node, from a watch of every Pod in the
//! cluster: the Kubernetes node binding. The CA signs an identity for a node
//! only while a pod with that namespace and service account is scheduled
//! there and not finished.
//!
//! Only a pod's name, uid, service account, node and phase are kept, so the
//! index stays small in big clusters. Until the first complete list has
//! arrived the index binds nothing: the CA fails closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::task::JoinHandle;

use crate::SpiffeId;
use crate::authn::NodeName;
use crate::binding::IdentityBinding;

/// What the CA needs to know about one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub service_account: String,
    /// None until scheduled.
    pub node: Option<NodeName>,
}

impl PodInfo {
    /// The fields the CA uses; None for a pod that has finished (it needs no
    /// certificate) or that has no name.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let spec = pod.spec.as_ref();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return None;
        }
        Some(Self {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone()?,
            uid: pod.metadata.uid.clone(),
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".to_owned()),
            node: spec.and_then(|s| s.node_name.clone()).map(NodeName::new),
        })
    }
}

type PodKey = (String, String);

#[derive(Debug, Default)]
struct Index {
    pods: HashMap<PodKey, PodInfo>,
    /// node -> (namespace, service account) -> how many pods.
    by_node: HashMap<NodeName, HashMap<(String, String), usize>>,
    relisting: Option<HashMap<PodKey, PodInfo>>,
}

impl Index {
    fn insert(&mut self, info: PodInfo) {
        let key = (info.namespace.clone(), info.name.clone());
        self.remove(&key);
        if let Some(node) = &info.node {
            let pair = (info.namespace.clone(), info.service_account.clone());
            *self
                .by_node
                .entry(node.clone())
                .or_default()
                .entry(pair)
                .or_default() += 1;
        }
        self.pods.insert(key, info);
    }

    fn remove(&mut self, key: &PodKey) {
        let Some(old) = self.pods.remove(key) else {
            return;
        };
        let Some(node) = &old.node else { return };
        let Some(pairs) = self.by_node.get_mut(node) else {
            return;
        };
        let pair = (old.namespace, old.service_account);
        if let Some(count) = pairs.get_mut(&pair) {
            *count -= 1;
            if *count == 0 {
                pairs.remove(&pair);
            }
        }
        if pairs.is_empty() {
            self.by_node.remove(node);
        }
    }

    fn replace_all(&mut self, pods: HashMap<PodKey, PodInfo>) {
        self.pods.clear();
        self.by_node.clear();
        for info in pods.into_values() {
            self.insert(info);
        }
    }
}

/// The pod index, kept current by a watch.
#[derive(Debug, Default)]
pub struct PodIndex {
    index: RwLock<Index>,
    synced: AtomicBool,
}

impl PodIndex {
    /// Starts watching every Pod; the index fills in the background.
    pub fn start(client: Client) -> (Arc<Self>, JoinHandle<()>) {
        let index = Arc::new(Self::default());
        let task = tokio::spawn(index.clone().follow(Api::all(client)));
        (index, task)
    }

    async fn follow(self: Arc<Self>, pods: Api<Pod>) {
        let config = watcher::Config::default().any_semantic();
        let mut events = watcher::watcher(pods, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => self.apply(event),
                Err(error) => {
                    let forbidden = matches!(&error,
                        watcher::Error::InitialListFailed(kube::Error::Api(s))
                        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
                        | watcher::Error::WatchFailed(kube::Error::Api(s)) if s.code == 403);
                    if forbidden {
                        tracing::error!(
                            "forbidden to list/watch pods: grant the CA's service account get, list and watch on pods (manifests/ca-clusterrole.yaml)"
                        );
                    } else {
                        tracing::warn!(%error, "pod watch failed; retrying");
                    }
                }
            }
        }
    }

    /// Applies one watch event; public so tests can drive the index directly.
    pub fn apply(&self, event: Event<Pod>) {
        let mut index = self.write();
        match event {
            Event::Init => index.relisting = Some(HashMap::new()),
            Event::InitApply(pod) => {
                if let Some(info) = PodInfo::from_pod(&pod) {
                    let key = (info.namespace.clone(), info.name.clone());
                    match &mut index.relisting {
                        Some(list) => {
                            list.insert(key, info);
                        }
                        None => index.insert(info),
                    }
                }
            }
            Event::InitDone => {
                if let Some(list) = index.relisting.take() {
                    index.replace_all(list);
                }
                tracing::info!(
                    pods = index.pods.len(),
                    nodes = index.by_node.len(),
                    "pod index synced"
                );
                self.synced.store(true, Ordering::Release);
            }
            Event::Apply(pod) => {
                let key = (
                    pod.metadata.namespace.clone().unwrap_or_default(),
                    pod.metadata.name.clone().unwrap_or_default(),
                );
                match PodInfo::from_pod(&pod) {
                    Some(info) => index.insert(info),
                    None => index.remove(&key),
                }
            }
            Event::Delete(pod) => {
                let key = (
                    pod.metadata.namespace.clone().unwrap_or_default(),
                    pod.metadata.name.clone().unwrap_or_default(),
                );
                index.remove(&key);
            }
        }
    }

    // A panic while holding the lock leaves a consistent map (every update is
    // one insert or remove), so a poisoned lock is still usable.
    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The pod `namespace/name`, if the index holds it.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodInfo> {
        let key = (namespace.to_owned(), name.to_owned());
        self.read().pods.get(&key).cloned()
    }

    /// Whether a pod of `namespace` running as `service_account` is scheduled
    /// on `node`. False until the index has synced.
    pub fn runs_on(&self, node: &NodeName, namespace: &str, service_account: &str) -> bool {
        if !self.is_synced() {
            return false;
        }
        let index = self.read();
        let pair = (namespace.to_owned(), service_account.to_owned());
        index
            .by_node
            .get(node)
            .is_some_and(|pairs| pairs.contains_key(&pair))
    }

    pub fn len(&self) -> usize {
        self.read().pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl IdentityBinding for PodIndex {
    fn may_hold(&self, node: &NodeName, identity: &SpiffeId) -> bool {
        self.runs_on(node, identity.namespace(), identity.service_account())
    }
}

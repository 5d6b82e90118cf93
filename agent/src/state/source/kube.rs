//! The Kubernetes source: watches of Namespaces, Pods, Services,
//! EndpointSlices and Istio's AuthorizationPolicies and PeerAuthentications,
//! turned into snapshots by the same `SnapshotBuilder` the file source uses,
//! so the data path cannot tell the two apart.
//!
//! Each kind has a kube-rs watcher. Objects are cut down to the fields the
//! agent reads (`slim`) and cached by kind (`cache`); given its node
//! (`with_node`), the source keeps pods of other nodes only in compact form
//! (`state::remote`), which is what bounds the agent's memory on a large
//! cluster. Every change wakes a
//! builder task that, after a short settle time so a burst of events costs
//! one rebuild, publishes a new snapshot. Nothing is published until every
//! kind has been listed once, so until then the state is unsynced and the
//! agent is not ready: it fails closed. A dropped watch resumes from its last
//! resourceVersion (bookmarks keep it fresh), so only an expired version
//! (410) costs a relist; while the API server is unreachable the last state
//! stays in force. A kind the agent may not read (RBAC), or an API the server
//! does not serve (an EndpointSlice v1 before Kubernetes 1.21), is reported
//! as such, naming group, version and kind, in the log and in the store's
//! status, and retried with backoff; the backoff starts over after every
//! successful list or watch event, so a recovered server is followed at once.

mod addresses;
mod backoff;
mod cache;
mod kind_cache;
mod local_pods;
mod remote_pods;
mod services;
mod slim;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::state::{LoadOptions, StateStore};
use backoff::Backoff;
use cache::{Caches, Kind, ObjectKey};
use slim::Mask;

/// How often a kind whose CRD is not installed is looked for again.
const ABSENT_RECHECK: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("no Kubernetes configuration (in-cluster or kubeconfig): {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// The API server to watch, and how to read what it says.
#[derive(Clone)]
pub struct KubeSource {
    client: Client,
    options: LoadOptions,
    settle: Duration,
    node: Option<String>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("options", &self.options)
            .field("settle", &self.settle)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// The running watches; dropping it stops them. The last snapshot stays in
/// the store.
#[derive(Debug)]
pub struct KubeWatch {
    tasks: Vec<JoinHandle<()>>,
    synced: watch::Receiver<bool>,
    shared: Arc<Shared>,
}

impl Drop for KubeWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl KubeWatch {
    /// Resolves once the first complete snapshot has been published.
    pub async fn synced(&self) {
        let mut rx = self.synced.clone();
        let _ = rx.wait_for(|synced| *synced).await;
    }

    /// Bytes the watch caches hold (the slimmed objects), for the admin
    /// page and for sizing.
    pub fn cache_bytes(&self) -> usize {
        self.shared.caches.lock().heap_bytes()
    }
}

/// One watched kind: where it is served, and which of its fields are kept.
struct Watched {
    kind: &'static str,
    group: &'static str,
    /// Preferred first; Istio's kinds are accepted at v1 or v1beta1.
    versions: &'static [&'static str],
    mask: &'static Mask,
    cached_as: Kind,
}

const WATCHED: [Watched; 7] = [
    Watched {
        kind: "Namespace",
        group: "",
        versions: &["v1"],
        mask: &slim::NAMESPACE,
        cached_as: Kind::Namespace,
    },
    Watched {
        kind: "Pod",
        group: "",
        versions: &["v1"],
        mask: &slim::POD,
        cached_as: Kind::Pod,
    },
    Watched {
        kind: "Service",
        group: "",
        versions: &["v1"],
        mask: &slim::SERVICE,
        cached_as: Kind::Service,
    },
    Watched {
        kind: "EndpointSlice",
        group: "discovery.k8s.io",
        versions: &["v1"],
        mask: &slim::ENDPOINT_SLICE,
        cached_as: Kind::EndpointSlice,
    },
    Watched {
        kind: "AuthorizationPolicy",
        group: "security.istio.io",
        versions: &["v1", "v1beta1"],
        mask: &slim::POLICY,
        cached_as: Kind::AuthorizationPolicy,
    },
    Watched {
        kind: "PeerAuthentication",
        group: "security.istio.io",
        versions: &["v1", "v1beta1"],
        mask: &slim::POLICY,
        cached_as: Kind::PeerAuthentication,
    },
    Watched {
        kind: "RequestAuthentication",
        group: "security.istio.io",
        versions: &["v1", "v1beta1"],
        mask: &slim::POLICY,
        cached_as: Kind::RequestAuthentication,
    },
];

/// What the watch tasks share with the builder task.
#[derive(Debug)]
struct Shared {
    caches: Mutex<Caches>,
    changed: Notify,
    store: StateStore,
    /// Per watched kind (by `Kind`): since when its watch has been failing.
    behind: Mutex<[Option<SystemTime>; WATCHED.len()]>,
}

impl Shared {
    /// Records whether the watch of `kind` follows the API server, and
    /// tells the store since when the state may be missing changes: the
    /// earliest of the failing watches.
    fn set_behind(&self, kind: Kind, since: Option<SystemTime>) {
        let mut behind = self.behind.lock();
        behind[kind as usize] = since;
        self.store
            .set_behind_since(behind.iter().flatten().min().copied());
    }
}

impl KubeSource {
    pub fn new(client: Client, options: LoadOptions) -> Self {
        Self {
            client,
            options,
            settle: Duration::from_millis(100),
            node: None,
        }
    }

    /// The node this agent serves: pods of other nodes are then kept only
    /// as an address, an identity and an enrolment. Without it every pod is
    /// kept in full (tools that look at the whole cluster).
    pub fn with_node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// A client from the in-cluster service account, or else from the
    /// kubeconfig (`$KUBECONFIG`, `~/.kube/config`).
    pub async fn infer(options: LoadOptions) -> Result<Self, KubeSourceError> {
        let config = kube::Config::infer().await?;
        tracing::info!(api_server = %config.cluster_url, "watching the Kubernetes API");
        Ok(Self::new(Client::try_from(config)?, options))
    }

    /// Quiet time after a change before rebuilding (default 100 ms).
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// Starts the watches and the builder; snapshots go to `store`.
    pub fn start(self, store: StateStore) -> KubeWatch {
        let shared = Arc::new(Shared {
            caches: Mutex::new(Caches::for_node(self.node)),
            changed: Notify::new(),
            store,
            behind: Mutex::new([None; WATCHED.len()]),
        });
        let (synced_tx, synced) = watch::channel(false);
        let mut tasks: Vec<JoinHandle<()>> = WATCHED
            .iter()
            .map(|w| tokio::spawn(watch_kind(self.client.clone(), w, shared.clone())))
            .collect();
        tasks.push(tokio::spawn(publish(
            shared.clone(),
            self.options,
            self.settle,
            synced_tx,
        )));
        KubeWatch {
            tasks,
            synced,
            shared,
        }
    }
}

/// Rebuilds and publishes after every change, once all kinds are synced.
async fn publish(
    shared: Arc<Shared>,
    options: LoadOptions,
    settle: Duration,
    synced: watch::Sender<bool>,
) {
    loop {
        shared.changed.notified().await;
        tokio::time::sleep(settle).await;
        let built = {
            let mut caches = shared.caches.lock();
            if !caches.all_synced() {
                continue;
            }
            caches.build(&options)
        };
        match built {
            Ok(snapshot) => {
                let generation = shared.store.replace(snapshot);
                tracing::debug!(generation, "published state from Kubernetes");
                synced.send_replace(true);
            }
            Err(error) => {
                tracing::warn!(%error, "keeping the last state");
                shared.store.report_failure(error.to_string());
            }
        }
    }
}

/// Watches one kind forever: picks the version the cluster serves, then
/// follows the watcher's events into the cache.
async fn watch_kind(client: Client, watched: &'static Watched, shared: Arc<Shared>) {
    loop {
        let Some(resource) = served_resource(&client, watched, &shared).await else {
            tracing::warn!(
                kind = watched.kind,
                group = watched.group,
                "kind not served by this cluster (CRD not installed?); treating it as empty"
            );
            shared.caches.lock().mark_absent(watched.cached_as);
            // Absent is a state the cluster is in, not a failure to follow it.
            shared.set_behind(watched.cached_as, None);
            shared.changed.notify_one();
            tokio::time::sleep(ABSENT_RECHECK).await;
            continue;
        };
        tracing::debug!(kind = watched.kind, api_version = %resource.api_version, "watching");
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let config = watcher::Config::default().any_semantic();
        // No kube-runtime backoff: ours resets on every event (see `backoff`).
        let mut events = watcher::watcher(api, config).boxed();
        let mut backoff = Backoff::default();
        // Since when this watch has been failing: the state may lack its
        // changes from then on. An expired version is relisted at once, which
        // is routine.
        let mut behind = None;
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    backoff.reset();
                    // `Init` is yielded as a list starts, before the server
                    // answers: only what the server sent proves it reachable.
                    if !matches!(event, Event::Init) && behind.take().is_some() {
                        shared.set_behind(watched.cached_as, None);
                    }
                    apply_event(watched, &resource, &shared, event);
                }
                Err(error) => {
                    report(watched, &resource, &shared, &error);
                    if !is_expired(&error) {
                        if behind.is_none() {
                            behind = Some(SystemTime::now());
                            shared.set_behind(watched.cached_as, behind);
                        }
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        }
    }
}

/// A watch resumed from a resourceVersion the server no longer holds: the
/// watcher lists again on its next poll, which is routine, not a failure.
fn is_expired(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

/// The first version of `watched` the API server serves, or None if it
/// serves none (a CRD not installed). Errors other than "not found" (an
/// unreachable server, RBAC) keep the preferred version: its watcher will
/// report and retry them.
async fn served_resource(
    client: &Client,
    watched: &'static Watched,
    shared: &Shared,
) -> Option<ApiResource> {
    let resources = watched.versions.iter().map(|version| {
        ApiResource::from_gvk(&GroupVersionKind::gvk(watched.group, version, watched.kind))
    });
    if watched.versions.len() == 1 {
        return resources.into_iter().next();
    }
    for resource in resources.clone() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => return Some(resource),
            Err(kube::Error::Api(status)) if status.code == 404 => continue,
            Err(error) => {
                report_client_error(watched, &resource, shared, &error);
                return resources.into_iter().next();
            }
        }
    }
    None
}

fn apply_event(
    watched: &'static Watched,
    resource: &ApiResource,
    shared: &Shared,
    event: Event<DynamicObject>,
) {
    let kind = watched.cached_as;
    let mut caches = shared.caches.lock();
    match event {
        Event::Init => caches.begin_list(kind),
        Event::InitApply(object) => {
            let (key, value) = slim_object(watched, resource, object);
            caches.put(kind, key, &value, true);
        }
        Event::InitDone => {
            caches.end_list(kind);
            tracing::info!(
                kind = watched.kind,
                objects = caches.len(kind),
                remote = (kind == Kind::Pod).then(|| caches.remote_pod_count()),
                "listed"
            );
        }
        Event::Apply(object) => {
            let (key, value) = slim_object(watched, resource, object);
            caches.put(kind, key, &value, false);
        }
        Event::Delete(object) => {
            caches.delete(
                kind,
                &(object.namespace().unwrap_or_default(), object.name_any()),
            );
        }
    }
    drop(caches);
    // While a list is streaming in, nothing changes until it ends.
    shared.changed.notify_one();
}

/// The object as the builder reads it, keeping only `watched.mask`'s fields.
fn slim_object(
    watched: &'static Watched,
    resource: &ApiResource,
    object: DynamicObject,
) -> (ObjectKey, Value) {
    let meta = &object.metadata;
    let key = (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    );
    let mut value = slim::slim(&object.data, watched.mask);
    if !value.is_object() {
        value = json!({});
    }
    value["apiVersion"] = Value::String(resource.api_version.clone());
    value["kind"] = Value::String(watched.kind.to_owned());
    let mut metadata = json!({ "name": key.1 });
    if !key.0.is_empty() {
        metadata["namespace"] = Value::String(key.0.clone());
    }
    if let Some(uid) = &meta.uid {
        metadata["uid"] = Value::String(uid.clone());
    }
    if let Some(generate_name) = &meta.generate_name {
        metadata["generateName"] = Value::String(generate_name.clone());
    }
    if let Some(labels) = meta.labels.as_ref().filter(|l| !l.is_empty()) {
        metadata["labels"] = json!(labels);
    }
    if let Some(t) = &meta.creation_timestamp {
        metadata["creationTimestamp"] = json!(t);
    }
    if let Some(t) = &meta.deletion_timestamp {
        metadata["deletionTimestamp"] = json!(t);
    }
    value["metadata"] = metadata;
    (key, value)
}

fn report(
    watched: &'static Watched,
    resource: &ApiResource,
    shared: &Shared,
    error: &watcher::Error,
) {
    let status = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => {
            return report_client_error(watched, resource, shared, e);
        }
        watcher::Error::WatchError(status) => status.code,
        _ => 0,
    };
    if status == 403 {
        forbidden(watched, shared);
    } else if status == 404 {
        not_served(watched, resource, shared);
    } else if status == 410 {
        tracing::debug!(kind = watched.kind, "watch expired; listing again");
    } else {
        tracing::warn!(kind = watched.kind, %error, "watch failed; retrying");
    }
}

fn report_client_error(
    watched: &'static Watched,
    resource: &ApiResource,
    shared: &Shared,
    error: &kube::Error,
) {
    match error {
        kube::Error::Api(status) if status.code == 403 => forbidden(watched, shared),
        kube::Error::Api(status) if status.code == 404 => not_served(watched, resource, shared),
        error => {
            tracing::warn!(kind = watched.kind, %error, "Kubernetes API unavailable; keeping the last state")
        }
    }
}

/// The API server answered 404 for a kind the agent cannot do without: the
/// server is reachable but too old (or the API is disabled), so "unavailable"
/// would send the operator the wrong way. Name the group, version and kind.
fn not_served(watched: &'static Watched, resource: &ApiResource, shared: &Shared) {
    let group = if watched.group.is_empty() {
        "core"
    } else {
        watched.group
    };
    let hint = if watched.kind == "EndpointSlice" {
        " (served from Kubernetes 1.21 on; Ambit supports 1.21 and newer)"
    } else {
        ""
    };
    let message = format!(
        "the API server does not serve {} {}{hint}: the agent cannot sync without it",
        resource.api_version, watched.kind
    );
    tracing::error!(
        group,
        version = %resource.version,
        kind = watched.kind,
        "{message}"
    );
    shared.store.report_failure(message);
}

/// RBAC refused a read: the fix is in the cluster, so say exactly what.
fn forbidden(watched: &'static Watched, shared: &Shared) {
    let plural =
        ApiResource::from_gvk(&GroupVersionKind::gvk(watched.group, "v1", watched.kind)).plural;
    let resource = if watched.group.is_empty() {
        plural
    } else {
        format!("{plural}.{}", watched.group)
    };
    let message = format!(
        "forbidden to list/watch {resource}: grant the agent's service account get, list and watch on it (manifests/agent-clusterrole.yaml)"
    );
    tracing::error!(kind = watched.kind, %resource, "{message}");
    shared.store.report_failure(message);
}

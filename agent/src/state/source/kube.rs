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
//!
//! Fed (`fed_by`), the source watches only this node's pods and takes every
//! other kind, and the remote addresses resolved, from the state feed
//! (`fed`, `cache/feed.rs`). The state server runs this same source with
//! every pod compact (`compact`) and a tap relaying the other kinds' objects
//! as cached (`with_tap`).

mod addresses;
mod backoff;
mod cache;
mod fed;
mod kind_cache;
mod local_pods;
mod remote_pods;
mod services;
mod slim;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use super::feed::FeedConfig;
use crate::state::{LoadOptions, StateStore};
use backoff::Backoff;
use cache::{Caches, Kind, ObjectKey, PodScope};
pub use fed::FeedLink;
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

/// An object of a relayed kind (every watched kind but Pod) as the source
/// caches it, for the state server (`with_tap`). Events come in the order
/// the watches deliver them; a list is framed by `Begin` and `End`.
#[derive(Clone, Debug)]
pub enum TapEvent {
    Begin(&'static str),
    Put {
        kind: &'static str,
        /// Namespace (empty for cluster-scoped kinds) and name.
        key: (String, String),
        object: Arc<Value>,
    },
    Delete {
        kind: &'static str,
        key: (String, String),
    },
    End(&'static str),
}

/// Where `TapEvent`s go.
pub type Tap = mpsc::UnboundedSender<TapEvent>;

/// The API server to watch, and how to read what it says.
#[derive(Clone)]
pub struct KubeSource {
    client: Client,
    options: LoadOptions,
    settle: Duration,
    scope: PodScope,
    tap: Option<Tap>,
    feed: Option<FeedConfig>,
    /// Another source's state is in force until this one publishes.
    taking_over: bool,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("options", &self.options)
            .field("settle", &self.settle)
            .field("scope", &self.scope)
            .field("feed", &self.feed)
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
    link: watch::Receiver<FeedLink>,
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

    /// Whether this source publishes to its store (default: yes). A muted
    /// source keeps following its input, so it can take over at once: the
    /// failover runs a fed and a direct source and lets one publish.
    pub fn set_active(&self, active: bool) {
        self.shared.active.store(active, Ordering::SeqCst);
        if active {
            self.shared.sync_behind();
            self.shared.changed.notify_one();
        }
    }

    /// How a fed source's feed is doing (always `Up` for direct watches).
    pub fn feed_link(&self) -> watch::Receiver<FeedLink> {
        self.link.clone()
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

/// The slot of `Shared::behind` the feed reports in.
const FEED_SLOT: usize = WATCHED.len();

/// What the watch tasks share with the builder task.
#[derive(Debug)]
struct Shared {
    caches: Mutex<Caches>,
    changed: Notify,
    store: StateStore,
    /// Per watched kind (by `Kind`), and the feed: since when it has been
    /// failing.
    behind: Mutex<[Option<SystemTime>; WATCHED.len() + 1]>,
    tap: Option<Tap>,
    /// Publishes to the store (see `KubeWatch::set_active`).
    active: AtomicBool,
    /// Has published a snapshot, or is the store's only source: until then
    /// what it knows of its watches says nothing of the state in the store
    /// (see `KubeSource::taking_over`).
    published: AtomicBool,
}

impl Shared {
    /// Records whether the watch of `kind` follows the API server, and
    /// tells the store since when the state may be missing changes.
    fn set_behind(&self, kind: Kind, since: Option<SystemTime>) {
        self.set_behind_slot(kind as usize, since);
    }

    fn set_behind_slot(&self, slot: usize, since: Option<SystemTime>) {
        self.behind.lock()[slot] = since;
        self.sync_behind();
    }

    /// Tells the store since when the state may be missing changes: the
    /// earliest of the failing watches. Only a source whose state is the
    /// one in force may say.
    fn sync_behind(&self) {
        if !self.speaks() {
            return;
        }
        let behind = self.behind.lock();
        self.store
            .set_behind_since(behind.iter().flatten().min().copied());
    }

    /// Relays `event` to the tap, if any, for kinds other than Pod.
    fn relay(&self, kind: Kind, event: impl FnOnce() -> TapEvent) {
        if let Some(tap) = self.tap.as_ref().filter(|_| kind != Kind::Pod) {
            // The state server dropping its receiver ends it anyway.
            let _ = tap.send(event());
        }
    }

    fn speaks(&self) -> bool {
        self.active.load(Ordering::SeqCst) && self.published.load(Ordering::SeqCst)
    }

    fn report_failure(&self, message: String) {
        if self.active.load(Ordering::SeqCst) {
            self.store.report_failure(message);
        }
    }
}

impl KubeSource {
    pub fn new(client: Client, options: LoadOptions) -> Self {
        Self {
            client,
            options,
            settle: Duration::from_millis(100),
            scope: PodScope::Full,
            tap: None,
            feed: None,
            taking_over: false,
        }
    }

    /// The node this agent serves: pods of other nodes are then kept only
    /// as an address, an identity and an enrolment. Without it every pod is
    /// kept in full (tools that look at the whole cluster).
    pub fn with_node(mut self, node: impl Into<String>) -> Self {
        self.scope = PodScope::Node(node.into());
        self
    }

    /// Every scheduled pod in compact form: the state server, which serves
    /// every node and needs of each pod what a remote agent does.
    pub fn compact(mut self) -> Self {
        self.scope = PodScope::Compact;
        self
    }

    /// Relays every object of the kinds other than Pod, as cached, to `tap`.
    pub fn with_tap(mut self, tap: Tap) -> Self {
        self.tap = Some(tap);
        self
    }

    /// Starts while another source's state is in force (the failover's
    /// direct watches): until this source has published, what it knows of
    /// its own watches says nothing of that state, so it leaves the store's
    /// staleness alone.
    pub fn taking_over(mut self) -> Self {
        self.taking_over = true;
        self
    }

    /// Takes everything but this node's pods from the state feed; watches
    /// only this node's pods (a field selector). Needs `with_node`.
    pub fn fed_by(mut self, feed: FeedConfig) -> Self {
        self.feed = Some(feed);
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
        let fed = match (&self.feed, &self.scope) {
            (Some(feed), PodScope::Node(node)) => Some((feed.clone(), node.clone())),
            _ => None,
        };
        let shared = Arc::new(Shared {
            caches: Mutex::new(Caches::new(self.scope, fed.is_some())),
            changed: Notify::new(),
            store,
            behind: Mutex::new([None; WATCHED.len() + 1]),
            tap: self.tap,
            active: AtomicBool::new(true),
            published: AtomicBool::new(!self.taking_over),
        });
        let (synced_tx, synced) = watch::channel(false);
        let (link_tx, link) = watch::channel(FeedLink::Up);
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        match fed {
            Some((feed, node)) => {
                let pods = &WATCHED[Kind::Pod as usize];
                let selector = format!("spec.nodeName={node}");
                tasks.push(tokio::spawn(watch_kind(
                    self.client.clone(),
                    pods,
                    Some(selector),
                    shared.clone(),
                )));
                link_tx.send_replace(FeedLink::down_now());
                tasks.push(tokio::spawn(fed::follow(feed, shared.clone(), link_tx)));
            }
            None => {
                tasks.extend(WATCHED.iter().map(|w| {
                    tokio::spawn(watch_kind(self.client.clone(), w, None, shared.clone()))
                }))
            }
        }
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
            link,
        }
    }
}

/// The watched kind named `kind`.
fn watched(kind: &str) -> Option<&'static Watched> {
    WATCHED.iter().find(|w| w.kind == kind)
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
        if !shared.active.load(Ordering::SeqCst) {
            // Muted: built all the same, so what changed is taken in and
            // the source can take over with one quick build.
            continue;
        }
        match built {
            Ok(snapshot) => {
                let generation = shared.store.replace(snapshot);
                tracing::debug!(generation, "published state from Kubernetes");
                if !shared.published.swap(true, Ordering::SeqCst) {
                    shared.sync_behind();
                }
                synced.send_replace(true);
            }
            Err(error) => {
                tracing::warn!(%error, "keeping the last state");
                shared.report_failure(error.to_string());
            }
        }
    }
}

/// Watches one kind forever: picks the version the cluster serves, then
/// follows the watcher's events into the cache.
/// `fields`: a field selector for the watch (a fed agent's own pods).
async fn watch_kind(
    client: Client,
    watched: &'static Watched,
    fields: Option<String>,
    shared: Arc<Shared>,
) {
    loop {
        let Some(resource) = served_resource(&client, watched, &shared).await else {
            tracing::warn!(
                kind = watched.kind,
                group = watched.group,
                "kind not served by this cluster (CRD not installed?); treating it as empty"
            );
            shared.caches.lock().mark_absent(watched.cached_as);
            shared.relay(watched.cached_as, || TapEvent::Begin(watched.kind));
            shared.relay(watched.cached_as, || TapEvent::End(watched.kind));
            // Absent is a state the cluster is in, not a failure to follow it.
            shared.set_behind(watched.cached_as, None);
            shared.changed.notify_one();
            tokio::time::sleep(ABSENT_RECHECK).await;
            continue;
        };
        tracing::debug!(kind = watched.kind, api_version = %resource.api_version, "watching");
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let mut config = watcher::Config::default().any_semantic();
        if let Some(fields) = &fields {
            config = config.fields(fields);
        }
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
    let listing = matches!(event, Event::InitApply(_));
    let mut caches = shared.caches.lock();
    match event {
        Event::Init => {
            caches.begin_list(kind);
            shared.relay(kind, || TapEvent::Begin(watched.kind));
        }
        Event::InitApply(object) | Event::Apply(object) => {
            let (key, value) = slim_object(watched, resource, object);
            caches.put(kind, key.clone(), &value, listing);
            shared.relay(kind, || TapEvent::Put {
                kind: watched.kind,
                key,
                object: Arc::new(value),
            });
        }
        Event::InitDone => {
            caches.end_list(kind);
            shared.relay(kind, || TapEvent::End(watched.kind));
            tracing::info!(
                kind = watched.kind,
                objects = caches.len(kind),
                remote = (kind == Kind::Pod).then(|| caches.remote_pod_count()),
                "listed"
            );
        }
        Event::Delete(object) => {
            let key = (object.namespace().unwrap_or_default(), object.name_any());
            caches.delete(kind, &key);
            shared.relay(kind, || TapEvent::Delete {
                kind: watched.kind,
                key,
            });
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
    shared.report_failure(message);
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
    shared.report_failure(message);
}

//! A fake Kubernetes API server on loopback, for testing the agent's watchers
//! and the CA's TokenReview authentication without a cluster.
//!
//! It speaks the real HTTP API for the kinds Ambit uses: list responses carry
//! the collection's resourceVersion; `?watch=true` holds the response open and
//! streams one JSON event per line (ADDED, MODIFIED, DELETED, BOOKMARK when
//! asked with `allowWatchBookmarks`), resuming after any resourceVersion the
//! event log still holds and answering an ERROR event with status 410 for one
//! it has compacted away; `POST .../tokenreviews` answers for tokens the test
//! registered. Tests change objects through [`FakeKube::apply`] and
//! [`FakeKube::delete`], drop every open watch with [`FakeKube::drop_watches`],
//! forbid a resource (403) with [`FakeKube::forbid`], stop serving it (404)
//! with [`FakeKube::unserve`] or fail it (500) with [`FakeKube::fail`], and
//! count the list and watch requests each resource received, and the bytes
//! and events it sent in answer ([`Traffic`], what the scale bench reads).

mod http;
pub mod objects;
mod store;
mod watch_stream;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use store::Store;

/// A resource the fake server serves.
#[derive(Debug, PartialEq, Eq)]
pub struct Kind {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// Served versions; objects are stored once and shown at the version asked.
    pub versions: &'static [&'static str],
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

pub const NAMESPACES: Kind = Kind {
    group: "",
    versions: &["v1"],
    kind: "Namespace",
    plural: "namespaces",
    namespaced: false,
};
pub const PODS: Kind = Kind {
    group: "",
    versions: &["v1"],
    kind: "Pod",
    plural: "pods",
    namespaced: true,
};
pub const SERVICES: Kind = Kind {
    group: "",
    versions: &["v1"],
    kind: "Service",
    plural: "services",
    namespaced: true,
};
pub const ENDPOINT_SLICES: Kind = Kind {
    group: "discovery.k8s.io",
    versions: &["v1"],
    kind: "EndpointSlice",
    plural: "endpointslices",
    namespaced: true,
};
pub const AUTHORIZATION_POLICIES: Kind = Kind {
    group: "security.istio.io",
    versions: &["v1", "v1beta1"],
    kind: "AuthorizationPolicy",
    plural: "authorizationpolicies",
    namespaced: true,
};
pub const PEER_AUTHENTICATIONS: Kind = Kind {
    group: "security.istio.io",
    versions: &["v1", "v1beta1"],
    kind: "PeerAuthentication",
    plural: "peerauthentications",
    namespaced: true,
};

pub const REQUEST_AUTHENTICATIONS: Kind = Kind {
    group: "security.istio.io",
    versions: &["v1", "v1beta1"],
    kind: "RequestAuthentication",
    plural: "requestauthentications",
    namespaced: true,
};

/// Every kind the server stores.
pub static KINDS: [&Kind; 7] = [
    &NAMESPACES,
    &PODS,
    &SERVICES,
    &ENDPOINT_SLICES,
    &AUTHORIZATION_POLICIES,
    &PEER_AUTHENTICATIONS,
    &REQUEST_AUTHENTICATIONS,
];

impl Kind {
    fn by_api_version(api_version: &str, kind: &str) -> Option<&'static Kind> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        KINDS
            .iter()
            .copied()
            .find(|k| k.group == group && k.kind == kind && k.versions.contains(&version))
    }

    fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{version}", self.group)
        }
    }
}

/// Who a token belongs to, as TokenReview reports it.
#[derive(Clone, Debug, Default)]
pub struct TokenUser {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    /// e.g. `authentication.kubernetes.io/pod-name` for a pod-bound token.
    pub extra: BTreeMap<String, Vec<String>>,
    /// The audiences the token was issued for.
    pub audiences: Vec<String>,
}

impl TokenUser {
    /// The user a projected token of `namespace/service_account` bound to
    /// pod `pod` on `node` authenticates as.
    pub fn pod_bound(
        namespace: &str,
        service_account: &str,
        pod: &str,
        node: &str,
        audience: &str,
    ) -> Self {
        let extra = |v: &str| vec![v.to_owned()];
        Self {
            username: format!("system:serviceaccount:{namespace}:{service_account}"),
            uid: format!("uid-{namespace}-{service_account}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
            extra: BTreeMap::from([
                ("authentication.kubernetes.io/pod-name".into(), extra(pod)),
                (
                    "authentication.kubernetes.io/pod-uid".into(),
                    extra(&format!("uid-{pod}")),
                ),
                ("authentication.kubernetes.io/node-name".into(), extra(node)),
            ]),
            audiences: vec![audience.to_owned()],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FakeKubeError {
    #[error("object has no apiVersion/kind the fake server serves: {0}")]
    UnknownKind(String),
    #[error("object has no metadata.name")]
    NoName,
    #[error("namespaced object has no metadata.namespace")]
    NoNamespace,
    #[error("object does not serialise to JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Counters the tests read to prove, e.g., that a resumed watch did not relist.
#[derive(Debug, Default, Clone)]
pub struct RequestCounts {
    pub lists: BTreeMap<&'static str, usize>,
    pub watches: BTreeMap<&'static str, usize>,
    pub token_reviews: usize,
    /// Requests answered with the status set by `unserve` or `fail`.
    pub broken: BTreeMap<&'static str, usize>,
    /// What list and watch answers carried, per resource (plural).
    pub traffic: BTreeMap<&'static str, Traffic>,
}

/// What the server sent for one resource: the cost an API server pays per
/// watching client.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// Body bytes of list answers.
    pub list_bytes: u64,
    /// Objects in list answers.
    pub list_items: u64,
    /// Body bytes of watch streams, bookmarks included.
    pub watch_bytes: u64,
    /// ADDED, MODIFIED and DELETED events sent on watch streams.
    pub watch_events: u64,
    /// BOOKMARK events sent.
    pub bookmarks: u64,
}

impl Traffic {
    pub fn bytes(&self) -> u64 {
        self.list_bytes + self.watch_bytes
    }
}

impl RequestCounts {
    /// Every resource's traffic added up.
    pub fn total_traffic(&self) -> Traffic {
        self.traffic
            .values()
            .fold(Traffic::default(), |a, t| Traffic {
                list_bytes: a.list_bytes + t.list_bytes,
                list_items: a.list_items + t.list_items,
                watch_bytes: a.watch_bytes + t.watch_bytes,
                watch_events: a.watch_events + t.watch_events,
                bookmarks: a.bookmarks + t.bookmarks,
            })
    }
}

#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    /// Bumped on every change; open watches wake on it.
    changed: watch::Sender<u64>,
    /// Bumped by `drop_watches`; open watches end on it.
    generation: watch::Sender<u64>,
    tokens: Mutex<BTreeMap<String, TokenUser>>,
    forbidden: Mutex<BTreeSet<&'static str>>,
    /// Resources answered with this status instead (404 not served, 500 failing).
    broken: Mutex<BTreeMap<&'static str, u16>>,
    counts: Mutex<RequestCounts>,
    bookmark_interval: Duration,
}

/// The running server; dropping it closes the listener and every connection.
#[derive(Debug)]
pub struct FakeKube {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FakeKube {
    /// Serves on an ephemeral loopback port, sending bookmarks every second.
    pub async fn start() -> std::io::Result<Self> {
        Self::with_bookmark_interval(Duration::from_secs(1)).await
    }

    pub async fn with_bookmark_interval(bookmark_interval: Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        Self::serve(listener, bookmark_interval)
    }

    /// Serves on `listener`, which may have been bound in another network
    /// namespace (`Netns::bind`) so that an agent process there can reach it.
    pub fn on(listener: std::net::TcpListener) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Self::serve(TcpListener::from_std(listener)?, Duration::from_secs(1))
    }

    fn serve(listener: TcpListener, bookmark_interval: Duration) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changed: watch::channel(0).0,
            generation: watch::channel(0).0,
            tokens: Mutex::default(),
            forbidden: Mutex::default(),
            broken: Mutex::default(),
            counts: Mutex::default(),
            bookmark_interval,
        });
        let task = tokio::spawn(http::serve(listener, shared.clone()));
        Ok(Self { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, the cluster URL a client is given.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig naming this server, for clients that load one from a file.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\nusers:\n- name: fake\n  user:\n    token: fake-admin\n",
            self.url()
        )
    }

    /// Creates or replaces an object (any k8s-openapi type, or JSON with
    /// apiVersion and kind); returns its new resourceVersion.
    pub fn apply(&self, object: &impl Serialize) -> Result<u64, FakeKubeError> {
        let value = serde_json::to_value(object)?;
        let api_version = value["apiVersion"].as_str().unwrap_or_default();
        let kind_name = value["kind"].as_str().unwrap_or_default();
        let kind = Kind::by_api_version(api_version, kind_name)
            .ok_or_else(|| FakeKubeError::UnknownKind(format!("{api_version} {kind_name}")))?;
        let meta = &value["metadata"];
        if meta["name"].as_str().is_none_or(str::is_empty) {
            return Err(FakeKubeError::NoName);
        }
        if kind.namespaced && meta["namespace"].as_str().is_none_or(str::is_empty) {
            return Err(FakeKubeError::NoNamespace);
        }
        let rv = self.shared.store.lock().apply(kind, value);
        self.shared.changed.send_replace(rv);
        Ok(rv)
    }

    /// Deletes an object; `namespace` is ignored for cluster-scoped kinds.
    /// Returns the deletion's resourceVersion, or None if there was no such object.
    pub fn delete(&self, kind: &'static Kind, namespace: &str, name: &str) -> Option<u64> {
        let namespace = if kind.namespaced { namespace } else { "" };
        let rv = self.shared.store.lock().delete(kind, namespace, name)?;
        self.shared.changed.send_replace(rv);
        Some(rv)
    }

    /// The stored object, as JSON.
    pub fn get(&self, kind: &'static Kind, namespace: &str, name: &str) -> Option<Value> {
        let namespace = if kind.namespaced { namespace } else { "" };
        let store = self.shared.store.lock();
        store.get(kind, namespace, name).map(|o| (*o).clone())
    }

    pub fn resource_version(&self) -> u64 {
        self.shared.store.lock().resource_version()
    }

    /// Ends every open watch response cleanly, as an API server restart or a
    /// load balancer timeout would. Clients must resume on their own.
    pub fn drop_watches(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Forgets the event history: watches resuming from any earlier
    /// resourceVersion get 410 Gone and must list again.
    pub fn compact(&self) {
        self.shared.store.lock().compact();
    }

    /// Answers list, watch and get of `kind` with 403 Forbidden, as RBAC would.
    pub fn forbid(&self, kind: &'static Kind) {
        self.shared.forbidden.lock().insert(kind.plural);
    }

    pub fn allow(&self, kind: &'static Kind) {
        self.shared.forbidden.lock().remove(kind.plural);
    }

    /// Answers every request for `kind` with 404, as an API server too old to
    /// serve it (EndpointSlice v1 before Kubernetes 1.21) or a deleted CRD does.
    pub fn unserve(&self, kind: &'static Kind) {
        self.shared.broken.lock().insert(kind.plural, 404);
    }

    /// Answers every request for `kind` with 500, as a failing API server does.
    pub fn fail(&self, kind: &'static Kind) {
        self.shared.broken.lock().insert(kind.plural, 500);
    }

    /// Undoes `unserve` and `fail`.
    pub fn restore(&self, kind: &'static Kind) {
        self.shared.broken.lock().remove(kind.plural);
    }

    /// Makes TokenReview authenticate `token` as `user`; other tokens fail.
    pub fn add_token(&self, token: &str, user: TokenUser) {
        self.shared.tokens.lock().insert(token.to_owned(), user);
    }

    pub fn counts(&self) -> RequestCounts {
        self.shared.counts.lock().clone()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
        // Wake open watches so they notice the server is gone.
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

//! `ambit-agent state-server`: the state feed's server (see
//! `state::source::feed` for what it sends and why). It runs the agent's
//! own Kubernetes source, with every pod compact, and feeds agents what that
//! source resolves.
//!
//! - `metrics`: what it exports on `/metrics`.
//! - `mirror`: the state as fed, revisioned, and the batches broadcast.
//! - `serve`: TLS, authentication and one stream per agent.

pub mod metrics;
pub mod mirror;
pub mod serve;

use std::sync::Arc;
use std::time::Duration;

use ambit_ca::authn::Authenticator;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::state::source::kube::{KubeSource, KubeWatch, TapEvent};
use crate::state::{Snapshot, StateStore};
use metrics::FeedMetrics;
use mirror::Mirror;
use serve::Feeding;

/// A running state server; dropping it stops it.
pub struct StateServer {
    feeding: Arc<Feeding>,
    tasks: Vec<JoinHandle<()>>,
    _watch: KubeWatch,
}

impl Drop for StateServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl StateServer {
    /// Watches the cluster with `source` (made compact and tapped here),
    /// sending a batch of changes at most every `batch` once agents are
    /// served (`serve`).
    pub fn start(
        source: KubeSource,
        tls: Arc<rustls::ServerConfig>,
        authn: Arc<dyn Authenticator>,
        batch: Duration,
    ) -> Self {
        let store = StateStore::new(Snapshot::default());
        let (tap, taps) = mpsc::unbounded_channel();
        let watch = source.compact().with_tap(tap).start(store.clone());
        let mirror = Arc::new(Mirror::default());
        let feeding = Arc::new(Feeding {
            mirror: mirror.clone(),
            authn,
            acceptor: TlsAcceptor::from(tls),
            store: store.clone(),
            metrics: FeedMetrics::default(),
        });
        let metrics = feeding.metrics.clone();
        let follow = tokio::spawn(follow(mirror, taps, store, metrics, batch));
        Self {
            feeding,
            tasks: vec![follow],
            _watch: watch,
        }
    }

    /// Resolves once the first complete state is mirrored.
    pub async fn synced(&self) {
        self.feeding.store.synced().await;
    }

    /// Serves agents on `listener` once synced. The binary binds only then,
    /// so a replica that is still listing is not ready (its TCP probe fails)
    /// and no agent waits on it; tests bind first.
    pub fn serve(&mut self, listener: TcpListener) {
        let feeding = self.feeding.clone();
        self.tasks.push(tokio::spawn(async move {
            let store = feeding.store.clone();
            store.synced().await;
            if let Err(error) = feeding.mirror.flush(store.current().remote_addresses()) {
                tracing::error!(%error, "cannot encode the state");
            }
            let (addresses, objects) = feeding.mirror.sizes();
            let addr = listener.local_addr().ok();
            tracing::info!(?addr, addresses, objects, "state synced; serving agents");
            if let Err(error) = serve::serve(listener, feeding).await {
                tracing::error!(%error, "state server stopped accepting");
            }
        }));
    }

    /// The server's metrics (`/metrics` in the binary).
    pub fn metrics(&self) -> &FeedMetrics {
        &self.feeding.metrics
    }

    /// Agents connected now.
    pub fn agents(&self) -> i64 {
        self.feeding.metrics.agents.get()
    }

    /// Bytes written to agents so far.
    pub fn bytes_sent(&self) -> u64 {
        self.feeding.metrics.sent_bytes.get()
    }

    pub fn revision(&self) -> u64 {
        self.feeding.mirror.revision()
    }
}

/// Takes in relayed objects as they come, and flushes every `period`.
async fn follow(
    mirror: Arc<Mirror>,
    mut taps: mpsc::UnboundedReceiver<TapEvent>,
    store: StateStore,
    metrics: FeedMetrics,
    period: Duration,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = taps.recv() => match event {
                Some(event) => mirror.tap(event),
                None => return,
            },
            _ = tick.tick() => {
                let staleness = store.staleness(std::time::SystemTime::now());
                metrics.staleness_seconds.set(i64::try_from(staleness.as_secs()).unwrap_or(i64::MAX));
                let snapshot = store.current();
                if !snapshot.is_synced() {
                    continue;
                }
                if let Err(error) = mirror.flush(snapshot.remote_addresses()) {
                    tracing::error!(%error, "cannot encode the changes");
                }
                let revision = mirror.revision();
                metrics.revision.set(i64::try_from(revision).unwrap_or(i64::MAX));
                let addresses = snapshot.remote_addresses().len();
                metrics.addresses.set(i64::try_from(addresses).unwrap_or(i64::MAX));
            }
        }
    }
}

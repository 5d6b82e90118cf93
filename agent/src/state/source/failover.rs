//! A fed Kubernetes source that falls back to direct watches.
//!
//! The state feed is how a large cluster's agents should follow it, but an
//! agent must not depend on it: when the feed cannot be reached for
//! `fallback_after` to twice that (at start or later; the spread keeps a
//! whole cluster from listing at once), the agent starts the direct,
//! node-scoped watches and lets them publish once synced, while the state
//! fed so far stays in force. The fed source keeps trying meanwhile, muted;
//! once the feed has sent a complete state again it publishes and the
//! direct watches stop. Either way the store's staleness says how old the
//! state in force may be, so readiness never vouches for a stale state.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::kube::{FeedLink, KubeSource};
use crate::state::StateStore;

/// How `/config_dump` names the source in force.
const FED: &str = "state feed";
const DIRECT: &str = "kubernetes (state feed unreachable)";

/// Which source publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceMode {
    Fed,
    Direct,
}

/// The running sources; dropping it stops them.
#[derive(Debug)]
pub struct FailoverWatch {
    task: JoinHandle<()>,
    mode: watch::Receiver<SourceMode>,
    store: StateStore,
}

impl Drop for FailoverWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FailoverWatch {
    /// Starts `fed` (a `KubeSource::fed_by`), and `direct` whenever the feed
    /// has been down for `fallback_after` to twice that.
    pub fn start(
        fed: KubeSource,
        direct: KubeSource,
        store: StateStore,
        fallback_after: Duration,
    ) -> Self {
        let (mode_tx, mode) = watch::channel(SourceMode::Fed);
        let task = tokio::spawn(supervise(
            fed,
            direct,
            store.clone(),
            fallback_after,
            mode_tx,
        ));
        Self { task, mode, store }
    }

    /// Resolves once either source has published a complete state.
    pub async fn synced(&self) {
        self.store.synced().await;
    }

    pub fn mode(&self) -> watch::Receiver<SourceMode> {
        self.mode.clone()
    }
}

async fn supervise(
    fed: KubeSource,
    direct: KubeSource,
    store: StateStore,
    fallback_after: Duration,
    mode: watch::Sender<SourceMode>,
) {
    let fed = fed.start(store.clone());
    let mut link = fed.feed_link();
    loop {
        store.set_source(FED);
        mode.send_replace(SourceMode::Fed);
        // Each agent waits between one and two bounds: when the feed goes
        // down for a whole cluster, its agents' lists reach the API server
        // spread over a bound instead of in the same second.
        let bound = fallback_after.mul_f64(1.0 + rand::random::<f64>());
        wait_down_for(&mut link, bound).await;
        tracing::warn!(
            down_s = link.borrow().down_for().as_secs(),
            "state feed unreachable; watching the API server directly until it is back"
        );
        fed.set_active(false);
        let direct = direct.clone().taking_over().start(store.clone());
        store.set_source(DIRECT);
        mode.send_replace(SourceMode::Direct);
        if link.wait_for(|l| *l == FeedLink::Up).await.is_err() {
            // The fed source is gone: the direct one goes on alone.
            std::future::pending::<()>().await;
        }
        fed.set_active(true);
        drop(direct);
        tracing::info!("state feed back; direct watches stopped");
    }
}

/// Returns once the feed has been down for `bound`.
async fn wait_down_for(link: &mut watch::Receiver<FeedLink>, bound: Duration) {
    loop {
        let down_for = match *link.borrow_and_update() {
            FeedLink::Up => None,
            down => Some(down.down_for()),
        };
        match down_for {
            Some(d) if d >= bound => return,
            Some(d) => {
                tokio::select! {
                    _ = link.changed() => {}
                    () = tokio::time::sleep(bound - d) => {}
                }
            }
            None => {
                if link.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

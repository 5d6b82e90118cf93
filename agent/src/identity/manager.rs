//! The node's workload identities: one renewal task per identity keeps a
//! certificate for it, and callers read the current one.
//!
//! Each task fetches (key generated here, CSR, CA call), publishes the result on
//! a watch channel, sleeps until about half the remaining life, and repeats;
//! after a failure it retries with capped exponential backoff while the current
//! certificate keeps being served. A semaphore bounds concurrent fetches, and
//! since tokio's semaphore queues waiters in order, a node starting 500
//! identities at once provisions them first come, first served. Because only the
//! identity's own task ever fetches, concurrent callers share one fetch.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ambit_ca::SpiffeId;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::AbortHandle;

use super::ca_client::{CertificateIssuer, fetch};
use super::certificate::WorkloadCertificate;
use super::renewal::{Backoff, renew_after};

/// How the manager asks for and renews certificates.
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    /// Lifetime asked of the CA; the CA may shorten it.
    pub requested_lifetime: Duration,
    /// Fetches in flight at once across all identities.
    pub max_concurrent_fetches: usize,
    pub backoff: Backoff,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            requested_lifetime: Duration::from_secs(24 * 3600),
            max_concurrent_fetches: 64,
            backoff: Backoff::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("no certificate for {identity}: {reason}")]
    Unavailable { identity: SpiffeId, reason: String },
    #[error("identity {0} is no longer held by this node")]
    Dropped(SpiffeId),
}

/// Where an identity's certificate stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateState {
    /// First fetch not finished yet.
    Pending,
    /// A valid certificate, and the last attempt succeeded.
    Ready,
    /// A valid certificate is served, but the last renewal attempt failed.
    Degraded,
    /// No valid certificate; the last attempt failed.
    Unavailable,
}

/// One identity's status, for metrics and the admin endpoint.
#[derive(Clone, Debug, Serialize)]
pub struct IdentityStatus {
    pub identity: String,
    pub state: CertificateState,
    /// Expiry of the current certificate, Unix seconds.
    pub not_after: Option<u64>,
    pub last_error: Option<String>,
    /// Certificates received for this identity since it was tracked.
    pub issued: u64,
}

/// What an identity's task publishes after each attempt.
#[derive(Clone, Debug, Default)]
struct Published {
    cert: Option<Arc<WorkloadCertificate>>,
    last_error: Option<Arc<str>>,
    attempts: u64,
    issued: u64,
    dropped: bool,
}

#[derive(Debug)]
struct Entry {
    published: watch::Sender<Published>,
    /// Rung by callers that found no valid certificate, to cut a backoff short.
    wake: Notify,
}

/// An identity held by the node: its published state and its renewal task.
#[derive(Debug)]
struct Held {
    entry: Arc<Entry>,
    task: AbortHandle,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.task.abort();
        self.entry.published.send_modify(|p| p.dropped = true);
    }
}

/// Keeps certificates for the node's local workload identities.
pub struct IdentityManager {
    config: IdentityConfig,
    issuer: Arc<dyn CertificateIssuer>,
    permits: Arc<Semaphore>,
    held: Mutex<HashMap<SpiffeId, Held>>,
}

impl std::fmt::Debug for IdentityManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityManager")
            .field("config", &self.config)
            .field("identities", &self.held.lock().len())
            .finish_non_exhaustive()
    }
}

impl IdentityManager {
    pub fn new(config: IdentityConfig, issuer: impl CertificateIssuer) -> Arc<Self> {
        Self::with_issuer(config, Arc::new(issuer))
    }

    pub fn with_issuer(config: IdentityConfig, issuer: Arc<dyn CertificateIssuer>) -> Arc<Self> {
        let permits = Arc::new(Semaphore::new(config.max_concurrent_fetches.max(1)));
        Arc::new(Self {
            config,
            issuer,
            permits,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// The current valid certificate of `id`; if there is none, waits for the
    /// next attempt (starting to hold `id` if it was not held) and returns its
    /// result. Concurrent callers wait on the same attempt.
    ///
    /// Must be called within a Tokio runtime.
    pub async fn certificate(
        &self,
        id: &SpiffeId,
    ) -> Result<Arc<WorkloadCertificate>, IdentityError> {
        let entry = self.hold(id);
        let mut rx = entry.published.subscribe();
        let seen = rx.borrow().attempts;
        loop {
            {
                let p = rx.borrow_and_update();
                if p.dropped {
                    return Err(IdentityError::Dropped(id.clone()));
                }
                if let Some(cert) = p.cert.as_ref().filter(|c| c.is_valid_at(SystemTime::now())) {
                    return Ok(Arc::clone(cert));
                }
                if p.attempts > seen {
                    return Err(IdentityError::Unavailable {
                        identity: id.clone(),
                        reason: p
                            .last_error
                            .as_deref()
                            .unwrap_or("certificate expired")
                            .to_string(),
                    });
                }
            }
            entry.wake.notify_one();
            if rx.changed().await.is_err() {
                return Err(IdentityError::Dropped(id.clone()));
            }
        }
    }

    /// The cached certificate of `id` if it is valid now, without fetching.
    /// For synchronous callers such as a TLS certificate resolver.
    pub fn current(&self, id: &SpiffeId) -> Option<Arc<WorkloadCertificate>> {
        let held = self.held.lock();
        let p = held.get(id)?.entry.published.borrow();
        p.cert
            .as_ref()
            .filter(|c| c.is_valid_at(SystemTime::now()))
            .cloned()
    }

    /// Sets the node's current local identities: starts provisioning new ones
    /// and drops (stops renewing, forgets) those no longer listed.
    ///
    /// Must be called within a Tokio runtime.
    pub fn track(&self, ids: impl IntoIterator<Item = SpiffeId>) {
        let wanted: HashSet<SpiffeId> = ids.into_iter().collect();
        let dropped: Vec<Held> = {
            let mut held = self.held.lock();
            let departed: Vec<SpiffeId> = held
                .keys()
                .filter(|id| !wanted.contains(*id))
                .cloned()
                .collect();
            for id in wanted {
                if let MapEntry::Vacant(slot) = held.entry(id.clone()) {
                    slot.insert(self.start(id));
                }
            }
            departed
                .iter()
                .filter_map(|id| {
                    tracing::info!(identity = %id, "identity dropped");
                    held.remove(id)
                })
                .collect()
        };
        // Outside the lock: dropping notifies waiters.
        drop(dropped);
    }

    /// Every held identity's state, sorted by identity.
    pub fn status(&self) -> Vec<IdentityStatus> {
        let now = SystemTime::now();
        let mut out: Vec<IdentityStatus> = self
            .held
            .lock()
            .iter()
            .map(|(id, held)| {
                let p = held.entry.published.borrow();
                let valid = p.cert.as_ref().is_some_and(|c| c.is_valid_at(now));
                let state = match (valid, p.last_error.is_some(), p.attempts) {
                    (true, false, _) => CertificateState::Ready,
                    (true, true, _) => CertificateState::Degraded,
                    (false, _, 0) => CertificateState::Pending,
                    (false, _, _) => CertificateState::Unavailable,
                };
                IdentityStatus {
                    identity: id.to_string(),
                    state,
                    not_after: p.cert.as_ref().map(|c| {
                        c.not_after
                            .duration_since(UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_secs()
                    }),
                    last_error: p.last_error.as_deref().map(str::to_string),
                    issued: p.issued,
                }
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }

    /// The entry of `id`, starting to hold it if needed.
    fn hold(&self, id: &SpiffeId) -> Arc<Entry> {
        let mut held = self.held.lock();
        let h = held
            .entry(id.clone())
            .or_insert_with(|| self.start(id.clone()));
        Arc::clone(&h.entry)
    }

    fn start(&self, id: SpiffeId) -> Held {
        tracing::info!(identity = %id, "identity tracked");
        let entry = Arc::new(Entry {
            published: watch::Sender::new(Published::default()),
            wake: Notify::new(),
        });
        let task = tokio::spawn(renew_forever(
            id,
            Arc::clone(&entry),
            Arc::clone(&self.issuer),
            Arc::clone(&self.permits),
            self.config.requested_lifetime,
            self.config.backoff.clone(),
        ));
        Held {
            entry,
            task: task.abort_handle(),
        }
    }
}

/// One identity's renewal loop; runs until aborted.
async fn renew_forever(
    id: SpiffeId,
    entry: Arc<Entry>,
    issuer: Arc<dyn CertificateIssuer>,
    permits: Arc<Semaphore>,
    lifetime: Duration,
    backoff: Backoff,
) {
    let mut failures = 0u32;
    loop {
        let result = {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            fetch(issuer.as_ref(), &id, lifetime).await
        };
        let wait = match result {
            Ok(cert) => {
                failures = 0;
                let remaining = cert
                    .not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tracing::debug!(identity = %id, expires_in = ?remaining, "certificate issued");
                entry.published.send_modify(|p| {
                    p.cert = Some(Arc::new(cert));
                    p.last_error = None;
                    p.attempts += 1;
                    p.issued += 1;
                });
                renew_after(remaining, rand::random())
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay = backoff.delay(failures, rand::random());
                tracing::warn!(identity = %id, %error, failures, retry_in = ?delay, "certificate request failed");
                entry.published.send_modify(|p| {
                    p.last_error = Some(error.to_string().into());
                    p.attempts += 1;
                });
                delay
            }
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                () = entry.wake.notified() => {
                    // A wake left over from callers served meanwhile changes nothing.
                    let have_valid = entry.published.borrow().cert.as_ref()
                        .is_some_and(|c| c.is_valid_at(SystemTime::now()));
                    if !have_valid {
                        // A caller waits for a certificate we lack: retry soon,
                        // but never faster than the first backoff step.
                        tokio::time::sleep(backoff.initial).await;
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

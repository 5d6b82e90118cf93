//! Open inbound connections and what authorizing them took, so that a state
//! change can close the ones it no longer allows.
//!
//! Every connection the agent delivers to a local pod (HBONE, same-node, and
//! admitted plaintext) registers here with its client address, its proven peer
//! identity (if any) and its destination. On each new snapshot [`follow`]
//! decides every open connection again against the new policies, exactly as a
//! new connection would be decided, and cancels the ones that are now denied
//! or whose pod left the node or the mesh. The proxy holding the connection
//! resets both ends when its token is cancelled.
//!
//! Registration and removal take one short lock; the data path never touches
//! the tracker between them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ambit_ca::SpiffeId;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Inbound;
use crate::state::Snapshot;

/// What re-deciding a connection needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackedConnection {
    /// The client address authorization saw (the trusted `forwarded` one for HBONE).
    pub src: SocketAddr,
    /// The verified peer identity; `None` for plaintext.
    pub peer: Option<SpiffeId>,
    /// The local pod address and port.
    pub dst: SocketAddr,
}

#[derive(Debug)]
struct Entry {
    conn: TrackedConnection,
    close: CancellationToken,
}

/// The open inbound connections of this node; shared as `Arc`.
pub struct ConnectionTracker {
    node: String,
    next_id: AtomicU64,
    /// Entries are shared with their registrations, so the table holds a
    /// pointer per slot: a hash table keeps up to half its slots empty, and
    /// with tens of thousands of idle connections inline entries cost more
    /// in empty slots than in connections.
    open: Mutex<HashMap<u64, Arc<Entry>>>,
}

impl std::fmt::Debug for ConnectionTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionTracker")
            .field("node", &self.node)
            .field("open", &self.len())
            .finish()
    }
}

/// A connection's place in the tracker; dropping it unregisters the connection.
#[derive(Debug)]
pub struct Registration {
    tracker: Arc<ConnectionTracker>,
    id: u64,
    entry: Arc<Entry>,
}

impl Registration {
    /// Cancelled when a state change no longer allows the connection.
    pub fn close_token(&self) -> CancellationToken {
        self.entry.close.clone()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.tracker.open.lock().remove(&self.id);
    }
}

/// Why an open connection was closed by a state change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// The destination is no longer an enrolled pod of this node.
    DestinationGone,
    /// The policies in force deny it now.
    Denied {
        reason: &'static str,
        policy: Option<String>,
    },
    /// The new state cannot decide it (fail closed).
    Undecidable(String),
}

impl ConnectionTracker {
    /// A tracker for the connections to the enrolled pods of `node`.
    pub fn new(node: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            node: node.into(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Starts tracking `conn` until the returned registration is dropped.
    pub fn register(self: &Arc<Self>, conn: TrackedConnection) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry {
            conn,
            close: CancellationToken::new(),
        });
        self.open.lock().insert(id, entry.clone());
        Registration {
            tracker: self.clone(),
            id,
            entry,
        }
    }

    pub fn len(&self) -> usize {
        self.open.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides `conn` against `snapshot`: `None` while it may stay open.
    pub fn revocation(&self, snapshot: &Snapshot, conn: &TrackedConnection) -> Option<Revocation> {
        let local = snapshot
            .workload_by_ip(conn.dst.ip())
            .is_some_and(|w| w.enrolled && w.node == self.node);
        if !local {
            return Some(Revocation::DestinationGone);
        }
        let inbound = Inbound {
            src: conn.src.ip(),
            peer: conn.peer.as_ref(),
            dst: conn.dst,
        };
        match snapshot.authorize(&inbound) {
            Ok(d) if d.allowed => None,
            Ok(d) => Some(Revocation::Denied {
                reason: d.reason.as_str(),
                policy: d.policy,
            }),
            Err(e) => Some(Revocation::Undecidable(e.to_string())),
        }
    }

    /// Re-decides every open connection and closes those `snapshot` no
    /// longer allows; returns how many were closed.
    pub fn reauthorize(&self, snapshot: &Snapshot) -> usize {
        // Decide under the lock (cheap, no I/O), cancel outside it: cancelling
        // wakes tasks that will take the lock to unregister.
        let revoked: Vec<(TrackedConnection, CancellationToken, Revocation)> = {
            let open = self.open.lock();
            open.values()
                .filter(|e| !e.close.is_cancelled())
                .filter_map(|e| {
                    self.revocation(snapshot, &e.conn)
                        .map(|r| (e.conn.clone(), e.close.clone(), r))
                })
                .collect()
        };
        for (conn, close, revocation) in &revoked {
            tracing::info!(
                src = %conn.src,
                dst = %conn.dst,
                peer = conn.peer.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string),
                reason = ?revocation,
                "closing connection no longer allowed"
            );
            close.cancel();
        }
        revoked.len()
    }
}

/// Re-decides the open connections on every new snapshot until `shutdown`.
pub async fn follow(
    tracker: Arc<ConnectionTracker>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
        }
        let snapshot = snapshots.borrow_and_update().clone();
        if !snapshot.is_synced() {
            continue;
        }
        let closed = tracker.reauthorize(&snapshot);
        tracing::debug!(
            generation = snapshot.generation(),
            open = tracker.len(),
            closed,
            "open connections re-authorized"
        );
    }
}

#[cfg(test)]
mod tests;

//! Following the state feed (`state::source::feed`): frames go into the
//! caches, the link's health goes to the failover and the staleness to the
//! store. A lost connection keeps the state fed so far, and the next one
//! starts with a full state.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::backoff::Backoff;
use super::{FEED_SLOT, Shared};
use crate::state::source::feed::FeedConfig;
use crate::state::source::feed::client::{FeedConnection, FeedError};
use crate::state::source::feed::wire::Frame;

/// Whether the feed is the source of truth right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedLink {
    /// Connected, and what it sent is complete.
    Up,
    /// Not connected, or not yet complete, since then.
    Down { since: Instant },
}

impl FeedLink {
    pub(super) fn down_now() -> Self {
        Self::Down {
            since: Instant::now(),
        }
    }

    /// How long the feed has been down (zero while up).
    pub fn down_for(&self) -> Duration {
        match self {
            Self::Up => Duration::ZERO,
            Self::Down { since } => since.elapsed(),
        }
    }
}

/// Connects, follows, and connects again, forever.
pub(super) async fn follow(config: FeedConfig, shared: Arc<Shared>, link: watch::Sender<FeedLink>) {
    let mut backoff = Backoff::default();
    // Until when the state fed is known to be current.
    let mut heard = SystemTime::now();
    loop {
        let ended = match FeedConnection::open(&config).await {
            Ok(connection) => {
                tracing::info!(address = %config.address, "connected to the state feed");
                follow_connection(connection, &shared, &link, &mut backoff, &mut heard).await
            }
            Err(error) => error,
        };
        tracing::warn!(address = %config.address, error = %ended, "state feed unavailable; keeping the state it sent");
        if matches!(ended, FeedError::Refused(_)) {
            shared.report_failure(ended.to_string());
        }
        link.send_if_modified(|l| {
            let up = *l == FeedLink::Up;
            if up {
                *l = FeedLink::down_now();
            }
            up
        });
        shared.set_behind_slot(FEED_SLOT, Some(heard));
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Follows one connection until it fails; returns why.
async fn follow_connection(
    mut connection: FeedConnection,
    shared: &Shared,
    link: &watch::Sender<FeedLink>,
    backoff: &mut Backoff,
    heard: &mut SystemTime,
) -> FeedError {
    let mut complete = false;
    loop {
        let frame = match connection.next().await {
            Ok(frame) => frame,
            Err(error) => return error,
        };
        match frame {
            Frame::Reset => {
                complete = false;
                shared.caches.lock().fed_reset();
            }
            Frame::Changes(changes) => {
                if let Err(error) = shared.caches.lock().fed_changes(changes) {
                    return FeedError::Refused(error.to_string());
                }
                if complete {
                    shared.changed.notify_one();
                }
            }
            Frame::Synced { revision } => {
                shared.caches.lock().fed_synced();
                complete = true;
                backoff.reset();
                tracing::info!(revision, "state feed synced");
                link.send_replace(FeedLink::Up);
                shared.set_behind_slot(FEED_SLOT, None);
                shared.changed.notify_one();
            }
            Frame::Heartbeat { behind_ms, .. } if complete => {
                // The server's own watches may be behind: so is this state.
                let behind =
                    (behind_ms > 0).then(|| SystemTime::now() - Duration::from_millis(behind_ms));
                shared.set_behind_slot(FEED_SLOT, behind);
            }
            Frame::Heartbeat { .. } => {}
            Frame::Hello { .. } | Frame::Refused { .. } => {
                return FeedError::Refused("unexpected frame from the server".into());
            }
        }
        if complete {
            *heard = SystemTime::now();
        }
    }
}

//! Following the state feed (`state::source::feed`): frames go into the
//! caches, the link's health goes to the failover and the staleness to the
//! store. A lost connection keeps the state fed so far, and the next one
//! asks to resume from it: the same server process sends only the batches
//! missed, if it still has them all, and a full state otherwise.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::backoff::Backoff;
use super::{FEED_SLOT, Shared};
use crate::state::source::feed::FeedConfig;
use crate::state::source::feed::client::{FeedConnection, FeedError};
use crate::state::source::feed::wire::{Frame, Position};

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
    // The complete state the caches hold, as the server numbered it.
    let mut held = None;
    loop {
        let ended = match FeedConnection::open(&config, held).await {
            Ok(connection) => {
                tracing::info!(address = %config.address, resume = ?held, "connected to the state feed");
                let mut following = Following {
                    shared: &shared,
                    link: &link,
                    backoff: &mut backoff,
                    heard: &mut heard,
                    held: &mut held,
                };
                following.connection(connection).await
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

/// What following one connection updates for the next.
struct Following<'a> {
    shared: &'a Shared,
    link: &'a watch::Sender<FeedLink>,
    backoff: &'a mut Backoff,
    heard: &'a mut SystemTime,
    held: &'a mut Option<Position>,
}

impl Following<'_> {
    /// Follows one connection until it fails; returns why.
    async fn connection(&mut self, mut connection: FeedConnection) -> FeedError {
        let shared = self.shared;
        let mut complete = false;
        // A full state replaces the caches at `Synced`; a resumed one was
        // applied to them batch by batch.
        let mut resumed = false;
        // The revision of the batch being received: complete once a later
        // frame comes (a server writes each batch whole).
        let mut receiving = None;
        loop {
            let frame = match connection.next().await {
                Ok(frame) => frame,
                Err(error) => return error,
            };
            match frame {
                Frame::Reset => {
                    complete = false;
                    resumed = false;
                    // Until `Synced`, the caches hold a state half replaced.
                    *self.held = None;
                    shared.caches.lock().fed_reset();
                }
                Frame::Resumed { revision } => {
                    if self.held.map(|h| h.revision) != Some(revision) {
                        return FeedError::Refused(format!(
                            "the server resumed from revision {revision}, not from {:?}",
                            self.held
                        ));
                    }
                    resumed = true;
                }
                Frame::Changes(changes) => {
                    let revision = changes.revision;
                    if let Err(error) = shared.caches.lock().fed_changes(changes) {
                        return FeedError::Refused(error.to_string());
                    }
                    if let Some(done) = receiving.replace(revision).filter(|r| *r < revision) {
                        self.advance(done);
                    }
                    if complete {
                        shared.changed.notify_one();
                    }
                }
                Frame::Synced { revision, epoch } => {
                    if !resumed {
                        shared.caches.lock().fed_synced();
                    }
                    complete = true;
                    receiving = None;
                    *self.held = Some(Position { epoch, revision });
                    self.backoff.reset();
                    tracing::info!(revision, resumed, "state feed synced");
                    self.link.send_replace(FeedLink::Up);
                    shared.set_behind_slot(FEED_SLOT, None);
                    shared.changed.notify_one();
                }
                Frame::Heartbeat { behind_ms, .. } if complete => {
                    if let Some(done) = receiving.take() {
                        self.advance(done);
                    }
                    // The server's own watches may be behind: so is this state.
                    let behind = (behind_ms > 0)
                        .then(|| SystemTime::now() - Duration::from_millis(behind_ms));
                    shared.set_behind_slot(FEED_SLOT, behind);
                }
                Frame::Heartbeat { .. } => {}
                Frame::Hello { .. } | Frame::Refused { .. } => {
                    return FeedError::Refused("unexpected frame from the server".into());
                }
            }
            if complete {
                *self.heard = SystemTime::now();
            }
        }
    }

    /// Every frame of batch `revision` is applied (only batches after a
    /// `Synced` move the position; those of a full state or resume do not
    /// count until it).
    fn advance(&mut self, revision: u64) {
        if let Some(held) = self.held.as_mut() {
            held.revision = held.revision.max(revision);
        }
    }
}

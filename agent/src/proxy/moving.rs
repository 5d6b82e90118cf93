//! Carrying a plain-path pair so that it can move to the agent that took
//! over this one's listeners, and taking such pairs in.
//!
//! Once the listeners are handed over, [`Handoff::begin`] pauses every
//! spliced pair at its next quiet point and sends both sockets to the
//! successor (`handover::connections`). A pair the successor does not
//! confirm is carried on here, so no connection is ever dropped for a
//! move. Each process counts the part of a connection it carried: the
//! predecessor closes its record with status `moved`, and the successor
//! opens one for the rest.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::copy::{self, Copied, Ended, Transferred};
use super::{Direction, Forwarded, Status};
use crate::handover::connections::{self, MovedConnection};

/// Whether, and where, this process's plain-path pairs move.
#[derive(Clone, Debug)]
pub struct Handoff {
    pause: CancellationToken,
    run_dir: PathBuf,
}

impl Handoff {
    /// Pairs move to the successor that binds `adopt.sock` in `run_dir`.
    pub fn new(run_dir: PathBuf) -> Self {
        Self {
            pause: CancellationToken::new(),
            run_dir,
        }
    }

    /// Starts moving every pair, those open now and any accepted later.
    pub fn begin(&self) {
        self.pause.cancel();
    }
}

/// Where a pair came from and went, as the successor needs it.
#[derive(Clone, Copy, Debug)]
pub struct PairInfo {
    pub direction: Direction,
    pub client: SocketAddr,
    pub orig_dst: SocketAddr,
    pub target: SocketAddr,
    pub started: Instant,
}

/// Where a moved pair's copy stands when it is taken in.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resume {
    pub ended: Ended,
}

/// Copies `client` <-> `server` until the connection ends, `stop` resets
/// it, or it moves to the successor (status [`Status::Moved`], with the
/// bytes carried here).
pub async fn carry(
    handoff: &Handoff,
    info: PairInfo,
    client: TcpStream,
    server: TcpStream,
    stop: impl Future<Output = ()>,
    resume: Resume,
) -> Forwarded {
    tokio::pin!(stop);
    // A token of its own: the copy waits on it every round, and the shared
    // one would be a lock every connection of the node takes.
    let pause = handoff.pause.child_token();
    let copied = copy::movable(
        client,
        server,
        stop.as_mut(),
        &pause,
        resume.ended,
        Transferred::default(),
    )
    .await;
    let paused = match copied {
        Copied::Finished(outcome) => return outcome.into(),
        Copied::Paused(paused) => paused,
    };
    let moved = MovedConnection {
        listener: info.direction.as_str().to_owned(),
        client: info.client,
        orig_dst: info.orig_dst,
        target: info.target,
        client_to_server_bytes: paused.bytes.client_to_server,
        server_to_client_bytes: paused.bytes.server_to_client,
        client_to_server_ended: paused.ended.client_to_server,
        server_to_client_ended: paused.ended.server_to_client,
        age_ms: u64::try_from(info.started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    match connections::send(&handoff.run_dir, &moved, &paused.client, &paused.server).await {
        Ok(()) => {
            tracing::debug!(src = %info.client, dst = %info.orig_dst, "connection moved to the new agent");
            Forwarded {
                bytes: paused.bytes,
                status: Status::Moved,
                reason: None,
            }
        }
        Err(error) => {
            tracing::warn!(%error, src = %info.client, dst = %info.orig_dst, "connection not moved; carrying it here");
            copy::resume_to_end(
                paused.client,
                paused.server,
                stop,
                paused.ended,
                paused.bytes,
            )
            .await
            .into()
        }
    }
}

impl PairInfo {
    /// The description a predecessor sent, and when the connection began.
    pub fn of(moved: &MovedConnection, direction: Direction) -> Self {
        Self {
            direction,
            client: moved.client,
            orig_dst: moved.orig_dst,
            target: moved.target,
            started: Instant::now()
                .checked_sub(Duration::from_millis(moved.age_ms))
                .unwrap_or_else(Instant::now),
        }
    }
}

impl Resume {
    pub fn of(moved: &MovedConnection) -> Self {
        Self {
            ended: Ended {
                client_to_server: moved.client_to_server_ended,
                server_to_client: moved.server_to_client_ended,
            },
        }
    }
}

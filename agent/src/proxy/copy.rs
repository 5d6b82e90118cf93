//! Copying bytes between the two TCP connections of a proxied connection with
//! the semantics the endpoints would have had without the agent:
//!
//! - EOF in one direction becomes a half-close (FIN) on the other side, and
//!   the opposite direction keeps flowing until it ends too;
//! - a connection that fails (reset, keepalive timeout) makes the agent reset
//!   the other side (SO_LINGER 0), so a reset is seen as a reset;
//! - no timeouts: an idle connection stays open as long as both ends keep it.
//!
//! Bytes move socket -> pipe -> socket with splice(2), so they never enter
//! user space. Pipes come from a pool shared by all connections and are
//! held only while bytes sit in them, so an open connection costs the proxy
//! its two sockets; if no pipe can be had (descriptor budget), a buffered
//! copy is used instead. Counts are kept per direction and returned for
//! metrics.
//!
//! A copy can also be paused ([`movable`]): each direction stops between
//! two rounds, when nothing of the connection is left in user space or in a
//! pipe, so both sockets can move to another process (`handover`) and the
//! copy resume there with no byte lost or reordered.

use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use parking_lot::Mutex;

use crate::{limits, socket};

/// Bytes delivered in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    /// Read from the client and written to the server.
    pub client_to_server: u64,
    /// Read from the server and written to the client.
    pub server_to_client: u64,
}

/// How the proxied connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Both directions reached EOF.
    Closed,
    /// The client connection failed; the server was reset.
    ClientFailed,
    /// The server connection failed; the client was reset.
    ServerFailed,
    /// The agent stopped it (a policy change no longer allows it); both
    /// sides were reset.
    Stopped,
}

/// A copy paused with nothing in flight: both sockets, which directions
/// already ended (their EOF was passed on as a half-close), and what moved
/// so far.
#[derive(Debug)]
pub struct Paused {
    pub client: TcpStream,
    pub server: TcpStream,
    pub ended: Ended,
    pub bytes: Transferred,
}

/// Directions whose EOF was already passed on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ended {
    pub client_to_server: bool,
    pub server_to_client: bool,
}

/// How a [`movable`] copy came back.
#[derive(Debug)]
pub enum Copied {
    Finished(CopyOutcome),
    Paused(Paused),
}

#[derive(Debug)]
pub struct CopyOutcome {
    pub bytes: Transferred,
    pub end: End,
    /// The error that ended the connection, when it did not close cleanly.
    pub error: Option<io::Error>,
}

/// Pipe capacity asked for: big enough that a bulk transfer moves in few
/// syscalls, small enough for thousands of connections (pages are only
/// allocated while data sits in the pipe).
const PIPE_SIZE: i32 = 512 * 1024;
const BUFFER_SIZE: usize = 64 * 1024;

enum DirectionEnd {
    Eof,
    Paused,
    ReadFailed(io::Error),
    WriteFailed(io::Error),
}

/// Copies until both directions ended or one side failed, then closes both
/// (resetting the healthy side if the other failed).
pub async fn bidirectional(client: TcpStream, server: TcpStream) -> CopyOutcome {
    bidirectional_until(client, server, std::future::pending()).await
}

/// As [`bidirectional`], but `stop` completing ends the copy and resets both
/// sides ([`End::Stopped`]).
pub async fn bidirectional_until(
    client: TcpStream,
    server: TcpStream,
    stop: impl std::future::Future<Output = ()>,
) -> CopyOutcome {
    resume_to_end(
        client,
        server,
        stop,
        Ended::default(),
        Transferred::default(),
    )
    .await
}

/// As [`bidirectional_until`], carrying on from where a paused copy stood
/// (`ended`, `bytes`); it does not pause again.
pub async fn resume_to_end(
    client: TcpStream,
    server: TcpStream,
    stop: impl std::future::Future<Output = ()>,
    ended: Ended,
    bytes: Transferred,
) -> CopyOutcome {
    let never = CancellationToken::new();
    match movable(client, server, stop, &never, ended, bytes).await {
        Copied::Finished(outcome) => outcome,
        // `never` is never cancelled.
        Copied::Paused(paused) => CopyOutcome {
            bytes: paused.bytes,
            end: End::Closed,
            error: None,
        },
    }
}

/// As [`bidirectional_until`], and once `pause` is cancelled each direction
/// stops at its next quiet point; when both have, the sockets come back
/// ([`Copied::Paused`]) instead of being closed. `ended` and `bytes` carry
/// on from a copy paused before (in this process or another).
pub async fn movable(
    client: TcpStream,
    server: TcpStream,
    stop: impl std::future::Future<Output = ()>,
    pause: &CancellationToken,
    ended: Ended,
    bytes: Transferred,
) -> Copied {
    let c2s = AtomicU64::new(bytes.client_to_server);
    let s2c = AtomicU64::new(bytes.server_to_client);
    let (mut up_done, mut down_done) = (ended.client_to_server, ended.server_to_client);
    let (mut up_paused, mut down_paused) = (false, false);
    let mut paused = false;
    let (end, error) = {
        let up = pump(&client, &server, &c2s, pause);
        let down = pump(&server, &client, &s2c, pause);
        tokio::pin!(up, down, stop);
        loop {
            if (up_done || up_paused) && (down_done || down_paused) && (up_paused || down_paused) {
                paused = true;
                break (End::Closed, None);
            }
            let (from_client, result) = tokio::select! {
                r = &mut up, if !up_done && !up_paused => (true, r),
                r = &mut down, if !down_done && !down_paused => (false, r),
                () = &mut stop => {
                    break (End::Stopped, Some(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "closed by the agent",
                    )));
                }
            };
            match (from_client, result) {
                (true, DirectionEnd::Eof) => up_done = true,
                (false, DirectionEnd::Eof) => down_done = true,
                (true, DirectionEnd::Paused) => up_paused = true,
                (false, DirectionEnd::Paused) => down_paused = true,
                (true, DirectionEnd::ReadFailed(e)) | (false, DirectionEnd::WriteFailed(e)) => {
                    break (End::ClientFailed, Some(e));
                }
                (false, DirectionEnd::ReadFailed(e)) | (true, DirectionEnd::WriteFailed(e)) => {
                    break (End::ServerFailed, Some(e));
                }
            }
            if up_done && down_done {
                break (End::Closed, None);
            }
        }
    };
    let bytes = Transferred {
        client_to_server: c2s.load(Ordering::Relaxed),
        server_to_client: s2c.load(Ordering::Relaxed),
    };
    if paused {
        return Copied::Paused(Paused {
            client,
            server,
            ended: Ended {
                client_to_server: up_done,
                server_to_client: down_done,
            },
            bytes,
        });
    }
    match end {
        End::Closed => {}
        End::ClientFailed => socket::reset(server),
        End::ServerFailed => socket::reset(client),
        End::Stopped => {
            socket::reset(client);
            socket::reset(server);
        }
    }
    Copied::Finished(CopyOutcome { bytes, end, error })
}

/// One direction: `from` to `to` until EOF (then half-close `to`) or
/// failure, or until `pause` between two rounds, when nothing is in flight.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    count: &AtomicU64,
    pause: &CancellationToken,
) -> DirectionEnd {
    // Allocated only if a pipe cannot be had (descriptors short).
    let mut buffer = Vec::new();
    let end = loop {
        tokio::select! {
            biased;
            () = pause.cancelled() => return DirectionEnd::Paused,
            readable = from.readable() => if let Err(e) = readable {
                break DirectionEnd::ReadFailed(e);
            },
        }
        let step = match PIPES.take() {
            Ok(pipe) => splice_once(from, to, pipe).await,
            Err(error) => {
                if buffer.is_empty() {
                    tracing::debug!(%error, "no pipe for splice; copying through a buffer");
                    buffer.resize(BUFFER_SIZE, 0);
                }
                copy_once(from, to, &mut buffer).await
            }
        };
        match step {
            Step::Moved(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            Step::NotReady => {}
            Step::Ended(end) => break end,
        }
    };
    match end {
        DirectionEnd::Eof => match SockRef::from(to).shutdown(Shutdown::Write) {
            Ok(()) => DirectionEnd::Eof,
            // ENOTCONN: `to` was reset while this direction drained.
            Err(e) => DirectionEnd::WriteFailed(e),
        },
        other => other,
    }
}

/// What one read-then-write round did.
enum Step {
    /// Bytes read from `from` and all written to `to`.
    Moved(usize),
    /// The readiness was stale: nothing to read after all.
    NotReady,
    Ended(DirectionEnd),
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // The last descriptors are for accepting, dialling and the servers
        // that must answer; a buffer does the job of a pipe well enough.
        if limits::dial_over_budget(&write) {
            return Err(limits::budget_exhausted());
        }
        // Best effort: an unprivileged agent may be limited to the default.
        let capacity = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE))
            .or_else(|_| fcntl(&write, FcntlArg::F_GETPIPE_SZ))
            .map_or(64 * 1024, |n| usize::try_from(n).unwrap_or(64 * 1024));
        Ok(Self {
            read,
            write,
            capacity,
        })
    }
}

/// Empty pipes shared by all connections. A connection holds a pipe only
/// while bytes are in it (from one splice in to the last splice out), so
/// an idle or waiting connection costs its two sockets and nothing more;
/// before, every connection held two pipes (four descriptors) for life.
struct PipePool {
    idle: Mutex<Vec<Pipe>>,
}

/// Empty pipes kept for reuse; more are closed when given back. Enough for
/// the bursts of a busy node, few against any descriptor budget.
const IDLE_PIPES: usize = 32;

static PIPES: PipePool = PipePool {
    idle: Mutex::new(Vec::new()),
};

impl PipePool {
    fn take(&self) -> io::Result<Pipe> {
        match self.idle.lock().pop() {
            Some(pipe) => Ok(pipe),
            None => Pipe::new(),
        }
    }

    /// Only empty pipes come back: one with bytes left in it belongs to a
    /// failed connection and is closed.
    fn give(&self, pipe: Pipe) {
        let mut idle = self.idle.lock();
        if idle.len() < IDLE_PIPES {
            idle.push(pipe);
        }
    }
}

/// Moves what `from` has (up to a pipe's capacity) to `to` through `pipe`,
/// returning the pipe to the pool once it is empty again.
async fn splice_once(from: &TcpStream, to: &TcpStream, pipe: Pipe) -> Step {
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    // The pipe is empty, so EAGAIN can only mean the socket has nothing to
    // read, which is what try_io's readiness reset assumes.
    let filled = match from.try_io(Interest::READABLE, || {
        splice(from, None, &pipe.write, None, pipe.capacity, flags).map_err(io::Error::from)
    }) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            PIPES.give(pipe);
            return Step::NotReady;
        }
        Err(e) => {
            PIPES.give(pipe);
            return Step::Ended(DirectionEnd::ReadFailed(e));
        }
    };
    if filled == 0 {
        PIPES.give(pipe);
        return Step::Ended(DirectionEnd::Eof);
    }
    let mut left = filled;
    while left > 0 {
        if let Err(e) = to.writable().await {
            return Step::Ended(DirectionEnd::WriteFailed(e));
        }
        match to.try_io(Interest::WRITABLE, || {
            splice(&pipe.read, None, to, None, left, flags).map_err(io::Error::from)
        }) {
            Ok(n) => left -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Step::Ended(DirectionEnd::WriteFailed(e)),
        }
    }
    PIPES.give(pipe);
    Step::Moved(filled)
}

/// As [`splice_once`], through a user-space buffer.
async fn copy_once(from: &TcpStream, to: &TcpStream, buf: &mut [u8]) -> Step {
    let n = match from.try_read(buf) {
        Ok(0) => return Step::Ended(DirectionEnd::Eof),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::NotReady,
        Err(e) => return Step::Ended(DirectionEnd::ReadFailed(e)),
    };
    let mut written = 0;
    while written < n {
        if let Err(e) = to.writable().await {
            return Step::Ended(DirectionEnd::WriteFailed(e));
        }
        match to.try_write(&buf[written..n]) {
            Ok(m) => written += m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Step::Ended(DirectionEnd::WriteFailed(e)),
        }
    }
    Step::Moved(n)
}

#[cfg(test)]
mod tests;

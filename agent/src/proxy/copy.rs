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
//! user space; if no pipe can be had (descriptor limit), a buffered copy is
//! used instead. Counts are kept per direction and returned for metrics.

use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::socket;

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
    let c2s = AtomicU64::new(0);
    let s2c = AtomicU64::new(0);
    let (end, error) = {
        let up = pump(&client, &server, &c2s);
        let down = pump(&server, &client, &s2c);
        tokio::pin!(up, down, stop);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            let (from_client, result) = tokio::select! {
                r = &mut up, if !up_done => (true, r),
                r = &mut down, if !down_done => (false, r),
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
    match end {
        End::Closed => {}
        End::ClientFailed => socket::reset(server),
        End::ServerFailed => socket::reset(client),
        End::Stopped => {
            socket::reset(client);
            socket::reset(server);
        }
    }
    CopyOutcome {
        bytes: Transferred {
            client_to_server: c2s.load(Ordering::Relaxed),
            server_to_client: s2c.load(Ordering::Relaxed),
        },
        end,
        error,
    }
}

/// One direction: `from` to `to` until EOF (then half-close `to`) or failure.
async fn pump(from: &TcpStream, to: &TcpStream, count: &AtomicU64) -> DirectionEnd {
    let end = match Pipe::new() {
        Ok(pipe) => pump_spliced(from, to, count, &pipe).await,
        Err(error) => {
            tracing::debug!(%error, "no pipe for splice; copying through a buffer");
            pump_buffered(from, to, count).await
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

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
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

async fn pump_spliced(
    from: &TcpStream,
    to: &TcpStream,
    count: &AtomicU64,
    pipe: &Pipe,
) -> DirectionEnd {
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    loop {
        // The pipe is always empty here, so EAGAIN can only mean the socket
        // has nothing to read, which is what try_io's readiness reset assumes.
        let filled = loop {
            if let Err(e) = from.readable().await {
                return DirectionEnd::ReadFailed(e);
            }
            match from.try_io(Interest::READABLE, || {
                splice(from, None, &pipe.write, None, pipe.capacity, flags).map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return DirectionEnd::ReadFailed(e),
            }
        };
        if filled == 0 {
            return DirectionEnd::Eof;
        }
        let mut left = filled;
        while left > 0 {
            if let Err(e) = to.writable().await {
                return DirectionEnd::WriteFailed(e);
            }
            match to.try_io(Interest::WRITABLE, || {
                splice(&pipe.read, None, to, None, left, flags).map_err(io::Error::from)
            }) {
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return DirectionEnd::WriteFailed(e),
            }
        }
        count.fetch_add(filled as u64, Ordering::Relaxed);
    }
}

async fn pump_buffered(from: &TcpStream, to: &TcpStream, count: &AtomicU64) -> DirectionEnd {
    let mut buf = vec![0u8; BUFFER_SIZE];
    loop {
        let n = loop {
            if let Err(e) = from.readable().await {
                return DirectionEnd::ReadFailed(e);
            }
            match from.try_read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return DirectionEnd::ReadFailed(e),
            }
        };
        if n == 0 {
            return DirectionEnd::Eof;
        }
        let mut written = 0;
        while written < n {
            if let Err(e) = to.writable().await {
                return DirectionEnd::WriteFailed(e);
            }
            match to.try_write(&buf[written..n]) {
                Ok(m) => written += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return DirectionEnd::WriteFailed(e),
            }
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;

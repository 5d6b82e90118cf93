//! Moving plain-path connections, both of their sockets, from the agent
//! that handed its listeners over to its successor, over `adopt.sock` in
//! the run directory.
//!
//! The successor binds the socket before it takes the listeners, so it is
//! there when the predecessor learns it was replaced. The predecessor pauses
//! each spliced pair with nothing in flight (`proxy::copy::movable`) and
//! sends it here; whatever the peers send meanwhile waits in the kernel
//! socket buffers, which move with the descriptors.
//!
//! Wire, one connection per moved pair: the predecessor sends one message,
//! `MOVE 1 <json of MovedConnection>`, with the client's and the server's
//! descriptors attached; the successor answers `OK\n` and only then starts
//! copying. The predecessor drops its descriptors on `OK` and otherwise
//! keeps carrying the pair itself, so a pair is never carried by both or by
//! neither.

use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{HandoverError, fd_passing};

/// The socket's name in the run directory.
pub const SOCKET_NAME: &str = "adopt.sock";
const VERB: &str = "MOVE 1 ";
const CONFIRM: &str = "OK";
/// How long the predecessor looks for the successor's socket, and waits for
/// its answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the successor needs to carry on a moved connection as if it had
/// accepted it: where it came from and went, and where the copy stood.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedConnection {
    /// The listener that accepted it: `outbound` or `inbound_plain`.
    pub listener: String,
    pub client: SocketAddr,
    pub orig_dst: SocketAddr,
    /// The address the server socket is connected to.
    pub target: SocketAddr,
    pub client_to_server_bytes: u64,
    pub server_to_client_bytes: u64,
    /// Directions whose EOF was already passed on as a half-close.
    pub client_to_server_ended: bool,
    pub server_to_client_ended: bool,
    /// How long it has been open, for its duration in the access log.
    pub age_ms: u64,
}

/// A moved connection as received: its description and both sockets.
#[derive(Debug)]
pub struct Adopted {
    pub connection: MovedConnection,
    pub client: TcpStream,
    pub server: TcpStream,
}

/// Sends one pair to the successor in `dir`. `Ok` means the successor
/// carries it now; on any error it is still the caller's.
pub async fn send(
    dir: &Path,
    connection: &MovedConnection,
    client: &TcpStream,
    server: &TcpStream,
) -> Result<(), HandoverError> {
    let path = dir.join(SOCKET_NAME);
    let payload = serde_json::to_vec(connection)
        .map_err(|e| HandoverError::Protocol(e.to_string()))
        .map(|json| [VERB.as_bytes(), &json].concat())?;
    let (client, server) = (dup(client, &path)?, dup(server, &path)?);
    tokio::task::spawn_blocking(move || send_blocking(&path, &payload, &client, &server))
        .await
        .map_err(|e| HandoverError::Task(e.to_string()))?
}

fn dup(stream: &TcpStream, path: &Path) -> Result<OwnedFd, HandoverError> {
    stream
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| HandoverError::Io {
            what: "duplicating a connection for",
            path: path.to_owned(),
            source,
        })
}

fn send_blocking(
    path: &Path,
    payload: &[u8],
    client: &OwnedFd,
    server: &OwnedFd,
) -> Result<(), HandoverError> {
    let io_error = |what| {
        let path = path.to_owned();
        move |source| HandoverError::Io { what, path, source }
    };
    // The successor binds the socket just before it takes the listeners;
    // a moment of retrying covers a predecessor that hears of it first.
    let deadline = Instant::now() + PEER_TIMEOUT;
    let stream = loop {
        match UnixStream::connect(path) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() < deadline && retryable(&e) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(io_error("connecting to")(e)),
        }
    };
    stream
        .set_read_timeout(Some(PEER_TIMEOUT))
        .map_err(io_error("configuring"))?;
    fd_passing::send(&stream, payload, &[client.as_fd(), server.as_fd()])
        .map_err(io_error("sending to"))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(io_error("waiting for"))?;
    if line.trim() == CONFIRM {
        Ok(())
    } else {
        Err(HandoverError::Protocol(line))
    }
}

fn retryable(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}

/// The successor's end: bound before the listeners are taken.
#[derive(Debug)]
pub struct AdoptListener {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
}

impl AdoptListener {
    /// Binds `adopt.sock` in `dir`, replacing a stale one (root only).
    pub fn bind(dir: &Path) -> Result<Self, HandoverError> {
        let path = dir.join(SOCKET_NAME);
        let listener = super::bind_socket(&path)?;
        Ok(Self { listener, path })
    }

    /// Receives moved connections into `adopted` until `stop`.
    pub async fn serve(self, adopted: mpsc::UnboundedSender<Adopted>, stop: CancellationToken) {
        let listener = match tokio::net::UnixListener::from_std(self.listener) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, path = %self.path.display(), "cannot take moved connections");
                return;
            }
        };
        while let Some(stream) = super::next_peer(&listener, "adopt", &stop).await {
            let adopted = adopted.clone();
            // One task per pair: a slow or broken predecessor holds up only itself.
            tokio::spawn(async move {
                let received = tokio::task::spawn_blocking(move || {
                    receive(&super::blocking(stream)?, &adopted)
                })
                .await;
                match received {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::warn!(%error, "a moved connection was not taken"),
                    Err(error) => tracing::warn!(%error, "adopt task failed"),
                }
            });
        }
    }
}

/// Takes one pair: parse, confirm, then hand it to the proxies. A pair that
/// cannot be confirmed is dropped here, closing only these descriptors; the
/// predecessor still carries it.
fn receive(stream: &UnixStream, adopted: &mpsc::UnboundedSender<Adopted>) -> io::Result<()> {
    stream.set_read_timeout(Some(PEER_TIMEOUT))?;
    let (payload, fds) = fd_passing::receive(stream)?;
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let json = payload.strip_prefix(VERB.as_bytes()).ok_or_else(|| {
        invalid(format!(
            "not a moved connection: {:?}",
            String::from_utf8_lossy(&payload)
        ))
    })?;
    let connection: MovedConnection =
        serde_json::from_slice(json).map_err(|e| invalid(e.to_string()))?;
    let [client, server]: [OwnedFd; 2] = fds
        .try_into()
        .map_err(|fds: Vec<OwnedFd>| invalid(format!("{} descriptors, not 2", fds.len())))?;
    let tokio_stream = |fd: OwnedFd| {
        let std = std::net::TcpStream::from(fd);
        std.set_nonblocking(true)?;
        TcpStream::from_std(std)
    };
    let (client, server) = (tokio_stream(client)?, tokio_stream(server)?);
    writeln!(&*stream, "{CONFIRM}")?;
    let _ = adopted.send(Adopted {
        connection,
        client,
        server,
    });
    Ok(())
}

#[cfg(test)]
mod tests;

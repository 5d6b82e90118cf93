//! Live handover of the listening sockets from the agent serving a node to
//! the agent replacing it, over `handover.sock` in the run directory.
//!
//! The successor first only looks for a predecessor ([`Predecessor::find`]);
//! it loads its state and certificates while the predecessor keeps serving,
//! and asks for the sockets once it is ready ([`Predecessor::take`]). The
//! predecessor sends every listener with its role (SCM_RIGHTS, see
//! `fd_passing`), the successor confirms that it holds them, and only then
//! does the predecessor stop accepting. For that moment both processes hold
//! the same kernel sockets, so a connection waiting in an accept queue is
//! taken by one of them and no SYN ever finds a port closed. The predecessor
//! keeps every connection it carries until it ends (see `app`).
//!
//! Wire: the successor writes `TAKE 1\n`; the predecessor answers with one
//! message whose bytes are the roles, space-separated and in the order of
//! the descriptors attached; the successor writes `OK\n`.
//!
//! Then the predecessor moves its plain-path connections, both sockets of
//! each, to the successor (`connections`); HBONE tunnels, whose TLS and
//! HTTP/2 state lives in the process, stay with it until they end.

pub mod connections;
mod fd_passing;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The socket's name in the run directory.
pub const SOCKET_NAME: &str = "handover.sock";
const REQUEST: &str = "TAKE 1";
const CONFIRM: &str = "OK";
/// A peer that says nothing this long is not a successor.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a listening socket is for; its name travels on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Outbound,
    InboundPlain,
    Hbone,
    Metrics,
    Readiness,
    Admin,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Outbound,
        Role::InboundPlain,
        Role::Hbone,
        Role::Metrics,
        Role::Readiness,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Outbound => "outbound",
            Role::InboundPlain => "inbound_plain",
            Role::Hbone => "hbone",
            Role::Metrics => "metrics",
            Role::Readiness => "readiness",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the running agent answered {0:?}, not a handover")]
    Protocol(String),
    #[error("no {0} listener was handed over")]
    Missing(Role),
    #[error("the handover task failed: {0}")]
    Task(String),
}

/// The listening sockets of one agent, by role.
#[derive(Debug, Default)]
pub struct Listeners(BTreeMap<Role, std::net::TcpListener>);

impl Listeners {
    pub fn insert(&mut self, role: Role, listener: std::net::TcpListener) {
        self.0.insert(role, listener);
    }

    /// Moves one listener out, ready for tokio.
    pub fn take(&mut self, role: Role) -> Result<tokio::net::TcpListener, HandoverError> {
        let listener = self.0.remove(&role).ok_or(HandoverError::Missing(role))?;
        let io_error = |source| HandoverError::Io {
            what: "registering the listener",
            path: PathBuf::from(role.as_str()),
            source,
        };
        listener.set_nonblocking(true).map_err(io_error)?;
        tokio::net::TcpListener::from_std(listener).map_err(io_error)
    }

    /// A second descriptor for one listener, ready for tokio; the set keeps
    /// the first (so it is still handed over).
    pub fn duplicate(&self, role: Role) -> Result<tokio::net::TcpListener, HandoverError> {
        let io_error = |source| HandoverError::Io {
            what: "duplicating the listener",
            path: PathBuf::from(role.as_str()),
            source,
        };
        let listener = self.0.get(&role).ok_or(HandoverError::Missing(role))?;
        let copy = listener.try_clone().map_err(io_error)?;
        copy.set_nonblocking(true).map_err(io_error)?;
        tokio::net::TcpListener::from_std(copy).map_err(io_error)
    }

    /// Second descriptors for the same sockets: what the handover server
    /// keeps to give away while the originals serve.
    pub fn try_clone(&self) -> io::Result<Self> {
        let mut out = Self::default();
        for (role, listener) in &self.0 {
            out.insert(*role, listener.try_clone()?);
        }
        Ok(out)
    }

    pub fn roles(&self) -> impl Iterator<Item = Role> + '_ {
        self.0.keys().copied()
    }
}

/// An agent that serves this node now, found in the run directory.
#[derive(Debug)]
pub struct Predecessor {
    path: PathBuf,
    /// The roles this agent cannot serve without.
    required: Vec<Role>,
}

impl Predecessor {
    /// Whether an agent answers on `dir`'s handover socket. A socket file
    /// left by a crashed agent refuses the connection: `None`, start afresh.
    /// A handover is only confirmed if it brings every role of `required`.
    pub fn find(dir: &Path, required: &[Role]) -> Option<Self> {
        let path = dir.join(SOCKET_NAME);
        // Connecting and hanging up is harmless: the server waits for a request.
        UnixStream::connect(&path).ok().map(|_| Self {
            path,
            required: required.to_vec(),
        })
    }

    /// Asks for the listeners; once this returns they are ours and the
    /// predecessor no longer accepts.
    pub async fn take(self) -> Result<Listeners, HandoverError> {
        tokio::task::spawn_blocking(move || self.take_blocking())
            .await
            .map_err(|e| HandoverError::Task(e.to_string()))?
    }

    fn take_blocking(&self) -> Result<Listeners, HandoverError> {
        let io_error = |what| {
            let path = self.path.clone();
            move |source| HandoverError::Io { what, path, source }
        };
        let mut stream = UnixStream::connect(&self.path).map_err(io_error("connecting to"))?;
        stream
            .set_read_timeout(Some(PEER_TIMEOUT))
            .map_err(io_error("configuring"))?;
        writeln!(stream, "{REQUEST}").map_err(io_error("writing to"))?;
        let (payload, fds) = fd_passing::receive(&stream).map_err(io_error("receiving from"))?;
        let text = String::from_utf8_lossy(&payload).into_owned();
        let roles: Vec<&str> = text.split_whitespace().collect();
        if roles.len() != fds.len() {
            return Err(HandoverError::Protocol(format!(
                "{text} with {} descriptors",
                fds.len()
            )));
        }
        let mut listeners = Listeners::default();
        for (name, fd) in roles.into_iter().zip(fds) {
            let role = Role::parse(name).ok_or_else(|| HandoverError::Protocol(text.clone()))?;
            listeners.insert(role, std::net::TcpListener::from(fd));
        }
        // Without every socket this agent cannot serve: do not confirm, so
        // the predecessor keeps serving.
        if let Some(missing) = self.required.iter().find(|r| !listeners.0.contains_key(r)) {
            return Err(HandoverError::Missing(*missing));
        }
        writeln!(stream, "{CONFIRM}").map_err(io_error("confirming to"))?;
        Ok(listeners)
    }
}

/// Serves the next agent on `dir`: the first that asks and confirms gets
/// `listeners`, `handed_over` is cancelled, and serving ends. Ends without
/// handing over when `stop` is cancelled.
pub async fn serve(
    dir: PathBuf,
    listeners: Listeners,
    handed_over: CancellationToken,
    stop: CancellationToken,
) -> Result<(), HandoverError> {
    let listener = bind(&dir)?;
    let path = dir.join(SOCKET_NAME);
    let listener =
        tokio::net::UnixListener::from_std(listener).map_err(|source| HandoverError::Io {
            what: "registering",
            path: path.clone(),
            source,
        })?;
    tracing::info!(path = %path.display(), "handover socket ready");
    let listeners = std::sync::Arc::new(listeners);
    while let Some(stream) = next_peer(&listener, "handover", &stop).await {
        let listeners = listeners.clone();
        let result = tokio::task::spawn_blocking(move || {
            let stream = blocking(stream)?;
            give(&stream, &listeners)
        })
        .await;
        match result {
            Ok(Ok(true)) => {
                tracing::info!("listeners handed over to the new agent");
                handed_over.cancel();
                return Ok(());
            }
            // A probe from `find`, or a successor that went away.
            Ok(Ok(false)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "handover failed; still serving"),
            Err(error) => tracing::warn!(%error, "handover task failed; still serving"),
        }
    }
    Ok(())
}

/// The next peer on `listener`, or `None` once `stop` is cancelled. A
/// failed accept (descriptors short) is retried after a pause.
async fn next_peer(
    listener: &tokio::net::UnixListener,
    what: &'static str,
    stop: &CancellationToken,
) -> Option<tokio::net::UnixStream> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => return Some(stream),
                Err(error) => {
                    tracing::warn!(%error, socket = what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// `stream` for the blocking pool: the exchanges on these sockets are a few
/// short messages, with timeouts set per read.
fn blocking(stream: tokio::net::UnixStream) -> io::Result<UnixStream> {
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Answers one connection; true once the successor confirmed.
fn give(stream: &UnixStream, listeners: &Listeners) -> io::Result<bool> {
    stream.set_read_timeout(Some(PEER_TIMEOUT))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 || line.trim() != REQUEST {
        return Ok(false);
    }
    let roles: Vec<&str> = listeners.roles().map(Role::as_str).collect();
    let fds: Vec<BorrowedFd<'_>> = listeners.0.values().map(AsFd::as_fd).collect();
    fd_passing::send(stream, roles.join(" ").as_bytes(), &fds)?;
    line.clear();
    reader.read_line(&mut line)?;
    Ok(line.trim() == CONFIRM)
}

/// Binds the handover socket, replacing a stale one; only root (the
/// directory's owner) may connect.
fn bind(dir: &Path) -> Result<UnixListener, HandoverError> {
    bind_socket(&dir.join(SOCKET_NAME))
}

/// Binds a non-blocking Unix listener at `path`, creating its directory and
/// replacing a stale socket; mode 0600.
fn bind_socket(path: &Path) -> Result<UnixListener, HandoverError> {
    let io_error = |what| {
        let path = path.to_owned();
        move |source| HandoverError::Io { what, path, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_error("creating the directory of"))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("removing the old")(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_error("binding"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_error("restricting"))?;
    listener
        .set_nonblocking(true)
        .map_err(io_error("configuring"))?;
    Ok(listener)
}

#[cfg(test)]
mod tests;

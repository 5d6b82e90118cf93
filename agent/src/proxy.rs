//! The agent's TCP proxy for captured connections.
//!
//! - `outbound`: the 15001 listener. Connections leaving enrolled local pods;
//!   mesh destinations are handed to a [`outbound::MeshForwarder`] (HBONE),
//!   the rest are carried as plain TCP.
//! - `inbound_plain`: the 15006 listener. Plaintext connections from outside
//!   the mesh to enrolled local pods, admitted by an
//!   [`inbound_plain::InboundPolicy`] (PeerAuthentication, authorization).
//! - `copy`: byte copying with half-close and reset semantics.
//! - `mesh_outbound`: the [`outbound::MeshForwarder`] over HBONE (and in
//!   process for same-node destinations).
//! - `inbound_hbone`: the 15008 handler: target check, authorization, dial.
//! - `admission`: the 15006 [`inbound_plain::InboundPolicy`]:
//!   PeerAuthentication and authorization without a peer identity.
//! - `moving`: plain-path pairs moving to the agent that took over the
//!   listeners, and taken in from the one that handed them over.
//!
//! Servers take a bound listener and a shutdown token ([`serve`]); each
//! finished connection is reported once to a [`ConnectionObserver`], and
//! the connection's metrics record gets its bytes and outcome from
//! [`Forwarded::account`] (the access log line is written when the record drops).

pub mod admission;
pub mod copy;
pub mod inbound_hbone;
pub mod inbound_plain;
pub mod mesh_outbound;
pub mod moving;
pub mod outbound;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use copy::{CopyOutcome, End, Transferred};

use crate::handover::connections::Adopted;
use crate::limits;
use crate::socket::{ClientAddr, OrigDst};
use crate::state::Workload;

/// Which listener took the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    InboundPlain,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::InboundPlain => "inbound_plain",
        }
    }
}

/// How a proxied connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Both directions closed normally.
    Closed,
    /// The client side failed; the server was reset.
    ClientFailed,
    /// The server side failed; the client was reset.
    ServerFailed,
    /// The destination could not be reached; the client was reset.
    ConnectFailed,
    /// Policy or state refused the connection, or a later change stopped it;
    /// the client was reset.
    Denied,
    /// A tunnelled connection ended with an error that neither end owns
    /// (the inbound side of HBONE sees one copy error for both).
    Failed,
    /// Both sockets moved to the agent that took over; it carries the rest.
    Moved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::ClientFailed => "client_failed",
            Self::ServerFailed => "server_failed",
            Self::ConnectFailed => "connect_failed",
            Self::Denied => "denied",
            Self::Failed => "failed",
            Self::Moved => "moved",
        }
    }
}

impl From<End> for Status {
    fn from(end: End) -> Self {
        match end {
            End::Closed => Self::Closed,
            End::ClientFailed => Self::ClientFailed,
            End::ServerFailed => Self::ServerFailed,
            End::Stopped => Self::Denied,
        }
    }
}

/// The result of carrying one connection, whoever carried it (the plain
/// path here, or HBONE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forwarded {
    pub bytes: Transferred,
    pub status: Status,
    /// Why it failed or was refused, for the log.
    pub reason: Option<String>,
}

impl Forwarded {
    pub fn refused(status: Status, reason: impl Into<String>) -> Self {
        Self {
            bytes: Transferred::default(),
            status,
            reason: Some(reason.into()),
        }
    }
}

impl Forwarded {
    /// Counts the bytes in `record` and gives it the outcome for the access log.
    pub fn account(&self, record: &crate::metrics::ConnectionRecord) {
        record.record_received(self.bytes.client_to_server);
        record.record_sent(self.bytes.server_to_client);
        record.set_outcome(self.status.as_str(), self.reason.as_deref());
    }
}

impl From<CopyOutcome> for Forwarded {
    fn from(outcome: CopyOutcome) -> Self {
        Self {
            bytes: outcome.bytes,
            status: outcome.end.into(),
            reason: outcome.error.map(|e| e.to_string()),
        }
    }
}

/// Everything known about a finished connection.
#[derive(Clone, Debug)]
pub struct ConnectionRecord {
    pub direction: Direction,
    pub client: ClientAddr,
    pub orig_dst: OrigDst,
    /// Where the agent sent it (a service VIP resolves to an endpoint).
    pub target: Option<SocketAddr>,
    pub source: Option<Arc<Workload>>,
    pub destination: Option<Arc<Workload>>,
    /// Carried through the mesh (HBONE) rather than as plain TCP.
    pub mesh: bool,
    pub result: Forwarded,
    pub duration: Duration,
}

impl ConnectionRecord {
    /// A connection just taken from `client` to `orig_dst`, before anything
    /// about it is known or decided.
    pub fn new(direction: Direction, client: ClientAddr, orig_dst: OrigDst) -> Self {
        Self {
            direction,
            client,
            orig_dst,
            target: None,
            source: None,
            destination: None,
            mesh: false,
            result: Forwarded::refused(Status::Denied, "not handled"),
            duration: Duration::ZERO,
        }
    }
}

/// Told about every connection when it ends: the seam for metrics.
pub trait ConnectionObserver: Send + Sync + 'static {
    fn connection_closed(&self, record: &ConnectionRecord);
}

/// Completes when either token is cancelled: a connection stops for a
/// policy change or for the drain deadline, whichever comes first.
pub async fn either_cancelled(a: CancellationToken, b: CancellationToken) {
    tokio::select! {
        () = a.cancelled() => {}
        () = b.cancelled() => {}
    }
}

/// How long handlers get to reset their sockets once told to, before their
/// tasks are aborted.
const CUT_GRACE: Duration = Duration::from_secs(1);

/// Accepts on `listener` and runs `handle` for each connection until
/// `shutdown`; then stops accepting, gives open connections `drain` to
/// finish, and cuts the rest. `handle` gets the cut token with each
/// connection and must reset both ends when it fires, so an application
/// never takes a cut connection for a complete one. `name` labels
/// refusals: a connection past the descriptor budget is reset at once and
/// counted (see [`limits`]). Connections moved in from a predecessor come
/// on `adopted`, are run by `adopt`, and are drained and cut like the rest.
///
/// [`limits`]: crate::limits
pub async fn serve<H, F, A, G>(
    listener: TcpListener,
    name: &'static str,
    shutdown: CancellationToken,
    drain: Duration,
    handle: H,
    mut adopted: mpsc::UnboundedReceiver<Adopted>,
    adopt: A,
) where
    H: Fn(TcpStream, SocketAddr, CancellationToken) -> F,
    F: Future<Output = ()> + Send + 'static,
    A: Fn(Adopted, CancellationToken) -> G,
    G: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    let cut = CancellationToken::new();
    let mut adopting = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            pair = adopted.recv(), if adopting => match pair {
                Some(pair) => {
                    connections.spawn(adopt(pair, cut.clone()));
                }
                None => adopting = false,
            },
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Some(stream) = limits::admit_accepted(stream, name) {
                        connections.spawn(handle(stream, peer, cut.clone()));
                    }
                }
                Err(error) => limits::accept_failed(&listener, name, error).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    // Taken in after this agent stopped serving: nobody will carry them.
    adopted.close();
    while let Ok(pair) = adopted.try_recv() {
        crate::socket::reset(pair.client);
        crate::socket::reset(pair.server);
    }
    let open = connections.len();
    if open > 0 {
        tracing::info!(open, "draining connections");
        let drained = tokio::time::timeout(drain, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::info!(cut = connections.len(), "drain deadline passed; resetting");
            cut.cancel();
            let _ = tokio::time::timeout(CUT_GRACE, async {
                while connections.join_next().await.is_some() {}
            })
            .await;
        }
    }
    connections.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn shutdown_stops_accepting_and_drain_deadline_resets_stragglers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let (_, adopted) = mpsc::unbounded_channel();
        let server = tokio::spawn(serve(
            listener,
            "test",
            shutdown.clone(),
            Duration::from_millis(200),
            |stream, _, cut: CancellationToken| async move {
                // Holds the connection open until cut, then resets it.
                cut.cancelled().await;
                crate::socket::reset(stream);
            },
            adopted,
            |_, _| async {},
        ));
        let mut held = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), server)
            .await
            .expect("serve returns after the drain deadline")
            .unwrap();
        // A cut connection is a reset, never an EOF that looks complete.
        let mut buf = [0u8; 1];
        let error = held.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
        assert!(TcpStream::connect(addr).await.is_err());
    }
}

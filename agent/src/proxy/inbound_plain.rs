//! The inbound plaintext listener (15006): connections from outside the mesh
//! to the node's enrolled pods. The accepted socket's local address names the
//! pod; an [`InboundPolicy`] decides whether the pod may take plaintext from
//! this client (PeerAuthentication STRICT refuses, PERMISSIVE authorizes with
//! no principal, DISABLE lets through); admitted connections are dialled from
//! the client's own address so the pod sees the real client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::moving::{self, Handoff, PairInfo, Resume};
use super::{ConnectionObserver, ConnectionRecord, Direction, Forwarded, Status};
use crate::handover::connections::Adopted;
use crate::limits::{self, pending::PendingPermit};
use crate::socket::{self, ClientAddr, OrigDst, SocketFactory};

/// The listener name in refusal metrics.
const LISTENER: &str = "inbound_plain";
use crate::state::{Snapshot, StateStore, Workload};

/// A plaintext connection asking to reach a local pod.
#[derive(Clone, Copy, Debug)]
pub struct InboundRequest<'a> {
    pub snapshot: &'a Snapshot,
    pub client: ClientAddr,
    /// The client's workload, when the client is a pod the state knows.
    pub source: Option<&'a Arc<Workload>>,
    pub destination: &'a Arc<Workload>,
    pub orig_dst: OrigDst,
}

pub enum Admission {
    Allow,
    /// Allowed, and followed by the policy while it is open: it may be
    /// closed early, and is told how it ended.
    Follow(Box<dyn Admitted>),
    /// Allowed to the L7 path, where each request is decided.
    Http {
        admitted: Box<dyn Admitted>,
        session: Box<crate::l7::Session>,
    },
    Deny {
        reason: String,
    },
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Allow => f.write_str("Allow"),
            Self::Follow(_) => f.write_str("Follow"),
            Self::Http { .. } => f.write_str("Http"),
            Self::Deny { reason } => f.debug_struct("Deny").field("reason", reason).finish(),
        }
    }
}

/// An admitted connection as its policy follows it (metrics, re-authorization).
pub trait Admitted: Send {
    /// Completes when the connection must be closed early; both ends are reset.
    fn closed_by_policy(&self) -> CancellationToken;
    /// The connection ended (or the pod could not be reached).
    fn finished(self: Box<Self>, result: &Forwarded);
}

/// Decides plaintext admission: the seam where PeerAuthentication and L4
/// authorization plug in.
pub trait InboundPolicy: Send + Sync + 'static {
    /// Called first, for every accepted connection, before anything is
    /// looked up: a permit held until the pod answered, or the bound on
    /// such connections that refuses this one. No bound by default.
    fn begin(&self, client: SocketAddr) -> Result<Option<PendingPermit>, limits::Refusal> {
        let _ = client;
        Ok(None)
    }

    fn admit(&self, request: &InboundRequest<'_>) -> Admission;
}

/// Admits everything: PERMISSIVE with no authorization policy, the behaviour
/// until the policy engine is wired in.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl InboundPolicy for AllowAll {
    fn admit(&self, _: &InboundRequest<'_>) -> Admission {
        Admission::Allow
    }
}

pub struct InboundPlainProxy {
    state: StateStore,
    node: String,
    factory: SocketFactory,
    observer: Arc<dyn ConnectionObserver>,
    policy: Arc<dyn InboundPolicy>,
    handoff: Handoff,
}

impl InboundPlainProxy {
    pub fn new(
        state: StateStore,
        node: String,
        factory: SocketFactory,
        observer: Arc<dyn ConnectionObserver>,
        policy: Arc<dyn InboundPolicy>,
        handoff: Handoff,
    ) -> Arc<Self> {
        Arc::new(Self {
            state,
            node,
            factory,
            observer,
            policy,
            handoff,
        })
    }

    /// Serves `listener`, and the plain connections a predecessor moves in
    /// on `adopted`, until `shutdown` (see [`super::serve`]).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        adopted: mpsc::UnboundedReceiver<Adopted>,
        shutdown: CancellationToken,
        drain: Duration,
    ) {
        let own = listener.local_addr().ok();
        let adopter = self.clone();
        super::serve(
            listener,
            LISTENER,
            shutdown,
            drain,
            move |stream, peer, cut| self.clone().handle(stream, peer, own, cut),
            adopted,
            move |pair, cut| adopter.clone().adopt(pair, cut),
        )
        .await;
    }

    /// Carries on a plain connection the previous agent moved here. It is
    /// admitted again under this agent's policy, so a later policy change
    /// closes it and its metrics are this agent's; the previous agent did
    /// not sniff it for HTTP, and it is not sniffed mid-stream now.
    /// The workloads at both ends (the destination only if it is a pod of
    /// this node) and the connection's record.
    fn ends<'s>(
        &self,
        snapshot: &'s Snapshot,
        client_addr: ClientAddr,
        orig_dst: OrigDst,
    ) -> (
        Option<&'s Arc<Workload>>,
        Option<&'s Arc<Workload>>,
        ConnectionRecord,
    ) {
        let source = snapshot.workload_by_ip(client_addr.0.ip());
        let destination = snapshot
            .workload_by_ip(orig_dst.0.ip())
            .filter(|w| w.node == self.node);
        let record = ConnectionRecord {
            target: Some(orig_dst.0),
            source: source.cloned(),
            destination: destination.cloned(),
            ..ConnectionRecord::new(Direction::InboundPlain, client_addr, orig_dst)
        };
        (source, destination, record)
    }

    async fn adopt(self: Arc<Self>, pair: Adopted, cut: CancellationToken) {
        let moved = &pair.connection;
        let info = PairInfo::of(moved, Direction::InboundPlain);
        let (client_addr, orig_dst) = (ClientAddr(moved.client), OrigDst(moved.orig_dst));
        let snapshot = self.state.current();
        let (source, destination, mut record) = self.ends(&snapshot, client_addr, orig_dst);
        let admission = match destination {
            Some(destination) if snapshot.is_synced() => self.policy.admit(&InboundRequest {
                snapshot: &snapshot,
                client: client_addr,
                source,
                destination,
                orig_dst,
            }),
            _ => Admission::Deny {
                reason: "moved in for a pod this agent does not serve".into(),
            },
        };
        let (admitted, stop) = match admission {
            Admission::Allow => (None, CancellationToken::new()),
            Admission::Follow(admitted) => {
                let stop = admitted.closed_by_policy();
                (Some(admitted), stop)
            }
            Admission::Deny { reason } => {
                socket::reset(pair.client);
                socket::reset(pair.server);
                record.result = Forwarded::refused(Status::Denied, reason);
                self.observer.connection_closed(&record);
                return;
            }
            Admission::Http { admitted, .. } => {
                socket::reset(pair.client);
                socket::reset(pair.server);
                record.result = Forwarded::refused(
                    Status::Denied,
                    "moved in, but now needs per-request HTTP policy",
                );
                admitted.finished(&record.result);
                self.observer.connection_closed(&record);
                return;
            }
        };
        tracing::debug!(src = %moved.client, dst = %moved.orig_dst, "carrying a connection moved from the previous agent");
        let stop = super::either_cancelled(stop, cut);
        let resume = Resume::of(moved);
        record.result =
            moving::carry(&self.handoff, info, pair.client, pair.server, stop, resume).await;
        if let Some(admitted) = admitted {
            admitted.finished(&record.result);
        }
        record.duration = info.started.elapsed();
        self.observer.connection_closed(&record);
    }

    async fn handle(
        self: Arc<Self>,
        client: TcpStream,
        peer: SocketAddr,
        own: Option<SocketAddr>,
        cut: CancellationToken,
    ) {
        let started = Instant::now();
        let pending = match self.policy.begin(peer) {
            Ok(permit) => permit,
            Err(refusal) => {
                limits::refused(LISTENER, refusal, Some(peer));
                socket::reset(client);
                return;
            }
        };
        let Ok(orig_dst) = OrigDst::of(&client) else {
            socket::reset(client);
            return;
        };
        if let Err(error) = self.factory.accepted(&client) {
            tracing::debug!(%error, "socket options on accepted connection");
        }
        let snapshot = self.state.current();
        let client_addr = ClientAddr(peer);
        let (source, destination, mut record) = self.ends(&snapshot, client_addr, orig_dst);
        let admission = match destination {
            _ if !snapshot.is_synced() => Admission::Deny {
                reason: "state not synced".into(),
            },
            // Only pods of this node are ours to serve; anything else would
            // be dialled back out and could loop.
            None => Admission::Deny {
                reason: "destination is not a pod of this node".into(),
            },
            _ if own == Some(orig_dst.0) => Admission::Deny {
                reason: "connection to the inbound listener itself".into(),
            },
            Some(destination) => self.policy.admit(&InboundRequest {
                snapshot: &snapshot,
                client: client_addr,
                source,
                destination,
                orig_dst,
            }),
        };
        let mut session = None;
        let (admitted, stop) = match admission {
            Admission::Deny { reason } => {
                socket::reset(client);
                record.result = Forwarded::refused(Status::Denied, reason);
                record.duration = started.elapsed();
                self.observer.connection_closed(&record);
                return;
            }
            Admission::Allow => (None, CancellationToken::new()),
            Admission::Follow(admitted) => {
                let stop = admitted.closed_by_policy();
                (Some(admitted), stop)
            }
            Admission::Http {
                admitted,
                session: s,
            } => {
                session = Some(s);
                (Some(admitted), CancellationToken::new())
            }
        };
        let dialled = self.factory.connect(orig_dst.0, Some(peer.ip())).await;
        // The pod answered (or not): the connection is no longer pending.
        drop(pending);
        let stop = super::either_cancelled(stop, cut);
        record.result = match (dialled, session) {
            (Ok(server), Some(session)) => session.serve(client, server, stop).await.forwarded(),
            (Ok(server), None) => {
                let info = PairInfo {
                    direction: Direction::InboundPlain,
                    client: peer,
                    orig_dst: orig_dst.0,
                    target: orig_dst.0,
                    started,
                };
                moving::carry(&self.handoff, info, client, server, stop, Resume::default()).await
            }
            (Err(error), _) => {
                socket::reset(client);
                Forwarded::refused(Status::ConnectFailed, error.to_string())
            }
        };
        if let Some(admitted) = admitted {
            admitted.finished(&record.result);
        }
        record.duration = started.elapsed();
        self.observer.connection_closed(&record);
    }
}

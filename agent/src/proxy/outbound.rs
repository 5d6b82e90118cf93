//! The outbound listener (15001): connections leaving enrolled local pods.
//!
//! The accepted socket's local address is where the pod was going. A service
//! VIP is resolved to a ready endpoint; a destination that is an enrolled
//! workload is in the mesh and goes to the [`MeshForwarder`] (HBONE to
//! `<pod ip>:15008`); anything else is dialled as plain TCP from the pod's own
//! address, so the server sees the real client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use tokio::sync::mpsc;

use super::moving::{self, Handoff, PairInfo, Resume};
use super::{ConnectionObserver, ConnectionRecord, Direction, Forwarded, Status};
use crate::handover::connections::Adopted;
use crate::socket::{self, ClientAddr, OrigDst, SocketFactory};
use crate::state::{Snapshot, StateStore, Workload};

/// A captured connection whose destination is in the mesh.
#[derive(Debug)]
pub struct MeshConnection {
    pub client: TcpStream,
    pub client_addr: ClientAddr,
    pub orig_dst: OrigDst,
    /// The enrolled local workload that opened the connection.
    pub source: Arc<Workload>,
    /// Pod address and port to reach (a VIP already resolved to an endpoint).
    pub target: SocketAddr,
    /// The workload at `target`, whose identity the tunnel must verify.
    pub destination: Arc<Workload>,
    /// Fires at the drain deadline: reset both ends.
    pub cut: CancellationToken,
}

/// Carries mesh connections (HBONE). It owns the client socket from here on:
/// it copies bytes, resets the client when the tunnel fails, and reports
/// what happened.
pub trait MeshForwarder: Send + Sync + 'static {
    fn forward(&self, conn: MeshConnection) -> BoxFuture<'static, Forwarded>;
}

/// Where a captured connection goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Route {
    /// To an enrolled workload: through the mesh.
    Mesh {
        target: SocketAddr,
        destination: Arc<Workload>,
    },
    /// Outside the mesh: plain TCP. `destination` is a known but unenrolled pod.
    Plain {
        target: SocketAddr,
        destination: Option<Arc<Workload>>,
    },
    /// A service VIP without a ready endpoint for the port.
    NoEndpoint,
}

/// Resolves the original destination against the state.
pub fn route(snapshot: &Snapshot, orig_dst: OrigDst) -> Route {
    let dst = orig_dst.0;
    let (target, destination) = if snapshot.service_by_vip(dst.ip()).is_some() {
        match snapshot.service_target(dst.ip(), dst.port()) {
            Some(t) => (t.addr, t.workload),
            None => return Route::NoEndpoint,
        }
    } else {
        (dst, snapshot.workload_by_ip(dst.ip()).cloned())
    };
    match destination {
        Some(w) if w.enrolled => Route::Mesh {
            target,
            destination: w,
        },
        destination => Route::Plain {
            target,
            destination,
        },
    }
}

/// The outbound proxy and what it needs.
pub struct OutboundProxy {
    state: StateStore,
    factory: SocketFactory,
    observer: Arc<dyn ConnectionObserver>,
    /// `None` until HBONE is wired in: mesh destinations then go plain, and
    /// the destination node's agent takes them on its inbound listener.
    mesh: Option<Arc<dyn MeshForwarder>>,
    handoff: Handoff,
}

impl OutboundProxy {
    pub fn new(
        state: StateStore,
        factory: SocketFactory,
        observer: Arc<dyn ConnectionObserver>,
        mesh: Option<Arc<dyn MeshForwarder>>,
        handoff: Handoff,
    ) -> Arc<Self> {
        Arc::new(Self {
            state,
            factory,
            observer,
            mesh,
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
        drain: std::time::Duration,
    ) {
        let own = listener.local_addr().ok();
        let adopter = self.clone();
        super::serve(
            listener,
            "outbound",
            shutdown,
            drain,
            move |stream, peer, cut| self.clone().handle(stream, peer, own, cut),
            adopted,
            move |pair, cut| adopter.clone().adopt(pair, cut),
        )
        .await;
    }

    /// Carries on a plain connection the previous agent moved here.
    async fn adopt(self: Arc<Self>, pair: Adopted, cut: CancellationToken) {
        let moved = &pair.connection;
        let info = PairInfo::of(moved, Direction::Outbound);
        let snapshot = self.state.current();
        let mut record = ConnectionRecord {
            target: Some(moved.target),
            source: snapshot.workload_by_ip(moved.client.ip()).cloned(),
            destination: snapshot.workload_by_ip(moved.target.ip()).cloned(),
            ..ConnectionRecord::new(
                Direction::Outbound,
                ClientAddr(moved.client),
                OrigDst(moved.orig_dst),
            )
        };
        tracing::debug!(src = %moved.client, dst = %moved.orig_dst, "carrying a connection moved from the previous agent");
        let resume = Resume::of(moved);
        record.result = moving::carry(
            &self.handoff,
            info,
            pair.client,
            pair.server,
            cut.cancelled_owned(),
            resume,
        )
        .await;
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
        let client_addr = ClientAddr(peer);
        let Ok(orig_dst) = OrigDst::of(&client) else {
            socket::reset(client);
            return;
        };
        if let Err(error) = self.factory.accepted(&client) {
            tracing::debug!(%error, "socket options on accepted connection");
        }
        let snapshot = self.state.current();
        let source = snapshot.workload_by_ip(peer.ip()).cloned();
        let mut record = ConnectionRecord {
            source: source.clone(),
            ..ConnectionRecord::new(Direction::Outbound, client_addr, orig_dst)
        };
        record.result = if !snapshot.is_synced() {
            socket::reset(client);
            Forwarded::refused(Status::Denied, "state not synced")
        } else if own.is_some_and(|own| own.port() == orig_dst.0.port())
            && snapshot.workload_by_ip(orig_dst.0.ip()).is_none()
        {
            // Someone dialled the listener itself: forwarding would loop.
            socket::reset(client);
            Forwarded::refused(Status::Denied, "connection to the outbound listener itself")
        } else {
            match (route(&snapshot, orig_dst), &self.mesh, source) {
                (Route::NoEndpoint, _, _) => {
                    socket::reset(client);
                    Forwarded::refused(Status::ConnectFailed, "service has no ready endpoint")
                }
                (
                    Route::Mesh {
                        target,
                        destination,
                    },
                    Some(mesh),
                    Some(source),
                ) => {
                    record.target = Some(target);
                    record.destination = Some(destination.clone());
                    record.mesh = true;
                    let conn = MeshConnection {
                        client,
                        client_addr,
                        orig_dst,
                        source,
                        target,
                        destination,
                        cut,
                    };
                    mesh.forward(conn).await
                }
                (
                    Route::Mesh {
                        target,
                        destination,
                    },
                    _,
                    _,
                ) => {
                    record.target = Some(target);
                    record.destination = Some(destination);
                    // Boxed, as the other arms: the task lives as long as the
                    // connection and is sized for its largest arm.
                    Box::pin(self.plain(client, orig_dst, peer, target, started, cut.clone())).await
                }
                (
                    Route::Plain {
                        target,
                        destination,
                    },
                    _,
                    _,
                ) => {
                    record.target = Some(target);
                    record.destination = destination;
                    Box::pin(self.plain(client, orig_dst, peer, target, started, cut.clone())).await
                }
            }
        };
        record.duration = started.elapsed();
        self.observer.connection_closed(&record);
    }

    /// Plain TCP from the client's own address to `target`.
    async fn plain(
        &self,
        client: TcpStream,
        orig_dst: OrigDst,
        peer: SocketAddr,
        target: SocketAddr,
        started: Instant,
        cut: CancellationToken,
    ) -> Forwarded {
        match self.factory.connect(target, Some(peer.ip())).await {
            Ok(server) => {
                let info = PairInfo {
                    direction: Direction::Outbound,
                    client: peer,
                    orig_dst: orig_dst.0,
                    target,
                    started,
                };
                let stop = cut.cancelled_owned();
                moving::carry(&self.handoff, info, client, server, stop, Resume::default()).await
            }
            Err(error) => {
                socket::reset(client);
                Forwarded::refused(Status::ConnectFailed, error.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests;

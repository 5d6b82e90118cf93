//! The inbound side of HBONE (15008): what the agent decides for a tunnel to
//! one of its pods once the HBONE server has authenticated the peer.
//!
//! For each CONNECT it checks that the target is the enrolled local pod that
//! was dialled (and a port a pod can serve), works out the client address it
//! can trust, authorizes the peer principal, namespace and address against the
//! snapshot in force, dials the pod from the client's address, and counts the
//! connection (reporter `destination`, `mutual_tls`). Admitted connections are
//! registered with the [`ConnectionTracker`] so a later policy can close them.
//!
//! The `forwarded` header is only believed when the address it names belongs
//! to a workload whose identity is the peer's certificate identity: a peer can
//! speak for its own pod, never for another. Otherwise the client address is
//! the tunnel's own TCP source, which the network, not the peer, vouches for
//! (the peer's node or pod address), and ipBlock rules see that address.
//!
//! Same-node connections come here too, without the network: the outbound
//! side calls [`InboundHbone::admit`] with the source workload's identity.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_ca::SpiffeId;

use crate::authz::Inbound;
use crate::authz::watch::{ConnectionTracker, Registration, TrackedConnection};
use crate::hbone::{
    ForwardedFor, HBONE_PORT, InboundHandler, InboundRequest, Refusal, Transfer, Upstream,
};
use crate::identity::CertificateSource;
use crate::identity::WorkloadCertificate;
use crate::l7::{L7, Route, SessionConn};
use crate::metrics::{self, ConnectionOpen, Metrics, Reporter, SecurityPolicy};
use crate::proxy::{Forwarded, Status, Transferred};
use crate::socket::SocketFactory;
use crate::state::{Snapshot, StateStore, Workload};

/// The inbound HBONE handler; one per agent, shared by the 15008 server and
/// the same-node path.
pub struct InboundHbone {
    state: StateStore,
    node: String,
    trust_domain: String,
    certs: Arc<dyn CertificateSource>,
    factory: SocketFactory,
    metrics: Arc<Metrics>,
    tracker: Arc<ConnectionTracker>,
    /// Requests decided one by one where HTTP rules apply (`None`: L4 only).
    l7: Option<Arc<L7>>,
}

impl std::fmt::Debug for InboundHbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundHbone")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// An admitted tunnel: counted while it lives, re-authorized on state changes.
#[derive(Debug)]
pub struct InboundConnection {
    pub record: metrics::ConnectionRecord,
    /// `None` on the L7 path: each request reads the policies in force, so
    /// the connection is not re-decided at L4.
    _registration: Option<Registration>,
}

impl InboundConnection {
    /// Counts the tunnel's bytes and how it ended.
    pub fn finish(self, result: &Forwarded) {
        result.account(&self.record);
    }
}

/// One request to reach a local pod, as the transport established it.
#[derive(Clone, Copy, Debug)]
pub struct Admit<'a> {
    /// The peer identity the transport proved (the TLS client certificate, or
    /// the source workload itself on the same-node path).
    pub peer: &'a SpiffeId,
    /// Where the tunnel came from on the network.
    pub peer_addr: SocketAddr,
    pub forwarded_for: Option<ForwardedFor>,
    /// The Service hostname the client dialled, if it dialled one (`forwarded: host=`).
    pub forwarded_host: Option<&'a str>,
    /// The pod address and port asked for.
    pub target: SocketAddr,
    /// The identity presented to the peer, when a handshake happened.
    pub presented: Option<&'a SpiffeId>,
}

impl InboundHbone {
    // Every collaborator is injected so tests can build the handler alone;
    // the L7 path is the eighth.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        state: StateStore,
        node: impl Into<String>,
        trust_domain: impl Into<String>,
        certs: Arc<dyn CertificateSource>,
        factory: SocketFactory,
        metrics: Arc<Metrics>,
        tracker: Arc<ConnectionTracker>,
        l7: Option<Arc<L7>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            state,
            node: node.into(),
            trust_domain: trust_domain.into(),
            certs,
            factory,
            metrics,
            tracker,
            l7,
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The enrolled workload of this node at `ip`, with its identity.
    fn local_pod(&self, snapshot: &Snapshot, ip: IpAddr) -> Option<(Arc<Workload>, SpiffeId)> {
        let w = snapshot
            .workload_by_ip(ip)
            .filter(|w| w.enrolled && w.node == self.node)?;
        let id = w.identity(&self.trust_domain).ok()?;
        Some((w.clone(), id))
    }

    /// The certificate of the local pod at `ip`, if it is one and has one.
    pub async fn local_certificate(&self, ip: IpAddr) -> Option<Arc<WorkloadCertificate>> {
        let snapshot = self.state.current();
        if !snapshot.is_synced() {
            return None;
        }
        let (_, id) = self.local_pod(&snapshot, ip)?;
        self.certs.certificate(&id).await
    }

    /// The client address authorization and the pod see, and its workload
    /// when the peer proved to be it (see the module doc).
    fn client(&self, snapshot: &Snapshot, req: &Admit<'_>) -> (SocketAddr, Option<Arc<Workload>>) {
        let speaks_for = |ip: IpAddr| {
            snapshot
                .workload_by_ip(ip)
                .filter(|w| {
                    w.identity(&self.trust_domain)
                        .is_ok_and(|id| id == *req.peer)
                })
                .cloned()
        };
        if let Some(f) = req.forwarded_for {
            if let Some(w) = speaks_for(f.ip) {
                return (SocketAddr::new(f.ip, f.port.unwrap_or(0)), Some(w));
            }
            tracing::info!(
                peer = %req.peer,
                peer_addr = %req.peer_addr,
                forwarded = %f.ip,
                "forwarded address is not the peer's workload; using the tunnel source"
            );
        }
        (req.peer_addr, speaks_for(req.peer_addr.ip()))
    }

    /// The pod whose address the tunnel comes from, when it is not the
    /// peer's: a workload only ever speaks for itself, so a certificate
    /// presented from another pod's address is a stolen or misused key.
    /// Agents (Ambit's and ztunnel) dial from the source pod's address, whose
    /// workload then is the peer's own; a peer dialling from a node address
    /// passes too, as node addresses are no workload's (host-network pods
    /// are not in the state).
    fn impersonates(&self, snapshot: &Snapshot, req: &Admit<'_>) -> Option<String> {
        let pod = snapshot.workload_by_ip(req.peer_addr.ip())?;
        let own = pod
            .identity(&self.trust_domain)
            .is_ok_and(|id| id == *req.peer);
        (!own).then(|| pod.qualified_name())
    }

    /// Checks, authorizes and dials one request; the whole inbound decision.
    pub async fn admit(&self, req: &Admit<'_>) -> Result<Upstream<InboundConnection>, Refusal> {
        let snapshot = self.state.current();
        let wrong_target = || Refusal::WrongTarget {
            target: req.target,
            dialled: SocketAddr::new(req.target.ip(), HBONE_PORT),
        };
        if !snapshot.is_synced() {
            return Err(Refusal::Unreachable(std::io::Error::other(
                "state not synced",
            )));
        }
        let (dst, dst_id) = self
            .local_pod(&snapshot, req.target.ip())
            .ok_or_else(wrong_target)?;
        if req.target.port() == 0 || req.target.port() == HBONE_PORT {
            return Err(wrong_target());
        }
        if req.presented.is_some_and(|p| *p != dst_id) {
            // The pod's identity changed since the handshake.
            return Err(wrong_target());
        }
        let (client, source) = self.client(&snapshot, req);
        let impostor = self.impersonates(&snapshot, req);
        let service = snapshot.inbound_service(req.target, req.forwarded_host);
        let record = self.metrics.open_connection(&ConnectionOpen {
            source_workload: source.as_deref(),
            source_identity: Some(req.peer),
            destination_workload: Some(&*dst),
            destination_identity: Some(&dst_id),
            destination_service: service.map(|s| &**s),
            security: SecurityPolicy::MutualTls,
            ..ConnectionOpen::new(Reporter::Destination, client, req.target)
        });
        if let Some(pod) = impostor {
            record.set_decision(
                metrics::Decision::Deny,
                "peer identity is not its pod's",
                None,
            );
            tracing::warn!(
                peer = %req.peer,
                peer_addr = %req.peer_addr,
                pod = %pod,
                "certificate presented from another pod's address"
            );
            return Err(Refusal::Denied {
                reason: format!("{} presented from the address of {pod}", req.peer),
            });
        }
        let decision = snapshot.authorize(&Inbound {
            src: client.ip(),
            peer: Some(req.peer),
            dst: req.target,
        });
        let mut session = None;
        match decision {
            Ok(d) => {
                let route = self
                    .l7
                    .as_ref()
                    .map_or(Route::L4, |l7| l7.route(&snapshot, &dst, req.target, &d));
                if let (Route::Http { .. }, Some(l7)) = (&route, &self.l7) {
                    let conn = SessionConn {
                        client,
                        peer: Some(req.peer.clone()),
                        dst: req.target,
                        labels: record.labels().clone(),
                    };
                    session = Some(l7.session(&route, conn, &d));
                    record.set_decision(
                        metrics::Decision::Allow,
                        "HTTP: decided per request",
                        None,
                    );
                }
                if session.is_none() {
                    record.record_authorization(&d);
                }
                tracing::debug!(
                    peer = %req.peer,
                    %client,
                    target = %req.target,
                    workload = %dst.qualified_name(),
                    decision = if d.allowed { "allow" } else { "deny" },
                    reason = d.reason.as_str(),
                    policy = d.policy.as_deref().unwrap_or("-"),
                    "inbound authorization"
                );
                if !d.allowed && session.is_none() {
                    return Err(Refusal::Denied {
                        reason: d.reason.as_str().to_owned(),
                    });
                }
            }
            Err(error) => {
                record.set_decision(metrics::Decision::Deny, "undecidable (fail closed)", None);
                return Err(Refusal::Denied {
                    reason: error.to_string(),
                });
            }
        }
        let stream = self
            .factory
            .connect(req.target, Some(client.ip()))
            .await
            .map_err(Refusal::Unreachable)?;
        let registration = session.is_none().then(|| {
            self.tracker.register(TrackedConnection {
                src: client,
                peer: Some(req.peer.clone()),
                dst: req.target,
            })
        });
        let close = registration.as_ref().map(Registration::close_token);
        Ok(Upstream {
            stream,
            connection: InboundConnection {
                record,
                _registration: registration,
            },
            close,
            l7: session.map(Box::new),
        })
    }
}

impl InboundHandler for InboundHbone {
    type Connection = InboundConnection;

    async fn server_certificate(&self, dialled: IpAddr) -> Option<Arc<WorkloadCertificate>> {
        let cert = self.local_certificate(dialled).await;
        if cert.is_none() {
            tracing::info!(%dialled, "hbone connection to an address without a local workload certificate");
        }
        cert
    }

    async fn handle(
        &self,
        request: &InboundRequest,
    ) -> Result<Upstream<InboundConnection>, Refusal> {
        self.admit(&Admit {
            peer: &request.peer,
            peer_addr: request.peer_addr,
            forwarded_for: request.forwarded_for,
            forwarded_host: request.forwarded_host.as_deref(),
            target: request.target,
            presented: Some(&request.local_identity),
        })
        .await
    }

    fn refused(&self, request: &InboundRequest, refusal: &Refusal) {
        tracing::info!(
            peer = %request.peer,
            peer_addr = %request.peer_addr,
            target = %request.target,
            status = refusal.status().as_u16(),
            reason = %refusal,
            "hbone connect refused"
        );
    }

    fn closed(&self, connection: InboundConnection, transfer: Transfer) {
        connection.finish(&tunnel_outcome(transfer));
    }
}

/// How a tunnel's copy ended, for the access log. The copy is stopped
/// (`ConnectionAborted`) only through the connection's close token, which
/// fires when a new policy or enrolment no longer allows it.
fn tunnel_outcome(transfer: Transfer) -> Forwarded {
    let status = match &transfer.result {
        Ok(()) => Status::Closed,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => Status::Denied,
        Err(_) => Status::Failed,
    };
    Forwarded {
        bytes: Transferred {
            client_to_server: transfer.forward,
            server_to_client: transfer.backward,
        },
        status,
        reason: transfer.result.err().map(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn ended(result: io::Result<()>) -> Forwarded {
        tunnel_outcome(Transfer {
            forward: 3,
            backward: 5,
            result,
        })
    }

    #[test]
    fn tunnel_outcomes_name_who_ended_it() {
        let closed = ended(Ok(()));
        assert_eq!((closed.status, closed.reason), (Status::Closed, None));
        assert_eq!(closed.bytes.client_to_server, 3);
        assert_eq!(closed.bytes.server_to_client, 5);
        let revoked = ended(Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "tunnel closed by caller",
        )));
        assert_eq!(revoked.status, Status::Denied);
        let reset = ended(Err(io::ErrorKind::ConnectionReset.into()));
        assert_eq!(reset.status, Status::Failed);
        assert!(reset.reason.is_some());
    }
}

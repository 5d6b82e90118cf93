//! The outbound side of the mesh: carries a captured connection to an
//! enrolled destination, either through an HBONE tunnel to the destination
//! pod's agent or, when the destination is a pod of this node, through the
//! inbound decision in process.
//!
//! Tunnels present the source workload's certificate and require the
//! destination workload's identity from the server (secure naming); the
//! CONNECT names the pod address (`:authority`), the application's address
//! (`forwarded`) and the source workload (`baggage`). A refused CONNECT or a
//! failed tunnel resets the application's connection, which is how it would
//! see a refused or broken TCP connection.
//!
//! Same node: the capture rules let the agent's own (marked) packets through
//! uncaptured, so a tunnel to a local pod's 15008 would reach the pod, not the
//! agent. Instead the agent runs the very same inbound checks in process
//! ([`InboundHbone::admit`]) with the source workload's identity as the peer,
//! once it holds certificates for both ends, and counts the connection twice,
//! as the source and as the destination, exactly as two agents would.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::inbound_hbone::{Admit, InboundHbone};
use super::outbound::{MeshConnection, MeshForwarder};
use super::{Forwarded, Status, Transferred};
use crate::hbone::stream::{H2Reader, H2Writer};
use crate::hbone::{self, Baggage, ConnectError, ConnectRequest, Connector, Pool, Refusal};
use crate::identity::CertificateSource;
use crate::metrics::{self, ConnectionOpen, Metrics, Reporter, SecurityPolicy};
use crate::socket::{self, SocketFactory};
use crate::state::{StateStore, Workload};

/// Dials peers' HBONE ports through the socket factory, so the tunnel's
/// packets carry the skip mark and are never captured again.
#[derive(Clone, Copy, Debug)]
pub struct MarkedConnector(pub SocketFactory);

impl Connector for MarkedConnector {
    fn connect(
        &self,
        destination: SocketAddr,
        source: IpAddr,
    ) -> impl Future<Output = io::Result<TcpStream>> + Send {
        // From the source pod's own address (transparent bind), as ztunnel
        // does: a peer that reads the TCP source for `source.ip`, ipBlocks or
        // the address it dials its pod from sees the real client. The replies
        // reach this socket through the capture rules' `-m socket
        // --transparent` divert. `forwarded` still names the client too.
        self.0.connect(destination, Some(source))
    }
}

/// The [`MeshForwarder`] the outbound proxy hands mesh destinations to.
pub struct MeshOutbound<C> {
    shared: Arc<Shared<C>>,
}

struct Shared<C> {
    state: StateStore,
    /// The peers' HBONE port: 15008, except in tests.
    hbone_port: u16,
    trust_domain: String,
    certs: Arc<dyn CertificateSource>,
    pool: Pool<C>,
    metrics: Arc<Metrics>,
    local: Arc<InboundHbone>,
}

impl<C: Connector> MeshOutbound<C> {
    pub fn new(
        state: StateStore,
        hbone_port: u16,
        trust_domain: impl Into<String>,
        certs: Arc<dyn CertificateSource>,
        pool: Pool<C>,
        metrics: Arc<Metrics>,
        local: Arc<InboundHbone>,
    ) -> Arc<Self> {
        Arc::new(Self {
            shared: Arc::new(Shared {
                state,
                hbone_port,
                trust_domain: trust_domain.into(),
                certs,
                pool,
                metrics,
                local,
            }),
        })
    }
}

/// How far opening a connection got.
enum Opened {
    /// Refused, failed, or carried to its end already (same node).
    Done(Forwarded),
    /// A tunnel to the destination's agent, ready to carry. Boxed: the
    /// connection's future keeps room for it as long as the connection lasts.
    Tunnel(Box<Tunnel>),
}

/// An opened HBONE tunnel and what its end is reported with.
struct Tunnel {
    client: TcpStream,
    tunnel: (H2Reader, H2Writer),
    cut: CancellationToken,
    record: metrics::ConnectionRecord,
    end: EndLog,
}

/// The fields of the line a mesh connection's end is logged with. The
/// identities are read from the connection's metric labels when it ends
/// rather than kept here: a tunnel holds this for as long as it lasts.
struct EndLog {
    client_addr: SocketAddr,
    target: SocketAddr,
}

impl EndLog {
    fn ended(&self, record: &metrics::ConnectionRecord, forwarded: &Forwarded) {
        let labels = record.labels();
        tracing::debug!(
            src = %self.client_addr,
            src_identity = labels.source_principal.as_str(),
            dst = %self.target,
            dst_identity = labels.destination_principal.as_str(),
            status = forwarded.status.as_str(),
            reason = forwarded.reason.as_deref().unwrap_or("-"),
            "mesh connection ended"
        );
    }
}

/// Carries what [`Shared::open`] opened until it ends.
async fn carry(opened: Opened) -> Forwarded {
    match opened {
        Opened::Done(forwarded) => forwarded,
        Opened::Tunnel(tunnel) => tunnel.carry().await,
    }
}

impl Tunnel {
    /// The record and the log fields stay in the box while the copy runs.
    async fn carry(self: Box<Self>) -> Forwarded {
        let this = self;
        let forwarded = copy_then_close(this.client, this.tunnel, this.cut).await;
        forwarded.account(&this.record);
        this.end.ended(&this.record, &forwarded);
        forwarded
    }
}

impl<C: Connector> Shared<C> {
    /// Decides, finds certificates and opens the tunnel; the same-node path
    /// is carried here to its end.
    async fn open(self: Arc<Self>, conn: MeshConnection) -> Opened {
        let MeshConnection {
            client,
            client_addr,
            orig_dst,
            source,
            target,
            destination,
            cut,
        } = conn;
        let snapshot = self.state.current();
        let service = snapshot.service_by_vip(orig_dst.0.ip()).cloned();
        // Named to the destination so it reports the same Service.
        let service_host = service.as_deref().map(|s| self.metrics.service_hostname(s));
        let (src_id, dst_id) = match (
            source.identity(&self.trust_domain),
            destination.identity(&self.trust_domain),
        ) {
            (Ok(s), Ok(d)) if source.enrolled && source.node == self.local.node() => (s, d),
            _ => {
                socket::reset(client);
                return Opened::Done(Forwarded::refused(
                    Status::Denied,
                    "no mesh identity for the source",
                ));
            }
        };
        let record = self.metrics.open_connection(&ConnectionOpen {
            source_workload: Some(&*source),
            source_identity: Some(&src_id),
            destination_workload: Some(&*destination),
            destination_identity: Some(&dst_id),
            destination_service: service.as_deref(),
            security: SecurityPolicy::MutualTls,
            ..ConnectionOpen::new(Reporter::Source, client_addr.0, orig_dst.0)
        });
        let end = EndLog {
            client_addr: client_addr.0,
            target,
        };
        let forwarded = match self.certs.certificate(&src_id).await {
            None => {
                socket::reset(client);
                Forwarded::refused(
                    Status::ConnectFailed,
                    format!("no certificate for {src_id}"),
                )
            }
            Some(_) if destination.node == self.local.node() => {
                let local = Local {
                    client_addr: client_addr.0,
                    source: &src_id,
                    target,
                    service_host: service_host.as_deref(),
                };
                self.carry_local(client, &local, &record, cut).await
            }
            Some(cert) => {
                let request = ConnectRequest {
                    source: cert,
                    destination: dst_id,
                    hbone_addr: SocketAddr::new(target.ip(), self.hbone_port),
                    target,
                    client: client_addr.0,
                    service_host,
                    baggage: Some(baggage(&source)),
                };
                match self.connect(client, request, &record).await {
                    Ok((client, tunnel)) => {
                        return Opened::Tunnel(Box::new(Tunnel {
                            client,
                            tunnel,
                            cut,
                            record,
                            end,
                        }));
                    }
                    Err(forwarded) => forwarded,
                }
            }
        };
        forwarded.account(&record);
        end.ended(&record, &forwarded);
        Opened::Done(forwarded)
    }

    /// Opens the HBONE tunnel for `client`, or resets it and says why.
    async fn connect(
        &self,
        client: TcpStream,
        request: ConnectRequest,
        record: &metrics::ConnectionRecord,
    ) -> Result<(TcpStream, (H2Reader, H2Writer)), Forwarded> {
        let hbone_addr = request.hbone_addr;
        let peer = request.destination.clone();
        match self.pool.connect(request).await {
            Ok(tunnel) => {
                record.set_decision(metrics::Decision::Allow, "accepted by destination", None);
                Ok((client, tunnel.into_split()))
            }
            Err(error) => {
                socket::reset(client);
                let (status, reason) = connect_failure(&error);
                if status == Status::Denied {
                    record.set_decision(metrics::Decision::Deny, reason, None);
                }
                tracing::info!(%hbone_addr, %peer, %error, "hbone tunnel refused");
                Err(Forwarded::refused(status, error.to_string()))
            }
        }
    }

    /// The same-node path: the inbound decision in process, then a plain
    /// copy between the two local sockets.
    async fn carry_local(
        &self,
        client: TcpStream,
        local: &Local<'_>,
        record: &metrics::ConnectionRecord,
        cut: CancellationToken,
    ) -> Forwarded {
        let &Local {
            client_addr,
            source,
            target,
            service_host,
        } = local;
        // What a handshake would prove: this node holds the destination's identity.
        if self.local.local_certificate(target.ip()).await.is_none() {
            socket::reset(client);
            return Forwarded::refused(Status::ConnectFailed, "no certificate for destination");
        }
        let admit = Admit {
            peer: source,
            peer_addr: client_addr,
            forwarded_for: Some(hbone::ForwardedFor {
                ip: client_addr.ip(),
                port: Some(client_addr.port()),
            }),
            forwarded_host: service_host,
            target,
            presented: None,
        };
        let upstream = match Box::pin(self.local.admit(&admit)).await {
            Ok(upstream) => upstream,
            Err(refusal) => {
                socket::reset(client);
                let status = match refusal {
                    Refusal::Denied { .. } => {
                        record.set_decision(
                            metrics::Decision::Deny,
                            "refused by destination",
                            None,
                        );
                        Status::Denied
                    }
                    Refusal::Unreachable(_) => Status::ConnectFailed,
                    Refusal::Malformed(_) | Refusal::WrongTarget { .. } => Status::Denied,
                };
                tracing::info!(%target, peer = %source, status = refusal.status().as_u16(), reason = %refusal, "same-node connection refused");
                return Forwarded::refused(status, refusal.to_string());
            }
        };
        record.set_decision(metrics::Decision::Allow, "accepted by destination", None);
        let stop = upstream.close.unwrap_or_default();
        let stop = super::either_cancelled(stop, cut);
        let forwarded: Forwarded = match upstream.l7 {
            Some(session) => session
                .serve(client, upstream.stream, stop)
                .await
                .forwarded(),
            None => super::copy::bidirectional_until(client, upstream.stream, stop)
                .await
                .into(),
        };
        upstream.connection.finish(&forwarded);
        forwarded
    }
}

/// A same-node connection as the in-process inbound decision needs it.
struct Local<'a> {
    client_addr: SocketAddr,
    source: &'a ambit_ca::SpiffeId,
    target: SocketAddr,
    /// The Service hostname the client dialled, if it dialled a VIP.
    service_host: Option<&'a str>,
}

impl<C: Connector> MeshForwarder for MeshOutbound<C> {
    fn forward(&self, conn: MeshConnection) -> BoxFuture<'static, Forwarded> {
        // Opening runs boxed and is freed before carrying starts: the
        // connection's task lives as long as the connection and holds only
        // what the copy needs.
        Box::pin(self.shared.clone().open(conn)).then(carry).boxed()
    }
}

/// What a failed tunnel means for the application and the metrics.
fn connect_failure(error: &ConnectError) -> (Status, &'static str) {
    match error {
        ConnectError::Status(s) if *s == http::StatusCode::UNAUTHORIZED => {
            (Status::Denied, "refused by destination")
        }
        ConnectError::Status(s) if *s == http::StatusCode::BAD_REQUEST => {
            (Status::Denied, "rejected by destination")
        }
        _ => (Status::ConnectFailed, "tunnel failed"),
    }
}

/// Copies between the application and the tunnel; resets the application's
/// connection if either side failed or `cut` fired, so a broken tunnel looks
/// like a reset (the dropped stream resets the tunnel too).
async fn copy_then_close(
    mut client: TcpStream,
    tunnel: (H2Reader, H2Writer),
    cut: CancellationToken,
) -> Forwarded {
    let transfer = hbone::copy_bidirectional(tunnel, client.split(), cut.cancelled_owned()).await;
    let bytes = Transferred {
        client_to_server: transfer.backward,
        server_to_client: transfer.forward,
    };
    match transfer.result {
        Ok(()) => Forwarded {
            bytes,
            status: Status::Closed,
            reason: None,
        },
        Err(error) => {
            socket::reset(client);
            Forwarded {
                bytes,
                status: Status::ServerFailed,
                reason: Some(error.to_string()),
            }
        }
    }
}

/// The W3C baggage naming the source workload, as ztunnel sends it.
fn baggage(source: &Workload) -> Baggage {
    let app = [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|k| source.labels.get(k).cloned())
    .unwrap_or_else(|| source.name.clone());
    Baggage::new([
        ("k8s.namespace.name".to_owned(), source.namespace.clone()),
        ("k8s.pod.name".to_owned(), source.name.clone()),
        ("service.name".to_owned(), app),
    ])
}

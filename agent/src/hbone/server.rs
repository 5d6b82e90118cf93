//! The HBONE server (port 15008): mutual TLS as the dialled local workload,
//! HTTP/2, and one CONNECT stream per tunnelled connection.
//!
//! The server owns the protocol: TLS and HTTP/2 settings, parsing `:authority`,
//! `forwarded` and `baggage`, refusing a target that is not the dialled pod, the
//! status codes, and copying bytes. Everything that is policy or sockets — which
//! certificate a pod has, whether the peer may connect, dialling the pod — is the
//! caller's [`InboundHandler`]. A connection that fails (garbage, no or foreign
//! certificate, a stalled handshake) only ever ends its own task.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_ca::SpiffeId;
use bytes::Bytes;
use futures::FutureExt;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

use super::headers::{self, BAGGAGE, Baggage, FORWARDED, ForwardedFor};
use super::stream::{H2Stream, Transfer, copy_bidirectional};
use super::tls::{ALPN_H2, TlsConfigError, TlsConfigs, peer_identity};
use super::{H2_CONNECTION_WINDOW, H2_MAX_FRAME, H2_STREAM_WINDOW};
use crate::drain::DrainWatcher;
use crate::identity::WorkloadCertificate;
use crate::limits::pending::{Pending, PendingLimits, PendingPermit};
use crate::limits::{self, Refusal as LimitRefusal};
use crate::socket;

/// Streams a client may open at once on one connection. Clients pool at most 100;
/// advertising more leaves room for peers that count differently.
pub const SERVER_MAX_CONCURRENT_STREAMS: u32 = 200;
/// CONNECT requests carry a handful of short headers.
const MAX_HEADER_LIST: u32 = 64 * 1024;

/// A well-formed CONNECT from an authenticated peer, for the handler to decide on.
#[derive(Clone, Debug)]
pub struct InboundRequest {
    /// The client's workload identity, proven by its certificate.
    pub peer: SpiffeId,
    /// The TCP source of the tunnel (the peer's node or pod address).
    pub peer_addr: SocketAddr,
    /// The local address the tunnel was accepted on: `<local pod ip>:15008`.
    pub dialled: SocketAddr,
    /// The identity this server presented (the dialled pod's).
    pub local_identity: SpiffeId,
    /// `:authority`: the pod address and port to connect to. Its IP is the dialled pod's.
    pub target: SocketAddr,
    /// The original client, from `forwarded: for=...`.
    pub forwarded_for: Option<ForwardedFor>,
    /// The Service the client dialled, from `forwarded: ...;host=...`
    /// (telemetry only: it names a Service, it proves nothing).
    pub forwarded_host: Option<String>,
    pub baggage: Option<Baggage>,
}

/// Why a CONNECT is refused; the one place that maps it to a status code.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The client sent something that is not an HBONE CONNECT.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The target is not the pod that was dialled (or not a port it serves).
    #[error("target {target} is not served at {dialled}")]
    WrongTarget {
        target: SocketAddr,
        dialled: SocketAddr,
    },
    /// Authorization policy denied the peer.
    #[error("denied: {reason}")]
    Denied { reason: String },
    /// The pod could not be reached.
    #[error("pod unreachable: {0}")]
    Unreachable(#[source] std::io::Error),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Malformed(_) | Refusal::WrongTarget { .. } => StatusCode::BAD_REQUEST,
            Refusal::Denied { .. } => StatusCode::UNAUTHORIZED,
            Refusal::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// An admitted connection: the dialled pod socket, the caller's per-connection
/// state (metrics guard, log record), and optionally a token that closes the
/// tunnel early (e.g. a policy change no longer allows it).
pub struct Upstream<C> {
    pub stream: TcpStream,
    pub connection: C,
    pub close: Option<CancellationToken>,
    /// Set when the tunnel's requests are decided one by one (`crate::l7`):
    /// the session serves the tunnel instead of the byte copy. Boxed: the
    /// stream's task keeps room for it for as long as any tunnel lasts.
    pub l7: Option<Box<crate::l7::Session>>,
}

/// An admitted tunnel, ready to carry.
struct Opened<H: InboundHandler> {
    server: Server<H>,
    tunnel: H2Stream,
    /// The pod address and port; the rest of the request is dropped once the
    /// tunnel opens (what the end is reported with is the handler's connection).
    target: SocketAddr,
    upstream: Upstream<H::Connection>,
}

/// Carries an opened tunnel until it ends, then reports it; `busy` counts
/// the connection's open streams.
async fn carry<H: InboundHandler>(opened: Option<Box<Opened<H>>>, busy: Arc<()>) {
    if let Some(opened) = opened {
        opened.carry().await;
    }
    drop(busy);
}

impl<H: InboundHandler> Opened<H> {
    /// What the end is reported with (the request, the handler's
    /// connection) stays in the box while the copy runs.
    async fn carry(self: Box<Self>) {
        let this = self;
        let mut stream = this.upstream.stream;
        let close = this.upstream.close;
        let stop = async move {
            match close {
                Some(token) => token.cancelled_owned().await,
                None => std::future::pending().await,
            }
        };
        let transfer = match this.upstream.l7 {
            Some(session) => Box::pin(session.serve(this.tunnel, stream, stop))
                .await
                .transfer(),
            None => copy_bidirectional(this.tunnel.into_split(), stream.split(), stop).await,
        };
        debug!(
            target = %this.target,
            sent = transfer.backward,
            received = transfer.forward,
            "hbone tunnel closed"
        );
        this.server
            .handler
            .closed(this.upstream.connection, transfer);
    }
}

/// What the proxy implements to sit behind the HBONE server.
pub trait InboundHandler: Send + Sync + 'static {
    type Connection: Send + 'static;

    /// The certificate of the local workload at `dialled`; `None` refuses the TLS handshake.
    fn server_certificate(
        &self,
        dialled: IpAddr,
    ) -> impl Future<Output = Option<Arc<WorkloadCertificate>>> + Send;

    /// Authorize and dial. Called only for CONNECTs whose target IP is the dialled pod.
    fn handle(
        &self,
        request: &InboundRequest,
    ) -> impl Future<Output = Result<Upstream<Self::Connection>, Refusal>> + Send;

    /// A request was refused, by the server or by `handle`.
    fn refused(&self, request: &InboundRequest, refusal: &Refusal) {
        let _ = (request, refusal);
    }

    /// The tunnel ended; `transfer.forward` counts bytes client→pod.
    /// Whatever the report needs of the request, `connection` carries: the
    /// request itself is not kept for the tunnel's life.
    fn closed(&self, connection: Self::Connection, transfer: Transfer);
}

#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// A connection must finish TLS and the HTTP/2 preface within this time.
    pub handshake_timeout: Duration,
    /// Caps on connections still in that handshake (all sources, one source).
    pub pending: PendingLimits,
    /// A connection without streams for this long gets a GOAWAY and is
    /// closed; zero keeps idle connections open.
    pub idle_timeout: Duration,
    /// PING the client this often; a connection whose PING goes unanswered
    /// for `keepalive_timeout` is closed with its streams (the peer is gone).
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            pending: PendingLimits::default(),
            idle_timeout: Duration::from_secs(10 * 60),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("no certificate for local address {0}")]
    NoCertificate(IpAddr),
    #[error(transparent)]
    Config(#[from] TlsConfigError),
    #[error("TLS handshake: {0}")]
    Tls(#[source] std::io::Error),
    #[error("peer did not negotiate ALPN h2")]
    NoH2,
    #[error("peer identity: {0}")]
    PeerIdentity(#[from] super::tls::IdentityError),
    #[error("HTTP/2: {0}")]
    Http2(#[from] h2::Error),
    #[error("handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// The HBONE server; cheap to clone, one clone per accepted connection.
pub struct Server<H> {
    tls: Arc<TlsConfigs>,
    handler: Arc<H>,
    settings: ServerSettings,
    pending: Arc<Pending>,
}

impl<H> Clone for Server<H> {
    fn clone(&self) -> Self {
        Self {
            tls: self.tls.clone(),
            handler: self.handler.clone(),
            settings: self.settings.clone(),
            pending: self.pending.clone(),
        }
    }
}

/// How long an idle connection told to go away may take to close.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The listener name in refusal metrics.
const LISTENER: &str = "hbone";

/// Facts about one accepted TLS connection, shared by its streams.
struct Peer {
    identity: SpiffeId,
    addr: SocketAddr,
    dialled: SocketAddr,
    local_identity: SpiffeId,
}

impl<H: InboundHandler> Server<H> {
    pub fn new(tls: Arc<TlsConfigs>, handler: Arc<H>, settings: ServerSettings) -> Self {
        let pending = Pending::new(LISTENER, settings.pending);
        Self {
            tls,
            handler,
            settings,
            pending,
        }
    }

    /// Connections accepted that have not finished their handshake.
    pub fn pending_handshakes(&self) -> usize {
        self.pending.len()
    }

    /// Accepts until the drain starts, each connection on its own task holding a
    /// drain watcher: draining sends GOAWAY and lets open streams finish; the
    /// forced phase closes the connection.
    pub async fn serve(self, listener: TcpListener, mut drain: DrainWatcher) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = drain.draining() => return,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let Some(tcp) = limits::admit_accepted(tcp, LISTENER) else {
                        continue;
                    };
                    // Refused before any TLS state exists: a reset costs nothing.
                    let permit = match self.pending.begin(peer.ip()) {
                        Ok(permit) => permit,
                        Err(refusal) => {
                            limits::refused(LISTENER, refusal, Some(peer));
                            socket::reset(tcp);
                            continue;
                        }
                    };
                    let server = self.clone();
                    let drain = drain.clone();
                    tokio::spawn(async move {
                        let _ = server
                            .serve_connection_pending(tcp, drain, Some(permit))
                            .await;
                    });
                }
                Err(error) => limits::accept_failed(&listener, LISTENER, error).await,
            }
        }
    }

    /// Serves one accepted TCP connection to the end; the local address must be
    /// the dialled pod's (the proxy's transparent listener gives exactly that).
    pub async fn serve_connection(
        self,
        tcp: TcpStream,
        drain: DrainWatcher,
    ) -> Result<(), ServerError> {
        self.serve_connection_pending(tcp, drain, None).await
    }

    /// As [`Self::serve_connection`], releasing `permit` once the handshake ended.
    async fn serve_connection_pending(
        self,
        tcp: TcpStream,
        drain: DrainWatcher,
        permit: Option<PendingPermit>,
    ) -> Result<(), ServerError> {
        let dialled = tcp.local_addr()?;
        let peer_addr = tcp.peer_addr()?;
        let span = info_span!("hbone_inbound", %peer_addr, %dialled, peer = tracing::field::Empty);
        let result = self
            .run_connection(tcp, dialled, peer_addr, drain, permit)
            .instrument(span.clone())
            .await;
        if let Err(error) = &result {
            span.in_scope(|| debug!(%error, "hbone connection ended"));
        }
        result
    }

    async fn run_connection(
        self,
        tcp: TcpStream,
        dialled: SocketAddr,
        peer_addr: SocketAddr,
        mut drain: DrainWatcher,
        permit: Option<PendingPermit>,
    ) -> Result<(), ServerError> {
        let _ = tcp.set_nodelay(true);
        let timeout = self.settings.handshake_timeout;
        let handshake = async {
            let cert = self
                .handler
                .server_certificate(dialled.ip())
                .await
                .ok_or(ServerError::NoCertificate(dialled.ip()))?;
            let config = self.tls.server_config(&cert)?;
            let tls = TlsAcceptor::from(config)
                .accept(tcp)
                .await
                .map_err(ServerError::Tls)?;
            let (_, conn) = tls.get_ref();
            if conn.alpn_protocol() != Some(ALPN_H2) {
                return Err(ServerError::NoH2);
            }
            let identity = peer_identity(conn)?;
            let h2 = h2::server::Builder::new()
                .initial_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONNECTION_WINDOW)
                .max_frame_size(H2_MAX_FRAME)
                .max_concurrent_streams(SERVER_MAX_CONCURRENT_STREAMS)
                .max_header_list_size(MAX_HEADER_LIST)
                .max_send_buffer_size(H2_STREAM_WINDOW as usize)
                .handshake::<_, Bytes>(tls)
                .await?;
            Ok::<_, ServerError>((h2, identity, cert.identity.clone()))
        };
        let handshake = tokio::time::timeout(timeout, handshake).await;
        // Authenticated (or failed): no longer counted against the peer.
        drop(permit);
        let (mut h2, identity, local_identity) = handshake.map_err(|_| {
            limits::refused(LISTENER, LimitRefusal::HandshakeTimeout, Some(peer_addr));
            ServerError::HandshakeTimeout(timeout)
        })??;
        tracing::Span::current().record("peer", tracing::field::display(&identity));
        let peer = Arc::new(Peer {
            identity,
            addr: peer_addr,
            dialled,
            local_identity,
        });

        let mut draining = false;
        // Each stream task holds a clone: more than one reference means busy.
        let streams = Arc::new(());
        let idle_timeout = self.settings.idle_timeout;
        let mut last_busy = Instant::now();
        let mut idle_goaway: Option<Instant> = None;
        let ping_pong = h2.ping_pong();
        let (interval, keepalive_timeout) = (
            self.settings.keepalive_interval,
            self.settings.keepalive_timeout,
        );
        let mut keepalive = std::pin::pin!(async move {
            match ping_pong {
                Some(ping_pong) => {
                    super::client::keepalive(ping_pong, interval, keepalive_timeout).await
                }
                None => std::future::pending().await,
            }
        });
        let mut idle_check = tokio::time::interval(
            (idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(30)),
        );
        idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_phase = async {
                match draining {
                    false => drain.draining().await,
                    true => drain.forced().await,
                }
            };
            let next = tokio::select! {
                next = h2.accept() => next,
                error = &mut keepalive => {
                    debug!(%error, "hbone peer stopped answering PINGs; closing");
                    h2.abrupt_shutdown(h2::Reason::NO_ERROR);
                    return Ok(());
                }
                _ = idle_check.tick(), if !idle_timeout.is_zero() && !draining => {
                    if let Some(sent) = idle_goaway {
                        // A live peer answered the GOAWAY's PING and the
                        // connection closed; a dead one is cut here. A
                        // stream that raced the GOAWAY is let finish.
                        if sent.elapsed() >= IDLE_CLOSE_GRACE && Arc::strong_count(&streams) == 1 {
                            h2.abrupt_shutdown(h2::Reason::NO_ERROR);
                            return Ok(());
                        }
                    } else if Arc::strong_count(&streams) > 1 {
                        last_busy = Instant::now();
                    } else if last_busy.elapsed() >= idle_timeout {
                        // GOAWAY: the client's pool stops using it; with no
                        // stream open, h2 closes the connection once the
                        // peer acknowledged it.
                        debug!(idle = ?last_busy.elapsed(), "closing idle hbone connection");
                        h2.graceful_shutdown();
                        idle_goaway = Some(Instant::now());
                    }
                    continue;
                }
                () = next_phase => {
                    if !draining {
                        h2.graceful_shutdown();
                        draining = true;
                        continue;
                    }
                    h2.abrupt_shutdown(h2::Reason::NO_ERROR);
                    // Give the GOAWAY a moment to leave; the peer resets its streams.
                    let closed = futures::future::poll_fn(|cx| h2.poll_closed(cx));
                    let _ = tokio::time::timeout(Duration::from_millis(100), closed).await;
                    return Ok(());
                }
            };
            let Some(next) = next else { return Ok(()) };
            let (request, respond) = next?;
            let server = self.clone();
            let peer = peer.clone();
            let busy = streams.clone();
            last_busy = Instant::now();
            // Opening (parse, admission, dial) runs boxed and is freed before
            // the carrying starts: the task lives as long as the tunnel and
            // holds only what the copy needs (what it is handed is boxed too:
            // a future keeps room for its arguments as long as it runs).
            let task = Box::pin(async move { server.open_stream(&peer, request, respond).await })
                .then(move |opened| carry(opened, busy))
                .in_current_span();
            tokio::spawn(task);
        }
    }

    /// Checks and admits one CONNECT and answers it; what the tunnel then
    /// needs, or `None` if it was refused or the client went away.
    async fn open_stream(
        self,
        peer: &Peer,
        request: Request<h2::RecvStream>,
        mut respond: SendResponse<Bytes>,
    ) -> Option<Box<Opened<H>>> {
        let parsed = match parse_connect(peer, &request) {
            Ok(parsed) => parsed,
            Err(refusal) => {
                debug!(%refusal, "hbone request refused");
                let _ = respond.send_response(status_only(refusal.status()), true);
                return None;
            }
        };
        if parsed.target.ip() != peer.dialled.ip() {
            let refusal = Refusal::WrongTarget {
                target: parsed.target,
                dialled: peer.dialled,
            };
            self.refuse(&parsed, refusal, respond);
            return None;
        }
        let upstream = match self.handler.handle(&parsed).await {
            Ok(upstream) => upstream,
            Err(refusal) => {
                self.refuse(&parsed, refusal, respond);
                return None;
            }
        };
        let send = match respond.send_response(status_only(StatusCode::OK), false) {
            Ok(send) => send,
            Err(error) => {
                debug!(%error, "client went away before the tunnel opened");
                let transfer = Transfer {
                    forward: 0,
                    backward: 0,
                    result: Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        error,
                    )),
                };
                self.handler.closed(upstream.connection, transfer);
                return None;
            }
        };
        let _ = upstream.stream.set_nodelay(true);
        let (_, recv) = request.into_parts();
        Some(Box::new(Opened {
            server: self,
            tunnel: H2Stream::new(send, recv, None),
            target: parsed.target,
            upstream,
        }))
    }

    fn refuse(&self, request: &InboundRequest, refusal: Refusal, mut respond: SendResponse<Bytes>) {
        debug!(target = %request.target, %refusal, status = refusal.status().as_u16(), "hbone request refused");
        let _ = respond.send_response(status_only(refusal.status()), true);
        self.handler.refused(request, &refusal);
    }
}

fn status_only(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}

/// Reads the CONNECT's target and headers; anything not HBONE-shaped is `Malformed`.
fn parse_connect(
    peer: &Peer,
    request: &Request<h2::RecvStream>,
) -> Result<InboundRequest, Refusal> {
    if request.method() != Method::CONNECT {
        return Err(Refusal::Malformed(format!("method {}", request.method())));
    }
    let authority = request
        .uri()
        .authority()
        .ok_or_else(|| Refusal::Malformed("no :authority".into()))?;
    let target: SocketAddr = authority
        .as_str()
        .parse()
        .map_err(|_| Refusal::Malformed(format!(":authority {authority} is not ip:port")))?;
    let forwarded_for = match request.headers().get(FORWARDED) {
        Some(value) => ForwardedFor::parse(value).map_err(|e| Refusal::Malformed(e.to_string()))?,
        None => None,
    };
    let forwarded_host = request
        .headers()
        .get(FORWARDED)
        .and_then(headers::forwarded_host);
    // Baggage is telemetry only: a bad one is dropped, not refused.
    let baggage = request
        .headers()
        .get(BAGGAGE)
        .and_then(|value| Baggage::parse(value).ok());
    Ok(InboundRequest {
        peer: peer.identity.clone(),
        peer_addr: peer.addr,
        dialled: peer.dialled,
        local_identity: peer.local_identity.clone(),
        target,
        forwarded_for,
        forwarded_host,
        baggage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_hbone_status_codes() {
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let cases = [
            (Refusal::Malformed("x".into()), 400),
            (
                Refusal::WrongTarget {
                    target: addr,
                    dialled: addr,
                },
                400,
            ),
            (Refusal::Denied { reason: "x".into() }, 401),
            (
                Refusal::Unreachable(std::io::ErrorKind::ConnectionRefused.into()),
                503,
            ),
        ];
        for (refusal, status) in cases {
            assert_eq!(refusal.status().as_u16(), status, "{refusal}");
        }
    }
}

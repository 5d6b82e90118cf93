//! The HBONE client: one mutual-TLS HTTP/2 connection to a peer's 15008 and the
//! CONNECT streams opened on it.
//!
//! The TCP socket comes from the caller's [`Connector`] so the proxy can mark it
//! (and bind the original client IP); TLS presents the source workload's
//! certificate and aborts unless the server proves the destination identity.
//! A background task drives the HTTP/2 connection and sends keepalive PINGs; when
//! it ends the connection is marked closed and the pool stops handing it out.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ambit_ca::SpiffeId;
use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span};

use super::headers::{BAGGAGE, Baggage, FORWARDED, ForwardedFor};
use super::stream::H2Stream;
use super::tls::{ALPN_H2, TlsConfigError, TlsConfigs};
use super::{H2_CONNECTION_WINDOW, H2_MAX_FRAME, H2_STREAM_WINDOW};
use crate::identity::WorkloadCertificate;

/// Opens the TCP connection to a peer's HBONE port. The proxy's implementation
/// marks the socket so capture skips it, and may bind `source` (the original
/// client IP) transparently.
pub trait Connector: Send + Sync + 'static {
    fn connect(
        &self,
        destination: SocketAddr,
        source: IpAddr,
    ) -> impl Future<Output = io::Result<TcpStream>> + Send;
}

/// A plain `connect`, ignoring the source IP: for tests and unprivileged use.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainConnector;

impl Connector for PlainConnector {
    fn connect(
        &self,
        destination: SocketAddr,
        _source: IpAddr,
    ) -> impl Future<Output = io::Result<TcpStream>> + Send {
        TcpStream::connect(destination)
    }
}

/// One tunnel to open: who speaks, to whom, through which HBONE address.
#[derive(Clone, Debug)]
pub struct ConnectRequest {
    /// The source workload's certificate, presented to the server.
    pub source: Arc<WorkloadCertificate>,
    /// The identity the server must prove (secure naming).
    pub destination: SpiffeId,
    /// `<destination pod ip>:15008`.
    pub hbone_addr: SocketAddr,
    /// `:authority`: the destination pod's ip:port.
    pub target: SocketAddr,
    /// The application's address, sent as `forwarded: for=...`.
    pub client: SocketAddr,
    /// The Service hostname the application dialled (`name.ns.svc.<domain>`),
    /// sent as `forwarded: ...;host=...`; `None` when it dialled a pod.
    pub service_host: Option<String>,
    pub baggage: Option<Baggage>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Config(#[from] TlsConfigError),
    /// Includes secure-naming failures: the server is not the expected workload.
    #[error("TLS handshake: {0}")]
    Tls(#[source] io::Error),
    #[error("server did not negotiate ALPN h2")]
    NoH2,
    #[error("HTTP/2: {0}")]
    Http2(#[from] h2::Error),
    /// The server answered the CONNECT with something other than 200.
    #[error("CONNECT refused with {0}")]
    Status(StatusCode),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection closed")]
    Closed,
}

impl ConnectError {
    /// The identity check that failed the handshake, if that is what happened
    /// (secure naming: the server proved a different workload).
    pub fn identity_error(&self) -> Option<&super::tls::IdentityError> {
        let ConnectError::Tls(io) = self else {
            return None;
        };
        match io.get_ref()?.downcast_ref::<rustls::Error>()? {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
                other.0.downcast_ref()
            }
            _ => None,
        }
    }

    /// Whether the stream certainly never reached the server's application, so
    /// opening it again on a fresh connection is safe.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectError::Closed => true,
            ConnectError::Http2(e) => {
                e.is_go_away() || e.is_io() || e.reason() == Some(h2::Reason::REFUSED_STREAM)
            }
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// TCP connect, TLS and HTTP/2 handshakes together; also bounds the wait for a CONNECT answer.
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    /// A connection whose PING goes unanswered this long is closed.
    pub keepalive_timeout: Duration,
    /// Streams this side opens at most per connection.
    pub max_streams: usize,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
            max_streams: 100,
        }
    }
}

/// An HTTP/2 connection to one peer, shareable by up to `max_streams` streams.
#[derive(Clone)]
pub struct Connection {
    sender: SendRequest<Bytes>,
    state: Arc<ConnectionState>,
}

struct ConnectionState {
    streams: AtomicUsize,
    max_streams: usize,
    closed: CancellationToken,
    peer: SpiffeId,
    timeout: Duration,
}

/// A stream's claim on a connection, held by both halves of the stream; frees the
/// slot when both are gone.
pub(crate) struct StreamSlot(Arc<ConnectionState>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.state.peer)
            .field("streams", &self.active_streams())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Connection {
    /// Dials `request.hbone_addr` through `connector` and completes TLS and HTTP/2.
    pub async fn connect<C: Connector>(
        connector: &C,
        tls: &TlsConfigs,
        request: &ConnectRequest,
        settings: &ClientSettings,
    ) -> Result<Self, ConnectError> {
        let timeout = settings.connect_timeout;
        tokio::time::timeout(timeout, Self::handshake(connector, tls, request, settings))
            .await
            .map_err(|_| ConnectError::Timeout(timeout))?
    }

    async fn handshake<C: Connector>(
        connector: &C,
        tls: &TlsConfigs,
        request: &ConnectRequest,
        settings: &ClientSettings,
    ) -> Result<Self, ConnectError> {
        let config = tls.client_config(&request.source, &request.destination)?;
        let addr = request.hbone_addr;
        let tcp = connector
            .connect(addr, request.client.ip())
            .await
            .map_err(|source| ConnectError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        // Never sent (SNI is off); the verifier names the server by SPIFFE ID.
        let name = ServerName::IpAddress(addr.ip().into());
        let tls_stream = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(ConnectError::Tls)?;
        if tls_stream.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
            return Err(ConnectError::NoH2);
        }
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .max_frame_size(H2_MAX_FRAME)
            .initial_max_send_streams(settings.max_streams)
            .max_header_list_size(16 * 1024)
            .max_send_buffer_size(H2_STREAM_WINDOW as usize)
            .enable_push(false)
            .handshake::<_, Bytes>(tls_stream)
            .await?;
        let state = Arc::new(ConnectionState {
            streams: AtomicUsize::new(0),
            max_streams: settings.max_streams,
            closed: CancellationToken::new(),
            peer: request.destination.clone(),
            timeout: settings.connect_timeout,
        });
        let ping_pong = connection.ping_pong();
        let closed = state.closed.clone();
        let (interval, keepalive_timeout) =
            (settings.keepalive_interval, settings.keepalive_timeout);
        let span = debug_span!("hbone_outbound", peer = %request.destination, %addr);
        tokio::spawn(
            async move {
                let keepalive = async {
                    match ping_pong {
                        Some(ping_pong) => keepalive(ping_pong, interval, keepalive_timeout).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    result = &mut connection => {
                        if let Err(error) = result {
                            debug!(%error, "hbone connection failed");
                        }
                    }
                    error = keepalive => debug!(%error, "hbone keepalive failed"),
                    () = closed.cancelled() => {}
                }
                closed.cancel();
            }
            .instrument(span),
        );
        Ok(Self { sender, state })
    }

    /// Opens a CONNECT stream and waits for the server's answer. Only a 200 yields
    /// a stream; anything else is an error the proxy turns into a reset.
    pub async fn open(
        &self,
        target: SocketAddr,
        client: SocketAddr,
        baggage: Option<&Baggage>,
    ) -> Result<H2Stream, ConnectError> {
        self.state.streams.fetch_add(1, Ordering::AcqRel);
        let slot = StreamSlot(self.state.clone());
        self.open_reserved(slot, target, client, None, baggage)
            .await
    }

    /// Claims one of the connection's `max_streams` slots, if one is free.
    pub(crate) fn try_reserve(&self) -> Option<StreamSlot> {
        let max = self.state.max_streams;
        self.state
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamSlot(self.state.clone()))
    }

    pub(crate) async fn open_reserved(
        &self,
        slot: StreamSlot,
        target: SocketAddr,
        client: SocketAddr,
        service_host: Option<&str>,
        baggage: Option<&Baggage>,
    ) -> Result<H2Stream, ConnectError> {
        if self.is_closed() {
            return Err(ConnectError::Closed);
        }
        let slot: super::stream::StreamGuard = Arc::new(slot);
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(target.to_string())
            .header(
                FORWARDED,
                ForwardedFor::header_value_with_host(client, service_host),
            );
        if let Some(value) = baggage.and_then(|b| b.header_value().ok()) {
            request = request.header(BAGGAGE, value);
        }
        // Only built from a SocketAddr and valid header values.
        let request = request.body(()).map_err(|_| ConnectError::Closed)?;
        let timeout = self.state.timeout;
        let exchange = async {
            let mut sender = self.sender.clone().ready().await?;
            let (response, send) = sender.send_request(request, false)?;
            let response = response.await?;
            Ok::<_, ConnectError>((response, send))
        };
        let (response, send) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ConnectError::Timeout(timeout))??;
        if response.status() != StatusCode::OK {
            return Err(ConnectError::Status(response.status()));
        }
        Ok(H2Stream::new(send, response.into_body(), Some(slot)))
    }

    /// Streams currently open (or being opened) on this connection.
    pub fn active_streams(&self) -> usize {
        self.state.streams.load(Ordering::Acquire)
    }

    pub fn is_closed(&self) -> bool {
        self.state.closed.is_cancelled()
    }

    /// Whether both handles are the same HTTP/2 connection.
    pub fn same(&self, other: &Connection) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }

    /// Closes the connection now, resetting any open stream; the pool calls it on idle ones.
    pub fn close(&self) {
        self.state.closed.cancel();
    }

    pub fn peer(&self) -> &SpiffeId {
        &self.state.peer
    }
}

/// Pings every `interval`; returns the error once a PING is not answered in
/// `timeout`. The server side uses it too.
pub(super) async fn keepalive(
    mut ping_pong: h2::PingPong,
    interval: Duration,
    timeout: Duration,
) -> String {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return error.to_string(),
            Err(_) => return format!("no PING answer within {timeout:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unprocessed_streams_are_retried() {
        assert!(ConnectError::Closed.is_retryable());
        assert!(ConnectError::Http2(h2::Reason::REFUSED_STREAM.into()).is_retryable());
        assert!(!ConnectError::Http2(h2::Reason::INTERNAL_ERROR.into()).is_retryable());
        assert!(!ConnectError::Status(StatusCode::UNAUTHORIZED).is_retryable());
        assert!(!ConnectError::Timeout(Duration::from_secs(1)).is_retryable());
    }
}

//! HBONE: TCP connections carried between agents as HTTP/2 CONNECT streams over
//! mutual TLS 1.3, in the wire format of Istio's ztunnel so either can be the peer.
//!
//! - `tls`: rustls configs and the SPIFFE verifiers (secure naming, trust domain).
//! - `server`: the 15008 listener's protocol; the proxy plugs in as an [`InboundHandler`].
//! - `client`: one HTTP/2 connection to a peer's 15008 and the CONNECT streams on it.
//! - `pool`: client connections shared by streams with the same identities and addresses.
//! - `stream`: a CONNECT stream as `AsyncRead + AsyncWrite`, and the two-way copy.
//! - `headers`: `forwarded` and `baggage`.

pub mod client;
pub mod headers;
pub mod pool;
pub mod server;
pub mod stream;
pub mod tls;

pub use client::{ConnectError, ConnectRequest, Connector, PlainConnector};
pub use headers::{Baggage, ForwardedFor};
pub use pool::{Pool, PoolSettings};
pub use server::{InboundHandler, InboundRequest, Refusal, Server, ServerSettings, Upstream};
pub use stream::{H2Stream, Transfer, copy_bidirectional};
pub use tls::TlsConfigs;

/// The port HBONE servers listen on.
pub const HBONE_PORT: u16 = 15008;

// Flow-control windows sized for bulk transfer across a node boundary (ztunnel's
// values): a 4 MiB stream window keeps a single stream at line rate on a fast
// link, and the connection window lets four such streams run at once.
pub(crate) const H2_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub(crate) const H2_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
pub(crate) const H2_MAX_FRAME: u32 = 1024 * 1024;

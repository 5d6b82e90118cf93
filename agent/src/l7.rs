//! HTTP-level authorization in the destination agent, with no waypoint hop:
//! connections to a local pod whose requests can be decided differently from
//! the connection itself are parsed as HTTP here, each request decided, and
//! denied ones answered as Envoy would (403 `RBAC: access denied`, 401 for a
//! bad token), on the connection the agent already terminates.
//!
//! - `detect`: whether a port is HTTP (Service declaration, first bytes).
//! - `h1`: HTTP/1, heads parsed and decided, bytes forwarded as they came.
//! - `serve`: HTTP/2 cleartext, hyper on both sides.
//! - `request`: the checks of one request both share (path, token,
//!   decision), and hyper's handler for HTTP/2.
//! - `jwt`: RequestAuthentication tokens and keys.
//! - `respond`: the local answers; `body`: counted bodies and the request
//!   record; `metrics`: Istio's HTTP series.
//! - `notices`: the load warnings and status-page lines for rules that need
//!   HTTP.
//!
//! The L4 proxies call in at two points only: [`L7::route`] when they have
//! decided a connection (to learn whether it goes to HTTP), and
//! [`Session::serve`] in place of the byte copy. Connections whose
//! destination has no HTTP rules stay on the L4 path and pay nothing.

mod body;
mod detect;
mod h1;
mod jwks;
pub mod jwt;
mod metrics;
pub mod notices;
mod request;
mod respond;
mod serve;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_ca::SpiffeId;
use ambit_policy::{Decision, Target};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub use detect::{Declared, Sniffed, declared};

use crate::metrics::TrafficLabels;
use crate::state::{Snapshot, StateStore, Workload};
use detect::Replay;
use metrics::HttpMetrics;
use request::Facts;

/// How the L7 path waits for the first bytes.
#[derive(Clone, Debug)]
pub struct L7Settings {
    /// On a port nothing declares HTTP: silence this long means a
    /// server-first protocol, carried at L4.
    pub sniff_timeout: Duration,
    /// On a port declared HTTP: how long a client may stay silent before
    /// the connection is closed (it never falls back to L4).
    pub first_request_timeout: Duration,
    /// How long the rest of an HTTP/1 request head may take once its first
    /// byte arrived (408 after).
    pub head_timeout: Duration,
}

impl Default for L7Settings {
    fn default() -> Self {
        Self {
            sniff_timeout: Duration::from_millis(100),
            first_request_timeout: Duration::from_secs(60),
            head_timeout: Duration::from_secs(30),
        }
    }
}

/// The L7 path of one agent; shared by the HBONE and plaintext inbound paths.
#[derive(Debug)]
pub struct L7 {
    state: StateStore,
    metrics: HttpMetrics,
    jwt: jwt::Verifier,
    settings: L7Settings,
}

/// Where a decided connection goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Today's byte copy, decided by the L4 decision.
    L4,
    /// Parsed as HTTP; `declared` says whether the port is HTTP for sure
    /// or only sniffed.
    Http { declared: bool },
}

impl L7 {
    /// Registers the HTTP series under `registry`'s `istio` prefix.
    pub fn new(
        state: StateStore,
        registry: &mut Registry,
        jwt: jwt::Verifier,
        settings: L7Settings,
    ) -> Arc<Self> {
        let metrics = HttpMetrics::register(registry.sub_registry_with_prefix("istio"));
        Arc::new(Self {
            state,
            metrics,
            jwt,
            settings,
        })
    }

    /// Whether a connection to `pod` (address `dst`), decided `decision` at
    /// L4, goes to the L7 path: on a port declared HTTP when requests may be
    /// decided differently (HTTP rules or RequestAuthentication apply) or
    /// the connection is denied (so clients get a 403, not a reset); on an
    /// undeclared port when HTTP rules apply (the first bytes decide).
    pub fn route(
        &self,
        snapshot: &Snapshot,
        pod: &Workload,
        dst: SocketAddr,
        decision: &Decision,
    ) -> Route {
        let target = Target {
            namespace: &pod.namespace,
            labels: &pod.labels,
        };
        if decision.reason == ambit_policy::Reason::PlaintextRefusedByStrict {
            // PeerAuthentication refuses the connection itself.
            return Route::L4;
        }
        let needs = snapshot.policies().needs_http(&target);
        if decision.allowed && !needs {
            // Nothing per request could differ: the L4 path, no Service scan.
            return Route::L4;
        }
        match declared(snapshot, dst) {
            Declared::Opaque(_) => Route::L4,
            Declared::Http(_) => Route::Http { declared: true },
            Declared::Unknown if needs => Route::Http { declared: false },
            Declared::Unknown => Route::L4,
        }
    }

    /// A session for a connection [`route`](Self::route) sent here.
    pub fn session(self: &Arc<Self>, route: &Route, conn: SessionConn, l4: &Decision) -> Session {
        Session {
            l7: self.clone(),
            declared: matches!(route, Route::Http { declared: true }),
            facts: Facts {
                client: conn.client,
                peer: conn.peer,
                dst: conn.dst,
                labels: conn.labels,
            },
            l4_allowed: l4.allowed,
        }
    }
}

/// What the proxy knows about a connection it hands over.
#[derive(Debug)]
pub struct SessionConn {
    pub client: SocketAddr,
    pub peer: Option<SpiffeId>,
    pub dst: SocketAddr,
    /// The connection's metric labels; HTTP series add the response code.
    pub labels: TrafficLabels,
}

/// A connection handed to the L7 path, not yet read.
#[derive(Debug)]
pub struct Session {
    l7: Arc<L7>,
    declared: bool,
    facts: Facts,
    /// The L4 decision, applied if the bytes turn out not to be HTTP.
    l4_allowed: bool,
}

/// How a session ended: bytes each way (client to pod first) and why.
#[derive(Debug)]
pub struct Served {
    pub client_to_pod: u64,
    pub pod_to_client: u64,
    pub result: io::Result<()>,
}

impl Served {
    /// As the HBONE server accounts a tunnel.
    pub fn transfer(self) -> crate::hbone::Transfer {
        crate::hbone::Transfer {
            forward: self.client_to_pod,
            backward: self.pod_to_client,
            result: self.result,
        }
    }

    /// As the plaintext and same-node paths account a connection.
    pub fn forwarded(self) -> crate::proxy::Forwarded {
        use crate::proxy::{Forwarded, Status, Transferred};
        let status = match &self.result {
            Ok(()) => Status::Closed,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Status::Denied,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => Status::Denied,
            Err(_) => Status::ClientFailed,
        };
        Forwarded {
            bytes: Transferred {
                client_to_server: self.client_to_pod,
                server_to_client: self.pod_to_client,
            },
            status,
            reason: self.result.err().map(|e| e.to_string()),
        }
    }
}

impl Session {
    /// Reads the first bytes of `client`, then serves HTTP, or copies bytes
    /// if the L4 decision allowed a connection that is not HTTP, or refuses.
    pub async fn serve<D>(
        self,
        mut client: D,
        mut pod: TcpStream,
        stop: impl Future<Output = ()> + Send,
    ) -> Served
    where
        D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let settings = &self.l7.settings;
        let wait = if self.declared {
            settings.first_request_timeout
        } else {
            settings.sniff_timeout
        };
        let (protocol, prefix) = detect::sniff(&mut client, wait).await;
        let mut client = Replay::new(prefix, client);
        let (read, written) = (client.read.clone(), client.written.clone());
        let counts = || {
            use std::sync::atomic::Ordering::Relaxed;
            (read.load(Relaxed), written.load(Relaxed))
        };
        let result = match protocol {
            Sniffed::Http1 => h1::connection(self.l7, self.facts, client, pod, stop).await,
            Sniffed::H2c => serve::connection(self.l7, self.facts, client, pod, stop).await,
            Sniffed::Other if self.l4_allowed => {
                tracing::debug!(dst = %self.facts.dst, "not HTTP: carried at L4");
                tokio::select! {
                    r = tokio::io::copy_bidirectional(&mut client, &mut pod) => r.map(|_| ()),
                    () = stop => Err(io::Error::new(io::ErrorKind::ConnectionAborted, "closed by policy")),
                }
            }
            Sniffed::Other => {
                tracing::info!(
                    dst = %self.facts.dst,
                    client = %self.facts.client,
                    "not HTTP and denied at L4: closed"
                );
                Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "not HTTP; denied at L4",
                ))
            }
        };
        let (c2p, p2c) = counts();
        Served {
            client_to_pod: c2p,
            pod_to_client: p2c,
            result,
        }
    }
}

#[cfg(test)]
mod tests;

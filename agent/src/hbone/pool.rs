//! Client HTTP/2 connections shared by tunnels with the same source identity,
//! destination identity, HBONE address and source IP, so that a new tunnelled
//! connection usually costs one stream rather than one TLS handshake.
//!
//! A connection carries at most `max_streams` streams; when all are taken a new
//! connection is dialled (one dial at a time per key, so a burst opens as few
//! connections as it needs). Idle connections are closed after `idle_timeout`.
//! A stream that fails on a reused connection before the server saw it (GOAWAY,
//! refused stream, a dead socket) is retried once on a fresh connection; nothing
//! of the application's has been sent at that point, so the retry is safe. The
//! failed connection is retired, not closed: it takes no new streams, and the
//! streams already on it run to their end (a draining peer sent GOAWAY, which
//! promises exactly that), after which it closes by itself.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use ambit_ca::SpiffeId;
use parking_lot::Mutex;
use tracing::debug;

use super::client::{
    ClientSettings, ConnectError, ConnectRequest, Connection, Connector, StreamSlot,
};
use super::stream::H2Stream;
use super::tls::TlsConfigs;

#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub client: ClientSettings,
    /// A connection without streams for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            client: ClientSettings::default(),
            idle_timeout: Duration::from_secs(5 * 60),
        }
    }
}

/// What makes two tunnels able to share a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub source: SpiffeId,
    pub destination: SpiffeId,
    pub hbone_addr: SocketAddr,
    /// The connection may be bound to the application's IP, so it is part of the key.
    pub source_ip: IpAddr,
}

impl PoolKey {
    pub fn of(request: &ConnectRequest) -> Self {
        Self {
            source: request.source.identity.clone(),
            destination: request.destination.clone(),
            hbone_addr: request.hbone_addr,
            source_ip: request.client.ip(),
        }
    }
}

/// The outbound HBONE client the proxy calls; cheap to clone.
pub struct Pool<C> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C> std::fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("connections", &self.connection_count())
            .finish_non_exhaustive()
    }
}

impl<C> Pool<C> {
    /// Connections currently pooled, all keys together.
    pub fn connection_count(&self) -> usize {
        let entries = self.inner.entries.lock();
        entries.values().map(|e| e.connections.len()).sum()
    }
}

struct Inner<C> {
    connector: C,
    tls: Arc<TlsConfigs>,
    settings: PoolSettings,
    entries: Mutex<HashMap<PoolKey, Entry>>,
}

#[derive(Default)]
struct Entry {
    connections: Vec<Pooled>,
    /// Held while dialling, so concurrent callers wait for that connection
    /// instead of each dialling their own.
    dialing: Arc<tokio::sync::Mutex<()>>,
}

struct Pooled {
    connection: Connection,
    /// The source certificate it was made with; an expired one is not reused.
    not_after: SystemTime,
    idle_since: Option<Instant>,
}

impl<C: Connector> Pool<C> {
    /// Must be called inside a tokio runtime: it starts the idle reaper.
    pub fn new(connector: C, tls: Arc<TlsConfigs>, settings: PoolSettings) -> Self {
        let inner = Arc::new(Inner {
            connector,
            tls,
            settings,
            entries: Mutex::default(),
        });
        tokio::spawn(reap_idle(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// Opens a tunnel: a CONNECT stream answered 200 by the destination's agent.
    pub async fn connect(&self, request: ConnectRequest) -> Result<H2Stream, ConnectError> {
        let request = &request;
        let key = PoolKey::of(request);
        let (connection, slot, fresh) = self.checkout(&key, request, false).await?;
        let result = connection
            .open_reserved(
                slot,
                request.target,
                request.client,
                request.service_host.as_deref(),
                request.baggage.as_ref(),
            )
            .await;
        match result {
            Err(error) if !fresh && error.is_retryable() => {
                debug!(%error, key = ?key, "pooled hbone connection refused a stream; retiring it");
                self.retire(&key, &connection);
                let (connection, slot, _) = self.checkout(&key, request, true).await?;
                connection
                    .open_reserved(
                        slot,
                        request.target,
                        request.client,
                        request.service_host.as_deref(),
                        request.baggage.as_ref(),
                    )
                    .await
            }
            result => result,
        }
    }

    async fn checkout(
        &self,
        key: &PoolKey,
        request: &ConnectRequest,
        force_new: bool,
    ) -> Result<(Connection, StreamSlot, bool), ConnectError> {
        if !force_new && let Some((connection, slot)) = self.reuse(key) {
            return Ok((connection, slot, false));
        }
        let dialing = {
            let mut entries = self.inner.entries.lock();
            entries.entry(key.clone()).or_default().dialing.clone()
        };
        let _dialing = dialing.lock().await;
        if !force_new && let Some((connection, slot)) = self.reuse(key) {
            return Ok((connection, slot, false));
        }
        let inner = &self.inner;
        let connection = Connection::connect(
            &inner.connector,
            &inner.tls,
            request,
            &inner.settings.client,
        )
        .await?;
        let slot = connection.try_reserve().ok_or(ConnectError::Closed)?;
        let mut entries = inner.entries.lock();
        entries
            .entry(key.clone())
            .or_default()
            .connections
            .push(Pooled {
                connection: connection.clone(),
                not_after: request.source.not_after,
                idle_since: None,
            });
        Ok((connection, slot, true))
    }

    fn reuse(&self, key: &PoolKey) -> Option<(Connection, StreamSlot)> {
        let mut entries = self.inner.entries.lock();
        let entry = entries.get_mut(key)?;
        entry.connections.retain(|p| !p.connection.is_closed());
        let now = SystemTime::now();
        entry
            .connections
            .iter_mut()
            .filter(|p| p.not_after > now)
            .find_map(|p| {
                let slot = p.connection.try_reserve()?;
                p.idle_since = None;
                Some((p.connection.clone(), slot))
            })
    }

    /// Takes `connection` out of the pool without touching its open streams.
    fn retire(&self, key: &PoolKey, connection: &Connection) {
        let mut entries = self.inner.entries.lock();
        if let Some(entry) = entries.get_mut(key) {
            entry
                .connections
                .retain(|p| !p.connection.is_closed() && !p.connection.same(connection));
        }
    }
}

/// Closes connections idle for `idle_timeout`; ends when the pool is dropped.
async fn reap_idle<C>(pool: Weak<Inner<C>>) {
    let Some(idle_timeout) = pool.upgrade().map(|p| p.settings.idle_timeout) else {
        return;
    };
    let tick = (idle_timeout / 4).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(tick).await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        let mut entries = pool.entries.lock();
        for entry in entries.values_mut() {
            entry.connections.retain_mut(|p| {
                if p.connection.is_closed() {
                    return false;
                }
                if p.connection.active_streams() > 0 {
                    p.idle_since = None;
                    return true;
                }
                let since = *p.idle_since.get_or_insert(now);
                if now.duration_since(since) < idle_timeout {
                    return true;
                }
                debug!(peer = %p.connection.peer(), "closing idle hbone connection");
                p.connection.close();
                false
            });
        }
        // Keys with no connection and nobody dialling go too.
        entries.retain(|_, e| !e.connections.is_empty() || Arc::strong_count(&e.dialing) > 1);
    }
}

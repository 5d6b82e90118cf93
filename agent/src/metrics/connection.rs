//! The per-connection record: counts a connection in the metrics while it is
//! open and writes its access log line when it closes.
//!
//! Labels are resolved once per (source, destination) pair (`super::series`)
//! and shared by the pair's connections; counting bytes is two relaxed atomic
//! adds (the shared series and this connection's total), so the copy loop never
//! hashes labels or takes a lock.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Metrics;
use super::agent::{Decision, DecisionLabels, ReporterLabels};
use super::denials::Denial;
use super::series::Series;
use super::traffic::{
    ConnectionOpen, Reporter, ResponseFlags, SecurityPolicy, TrafficLabels, UNKNOWN,
};
use crate::telemetry::ACCESS_LOG_TARGET;

/// What the access log and the config dump say about one connection.
#[derive(Debug)]
pub(super) struct ConnectionInfo {
    id: u64,
    reporter: Reporter,
    security: SecurityPolicy,
    /// Labels and workload names, shared with the pair's other connections.
    series: Arc<Series>,
    client_addr: SocketAddr,
    destination_addr: SocketAddr,
    opened_at: SystemTime,
    opened: Instant,
    received: AtomicU64,
    sent: AtomicU64,
    decision: Mutex<Option<Verdict>>,
    outcome: Mutex<Option<Outcome>>,
}

/// How the connection ended, as the proxy that carried it saw it.
#[derive(Clone, Debug)]
struct Outcome {
    status: &'static str,
    error: Option<String>,
}

/// The authorization outcome as the access log reports it.
#[derive(Clone, Debug)]
struct Verdict {
    decision: Decision,
    reason: &'static str,
    policy: Option<String>,
}

impl ConnectionInfo {
    fn to_json(&self) -> serde_json::Value {
        let decision = self.decision.lock().clone();
        let series = &self.series;
        json!({
            "id": self.id,
            "reporter": self.reporter.as_str(),
            "security": self.security.as_str(),
            "source": {
                "workload": series.source_workload,
                "identity": series.labels.source_principal,
                "address": self.client_addr.to_string(),
            },
            "destination": {
                "workload": series.destination_workload,
                "identity": series.labels.destination_principal,
                "service": series.labels.destination_service,
                "address": self.destination_addr.to_string(),
            },
            "opened_unix_seconds": self.opened_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            "bytes_received": self.received.load(Ordering::Relaxed),
            "bytes_sent": self.sent.load(Ordering::Relaxed),
            "decision": decision.as_ref().map(|v| v.decision.as_str()),
            "reason": decision.as_ref().map(|v| v.reason),
            "policy": decision.and_then(|v| v.policy),
        })
    }
}

/// Open connections, for `/config_dump`. Two lock operations per connection
/// (insert, remove), none per byte.
#[derive(Debug, Default)]
pub(super) struct ActiveConnections {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnectionInfo>>>,
}

impl ActiveConnections {
    pub(super) fn to_json(&self) -> serde_json::Value {
        let mut infos: Vec<Arc<ConnectionInfo>> = self.open.lock().values().cloned().collect();
        infos.sort_by_key(|i| i.id);
        serde_json::Value::Array(infos.iter().map(|i| i.to_json()).collect())
    }

    pub(super) fn len(&self) -> usize {
        self.open.lock().len()
    }
}

/// Counts the bytes of one connection. Cheap to clone: give one to each copy direction.
#[derive(Clone, Debug)]
pub struct ByteRecorder {
    received_total: Counter,
    sent_total: Counter,
    info: Arc<ConnectionInfo>,
}

impl ByteRecorder {
    /// Bytes read from the client (client to server).
    pub fn received(&self, n: u64) {
        self.received_total.inc_by(n);
        self.info.received.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes written to the client (server to client).
    pub fn sent(&self, n: u64) {
        self.sent_total.inc_by(n);
        self.info.sent.fetch_add(n, Ordering::Relaxed);
    }
}

/// A connection being counted. Created when the connection is accepted or opened;
/// dropping it counts the close and writes the access log line, so every exit path
/// of a handler (errors and panics included) is accounted for exactly once.
#[derive(Debug)]
pub struct ConnectionRecord {
    metrics: Arc<Metrics>,
    bytes: ByteRecorder,
    active: Gauge,
}

impl ConnectionRecord {
    pub(super) fn open(metrics: Arc<Metrics>, conn: &ConnectionOpen<'_>) -> Self {
        let series = metrics.series.get(
            conn,
            &metrics.traffic,
            &metrics.cluster_id,
            &metrics.dns_suffix,
        );
        series.opened.inc();
        let active = metrics
            .agent
            .connections_active
            .get_or_create_owned(&ReporterLabels {
                reporter: conn.reporter,
            });
        active.inc();
        let info = Arc::new(ConnectionInfo {
            id: metrics.connections.next_id.fetch_add(1, Ordering::Relaxed),
            reporter: conn.reporter,
            security: conn.security,
            series: series.clone(),
            client_addr: conn.client_addr,
            destination_addr: conn.destination_addr,
            opened_at: SystemTime::now(),
            opened: Instant::now(),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            decision: Mutex::new(None),
            outcome: Mutex::new(None),
        });
        metrics
            .connections
            .open
            .lock()
            .insert(info.id, info.clone());
        let bytes = ByteRecorder {
            received_total: series.received.clone(),
            sent_total: series.sent.clone(),
            info,
        };
        Self {
            metrics,
            bytes,
            active,
        }
    }

    /// A handle for counting bytes from the copy loop (or wrap the client stream in [`Counted`]).
    pub fn bytes(&self) -> ByteRecorder {
        self.bytes.clone()
    }

    /// Bytes read from the client (client to server).
    pub fn record_received(&self, n: u64) {
        self.bytes.received(n);
    }

    /// Bytes written to the client (server to client).
    pub fn record_sent(&self, n: u64) {
        self.bytes.sent(n);
    }

    /// Records the authorization outcome: counted in `ambit_authorization_decisions_total`
    /// and written in the access log. `reason` is a short fixed phrase (it is a
    /// metric label); `policy` names the deciding policy (`namespace/name`), if any.
    pub fn set_decision(&self, decision: Decision, reason: &'static str, policy: Option<String>) {
        self.metrics
            .agent
            .authorization_decisions
            .get_or_create(&DecisionLabels {
                decision: decision.as_str(),
                reason,
                reporter: self.labels().reporter,
                destination_workload_namespace: self
                    .labels()
                    .destination_workload_namespace
                    .clone(),
                destination_workload: self.labels().destination_workload.clone(),
            })
            .inc();
        *self.bytes.info.decision.lock() = Some(Verdict {
            decision,
            reason,
            policy,
        });
    }

    /// Records how the connection ended for the access log: `status` is a short
    /// fixed word (`closed`, `server_failed`, ...), `error` what went wrong.
    pub fn set_outcome(&self, status: &'static str, error: Option<&str>) {
        *self.bytes.info.outcome.lock() = Some(Outcome {
            status,
            error: error.map(str::to_owned),
        });
    }

    /// `set_decision` from the policy engine's answer.
    pub fn record_authorization(&self, decision: &ambit_policy::Decision) {
        self.set_decision(
            decision.into(),
            decision.reason.as_str(),
            decision.policy.clone(),
        );
    }

    /// The labels this connection is counted under.
    pub fn labels(&self) -> &TrafficLabels {
        &self.bytes.info.series.labels
    }

    pub fn duration(&self) -> Duration {
        self.bytes.info.opened.elapsed()
    }
}

/// The response flag of a connection that ended with proxy `status` after
/// authorization `decision`.
fn response_flags(decision: &str, status: &str) -> ResponseFlags {
    match (decision, status) {
        ("deny", _) | (_, "denied") => ResponseFlags::Deny,
        (_, "connect_failed") => ResponseFlags::Connect,
        _ => ResponseFlags::None,
    }
}

impl ConnectionRecord {
    /// Keeps a refusal for `describe`, under the workload whose side this
    /// agent stands on.
    fn remember_denial(&self, reason: &str, policy: Option<&str>, detail: Option<&str>) {
        let info = &self.bytes.info;
        let series = &info.series;
        let (workload, direction, peer) = match series.labels.reporter {
            Reporter::Destination => (
                &series.destination_workload,
                "inbound",
                &series.source_workload,
            ),
            Reporter::Source => (
                &series.source_workload,
                "outbound",
                &series.destination_workload,
            ),
        };
        if workload == UNKNOWN {
            return;
        }
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.metrics.denials.record(
            workload,
            Denial {
                at_unix_ms,
                direction: direction.to_owned(),
                client: info.client_addr,
                client_identity: series.labels.source_principal.clone(),
                peer_workload: peer.clone(),
                destination: info.destination_addr,
                reason: reason.to_owned(),
                policy: policy.map(str::to_owned),
                detail: detail.map(str::to_owned),
            },
        );
    }
}

impl Drop for ConnectionRecord {
    fn drop(&mut self) {
        let info = &self.bytes.info;
        self.metrics.connections.open.lock().remove(&info.id);
        self.active.dec();
        let decision = info.decision.lock().take();
        let (decision, reason, policy) = match &decision {
            Some(v) => (v.decision.as_str(), v.reason, v.policy.as_deref()),
            None => ("none", "closed before authorization", None),
        };
        let outcome = info.outcome.lock().take();
        // A connection refused before it was carried has no proxy outcome.
        let status = match (&outcome, decision) {
            (Some(o), _) => o.status,
            (None, "deny") => "denied",
            (None, _) => "unknown",
        };
        let error = outcome.as_ref().and_then(|o| o.error.as_deref());
        let flags = response_flags(decision, status);
        if flags == ResponseFlags::None {
            info.series.closed(&self.metrics.traffic).inc();
        } else {
            // Only refused and failed connections pay for a second label set.
            let labels = TrafficLabels {
                response_flags: flags,
                ..self.labels().clone()
            };
            self.metrics
                .traffic
                .connections_closed
                .get_or_create(&labels)
                .inc();
        }
        if flags == ResponseFlags::Deny {
            // Admitted first and stopped later: the admitting reason no longer explains it.
            let reason = if decision == "deny" {
                reason
            } else {
                "closed after a policy or enrolment change"
            };
            self.remember_denial(reason, policy, error);
        }
        let info = &self.bytes.info;
        let series = &info.series;
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            reporter = series.labels.reporter.as_str(),
            src.workload = series.source_workload.as_str(),
            src.identity = series.labels.source_principal.as_str(),
            src.addr = %info.client_addr,
            dst.workload = series.destination_workload.as_str(),
            dst.identity = series.labels.destination_principal.as_str(),
            dst.service = series.labels.destination_service.as_str(),
            dst.addr = %info.destination_addr,
            security = info.security.as_str(),
            bytes_received = info.received.load(Ordering::Relaxed),
            bytes_sent = info.sent.load(Ordering::Relaxed),
            duration_ms = u64::try_from(info.opened.elapsed().as_millis()).unwrap_or(u64::MAX),
            decision,
            reason,
            policy,
            status,
            response_flags = flags.as_str(),
            error,
            "connection closed"
        );
    }
}

/// The client-side stream of a proxied connection, counting as it goes: reads are
/// bytes received from the client, writes are bytes sent to it.
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    bytes: ByteRecorder,
}

impl<S> Counted<S> {
    pub fn new(inner: S, bytes: ByteRecorder) -> Self {
        Self { inner, bytes }
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.bytes.received(n as u64);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.bytes.sent(n as u64);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            self.bytes.sent(n as u64);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

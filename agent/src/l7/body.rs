//! Bodies passed through the L7 path, counted as they stream, and the record
//! of one request that is written (metrics and access log) when the response
//! body is done with.

use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::L7;
use super::metrics::{ConnectionSeries, Finished};

/// A body whose data bytes are added to `bytes` as they pass; `guard` is
/// dropped with it (the response body carries the request's record).
pub struct Counted<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
    _guard: Option<RequestLog>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, bytes: Arc<AtomicU64>, guard: Option<RequestLog>) -> Self {
        Self {
            inner,
            bytes,
            _guard: guard,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Everything the access log and the HTTP metrics say about one request;
/// written once, when dropped.
pub struct RequestLog {
    pub l7: Arc<L7>,
    pub series: Arc<ConnectionSeries>,
    /// `http` or `grpc`.
    pub protocol: &'static str,
    pub started: Instant,
    pub method: http::Method,
    pub path: String,
    pub host: String,
    pub status: u16,
    pub decision: &'static str,
    pub policy: Option<String>,
    pub rule: Option<usize>,
    pub reason: Cow<'static, str>,
    pub client: std::net::SocketAddr,
    pub request_bytes: Arc<AtomicU64>,
    pub response_bytes: Arc<AtomicU64>,
}

impl RequestLog {
    /// The record of a request just read; the checks fill in the rest.
    pub fn new(
        l7: Arc<L7>,
        series: Arc<ConnectionSeries>,
        protocol: &'static str,
        method: http::Method,
        host: String,
        client: std::net::SocketAddr,
    ) -> Self {
        Self {
            l7,
            series,
            protocol,
            started: Instant::now(),
            method,
            path: String::new(),
            host,
            status: 0,
            decision: "deny",
            policy: None,
            rule: None,
            reason: Cow::Borrowed(""),
            client,
            request_bytes: Arc::default(),
            response_bytes: Arc::default(),
        }
    }

    /// Records that the agent answered the request itself.
    pub fn refused(&mut self, refusal: &super::request::Refusal) {
        self.status = refusal.answer.status().as_u16();
        self.decision = refusal.answer.decision();
        self.reason = refusal.why.clone();
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let duration = self.started.elapsed();
        let request_bytes = self.request_bytes.load(Ordering::Relaxed);
        let response_bytes = self.response_bytes.load(Ordering::Relaxed);
        self.series.record(
            &self.l7.metrics,
            &Finished {
                protocol: self.protocol,
                status: self.status,
                duration,
                request_bytes,
                response_bytes,
            },
        );
        let labels = &self.series.labels;
        // Text fields are recorded as strings, not through `Display`: the
        // JSON formatter would format each into a String of its own first.
        tracing::info!(
            target: "access",
            method = self.method.as_str(),
            path = self.path.as_str(),
            host = self.host.as_str(),
            status = self.status,
            decision = self.decision,
            policy = self.policy.as_deref().unwrap_or("-"),
            rule = %OrDash(self.rule),
            reason = &*self.reason,
            client = %self.client,
            src_principal = labels.source_principal.as_str(),
            dst_workload = labels.destination_workload.as_str(),
            protocol = self.protocol,
            request_bytes,
            response_bytes,
            duration_ms = duration.as_secs_f64() * 1000.0,
            "request"
        );
    }
}

/// A rule index, or `-` for none, formatted without an allocation.
struct OrDash(Option<usize>);

impl fmt::Display for OrDash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(rule) => write!(f, "{rule}"),
            None => f.write_str("-"),
        }
    }
}

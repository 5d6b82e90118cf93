//! The CA's Prometheus metrics, and the HTTP server that exposes them on
//! `--metrics-addr` (15014 by default, istiod's monitoring port).
//!
//! What an operator needs to alert on: certificates issued, refusals by
//! reason (a node whose token was not added yet shows up as `unknown_token`),
//! how long signing takes, when the CA's own certificate expires, and whether
//! edits of the followed files were applied or rejected.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::follow::{Outcome, OutcomeHook};

/// Content type of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why a certificate request was refused: the `reason` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RefusalReason {
    /// No `authorization: Bearer` header.
    MissingToken,
    /// The token matched no node (or TokenReview refused it).
    UnknownToken,
    /// The authentication backend (the Kubernetes API) could not be asked.
    AuthnUnavailable,
    /// The node runs no workload with the requested identity.
    NotOnNode,
    /// Bad request fields (metadata, validity).
    BadRequest,
    /// The CSR failed its checks.
    BadCsr,
    /// The identity is outside the CA's trust domain.
    ForeignTrustDomain,
    /// Signing itself failed.
    SignFailed,
}

impl RefusalReason {
    /// The label value, also used as the `reason` field of the refusal log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::UnknownToken => "unknown_token",
            Self::AuthnUnavailable => "authn_unavailable",
            Self::NotOnNode => "not_on_node",
            Self::BadRequest => "bad_request",
            Self::BadCsr => "bad_csr",
            Self::ForeignTrustDomain => "foreign_trust_domain",
            Self::SignFailed => "sign_failed",
        }
    }
}

// By hand: the derive would print the variant names (`UnknownToken`), and
// label values are snake_case like the log's `reason` field.
impl EncodeLabelValue for RefusalReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: RefusalReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    file: &'static str,
    result: &'static str,
}

/// Every metric the CA exports; cheap to clone (the families are shared).
#[derive(Clone, Debug)]
pub struct CaMetrics {
    issued: Counter,
    refusals: Family<RefusalLabels, Counter>,
    sign_seconds: Histogram,
    ca_cert_expiry: Gauge,
    reloads: Family<ReloadLabels, Counter>,
}

impl CaMetrics {
    /// Creates the metrics and registers them in `registry` under `ambit_ca_`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            issued: Counter::default(),
            refusals: Family::default(),
            // 100 µs to about 1.6 s: a P-256 signature takes well under a
            // millisecond, an RSA-4096 CSR check a few.
            sign_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
            ca_cert_expiry: Gauge::default(),
            reloads: Family::default(),
        };
        let reg = registry.sub_registry_with_prefix("ambit_ca");
        reg.register(
            "certificates_issued",
            "Workload certificates issued (Istio: citadel_server_success_cert_issuance_count)",
            metrics.issued.clone(),
        );
        reg.register(
            "refusals",
            "Certificate requests refused, by reason",
            metrics.refusals.clone(),
        );
        reg.register(
            "sign_duration_seconds",
            "Time to check a CSR and sign its certificate",
            metrics.sign_seconds.clone(),
        );
        reg.register(
            "cert_expiry_timestamp_seconds",
            "When the certificate the CA signs with expires, Unix seconds (Istio: citadel_server_cert_chain_expiry_timestamp)",
            metrics.ca_cert_expiry.clone(),
        );
        reg.register(
            "file_reloads",
            "Changes of followed files (tokens, serving certificate), applied or rejected",
            metrics.reloads.clone(),
        );
        metrics
    }

    pub fn issued(&self, sign_time: Duration) {
        self.issued.inc();
        self.sign_seconds.observe(sign_time.as_secs_f64());
    }

    pub fn refused(&self, reason: RefusalReason) {
        self.refusals.get_or_create(&RefusalLabels { reason }).inc();
    }

    pub fn set_ca_cert_expiry(&self, not_after: SystemTime) {
        let secs = not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.ca_cert_expiry.set(secs);
    }

    /// A hook for `follow` counting the outcomes of `file`'s changes.
    pub fn reload_hook(&self, file: &'static str) -> OutcomeHook {
        let reloads = self.reloads.clone();
        Arc::new(move |outcome| {
            let result = match outcome {
                Outcome::Applied => "applied",
                Outcome::Rejected => "rejected",
            };
            reloads.get_or_create(&ReloadLabels { file, result }).inc();
        })
    }
}

/// The registry in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an error would mean a broken metric.
    if let Err(error) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(%error, "encoding metrics");
    }
    out
}

/// Serves `GET /metrics` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(answer(&req, &registry)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(error) = conn.await {
                tracing::debug!(%peer, %error, "metrics connection ended");
            }
        });
    }
}

fn answer(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, OPENMETRICS_CONTENT_TYPE, encode(registry)),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".to_string(),
        ),
        (_, path) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("{path} not found; metrics are at /metrics\n"),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

/// Binds `addr` and serves the metrics there; returns the bound address.
pub async fn bind(
    addr: SocketAddr,
    registry: Arc<Registry>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "metrics serving");
    Ok((local, tokio::spawn(serve(listener, registry))))
}

//! Istio's HTTP series at the destination (`istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes` and
//! `istio_response_bytes`), labelled like the TCP series plus the response
//! code, and the per-request access log line.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::metrics::TrafficLabels;

/// The labels of every HTTP series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    #[prometheus(flatten)]
    pub traffic: TrafficLabels,
    pub response_code: u16,
}

type Histograms = Family<HttpLabels, Histogram, fn() -> Histogram>;

fn duration_buckets() -> Histogram {
    // Istio's default buckets for request duration, in milliseconds.
    Histogram::new([
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    ])
}

fn size_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 10.0, 8,
    ))
}

#[derive(Debug)]
pub struct HttpMetrics {
    requests: Family<HttpLabels, Counter>,
    duration: Histograms,
    request_bytes: Histograms,
    response_bytes: Histograms,
}

/// One finished request, as the metrics and the log see it.
#[derive(Debug)]
pub struct Finished<'a> {
    pub labels: &'a TrafficLabels,
    pub status: u16,
    pub duration: Duration,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

impl HttpMetrics {
    /// Registers under `registry` (give it the `istio` prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_buckets),
            request_bytes: Family::new_with_constructor(size_buckets),
            response_bytes: Family::new_with_constructor(size_buckets),
        };
        registry.register(
            "requests",
            "HTTP requests decided by the destination agent",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_milliseconds",
            "HTTP request duration at the destination agent",
            m.duration.clone(),
        );
        registry.register(
            "request_bytes",
            "HTTP request body sizes",
            m.request_bytes.clone(),
        );
        registry.register(
            "response_bytes",
            "HTTP response body sizes",
            m.response_bytes.clone(),
        );
        m
    }

    pub fn record(&self, f: &Finished<'_>) {
        let labels = HttpLabels {
            traffic: f.labels.clone(),
            response_code: f.status,
        };
        self.requests.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(f.duration.as_secs_f64() * 1000.0);
        self.request_bytes
            .get_or_create(&labels)
            .observe(f.request_bytes as f64);
        self.response_bytes
            .get_or_create(&labels)
            .observe(f.response_bytes as f64);
    }
}

//! Istio's HTTP series at the destination (`istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes` and
//! `istio_response_bytes`), labelled like the TCP series plus the response
//! code. A connection resolves its series once per protocol and response
//! code ([`ConnectionSeries`]), so a request costs a few atomic adds rather
//! than a clone of some twenty label strings and four hash-map lookups.

use std::time::Duration;

use parking_lot::Mutex;

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

/// One finished request, as the metrics see it.
#[derive(Debug)]
pub struct Finished {
    /// `http` or `grpc`.
    pub protocol: &'static str,
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

    fn series(&self, labels: &HttpLabels) -> Series {
        Series {
            requests: self.requests.get_or_create(labels).clone(),
            duration: self.duration.get_or_create(labels).clone(),
            request_bytes: self.request_bytes.get_or_create(labels).clone(),
            response_bytes: self.response_bytes.get_or_create(labels).clone(),
        }
    }
}

/// The four series of one label set; clones share the family's values.
#[derive(Clone, Debug)]
struct Series {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// The series of one client connection's requests, by protocol and
/// response code (a connection sees few of either).
#[derive(Debug)]
pub struct ConnectionSeries {
    /// The connection's labels; `request_protocol` is set per request.
    pub labels: TrafficLabels,
    resolved: Mutex<Vec<((&'static str, u16), Series)>>,
}

impl ConnectionSeries {
    pub fn new(labels: TrafficLabels) -> Self {
        Self {
            labels,
            resolved: Mutex::new(Vec::new()),
        }
    }

    pub fn record(&self, metrics: &HttpMetrics, f: &Finished) {
        let key = (f.protocol, f.status);
        let series = {
            let mut resolved = self.resolved.lock();
            match resolved.iter().find(|(k, _)| *k == key) {
                Some((_, series)) => series.clone(),
                None => {
                    let mut traffic = self.labels.clone();
                    traffic.request_protocol = f.protocol.to_owned();
                    let series = metrics.series(&HttpLabels {
                        traffic,
                        response_code: f.status,
                    });
                    resolved.push((key, series.clone()));
                    series
                }
            }
        };
        series.requests.inc();
        series.duration.observe(f.duration.as_secs_f64() * 1000.0);
        series.request_bytes.observe(f.request_bytes as f64);
        series.response_bytes.observe(f.response_bytes as f64);
    }
}

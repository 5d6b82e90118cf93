//! The result of one benchmark run: a JSON record whose shape is the same
//! for every mode (so runs can be compared by machine) and a Markdown table
//! with one row per mode (so rows of several runs can be stacked).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::Mode;
use crate::measure::{Results, Settings};
use crate::scenario::Scenario;

#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub unix_time: u64,
    pub host: Host,
    pub path: PathInfo,
    pub throughput: ThroughputReport,
    pub latency: LatencyReport,
    pub connections: ConnectionReport,
}

#[derive(Debug, Serialize)]
pub struct Host {
    pub cpus: usize,
    pub kernel: String,
    /// One-minute load average when the run ended: figures taken on a busy
    /// machine are not comparable with those of an idle one.
    pub load_avg_1m: f64,
}

/// Between which pods the figures were taken.
#[derive(Debug, Serialize)]
pub struct PathInfo {
    pub client_pod: String,
    pub client_ip: String,
    pub server_pod: String,
    pub server_ip: String,
    pub nodes_crossed: u8,
}

#[derive(Debug, Serialize)]
pub struct ThroughputReport {
    pub gbit_per_s: f64,
    pub bytes: u64,
    pub seconds: f64,
    pub streams: u16,
}

#[derive(Debug, Serialize)]
pub struct LatencyReport {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub mean_us: f64,
    pub max_us: f64,
    pub samples: usize,
    pub message_bytes: u32,
}

#[derive(Debug, Serialize)]
pub struct ConnectionReport {
    pub per_s: f64,
    pub completed: u64,
    pub failed: u64,
    pub seconds: f64,
    pub workers: u16,
}

impl Report {
    pub fn new(mode: Mode, settings: &Settings, scenario: &Scenario, results: Results) -> Self {
        let Results {
            throughput,
            latency,
            connections,
            agent_cpu: _,
        } = results;
        Self {
            mode: mode.name(),
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            host: Host {
                cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
                kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_default(),
                load_avg_1m: std::fs::read_to_string("/proc/loadavg")
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse().ok())
                    .unwrap_or(f64::NAN),
            },
            path: PathInfo {
                client_pod: format!("node0/{}", scenario.client.name),
                client_ip: scenario.client.ip.to_string(),
                server_pod: format!("node1/{}", scenario.server.name),
                server_ip: scenario.server.ip.to_string(),
                nodes_crossed: 2,
            },
            throughput: ThroughputReport {
                gbit_per_s: round2(throughput.gbit_per_s()),
                bytes: throughput.bytes,
                seconds: round2(throughput.elapsed.as_secs_f64()),
                streams: settings.streams,
            },
            latency: LatencyReport {
                p50_us: round2(latency.percentile_us(0.50)),
                p90_us: round2(latency.percentile_us(0.90)),
                p99_us: round2(latency.percentile_us(0.99)),
                p999_us: round2(latency.percentile_us(0.999)),
                mean_us: round2(latency.mean_us()),
                max_us: round2(latency.percentile_us(1.0)),
                samples: latency.samples.len(),
                message_bytes: settings.message_bytes,
            },
            connections: ConnectionReport {
                per_s: round2(connections.per_s()),
                completed: connections.completed,
                failed: connections.failed,
                seconds: round2(connections.elapsed.as_secs_f64()),
                workers: settings.connect_workers,
            },
        }
    }

    pub fn markdown(&self) -> String {
        let header = "| mode | throughput (Gbit/s) | latency p50 (µs) | latency p99 (µs) | new connections/s |\n\
                      | --- | ---: | ---: | ---: | ---: |";
        format!(
            "{header}\n| {} | {:.2} | {:.1} | {:.1} | {:.0} |\n\n\
             {} stream(s) for {:.1} s; {} round trips of {} bytes on one connection; \
             {} worker(s) for {:.1} s ({} failed); {} CPUs, load {:.2}, kernel {}.",
            self.mode,
            self.throughput.gbit_per_s,
            self.latency.p50_us,
            self.latency.p99_us,
            self.connections.per_s,
            self.throughput.streams,
            self.throughput.seconds,
            self.latency.samples,
            self.latency.message_bytes,
            self.connections.workers,
            self.connections.seconds,
            self.connections.failed,
            self.host.cpus,
            self.host.load_avg_1m,
            self.host.kernel,
        )
    }
}

pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

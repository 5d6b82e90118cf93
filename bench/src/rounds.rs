//! Interleaved rounds: one record per row per round, each figure beside the
//! direct row of the same round, and the medians over rounds as a Markdown
//! table and JSON.
//!
//! Medians of per-round ratios, not ratios of medians: on a VM shared with
//! other work the load moves between rounds, and a ratio within one round is
//! what stays comparable.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::Mode;
use crate::idle::IdleStep;
use crate::measure::{Results, Settings};
use crate::report::round2;

pub fn row_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Plain => "plain",
        Mode::Mesh => "mesh",
        _ => "direct",
    }
}

/// One row measured in one round.
#[derive(Debug, Clone, Serialize)]
pub struct RoundRow {
    pub round: usize,
    pub row: &'static str,
    pub load_avg_1m: f64,
    pub figures: Figures,
    /// Filled in against the direct row of the same round.
    pub vs_direct: Option<VsDirect>,
}

/// The figures of one row in one round. The agents' CPU is both agents'
/// user + system time during that measurement.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Figures {
    pub gbit_per_s: f64,
    pub throughput_agent_cpu_s: f64,
    /// Agents' CPU seconds per GB moved.
    pub agent_cpu_s_per_gb: f64,
    /// Gbit moved per CPU-second of the agents.
    pub gbit_per_agent_cpu_s: f64,
    /// The kernel's share of the agents' CPU while moving bytes.
    pub throughput_agent_kernel_share: f64,
    /// Gbit moved per CPU-second the agents spent in the kernel: the ceiling
    /// on `gbit_per_agent_cpu_s` were their user space free.
    pub gbit_per_agent_kernel_cpu_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Agents' CPU microseconds per round trip.
    pub agent_cpu_us_per_round_trip: f64,
    pub connections_per_s: f64,
    pub connections_failed: f64,
    /// Agents' CPU seconds per 1,000 connections.
    pub agent_cpu_s_per_1000_connections: f64,
}

/// A row's figures relative to the direct row of its round.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct VsDirect {
    pub throughput_ratio: f64,
    pub p50_added_us: f64,
    pub p99_added_us: f64,
    pub p999_added_us: f64,
    pub p50_ratio: f64,
    pub connection_rate_ratio: f64,
}

impl RoundRow {
    pub fn new(round: usize, mode: Mode, _settings: &Settings, results: &Results) -> Self {
        let gbit = results.throughput.gbit_per_s();
        let gb = results.throughput.bytes as f64 / 1e9;
        let cpu = results.agent_cpu;
        let round_trips = results.latency.samples.len().max(1) as f64;
        let per = |num: f64, den: f64| if den > 0.0 { num / den } else { f64::NAN };
        let figures = Figures {
            gbit_per_s: gbit,
            throughput_agent_cpu_s: cpu.throughput.total(),
            agent_cpu_s_per_gb: per(cpu.throughput.total(), gb),
            gbit_per_agent_cpu_s: per(gb * 8.0, cpu.throughput.total()),
            throughput_agent_kernel_share: per(cpu.throughput.system, cpu.throughput.total()),
            gbit_per_agent_kernel_cpu_s: per(gb * 8.0, cpu.throughput.system),
            p50_us: results.latency.percentile_us(0.50),
            p99_us: results.latency.percentile_us(0.99),
            p999_us: results.latency.percentile_us(0.999),
            // Latency samples exclude the warm-up, so this slightly overstates.
            agent_cpu_us_per_round_trip: cpu.latency.total() * 1e6 / round_trips,
            connections_per_s: results.connections.per_s(),
            connections_failed: results.connections.failed as f64,
            agent_cpu_s_per_1000_connections: per(
                cpu.connections.total() * 1000.0,
                results.connections.completed as f64,
            ),
        };
        Self {
            round,
            row: row_name(mode),
            load_avg_1m: load_avg(),
            figures,
            vs_direct: None,
        }
    }
}

impl VsDirect {
    fn new(row: &Figures, direct: &Figures) -> Self {
        Self {
            throughput_ratio: row.gbit_per_s / direct.gbit_per_s,
            p50_added_us: row.p50_us - direct.p50_us,
            p99_added_us: row.p99_us - direct.p99_us,
            p999_added_us: row.p999_us - direct.p999_us,
            p50_ratio: row.p50_us / direct.p50_us,
            connection_rate_ratio: row.connections_per_s / direct.connections_per_s,
        }
    }
}

/// Medians over rounds of every figure of one row.
#[derive(Debug, Serialize)]
pub struct RowMedians {
    pub row: &'static str,
    pub rounds: usize,
    pub figures: BTreeMap<String, f64>,
    pub vs_direct: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub unix_time: u64,
    pub cpus: usize,
    pub kernel: String,
    /// One-minute load average at the start of the first and the end of the last round.
    pub load_avg_1m: Vec<f64>,
    pub throughput_seconds: f64,
    pub streams: u16,
    pub round_trips: u32,
    pub message_bytes: u32,
    pub connect_seconds: f64,
    pub connect_workers: u16,
    pub medians: Vec<RowMedians>,
    pub idle: Vec<IdleStep>,
    pub rounds: Vec<RoundRow>,
}

impl Summary {
    pub fn new(settings: &Settings, mut rounds: Vec<RoundRow>, idle: Vec<IdleStep>) -> Self {
        let directs: BTreeMap<usize, Figures> = rounds
            .iter()
            .filter(|r| r.row == "direct")
            .map(|r| (r.round, r.figures))
            .collect();
        for row in &mut rounds {
            row.vs_direct = directs
                .get(&row.round)
                .map(|direct| VsDirect::new(&row.figures, direct));
        }
        let mut names: Vec<&'static str> = Vec::new();
        for row in &rounds {
            if !names.contains(&row.row) {
                names.push(row.row);
            }
        }
        let medians = names
            .into_iter()
            .map(|name| {
                let of_row: Vec<&RoundRow> = rounds.iter().filter(|r| r.row == name).collect();
                RowMedians {
                    row: name,
                    rounds: of_row.len(),
                    figures: medians_of(of_row.iter().map(|r| &r.figures)),
                    vs_direct: medians_of(of_row.iter().filter_map(|r| r.vs_direct.as_ref())),
                }
            })
            .collect();
        let loads = [rounds.first(), rounds.last()]
            .into_iter()
            .flatten()
            .map(|r| r.load_avg_1m)
            .collect();
        Self {
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            load_avg_1m: loads,
            throughput_seconds: settings.throughput_seconds.as_secs_f64(),
            streams: settings.streams,
            round_trips: settings.rtt_samples,
            message_bytes: settings.message_bytes,
            connect_seconds: settings.connect_seconds.as_secs_f64(),
            connect_workers: settings.connect_workers,
            medians,
            idle,
            rounds,
        }
    }

    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| row | Gbit/s | of direct | agents CPU-s per GB | Gbit per agents CPU-s \
             | kernel share | Gbit per agents kernel CPU-s | p50 µs | p50 added | p99 µs | p99.9 µs | connections/s | of direct \
             | agents CPU-s per 1,000 conn. |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for row in &self.medians {
            let f = |k: &str| row.figures.get(k).copied().unwrap_or(f64::NAN);
            let v = |k: &str| row.vs_direct.get(k).copied().unwrap_or(f64::NAN);
            let direct = row.row == "direct";
            let agent = |x: f64, digits: usize| {
                if direct {
                    "-".to_owned()
                } else {
                    format!("{x:.digits$}")
                }
            };
            out.push_str(&format!(
                "| {} | {:.2} | {:.0}% | {} | {} | {} | {} | {:.1} | {:+.1} | {:.1} | {:.1} | {:.0} | {:.0}% | {} |\n",
                row.row,
                f("gbit_per_s"),
                v("throughput_ratio") * 100.0,
                agent(f("agent_cpu_s_per_gb"), 3),
                agent(f("gbit_per_agent_cpu_s"), 2),
                agent(f("throughput_agent_kernel_share"), 2),
                agent(f("gbit_per_agent_kernel_cpu_s"), 2),
                f("p50_us"),
                v("p50_added_us"),
                f("p99_us"),
                f("p999_us"),
                f("connections_per_s"),
                v("connection_rate_ratio") * 100.0,
                agent(f("agent_cpu_s_per_1000_connections"), 3),
            ));
        }
        out.push_str(&format!(
            "\nMedians of {} interleaved round(s); ratios and added latency are medians of \
             per-round comparisons with the direct row. {} stream(s) for {:.1} s; {} round \
             trips of {} bytes; {} connect worker(s) for {:.1} s. {} CPUs, kernel {}, load \
             {:?}.\n",
            self.medians.first().map_or(0, |m| m.rounds),
            self.streams,
            self.throughput_seconds,
            self.round_trips,
            self.message_bytes,
            self.connect_workers,
            self.connect_seconds,
            self.cpus,
            self.kernel,
            self.load_avg_1m,
        ));
        if !self.idle.is_empty() {
            out.push_str(
                "\n| idle connections through the mesh | agent RSS node 0 (MiB) | agent RSS node 1 (MiB) | agent fds |\n\
                 | ---: | ---: | ---: | --- |\n",
            );
            for step in &self.idle {
                let rss = |i: usize| step.agent_rss_mib.get(i).copied().unwrap_or(f64::NAN);
                out.push_str(&format!(
                    "| {} | {:.1} | {:.1} | {:?} |\n",
                    step.connections,
                    rss(0),
                    rss(1),
                    step.agent_fds
                ));
            }
        }
        out
    }
}

/// The median of each numeric field over `items`, rounded to 3 places.
pub(crate) fn medians_of<'a, T: Serialize + 'a>(
    items: impl Iterator<Item = &'a T>,
) -> BTreeMap<String, f64> {
    let mut columns: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for item in items {
        let Ok(serde_json::Value::Object(map)) = serde_json::to_value(item) else {
            continue;
        };
        for (key, value) in map {
            if let Some(x) = value.as_f64().filter(|x| x.is_finite()) {
                columns.entry(key).or_default().push(x);
            }
        }
    }
    columns
        .into_iter()
        .map(|(key, mut values)| {
            values.sort_by(f64::total_cmp);
            let n = values.len();
            let median = if n % 2 == 1 {
                values[n / 2]
            } else {
                (values[n / 2 - 1] + values[n / 2]) / 2.0
            };
            (key, (median * 1000.0).round() / 1000.0)
        })
        .collect()
}

pub(crate) fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(f64::NAN, round2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Row {
        a: f64,
        b: f64,
    }

    #[test]
    fn medians_skip_figures_that_are_not_numbers() {
        let rows = [
            Row { a: 3.0, b: 1.0 },
            Row {
                a: 1.0,
                b: f64::NAN,
            },
            Row { a: 2.0, b: 5.0 },
        ];
        let medians = medians_of(rows.iter());
        assert_eq!(medians["a"], 2.0);
        // NaN serialises as null and is left out: the median of 1 and 5.
        assert_eq!(medians["b"], 3.0);
    }
}

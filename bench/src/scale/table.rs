//! One measured size of the scale mode, and its Markdown and JSON forms.

use std::time::Duration;

use ambit_tests::fake_kube::Traffic;
use serde_json::{Value, json};

/// Nodes of the largest cluster the API-server figures are scaled to.
const LARGEST_CLUSTER_NODES: f64 = 5000.0;

#[derive(Debug)]
pub struct Row {
    pub pods: usize,
    pub nodes: usize,
    pub agents: usize,
    /// The slowest agent's time to its first snapshot.
    pub sync: Duration,
    /// Each agent's report once synced and settled.
    pub synced: Vec<Value>,
    /// Each agent's report after the churn.
    pub after: Vec<Value>,
    pub churn: Duration,
    /// Changes the churn and the probes made.
    pub api_changes: u64,
    /// Policy edit to every agent's decision, one per probe.
    pub propagation: Vec<Duration>,
    /// What the API server sent from the agents' start to their sync (all agents).
    pub sync_traffic: Traffic,
    /// What it sent during the churn (all agents).
    pub churn_traffic: Traffic,
    /// With `--feed`: the state server's memory and writes at its sync,
    /// at the agents' and after the churn.
    pub server: Option<Value>,
}

impl Row {
    fn max(reports: &[Value], field: &str) -> f64 {
        reports
            .iter()
            .filter_map(|r| r[field].as_f64())
            .fold(0.0, f64::max)
    }

    fn mib(reports: &[Value], field: &str) -> f64 {
        Self::max(reports, field) / 1024.0
    }

    /// CPU time of the busiest agent during the churn, as a share of one core.
    fn churn_cpu_percent(&self) -> f64 {
        let busiest = self
            .synced
            .iter()
            .zip(&self.after)
            .filter_map(|(s, a)| Some(a["cpu_ms"].as_f64()? - s["cpu_ms"].as_f64()?))
            .fold(0.0, f64::max);
        busiest / self.churn.as_millis().max(1) as f64 * 100.0
    }

    fn propagation_ms(&self, quantile: f64) -> f64 {
        let mut ms: Vec<f64> = self
            .propagation
            .iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        let Some(last) = ms.len().checked_sub(1) else {
            return f64::NAN;
        };
        ms[((last as f64) * quantile).round() as usize]
    }

    fn per_agent(&self, n: u64) -> f64 {
        n as f64 / self.agents.max(1) as f64
    }

    fn churn_per_sec(&self, n: u64) -> f64 {
        self.per_agent(n) / self.churn.as_secs_f64().max(0.001)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "pods": self.pods,
            "nodes": self.nodes,
            "state_server": self.server,
            "agents": self.agents,
            "sync_s": self.sync.as_secs_f64(),
            "rss_synced_mib": Self::mib(&self.synced, "rss_kib"),
            "rss_after_churn_mib": Self::mib(&self.after, "rss_kib"),
            "rss_peak_mib": Self::mib(&self.after, "hwm_kib"),
            "sync_cpu_s": Self::max(&self.synced, "cpu_ms") / 1000.0,
            "churn_cpu_percent": self.churn_cpu_percent(),
            "churn_s": self.churn.as_secs_f64(),
            "api_changes_per_s": self.api_changes as f64 / self.churn.as_secs_f64().max(0.001),
            "propagation_ms": {
                "probes": self.propagation.len(),
                "p50": self.propagation_ms(0.5),
                "p90": self.propagation_ms(0.9),
                "max": self.propagation_ms(1.0),
            },
            "per_agent": {
                "sync_bytes": self.per_agent(self.sync_traffic.bytes()),
                "sync_objects": self.per_agent(self.sync_traffic.list_items + self.sync_traffic.watch_events),
                "churn_bytes_per_s": self.churn_per_sec(self.churn_traffic.bytes()),
                "churn_events_per_s": self.churn_per_sec(self.churn_traffic.watch_events),
            },
            "agents_report_synced": self.synced,
            "agents_report_after": self.after,
        })
    }
}

pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| pods | nodes | agents | sync | RSS synced / after churn / peak | CPU: sync, churn | policy propagation p50 / p90 / max (probes) | API per agent: sync | API per agent: churn | 5,000 agents: churn |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        let churn_bytes = r.churn_per_sec(r.churn_traffic.bytes());
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} s | {:.1} / {:.1} / {:.1} MiB | {:.1} s, {:.0}% of a core | {:.0} / {:.0} / {:.0} ms ({}) | {:.1} MiB, {:.0} objects | {:.0} events/s, {:.0} KiB/s | {:.0} MiB/s |\n",
            r.pods,
            r.nodes,
            r.agents,
            r.sync.as_secs_f64(),
            Row::mib(&r.synced, "rss_kib"),
            Row::mib(&r.after, "rss_kib"),
            Row::mib(&r.after, "hwm_kib"),
            Row::max(&r.synced, "cpu_ms") / 1000.0,
            r.churn_cpu_percent(),
            r.propagation_ms(0.5),
            r.propagation_ms(0.9),
            r.propagation_ms(1.0),
            r.propagation.len(),
            r.per_agent(r.sync_traffic.bytes()) / 1048576.0,
            r.per_agent(r.sync_traffic.list_items + r.sync_traffic.watch_events),
            r.churn_per_sec(r.churn_traffic.watch_events),
            churn_bytes / 1024.0,
            churn_bytes * LARGEST_CLUSTER_NODES / 1048576.0,
        ));
    }
    out
}
